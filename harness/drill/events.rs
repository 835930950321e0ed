//! The drill's one event sink. Every phase, fault and per-target result goes through
//! [`Events`], which keeps the progress record (outside the drill's future, so an interrupted
//! or failed run still reports how far it got), draws the live lines and writes the log.
//!
//! A step tells what it learned about a target as a [`TargetEvent`]; [`apply`] is the one place
//! that turns events into the target's report: "where is this report field set" is answered
//! there.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::info;

use crate::checks::CheckResult;
use crate::checks::cross_store::CrossStore;
use crate::clock::{Clock, Micros};
use crate::docker::image::ImageChoice;
use crate::live;
use crate::measure::projection::RestoreTrend;
use crate::measure::rpo::Rpo;
use crate::measure::{Detection, Phase, RecoveryPhases};
use crate::offsite::{ArchiveShipment, OffsiteFetch, Shipment};
use crate::report::{
    BackupReport, FaultRecord, OffsiteReport, PhaseDurations, PhaseSpan, SeedReport, SourceReport,
    TargetReport, WorkloadReport, WriteLatency,
};
use crate::targets::{RecoveryPoint, Restored};

/// What one step learned about one target.
pub enum TargetEvent {
    /// The image it runs.
    Image(Option<ImageChoice>),
    /// Its dataset as seeded.
    Seeded(SeedReport),
    /// The workload began writing (run µs).
    WorkloadStarted(Micros),
    /// A scheduled backup finished, or failed.
    Backup(BackupReport),
    /// The point `before-fault` restores to, captured before the first fault.
    RecoveryPoint(RecoveryPoint),
    /// A replicated target's replication as it stood just before the first fault.
    Replication(serde_json::Value),
    /// Shipping to the offsite repository began.
    ShippingStarted { location: String },
    /// A backup landed offsite.
    Shipped(Shipment),
    /// A file of the continuous archive landed offsite; `file` had failed before when
    /// `retried`, and its failure no longer stands.
    ArchiveShipped {
        shipment: ArchiveShipment,
        file: String,
        retried: bool,
    },
    /// A shipment failed.
    ShippingFailed(String),
    /// The DR site fetched a backup from offsite.
    FetchedOffsite(OffsiteFetch),
    /// A restore test fetched its backup from its source.
    FetchedSource(Box<SourceReport>),
    /// The restore begins: the outage as the fault step saw it, and what the workload did.
    RestoreBegins(Box<RestoreBegins>),
    /// The drill of this target ended: recovered, or not.
    Recovered(Box<Recovery>),
    /// Outages the service's own logs show that no fault caused.
    UnaskedOutages(Vec<String>),
    /// After a failover: what became of the old nodes, more fields of `restore.failover`.
    Settled(serde_json::Value),
}

/// What is known when a target's restore begins.
pub struct RestoreBegins {
    /// Where the RTO clock starts: the first service fault's injection, or the restore's start.
    pub fault_at: Micros,
    pub restore_started: Micros,
    /// What the workload did, when one wrote (restore tests have none).
    pub workload: Option<WorkloadReport>,
    pub detection: Option<Detection>,
    pub write_latency: Option<WriteLatency>,
}

/// How a target's drill or restore test ended: the record both share.
#[derive(Default)]
pub struct Recovery {
    /// Milliseconds per recovery phase; they add up to the RTO (or to the drill's end).
    pub phases: Vec<(Phase, u64)>,
    /// `t_recovered − t_fault`, when it recovered.
    pub rto_ms: Option<u64>,
    /// When it recovered (run µs).
    pub recovered_at: Option<Micros>,
    /// Why it did not recover.
    pub note: Option<String>,
    pub rpo: Rpo,
    pub checks: Vec<CheckResult>,
    /// The backup restored, by id (drills).
    pub backup_id: Option<u32>,
    /// What the restore reached.
    pub restored: Restored,
    /// Why the restore failed: a finding, not a stop.
    pub error: Option<String>,
    /// The ledger CSV, relative to the run folder (drills).
    pub ledger_file: Option<String>,
    /// Restore time against backup size over the recovered runs (restore tests).
    pub trend: Option<RestoreTrend>,
}

impl Recovery {
    /// A recovery timed from `from` (the outage's start, run µs): recovered at `recovered_at`,
    /// or not, its phases then ending `now`.
    pub fn timed(
        phases: &RecoveryPhases,
        from: Micros,
        recovered_at: Option<Micros>,
        now: Micros,
    ) -> Recovery {
        Recovery {
            phases: phases.durations(recovered_at.unwrap_or(now)),
            rto_ms: recovered_at.map(|r| (r - from) / 1000),
            recovered_at,
            ..Recovery::default()
        }
    }
}

/// The one place a [`TargetEvent`] changes a target's report.
fn apply(t: &mut TargetReport, event: TargetEvent) {
    match event {
        TargetEvent::Image(image) => t.image = image,
        TargetEvent::Seeded(seed) => t.seed = Some(seed),
        TargetEvent::WorkloadStarted(at) => t.workload.started_ms = Some(at / 1000),
        TargetEvent::Backup(backup) => t.backups.push(backup),
        TargetEvent::RecoveryPoint(point) => t.restore.recovery_point = Some(point),
        TargetEvent::Replication(at_fault) => t.replication = Some(at_fault),
        TargetEvent::ShippingStarted { location } => {
            t.offsite = Some(OffsiteReport {
                location,
                ..OffsiteReport::default()
            })
        }
        TargetEvent::Shipped(shipment) => offsite(t).shipped.push(shipment),
        TargetEvent::ArchiveShipped {
            shipment,
            file,
            retried,
        } => {
            let o = offsite(t);
            o.archive.push(shipment);
            if retried {
                let failure = format!("archived {file}: ");
                o.errors.retain(|e| !e.starts_with(&failure));
            }
        }
        TargetEvent::ShippingFailed(why) => offsite(t).errors.push(why),
        TargetEvent::FetchedOffsite(fetched) => offsite(t).fetched = Some(fetched),
        TargetEvent::FetchedSource(source) => t.source = Some(*source),
        TargetEvent::RestoreBegins(begins) => {
            let RestoreBegins {
                fault_at,
                restore_started,
                workload,
                detection,
                write_latency,
            } = *begins;
            t.rto.fault_at_ms = Some(fault_at / 1000);
            t.rto.restore_started_at_ms = Some(restore_started / 1000);
            if let Some(workload) = workload {
                t.workload = workload;
            }
            if let Some(detection) = detection {
                t.detection = detection;
            }
            t.write_latency = write_latency;
        }
        TargetEvent::Recovered(recovery) => {
            let r = *recovery;
            t.rto.phases = PhaseDurations::from_durations(&r.phases);
            t.rto.achieved_ms = r.rto_ms;
            t.rto.met = r.rto_ms.is_some_and(|a| a <= t.rto.target_ms);
            t.rto.recovered_at_ms = r.recovered_at.map(|at| at / 1000);
            t.rto.note = r.note;
            t.rpo = r.rpo;
            t.checks = r.checks;
            t.restore.backup_id = r.backup_id;
            t.restore.error = r.error;
            t.restore.restored = r.restored;
            t.workload.ledger_file = r.ledger_file;
            if let Some(source) = t.source.as_mut() {
                source.trend = r.trend;
            }
        }
        TargetEvent::UnaskedOutages(found) => t.unasked_outages = found,
        TargetEvent::Settled(fields) => {
            let failover = t
                .restore
                .restored
                .failover
                .get_or_insert_with(|| serde_json::json!({}));
            if let (Some(into), serde_json::Value::Object(fields)) =
                (failover.as_object_mut(), fields)
            {
                into.extend(fields);
            }
        }
    }
}

/// The offsite part of a target's report, which [`TargetEvent::ShippingStarted`] begins.
fn offsite(t: &mut TargetReport) -> &mut OffsiteReport {
    t.offsite.get_or_insert_with(OffsiteReport::default)
}

/// What the run has learned so far.
#[derive(Default, Clone)]
pub struct Progress {
    pub timeline: Vec<PhaseSpan>,
    pub faults: Vec<FaultRecord>,
    pub targets: BTreeMap<String, TargetReport>,
    /// The platform workload's cross-store check, once every target recovered.
    pub cross_store: Option<CrossStore>,
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

    /// `target` learned `event`: into its report, and onto its live line.
    pub fn target(&self, target: &str, event: TargetEvent) {
        if let TargetEvent::Recovered(r) = &event {
            self.live
                .recovered(target, r.rto_ms.map(Duration::from_millis));
        }
        if let Some(t) = self.lock().targets.get_mut(target) {
            apply(t, event);
        }
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

    /// The platform workload's cross-store check ran.
    pub fn cross_store(&self, checked: CrossStore) {
        self.lock().cross_store = Some(checked);
    }

    /// What the run has learned so far.
    pub fn progress(&self) -> Progress {
        self.lock().clone()
    }
}
