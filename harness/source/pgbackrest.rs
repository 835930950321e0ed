//! pgBackRest repositories as sources: a repository is told from its own layout
//! (`backup/STANZA/backup.info`), its backup sets from `backup.info`, and the set restored is the
//! newest that finished (by the time given, for a point-in-time restore). The restore itself is
//! pgbackrest's, in the scratch container (docs/restore-tests.md §2).

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::Unrestorable;
use crate::docker::EnvironmentError;

/// The backup set a restore test restores, as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupSet {
    pub stanza: String,
    /// The set's label (`20261130-113143F_20261130-113150D`), given to `pgbackrest restore --set`.
    pub label: String,
    /// `full`, `diff` or `incr`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Sets the stanza holds.
    pub sets: usize,
    #[serde(skip)]
    pub started: SystemTime,
    /// When pgbackrest finished the set: the point the restored cluster is consistent from.
    #[serde(skip)]
    pub stopped: SystemTime,
}

/// The stanzas of a repository whose files are `names` (relative to its root): none when it is
/// no pgBackRest repository.
pub fn stanzas<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut found: Vec<String> = names
        .into_iter()
        .filter_map(|n| {
            let rest = n.strip_prefix("backup/")?.strip_suffix("/backup.info")?;
            (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The stanza to restore: the one named, else the only one.
pub fn choose_stanza(
    found: &[String],
    named: Option<&str>,
    label: &str,
) -> Result<String, EnvironmentError> {
    match named {
        Some(n) if found.iter().any(|f| f == n) => Ok(n.to_string()),
        Some(n) => Err(EnvironmentError {
            cause: format!(
                "the pgBackRest repository {label} has no stanza {n:?} (it has {})",
                found.join(", ")
            ),
            fix: "check source.stanza against the repository's backup/ folder".into(),
        }),
        None if found.len() == 1 => Ok(found[0].clone()),
        None => Err(EnvironmentError {
            cause: format!(
                "the pgBackRest repository {label} holds stanzas {}",
                found.join(", ")
            ),
            fix: "name the one to restore with source.stanza".into(),
        }),
    }
}

#[derive(Deserialize)]
struct SetInfo {
    #[serde(rename = "backup-timestamp-start")]
    start: u64,
    #[serde(rename = "backup-timestamp-stop")]
    stop: u64,
    #[serde(rename = "backup-type")]
    kind: String,
    #[serde(rename = "backup-error", default)]
    error: bool,
}

/// The set to restore from a stanza's `backup.info` text (`file` names it in findings): the
/// newest that finished, by `not_after` when given. Sets pgbackrest marked as having page
/// errors are skipped, as pgbackrest's own choice of set would.
pub fn choose_set(
    info: &[u8],
    stanza: &str,
    file: &str,
    not_after: Option<SystemTime>,
) -> anyhow::Result<BackupSet> {
    if info.starts_with(b"Salted__") {
        return Err(EnvironmentError {
            cause: format!("{file} is encrypted (a repository with repo1-cipher-type)"),
            fix: "drillrig restores unencrypted pgBackRest repositories; test an unencrypted copy, or restore it with pgbackrest and give the resulting base backup".into(),
        }
        .into());
    }
    let text = std::str::from_utf8(info)
        .map_err(|_| Unrestorable(format!("{file} is not pgBackRest's backup.info: not text")))?;
    let mut section = "";
    let mut sets = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') && line.ends_with(']') {
            section = line;
            continue;
        }
        if section != "[backup:current]" || line.is_empty() {
            continue;
        }
        let (label, json) = line.split_once('=').ok_or_else(|| {
            Unrestorable(format!("{file} line {}: no `LABEL={{…}}` entry", i + 1))
        })?;
        let set: SetInfo = serde_json::from_str(json)
            .map_err(|e| Unrestorable(format!("{file} line {}: {e}", i + 1)))?;
        sets.push((label.to_string(), set));
    }
    if !text.contains("[backrest]") {
        return Err(Unrestorable(format!("{file} is not pgBackRest's backup.info")).into());
    }
    let count = sets.len();
    let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    let chosen = sets
        .into_iter()
        .filter(|(_, s)| !s.error)
        .filter(|(_, s)| not_after.is_none_or(|limit| at(s.stop) <= limit))
        .max_by_key(|(_, s)| s.stop);
    let Some((label, set)) = chosen else {
        return Err(Unrestorable(match not_after {
            Some(t) => format!(
                "stanza {stanza} holds no backup set finished by {} ({count} set(s) in {file}): a point-in-time restore starts from a backup taken before its target",
                humantime::format_rfc3339_seconds(t)
            ),
            None => format!("stanza {stanza} holds no usable backup set ({file})"),
        })
        .into());
    };
    Ok(BackupSet {
        stanza: stanza.to_string(),
        label,
        kind: set.kind,
        sets: count,
        started: at(set.start),
        stopped: at(set.stop),
    })
}

/// Whether a repository file belongs to `stanza`'s backups or WAL archive (what a restore
/// reads), as opposed to other stanzas'.
pub fn belongs_to(name: &str, stanza: &str) -> bool {
    ["backup", "archive"]
        .iter()
        .any(|top| name.starts_with(&format!("{top}/{stanza}/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = r#"[backrest]
backrest-format=5
backrest-version="2.45"

[backup:current]
20261130-113143F={"backrest-format":5,"backup-timestamp-start":1796038303,"backup-timestamp-stop":1796038309,"backup-type":"full","backup-error":false}
20261130-113143F_20261130-113150D={"backrest-format":5,"backup-reference":["20261130-113143F"],"backup-timestamp-start":1796038310,"backup-timestamp-stop":1796038312,"backup-type":"diff"}
20261130-113143F_20261130-113200I={"backup-timestamp-start":1796038320,"backup-timestamp-stop":1796038322,"backup-type":"incr","backup-error":true}

[db]
db-version="15"
"#;

    #[test]
    fn the_newest_finished_set_is_chosen_and_a_time_bounds_it() {
        let s = choose_set(INFO.as_bytes(), "shop", "backup.info", None).unwrap();
        assert_eq!(s.label, "20261130-113143F_20261130-113150D");
        assert_eq!(s.kind, "diff");
        assert_eq!(s.sets, 3);
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1796038311);
        let s = choose_set(INFO.as_bytes(), "shop", "backup.info", Some(t)).unwrap();
        assert_eq!(s.label, "20261130-113143F");
        let early = SystemTime::UNIX_EPOCH + Duration::from_secs(1796038300);
        let e = choose_set(INFO.as_bytes(), "shop", "backup.info", Some(early)).unwrap_err();
        assert!(e.downcast_ref::<Unrestorable>().is_some(), "{e}");
    }

    #[test]
    fn damaged_or_encrypted_info_is_named() {
        let e = choose_set(b"Salted__\x01\x02", "shop", "b/backup.info", None).unwrap_err();
        assert!(e.downcast_ref::<EnvironmentError>().is_some());
        let broken = INFO.replace("\"backup-type\":\"diff\"}", "\"backup-type\":");
        let e = choose_set(broken.as_bytes(), "shop", "b/backup.info", None).unwrap_err();
        assert!(e.to_string().contains("b/backup.info line 7"), "{e}");
    }

    #[test]
    fn stanzas_come_from_the_layout() {
        let names = [
            "backup/shop/backup.info",
            "backup/shop/backup.info.copy",
            "backup/crm/backup.info",
            "archive/shop/archive.info",
            "backup/shop/20261130-113143F/backup.manifest",
            "dump.sql",
        ];
        assert_eq!(stanzas(names), vec!["crm", "shop"]);
        assert!(stanzas(["base.tar.gz"]).is_empty());
        assert_eq!(
            choose_stanza(&stanzas(names), Some("shop"), "r").unwrap(),
            "shop"
        );
        assert!(choose_stanza(&stanzas(names), None, "r").is_err());
        assert!(belongs_to("archive/shop/15-1/x.gz", "shop"));
        assert!(!belongs_to("archive/shopping/15-1/x.gz", "shop"));
    }
}
