//! The RPO, computed and judged in one place (docs/measurement.md §6): a drill's from its ledger
//! against what the restored target holds, a restore test's from its backup's age. Every count
//! that depends on the read-back is `None` when the writes could not be read back: a loss that
//! could not be counted is unknown, never zero.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::clock::Micros;
use crate::spec::Objectives;
use crate::workload::{Comparison, Ledger, WriteOutcome};

/// A target's RPO: what it achieved, against its objective, and what the ledger says was lost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rpo {
    /// `None` when the restored writes could not be read back.
    pub achieved_ms: Option<u64>,
    pub target_ms: u64,
    pub met: bool,
    pub acked_writes: u64,
    /// The counts below are `None` when the writes could not be read back (a failed restore,
    /// a service that never answered again): unknown, not zero.
    pub lost_writes: Option<u64>,
    pub holes: Option<u64>,
    pub unacked_present: Option<u64>,
    pub unexpected: Option<u64>,
    pub mismatched: Option<u64>,
    pub failed_present: Option<u64>,
    pub duplicates: Option<u64>,
    /// Why the counts are unknown, in a short phrase ("the restore failed").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_lost_writes: Option<u64>,
    /// Of the lost writes, those acknowledged after the fault's injection returned, which the
    /// RPO's time span leaves out (a split brain's deposed primary acknowledged them alone);
    /// absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_after_fault: Option<u64>,
    /// `r*`: the end of the recovered consistent prefix.
    pub recovered_prefix_seq: Option<u64>,
    /// `a_max`: the last write acknowledged before the fault.
    pub last_acked_before_fault_seq: Option<u64>,
    /// Nothing of the dataset survived: no seeded row and no acknowledged write.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub total_loss: bool,
    /// The oldest lost write's seq and ack time, if any was lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_lost_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_lost_acked_at_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Rpo {
    /// The RPO before anything was measured: its objectives only.
    pub fn unmeasured(objectives: &Objectives) -> Rpo {
        Rpo {
            target_ms: objectives.rpo.as_millis() as u64,
            max_lost_writes: objectives.max_lost_writes,
            ..Rpo::default()
        }
    }

    /// A drill's RPO: the ledger against what the restored target holds (`comparison`, or why
    /// it could not be read back: the restore failed when `restore_failed`), counting the
    /// writes acknowledged before `injected` (the first fault's injection returned).
    pub fn of_drill(
        objectives: &Objectives,
        ledger: &Ledger,
        comparison: &Result<Comparison, String>,
        restore_failed: bool,
        injected: Micros,
        workload_start: Micros,
    ) -> Rpo {
        let mut rpo = Rpo {
            acked_writes: ledger.count(WriteOutcome::Ok),
            last_acked_before_fault_seq: ledger.last_acked_before(injected).map(|w| w.seq),
            ..Rpo::unmeasured(objectives)
        };
        let c = match comparison {
            Err(why) => {
                rpo.note = Some(format!("unknown: {why}"));
                rpo.unknown = Some(if restore_failed {
                    "the restore failed".into()
                } else {
                    "the writes could not be read back".into()
                });
                return rpo;
            }
            Ok(c) => c,
        };
        let achieved = achieved(ledger, c, injected, workload_start);
        let lost = c.lost.len() as u64;
        rpo.achieved_ms = Some(achieved.as_millis() as u64);
        rpo.lost_writes = Some(lost);
        rpo.holes = Some(c.holes);
        rpo.unacked_present = Some(c.unacked_present);
        rpo.unexpected = Some(c.unexpected.len() as u64);
        rpo.mismatched = Some(c.mismatched.len() as u64);
        rpo.failed_present = Some(c.failed_present.len() as u64);
        rpo.duplicates = Some(c.duplicates);
        let after = c
            .lost
            .iter()
            .filter(|&&seq| ledger.get(seq).is_some_and(|w| w.completed >= injected))
            .count() as u64;
        rpo.lost_after_fault = (after > 0).then_some(after);
        rpo.recovered_prefix_seq = c.r_star;
        if let Some(&first) = c.lost.first() {
            rpo.first_lost_seq = Some(first);
            rpo.first_lost_acked_at_ms = ledger.get(first).map(|w| w.completed as f64 / 1000.0);
        }
        let within_loss = objectives.max_lost_writes.is_none_or(|m| lost <= m);
        rpo.met = achieved <= objectives.rpo && within_loss;
        if !within_loss {
            rpo.note = Some(format!(
                "{lost} acknowledged writes lost; at most {} allowed",
                objectives.max_lost_writes.unwrap_or(0)
            ));
        }
        rpo
    }

    /// The seed did not come back as seeded: the loss reaches back past the workload, to the
    /// dataset's creation (`seeded_at`), and misses the objective whatever its size. When
    /// nothing of the dataset as it stood when the fault began (`fault_began`) survived (`seed_gone`
    /// and every write acknowledged before then lost), it is a total loss. A write acknowledged
    /// while the fault was being injected may land after it (a write between a FLUSHALL and its
    /// reply) and does not make the old dataset survive.
    pub fn reach_back_to_seed(
        &mut self,
        ledger: &Ledger,
        comparison: &Result<Comparison, String>,
        (fault_began, injected): (Micros, Micros),
        seeded_at: Micros,
        seed_gone: bool,
    ) {
        let until = ledger
            .last_acked_before(injected)
            .map_or(injected, |w| w.completed);
        self.achieved_ms = Some(until.saturating_sub(seeded_at) / 1000);
        self.met = false;
        let nothing_survived = comparison.as_ref().is_ok_and(|c| {
            ledger
                .writes()
                .iter()
                .filter(|w| w.outcome == WriteOutcome::Ok && w.completed < fault_began)
                .all(|w| c.lost.binary_search(&w.seq).is_ok())
        });
        self.total_loss = seed_gone && nothing_survived;
        let why = if self.total_loss {
            "total loss: nothing of the dataset survived, neither the seed nor any acknowledged write"
        } else {
            "the seeded data did not survive as seeded (check `seed`): the loss reaches back to the dataset's creation"
        };
        self.note = Some(
            self.note
                .take()
                .map_or(why.to_string(), |n| format!("{why}; {n}")),
        );
    }

    /// Adds why the objective was missed when the restore knows (damage to the backup chain).
    pub fn explain_miss(&mut self, why: Option<&String>) {
        if let (false, Some(why)) = (self.met, why) {
            self.note = Some(
                self.note
                    .take()
                    .map_or(why.clone(), |n| format!("{n}; {why}")),
            );
        }
    }

    /// A restore test's RPO: how old the newest data it restored was when the test began
    /// (`tested_at`). `newest` is that point and how it was learned, or why there is none (no
    /// backup was fetched). There is no ledger, so no write counts.
    pub fn of_age(
        objectives: &Objectives,
        newest: Result<(SystemTime, String), String>,
        tested_at: SystemTime,
    ) -> Rpo {
        let mut rpo = Rpo {
            target_ms: objectives.rpo.as_millis() as u64,
            ..Rpo::default()
        };
        match newest {
            Err(why) => rpo.note = Some(format!("unknown: {why}")),
            Ok((point, said)) => {
                let age = tested_at.duration_since(point).unwrap_or(Duration::ZERO);
                rpo.achieved_ms = Some(age.as_millis() as u64);
                rpo.met = age <= objectives.rpo;
                rpo.note = Some(said);
            }
        }
        rpo
    }
}

/// RPO achieved: 0 when nothing acknowledged was lost; otherwise the ack time of the last write
/// acknowledged before `t_fault` minus the ack time of `r*` (the end of the recovered consistent
/// prefix), or minus `workload_start` when no acknowledged write survived.
pub fn achieved(
    ledger: &Ledger,
    comparison: &Comparison,
    t_fault: Micros,
    workload_start: Micros,
) -> Duration {
    if comparison.lost.is_empty() {
        return Duration::ZERO;
    }
    let Some(a_max) = ledger.last_acked_before(t_fault) else {
        return Duration::ZERO;
    };
    let prefix_end = comparison
        .r_star
        .and_then(|r| ledger.get(r))
        .map_or(workload_start, |w| w.completed);
    Duration::from_micros(a_max.completed.saturating_sub(prefix_end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Write, ledger::compare};

    /// Writes 1..=3 acknowledged before the fault began (at 100 ms), write 4 while it was being
    /// injected (until 120 ms); the seed is gone. `read` is what the restored target holds.
    fn after_a_flush(read: &[u64]) -> Rpo {
        let mut ledger = Ledger::new();
        for (seq, at) in [(1, 10_000), (2, 50_000), (3, 90_000), (4, 110_000)] {
            ledger.record(Write {
                seq,
                invoked: at - 1_000,
                completed: at,
                outcome: WriteOutcome::Ok,
                digest: seq,
            });
        }
        let read = read.iter().map(|&s| (s, s)).collect();
        let comparison = Ok(compare(&ledger, &read));
        let mut rpo = Rpo::default();
        rpo.reach_back_to_seed(&ledger, &comparison, (100_000, 120_000), 0, true);
        rpo
    }

    #[test]
    fn a_write_landing_during_the_injection_does_not_make_the_old_dataset_survive() {
        assert!(after_a_flush(&[]).total_loss);
        assert!(after_a_flush(&[4]).total_loss);
    }

    #[test]
    fn a_write_from_before_the_fault_that_survived_is_no_total_loss() {
        let rpo = after_a_flush(&[2, 4]);
        assert!(!rpo.total_loss);
        assert!(!rpo.met);
        assert!(
            rpo.note
                .unwrap()
                .starts_with("the seeded data did not survive")
        );
    }
}
