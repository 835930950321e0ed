//! The platform workload's cross-store check: after every target recovered, does each event
//! and cache entry still have its order, and each order its event? Each disagreement is
//! explained by a target's recovery point (the store restored to before that seq) or by a write
//! the application never finished, or it is not explained at all, which fails the check. A
//! consistency point across the stores is claimed only when nothing disagrees.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::workload::{Ledger, WriteOutcome};

/// One store of the platform workload as recovered: its ledger and the seqs read back from it.
pub struct Store<'a> {
    pub target: &'a str,
    pub ledger: &'a Ledger,
    pub present: &'a BTreeSet<u64>,
}

/// The verdict of the cross-store check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrossStore {
    /// Events whose order is missing.
    pub phantom_events: u64,
    /// Cache entries whose order is missing.
    pub orphan_cache_entries: u64,
    /// Orders whose event is missing.
    pub orders_without_event: u64,
    /// What explains how many of them.
    pub explained: Vec<Explained>,
    /// Disagreements nothing explains, by seq (at most 20 listed).
    pub unexplained: Vec<String>,
    pub unexplained_count: u64,
    /// The newest seq all three stores hold, claimed only when nothing disagrees.
    pub consistent_at_seq: Option<u64>,
    /// No disagreement is unexplained.
    pub passed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explained {
    pub finding: String,
    pub cause: String,
    pub count: u64,
}

/// Why `seq`'s write to `store` is not there: the write was never acknowledged, or the store's
/// recovery point (its restore stopped before `seq`: it holds nothing newer); `None` when the
/// store acknowledged the write and holds newer ones, so it should hold this one too (a hole).
fn why_missing(store: &Store<'_>, seq: u64) -> Option<String> {
    let acked = store
        .ledger
        .get(seq)
        .is_some_and(|w| w.outcome == WriteOutcome::Ok);
    if !acked {
        return Some(format!("never acknowledged by {}", store.target));
    }
    match store.present.last() {
        Some(&newest) if seq < newest => None,
        Some(&newest) => Some(format!(
            "{}'s recovery point (it holds writes up to seq {newest})",
            store.target
        )),
        None => Some(format!(
            "{}'s recovery point (it holds none of the workload's writes)",
            store.target
        )),
    }
}

/// Compares the three stores of the platform workload.
pub fn cross_store(order: &Store<'_>, cache: &Store<'_>, event: &Store<'_>) -> CrossStore {
    let mut explained: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut unexplained = Vec::new();
    let mut count = |finding: &str, missing_from: &Store<'_>, seqs: Vec<u64>| {
        for &seq in &seqs {
            match why_missing(missing_from, seq) {
                Some(cause) => *explained.entry((finding.to_string(), cause)).or_default() += 1,
                None => unexplained.push(format!(
                    "seq {seq}: {finding}, though {} acknowledged it and holds newer writes",
                    missing_from.target
                )),
            }
        }
        seqs.len() as u64
    };
    let phantom_events = count(
        "event without its order",
        order,
        event.present.difference(order.present).copied().collect(),
    );
    let orphan_cache_entries = count(
        "cache entry without its order",
        order,
        cache.present.difference(order.present).copied().collect(),
    );
    let orders_without_event = count(
        "order without its event",
        event,
        order.present.difference(event.present).copied().collect(),
    );
    let unexplained_count = unexplained.len() as u64;
    unexplained.truncate(20);
    let agree = phantom_events == 0 && orphan_cache_entries == 0 && orders_without_event == 0;
    let consistent_at_seq = agree
        .then(|| {
            order
                .present
                .iter()
                .rev()
                .find(|s| cache.present.contains(s) && event.present.contains(s))
                .copied()
        })
        .flatten();
    CrossStore {
        phantom_events,
        orphan_cache_entries,
        orders_without_event,
        explained: explained
            .into_iter()
            .map(|((finding, cause), count)| Explained {
                finding,
                cause,
                count,
            })
            .collect(),
        unexplained,
        unexplained_count,
        consistent_at_seq,
        passed: unexplained_count == 0,
    }
}

impl CrossStore {
    /// One line for tables and the history.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} event(s) without their order, {} cache entr(ies) without their order, {} order(s) without their event",
            self.phantom_events, self.orphan_cache_entries, self.orders_without_event
        );
        for e in &self.explained {
            s.push_str(&format!("; {} {}: {}", e.count, e.finding, e.cause));
        }
        if self.unexplained_count > 0 {
            s.push_str(&format!("; {} unexplained", self.unexplained_count));
        }
        match self.consistent_at_seq {
            Some(seq) => s.push_str(&format!("; consistent across the stores at seq {seq}")),
            None => s.push_str("; no consistency point across the stores"),
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Write;

    fn ledger(outcomes: &[WriteOutcome]) -> Ledger {
        let mut l = Ledger::new();
        for (i, &outcome) in outcomes.iter().enumerate() {
            l.record(Write {
                seq: i as u64 + 1,
                invoked: 0,
                completed: 0,
                outcome,
                digest: 0,
            });
        }
        l
    }

    #[test]
    fn each_disagreement_is_explained_by_a_recovery_point_or_counted_as_unexplained() {
        use WriteOutcome::{Fail, Ok};
        // Ten seqs; the database came back to 6, the cache to 8, the broker to 9; seq 10's
        // event was never acknowledged.
        let all = [Ok; 10];
        let mut events = [Ok; 10];
        events[9] = Fail;
        let (lo, lc, le) = (ledger(&all), ledger(&all), ledger(&events));
        let up_to = |n: u64| (1..=n).collect::<BTreeSet<u64>>();
        let (po6, po, pc, pe) = (up_to(6), up_to(10), up_to(8), up_to(9));
        let store = |target, ledger, present| Store {
            target,
            ledger,
            present,
        };
        let c = cross_store(
            &store("db", &lo, &po6),
            &store("cache", &lc, &pc),
            &store("mq", &le, &pe),
        );
        assert_eq!(
            (
                c.phantom_events,
                c.orphan_cache_entries,
                c.orders_without_event
            ),
            (3, 2, 0)
        );
        assert!(c.passed && c.consistent_at_seq.is_none());
        assert_eq!(
            c.explained[0].cause,
            "db's recovery point (it holds writes up to seq 6)"
        );

        // The database holds all ten: seq 10's event was never acknowledged (explained); seq 3's
        // event is a hole in the broker, which holds newer events (unexplained).
        let mut gapped = pe.clone();
        gapped.remove(&3);
        let c = cross_store(
            &store("db", &lo, &po),
            &store("cache", &lc, &pc),
            &store("mq", &le, &gapped),
        );
        assert_eq!(c.orders_without_event, 2);
        assert_eq!(c.unexplained_count, 1, "{c:?}");
        assert!(
            c.unexplained[0].starts_with("seq 3:"),
            "{:?}",
            c.unexplained
        );
        assert!(!c.passed);
        assert!(
            c.explained
                .iter()
                .any(|e| e.cause == "never acknowledged by mq" && e.count == 1),
            "{:?}",
            c.explained
        );

        // All agree: the consistency point is the newest seq all three hold.
        let same = up_to(7);
        let c = cross_store(
            &store("db", &lo, &same),
            &store("cache", &lc, &same),
            &store("mq", &le, &same),
        );
        assert_eq!(c.consistent_at_seq, Some(7));
        assert!(c.passed);
    }
}
