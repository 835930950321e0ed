//! The drill's one event sink. Every phase, fault and per-target result goes through
//! [`Events`], which keeps the progress record (outside the drill's future, so an interrupted
//! or failed run still reports how far it got), draws the live lines and writes the log.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::info;

use crate::clock::{Clock, Micros};
use crate::live;
use crate::report::{FaultRecord, PhaseSpan, TargetReport};

/// What the run has learned so far.
#[derive(Default, Clone)]
pub struct Progress {
    pub timeline: Vec<PhaseSpan>,
    pub faults: Vec<FaultRecord>,
    pub targets: BTreeMap<String, TargetReport>,
    /// The platform workload's cross-store check, once every target recovered.
    pub cross_store: Option<crate::checks::cross_store::CrossStore>,
}

/// A phase begun with [`Events::begin`], to hand to [`Events::end`].
#[must_use]
pub struct Span(usize);

/// A cheap handle on the run's progress record, live lines and clock.
#[derive(Clone)]
pub struct Events {
    progress: Arc<Mutex<Progress>>,
    live: live::Lines,
    clock: Clock,
}

impl Events {
    pub fn new(clock: Clock, live: live::Lines, targets: Vec<TargetReport>) -> Self {
        let progress = Progress {
            targets: targets.into_iter().map(|t| (t.name.clone(), t)).collect(),
            ..Progress::default()
        };
        Events {
            progress: Arc::new(Mutex::new(progress)),
            live,
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().expect("not poisoned")
    }

    /// A phase of the run (`target` `None`) or of one target begins now.
    pub fn begin(&self, phase: &str, target: Option<&str>) -> Span {
        match target {
            Some(t) => info!("{t}: phase {phase}"),
            None => info!("phase {phase}"),
        }
        self.live.phase(target, phase);
        let mut p = self.lock();
        p.timeline.push(PhaseSpan {
            phase: phase.into(),
            target: target.map(Into::into),
            started_ms: self.clock.millis(),
            ended_ms: None,
        });
        Span(p.timeline.len() - 1)
    }

    /// The phase ends now.
    pub fn end(&self, span: Span) {
        self.lock().timeline[span.0].ended_ms = Some(self.clock.millis());
    }

    /// Changes what the report says of `target`.
    pub fn target(&self, target: &str, f: impl FnOnce(&mut TargetReport)) {
        if let Some(t) = self.lock().targets.get_mut(target) {
            f(t);
        }
    }

    /// What `target` shipped offsite and fetched back (once shipping has begun).
    pub fn offsite(&self, target: &str, f: impl FnOnce(&mut crate::report::OffsiteReport)) {
        self.target(target, |t| {
            if let Some(o) = t.offsite.as_mut() {
                f(o);
            }
        });
    }

    /// A fault was injected, or failed to be.
    pub fn fault(&self, record: FaultRecord) {
        self.lock().faults.push(record);
    }

    /// The outage of `target` began at `at`: its RTO clock runs from there.
    pub fn outage(&self, target: &str, at: Micros) {
        self.live
            .rto_from(target, self.clock.instant_at(at).into_std());
    }

    /// `target` recovered after `rto`, or did not (`None`).
    pub fn recovered(&self, target: &str, rto: Option<Duration>) {
        self.live.recovered(target, rto);
    }

    /// What the run has learned so far.
    /// The platform workload's cross-store check ran.
    pub fn cross_store(&self, checked: crate::checks::cross_store::CrossStore) {
        self.lock().cross_store = Some(checked);
    }

    pub fn progress(&self) -> Progress {
        self.lock().clone()
    }
}
