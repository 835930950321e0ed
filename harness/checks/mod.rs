//! Checks after a restore. A check is `passed` only when it ran and found nothing wrong;
//! one that could not run is `unknown`, never `passed`.

pub mod cross_store;

use std::time::Duration;

use serde::Serialize;

use crate::backup::{Backup, Contents};
use crate::clock::Micros;
use crate::docker::ExecOutput;
use crate::spec::CheckKind;
use crate::workload::Comparison;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Passed,
    Failed,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub name: CheckKind,
    /// A user query's name (check `query`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    pub status: CheckStatus,
    pub detail: String,
    pub duration_ms: u64,
    /// What the check measured, as the next run compares it (a query's value, a backup's
    /// size in bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl CheckResult {
    pub fn passed(name: CheckKind, detail: impl Into<String>) -> Self {
        CheckResult {
            name,
            query: None,
            status: CheckStatus::Passed,
            detail: detail.into(),
            duration_ms: 0,
            value: None,
        }
    }

    pub fn failed(name: CheckKind, detail: impl Into<String>) -> Self {
        CheckResult {
            name,
            query: None,
            status: CheckStatus::Failed,
            detail: detail.into(),
            duration_ms: 0,
            value: None,
        }
    }

    pub fn unknown(name: CheckKind, detail: impl Into<String>) -> Self {
        CheckResult {
            name,
            query: None,
            status: CheckStatus::Unknown,
            detail: detail.into(),
            duration_ms: 0,
            value: None,
        }
    }

    /// The name the report, the terminal, JUnit and the history show: the kind, or
    /// `query: NAME` for a user query.
    pub fn title(&self) -> String {
        match &self.query {
            Some(q) => format!("query: {q}"),
            None => self.name.to_string(),
        }
    }

    /// `passed` when `problems` is empty, else `failed` listing them.
    pub fn from_problems(name: CheckKind, ok: impl Into<String>, problems: Vec<String>) -> Self {
        if problems.is_empty() {
            CheckResult::passed(name, ok)
        } else {
            CheckResult::failed(name, problems.join("; "))
        }
    }
}

/// What the checks compare against.
pub struct Evidence<'a> {
    /// The backup that was restored, if the restore used one.
    pub backup: Option<&'a Backup>,
    /// Every completed backup of the target, oldest first.
    pub catalog: &'a [Backup],
    /// When the injection of the first fault that hit the service began (`t_fault`, run µs):
    /// no backup can be taken after it, so the age of the newest recovery point is measured
    /// there.
    pub fault_began: Micros,
    /// The RPO objective, which the newest recovery point's age must not exceed.
    pub rpo_objective: Duration,
    /// The seeded dataset's own facts, recorded right after the seed.
    pub seed: &'a Contents,
}

/// `seed` (run on every recovery): the fixture's own rows, which no ledger covers, are as the
/// seed left them: per dataset the same row count and digest.
pub fn seed(recorded: &Contents, now: Result<Contents, String>) -> CheckResult {
    let check = CheckKind::Seed;
    let now = match now {
        Ok(now) => now,
        Err(e) => return CheckResult::unknown(check, format!("could not read the seed back: {e}")),
    };
    let mut problems = Vec::new();
    for (name, want) in recorded {
        match now.get(name) {
            Some(have) if have.rows == 0 && want.rows > 0 => {
                problems.push(format!("{name}: all {} seeded rows are gone", want.rows))
            }
            Some(have) if have.rows != want.rows => problems.push(format!(
                "{name}: {} seeded rows, {} after the recovery",
                want.rows, have.rows
            )),
            Some(have) if have.digest != want.digest => problems.push(format!(
                "{name}: the {} seeded rows are there but changed (digest {} was {})",
                want.rows, have.digest, want.digest
            )),
            Some(_) => {}
            None => problems.push(format!("{name} is gone")),
        }
    }
    let rows: u64 = recorded.values().map(|d| d.rows).sum();
    CheckResult::from_problems(
        check,
        format!(
            "{} dataset(s), {rows} seeded rows: as seeded (row counts and digests)",
            recorded.len()
        ),
        problems,
    )
}

/// Whether nothing of the seed survived: every recorded dataset is gone or empty.
pub fn seed_gone(recorded: &Contents, now: &Result<Contents, String>) -> bool {
    let Ok(now) = now else { return false };
    recorded.values().any(|d| d.rows > 0)
        && recorded
            .keys()
            .all(|name| now.get(name).is_none_or(|d| d.rows == 0))
}

/// What earlier runs of the same scenario measured, for `drift`, `backup-size` and the restore
/// trend: per target and check title, the newest value recorded and the run that recorded it,
/// and the restore tests' sizes and times (from the history).
#[derive(Debug, Clone, Default)]
pub struct Previous {
    pub values: std::collections::BTreeMap<(String, String), (String, String)>,
    /// Per target, `(backup bytes, achieved RTO ms)` of the earlier restore tests that
    /// recovered, oldest first.
    pub restores: std::collections::BTreeMap<String, Vec<(u64, i64)>>,
}

impl Previous {
    /// `(run id, value)` of the newest run that recorded `title` for `target`.
    pub fn value(&self, target: &str, title: &str) -> Option<(&str, &str)> {
        self.values
            .get(&(target.to_string(), title.to_string()))
            .map(|(run, v)| (run.as_str(), v.as_str()))
    }
}

/// A backup's size changing by more than this fraction from the previous one is flagged.
pub const SIZE_CHANGE_LIMIT: f64 = 0.10;

/// A check that did not finish within its timeout: the drill ends as `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("check {check} did not finish within {}", humantime::format_duration(*.limit))]
pub struct Overran {
    pub check: CheckKind,
    pub limit: Duration,
}

/// The verdict of `tool` run on backup `id` in a container: passed when it exits 0 (`ok` says
/// what that means), failed with its exit code and the end of its output otherwise, unknown when
/// it could not run at all.
pub fn from_tool(
    check: CheckKind,
    tool: &str,
    id: u32,
    ran: anyhow::Result<ExecOutput>,
    ok: impl FnOnce(&ExecOutput) -> String,
) -> CheckResult {
    match ran {
        Ok(out) if out.success() => CheckResult::passed(check, ok(&out)),
        Ok(out) => CheckResult::failed(
            check,
            format!(
                "{tool} on backup {id} exited with {}: {}",
                out.exit_code,
                out.tail()
            ),
        ),
        Err(e) => CheckResult::unknown(check, format!("{e:#}")),
    }
}

/// The restored backup's artefacts against the sha256 its manifest recorded.
pub fn backup_integrity(evidence: &Evidence<'_>) -> CheckResult {
    let check = CheckKind::BackupIntegrity;
    match evidence.backup {
        None => CheckResult::unknown(check, "no backup was restored"),
        Some(b) => match b.verify() {
            Ok(damaged) => CheckResult::from_problems(
                check,
                format!(
                    "{} artefact(s) of backup {} match their manifest sha256",
                    b.artefacts.len(),
                    b.id
                ),
                damaged
                    .into_iter()
                    .map(|d| format!("backup {}: {d}", b.id))
                    .collect(),
            ),
            Err(e) => CheckResult::unknown(check, format!("{e:#}")),
        },
    }
}

/// The restored backup's data size against the backup before it.
pub fn backup_size(evidence: &Evidence<'_>) -> CheckResult {
    let check = CheckKind::BackupSize;
    let Some(b) = evidence.backup else {
        return CheckResult::unknown(check, "no backup was restored");
    };
    let Some(previous) = evidence.catalog.iter().rev().find(|p| p.id < b.id) else {
        return CheckResult::unknown(
            check,
            format!(
                "backup {} is the first; there is none to compare its size with",
                b.id
            ),
        );
    };
    // The restored backup as it is on disk (what the restore read), against the previous one
    // as it was taken.
    let (now, before) = (b.data_size_on_disk(), previous.data_size());
    let change = (now as f64 - before as f64) / (before.max(1) as f64);
    let detail = format!(
        "backup {} holds {now} bytes of data, backup {} {before} ({:+.1}%)",
        b.id,
        previous.id,
        change * 100.0
    );
    if change.abs() > SIZE_CHANGE_LIMIT {
        CheckResult::failed(
            check,
            format!("{detail}: beyond ±{:.0}%", SIZE_CHANGE_LIMIT * 100.0),
        )
    } else {
        CheckResult::passed(check, detail)
    }
}

/// The newest backup consistent at the fault: the recovery point of methods without a log.
pub fn newest_backup_point(evidence: &Evidence<'_>) -> Option<(String, Micros)> {
    evidence
        .catalog
        .iter()
        .rev()
        .find(|b| b.consistent_at_us <= evidence.fault_began)
        .map(|b| (format!("backup {}, consistent", b.id), b.consistent_at_us))
}

/// `backup-age`: at the fault, the newest recovery point (`what`, at run µs) is no older than
/// the RPO objective.
pub fn backup_age(evidence: &Evidence<'_>, newest: Option<(String, Micros)>) -> CheckResult {
    let check = CheckKind::BackupAge;
    let Some((what, at)) = newest else {
        return CheckResult::failed(check, "no recovery point existed when the fault hit");
    };
    let age = Duration::from_micros(evidence.fault_began.saturating_sub(at));
    let detail = format!(
        "at the fault the newest recovery point was {what} {} earlier; the RPO objective is {}",
        crate::util::seconds(age.as_millis() as u64),
        crate::util::seconds(evidence.rpo_objective.as_millis() as u64)
    );
    if age <= evidence.rpo_objective {
        CheckResult::passed(check, detail)
    } else {
        CheckResult::failed(check, detail)
    }
}

pub fn ledger(comparison: &Result<Comparison, String>) -> CheckResult {
    let c = match comparison {
        Ok(c) => c,
        Err(e) => {
            return CheckResult::unknown(
                CheckKind::Ledger,
                format!("could not read the workload's writes back: {e}"),
            );
        }
    };
    let mut problems = Vec::new();
    if c.holes > 0 {
        problems.push(format!(
            "{} hole(s): acknowledged writes missing below recovered ones (first lost seq {})",
            c.holes, c.lost[0]
        ));
    }
    if !c.unexpected.is_empty() {
        problems.push(format!(
            "{} write(s) present that were never attempted (first seq {})",
            c.unexpected.len(),
            c.unexpected[0]
        ));
    }
    if !c.mismatched.is_empty() {
        problems.push(format!(
            "{} write(s) with a value other than the one written (first seq {})",
            c.mismatched.len(),
            c.mismatched[0]
        ));
    }
    if !c.failed_present.is_empty() {
        problems.push(format!(
            "{} write(s) present that the server refused (first seq {})",
            c.failed_present.len(),
            c.failed_present[0]
        ));
    }
    let summary = format!(
        "{} of {} acknowledged writes recovered as a consistent prefix (lost {}, unacknowledged present {})",
        c.acked - c.lost.len() as u64,
        c.acked,
        c.lost.len(),
        c.unacked_present
    );
    CheckResult::from_problems(CheckKind::Ledger, summary, problems)
}

/// Compares per-dataset row counts (`row-counts`) or digests (`checksums`) with the backup's.
pub fn compare_contents(
    check: CheckKind,
    expected: &Contents,
    found: &Contents,
    backup_id: u32,
) -> CheckResult {
    let mut problems = Vec::new();
    for (name, want) in expected {
        match found.get(name) {
            None => problems.push(format!("{name} is missing")),
            Some(have) if check == CheckKind::RowCounts && have.rows != want.rows => {
                problems.push(format!(
                    "{name} has {} rows, backup {backup_id} has {}",
                    have.rows, want.rows
                ));
            }
            Some(have) if check == CheckKind::Checksums && have.digest != want.digest => {
                problems.push(format!(
                    "{name} digest {} differs from backup {backup_id}'s {}",
                    have.digest, want.digest
                ));
            }
            Some(_) => {}
        }
    }
    for name in found.keys().filter(|n| !expected.contains_key(*n)) {
        problems.push(format!("{name} is not in backup {backup_id}"));
    }
    let what = if check == CheckKind::RowCounts {
        "row counts"
    } else {
        "digests"
    };
    let rows: u64 = expected.values().map(|d| d.rows).sum();
    CheckResult::from_problems(
        check,
        format!(
            "{} dataset(s), {rows} rows: {what} equal to backup {backup_id}",
            expected.len()
        ),
        problems,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::DatasetDigest;

    fn contents(items: &[(&str, u64, &str)]) -> Contents {
        items
            .iter()
            .map(|&(n, rows, d)| {
                (
                    n.to_string(),
                    DatasetDigest {
                        rows,
                        digest: d.to_string(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn equal_contents_pass() {
        let c = contents(&[("customers", 10, "a"), ("orders", 100, "b")]);
        assert_eq!(
            compare_contents(CheckKind::RowCounts, &c, &c, 1).status,
            CheckStatus::Passed
        );
        assert_eq!(
            compare_contents(CheckKind::Checksums, &c, &c, 1).status,
            CheckStatus::Passed
        );
    }

    #[test]
    fn a_missing_table_and_a_changed_count_fail() {
        let want = contents(&[("customers", 10, "a"), ("orders", 100, "b")]);
        let have = contents(&[("orders", 99, "b")]);
        let r = compare_contents(CheckKind::RowCounts, &want, &have, 3);
        assert_eq!(r.status, CheckStatus::Failed);
        assert_eq!(
            r.detail,
            "customers is missing; orders has 99 rows, backup 3 has 100"
        );
    }

    #[test]
    fn a_changed_digest_fails_checksums_but_not_row_counts() {
        let want = contents(&[("orders", 100, "b")]);
        let have = contents(&[("orders", 100, "c")]);
        assert_eq!(
            compare_contents(CheckKind::RowCounts, &want, &have, 1).status,
            CheckStatus::Passed
        );
        assert_eq!(
            compare_contents(CheckKind::Checksums, &want, &have, 1).status,
            CheckStatus::Failed
        );
    }

    #[test]
    fn an_unreadable_ledger_is_unknown_not_passed() {
        let r = ledger(&Err("connection refused".into()));
        assert_eq!(r.status, CheckStatus::Unknown);
    }

    #[test]
    fn holes_fail_the_ledger() {
        let c = Comparison {
            acked: 3,
            lost: vec![2],
            holes: 1,
            r_star: Some(1),
            ..Comparison::default()
        };
        assert_eq!(ledger(&Ok(c)).status, CheckStatus::Failed);
        let prefix = Comparison {
            acked: 3,
            lost: vec![3],
            r_star: Some(2),
            ..Comparison::default()
        };
        assert_eq!(ledger(&Ok(prefix)).status, CheckStatus::Passed);
    }
}
