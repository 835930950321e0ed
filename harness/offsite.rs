//! The offsite repository (`[offsite]`): each completed backup leaves the site encrypted with
//! age to the scenario's recipient, one object per artefact and its manifest last (a backup
//! without a manifest never landed). After a `site-loss` the DR site lists what landed, and
//! fetches and decrypts only the backup it restores, checking every artefact's sha256. A `path`
//! goes through object_store's local file system, a URL through the same stores as a restore
//! test's source.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
}

/// One artefact of a backup, landed offsite.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shipment {
    pub backup_id: u32,
    pub file: String,
    /// Bytes on the site, and as stored offsite (encrypted).
    pub bytes: u64,
    pub stored_bytes: u64,
    /// When the backup was complete on the site (its `finished_ms`).
    pub taken_ms: u64,
    /// When this artefact's upload completed.
    pub landed_ms: u64,
    /// `landed_ms − taken_ms`.
    pub lag_ms: u64,
}

/// What a backup fetched from offsite cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OffsiteFetch {
    pub location: String,
    pub backup_id: u32,
    /// Bytes downloaded (encrypted), and the time from the first request to the last artefact
    /// decrypted and checked.
    pub bytes: u64,
    pub fetch_ms: u64,
    /// The recipient the backup was encrypted to (public; the identity is never shown).
    pub recipient: String,
}

/// `manifest.json` of a shipped backup.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    backup: Backup,
    /// The age recipient every artefact was encrypted to.
    recipient: String,
    /// Per artefact, its object and the object's size and sha256.
    objects: Vec<StoredObject>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredObject {
    file: String,
    key: String,
    stored_bytes: u64,
    stored_sha256: String,
}

const MANIFEST: &str = "manifest.json";

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

    /// Encrypts every artefact of `backup` as it streams it up, then uploads its manifest;
    /// returns when each artefact landed. Dropped half-way, nothing of it is left but parts
    /// of an upload no listing shows, and no manifest.
    pub async fn ship(&self, backup: &Backup, clock: &Clock) -> Result<Vec<Shipment>> {
        let folder = Self::folder(backup);
        let mut shipments = Vec::new();
        let mut objects = Vec::new();
        for artefact in &backup.artefacts {
            let key = format!("{folder}/{}.age", artefact.file);
            let (stored_bytes, stored_sha256) = self
                .upload_sealed(&backup.dir.join(&artefact.file), &self.key(&key))
                .await?;
            let landed_ms = clock.millis();
            shipments.push(Shipment {
                backup_id: backup.id,
                file: artefact.file.clone(),
                bytes: artefact.size,
                stored_bytes,
                taken_ms: backup.finished_ms,
                landed_ms,
                lag_ms: landed_ms.saturating_sub(backup.finished_ms),
            });
            objects.push(StoredObject {
                file: artefact.file.clone(),
                key,
                stored_bytes,
                stored_sha256,
            });
        }
        let manifest = Manifest {
            backup: backup.clone(),
            recipient: self.recipient.to_string(),
            objects,
        };
        let manifest_key = self.key(&format!("{folder}/{MANIFEST}"));
        self.store
            .put(&manifest_key, serde_json::to_vec_pretty(&manifest)?.into())
            .await
            .map_err(|e| self.store_error("write the manifest of a shipped backup", e))?;
        Ok(shipments)
    }

    /// Encrypts the file `from` to the recipient while uploading it to `to`, in parts; the
    /// size and sha256 of what was stored.
    async fn upload_sealed(&self, from: &Path, to: &ObjectPath) -> Result<(u64, String)> {
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
        let (identity, from_where) = self.identity(&manifest.recipient, backup.id)?;
        std::fs::create_dir_all(&backup.dir)
            .with_context(|| format!("create {}", backup.dir.display()))?;
        let mut downloaded = 0;
        for object in &manifest.objects {
            let sealed = backup
                .dir
                .join(format!("{}.age", object.file.replace('/', "_")));
            let (size, sum) = self.download(&self.key(&object.key), &sealed).await?;
            downloaded += size;
            if sum != object.stored_sha256 {
                bail!(
                    "{} of backup {} changed offsite: sha256 {sum}, the manifest says {}",
                    object.key,
                    backup.id,
                    object.stored_sha256
                );
            }
            let plain = backup.dir.join(&object.file);
            if let Some(parent) = plain.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("create {}", parent.display()))?;
            }
            let (from, to, identity, what) = (
                sealed.clone(),
                plain.clone(),
                identity.clone(),
                format!("{} of backup {}", object.file, backup.id),
            );
            let key = format!(
                "{}, and the DR site's identity ({from_where})",
                manifest.recipient
            );
            let (size, sum) =
                tokio::task::spawn_blocking(move || decrypt(&from, &to, &identity, &what, &key))
                    .await??;
            let _ = std::fs::remove_file(&sealed);
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
            if sum != artefact.sha256 || size != artefact.size {
                bail!(
                    "{} of backup {} decrypted to {size} bytes with sha256 {sum}; the backup had {} bytes with sha256 {}",
                    object.file,
                    backup.id,
                    artefact.size,
                    artefact.sha256
                );
            }
        }
        Ok(OffsiteFetch {
            location: self.location.clone(),
            backup_id: backup.id,
            bytes: downloaded,
            fetch_ms: clock.millis().saturating_sub(started),
            recipient: manifest.recipient,
        })
    }

    /// The DR site's identity: `offsite.identity`, else [`IDENTITY_ENV`]; with where it came
    /// from (never the key itself).
    fn identity(
        &self,
        recipient: &str,
        id: u32,
    ) -> Result<(Arc<Vec<age::x25519::Identity>>, String)> {
        let missing = |why: String| {
            anyhow!(
                "backup {id} is encrypted to {recipient}, and the DR site cannot decrypt it: {why}"
            )
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
        Ok((Arc::new(identities), from_where))
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
