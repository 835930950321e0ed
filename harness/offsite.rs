//! The offsite repository (`[offsite]`): each completed backup leaves the site encrypted with
//! age to the scenario's recipient, one object per artefact and its manifest last (a backup
//! without a manifest never landed). Each file of a continuous archive (PostgreSQL's WAL)
//! leaves as it is archived, under `<target>/wal/`, its record last. After a `site-loss` the
//! DR site lists what landed, and fetches and decrypts the backup it restores and the archive
//! beside it, checking every file's sha256. A `path` goes through object_store's local file
//! system, a URL through the same stores as a restore test's source.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use tokio_util::sync::CancellationToken;

use crate::backup::Backup;
use crate::clock::Clock;
use crate::docker::EnvironmentError;
use crate::spec::{OffsiteSpec, SourceLocation};

/// The environment variable the DR site's identity is read from without `offsite.identity`.
pub const IDENTITY_ENV: &str = "DRILLRIG_OFFSITE_IDENTITY";

/// Uploads go in parts of this size (S3's smallest part is 5 MiB).
const PART: usize = 8 << 20;

/// The offsite repository of a run.
pub struct Offsite {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// Where it is, as the scenario says (a path or a URL), for reports.
    pub location: String,
    recipient: age::x25519::Recipient,
    identity: Option<PathBuf>,
    /// Closed when the site is lost; each landing (the write that says a shipment landed)
    /// holds it open while it writes, so none happens after [`Offsite::close`].
    closed: tokio::sync::RwLock<bool>,
}

/// A backup landed offsite: every artefact, then its manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shipment {
    pub backup_id: u32,
    /// Its artefacts, and their bytes on the site and as stored offsite (encrypted).
    pub files: usize,
    pub bytes: u64,
    pub stored_bytes: u64,
    /// When the backup was complete on the site (its `finished_ms`).
    pub taken_ms: u64,
    /// When its manifest landed, after the last artefact: from then the DR site can use it.
    pub landed_ms: u64,
    /// `landed_ms − taken_ms`.
    pub lag_ms: u64,
}

/// One file of a continuous archive, landed offsite.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArchiveShipment {
    pub file: String,
    pub bytes: u64,
    pub stored_bytes: u64,
    /// When the file was archived on the site (its modification time).
    pub archived_ms: u64,
    /// When its record landed, after the file itself.
    pub landed_ms: u64,
    /// `landed_ms − archived_ms`.
    pub lag_ms: u64,
}

/// What a backup fetched from offsite cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OffsiteFetch {
    pub location: String,
    pub backup_id: u32,
    /// Bytes downloaded (encrypted, the archive's included), and the time from the first
    /// request to the last file decrypted and checked.
    pub bytes: u64,
    pub fetch_ms: u64,
    /// Files of the continuous archive fetched beside the backup.
    #[serde(skip_serializing_if = "is_zero")]
    pub archive_files: u64,
    /// The recipient the backup was encrypted to (public; the identity is never shown).
    pub recipient: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `manifest.json` of a shipped backup.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    backup: Backup,
    /// The age recipient every artefact was encrypted to.
    recipient: String,
    /// Per artefact, its object and the object's size and sha256.
    objects: Vec<StoredObject>,
    /// Every folder of the backup, relative to it: a fetch recreates the empty ones too (a
    /// base backup's data directory needs them).
    #[serde(default)]
    folders: Vec<String>,
}

/// `<target>/wal/<file>.json`: one landed file of a continuous archive.
#[derive(Debug, Serialize, Deserialize)]
struct ArchiveRecord {
    file: String,
    bytes: u64,
    /// The sha256 recorded when the file was archived.
    sha256: String,
    /// When it was archived on the site (RFC 3339): the fetched file gets it back as its
    /// modification time, as the site's archive had it.
    archived_at: String,
    recipient: String,
    stored_bytes: u64,
    stored_sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredObject {
    file: String,
    key: String,
    stored_bytes: u64,
    stored_sha256: String,
}

const MANIFEST: &str = "manifest.json";

/// How many files are shipped, or fetched, at once: a base backup has a thousand.
const PARALLEL: usize = 16;

impl Offsite {
    /// Opens the repository `spec` names, under `run` (`<scenario>/<run id>`: runs never see
    /// each other's backups); a folder is created if missing.
    pub fn open(spec: &OffsiteSpec, run: &str) -> Result<Offsite> {
        let (store, prefix, location): (Arc<dyn ObjectStore>, ObjectPath, String) =
            match &spec.location {
                SourceLocation::Path(dir) => {
                    std::fs::create_dir_all(dir).map_err(|e| EnvironmentError {
                        cause: format!("cannot create the offsite folder {}: {e}", dir.display()),
                        fix: "give offsite.path a folder this user may write".into(),
                    })?;
                    let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
                        .with_context(|| format!("open {}", dir.display()))?;
                    (
                        Arc::new(store),
                        ObjectPath::default(),
                        dir.display().to_string(),
                    )
                }
                SourceLocation::Url {
                    url,
                    endpoint,
                    region,
                } => {
                    let (store, prefix) =
                        crate::source::open_store(url, endpoint.as_deref(), region.as_deref())?;
                    (store, prefix, url.clone())
                }
            };
        let prefix = if prefix.as_ref().is_empty() {
            ObjectPath::from(run)
        } else {
            ObjectPath::from(format!("{}/{run}", prefix.as_ref()))
        };
        let recipient = spec
            .recipient
            .parse()
            .map_err(|e| anyhow!("offsite.recipient: {e}"))?;
        Ok(Offsite {
            store,
            prefix,
            location: format!("{}/{run}", location.trim_end_matches('/')),
            recipient,
            identity: spec.identity.clone(),
            closed: tokio::sync::RwLock::new(false),
        })
    }

    fn key(&self, rel: &str) -> ObjectPath {
        let rel = rel.trim_start_matches('/');
        if self.prefix.as_ref().is_empty() {
            ObjectPath::from(rel)
        } else {
            ObjectPath::from(format!("{}/{rel}", self.prefix.as_ref()))
        }
    }

    /// The folder of `backup` in the repository, relative to its prefix.
    fn folder(backup: &Backup) -> String {
        let name = backup.dir.file_name().map_or_else(
            || format!("{:03}", backup.id),
            |n| n.to_string_lossy().into(),
        );
        format!("{}/{name}", backup.target)
    }

    fn store_error(&self, what: &str, e: object_store::Error) -> anyhow::Error {
        let fix = match &e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                "check the offsite store's credentials in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
            }
            _ => {
                "check that the offsite store answers from this machine, and its URL and credentials"
            }
        };
        EnvironmentError {
            cause: format!("{what} at {}: {e}", self.location),
            fix: fix.into(),
        }
        .into()
    }

    /// After this returns, nothing lands: a landing under way has finished, and later ones
    /// are refused. The site is lost.
    pub async fn close(&self) {
        *self.closed.write().await = true;
    }

    /// Writes the record of a shipment (`to`) within `limit`: whether it landed, which it
    /// does not once the repository is closed. Never dropped half-way by a stop, so what lands
    /// is known; a write that overruns is an error (the store may still complete it).
    async fn land(
        &self,
        to: &ObjectPath,
        record: Vec<u8>,
        limit: std::time::Duration,
    ) -> Result<bool> {
        let closed = self.closed.read().await;
        if *closed {
            return Ok(false);
        }
        match tokio::time::timeout(limit, self.store.put(to, record.into())).await {
            Ok(put) => put.map_err(|e| self.store_error(&format!("write {to}"), e))?,
            Err(_) => bail!(
                "writing {to} did not finish within {} (it may land all the same)",
                humantime::format_duration(limit)
            ),
        };
        Ok(true)
    }

    /// Encrypts every artefact of `backup` as it streams it up, then uploads its manifest;
    /// returns when it landed, or `None` when `stop` came first (nothing of it is left then
    /// but objects no manifest lists). The uploads must end within `limit`.
    pub async fn ship(
        &self,
        backup: &Backup,
        clock: &Clock,
        stop: &CancellationToken,
        limit: std::time::Duration,
    ) -> Result<Option<Shipment>> {
        let folder = Self::folder(backup);
        let uploads = futures::stream::iter(&backup.artefacts)
            .map(|artefact| {
                let key = format!("{folder}/{}.age", artefact.file);
                async move {
                    let (stored_bytes, stored_sha256) = self
                        .upload_sealed(&backup.dir.join(&artefact.file), &self.key(&key))
                        .await?;
                    anyhow::Ok(StoredObject {
                        file: artefact.file.clone(),
                        key,
                        stored_bytes,
                        stored_sha256,
                    })
                }
            })
            .buffered(PARALLEL)
            .try_collect::<Vec<StoredObject>>();
        let Some(objects) = self.upload_until(uploads, stop, limit).await? else {
            return Ok(None);
        };
        let stored_bytes = objects.iter().map(|o| o.stored_bytes).sum();
        let manifest = Manifest {
            backup: backup.clone(),
            recipient: self.recipient.to_string(),
            objects,
            folders: folders_under(&backup.dir)?,
        };
        let manifest_key = self.key(&format!("{folder}/{MANIFEST}"));
        let landed = self
            .land(&manifest_key, serde_json::to_vec_pretty(&manifest)?, limit)
            .await?;
        let landed_ms = clock.millis();
        Ok(landed.then(|| Shipment {
            backup_id: backup.id,
            files: backup.artefacts.len(),
            bytes: backup.size(),
            stored_bytes,
            taken_ms: backup.finished_ms,
            landed_ms,
            lag_ms: landed_ms.saturating_sub(backup.finished_ms),
        }))
    }

    /// Runs `uploads` until they end, `stop` comes (`None`) or `limit` passes (an error).
    async fn upload_until<T>(
        &self,
        uploads: impl std::future::Future<Output = Result<T>>,
        stop: &CancellationToken,
        limit: std::time::Duration,
    ) -> Result<Option<T>> {
        tokio::select! {
            biased;
            _ = stop.cancelled() => Ok(None),
            r = tokio::time::timeout(limit, uploads) => match r {
                Ok(r) => r.map(Some),
                Err(_) => Err(anyhow!("did not land within {}", humantime::format_duration(limit))),
            },
        }
    }

    /// The file `file` of `target`'s continuous archive `archive`, whole and with its sha256
    /// recorded (see [`crate::backup::ARCHIVE`]): encrypted up, then its record, which says
    /// it landed; `None` when `stop` came first. The upload must end within `limit`.
    pub async fn ship_archived(
        &self,
        target: &str,
        archive: &Path,
        file: &str,
        clock: &Clock,
        stop: &CancellationToken,
        limit: std::time::Duration,
    ) -> Result<Option<ArchiveShipment>> {
        let path = archive.join(file);
        let sha256 = std::fs::read_to_string(archive.join(format!("{file}.sha256")))
            .with_context(|| format!("read the recorded sha256 of {}", path.display()))?
            .trim()
            .to_string();
        let meta = std::fs::metadata(&path).with_context(|| format!("stat {}", path.display()))?;
        let archived_at = meta.modified()?;
        let archived_ms = clock.offset_of_wall(archived_at) / 1000;
        let key = format!("{target}/{}/{file}", crate::backup::ARCHIVE);
        let object = self.key(&format!("{key}.age"));
        let upload = self.upload_sealed(&path, &object);
        let Some((stored_bytes, stored_sha256)) = self.upload_until(upload, stop, limit).await?
        else {
            return Ok(None);
        };
        let record = ArchiveRecord {
            file: file.to_string(),
            bytes: meta.len(),
            sha256,
            archived_at: humantime::format_rfc3339_nanos(archived_at).to_string(),
            recipient: self.recipient.to_string(),
            stored_bytes,
            stored_sha256,
        };
        let landed = self
            .land(
                &self.key(&format!("{key}.json")),
                serde_json::to_vec_pretty(&record)?,
                limit,
            )
            .await?;
        if !landed {
            return Ok(None);
        }
        let landed_ms = clock.millis();
        Ok(Some(ArchiveShipment {
            file: file.to_string(),
            bytes: meta.len(),
            stored_bytes,
            archived_ms,
            landed_ms,
            lag_ms: landed_ms.saturating_sub(archived_ms),
        }))
    }

    /// Encrypts the file `from` to the recipient while uploading it to `to` (in parts when
    /// larger than one); the size and sha256 of what was stored.
    async fn upload_sealed(&self, from: &Path, to: &ObjectPath) -> Result<(u64, String)> {
        let size = tokio::fs::metadata(from)
            .await
            .with_context(|| format!("stat {}", from.display()))?
            .len();
        if size < PART as u64 {
            // One request: most files of a base backup are small.
            let (from, recipient) = (from.to_path_buf(), self.recipient.clone());
            let sealed = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
                let plain =
                    std::fs::read(&from).with_context(|| format!("read {}", from.display()))?;
                let encryptor = age::Encryptor::with_recipients(std::iter::once(
                    &recipient as &dyn age::Recipient,
                ))
                .map_err(|e| anyhow!("age: {e}"))?;
                let mut sealed = Vec::with_capacity(plain.len() + 256);
                let mut writer = encryptor.wrap_output(&mut sealed)?;
                writer.write_all(&plain)?;
                writer.finish()?;
                Ok(sealed)
            })
            .await??;
            let digest = hex::encode(Sha256::digest(&sealed));
            let stored = sealed.len() as u64;
            self.store
                .put(to, sealed.into())
                .await
                .map_err(|e| self.store_error(&format!("upload {to}"), e))?;
            return Ok((stored, digest));
        }
        let upload = self
            .store
            .put_multipart(to)
            .await
            .map_err(|e| self.store_error(&format!("start the upload of {to}"), e))?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, PART);
        let sealed = Sealed::default();
        let encryptor = age::Encryptor::with_recipients(std::iter::once(
            &self.recipient as &dyn age::Recipient,
        ))
        .map_err(|e| anyhow!("age: {e}"))?;
        let mut writer = encryptor.wrap_output(sealed.clone())?;
        let mut file = tokio::fs::File::open(from)
            .await
            .with_context(|| format!("open {}", from.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf)
                .await
                .with_context(|| format!("read {}", from.display()))?;
            if n == 0 {
                break;
            }
            writer.write_all(&buf[..n])?;
            parts
                .wait_for_capacity(2)
                .await
                .map_err(|e| self.store_error(&format!("upload {to}"), e))?;
            parts.write(&sealed.take());
        }
        writer.finish()?;
        parts.write(&sealed.take());
        parts
            .finish()
            .await
            .map_err(|e| self.store_error(&format!("finish the upload of {to}"), e))?;
        let done = sealed.0.lock().expect("not poisoned");
        Ok((done.size, hex::encode(done.hash.clone().finalize())))
    }

    /// The backups of `target` that landed whole (their manifest is there), oldest first, each
    /// with `dir` set to its folder under `dr_root`, where [`Offsite::fetch`] puts it.
    pub async fn catalog(&self, target: &str, dr_root: &Path) -> Result<Vec<Backup>> {
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.key(target)))
            .try_collect()
            .await
            .map_err(|e| self.store_error("list the shipped backups", e))?;
        let mut catalog = Vec::new();
        for meta in listed
            .iter()
            .filter(|m| m.location.filename() == Some(MANIFEST))
        {
            let bytes = self
                .store
                .get(&meta.location)
                .await
                .map_err(|e| self.store_error("read a shipped manifest", e))?
                .bytes()
                .await
                .map_err(|e| self.store_error("read a shipped manifest", e))?;
            let manifest: Manifest = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is no drillrig manifest", meta.location))?;
            let mut backup = manifest.backup;
            if backup.target != target {
                continue;
            }
            let folder = Self::folder_of(&meta.location);
            backup.dir = dr_root.join(target).join(folder);
            catalog.push(backup);
        }
        catalog.sort_by_key(|b| b.id);
        Ok(catalog)
    }

    /// The backup folder's name from its manifest's key.
    fn folder_of(manifest: &ObjectPath) -> String {
        let parts: Vec<_> = manifest.parts().collect();
        parts
            .len()
            .checked_sub(2)
            .map_or_else(String::new, |i| parts[i].as_ref().to_string())
    }

    /// Downloads every artefact of `backup` (a [`Offsite::catalog`] entry) into its `dir`,
    /// decrypting with the DR site's identity and checking each file's sha256 against the
    /// manifest. No identity, or one that does not open the backup, fails naming the key it
    /// was encrypted to.
    pub async fn fetch(&self, backup: &Backup, clock: &Clock) -> Result<OffsiteFetch> {
        let started = clock.millis();
        let folder = Self::folder(backup);
        let bytes = self
            .store
            .get(&self.key(&format!("{folder}/{MANIFEST}")))
            .await
            .map_err(|e| self.store_error("read the manifest of the backup to restore", e))?
            .bytes()
            .await
            .map_err(|e| self.store_error("read the manifest of the backup to restore", e))?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("{folder}/{MANIFEST} is no drillrig manifest"))?;
        let keys = self.identity(&manifest.recipient, &format!("backup {}", backup.id))?;
        std::fs::create_dir_all(&backup.dir)
            .with_context(|| format!("create {}", backup.dir.display()))?;
        for folder in &manifest.folders {
            if !inside(folder) {
                bail!(
                    "the manifest of backup {} lists the folder {folder:?}, outside the backup",
                    backup.id
                );
            }
            let dir = backup.dir.join(folder);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let downloaded: Vec<u64> = futures::stream::iter(manifest.objects.iter().enumerate())
            .map(|(i, object)| self.fetch_object(backup, i, object, &manifest.recipient, &keys))
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        let downloaded: u64 = downloaded.iter().sum();
        let (archive_files, archive_bytes) = self.fetch_archive(backup, &keys).await?;
        Ok(OffsiteFetch {
            location: self.location.clone(),
            backup_id: backup.id,
            bytes: downloaded + archive_bytes,
            fetch_ms: clock.millis().saturating_sub(started),
            archive_files,
            recipient: manifest.recipient,
        })
    }

    /// Object `i` of `backup`'s manifest (encrypted to `recipient`), fetched into the
    /// backup's folder; the bytes downloaded.
    async fn fetch_object(
        &self,
        backup: &Backup,
        i: usize,
        object: &StoredObject,
        recipient: &str,
        keys: &Keys,
    ) -> Result<u64> {
        if !inside(&object.file) {
            bail!(
                "the manifest of backup {} lists the file {:?}, outside the backup",
                backup.id,
                object.file
            );
        }
        let artefact = backup
            .artefacts
            .iter()
            .find(|a| a.file == object.file)
            .ok_or_else(|| {
                anyhow!(
                    "the manifest of backup {} lists {}, which the backup does not have",
                    backup.id,
                    object.file
                )
            })?;
        let plain = backup.dir.join(&object.file);
        if let Some(parent) = plain.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        let sealed = SealedObject {
            object: self.key(&object.key),
            stored_sha256: &object.stored_sha256,
            bytes: artefact.size,
            sha256: &artefact.sha256,
            what: format!("{} of backup {}", object.file, backup.id),
            recorded_by: "the backup had",
        };
        self.fetch_sealed(
            &sealed,
            &backup.dir.join(format!(".fetching-{i}.age")),
            &plain,
            recipient,
            keys,
        )
        .await
    }

    /// Every file of the continuous archive of `backup`'s target that landed (its record is
    /// there), fetched into [`Backup::archive`], each with its recorded sha256 beside it, as
    /// the site had it; checked against its record. The files and bytes downloaded.
    async fn fetch_archive(&self, backup: &Backup, keys: &Keys) -> Result<(u64, u64)> {
        let prefix = self.key(&format!("{}/{}", backup.target, crate::backup::ARCHIVE));
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.store_error("list the shipped archive", e))?;
        let records: Vec<&ObjectPath> = listed
            .iter()
            .map(|m| &m.location)
            .filter(|l| l.extension() == Some("json"))
            .collect();
        if records.is_empty() {
            return Ok((0, 0));
        }
        let into = backup.archive();
        std::fs::create_dir_all(&into).with_context(|| format!("create {}", into.display()))?;
        let fetched: Vec<u64> = futures::stream::iter(records)
            .map(|record| self.fetch_archived(record, &into, keys))
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        Ok((fetched.len() as u64, fetched.iter().sum()))
    }

    /// One archived file, from its record's key into `into`; the bytes downloaded.
    async fn fetch_archived(&self, location: &ObjectPath, into: &Path, keys: &Keys) -> Result<u64> {
        let bytes = self
            .store
            .get(location)
            .await
            .map_err(|e| self.store_error(&format!("read {location}"), e))?
            .bytes()
            .await
            .map_err(|e| self.store_error(&format!("read {location}"), e))?;
        let record: ArchiveRecord = serde_json::from_slice(&bytes)
            .with_context(|| format!("{location} is no drillrig archive record"))?;
        let file = &record.file;
        // The record's key ends in `<file>.json`: `file` is one name, in `into`.
        if !inside(file) || location.filename() != Some(&format!("{file}.json")) {
            bail!("{location} is the record of {file:?}, not of a file beside it");
        }
        let plain = into.join(file);
        let sealed = SealedObject {
            object: ObjectPath::from(format!(
                "{}.age",
                location.as_ref().trim_end_matches(".json")
            )),
            stored_sha256: &record.stored_sha256,
            bytes: record.bytes,
            sha256: &record.sha256,
            what: format!("archived file {file}"),
            recorded_by: "it was archived with",
        };
        let downloaded = self
            .fetch_sealed(
                &sealed,
                &into.join(format!("{file}.age")),
                &plain,
                &record.recipient,
                keys,
            )
            .await?;
        std::fs::write(
            into.join(format!("{file}.sha256")),
            format!("{}\n", record.sha256),
        )?;
        let archived_at = humantime::parse_rfc3339(&record.archived_at)
            .with_context(|| format!("{location}: archived_at {:?}", record.archived_at))?;
        std::fs::File::options()
            .write(true)
            .open(&plain)
            .and_then(|f| f.set_modified(archived_at))
            .with_context(|| format!("set the archive time of {}", plain.display()))?;
        Ok(downloaded)
    }

    /// Downloads `object` into `via`, checks it against its stored sha256, decrypts it into
    /// `plain` with the DR site's `keys` (the object was encrypted to `recipient`), and checks
    /// what came out; the bytes downloaded.
    async fn fetch_sealed(
        &self,
        object: &SealedObject<'_>,
        via: &Path,
        plain: &Path,
        recipient: &str,
        keys: &Keys,
    ) -> Result<u64> {
        let (downloaded, sum) = self.download(&object.object, via).await?;
        if sum != object.stored_sha256 {
            bail!(
                "{} ({}) changed offsite: sha256 {sum}, stored with sha256 {}",
                object.what,
                object.object,
                object.stored_sha256
            );
        }
        let (from, to, identities, what, named) = (
            via.to_path_buf(),
            plain.to_path_buf(),
            keys.identities.clone(),
            object.what.clone(),
            format!(
                "{recipient}, and the DR site's identity ({})",
                keys.from_where
            ),
        );
        let (size, sum) =
            tokio::task::spawn_blocking(move || decrypt(&from, &to, &identities, &what, &named))
                .await??;
        let _ = std::fs::remove_file(via);
        if sum != object.sha256 || size != object.bytes {
            bail!(
                "{} decrypted to {size} bytes with sha256 {sum}; {} {} bytes with sha256 {}",
                object.what,
                object.recorded_by,
                object.bytes,
                object.sha256
            );
        }
        Ok(downloaded)
    }

    /// The DR site's identity: `offsite.identity`, else [`IDENTITY_ENV`]; with where it came
    /// from (never the key itself).
    fn identity(&self, recipient: &str, what: &str) -> Result<Keys> {
        let missing = |why: String| {
            anyhow!("{what} is encrypted to {recipient}, and the DR site cannot decrypt it: {why}")
        };
        let (text, from_where) = match &self.identity {
            Some(path) => (
                std::fs::read_to_string(path).map_err(|e| {
                    missing(format!("its identity {} cannot be read ({e})", path.display()))
                })?,
                path.display().to_string(),
            ),
            None => (
                std::env::var(IDENTITY_ENV)
                    .ok()
                    .filter(|v| !v.trim().is_empty())
                    .ok_or_else(|| {
                        missing(format!(
                            "it has no identity (neither offsite.identity nor {IDENTITY_ENV} gives one)"
                        ))
                    })?,
                IDENTITY_ENV.to_string(),
            ),
        };
        let identities: Vec<age::x25519::Identity> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.parse().ok())
            .collect();
        if identities.is_empty() {
            return Err(missing(
                "the identity given holds no AGE-SECRET-KEY-1… line".into(),
            ));
        }
        Ok(Keys {
            identities: Arc::new(identities),
            from_where,
        })
    }

    /// Streams the object `from` into the file `to`; its size and sha256, taken on the way.
    async fn download(&self, from: &ObjectPath, to: &Path) -> Result<(u64, String)> {
        let got = self
            .store
            .get(from)
            .await
            .map_err(|e| self.store_error(&format!("download {from}"), e))?;
        let mut stream = got.into_stream();
        let mut file = tokio::io::BufWriter::new(
            tokio::fs::File::create(to)
                .await
                .with_context(|| format!("create {}", to.display()))?,
        );
        let mut size = 0u64;
        let mut hash = Sha256::new();
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| self.store_error(&format!("download {from}"), e))?
        {
            size += chunk.len() as u64;
            hash.update(&chunk);
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file).await?;
        Ok((size, hex::encode(hash.finalize())))
    }
}

/// Every folder under `dir`, relative to it, parents first.
fn folders_under(dir: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        let mut dirs = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("list {}", dir.display()))?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
        dirs.sort();
        for d in dirs {
            let rel = d.strip_prefix(root).expect("under the root");
            out.push(rel.to_string_lossy().into_owned());
            walk(root, &d, out)?;
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// The DR site's identities, and where they came from (never the keys themselves).
struct Keys {
    identities: Arc<Vec<age::x25519::Identity>>,
    from_where: String,
}

/// An object to fetch: its key, the sha256 it was stored with, what it must decrypt to, and
/// its name in errors with whose word the plain sha256 is (`recorded_by`).
struct SealedObject<'a> {
    object: ObjectPath,
    stored_sha256: &'a str,
    bytes: u64,
    sha256: &'a str,
    what: String,
    recorded_by: &'static str,
}

/// Whether `path`, from a manifest or record, stays inside the folder it is joined to: only
/// plain names, no `..`, no root.
fn inside(path: &str) -> bool {
    let path = Path::new(path);
    path.components().next().is_some()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Where the age stream writes: bytes wait here until the upload takes them, and are counted
/// and hashed as they come.
#[derive(Clone, Default)]
struct Sealed(Arc<std::sync::Mutex<SealedBytes>>);

#[derive(Default)]
struct SealedBytes {
    pending: Vec<u8>,
    hash: Sha256,
    size: u64,
}

impl Sealed {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.0.lock().expect("not poisoned").pending)
    }
}

impl Write for Sealed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut s = self.0.lock().expect("not poisoned");
        s.pending.extend_from_slice(buf);
        s.hash.update(buf);
        s.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decrypts `from` into `to`; `what` and `keys` name the file and the keys in errors. Returns
/// the size and sha256 of what it wrote.
fn decrypt(
    from: &Path,
    to: &Path,
    identities: &[age::x25519::Identity],
    what: &str,
    keys: &str,
) -> Result<(u64, String)> {
    let file = std::fs::File::open(from).with_context(|| format!("open {}", from.display()))?;
    let decryptor = age::Decryptor::new(std::io::BufReader::new(file))
        .map_err(|e| anyhow!("{what} is not an age file: {e}"))?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| {
            anyhow!(
                "{what} is encrypted to {keys} does not open it ({e}): the key it needs is missing"
            )
        })?;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(to).with_context(|| format!("create {}", to.display()))?,
    );
    let mut buf = vec![0u8; 1 << 16];
    let (mut size, mut hash) = (0u64, Sha256::new());
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| anyhow!("{what} is damaged after its age header: {e}"))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        size += n as u64;
        out.write_all(&buf[..n])?;
    }
    out.flush()?;
    Ok((size, hex::encode(hash.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    const LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

    /// A repository in a temporary folder, with a fresh key; the identity file beside it.
    fn repository(dir: &Path) -> Offsite {
        let identity = age::x25519::Identity::generate();
        let key = dir.join("dr.key");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(&key, identity.to_string().expose_secret()).unwrap();
        let spec = OffsiteSpec {
            location: SourceLocation::Path(dir.join("offsite")),
            every: std::time::Duration::from_secs(1),
            recipient: identity.to_public().to_string(),
            identity: Some(key),
        };
        Offsite::open(&spec, "s/run").unwrap()
    }

    /// The DR site's keys, as a fetch reads them.
    fn keys(offsite: &Offsite) -> Keys {
        offsite
            .identity(&offsite.recipient.to_string(), "the test")
            .unwrap()
    }

    /// Archives `name` into `archive` as PostgreSQL's archive command does: its sha256 first.
    fn archive(archive: &Path, name: &str, bytes: &[u8]) {
        std::fs::create_dir_all(archive).unwrap();
        std::fs::write(archive.join(name), bytes).unwrap();
        let sum = hex::encode(Sha256::digest(bytes));
        std::fs::write(archive.join(format!("{name}.sha256")), format!("{sum}\n")).unwrap();
    }

    fn backup_in(dir: PathBuf) -> Backup {
        Backup {
            target: "pg".into(),
            id: 1,
            method: crate::spec::BackupMethod::PgBasebackupWal,
            dir,
            began_ms: 0,
            consistent_at_us: 0,
            finished_ms: 1,
            artefacts: Vec::new(),
            contents: crate::backup::Contents::new(),
            contents_unread: None,
            max_seq: None,
            details: serde_json::Value::Null,
        }
    }

    #[tokio::test]
    async fn archived_files_come_back_beside_the_backup_as_the_site_had_them() {
        let dir = tempfile::tempdir().unwrap();
        let offsite = repository(dir.path());
        let clock = Clock::start();
        let site = dir.path().join("site/pg/wal");
        let segment = "000000010000000000000003";
        archive(&site, segment, &vec![7u8; 3 << 20]);
        archive(
            &site,
            "00000002.history",
            b"1\t0/3000000\tno recovery target\n",
        );
        // A copy still being written, and a file without its sha256: neither is whole.
        std::fs::write(site.join("000000010000000000000004.part"), b"half").unwrap();
        std::fs::write(site.join("000000010000000000000005"), b"unrecorded").unwrap();
        let whole = crate::backup::archived_files(&site);
        assert_eq!(whole, vec![segment.to_string(), "00000002.history".into()]);
        for file in &whole {
            let landed = offsite
                .ship_archived("pg", &site, file, &clock, &CancellationToken::new(), LIMIT)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                landed.bytes,
                std::fs::metadata(site.join(file)).unwrap().len()
            );
            assert!(landed.stored_bytes > landed.bytes, "sealed: {landed:?}");
        }
        let sealed = std::fs::read(
            dir.path()
                .join(format!("offsite/s/run/pg/wal/{segment}.age")),
        )
        .unwrap();
        assert!(sealed.starts_with(b"age-encryption.org/v1\n"));

        let dr = backup_in(dir.path().join("dr/pg/001-pg-basebackup-wal"));
        let (files, bytes) = offsite.fetch_archive(&dr, &keys(&offsite)).await.unwrap();
        assert_eq!(files, 2);
        assert!(bytes > 3 << 20);
        for file in &whole {
            let (from, to) = (site.join(file), dr.archive().join(file));
            assert_eq!(std::fs::read(&to).unwrap(), std::fs::read(&from).unwrap());
            let recorded = |dir: &Path| std::fs::read_to_string(dir.join(format!("{file}.sha256")));
            assert_eq!(
                recorded(&dr.archive()).unwrap(),
                recorded(&site).unwrap(),
                "{file}"
            );
            assert_eq!(
                std::fs::metadata(&to).unwrap().modified().unwrap(),
                std::fs::metadata(&from).unwrap().modified().unwrap(),
                "{file} keeps its archive time"
            );
        }
    }

    #[tokio::test]
    async fn an_archived_file_without_its_record_never_landed_and_a_changed_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let offsite = repository(dir.path());
        let clock = Clock::start();
        let site = dir.path().join("site/pg/wal");
        for name in ["000000010000000000000001", "000000010000000000000002"] {
            archive(&site, name, name.as_bytes());
            offsite
                .ship_archived("pg", &site, name, &clock, &CancellationToken::new(), LIMIT)
                .await
                .unwrap()
                .unwrap();
        }
        let shipped = dir.path().join("offsite/s/run/pg/wal");
        std::fs::remove_file(shipped.join("000000010000000000000002.json")).unwrap();
        let dr = backup_in(dir.path().join("dr/pg/001-pg-basebackup-wal"));
        assert_eq!(
            offsite.fetch_archive(&dr, &keys(&offsite)).await.unwrap().0,
            1
        );
        assert!(!dr.archive().join("000000010000000000000002").exists());

        let object = shipped.join("000000010000000000000001.age");
        let mut sealed = std::fs::read(&object).unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        std::fs::write(&object, sealed).unwrap();
        let e = offsite
            .fetch_archive(&dr, &keys(&offsite))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("changed offsite"), "{e}");
    }

    #[tokio::test]
    async fn nothing_lands_once_the_site_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let offsite = repository(dir.path());
        let clock = Clock::start();
        let site = dir.path().join("site/pg/wal");
        let name = "000000010000000000000001";
        archive(&site, name, name.as_bytes());
        let stop = CancellationToken::new();
        offsite.close().await;
        let shipped = offsite
            .ship_archived("pg", &site, name, &clock, &stop, LIMIT)
            .await
            .unwrap();
        assert_eq!(shipped, None);
        let shipped = dir.path().join("offsite/s/run/pg/wal");
        assert!(!shipped.join(format!("{name}.json")).exists());
        // A stop abandons the upload itself.
        stop.cancel();
        let offsite = repository(&dir.path().join("again"));
        let shipped = offsite
            .ship_archived("pg", &site, name, &clock, &stop, LIMIT)
            .await
            .unwrap();
        assert_eq!(shipped, None);
    }

    #[tokio::test]
    async fn a_landing_under_way_finishes_before_the_site_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut offsite = repository(dir.path());
        // Every write to the store takes a second.
        offsite.store = Arc::new(object_store::throttle::ThrottledStore::new(
            object_store::memory::InMemory::new(),
            object_store::throttle::ThrottleConfig {
                wait_put_per_call: std::time::Duration::from_secs(1),
                ..Default::default()
            },
        ));
        let clock = Clock::start();
        let site = dir.path().join("site/pg/wal");
        let name = "000000010000000000000001";
        archive(&site, name, name.as_bytes());
        let stop = CancellationToken::new();
        // The object is written by 1 s, its record from then to 2 s: the loss comes between.
        let (shipped, closed_ms) = tokio::join!(
            offsite.ship_archived("pg", &site, name, &clock, &stop, LIMIT),
            async {
                tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
                stop.cancel();
                offsite.close().await;
                clock.millis()
            }
        );
        let shipped = shipped
            .unwrap()
            .expect("its record was being written: it lands");
        assert!(
            closed_ms >= shipped.landed_ms,
            "closed at {closed_ms} ms, before {shipped:?}"
        );
        let record = offsite.key(&format!("pg/wal/{name}.json"));
        offsite
            .store
            .head(&record)
            .await
            .expect("the record landed");
    }
}
