//! Scheduled backups until the first fault, the one read of the contents of the backup the
//! restore will use, and the choice of that backup. The output is the target's catalog: every
//! completed backup, oldest first.

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::events::TargetEvent;
use super::executor::Executor;
use super::stop::{Stop, classify, host_storage_full, overran};
use crate::backup::{Backup, CONTENTS_HELD, HeldSnapshot};
use crate::clock::{Clock, Micros};
use crate::report::BackupReport;
use crate::spec::{RestorePoint, TargetSpec};
use crate::targets::Target;
use crate::util;

/// Every completed backup of a target, oldest first.
pub type Catalog = Vec<Backup>;

/// A backup just taken, with the snapshot it holds open (a dump's), until it is described.
struct Taken {
    backup: Backup,
    snapshot: Option<Box<dyn HeldSnapshot>>,
}

impl Executor<'_> {
    /// Takes backups every `every` from the workload's start until `until`; a backup running at
    /// `until` finishes first (the fault waits for it, and the report shows the delay). With
    /// `[offsite]`, each completed backup is described and handed to `ship`.
    ///
    /// A backup the service refuses is recorded as failed, and the drill goes on (a finding). A
    /// backup that overruns `timeouts.backup`, or that the host cannot store, ends the drill.
    pub(super) async fn backups(
        &self,
        spec: &TargetSpec,
        target: &dyn Target,
        start: Micros,
        until: Micros,
        ship: &mpsc::UnboundedSender<Backup>,
    ) -> Result<Catalog, Stop> {
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
            let (entry, taken) = self.backup(spec, target, id).await?;
            if let Some(Taken { backup, snapshot }) = taken {
                catalog.push(backup);
                if self.offsite.is_some() {
                    // Any backup may be the last to land before a site loss: each leaves the
                    // site described.
                    if let Some(snapshot) = snapshot {
                        self.describe(spec, &mut catalog, id, snapshot).await?;
                    }
                    let _ = ship.send(catalog.last().expect("just pushed").clone());
                } else {
                    let chosen =
                        choose_backup(&catalog, spec.restore, self.clock.micros(), &self.clock)
                            .map(|b| b.id);
                    if chosen == Some(id) {
                        held = snapshot.map(|s| (id, s));
                    }
                    held = held.filter(|(id, _)| Some(*id) == chosen);
                }
            }
            if let Some(e) = &entry.error {
                warn!("{}: backup {id} failed: {e}", spec.name);
            }
            self.events.target(&spec.name, TargetEvent::Backup(entry));
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

    /// Takes backup `id`, bounded by `timeouts.backup`: its report entry and, when it completed
    /// and its manifest was written, the backup.
    async fn backup(
        &self,
        spec: &TargetSpec,
        target: &dyn Target,
        id: u32,
    ) -> Result<(BackupReport, Option<Taken>), Stop> {
        let plan = spec.backup.expect("a target with backups");
        let began_ms = self.clock.millis();
        let taken = async {
            let dir = self.repo.prepare(&spec.name, id, plan.method)?;
            let taken = target.backup(plan.method, &dir).await?;
            anyhow::Ok((dir, taken))
        };
        let limit = self.scenario.timeouts.backup;
        let result = tokio::time::timeout(limit, taken).await;
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
        let step = format!("backup {id} of {}", spec.name);
        let (dir, mut taken) = match result {
            Ok(Ok(taken)) => taken,
            Ok(Err(e)) if host_storage_full(&e) => {
                entry.error = Some(format!("{e:#}"));
                self.events.target(&spec.name, TargetEvent::Backup(entry));
                return Err(classify(&step, e));
            }
            Ok(Err(e)) => {
                entry.error = Some(format!("{e:#}"));
                return Ok((entry, None));
            }
            Err(_) => {
                entry.error = Some(format!(
                    "did not finish within {}",
                    humantime::format_duration(limit)
                ));
                self.events.target(&spec.name, TargetEvent::Backup(entry));
                return Err(overran(&step, limit, "timeouts.backup"));
            }
        };
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
            return Ok((entry, None));
        }
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
        Ok((entry, Some(Taken { backup, snapshot })))
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
        RestorePoint::Restart | RestorePoint::InPlace | RestorePoint::Failover => None,
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
