//! One target's drill, conducted: the workload with scheduled [`backups`](super::backups) and
//! [`shipping`](super::shipping) beside it, then the [`faults`](super::faults) with detection,
//! the [`restore`](super::restore) and the [`verify`](super::verify) step. This file only
//! sequences the steps; each step is a file of its own that owns its output, and what the
//! steps learn reaches the report as [`TargetEvent`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::events::{Events, RestoreBegins, TargetEvent};
use super::stop::{Stop, bounded, classify, within};
use super::verify::Restored;
use super::workloads::{Chain, Workload, Writing};
use crate::backup::Repository;
use crate::checks;
use crate::clock::{Clock, Micros};
use crate::measure::{self, Phase, RecoveryPhases};
use crate::offsite::Offsite;
use crate::report::{LatencyObjective, WorkloadReport, WriteLatency};
use crate::spec::{FaultKind, FaultSpec, RestorePoint, Scenario, TargetSpec};
use crate::targets::{Site, Target};
use crate::workload::{Ledger, WriteOutcome};

/// Where the DR site keeps what it fetched from offsite, in the run folder.
pub const DR_REPOSITORY: &str = "dr-site/backups";

/// The steps of one target's drill, sharing the run's clock, events and repository.
pub struct Executor<'a> {
    pub scenario: &'a Scenario,
    pub clock: Clock,
    pub events: Events,
    pub repo: Repository,
    /// The run folder (the ledger CSV goes there).
    pub dir: PathBuf,
    /// Per target, whether its drill has ended, for the restores that wait on it
    /// (`restore.after`).
    pub finished: BTreeMap<String, watch::Sender<bool>>,
    /// Where the targets live: a `site-loss` takes it all.
    pub site: &'a dyn Site,
    /// `[offsite]`, opened.
    pub offsite: Option<Offsite>,
    /// Cancelled when the site is lost: nothing leaves it after that.
    pub site_alive: CancellationToken,
    /// The site loss, once one target's fault has caused it: what went, or why it failed.
    pub site_lost: tokio::sync::OnceCell<Result<serde_json::Value, String>>,
    /// Every target meets here before the site is lost, so no backup is still being written.
    pub site_loss_barrier: tokio::sync::Barrier,
    /// The platform workload, when `[platform] workload` writes across the stores.
    pub chain: Option<Chain>,
    /// Per target of the platform workload, the seqs its verify read back, for the cross-store
    /// check.
    pub recovered: std::sync::Mutex<BTreeMap<String, BTreeSet<u64>>>,
}

/// A target's seed as it was right after seeding: the reference the `seed` check and a total
/// loss are judged against.
pub struct Seeded {
    /// When the seed began (run µs): the dataset's creation, where a total loss reaches back to.
    pub at: Micros,
    /// Per dataset, the fixture's own rows and their digest.
    pub facts: crate::backup::Contents,
}

impl Executor<'_> {
    /// One target from the workload's start to its verified restore.
    pub async fn drive(
        &self,
        spec: &TargetSpec,
        target: &mut dyn Target,
        seeded: &Seeded,
        workload_start: Micros,
    ) -> Result<(), Stop> {
        let s = self.scenario;
        let name = spec.name.as_str();
        let clock = self.clock;

        // A target of the platform workload is written by it, not by a workload of its own.
        let writing = match self.chain.as_ref().filter(|c| c.writes_to(name)) {
            Some(chain) => Writing::Chain(chain),
            None => Writing::Own(Workload::start(target, spec.rate, clock)),
        };
        let workload_span = self.events.begin("workload", Some(name));
        self.events
            .target(name, TargetEvent::WorkloadStarted(workload_start));
        let faults: Vec<&FaultSpec> = s.faults_for(name).collect();
        let backups_until =
            workload_start + faults.first().map_or(s.duration, |f| f.at).as_micros() as Micros;
        // Backups leave for the offsite repository on their own schedule until the restore
        // begins (or the site is lost).
        let (ship, shipped) = mpsc::unbounded_channel();
        let shipping = self.site_alive.child_token();
        let section = async {
            let catalog = self
                .backups(spec, target, workload_start, backups_until, &ship)
                .await?;
            let outage = self
                .faults(spec, target, &faults, &catalog, workload_start)
                .await?;
            if outage.t_fault.is_none() {
                // No fault hit the service: measured from the restore's start.
                tokio::time::sleep_until(
                    clock.instant_at(workload_start + s.duration.as_micros() as Micros),
                )
                .await;
                self.events.outage(name, clock.micros());
            }
            Ok::<_, Stop>((catalog, outage))
        };
        let (section, ()) = tokio::join!(
            async {
                let ended = section.await;
                shipping.cancel();
                ended
            },
            self.ship(spec, shipped, shipping.clone(), workload_start)
        );
        let (catalog, outage) = section?;
        // After a site loss, the DR site knows only what landed offsite.
        let catalog = match (self.site_lost.get(), &self.offsite) {
            (Some(_), Some(offsite)) => offsite
                .catalog(name, &self.dir.join(DR_REPOSITORY))
                .await
                .map_err(|e| classify(&format!("list the offsite backups of {name}"), e))?,
            _ => catalog,
        };

        // The restore begins: the workload stops, its last writes are recorded.
        let restore_start = clock.micros();
        let ledger = writing.stop(name).await?;
        self.events.end(workload_span);
        let t_fault = outage.t_fault.unwrap_or(restore_start);
        let write_latency = outage.slowed.map(|(slowed, healed)| {
            latency_around(spec, &ledger, workload_start, slowed, healed, restore_start)
        });
        self.events.target(
            name,
            TargetEvent::RestoreBegins(Box::new(RestoreBegins {
                fault_at: t_fault,
                restore_started: restore_start,
                workload: Some(workload_report(
                    spec,
                    &ledger,
                    workload_start,
                    restore_start,
                )),
                detection: outage.detection.clone(),
                write_latency,
            })),
        );

        let mut phases = RecoveryPhases::new(clock, Phase::Detect, t_fault);
        self.wait_for_prerequisites(spec, &mut phases).await;
        let span = self.events.begin("restore", Some(name));
        let restoration = self
            .restore(
                spec,
                target,
                &catalog,
                t_fault,
                outage.recovery_point.as_ref(),
                &mut phases,
            )
            .await?;
        self.events.end(span);

        let restored = Restored {
            ledger: &ledger,
            catalog: &catalog,
            restoration,
            t_fault,
            injected: outage.injected.unwrap_or(t_fault),
            phases,
            seeded,
            workload_start,
        };
        self.verify(spec, target, restored).await?;
        if spec.restore == RestorePoint::Failover {
            // The RTO is measured: the old nodes rejoin or are fenced.
            let span = self.events.begin("settle", Some(name));
            let limit = self.scenario.timeouts.restore;
            if let Some(settled) = bounded(
                &format!("settle the topology of {name}"),
                limit,
                "timeouts.restore",
                async { Ok(target.settle(limit).await) },
            )
            .await?
            {
                self.events.target(name, TargetEvent::Settled(settled));
            }
            self.events.end(span);
        }
        let injected: Vec<FaultKind> = faults.iter().map(|f| f.kind).collect();
        self.unasked_outages(spec, target, &injected).await
    }

    /// The platform workload's cross-store check, on what each target's verify read back (`None`
    /// without a platform workload). A store that could not be read back leaves it `None`
    /// too, and the platform then has no verdict on it.
    pub fn cross_store(&self) -> Option<checks::cross_store::CrossStore> {
        let chain = self.chain.as_ref()?;
        let ledgers = chain.ledgers()?;
        let recovered = self.recovered.lock().expect("not poisoned");
        let store = |i: usize| {
            let target = chain.targets()[i].as_str();
            Some(checks::cross_store::Store {
                target,
                ledger: &ledgers[i],
                present: recovered.get(target)?,
            })
        };
        let (order, cache, event) = (store(0)?, store(1)?, store(2)?);
        Some(checks::cross_store::cross_store(&order, &cache, &event))
    }

    /// Marks `target`'s drill ended (recovered, or given up on): the restores waiting on it
    /// go ahead.
    pub fn finish(&self, target: &str) {
        if let Some(done) = self.finished.get(target) {
            done.send_replace(true);
        }
    }

    /// Waits, as phase `wait`, until every target `spec` restores after has ended its drill:
    /// the runbook's order is the order of the restores.
    async fn wait_for_prerequisites(&self, spec: &TargetSpec, phases: &mut RecoveryPhases) {
        if spec.restore_after.is_empty() {
            return;
        }
        phases.enter(Phase::Wait);
        let span = self.events.begin(
            &format!("wait {}", spec.restore_after.join(", ")),
            Some(&spec.name),
        );
        for other in &spec.restore_after {
            if let Some(done) = self.finished.get(other) {
                // The sender lives as long as the executor: the wait ends only with `true`.
                let _ = done.subscribe().wait_for(|done| *done).await;
            }
        }
        self.events.end(span);
    }

    /// Asks the target's own logs for outages no injected fault explains (a crashed backend
    /// that restarted every session): the drill's figures absorbed them, so any fails it.
    async fn unasked_outages(
        &self,
        spec: &TargetSpec,
        target: &dyn Target,
        injected: &[FaultKind],
    ) -> Result<(), Stop> {
        let limit = self.scenario.timeouts.check;
        let step = format!("reading the logs of {}", spec.name);
        let found = within(
            &step,
            limit,
            "timeouts.check",
            target.unasked_outages(injected),
        )
        .await?;
        for outage in &found {
            warn!("{}: an outage no fault caused: {outage}", spec.name);
        }
        self.events
            .target(&spec.name, TargetEvent::UnaskedOutages(found));
        Ok(())
    }
}

/// What the workload did from `started` until the restore began (`stopped`).
fn workload_report(
    spec: &TargetSpec,
    ledger: &Ledger,
    started: Micros,
    stopped: Micros,
) -> WorkloadReport {
    WorkloadReport {
        rate: spec.rate,
        started_ms: Some(started / 1000),
        stopped_ms: Some(stopped / 1000),
        attempted: ledger.len() as u64,
        ok: ledger.count(WriteOutcome::Ok),
        fail: ledger.count(WriteOutcome::Fail),
        info: ledger.count(WriteOutcome::Info),
        ledger_file: None,
    }
}

/// Acknowledged-write latency before a `latency` fault (from the workload's `start`), while it
/// lasted (`slowed` to `healed`) and after it (until the restore began, `end`), with the
/// `write_p99` objective judged on the writes during it.
fn latency_around(
    spec: &TargetSpec,
    ledger: &Ledger,
    start: Micros,
    slowed: Micros,
    healed: Micros,
    end: Micros,
) -> WriteLatency {
    WriteLatency {
        before: measure::write_latency(ledger, start, slowed),
        during: measure::write_latency(ledger, slowed, healed),
        after: measure::write_latency(ledger, healed, end),
        objective: spec.objectives.write_p99.map(|objective| {
            let achieved_ms = measure::write_p99_counting_unacknowledged(ledger, slowed, healed);
            LatencyObjective {
                target_ms: objective.as_millis() as u64,
                achieved_ms,
                met: achieved_ms.is_some_and(|p| p <= objective.as_secs_f64() * 1e3),
            }
        }),
    }
}
