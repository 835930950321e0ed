//! The backup repository: one folder per backup under the run's `backups/<target>/`, each with
//! its artefacts and a `manifest.json` recording what the harness knew when it took it (times,
//! sha256 per artefact, row counts and digests of the snapshot).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::Micros;
pub use crate::digest::{Artefact, sha256_file};
use crate::spec::BackupMethod;

/// Row count and content digest of one dataset (a table, a keyspace, a queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetDigest {
    pub rows: u64,
    pub digest: String,
}

/// Datasets by name, in name order.
pub type Contents = BTreeMap<String, DatasetDigest>;

/// The snapshot a backup was taken from, still open on the service, so that its contents are
/// read only for the one backup the drill's restore will use: reading every table at every
/// scheduled backup would load the service with work the drill throws away. Dropping it
/// releases the snapshot.
#[async_trait]
pub trait HeldSnapshot: Send + Sync {
    /// Row counts and digests of what the snapshot holds.
    async fn contents(self: Box<Self>) -> Result<Contents>;
}

impl std::fmt::Debug for dyn HeldSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldSnapshot")
    }
}

/// Why a manifest's `contents` are empty while its snapshot is held.
pub const CONTENTS_HELD: &str = "read only for the backup a restore uses";

/// What a target reports about a backup it took.
#[derive(Debug)]
pub struct FreshBackup {
    /// When the backup's consistency point was fixed (run µs): every write acknowledged before
    /// it is in the backup.
    pub consistent_at: Micros,
    pub artefacts: Vec<Artefact>,
    /// What the backup holds, when the target read it with the backup; else `held`.
    pub contents: Contents,
    /// The snapshot to read `contents` from later.
    pub held: Option<Box<dyn HeldSnapshot>>,
    /// The newest workload seq the backup holds.
    pub max_seq: Option<u64>,
    /// What only this method knows (start and end LSN of a base backup, …).
    pub details: serde_json::Value,
}

/// A completed backup, as recorded in its manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backup {
    pub target: String,
    pub id: u32,
    pub method: BackupMethod,
    #[serde(skip)]
    pub dir: PathBuf,
    pub began_ms: u64,
    pub consistent_at_us: Micros,
    pub finished_ms: u64,
    pub artefacts: Vec<Artefact>,
    pub contents: Contents,
    /// Why `contents` is empty: not read (the backup was not the one restored) or the read
    /// failed. A check comparing contents is then `unknown`, never a silent pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents_unread: Option<String>,
    pub max_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl Backup {
    /// The folder of the target's repository this backup sits in (the site's, or the DR
    /// site's after a site loss): its continuous archive, if any, is beside it.
    pub fn repository(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    /// The continuous archive beside this backup ([`ARCHIVE`]).
    pub fn archive(&self) -> PathBuf {
        self.repository().join(ARCHIVE)
    }

    pub fn size(&self) -> u64 {
        self.artefacts.iter().map(|a| a.size).sum()
    }

    /// The size of the data itself: WAL a base backup carries along is left out, since its
    /// size follows segment boundaries rather than the data.
    pub fn data_size(&self) -> u64 {
        self.artefacts
            .iter()
            .filter(|a| !a.is_wal())
            .map(|a| a.size)
            .sum()
    }

    /// [`Backup::data_size`] as the files are now, on disk: what a restore would read. A data
    /// file that is gone counts 0.
    pub fn data_size_on_disk(&self) -> u64 {
        self.artefacts
            .iter()
            .filter(|a| !a.is_wal())
            .map(|a| {
                std::fs::metadata(self.dir.join(&a.file))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// The artefact a damaging fault aims at: the largest data file.
    pub fn main_artefact(&self) -> Option<&Artefact> {
        self.artefacts
            .iter()
            .filter(|a| !a.is_wal())
            .max_by_key(|a| a.size)
    }

    /// Recomputes each artefact's sha256; returns the artefacts that no longer match.
    pub fn verify(&self) -> Result<Vec<String>> {
        let mut damaged = Vec::new();
        for a in &self.artefacts {
            let path = self.dir.join(&a.file);
            match sha256_file(&path) {
                Ok((sum, size)) if sum == a.sha256 && size == a.size => {}
                Ok((_, size)) => damaged.push(format!(
                    "{} (sha256 differs; {size} bytes, manifest says {})",
                    a.file, a.size
                )),
                Err(e) => damaged.push(format!("{} ({e:#})", a.file)),
            }
        }
        Ok(damaged)
    }
}

/// A target's continuous archive inside its folder of the repository: files the service
/// archives as it runs (PostgreSQL's WAL), each written whole under its name with its sha256
/// recorded beside it in `<name>.sha256` first. Offsite shipping sends each as it appears.
pub const ARCHIVE: &str = "wal";

/// The files of the continuous archive `dir` that are whole (their sha256 is recorded),
/// sorted by name; none when there is no archive.
pub fn archived_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let names: std::collections::BTreeSet<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names
        .iter()
        .filter(|n| !n.ends_with(".sha256") && !n.ends_with(".part"))
        .filter(|n| names.contains(&format!("{n}.sha256")))
        .cloned()
        .collect()
}

/// The run's backup folders.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
}

impl Repository {
    pub fn new(root: PathBuf) -> Self {
        Repository { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates and returns the folder for backup `id` of `target`.
    pub fn prepare(&self, target: &str, id: u32, method: BackupMethod) -> Result<PathBuf> {
        let dir = self.root.join(target).join(format!("{id:03}-{method}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(dir)
    }

    /// The continuous archive of `target` ([`ARCHIVE`]).
    pub fn archive(&self, target: &str) -> PathBuf {
        self.root.join(target).join(ARCHIVE)
    }

    /// Writes the manifest of a completed backup.
    pub fn record(&self, backup: &Backup) -> Result<()> {
        let path = backup.dir.join("manifest.json");
        crate::util::write_atomically(&path, &serde_json::to_vec_pretty(backup)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_finds_a_changed_artefact() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dump"), b"hello backup").unwrap();
        let (sha256, size) = sha256_file(&dir.path().join("dump")).unwrap();
        let backup = Backup {
            target: "pg".into(),
            id: 1,
            method: BackupMethod::PgDump,
            dir: dir.path().to_path_buf(),
            began_ms: 0,
            consistent_at_us: 0,
            finished_ms: 1,
            artefacts: vec![Artefact {
                file: "dump".into(),
                size,
                sha256,
            }],
            contents: Contents::new(),
            contents_unread: None,
            max_seq: None,
            details: serde_json::Value::Null,
        };
        assert!(backup.verify().unwrap().is_empty());
        std::fs::write(dir.path().join("dump"), b"hello backuq").unwrap();
        assert_eq!(backup.verify().unwrap().len(), 1);
    }
}
