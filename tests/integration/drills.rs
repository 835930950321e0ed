//! The shipped scenarios, run through the `drillrig` binary against real containers. The
//! assertions read what a user reads: report.json, the ledger CSV, the engine's state.
//! A missing Docker engine fails these tests; it never skips them.

use std::process::Command;
use std::time::Duration;

use crate::common::*;
use crate::engine_clock::{EngineEvents, assert_on_the_engine_clock};
use serde_json::Value;

/// Every lost write was acknowledged after the restored backup's consistency point, none
/// below the recovered prefix (no holes), and the loss is not vacuous.
fn assert_prefix_loss_after_backup(run: &Run) {
    let t = run.target();
    assert_eq!(t["rpo"]["holes"], 0);
    assert_eq!(t["rpo"]["unexpected"], 0);
    assert_eq!(t["rpo"]["mismatched"], 0);
    let backup = run.restored_backup();
    let restored = &backup["id"];
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
    let rpo = t["rpo"]["achieved_ms"].as_u64().unwrap();
    assert!(
        rpo > 0 && rpo <= t["rpo"]["target_ms"].as_u64().unwrap(),
        "rpo {rpo}"
    );
}

#[test]
fn kill_and_crash_recovery_lose_no_acknowledged_write() {
    let _engine = engine();
    let engine_events = EngineEvents::follow();
    let run = drill("scenarios/pg-kill.toml", "pg-kill", &[]);
    let engine_events = engine_events.stop();
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
    // The kill, the restart and the teardown happened when the report says, by the engine's
    // own clock.
    assert_on_the_engine_clock(&run, &engine_events);
    for check in ["ledger", "foreign-keys", "amcheck"] {
        assert_eq!(run.check(check), "passed");
    }
    assert_report_md_agrees(&run);
    assert!(
        run.dir.join("logs").read_dir().unwrap().count() >= 1,
        "container logs are kept"
    );
    assert_no_leftovers(run.run_id());
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
    assert_only_the_restored_dump_was_read(&run, 50_000);
    assert_report_md_agrees(&run);
    assert_no_leftovers(run.run_id());
}

/// Only the restored dump's snapshot was read for its contents: the other manifests say why
/// they have none, and the restored one counts in `orders` the seed's rows plus the workload's
/// writes its snapshot holds (every one acknowledged before its consistency point, none above
/// its newest seq), read from the ledger.
fn assert_only_the_restored_dump_was_read(run: &Run, seeded: u64) {
    let backup = run.restored_backup();
    let restored = backup["id"].as_u64().unwrap();
    let consistent_at = backup["consistent_at_ms"].as_f64().unwrap();
    let max_seq = backup["max_seq"].as_u64().unwrap();
    let folders = std::fs::read_dir(run.dir.join("backups/pg")).unwrap();
    let mut read = 0;
    for folder in folders {
        let text = std::fs::read(folder.unwrap().path().join("manifest.json")).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&text).unwrap();
        if manifest["id"] != restored {
            assert_eq!(manifest["contents"], serde_json::json!({}), "{manifest}");
            assert_eq!(
                manifest["contents_unread"], "read only for the backup a restore uses",
                "{manifest}"
            );
            continue;
        }
        read += 1;
        assert!(manifest["contents_unread"].is_null(), "{manifest}");
        let orders = manifest["contents"]["orders"]["rows"].as_u64().unwrap();
        let ledger = run.ledger();
        let surely_in = ledger
            .iter()
            .filter(|w| w.2 == "ok" && w.1 < consistent_at)
            .count() as u64;
        let at_most = ledger.iter().filter(|w| w.0 <= max_seq).count() as u64;
        assert!(
            (seeded + surely_in..=seeded + at_most).contains(&orders),
            "backup {restored} counts {orders} orders; the seed and ledger say {} to {}",
            seeded + surely_in,
            seeded + at_most
        );
        assert!(manifest["contents"]["customers"]["rows"].as_u64().unwrap() > 0);
    }
    assert_eq!(read, 1, "exactly the restored backup was read");
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
    assert_no_leftovers(run.run_id());
}

#[test]
fn a_damaged_backup_makes_the_drill_miss_and_keep_on_failure_keeps_it_for_gc() {
    let _engine = engine_alone();
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
    // Nothing reads a service that never came back: the check says so instead of failing.
    assert_eq!(run.check("row-counts"), "unknown");
    assert_eq!(
        run.check_detail("row-counts"),
        "not run: the restore failed"
    );
    // Nothing was read back: the lost writes are unknown, and report.md says so with why.
    assert_eq!(t["rpo"]["lost_writes"], Value::Null);
    assert_report_md_agrees(&run);
    let stdout = run.stdout();
    assert!(
        stdout.contains("backup-integrity") && stdout.contains("FAILED"),
        "the failing checks are named:\n{stdout}"
    );

    // DRILLRIG_KEEP=on-failure left the run in place; its process has exited, so gc removes it.
    assert!(
        !resources_of(run.run_id()).is_empty(),
        "containers are kept for inspection"
    );
    let gc = Command::new(BIN).arg("gc").output().unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert!(String::from_utf8_lossy(&gc.stdout).contains(run.run_id()));
    assert_no_leftovers(run.run_id());
}

#[test]
fn validate_reports_each_bad_file_and_exits_2() {
    let dir = out_dir("validate");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "schema = 1\nname = \"x\"\n[targets.pg]\nkind = \"postgres\"\nrestore = { from = \"restart\" }\nobjectives = { rto = \"5 fortnights\", rpo = \"0s\" }\n",
    )
    .unwrap();
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

/// Each kind hit behind the drill's back while its workload runs, beside the faults the scenario
/// asks for: a PostgreSQL backend SIGKILLed (the postmaster restarts every session), Redis's data
/// folder made read-only under a one-second save rule (the save fails and Redis refuses writes
/// until one succeeds), a RabbitMQ disk alarm raised (every publisher blocked). Each service logs
/// it (read here from the engine directly), no probe or objective notices, and the drill finds
/// each line in the service's own log and misses.
#[test]
fn outages_no_fault_caused_are_found_in_each_services_log_and_fail_the_drill() {
    let _engine = engine();
    let dir = out_dir("unasked-every-kind");
    let mut child = spawn_drill("tests/scenarios/unasked-every-kind.toml", &dir);
    let pid = child.id();
    wait_until(
        &mut child,
        Duration::from_secs(120),
        "the drill's containers",
        || running_run_id(pid).is_some(),
    );
    let run_id = running_run_id(pid).unwrap();
    let container = |target: &str| format!("drillrig-{run_id}-{target}-1");
    let logged = |target: &str, line: &str| -> bool {
        let out = Command::new("docker")
            .args(["logs", &container(target)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(line)
            || String::from_utf8_lossy(&out.stderr).contains(line)
    };
    // Each target is hit a second into its own workload (its fault is at 8 s), so the damage is
    // done and undone before the fault and long before its log is read.
    let stderr = Stderr::follow(&mut child);
    let mut hits = Vec::new();
    stderr
        .on_each(
            &[
                "pg: phase workload",
                "cache: phase workload",
                "mq: phase workload",
            ],
            Duration::from_secs(180),
            |i| {
                let (pg, cache, mq) = (container("pg"), container("cache"), container("mq"));
                hits.push(std::thread::spawn(move || {
                    let run = |args: &[&str]| {
                        let out = Command::new("docker").args(args).output().unwrap();
                        assert!(out.status.success(), "docker {args:?}: {out:?}");
                        String::from_utf8_lossy(&out.stdout).trim().to_string()
                    };
                    std::thread::sleep(Duration::from_secs(1));
                    match i {
                        0 => {
                            let pid = run(&[
                                "exec",
                                &pg,
                                "pgrep",
                                "-o",
                                "-f",
                                "postgres: postgres drill",
                            ]);
                            assert!(!pid.is_empty(), "no backend of the drill's database");
                            run(&["exec", &pg, "kill", "-9", &pid]);
                        }
                        1 => {
                            run(&["exec", "-u", "root", &cache, "chmod", "0555", "/data"]);
                            std::thread::sleep(Duration::from_secs(4));
                            run(&["exec", "-u", "root", &cache, "chmod", "0755", "/data"]);
                        }
                        _ => {
                            let ctl = ["exec", "-u", "rabbitmq", &mq, "rabbitmqctl"];
                            run(&[&ctl[..], &["set_disk_free_limit", "1000GB"]].concat());
                            std::thread::sleep(Duration::from_secs(3));
                            run(&[&ctl[..], &["set_disk_free_limit", "50MB"]].concat());
                        }
                    }
                }));
            },
        )
        .expect("every target's workload began");
    for hit in hits {
        hit.join().expect("the hit behind the drill's back worked");
    }
    // Each service says so itself, before the drill reads anything.
    let said = [
        ("pg", "terminating any other active server processes"),
        ("cache", "Background saving error"),
        ("mq", "resource limit alarm set"),
    ];
    for (target, line) in said {
        assert!(logged(target, line), "{target} never logged {line:?}");
    }
    let status = child.wait().unwrap();
    let log = stderr.all();
    let report = read_report(&dir);
    for (target, line) in said {
        let t = report["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == target)
            .unwrap();
        let outages = t["unasked_outages"].as_array().cloned().unwrap_or_default();
        assert!(
            outages.iter().any(|o| o.as_str().unwrap().contains(line)),
            "{target}: {outages:?}\n{log}"
        );
        // Nothing else missed: every acknowledged write is there.
        assert_eq!(t["rpo"]["lost_writes"], 0, "{target}: {report:#}");
    }
    assert_eq!(report["outcome"], "missed", "{report:#}");
    assert_eq!(status.code(), Some(1));
    assert_no_leftovers(&run_id);
}

/// A restart does not undo a bad UPDATE. The run is kept (it misses), and the damage is read
/// from the server directly: the zeroed orders are exactly the rows the fault reported, the
/// workload's among them are exactly what the ledger found changed, and the seed check fails.
#[test]
fn a_restart_does_not_undo_a_bad_update() {
    let _engine = engine();
    let run = drill(
        "scenarios/controls/pg-bad-update-restart.toml",
        "pg-bad-update-restart",
        &[("DRILLRIG_KEEP", "on-failure")],
    );
    assert_eq!(run.code(), Some(1), "{}", run.debug());
    let details = &run.report["faults"][0]["details"];
    let updated = details["rows_updated"].as_u64().unwrap();
    let statement = details["statement"].as_str().unwrap();
    let pick: u64 = statement
        .split("id % 10 = ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("which rows? {statement}"));
    let container = format!("drillrig-{}-pg-1", run.run_id());
    let count = |which: &str| -> u64 {
        let sql = format!(
            "SELECT count(*) FROM orders WHERE id % 10 = {pick} AND amount_cents = 0 AND {which}"
        );
        docker(&[
            "exec", "-u", "postgres", &container, "psql", "-d", "drill", "-tAc", &sql,
        ])
        .trim()
        .parse()
        .unwrap()
    };
    let (seeded, written) = (count("seq IS NULL"), count("seq IS NOT NULL"));
    assert!(
        seeded > 400,
        "one seeded order in ten of 5000 is zeroed: {seeded}"
    );
    assert_eq!(
        seeded + written,
        updated,
        "the zeroed orders are the updated rows"
    );
    let t = run.target();
    assert_eq!(t["rpo"]["mismatched"], written);
    assert_eq!(run.check("ledger"), "failed");
    assert_eq!(run.check("seed"), "failed");
    remove_run(run.run_id());
    assert_no_leftovers(run.run_id());
}

/// The backup checks' failing paths on a real dump cut to half its size: the file on disk is
/// half of what the backup recorded, and backup-integrity, backup-size and backup-age fail, as
/// does the restore.
#[test]
fn a_truncated_dump_fails_integrity_size_and_age_and_the_restore() {
    let _engine = engine();
    let run = drill(
        "scenarios/controls/pg-truncated-dump.toml",
        "pg-truncated-dump",
        &[],
    );
    assert_eq!(run.code(), Some(1), "{}", run.debug());
    let damage = &run.report["faults"][0]["details"];
    assert_eq!(run.report["faults"][0]["kind"], "truncate-backup");
    let file = damage["file"].as_str().unwrap();
    let on_disk = std::fs::metadata(file).unwrap().len();
    let before = damage["size_before"].as_u64().unwrap();
    let recorded = run.restored_backup()["size_bytes"].as_u64().unwrap();
    assert_eq!(on_disk, before / 2, "{file} on disk");
    assert!(
        before > 100_000 && before <= recorded,
        "{before} of {recorded} bytes"
    );
    for check in ["backup-integrity", "backup-size", "backup-age"] {
        assert_eq!(run.check(check), "failed", "{check}");
    }
    let t = run.target();
    assert!(
        t["restore"]["error"]
            .as_str()
            .unwrap()
            .contains("pg_restore"),
        "{}",
        t["restore"]
    );
    // The newest dump began at 8 s and the site was lost at 15 s: older than the 5 s objective.
    let backups = t["backups"].as_array().unwrap();
    let newest = backups.last().unwrap()["consistent_at_ms"]
        .as_f64()
        .unwrap();
    let lost = t["rto"]["fault_at_ms"].as_f64().unwrap();
    assert!(lost - newest > 5_000.0, "{lost} - {newest}");
    assert_no_leftovers(run.run_id());
}
