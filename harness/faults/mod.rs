//! Fault injection. Damage to a backup is the same for every kind and lives here; the outages
//! every kind suffers alike go to the target's service ([`Target::outages`]); the rest are the
//! kind's own ([`Target::inject`]).
//! Each returns what it did, for the report.

use std::io::{Seek, SeekFrom, Write as _};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;

use crate::backup::Backup;
use crate::spec::{FaultKind, FaultSpec};
use crate::targets::Target;

/// Bytes overwritten by `corrupt-backup`.
const BACKUP_DAMAGE_LEN: u64 = 4096;

/// Injects `fault`; `backups` are the target's completed backups, newest last.
pub async fn inject(
    fault: &FaultSpec,
    target: &mut dyn Target,
    backups: &[Backup],
) -> Result<serde_json::Value> {
    match fault.kind {
        FaultKind::CorruptBackup | FaultKind::TruncateBackup => {
            let newest = backups
                .last()
                .ok_or_else(|| anyhow!("no backup has been taken yet to damage"))?;
            let artefact = match &fault.artefact {
                Some(name) => newest
                    .artefacts
                    .iter()
                    .find(|a| &a.file == name)
                    .ok_or_else(|| {
                        let files: Vec<&str> = newest
                            .artefacts
                            .iter()
                            .map(|a| a.file.as_str())
                            .take(10)
                            .collect();
                        anyhow!(
                            "backup {} has no artefact {name:?} (it has {})",
                            newest.id,
                            files.join(", ")
                        )
                    })?,
                None => newest
                    .main_artefact()
                    .ok_or_else(|| anyhow!("backup {} has no artefacts", newest.id))?,
            };
            let path = newest.dir.join(&artefact.file);
            let mut details = if fault.kind == FaultKind::CorruptBackup {
                corrupt_file(&path)?
            } else {
                truncate_file(&path)?
            };
            details["backup"] = json!(newest.id);
            details["file"] = json!(path.display().to_string());
            Ok(details)
        }
        kind if kind.is_outage() => target.outages().inject(fault).await,
        _ => target.inject(fault, backups).await,
    }
}

/// Inverts [`BACKUP_DAMAGE_LEN`] bytes in the middle of the file (every byte changes).
pub fn corrupt_file(path: &std::path::Path) -> Result<serde_json::Value> {
    let mut bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    if bytes.is_empty() {
        bail!("{} is empty; nothing to corrupt", path.display());
    }
    let len = BACKUP_DAMAGE_LEN.min(bytes.len() as u64);
    let offset = (bytes.len() as u64 - len) / 2;
    for b in &mut bytes[offset as usize..(offset + len) as usize] {
        *b = !*b;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(&bytes[offset as usize..(offset + len) as usize])?;
    f.sync_all()?;
    Ok(json!({ "offset": offset, "length": len }))
}

/// Cuts the file to half its size.
pub fn truncate_file(path: &std::path::Path) -> Result<serde_json::Value> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let size = f.metadata()?.len();
    f.set_len(size / 2)?;
    f.sync_all()?;
    Ok(json!({ "size_before": size, "size_after": size / 2 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruption_changes_every_byte_of_the_window_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let original: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &original).unwrap();
        let d = corrupt_file(&path).unwrap();
        let after = std::fs::read(&path).unwrap();
        let (offset, len) = (
            d["offset"].as_u64().unwrap() as usize,
            d["length"].as_u64().unwrap() as usize,
        );
        assert_eq!(len, 4096);
        assert_eq!(after.len(), original.len());
        for (i, (a, b)) in original.iter().zip(&after).enumerate() {
            assert_eq!(a != b, (offset..offset + len).contains(&i), "byte {i}");
        }
    }

    #[test]
    fn truncation_halves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, vec![7u8; 1001]).unwrap();
        truncate_file(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 500);
    }
}
