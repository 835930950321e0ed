//! The scenarios drillrig ships: every one validates, and every one runs for real to the
//! outcome it promises (`scenarios/` met, `scenarios/controls/` and a description saying
//! "Expected outcome: `missed`" missed). Running them
//! takes about ten minutes, so that test is ignored by default:
//! `cargo test --release --test integration -- --ignored shipped`.

use std::path::PathBuf;
use std::process::Command;

use crate::common::{BIN, drill, engine, repo};

fn shipped() -> Vec<PathBuf> {
    in_folders(&["scenarios", "scenarios/controls"])
}

fn in_folders(dirs: &[&str]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for &dir in dirs {
        for entry in std::fs::read_dir(repo(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Every shipped scenario validates; the restore-test examples too, which restore backups only
/// their users have (`tests/integration/restore_tests.rs` runs restore tests for real).
#[test]
fn every_shipped_scenario_validates() {
    let mut files = shipped();
    assert!(files.len() >= 15, "{files:?}");
    let examples = in_folders(&["scenarios/restore-tests"]);
    assert!(examples.len() >= 4, "{examples:?}");
    files.extend(examples);
    let out = Command::new(BIN)
        .arg("validate")
        .args(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("ok: ").count(), files.len(), "{stdout}");
}

#[test]
#[ignore = "runs every shipped scenario for real (about ten minutes)"]
fn shipped_scenarios_run_to_the_outcome_their_folder_promises() {
    let _engine = engine();
    let mut failures = Vec::new();
    // A projection runs once per dataset size into folders of its own; the reports suite
    // runs a small one (`a_projection_runs_each_size_and_fits_the_rtos_it_measured`).
    for file in shipped()
        .into_iter()
        .filter(|f| !f.ends_with("pg-restore-projection.toml"))
    {
        let rel = file.strip_prefix(repo("")).unwrap().display().to_string();
        // Negative controls miss; so does a scenario whose description says it will.
        let text = std::fs::read_to_string(&file).unwrap();
        let want = if rel.contains("controls/") || text.contains("Expected outcome: `missed`") {
            "missed"
        } else {
            "met"
        };
        let test = format!("shipped-{}", file.file_stem().unwrap().to_string_lossy());
        let run = drill(&rel, &test, &[]);
        let got = run.report["outcome"].as_str().unwrap_or("none").to_string();
        eprintln!("{rel}: {got}");
        if got != want {
            failures.push(format!("{rel}: {got}, expected {want}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Every shipped scenario, restore-test examples included, is run by a test CI runs: its path
/// (`"scenarios/…toml"`) is named in this binary's code (comments aside) outside the tests
/// marked `#[ignore]`, which CI does not run. A variant of it ([`crate::common::variant`]) with a smaller
/// seed and shorter waits counts: it runs the file's own targets, checks and faults.
#[test]
fn every_shipped_scenario_is_run_by_a_test_ci_runs() {
    let mut sources = String::new();
    for entry in std::fs::read_dir(repo("tests/integration")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let code: String = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(|l| format!("{l}\n"))
                .collect();
            sources.push_str(&without_ignored_tests(&code));
        }
    }
    let mut files = shipped();
    files.extend(in_folders(&["scenarios/restore-tests"]));
    let unrun: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(repo("")).unwrap().display().to_string())
        .filter(|rel| !sources.contains(&format!("\"{rel}\"")))
        .collect();
    assert!(
        unrun.is_empty(),
        "shipped scenarios no test CI runs names: {unrun:#?}"
    );
}

/// `source` without the functions marked `#[ignore…]` (attribute to closing brace).
fn without_ignored_tests(source: &str) -> String {
    let mut kept = String::new();
    let mut rest = source;
    while let Some(at) = rest.find("#[ignore") {
        kept.push_str(&rest[..at]);
        let body = rest[at..].find('{').map_or(rest.len(), |b| at + b);
        let mut depth = 0;
        let mut end = rest.len();
        for (i, c) in rest[body..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = body + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    kept.push_str(rest);
    kept
}

/// The test scenarios named `*-every-kind` hold one target of every kind, so a new kind cannot
/// be left out of the outages, secrets and logs they prove (ARCHITECTURE.md §10).
#[test]
fn every_kind_scenarios_hold_every_kind() {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(repo("tests/scenarios")).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with("-every-kind.toml") {
            files.push(path);
        }
    }
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let s = drillrig::scenario::load(&file).unwrap();
        for kind in drillrig::spec::TargetKind::ALL {
            assert!(
                s.targets.iter().any(|t| t.kind == *kind),
                "{} has no {kind} target",
                file.display()
            );
        }
    }
}
