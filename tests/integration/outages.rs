//! Outage faults that take a service down without damaging it: each must really happen to the
//! container, as the engine and the service's own log tell it, and cost what the report says.

use crate::common::*;
use crate::engine_clock::{EngineEvents, assert_on_the_engine_clock};

/// `stop` on one target of each kind: the engine stops each container gracefully, each service
/// shuts down by itself (exit code 0, its own shutdown lines in its log), and the restart on the
/// same data loses no acknowledged write.
#[test]
fn a_graceful_stop_shuts_each_service_down_cleanly_and_loses_nothing() {
    let _engine = engine();
    let engine_events = EngineEvents::follow();
    let run = drill(
        "tests/scenarios/stop-every-kind.toml",
        "stop-every-kind",
        &[],
    );
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
    assert_no_leftovers(run.run_id());
}

/// `pause` on one target of each kind: the engine freezes each container for 3 s (its own
/// `pause` and `unpause` events, when the report says), nothing acknowledges a write while it is
/// frozen, the probes see it, and each service serves again by itself: nothing restarted, nothing
/// restored, nothing lost.
#[test]
fn a_pause_freezes_each_service_until_it_thaws_and_loses_nothing() {
    let _engine = engine();
    let engine_events = EngineEvents::follow();
    let run = drill(
        "tests/scenarios/pause-every-kind.toml",
        "pause-every-kind",
        &[],
    );
    let engine_events = engine_events.stop();
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    // Also: no container of a paused target started again.
    assert_on_the_engine_clock(&run, &engine_events);
    for target in ["pg", "cache", "mq"] {
        let fault = run.report["faults"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["target"] == target)
            .unwrap_or_else(|| panic!("no fault on {target}"));
        assert_eq!(fault["kind"], "pause");
        let frozen = fault["injected_at_ms"].as_f64().unwrap();
        let thawed = fault["heal_started_ms"].as_f64().unwrap();
        assert!(
            thawed - frozen >= 3000.0,
            "{target}: frozen for {} ms",
            thawed - frozen
        );
        let t = run.report["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == target)
            .unwrap();
        // The probes failed inside the freeze.
        let detected = t["detection"]["detected_at_ms"].as_f64().unwrap();
        assert!(
            detected > frozen && detected < thawed,
            "{target}: detected at {detected} ms, outside the freeze {frozen}..{thawed}"
        );
        // No write was acknowledged while the service was frozen (a reply already on its way
        // may land within a few ms of the freeze), and none acknowledged was lost.
        let ledger = run.ledger_of(target);
        let acked_frozen: Vec<_> = ledger
            .iter()
            .filter(|w| w.2 == "ok" && w.1 > frozen + 50.0 && w.1 < thawed)
            .collect();
        assert!(
            acked_frozen.is_empty(),
            "{target}: writes acknowledged while frozen: {acked_frozen:?}"
        );
        assert!(
            ledger.iter().any(|w| w.2 != "ok"),
            "{target}: no write failed during the freeze"
        );
        assert_eq!(t["rpo"]["lost_writes"], 0, "{target}");
        assert!(t["rto"]["achieved_ms"].as_f64().unwrap() >= thawed - frozen);
    }
    assert_no_leftovers(run.run_id());
}
