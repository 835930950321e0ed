//! RabbitMQ drills against real containers: a node crash with durable classic and quorum
//! queues, a deleted queue and a reset node restored from a definitions + messages export, and a
//! damaged export that must fail.

use crate::common::*;
use serde_json::Value;

/// Every write acknowledged before the restored backup's consistent point is back, and every
/// lost write was acknowledged after it.
fn assert_lost_only_after_the_backup(run: &Run) {
    let copied_from = run.restored_backup()["consistent_at_ms"].as_f64().unwrap();
    let rows = run.ledger_of("mq");
    assert!(
        rows.iter().any(|w| w.3 == "yes"),
        "messages confirmed after the copy are lost"
    );
    for w in &rows {
        if w.3 == "yes" {
            assert!(
                w.1 >= copied_from,
                "seq {} was confirmed at {} ms, before the copy began at {copied_from} ms",
                w.0,
                w.1
            );
        }
        if w.2 == "ok" && w.1 < copied_from {
            assert_eq!(w.3, "no", "seq {} was confirmed before the copy", w.0);
        }
    }
    assert_eq!(run.target()["rpo"]["holes"], 0);
}

#[test]
fn a_killed_node_keeps_every_confirmed_message_in_classic_and_quorum_queues() {
    let _engine = engine();
    let run = drill("scenarios/rabbitmq-kill.toml", "rabbitmq-kill", &[]);
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let t = run.target();
    // A message counts as recovered only when both queues it was routed to hold it.
    assert!(t["rpo"]["acked_writes"].as_u64().unwrap() > 1000);
    assert_eq!(t["rpo"]["lost_writes"], 0);
    assert_eq!(run.check("ledger"), "passed");
    assert_eq!(run.report["faults"][0]["kind"], "kill");
    assert!(t["rto"]["achieved_ms"].as_u64().is_some());
    assert_no_leftovers(run.run_id());
}

#[test]
fn a_reset_node_restored_from_the_export_has_the_backups_topology_and_loses_only_later_messages() {
    let _engine = engine();
    let run = drill("scenarios/rabbitmq-reset.toml", "rabbitmq-reset", &[]);
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    for check in [
        "ledger",
        "definitions",
        "row-counts",
        "checksums",
        "backup-integrity",
        "backup-age",
    ] {
        assert_eq!(run.check(check), "passed", "{check}");
    }
    assert_lost_only_after_the_backup(&run);
    let phases = &run.target()["rto"]["phases"];
    for phase in ["detect", "provision", "fetch", "restore", "verify"] {
        assert!(phases[phase].as_u64().is_some(), "{phase} in {phases}");
    }
    assert_no_leftovers(run.run_id());
}

#[test]
fn a_deleted_queue_comes_back_with_its_messages() {
    let _engine = engine();
    let run = drill(
        "scenarios/rabbitmq-queue-deleted.toml",
        "rabbitmq-queue-deleted",
        &[],
    );
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let fault = &run.report["faults"][0]["details"];
    assert_eq!(fault["queue"], "orders.quorum");
    assert!(fault["messages_deleted"].as_u64().unwrap() > 1000);
    assert_eq!(run.check("definitions"), "passed");
    assert_eq!(run.check("checksums"), "passed");
    assert_lost_only_after_the_backup(&run);
    assert_no_leftovers(run.run_id());
}

#[test]
fn a_damaged_definitions_backup_fails_the_drill() {
    let _engine = engine();
    let run = drill(
        "scenarios/controls/rabbitmq-damaged-definitions.toml",
        "rabbitmq-damaged-definitions",
        &[],
    );
    assert_eq!(run.code(), Some(1), "{}", run.debug());
    assert_eq!(run.report["outcome"], "missed");
    let error = run.target()["restore"]["error"].as_str().unwrap();
    assert!(error.contains("import the definitions"), "{error}");
    assert_eq!(run.check("definitions"), "unknown");
    assert_eq!(
        run.check_detail("definitions"),
        "not run: the restore failed"
    );
    assert_eq!(run.check("backup-integrity"), "failed");
    assert_eq!(run.target()["rto"]["achieved_ms"], Value::Null);
    assert_no_leftovers(run.run_id());
}
