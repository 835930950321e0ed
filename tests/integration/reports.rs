//! Suites, the history (SQLite and a real PostgreSQL), the regression gate and the reports, through
//! the `drillrig` command.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{BIN, engine, out_dir, repo, variant};
use drillrig::history::{History, RunRecord};
use drillrig::report::{CheckOutcome, TargetOutcome};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// A recorded run of `scenario` with one target whose RTO was `rto_ms` (objective 60 s).
fn past_run(i: usize, scenario: &str, rto_ms: i64) -> RunRecord {
    RunRecord {
        run_id: format!("past-{scenario}-{i}"),
        scenario: scenario.into(),
        scenario_file: format!("scenarios/{scenario}.toml"),
        started_at: format!("2026-10-{:02}T03:00:00Z", i + 1),
        duration_ms: 40_000,
        outcome: "met".into(),
        error: None,
        drillrig_version: "0.1.0".into(),
        git_revision: None,
        report_dir: None,
        targets: vec![TargetOutcome {
            target: "db".into(),
            kind: "postgres".into(),
            image: Some("drillrig/postgres:15-bookworm".into()),
            dataset_rows: Some(10_000),
            backup_bytes: None,
            rto_achieved_ms: Some(rto_ms),
            rto_target_ms: 60_000,
            rto_met: true,
            rpo_achieved_ms: Some(1_000 + 100 * i as i64),
            rpo_target_ms: 5_000,
            rpo_met: true,
            acked_writes: 2_000,
            lost_writes: Some(10),
            lost_writes_unknown: None,
            failover: None,
            phases: vec![
                ("detect".into(), 200),
                ("provision".into(), 900),
                ("restore".into(), rto_ms - 1_600),
                ("verify".into(), 500),
            ],
            checks: vec![CheckOutcome {
                name: "ledger".into(),
                status: "passed".into(),
                detail: "recovered".into(),
                value: Some("7".into()),
            }],
        }],
    }
}

fn history_with(path: &Path, runs: &[RunRecord]) {
    runtime().block_on(async {
        let mut h = History::open(path.to_str().unwrap()).await.unwrap();
        for r in runs {
            h.record(r).await.unwrap();
        }
    });
}

/// Every run in the history at `path`, oldest first.
fn recorded_runs(path: &Path) -> Vec<RunRecord> {
    runtime().block_on(async {
        History::open(path.to_str().unwrap())
            .await
            .unwrap()
            .runs()
            .await
            .unwrap()
    })
}

/// `drillrig run SCENARIOS ARGS...` with its reports folder, SQLite history and JUnit file in
/// `dir`; returns the output and the history's path.
fn run_recorded(dir: &Path, scenarios: &Path, args: &[&str]) -> (Output, PathBuf) {
    let history = dir.join("history.sqlite");
    let out = Command::new(BIN)
        .arg("run")
        .arg(scenarios)
        .args(args)
        .arg("--reports")
        .arg(dir.join("reports"))
        .arg("--history")
        .arg(&history)
        .arg("--junit")
        .arg(dir.join("junit.xml"))
        .output()
        .unwrap();
    (out, history)
}

#[test]
fn a_suite_runs_its_folder_records_history_and_writes_ci_reports() {
    let _engine = engine();
    let dir = out_dir("suite");
    let suite = dir.join("weekly");
    std::fs::create_dir_all(&suite).unwrap();
    for s in ["pg-kill.toml", "redis-kill-always.toml"] {
        std::fs::copy(repo(&format!("scenarios/{s}")), suite.join(s)).unwrap();
    }
    let (out, history) = run_recorded(
        &dir,
        &suite,
        &[
            "--jobs",
            "2",
            "--summary",
            dir.join("summary.md").to_str().unwrap(),
            "--metrics",
            dir.join("metrics.txt").to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);

    let runs = recorded_runs(&history);
    let mut scenarios: Vec<&str> = runs.iter().map(|r| r.scenario.as_str()).collect();
    scenarios.sort();
    assert_eq!(
        scenarios,
        ["pg-kill", "redis-kill-always"],
        "{stdout}\n{stderr}"
    );
    // Both drills are built to meet their objectives (a kill that loses nothing acknowledged,
    // recovered within 30 s): each must, and the suite's one exit code is then 0.
    for r in &runs {
        assert_eq!(r.outcome, "met", "{}: {stdout}\n{stderr}", r.scenario);
    }
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("suite: "), "{stdout}");
    // Off a terminal: plain log lines, tagged with their drill, without colour codes.
    for s in ["pg-kill", "redis-kill-always"] {
        assert!(
            stderr.contains(&format!("drill{{scenario={s}}}")),
            "{stderr}"
        );
    }
    assert!(!stderr.contains('\x1b'), "{stderr}");

    for r in &runs {
        let report = crate::common::read_report(Path::new(r.report_dir.as_ref().unwrap()));
        assert_eq!(report["run_id"], r.run_id.as_str());
        assert_eq!(report["outcome"], r.outcome.as_str());
        assert_eq!(
            report["targets"][0]["rto"]["achieved_ms"].as_i64(),
            r.targets[0].rto_achieved_ms
        );
    }

    // JUnit: per run, one drill case, two objective cases per target and one per check.
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    let cases: usize = runs
        .iter()
        .map(|r| 1 + r.targets.iter().map(|t| 2 + t.checks.len()).sum::<usize>())
        .sum();
    assert_eq!(junit.matches("<testcase ").count(), cases, "{junit}");
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(summary.contains("| pg-kill |") && summary.contains("| redis-kill-always |"));
    let metrics = std::fs::read_to_string(dir.join("metrics.txt")).unwrap();
    for r in &runs {
        let t = &r.targets[0];
        let line = format!(
            "drillrig_rto_seconds{{scenario=\"{}\",target=\"{}\"}} ",
            r.scenario, t.target
        );
        let value: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in {metrics}"))
            .parse()
            .unwrap();
        assert_eq!((value * 1000.0).round() as i64, t.rto_achieved_ms.unwrap());
    }
    assert!(metrics.ends_with("# EOF\n"));

    // The three files as a whole, with what differs from run to run (durations, write counts,
    // start times) redacted. Both drills meet their objectives here; a miss is a finding too.
    insta::with_settings!({
        filters => vec![
            (r#"time="\d+\.\d+""#, r#"time="[seconds]""#),
                        // Achieved figures; the objectives (after `≤` or `/`) stay.
            (r"([^≤/]) \d+\.\d{3}s\b", "$1 [seconds]"),
            (r"(\d+) of \d+ \|", "$1 of [acknowledged] |"),
            (
                r"(?m)^(drillrig_(?:rto_seconds|acknowledged_writes|run_started_seconds)\{[^}]*\}) .*$",
                "$1 [value]",
            ),
        ],
    }, {
        insta::assert_snapshot!("suite_junit", junit);
        insta::assert_snapshot!("suite_summary", summary);
        insta::assert_snapshot!("suite_metrics", metrics);
    });
}

#[test]
fn on_a_terminal_each_target_shows_its_phase_and_the_rto_clock_against_its_objective() {
    let _engine = engine();
    let dir = out_dir("live");
    let command = format!(
        "{BIN} run {} --out {} --history none",
        repo("tests/scenarios/fast-corruption.toml").display(),
        dir.display()
    );
    // `script` gives the drill a pseudo-terminal, as a person's shell would.
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("COLUMNS", "120")
        .env_remove("DRILLRIG_LOG")
        .output()
        .expect("run script(1) from util-linux");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{screen}");
    let report = crate::common::read_report(&dir);

    // Every redraw of the target's line, with the terminal's control sequences taken out.
    let escape = regex::Regex::new(r"\x1b\[[0-9;?]*[A-Za-z]").unwrap();
    let plain = escape.replace_all(&screen, "");
    let frames: Vec<&str> = plain
        .split(['\r', '\n'])
        .filter_map(|l| {
            l.split_once("fast-corruption/pg ")
                .map(|(_, rest)| rest.trim())
        })
        .collect();
    let first = |phase: &str| {
        frames
            .iter()
            .position(|f| f.starts_with(phase))
            .unwrap_or_else(|| panic!("no frame in phase {phase}: {frames:#?}"))
    };
    assert!(first("provision") < first("workload"));
    assert!(first("workload") < first("fault corrupt-data-file"));
    assert!(first("fault corrupt-data-file") < first("restore"));
    // From the fault on, the clock runs against the 60 s objective...
    assert!(
        frames
            .iter()
            .any(|f| f.starts_with("restore") && f.contains(" / 1m00.0s [")),
        "{frames:#?}"
    );
    // ...and once verified the line holds the RTO the report measured.
    let ms = report["targets"][0]["rto"]["achieved_ms"].as_u64().unwrap();
    let measured = format!("RTO {}.{}s / 1m00.0s  met", ms / 1000, ms % 1000 / 100);
    assert!(
        frames.iter().any(|f| f.ends_with(&measured)),
        "{measured} in {frames:#?}"
    );
    // The lines replace the info log; the drill's table is still printed at the end.
    assert!(!plain.contains(" INFO "), "{plain}");
    assert!(plain.contains("drillrig fast-corruption"), "{plain}");
}

#[test]
fn bad_suite_arguments_are_usage_errors() {
    let dir = out_dir("suite-usage");
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();
    let pg = repo("scenarios/pg-kill.toml");
    let pg = pg.to_str().unwrap();
    for args in [
        vec!["run", pg, "--partition", "3/2"],
        vec!["run", pg, "--jobs", "0"],
        vec!["run", pg, pg, "--out", dir.to_str().unwrap()],
        vec!["run", dir.to_str().unwrap()],
        vec!["run", pg, "--regression-ratio", "0.5"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("error"));
    }
    // An empty shard runs nothing and says so.
    let out = run(&["run", pg, "--partition", "2/2", "--history", "none"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("holds no scenario"));
}

#[test]
fn compare_fails_on_a_creeping_rto_and_passes_within_bounds() {
    let dir = out_dir("compare");
    std::fs::create_dir_all(&dir).unwrap();
    let compare = |history: &Path| {
        Command::new(BIN)
            .args(["compare", "--history", history.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let mut runs: Vec<RunRecord> = [10_000, 9_000, 11_000, 10_000]
        .iter()
        .enumerate()
        .map(|(i, &rto)| past_run(i, "pg-corruption", rto))
        .collect();

    // 12 s against a 10 s median: within the default 1.25.
    let within = dir.join("within.sqlite");
    runs.push(past_run(4, "pg-corruption", 12_000));
    history_with(&within, &runs);
    let out = compare(&within);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("within bounds"));

    // 13 s: a regression although the 60 s objective is met.
    let creeping = dir.join("creeping.sqlite");
    runs.pop();
    runs.push(past_run(4, "pg-corruption", 13_000));
    history_with(&creeping, &runs);
    let out = compare(&creeping);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("REGRESSION"));
    // A stricter window or ratio is the caller's to set.
    let out = Command::new(BIN)
        .args(["compare", "--history", creeping.to_str().unwrap()])
        .args(["--regression-ratio", "1.4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn the_html_report_renders_in_headless_chromium() {
    let dir = out_dir("html");
    std::fs::create_dir_all(&dir).unwrap();
    let history = dir.join("history.sqlite");
    let runs: Vec<RunRecord> = (0..6)
        .map(|i| past_run(i, "pg-corruption", 8_000 + 700 * i as i64))
        .chain((0..3).map(|i| past_run(i, "redis-flushall", 2_000)))
        .collect();
    history_with(&history, &runs);
    let page = dir.join("report.html");
    let out = Command::new(BIN)
        .args(["report", "--history", history.to_str().unwrap()])
        .arg("--html")
        .arg(&page)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let html = std::fs::read_to_string(&page).unwrap();
    for fetch in ["src=", "<link", "url(", "<script", "@import"] {
        assert!(!html.contains(fetch), "the report fetches: {fetch}");
    }

    let shot = dir.join("report.png");
    let chromium = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            // Any fetch would fail: the page must render from the file alone.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--window-size=1200,2400",
        ])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs (fixtures/env/prepare.sh installs it)");
    assert!(chromium.status.success(), "{chromium:?}");

    // The screenshot shows the charts: pixels of the objective line and of the achieved series.
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let count = |rgb: [u8; 3]| {
        buf[..info.buffer_size()]
            .chunks(channels)
            .filter(|p| p[..3].iter().zip(rgb).all(|(&a, b)| a.abs_diff(b) <= 12))
            .count()
    };
    let objective = count([0xd3, 0x2f, 0x2f]);
    let achieved = count([0x1e, 0x88, 0xe5]);
    assert!(
        objective > 500 && achieved > 500,
        "objective {objective} px, achieved {achieved} px in {}",
        shot.display()
    );
    // RTOs of 2 to 11.5 s under a 60 s objective: the charts are scaled to the RTOs and name
    // the objective instead of drawing it on the ceiling; the timeline's legend is page text
    // beside the chart, so it cannot cover a bar.
    assert!(html.contains("objective 60.000s (above the chart)"));
    assert!(html.contains("class=\"legend\"") && html.contains("restore 9.900s"));
}

/// A PostgreSQL container for the shared history; removed when dropped.
struct Server {
    name: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.name])
            .output();
    }
}

#[test]
fn a_shared_postgres_history_holds_the_same_schema() {
    let _engine = engine();
    let name = format!("drillrig-test-history-{}", std::process::id());
    let server = Server { name };
    let started = Command::new("docker")
        .args(["run", "-d", "--name", &server.name, "-p", "127.0.0.1::5432"])
        .args(["-e", "POSTGRES_PASSWORD=history-test"])
        .arg("drillrig/postgres:15-bookworm")
        .output()
        .unwrap();
    assert!(started.status.success(), "{started:?}");
    let port = String::from_utf8(
        Command::new("docker")
            .args(["port", &server.name, "5432/tcp"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let port = port
        .lines()
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let url = format!("postgres://postgres:history-test@127.0.0.1:{port}/postgres");

    runtime().block_on(async {
        // Ready when the history opens (and migrates); the server takes a few seconds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut history = loop {
            match History::open(&url).await {
                Ok(h) => break h,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => panic!("history on {url}: {e:#}"),
            }
        };
        assert_eq!(
            history.schema_version().await.unwrap(),
            drillrig::history::SCHEMA_VERSION
        );
        let mut runs: Vec<RunRecord> = (0..3).map(|i| past_run(i, "pg-kill", 5_000)).collect();
        // A loss that could not be counted is stored as NULL, with why (schema 5).
        runs[2].targets[0].lost_writes = None;
        runs[2].targets[0].lost_writes_unknown = Some("the restore failed".into());
        for r in &runs {
            history.record(r).await.unwrap();
        }
        assert!(
            history.record(&runs[0]).await.is_err(),
            "a run recorded twice"
        );
        drop(history);
        let again = History::open(&url).await.unwrap();
        assert_eq!(again.runs().await.unwrap(), runs);
    });
    // The command reads it like the SQLite one.
    let out = Command::new(BIN)
        .args(["compare", "--history", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("pg-kill / db"));
}

#[test]
fn a_projection_runs_each_size_and_fits_the_rtos_it_measured() {
    let _engine = engine();
    let dir = out_dir("projection");
    // The shipped projection, at two small sizes projected to 5 million rows. Its RTO objective
    // is raised to 24 h, out of reach of any projection this machine can make, so the run must
    // pass: the projection's arithmetic is what this test checks, not the machine's speed.
    let scenario = variant(
        "scenarios/pg-restore-projection.toml",
        "projection",
        &[
            (
                "rows = 10000, projection = { sizes = [10000, 100000, 300000], production_rows = 50000000 }",
                "rows = 2000, projection = { sizes = [2000, 40000], production_rows = 5000000 }",
            ),
            ("every = \"10s\"", "every = \"2s\""),
            ("at = \"15s\"", "at = \"5s\""),
            ("rto = \"1h\"", "rto = \"24h\""),
        ],
    );
    let (out, history) = run_recorded(&dir, Path::new(&scenario), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let runs = recorded_runs(&history);
    let mut sizes: Vec<(i64, i64)> = runs
        .iter()
        .map(|r| {
            let t = &r.targets[0];
            (
                t.dataset_rows.unwrap(),
                t.rto_achieved_ms.expect("every size recovered"),
            )
        })
        .collect();
    sizes.sort();
    assert_eq!(
        sizes.iter().map(|s| s.0).collect::<Vec<_>>(),
        [2000, 40000],
        "{stdout}\n{stderr}"
    );

    // Two points: the line through them, evaluated at 5 million rows.
    let projection: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("reports/pg-restore-projection/projection.json"))
            .unwrap(),
    )
    .unwrap();
    let ((x0, y0), (x1, y1)) = (sizes[0], sizes[1]);
    let slope = (y1 - y0) as f64 / (x1 - x0) as f64;
    let expected = (y0 as f64 + slope * (5_000_000 - x0) as f64).round() as i64;
    let projected = projection["projected_ms"].as_i64().unwrap();
    assert!((projected - expected).abs() <= 1, "{projection}");
    // Far under the 24 h objective on any machine: no projected miss, and every size met.
    assert!(expected < 24 * 3_600_000, "{projection}");
    assert_eq!(projection["projected_miss"].as_bool(), Some(false));
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert!(junit.contains("projected RTO at 5000000 rows"), "{junit}");
    for r in &runs {
        assert_eq!(r.outcome, "met", "{}: {stdout}\n{stderr}", r.run_id);
    }
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("RTO projected to"), "{stdout}");
}

/// `run --fail-on-regression`: a drill that meets its objectives but recovers far slower than
/// its own history (same scenario, target and dataset size) exits 1 and names the regression.
#[test]
fn fail_on_regression_fails_a_met_drill_slower_than_its_history() {
    let _engine = engine();
    let dir = out_dir("fail-on-regression");
    std::fs::create_dir_all(&dir).unwrap();
    // Five earlier runs that each recovered in 50 ms: no real restore is that fast, so this one
    // regresses on any machine.
    let runs: Vec<RunRecord> = (0..5)
        .map(|i| {
            let mut r = past_run(i, "fast-corruption", 50);
            let t = &mut r.targets[0];
            t.target = "pg".into();
            t.dataset_rows = Some(20_000);
            t.phases = vec![("restore".into(), 50)];
            r
        })
        .collect();
    history_with(&dir.join("history.sqlite"), &runs);
    let (out, history) = run_recorded(
        &dir,
        &repo("tests/scenarios/fast-corruption.toml"),
        &["--fail-on-regression"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let latest = recorded_runs(&history).pop().unwrap();
    assert_eq!(latest.outcome, "met", "{stdout}\n{stderr}");
    assert!(latest.targets[0].rto_achieved_ms.unwrap() > 50 * 2);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("REGRESSION"), "{stdout}");
    assert!(
        stderr.contains("RTO regression (--fail-on-regression)"),
        "{stderr}"
    );
}
