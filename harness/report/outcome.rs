//! The per-target outcome every reader of finished runs shares: the history stores it, and
//! JUnit, the CI summary, OpenMetrics, the HTML report and notifications read it. It is the
//! report's verdicts in a flat shape, the platform judged as one more target.

use serde::Serialize;

use super::{PlatformReport, Report, TargetReport};

/// One target's outcome (or the platform's, as target `platform`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetOutcome {
    pub target: String,
    pub kind: String,
    pub image: Option<String>,
    pub dataset_rows: Option<i64>,
    /// A restore test's backup, bytes fetched.
    pub backup_bytes: Option<i64>,
    pub rto_achieved_ms: Option<i64>,
    pub rto_target_ms: i64,
    pub rto_met: bool,
    pub rpo_achieved_ms: Option<i64>,
    pub rpo_target_ms: i64,
    pub rpo_met: bool,
    pub acked_writes: i64,
    /// `None` when the loss could not be counted (the writes were never read back).
    pub lost_writes: Option<i64>,
    /// Why the loss could not be counted, in a short phrase ("the restore failed").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_writes_unknown: Option<String>,
    /// A failover in short lines joined by "; " ([`crate::report::TargetReport::failover_summary`]).
    pub failover: Option<String>,
    /// `(phase, ms)` in recovery order; they add up to the RTO.
    pub phases: Vec<(String, i64)>,
    pub checks: Vec<CheckOutcome>,
}

/// A check as outcomes show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckOutcome {
    /// The check's kind, or `query: NAME` for a user query.
    pub name: String,
    /// `passed`, `failed` or `unknown`.
    pub status: String,
    pub detail: String,
    /// What it measured, for the next run to compare with.
    pub value: Option<String>,
}

impl TargetOutcome {
    /// The checks that did not pass.
    pub fn failed_checks(&self) -> impl Iterator<Item = &CheckOutcome> {
        self.checks.iter().filter(|c| c.status != "passed")
    }

    /// "397 of 2383", or "unknown (the restore failed)".
    pub fn lost_writes_text(&self) -> String {
        match self.lost_writes {
            Some(lost) => format!("{lost} of {}", self.acked_writes),
            None => unknown(self.lost_writes_unknown.as_deref()),
        }
    }
}

/// How every output shows a count that could not be made: "unknown", with why.
pub fn unknown(why: Option<&str>) -> String {
    match why {
        Some(why) => format!("unknown ({why})"),
        None => "unknown".into(),
    }
}

fn json_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

fn ms(v: u64) -> i64 {
    v as i64
}

impl Report {
    /// Every target's outcome, then the platform's.
    pub fn outcomes(&self) -> Vec<TargetOutcome> {
        self.targets
            .iter()
            .map(TargetReport::outcome)
            .chain(self.platform.as_ref().map(|p| p.outcome(&self.targets)))
            .collect()
    }
}

impl TargetReport {
    /// This target's outcome. An outage no fault caused and the `write_p99` objective are
    /// shown as checks, so every reader shows them where it shows failed checks.
    pub fn outcome(&self) -> TargetOutcome {
        let t = self;
        let checks = t
            .checks
            .iter()
            .map(|c| CheckOutcome {
                name: c.title(),
                status: json_name(&c.status),
                detail: c.detail.clone(),
                value: c.value.clone(),
            })
            .chain(t.unasked_outages.iter().map(|o| CheckOutcome {
                name: "no-unasked-outage".into(),
                status: "failed".into(),
                detail: o.clone(),
                value: None,
            }))
            .chain(
                t.write_latency
                    .as_ref()
                    .and_then(|w| w.objective.as_ref())
                    .map(|o| CheckOutcome {
                        name: "objective write_p99".into(),
                        status: if o.met { "passed" } else { "failed" }.into(),
                        detail: match o.achieved_ms {
                            Some(p) => format!(
                                "p99 {p:.1} ms during the latency fault (objective {} ms)",
                                o.target_ms
                            ),
                            None => format!(
                                "more than 1 % of the writes during the latency fault were never acknowledged (objective {} ms)",
                                o.target_ms
                            ),
                        },
                        value: o.achieved_ms.map(|p| format!("{p:.1}")),
                    }),
            )
            .collect();
        TargetOutcome {
            target: t.name.clone(),
            kind: json_name(&t.kind),
            image: t.image.as_ref().map(|i| i.image.clone()),
            dataset_rows: Some(ms(t.dataset_rows)),
            backup_bytes: t.source.as_ref().map(|s| ms(s.fetched.bytes)),
            rto_achieved_ms: t.rto.achieved_ms.map(ms),
            rto_target_ms: ms(t.rto.target_ms),
            rto_met: t.rto.met,
            rpo_achieved_ms: t.rpo.achieved_ms.map(ms),
            rpo_target_ms: ms(t.rpo.target_ms),
            rpo_met: t.rpo.met,
            acked_writes: ms(t.rpo.acked_writes),
            lost_writes: t.rpo.lost_writes.map(ms),
            lost_writes_unknown: t.rpo.unknown.clone(),
            failover: Some(t.failover_summary().join("; ")).filter(|f| !f.is_empty()),
            phases: t
                .rto
                .phases
                .entries()
                .into_iter()
                .map(|(p, d)| (p.to_string(), ms(d)))
                .collect(),
            checks,
        }
    }
}

impl PlatformReport {
    /// The platform's outcome, as target `platform` over `targets`.
    pub fn outcome(&self, targets: &[TargetReport]) -> TargetOutcome {
        let p = self;
        TargetOutcome {
            target: crate::spec::PLATFORM.into(),
            kind: crate::spec::PLATFORM.into(),
            image: None,
            dataset_rows: None,
            backup_bytes: None,
            rto_achieved_ms: p.rto.achieved_ms.map(ms),
            rto_target_ms: ms(p.rto.target_ms),
            rto_met: p.rto.met,
            rpo_achieved_ms: p.rpo.achieved_ms.map(ms),
            rpo_target_ms: ms(p.rpo.target_ms),
            rpo_met: p.rpo.met,
            acked_writes: targets.iter().map(|t| ms(t.rpo.acked_writes)).sum(),
            lost_writes: p.rpo.lost_writes.map(ms),
            lost_writes_unknown: p
                .rpo
                .lost_writes
                .is_none()
                .then(|| "a store's loss could not be counted".to_string()),
            failover: None,
            phases: Vec::new(),
            checks: p
                .cross_store
                .iter()
                .map(|c| CheckOutcome {
                    name: "cross-store".into(),
                    status: if c.passed { "passed" } else { "failed" }.into(),
                    detail: c.summary(),
                    value: None,
                })
                .collect(),
        }
    }
}
