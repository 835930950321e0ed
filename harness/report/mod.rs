//! What a run tells its readers: `report.json` (schema below, versioned; field names are stable),
//! `report.md`, and the terminal summary. Files are written atomically.

mod markdown;
mod outcome;
mod terminal;

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

pub use markdown::markdown;
pub use outcome::{CheckOutcome, TargetOutcome, unknown};
pub use terminal::terminal;

use crate::checks::{CheckResult, CheckStatus};
use crate::docker::image::ImageChoice;
pub use crate::measure::rpo::Rpo;
use crate::measure::{Detection, Phase};
use crate::spec::{FaultKind, PlatformObjectives, TargetKind};
use crate::util::write_atomically;

/// Version of the `report.json` schema. Bumped only when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// The verdict of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    /// Every objective met and every check passed.
    Met,
    /// An objective missed, a check failed or unknown, or the restore failed.
    Missed,
    /// The drill could not run to its end (a step failed or overran its timeout).
    Error,
    /// Stopped by SIGINT / SIGTERM.
    Interrupted,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Met => "met",
            RunOutcome::Missed => "missed",
            RunOutcome::Error => "error",
            RunOutcome::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub scenario: String,
    pub scenario_file: String,
    pub description: String,
    pub run_id: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub duration_ms: u64,
    pub outcome: RunOutcome,
    /// What ended the drill early, for `error` and `interrupted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seed of every random choice in the run; `[drill] seed` replays it.
    pub seed: u64,
    pub drillrig_version: String,
    /// The run's phases as far as it got, in order.
    pub timeline: Vec<PhaseSpan>,
    pub targets: Vec<TargetReport>,
    /// `[platform]`: every target judged together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformReport>,
    pub faults: Vec<FaultRecord>,
}

/// The platform's verdict: its RTO from the first fault to the last target's recovery, its RPO
/// the worst target's.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformReport {
    pub rto: PlatformRto,
    pub rpo: PlatformRpo,
    /// With the platform workload: what the stores hold of each other's writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_store: Option<crate::checks::cross_store::CrossStore>,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlatformRto {
    /// `recovered_at_ms − first_fault_at_ms`; `None` when a target never recovered.
    pub achieved_ms: Option<u64>,
    pub target_ms: u64,
    pub met: bool,
    /// The earliest target's `t_fault`.
    pub first_fault_at_ms: Option<u64>,
    /// The last target's recovery.
    pub recovered_at_ms: Option<u64>,
    /// The target recovered last (or the first that never did).
    pub last_target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlatformRpo {
    /// The worst target's achieved RPO; `None` when a target's is unknown.
    pub achieved_ms: Option<u64>,
    pub target_ms: u64,
    pub met: bool,
    /// The target whose RPO is the platform's.
    pub worst_target: Option<String>,
    /// Every target's acknowledged writes lost, summed; `None` when any target's loss could not
    /// be counted.
    pub lost_writes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl PlatformReport {
    /// Judges `targets` together against `objectives`. With a platform workload the platform
    /// is recovered (at its last target's recovery, whose read-back the check compares) only
    /// if `cross_store` passed; without its verdict (a store could not be read back) it is not.
    pub fn judge(
        objectives: &PlatformObjectives,
        targets: &[TargetReport],
        cross_store: Option<crate::checks::cross_store::CrossStore>,
    ) -> PlatformReport {
        let target_rto = objectives.rto.as_millis() as u64;
        let target_rpo = objectives.rpo.as_millis() as u64;
        let first_fault_at_ms = targets.iter().filter_map(|t| t.rto.fault_at_ms).min();
        let never = targets.iter().find(|t| t.rto.recovered_at_ms.is_none());
        let last = targets
            .iter()
            .filter_map(|t| t.rto.recovered_at_ms.map(|at| (at, t)))
            .max_by_key(|(at, _)| *at);
        let chained = objectives.workload.is_some();
        let stores_disagree = match &cross_store {
            _ if !chained => None,
            None => {
                Some("the stores could not all be read back for the cross-store check".to_string())
            }
            Some(c) if !c.passed => Some(format!(
                "the stores disagree beyond their recovery points ({} unexplained)",
                c.unexplained_count
            )),
            Some(_) => None,
        };
        let (achieved_ms, recovered_at_ms, last_target, note) = match (never, last) {
            _ if never.is_none() && stores_disagree.is_some() => {
                (None, None, None, stores_disagree.clone())
            }
            (Some(t), _) => (
                None,
                None,
                Some(t.name.clone()),
                Some(format!("{} never recovered", t.name)),
            ),
            (None, Some((at, t))) => (
                first_fault_at_ms.map(|first| at.saturating_sub(first)),
                Some(at),
                Some(t.name.clone()),
                None,
            ),
            (None, None) => (None, None, None, Some("no target recovered".into())),
        };
        let rto = PlatformRto {
            achieved_ms,
            target_ms: target_rto,
            met: achieved_ms.is_some_and(|a| a <= target_rto),
            first_fault_at_ms,
            recovered_at_ms,
            last_target,
            note,
        };
        let unknown = targets.iter().find(|t| t.rpo.achieved_ms.is_none());
        let worst = targets
            .iter()
            .filter_map(|t| t.rpo.achieved_ms.map(|a| (a, t)))
            .max_by_key(|(a, _)| *a);
        let (achieved_ms, worst_target, note) = match (unknown, worst) {
            (Some(t), _) => (
                None,
                Some(t.name.clone()),
                Some(format!("{}'s RPO is unknown", t.name)),
            ),
            (None, Some((a, t))) => (Some(a), Some(t.name.clone()), None),
            (None, None) => (None, None, Some("no target measured an RPO".into())),
        };
        let rpo = PlatformRpo {
            achieved_ms,
            target_ms: target_rpo,
            met: achieved_ms.is_some_and(|a| a <= target_rpo),
            worst_target,
            lost_writes: targets.iter().map(|t| t.rpo.lost_writes).sum(),
            note,
        };
        PlatformReport {
            met: rto.met && rpo.met && stores_disagree.is_none(),
            rto,
            rpo,
            cross_store,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseSpan {
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub started_ms: u64,
    /// `None` when the run stopped inside the phase.
    pub ended_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub target: String,
    pub kind: FaultKind,
    /// The scheduled offset from the workload's start.
    pub scheduled_ms: u64,
    /// When the injection began (`t_fault` for the target's first service fault).
    pub started_ms: u64,
    /// When the injection returned success.
    pub injected_at_ms: Option<u64>,
    /// A temporary fault (`for`): when drillrig began healing it, and when the heal returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heal_started_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healed_at_ms: Option<u64>,
    /// What was done to the target, or why the injection failed. A heal's own account is under
    /// `heal`.
    pub details: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub name: String,
    pub kind: TargetKind,
    pub image: Option<ImageChoice>,
    /// Rows of the seeded fixture (the dataset size RTO is projected from).
    pub dataset_rows: u64,
    /// Acknowledged-write latency before, during and after a `latency` fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_latency: Option<WriteLatency>,
    /// A replicated target's replication just before the first fault: per standby, its state
    /// and lag in bytes and seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<serde_json::Value>,
    /// The seed as recorded right after seeding: what the `seed` check compares with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<SeedReport>,
    /// A restore test: where the backup came from, what it is, when it was made, and how fast
    /// it was fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceReport>,
    /// With `[offsite]`: what was shipped, and what the DR site fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offsite: Option<OffsiteReport>,
    pub rto: Rto,
    pub rpo: Rpo,
    pub checks: Vec<CheckResult>,
    pub restore: RestoreReport,
    pub backups: Vec<BackupReport>,
    pub workload: WorkloadReport,
    pub detection: Detection,
    /// Outages the service's own log shows that no fault of the scenario caused (a crashed
    /// backend that made PostgreSQL restart every session): the drill's figures absorbed them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unasked_outages: Vec<String>,
}

/// The backup a restore test restored.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    /// The source as the scenario names it (a path, or a URL and its endpoint).
    pub location: String,
    #[serde(flatten)]
    pub fetched: crate::source::Fetched,
    /// Fetch throughput, MB/s (10^6 bytes per second).
    pub mb_per_s: f64,
    /// Restore time against backup size over this scenario's recovered runs, this one included
    /// (from the history; none before two sizes were measured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trend: Option<crate::measure::projection::RestoreTrend>,
}

/// A target's backups off the site: each backup as it landed (its shipping lag), each WAL
/// file, the shipments that failed, and what the DR site fetched after a site loss.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OffsiteReport {
    pub location: String,
    pub shipped: Vec<crate::offsite::Shipment>,
    /// Files of the continuous archive (PostgreSQL's WAL), shipped as they were archived.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub archive: Vec<crate::offsite::ArchiveShipment>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched: Option<crate::offsite::OffsiteFetch>,
}

impl TargetReport {
    /// A failover in short lines: the standbys' lag at the fault, why the primary was judged
    /// down and who was promoted, and what became of the old primary and the other standbys.
    /// Empty when the target did not fail over.
    pub fn failover_summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
        if let Some(standbys) = self
            .replication
            .as_ref()
            .and_then(|r| r["standbys"].as_array().or(r["replicas"].as_array()))
        {
            let each: Vec<String> = standbys
                .iter()
                .map(|s| {
                    // PostgreSQL says what each standby replayed; Redis what each replica
                    // last acknowledged, and how long ago.
                    let behind = match (
                        s["behind_bytes"]["replayed"].as_i64(),
                        s["behind_bytes"]["acknowledged"].as_i64(),
                    ) {
                        (Some(b), _) => format!("{b} B behind"),
                        (None, Some(b)) => format!("{b} B behind what it acknowledged"),
                        (None, None) => "lag unknown".into(),
                    };
                    let lag = match (
                        s["lag_s"]["replay"].as_f64(),
                        s["lag_s"]["since_ack"].as_f64(),
                    ) {
                        (Some(l), _) => format!(", replay lag {:.1} ms", l * 1000.0),
                        (None, Some(l)) => format!(", last acknowledgement {l} s before"),
                        (None, None) => String::new(),
                    };
                    format!(
                        "{} {} {}, {behind}{lag}",
                        text(&s["node"]),
                        text(&s["state"]),
                        text(&s["sync_state"])
                    )
                })
                .collect();
            lines.push(format!("replication at the fault: {}", each.join("; ")));
        } else if let Some(queues) = self
            .replication
            .as_ref()
            .and_then(|r| r["quorum_queues"].as_array())
        {
            for q in queues {
                let members: Vec<String> = q["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| format!("{} {}", text(&m["Node Name"]), text(&m["Raft State"])))
                    .collect();
                lines.push(format!(
                    "quorum queue {} at the fault: {}",
                    text(&q["queue"]),
                    members.join(", ")
                ));
            }
        } else if let Some(error) = self.replication.as_ref().and_then(|r| r["error"].as_str()) {
            lines.push(format!("replication at the fault: unknown ({error})"));
        }
        let Some(f) = &self.restore.restored.failover else {
            return lines;
        };
        if let Some(after) = self.rpo.lost_after_fault {
            lines.push(format!(
                "{after} lost write(s) were acknowledged after the fault: by a primary that was no longer the one that counts"
            ));
        }
        lines.push(format!(
            "failover: {} judged down ({}); {} serves now",
            f["primary_down"]["container"]
                .as_str()
                .unwrap_or("the primary"),
            text(&f["primary_down"]["judged"]),
            text(&f["promoted"])
        ));
        let old = &f["old_primary"];
        match (old["container"].as_str(), old["rejoined"].as_str()) {
            (Some(c), Some(how)) => lines.push(format!("{c}: rejoined, {how}")),
            (Some(c), None) => match old["fenced"].as_str() {
                Some(fenced) => lines.push(format!("{c}: fenced, {fenced}")),
                None => lines.push(format!("{c}: {}", text(&old["error"]))),
            },
            (None, _) => {}
        }
        for s in f["standbys_following"].as_array().into_iter().flatten() {
            lines.push(match s["follows"].as_str() {
                Some(new) => format!("{} follows {new}", text(&s["container"])),
                None => format!(
                    "{} follows no one: {}",
                    text(&s["container"]),
                    text(&s["error"])
                ),
            });
        }
        lines
    }
}

impl OffsiteReport {
    /// One line: what landed and its shipping lag, what failed, and what the DR site fetched.
    pub fn summary(&self) -> String {
        use crate::util::seconds;
        let mut parts = vec![match self.shipped.iter().map(|s| s.lag_ms).max() {
            Some(worst) => format!(
                "{} backup(s) landed, shipping lag up to {}",
                self.shipped.len(),
                seconds(worst)
            ),
            None => "no backup landed".to_string(),
        }];
        let mut lags: Vec<u64> = self.archive.iter().map(|a| a.lag_ms).collect();
        lags.sort_unstable();
        if let Some(worst) = lags.last() {
            parts.push(format!(
                "{} WAL file(s) landed, lag median {}, up to {}",
                lags.len(),
                seconds((lags[(lags.len() - 1) / 2] + lags[lags.len() / 2]) / 2),
                seconds(*worst)
            ));
        }
        if let Some(first) = self.errors.first() {
            parts.push(format!(
                "{} shipment(s) failed (first: {first})",
                self.errors.len()
            ));
        }
        if let Some(f) = &self.fetched {
            let wal = if f.archive_files > 0 {
                format!(" and {} WAL file(s)", f.archive_files)
            } else {
                String::new()
            };
            parts.push(format!(
                "the DR site fetched backup {}{wal}, {} bytes in {}",
                f.backup_id,
                f.bytes,
                seconds(f.fetch_ms)
            ));
        }
        parts.join("; ")
    }
}

impl TargetReport {
    /// Whether this target met every objective, passed every check, and had no outage it was
    /// not asked to have.
    pub fn met(&self) -> bool {
        self.rto.met
            && self.rpo.met
            && self.restore.error.is_none()
            && self.checks.iter().all(|c| c.status == CheckStatus::Passed)
            && self.unasked_outages.is_empty()
            && self
                .write_latency
                .as_ref()
                .and_then(|w| w.objective.as_ref())
                .is_none_or(|o| o.met)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Rto {
    /// `t_recovered − t_fault`; `None` when the target never recovered.
    pub achieved_ms: Option<u64>,
    pub target_ms: u64,
    pub met: bool,
    pub phases: PhaseDurations,
    /// `t_fault`: the first service fault returned (or the restore began, with no fault).
    pub fault_at_ms: Option<u64>,
    pub restore_started_at_ms: Option<u64>,
    pub recovered_at_ms: Option<u64>,
    /// Why no RTO was achieved, when none was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Acknowledged-write latency around a `latency` fault: before it was set, while it lasted
/// (from its injection's return to its heal's start), and after it, until the workload stopped.
#[derive(Debug, Clone, Serialize)]
pub struct WriteLatency {
    pub before: crate::measure::LatencySummary,
    pub during: crate::measure::LatencySummary,
    pub after: crate::measure::LatencySummary,
    /// `objectives.write_p99`, judged on the writes invoked while the fault lasted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objective: Option<LatencyObjective>,
}

/// The `write_p99` objective's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyObjective {
    pub target_ms: u64,
    /// The p99 of the writes invoked during the fault, those never acknowledged counted as
    /// slower than the rest; `None` when the 99th percentile is one of them.
    pub achieved_ms: Option<f64>,
    pub met: bool,
}

/// A target's seed: when it began, and per dataset its rows and digest right after it.
#[derive(Debug, Clone, Serialize)]
pub struct SeedReport {
    pub started_ms: u64,
    pub datasets: crate::backup::Contents,
}

/// Milliseconds per recovery phase; they add up to the RTO.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PhaseDurations {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provision: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promote: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elect: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<u64>,
}

impl PhaseDurations {
    pub fn from_durations(durations: &[(Phase, u64)]) -> Self {
        let mut p = PhaseDurations::default();
        for &(phase, ms) in durations {
            let slot = match phase {
                Phase::Detect => &mut p.detect,
                Phase::Wait => &mut p.wait,
                Phase::Archive => &mut p.archive,
                Phase::Provision => &mut p.provision,
                Phase::Fetch => &mut p.fetch,
                Phase::Restore => &mut p.restore,
                Phase::Promote => &mut p.promote,
                Phase::Elect => &mut p.elect,
                Phase::Reconnect => &mut p.reconnect,
                Phase::Verify => &mut p.verify,
            };
            *slot = Some(slot.unwrap_or(0) + ms);
        }
        p
    }

    /// `(name, ms)` in phase order, present phases only.
    pub fn entries(&self) -> Vec<(&'static str, u64)> {
        [
            ("detect", self.detect),
            ("wait", self.wait),
            ("archive", self.archive),
            ("provision", self.provision),
            ("fetch", self.fetch),
            ("restore", self.restore),
            ("promote", self.promote),
            ("elect", self.elect),
            ("reconnect", self.reconnect),
            ("verify", self.verify),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
        .collect()
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    /// `restart`, `latest`, `before-fault` or the timestamp.
    pub from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<u32>,
    /// The point captured just before the first fault (what `before-fault` restores to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_point: Option<crate::targets::RecoveryPoint>,
    /// What the restore reached: its recovery target, where it stopped, what it prepared and
    /// what it found on the way.
    #[serde(flatten)]
    pub restored: crate::targets::Restored,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub id: u32,
    pub began_ms: u64,
    /// When the backup's consistency point was fixed.
    pub consistent_at_ms: Option<f64>,
    pub finished_ms: u64,
    pub size_bytes: u64,
    pub max_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkloadReport {
    /// Writes per second asked for (0: as fast as possible).
    pub rate: u32,
    pub started_ms: Option<u64>,
    pub stopped_ms: Option<u64>,
    pub attempted: u64,
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
    /// The ledger as CSV, relative to the run folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_file: Option<String>,
}

/// Writes `report.json` and `report.md` into `dir`.
pub fn write(report: &Report, dir: &Path) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(report)?;
    json.push(b'\n');
    write_atomically(&dir.join("report.json"), &json)?;
    write_atomically(&dir.join("report.md"), markdown(report).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offsite::{ArchiveShipment, OffsiteFetch, Shipment};

    #[test]
    fn the_offsite_summary_gives_the_worst_lag_per_kind_and_what_was_fetched() {
        let shipped = |backup_id, lag_ms| Shipment {
            backup_id,
            files: 1,
            bytes: 1,
            stored_bytes: 2,
            taken_ms: 0,
            landed_ms: lag_ms,
            lag_ms,
        };
        let wal = |lag_ms| ArchiveShipment {
            file: "w".into(),
            bytes: 1,
            stored_bytes: 2,
            archived_ms: 0,
            landed_ms: lag_ms,
            lag_ms,
        };
        let mut o = OffsiteReport {
            location: "/srv/offsite".into(),
            shipped: vec![shipped(1, 1200), shipped(2, 900)],
            archive: vec![wal(100), wal(700), wal(200)],
            errors: vec!["archived w: refused".into()],
            fetched: Some(OffsiteFetch {
                location: "/srv/offsite".into(),
                backup_id: 2,
                bytes: 4096,
                fetch_ms: 1500,
                archive_files: 3,
                recipient: "age1…".into(),
            }),
        };
        assert_eq!(
            o.summary(),
            "2 backup(s) landed, shipping lag up to 1.200s; 3 WAL file(s) landed, lag median 0.200s, up to 0.700s; 1 shipment(s) failed (first: archived w: refused); the DR site fetched backup 2 and 3 WAL file(s), 4096 bytes in 1.500s"
        );
        o = OffsiteReport::default();
        assert_eq!(o.summary(), "no backup landed");
    }
}
