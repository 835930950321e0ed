//! Replicated PostgreSQL recovered by failover: the shipped failover scenarios on real
//! containers, each held to facts the test reads itself: rows on the promoted node, its
//! timeline history file, its own `pg_stat_replication`, the old primary's state in the engine,
//! and the ledger CSV.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::*;

/// Runs `sql` with psql in container `name` of run `run_id`; its rows, unaligned.
fn psql(run_id: &str, name: &str, sql: &str) -> String {
    docker(&[
        "exec",
        &format!("drillrig-{run_id}-{name}"),
        "psql",
        "-U",
        "postgres",
        "-d",
        "drill",
        "-Atc",
        sql,
    ])
    .trim()
    .to_string()
}

/// The workload's seqs the node holds.
fn seqs_on(run_id: &str, name: &str) -> BTreeSet<u64> {
    psql(run_id, name, "SELECT seq FROM orders WHERE seq IS NOT NULL")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

/// The acknowledged writes of the ledger CSV the promoted node lacks, counted by the test.
fn lost_on(run: &Run, promoted: &str) -> (usize, usize) {
    let present = seqs_on(run.run_id(), promoted);
    let ledger = run.ledger_of("db");
    let acked: Vec<u64> = ledger.iter().filter(|w| w.2 == "ok").map(|w| w.0).collect();
    let lost = acked.iter().filter(|s| !present.contains(s)).count();
    let marked = ledger.iter().filter(|w| w.3 == "yes").count();
    assert_eq!(
        lost, marked,
        "the ledger CSV marks exactly the missing writes lost"
    );
    (lost, acked.len())
}

/// The old primary's container: stopped, with this exit code.
fn assert_fenced(run: &Run) {
    let state = docker(&[
        "inspect",
        "--format",
        "{{.State.Running}} {{.State.ExitCode}}",
        &format!("drillrig-{}-db-primary", run.run_id()),
    ]);
    assert_eq!(state.trim(), "false 137", "the killed primary stays down");
    assert_eq!(
        run.target()["restore"]["failover"]["old_primary"]["container"],
        "db-primary"
    );
}

/// The promoted node left recovery and began a new timeline: its history file is there.
fn assert_promoted(run: &Run, promoted: &str) {
    assert_eq!(run.target()["restore"]["failover"]["promoted"], promoted);
    assert_eq!(
        psql(run.run_id(), promoted, "SELECT pg_is_in_recovery()"),
        "f"
    );
    let history = docker(&[
        "exec",
        &format!("drillrig-{}-{promoted}", run.run_id()),
        "ls",
        "/var/lib/postgresql/data/pg_wal",
    ]);
    assert!(
        history.lines().any(|f| f == "00000002.history"),
        "timeline 2 began on {promoted}: {history}"
    );
    let phases = &run.target()["rto"]["phases"];
    for phase in ["detect", "promote", "reconnect", "verify"] {
        assert!(phases[phase].is_u64(), "phase {phase}: {phases}");
    }
}

/// Asynchronous streaming, the primary killed under 200 writes/s: the report's lost writes are
/// exactly the acknowledged writes the promoted standby does not hold, counted by the test from
/// the node and the ledger CSV.
#[test]
fn an_async_failover_loses_exactly_what_the_promoted_standby_lacks() {
    let _engine = engine();
    let run = drill(
        "scenarios/pg-failover-async.toml",
        "pg-failover-async",
        &[("DRILLRIG_KEEP", "always")],
    );
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let t = run.target();
    let standby = &t["replication"]["standbys"][0];
    assert_eq!(standby["node"], "standby-1");
    assert_eq!(standby["state"], "streaming");
    assert_eq!(standby["sync_state"], "async");
    assert_promoted(&run, "db-standby-1");
    assert_fenced(&run);
    let (lost, acked) = lost_on(&run, "db-standby-1");
    assert!(acked > 1000, "8 s at 200 writes/s: {acked}");
    assert_eq!(t["rpo"]["lost_writes"], lost as u64);
    assert_eq!(t["rpo"]["acked_writes"], acked as u64);
    assert_report_md_agrees(&run);
    remove_run(run.run_id());
}

/// Synchronous streaming to the first of two standbys: no acknowledged write is lost, the other
/// standby follows the new primary onto its timeline (the new primary's own
/// `pg_stat_replication` and the standby's WAL receiver say so), the old primary stays down.
#[test]
fn a_sync_failover_loses_nothing_and_the_other_standby_follows_the_new_primary() {
    let _engine = engine();
    let run = drill(
        "scenarios/pg-failover-sync.toml",
        "pg-failover-sync",
        &[("DRILLRIG_KEEP", "always")],
    );
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let t = run.target();
    let standbys = t["replication"]["standbys"].as_array().unwrap();
    assert_eq!(standbys[0]["sync_state"], "sync", "{standbys:?}");
    assert_eq!(standbys[1]["sync_state"], "potential", "{standbys:?}");
    let promoted = t["restore"]["failover"]["promoted"].as_str().unwrap();
    assert_promoted(&run, promoted);
    assert_fenced(&run);
    let (lost, _) = lost_on(&run, promoted);
    assert_eq!(
        lost, 0,
        "a synchronous standby holds every acknowledged write"
    );
    assert_eq!(t["rpo"]["lost_writes"], 0);
    let other = if promoted == "db-standby-1" {
        "db-standby-2"
    } else {
        "db-standby-1"
    };
    let slot = other.trim_start_matches("db-").replace('-', "_");
    wait_for(
        "the other standby to stream from the new primary",
        Duration::from_secs(20),
        || {
            psql(
                run.run_id(),
                promoted,
                "SELECT application_name, state FROM pg_stat_replication",
            )
            .lines()
            .any(|l| l == format!("{slot}|streaming"))
        },
    );
    assert_eq!(
        psql(
            run.run_id(),
            other,
            "SELECT received_tli FROM pg_stat_wal_receiver"
        ),
        "2"
    );
    remove_run(run.run_id());
}

/// Negative control: the synchronous standby frozen for 6 s before the primary dies. The ledger
/// shows the writes standing still while it was frozen (the outage began there), the RTO
/// objective is missed, and nothing acknowledged is lost.
#[test]
fn a_stalled_sync_standby_blocks_writes_and_misses_the_rto_losing_nothing() {
    let _engine = engine();
    let run = drill(
        "scenarios/controls/pg-failover-sync-stalled-standby.toml",
        "pg-failover-sync-stalled-standby",
        &[],
    );
    assert_eq!(run.code(), Some(1), "{}", run.debug());
    let t = run.target();
    assert_eq!(t["rto"]["met"], false);
    assert_eq!(t["rpo"]["lost_writes"], 0);
    let pause = &run.report["faults"][0];
    assert_eq!(pause["details"]["container"], "db-standby-1");
    let frozen = pause["injected_at_ms"].as_f64().unwrap();
    let thawed = pause["heal_started_ms"].as_f64().unwrap();
    // No write was acknowledged while the standby was frozen (the first half second aside:
    // commits already flushed by the standby may still return).
    let acked_while_frozen = run
        .ledger_of("db")
        .iter()
        .filter(|w| w.2 == "ok" && w.1 > frozen + 500.0 && w.1 < thawed)
        .count();
    assert_eq!(
        acked_while_frozen, 0,
        "writes block on a frozen sync standby"
    );
    // The RTO counts from the pause: at least the 6 s it lasted.
    assert_eq!(t["rto"]["fault_at_ms"], pause["started_ms"]);
    assert!(t["rto"]["achieved_ms"].as_u64().unwrap() >= 6000);
    assert_no_leftovers(run.run_id());
}

/// `redis-cli` with the target's password in container `name` of a kept run; its output.
fn redis_cli(run: &Run, name: &str, args: &[&str]) -> String {
    let connections: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.dir.join("connections.json")).unwrap()).unwrap();
    let password = connections["targets"]["cache"]["password"]
        .as_str()
        .unwrap();
    let container = format!("drillrig-{}-{name}", run.run_id());
    let mut all = vec![
        "exec",
        container.as_str(),
        "redis-cli",
        "--no-auth-warning",
        "-a",
        password,
    ];
    all.extend_from_slice(args);
    docker(&all).trim().to_string()
}

/// A container's address on the run's network, as the engine reports it.
fn address_of(run: &Run, name: &str) -> String {
    docker(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &format!("drillrig-{}-{name}", run.run_id()),
    ])
    .trim()
    .to_string()
}

/// Redis with two replicas and three Sentinels, the primary killed: Sentinel itself names the
/// replica drillrig reports promoted, that node says it is a master, the other replica follows
/// it, and the lost writes are exactly the acknowledged writes whose keys the new primary lacks.
#[test]
fn sentinel_elects_a_replica_and_the_loss_is_what_it_lacked() {
    let _engine = engine();
    let run = drill(
        "scenarios/redis-sentinel-failover.toml",
        "redis-sentinel-failover",
        &[("DRILLRIG_KEEP", "always")],
    );
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let t = run.target();
    assert_eq!(t["replication"]["replicas"].as_array().unwrap().len(), 2);
    let promoted = t["restore"]["failover"]["promoted"].as_str().unwrap();
    let promoted = promoted.trim_start_matches("cache-").to_string();
    assert!(promoted.starts_with("replica-"), "{promoted}");
    for phase in ["detect", "elect", "reconnect", "verify"] {
        assert!(
            t["rto"]["phases"][phase].is_u64(),
            "{phase}: {}",
            t["rto"]["phases"]
        );
    }
    // Sentinel's own answer, asked by the test.
    let sentinel = docker(&[
        "exec",
        &format!("drillrig-{}-cache-sentinel-1", run.run_id()),
        "redis-cli",
        "-p",
        "26379",
        "SENTINEL",
        "get-master-addr-by-name",
        "drill",
    ]);
    let new_ip = address_of(&run, &format!("cache-{promoted}"));
    assert_eq!(sentinel.lines().next(), Some(new_ip.as_str()), "{sentinel}");
    let info = redis_cli(&run, &format!("cache-{promoted}"), &["INFO", "replication"]);
    assert!(info.contains("role:master"), "{info}");
    let other = if promoted == "replica-1" {
        "replica-2"
    } else {
        "replica-1"
    };
    wait_for(
        "the other replica to follow the new primary",
        Duration::from_secs(20),
        || {
            let info = redis_cli(&run, &format!("cache-{other}"), &["INFO", "replication"]);
            info.contains(&format!("master_host:{new_ip}"))
                && info.contains("master_link_status:up")
        },
    );
    assert_eq!(
        docker(&[
            "inspect",
            "--format",
            "{{.State.Running}} {{.State.ExitCode}}",
            &format!("drillrig-{}-cache-primary", run.run_id()),
        ])
        .trim(),
        "false 137"
    );
    // The keys on the new primary against the ledger CSV.
    let keys = redis_cli(
        &run,
        &format!("cache-{promoted}"),
        &["--scan", "--pattern", "seq:*"],
    );
    let present: BTreeSet<u64> = keys
        .lines()
        .map(|k| k.trim_start_matches("seq:").parse().unwrap())
        .collect();
    let ledger = run.ledger_of("cache");
    let lost = ledger
        .iter()
        .filter(|w| w.2 == "ok" && !present.contains(&w.0))
        .count();
    assert_eq!(t["rpo"]["lost_writes"], lost as u64);
    assert_eq!(lost, ledger.iter().filter(|w| w.3 == "yes").count());
    assert_report_md_agrees(&run);
    remove_run(run.run_id());
}

/// Split brain: the Redis primary cut off from its replicas and Sentinels only (its clients
/// still reach it) keeps acknowledging writes alone; Sentinel elects a replica, and once the
/// partition heals turns the old primary into its replica, discarding what it took. The test
/// reads the old primary's own account (a replica of the new one now), re-counts the lost
/// writes on the new primary, and finds each acknowledged after the primary was cut off.
#[test]
fn a_split_brain_loses_what_the_deposed_primary_acknowledged_alone() {
    let _engine = engine();
    let run = drill(
        "scenarios/redis-split-brain.toml",
        "redis-split-brain",
        &[("DRILLRIG_KEEP", "always")],
    );
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let t = run.target();
    let partition = &run.report["faults"][0];
    assert_eq!(partition["details"]["isolate"], "peers");
    assert_eq!(
        partition["details"]["cut_from"].as_array().unwrap().len(),
        5
    );
    let cut_at = partition["injected_at_ms"].as_f64().unwrap();
    let healed = partition["heal_started_ms"].as_f64().unwrap();
    let promoted = t["restore"]["failover"]["promoted"].as_str().unwrap();
    assert!(
        t["restore"]["failover"]["old_primary"]["rejoined"].is_string(),
        "{}",
        t["restore"]["failover"]
    );
    // The old primary is a replica of the new one now, by its own account.
    let old = redis_cli(&run, "cache-primary", &["INFO", "replication"]);
    assert!(old.contains("role:slave"), "{old}");
    assert!(
        old.contains(&format!("master_host:{}", address_of(&run, promoted))),
        "{old}"
    );
    // The lost writes, re-counted on the new primary.
    let keys = redis_cli(&run, promoted, &["--scan", "--pattern", "seq:*"]);
    let present: BTreeSet<u64> = keys
        .lines()
        .map(|k| k.trim_start_matches("seq:").parse().unwrap())
        .collect();
    let ledger = run.ledger_of("cache");
    let lost: Vec<_> = ledger
        .iter()
        .filter(|w| w.2 == "ok" && !present.contains(&w.0))
        .collect();
    assert_eq!(t["rpo"]["lost_writes"], lost.len() as u64);
    let after_cut = lost.iter().filter(|w| w.1 >= cut_at).count() as i64;
    let reported = t["rpo"]["lost_after_fault"].as_i64().unwrap();
    assert!(
        (after_cut - reported).abs() <= 1,
        "{after_cut} vs {reported}"
    );
    // The deposed primary acknowledged them alone: from the cut (less what its replicas had
    // not acknowledged yet: each acknowledges once a second, and `INFO replication` at the fault
    // says how long before it last did) until the clients moved to the new primary, which is
    // after the heal; hundreds at 200 writes/s.
    assert!(lost.len() > 500, "{} lost: {}", lost.len(), run.debug());
    let restore_began = t["rto"]["restore_started_at_ms"].as_f64().unwrap();
    let recovered = t["rto"]["recovered_at_ms"].as_f64().unwrap();
    assert!(healed < restore_began);
    let unacked_s = t["replication"]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["lag_s"]["since_ack"].as_f64())
        .fold(0.0f64, f64::max);
    let from = cut_at - 1000.0 * (unacked_s + 1.0);
    assert!(
        lost.iter().all(|w| w.1 > from && w.1 < recovered),
        "every lost write was acknowledged from {from} ms to {recovered} ms: {:?}",
        lost.iter()
            .map(|w| w.1)
            .fold((f64::MAX, 0.0f64), |(lo, hi), t| (lo.min(t), hi.max(t)))
    );
    remove_run(run.run_id());
}

/// The same split brain held to no lost write misses, naming the loss.
#[test]
fn a_split_brain_held_to_no_loss_misses() {
    let _engine = engine();
    let control = drill(
        "scenarios/controls/redis-split-brain-no-loss.toml",
        "redis-split-brain-no-loss",
        &[],
    );
    assert_eq!(control.code(), Some(1), "{}", control.debug());
    assert_eq!(control.target()["rpo"]["met"], false);
    assert!(control.target()["rpo"]["lost_writes"].as_u64().unwrap() > 0);
    assert_no_leftovers(control.run_id());
}

/// Without Sentinels the runbook promotes: the replica whose own replication offset was the
/// largest (as the report lists them) gets `REPLICAOF NO ONE`, and the other follows it.
#[test]
fn without_sentinels_the_runbook_promotes_the_replica_with_the_largest_offset() {
    let _engine = engine();
    let scenario = variant(
        "scenarios/redis-sentinel-failover.toml",
        "redis-runbook-failover",
        &[
            (
                "name = \"redis-sentinel-failover\"",
                "name = \"redis-runbook-failover\"",
            ),
            ("sentinels = 3", "sentinels = 0"),
        ],
    );
    let run = drill(
        &scenario,
        "redis-runbook-failover",
        &[("DRILLRIG_KEEP", "always")],
    );
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let t = run.target();
    let f = &t["restore"]["failover"];
    let promoted = f["promoted"].as_str().unwrap();
    let offsets = f["how"]["replicas"].as_array().unwrap();
    let largest = offsets.iter().map(|r| r["offset"].as_i64().unwrap()).max();
    let chosen = offsets.iter().find(|r| r["container"] == promoted).unwrap();
    assert_eq!(chosen["offset"].as_i64(), largest, "{offsets:?}");
    assert!(t["rto"]["phases"]["promote"].is_u64());
    assert!(t["rto"]["phases"]["elect"].is_null());
    assert!(redis_cli(&run, promoted, &["INFO", "replication"]).contains("role:master"));
    let other = if promoted == "cache-replica-1" {
        "cache-replica-2"
    } else {
        "cache-replica-1"
    };
    let new_ip = address_of(&run, promoted);
    wait_for(
        "the other replica to follow",
        Duration::from_secs(20),
        || {
            redis_cli(&run, other, &["INFO", "replication"])
                .contains(&format!("master_host:{new_ip}"))
        },
    );
    remove_run(run.run_id());
}

/// `rabbitmqctl` or `rabbitmq-queues` in container `name` of a kept run, JSON out.
fn mq_json(run: &Run, name: &str, tool: &str, args: &[&str]) -> serde_json::Value {
    let container = format!("drillrig-{}-{name}", run.run_id());
    let mut all = vec!["exec", "-u", "rabbitmq", container.as_str(), tool];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--formatter", "json"]);
    serde_json::from_str(&docker(&all)).unwrap()
}

/// A three-node RabbitMQ cluster loses node-2 under publish load: the quorum queue keeps every
/// confirmed message (its depth, read by the test, holds the seed and every confirmed write),
/// it has a leader again, and node-2, started again afterwards, is back in the cluster by
/// `rabbitmqctl cluster_status`.
#[test]
fn a_quorum_queue_keeps_every_confirmed_message_when_one_of_three_nodes_dies() {
    let _engine = engine();
    let run = drill(
        "scenarios/rabbitmq-quorum-node-loss.toml",
        "rabbitmq-quorum-node-loss",
        &[("DRILLRIG_KEEP", "always")],
    );
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let t = run.target();
    let kill = &run.report["faults"][0];
    assert_eq!(kill["details"]["container"], "mq-node-2");
    assert_eq!(kill["details"]["exit_code"], 137);
    let at_fault = &t["replication"]["quorum_queues"][0];
    assert_eq!(at_fault["queue"], "orders.quorum");
    assert_eq!(
        at_fault["members"].as_array().unwrap().len(),
        3,
        "{at_fault}"
    );
    assert_eq!(t["rpo"]["lost_writes"], 0);
    for phase in ["detect", "elect", "reconnect", "verify"] {
        assert!(
            t["rto"]["phases"][phase].is_u64(),
            "{phase}: {}",
            t["rto"]["phases"]
        );
    }
    // The cluster's own account, after drillrig started node-2 again.
    let status = mq_json(&run, "mq-node-1", "rabbitmqctl", &["cluster_status"]);
    assert_eq!(
        status["running_nodes"].as_array().unwrap().len(),
        3,
        "{status}"
    );
    assert!(t["restore"]["failover"]["old_primary"]["rejoined"].is_string());
    let members = mq_json(
        &run,
        "mq-node-1",
        "rabbitmq-queues",
        &["quorum_status", "orders.quorum", "--vhost", "drill"],
    );
    let members = members.as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert_eq!(
        members
            .iter()
            .filter(|m| m["Raft State"] == "leader")
            .count(),
        1,
        "{members:?}"
    );
    // Every confirmed write is in the quorum queue, beside the seed and what landed unconfirmed.
    let queues = mq_json(
        &run,
        "mq-node-1",
        "rabbitmqctl",
        &["list_queues", "-p", "drill", "name", "messages"],
    );
    let depth = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "orders.quorum")
        .unwrap()["messages"]
        .as_u64()
        .unwrap();
    let confirmed = run.ledger_of("mq").iter().filter(|w| w.2 == "ok").count() as u64;
    let landed_unconfirmed = t["rpo"]["unacked_present"].as_u64().unwrap()
        + t["rpo"]["failed_present"].as_u64().unwrap();
    assert_eq!(depth, 500 + confirmed + landed_unconfirmed);
    remove_run(run.run_id());
}

/// Negative control: two of three nodes lost. The quorum queue stops confirming (no write is
/// confirmed from a second after the second kill), no leader is elected in time, the drill
/// misses; once both nodes are back the queue holds at least the seed and every confirmed write.
#[test]
fn a_quorum_queue_without_a_majority_stops_confirming_and_loses_nothing_confirmed() {
    let _engine = engine();
    let run = drill(
        "scenarios/controls/rabbitmq-quorum-majority-lost.toml",
        "rabbitmq-quorum-majority-lost",
        &[("DRILLRIG_KEEP", "always")],
    );
    assert_eq!(run.code(), Some(1), "{}", run.debug());
    let t = run.target();
    let error = t["restore"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("leader for every quorum queue"), "{error}");
    assert_eq!(t["rto"]["met"], false);
    let second = run.report["faults"][1]["injected_at_ms"].as_f64().unwrap();
    let ledger = run.ledger_of("mq");
    let confirmed_after = ledger
        .iter()
        .filter(|w| w.2 == "ok" && w.1 > second + 1000.0)
        .count();
    assert_eq!(
        confirmed_after, 0,
        "a queue without a majority confirms nothing"
    );
    // drillrig started both nodes again: the cluster runs, and nothing confirmed is gone.
    let status = mq_json(&run, "mq-node-1", "rabbitmqctl", &["cluster_status"]);
    assert_eq!(
        status["running_nodes"].as_array().unwrap().len(),
        3,
        "{status}"
    );
    let confirmed = ledger.iter().filter(|w| w.2 == "ok").count() as u64;
    let depth = |queue: &str| {
        let queues = mq_json(
            &run,
            "mq-node-1",
            "rabbitmqctl",
            &["list_queues", "-p", "drill", "name", "messages"],
        );
        queues
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == queue)
            .unwrap()["messages"]
            .as_u64()
            .unwrap()
    };
    wait_for(
        "the quorum queue to answer again",
        Duration::from_secs(30),
        || depth("orders.quorum") >= 500 + confirmed,
    );
    remove_run(run.run_id());
}
