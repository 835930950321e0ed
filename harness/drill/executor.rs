//! One target's drill, as named steps from the workload's start to its verified recovery:
//! [`workload`](Executor::drive) with scheduled [`backups`](Executor::backups), then
//! [`faults`](Executor::faults) with detection, [`restore`](Executor::restore) and
//! [`verify`](Executor::verify). Every step is bounded; what it learns goes to [`Events`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use futures::future::try_join_all;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use super::events::Events;
use super::stop::{Stop, bounded, classify, host_storage_full, overran};
use crate::backup::{Backup, CONTENTS_HELD, Contents, HeldSnapshot, Repository};
use crate::checks::{self, CheckResult, CheckStatus, Evidence, Overran};
use crate::clock::{Clock, Micros};
use crate::faults;
use crate::measure::{self, Detection, Phase, RecoveryPhases};
use crate::offsite::Offsite;
use crate::report::{self, BackupReport, FaultRecord, Rpo, WorkloadReport};
use crate::spec::{CheckKind, FaultKind, FaultSpec, RestorePoint, Scenario, TargetSpec};
use crate::targets::{RecoveryPoint, RestoreRequest, Restored, Site, Target};
use crate::util;
use crate::workload::{self, Comparison, Ledger, ledger::compare};

/// Where the DR site keeps what it fetched from offsite, in the run folder.
pub const DR_REPOSITORY: &str = "dr-site/backups";

/// How often offsite shipping looks for newly archived files.
const ARCHIVE_POLL: Duration = Duration::from_millis(200);

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

/// The platform workload: one task writing each seq through its targets in turn, stopped by
/// the first of them whose restore begins; each then takes its own ledger.
pub struct Chain {
    targets: Vec<String>,
    stop: CancellationToken,
    task: std::sync::Mutex<Option<AbortOnDropHandle<Vec<Ledger>>>>,
    ledgers: tokio::sync::OnceCell<Vec<Ledger>>,
}

impl Chain {
    /// Starts writing through `writers`, one per target of `targets`, in order.
    pub fn start(
        targets: Vec<String>,
        writers: Vec<Box<dyn workload::Writer>>,
        rate: u32,
        clock: Clock,
    ) -> Chain {
        let stop = CancellationToken::new();
        let task = AbortOnDropHandle::new(tokio::spawn(workload::run_chain(
            writers,
            rate,
            clock,
            stop.clone(),
        )));
        Chain {
            targets,
            stop,
            task: std::sync::Mutex::new(Some(task)),
            ledgers: tokio::sync::OnceCell::new(),
        }
    }

    pub fn writes_to(&self, target: &str) -> bool {
        self.targets.iter().any(|t| t == target)
    }

    /// Stops the workload (if it still writes) and returns `target`'s ledger.
    async fn ledger(&self, target: &str) -> Result<Ledger, Stop> {
        self.stop.cancel();
        let ledgers = self
            .ledgers
            .get_or_try_init(|| async {
                let task = self.task.lock().expect("not poisoned").take();
                match task {
                    Some(task) => task
                        .await
                        .map_err(|e| Stop::Step(format!("the platform workload: {e}"))),
                    None => Err(Stop::Step("the platform workload ended twice".into())),
                }
            })
            .await?;
        let i = self
            .targets
            .iter()
            .position(|t| t == target)
            .expect("a target of the platform workload");
        Ok(ledgers[i].clone())
    }

    /// Every target's ledger, once the workload has stopped.
    fn ledgers(&self) -> Option<&Vec<Ledger>> {
        self.ledgers.get()
    }
}

/// A target's seed as it was right after seeding: the reference the `seed` check and a total
/// loss are judged against.
pub struct Seeded {
    /// When the seed began (run µs): the dataset's creation, where a total loss reaches back to.
    pub at: Micros,
    /// Per dataset, the fixture's own rows and their digest.
    pub facts: crate::backup::Contents,
}

/// What the fault step learned.
struct Outage {
    /// When the injection of the first fault that hit the service began: the outage's start
    /// (run µs); `None`: none did.
    t_fault: Option<Micros>,
    /// When that injection returned.
    injected: Option<Micros>,
    recovery_point: Option<RecoveryPoint>,
    detection: Option<Detection>,
    /// A `latency` fault's span: its injection's return to its heal's start (run µs).
    slowed: Option<(Micros, Micros)>,
}

/// What [`Executor::restore`] did: the backup it used, what the service reached, and the error
/// that stopped it (a finding, not a stop of the drill).
struct RestoreOutcome<'c> {
    backup: Option<&'c Backup>,
    restored: Restored,
    error: Option<String>,
}

/// The workload writing in its own task until [`Workload::stop`].
struct Workload {
    stop: CancellationToken,
    task: AbortOnDropHandle<Ledger>,
}

impl Workload {
    fn start(target: &dyn Target, rate: u32, clock: Clock) -> Workload {
        let stop = CancellationToken::new();
        let task = AbortOnDropHandle::new(tokio::spawn(workload::run(
            target.writer(),
            rate,
            clock,
            stop.clone(),
        )));
        Workload { stop, task }
    }

    /// Stops writing; the ledger of every attempt.
    async fn stop(self, target: &str) -> Result<Ledger, Stop> {
        self.stop.cancel();
        self.task
            .await
            .map_err(|e| Stop::Step(format!("{target} workload: {e}")))
    }
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
        let chain = self.chain.as_ref().filter(|c| c.writes_to(name));
        let workload = chain
            .is_none()
            .then(|| Workload::start(target, spec.rate, clock));
        let workload_span = self.events.begin("workload", Some(name));
        self.events.target(name, |t| {
            t.workload.started_ms = Some(workload_start / 1000)
        });
        let faults: Vec<&FaultSpec> = s.faults_for(name).collect();
        let backups_until =
            workload_start + faults.first().map_or(s.duration, |f| f.at).as_micros() as Micros;
        // Backups leave for the offsite repository on its own schedule until the restore
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
                // No fault hit the service: a restore test, measured from the restore's start.
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
        let ledger = match (workload, chain) {
            (Some(workload), _) => workload.stop(name).await?,
            (None, Some(chain)) => chain.ledger(name).await?,
            (None, None) => unreachable!("a target is written by its workload or the platform's"),
        };
        self.events.end(workload_span);
        let t_fault = outage.t_fault.unwrap_or(restore_start);
        let write_latency = outage.slowed.map(|(slowed, healed)| report::WriteLatency {
            before: measure::write_latency(&ledger, workload_start, slowed),
            during: measure::write_latency(&ledger, slowed, healed),
            after: measure::write_latency(&ledger, healed, restore_start),
            objective: spec.objectives.write_p99.map(|objective| {
                let achieved_ms =
                    measure::write_p99_counting_unacknowledged(&ledger, slowed, healed);
                report::LatencyObjective {
                    target_ms: objective.as_millis() as u64,
                    achieved_ms,
                    met: achieved_ms.is_some_and(|p| p <= objective.as_secs_f64() * 1e3),
                }
            }),
        });
        self.events.target(name, |t| {
            t.write_latency = write_latency;
            t.workload = WorkloadReport {
                rate: spec.rate,
                started_ms: Some(workload_start / 1000),
                stopped_ms: Some(restore_start / 1000),
                attempted: ledger.len() as u64,
                ok: ledger.count(workload::WriteOutcome::Ok),
                fail: ledger.count(workload::WriteOutcome::Fail),
                info: ledger.count(workload::WriteOutcome::Info),
                ledger_file: None,
            };
            t.rto.fault_at_ms = Some(t_fault / 1000);
            t.rto.restore_started_at_ms = Some(restore_start / 1000);
            if let Some(d) = &outage.detection {
                t.detection = d.clone();
            }
        });

        let mut phases = RecoveryPhases::new(clock, Phase::Detect, t_fault);
        self.wait_for_prerequisites(spec, &mut phases).await;
        let span = self.events.begin("restore", Some(name));
        let restored = self
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

        self.verify(
            spec,
            target,
            &ledger,
            &catalog,
            restored,
            t_fault,
            outage.injected.unwrap_or(t_fault),
            phases,
            seeded,
            workload_start,
        )
        .await?;
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
            let target = chain.targets[i].as_str();
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
        let found = tokio::time::timeout(limit, target.unasked_outages(injected))
            .await
            .map_err(|_| {
                overran(
                    &format!("reading the logs of {}", spec.name),
                    limit,
                    "timeouts.check",
                )
            })?;
        for outage in &found {
            warn!("{}: an outage no fault caused: {outage}", spec.name);
        }
        self.events
            .target(&spec.name, |t| t.unasked_outages = found);
        Ok(())
    }

    /// Takes backups every `every` from the workload's start until `until`; a backup running at
    /// `until` finishes first (the fault waits for it, and the report shows the delay).
    ///
    /// A backup the service refuses is recorded as failed, and the drill goes on (a finding). A
    /// backup that overruns `timeouts.backup`, or that the host cannot store, ends the drill.
    async fn backups(
        &self,
        spec: &TargetSpec,
        target: &dyn Target,
        start: Micros,
        until: Micros,
        ship: &mpsc::UnboundedSender<Backup>,
    ) -> Result<Vec<Backup>, Stop> {
        let mut catalog = Vec::new();
        let Some(plan) = spec.backup else {
            return Ok(catalog);
        };
        let every = plan.every.as_micros() as Micros;
        let mut next = start;
        let mut id = 0;
        // The one snapshot the restore could still use: a backup it would not choose now, it
        // never will, as newer backups only supersede it.
        let mut held: Option<(u32, Box<dyn HeldSnapshot>)> = None;
        while next < until {
            tokio::time::sleep_until(self.clock.instant_at(next)).await;
            id += 1;
            let began_ms = self.clock.millis();
            let taken = async {
                let dir = self.repo.prepare(&spec.name, id, plan.method)?;
                let taken = target.backup(plan.method, &dir).await?;
                anyhow::Ok((dir, taken))
            };
            let result = tokio::time::timeout(self.scenario.timeouts.backup, taken).await;
            let finished_ms = self.clock.millis();
            let mut entry = BackupReport {
                id,
                began_ms,
                consistent_at_ms: None,
                finished_ms,
                size_bytes: 0,
                max_seq: None,
                error: None,
            };
            match result {
                Ok(Ok((dir, mut taken))) => {
                    let snapshot = taken.held.take();
                    let backup = Backup {
                        target: spec.name.clone(),
                        id,
                        method: plan.method,
                        dir,
                        began_ms,
                        consistent_at_us: taken.consistent_at,
                        finished_ms,
                        artefacts: taken.artefacts,
                        contents: taken.contents,
                        contents_unread: snapshot.as_ref().map(|_| CONTENTS_HELD.to_string()),
                        max_seq: taken.max_seq,
                        details: taken.details,
                    };
                    if let Err(e) = self.repo.record(&backup) {
                        entry.error = Some(format!("write the manifest: {e:#}"));
                    } else {
                        entry.consistent_at_ms = Some(backup.consistent_at_us as f64 / 1000.0);
                        entry.size_bytes = backup.size();
                        entry.max_seq = backup.max_seq;
                        info!(
                            "{}: backup {id} ({}) took {}, {} bytes",
                            spec.name,
                            plan.method,
                            util::seconds(finished_ms - began_ms),
                            entry.size_bytes
                        );
                        catalog.push(backup);
                        if self.offsite.is_some() {
                            // Any backup may be the last to land before a site loss: each
                            // leaves the site described.
                            if let Some(snapshot) = snapshot {
                                self.describe(spec, &mut catalog, id, snapshot).await?;
                            }
                            let _ = ship.send(catalog.last().expect("just pushed").clone());
                        } else {
                            let chosen = choose_backup(
                                &catalog,
                                spec.restore,
                                self.clock.micros(),
                                &self.clock,
                            )
                            .map(|b| b.id);
                            if chosen == Some(id) {
                                held = snapshot.map(|s| (id, s));
                            }
                            held = held.filter(|(id, _)| Some(*id) == chosen);
                        }
                    }
                }
                Ok(Err(e)) if host_storage_full(&e) => {
                    entry.error = Some(format!("{e:#}"));
                    self.events.target(&spec.name, |t| t.backups.push(entry));
                    return Err(classify(&format!("backup {id} of {}", spec.name), e));
                }
                Ok(Err(e)) => entry.error = Some(format!("{e:#}")),
                Err(_) => {
                    let limit = self.scenario.timeouts.backup;
                    entry.error = Some(format!(
                        "did not finish within {}",
                        humantime::format_duration(limit)
                    ));
                    self.events.target(&spec.name, |t| t.backups.push(entry));
                    return Err(overran(
                        &format!("backup {id} of {}", spec.name),
                        limit,
                        "timeouts.backup",
                    ));
                }
            }
            if let Some(e) = &entry.error {
                warn!("{}: backup {id} failed: {e}", spec.name);
            }
            self.events.target(&spec.name, |t| t.backups.push(entry));
            let now = self.clock.micros();
            while next <= now {
                next += every;
            }
        }
        if let Some((id, snapshot)) = held {
            self.describe(spec, &mut catalog, id, snapshot).await?;
        }
        Ok(catalog)
    }

    /// Ships each backup `backups` hands over to the offsite repository, every
    /// `offsite.every` from the workload's start, and each file of a WAL archive as it is
    /// archived, until `stop`: what landed, and when, goes into the report. An upload in
    /// flight when `stop` comes is abandoned; a shipment whose record was being written when
    /// the site was lost finishes landing before the loss goes on (and is reported).
    async fn ship(
        &self,
        spec: &TargetSpec,
        backups: mpsc::UnboundedReceiver<Backup>,
        stop: CancellationToken,
        workload_start: Micros,
    ) {
        let (Some(offsite), Some(plan)) = (&self.offsite, &self.scenario.offsite) else {
            return;
        };
        let name = spec.name.as_str();
        self.events.target(name, |t| {
            t.offsite = Some(report::OffsiteReport {
                location: offsite.location.clone(),
                ..report::OffsiteReport::default()
            })
        });
        let archives = spec.backup.is_some_and(|b| b.method.archives_wal());
        tokio::join!(
            self.ship_backups(name, offsite, plan.every, backups, &stop, workload_start),
            async {
                if archives {
                    self.ship_archive(name, offsite, &stop).await;
                }
            }
        );
    }

    /// [`Executor::ship`]'s backups: each `every` from the workload's start, whatever
    /// `backups` handed over since.
    async fn ship_backups(
        &self,
        name: &str,
        offsite: &Offsite,
        every: Duration,
        mut backups: mpsc::UnboundedReceiver<Backup>,
        stop: &CancellationToken,
        workload_start: Micros,
    ) {
        let every = every.as_micros() as Micros;
        let mut next = workload_start + every;
        let mut queue = Vec::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(self.clock.instant_at(next)) => {}
            }
            while let Ok(backup) = backups.try_recv() {
                queue.push(backup);
            }
            for backup in std::mem::take(&mut queue) {
                let limit = self.scenario.timeouts.backup;
                match offsite.ship(&backup, &self.clock, stop, limit).await {
                    // Stopped, or the site was lost before its manifest landed.
                    Ok(None) => return,
                    Ok(Some(landed)) => {
                        info!(
                            "{name}: backup {} landed offsite, {} after it was taken",
                            backup.id,
                            util::seconds(landed.lag_ms)
                        );
                        self.events.offsite(name, |o| {
                            o.shipped.push(landed);
                        });
                    }
                    Err(e) => {
                        let why = format!("{e:#}");
                        warn!("{name}: shipping backup {} failed: {why}", backup.id);
                        self.events.offsite(name, |o| {
                            o.errors.push(format!("backup {}: {why}", backup.id));
                        });
                    }
                }
            }
            let now = self.clock.micros();
            while next <= now {
                next += every;
            }
        }
    }

    /// [`Executor::ship`]'s continuous archive: each file as soon as it is whole in the
    /// target's archive (looked for every [`ARCHIVE_POLL`]), oldest name first. A file that
    /// fails to ship is reported once and tried again at the next look, until `stop`.
    async fn ship_archive(&self, name: &str, offsite: &Offsite, stop: &CancellationToken) {
        let archive = self.repo.archive(name);
        let (mut landed, mut failed) = (BTreeSet::new(), BTreeSet::new());
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(ARCHIVE_POLL) => {}
            }
            for file in crate::backup::archived_files(&archive) {
                if landed.contains(&file) {
                    continue;
                }
                let limit = self.scenario.timeouts.backup;
                let shipped = offsite
                    .ship_archived(name, &archive, &file, &self.clock, stop, limit)
                    .await;
                match shipped {
                    Ok(None) => return,
                    Ok(Some(shipment)) => {
                        debug!(
                            "{name}: archived {file} landed offsite, {} after it was archived",
                            util::seconds(shipment.lag_ms)
                        );
                        // A file that failed before and landed on a retry is no failure.
                        let retried = failed.remove(&file);
                        self.events.offsite(name, |o| {
                            o.archive.push(shipment);
                            if retried {
                                let failure = format!("archived {file}: ");
                                o.errors.retain(|e| !e.starts_with(&failure));
                            }
                        });
                        landed.insert(file);
                    }
                    Err(e) => {
                        if failed.insert(file.clone()) {
                            warn!("{name}: shipping archived {file} failed: {e:#}");
                            self.events.offsite(name, |o| {
                                o.errors.push(format!("archived {file}: {e:#}"));
                            });
                        }
                        // Later files wait: the archive lands in order, or not at all.
                        break;
                    }
                }
            }
        }
    }

    /// The `site-loss` every target suffers: the first to get there loses the site for all
    /// (shipping stops, every container, volume and network goes, then the local repository
    /// with each WAL archive in it), and the others share the outcome.
    async fn lose_site(&self) -> anyhow::Result<serde_json::Value> {
        let lost = self
            .site_lost
            .get_or_init(|| async {
                self.site_alive.cancel();
                let shipping_stopped_ms = match &self.offsite {
                    Some(offsite) => {
                        // A shipment landing now finishes first; none lands after.
                        offsite.close().await;
                        Some(self.clock.millis())
                    }
                    None => None,
                };
                let mut details = self.site.lose().await.map_err(|e| format!("{e:#}"))?;
                let root = self.repo.root();
                let (files, bytes) = util::tree_size(root);
                if root.exists() {
                    std::fs::remove_dir_all(root)
                        .map_err(|e| format!("delete {}: {e}", root.display()))?;
                }
                details["deleted"] = serde_json::json!({
                    "repository": root.display().to_string(),
                    "files": files,
                    "bytes": bytes,
                });
                if let Some(ms) = shipping_stopped_ms {
                    details["shipping_stopped_ms"] = ms.into();
                }
                Ok(details)
            })
            .await;
        lost.clone().map_err(|e| anyhow::anyhow!(e))
    }

    /// Reads the contents of backup `id`, the one the restore will use, from its held
    /// snapshot, before any fault can take the snapshot away; bounded by `timeouts.backup`. A
    /// failed read leaves the contents unknown, and the checks comparing them say so.
    async fn describe(
        &self,
        spec: &TargetSpec,
        catalog: &mut [Backup],
        id: u32,
        snapshot: Box<dyn HeldSnapshot>,
    ) -> Result<(), Stop> {
        let span = self.events.begin("describe-backup", Some(&spec.name));
        let limit = self.scenario.timeouts.backup;
        let read = tokio::time::timeout(limit, snapshot.contents())
            .await
            .map_err(|_| {
                overran(
                    &format!("reading the contents of backup {id} of {}", spec.name),
                    limit,
                    "timeouts.backup",
                )
            })?;
        self.events.end(span);
        let backup = catalog
            .iter_mut()
            .find(|b| b.id == id)
            .expect("a held snapshot belongs to a backup in the catalog");
        match read {
            Ok(contents) => {
                backup.contents = contents;
                backup.contents_unread = None;
            }
            Err(e) => {
                warn!(
                    "{}: reading backup {id}'s contents failed: {e:#}",
                    spec.name
                );
                backup.contents_unread = Some(format!("reading its snapshot failed: {e:#}"));
            }
        }
        if let Err(e) = self.repo.record(backup) {
            warn!(
                "{}: cannot rewrite backup {id}'s manifest: {e:#}",
                spec.name
            );
        }
        Ok(())
    }

    /// Fires `faults` on schedule; probing starts with the first fault that hits the service
    /// and runs until a probe fails (detection).
    async fn faults(
        &self,
        spec: &TargetSpec,
        target: &mut dyn Target,
        faults: &[&FaultSpec],
        catalog: &[Backup],
        workload_start: Micros,
    ) -> Result<Outage, Stop> {
        let s = self.scenario;
        let name = spec.name.as_str();
        let clock = self.clock;
        let (fault_tx, fault_rx) = oneshot::channel::<Micros>();
        let mut prober = target.prober();
        let detection = async {
            match fault_rx.await {
                Ok(_) => {
                    let span = self.events.begin("detect", Some(name));
                    let d = measure::detect(prober.as_mut(), &clock, s.timeouts.detect).await;
                    self.events.end(span);
                    Some(d)
                }
                Err(_) => None,
            }
        };
        let injections = async {
            let mut fault_tx = Some(fault_tx);
            let mut outage = Outage {
                t_fault: None,
                injected: None,
                recovery_point: None,
                detection: None,
                slowed: None,
            };
            for f in faults {
                let scheduled = workload_start + f.at.as_micros() as Micros;
                tokio::time::sleep_until(clock.instant_at(scheduled)).await;
                if f.kind == FaultKind::SiteLoss {
                    // A backup of another target still running finishes first, as this
                    // target's own did; the fault's `started_ms` shows the delay.
                    self.site_loss_barrier.wait().await;
                }
                let hits_service =
                    !f.kind.is_latent() && !f.kind.degrades() && outage.t_fault.is_none();
                if hits_service && spec.restore.from_backup() && f.kind != FaultKind::SiteLoss {
                    // The point `before-fault` restores to: the last moment the target was whole.
                    outage.recovery_point = bounded(
                        &format!("capture the recovery point of {name}"),
                        s.timeouts.fault,
                        "timeouts.fault",
                        target.recovery_point(),
                    )
                    .await?;
                    let point = outage.recovery_point.clone();
                    self.events
                        .target(name, |t| t.restore.recovery_point = point);
                }
                let span = self.events.begin(&format!("fault {}", f.kind), Some(name));
                let started = clock.micros();
                let result = bounded(
                    &format!("inject {} into {name}", f.kind),
                    s.timeouts.fault,
                    "timeouts.fault",
                    async {
                        if f.kind == FaultKind::SiteLoss {
                            self.lose_site().await
                        } else {
                            faults::inject(f, target, catalog).await
                        }
                    },
                )
                .await;
                let injected = clock.micros();
                self.events.end(span);
                let mut record = FaultRecord {
                    target: name.into(),
                    kind: f.kind,
                    scheduled_ms: scheduled / 1000,
                    started_ms: started / 1000,
                    injected_at_ms: None,
                    heal_started_ms: None,
                    healed_at_ms: None,
                    details: serde_json::Value::Null,
                    error: None,
                };
                match result {
                    Ok(details) => {
                        info!(
                            "{name}: injected {} at {}",
                            f.kind,
                            util::seconds(injected / 1000)
                        );
                        record.injected_at_ms = Some(injected / 1000);
                        record.details = details;
                        if hits_service {
                            outage.t_fault = Some(started);
                            outage.injected = Some(injected);
                            self.events.outage(name, started);
                            if let Some(tx) = fault_tx.take() {
                                let _ = tx.send(injected);
                            }
                        }
                        if let Some(hold) = f.hold {
                            // The fault lasts `for` from the moment it was in place.
                            tokio::time::sleep_until(clock.instant_at(injected) + hold).await;
                            let span = self.events.begin(&format!("heal {}", f.kind), Some(name));
                            let heal_started = clock.micros();
                            record.heal_started_ms = Some(heal_started / 1000);
                            let healed = bounded(
                                &format!("heal {} of {name}", f.kind),
                                s.timeouts.fault,
                                "timeouts.fault",
                                target.heal(f),
                            )
                            .await;
                            self.events.end(span);
                            if f.kind.degrades() {
                                outage.slowed = Some((injected, heal_started));
                            }
                            match healed {
                                Ok(details) => {
                                    record.healed_at_ms = Some(clock.micros() / 1000);
                                    record.details["heal"] = details;
                                    info!("{name}: healed {}", f.kind);
                                }
                                Err(stop) => {
                                    record.error = Some(stop.message());
                                    self.events.fault(record);
                                    return Err(stop);
                                }
                            }
                        }
                        self.events.fault(record);
                    }
                    Err(stop) => {
                        record.error = Some(stop.message());
                        self.events.fault(record);
                        return Err(stop);
                    }
                }
            }
            Ok::<_, Stop>(outage)
        };
        let (outage, detection) = tokio::join!(injections, detection);
        let mut outage = outage?;
        if let Some(d) = &detection {
            match d.detected_at_ms {
                Some(at) => info!(
                    "{name}: outage detected at {} ({})",
                    util::seconds(at),
                    d.cause.as_deref().unwrap_or("")
                ),
                None => warn!(
                    "{name}: no probe failed within {}; restoring anyway",
                    humantime::format_duration(s.timeouts.detect)
                ),
            }
        }
        outage.detection = detection;
        Ok(outage)
    }

    /// Runs the restore the scenario asks for: crash recovery in place, or the chosen backup
    /// into a fresh container. `Err` only when the restore overran its timeout.
    async fn restore<'c>(
        &self,
        spec: &TargetSpec,
        target: &mut dyn Target,
        catalog: &'c [Backup],
        t_fault: Micros,
        recovery_point: Option<&RecoveryPoint>,
        phases: &mut RecoveryPhases,
    ) -> Result<RestoreOutcome<'c>, Stop> {
        let limit = self.scenario.timeouts.restore;
        let step = format!("restore {}", spec.name);
        let chosen = match spec.restore {
            RestorePoint::Restart => {
                phases.enter(Phase::Restore);
                let mut restored = Restored {
                    recovery_target: Some("crash recovery in place".into()),
                    ..Restored::default()
                };
                let recovered = async {
                    restored.note = target.repair().await?;
                    target.restart(limit).await
                };
                let error = match tokio::time::timeout(limit, recovered).await {
                    Ok(r) => r.err().map(|e| format!("{e:#}")),
                    Err(_) => return Err(overran(&step, limit, "timeouts.restore")),
                };
                return Ok(RestoreOutcome {
                    backup: None,
                    restored,
                    error,
                });
            }
            RestorePoint::InPlace => {
                // The fault has healed; the service must answer again by itself.
                phases.enter(Phase::Restore);
                let restored = Restored {
                    recovery_target: Some(
                        "none: the fault healed and the service serves again by itself".into(),
                    ),
                    ..Restored::default()
                };
                let error = match tokio::time::timeout(limit, target.serve_again(limit)).await {
                    Ok(r) => r.err().map(|e| format!("{e:#}")),
                    Err(_) => return Err(overran(&step, limit, "timeouts.restore")),
                };
                return Ok(RestoreOutcome {
                    backup: None,
                    restored,
                    error,
                });
            }
            point => choose_backup(catalog, point, t_fault, &self.clock),
        };
        let Some(backup) = chosen else {
            let error = format!("no completed backup matches `{}`", spec.restore.label());
            return Ok(RestoreOutcome {
                backup: None,
                restored: Restored::default(),
                error: Some(error),
            });
        };
        if self.site_lost.get().is_some()
            && let Some(offsite) = &self.offsite
        {
            // The DR site has only the offsite copy: fetch and decrypt it first.
            phases.enter(Phase::Fetch);
            match tokio::time::timeout(limit, offsite.fetch(backup, &self.clock)).await {
                Ok(Ok(fetched)) => {
                    info!(
                        "{}: fetched backup {} from offsite ({} bytes in {})",
                        spec.name,
                        backup.id,
                        fetched.bytes,
                        util::seconds(fetched.fetch_ms)
                    );
                    self.events.offsite(&spec.name, |o| {
                        o.fetched = Some(fetched);
                    });
                }
                Ok(Err(e)) => {
                    return Ok(RestoreOutcome {
                        backup: Some(backup),
                        restored: Restored::default(),
                        error: Some(format!("fetch backup {} from offsite: {e:#}", backup.id)),
                    });
                }
                Err(_) => return Err(overran(&step, limit, "timeouts.restore")),
            }
        }
        let request = RestoreRequest {
            backup,
            point: spec.restore,
            recovery_point,
            catalog,
        };
        let (restored, error) =
            match tokio::time::timeout(limit, target.restore(&request, phases)).await {
                Ok(Ok(restored)) => (restored, None),
                Ok(Err(e)) => (Restored::default(), Some(format!("{e:#}"))),
                Err(_) => return Err(overran(&step, limit, "timeouts.restore")),
            };
        Ok(RestoreOutcome {
            backup: Some(backup),
            restored,
            error,
        })
    }

    /// Reads the workload back against the ledger, runs the checks, and when all pass, a fresh
    /// write and read-back: that instant is the recovery (`t_recovered`). Records the RTO from
    /// `t_fault` (when the injection of the first fault that hit the service began, or the
    /// restore's start when none did) and the RPO against the writes acknowledged before
    /// `injected` (when that injection returned).
    #[allow(clippy::too_many_arguments)]
    async fn verify(
        &self,
        spec: &TargetSpec,
        target: &mut dyn Target,
        ledger: &Ledger,
        catalog: &[Backup],
        outcome: RestoreOutcome<'_>,
        t_fault: Micros,
        injected: Micros,
        mut phases: RecoveryPhases,
        seeded: &Seeded,
        workload_start: Micros,
    ) -> Result<(), Stop> {
        let s = self.scenario;
        let name = spec.name.as_str();
        let clock = self.clock;
        let (restored, restore_error) = (outcome.backup, outcome.error);
        if let Some(e) = &restore_error {
            warn!("{name}: restore failed: {e}");
        }
        if let Some(note) = &outcome.restored.note {
            warn!("{name}: {note}");
        }

        let span = self.events.begin("verify", Some(name));
        phases.enter(Phase::Verify);
        let limit = s.timeouts.check;
        let step_overran =
            |step: &str| overran(&format!("{step} of {name}"), limit, "timeouts.check");
        let evidence = Evidence {
            backup: restored,
            catalog,
            fault_began: t_fault,
            rpo_objective: spec.objectives.rpo,
            seed: &seeded.facts,
        };
        let target_ref: &dyn Target = target;
        // `row-counts` and `checksums` compare the same reading: it is taken once.
        let restored_contents = tokio::sync::OnceCell::new();
        // Everything after the restore reads side by side: the workload's writes, the seed, and
        // every check but `ledger`, which compares the writes read back with the ledger.
        let seed_read = tokio::time::Instant::now();
        let (read, seed_now, checked) = tokio::join!(
            tokio::time::timeout(limit, target_ref.read_back()),
            async {
                let facts = tokio::time::timeout(limit, target_ref.seed_facts()).await;
                (facts, seed_read.elapsed())
            },
            try_join_all(
                spec.checks
                    .iter()
                    .filter(|&&c| c != CheckKind::Ledger)
                    .map(|&c| run_check(c, target_ref, &evidence, &restored_contents, limit)),
            )
        );
        let comparison = match read {
            Ok(Ok(read)) => {
                let comparison = compare(ledger, &read);
                if self.chain.as_ref().is_some_and(|c| c.writes_to(name)) {
                    let present = read.iter().map(|&(seq, _)| seq).collect();
                    self.recovered
                        .lock()
                        .expect("not poisoned")
                        .insert(name.to_string(), present);
                }
                Ok(comparison)
            }
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => return Err(step_overran("reading the workload back")),
        };
        let (seed_now, seed_took) = seed_now;
        let seed_now = match seed_now {
            Ok(r) => r.map_err(|e| format!("{e:#}")),
            Err(_) => return Err(step_overran("reading the seed back")),
        };
        let mut seed_check = checks::seed(&seeded.facts, seed_now.clone());
        seed_check.duration_ms = seed_took.as_millis() as u64;
        let mut checked = checked
            .map_err(|o| step_overran(&format!("check {}", o.check)))?
            .into_iter();
        let mut results: Vec<CheckResult> = spec
            .checks
            .iter()
            .map(|&c| match c {
                CheckKind::Ledger => checks::ledger(&comparison),
                _ => checked.next().expect("one result per check"),
            })
            .collect();
        results.push(seed_check);
        let all_passed =
            restore_error.is_none() && results.iter().all(|c| c.status == CheckStatus::Passed);
        let mut recovered = None;
        let mut rto_note = None;
        if all_passed {
            match tokio::time::timeout(limit, target.round_trip()).await {
                Ok(Ok(())) => recovered = Some(clock.micros()),
                Ok(Err(e)) => {
                    rto_note = Some(format!("the fresh write and read-back failed: {e:#}"))
                }
                Err(_) => return Err(step_overran("the fresh write and read-back")),
            }
        } else if restore_error.is_some() {
            rto_note = Some("the restore failed".into());
        } else {
            let failing: Vec<String> = results
                .iter()
                .filter(|c| c.status != CheckStatus::Passed)
                .map(|c| c.name.to_string())
                .collect();
            rto_note = Some(format!(
                "not recovered: check(s) {} did not pass",
                failing.join(", ")
            ));
        }
        self.events.end(span);

        let end_of_phases = recovered.unwrap_or_else(|| clock.micros());
        let ledger_file = self.write_ledger(name, ledger, &comparison);
        let seed_gone = checks::seed_gone(&seeded.facts, &seed_now);
        let seed_changed = results
            .iter()
            .any(|c| c.name == CheckKind::Seed && c.status == CheckStatus::Failed);
        let mut rpo = rpo_report(spec, ledger, &comparison, injected, workload_start);
        if seed_changed {
            seed_loss(
                &mut rpo,
                ledger,
                &comparison,
                injected,
                seeded.at,
                seed_gone,
            );
        }
        if let (false, Some(note)) = (rpo.met, &outcome.restored.note) {
            // Damage to the backup chain is the reason the RPO was missed.
            rpo.note = Some(rpo.note.map_or(note.clone(), |n| format!("{n}; {note}")));
        }
        let rto_achieved = recovered.map(|r| (r - t_fault) / 1000);
        self.events
            .recovered(name, rto_achieved.map(Duration::from_millis));
        self.events.target(name, |t| {
            t.rto.phases = report::PhaseDurations::from_durations(&phases.durations(end_of_phases));
            t.rto.achieved_ms = rto_achieved;
            t.rto.met = rto_achieved.is_some_and(|a| a <= t.rto.target_ms);
            t.rto.recovered_at_ms = recovered.map(|r| r / 1000);
            t.rto.note = rto_note;
            t.rpo = rpo;
            t.checks = results;
            t.restore.backup_id = restored.map(|b| b.id);
            t.restore.error = restore_error;
            t.restore.recovery_target = outcome.restored.recovery_target.clone();
            t.restore.reached = outcome.restored.reached.clone();
            t.restore.prepared = outcome.restored.prepared.clone();
            t.restore.note = outcome.restored.note.clone();
            t.workload.ledger_file = ledger_file;
        });
        match rto_achieved {
            Some(ms) => info!("{name}: recovered {} after the fault", util::seconds(ms)),
            None => warn!("{name}: not recovered"),
        }
        Ok(())
    }

    /// Writes the ledger as CSV (`seq,invoked_ms,completed_ms,outcome,lost`); returns its path
    /// relative to the run folder.
    fn write_ledger(
        &self,
        target: &str,
        ledger: &Ledger,
        comparison: &Result<Comparison, String>,
    ) -> Option<String> {
        let name = format!("ledger-{target}.csv");
        let written = util::write_atomically_with(&self.dir.join(&name), |out| {
            ledger.write_csv(comparison.as_ref().ok(), out)
        });
        match written {
            Ok(()) => Some(name),
            Err(e) => {
                warn!("cannot write {name}: {e:#}");
                None
            }
        }
    }
}

/// The backup a restore to `point` uses: the newest one (`latest`), the newest finished before
/// the fault (`before-fault`), or the newest finished by a wall-clock time (a base backup
/// cannot stop recovery before its own end). `None` for `restart`, or when none matches.
pub fn choose_backup<'c>(
    catalog: &'c [Backup],
    point: RestorePoint,
    t_fault: Micros,
    clock: &Clock,
) -> Option<&'c Backup> {
    match point {
        RestorePoint::Restart | RestorePoint::InPlace => None,
        RestorePoint::Latest => catalog.last(),
        RestorePoint::BeforeFault => catalog
            .iter()
            .rev()
            .find(|b| b.finished_ms * 1000 <= t_fault),
        RestorePoint::At(when) => catalog
            .iter()
            .rev()
            .find(|b| clock.wall_at(b.finished_ms * 1000) <= when),
    }
}

/// Runs `check` against the restored `target`, bounded by `limit`: the generic checks here,
/// the kind's own through [`Target::check`].
async fn run_check(
    check: CheckKind,
    target: &dyn Target,
    evidence: &Evidence<'_>,
    contents: &tokio::sync::OnceCell<Result<Contents, String>>,
    limit: Duration,
) -> Result<CheckResult, Overran> {
    let started = tokio::time::Instant::now();
    let work = async {
        match check {
            CheckKind::Ledger => unreachable!("the ledger check compares the read-back, after it"),
            CheckKind::RowCounts | CheckKind::Checksums => {
                let Some(backup) = evidence.backup else {
                    return CheckResult::unknown(check, "no backup was restored to compare with");
                };
                if let Some(why) = &backup.contents_unread {
                    return CheckResult::unknown(
                        check,
                        format!("backup {}'s contents are unknown: {why}", backup.id),
                    );
                }
                let now = contents
                    .get_or_init(|| async { target.contents().await.map_err(|e| format!("{e:#}")) })
                    .await;
                match now {
                    Ok(now) => checks::compare_contents(check, &backup.contents, now, backup.id),
                    Err(e) => CheckResult::unknown(
                        check,
                        format!("could not read the restored data: {e}"),
                    ),
                }
            }
            CheckKind::BackupIntegrity => checks::backup_integrity(evidence),
            CheckKind::BackupSize => checks::backup_size(evidence),
            CheckKind::ForeignKeys
            | CheckKind::Amcheck
            | CheckKind::PgVerifybackup
            | CheckKind::BackupAge
            | CheckKind::WalContinuity
            | CheckKind::RedisCheck
            | CheckKind::Definitions => target.check(check, evidence).await,
            CheckKind::Query => CheckResult::unknown(check, "queries run in restore tests"),
            CheckKind::Seed => checks::seed(
                evidence.seed,
                target.seed_facts().await.map_err(|e| format!("{e:#}")),
            ),
        }
    };
    let mut result = tokio::time::timeout(limit, work)
        .await
        .map_err(|_| Overran { check, limit })?;
    result.duration_ms = started.elapsed().as_millis() as u64;
    Ok(result)
}

/// The seed did not come back as seeded: the loss reaches back past the workload, to the
/// dataset's creation (`seeded_at`), and misses the RPO objective whatever its size. When
/// nothing survived at all (no seeded row, no acknowledged write), it is a total loss
/// (docs/measurement.md §6).
fn seed_loss(
    rpo: &mut Rpo,
    ledger: &Ledger,
    comparison: &Result<Comparison, String>,
    injected: Micros,
    seeded_at: Micros,
    seed_gone: bool,
) {
    let until = ledger
        .last_acked_before(injected)
        .map_or(injected, |w| w.completed);
    rpo.achieved_ms = Some(until.saturating_sub(seeded_at) / 1000);
    rpo.met = false;
    let nothing_survived = comparison.as_ref().is_ok_and(|c| c.recovered == 0);
    rpo.total_loss = seed_gone && nothing_survived;
    let why = if rpo.total_loss {
        "total loss: nothing of the dataset survived, neither the seed nor any acknowledged write"
    } else {
        "the seeded data did not survive as seeded (check `seed`): the loss reaches back to the dataset's creation"
    };
    rpo.note = Some(
        rpo.note
            .take()
            .map_or(why.to_string(), |n| format!("{why}; {n}")),
    );
}

/// The RPO of one target: from the ledger against what the restored target holds, counting
/// the writes acknowledged before `injected` (the fault's injection returned).
fn rpo_report(
    spec: &TargetSpec,
    ledger: &Ledger,
    comparison: &Result<Comparison, String>,
    injected: Micros,
    workload_start: Micros,
) -> Rpo {
    let mut rpo = Rpo {
        target_ms: spec.objectives.rpo.as_millis() as u64,
        max_lost_writes: spec.objectives.max_lost_writes,
        acked_writes: ledger.count(workload::WriteOutcome::Ok),
        last_acked_before_fault_seq: ledger.last_acked_before(injected).map(|w| w.seq),
        ..Rpo::default()
    };
    match comparison {
        Err(e) => rpo.note = Some(format!("unknown: {e}")),
        Ok(c) => {
            let achieved = measure::rpo(ledger, c, injected, workload_start);
            rpo.achieved_ms = Some(achieved.as_millis() as u64);
            rpo.lost_writes = c.lost.len() as u64;
            rpo.holes = c.holes;
            rpo.unacked_present = c.unacked_present;
            rpo.unexpected = c.unexpected.len() as u64;
            rpo.mismatched = c.mismatched.len() as u64;
            rpo.failed_present = c.failed_present.len() as u64;
            rpo.duplicates = c.duplicates;
            rpo.recovered_prefix_seq = c.r_star;
            if let Some(&first) = c.lost.first() {
                rpo.first_lost_seq = Some(first);
                rpo.first_lost_acked_at_ms = ledger.get(first).map(|w| w.completed as f64 / 1000.0);
            }
            let within_loss = spec
                .objectives
                .max_lost_writes
                .is_none_or(|m| rpo.lost_writes <= m);
            rpo.met = achieved <= spec.objectives.rpo && within_loss;
            if !within_loss {
                rpo.note = Some(format!(
                    "{} acknowledged writes lost; at most {} allowed",
                    rpo.lost_writes,
                    spec.objectives.max_lost_writes.unwrap_or(0)
                ));
            }
        }
    }
    rpo
}
