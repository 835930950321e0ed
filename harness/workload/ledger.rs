//! The ledger: every write the workload attempted, with its outcome and monotonic times, and its
//! comparison with what a restored target holds (docs/measurement.md §4).

use serde::Serialize;

use crate::clock::Micros;

/// What the client learned about one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteOutcome {
    /// The server acknowledged it (commit returned, publish confirmed).
    Ok,
    /// Definitely not applied (refused before sending, or rejected by the server).
    Fail,
    /// Unknown: timed out, or the connection was lost after sending.
    Info,
}

impl WriteOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOutcome::Ok => "ok",
            WriteOutcome::Fail => "fail",
            WriteOutcome::Info => "info",
        }
    }
}

/// One attempted write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    pub seq: u64,
    pub invoked: Micros,
    pub completed: Micros,
    pub outcome: WriteOutcome,
    /// Digest of the value written, so a read-back can tell a damaged value from the right one.
    pub digest: u64,
}

/// Every write of one target's workload, in `seq` order; `seq` starts at 1 and has no gaps.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    writes: Vec<Write>,
}

impl Ledger {
    pub fn new() -> Self {
        Ledger::default()
    }

    /// The `seq` the next write must carry.
    pub fn next_seq(&self) -> u64 {
        self.writes.len() as u64 + 1
    }

    /// Appends a write.
    ///
    /// # Panics
    /// If `write.seq` is not [`Ledger::next_seq`]: one writer, strictly increasing seqs.
    pub fn record(&mut self, write: Write) {
        assert_eq!(
            write.seq,
            self.next_seq(),
            "ledger seqs must be consecutive"
        );
        self.writes.push(write);
    }

    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    pub fn get(&self, seq: u64) -> Option<&Write> {
        seq.checked_sub(1).and_then(|i| self.writes.get(i as usize))
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub fn count(&self, outcome: WriteOutcome) -> u64 {
        self.writes.iter().filter(|w| w.outcome == outcome).count() as u64
    }

    /// The last write acknowledged strictly before `t`.
    pub fn last_acked_before(&self, t: Micros) -> Option<&Write> {
        self.writes
            .iter()
            .rev()
            .find(|w| w.outcome == WriteOutcome::Ok && w.completed < t)
    }
}

impl Ledger {
    /// Writes the ledger as CSV: `seq,invoked_ms,completed_ms,outcome,lost`, where `lost` is
    /// `yes` / `no` for acknowledged writes (`unknown` without a comparison) and empty otherwise.
    pub fn write_csv(
        &self,
        comparison: Option<&Comparison>,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        writeln!(out, "seq,invoked_ms,completed_ms,outcome,lost")?;
        // `lost` is ascending, as are the writes: walk both once.
        let mut lost = comparison.map(|c| c.lost.iter().copied().peekable());
        for w in &self.writes {
            let mark = match (w.outcome, lost.as_mut()) {
                (WriteOutcome::Ok, None) => "unknown",
                (WriteOutcome::Ok, Some(lost)) => {
                    if lost.next_if_eq(&w.seq).is_some() {
                        "yes"
                    } else {
                        "no"
                    }
                }
                _ => "",
            };
            writeln!(
                out,
                "{},{:.3},{:.3},{},{mark}",
                w.seq,
                w.invoked as f64 / 1e3,
                w.completed as f64 / 1e3,
                w.outcome.as_str()
            )?;
        }
        Ok(())
    }

    /// Writes the ledger of `target` into the run folder `dir` as `ledger-<target>.csv`
    /// ([`Ledger::write_csv`]), atomically; returns its name, relative to `dir`, or `None` (with
    /// a warning) when it cannot be written: the drill's verdict does not depend on it.
    pub fn write_file(
        &self,
        dir: &std::path::Path,
        target: &str,
        comparison: Option<&Comparison>,
    ) -> Option<String> {
        let name = format!("ledger-{target}.csv");
        let written = crate::util::write_atomically_with(&dir.join(&name), |out| {
            self.write_csv(comparison, out)
        });
        match written {
            Ok(()) => Some(name),
            Err(e) => {
                tracing::warn!("cannot write {name}: {e:#}");
                None
            }
        }
    }
}

/// What a restored target holds: `(seq, value digest)` per write read back. A seq may appear more
/// than once (queues redeliver).
pub type ReadBack = Vec<(u64, u64)>;

/// The ledger against a read-back (docs/measurement.md §4).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Comparison {
    pub attempted: u64,
    /// Writes with outcome `ok`.
    pub acked: u64,
    /// Distinct attempted writes found in the read-back.
    pub recovered: u64,
    /// Acknowledged but absent, ascending.
    pub lost: Vec<u64>,
    /// Lost writes older than some recovered write: non-prefix loss.
    pub holes: u64,
    /// The newest acknowledged write such that every acknowledged write up to it was recovered.
    pub r_star: Option<u64>,
    /// Writes with outcome `info` that landed: allowed.
    pub unacked_present: u64,
    /// Writes with outcome `fail` that landed: the client was told they were not applied.
    pub failed_present: Vec<u64>,
    /// Read back but never attempted, ascending.
    pub unexpected: Vec<u64>,
    /// Read back with a value other than the one written, ascending.
    pub mismatched: Vec<u64>,
    /// Extra deliveries of a write read back more than once.
    pub duplicates: u64,
}

impl Comparison {
    /// Whether the restored data is consistent with the ledger: no holes, nothing unexpected,
    /// no damaged values, nothing the client was told failed. Prefix loss is not inconsistency;
    /// the RPO measures it.
    pub fn consistent(&self) -> bool {
        self.holes == 0
            && self.unexpected.is_empty()
            && self.mismatched.is_empty()
            && self.failed_present.is_empty()
    }
}

/// Compares `ledger` with `read`. Linear in both; one counter per attempted write.
pub fn compare(ledger: &Ledger, read: &ReadBack) -> Comparison {
    let n = ledger.len();
    let mut seen = vec![0u32; n + 1];
    let mut unexpected = Vec::new();
    let mut mismatched = Vec::new();
    let mut duplicates = 0u64;
    for &(seq, digest) in read {
        let Some(write) = ledger.get(seq) else {
            unexpected.push(seq);
            continue;
        };
        let count = &mut seen[seq as usize];
        *count = count.saturating_add(1);
        if *count == 1 {
            if digest != write.digest {
                mismatched.push(seq);
            }
        } else {
            duplicates += 1;
        }
    }
    unexpected.sort_unstable();
    unexpected.dedup();
    mismatched.sort_unstable();

    let newest_recovered = (1..=n).rev().find(|&s| seen[s] > 0).map(|s| s as u64);
    let mut c = Comparison {
        attempted: n as u64,
        unexpected,
        mismatched,
        duplicates,
        ..Comparison::default()
    };
    let mut prefix_intact = true;
    for write in ledger.writes() {
        let present = seen[write.seq as usize] > 0;
        if present {
            c.recovered += 1;
        }
        match (write.outcome, present) {
            (WriteOutcome::Ok, true) => {
                c.acked += 1;
                if prefix_intact {
                    c.r_star = Some(write.seq);
                }
            }
            (WriteOutcome::Ok, false) => {
                c.acked += 1;
                prefix_intact = false;
                c.lost.push(write.seq);
                if newest_recovered.is_some_and(|r| write.seq < r) {
                    c.holes += 1;
                }
            }
            (WriteOutcome::Info, true) => c.unacked_present += 1,
            (WriteOutcome::Fail, true) => c.failed_present.push(write.seq),
            (_, false) => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ledger(outcomes: &[WriteOutcome]) -> Ledger {
        let mut l = Ledger::new();
        for (i, &outcome) in outcomes.iter().enumerate() {
            let seq = i as u64 + 1;
            l.record(Write {
                seq,
                invoked: seq * 10,
                completed: seq * 10 + 5,
                outcome,
                digest: seq * 7,
            });
        }
        l
    }

    fn read(seqs: &[u64]) -> ReadBack {
        seqs.iter().map(|&s| (s, s * 7)).collect()
    }

    use WriteOutcome::{Fail, Info, Ok as Acked};

    #[test]
    fn everything_recovered_is_consistent_with_no_loss() {
        let l = ledger(&[Acked, Acked, Info, Acked]);
        let c = compare(&l, &read(&[1, 2, 3, 4]));
        assert_eq!(c.lost, Vec::<u64>::new());
        assert_eq!(c.r_star, Some(4));
        assert_eq!(c.unacked_present, 1);
        assert_eq!(c.holes, 0);
        assert!(c.consistent());
    }

    #[test]
    fn the_csv_marks_lost_writes_only_among_acknowledged_ones() {
        let l = ledger(&[Acked, Acked, Fail, Info, Acked]);
        let c = compare(&l, &read(&[1, 4]));
        let mut csv = Vec::new();
        l.write_csv(Some(&c), &mut csv).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "seq,invoked_ms,completed_ms,outcome,lost\n\
             1,0.010,0.015,ok,no\n\
             2,0.020,0.025,ok,yes\n\
             3,0.030,0.035,fail,\n\
             4,0.040,0.045,info,\n\
             5,0.050,0.055,ok,yes\n"
        );
        let mut csv = Vec::new();
        l.write_csv(None, &mut csv).unwrap();
        assert!(
            String::from_utf8(csv)
                .unwrap()
                .ends_with("5,0.050,0.055,ok,unknown\n")
        );
    }

    #[test]
    fn prefix_loss_has_no_holes() {
        let l = ledger(&[Acked, Acked, Acked, Acked]);
        let c = compare(&l, &read(&[1, 2]));
        assert_eq!(c.lost, vec![3, 4]);
        assert_eq!(c.r_star, Some(2));
        assert_eq!(c.holes, 0);
        assert!(c.consistent());
    }

    #[test]
    fn a_missing_write_below_a_recovered_one_is_a_hole() {
        let l = ledger(&[Acked, Acked, Acked, Acked, Acked]);
        let c = compare(&l, &read(&[1, 3, 4]));
        assert_eq!(c.lost, vec![2, 5]);
        assert_eq!(c.r_star, Some(1));
        assert_eq!(c.holes, 1);
        assert!(!c.consistent());
    }

    #[test]
    fn an_info_write_that_landed_makes_older_lost_writes_holes() {
        let l = ledger(&[Acked, Acked, Info]);
        let c = compare(&l, &read(&[1, 3]));
        assert_eq!(c.lost, vec![2]);
        assert_eq!(c.holes, 1);
    }

    #[test]
    fn phantoms_damaged_values_and_landed_failures_are_inconsistent() {
        let l = ledger(&[Acked, Fail, Acked]);
        let mut r = read(&[1, 2, 3, 99]);
        r[2].1 = 0;
        let c = compare(&l, &r);
        assert_eq!(c.unexpected, vec![99]);
        assert_eq!(c.failed_present, vec![2]);
        assert_eq!(c.mismatched, vec![3]);
        assert!(!c.consistent());
    }

    #[test]
    fn redeliveries_count_as_duplicates() {
        let l = ledger(&[Acked, Acked]);
        let c = compare(&l, &read(&[1, 1, 2, 1]));
        assert_eq!(c.duplicates, 2);
        assert_eq!(c.recovered, 2);
        assert!(c.consistent());
    }

    #[test]
    fn nothing_recovered_loses_every_acked_write_without_holes() {
        let l = ledger(&[Acked, Info, Acked]);
        let c = compare(&l, &read(&[]));
        assert_eq!(c.lost, vec![1, 3]);
        assert_eq!(c.r_star, None);
        assert_eq!(c.holes, 0);
    }

    #[test]
    fn last_acked_before_is_strict() {
        let l = ledger(&[Acked, Info, Acked]);
        // Completions at 15, 25 (info) and 35.
        assert_eq!(l.last_acked_before(36).map(|w| w.seq), Some(3));
        assert_eq!(l.last_acked_before(35).map(|w| w.seq), Some(1));
        assert_eq!(l.last_acked_before(15), None);
    }

    fn outcome() -> impl Strategy<Value = WriteOutcome> {
        prop_oneof![6 => Just(Acked), 1 => Just(Fail), 2 => Just(Info)]
    }

    proptest! {
        /// The definitions of docs/measurement.md §5, checked against a direct set computation.
        #[test]
        fn comparison_matches_the_set_definitions(
            outcomes in prop::collection::vec(outcome(), 0..200),
            present in prop::collection::vec(any::<bool>(), 200),
            phantom in prop::option::of(201u64..400),
        ) {
            let l = ledger(&outcomes);
            let mut seqs: Vec<u64> = (1..=outcomes.len() as u64).filter(|&s| present[s as usize - 1]).collect();
            seqs.extend(phantom);
            let c = compare(&l, &read(&seqs));

            let acked: Vec<u64> = l.writes().iter().filter(|w| w.outcome == Acked).map(|w| w.seq).collect();
            let in_r = |s: u64| seqs.contains(&s);
            let lost: Vec<u64> = acked.iter().copied().filter(|&s| !in_r(s)).collect();
            prop_assert_eq!(&c.lost, &lost);
            prop_assert_eq!(c.acked, acked.len() as u64);

            let r_star = acked.iter().copied().take_while(|&s| in_r(s)).last();
            prop_assert_eq!(c.r_star, r_star);

            let newest = seqs.iter().copied().filter(|&s| s <= outcomes.len() as u64).max();
            let holes = lost.iter().filter(|&&s| newest.is_some_and(|n| s < n)).count() as u64;
            prop_assert_eq!(c.holes, holes);

            let info_present = l.writes().iter().filter(|w| w.outcome == Info && in_r(w.seq)).count() as u64;
            prop_assert_eq!(c.unacked_present, info_present);
            prop_assert_eq!(c.unexpected, phantom.into_iter().collect::<Vec<_>>());

            // A prefix of the acked writes recovered means no holes, whatever else is missing.
            if lost.iter().all(|&s| r_star.is_none_or(|r| s > r)) && newest.is_none_or(|n| lost.iter().all(|&s| s > n)) {
                prop_assert_eq!(c.holes, 0);
            }
        }
    }
}
