//! Offsite shipping beside a target's drill: each completed backup every `offsite.every`, and
//! each file of a WAL archive as it is archived, until the restore begins or the site is lost.
//! What landed, and when, reaches the report as [`TargetEvent`]s.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::events::TargetEvent;
use super::executor::Executor;
use crate::backup::Backup;
use crate::clock::Micros;
use crate::offsite::Offsite;
use crate::spec::TargetSpec;
use crate::util;

/// How often shipping looks for newly archived files.
const ARCHIVE_POLL: Duration = Duration::from_millis(200);

impl Executor<'_> {
    /// Ships each backup `backups` hands over, every `offsite.every` from the workload's start,
    /// and each file of a WAL archive as it is archived, until `stop`. An upload in flight when
    /// `stop` comes is abandoned; a shipment whose record was being written when the site was
    /// lost finishes landing before the loss goes on (and is reported).
    pub(super) async fn ship(
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
        self.events.target(
            name,
            TargetEvent::ShippingStarted {
                location: offsite.location.clone(),
            },
        );
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
                        self.events.target(name, TargetEvent::Shipped(landed));
                    }
                    Err(e) => {
                        let why = format!("{e:#}");
                        warn!("{name}: shipping backup {} failed: {why}", backup.id);
                        self.events.target(
                            name,
                            TargetEvent::ShippingFailed(format!("backup {}: {why}", backup.id)),
                        );
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
                        self.events.target(
                            name,
                            TargetEvent::ArchiveShipped {
                                shipment,
                                file: file.clone(),
                                retried,
                            },
                        );
                        landed.insert(file);
                    }
                    Err(e) => {
                        if failed.insert(file.clone()) {
                            warn!("{name}: shipping archived {file} failed: {e:#}");
                            self.events.target(
                                name,
                                TargetEvent::ShippingFailed(format!("archived {file}: {e:#}")),
                            );
                        }
                        // Later files wait: the archive lands in order, or not at all.
                        break;
                    }
                }
            }
        }
    }
}
