//! The workload: one writer per target, writing at the scenario's rate and recording every
//! attempt in the [`Ledger`], outages included; or the platform's, one application writing
//! each seq through several targets in turn ([`run_chain`]).

pub mod ledger;

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

pub use ledger::{Comparison, Ledger, ReadBack, Write, WriteOutcome};

use crate::clock::Clock;

/// A write that takes longer than this is recorded as `info` (unknown).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause after a failed write at rate 0, so an outage is recorded without spinning.
const FAILURE_BACKOFF: Duration = Duration::from_millis(10);

/// Writes one record per `seq` to a target and classifies what the server said.
#[async_trait]
pub trait Writer: Send {
    /// The digest of the value written for `seq`; what a read-back of that write must show.
    fn digest(&self, seq: u64) -> u64;

    /// Writes `seq`. `Fail` only when the write certainly did not apply.
    async fn write(&mut self, seq: u64) -> WriteOutcome;
}

/// Runs `writer` at `rate` writes per second (0: back to back) until `stop`, recording every
/// attempt. A write cut short by `stop` is recorded as `info`.
pub async fn run(
    mut writer: Box<dyn Writer>,
    rate: u32,
    clock: Clock,
    stop: CancellationToken,
) -> Ledger {
    let mut ledger = Ledger::new();
    let mut ticks = (rate > 0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs(1) / rate);
        t.set_missed_tick_behavior(MissedTickBehavior::Skip);
        t
    });
    loop {
        if let Some(t) = ticks.as_mut() {
            tokio::select! {
                _ = t.tick() => {}
                _ = stop.cancelled() => break,
            }
        } else if stop.is_cancelled() {
            break;
        }
        let write = attempt(writer.as_mut(), ledger.next_seq(), true, &clock, &stop).await;
        let outcome = write.outcome;
        ledger.record(write);
        if stop.is_cancelled() {
            break;
        }
        if ticks.is_none() && outcome != WriteOutcome::Ok {
            tokio::time::sleep(FAILURE_BACKOFF).await;
        }
    }
    ledger
}

/// Runs the platform workload until `stop`: per seq, each writer in turn, the next only once the
/// one before acknowledged (an application writing its order, then the cache entry, then the
/// event). A write not attempted because an earlier one was not acknowledged certainly did not
/// apply: it is recorded as `fail`, so every ledger holds every seq. One ledger per writer, in
/// order; a seq is acknowledged by the platform when it is `ok` in all of them.
pub async fn run_chain(
    mut writers: Vec<Box<dyn Writer>>,
    rate: u32,
    clock: Clock,
    stop: CancellationToken,
) -> Vec<Ledger> {
    let mut ledgers: Vec<Ledger> = writers.iter().map(|_| Ledger::new()).collect();
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    'writes: loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => break,
        }
        let seq = ledgers[0].next_seq();
        let mut acknowledged = true;
        for (writer, ledger) in writers.iter_mut().zip(ledgers.iter_mut()) {
            let write = attempt(writer.as_mut(), seq, acknowledged, &clock, &stop).await;
            acknowledged &= write.outcome == WriteOutcome::Ok;
            ledger.record(write);
        }
        if stop.is_cancelled() {
            break 'writes;
        }
    }
    ledgers
}

/// One write of `seq`, bounded by [`WRITE_TIMEOUT`] and cut short (as `info`) by `stop`; not
/// attempted, and so `fail`, unless `go`.
async fn attempt(
    writer: &mut dyn Writer,
    seq: u64,
    go: bool,
    clock: &Clock,
    stop: &CancellationToken,
) -> Write {
    let digest = writer.digest(seq);
    let invoked = clock.micros();
    let outcome = if go {
        tokio::select! {
            r = tokio::time::timeout(WRITE_TIMEOUT, writer.write(seq)) => r.unwrap_or(WriteOutcome::Info),
            _ = stop.cancelled() => WriteOutcome::Info,
        }
    } else {
        WriteOutcome::Fail
    };
    Write {
        seq,
        invoked,
        completed: clock.micros(),
        outcome,
        digest,
    }
}

/// A deterministic 64-bit mix (splitmix64): values and digests derived from `(seed, seq)`.
pub fn mix(seed: u64, x: u64) -> u64 {
    let mut z = seed ^ x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
