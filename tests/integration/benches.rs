//! Every benchmark runs: each script under `benches/` at its smallest size, with the drillrig
//! under test, and `cargo bench` in criterion's test mode. Only the shape of the output is held
//! (the ratio line, a figure per side), never a value: speed goals are the benchmarks' own
//! (docs/performance.md), and the machine is busy with other drills meanwhile.

use std::process::Command;

use crate::common::{BIN, engine, repo};

/// A command run as from the shell that ran `cargo test`: without the variables Cargo gives a
/// test (`CARGO_PKG_*`, `LD_LIBRARY_PATH`, ...). A nested `cargo build` that sees them takes its
/// dependencies for changed and recompiles them, ring and reqwest included, while every other
/// test waits on Cargo's lock (minutes, measured).
fn as_from_the_shell(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let cargos =
            name.starts_with("CARGO") && name != "CARGO_HOME" && name != "CARGO_TARGET_DIR";
        if cargos
            || [
                "LD_LIBRARY_PATH",
                "RUST_TEST_THREADS",
                "RUST_RECURSION_COUNT",
            ]
            .contains(&&*name)
        {
            command.env_remove(&*name);
        }
    }
    command.current_dir(repo("."));
    command
}

/// Runs `benches/<script> args...` from the repository; returns its stdout, failing the test
/// with both streams if it fails.
fn bench(script: &str, args: &[&str]) -> String {
    let out = as_from_the_shell(repo("benches").join(script))
        .args(args)
        .env("DRILLRIG", BIN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} {}: {}\n{stdout}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The figure after `prefix` on the line that starts with it: a positive number.
fn ratio(stdout: &str, prefix: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line `{prefix}…`:\n{stdout}"));
    let figure: f64 = line[prefix.len()..]
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("no figure in `{line}`"));
    assert!(figure.is_finite() && figure > 0.0, "{line}");
    figure
}

#[test]
fn workload_density_compares_every_kind() {
    let _engine = engine();
    let stdout = bench(
        "workload-density.sh",
        &["-n", "1", "-s", "2", "postgres", "redis", "rabbitmq"],
    );
    // The summary: per kind, pairs, both medians, the ratio of medians and the median of ratios.
    let summary = stdout.split("ratio_of_medians").nth(1).expect(&stdout);
    for kind in ["postgres", "redis", "rabbitmq"] {
        let row: Vec<f64> = summary
            .lines()
            .find(|l| l.starts_with(kind))
            .unwrap_or_else(|| panic!("no {kind} row:\n{stdout}"))
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap())
            .collect();
        assert_eq!(row.len(), 5, "{kind}: {row:?}");
        assert_eq!(row[0], 1.0, "one pair");
        assert!(row[1..].iter().all(|f| *f > 0.0), "{kind}: {row:?}");
    }
}

fn recovery_vs_shell(kind: &str) {
    let _engine = engine();
    let stdout = bench("recovery-vs-shell.sh", &[kind, "1"]);
    ratio(&stdout, "ratio drillrig / shell: ");
}

#[test]
fn recovery_vs_shell_postgres() {
    recovery_vs_shell("postgres");
}

#[test]
fn recovery_vs_shell_redis() {
    recovery_vs_shell("redis");
}

#[test]
fn recovery_vs_shell_rabbitmq() {
    recovery_vs_shell("rabbitmq");
}

#[test]
fn restore_test_vs_shell_compares_restore_and_fetch() {
    let _engine = engine();
    let stdout = bench("restore-test-vs-shell.sh", &["10000", "1"]);
    ratio(&stdout, "restore ratio drillrig / shell: ");
    ratio(&stdout, "fetch ratio drillrig / plain GET: ");
}

#[test]
fn restore_scaling_prints_every_phase() {
    let _engine = engine();
    let stdout = bench("restore-scaling.sh", &["1000"]);
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("1000 "))
        .unwrap_or_else(|| panic!("no row for 1000 orders:\n{stdout}"))
        .split_whitespace()
        .collect();
    // orders, dump MB, then detect, provision, fetch, restore, verify and the RTO in seconds.
    assert_eq!(row.len(), 8, "{row:?}");
    for phase in &row[2..] {
        let seconds: f64 = phase.trim_end_matches('s').parse().expect(phase);
        assert!(seconds >= 0.0, "{row:?}");
    }
    assert!(row[7] != "0.00s", "an RTO of zero: {row:?}");
}

/// `cargo bench` in criterion's test mode: every benchmark runs once.
#[test]
fn cargo_bench_runs_in_test_mode() {
    let out = as_from_the_shell(env!("CARGO"))
        .args(["bench", "--bench", "ledger", "--", "--test"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Success"), "{stdout}");
    assert!(stdout.contains("peak resident memory: "), "{stdout}");
}
