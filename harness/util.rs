//! Leaf helpers every layer uses: atomic file writes, duration formats, the TLS provider. This
//! module imports nothing from the crate.

use std::path::Path;

use anyhow::{Context, Result};

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename: readers see
/// the old file or the whole new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_with(path, |out| out.write_all(bytes))
}

/// Like [`write_atomically`], with the content streamed by `fill` (buffered).
pub fn write_atomically_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<()> {
    write_atomically_mode(path, 0o644, fill)
}

/// Like [`write_atomically`], readable and writable by this user only (mode 0600): for the
/// one output that holds secrets on purpose, a kept run's `connections.json`.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_mode(path, 0o600, |out| out.write_all(bytes))
}

fn write_atomically_mode(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<()> {
    use std::io::Write as _;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    let mut out = std::io::BufWriter::new(tmp);
    fill(&mut out).with_context(|| format!("write {}", path.display()))?;
    out.flush()
        .with_context(|| format!("write {}", path.display()))?;
    let tmp = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("write {}", path.display()))?;
    // Reports are read by CI artefact uploads and other users: not the temp file's 0600,
    // unless they hold secrets.
    use std::os::unix::fs::PermissionsExt as _;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("write {}", path.display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// `1.234s` for milliseconds.
pub fn seconds(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

/// Serde adapter: a `Duration` as whole milliseconds.
pub mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// Files and bytes under `dir`, at any depth (nothing when it is missing).
pub fn tree_size(dir: &Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let (mut files, mut bytes) = (0, 0);
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let (f, b) = tree_size(&entry.path());
            files += f;
            bytes += b;
        } else {
            files += 1;
            bytes += meta.len();
        }
    }
    (files, bytes)
}

/// Installs rustls's process-wide crypto provider, ring, before an HTTPS client is built (the
/// webhook's, an object store's). drillrig builds reqwest without a bundled provider, so that
/// ring is the only crypto library compiled; a client built before this panics, naming it.
pub fn tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: a provider is already installed (by the embedding program), which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
