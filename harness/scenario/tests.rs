use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

const GOOD: &str = r#"schema = 1
name = "pg-test"
description = "a test"

[targets.pg]
kind = "postgres"
dataset = { fixture = "orders", rows = 500 }
workload = { rate = 50 }
backup = { method = "pg-dump", every = "5s" }
restore = { from = "latest" }
checks = ["ledger", "row-counts"]
objectives = { rto = "60s", rpo = "10s", max_lost_writes = 3 }

[[faults]]
target = "pg"
kind = "drop-table"
at = "12s"
"#;

fn parse_text(text: &str) -> Result<Scenario, ScenarioError> {
    parse(Path::new("s.toml"), text)
}

/// The error `GOOD` gives after replacing `from` with `to` (which must occur once).
fn error_after(from: &str, to: &str) -> String {
    assert_eq!(GOOD.matches(from).count(), 1, "{from:?} must occur once");
    parse_text(&GOOD.replacen(from, to, 1))
        .expect_err("must be rejected")
        .to_string()
}

#[test]
fn a_good_file_becomes_domain_types() {
    let s = parse_text(GOOD).unwrap();
    assert_eq!(s.name, "pg-test");
    assert_eq!(
        s.duration,
        Duration::from_secs(17),
        "last fault + 5s by default"
    );
    let t = &s.targets[0];
    assert_eq!(t.kind, TargetKind::Postgres);
    assert_eq!(
        t.dataset,
        Dataset {
            fixture: "orders".into(),
            rows: 500,
            projection: None,
        }
    );
    assert_eq!(t.rate, 50);
    assert_eq!(
        t.backup,
        Some(BackupSpec {
            method: BackupMethod::PgDump,
            every: Duration::from_secs(5),
            archive_timeout: None
        })
    );
    assert_eq!(t.restore, RestorePoint::Latest);
    assert_eq!(t.checks, vec![CheckKind::Ledger, CheckKind::RowCounts]);
    assert_eq!(
        t.objectives,
        Objectives {
            rto: Duration::from_secs(60),
            rpo: Duration::from_secs(10),
            max_lost_writes: Some(3),
            write_p99: None,
        }
    );
    assert_eq!(
        s.faults,
        vec![FaultSpec {
            target: "pg".into(),
            kind: FaultKind::DropTable,
            at: Duration::from_secs(12),
            hold: None,
            aim: Some("orders".into()),
            artefact: None,
            toxics: None,
            isolate: crate::spec::Isolate::All,
        }]
    );
    assert_eq!(s.timeouts, Timeouts::default());
}

#[test]
fn defaults_fill_optional_tables() {
    let text = "schema = 1\nname = \"x\"\n[targets.db]\nkind = \"postgres\"\nrestore = { from = \"restart\" }\nobjectives = { rto = \"1m\", rpo = \"0s\" }\n";
    let s = parse_text(text).unwrap();
    assert_eq!(s.duration, Duration::from_secs(10));
    assert_eq!(s.targets[0].dataset.rows, 10_000);
    assert_eq!(s.targets[0].rate, 100);
    assert!(s.faults.is_empty());
}

#[test]
fn timestamps_and_timeouts_parse() {
    let s = parse_text(
        &GOOD
            .replace("from = \"latest\"", "from = \"2026-11-21T10:00:00Z\"")
            .replace(
                "[targets.pg]",
                "[timeouts]\nrestore = \"5m\"\n\n[targets.pg]",
            ),
    )
    .unwrap();
    assert_eq!(
        s.targets[0].restore,
        RestorePoint::At(humantime::parse_rfc3339("2026-11-21T10:00:00Z").unwrap())
    );
    assert_eq!(s.timeouts.restore, Duration::from_secs(300));
}

#[test]
fn unknown_key() {
    assert_eq!(
        error_after(
            "workload = { rate = 50 }",
            "workload = { rate = 50, burst = 2 }"
        ),
        "s.toml:8:25: targets.pg.workload.burst: unknown field `burst`, expected `rate`"
    );
}

#[test]
fn unknown_top_level_table() {
    assert_eq!(
        error_after("[[faults]]", "[chaos]\nx = 1\n\n[[faults]]"),
        "s.toml:14:2: chaos: unknown field `chaos`, expected one of `schema`, `name`, `description`, `drill`, `timeouts`, `targets`, `faults`, `platform`, `offsite`"
    );
}

#[test]
fn wrong_type() {
    assert_eq!(
        error_after("rows = 500", "rows = \"500\""),
        "s.toml:7:40: targets.pg.dataset.rows: invalid type: string \"500\", expected an integer"
    );
}

#[test]
fn bad_duration() {
    assert_eq!(
        error_after("rpo = \"10s\"", "rpo = \"10 parsecs\""),
        "s.toml:12:35: targets.pg.objectives.rpo: invalid duration \"10 parsecs\": unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)"
    );
}

#[test]
fn unknown_kind() {
    let e = error_after("kind = \"drop-table\"", "kind = \"meteor\"");
    assert!(
        e.starts_with(
            "s.toml:16:8: faults[0].kind: unknown variant `meteor`, expected one of `kill`, `pause`"
        ),
        "{e}"
    );
    assert_eq!(
        error_after("kind = \"postgres\"", "kind = \"mysql\""),
        "s.toml:6:8: targets.pg.kind: unknown variant `mysql`, expected one of `postgres`, `redis`, `rabbitmq`"
    );
}

#[test]
fn dangling_target() {
    assert_eq!(
        error_after("target = \"pg\"", "target = \"db\""),
        "s.toml:15:10: faults[0].target: no target named \"db\" (targets: pg)"
    );
}

#[test]
fn fault_after_the_drill_ends() {
    assert_eq!(
        error_after(
            "[targets.pg]",
            "[drill]\nduration = \"10s\"\n\n[targets.pg]"
        ),
        "s.toml:20:6: faults[0].at: the fault fires at 12s but the drill ends at 10s (drill.duration)"
    );
}

#[test]
fn impossible_objective() {
    assert_eq!(
        error_after("rto = \"60s\"", "rto = \"0s\""),
        "s.toml:12:22: targets.pg.objectives.rto: an RTO of 0s can never be met: every recovery takes time"
    );
}

#[test]
fn missing_fixture() {
    assert_eq!(
        error_after("fixture = \"orders\"", "fixture = \"invoices\""),
        "s.toml:7:23: targets.pg.dataset.fixture: no postgres fixture named \"invoices\" (fixtures: orders)"
    );
}

#[test]
fn unreadable_file() {
    let e = load(Path::new("/nonexistent/drill.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/nonexistent/drill.toml: cannot read the file: No such file or directory (os error 2)"
    );
}

#[test]
fn syntax_error() {
    assert_eq!(
        error_after("[targets.pg]", "[targets.pg"),
        "s.toml:5:12: targets.pg: unclosed table, expected `]`"
    );
}

#[test]
fn missing_required_key() {
    let e = error_after(
        "objectives = { rto = \"60s\", rpo = \"10s\", max_lost_writes = 3 }\n",
        "",
    );
    assert_eq!(e, "s.toml:5:1: targets.pg: missing field `objectives`");
}

#[test]
fn kind_specific_rules() {
    assert_eq!(
        error_after("kind = \"drop-table\"", "kind = \"flushall\""),
        "s.toml:16:8: faults[0].kind: fault `flushall` is not available for postgres targets (available: `kill`, `stop`, `pause`, `network-partition`, `latency`, `corrupt-data-file`, `drop-table`, `bad-update`, `volume-loss`, `corrupt-backup`, `truncate-backup`, `delete-wal-segment`)"
    );
    assert_eq!(
        error_after("at = \"12s\"", "at = \"12s\"\nrelation = \"order\""),
        "s.toml:18:12: faults[0].relation: the fixture has no table \"order\" (tables: orders, customers)"
    );
    assert_eq!(
        error_after("at = \"12s\"", "at = \"12s\"\nqueue = \"orders\""),
        "s.toml:18:9: faults[0].queue: fault `drop-table` on a postgres target does not take `queue`"
    );
    assert_eq!(
        error_after("at = \"12s\"", "at = \"12s\"\nartefact = \"x\""),
        "s.toml:18:12: faults[0].artefact: fault `drop-table` does not take `artefact`"
    );
    assert_eq!(
        error_after("at = \"12s\"", "at = \"12s\"\nfor = \"1s\""),
        "s.toml:18:7: faults[0].for: fault `drop-table` does not take `for`"
    );
    assert_eq!(
        error_after("\"ledger\", \"row-counts\"", "\"ledger\", \"seed\""),
        "s.toml:11:21: targets.pg.checks: the `seed` check runs on every recovery: leave it out of `checks`"
    );
    assert_eq!(
        error_after("kind = \"drop-table\"", "kind = \"pause\""),
        "s.toml:16:8: faults[0].kind: fault `pause` heals by itself after `for`: target \"pg\" must use restore.from = \"in-place\" (or \"failover\")"
    );
    let in_place = GOOD
        .replace("from = \"latest\"", "from = \"in-place\"")
        .replace(", \"row-counts\"", "");
    assert_eq!(
        parse_text(&in_place)
            .expect_err("must be rejected")
            .to_string(),
        "s.toml:16:8: faults[0].kind: target \"pg\" restores nothing (restore.from = \"in-place\"): only a fault that heals by itself (pause, network-partition) can hit it"
    );
    let paused = parse_text(
        &in_place
            .replace("kind = \"drop-table\"", "kind = \"pause\"")
            .replace("at = \"12s\"", "at = \"12s\"\nfor = \"3s\""),
    )
    .expect("a pause healed in place is valid");
    assert_eq!(paused.faults[0].hold, Some(Duration::from_secs(3)));
    let slowed = in_place
        .replace("kind = \"drop-table\"", "kind = \"latency\"")
        .replace("at = \"12s\"", "at = \"12s\"\nfor = \"3s\"");
    assert_eq!(
        parse_text(&slowed).expect_err("no delay").to_string(),
        "s.toml:16:8: faults[0].delay: fault `latency` needs `delay` above zero (the time added each way), `bandwidth` or `reset`"
    );
    let jittery = slowed.replace(
        "for = \"3s\"",
        "for = \"3s\"\ndelay = \"10ms\"\njitter = \"20ms\"",
    );
    assert_eq!(
        parse_text(&jittery)
            .expect_err("jitter beyond the delay")
            .to_string(),
        "s.toml:20:10: faults[0].jitter: the jitter may not exceed the delay (a chunk cannot arrive before it was sent)"
    );
    let s = parse_text(&jittery.replace("\"20ms\"", "\"5ms\"")).expect("a valid latency");
    assert!(s.targets[0].proxied);
    assert_eq!(
        s.faults[0].toxics.map(|t| t.delay),
        Some(Duration::from_millis(10))
    );
    let judged = jittery
        .replace("\"20ms\"", "\"5ms\"")
        .replace("rpo = ", "write_p99 = \"150ms\", rpo = ");
    assert_eq!(
        parse_text(&judged).unwrap().targets[0].objectives.write_p99,
        Some(Duration::from_millis(150))
    );
    let unslowed = in_place
        .replace("kind = \"drop-table\"", "kind = \"pause\"")
        .replace("at = \"12s\"", "at = \"12s\"\nfor = \"3s\"")
        .replace("rpo = ", "write_p99 = \"150ms\", rpo = ");
    assert!(
        parse_text(&unslowed)
            .unwrap_err()
            .to_string()
            .contains("objectives.write_p99: write_p99 judges the writes while a `latency` fault lasts: this target has none"),
    );
    let choked = slowed.replace(
        "for = \"3s\"",
        "for = \"3s\"\nbandwidth = \"64KiB/s\"\nreset = \"2s\"",
    );
    let s = parse_text(&choked).expect("bandwidth and resets alone");
    let toxics = s.faults[0].toxics.unwrap();
    assert_eq!(toxics.bandwidth, Some(65_536));
    assert_eq!(toxics.reset, Some(Duration::from_secs(2)));
    assert!(toxics.delay.is_zero());
    for (bad, want) in [
        (
            "\"64KiB\"",
            "s.toml:19:13: faults[0].bandwidth: invalid bandwidth \"64KiB\": bytes per second above zero, such as \"64KiB/s\" or \"1MB/s\"",
        ),
        (
            "\"0B/s\"",
            "s.toml:19:13: faults[0].bandwidth: invalid bandwidth \"0B/s\": bytes per second above zero, such as \"64KiB/s\" or \"1MB/s\"",
        ),
    ] {
        let text = choked.replace("\"64KiB/s\"", bad);
        assert_eq!(parse_text(&text).unwrap_err().to_string(), want);
    }
    assert_eq!(
        error_after("at = \"12s\"", "at = \"12s\"\nreset = \"1s\""),
        "s.toml:18:9: faults[0].reset: fault `drop-table` does not take `reset`"
    );
    assert_eq!(
        error_after("from = \"latest\"", "from = \"restart\""),
        "s.toml:11:21: targets.pg.checks: check `row-counts` compares with the restored backup, but restore.from is `restart`"
    );
    assert_eq!(
        error_after("backup = { method = \"pg-dump\", every = \"5s\" }\n", ""),
        "s.toml:9:20: targets.pg.restore.from: restoring from a backup needs a `backup` for this target (or use `restart`)"
    );
    assert_eq!(
        error_after("method = \"pg-dump\"", "method = \"redis-rdb\""),
        "s.toml:9:21: targets.pg.backup.method: backup method `redis-rdb` is not available for postgres targets (available: `pg-dump`, `pg-basebackup-wal`)"
    );
    assert_eq!(
        error_after("schema = 1", "schema = 2"),
        "s.toml:1:10: schema: unsupported schema version 2 (this drillrig reads schema 1)"
    );
    assert_eq!(
        error_after("name = \"pg-test\"", "name = \"PG Test\""),
        "s.toml:2:8: name: invalid name \"PG Test\": use lowercase letters, digits and '-' (it names report folders)"
    );
}

#[test]
fn backup_method_rules() {
    let wal = |text: &str| text.replace("method = \"pg-dump\"", "method = \"pg-basebackup-wal\"");
    assert_eq!(
        error_after("every = \"5s\"", "every = \"5s\", archive_timeout = \"2s\""),
        "s.toml:9:64: targets.pg.backup.archive_timeout: backup method `pg-dump` archives no WAL; archive_timeout does not apply"
    );
    let e = parse_text(&wal(GOOD)).unwrap_err().to_string();
    assert_eq!(
        e,
        "s.toml:11:21: targets.pg.checks: check `row-counts` compares with a backup's logical snapshot; `pg-basebackup-wal` restores a point in time (use `ledger`, `foreign-keys`, `amcheck`)"
    );
    assert_eq!(
        error_after("\"row-counts\"]", "\"wal-continuity\"]"),
        "s.toml:11:21: targets.pg.checks: check `wal-continuity` verifies a WAL archive and its base backups; it needs backup method `pg-basebackup-wal`"
    );
    assert_eq!(
        error_after("kind = \"drop-table\"", "kind = \"delete-wal-segment\""),
        "s.toml:16:8: faults[0].kind: fault `delete-wal-segment` needs a WAL archive: target \"pg\" must use backup method `pg-basebackup-wal`"
    );
    let s = parse_text(&wal(&GOOD.replace(
        "\"row-counts\"]",
        "\"wal-continuity\", \"pg-verifybackup\"]",
    )))
    .unwrap();
    assert_eq!(
        s.targets[0].backup.unwrap().archive_timeout,
        Some(DEFAULT_ARCHIVE_TIMEOUT)
    );
    let restart = GOOD
        .replace("from = \"latest\"", "from = \"restart\"")
        .replace(", \"row-counts\"", "");
    assert_eq!(
        parse_text(&restart.replace("kind = \"drop-table\"", "kind = \"volume-loss\""))
            .unwrap_err()
            .to_string(),
        "s.toml:16:8: faults[0].kind: fault `volume-loss` leaves no data to restart on; target \"pg\" must restore from a backup"
    );
}

#[test]
fn every_shipped_scenario_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut seen = 0;
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                let s = load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(
                    path.file_stem().unwrap().to_str().unwrap(),
                    s.name,
                    "a scenario file is named after its scenario"
                );
                seen += 1;
            }
        }
    }
    assert!(seen >= 4, "found only {seen} scenarios");
}

/// The shipped scenarios, as `(path, text)`.
fn shipped() -> Vec<(std::path::PathBuf, String)> {
    let mut files = Vec::new();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                files.push((path, text));
            }
        }
    }
    files.sort();
    files
}

/// One random edit of a scenario file.
#[derive(Debug, Clone)]
enum Edit {
    /// Replace the bytes at `at..at+len` (clamped to char boundaries) with `with`.
    Splice {
        at: prop::sample::Index,
        len: usize,
        with: String,
    },
    /// Replace a whole line.
    Line {
        line: prop::sample::Index,
        with: String,
    },
    /// Duplicate a line.
    Duplicate { line: prop::sample::Index },
    /// Swap two lines.
    Swap {
        a: prop::sample::Index,
        b: prop::sample::Index,
    },
}

/// Fragments that make syntax errors, type errors and every class of semantic error likely.
const FRAGMENTS: &[&str] = &[
    "",
    "\"",
    "=",
    "]",
    "[",
    "[[",
    "]]",
    "\n",
    "{",
    "}",
    ",",
    "#",
    "x",
    "0",
    "-1",
    "1.5",
    "true",
    "99999999999999999999",
    "\"5q\"",
    "\"0s\"",
    "\"99h\"",
    "\"restart\"",
    "\"nope\"",
    "kind = \"redis\"",
    "kind = \"meteor\"",
    "kind = \"pause\"",
    "target = \"ghost\"",
    "at = \"0s\"",
    "at = \"1h\"",
    "rto = \"0s\"",
    "for = \"2s\"",
    "relation = \"orders\"",
    "relation = \"ghost\"",
    "queue = \"orders.classic\"",
    "artefact = \"definitions.json\"",
    "kind = \"rabbitmq\"",
    "fixture = \"none\"",
    "rows = 0",
    "rate = -5",
    "checks = [\"row-counts\"]",
    "from = \"2026-13-45T99:00:00Z\"",
    "method = \"redis-rdb\"",
    "[drill]\nduration = \"1s\"",
    "[timeouts]\nseed = \"0s\"",
    "[[faults]]\ntarget = \"pg\"\nkind = \"kill\"\nat = \"1s\"",
    "schema = 2",
    "name = \"Bad Name\"",
    "max_lost_writes = -1",
    "unknown = 1",
    "[targets.pg]",
    "[targets.x]\nkind = \"postgres\"",
    "\u{e9}",
    "\u{1F4A5}",
];

fn edit() -> impl Strategy<Value = Edit> {
    let fragment = || prop::sample::select(FRAGMENTS).prop_map(String::from);
    prop_oneof![
        (any::<prop::sample::Index>(), 0usize..8, fragment())
            .prop_map(|(at, len, with)| Edit::Splice { at, len, with }),
        (any::<prop::sample::Index>(), fragment())
            .prop_map(|(line, with)| Edit::Line { line, with }),
        any::<prop::sample::Index>().prop_map(|line| Edit::Duplicate { line }),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Edit::Swap { a, b }),
    ]
}

fn apply(text: &str, edit: &Edit) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    match edit {
        Edit::Splice { at, len, with } => {
            let mut start = at.index(text.len() + 1);
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let mut end = (start + len).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let mut t = text.to_string();
            t.replace_range(start..end, with);
            return t;
        }
        Edit::Line { line, with } if !lines.is_empty() => {
            let i = line.index(lines.len());
            lines[i] = with.clone();
        }
        Edit::Duplicate { line } if !lines.is_empty() => {
            let i = line.index(lines.len());
            let l = lines[i].clone();
            lines.insert(i, l);
        }
        Edit::Swap { a, b } if !lines.is_empty() => {
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
        }
        _ => {}
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random edits of the shipped scenarios never panic the parser, and every rejection names
    /// the file, a line and column, and a key.
    #[test]
    fn mutated_scenarios_are_rejected_with_file_line_and_key(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        thread_local!(static SHIPPED: Vec<(std::path::PathBuf, String)> = shipped());
        let (path, text) = SHIPPED.with(|s| s[which.index(s.len())].clone());
        let mutated = edits.iter().fold(text, |t, e| apply(&t, e));
        if let Err(e) = parse(&path, &mutated) {
            let shown = e.to_string();
            prop_assert!(shown.starts_with(&path.display().to_string()), "no file in: {shown}");
            prop_assert!(e.position.is_some(), "no line in: {shown}");
            prop_assert!(e.key.as_deref().is_some_and(|k| !k.is_empty()), "no key in: {shown}");
            prop_assert!(!e.message.is_empty(), "no message in: {shown}");
        }
    }
}

#[test]
fn a_full_disk_fixes_the_volume_and_needs_an_aof_redis_survives() {
    let text = r#"schema = 1
name = "disk"

[targets.cache]
kind = "redis"
persistence = { appendonly = true, appendfsync = "everysec", save = "" }
restore = { from = "in-place" }
checks = ["ledger"]
objectives = { rto = "60s", rpo = "0s" }

[[faults]]
target = "cache"
kind = "disk-full"
at = "8s"
for = "3s"
"#;
    let s = parse_text(text).unwrap();
    assert_eq!(
        s.targets[0].volume_limit,
        Some(crate::spec::DISK_FULL_VOLUME)
    );
    let always = parse_text(&text.replace("\"everysec\"", "\"always\"")).unwrap_err();
    assert_eq!(
        always.to_string(),
        "s.toml:13:8: faults[0].kind: fault `disk-full` needs target \"cache\" to write an AOF it can survive losing space under: persistence.appendonly = true with appendfsync `everysec` or `no`"
    );
    let unfaulted = parse_text(&text.replace("kind = \"disk-full\"", "kind = \"pause\"")).unwrap();
    assert_eq!(unfaulted.targets[0].volume_limit, None);
}

#[test]
fn a_rabbitmq_fault_names_a_queue_of_the_topology() {
    let text = r#"schema = 1
name = "mq-test"

[targets.mq]
kind = "rabbitmq"
backup = { method = "rabbitmq-export", every = "5s" }
restore = { from = "latest" }
checks = ["ledger", "definitions"]
objectives = { rto = "60s", rpo = "10s" }

[[faults]]
target = "mq"
kind = "delete-queue"
queue = "orders.classic"
at = "8s"
"#;
    let s = parse_text(text).unwrap();
    assert_eq!(s.faults[0].aim.as_deref(), Some("orders.classic"));
    let e = parse_text(&text.replace("\"orders.classic\"", "\"orders.lost\"")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "s.toml:14:9: faults[0].queue: the fixture has no queue \"orders.lost\" (queues: orders.quorum, orders.classic)"
    );
    let default = parse_text(&text.replace("queue = \"orders.classic\"\n", "")).unwrap();
    assert_eq!(default.faults[0].aim.as_deref(), Some("orders.quorum"));
}

#[test]
fn a_projection_expands_into_one_drill_per_size() {
    let text = GOOD.replace(
        "rows = 500 }",
        "rows = 500, projection = { sizes = [1000, 10000], production_rows = 1000000 } }",
    );
    let s = parse_text(&text).unwrap();
    let sizes: Vec<u64> = s
        .expand_projection()
        .iter()
        .map(|x| x.targets[0].dataset.rows)
        .collect();
    assert_eq!(sizes, [1000, 10000]);
    assert_eq!(parse_text(GOOD).unwrap().expand_projection().len(), 1);
    assert_eq!(
        error_after(
            "rows = 500 }",
            "rows = 500, projection = { sizes = [1000], production_rows = 1000000 } }"
        ),
        "s.toml:7:68: targets.pg.dataset.projection.sizes: a projection needs at least two \
         different sizes of at least 1 row, got [1000]"
    );
    assert!(
        error_after(
            "rows = 500 }",
            "rows = 500, projection = { sizes = [1, 2], production_rows = 0 } }"
        )
        .contains("production_rows must be at least 1, got 0")
    );
}

#[test]
fn a_restore_test_takes_a_source_queries_and_only_its_own_checks() {
    let text = r#"schema = 1
name = "nightly"

[targets.db]
kind = "postgres"
source = { url = "s3://b/p/", endpoint = "http://127.0.0.1:9000", pattern = "*.dump", size_tolerance = "5%" }
restore = { from = "latest" }
checks = ["amcheck", "backup-age", "backup-size"]
objectives = { rto = "30m", rpo = "26h" }

[[targets.db.queries]]
name = "orders"
sql = "SELECT count(*) FROM orders"
expect = "between 10 and 20"
drift = "1%"
"#;
    let s = parse_text(text).unwrap();
    let t = &s.targets[0];
    let source = t.source.as_ref().unwrap();
    assert_eq!(source.pattern.as_deref(), Some("*.dump"));
    assert_eq!(source.size_tolerance, 0.05);
    assert_eq!(t.queries[0].drift, Some(0.01));
    assert_eq!(
        t.queries[0].expect,
        Some(crate::spec::Expect::Between(10.0, 20.0))
    );
    for (from, to, error) in [
        (
            "checks = [\"amcheck\", \"backup-age\", \"backup-size\"]",
            "checks = [\"ledger\"]",
            "s.toml:8:11: targets.db.checks: check `ledger` is not available in a restore test of a postgres backup (available: `amcheck`, `foreign-keys`, `pg-verifybackup`, `backup-integrity`, `backup-age`, `backup-size`)",
        ),
        (
            "sql = ",
            "command = ",
            "s.toml:13:11: targets.db.queries[0].command: a postgres query asks with `sql`, not `command`",
        ),
        (
            "drift = \"1%\"",
            "drift = \"one\"",
            "s.toml:15:9: targets.db.queries[0].drift: \"one\": expected a percentage such as \"1%\"",
        ),
        (
            "restore = { from = \"latest\" }",
            "restore = { from = \"restart\" }",
            "s.toml:7:20: targets.db.restore.from: a restore test restores the newest backup in its source (\"latest\") or the newest before a time, not `restart`",
        ),
        (
            "url = \"s3://b/p/\"",
            "url = \"s3://key:secret@b/p/\"",
            "s.toml:6:18: targets.db.source.url: put no credentials or options in the URL: keys come from the standard environment (AWS_ACCESS_KEY_ID, …), the endpoint from `endpoint`",
        ),
        (
            "expect = \"between 10 and 20\"",
            "expect = \">= many\"",
            "s.toml:14:10: targets.db.queries[0].expect: \" many\" in `>= many` is not a number",
        ),
        (
            "restore = { from = \"latest\" }",
            "restore = { from = \"2026-11-30T10:00:00Z\" }",
            "s.toml:7:20: targets.db.restore.from: a restore to a point in time replays WAL: give a base backup its archive (`wal`), or name a pgBackRest repository's `stanza`",
        ),
        (
            "size_tolerance = \"5%\" }",
            "size_tolerance = \"5%\", stanza = \"a/b\" }",
            "s.toml:6:119: targets.db.source.stanza: \"a/b\" is not a stanza name",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let e = parse_text(&text.replace(from, to)).unwrap_err();
        assert_eq!(e.to_string(), error);
    }
    // One query may carry the RPO's point, and it needs no expect.
    let fresh = "\n[[targets.db.queries]]\nname = \"newest\"\nsql = \"SELECT max(created_at) FROM orders\"\nfreshness = true\n";
    let s = parse_text(&format!("{text}{fresh}")).unwrap();
    assert!(s.targets[0].queries[1].freshness);
    let twice = format!("{text}{fresh}{}", fresh.replace("newest", "newer"));
    let e = parse_text(&twice).unwrap_err();
    assert!(
        e.to_string()
            .contains("only one query may give the RPO its point"),
        "{e}"
    );
    // A pgBackRest repository replays its own archive: a stanza is enough for a time.
    let pitr = text
        .replace(
            "restore = { from = \"latest\" }",
            "restore = { from = \"2026-11-30T10:00:00Z\" }",
        )
        .replace(
            "size_tolerance = \"5%\" }",
            "size_tolerance = \"5%\", stanza = \"main\" }",
        );
    let s = parse_text(&pitr).unwrap();
    assert_eq!(
        s.targets[0].source.as_ref().unwrap().stanza.as_deref(),
        Some("main")
    );
    let faulted = format!("{text}\n[[faults]]\ntarget = \"db\"\nkind = \"kill\"\nat = \"5s\"\n");
    let e = parse_text(&faulted).unwrap_err();
    assert!(
        e.to_string().contains("a restore test takes no faults"),
        "{e}"
    );
    let drill_keys = text.replace("restore = {", "workload = { rate = 5 }\nrestore = {");
    let e = parse_text(&drill_keys).unwrap_err();
    assert!(
        e.to_string().contains("`workload` belongs to drills"),
        "{e}"
    );
}

#[test]
fn a_kinds_own_keys_are_checked_by_the_kind_and_refused_elsewhere() {
    let redis = r#"schema = 1
name = "kinds"

[targets.cache]
kind = "redis"
persistence = { appendonly = true, appendfsync = "everysec", save = "" }
backup = { method = "redis-aof", every = "5s" }
restore = { from = "restart", repair = true }
checks = ["ledger"]
objectives = { rto = "60s", rpo = "0s" }

[[faults]]
target = "cache"
kind = "corrupt-data-file"
at = "8s"
file = "aof-tail"
"#;
    let s = parse_text(redis).unwrap();
    let options = s.targets[0]
        .options_of::<crate::targets::redis::schema::RedisOptions>()
        .expect("redis options");
    assert!(options.repair && options.persistence.appendonly);
    assert_eq!(s.faults[0].aim.as_deref(), Some("aof-tail"));

    let errors = [
        (
            redis.replace("kind = \"redis\"", "kind = \"postgres\""),
            "s.toml:6:15: targets.cache.persistence: `persistence` is a key of redis targets; postgres targets do not take it",
        ),
        (
            redis.replace("appendonly = true", "appendonli = true"),
            "s.toml:6:17: targets.cache.persistence.appendonli: unknown field `appendonli`, expected one of `appendonly`, `appendfsync`, `save`",
        ),
        (
            redis.replace("appendonly = true, ", ""),
            "s.toml:7:21: targets.cache.backup.method: backup method `redis-aof` copies the append-only file: set persistence.appendonly = true",
        ),
        (
            redis.replace("\"restart\"", "\"latest\""),
            "s.toml:8:39: targets.cache.restore.repair: repair runs `redis-check-aof --fix` before a restart: it needs restore.from = \"restart\" and persistence.appendonly = true",
        ),
        (
            redis.replace("\"aof-tail\"", "\"rdb\""),
            "s.toml:16:8: faults[0].file: with appendonly the server loads the AOF and ignores dump.rdb: damage `aof` or `aof-tail`",
        ),
        (
            redis.replace("\"aof-tail\"", "\"wal\""),
            "s.toml:16:8: faults[0].file: unknown data file \"wal\" (files: rdb, aof, aof-tail)",
        ),
        (
            redis.replace("file = \"aof-tail\"", "relation = \"orders\""),
            "s.toml:16:12: faults[0].relation: fault `corrupt-data-file` on a redis target does not take `relation`",
        ),
    ];
    let got: Vec<String> = errors
        .iter()
        .map(|(text, _)| parse_text(text).unwrap_err().to_string())
        .collect();
    let want: Vec<&str> = errors.iter().map(|(_, want)| *want).collect();
    assert_eq!(got, want);
}

/// `GOOD` with a second target `cache` whose restore waits for `pg`, and `extra` appended.
fn platform_text(pg_after: &str, extra: &str) -> String {
    GOOD.replace(
        r#"restore = { from = "latest" }"#,
        &format!(r#"restore = {{ from = "latest"{pg_after} }}"#),
    )
    .replace(
        "[[faults]]",
        &format!(
            r#"[targets.cache]
kind = "redis"
dataset = {{ fixture = "items", rows = 100 }}
backup = {{ method = "redis-rdb", every = "5s" }}
restore = {{ from = "latest", after = ["pg"] }}
checks = ["ledger"]
objectives = {{ rto = "60s", rpo = "10s" }}
{extra}
[[faults]]"#
        ),
    )
}

#[test]
fn the_platform_and_the_restore_order_are_read_and_checked() {
    let s = parse_text(&platform_text(
        "",
        "\n[platform]\nrto = \"2m\"\nrpo = \"15s\"\n",
    ))
    .unwrap();
    assert_eq!(
        s.platform,
        Some(PlatformObjectives {
            rto: Duration::from_secs(120),
            rpo: Duration::from_secs(15),
            workload: None,
        })
    );
    assert_eq!(s.target("cache").unwrap().restore_after, ["pg"]);
    assert!(s.target("pg").unwrap().restore_after.is_empty());

    let cycle = parse_text(&platform_text(r#", after = ["cache"]"#, ""))
        .expect_err("a cycle")
        .to_string();
    assert!(
        cycle.contains("restore.after") && cycle.contains("cycle"),
        "{cycle}"
    );
    let unknown = error_after(
        r#"restore = { from = "latest" }"#,
        r#"restore = { from = "latest", after = ["db"] }"#,
    );
    assert!(
        unknown.contains("s.toml:10:38:")
            && unknown.contains("targets.pg.restore.after")
            && unknown.contains(r#"no target named "db" (targets: pg)"#),
        "{unknown}"
    );
    let itself = error_after(
        r#"restore = { from = "latest" }"#,
        r#"restore = { from = "latest", after = ["pg"] }"#,
    );
    assert!(itself.contains("cannot restore after itself"), "{itself}");
    let named = parse_text(
        &(GOOD
            .replace("[targets.pg]", "[targets.platform]")
            .replace(r#"target = "pg""#, r#"target = "platform""#)
            + "\n[platform]\nrto = \"2m\"\nrpo = \"15s\"\n"),
    )
    .expect_err("the name is the platform row's")
    .to_string();
    assert!(
        named.contains("targets.platform") && named.contains("another name"),
        "{named}"
    );
    let missing = parse_text(&(GOOD.to_string() + "\n[platform]\nrto = \"2m\"\n"))
        .expect_err("rpo is required")
        .to_string();
    assert!(missing.contains("rpo"), "{missing}");
}

const SITE_LOSS: &str = r#"schema = 1
name = "site"

[offsite]
path = "/srv/offsite"
every = "2s"
recipient = "age1wu75qf49jkqa5td6ccuyty507pe5rukszspucjdfhr9gpwh08u9sc2h6c6"
identity = "keys/dr.key"

[targets.db]
kind = "postgres"
backup = { method = "pg-dump", every = "3s" }
restore = { from = "latest" }
objectives = { rto = "60s", rpo = "10s" }

[targets.cache]
kind = "redis"
backup = { method = "redis-rdb", every = "3s" }
restore = { from = "latest" }
objectives = { rto = "60s", rpo = "10s" }

[[faults]]
kind = "site-loss"
at = "10s"
"#;

#[test]
fn a_site_loss_hits_every_target_and_needs_an_offsite_to_restore_from() {
    let s = parse_text(SITE_LOSS).unwrap();
    let hit: Vec<(&str, FaultKind)> = s
        .faults
        .iter()
        .map(|f| (f.target.as_str(), f.kind))
        .collect();
    assert_eq!(
        hit,
        [("cache", FaultKind::SiteLoss), ("db", FaultKind::SiteLoss)]
    );
    let o = s.offsite.as_ref().unwrap();
    assert_eq!(o.every, Duration::from_secs(2));
    assert_eq!(o.identity.as_deref(), Some(Path::new("keys/dr.key")));

    let err = |from: &str, to: &str| {
        assert_eq!(SITE_LOSS.matches(from).count(), 1, "{from}");
        parse_text(&SITE_LOSS.replacen(from, to, 1))
            .expect_err("must be rejected")
            .to_string()
    };
    let no_offsite = parse_text(&SITE_LOSS.replace(
        "[offsite]\npath = \"/srv/offsite\"\nevery = \"2s\"\nrecipient = \"age1wu75qf49jkqa5td6ccuyty507pe5rukszspucjdfhr9gpwh08u9sc2h6c6\"\nidentity = \"keys/dr.key\"\n",
        "",
    ))
    .expect_err("no offsite")
    .to_string();
    assert!(
        no_offsite.contains("add an [offsite] table"),
        "{no_offsite}"
    );
    let named = err(
        "kind = \"site-loss\"",
        "target = \"db\"\nkind = \"site-loss\"",
    );
    assert!(
        named.contains("faults[0].target") && named.contains("names no target"),
        "{named}"
    );
    let restart = err(
        "restore = { from = \"latest\" }\nobjectives = { rto = \"60s\", rpo = \"10s\" }\n\n[targets.cache]",
        "restore = { from = \"restart\" }\nobjectives = { rto = \"60s\", rpo = \"10s\" }\n\n[targets.cache]",
    );
    assert!(
        restart.contains("target \"db\" restores from `restart`"),
        "{restart}"
    );
    // Base backups and their WAL go offsite too; only the point captured on the site does not.
    let pitr = SITE_LOSS.replace(
        "method = \"pg-dump\", every = \"3s\" }",
        "method = \"pg-basebackup-wal\", every = \"3s\" }",
    );
    parse_text(&pitr).expect("a site loss with pg-basebackup-wal");
    let before_fault = parse_text(&pitr.replacen(
        "restore = { from = \"latest\" }",
        "restore = { from = \"before-fault\" }",
        1,
    ))
    .expect_err("before-fault after a site loss")
    .to_string();
    assert!(
        before_fault.contains("target \"db\" restores to `before-fault`"),
        "{before_fault}"
    );
    let recipient = err(
        "recipient = \"age1wu75qf49jkqa5td6ccuyty507pe5rukszspucjdfhr9gpwh08u9sc2h6c6\"",
        "recipient = \"AGE-SECRET-KEY-1QQQ\"",
    );
    assert!(
        recipient.contains("s.toml:7:13: offsite.recipient: not an age recipient"),
        "{recipient}"
    );
    let untargeted = err("kind = \"site-loss\"", "kind = \"kill\"");
    assert!(
        untargeted.contains("faults[0].target") && untargeted.contains("needs a `target`"),
        "{untargeted}"
    );
    let twice =
        parse_text(&(SITE_LOSS.to_string() + "\n[[faults]]\nkind = \"site-loss\"\nat = \"12s\"\n"))
            .expect_err("two site losses")
            .to_string();
    assert!(
        twice.contains("faults[1].kind") && twice.contains("at most once"),
        "{twice}"
    );
    let after = parse_text(
        &(SITE_LOSS.to_string() + "\n[[faults]]\ntarget = \"db\"\nkind = \"kill\"\nat = \"11s\"\n"),
    )
    .expect_err("a fault after the loss")
    .to_string();
    assert!(
        after.contains("faults[1].at") && after.contains("nothing left"),
        "{after}"
    );
}

#[test]
fn the_platform_workload_names_a_store_of_each_kind_that_writes_nothing_of_its_own() {
    let with = |workload: &str| {
        parse_text(&format!(
            "{SITE_LOSS}\n[platform]\nrto = \"2m\"\nrpo = \"30s\"\nworkload = {workload}\n"
        ))
    };
    let wrong_kind = with(r#"{ rate = 50, order = "cache", cache = "db", event = "db" }"#)
        .expect_err("roles need their kinds")
        .to_string();
    assert!(
        wrong_kind.contains("platform.workload.order")
            && wrong_kind.contains("the orders go to a postgres drill"),
        "{wrong_kind}"
    );
    let unknown = with(r#"{ rate = 50, order = "db", cache = "cache", event = "mq" }"#)
        .expect_err("no mq")
        .to_string();
    assert!(
        unknown.contains("platform.workload.event") && unknown.contains(r#"no target named "mq""#),
        "{unknown}"
    );
    let zero = with(r#"{ rate = 0, order = "db", cache = "cache", event = "mq" }"#)
        .expect_err("rate 0")
        .to_string();
    assert!(zero.contains("rate above zero"), "{zero}");
}

#[test]
fn replication_and_failover_rules() {
    let failover = |replication: &str, fault: &str| {
        GOOD.replace(
            "restore = { from = \"latest\" }",
            &format!("{replication}restore = {{ from = \"failover\" }}"),
        )
        .replace(", \"row-counts\"", "")
        .replace("kind = \"drop-table\"\nat = \"12s\"", fault)
    };
    let kill = "kind = \"kill\"\nat = \"12s\"";
    let s = parse_text(&failover(
        "replication = { standbys = 2, mode = \"sync\" }\n",
        kill,
    ))
    .expect("a replicated target fails over");
    let options = s.targets[0]
        .options_of::<crate::targets::postgres::schema::PgOptions>()
        .unwrap();
    let replication = options.replication.unwrap();
    assert_eq!(replication.standbys, 2);
    assert_eq!(
        replication.mode,
        crate::targets::postgres::schema::Mode::Sync
    );
    assert_eq!(s.targets[0].restore, RestorePoint::Failover);

    // Nothing to promote without standbys.
    assert_eq!(
        parse_text(&failover("", kill)).unwrap_err().to_string(),
        "s.toml:10:20: targets.pg.restore.from: restore.from = \"failover\" promotes a standby: give the target `replication = { standbys = 1 }`"
    );
    assert_eq!(
        parse_text(&failover("replication = { standbys = 3 }\n", kill))
            .unwrap_err()
            .to_string(),
        "s.toml:10:28: targets.pg.replication.standbys: a primary has 1 to 2 standbys here, not 3"
    );
    // An outage names a node the target has; a paused standby may heal before the failover.
    let paused = "kind = \"pause\"\nnode = \"standby-1\"\nat = \"3s\"\nfor = \"2s\"\n\n[[faults]]\ntarget = \"pg\"\nkind = \"kill\"\nat = \"12s\"";
    let s = parse_text(&failover("replication = { standbys = 1 }\n", paused)).unwrap();
    assert_eq!(s.faults[0].aim.as_deref(), Some("standby-1"));
    assert_eq!(s.faults[1].aim, None, "the primary by default");
    let e = parse_text(&failover(
        "replication = { standbys = 1 }\n",
        &paused.replace("standby-1", "standby-2"),
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "s.toml:18:8: faults[0].node: fault `pause`: target \"pg\" has no node \"standby-2\" (its nodes: primary, standby-1)"
    );
    assert!(
        parse_text(&GOOD.replace("at = \"12s\"", "at = \"12s\"\nnode = \"primary\""))
            .unwrap_err()
            .to_string()
            .contains("does not take `node`"),
        "drop-table hits no node"
    );
    // Kinds without replication have no failover.
    let redis = r#"schema = 1
name = "r"
description = "r"

[targets.cache]
kind = "redis"
workload = { rate = 10 }
restore = { from = "failover" }
checks = ["ledger"]
objectives = { rto = "60s", rpo = "10s" }

[[faults]]
target = "cache"
kind = "kill"
at = "5s"
"#;
    assert_eq!(
        parse_text(redis).unwrap_err().to_string(),
        "s.toml:8:20: targets.cache.restore.from: restore.from = \"failover\" promotes a replica: give the target `replication = { replicas = 1 }`"
    );
    let replicated = redis.replace(
        "restore = { from = \"failover\" }",
        "replication = { replicas = 2, sentinels = 3 }\nrestore = { from = \"failover\" }",
    );
    let s = parse_text(&replicated).expect("a replicated Redis target fails over");
    let r = s.targets[0]
        .options_of::<crate::targets::redis::schema::RedisOptions>()
        .unwrap()
        .replication
        .unwrap();
    assert_eq!(
        (r.replicas, r.sentinels, r.min_replicas_to_write),
        (2, 3, 0)
    );
    assert_eq!(
        parse_text(&replicated.replace("sentinels = 3", "sentinels = 2"))
            .unwrap_err()
            .to_string(),
        "s.toml:8:43: targets.cache.replication.sentinels: 0 (a runbook promotes) or 3 sentinels, not 2"
    );
    // `isolate` belongs to partitions, and `peers` to targets that have peers.
    let partition = "kind = \"network-partition\"\nisolate = \"peers\"\nat = \"5s\"\nfor = \"3s\"";
    let s = parse_text(&replicated.replace("kind = \"kill\"\nat = \"5s\"", partition)).unwrap();
    assert_eq!(s.faults[0].isolate, crate::spec::Isolate::Peers);
    assert_eq!(
        parse_text(&replicated.replace("at = \"5s\"", "isolate = \"peers\"\nat = \"5s\""))
            .unwrap_err()
            .to_string(),
        "s.toml:16:11: faults[0].isolate: fault `kill` does not take `isolate`"
    );
    let single = GOOD
        .replace(
            "restore = { from = \"latest\" }",
            "restore = { from = \"in-place\" }",
        )
        .replace(", \"row-counts\"", "")
        .replace(
            "kind = \"drop-table\"\nat = \"12s\"",
            "kind = \"network-partition\"\nisolate = \"peers\"\nat = \"12s\"\nfor = \"2s\"",
        );
    assert_eq!(
        parse_text(&single).unwrap_err().to_string(),
        "s.toml:17:11: faults[0].isolate: isolate = \"peers\" cuts a node off from the target's other nodes, and target \"pg\" has one node: give it `replication`"
    );
    // RabbitMQ fails over as a cluster.
    let mq = redis
        .replace("kind = \"redis\"", "kind = \"rabbitmq\"")
        .replace("[targets.cache]", "[targets.mq]")
        .replace("target = \"cache\"", "target = \"mq\"");
    assert_eq!(
        parse_text(&mq).unwrap_err().to_string(),
        "s.toml:8:20: targets.mq.restore.from: restore.from = \"failover\" waits for the cluster to serve again: give the target `cluster = { nodes = 3 }`"
    );
    assert_eq!(
        parse_text(&mq.replace(
            "restore = { from = \"failover\" }",
            "cluster = { nodes = 2 }\nrestore = { from = \"failover\" }"
        ))
        .unwrap_err()
        .to_string(),
        "s.toml:8:21: targets.mq.cluster.nodes: a cluster has 3 nodes here, not 2"
    );
}
