//! Real drills against real containers: the shipped scenarios run through the `drillrig` binary,
//! and the assertions read what a user reads (report.json, the ledger CSV, the engine's state).
//! A missing Docker engine fails these tests; it never skips them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_drillrig");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A fresh output folder for one test, kept after the run for inspection.
fn out_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("drills")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Drills run one at a time: each `drillrig run` starts with a gc of dead runs, which would race
/// with a test inspecting a kept run, and concurrent drills would skew each other's timings.
static ENGINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn engine() -> std::sync::MutexGuard<'static, ()> {
    require_docker();
    ENGINE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn require_docker() {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "no Docker engine answers: these tests need one (run fixtures/env/prepare.sh as root)"
    );
}

struct Run {
    output: Output,
    dir: PathBuf,
    report: Value,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    fn target(&self) -> &Value {
        &self.report["targets"][0]
    }

    fn check(&self, name: &str) -> &str {
        self.target()["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name} in {}", self.target()["checks"]))["status"]
            .as_str()
            .unwrap()
    }

    /// `(seq, completed_ms, outcome, lost)` per ledger row.
    fn ledger(&self) -> Vec<(u64, f64, String, String)> {
        let text = std::fs::read_to_string(self.dir.join("ledger-pg.csv")).unwrap();
        text.lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (
                    f[0].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].to_string(),
                    f[4].to_string(),
                )
            })
            .collect()
    }

    fn debug(&self) -> String {
        format!(
            "exit {:?}\nstderr:\n{}\nstdout:\n{}",
            self.code(),
            String::from_utf8_lossy(&self.output.stderr),
            String::from_utf8_lossy(&self.output.stdout)
        )
    }
}

/// Runs a drill; the caller holds [`engine`].
fn drill(scenario: &str, test: &str, env: &[(&str, &str)]) -> Run {
    let dir = out_dir(test);
    let output = Command::new(BIN)
        .args([
            "run",
            repo(scenario).to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ])
        .envs(env.iter().copied())
        .output()
        .expect("run drillrig");
    let report = std::fs::read_to_string(dir.join("report.json"))
        .map(|t| serde_json::from_str(&t).expect("report.json parses"))
        .unwrap_or_else(|e| {
            panic!(
                "no report.json ({e}):\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    Run {
        output,
        dir,
        report,
    }
}

/// Names of the engine's containers, volumes and networks labelled with `run_id`.
fn resources_of(run_id: &str) -> Vec<String> {
    let label = format!("label=io.drillrig.run={run_id}");
    let mut found = Vec::new();
    for (what, format) in [
        ("container", "{{.Names}}"),
        ("volume", "{{.Name}}"),
        ("network", "{{.Name}}"),
    ] {
        let mut args = vec![what, "ls", "--filter", &label, "--format", format];
        if what == "container" {
            args.insert(2, "-a");
        }
        let out = Command::new("docker").args(&args).output().unwrap();
        found.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| format!("{what} {l}")),
        );
    }
    found
}

fn assert_no_leftovers(run: &Run) {
    let run_id = run.report["run_id"].as_str().unwrap();
    assert_eq!(
        resources_of(run_id),
        Vec::<String>::new(),
        "run {run_id} left resources behind"
    );
}

/// Every lost write was acknowledged after the restored backup's consistency point, none
/// below the recovered prefix (no holes), and the loss is not vacuous.
fn assert_prefix_loss_after_backup(run: &Run) {
    let t = run.target();
    assert_eq!(t["rpo"]["holes"], 0);
    assert_eq!(t["rpo"]["unexpected"], 0);
    assert_eq!(t["rpo"]["mismatched"], 0);
    let restored = t["restore"]["backup_id"]
        .as_u64()
        .expect("a backup was restored");
    let backup = t["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == restored)
        .unwrap();
    let consistent_at = backup["consistent_at_ms"].as_f64().unwrap();
    let ledger = run.ledger();
    let lost: Vec<_> = ledger.iter().filter(|w| w.3 == "yes").collect();
    assert!(
        !lost.is_empty(),
        "writes after the last backup must be lost"
    );
    assert_eq!(lost.len() as u64, t["rpo"]["lost_writes"].as_u64().unwrap());
    for w in &lost {
        assert_eq!(w.2, "ok", "only acknowledged writes count as lost");
        assert!(
            w.1 >= consistent_at,
            "seq {} was acknowledged at {} ms, before backup {restored} was consistent at {consistent_at} ms",
            w.0,
            w.1
        );
    }
    let first_lost = lost[0].0;
    assert!(
        ledger
            .iter()
            .all(|w| w.2 != "ok" || w.0 < first_lost || w.3 == "yes"),
        "a recovered write above the first lost one is a hole"
    );
    // The RPO is the span of acknowledged writes lost before the fault.
    let rpo = t["rpo"]["achieved_ms"].as_u64().unwrap();
    assert!(
        rpo > 0 && rpo <= t["rpo"]["target_ms"].as_u64().unwrap(),
        "rpo {rpo}"
    );
}

#[test]
fn kill_and_crash_recovery_lose_no_acknowledged_write() {
    let _engine = engine();
    let run = drill("scenarios/pg-kill.toml", "pg-kill", &[]);
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    assert_eq!(run.report["outcome"], "met");
    let t = run.target();
    assert!(
        t["rpo"]["acked_writes"].as_u64().unwrap() > 500,
        "the workload wrote"
    );
    assert_eq!(t["rpo"]["lost_writes"], 0);
    assert_eq!(t["rpo"]["holes"], 0);
    assert_eq!(t["rpo"]["achieved_ms"], 0);
    let fault = &run.report["faults"][0];
    assert_eq!(fault["kind"], "kill");
    assert_eq!(
        fault["details"]["exit_code"], 137,
        "the server died of SIGKILL"
    );
    assert!(
        t["detection"]["detected_at_ms"].as_u64().unwrap()
            >= fault["injected_at_ms"].as_u64().unwrap()
    );
    let rto = t["rto"]["achieved_ms"].as_u64().unwrap();
    let phases: u64 = t["rto"]["phases"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(
        rto.abs_diff(phases) <= 5,
        "phases {phases} ms add up to the RTO {rto} ms"
    );
    for check in ["ledger", "foreign-keys", "amcheck"] {
        assert_eq!(run.check(check), "passed");
    }
    assert!(run.dir.join("report.md").exists());
    assert!(
        run.dir.join("logs").read_dir().unwrap().count() >= 1,
        "container logs are kept"
    );
    assert_no_leftovers(&run);
}

#[test]
fn a_corrupted_page_is_detected_and_the_latest_dump_restored() {
    let _engine = engine();
    let run = drill("scenarios/pg-corruption.toml", "pg-corruption", &[]);
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    assert_eq!(run.report["outcome"], "met");
    let t = run.target();
    let fault = &run.report["faults"][0]["details"];
    assert_ne!(
        fault["bytes_before"], fault["bytes_after"],
        "the page really changed"
    );
    let cause = t["detection"]["cause"].as_str().unwrap();
    assert!(
        cause.contains("invalid page in block"),
        "detected by a failing checksum: {cause}"
    );
    assert_prefix_loss_after_backup(&run);
    for check in [
        "ledger",
        "row-counts",
        "checksums",
        "foreign-keys",
        "amcheck",
        "backup-integrity",
    ] {
        assert_eq!(run.check(check), "passed", "{check}");
    }
    assert!(
        t["rto"]["phases"]["provision"].as_u64().is_some()
            && t["rto"]["phases"]["restore"].as_u64().is_some()
    );
    assert_no_leftovers(&run);
}

#[test]
fn a_dropped_table_comes_back_from_the_latest_dump() {
    let _engine = engine();
    let run = drill("scenarios/pg-drop-table.toml", "pg-drop-table", &[]);
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    assert_eq!(run.report["outcome"], "met");
    let cause = run.target()["detection"]["cause"].as_str().unwrap();
    assert!(cause.contains("does not exist"), "{cause}");
    assert_prefix_loss_after_backup(&run);
    assert_no_leftovers(&run);
}

#[test]
fn a_damaged_backup_makes_the_drill_miss_and_keep_on_failure_keeps_it_for_gc() {
    let _engine = engine();
    let run = drill(
        "scenarios/controls/pg-unrestorable-backup.toml",
        "pg-unrestorable-backup",
        &[("DRILLRIG_KEEP", "on-failure")],
    );
    assert_eq!(run.code(), Some(1), "{}", run.debug());
    assert_eq!(run.report["outcome"], "missed");
    let t = run.target();
    assert!(
        t["restore"]["error"]
            .as_str()
            .unwrap()
            .contains("pg_restore"),
        "{}",
        t["restore"]
    );
    assert_eq!(t["rto"]["achieved_ms"], Value::Null);
    assert_eq!(t["rto"]["met"], false);
    assert_eq!(run.check("backup-integrity"), "failed");
    assert_eq!(run.check("row-counts"), "failed");
    let stdout = String::from_utf8_lossy(&run.output.stdout);
    assert!(
        stdout.contains("backup-integrity") && stdout.contains("FAILED"),
        "the failing checks are named:\n{stdout}"
    );

    // DRILLRIG_KEEP=on-failure left the run in place; its process has exited, so gc removes it.
    let run_id = run.report["run_id"].as_str().unwrap();
    assert!(
        !resources_of(run_id).is_empty(),
        "containers are kept for inspection"
    );
    let gc = Command::new(BIN).arg("gc").output().unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert!(String::from_utf8_lossy(&gc.stdout).contains(run_id));
    assert_no_leftovers(&run);
}

#[test]
fn sigint_ends_the_drill_with_a_partial_report_and_no_leftovers() {
    let _engine = engine();
    let dir = out_dir("interrupted");
    let mut child = Command::new(BIN)
        .args([
            "run",
            repo("scenarios/pg-corruption.toml").to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt during the workload, after the first backup.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !dir.join("backups/pg/001-pg-dump/manifest.json").exists() {
        assert!(
            Instant::now() < deadline,
            "the drill never took its first backup"
        );
        assert!(child.try_wait().unwrap().is_none(), "the drill ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["outcome"], "interrupted");
    let phases: Vec<&str> = report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert!(
        phases.starts_with(&["provision", "seed", "workload"]),
        "{phases:?}"
    );
    assert_eq!(report["targets"][0]["backups"][0]["id"], 1);
    let run_id = report["run_id"].as_str().unwrap();
    assert_eq!(resources_of(run_id), Vec::<String>::new());
}

#[test]
fn gc_removes_dead_runs_only() {
    let _engine = engine();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let mut exited = Command::new("true").spawn().unwrap();
    let dead_pid = exited.id().to_string();
    exited.wait().unwrap();
    let me = std::process::id().to_string();
    let my_start = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
    let my_start = my_start[my_start.rfind(')').unwrap() + 2..]
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
        let out = Command::new("docker").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
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

    let gc = Command::new(BIN).arg("gc").output().unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    let exists = |name: &str| {
        let out = Command::new("docker")
            .args([
                "ps",
                "-a",
                "-q",
                "--filter",
                &format!("name=^{name}-{suffix}$"),
            ])
            .output()
            .unwrap();
        !out.stdout.is_empty()
    };
    let (dead_gone, live_kept, stranger_kept) =
        (!exists("gc-dead"), exists("gc-live"), exists("gc-stranger"));
    for name in ["gc-dead", "gc-live", "gc-stranger"] {
        let _ = Command::new("docker")
            .args(["rm", "-f", &format!("{name}-{suffix}")])
            .output();
    }
    assert!(dead_gone, "the dead run's container is removed");
    assert!(live_kept, "a live run's container is never touched");
    assert!(
        stranger_kept,
        "a container without drillrig's labels is never touched"
    );
}

#[test]
fn validate_reports_each_bad_file_and_exits_2() {
    let dir = out_dir("validate");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "schema = 1\nname = \"x\"\n[targets.pg]\nkind = \"postgres\"\nrestore = { from = \"restart\" }\nobjectives = { rto = \"5 fortnights\", rpo = \"0s\" }\n").unwrap();
    let out = Command::new(BIN)
        .args([
            "validate",
            repo("scenarios/pg-kill.toml").to_str().unwrap(),
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "bad.toml:6:22: targets.pg.objectives.rto: invalid duration \"5 fortnights\""
        ),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: "));
}

#[test]
fn a_second_sigint_forces_removal_at_once() {
    let _engine = engine();
    let dir = out_dir("interrupted-twice");
    let child = Command::new(BIN)
        .args([
            "run",
            repo("scenarios/pg-kill.toml").to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the workload has written, so containers exist.
    let deadline = Instant::now() + Duration::from_secs(120);
    let run_id = loop {
        let labels = Command::new("docker")
            .args([
                "ps",
                "--filter",
                "label=io.drillrig.scenario=pg-kill",
                "--format",
                "{{.Label \"io.drillrig.run\"}}",
            ])
            .output()
            .unwrap();
        let id = String::from_utf8_lossy(&labels.stdout).trim().to_string();
        if !id.is_empty() {
            break id;
        }
        assert!(Instant::now() < deadline, "no container appeared");
        std::thread::sleep(Duration::from_millis(100));
    };
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("interrupted again"));
    assert_eq!(resources_of(&run_id), Vec::<String>::new());
}
