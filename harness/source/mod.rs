//! Sources of restore tests: the user's own backups, in a folder or an object store. [`fetch`]
//! finds the newest backup, copies it into the run folder (hashing as it goes), removes any
//! compression, and tells its [`format`] and the time it was made from its own bytes.
//!
//! Object stores go through the `object_store` crate: S3 and S3-compatible servers (an
//! `endpoint`), Google Cloud Storage and Azure, with credentials from each one's standard
//! environment variables (docs/restore-tests.md §1).

mod aws_profile;
pub mod format;
pub mod pgbackrest;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::docker::EnvironmentError;
use crate::spec::{SourceLocation, SourceSpec};
pub use format::{Compression, Format};

/// A fetched backup, ready to restore.
#[derive(Debug, Clone, Serialize)]
pub struct Fetched {
    /// Its name in the source (a file name, or an object key).
    pub object: String,
    /// Where it is now: a file or a folder in the run folder, with any compression removed.
    #[serde(skip)]
    pub local: PathBuf,
    pub format: Format,
    /// Whether it was encrypted with age (and decrypted before the restore).
    pub encrypted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// Bytes fetched, as stored.
    pub bytes: u64,
    pub fetch_ms: u64,
    /// sha256 of the bytes as stored (files; a folder has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The object's or file's modification time (RFC 3339).
    pub modified: String,
    /// When the backup was made (RFC 3339): the consistent point its RPO counts from.
    pub made_at: String,
    /// Where `made_at` was read.
    pub made_at_from: String,
    /// PostgreSQL archives: the database the dump was taken from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The sidecar checksum found next to it (`NAME.sha256` or `SHA256SUMS`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<Sidecar>,
    /// A base backup's WAL archive, fetched beside it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalArchive>,
    /// The companion file fetched beside the backup ([`Format::companion`]): a tar base
    /// backup's `backup_manifest`, a definitions export's `messages.jsonl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub companion: Option<String>,
    #[serde(skip)]
    pub companion_path: Option<PathBuf>,
    /// A pgBackRest repository's set to restore (`local` is then the repository's copy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgbackrest: Option<pgbackrest::BackupSet>,
    #[serde(skip)]
    pub made_at_time: SystemTime,
}

impl Fetched {
    /// The folder the fetched copy lies in: what a container mounts to reach it.
    pub fn folder(&self) -> &Path {
        self.local
            .parent()
            .expect("a fetched copy lies in the run folder")
    }

    /// The fetched copy's name in [`Fetched::folder`].
    pub fn file_name(&self) -> String {
        self.local
            .file_name()
            .expect("a fetched copy has a name")
            .to_string_lossy()
            .into_owned()
    }
}

/// A fetched WAL archive.
#[derive(Debug, Clone, Serialize)]
pub struct WalArchive {
    #[serde(skip)]
    pub local: PathBuf,
    /// Files fetched (segments, `.history`, `.backup`).
    pub files: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sidecar {
    pub file: String,
    pub sha256: String,
}

/// A backup found in the source that no format drillrig knows, or that is damaged: a finding
/// about the backup, not a failure of the environment.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unrestorable(pub String);

/// One entry of a source listing.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    size: u64,
    modified: SystemTime,
    /// A folder (a directory-format dump).
    folder: bool,
}

fn open(location: &SourceLocation) -> Result<Box<dyn Source>> {
    Ok(match location {
        SourceLocation::Path(p) => Box::new(Folder::open(p)?),
        SourceLocation::Url {
            url,
            endpoint,
            region,
        } => Box::new(Bucket::open(url, endpoint.as_deref(), region.as_deref())?),
    })
}

/// Fetches the newest backup `spec` names into `dest` (created): with `not_after`, the newest
/// made by then (a base backup a point-in-time restore starts from).
pub async fn fetch(
    spec: &SourceSpec,
    dest: &Path,
    not_after: Option<SystemTime>,
) -> Result<Fetched> {
    std::fs::create_dir_all(dest).with_context(|| format!("create {}", dest.display()))?;
    let started = std::time::Instant::now();
    let source = open(&spec.location)?;
    let label = spec.location.label();
    let tree = source.tree().await?;
    let stanzas = pgbackrest::stanzas(tree.iter().map(|(rel, _)| rel.as_str()));
    if !stanzas.is_empty() {
        return fetch_repository(
            source.as_ref(),
            spec,
            &tree,
            &stanzas,
            dest,
            not_after,
            started,
        )
        .await;
    }
    if spec.stanza.is_some() {
        return Err(EnvironmentError {
            cause: format!("source.stanza is given, but {label} is no pgBackRest repository (it has no backup/STANZA/backup.info)"),
            fix: "give the repository's root (the folder or prefix holding backup/ and archive/) as the source".into(),
        }
        .into());
    }
    let entries = source.list().await?;
    let entry = newest(source.as_ref(), spec, &entries, not_after, &label).await?;
    let stored = dest.join(base(&entry.name));
    let sha256 = source.download(&entry, &stored).await?;
    let bytes = if entry.folder {
        folder_size(&stored)
    } else {
        std::fs::metadata(&stored)?.len()
    };
    let head =
        if entry.folder {
            read_head(&folder_marker(&stored).ok_or_else(|| {
                Unrestorable(format!("{} changed while it was fetched", entry.name))
            })?)?
        } else {
            read_head(&stored)?
        };
    let encrypted = !entry.folder && is_age(&head);
    let (stored, head) = if encrypted {
        let plain = dest.join(format!("{}.decrypted", base(&entry.name)));
        decrypt(&stored, &plain, spec.identity.as_deref(), &entry.name).await?;
        let head = read_head(&plain)?;
        (plain, head)
    } else {
        (stored, head)
    };
    let Some(sniffed) = format::sniff(&head, entry.folder) else {
        return Err(Unrestorable(format!(
            "{} in {label} is no backup format drillrig knows (pg_dump custom, tar, directory or plain SQL, pg_dumpall, pg_basebackup tar or plain, a pgBackRest repository, Redis RDB or AOF folder, RabbitMQ definitions; gzip or zstd around files)",
            entry.name
        ))
        .into());
    };
    let local = match sniffed.compression {
        None => stored.clone(),
        Some(c) => {
            let out = dest.join(format!("{}.unwrapped", base(&entry.name)));
            decompress(c, stored.clone(), out.clone()).await?;
            out
        }
    };
    let sidecar = match source.sidecar(&entry, &entries).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                "{label}: cannot read the checksum sidecar of {}: {e:#}",
                entry.name
            );
            None
        }
    };
    let (made_at_time, made_at_from) = made_at(&sniffed, &entry);
    let wal = match &spec.wal {
        Some(w) => Some(fetch_wal(w, &dest.join("wal")).await?),
        None => None,
    };
    let companion =
        fetch_companion(source.as_ref(), sniffed.format, &entries, &entry, dest).await?;
    let (companion, companion_path) = companion.unzip();
    Ok(Fetched {
        wal,
        companion,
        companion_path,
        pgbackrest: None,
        object: entry.name.clone(),
        local,
        format: sniffed.format,
        encrypted,
        compression: sniffed.compression,
        bytes,
        fetch_ms: started.elapsed().as_millis() as u64,
        sha256,
        modified: rfc(entry.modified),
        made_at: rfc(made_at_time),
        made_at_from: made_at_from.into(),
        database: sniffed.database,
        sidecar,
        made_at_time,
    })
}

/// The backup a restore test restores among `entries`: the newest matching the source's
/// pattern (with `not_after`, the newest made by then).
async fn newest(
    source: &dyn Source,
    spec: &SourceSpec,
    entries: &[Entry],
    not_after: Option<SystemTime>,
    label: &str,
) -> Result<Entry> {
    let pattern = spec
        .pattern
        .as_deref()
        .map(glob::Pattern::new)
        .transpose()?;
    let candidates: Vec<Entry> = entries
        .iter()
        .filter(|e| !is_sidecar(&e.name))
        .filter(|e| pattern.as_ref().is_none_or(|p| p.matches(base(&e.name))))
        .cloned()
        .collect();
    if candidates.is_empty() {
        return Err(EnvironmentError {
            cause: match &spec.pattern {
                Some(p) => format!("{label} holds no backup matching {p:?}"),
                None => format!("{label} holds no backup"),
            },
            fix: "check the source's path or URL and its pattern; the backup job may not have run"
                .into(),
        }
        .into());
    }
    // The newest by the backup's own time where its format records one, else by the file's;
    // files of no known format (a manifest, a README) count only when nothing else is there, so
    // that the finding names them.
    let mut known: Option<(SystemTime, Entry)> = None;
    let mut unknown: Option<(SystemTime, Entry)> = None;
    for entry in candidates {
        let head = source.head(&entry).await.ok();
        let sniffed = head.as_ref().and_then(|h| format::sniff(h, entry.folder));
        // An encrypted backup's own time is inside it: its file's time stands in.
        let encrypted = head.as_ref().is_some_and(|h| is_age(h));
        let when = sniffed
            .as_ref()
            .and_then(|s| s.made_at)
            .unwrap_or(entry.modified);
        if not_after.is_some_and(|limit| when > limit) {
            continue;
        }
        let slot = if sniffed.is_some() || encrypted {
            &mut known
        } else {
            &mut unknown
        };
        if slot.as_ref().is_none_or(|(t, _)| when > *t) {
            *slot = Some((when, entry));
        }
    }
    let Some((_, entry)) = known.or(unknown) else {
        return Err(Unrestorable(format!(
            "{label} holds no backup made by {}: a point-in-time restore starts from a base backup taken before its target",
            humantime::format_rfc3339_seconds(not_after.expect("only a time skips candidates"))
        ))
        .into());
    };
    Ok(entry)
}

/// Removes compression `c` around `from` into `to`, off the async threads.
async fn decompress(c: Compression, from: PathBuf, to: PathBuf) -> Result<()> {
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut r = c.reader(std::io::BufReader::new(std::fs::File::open(&from)?))?;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&to)?);
        std::io::copy(&mut r, &mut w).map_err(|e| {
            Unrestorable(format!(
                "{} does not decompress ({c:?}): {e}",
                from.display()
            ))
        })?;
        w.flush()?;
        Ok(())
    })
    .await??;
    Ok(())
}

/// When the backup was made, and where that time was read: the format's own record, else
/// the file's (or the folder's newest file's) modification time.
fn made_at(sniffed: &format::Sniffed, entry: &Entry) -> (SystemTime, &'static str) {
    match sniffed.made_at {
        Some(t) => (
            t,
            match sniffed.format {
                Format::RedisRdb => "the RDB's ctime field",
                Format::PgBaseTar | Format::PgBasePlain => "START TIME in backup_label",
                _ => "the dump's header (pg_dump writes its host's local time; read as UTC)",
            },
        ),
        None if entry.folder => (
            entry.modified,
            "the modification time of the folder's newest file",
        ),
        None => (entry.modified, "the file's modification time"),
    }
}

/// The file a format restores with (a base backup's `backup_manifest`), fetched from
/// beside `entry` when it is there: its name and where it was stored.
async fn fetch_companion(
    source: &dyn Source,
    format: Format,
    entries: &[Entry],
    entry: &Entry,
    dest: &Path,
) -> Result<Option<(String, PathBuf)>> {
    let Some(wanted) = format.companion() else {
        return Ok(None);
    };
    let dir = |name: &str| name.rsplit_once('/').map_or("", |(d, _)| d).to_string();
    match entries
        .iter()
        .find(|e| !e.folder && base(&e.name) == wanted && dir(&e.name) == dir(&entry.name))
    {
        Some(c) => {
            let to = dest.join(wanted);
            source.download(c, &to).await?;
            Ok(Some((c.name.clone(), to)))
        }
        None => Ok(None),
    }
}

/// Files of a pgBackRest repository fetched at once.
const REPOSITORY_FETCHES: usize = 16;

fn rfc(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Copies the stanza's part of a pgBackRest repository (its backup sets and WAL archive) into
/// `dest/repository`, readable by the scratch container's `postgres`, and chooses the set.
async fn fetch_repository(
    source: &dyn Source,
    spec: &SourceSpec,
    tree: &[(String, Entry)],
    stanzas: &[String],
    dest: &Path,
    not_after: Option<SystemTime>,
    started: std::time::Instant,
) -> Result<Fetched> {
    let label = spec.location.label();
    let stanza = pgbackrest::choose_stanza(stanzas, spec.stanza.as_deref(), &label)?;
    let root = dest.join("repository");
    let files: Vec<&(String, Entry)> = tree
        .iter()
        .filter(|(rel, _)| pgbackrest::belongs_to(rel, &stanza))
        .collect();
    for (rel, _) in &files {
        if let Some(parent) = root.join(rel).parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
    }
    // A repository is thousands of small files: several are fetched at once.
    futures::stream::iter(files.iter().map(|(rel, entry)| {
        let to = root.join(rel);
        async move { source.download(entry, &to).await }
    }))
    .buffer_unordered(REPOSITORY_FETCHES)
    .try_collect::<Vec<_>>()
    .await?;
    let bytes = files.iter().map(|(_, e)| e.size).sum();
    let info_file = format!("backup/{stanza}/backup.info");
    let info = std::fs::read(root.join(&info_file))
        .with_context(|| format!("read the fetched {info_file}"))?;
    let set = pgbackrest::choose_set(&info, &stanza, &info_file, not_after)?;
    readable_by_all(&root)?;
    let modified = tree
        .iter()
        .find(|(rel, _)| *rel == info_file)
        .map_or(set.stopped, |(_, e)| e.modified);
    Ok(Fetched {
        object: format!("backup/{stanza}/{}", set.label),
        local: root,
        format: Format::PgBackRest,
        encrypted: false,
        compression: None,
        bytes,
        fetch_ms: started.elapsed().as_millis() as u64,
        sha256: None,
        modified: rfc(modified),
        made_at: rfc(set.stopped),
        made_at_from: "pgBackRest's backup.info (the set's backup-timestamp-stop)".into(),
        database: None,
        sidecar: None,
        wal: None,
        companion: None,
        companion_path: None,
        made_at_time: set.stopped,
        pgbackrest: Some(set),
    })
}

/// Opens drillrig's own copy of a fetched tree to every user (folders 0755, files 0644): the
/// scratch container's `postgres` has another uid than the files' owner.
fn readable_by_all(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            readable_by_all(&e.path())?;
        } else {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

/// Copies every file of a WAL archive into `dest`.
async fn fetch_wal(location: &SourceLocation, dest: &Path) -> Result<WalArchive> {
    std::fs::create_dir_all(dest).with_context(|| format!("create {}", dest.display()))?;
    let source = open(location)?;
    let entries = source.list().await?;
    let mut archive = WalArchive {
        local: dest.to_path_buf(),
        files: 0,
        bytes: 0,
    };
    for e in entries.iter().filter(|e| !e.folder && !is_sidecar(&e.name)) {
        source.download(e, &dest.join(base(&e.name))).await?;
        archive.files += 1;
        archive.bytes += e.size;
    }
    if archive.files == 0 {
        return Err(EnvironmentError {
            cause: format!("the WAL archive {} holds no file", location.label()),
            fix: "check source.wal: the folder or prefix archive_command writes to".into(),
        }
        .into());
    }
    Ok(archive)
}

/// Whether `head` starts an age file (binary or armored).
fn is_age(head: &[u8]) -> bool {
    head.starts_with(b"age-encryption.org/v1\n")
        || head.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----")
}

/// Decrypts the age file `from` into `to` with the identity file `identity`, else the identity
/// in `DRILLRIG_AGE_IDENTITY`. No identity is an environment error; an identity that does not
/// open the file is a finding naming the file. The identity is never shown.
async fn decrypt(from: &Path, to: &Path, identity: Option<&Path>, name: &str) -> Result<()> {
    let text = match identity {
        Some(path) => std::fs::read_to_string(path).map_err(|e| EnvironmentError {
            cause: format!("the age identity {} cannot be read: {e}", path.display()),
            fix: "check source.identity and that this user may read it".into(),
        })?,
        None => std::env::var("DRILLRIG_AGE_IDENTITY")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| EnvironmentError {
                cause: format!("{name} is encrypted with age, and no identity was given"),
                fix: "give the identity file as source.identity, or its contents in DRILLRIG_AGE_IDENTITY".into(),
            })?,
    };
    let identities = age::IdentityFile::from_buffer(text.as_bytes())
        .and_then(|f| f.into_identities().map_err(std::io::Error::other))
        .map_err(|_| EnvironmentError {
            cause: "the age identity given is not an age identity file".into(),
            fix: "give a file with AGE-SECRET-KEY-1… lines (age-keygen writes one)".into(),
        })?;
    let (from, to, name) = (from.to_path_buf(), to.to_path_buf(), name.to_string());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let input = age::armor::ArmoredReader::new(std::fs::File::open(&from)?);
        let decryptor = age::Decryptor::new(input)
            .map_err(|e| Unrestorable(format!("{name} is not a valid age file: {e}")))?;
        let mut reader = decryptor
            .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(|e| {
                Unrestorable(format!(
                    "{name} cannot be decrypted with the identity given ({e}): the key it was encrypted to is missing"
                ))
            })?;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&to)?);
        std::io::copy(&mut reader, &mut out)
            .map_err(|e| Unrestorable(format!("{name} is damaged after its age header: {e}")))?;
        out.flush()?;
        Ok(())
    })
    .await?
}

fn base(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn is_sidecar(name: &str) -> bool {
    let b = base(name);
    b == "SHA256SUMS" || b.ends_with(".sha256") || b.ends_with(".md5") || b.starts_with('.')
}

fn read_head(path: &Path) -> Result<Vec<u8>> {
    let mut head = Vec::with_capacity(format::HEAD);
    std::fs::File::open(path)
        .with_context(|| format!("open {}", path.display()))?
        .take(format::HEAD as u64)
        .read_to_end(&mut head)?;
    Ok(head)
}

/// The file that tells a backup folder's format: a directory-format dump's `toc.dat`, a plain
/// base backup's `backup_label`, or a Redis AOF folder's manifest (`NAME.aof.manifest`). Other
/// folders are no backups.
fn folder_marker(dir: &Path) -> Option<PathBuf> {
    for marker in ["toc.dat", "backup_label"] {
        let path = dir.join(marker);
        if path.is_file() {
            return Some(path);
        }
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with(".aof.manifest"))
        })
}

/// The modification time of the newest file directly in `dir`.
fn newest_file_time(dir: &Path) -> Option<SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .filter_map(|m| m.modified().ok())
        .max()
}

fn folder_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => folder_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The sha256 a sidecar text gives for `name`: a `NAME.sha256` holds the hash (and maybe the
/// name); `SHA256SUMS` holds `HASH  NAME` lines.
fn sidecar_hash(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        let hash = parts.next()?;
        let file = parts.next().map(|f| f.trim_start_matches('*'));
        let ok = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        (ok && file.is_none_or(|f| base(f) == name)).then(|| hash.to_ascii_lowercase())
    })
}

#[async_trait::async_trait]
trait Source: Send + Sync {
    async fn list(&self) -> Result<Vec<Entry>>;
    /// Every file under the source's root, at any depth, with its path relative to the root
    /// (a pgBackRest repository's layout); nothing when the source names one file.
    async fn tree(&self) -> Result<Vec<(String, Entry)>>;
    /// The first bytes of an entry (of a folder's marker, [`folder_marker`]).
    async fn head(&self, entry: &Entry) -> Result<Vec<u8>>;
    /// Copies an entry to `to`; the sha256 of a file's bytes.
    async fn download(&self, entry: &Entry, to: &Path) -> Result<Option<String>>;
    async fn read_small(&self, name: &str) -> Result<String>;

    /// The checksum a sidecar gives for `entry`, if there is one.
    async fn sidecar(&self, entry: &Entry, all: &[Entry]) -> Result<Option<Sidecar>> {
        let own = format!("{}.sha256", entry.name);
        let dir = entry.name.rsplit_once('/').map_or("", |(d, _)| d);
        let sums = if dir.is_empty() {
            "SHA256SUMS".to_string()
        } else {
            format!("{dir}/SHA256SUMS")
        };
        for candidate in [own, sums] {
            if all.iter().any(|e| e.name == candidate) {
                let text = self.read_small(&candidate).await?;
                return Ok(Some(Sidecar {
                    file: candidate.clone(),
                    sha256: sidecar_hash(&text, base(&entry.name)).ok_or_else(|| {
                        anyhow!("{candidate} gives no sha256 for {}", base(&entry.name))
                    })?,
                }));
            }
        }
        Ok(None)
    }
}

/// A file, or a folder of backups, on this machine.
struct Folder {
    /// The folder listed (the file's own folder when the source is one file).
    dir: PathBuf,
    /// The one file the source names, when it names a file.
    only: Option<String>,
}

impl Folder {
    fn open(path: &Path) -> Result<Folder> {
        let meta = std::fs::metadata(path).map_err(|e| EnvironmentError {
            cause: format!("the source {} cannot be read: {e}", path.display()),
            fix: "check source.path (a relative path is read from the scenario file's folder) and that this user may read it".into(),
        })?;
        if meta.is_dir() && folder_marker(path).is_none() {
            return Ok(Folder {
                dir: path.to_path_buf(),
                only: None,
            });
        }
        Ok(Folder {
            dir: path.parent().unwrap_or(Path::new("/")).to_path_buf(),
            only: path.file_name().map(|n| n.to_string_lossy().into_owned()),
        })
    }
}

#[async_trait::async_trait]
impl Source for Folder {
    async fn list(&self) -> Result<Vec<Entry>> {
        let mut entries = Vec::new();
        for e in
            std::fs::read_dir(&self.dir).with_context(|| format!("list {}", self.dir.display()))?
        {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = e.metadata()?;
            let folder = meta.is_dir();
            if folder && folder_marker(&e.path()).is_none() {
                continue;
            }
            let keep = match &self.only {
                Some(only) => &name == only || is_sidecar(&name),
                None => true,
            };
            if keep {
                // A folder was last written when its newest file was.
                let modified = if folder {
                    newest_file_time(&e.path()).unwrap_or(meta.modified()?)
                } else {
                    meta.modified()?
                };
                entries.push(Entry {
                    name,
                    size: meta.len(),
                    modified,
                    folder,
                });
            }
        }
        Ok(entries)
    }

    async fn tree(&self) -> Result<Vec<(String, Entry)>> {
        fn walk(root: &Path, rel: &str, out: &mut Vec<(String, Entry)>) -> Result<()> {
            let dir = root.join(rel);
            for e in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                let rel = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                // Symbolic links (pgBackRest's `latest`) are no backup data.
                let kind = e.file_type()?;
                if kind.is_dir() {
                    walk(root, &rel, out)?;
                } else if kind.is_file() {
                    let meta = e.metadata()?;
                    out.push((
                        rel.clone(),
                        Entry {
                            name: rel,
                            size: meta.len(),
                            modified: meta.modified()?,
                            folder: false,
                        },
                    ));
                }
            }
            Ok(())
        }
        // Only a repository's tree is wanted: a folder of dumps is not walked.
        if self.only.is_some() || !self.dir.join("backup").is_dir() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        walk(&self.dir, "", &mut out)?;
        Ok(out)
    }

    async fn head(&self, entry: &Entry) -> Result<Vec<u8>> {
        let path = self.dir.join(&entry.name);
        read_head(&if entry.folder {
            folder_marker(&path).ok_or_else(|| anyhow!("{} lost its marker", path.display()))?
        } else {
            path
        })
    }

    async fn download(&self, entry: &Entry, to: &Path) -> Result<Option<String>> {
        let from = self.dir.join(&entry.name);
        let to = to.to_path_buf();
        let folder = entry.folder;
        tokio::task::spawn_blocking(move || {
            if folder {
                copy_folder(&from, &to)?;
                return Ok(None);
            }
            let mut r =
                std::fs::File::open(&from).with_context(|| format!("open {}", from.display()))?;
            let mut w = std::io::BufWriter::new(std::fs::File::create(&to)?);
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                w.write_all(&buf[..n])?;
            }
            w.flush()?;
            Ok(Some(hex::encode(hash.finalize())))
        })
        .await?
    }

    async fn read_small(&self, name: &str) -> Result<String> {
        Ok(std::fs::read_to_string(self.dir.join(name))?)
    }
}

fn copy_folder(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.metadata()?.is_dir() {
            copy_folder(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// A prefix (or one object) in an object store.
struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
}

impl Bucket {
    fn open(url: &str, endpoint: Option<&str>, region: Option<&str>) -> Result<Bucket> {
        let (store, prefix) = open_store(url, endpoint, region)?;
        Ok(Bucket {
            store,
            prefix,
            url: url.to_string(),
        })
    }
}

/// The object store a URL names (`s3://`, `gs://`, `az://`), with credentials from the
/// environment (and AWS profiles), an endpoint override for S3-compatible servers, and a region;
/// and the prefix under it.
pub fn open_store(
    url: &str,
    endpoint: Option<&str>,
    region: Option<&str>,
) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
    let parsed = url::Url::parse(url).map_err(|e| anyhow!("{url:?}: {e}"))?;
    crate::util::tls_provider();
    let retry = object_store::RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let client = object_store::ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(300))
        .with_allow_http(endpoint.is_some_and(|e| e.starts_with("http://")));
    let built: object_store::Result<Arc<dyn ObjectStore>> = match parsed.scheme() {
        "s3" | "s3a" => {
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_url(url)
                .with_retry(retry)
                .with_client_options(client);
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            // The environment's keys, else the shared profile's (AWS_PROFILE or default).
            if let Some(p) = aws_profile::load(|k| std::env::var(k).ok())? {
                tracing::info!("S3 credentials from AWS profile {:?}", p.name);
                b = b
                    .with_access_key_id(p.access_key_id)
                    .with_secret_access_key(p.secret_access_key);
                if let Some(t) = p.session_token {
                    b = b.with_token(t);
                }
                let env_region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
                    .iter()
                    .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()));
                if let (Some(r), false) = (p.region, env_region) {
                    b = b.with_region(r);
                }
            }
            if let Some(r) = region {
                b = b.with_region(r);
            }
            b.build().map(|s| Arc::new(s) as _)
        }
        "gs" => object_store::gcp::GoogleCloudStorageBuilder::from_env()
            .with_url(url)
            .with_retry(retry)
            .with_client_options(client)
            .build()
            .map(|s| Arc::new(s) as _),
        _ => object_store::azure::MicrosoftAzureBuilder::from_env()
            .with_url(url)
            .with_retry(retry)
            .with_client_options(client)
            .build()
            .map(|s| Arc::new(s) as _),
    };
    let store = built.map_err(|e| EnvironmentError {
            cause: format!("cannot open {url}: {e}"),
            fix: "check the URL, `endpoint`, `region` and the store's credentials in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for S3)".into(),
        })?;
    Ok((store, ObjectPath::from(parsed.path().trim_matches('/'))))
}

impl Bucket {
    /// Every object under the prefix, at any depth.
    async fn every_object(&self) -> Result<Vec<object_store::ObjectMeta>> {
        self.store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|e| self.store_error(e))
    }

    fn store_error(&self, e: object_store::Error) -> anyhow::Error {
        let fix = match &e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                "check the credentials in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY): the store refused them"
            }
            object_store::Error::NotFound { .. } => "check the bucket and prefix in source.url",
            _ => "check that the endpoint answers from this machine, and the URL and credentials",
        };
        EnvironmentError {
            cause: format!("{}: {e}", self.url),
            fix: fix.into(),
        }
        .into()
    }
}

#[async_trait::async_trait]
impl Source for Bucket {
    async fn list(&self) -> Result<Vec<Entry>> {
        let listed = self.every_object().await?;
        // A URL naming one object: that object and its sidecars.
        let exact = listed.iter().any(|m| m.location == self.prefix);
        Ok(listed
            .into_iter()
            .filter(|m| {
                let key = m.location.as_ref();
                if exact {
                    key == self.prefix.as_ref()
                        || is_sidecar(key) && key.starts_with(self.prefix.as_ref())
                } else {
                    // Only the prefix's own level: `prefix/name`.
                    let rest = key
                        .strip_prefix(self.prefix.as_ref())
                        .unwrap_or(key)
                        .trim_start_matches('/');
                    !rest.contains('/')
                }
            })
            .map(|m| Entry {
                name: m.location.to_string(),
                size: m.size,
                modified: m.last_modified.into(),
                folder: false,
            })
            .collect())
    }

    async fn tree(&self) -> Result<Vec<(String, Entry)>> {
        let listed = self.every_object().await?;
        Ok(listed
            .into_iter()
            .filter_map(|m| {
                let key = m.location.to_string();
                let rel = key
                    .strip_prefix(self.prefix.as_ref())?
                    .trim_start_matches('/')
                    .to_string();
                (!rel.is_empty()).then(|| {
                    (
                        rel,
                        Entry {
                            name: key,
                            size: m.size,
                            modified: m.last_modified.into(),
                            folder: false,
                        },
                    )
                })
            })
            .collect())
    }

    async fn head(&self, entry: &Entry) -> Result<Vec<u8>> {
        let end = entry.size.min(format::HEAD as u64);
        if end == 0 {
            return Ok(Vec::new());
        }
        let bytes = self
            .store
            .get_range(&ObjectPath::from(entry.name.as_str()), 0..end)
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(bytes.to_vec())
    }

    async fn download(&self, entry: &Entry, to: &Path) -> Result<Option<String>> {
        let got = self
            .store
            .get(&ObjectPath::from(entry.name.as_str()))
            .await
            .map_err(|e| self.store_error(e))?;
        let mut stream = got.into_stream();
        let mut file = tokio::io::BufWriter::new(tokio::fs::File::create(to).await?);
        let mut hash = Sha256::new();
        while let Some(chunk) = stream.try_next().await.map_err(|e| self.store_error(e))? {
            hash.update(&chunk);
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file).await?;
        Ok(Some(hex::encode(hash.finalize())))
    }

    async fn read_small(&self, name: &str) -> Result<String> {
        let got = self
            .store
            .get(&ObjectPath::from(name))
            .await
            .map_err(|e| self.store_error(e))?;
        let bytes = got.bytes().await.map_err(|e| self.store_error(e))?;
        if bytes.len() > 1 << 20 {
            bail!("{name} is larger than a checksum file");
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_give_the_hash_of_their_file() {
        let h = "a".repeat(64);
        assert_eq!(sidecar_hash(&format!("{h}\n"), "x.dump"), Some(h.clone()));
        assert_eq!(
            sidecar_hash(
                &format!("{}  other.dump\n{h} *x.dump\n", "b".repeat(64)),
                "x.dump"
            ),
            Some(h)
        );
        assert_eq!(sidecar_hash("not a hash  x.dump", "x.dump"), None);
    }
}
