//! The library's modules import one another one way only: the graph of `crate::` references
//! between top-level modules of `harness/` has no circle, and every module imports only what its
//! layer allows (ARCHITECTURE.md §9 is this table in prose).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module of a source file: `harness/targets/redis/mod.rs` → `targets`.
fn module_of(path: &Path, root: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Module → the modules its code names as `crate::X` (test code left out: a test may reach
/// anywhere).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("harness");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f, &root)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = module_of(file, &root);
        if ["main", "lib"].contains(&from.as_str())
            || file.ends_with("tests.rs")
            || file.ends_with("fake.rs")
        {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        // Code before the first `#[cfg(test)]` module only, without comments (a doc link is
        // no import).
        let code: String = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let code = code.as_str();
        let mut names = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if modules.contains(&name) && name != from {
                names.insert(name);
            }
        }
        // `use crate::{a, b::c}` lists.
        for (i, _) in code.match_indices("crate::{") {
            let list = &code[i + "crate::{".len()..];
            let list = &list[..list.find('}').unwrap_or(0)];
            for item in list.split(',') {
                let name = item.trim().split("::").next().unwrap_or("").to_string();
                if modules.contains(&name) && name != from {
                    names.insert(name);
                }
            }
        }
        graph.entry(from).or_default().extend(names);
    }
    graph
}

/// A circle through `start`, if there is one.
fn circle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    let here = path.last().unwrap().clone();
    for next in graph.get(&here).into_iter().flatten() {
        if *next == path[0] {
            let mut c = path.clone();
            c.push(next.clone());
            return Some(c);
        }
        if !path.contains(next) {
            path.push(next.clone());
            if let Some(c) = circle(graph, path) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn no_module_of_the_library_imports_one_that_imports_it_back() {
    let graph = graph();
    assert!(graph.len() > 10, "the graph was not read: {graph:?}");
    for start in graph.keys() {
        if let Some(c) = circle(&graph, &mut vec![start.clone()]) {
            panic!("modules import each other in a circle: {}", c.join(" → "));
        }
    }
}

#[test]
fn the_leaves_import_nothing_from_the_crate() {
    let graph = graph();
    let leaves = ["clock", "digest", "exit", "util"];
    for leaf in leaves {
        assert_eq!(
            graph.get(leaf).cloned().unwrap_or_default(),
            BTreeSet::new(),
            "{leaf} must be a leaf"
        );
    }
    // The vocabulary every layer reads uses leaves only.
    for used in graph.get("spec").into_iter().flatten() {
        assert!(leaves.contains(&used.as_str()), "spec imports {used}");
    }
}

/// The leaves every layer may use.
const LEAVES: &[&str] = &["spec", "clock", "digest", "exit", "util"];

/// Per module, the modules of the crate it may import besides the leaves: the layers of
/// ARCHITECTURE.md §9, from the command down. `main` may import anything.
const ALLOWED: &[(&str, &[&str])] = &[
    // The end of a suite, and the suite.
    (
        "suite_end",
        &[
            "suite", "history", "publish", "notify", "report", "measure", "checks",
        ],
    ),
    ("suite", &["drill", "history", "measure", "docker"]),
    // Input: validation asks the kinds' capabilities.
    ("scenario", &["targets"]),
    // The engine.
    (
        "drill",
        &[
            "faults", "checks", "targets", "source", "backup", "docker", "measure", "workload",
            "report", "live", "offsite",
        ],
    ),
    ("faults", &["targets", "backup"]),
    // Services.
    (
        "targets",
        &[
            "checks", "backup", "source", "docker", "measure", "workload", "proxy",
        ],
    ),
    ("offsite", &["backup", "source", "docker"]),
    ("source", &["docker"]),
    ("checks", &["backup", "workload", "docker"]),
    ("proxy", &[]),
    ("backup", &[]),
    ("measure", &["workload"]),
    ("workload", &[]),
    ("docker", &[]),
    ("live", &[]),
    // Results.
    (
        "report",
        &[
            "checks", "targets", "source", "docker", "measure", "backup", "offsite",
        ],
    ),
    ("history", &["report", "checks"]),
    ("publish", &["history", "report", "measure"]),
    ("notify", &["history", "report"]),
];

#[test]
fn every_module_imports_only_what_its_layer_allows() {
    let graph = graph();
    for (module, imports) in &graph {
        if LEAVES.contains(&module.as_str()) {
            continue;
        }
        let allowed = ALLOWED
            .iter()
            .find(|(m, _)| m == module)
            .unwrap_or_else(|| {
                panic!("module {module} has no layer: add it to ALLOWED and to ARCHITECTURE.md §9")
            })
            .1;
        for import in imports {
            assert!(
                allowed.contains(&import.as_str()) || LEAVES.contains(&import.as_str()),
                "{module} imports {import}, which its layer does not allow (ARCHITECTURE.md §9)"
            );
        }
    }
}
