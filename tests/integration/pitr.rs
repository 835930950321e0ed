//! Point-in-time recovery and damage to the backup chain (`pg-basebackup-wal`), against real
//! containers: the restored writes are checked against the ledger and the captured recovery point;
//! and a site loss recovered from the base backups and WAL shipped offsite.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::common::*;
use crate::engine_clock::{EngineEvents, assert_on_the_engine_clock};
use serde_json::Value;

const PITR: &str = "scenarios/pg-pitr-drop-table.toml";

/// The drop-table drill with the race against the archive forced: no `archive_timeout` switch
/// comes during the drill, and at 50 writes/s a 1 MB segment takes about a minute to fill, so
/// the segment holding the point before the fault (opened by the base backup at 10 s) is still
/// being written when the restore begins.
const UNARCHIVED: [(&str, &str); 2] = [
    (
        "every = \"10s\" }",
        "every = \"10s\", archive_timeout = \"300s\" }",
    ),
    ("rate = 500", "rate = 50"),
];

/// The 1 MB WAL segment of timeline 1 holding `lsn`.
fn segment_of(lsn: &str) -> String {
    let (hi, lo) = lsn.split_once('/').unwrap();
    let lsn = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    let n = lsn >> 20;
    format!("00000001{:08X}{:08X}", n >> 12, n & 0xFFF)
}

/// When `segment` landed in the run's WAL archive, in ms from the run's start (the archive's own
/// file time).
fn archived_at_ms(run: &Run, segment: &str) -> Option<f64> {
    let path = run.dir.join("backups/pg/wal").join(segment);
    path.exists().then(|| run_ms(run, &path))
}

/// When `file` was last written, in ms from the run's start.
fn run_ms(run: &Run, file: &Path) -> f64 {
    let modified = std::fs::metadata(file).unwrap().modified().unwrap();
    let started = humantime::parse_rfc3339(run.report["started_at"].as_str().unwrap()).unwrap();
    modified.duration_since(started).unwrap().as_secs_f64() * 1e3
}

/// `(seq, invoked_ms, completed_ms, outcome, lost)` per ledger row.
fn ledger_rows(run: &Run) -> Vec<(u64, f64, f64, String, String)> {
    std::fs::read_to_string(run.dir.join("ledger-pg.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].to_string(),
                f[4].to_string(),
            )
        })
        .collect()
}

/// Every acknowledged write completed before `before_ms` is present; every acknowledged write
/// invoked after `after_ms` is lost; the loss is a prefix (no holes).
fn assert_cut_between(run: &Run, before_ms: f64, after_ms: f64) {
    let rows = ledger_rows(run);
    let acked: Vec<_> = rows.iter().filter(|w| w.3 == "ok").collect();
    let kept_before = acked.iter().filter(|w| w.2 < before_ms).count();
    let lost_after = acked.iter().filter(|w| w.1 > after_ms).count();
    assert!(
        kept_before > 100 && lost_after > 0,
        "the cut must fall inside the workload ({kept_before} before, {lost_after} after)"
    );
    for w in &acked {
        if w.2 < before_ms {
            assert_eq!(
                w.4, "no",
                "seq {} was acknowledged at {} ms, before the recovery target, and is lost",
                w.0, w.2
            );
        }
        if w.1 > after_ms {
            assert_eq!(
                w.4, "yes",
                "seq {} was written at {} ms, after the recovery target, and was restored",
                w.0, w.1
            );
        }
    }
    assert_eq!(run.target()["rpo"]["holes"], 0);
}

#[test]
fn pitr_before_a_dropped_table_keeps_every_write_before_the_target_and_none_after() {
    let _engine = engine();
    let run = drill(PITR, "pg-pitr-drop-table", &[]);
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let t = run.target();
    let point = &t["restore"]["recovery_point"];
    let lsn = point["label"].as_str().unwrap();
    assert!(
        t["restore"]["recovery_target"]
            .as_str()
            .unwrap()
            .contains(lsn)
    );
    assert!(t["restore"]["reached"].as_str().unwrap().contains(&format!(
        "recovery stopping after WAL location (LSN) \"{lsn}\""
    )));
    let asked = point["asked_at_us"].as_f64().unwrap() / 1e3;
    let answered = point["answered_at_us"].as_f64().unwrap() / 1e3;
    assert_cut_between(&run, asked, answered);
    // The lost writes are exactly those acknowledged between the target and the drop.
    let dropped = run.report["faults"][0]["injected_at_ms"].as_f64().unwrap();
    for w in ledger_rows(&run).iter().filter(|w| w.4 == "yes") {
        assert!(
            w.2 >= asked && w.2 <= dropped + 1.0,
            "seq {} acknowledged at {} ms is outside {asked}..{dropped}",
            w.0,
            w.2
        );
    }
    for check in [
        "ledger",
        "foreign-keys",
        "amcheck",
        "backup-integrity",
        "pg-verifybackup",
        "wal-continuity",
        "backup-age",
    ] {
        assert_eq!(run.check(check), "passed", "{check}");
    }
    assert_no_leftovers(run.run_id());
}

#[test]
fn a_point_not_yet_archived_is_switched_out_and_awaited_before_replay() {
    let _engine = engine();
    let scenario = variant(PITR, "pitr-unarchived", &UNARCHIVED);
    let run = drill(&scenario, "pitr-unarchived", &[]);
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let t = run.target();
    let lsn = t["restore"]["recovery_point"]["label"].as_str().unwrap();
    let dropped = run.report["faults"][0]["injected_at_ms"].as_f64().unwrap();
    // The race was real: the segment holding the point reached the archive only after the drop.
    let segment = segment_of(lsn);
    let archived = archived_at_ms(&run, &segment).expect("the point's segment is archived");
    assert!(
        archived > dropped,
        "segment {segment} was archived at {archived} ms, before the drop at {dropped} ms: no race"
    );
    let prepared = t["restore"]["prepared"].as_str().unwrap();
    assert!(
        prepared.contains("forced a WAL segment switch at"),
        "{prepared}"
    );
    assert!(t["rto"]["phases"]["archive"].as_u64().is_some());
    assert!(t["restore"]["reached"].as_str().unwrap().contains(&format!(
        "recovery stopping after WAL location (LSN) \"{lsn}\""
    )));
    // Every write acknowledged before the point was asked for is back.
    let asked = t["restore"]["recovery_point"]["asked_at_us"]
        .as_f64()
        .unwrap()
        / 1e3;
    let acked: Vec<_> = ledger_rows(&run)
        .into_iter()
        .filter(|w| w.3 == "ok")
        .collect();
    assert!(acked.iter().filter(|w| w.2 < asked).count() > 100);
    for w in acked.iter().filter(|w| w.2 < asked) {
        assert_eq!(w.4, "no", "seq {} acknowledged at {} ms is lost", w.0, w.2);
    }
    assert_eq!(run.check("ledger"), "passed");
    assert_no_leftovers(run.run_id());
}

/// The shipped `pg-volume-loss` (the primary's container and volume removed) asked to restore to
/// the point before the fault, with the race against the archive forced as [`UNARCHIVED`] does:
/// the point's segment can never be archived, so the restore gives way to the archive's end.
#[test]
fn with_the_primary_gone_an_unarchived_point_gives_way_to_the_end_of_the_archive() {
    let _engine = engine();
    let edits = [
        ("archive_timeout = \"2s\"", "archive_timeout = \"300s\""),
        ("rate = 200", "rate = 50"),
        ("from = \"latest\"", "from = \"before-fault\""),
        ("rpo = \"5s\"", "rpo = \"60s\""),
    ];
    let scenario = variant(
        "scenarios/pg-volume-loss.toml",
        "pitr-unarchived-primary-gone",
        &edits,
    );
    let run = drill(&scenario, "pitr-unarchived-primary-gone", &[]);
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let t = run.target();
    assert_eq!(
        t["restore"]["recovery_target"],
        "the end of the archive (the point before the fault was never archived)"
    );
    let prepared = t["restore"]["prepared"].as_str().unwrap();
    assert!(
        prepared.contains("the primary does not answer"),
        "{prepared}"
    );
    let lsn = t["restore"]["recovery_point"]["label"].as_str().unwrap();
    let segment = segment_of(lsn);
    assert_eq!(
        archived_at_ms(&run, &segment),
        None,
        "segment {segment} of the point cannot be archived: its server is gone"
    );
    assert_eq!(run.report["faults"][0]["kind"], "volume-loss");
    // What the archive held is back; what it never held is lost, as one tail.
    let newest = std::fs::read_dir(run.dir.join("backups/pg/wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .max()
        .unwrap();
    let closed = archived_at_ms(&run, &newest).unwrap();
    let acked: Vec<_> = ledger_rows(&run)
        .into_iter()
        .filter(|w| w.3 == "ok")
        .collect();
    assert!(acked.iter().filter(|w| w.2 < closed - 1_000.0).count() > 100);
    for w in acked.iter().filter(|w| w.2 < closed - 1_000.0) {
        assert_eq!(
            w.4, "no",
            "seq {} acknowledged at {} ms, a second before segment {newest} was archived, is lost",
            w.0, w.2
        );
    }
    assert!(t["rpo"]["lost_writes"].as_u64().unwrap() > 0);
    assert_eq!(t["rpo"]["holes"], 0);
    assert!(
        t["restore"]["note"]
            .as_str()
            .unwrap()
            .contains(&format!("({lsn}) is not in the archive"))
    );
    assert_no_leftovers(run.run_id());
}

#[test]
fn a_lost_site_replays_every_wal_segment_that_landed_offsite_and_loses_only_the_rest() {
    let _engine = engine();
    let offsite = out_dir("pg-site-loss-offsite");
    let scenario = variant(
        "scenarios/pg-site-loss.toml",
        "pg-site-loss",
        &[
            (
                r#"path = "../reports/offsite""#,
                &format!(r#"path = "{}""#, offsite.display()),
            ),
            (
                r#"identity = "../fixtures/offsite/dr-site.key""#,
                &format!(
                    r#"identity = "{}""#,
                    repo("fixtures/offsite/dr-site.key").display()
                ),
            ),
        ],
    );
    let engine_events = EngineEvents::follow();
    let run = drill(&scenario, "pg-site-loss", &[]);
    let engine_events = engine_events.stop();
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    assert_on_the_engine_clock(&run, &engine_events);
    let t = run.target();
    assert_eq!(run.report["faults"][0]["kind"], "site-loss");
    assert!(
        !run.dir.join("backups").exists(),
        "the local repository and its WAL archive survived the site loss"
    );

    // What landed offsite, read from the repository folder itself: each segment sealed, with
    // its record written after it (the record's time is when it landed).
    let repository = offsite.join("pg-site-loss").join(run.run_id()).join("pg");
    let shipped: Vec<PathBuf> = files_under(&repository.join("wal"));
    for sealed in shipped
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "age"))
    {
        let head = std::fs::read(sealed).unwrap();
        assert!(
            head.starts_with(b"age-encryption.org/v1\n"),
            "{sealed:?} is not sealed"
        );
    }
    let landed: BTreeMap<String, f64> = shipped
        .iter()
        .filter_map(|f| {
            let name = f.file_name()?.to_str()?.strip_suffix(".json")?.to_string();
            Some((name, run_ms(&run, f)))
        })
        .collect();
    let (newest, newest_landed_ms) = landed
        .iter()
        .filter(|(name, _)| name.len() == 24)
        .max_by(|a, b| a.0.cmp(b.0))
        .map(|(n, at)| (n.clone(), *at))
        .expect("WAL landed offsite");

    // The DR site fetched exactly what landed, beside the newest base backup that landed.
    let fetched: BTreeSet<String> = std::fs::read_dir(run.dir.join("dr-site/backups/pg/wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".sha256"))
        .collect();
    assert_eq!(
        fetched,
        landed.keys().cloned().collect(),
        "fetched vs landed"
    );
    assert_eq!(
        t["offsite"]["fetched"]["archive_files"].as_u64(),
        Some(landed.len() as u64)
    );
    let newest_backup = std::fs::read_dir(&repository)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            e.path()
                .join("manifest.json")
                .exists()
                .then(|| e.file_name().to_string_lossy()[..3].parse::<u64>().unwrap())
        })
        .max();
    assert_eq!(t["restore"]["backup_id"].as_u64(), newest_backup);
    assert_eq!(t["restore"]["recovery_target"], "the end of the archive");

    // What the report says landed is what the repository holds, and all of it landed before
    // the site loss ended; the report's landing time of each is its record's.
    let reported: BTreeMap<String, f64> = t["offsite"]["archive"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["file"].as_str().unwrap().to_string(),
                s["landed_ms"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reported.keys().collect::<Vec<_>>(),
        landed.keys().collect::<Vec<_>>()
    );
    let said = run.stdout();
    let manifests = files_under(&repository)
        .iter()
        .filter(|f| f.ends_with("manifest.json"))
        .count();
    assert!(
        said.contains(&format!("offsite pg: {manifests} backup(s) landed")),
        "{said}"
    );
    assert!(
        said.contains(&format!("; {} WAL file(s) landed", landed.len()))
            && said.contains(&format!(
                "the DR site fetched backup {} and {} WAL file(s)",
                newest_backup.unwrap(),
                landed.len()
            )),
        "{said}"
    );
    let stopped = run.report["faults"][0]["details"]["shipping_stopped_ms"]
        .as_f64()
        .unwrap();
    for (file, at) in &landed {
        assert!(
            *at <= stopped + 5.0,
            "{file} landed at {at} ms, after shipping stopped ({stopped})"
        );
        assert!(
            (reported[file] - at).abs() < 1_000.0,
            "{file} landed at {at} ms, the report says {}",
            reported[file]
        );
    }

    // The ledger: a write invoked after the newest segment landed lies beyond it and is lost;
    // one acknowledged archive_timeout (2 s) before that segment was archived on the site (the
    // fetched copy keeps its archive time) was in it or earlier, and is back.
    let archived = run_ms(&run, &run.dir.join("dr-site/backups/pg/wal").join(&newest));
    let acked: Vec<_> = ledger_rows(&run)
        .into_iter()
        .filter(|w| w.3 == "ok")
        .collect();
    let (back, lost) = (archived - 2_000.0, newest_landed_ms);
    assert!(acked.iter().filter(|w| w.2 < back).count() > 100);
    for w in &acked {
        if w.2 < back {
            assert_eq!(w.4, "no", "seq {} acknowledged at {} ms is lost", w.0, w.2);
        }
        if w.1 > lost {
            assert_eq!(w.4, "yes", "seq {} written at {} ms is back", w.0, w.1);
        }
    }
    assert!(t["rpo"]["lost_writes"].as_u64().unwrap() > 0);
    assert_eq!(t["rpo"]["holes"], 0);
    for check in [
        "ledger",
        "foreign-keys",
        "amcheck",
        "pg-verifybackup",
        "wal-continuity",
        "backup-age",
    ] {
        assert_eq!(run.check(check), "passed", "{check}");
    }
    assert_no_leftovers(run.run_id());
}

#[test]
fn a_wal_gap_stops_the_restore_where_the_report_says() {
    let _engine = engine();
    let run = drill("scenarios/pg-wal-gap.toml", "pg-wal-gap", &[]);
    assert_eq!(run.code(), Some(1), "{}", run.debug());
    assert_eq!(run.report["outcome"], "missed");
    let gap = &run.report["faults"][0]["details"];
    let segment = gap["segment"].as_str().unwrap();
    let t = run.target();
    let note = t["restore"]["note"].as_str().unwrap();
    assert!(
        note.contains(&format!("WAL segment {segment} is missing")),
        "{note}"
    );
    assert!(
        note.contains(&format!("stops at {}", gap["lsn_from"].as_str().unwrap())),
        "{note}"
    );
    assert!(
        t["rpo"]["note"].as_str().unwrap().contains(segment),
        "the missed RPO names its reason"
    );
    assert_eq!(t["rpo"]["met"], false);
    assert_eq!(
        t["rpo"]["holes"], 0,
        "replay stopped at the gap: a consistent prefix"
    );
    assert_eq!(run.check("ledger"), "passed");
    assert_eq!(run.check("wal-continuity"), "failed");
    // Replay really stopped before the missing segment.
    let reached = t["restore"]["reached"].as_str().unwrap();
    let redo = reached
        .split("redo done at ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let lsn = |s: &str| {
        let (hi, lo) = s.split_once('/').unwrap();
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
    };
    assert!(
        lsn(redo) <= lsn(gap["lsn_from"].as_str().unwrap()),
        "redo done at {redo}, beyond the gap"
    );
    assert_report_md_agrees(&run);
    assert_no_leftovers(run.run_id());
}

#[test]
fn a_damaged_base_backup_fails_the_drill() {
    let _engine = engine();
    let run = drill(
        "scenarios/controls/pg-damaged-basebackup.toml",
        "pg-damaged-basebackup",
        &[],
    );
    assert_eq!(run.code(), Some(1), "{}", run.debug());
    assert_eq!(run.report["outcome"], "missed");
    assert_eq!(run.check("backup-integrity"), "failed");
    assert_eq!(run.check("pg-verifybackup"), "failed");
    assert_eq!(run.target()["rto"]["achieved_ms"], Value::Null);
    assert_no_leftovers(run.run_id());
}

#[test]
fn a_timestamp_restore_stops_at_that_time() {
    let _engine = engine();
    // The target time must fall inside the run: 20 s from now is after the second base backup
    // (the workload starts about 3 s in; backups every 5 s) and before the drop at 25 s.
    let target = SystemTime::now() + Duration::from_secs(20);
    let stamp = humantime::format_rfc3339_millis(target).to_string();
    let from = format!("from = \"{stamp}\"");
    let scenario = variant(
        PITR,
        "pitr-timestamp",
        &[
            ("from = \"before-fault\"", &from),
            ("every = \"10s\"", "every = \"5s\""),
            ("at = \"15s\"", "at = \"25s\""),
            (", \"backup-age\"", ""),
            // Restoring to a time well before the drop loses those seconds by design.
            ("rpo = \"5s\"", "rpo = \"30s\""),
        ],
    );
    let run = drill(&scenario, "pitr-timestamp", &[]);
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let t = run.target();
    assert!(
        t["restore"]["recovery_target"]
            .as_str()
            .unwrap()
            .starts_with("time "),
        "{}",
        t["restore"]
    );
    // The target as a run offset (the containers share the host's clock).
    let started = humantime::parse_rfc3339(run.report["started_at"].as_str().unwrap()).unwrap();
    let at_ms = target.duration_since(started).unwrap().as_secs_f64() * 1e3;
    // started_at is rounded to the millisecond: leave a margin either side of the cut.
    assert_cut_between(&run, at_ms - 2.0, at_ms + 2.0);
    assert_no_leftovers(run.run_id());
}

/// A bad UPDATE (every tenth order zeroed) undone by point-in-time recovery: no probe sees a
/// logical disaster, the recovery point before it brings every seeded order back as seeded,
/// and no workload row comes back changed.
#[test]
fn pitr_undoes_a_bad_update() {
    let _engine = engine();
    let run = drill("scenarios/pg-bad-update.toml", "pg-bad-update", &[]);
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let t = run.target();
    let updated = run.report["faults"][0]["details"]["rows_updated"]
        .as_u64()
        .unwrap();
    assert!(
        (2_000..2_400).contains(&updated),
        "one order in ten of 20000 seeded and a few thousand written: {updated}"
    );
    assert_eq!(
        t["detection"]["detected_at_ms"],
        Value::Null,
        "no probe can see a logical disaster"
    );
    assert_eq!(run.check("seed"), "passed");
    assert_eq!(run.check("ledger"), "passed");
    assert_eq!(t["rpo"]["mismatched"], 0);
    assert_no_leftovers(run.run_id());
}

/// A recovery target the archive cannot reach (an hour ahead): PostgreSQL stops the restored
/// server with its own FATAL, the restore fails naming it, and the crash of a server that never
/// served is the restore's failure, not an outage nobody injected.
#[test]
fn a_target_beyond_the_archive_fails_the_restore_and_is_no_unasked_outage() {
    let _engine = engine();
    let later = humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(3600));
    let from = format!("from = \"{later}\"");
    let scenario = variant(
        PITR,
        "pitr-beyond-the-archive",
        &[("from = \"before-fault\"", &from), (", \"backup-age\"", "")],
    );
    let run = drill(&scenario, "pitr-beyond-the-archive", &[]);
    assert_eq!(run.code(), Some(1), "{}", run.debug());
    let t = run.target();
    let error = t["restore"]["error"].as_str().unwrap();
    assert!(
        error.contains("recovery ended before configured recovery target was reached"),
        "{error}"
    );
    // The restored server's log has PostgreSQL's crash line, yet no outage is reported.
    let log = std::fs::read_to_string(
        run.dir
            .join("logs")
            .join(format!("drillrig-{}-pg-2.log", run.run_id())),
    )
    .unwrap();
    assert!(log.contains("terminating any other active server processes"));
    assert_eq!(
        t["unasked_outages"],
        Value::Null,
        "{}",
        t["unasked_outages"]
    );
    assert_no_leftovers(run.run_id());
}
