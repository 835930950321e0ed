//! The outside clock: the Docker engine's own event stream, with the engine's timestamps,
//! followed while a drill runs. The report's instants, mapped to wall time through its
//! `started_at`, must agree with what the engine saw happen to the containers: each fault's
//! start, each heal, the restored container's start, and the teardown; a site loss, which names
//! no container, by each container it removed. Network events (a container leaving or joining a
//! network) count as happening to the container.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use crate::common::Run;

/// How far outside a step the engine may log what the step did (the report's instants are whole
/// milliseconds, and the engine's clock is read by another process).
const TOLERANCE_MS: f64 = 50.0;

/// One container event as the engine logged it.
#[derive(Debug, Clone)]
pub struct EngineEvent {
    /// `create`, `start`, `kill`, `die`, `stop`, `pause`, `unpause`, `destroy`, and for
    /// networks `disconnect`, `connect`.
    pub action: String,
    /// The container's id.
    pub id: String,
    /// The container's name (network events carry only the id: resolved from the others).
    pub container: String,
    /// The drill run that labelled the container.
    pub run: Option<String>,
    /// The engine's timestamp, ms since the Unix epoch.
    pub at_ms: f64,
}

/// `docker events` running beside a drill, from before it starts.
pub struct EngineEvents {
    child: Child,
    events: Arc<Mutex<Vec<EngineEvent>>>,
    reader: std::thread::JoinHandle<()>,
}

impl EngineEvents {
    pub fn follow() -> EngineEvents {
        let mut args = vec![
            "events".to_string(),
            "--format".into(),
            "{{json .}}".into(),
            "--filter".into(),
            "type=container".into(),
            "--filter".into(),
            "type=network".into(),
        ];
        for action in [
            "create",
            "start",
            "kill",
            "die",
            "stop",
            "pause",
            "unpause",
            "destroy",
            "connect",
            "disconnect",
        ] {
            args.extend(["--filter".to_string(), format!("event={action}")]);
        }
        let mut child = Command::new("docker")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run docker events");
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let reader = std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let Ok(e) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let attributes = &e["Actor"]["Attributes"];
                let network = e["Type"] == "network";
                let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                sink.lock().unwrap().push(EngineEvent {
                    action: text(&e["Action"]),
                    id: if network {
                        text(&attributes["container"])
                    } else {
                        text(&e["Actor"]["ID"])
                    },
                    container: if network {
                        String::new()
                    } else {
                        text(&attributes["name"])
                    },
                    run: attributes["io.drillrig.run"].as_str().map(String::from),
                    at_ms: e["timeNano"].as_f64().unwrap_or_default() / 1e6,
                });
            }
        });
        // The subscription is open before the drill's first container.
        std::thread::sleep(Duration::from_millis(300));
        EngineEvents {
            child,
            events,
            reader,
        }
    }

    /// Stops following; every event seen, oldest first.
    pub fn stop(mut self) -> Vec<EngineEvent> {
        // Events of the teardown's last removals may still be on their way.
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
        let mut events = self.events.lock().unwrap().clone();
        // A network event names the container by id only: give it the container's name and run.
        let known: std::collections::HashMap<String, (String, Option<String>)> = events
            .iter()
            .filter(|e| !e.container.is_empty())
            .map(|e| (e.id.clone(), (e.container.clone(), e.run.clone())))
            .collect();
        for e in events.iter_mut().filter(|e| e.container.is_empty()) {
            if let Some((name, run)) = known.get(&e.id) {
                e.container = name.clone();
                e.run = run.clone();
            }
        }
        events.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
        events
    }
}

/// The run's instants as wall-clock ms since the epoch.
struct RunClock(f64);

impl RunClock {
    fn of(run: &Run) -> RunClock {
        let started = humantime::parse_rfc3339(run.report["started_at"].as_str().unwrap()).unwrap();
        RunClock(started.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1e3)
    }

    fn wall(&self, offset_ms: &Value) -> f64 {
        self.0 + offset_ms.as_f64().expect("an instant in ms")
    }
}

/// The engine logs a network `disconnect` or `connect`, and a `pause` or `unpause`, when it has
/// finished (endpoint, port mapping and proxy torn down or set up, the cgroup frozen or thawed:
/// up to 100 ms and more on a loaded machine), and a `kill` when the signal is sent, so each must
/// fall inside the step the report records, from its start to its return.
fn assert_inside(what: &str, from_ms: f64, to_ms: f64, engine: &EngineEvent) {
    assert!(
        engine.at_ms >= from_ms - TOLERANCE_MS && engine.at_ms <= to_ms + TOLERANCE_MS,
        "{what}: the engine saw `{}` on {} {:.1} ms after the step began, which took {:.1} ms",
        engine.action,
        engine.container,
        engine.at_ms - from_ms,
        to_ms - from_ms
    );
}

/// Every site loss of the run, held to the engine's events as [`assert_on_the_engine_clock`]
/// holds it, for a run that keeps its containers (`DRILLRIG_KEEP`), whose teardown removes none.
pub fn assert_sites_lost_on_the_engine_clock(run: &Run, events: &[EngineEvent]) {
    let id = run.run_id();
    let ours: Vec<&EngineEvent> = events
        .iter()
        .filter(|e| e.run.as_deref() == Some(id))
        .collect();
    let lost: Vec<&Value> = run.report["faults"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "site-loss")
        .collect();
    assert!(!lost.is_empty(), "no site loss in run {id}");
    for fault in lost {
        assert_site_lost_on_the_engine_clock(fault, &ours, &RunClock::of(run));
    }
}

/// A site loss removes every container of the run at once, naming none: the containers the
/// engine had created for the run and not yet removed when the step began must each be removed
/// (`destroy`) inside the step, from its start to its return, the running ones dying (`die`)
/// inside it too; none may outlive it, and the report's count of removed containers is theirs.
fn assert_site_lost_on_the_engine_clock(fault: &Value, ours: &[&EngineEvent], clock: &RunClock) {
    let (from, to) = (
        clock.wall(&fault["started_ms"]),
        clock.wall(&fault["injected_at_ms"]),
    );
    let before = |e: &&&EngineEvent| e.at_ms < from - TOLERANCE_MS;
    let created: BTreeMap<&str, &str> = ours
        .iter()
        .filter(before)
        .filter(|e| e.action == "create")
        .map(|e| (e.id.as_str(), e.container.as_str()))
        .collect();
    let gone_before: Vec<&str> = ours
        .iter()
        .filter(before)
        .filter(|e| e.action == "destroy")
        .map(|e| e.id.as_str())
        .collect();
    let standing: BTreeMap<&str, &str> = created
        .into_iter()
        .filter(|(id, _)| !gone_before.contains(id))
        .collect();
    assert!(
        !standing.is_empty(),
        "no container stood when the site was lost"
    );
    assert_eq!(
        fault["details"]["removed"]["containers"].as_u64(),
        Some(standing.len() as u64),
        "the report's count of removed containers against the engine's {standing:?}"
    );
    for (id, container) in &standing {
        let of = |action: &str| {
            ours.iter()
                .find(|e| e.id == *id && e.action == action && e.at_ms >= from - TOLERANCE_MS)
        };
        let destroyed = of("destroy")
            .unwrap_or_else(|| panic!("site loss: the engine never removed {container}"));
        assert_inside("site loss: removal", from, to, destroyed);
        let started = ours.iter().any(|e| e.id == *id && e.action == "start");
        let died_before = ours
            .iter()
            .any(|e| e.id == *id && e.action == "die" && e.at_ms < from - TOLERANCE_MS);
        if started && !died_before {
            let died = of("die")
                .unwrap_or_else(|| panic!("site loss: {container} was running and never died"));
            assert_inside("site loss: stop", from, to, died);
        }
    }
}

/// Checks the run's report against the engine's events of its containers: every fault's start
/// and heal, where each target's serving container was (re)started, and the teardown, each
/// within [`TOLERANCE_MS`].
pub fn assert_on_the_engine_clock(run: &Run, events: &[EngineEvent]) {
    let id = run.run_id();
    let clock = RunClock::of(run);
    let ours: Vec<&EngineEvent> = events
        .iter()
        .filter(|e| e.run.as_deref() == Some(id))
        .collect();
    assert!(!ours.is_empty(), "the engine saw no container of run {id}");
    let name = |short: &str| format!("drillrig-{id}-{short}");
    let on = |container: &str, actions: &[&str], from: f64| -> Option<&EngineEvent> {
        ours.iter().copied().find(|e| {
            e.container == container && actions.contains(&e.action.as_str()) && e.at_ms >= from
        })
    };

    for fault in run.report["faults"].as_array().unwrap() {
        let target = fault["target"].as_str().unwrap();
        if fault["kind"] == "site-loss" {
            assert_site_lost_on_the_engine_clock(fault, &ours, &clock);
            continue;
        }
        let Some(short) = fault["details"]["container"].as_str() else {
            continue;
        };
        let container = name(short);
        let started = clock.wall(&fault["started_ms"]);
        let first = on(
            &container,
            &["kill", "die", "stop", "pause", "destroy", "disconnect"],
            started - TOLERANCE_MS,
        )
        .unwrap_or_else(|| panic!("{target}: the engine saw nothing happen to {container}"));
        let what = format!("{target}: fault {} start", fault["kind"]);
        // Every action is logged once the engine has taken the request and done it (a kill when
        // the signal is sent, a graceful stop's SIGTERM before the service shuts down): it falls
        // inside the step, which began at `started_ms` and returned at `injected_at_ms`. On a
        // loaded machine the call alone takes more than 50 ms.
        assert_inside(&what, started, clock.wall(&fault["injected_at_ms"]), first);
        if let Some(heal) = fault.get("heal_started_ms") {
            let healed = clock.wall(heal);
            let thaw = on(&container, &["unpause", "connect"], started)
                .unwrap_or_else(|| panic!("{target}: the engine never healed {container}"));
            let what = format!("{target}: heal");
            assert_inside(&what, healed, clock.wall(&fault["healed_at_ms"]), thaw);
        }
    }

    for t in run.report["targets"].as_array().unwrap() {
        let target = t["name"].as_str().unwrap();
        let Some(fault_at) = t["rto"]["fault_at_ms"].as_f64() else {
            continue;
        };
        let fault_wall = clock.0 + fault_at;
        // The recovery's phases, laid end to end from the fault.
        let mut bounds = BTreeMap::new();
        let mut at = fault_wall;
        for phase in [
            "detect",
            "archive",
            "provision",
            "fetch",
            "restore",
            "verify",
        ] {
            if let Some(ms) = t["rto"]["phases"][phase].as_f64() {
                bounds.insert(phase, (at, at + ms));
                at += ms;
            }
        }
        let prefix = name(&format!("{target}-"));
        let started: Vec<&EngineEvent> = ours
            .iter()
            .copied()
            .filter(|e| {
                e.action == "start"
                    && e.container.starts_with(&prefix)
                    && !e.container.ends_with("-loader")
                    && e.at_ms > fault_wall
            })
            .collect();
        if t["restore"]["from"] == "in-place" {
            assert!(
                started.is_empty(),
                "{target} restores nothing, yet the engine started {:?}",
                started.iter().map(|e| &e.container).collect::<Vec<_>>()
            );
            continue;
        }
        let start = started
            .first()
            .unwrap_or_else(|| panic!("{target}: the engine started no container after the fault"));
        let (from, _) = bounds
            .get("provision")
            .or(bounds.get("restore"))
            .copied()
            .expect("a restore phase");
        let (_, to) = bounds["restore"];
        assert!(
            start.at_ms >= from - TOLERANCE_MS && start.at_ms <= to + TOLERANCE_MS,
            "{target}: {} started {:.1} ms after the fault, outside the report's restore ({:.1}..{:.1} ms)",
            start.container,
            start.at_ms - fault_wall,
            from - fault_wall,
            to - fault_wall
        );
    }

    let teardown = run.report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["phase"] == "teardown")
        .expect("a teardown on the timeline");
    let (from, to) = (
        clock.wall(&teardown["started_ms"]),
        clock.wall(&teardown["ended_ms"]),
    );
    let destroyed: Vec<&&EngineEvent> = ours
        .iter()
        .filter(|e| e.action == "destroy" && e.at_ms >= from - TOLERANCE_MS)
        .collect();
    assert!(
        !destroyed.is_empty(),
        "the engine removed nothing at teardown"
    );
    for e in destroyed {
        assert!(
            e.at_ms <= to + TOLERANCE_MS,
            "{} was removed {:.1} ms after the report's teardown ended",
            e.container,
            e.at_ms - to
        );
    }
    let first = ours
        .iter()
        .find(|e| {
            e.at_ms >= from - TOLERANCE_MS
                && ["kill", "die", "stop", "destroy"].contains(&e.action.as_str())
        })
        .expect("the teardown stopped something");
    // Removing a running container is a stop the engine logs once it has taken the request
    // (62 ms after the teardown began under CI's load, seen once): it falls inside the step.
    assert_inside("teardown start", from, to, first);
}
