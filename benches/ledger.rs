//! The costs that grow with a drill's writes: comparing a ledger of 10⁶ writes with a read-back
//! (goal < 100 ms, peak memory < 100 MB) and writing its CSV atomically (what `report` adds per
//! write; report.json and report.md do not grow with writes).
//!
//! `cargo bench --bench ledger` prints criterion's timings, then the peak resident memory.

use std::hint::black_box;

use criterion::{BatchSize, Criterion};
use drillrig::util::write_atomically_with;
use drillrig::workload::ledger::compare;
use drillrig::workload::{Ledger, ReadBack, Write, WriteOutcome};

const WRITES: u64 = 1_000_000;

/// 10⁶ writes: acknowledged but every 50th unknown and every 97th failed; the read-back holds a
/// prefix of 990 000 in shuffled order, plus a second copy of every 1000th (queues redeliver).
fn drill() -> (Ledger, ReadBack) {
    let mut ledger = Ledger::new();
    for seq in 1..=WRITES {
        let outcome = match seq {
            s if s % 97 == 0 => WriteOutcome::Fail,
            s if s % 50 == 0 => WriteOutcome::Info,
            _ => WriteOutcome::Ok,
        };
        ledger.record(Write {
            seq,
            invoked: seq * 1000,
            completed: seq * 1000 + 700,
            outcome,
            digest: seq ^ 0x5bd1e995,
        });
    }
    let mut read: ReadBack = (1..=990_000)
        .filter(|s| s % 97 != 0)
        .map(|s| (s, s ^ 0x5bd1e995))
        .collect();
    read.extend((1..=990).map(|k| (k * 1000, (k * 1000) ^ 0x5bd1e995)));
    // A fixed permutation: restored rows rarely come back in seq order.
    let n = read.len();
    for i in 0..n {
        read.swap(i, (i * 7919 + 13) % n);
    }
    (ledger, read)
}

/// Peak resident set size of this process, from /proc (Linux).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn main() {
    let (ledger, read) = drill();
    let c = compare(&ledger, &read);
    // The comparison did the work: a prefix loss, the duplicates, no holes.
    assert_eq!((c.holes, c.duplicates, c.r_star), (0, 980, Some(989_999)));
    let peak_after_one = peak_rss_mb();

    let mut criterion = Criterion::default().configure_from_args();
    criterion.bench_function("compare 10^6 writes", |b| {
        b.iter(|| black_box(compare(&ledger, &read)))
    });
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("ledger.csv");
    let mut group = criterion.benchmark_group("report");
    group.sample_size(10);
    group.bench_function("write the ledger CSV of 10^6 writes (atomic)", |b| {
        b.iter_batched(
            || (),
            |()| {
                write_atomically_with(&path, |out| ledger.write_csv(Some(&c), out))
                    .expect("written")
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    criterion.final_summary();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!("ledger CSV of {WRITES} writes: {:.1} MB", size as f64 / 1e6);
    match (peak_after_one, peak_rss_mb()) {
        (Some(first), Some(all)) => println!(
            "peak resident memory: {first:.1} MB after building the ledger, the read-back and one comparison; {all:.1} MB at the end"
        ),
        _ => println!("peak resident memory: unknown (no /proc/self/status)"),
    }
}
