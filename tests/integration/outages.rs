//! Outage faults that take a service down without damaging it: each must really happen to the
//! container, as the engine and the service's own log tell it, and cost what the report says.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::engine_clock::{EngineEvents, assert_on_the_engine_clock};

/// `stop` on one target of each kind: the engine stops each container gracefully, each service
/// shuts down by itself (exit code 0, its own shutdown lines in its log), and the restart on the
/// same data loses no acknowledged write.
#[test]
fn a_graceful_stop_shuts_each_service_down_cleanly_and_loses_nothing() {
    let _engine = engine();
    let engine_events = EngineEvents::follow();
    // PostgreSQL's and Redis's targets are the shipped stop scenarios', shortened.
    let scenario = with_targets_of(
        "tests/scenarios/stop-every-kind.toml",
        "stop-every-kind",
        &[
            ("scenarios/pg-stop.toml", &SHORTER),
            (
                "scenarios/redis-stop-everysec.toml",
                &[
                    ("rows = 20000", "rows = 2000"),
                    ("rate = 500", "rate = 100"),
                    ("at = \"8s\"", "at = \"3s\""),
                ],
            ),
        ],
    );
    let run = drill(&scenario, "stop-every-kind", &[]);
    let engine_events = engine_events.stop();
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    assert_on_the_engine_clock(&run, &engine_events);
    let shutdown_line = [
        ("pg", "database system is shut down"),
        ("cache", "ready to exit"),
        ("mq", "SIGTERM received - shutting down"),
    ];
    for (target, line) in shutdown_line {
        let fault = run.report["faults"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["target"] == target)
            .unwrap_or_else(|| panic!("no fault on {target}"));
        assert_eq!(fault["kind"], "stop");
        assert_eq!(
            fault["details"]["exit_code"], 0,
            "{target} did not shut down by itself: {fault:#}"
        );
        let t = run.report["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == target)
            .unwrap();
        assert_eq!(t["rpo"]["lost_writes"], 0, "{target}");
        assert!(t["rpo"]["acked_writes"].as_u64().unwrap() > 50, "{target}");
        // The probes saw the outage: the stop took the service down.
        assert!(t["detection"]["detected_at_ms"].is_u64(), "{target}: {t:#}");
        // The service's own log shows its shutdown, then its start on the same container.
        let log = std::fs::read_to_string(
            run.dir
                .join("logs")
                .join(format!("drillrig-{}-{target}-1.log", run.run_id())),
        )
        .unwrap_or_else(|e| panic!("{target}: no log: {e}"));
        assert!(log.contains(line), "{target}: no {line:?} in its log");
    }
    assert_report_md_agrees(&run);
    assert_no_leftovers(run.run_id());
}

/// A shipped single-target PostgreSQL scenario (`pg-stop`) made as short as the every-kind
/// drill it joins.
const SHORTER: [(&str, &str); 3] = [
    ("rows = 20000", "rows = 2000"),
    ("rate = 200", "rate = 100"),
    ("at = \"8s\"", "at = \"3s\""),
];

/// [`SHORTER`] for a temporary fault (`pg-pause`, `pg-network-partition`): held 3 s.
const SHORTER_HELD: [(&str, &str); 4] = [
    SHORTER[0],
    SHORTER[1],
    SHORTER[2],
    ("for = \"5s\"", "for = \"3s\""),
];

/// A temporary fault (`pause`, `network-partition`) of 3 s on one target of each kind, healed
/// in place: the engine's own events show it applied and healed when the report says; the
/// probes failed inside it; no write was acknowledged while it lasted (a reply already on its
/// way may land within a few ms of its start); nothing restarted, nothing was restored, nothing
/// acknowledged was lost; and the RTO covers it. Returns the run for the fault's own checks.
fn a_temporary_fault_on_every_kind(kind: &str, scenario: &str, test: &str) -> Run {
    let engine_events = EngineEvents::follow();
    let run = drill(scenario, test, &[]);
    assert_report_md_agrees(&run);
    let engine_events = engine_events.stop();
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    assert_on_the_engine_clock(&run, &engine_events);
    for target in ["pg", "cache", "mq"] {
        let fault = run.report["faults"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["target"] == target)
            .unwrap_or_else(|| panic!("no fault on {target}"));
        assert_eq!(fault["kind"], kind);
        let began = fault["injected_at_ms"].as_f64().unwrap();
        let ended = fault["heal_started_ms"].as_f64().unwrap();
        assert!(
            ended - began >= 3000.0,
            "{target}: {kind} for {} ms",
            ended - began
        );
        let t = run.report["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == target)
            .unwrap();
        let detected = t["detection"]["detected_at_ms"].as_f64().unwrap();
        assert!(
            detected >= began && detected < ended,
            "{target}: detected at {detected} ms, outside the {kind} {began}..{ended}"
        );
        let ledger = run.ledger_of(target);
        let acked_inside: Vec<_> = ledger
            .iter()
            .filter(|w| w.2 == "ok" && w.1 > began + 50.0 && w.1 < ended)
            .collect();
        assert!(
            acked_inside.is_empty(),
            "{target}: writes acknowledged during the {kind}: {acked_inside:?}"
        );
        assert!(
            ledger.iter().any(|w| w.2 != "ok"),
            "{target}: no write failed during the {kind}"
        );
        assert_eq!(t["rpo"]["lost_writes"], 0, "{target}");
        assert!(t["rto"]["achieved_ms"].as_f64().unwrap() >= ended - began);
        let seed = t["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "seed")
            .unwrap_or_else(|| panic!("{target}: no seed check"));
        assert_eq!(seed["status"], "passed", "{target}: {seed}");
    }
    assert_no_leftovers(run.run_id());
    run
}

/// `pause`: the engine freezes each container for 3 s, then thaws it.
#[test]
fn a_pause_freezes_each_service_until_it_thaws_and_loses_nothing() {
    let _engine = engine();
    // PostgreSQL's target is the shipped pg-pause's, shortened.
    let scenario = with_targets_of(
        "tests/scenarios/pause-every-kind.toml",
        "pause-every-kind",
        &[("scenarios/pg-pause.toml", &SHORTER_HELD)],
    );
    let run = a_temporary_fault_on_every_kind("pause", &scenario, "pause-every-kind");
    for fault in run.report["faults"].as_array().unwrap() {
        assert_eq!(fault["details"]["paused"], true);
        assert_eq!(fault["details"]["heal"]["paused"], false);
    }
}

/// `network-partition`: each container leaves the run's network for 3 s, its published port
/// withdrawn, then rejoins on a new host port, which the clients follow.
#[test]
fn a_partition_cuts_each_service_off_until_it_rejoins_and_loses_nothing() {
    let _engine = engine();
    // PostgreSQL's target is the shipped pg-network-partition's, shortened.
    let scenario = with_targets_of(
        "tests/scenarios/partition-every-kind.toml",
        "partition-every-kind",
        &[("scenarios/pg-network-partition.toml", &SHORTER_HELD)],
    );
    let run =
        a_temporary_fault_on_every_kind("network-partition", &scenario, "partition-every-kind");
    for fault in run.report["faults"].as_array().unwrap() {
        let cut = fault["details"]["cut_from"].to_string();
        let before: u64 = cut
            .split("host port ")
            .nth(1)
            .and_then(|p| {
                p.trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{cut}"));
        let after = fault["details"]["heal"]["host_port"].as_u64().unwrap();
        assert_ne!(before, after, "the port was withdrawn and published anew");
    }
}

/// `(invoked, took)` in milliseconds of every write `target`'s ledger CSV says was acknowledged.
fn acknowledged_writes(run: &Run, target: &str) -> Vec<(f64, f64)> {
    std::fs::read_to_string(run.dir.join(format!("ledger-{target}.csv")))
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let (invoked, completed): (f64, f64) = (f[1].parse().ok()?, f[2].parse().ok()?);
            (f[3] == "ok").then_some((invoked, completed - invoked))
        })
        .collect()
}

/// How long each of `writes` took that began after the fault slowed the link (5 ms of slack)
/// and was acknowledged before its heal began.
fn took_inside(writes: &[(f64, f64)], slowed: f64, healed: f64) -> Vec<f64> {
    writes
        .iter()
        .filter(|w| w.0 > slowed + 5.0 && w.0 + w.1 < healed)
        .map(|w| w.1)
        .collect()
}

/// `latency`: 100 ms ± 20 ms each way through drillrig's proxy for 4 s. The ledger's own invoke
/// and acknowledgement times show it: every write acknowledged inside the fault took at least
/// two delayed chunks (160 ms), the writes before and after it far less; the report's
/// percentiles agree with the ledger; nothing was lost, and nothing was taken down.
#[test]
fn latency_slows_every_write_through_the_proxy_and_only_while_it_lasts() {
    let _engine = engine();
    let run = drill("scenarios/pg-latency.toml", "pg-latency", &[]);
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    let fault = &run.report["faults"][0];
    assert_eq!(fault["details"]["delay_ms"], 100);
    let (slowed, healed) = (
        fault["injected_at_ms"].as_f64().unwrap(),
        fault["heal_started_ms"].as_f64().unwrap(),
    );
    let writes = acknowledged_writes(&run, "pg");
    let inside = took_inside(&writes, slowed, healed);
    assert!(inside.len() > 5, "{} writes inside the fault", inside.len());
    assert!(
        inside.iter().all(|&ms| ms >= 160.0),
        "a write inside the fault took less than two delayed chunks: {inside:?}"
    );
    let outside: Vec<f64> = writes
        .iter()
        .filter(|w| w.0 + w.1 < slowed - 5.0 || w.0 > healed + 500.0)
        .map(|w| w.1)
        .collect();
    assert!(outside.len() > 100);
    let slow_outside = outside.iter().filter(|&&ms| ms >= 160.0).count();
    assert!(
        slow_outside * 100 <= outside.len(),
        "{slow_outside} slow writes outside the fault"
    );
    let latency = &run.target()["write_latency"];
    assert!(
        latency["during"]["p50_ms"].as_f64().unwrap() >= 160.0,
        "{latency}"
    );
    assert!(
        latency["before"]["p50_ms"].as_f64().unwrap() < 80.0,
        "{latency}"
    );
    assert!(
        latency["after"]["p50_ms"].as_f64().unwrap() < 80.0,
        "{latency}"
    );
    assert!(
        latency["after"]["writes"].as_u64().unwrap() > 50,
        "{latency}"
    );
    // The objective, recomputed from the ledger: every write invoked during the fault, those
    // never acknowledged counted as the slowest.
    let objective = &latency["objective"];
    let recomputed = p99_counting_unacknowledged(&run.dir.join("ledger-pg.csv"), slowed, healed)
        .expect("every write during the fault was acknowledged");
    let achieved = objective["achieved_ms"].as_f64().unwrap();
    assert!(
        (achieved - recomputed).abs() < 0.01,
        "{recomputed} {latency}"
    );
    assert!(achieved >= 160.0, "{latency}");
    assert_eq!(objective["met"], true, "{latency}");
    let t = run.target();
    assert_eq!(t["rpo"]["lost_writes"], 0);
    // The service was slowed, never down: no fault started the RTO clock.
    assert_eq!(t["detection"]["detected_at_ms"], serde_json::Value::Null);
    assert_report_md_agrees(&run);
    assert_no_leftovers(run.run_id());
}

/// The p99 of the writes in `ledger` (a ledger CSV) invoked in `[from, to)` ms, a write never
/// acknowledged counted as slower than every other; `None` when the percentile is one of them.
fn p99_counting_unacknowledged(ledger: &std::path::Path, from: f64, to: f64) -> Option<f64> {
    let mut acked = Vec::new();
    let mut all = 0usize;
    for line in std::fs::read_to_string(ledger).unwrap().lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let invoked: f64 = f[1].parse().unwrap();
        if invoked < from || invoked >= to {
            continue;
        }
        all += 1;
        if f[3] == "ok" {
            acked.push(f[2].parse::<f64>().unwrap() - invoked);
        }
    }
    acked.sort_by(f64::total_cmp);
    let k = (0.99 * all as f64).ceil() as usize;
    (1..=acked.len()).contains(&k).then(|| acked[k - 1])
}

/// `latency` with bandwidth and reset toxics: 4 KiB/s each way and a reset of every connection
/// open 1 s, for 4 s. The proxy reset connections and the writes in flight on them went
/// unanswered (the ledger); a write p99 of 20 ms was missed, so the drill misses; and nothing
/// acknowledged was lost.
#[test]
fn bandwidth_and_resets_choke_and_cut_every_connection_and_miss_a_tight_write_p99() {
    let _engine = engine();
    let run = drill("tests/scenarios/latency-resets.toml", "latency-resets", &[]);
    assert_eq!(run.code(), Some(1), "{}", run.debug());
    let fault = &run.report["faults"][0];
    assert_eq!(fault["details"]["bandwidth_bytes_per_s"], 4096);
    let resets = fault["details"]["heal"]["resets_so_far"].as_u64().unwrap();
    assert!(resets >= 2, "{fault}");
    let (slowed, healed) = (
        fault["injected_at_ms"].as_f64().unwrap(),
        fault["heal_started_ms"].as_f64().unwrap(),
    );
    // The client's side of each reset, from the ledger: a write in flight on a reset connection
    // ends without an answer. (PostgreSQL itself meets the engine's port proxy, not the RST.)
    let cut = std::fs::read_to_string(run.dir.join("ledger-pg.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let invoked: f64 = f[1].parse().unwrap();
            (slowed..healed).contains(&invoked) && f[3] != "ok"
        })
        .count() as u64;
    assert!(
        (1..=resets).contains(&cut),
        "the proxy reset {resets} connection(s); {cut} write(s) went unanswered"
    );
    let latency = &run.target()["write_latency"];
    let objective = &latency["objective"];
    assert_eq!(objective["met"], false, "{latency}");
    // Unanswered writes are the slowest: with more than 1 % of them, no p99 holds.
    assert_eq!(
        objective["achieved_ms"].as_f64(),
        p99_counting_unacknowledged(&run.dir.join("ledger-pg.csv"), slowed, healed),
        "{latency}"
    );
    assert_eq!(run.report["outcome"], "missed");
    assert_eq!(run.target()["rpo"]["lost_writes"], 0);
    assert_report_md_agrees(&run);
    assert_no_leftovers(run.run_id());
}

/// `latency` on Redis and RabbitMQ: 100 ms ± 20 ms each way for 4 s. The test times its own
/// round trips through each target's proxy from the host, before, during and after the fault
/// (the drill's log says when each began and was healed): during it a round trip takes at least
/// two delayed chunks (160 ms), before and after it less. The report agrees: the proxy it names is
/// the one the test timed, every write the ledger shows acknowledged inside the fault took at
/// least 160 ms and the report's percentiles say so; nothing was lost or taken down.
#[test]
fn latency_slows_redis_and_rabbitmq_as_a_round_trip_from_the_host_measures() {
    let _engine = engine();
    let dir = out_dir("latency-redis-rabbitmq");
    let mut child = spawn_drill("tests/scenarios/latency-redis-rabbitmq.toml", &dir);
    let stderr = Stderr::follow(&mut child);
    let pid = child.id();
    // Both proxies listen once their targets' first containers started, before the fault.
    wait_until(
        &mut child,
        Duration::from_secs(120),
        "both latency proxies",
        || listening_ports(pid).len() == 2,
    );
    let ports = listening_ports(pid);
    assert_eq!(ports.len(), 2, "{ports:?}");
    // Which proxy is whose, from what answers through it (Redis answers a PING, RabbitMQ meets a
    // header that is not AMQP's with its own).
    // A proxy closes what it cannot forward yet (its service's port not yet published).
    let mut by_target = BTreeMap::new();
    for port in ports {
        let deadline = Instant::now() + Duration::from_secs(120);
        let reply = loop {
            if let Ok((_, reply)) = try_round_trip(port, b"PING\r\n\r\n") {
                break reply;
            }
            assert!(Instant::now() < deadline, "no answer through port {port}");
            assert!(child.try_wait().unwrap().is_none(), "the drill ended first");
            std::thread::sleep(Duration::from_millis(100));
        };
        let target = if reply.starts_with(b"AMQP") {
            "mq"
        } else {
            "cache"
        };
        assert!(by_target.insert(target, port).is_none(), "{reply:?}");
    }
    let timed = |target: &str| {
        let hello: &[u8] = if target == "mq" {
            b"AMQP\x00\x00\x09\x01"
        } else {
            b"PING\r\n"
        };
        round_trip(by_target[target], hello).0
    };
    let before: Vec<f64> = ["cache", "mq"].iter().map(|t| timed(t)).collect();
    stderr
        .on_each(
            &["cache: injected latency", "mq: injected latency"],
            Duration::from_secs(120),
            |_| {},
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let during: Vec<f64> = ["cache", "mq"].iter().map(|t| timed(t)).collect();
    stderr
        .on_each(
            &["cache: healed latency", "mq: healed latency"],
            Duration::from_secs(30),
            |_| {},
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let after: Vec<f64> = ["cache", "mq"].iter().map(|t| timed(t)).collect();
    let status = child.wait().unwrap();
    let log = stderr.all();
    let run = Run {
        report: read_report(&dir),
        output: std::process::Output {
            status,
            stdout: Vec::new(),
            stderr: log.into_bytes(),
        },
        dir,
    };
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    for (i, target) in ["cache", "mq"].into_iter().enumerate() {
        eprintln!(
            "{target}: a round trip through the proxy took {:.1} ms before the fault, {:.1} ms during it, {:.1} ms after it",
            before[i], during[i], after[i]
        );
        assert!(
            during[i] >= 160.0,
            "{target}: a round trip through the proxy took {:.1} ms during the fault",
            during[i]
        );
        for (when, ms) in [("before", before[i]), ("after", after[i])] {
            assert!(
                ms < 160.0,
                "{target}: a round trip took {ms:.1} ms {when} the fault"
            );
        }
        let fault = run.report["faults"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["target"] == target)
            .unwrap_or_else(|| panic!("no fault on {target}"));
        assert_eq!(fault["kind"], "latency");
        assert_eq!(fault["details"]["delay_ms"], 100);
        assert_eq!(
            fault["details"]["proxy_port"].as_u64(),
            Some(u64::from(by_target[target])),
            "{target}: the report names the proxy the test timed"
        );
        let (slowed, healed) = (
            fault["injected_at_ms"].as_f64().unwrap(),
            fault["heal_started_ms"].as_f64().unwrap(),
        );
        let t = run.report["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == target)
            .unwrap();
        let inside = took_inside(&acknowledged_writes(&run, target), slowed, healed);
        assert!(
            inside.len() > 5,
            "{target}: {} writes inside the fault",
            inside.len()
        );
        assert!(
            inside.iter().all(|&ms| ms >= 160.0),
            "{target}: a write inside the fault took less than two delayed chunks: {inside:?}"
        );
        let latency = &t["write_latency"];
        assert!(
            latency["during"]["p50_ms"].as_f64().unwrap() >= 160.0,
            "{target}: {latency}"
        );
        assert!(
            latency["before"]["p50_ms"].as_f64().unwrap() < 160.0,
            "{target}: {latency}"
        );
        assert!(
            latency["after"]["p50_ms"].as_f64().unwrap() < 160.0,
            "{target}: {latency}"
        );
        let objective = &latency["objective"];
        let recomputed = p99_counting_unacknowledged(
            &run.dir.join(format!("ledger-{target}.csv")),
            slowed,
            healed,
        )
        .expect("every write during the fault was acknowledged");
        let achieved = objective["achieved_ms"].as_f64().unwrap();
        assert!(
            (achieved - recomputed).abs() < 0.01,
            "{target}: {recomputed} {latency}"
        );
        assert_eq!(objective["met"], true, "{target}: {latency}");
        assert_eq!(t["rpo"]["lost_writes"], 0, "{target}");
        assert_eq!(
            t["detection"]["detected_at_ms"],
            serde_json::Value::Null,
            "{target}"
        );
    }
    assert_report_md_agrees(&run);
    assert_no_leftovers(run.run_id());
}

/// The TCP ports process `pid` listens on (drillrig's latency proxies, on 127.0.0.1).
fn listening_ports(pid: u32) -> Vec<u16> {
    let out = std::process::Command::new("ss")
        .args(["-Hltnp"])
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("127.0.0.1:"))
                .and_then(|p| p.parse().ok())
        })
        .collect()
}

/// Sends `hello` through a new connection to `port` on 127.0.0.1 and waits for the first bytes
/// of the answer: `(ms from the send to them, them)`.
fn round_trip(port: u16, hello: &[u8]) -> (f64, Vec<u8>) {
    try_round_trip(port, hello).unwrap_or_else(|e| panic!("port {port}: {e}"))
}

fn try_round_trip(port: u16, hello: &[u8]) -> std::io::Result<(f64, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_nodelay(true)?;
    let sent = Instant::now();
    s.write_all(hello)?;
    let mut reply = [0u8; 64];
    let n = s.read(&mut reply)?;
    if n == 0 {
        return Err(std::io::Error::other("closed without an answer"));
    }
    Ok((sent.elapsed().as_secs_f64() * 1e3, reply[..n].to_vec()))
}
