//! The recovery path a scenario asks for: crash recovery in place, waiting for a healed service,
//! or the chosen backup (fetched from offsite first after a site loss) restored into a fresh
//! container. The output is a [`Restoration`]; a failed restore is a finding, not a stop.

use tracing::info;

use super::backups::{Catalog, choose_backup};
use super::events::TargetEvent;
use super::executor::Executor;
use super::stop::{Stop, within};
use crate::backup::Backup;
use crate::clock::Micros;
use crate::measure::{Phase, RecoveryPhases};
use crate::spec::{RestorePoint, TargetSpec};
use crate::targets::{RecoveryPoint, RestoreRequest, Restored, Target};
use crate::util;

/// What a restore did: the backup it used, what the service reached, and the error that stopped
/// it (a finding, not a stop of the drill).
#[derive(Default)]
pub struct Restoration<'c> {
    pub backup: Option<&'c Backup>,
    pub restored: Restored,
    pub error: Option<String>,
}

impl Restoration<'_> {
    fn failed(error: String) -> Self {
        Restoration {
            error: Some(error),
            ..Restoration::default()
        }
    }
}

impl Executor<'_> {
    /// Runs the restore the scenario asks for: crash recovery in place, or the chosen backup
    /// into a fresh container. `Err` only when the restore overran its timeout.
    pub(super) async fn restore<'c>(
        &self,
        spec: &TargetSpec,
        target: &mut dyn Target,
        catalog: &'c Catalog,
        t_fault: Micros,
        recovery_point: Option<&RecoveryPoint>,
        phases: &mut RecoveryPhases,
    ) -> Result<Restoration<'c>, Stop> {
        let limit = self.scenario.timeouts.restore;
        let step = format!("restore {}", spec.name);
        let in_place = |recovery_target: &str| Restored {
            recovery_target: Some(recovery_target.into()),
            ..Restored::default()
        };
        let point = match spec.restore {
            RestorePoint::Restart => {
                phases.enter(Phase::Restore);
                let mut restored = in_place("crash recovery in place");
                let recovered = async {
                    restored.note = target.repair().await?;
                    target.restart(limit).await
                };
                let error = within(&step, limit, "timeouts.restore", recovered)
                    .await?
                    .err()
                    .map(|e| format!("{e:#}"));
                return Ok(Restoration {
                    backup: None,
                    restored,
                    error,
                });
            }
            RestorePoint::InPlace => {
                // The fault has healed; the service must answer again by itself.
                phases.enter(Phase::Restore);
                let restored =
                    in_place("none: the fault healed and the service serves again by itself");
                let error = within(&step, limit, "timeouts.restore", target.serve_again(limit))
                    .await?
                    .err()
                    .map(|e| format!("{e:#}"));
                return Ok(Restoration {
                    backup: None,
                    restored,
                    error,
                });
            }
            RestorePoint::Failover => {
                // A standby takes over: the target enters its phases (`promote` or `elect`,
                // then `reconnect`) as it goes.
                let (restored, error) = match within(
                    &step,
                    limit,
                    "timeouts.restore",
                    target.fail_over(phases, limit),
                )
                .await?
                {
                    Ok(restored) => (restored, None),
                    Err(e) => (Restored::default(), Some(format!("{e:#}"))),
                };
                return Ok(Restoration {
                    backup: None,
                    restored,
                    error,
                });
            }
            point => point,
        };
        let Some(backup) = choose_backup(catalog, point, t_fault, &self.clock) else {
            return Ok(Restoration::failed(format!(
                "no completed backup matches `{}`",
                spec.restore.label()
            )));
        };
        if self.site_lost.get().is_some()
            && let Some(offsite) = &self.offsite
        {
            // The DR site has only the offsite copy: fetch and decrypt it first.
            phases.enter(Phase::Fetch);
            match within(
                &step,
                limit,
                "timeouts.restore",
                offsite.fetch(backup, &self.clock),
            )
            .await?
            {
                Ok(fetched) => {
                    info!(
                        "{}: fetched backup {} from offsite ({} bytes in {})",
                        spec.name,
                        backup.id,
                        fetched.bytes,
                        util::seconds(fetched.fetch_ms)
                    );
                    self.events
                        .target(&spec.name, TargetEvent::FetchedOffsite(fetched));
                }
                Err(e) => {
                    return Ok(Restoration {
                        backup: Some(backup),
                        ..Restoration::failed(format!(
                            "fetch backup {} from offsite: {e:#}",
                            backup.id
                        ))
                    });
                }
            }
        }
        let request = RestoreRequest {
            backup,
            point: spec.restore,
            recovery_point,
            catalog,
        };
        let (restored, error) = match within(
            &step,
            limit,
            "timeouts.restore",
            target.restore(&request, phases),
        )
        .await?
        {
            Ok(restored) => (restored, None),
            Err(e) => (Restored::default(), Some(format!("{e:#}"))),
        };
        Ok(Restoration {
            backup: Some(backup),
            restored,
            error,
        })
    }
}
