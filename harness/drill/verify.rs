//! After the restore: the workload's writes read back against the ledger, the seed read back,
//! every check, and when all passed, a fresh write read back, the instant of recovery. The
//! output is the [`Recovery`] the report takes, with the RPO judged from the ledger. When the
//! restore failed, nothing pretends to read the lost service: what needs it is "not run".

use futures::future::try_join_all;
use tokio::sync::OnceCell;
use tracing::{info, warn};

use super::backups::Catalog;
use super::events::{Recovery, TargetEvent};
use super::executor::{Executor, Seeded};
use super::restore::Restoration;
use super::stop::{Stop, within};
use crate::backup::Contents;
use crate::checks::{self, CheckResult, CheckStatus, Evidence, Overran};
use crate::clock::Micros;
use crate::measure::rpo::Rpo;
use crate::measure::{Phase, RecoveryPhases};
use crate::spec::{CheckKind, TargetSpec};
use crate::targets::Target;
use crate::util;
use crate::workload::{Ledger, ledger::compare};

/// What a check, the ledger or the seed say when the restore failed.
pub const RESTORE_FAILED: &str = "not run: the restore failed";

/// A drill's recovery, up to its verification.
pub(super) struct Restored<'a, 'c> {
    pub ledger: &'a Ledger,
    pub catalog: &'c Catalog,
    pub restoration: Restoration<'c>,
    /// When the first service fault's injection began (or the restore, with none).
    pub t_fault: Micros,
    /// When that injection returned: the RPO counts the writes acknowledged before it.
    pub injected: Micros,
    pub phases: RecoveryPhases,
    pub seeded: &'a Seeded,
    pub workload_start: Micros,
}

impl Executor<'_> {
    /// Verifies a drill's recovery and hands its [`Recovery`] to the report: the RTO from
    /// `t_fault`, the RPO from the ledger against what the restored target holds.
    pub(super) async fn verify(
        &self,
        spec: &TargetSpec,
        target: &mut dyn Target,
        r: Restored<'_, '_>,
    ) -> Result<(), Stop> {
        let name = spec.name.as_str();
        let Restored {
            ledger,
            catalog,
            restoration,
            t_fault,
            injected,
            mut phases,
            seeded,
            workload_start,
        } = r;
        let Restoration {
            backup,
            restored,
            error,
        } = restoration;
        if let Some(e) = &error {
            warn!("{name}: restore failed: {e}");
        }
        if let Some(note) = &restored.note {
            warn!("{name}: {note}");
        }

        let span = self.events.begin("verify", Some(name));
        phases.enter(Phase::Verify);
        let evidence = Evidence {
            backup,
            catalog,
            fault_began: t_fault,
            rpo_objective: spec.objectives.rpo,
            seed: &seeded.facts,
        };
        let read = if error.is_some() {
            self.backup_checks_only(spec, target, &evidence).await?
        } else {
            self.read_backs(spec, target, &evidence).await?
        };
        let comparison = read.writes.map(|read| {
            if self.chain.as_ref().is_some_and(|c| c.writes_to(name)) {
                let present = read.iter().map(|&(seq, _)| seq).collect();
                self.recovered
                    .lock()
                    .expect("not poisoned")
                    .insert(name.to_string(), present);
            }
            compare(ledger, &read)
        });
        let mut checks: Vec<CheckResult> = spec
            .checks
            .iter()
            .map(|&c| match c {
                CheckKind::Ledger => match &comparison {
                    Err(why) if error.is_some() => CheckResult::unknown(c, why.clone()),
                    _ => checks::ledger(&comparison),
                },
                _ => read
                    .checks
                    .iter()
                    .find(|r| r.name == c)
                    .cloned()
                    .expect("one result per check"),
            })
            .collect();
        checks.push(read.seed);
        let (recovered_at, note) = conclude(
            name,
            target,
            error.as_deref(),
            &checks,
            self.scenario.timeouts.check,
            &self.clock,
        )
        .await?;
        self.events.end(span);

        let mut rpo = Rpo::of_drill(
            &spec.objectives,
            ledger,
            &comparison,
            error.is_some(),
            injected,
            workload_start,
        );
        let seed_changed = checks
            .iter()
            .any(|c| c.name == CheckKind::Seed && c.status == CheckStatus::Failed);
        if seed_changed {
            let gone = checks::seed_gone(&seeded.facts, &read.seed_now);
            rpo.reach_back_to_seed(ledger, &comparison, (t_fault, injected), seeded.at, gone);
        }
        // Damage to the backup chain is the reason the RPO was missed.
        rpo.explain_miss(restored.note.as_ref());
        let recovery = Recovery {
            note,
            rpo,
            checks,
            backup_id: backup.map(|b| b.id),
            restored,
            error,
            ledger_file: ledger.write_file(&self.dir, name, comparison.as_ref().ok()),
            ..Recovery::timed(&phases, t_fault, recovered_at, self.clock.micros())
        };
        match recovery.rto_ms {
            Some(ms) => info!("{name}: recovered {} after the fault", util::seconds(ms)),
            None => warn!("{name}: not recovered"),
        }
        self.events
            .target(name, TargetEvent::Recovered(Box::new(recovery)));
        Ok(())
    }

    /// Everything after a restore reads side by side: the workload's writes, the seed, and
    /// every check but `ledger`, which compares the writes read back with the ledger.
    async fn read_backs(
        &self,
        spec: &TargetSpec,
        target: &dyn Target,
        evidence: &Evidence<'_>,
    ) -> Result<ReadBacks, Stop> {
        let name = spec.name.as_str();
        let limit = self.scenario.timeouts.check;
        let (writes_step, seed_step) = (
            format!("reading the workload back of {name}"),
            format!("reading the seed back of {name}"),
        );
        // `row-counts` and `checksums` compare the same reading: it is taken once.
        let contents = OnceCell::new();
        let seed_read = tokio::time::Instant::now();
        let (writes, seed_now, checks) = tokio::join!(
            within(&writes_step, limit, "timeouts.check", target.read_back()),
            async {
                let facts = within(&seed_step, limit, "timeouts.check", target.seed_facts()).await;
                (facts, seed_read.elapsed())
            },
            try_join_all(
                spec.checks
                    .iter()
                    .filter(|&&c| c != CheckKind::Ledger)
                    .map(|&c| run_check(c, target, evidence, &contents, limit)),
            )
        );
        let writes = writes?.map_err(|e| format!("{e:#}"));
        let (seed_now, seed_took) = seed_now;
        let seed_now = seed_now?.map_err(|e| format!("{e:#}"));
        let checks = checks.map_err(|o| {
            super::stop::overran(
                &format!("check {} of {name}", o.check),
                o.limit,
                "timeouts.check",
            )
        })?;
        let mut seed = checks::seed(evidence.seed, seed_now.clone());
        seed.duration_ms = seed_took.as_millis() as u64;
        Ok(ReadBacks {
            writes,
            seed,
            seed_now,
            checks,
        })
    }
}

impl Executor<'_> {
    /// After a failed restore nothing reads the lost service: the ledger, the seed and every
    /// check that needs the service are not run; the checks of the backup itself still are.
    async fn backup_checks_only(
        &self,
        spec: &TargetSpec,
        target: &dyn Target,
        evidence: &Evidence<'_>,
    ) -> Result<ReadBacks, Stop> {
        let limit = self.scenario.timeouts.check;
        let mut checks = Vec::new();
        for &c in spec.checks.iter().filter(|&&c| c != CheckKind::Ledger) {
            checks.push(if c.reads_service() {
                CheckResult::unknown(c, RESTORE_FAILED)
            } else {
                run_check(c, target, evidence, &OnceCell::new(), limit)
                    .await
                    .map_err(|o| {
                        super::stop::overran(
                            &format!("check {} of {}", o.check, spec.name),
                            o.limit,
                            "timeouts.check",
                        )
                    })?
            });
        }
        Ok(ReadBacks {
            writes: Err(RESTORE_FAILED.into()),
            seed: CheckResult::unknown(CheckKind::Seed, RESTORE_FAILED),
            seed_now: Err(RESTORE_FAILED.into()),
            checks,
        })
    }
}

/// What a verification read back.
struct ReadBacks {
    /// The workload's writes, or why they could not be read.
    writes: Result<crate::workload::ReadBack, String>,
    /// The `seed` check, and the seed as read back.
    seed: CheckResult,
    seed_now: Result<Contents, String>,
    /// Every configured check but `ledger`, in the scenario's order.
    checks: Vec<CheckResult>,
}

/// The last step of every recovery, a drill's or a restore test's: when the restore succeeded
/// and every check passed, a fresh write read back, and that instant (run µs) is the recovery;
/// otherwise, why there was none.
pub(super) async fn conclude(
    name: &str,
    target: &dyn Target,
    restore_error: Option<&str>,
    checks: &[CheckResult],
    limit: std::time::Duration,
    clock: &crate::clock::Clock,
) -> Result<(Option<Micros>, Option<String>), Stop> {
    if restore_error.is_some() {
        return Ok((None, Some("the restore failed".into())));
    }
    let failing: Vec<String> = checks
        .iter()
        .filter(|c| c.status != CheckStatus::Passed)
        .map(CheckResult::title)
        .collect();
    if !failing.is_empty() {
        let note = format!(
            "not recovered: check(s) {} did not pass",
            failing.join(", ")
        );
        return Ok((None, Some(note)));
    }
    let step = format!("the fresh write and read-back of {name}");
    match within(&step, limit, "timeouts.check", target.round_trip()).await? {
        Ok(()) => Ok((Some(clock.micros()), None)),
        Err(e) => Ok((
            None,
            Some(format!("the fresh write and read-back failed: {e:#}")),
        )),
    }
}

/// Runs `check` against the restored `target`, bounded by `limit`: the generic checks here,
/// the kind's own through [`Target::check`].
async fn run_check(
    check: CheckKind,
    target: &dyn Target,
    evidence: &Evidence<'_>,
    contents: &OnceCell<Result<Contents, String>>,
    limit: std::time::Duration,
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
