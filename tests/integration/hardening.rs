//! Hardening: interrupts at random phases, crash leftovers, step timeouts, environment errors,
//! secrets and atomic reports. Each test would fail without the behaviour it names.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use rand::{RngExt, SeedableRng};

const FAST: &str = "tests/scenarios/fast-corruption.toml";

/// The test seed: `DRILLRIG_TEST_SEED` replays a run; otherwise random, and printed.
fn seeded(test: &str) -> rand::rngs::StdRng {
    let seed = std::env::var("DRILLRIG_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("{test}: seed {seed} (replay with DRILLRIG_TEST_SEED={seed})");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// The phase the run was in when it stopped: the last one without an end, else the last one.
fn phase_reached(report: &serde_json::Value) -> String {
    let timeline = report["timeline"].as_array().unwrap();
    timeline
        .iter()
        .rev()
        .find(|p| p["ended_ms"].is_null() && p["phase"] != "teardown")
        .or_else(|| timeline.iter().rev().find(|p| p["phase"] != "teardown"))
        .map_or("none".to_string(), |p| {
            p["phase"]
                .as_str()
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string()
        })
}

/// The phases the interrupt test aims at, with how long into each it may wait (ms): about the
/// phase's length in the fast scenario, so the signal lands inside it.
const PHASES: &[(&str, u64)] = &[
    ("provision", 1500),
    ("seed", 100),
    ("workload", 4000),
    ("fault", 800),
    ("detect", 0),
    ("restore", 1500),
    ("verify", 100),
    ("teardown", 300),
];

#[test]
fn interrupts_at_random_phases_leave_nothing_and_a_partial_report() {
    let _engine = engine();
    let mut rng = seeded("interrupts");
    let mut reached: BTreeMap<String, u32> = BTreeMap::new();
    // One interrupt aimed at each phase; the engine's tests interrupt every phase of a fake
    // drill, many times over (drill::tests).
    for (i, &(aim, window)) in PHASES.iter().enumerate() {
        let delay = Duration::from_millis(rng.random_range(0..=window));
        let sig = if rng.random_bool(0.5) { "INT" } else { "TERM" };
        let dir = out_dir(&format!("interrupt-{i:02}"));
        let mut child = spawn_drill(FAST, &dir);
        // The drill logs each phase as it begins: wait for the aimed one, then a random moment.
        let stderr = Stderr::follow(&mut child);
        if let Err(why) = stderr.wait_for(&format!("phase {aim}"), Duration::from_secs(120)) {
            panic!("iteration {i}: {aim} never began: {why}");
        }
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            signal(&child, sig);
        }
        let status = child.wait().unwrap();
        let log = stderr.all();
        let report = read_report(&dir);
        let run_id = report["run_id"].as_str().unwrap();
        let outcome = report["outcome"].as_str().unwrap();
        let context = format!(
            "iteration {i}: SIG{sig} {delay:?} into {aim} ended {outcome} with {:?}\n{log}",
            status.code()
        );
        if outcome == "interrupted" {
            assert_eq!(status.code(), Some(130), "{context}");
            *reached.entry(phase_reached(&report)).or_default() += 1;
        } else {
            // The signal came after the drill had finished (during teardown): its verdict stands.
            assert!(["met", "missed"].contains(&outcome), "{context}");
            *reached.entry("after the drill".into()).or_default() += 1;
        }
        assert_eq!(resources_of(run_id), Vec::<String>::new(), "{context}");
    }
    eprintln!("interrupts by phase reached: {reached:?}");
    let drill_phases = [
        "provision",
        "seed",
        "workload",
        "fault",
        "restore",
        "verify",
    ];
    let landed = drill_phases
        .iter()
        .filter(|p| reached.contains_key(**p))
        .count();
    assert!(
        landed >= 3,
        "interrupts landed in too few phases: {reached:?}"
    );
}

#[test]
fn a_second_sigint_forces_removal_at_once() {
    let _engine = engine();
    let dir = out_dir("interrupted-twice");
    let mut child = spawn_drill("scenarios/pg-kill.toml", &dir);
    let pid = child.id();
    wait_until(&mut child, Duration::from_secs(120), "a container", || {
        running_run_id(pid).is_some()
    });
    let run_id = running_run_id(pid).unwrap();
    signal(&child, "INT");
    std::thread::sleep(Duration::from_millis(50));
    signal(&child, "INT");
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("interrupted again"));
    assert_no_leftovers(&run_id);
}

/// Starts the fast drill and SIGKILLs drillrig once the workload runs; returns the dead run's id.
fn crash_a_drill(test: &str) -> String {
    let dir = out_dir(test);
    let mut child = spawn_drill(FAST, &dir);
    wait_until(
        &mut child,
        Duration::from_secs(120),
        "the first backup",
        || dir.join("backups/pg/001-pg-dump/manifest.json").exists(),
    );
    let run_id = running_run_id(child.id()).unwrap();
    signal(&child, "KILL");
    child.wait().unwrap();
    assert!(
        !resources_of(&run_id).is_empty(),
        "a SIGKILLed drill cannot clean up"
    );
    run_id
}

#[test]
fn after_a_sigkill_gc_removes_the_dead_run() {
    let _engine = engine_alone();
    let dead = crash_a_drill("crashed-then-gc");
    let gc = Command::new(BIN).arg("gc").output().unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert!(String::from_utf8_lossy(&gc.stdout).contains(&dead));
    assert_no_leftovers(&dead);
}

#[test]
fn after_a_sigkill_the_next_run_removes_the_dead_run() {
    let _engine = engine_alone();
    let dead = crash_a_drill("crashed-then-run");
    // The next run cleans up before it does anything else, even one that then fails.
    let next = drill_with(
        FAST,
        "run-after-crash",
        &[],
        &["--image", "pg=drillrig/absent:0"],
    );
    assert_eq!(next.code(), Some(3), "{}", next.debug());
    assert!(
        next.stderr()
            .contains(&format!("removed leftovers of dead run {dead}")),
        "{}",
        next.debug()
    );
    assert_no_leftovers(&dead);
}

#[test]
fn gc_removes_dead_runs_only() {
    let _engine = engine_alone();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let mut exited = Command::new("true").spawn().unwrap();
    let dead_pid = exited.id().to_string();
    exited.wait().unwrap();
    let me = std::process::id().to_string();
    let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
    let my_start = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_string();
    let suffix = std::process::id();
    let start = |name: &str, labels: &[(&str, &str)]| {
        let mut args = vec![
            "run".to_string(),
            "-d".into(),
            "--name".into(),
            format!("{name}-{suffix}"),
        ];
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        args.extend([
            "--entrypoint".into(),
            "sleep".into(),
            "drillrig/base:bookworm".into(),
            "300".into(),
        ]);
        docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
    };
    let dead = format!("gc-test-dead-{suffix}");
    let live = format!("gc-test-live-{suffix}");
    start(
        "gc-dead",
        &[
            ("io.drillrig.run", &dead),
            ("io.drillrig.host", &host),
            ("io.drillrig.pid", &dead_pid),
            ("io.drillrig.pid-start", "1"),
        ],
    );
    start(
        "gc-live",
        &[
            ("io.drillrig.run", &live),
            ("io.drillrig.host", &host),
            ("io.drillrig.pid", &me),
            ("io.drillrig.pid-start", &my_start),
        ],
    );
    start("gc-stranger", &[("purpose", "not drillrig's")]);
    // What a container created after its run's volume was removed leaves: the volume again,
    // with no labels. Its name still says whose it is.
    let unlabelled = format!("drillrig-{dead}-pg-1-data");
    docker(&["volume", "create", &unlabelled]);

    let gc = Command::new(BIN).arg("gc").output().unwrap();
    let exists = |name: &str| {
        let filter = format!("name=^{name}-{suffix}$");
        !Command::new("docker")
            .args(["ps", "-a", "-q", "--filter", &filter])
            .output()
            .unwrap()
            .stdout
            .is_empty()
    };
    let (dead_gone, live_kept, stranger_kept) =
        (!exists("gc-dead"), exists("gc-live"), exists("gc-stranger"));
    let unlabelled_gone = !docker(&["volume", "ls", "-q"]).contains(&unlabelled);
    let _ = Command::new("docker")
        .args(["volume", "rm", &unlabelled])
        .output();
    for name in ["gc-dead", "gc-live", "gc-stranger"] {
        let _ = Command::new("docker")
            .args(["rm", "-f", &format!("{name}-{suffix}")])
            .output();
    }
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert!(dead_gone, "the dead run's container is removed");
    assert!(
        unlabelled_gone,
        "the dead run's volume is removed, labelled or not"
    );
    assert!(live_kept, "a live run's container is never touched");
    assert!(
        stranger_kept,
        "a container without drillrig's labels is never touched"
    );
}

/// A copy of the fast scenario with `[timeouts]` added.
fn with_timeouts(test: &str, timeouts: &str) -> PathBuf {
    PathBuf::from(variant(
        FAST,
        test,
        &[(
            "[targets.pg]",
            &format!("[timeouts]\n{timeouts}\n\n[targets.pg]"),
        )],
    ))
}

#[test]
fn a_step_that_overruns_its_timeout_ends_the_drill_as_error() {
    let _engine = engine();
    let scenario = with_timeouts("provision-timeout", "provision = \"300ms\"");
    let run = drill(scenario.to_str().unwrap(), "provision-timeout", &[]);
    assert_eq!(run.code(), Some(1), "{}", run.debug());
    assert_eq!(run.report["outcome"], "error");
    let error = run.report["error"].as_str().unwrap();
    assert!(
        error.starts_with("provision pg: "),
        "the step is named: {error}"
    );
    assert!(error.contains("300ms"), "{error}");
    assert!(!run.stderr().contains("panicked"));
    assert_no_leftovers(run.run_id());
}

#[test]
fn a_hung_backup_ends_the_drill_as_error_with_its_logs_kept() {
    let _engine = engine();
    let scenario = with_timeouts("hung-backup", "backup = \"3s\"");
    let dir = out_dir("hung-backup");
    let mut child = Command::new(BIN)
        .args([
            "run",
            scenario.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        &mut child,
        Duration::from_secs(120),
        "the first backup",
        || dir.join("backups/pg/001-pg-dump/manifest.json").exists(),
    );
    // Another session takes an exclusive lock on `orders` and keeps it: pg_dump waits for it
    // forever, as it would behind a stuck migration.
    let run_id = running_run_id(child.id()).unwrap();
    let container = format!("drillrig-{run_id}-pg-1");
    let lock = "BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600);";
    let held = Command::new("docker")
        .args([
            "exec", "-d", "-u", "postgres", &container, "psql", "-d", "drill", "-c", lock,
        ])
        .status()
        .unwrap();
    assert!(held.success());
    let output = child.wait_with_output().unwrap();
    let report = read_report(&dir);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(report["outcome"], "error");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.starts_with("backup 2 of pg: did not finish within 3s"),
        "{error}"
    );
    let log = dir.join("logs").join(format!("{container}.log"));
    assert!(
        std::fs::metadata(&log).is_ok_and(|m| m.len() > 0),
        "the hung container's log is kept"
    );
    assert_no_leftovers(&run_id);
}

#[test]
fn no_docker_engine_is_exit_3_with_a_cause_and_a_fix() {
    let run = drill_with(
        FAST,
        "no-engine",
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
        &[],
    );
    assert_eq!(run.code(), Some(3), "{}", run.debug());
    let stderr = run.stderr();
    assert!(
        stderr.contains("no Docker engine answers at unix:///nonexistent/docker.sock"),
        "{stderr}"
    );
    assert!(stderr.contains("fix: start dockerd"), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    assert_eq!(run.report["outcome"], "error");
}

/// An engine that answers every request with the version of Docker 1.13 (API 1.25). No such
/// engine can be installed here, so a socket speaking its `/version` reply stands in for it.
fn old_engine(socket: &Path) -> std::thread::JoinHandle<()> {
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { break };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let body = r#"{"Version":"1.13.1","ApiVersion":"1.25","MinAPIVersion":"1.12","Os":"linux","Arch":"amd64"}"#;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nApi-Version: 1.25\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    })
}

#[test]
fn an_engine_too_old_is_exit_3() {
    let dir = out_dir("old-engine");
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("docker.sock");
    let _server = old_engine(&socket);
    let host = format!("unix://{}", socket.display());
    let run = drill_with(FAST, "old-engine-run", &[("DOCKER_HOST", &host)], &[]);
    assert_eq!(run.code(), Some(3), "{}", run.debug());
    assert!(
        run.stderr()
            .contains("speaks API 1.25; drillrig needs 1.41"),
        "{}",
        run.debug()
    );
    assert!(
        run.stderr().contains("fix: upgrade the Docker engine"),
        "{}",
        run.debug()
    );
}

#[test]
fn an_image_missing_and_unpullable_is_exit_3() {
    let _engine = engine();
    let run = drill_with(
        FAST,
        "missing-image",
        &[],
        &["--image", "pg=drillrig/absent:0"],
    );
    assert_eq!(run.code(), Some(3), "{}", run.debug());
    let stderr = run.stderr();
    assert!(
        stderr.contains("image drillrig/absent:0 is not present and cannot be pulled"),
        "{stderr}"
    );
    assert!(stderr.contains("fix:"), "{stderr}");
    assert_no_leftovers(run.run_id());
}

/// Not a test on its own: a process holding the ports `DRILLRIG_TEST_PORTS` (`first-last`) on
/// 127.0.0.1 until its stdin closes. Port exhaustion needs more sockets than one process may
/// open here, so the test spreads them over several of these.
#[test]
#[ignore = "run by port_exhaustion_is_exit_3"]
fn port_holder_child() {
    let range = std::env::var("DRILLRIG_TEST_PORTS").expect("spawned by the parent test");
    let (first, last) = range.split_once('-').unwrap();
    let (first, last): (u16, u16) = (first.parse().unwrap(), last.parse().unwrap());
    let held: Vec<std::net::TcpListener> = (first..=last)
        .filter_map(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
        .collect();
    println!("held {}", held.len());
    std::io::stdout().flush().unwrap();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
}

#[test]
fn port_exhaustion_is_exit_3() {
    let _engine = engine_alone();
    // Hold every port the engine could publish on 127.0.0.1.
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let bounds: Vec<u16> = range
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let (first, last) = (bounds[0], bounds[1]);
    let middle = first + (last - first) / 2;
    let mut holders = Vec::new();
    let mut held = 0;
    for (a, b) in [(first, middle), (middle + 1, last)] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "hardening::port_holder_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("DRILLRIG_TEST_PORTS", format!("{a}-{b}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        // libtest prints `test port_holder_child ... ` on the same line first.
        while !line.contains("held ") {
            line.clear();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "the port holder ended early"
            );
        }
        held += line
            .trim()
            .rsplit("held ")
            .next()
            .unwrap()
            .parse::<u32>()
            .unwrap();
        holders.push((child, reader));
    }
    let total = u32::from(last - first) + 1;
    assert!(held + 2048 > total, "held only {held} of {total} ports");
    let run = drill(FAST, "port-exhaustion", &[]);
    for (mut holder, mut reader) in holders {
        drop(holder.stdin.take());
        let _ = std::io::Read::read_to_end(&mut reader, &mut Vec::new());
        holder.wait().unwrap();
    }
    assert_eq!(run.code(), Some(3), "{}", run.debug());
    assert!(
        run.stderr()
            .contains("no free port on 127.0.0.1 to publish port 5432"),
        "{}",
        run.debug()
    );
    assert_no_leftovers(run.run_id());
}

/// A tmpfs of `size` mounted for the test's lifetime.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(test: &str, size: &str) -> Self {
        let dir = out_dir(test);
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ok.success(), "mount a tmpfs (root)");
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_report_folder_without_space_is_exit_3_before_anything_starts() {
    let disk = SmallDisk::mount("small-disk", "16m");
    let out = Command::new(BIN)
        .args([
            "run",
            repo(FAST).to_str().unwrap(),
            "--out",
            disk.0.join("run").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("MiB free; a drill needs at least 256 MiB"),
        "{stderr}"
    );
    assert!(stderr.contains("fix:"), "{stderr}");
}

#[test]
fn a_report_folder_that_fills_up_mid_drill_is_exit_3() {
    let _engine = engine();
    let disk = SmallDisk::mount("full-disk", "1m");
    let out = Command::new(BIN)
        .args([
            "run",
            repo("scenarios/pg-corruption.toml").to_str().unwrap(),
            "--out",
            disk.0.join("run").to_str().unwrap(),
        ])
        .env("DRILLRIG_MIN_FREE_MB", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let leftovers = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            "label=io.drillrig.scenario=pg-corruption",
        ])
        .output()
        .unwrap();
    assert!(
        leftovers.stdout.is_empty(),
        "the run's containers are removed"
    );
}

#[test]
fn the_generated_passwords_appear_in_no_output_and_on_no_command_line() {
    let _engine = engine();
    let run = drill(
        "tests/scenarios/secrets-every-kind.toml",
        "secrets",
        &[("DRILLRIG_KEEP", "always")],
    );
    let inspect = |container: &str, format: &str| -> String {
        let out = Command::new("docker")
            .args(["inspect", "--format", format, container])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let container = |target: &str| format!("drillrig-{}-{target}-1", run.run_id());
    // A kept run says how to reach its containers in connections.json, readable by its owner
    // only: the one output that holds the passwords, on purpose.
    let connections_path = run.dir.join("connections.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&connections_path)
            .expect("a kept run writes connections.json")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "connections.json is private");
    let connections: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&connections_path).unwrap()).unwrap();
    let password_of = |target: &str| -> String {
        connections["targets"][target]["password"]
            .as_str()
            .unwrap_or_else(|| panic!("no password for {target}: {connections}"))
            .to_string()
    };
    let (pg, redis, mq) = (password_of("pg"), password_of("cache"), password_of("mq"));
    // The engine's whole view of each container shows none of them (no environment holds one).
    for target in ["pg", "cache", "mq"] {
        let all = inspect(&container(target), "{{json .}}");
        assert!(all.contains("drillrig"), "inspected {target}");
        for password in [&pg, &redis, &mq] {
            assert!(
                !all.contains(password.as_str()),
                "docker inspect of {target} shows a password"
            );
        }
    }
    // Redis reads its password from an ACL file written into the container before it starts.
    let acl = Command::new("docker")
        .args([
            "exec",
            &container("cache"),
            "cat",
            "/etc/redis/drillrig.acl",
        ])
        .output()
        .unwrap();
    let acl = String::from_utf8_lossy(&acl.stdout).to_string();
    assert!(acl.contains(&format!(">{redis} ")), "the ACL file: {acl:?}");
    let redis_command = inspect(&container("cache"), "{{json .Path}} {{json .Args}}");
    // Every service runs under the engine's init process, which reaps orphaned helpers.
    for target in ["pg", "cache", "mq"] {
        assert_eq!(
            inspect(&container(target), "{{.HostConfig.Init}}"),
            "true",
            "{target}"
        );
        let pid1 = Command::new("docker")
            .args(["exec", &container(target), "cat", "/proc/1/comm"])
            .output()
            .unwrap();
        let pid1 = String::from_utf8_lossy(&pid1.stdout).trim().to_string();
        assert!(
            pid1.contains("init") || pid1.contains("tini"),
            "{target}: PID 1 is {pid1:?}"
        );
    }
    remove_run(run.run_id());
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let passwords = [("postgres", pg), ("redis", redis), ("rabbitmq", mq)];
    for (kind, password) in &passwords {
        assert!(
            password.len() >= 32 && password.chars().all(|c| c.is_ascii_alphanumeric()),
            "{kind}: a generated password"
        );
    }
    assert!(
        !redis_command.contains(passwords[1].1.as_str()) && redis_command.contains("--aclfile"),
        "the Redis command line: {redis_command}"
    );
    let files: Vec<PathBuf> = files_under(&run.dir)
        .into_iter()
        .filter(|f| f != &connections_path)
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with("report.json"))
            && files
                .iter()
                .any(|f| f.extension().is_some_and(|e| e == "log"))
    );
    for (kind, password) in &passwords {
        let needle = password.as_bytes();
        let contains = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        assert!(
            !contains(&run.output.stdout) && !contains(&run.output.stderr),
            "the terminal shows the {kind} password"
        );
        for file in &files {
            assert!(
                !contains(&std::fs::read(file).unwrap()),
                "{} holds the {kind} password",
                file.display()
            );
        }
    }
    assert_no_leftovers(run.run_id());
}

/// Payload of generation `g`: a header line, `g` repeated, and an end marker, so a reader can
/// tell a whole file from a cut one.
fn payload(g: u64) -> Vec<u8> {
    let body = 8 << 20;
    let mut p = format!("generation {g} length {body}\n").into_bytes();
    p.extend(std::iter::repeat_n((g % 251) as u8, body));
    p.extend_from_slice(b"\nend\n");
    p
}

fn whole(bytes: &[u8]) -> bool {
    let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let header = String::from_utf8_lossy(&bytes[..nl]);
    let Some(g) = header
        .split_whitespace()
        .nth(1)
        .and_then(|g| g.parse::<u64>().ok())
    else {
        return false;
    };
    bytes == payload(g).as_slice()
}

/// Not a test on its own: the process the atomic-write test kills. It rewrites a report file
/// through drillrig's writer, generation after generation.
#[test]
#[ignore = "run by a_killed_writer_leaves_the_old_report_or_the_whole_new_one"]
fn atomic_writer_child() {
    let path = PathBuf::from(
        std::env::var("DRILLRIG_TEST_ATOMIC_FILE").expect("spawned by the parent test"),
    );
    for g in 1.. {
        drillrig::util::write_atomically(&path, &payload(g)).unwrap();
    }
}

#[test]
fn a_killed_writer_leaves_the_old_report_or_the_whole_new_one() {
    let mut rng = seeded("atomic writes");
    let dir = out_dir("atomic");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("report.json");
    let mut killed_mid_write = 0;
    for _ in 0..20 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "hardening::atomic_writer_child",
                "--test-threads=1",
            ])
            .env("DRILLRIG_TEST_ATOMIC_FILE", &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(30..400)));
        child.kill().unwrap();
        child.wait().unwrap();
        let temporaries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path() != path)
            .collect();
        if !temporaries.is_empty() {
            killed_mid_write += 1;
            for t in temporaries {
                std::fs::remove_file(t.path()).unwrap();
            }
        }
        if let Ok(bytes) = std::fs::read(&path) {
            assert!(whole(&bytes), "report.json is cut: {} bytes", bytes.len());
        }
    }
    assert!(
        killed_mid_write > 0,
        "no kill landed during a write; the test proved nothing"
    );
}
