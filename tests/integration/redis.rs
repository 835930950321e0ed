//! Redis drills against real containers: crash recovery under appendfsync always and everysec,
//! RDB and AOF restores, damaged files and the `redis-check-aof --fix` repair, measured against
//! the ledger.

use crate::common::*;
use serde_json::Value;

/// Acknowledged writes of the ledger that the kept, restored Redis does not hold, read from the
/// server itself: its `seq:<n>` keys, listed inside the container by `redis-cli`, which logs in
/// with the password from the container's ACL file (the secret never leaves the container).
/// Then the kept run is removed.
fn lost_on_the_server(run: &Run) -> u64 {
    let container = format!("drillrig-{}-cache-1", run.run_id());
    let list = r#"REDISCLI_AUTH=$(sed -n 's/.* >\([^ ]*\) .*/\1/p' /etc/redis/drillrig.acl) redis-cli --no-auth-warning --scan --pattern 'seq:*'"#;
    let held: std::collections::BTreeSet<u64> = docker(&["exec", &container, "sh", "-c", list])
        .lines()
        .filter_map(|l| l.trim().strip_prefix("seq:")?.parse().ok())
        .collect();
    assert!(!held.is_empty(), "{container} holds no workload key");
    remove_run(run.run_id());
    run.ledger_of("cache")
        .iter()
        .filter(|w| w.2 == "ok" && !held.contains(&w.0))
        .count() as u64
}

#[test]
fn appendfsync_always_and_a_kill_lose_no_acknowledged_write() {
    let _engine = engine();
    let run = drill("scenarios/redis-kill-always.toml", "redis-kill-always", &[]);
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let t = run.target();
    assert!(t["rpo"]["acked_writes"].as_u64().unwrap() > 1000);
    assert_eq!(t["rpo"]["lost_writes"], 0);
    assert_eq!(run.report["faults"][0]["details"]["exit_code"], 137);
    assert_eq!(run.check("ledger"), "passed");
    assert_no_leftovers(run.run_id());
}

#[test]
fn appendfsync_everysec_reports_its_measured_loss_under_a_process_crash() {
    let _engine = engine();
    let run = drill(
        "scenarios/redis-kill-everysec.toml",
        "redis-kill-everysec",
        &[("DRILLRIG_KEEP", "always")],
    );
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let t = run.target();
    // A container kill is a process crash: the page cache keeps what Redis wrote, and the report
    // says so next to the measured loss.
    assert_eq!(
        t["rpo"]["lost_writes"].as_u64().unwrap(),
        lost_on_the_server(&run)
    );
    assert_eq!(t["rpo"]["holes"], 0);
    assert!(
        run.report["faults"][0]["details"]["note"]
            .as_str()
            .unwrap()
            .contains("page cache")
    );
    assert_no_leftovers(run.run_id());
}

#[test]
fn an_rdb_restore_loses_only_writes_acknowledged_after_its_bgsave() {
    let _engine = engine();
    let run = drill("scenarios/redis-flushall.toml", "redis-flushall", &[]);
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let t = run.target();
    let backup = run.restored_backup();
    let bgsave_at = backup["consistent_at_ms"].as_f64().unwrap();
    let rows = run.ledger_of("cache");
    let lost: Vec<_> = rows.iter().filter(|w| w.3 == "yes").collect();
    assert!(!lost.is_empty(), "writes after the BGSAVE are lost");
    for w in &lost {
        assert!(
            w.1 >= bgsave_at,
            "seq {} was acknowledged at {} ms, before the BGSAVE at {bgsave_at} ms",
            w.0,
            w.1
        );
    }
    // Everything acknowledged before the BGSAVE is back, and the keyspace is the backup's.
    assert!(
        rows.iter()
            .filter(|w| w.2 == "ok" && w.1 < bgsave_at)
            .all(|w| w.3 == "no")
    );
    assert_eq!(t["rpo"]["holes"], 0);
    for check in [
        "ledger",
        "row-counts",
        "checksums",
        "backup-integrity",
        "backup-size",
        "backup-age",
        "redis-check",
    ] {
        assert_eq!(run.check(check), "passed", "{check}");
    }
    assert_eq!(
        backup["max_seq"].as_u64().unwrap(),
        t["rpo"]["recovered_prefix_seq"].as_u64().unwrap()
    );
    assert_no_leftovers(run.run_id());
}

#[test]
fn the_aof_repair_path_loses_what_the_ledger_counts() {
    let _engine = engine();
    let run = drill(
        "scenarios/redis-aof-corruption.toml",
        "redis-aof-corruption",
        &[("DRILLRIG_KEEP", "always")],
    );
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let t = run.target();
    let damage = &run.report["faults"][0]["details"];
    assert_ne!(damage["bytes_before"], damage["bytes_after"]);
    assert!(damage["file"].as_str().unwrap().ends_with(".incr.aof"));
    let note = t["restore"]["note"].as_str().unwrap();
    assert!(
        note.contains("redis-check-aof --fix") && note.contains("truncated"),
        "{note}"
    );
    let lost = t["rpo"]["lost_writes"].as_u64().unwrap();
    assert!(lost > 0, "the repair cut acknowledged writes");
    assert_eq!(
        lost,
        lost_on_the_server(&run),
        "the reported loss is what the server lacks"
    );
    assert_eq!(
        t["rpo"]["holes"], 0,
        "the repair truncates: what is lost is a suffix"
    );
    assert_no_leftovers(run.run_id());
}

#[test]
fn a_torn_aof_tail_costs_at_most_the_write_being_written() {
    let _engine = engine();
    let run = drill(
        "tests/scenarios/redis-aof-torn-tail.toml",
        "redis-aof-torn-tail",
        &[],
    );
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let t = run.target();
    assert_eq!(run.report["faults"][0]["details"]["torn_bytes"], 7);
    assert!(t["rpo"]["lost_writes"].as_u64().unwrap() <= 1);
    assert_eq!(t["rpo"]["holes"], 0);
    assert_no_leftovers(run.run_id());
}

#[test]
fn an_aof_backup_restores_a_lost_site() {
    let _engine = engine();
    let run = drill(
        "tests/scenarios/redis-aof-volume-loss.toml",
        "redis-aof-volume-loss",
        &[],
    );
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let paused_at = run.restored_backup()["consistent_at_ms"].as_f64().unwrap();
    for w in run.ledger_of("cache").iter().filter(|w| w.3 == "yes") {
        assert!(
            w.1 >= paused_at,
            "seq {} acknowledged at {} ms, before the backup's pause at {paused_at} ms",
            w.0,
            w.1
        );
    }
    for check in [
        "ledger",
        "row-counts",
        "checksums",
        "backup-integrity",
        "redis-check",
    ] {
        assert_eq!(run.check(check), "passed", "{check}");
    }
    assert_no_leftovers(run.run_id());
}

#[test]
fn a_damaged_rdb_backup_fails_the_drill() {
    let _engine = engine();
    let run = drill(
        "scenarios/controls/redis-damaged-rdb.toml",
        "redis-damaged-rdb",
        &[],
    );
    assert_eq!(run.code(), Some(1), "{}", run.debug());
    assert_eq!(run.report["outcome"], "missed");
    assert_eq!(run.check("redis-check"), "failed");
    assert_eq!(run.check("backup-integrity"), "failed");
    assert_eq!(run.target()["rto"]["achieved_ms"], Value::Null);
    assert_no_leftovers(run.run_id());
}

/// A FLUSHALL replayed by the restart: nothing of the dataset survives. The ledger says every
/// acknowledged write before the flush is lost, the seed check finds no seeded key, and the
/// drill calls it a total loss that misses a 10-minute RPO objective in a drill of seconds.
#[test]
fn a_flushall_kept_by_the_restart_is_a_total_loss_and_misses_the_rpo() {
    let _engine = engine();
    let run = drill(
        "scenarios/controls/redis-flushall-restart.toml",
        "redis-flushall-restart",
        &[],
    );
    assert_eq!(run.code(), Some(1), "{}", run.debug());
    let t = run.target();
    let flushed = run.report["faults"][0]["started_ms"].as_f64().unwrap();
    let ledger = run.ledger_of("cache");
    let before: Vec<_> = ledger
        .iter()
        .filter(|w| w.2 == "ok" && w.1 < flushed)
        .collect();
    assert!(before.len() > 100, "the workload wrote before the flush");
    assert!(
        before.iter().all(|w| w.3 == "yes"),
        "every write acknowledged before the flush is lost"
    );
    let seeded = t["seed"]["datasets"]["items"]["rows"].as_u64().unwrap();
    assert_eq!(seeded, 5000 + 1, "5000 item keys and the sorted set");
    assert_eq!(run.check("seed"), "failed");
    let rpo = &t["rpo"];
    assert_eq!(rpo["total_loss"], true, "{rpo:#}");
    assert_eq!(rpo["met"], false);
    // The loss reaches back to the seed's start, before the workload's.
    let span =
        t["workload"]["started_ms"].as_u64().unwrap() - t["seed"]["started_ms"].as_u64().unwrap();
    assert!(rpo["achieved_ms"].as_u64().unwrap() > span);
    assert_no_leftovers(run.run_id());
}

/// Every tenth seeded item overwritten, then the latest RDB (taken before) loaded into a fresh
/// server: exactly a tenth of the items were overwritten, and every one comes back as seeded.
#[test]
fn an_rdb_restore_undoes_a_bad_update() {
    let _engine = engine();
    let run = drill("scenarios/redis-bad-update.toml", "redis-bad-update", &[]);
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let details = &run.report["faults"][0]["details"];
    assert_eq!(details["keys_overwritten"], 2000, "{details}");
    assert_eq!(run.check("seed"), "passed");
    assert_eq!(run.check("ledger"), "passed");
    assert_eq!(run.target()["rpo"]["mismatched"], 0);
    assert_no_leftovers(run.run_id());
}

/// `disk-full`: the 64 MiB data volume filled to its last byte; Redis refuses writes with its
/// own out-of-space error (to the client, and in its log), and once the filler is gone writes
/// again by itself, losing no acknowledged write.
#[test]
fn a_full_disk_makes_redis_refuse_writes_until_space_comes_back() {
    let _engine = engine();
    let run = drill("scenarios/redis-disk-full.toml", "redis-disk-full", &[]);
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let fault = &run.report["faults"][0];
    let details = &fault["details"];
    assert_eq!(details["volume_bytes"], 64 << 20, "{details}");
    assert_eq!(details["available_bytes"], 0);
    assert!(
        details["refused_with"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{details}"
    );
    let log = std::fs::read_to_string(
        run.dir
            .join("logs")
            .join(format!("drillrig-{}-cache-1.log", run.run_id())),
    )
    .unwrap();
    let failed = log
        .find("writing to the AOF file")
        .expect("Redis logs its failed AOF write");
    let solved = log
        .find("AOF write error looks solved")
        .expect("Redis logs that it writes again");
    assert!(failed < solved);
    // Writes were refused while the volume was full; none acknowledged was lost.
    let (full, freed) = (
        fault["injected_at_ms"].as_f64().unwrap(),
        fault["heal_started_ms"].as_f64().unwrap(),
    );
    let ledger = run.ledger_of("cache");
    let refused = ledger
        .iter()
        .filter(|w| w.2 == "fail" && w.1 > full && w.1 < freed)
        .count();
    assert!(refused > 100, "{refused} writes refused while full");
    let t = run.target();
    assert_eq!(t["rpo"]["lost_writes"], 0);
    assert_eq!(run.check("seed"), "passed");
    // Reads kept working: no probe failed, and the RTO still spans the full disk.
    assert_eq!(t["detection"]["detected_at_ms"], Value::Null);
    assert!(t["rto"]["achieved_ms"].as_f64().unwrap() >= freed - full);
    assert_no_leftovers(run.run_id());
}
