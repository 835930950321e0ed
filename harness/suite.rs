//! Suites: several scenario files (or folders of them) run as one. Scenarios are ordered by name,
//! a `--partition K/N` keeps every N-th one so CI jobs can shard a suite deterministically, at most
//! `--jobs` drills run at once, and the suite's exit code is the worst of its drills'.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

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

/// The suite's exit code: the worst of its drills' (interrupted, then environment, then usage,
/// then missed, then met).
pub fn worst_exit(codes: impl IntoIterator<Item = u8>) -> u8 {
    let rank = |c: u8| match c {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 3,
        130 => 5,
        _ => 4,
    };
    codes.into_iter().max_by_key(|&c| rank(c)).unwrap_or(0)
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
    fn the_worst_exit_wins() {
        assert_eq!(worst_exit([0, 1, 0]), 1);
        assert_eq!(worst_exit([1, 3, 0]), 3);
        assert_eq!(worst_exit([3, 130, 1]), 130);
        assert_eq!(worst_exit([101, 1]), 101);
        assert_eq!(worst_exit([]), 0);
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
