//! Helpers shared by the integration tests: run the real `drillrig` binary, read what a user
//! reads (report.json, the ledger CSV), and ask the engine what is left.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_drillrig");

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A fresh output folder for one test, kept after the run for inspection.
pub fn out_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("drills")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Drills run side by side, one per test thread (`RUST_TEST_THREADS` in `.cargo/config.toml`): a
/// drill mostly waits on its containers. A test that runs `drillrig gc`, or leaves a dead run
/// for one to find, takes the engine alone: every drill's start collects dead runs, and gc
/// collects kept ones too, so either would race with it.
static ENGINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// The engine, shared with other drills; held for the whole test.
pub fn engine() -> Timed<std::sync::RwLockReadGuard<'static, ()>> {
    require_docker();
    Timed::new(
        ENGINE
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}

/// The engine with no other drill on it; held for the whole test.
pub fn engine_alone() -> Timed<std::sync::RwLockWriteGuard<'static, ()>> {
    require_docker();
    Timed::new(
        ENGINE
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}

/// An engine guard that, when the test ends (passed or panicked), appends the test's own time
/// on the engine to `test-times.tsv` in Cargo's test folder: `.ci/groups` sums it per group,
/// since side-by-side tests' output lines no longer time them.
pub struct Timed<G> {
    _guard: G,
    started: std::time::SystemTime,
}

impl<G> Timed<G> {
    fn new(guard: G) -> Self {
        Timed {
            _guard: guard,
            started: std::time::SystemTime::now(),
        }
    }
}

impl<G> Drop for Timed<G> {
    fn drop(&mut self) {
        use std::io::Write;
        let epoch = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64()
        };
        let name = std::thread::current().name().unwrap_or("?").to_string();
        let line = format!(
            "{name}\t{:.3}\t{:.3}\n",
            epoch(self.started),
            epoch(std::time::SystemTime::now())
        );
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-times.tsv");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

pub fn require_docker() {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "no Docker engine answers: these tests need one (run fixtures/env/prepare.sh as root)"
    );
}

pub struct Run {
    pub output: Output,
    pub dir: PathBuf,
    pub report: Value,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn target(&self) -> &Value {
        &self.report["targets"][0]
    }

    pub fn run_id(&self) -> &str {
        self.report["run_id"].as_str().unwrap()
    }

    pub fn check(&self, name: &str) -> &str {
        self.check_field(name, "status")
    }

    /// What the first target's check `name` says it found.
    pub fn check_detail(&self, name: &str) -> &str {
        self.check_field(name, "detail")
    }

    fn check_field(&self, name: &str, field: &str) -> &str {
        self.target()["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name} in {}", self.target()["checks"]))[field]
            .as_str()
            .unwrap()
    }

    /// The backup the first target was restored from.
    pub fn restored_backup(&self) -> &Value {
        let t = self.target();
        let id = t["restore"]["backup_id"]
            .as_u64()
            .expect("a backup was restored");
        t["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .expect("the restored backup is in the catalog")
    }

    /// `(seq, completed_ms, outcome, lost)` per ledger row of target `pg`.
    pub fn ledger(&self) -> Vec<(u64, f64, String, String)> {
        self.ledger_of("pg")
    }

    /// `(seq, completed_ms, outcome, lost)` per ledger row of `target`.
    pub fn ledger_of(&self, target: &str) -> Vec<(u64, f64, String, String)> {
        let text = std::fs::read_to_string(self.dir.join(format!("ledger-{target}.csv"))).unwrap();
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

    pub fn debug(&self) -> String {
        format!(
            "exit {:?}\nstderr:\n{}\nstdout:\n{}",
            self.code(),
            self.stderr(),
            self.stdout()
        )
    }
}

pub fn read_report(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("report.json"))
        .unwrap_or_else(|e| panic!("no report.json in {}: {e}", dir.display()));
    serde_json::from_str(&text).expect("report.json parses")
}

/// Runs a drill to its end; the caller holds [`engine`].
pub fn drill(scenario: &str, test: &str, env: &[(&str, &str)]) -> Run {
    drill_with(scenario, test, env, &[])
}

pub fn drill_with(scenario: &str, test: &str, env: &[(&str, &str)], args: &[&str]) -> Run {
    let dir = out_dir(test);
    let output = Command::new(BIN)
        .args([
            "run",
            repo(scenario).to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ])
        .args(args)
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

/// Starts a drill in the background; the caller holds [`engine`].
pub fn spawn_drill(scenario: &str, dir: &Path) -> Child {
    Command::new(BIN)
        .args([
            "run",
            repo(scenario).to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A running drill's stderr, followed line by line on a thread: the drill logs each phase as it
/// begins, so a test can act at a phase.
pub struct Stderr {
    lines: std::sync::mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<String>,
}

impl Stderr {
    /// Takes `child`'s piped stderr.
    pub fn follow(child: &mut Child) -> Stderr {
        use std::io::BufRead;
        let stderr = std::io::BufReader::new(child.stderr.take().expect("stderr is piped"));
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in stderr.lines().map_while(Result::ok) {
                all.push_str(&line);
                all.push('\n');
                let _ = tx.send(line);
            }
            all
        });
        Stderr { lines, reader }
    }

    /// Waits for a line containing `marker`; `Err` says why none came (`limit` passed, or the
    /// drill ended first).
    pub fn wait_for(&self, marker: &str, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(marker) => return Ok(()),
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("no {marker:?} within {limit:?}"));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("the drill ended before {marker:?}"));
                }
            }
        }
    }

    /// Calls `seen(i)` as the first line containing `markers[i]` comes, for each marker in
    /// whatever order they come; `Err` when one has not come within `limit`.
    pub fn on_each(
        &self,
        markers: &[&str],
        limit: Duration,
        mut seen: impl FnMut(usize),
    ) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut left: Vec<usize> = (0..markers.len()).collect();
        while !left.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(wait).map_err(|e| {
                format!(
                    "no {:?} ({e:?})",
                    left.iter().map(|&i| markers[i]).collect::<Vec<_>>()
                )
            })?;
            if let Some(at) = left.iter().position(|&i| line.contains(markers[i])) {
                seen(left.remove(at));
            }
        }
        Ok(())
    }

    /// Everything the drill wrote to stderr, once it has ended.
    pub fn all(self) -> String {
        self.reader.join().expect("the reader does not panic")
    }
}

/// Waits until `ready` holds, failing after `limit` or when `child` ends first.
pub fn wait_until(child: &mut Child, limit: Duration, what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the drill ended before {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The run id of the drill that process `pid` runs (from its containers' owner labels), once
/// it has a container.
pub fn running_run_id(pid: u32) -> Option<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "--filter",
            &format!("label=io.drillrig.pid={pid}"),
            "--format",
            "{{.Label \"io.drillrig.run\"}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(String::from)
}

pub fn signal(child: &Child, sig: &str) {
    assert!(
        Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// Names of the engine's containers, volumes and networks of `run_id`: labelled with it, or
/// (containers and volumes) named after it, since a volume re-created by a late container
/// create carries no labels.
pub fn resources_of(run_id: &str) -> Vec<String> {
    let label = format!("label=io.drillrig.run={run_id}");
    let name = format!("name=drillrig-{run_id}-");
    let mut found = std::collections::BTreeSet::new();
    for (what, format, filters) in [
        ("container", "{{.Names}}", vec![&label, &name]),
        ("volume", "{{.Name}}", vec![&label, &name]),
        ("network", "{{.Name}}", vec![&label]),
    ] {
        for filter in filters {
            let mut args = vec![what, "ls", "--filter", filter, "--format", format];
            if what == "container" {
                args.insert(2, "-a");
            }
            found.extend(docker(&args).lines().map(|l| format!("{what} {l}")));
        }
    }
    found.into_iter().collect()
}

/// Removes what run `run_id` left, and nothing else, with `drillrig gc RUN_ID`: how a test
/// cleans up a kept run of its own (its process has exited) without collecting other tests'
/// kept runs, which a bare `drillrig gc` would.
pub fn remove_run(run_id: &str) {
    let gc = Command::new(BIN).args(["gc", run_id]).output().unwrap();
    assert!(
        gc.status.success(),
        "drillrig gc {run_id}: {}",
        String::from_utf8_lossy(&gc.stderr)
    );
}

/// Runs the docker CLI; returns its stdout, panicking with its stderr if it fails.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn assert_no_leftovers(run_id: &str) {
    assert_eq!(
        resources_of(run_id),
        Vec::<String>::new(),
        "run {run_id} left resources behind"
    );
}

/// A copy of a shipped scenario with each `(from, to)` replaced (each `from` must be there), kept
/// in the test's own folder; returns its path.
pub fn variant(scenario: &str, test: &str, edits: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(repo(scenario)).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{scenario} has no {from:?}");
        text = text.replace(from, to);
    }
    let dir = out_dir(&format!("{test}-scenario"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(Path::new(scenario).file_name().unwrap());
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// The test scenario `base` with the targets of shipped scenarios in place of its own of the
/// same names, each with its faults: `(shipped scenario, edits as [`variant`] makes them)`. A
/// drill of one target of each kind runs the shipped single-target scenarios of the same fault
/// for the price of one drill. Kept in the test's own folder; returns its path.
pub fn with_targets_of(base: &str, test: &str, shipped: &[(&str, &[(&str, &str)])]) -> String {
    let mut scenario: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo(base)).unwrap()).unwrap();
    for (file, edits) in shipped {
        let mut text = std::fs::read_to_string(repo(file)).unwrap();
        for (from, to) in *edits {
            assert!(text.contains(from), "{file} has no {from:?}");
            text = text.replace(from, to);
        }
        let other: toml::Table = toml::from_str(&text).unwrap();
        for (name, target) in other["targets"].as_table().unwrap() {
            let targets = scenario
                .get_mut("targets")
                .and_then(toml::Value::as_table_mut)
                .unwrap();
            assert!(targets.contains_key(name), "{base} has no target {name}");
            targets.insert(name.clone(), target.clone());
            let on = |f: &toml::Value| f.get("target").and_then(toml::Value::as_str) == Some(name);
            let faults = scenario
                .get_mut("faults")
                .and_then(toml::Value::as_array_mut)
                .unwrap();
            faults.retain(|f| !on(f));
            faults.extend(
                other["faults"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|f| on(f))
                    .cloned(),
            );
        }
    }
    let dir = out_dir(&format!("{test}-scenario"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(Path::new(base).file_name().unwrap());
    std::fs::write(&path, toml::to_string(&scenario).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

/// Copies the folder `from` to `to` (created), as `cp -a` does.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// Every file (and symbolic link) under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            // A symbolic link is listed, not followed.
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A container the test started itself, removed when dropped.
pub struct Scratch(pub String);

impl Scratch {
    pub fn start(name: &str, args: &[&str]) -> Scratch {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", name])
            .output();
        let mut all = vec!["run", "-d", "--name", name];
        all.extend_from_slice(args);
        docker(&all);
        Scratch(name.to_string())
    }

    pub fn exec(&self, user: &str, script: &str) -> Vec<u8> {
        let out = Command::new("docker")
            .args(["exec", "-u", user, &self.0, "sh", "-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn port(&self, port: u16) -> u16 {
        let out = docker(&["port", &self.0, &format!("{port}/tcp")]);
        out.lines()
            .next()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.trim().parse().ok())
            .expect("a published port")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.0])
            .output();
    }
}

pub fn wait_for(what: &str, limit: Duration, ok: impl Fn() -> bool) {
    let until = std::time::Instant::now() + limit;
    while !ok() {
        assert!(std::time::Instant::now() < until, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The S3-compatible server, with SigV4 on; returns it and its endpoint.
pub fn s3_server(name: &str) -> (Scratch, String) {
    let s = Scratch::start(
        name,
        &[
            "-p",
            "127.0.0.1:0:9000",
            "drillrig/s3:0.14.1-bookworm",
            "--access-key",
            "drillrig-test-key",
            "--secret-key",
            S3_SECRET,
            "/data",
        ],
    );
    s.exec("root", "mkdir -p /data/backups");
    let endpoint = format!("http://127.0.0.1:{}", s.port(9000));
    wait_for("the S3 server", Duration::from_secs(20), || {
        std::net::TcpStream::connect(endpoint.trim_start_matches("http://")).is_ok()
    });
    (s, endpoint)
}

pub const S3_SECRET: &str = "s3cr3t-never-in-any-output";

pub fn s3_env(secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "drillrig-test-key".to_string()),
        ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ]
}

/// A client of the test S3 server's `backups` bucket, with the test's keys.
pub fn test_bucket(endpoint: &str) -> object_store::aws::AmazonS3 {
    drillrig::util::tls_provider();
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name("backups")
        .with_access_key_id("drillrig-test-key")
        .with_secret_access_key(S3_SECRET)
        .build()
        .unwrap()
}

/// Asserts that the run's `report.md` says what its `report.json` says: the title's outcome;
/// per target, in the summary table, the RTO and RPO achieved and their targets, the lost writes
/// and holes (or "unknown" with the report's reason), the checks passed and the verdict; the
/// platform's row; each target's phases, lost writes, restore error and checks (name, status,
/// detail) in order; and the faults table. The Markdown is parsed back, never compared with a
/// text built the way the writer builds it.
pub fn assert_report_md_agrees(run: &Run) {
    let md = std::fs::read_to_string(run.dir.join("report.md"))
        .unwrap_or_else(|e| panic!("no report.md in {}: {e}", run.dir.display()));
    let r = &run.report;
    let text = |v: &Value| {
        v.as_str()
            .unwrap_or_else(|| panic!("not a string: {v}"))
            .to_string()
    };
    let outcome = text(&r["outcome"]);
    assert_eq!(
        md.lines().next(),
        Some(
            format!(
                "# drillrig: {} — {}",
                text(&r["scenario"]),
                outcome.to_uppercase()
            )
            .as_str()
        ),
        "report.md's title\n{md}"
    );
    assert!(md.contains(&format!("- run `{}`", run.run_id())), "{md}");
    if let Some(error) = r["error"].as_str() {
        assert!(md.contains(&format!("- **{outcome}**: {error}")), "{md}");
    }
    let sections = md_sections(&md);
    let top = &sections[0].1;

    // The summary table: one row per target, then the platform's.
    let summary = md_table(top, "target");
    let targets = r["targets"].as_array().unwrap();
    let platform = &r["platform"];
    assert_eq!(
        summary.len(),
        targets.len() + usize::from(!platform.is_null()),
        "summary rows: {summary:?}"
    );
    for t in targets {
        let name = text(&t["name"]);
        let row = summary
            .iter()
            .find(|row| row[0] == name)
            .unwrap_or_else(|| panic!("no row for {name} in {summary:?}"));
        let what = |cell: &str| format!("{name}'s {cell} in report.md: {row:?}");
        assert_eq!(
            md_seconds(&row[1]),
            t["rto"]["target_ms"].as_u64(),
            "{}",
            what("RTO target")
        );
        assert_eq!(
            md_seconds(&row[2]),
            t["rto"]["achieved_ms"].as_u64(),
            "{}",
            what("RTO")
        );
        assert_eq!(
            md_seconds(&row[3]),
            t["rpo"]["target_ms"].as_u64(),
            "{}",
            what("RPO target")
        );
        assert_eq!(
            md_seconds(&row[4]),
            t["rpo"]["achieved_ms"].as_u64(),
            "{}",
            what("RPO")
        );
        assert_md_count(
            &row[5],
            &t["rpo"]["lost_writes"],
            &t["rpo"]["unknown"],
            &what("lost writes"),
        );
        assert_md_count(
            &row[6],
            &t["rpo"]["holes"],
            &t["rpo"]["unknown"],
            &what("holes"),
        );
        let checks = t["checks"].as_array().unwrap();
        let passed = checks.iter().filter(|c| c["status"] == "passed").count();
        assert_eq!(
            row[7],
            format!("{passed}/{} passed", checks.len()),
            "{}",
            what("checks")
        );
        let met = t["rto"]["met"] == true
            && t["rpo"]["met"] == true
            && t["restore"]["error"].is_null()
            && passed == checks.len()
            && t["unasked_outages"].as_array().is_none_or(Vec::is_empty)
            && t["write_latency"]["objective"]["met"] != false;
        assert_eq!(
            row[8],
            if met { "met" } else { "**missed**" },
            "{}",
            what("verdict")
        );
    }
    if !platform.is_null() {
        let row = summary
            .iter()
            .find(|row| row[0] == "**platform**")
            .unwrap_or_else(|| panic!("no platform row in {summary:?}"));
        assert_eq!(
            md_seconds(&row[1]),
            platform["rto"]["target_ms"].as_u64(),
            "{row:?}"
        );
        assert_eq!(
            md_seconds(&row[2]),
            platform["rto"]["achieved_ms"].as_u64(),
            "{row:?}"
        );
        assert_eq!(
            md_seconds(&row[3]),
            platform["rpo"]["target_ms"].as_u64(),
            "{row:?}"
        );
        assert_eq!(
            md_seconds(&row[4]),
            platform["rpo"]["achieved_ms"].as_u64(),
            "{row:?}"
        );
        assert_md_count(
            &row[5],
            &platform["rpo"]["lost_writes"],
            &Value::Null,
            "platform lost",
        );
        let met = platform["met"].as_bool().unwrap();
        assert_eq!(row[8], if met { "met" } else { "**missed**" }, "{row:?}");
    }

    // Each target's own section.
    for t in targets {
        let name = text(&t["name"]);
        let heading = format!("## {name} ({})", text(&t["kind"]));
        let lines = &sections
            .iter()
            .find(|(h, _)| *h == heading)
            .unwrap_or_else(|| panic!("no {heading:?} in report.md\n{md}"))
            .1;
        let phases: Vec<(String, Option<u64>)> = lines
            .iter()
            .find_map(|l| l.strip_prefix("Recovery phases: "))
            .map(|l| {
                l.trim_end_matches('.')
                    .split(" → ")
                    .map(|p| {
                        let (phase, took) = p.split_once(' ').unwrap();
                        (phase.to_string(), md_seconds(took))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let reported = t["rto"]["phases"].as_object().unwrap();
        assert_eq!(
            phases.len(),
            reported.len(),
            "{name}: phases {phases:?} against {reported:?}"
        );
        for (phase, ms) in &phases {
            assert_eq!(*ms, reported[phase].as_u64(), "{name}: phase {phase}");
        }
        let latency = lines
            .iter()
            .find_map(|l| l.strip_prefix("Acknowledged-write p99: "));
        let w = &t["write_latency"];
        assert_eq!(
            latency.is_some(),
            !w.is_null(),
            "{name}: write latency {latency:?}"
        );
        if let Some(line) = latency {
            assert_md_latency(line, w, &name);
        }
        let workload = lines
            .iter()
            .find(|l| l.starts_with("Workload: "))
            .unwrap_or_else(|| panic!("{name}: no workload line"));
        let lost = workload
            .split("acknowledged writes lost: ")
            .nth(1)
            .and_then(|l| l.split("; unacknowledged present").next())
            .unwrap_or_else(|| panic!("{name}: {workload}"));
        assert_md_count(
            lost,
            &t["rpo"]["lost_writes"],
            &t["rpo"]["unknown"],
            workload,
        );
        let restore = lines
            .iter()
            .find(|l| l.starts_with("Restore from `"))
            .unwrap_or_else(|| panic!("{name}: no restore line"));
        assert!(
            restore.starts_with(&format!("Restore from `{}`", text(&t["restore"]["from"]))),
            "{restore}"
        );
        match t["restore"]["error"].as_str() {
            Some(error) => assert!(
                restore.contains(&format!(": **failed**: {error}")),
                "{restore}"
            ),
            None => assert!(!restore.contains("**failed**"), "{restore}"),
        }
        let checks = t["checks"].as_array().unwrap();
        let rows = if checks.is_empty() {
            Vec::new()
        } else {
            md_table(lines, "check")
        };
        assert_eq!(rows.len(), checks.len(), "{name}: checks {rows:?}");
        for (row, c) in rows.iter().zip(checks) {
            let title = match c["query"].as_str() {
                Some(q) => format!("query: {q}"),
                None => text(&c["name"]),
            };
            let status = match c["status"].as_str().unwrap() {
                "passed" => "passed".to_string(),
                other => format!("**{other}**"),
            };
            assert_eq!(
                (&row[0], &row[1], &row[2]),
                (&title, &status, &text(&c["detail"])),
                "{name}: check {title} in report.md against report.json"
            );
        }
    }

    // The faults, in order.
    let faults = r["faults"].as_array().unwrap();
    let rows = sections
        .iter()
        .find(|(h, _)| h == "## Faults")
        .map_or_else(Vec::new, |(_, lines)| md_table(lines, "target"));
    assert_eq!(rows.len(), faults.len(), "faults {rows:?}");
    for (row, f) in rows.iter().zip(faults) {
        assert_eq!(row[0], text(&f["target"]), "{row:?}");
        assert_eq!(row[1], text(&f["kind"]), "{row:?}");
        assert_eq!(md_seconds(&row[2]), f["scheduled_ms"].as_u64(), "{row:?}");
        assert_eq!(md_seconds(&row[3]), f["injected_at_ms"].as_u64(), "{row:?}");
        assert_eq!(row[4], f["error"].as_str().unwrap_or("done"), "{row:?}");
    }
}

/// report.md's line on a latency fault (after "Acknowledged-write p99: ") against the report's
/// `write_latency`: the p99 before, during and after, the unacknowledged writes during it, and
/// the `write_p99` objective's target, figure and verdict. Figures are shown to 0.1 ms.
fn assert_md_latency(line: &str, w: &Value, target: &str) {
    // Each figure as the line gives it: a number of ms, or `—` (`None`).
    let ms = |text: &str| -> Option<f64> {
        let text = text.trim();
        (text != "—").then(|| {
            text.strip_suffix(" ms")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{target}: not ms: {text:?} in {line}"))
        })
    };
    let near = |shown: Option<f64>, reported: &Value, what: &str| match (shown, reported.as_f64()) {
        (Some(a), Some(b)) => assert!(
            (a - b).abs() <= 0.05,
            "{target}: {what} {a} against {b}: {line}"
        ),
        (a, b) => assert_eq!(a, b, "{target}: {what}: {line}"),
    };
    let (before, rest) = line.split_once(" before the latency fault, ").expect(line);
    near(ms(before), &w["before"]["p99_ms"], "p99 before");
    let (during, rest) = rest.split_once(" during it (").expect(line);
    near(ms(during), &w["during"]["p99_ms"], "p99 during");
    let (unacked, rest) = rest.split_once(" of ").expect(line);
    assert_eq!(
        unacked.parse::<u64>().ok(),
        w["during"]["unacknowledged"].as_u64(),
        "{line}"
    );
    let (all, rest) = rest.split_once(" writes unacknowledged), ").expect(line);
    let invoked =
        w["during"]["writes"].as_u64().unwrap() + w["during"]["unacknowledged"].as_u64().unwrap();
    assert_eq!(all.parse::<u64>().ok(), Some(invoked), "{line}");
    let (after, objective) = match rest.split_once(" after; objective write_p99 ") {
        Some((after, objective)) => (after, Some(objective)),
        None => (rest.strip_suffix(" after.").expect(line), None),
    };
    near(ms(after), &w["after"]["p99_ms"], "p99 after");
    let o = &w["objective"];
    assert_eq!(
        objective.is_some(),
        !o.is_null(),
        "{target}: objective: {line}"
    );
    if let Some(objective) = objective {
        let (wanted, rest) = objective.split_once(" ms: ").expect(line);
        assert_eq!(
            wanted.parse::<u64>().ok(),
            o["target_ms"].as_u64(),
            "{line}"
        );
        let (achieved, verdict) = rest
            .split_once(" counting the unacknowledged, ")
            .expect(line);
        near(ms(achieved), &o["achieved_ms"], "objective");
        let met = o["met"].as_bool().unwrap();
        assert_eq!(
            verdict,
            if met { "**met**." } else { "**missed**." },
            "{line}"
        );
    }
}

/// report.md cut at its `#` and `##` headings: `(heading, lines under it)`, the title's first.
fn md_sections(md: &str) -> Vec<(String, Vec<String>)> {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for line in md.lines() {
        if line.starts_with("# ") || line.starts_with("## ") {
            sections.push((line.to_string(), Vec::new()));
        } else if let Some((_, lines)) = sections.last_mut() {
            lines.push(line.to_string());
        }
    }
    sections
}

/// The body rows of the table in `lines` whose header's first cell is `first`, as cells.
fn md_table(lines: &[String], first: &str) -> Vec<Vec<String>> {
    let start = lines
        .iter()
        .position(|l| md_cells(l).first().is_some_and(|c| c == first))
        .unwrap_or_else(|| panic!("no table headed {first:?} in {lines:#?}"));
    let width = md_cells(&lines[start]).len();
    assert!(lines[start + 1].starts_with("| ---"), "{lines:#?}");
    lines[start + 2..]
        .iter()
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells = md_cells(l);
            assert_eq!(cells.len(), width, "a row of {width} cells: {l}");
            cells
        })
        .collect()
}

/// The cells of a table row, `\|` read as `|`.
fn md_cells(line: &str) -> Vec<String> {
    let Some(inner) = line
        .trim()
        .strip_prefix('|')
        .and_then(|l| l.strip_suffix('|'))
    else {
        return Vec::new();
    };
    let mut cells = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cells.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => cells.push(String::new()),
            c => cells.last_mut().unwrap().push(c),
        }
    }
    cells.iter().map(|c| c.trim().to_string()).collect()
}

/// `12.345s` as ms; `—` (nothing measured) as `None`.
fn md_seconds(cell: &str) -> Option<u64> {
    if cell == "—" {
        return None;
    }
    let (s, ms) = cell
        .strip_suffix('s')
        .and_then(|c| c.split_once('.'))
        .unwrap_or_else(|| panic!("not seconds: {cell:?}"));
    assert_eq!(ms.len(), 3, "{cell:?}");
    Some(s.parse::<u64>().unwrap() * 1000 + ms.parse::<u64>().unwrap())
}

/// A count report.md shows: the report's number, or, when the report has none, "unknown" with
/// the report's reason when it gives one.
fn assert_md_count(cell: &str, count: &Value, why: &Value, what: &str) {
    match (count.as_u64(), why.as_str()) {
        (Some(n), _) => assert_eq!(cell, n.to_string(), "{what}"),
        (None, Some(why)) => assert_eq!(cell, format!("unknown ({why})"), "{what}"),
        (None, None) => assert_eq!(cell, "unknown", "{what}"),
    }
}
