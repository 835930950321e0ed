//! Measurement (docs/measurement.md): outage detection by probes, the recovery phases the RTO
//! adds up, write latency over the ledger, and the RPO ([`rpo`]).

pub mod projection;
pub mod rpo;

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::time::Instant;

use crate::clock::{Clock, Micros};
use crate::workload::{Ledger, WriteOutcome};

/// A health probe of one target: a real read of the workload's data.
#[async_trait]
pub trait Prober: Send {
    /// `Err` with what failed when the target does not answer correctly.
    async fn probe(&mut self) -> Result<(), String>;
}

/// Interval between probe starts during an outage.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// A probe that takes longer fails.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What detection saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Detection {
    /// When the first failed probe completed (run ms); `None`: no probe failed in time.
    pub detected_at_ms: Option<u64>,
    /// What the failed probe said.
    pub cause: Option<String>,
    pub probes: u32,
    pub probe_interval_ms: u64,
    /// Mean and maximum probe latency seen, the resolution of the detection instant.
    pub probe_latency_mean_ms: f64,
    pub probe_latency_max_ms: f64,
}

/// Probes every [`PROBE_INTERVAL`] until one fails or `limit` passes.
pub async fn detect(prober: &mut dyn Prober, clock: &Clock, limit: Duration) -> Detection {
    let deadline = Instant::now() + limit;
    let mut d = Detection {
        probe_interval_ms: PROBE_INTERVAL.as_millis() as u64,
        ..Detection::default()
    };
    let mut total = Duration::ZERO;
    loop {
        let started = Instant::now();
        let result = match tokio::time::timeout(PROBE_TIMEOUT, prober.probe()).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(PROBE_TIMEOUT)
            )),
        };
        let latency = started.elapsed();
        d.probes += 1;
        total += latency;
        d.probe_latency_max_ms = d.probe_latency_max_ms.max(latency.as_secs_f64() * 1e3);
        d.probe_latency_mean_ms = total.as_secs_f64() * 1e3 / f64::from(d.probes);
        if let Err(cause) = result {
            d.detected_at_ms = Some(clock.millis());
            d.cause = Some(cause);
            return d;
        }
        let next = started + PROBE_INTERVAL;
        if next >= deadline {
            return d;
        }
        tokio::time::sleep_until(next).await;
    }
}

/// A phase of the recovery, from the fault to the verified target (RTO breakdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// From the fault until the restore begins (outage detection).
    Detect,
    /// The restore waits for the targets it restores after (`restore.after`) to recover.
    Wait,
    /// What the restore needs made durable first: a forced WAL segment switch and the wait for
    /// its archive (point-in-time restores while the primary still answers).
    Archive,
    /// A replacement container started and answering.
    Provision,
    /// The backup copied to where the restore tool reads it.
    Fetch,
    /// The service's own restore tool (and crash recovery or replay).
    Restore,
    /// Failover: the most advanced standby chosen and promoted (a runbook's promotion or the
    /// service's own election), the old primary fenced.
    Promote,
    /// Failover: the service's own election (Sentinel) until a new primary takes writes.
    Elect,
    /// Failover: the clients find the new primary and it takes writes.
    Reconnect,
    /// Checks, ledger read-back and the fresh write round trip.
    Verify,
}

/// Contiguous recovery phases: each phase ends where the next begins, so the phases add up to
/// the whole recovery time, harness overhead included.
#[derive(Debug, Clone)]
pub struct RecoveryPhases {
    clock: Clock,
    marks: Vec<(Phase, Micros)>,
}

impl RecoveryPhases {
    /// Starts the breakdown at `start` (run µs) in phase `first`.
    pub fn new(clock: Clock, first: Phase, start: Micros) -> Self {
        RecoveryPhases {
            clock,
            marks: vec![(first, start)],
        }
    }

    /// Ends the current phase now and begins `phase`.
    pub fn enter(&mut self, phase: Phase) {
        self.marks.push((phase, self.clock.micros()));
    }

    pub fn current(&self) -> Phase {
        self.marks.last().expect("phases start with one").0
    }

    /// Milliseconds per phase, ending the last phase at `end` (run µs). A phase entered twice
    /// adds up.
    pub fn durations(&self, end: Micros) -> Vec<(Phase, u64)> {
        let mut out: Vec<(Phase, u64)> = Vec::new();
        for (i, &(phase, start)) in self.marks.iter().enumerate() {
            let stop = self.marks.get(i + 1).map_or(end, |m| m.1);
            let ms = stop.saturating_sub(start) / 1000;
            match out.iter_mut().find(|(p, _)| *p == phase) {
                Some((_, total)) => *total += ms,
                None => out.push((phase, ms)),
            }
        }
        out
    }
}

/// Acknowledged-write latency (invoke to acknowledgement) over one span of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub writes: u64,
    /// Writes invoked in the span that were never acknowledged (failed, or no answer in time):
    /// not in the percentiles.
    pub unacknowledged: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// The writes of `ledger` invoked in `[from, to)` (run µs): the latencies of the acknowledged
/// ones (ms, ascending), and how many were never acknowledged (failed, or no answer in time).
fn latencies(ledger: &Ledger, from: Micros, to: Micros) -> (Vec<f64>, u64) {
    let mut ms = Vec::new();
    let mut unacknowledged = 0;
    for w in ledger
        .writes()
        .iter()
        .filter(|w| w.invoked >= from && w.invoked < to)
    {
        if w.outcome == WriteOutcome::Ok {
            ms.push(w.completed.saturating_sub(w.invoked) as f64 / 1000.0);
        } else {
            unacknowledged += 1;
        }
    }
    ms.sort_by(f64::total_cmp);
    (ms, unacknowledged)
}

/// The acknowledged-write latency of the writes invoked in `[from, to)`: nearest-rank
/// percentiles of the acknowledged ones, and the count of the others.
pub fn write_latency(ledger: &Ledger, from: Micros, to: Micros) -> LatencySummary {
    let (ms, unacknowledged) = latencies(ledger, from, to);
    let rank = |p: f64| {
        (!ms.is_empty()).then(|| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1])
    };
    LatencySummary {
        writes: ms.len() as u64,
        unacknowledged,
        p50_ms: rank(0.50),
        p99_ms: rank(0.99),
        max_ms: ms.last().copied(),
    }
}

/// The p99 of every write invoked in `[from, to)`, each write never acknowledged counted as
/// slower than every acknowledged one: `None` when the 99th percentile falls on such a write,
/// or no write was invoked. The figure a latency objective is held against.
pub fn write_p99_counting_unacknowledged(ledger: &Ledger, from: Micros, to: Micros) -> Option<f64> {
    let (ms, unacknowledged) = latencies(ledger, from, to);
    let k = (0.99 * (ms.len() as u64 + unacknowledged) as f64).ceil() as usize;
    (1..=ms.len()).contains(&k).then(|| ms[k - 1])
}

#[cfg(test)]
mod tests {
    use super::rpo::achieved as rpo;
    use super::*;
    use crate::workload::ledger::{Write, WriteOutcome, compare};
    use proptest::prelude::*;

    fn ledger(acked_at: &[(WriteOutcome, u64)]) -> Ledger {
        let mut l = Ledger::new();
        for (i, &(outcome, t)) in acked_at.iter().enumerate() {
            let seq = i as u64 + 1;
            l.record(Write {
                seq,
                invoked: t.saturating_sub(1),
                completed: t,
                outcome,
                digest: seq,
            });
        }
        l
    }

    fn read(seqs: &[u64]) -> Vec<(u64, u64)> {
        seqs.iter().map(|&s| (s, s)).collect()
    }

    /// 200 writes invoked 1 ms apart, write `i` taking `i` ms, the listed ones never acknowledged.
    fn timed(unacknowledged: &[u64]) -> Ledger {
        let mut l = Ledger::new();
        for seq in 1..=200u64 {
            let invoked = seq * 1_000;
            l.record(Write {
                seq,
                invoked,
                completed: invoked + seq * 1_000,
                outcome: if unacknowledged.contains(&seq) {
                    WriteOutcome::Info
                } else {
                    WriteOutcome::Ok
                },
                digest: seq,
            });
        }
        l
    }

    #[test]
    fn a_latency_objective_counts_unacknowledged_writes_as_the_slowest() {
        // All acknowledged: the p99 of 200 is the 198th fastest, 198 ms.
        let all = timed(&[]);
        assert_eq!(write_latency(&all, 0, u64::MAX).p99_ms, Some(198.0));
        assert_eq!(
            write_p99_counting_unacknowledged(&all, 0, u64::MAX),
            Some(198.0)
        );
        // Two fast writes never answered: the acknowledged p99 does not move much, but counted
        // as the slowest they are the top 1 %: the p99 is the slowest acknowledged one.
        let two = timed(&[1, 2]);
        let summary = write_latency(&two, 0, u64::MAX);
        assert_eq!((summary.writes, summary.unacknowledged), (198, 2));
        assert_eq!(summary.p99_ms, Some(199.0));
        assert_eq!(
            write_p99_counting_unacknowledged(&two, 0, u64::MAX),
            Some(200.0)
        );
        // Three: the 99th percentile is a write never answered, so no p99 holds.
        let three = timed(&[1, 2, 3]);
        assert_eq!(write_p99_counting_unacknowledged(&three, 0, u64::MAX), None);
        // Only the span counts: the writes invoked from 150 ms on.
        let span = write_latency(&three, 150_000, u64::MAX);
        assert_eq!((span.writes, span.unacknowledged), (51, 0));
        assert_eq!(write_p99_counting_unacknowledged(&three, 0, 0), None);
    }

    #[test]
    fn no_loss_is_zero_rpo() {
        let l = ledger(&[(WriteOutcome::Ok, 100), (WriteOutcome::Ok, 200)]);
        let c = compare(&l, &read(&[1, 2]));
        assert_eq!(rpo(&l, &c, 1_000, 0), Duration::ZERO);
    }

    #[test]
    fn rpo_spans_from_the_prefix_end_to_the_last_ack_before_the_fault() {
        let l = ledger(&[
            (WriteOutcome::Ok, 1_000),
            (WriteOutcome::Ok, 2_000),
            (WriteOutcome::Ok, 5_000),
            (WriteOutcome::Ok, 9_000),
        ]);
        let c = compare(&l, &read(&[1, 2]));
        // Fault at 8 000 µs: a_max is seq 3 (5 000); the write acked after the fault is lost too
        // but does not stretch the RPO.
        assert_eq!(rpo(&l, &c, 8_000, 0), Duration::from_micros(3_000));
    }

    #[test]
    fn nothing_surviving_measures_from_the_workload_start() {
        let l = ledger(&[(WriteOutcome::Ok, 1_000), (WriteOutcome::Ok, 2_000)]);
        let c = compare(&l, &read(&[]));
        assert_eq!(rpo(&l, &c, 10_000, 400), Duration::from_micros(1_600));
    }

    #[test]
    fn unacknowledged_writes_do_not_count() {
        let l = ledger(&[
            (WriteOutcome::Ok, 1_000),
            (WriteOutcome::Info, 2_000),
            (WriteOutcome::Fail, 3_000),
        ]);
        let c = compare(&l, &read(&[1]));
        assert_eq!(rpo(&l, &c, 10_000, 0), Duration::ZERO);
    }

    proptest! {
        /// With prefix loss, the RPO is exactly the span of acknowledged writes lost before the fault.
        #[test]
        fn prefix_loss_rpo(gaps in prop::collection::vec(1u64..1_000, 1..100), kept in 0usize..100, fault_after in 0usize..100) {
            let mut t = 0;
            let times: Vec<u64> = gaps.iter().map(|g| { t += g; t }).collect();
            let l = ledger(&times.iter().map(|&t| (WriteOutcome::Ok, t)).collect::<Vec<_>>());
            let kept = kept.min(times.len());
            let c = compare(&l, &read(&(1..=kept as u64).collect::<Vec<_>>()));
            let fault_idx = fault_after.min(times.len() - 1);
            let t_fault = times[fault_idx] + 1;
            let got = rpo(&l, &c, t_fault, 0);
            let a_max = times[fault_idx];
            let prefix_end = if kept == 0 { 0 } else { times[kept - 1] };
            let want = if kept == times.len() { 0 } else { a_max.saturating_sub(prefix_end) };
            prop_assert_eq!(got, Duration::from_micros(want));
        }
    }
}
