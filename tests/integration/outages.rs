//! Outage faults that take a service down without damaging it: each must really happen to the
//! container, as the engine and the service's own log tell it, and cost what the report says.

use crate::common::*;

/// `stop` on one target of each kind: the engine stops each container gracefully, each service
/// shuts down by itself (exit code 0, its own shutdown lines in its log), and the restart on the
/// same data loses no acknowledged write.
#[test]
fn a_graceful_stop_shuts_each_service_down_cleanly_and_loses_nothing() {
    let _engine = engine();
    let run = drill(
        "tests/scenarios/stop-every-kind.toml",
        "stop-every-kind",
        &[],
    );
    assert_eq!(run.code(), Some(0), "{}", run.debug());
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
