//! Suites: several scenario files (or folders of them) run as one. Scenarios are ordered by name,
//! a `--partition K/N` keeps every N-th one so CI jobs can shard a suite deterministically, a
//! scenario with a projection runs once per dataset size, at most `--jobs` drills run at once
//! ([`run`]), and the suite's exit is the worst of its drills' ([`Exit::worst`]). The RTOs a
//! projection's sizes achieved are fitted by [`project`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::docker::EnvironmentError;
use crate::drill::{self, RunOptions, RunResult};
use crate::exit::Exit;
use crate::history::RunRecord;
use crate::measure::projection::{self, Projection};
use crate::spec::Scenario;
use crate::util;

/// `K/N`: the K-th of N shards (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub index: usize,
    pub count: usize,
}

impl Partition {
    pub const WHOLE: Partition = Partition { index: 1, count: 1 };
}

impl FromStr for Partition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("partition {s:?}: expected K/N with 1 ≤ K ≤ N, e.g. 2/4");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Partition { index, count })
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The scenario files named by `paths`: files as given, folders as their `*.toml` files (not
/// recursive). Errors name the path that is neither.
pub fn scenario_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries =
                std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
                .collect();
            if found.is_empty() {
                return Err(format!("{}: no scenario files (*.toml)", path.display()));
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Orders `items` by `key` (name, then file) and keeps those of `partition`: the i-th item goes
/// to shard `i mod N`, so shards differ in size by at most one and every item is in exactly one.
pub fn partition<T>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> (&str, &Path),
    partition: Partition,
) -> Vec<T> {
    items.sort_by(|a, b| key(a).cmp(&key(b)));
    items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % partition.count == partition.index - 1)
        .map(|(_, item)| item)
        .collect()
}

/// Drills at once by default: one per two cores, and no more than one per 4 GiB of memory. Drills
/// running side by side share the CPU and the disk, which lengthens the RTO each one measures, so
/// a suite defaults to the load one machine carries without distorting it much.
pub fn default_jobs() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(4, |kib| (kib / (1024 * 1024)) as usize);
    (cores / 2).min(memory_gib / 4).max(1)
}

/// The drills of loaded `scenarios`: one per scenario, or one per dataset size for a scenario
/// with a projection (in the same shard).
pub fn expand(scenarios: &[(PathBuf, Scenario)]) -> Vec<(PathBuf, Scenario)> {
    scenarios
        .iter()
        .flat_map(|(file, s)| {
            s.expand_projection()
                .into_iter()
                .map(move |x| (file.clone(), x))
        })
        .collect()
}

/// How one drill of a suite ended.
pub enum Finished {
    /// Interrupted before it started.
    NotStarted,
    /// Ran, to a report.
    Ran(Box<RunResult>),
    /// Ended without a report: its run folder could not be made or written.
    Failed(anyhow::Error),
}

impl Finished {
    pub fn exit(&self) -> Exit {
        match self {
            Finished::NotStarted => Exit::Interrupted,
            Finished::Ran(r) => r.exit,
            Finished::Failed(e) if e.downcast_ref::<EnvironmentError>().is_some() => {
                Exit::Environment
            }
            Finished::Failed(_) => Exit::Missed,
        }
    }
}

/// Runs `drills` at most `jobs` at once, each in a tracing span named after its scenario, and
/// yields each as it ends, with its file and scenario. Once `cancel` fires, drills not yet
/// started do not start.
pub fn run<'a>(
    drills: &'a [(PathBuf, Scenario)],
    jobs: usize,
    cancel: CancellationToken,
    options: impl Fn(&Scenario) -> RunOptions + 'a,
) -> impl Stream<Item = (&'a Path, &'a Scenario, Finished)> + 'a {
    futures::stream::iter(drills.iter())
        .map(move |(file, s)| {
            let cancel = cancel.clone();
            let options = options(s);
            async move {
                if cancel.is_cancelled() {
                    return (file.as_path(), s, Finished::NotStarted);
                }
                let finished = match drill::run(s, &options, cancel)
                    .instrument(tracing::info_span!("drill", scenario = %s.name))
                    .await
                {
                    Ok(result) => Finished::Ran(Box::new(result)),
                    Err(e) => Finished::Failed(e),
                };
                (file.as_path(), s, finished)
            }
        })
        .buffer_unordered(jobs)
}

/// What a scenario's projection came to.
pub enum Projected {
    Fitted(Projection),
    /// Fewer than two sizes achieved an RTO: nothing to fit.
    TooFewPoints {
        scenario: String,
        target: String,
        measured: usize,
    },
}

/// Fits the RTO projection of each scenario that asks for one, from the suite's `records` of
/// its drills at each size, and writes it to `<reports>/<scenario>/projection.json`.
pub fn project(
    scenarios: &[(PathBuf, Scenario)],
    records: &[RunRecord],
    reports: &Path,
) -> anyhow::Result<Vec<Projected>> {
    let mut projections = Vec::new();
    for (_, s) in scenarios {
        let Some(target) = s.projected_target() else {
            continue;
        };
        let spec = target.dataset.projection.as_ref().expect("projected");
        let measured: Vec<(u64, Option<i64>)> = records
            .iter()
            .filter(|r| r.scenario == s.name)
            .filter_map(|r| r.targets.iter().find(|t| t.target == target.name))
            .map(|t| (t.dataset_rows.unwrap_or(0) as u64, t.rto_achieved_ms))
            .collect();
        let points: Vec<(u64, i64)> = measured
            .iter()
            .filter_map(|&(rows, rto)| rto.map(|ms| (rows, ms)))
            .collect();
        let objective = target.objectives.rto.as_millis() as i64;
        let Some(mut p) = projection::project(
            &s.name,
            &target.name,
            &points,
            spec.production_rows,
            objective,
        ) else {
            projections.push(Projected::TooFewPoints {
                scenario: s.name.clone(),
                target: target.name.clone(),
                measured: points.len(),
            });
            continue;
        };
        p.unmeasured_sizes = measured
            .iter()
            .filter(|(_, rto)| rto.is_none())
            .map(|(rows, _)| *rows)
            .collect();
        let folder = reports.join(&s.name);
        std::fs::create_dir_all(&folder)?;
        let mut json = serde_json::to_vec_pretty(&p)?;
        json.push(b'\n');
        util::write_atomically(&folder.join("projection.json"), &json)?;
        projections.push(Projected::Fitted(p));
    }
    Ok(projections)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partitions_parse_and_reject() {
        assert_eq!(
            "2/4".parse::<Partition>(),
            Ok(Partition { index: 2, count: 4 })
        );
        for bad in ["0/3", "4/3", "1", "a/b", "1/0", ""] {
            assert!(bad.parse::<Partition>().is_err(), "{bad}");
        }
    }

    #[test]
    fn folders_expand_to_their_scenarios_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.toml", "a.toml", "notes.md"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let files = scenario_files(&[dir.path().into()]).unwrap();
        assert_eq!(
            files,
            vec![dir.path().join("a.toml"), dir.path().join("b.toml")]
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(scenario_files(&[empty.path().into()]).is_err());
    }

    proptest! {
        #[test]
        fn every_scenario_is_in_exactly_one_partition(
            names in proptest::collection::vec("[a-z]{1,6}", 0..40),
            count in 1usize..8,
        ) {
            let items: Vec<(String, PathBuf)> = names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), PathBuf::from(format!("{i}.toml"))))
                .collect();
            let mut seen = Vec::new();
            let mut sizes = Vec::new();
            for index in 1..=count {
                // Shuffled input: the shard depends on the names, not the order given.
                let mut shuffled = items.clone();
                shuffled.reverse();
                let shard = partition(
                    shuffled,
                    |(n, p)| (n.as_str(), p.as_path()),
                    Partition { index, count },
                );
                sizes.push(shard.len());
                seen.extend(shard);
            }
            seen.sort();
            let mut all = items.clone();
            all.sort();
            prop_assert_eq!(seen, all);
            prop_assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        }
    }
}
