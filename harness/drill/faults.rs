//! The faults of one target, fired on schedule, with detection from the first that hits the
//! service; and the loss of the whole site, which every target of a platform shares. The
//! output is the [`Outage`]: when it began, what the probes saw, and what was captured before.

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::backups::Catalog;
use super::events::TargetEvent;
use super::executor::Executor;
use super::stop::{Stop, bounded};
use crate::clock::Micros;
use crate::faults;
use crate::measure::{self, Detection};
use crate::report::FaultRecord;
use crate::spec::{FaultKind, FaultSpec, TargetSpec};
use crate::targets::{RecoveryPoint, Target};
use crate::util;

/// What the fault step learned.
#[derive(Default)]
pub struct Outage {
    /// When the injection of the first fault that hit the service began: the outage's start
    /// (run µs); `None`: none did.
    pub t_fault: Option<Micros>,
    /// When that injection returned.
    pub injected: Option<Micros>,
    pub recovery_point: Option<RecoveryPoint>,
    pub detection: Option<Detection>,
    /// A `latency` fault's span: its injection's return to its heal's start (run µs).
    pub slowed: Option<(Micros, Micros)>,
}

/// A temporary fault healed: when the heal began and returned (run µs), and what it did.
struct Healed {
    started: Micros,
    ended: Micros,
    details: serde_json::Value,
}

impl Executor<'_> {
    /// Fires `faults` on schedule; probing starts with the first fault that hits the service
    /// and runs until a probe fails (detection).
    pub(super) async fn faults(
        &self,
        spec: &TargetSpec,
        target: &mut dyn Target,
        faults: &[&FaultSpec],
        catalog: &Catalog,
        workload_start: Micros,
    ) -> Result<Outage, Stop> {
        let name = spec.name.as_str();
        let (fault_tx, fault_rx) = oneshot::channel::<Micros>();
        let mut prober = target.prober();
        let detection = async {
            fault_rx.await.ok()?;
            let span = self.events.begin("detect", Some(name));
            let limit = self.scenario.timeouts.detect;
            let d = measure::detect(prober.as_mut(), &self.clock, limit).await;
            self.events.end(span);
            Some(d)
        };
        let injections = async {
            let mut detect = Some(fault_tx);
            let mut outage = Outage::default();
            for f in faults {
                let scheduled = workload_start + f.at.as_micros() as Micros;
                tokio::time::sleep_until(self.clock.instant_at(scheduled)).await;
                self.fire(
                    spec,
                    target,
                    f,
                    scheduled,
                    catalog,
                    &mut outage,
                    &mut detect,
                )
                .await?;
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
                    humantime::format_duration(self.scenario.timeouts.detect)
                ),
            }
        }
        outage.detection = detection;
        Ok(outage)
    }

    /// Fires fault `f`, due at `scheduled`, and heals it after its `for`. The first fault that
    /// hits the service starts the outage (`outage.t_fault`) and detection (`detect`). The
    /// fault's record goes to the report, whether it was injected or failed.
    #[allow(clippy::too_many_arguments)]
    async fn fire(
        &self,
        spec: &TargetSpec,
        target: &mut dyn Target,
        f: &FaultSpec,
        scheduled: Micros,
        catalog: &Catalog,
        outage: &mut Outage,
        detect: &mut Option<oneshot::Sender<Micros>>,
    ) -> Result<(), Stop> {
        let name = spec.name.as_str();
        let (clock, limit) = (self.clock, self.scenario.timeouts.fault);
        if f.kind == FaultKind::SiteLoss {
            // A backup of another target still running finishes first, as this target's own
            // did; the fault's `started_ms` shows the delay.
            self.site_loss_barrier.wait().await;
        }
        let hits_service = !f.kind.is_latent() && !f.kind.degrades() && outage.t_fault.is_none();
        if hits_service && f.kind != FaultKind::SiteLoss {
            // How far behind each standby was when the outage began (a single node has none).
            let state = bounded(
                &format!("read the replication of {name}"),
                limit,
                "timeouts.fault",
                async { Ok(target.replication().await) },
            )
            .await?;
            if let Some(state) = state {
                self.events.target(name, TargetEvent::Replication(state));
            }
        }
        if hits_service && spec.restore.from_backup() && f.kind != FaultKind::SiteLoss {
            // The point `before-fault` restores to: the last moment the target was whole.
            outage.recovery_point = bounded(
                &format!("capture the recovery point of {name}"),
                limit,
                "timeouts.fault",
                target.recovery_point(),
            )
            .await?;
            if let Some(point) = outage.recovery_point.clone() {
                self.events.target(name, TargetEvent::RecoveryPoint(point));
            }
        }
        let span = self.events.begin(&format!("fault {}", f.kind), Some(name));
        let started = clock.micros();
        let result = bounded(
            &format!("inject {} into {name}", f.kind),
            limit,
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
        let ended = match result {
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
                    if let Some(tx) = detect.take() {
                        let _ = tx.send(injected);
                    }
                }
                match f.hold {
                    Some(hold) => {
                        let healed = self.heal(name, target, f, injected, hold).await;
                        if f.kind.degrades() {
                            outage.slowed = healed.as_ref().ok().map(|h| (injected, h.started));
                        }
                        healed.map(|h| {
                            record.heal_started_ms = Some(h.started / 1000);
                            record.healed_at_ms = Some(h.ended / 1000);
                            record.details["heal"] = h.details;
                        })
                    }
                    None => Ok(()),
                }
            }
            Err(stop) => Err(stop),
        };
        if let Err(stop) = &ended {
            record.error = Some(stop.message());
        }
        self.events.fault(record);
        ended
    }

    /// Heals a temporary fault `hold` after it was in place (`injected`), a `heal` span on the
    /// timeline.
    async fn heal(
        &self,
        name: &str,
        target: &mut dyn Target,
        f: &FaultSpec,
        injected: Micros,
        hold: std::time::Duration,
    ) -> Result<Healed, Stop> {
        tokio::time::sleep_until(self.clock.instant_at(injected) + hold).await;
        let span = self.events.begin(&format!("heal {}", f.kind), Some(name));
        let started = self.clock.micros();
        let healed = bounded(
            &format!("heal {} of {name}", f.kind),
            self.scenario.timeouts.fault,
            "timeouts.fault",
            async {
                if f.kind.is_outage() {
                    target.outages().heal(f).await
                } else {
                    target.heal(f).await
                }
            },
        )
        .await;
        self.events.end(span);
        let details = healed?;
        info!("{name}: healed {}", f.kind);
        Ok(Healed {
            started,
            ended: self.clock.micros(),
            details,
        })
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
}
