//! The download cache: a content-addressed store of base images and small artifacts.
//!
//! Layout under the cache root:
//!
//! ```text
//! blobs/sha256/<hex>      final (decompressed) content, named by its sha256, mode 0444
//! meta/<hex>.json         size, origin, creation and last-use time of a blob
//! refs/<kind>-<hex>       other names of a blob: the upstream checksum (`src-sha256-…`,
//!                         `src-sha512-…`, which may cover the compressed download), the URL
//!                         (`url-<sha256 of the URL>`), an archive member (`member-…`);
//!                         the blob's metadata lists the names it was stored under, and a
//!                         reference the metadata does not list is ignored
//! partial/<key>.part      an interrupted download, resumed with HTTP Range (kept across runs)
//! locks/<key>.lock        one exclusive lock per key: concurrent builds download once
//! stages/<key>.qcow2      disks kept by `build --incremental`, named by their stage key
//! stages/<key>.d/         beside a settled disk: where its root filesystem lies, its packages
//! state/                  small records (repositories pushed to, per registry)
//! ```
//!
//! A blob is written to a temporary file in its own directory and renamed to its digest
//! only after verification; an [`AtomicFile`] guard deletes it on error or drop. Blobs are
//! never modified after the rename. Lock files stay behind on purpose: deleting a lock
//! file another process may hold or be about to open would defeat the lock.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::io::atomic::AtomicFile;
use crate::io::hash::{sha256_file, sha256_hex};

/// The cache root and its subdirectories.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// What is known about one blob (`meta/<hex>.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BlobMeta {
    /// sha256 of the content, hex.
    pub digest: String,
    pub size: u64,
    /// Where the content came from (a URL, or a URL plus archive member).
    pub origin: String,
    /// The upstream checksum that verified it (`sha512:…`), when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_digest: Option<String>,
    /// The references (`refs/` file names) this blob was stored under: a reference
    /// naming the blob counts only when it is listed here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339; updated on every use, drives `cache prune --days`.
    pub last_used: String,
}

/// One line of `diskforge cache list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListEntry {
    /// `sha256:<hex>`.
    pub key: String,
    pub size: u64,
    pub last_used: String,
    pub origin: String,
    pub path: PathBuf,
}

/// What `prune` removed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PruneReport {
    pub blobs: usize,
    /// Bytes of the removed blobs and temporary files.
    pub bytes: u64,
    pub partials: usize,
    pub stages: usize,
    /// Temporary files of killed processes.
    pub temps: usize,
}

/// A `.tmp-*` file in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct TempFile {
    pub path: PathBuf,
    pub size: u64,
    pub modified: SystemTime,
    /// Whether its writer is running (it holds the file's lock); `None` where the
    /// filesystem cannot tell.
    pub in_use: Option<bool>,
}

/// How old an unlocked temporary file must be before `prune` takes it: longer than a
/// writer needs between creating the file and locking it.
const TEMP_GRACE: Duration = Duration::from_secs(5);

/// How old a temporary file whose lock cannot be read must be before `prune` takes it:
/// far longer than any download.
const TEMP_UNKNOWN_AGE: Duration = Duration::from_secs(86_400);

/// A second name for a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefKey {
    /// An upstream checksum (`algorithm`, `hex`); may cover the compressed download.
    Source { algorithm: String, hex: String },
    /// A URL whose content had no checksum, or for offline lookups.
    Url(String),
    /// A member extracted from an archive blob.
    Member { archive: String, member: String },
}

impl RefKey {
    /// The file name under `refs/` (and `locks/`): safe characters only.
    pub fn file_name(&self) -> String {
        match self {
            RefKey::Source { algorithm, hex } => format!("src-{algorithm}-{hex}"),
            RefKey::Url(url) => format!("url-{}", sha256_hex(url.as_bytes())),
            RefKey::Member { archive, member } => format!(
                "member-{}",
                sha256_hex(format!("{archive}\n{member}").as_bytes())
            ),
        }
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An exclusive lock on one cache key; released on drop.
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

impl Cache {
    /// Opens (creating when needed) the cache at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Result<Cache> {
        let cache = Cache { root: root.into() };
        for dir in [
            cache.blob_dir(),
            cache.root.join("meta"),
            cache.root.join("refs"),
            cache.partial_dir(),
            cache.root.join("locks"),
        ] {
            fs::create_dir_all(&dir)
                .with_context(|| format!("creating cache directory {}", dir.display()))?;
        }
        Ok(cache)
    }

    /// The cache at `root` for reading only, as it is: nothing is created, and what
    /// is missing reads as absent (`validate` has no side effects).
    pub fn read_only(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    /// `--cache-dir` when given, else `$XDG_CACHE_HOME/diskforge`, else `~/.cache/diskforge`.
    pub fn open(cli_override: Option<&Path>) -> Result<Cache> {
        match cli_override {
            Some(dir) => Cache::new(dir),
            None => Cache::new(Cache::default_root()?),
        }
    }

    pub fn default_root() -> Result<PathBuf> {
        // The XDG base directory spec: a relative path in the variable is invalid and
        // ignored (and a relative cache would break every overlay's backing path).
        if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty() && Path::new(v).is_absolute())
        {
            return Ok(PathBuf::from(xdg).join("diskforge"));
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => Ok(PathBuf::from(home).join(".cache").join("diskforge")),
            None => bail!("neither XDG_CACHE_HOME nor HOME is set: pass --cache-dir"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub fn partial_dir(&self) -> PathBuf {
        self.root.join("partial")
    }

    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.blob_dir().join(hex)
    }

    fn meta_path(&self, hex: &str) -> PathBuf {
        self.root.join("meta").join(format!("{hex}.json"))
    }

    fn ref_path(&self, key: &RefKey) -> PathBuf {
        self.root.join("refs").join(key.file_name())
    }

    /// A temporary file in the blob directory, so that committing it is a rename.
    pub fn temp_blob(&self) -> Result<AtomicFile> {
        AtomicFile::new_in(&self.blob_dir())
    }

    /// Takes over a finished file (a base built in the work directory) as a temporary
    /// file of the blob directory, ready for [`Cache::commit`].
    pub fn adopt(&self, src: &Path) -> Result<AtomicFile> {
        AtomicFile::adopt(src, &self.blob_dir())
    }

    /// A directory of the cache for small state records (`state/NAME`), created on use.
    pub fn state_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join("state").join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Where `build --incremental` keeps stage disks: readable by the cache's owner
    /// only (a customized disk holds what the build put in it, credentials included).
    pub fn stage_dir(&self) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.root.join("stages");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
        Ok(dir)
    }

    /// Waits for the exclusive lock on `key` (blocking; see [`Cache::lock`] for async).
    pub fn lock_blocking(&self, key: &RefKey) -> Result<CacheLock> {
        let path = self
            .root
            .join("locks")
            .join(format!("{}.lock", key.file_name()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        if file.try_lock().is_err() {
            tracing::info!(
                "waiting for another diskforge process using {}",
                path.display()
            );
            file.lock()
                .with_context(|| format!("locking {}", path.display()))?;
        }
        Ok(CacheLock { _file: file })
    }

    /// Waits for the exclusive lock on `key` without blocking the async runtime.
    pub async fn lock(&self, key: &RefKey) -> Result<CacheLock> {
        let cache = self.clone();
        let key = key.clone();
        tokio::task::spawn_blocking(move || cache.lock_blocking(&key))
            .await
            .context("waiting for a cache lock")?
    }

    /// The blob digest a reference names, when the reference and the blob both exist.
    pub fn lookup(&self, key: &RefKey) -> Result<Option<String>> {
        let path = self.ref_path(key);
        let hex = match fs::read_to_string(&path) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading cache reference {}", path.display()))
            }
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            tracing::warn!("ignoring malformed cache reference {}", path.display());
            return Ok(None);
        }
        if !self.blob_path(&hex).is_file() {
            return Ok(None);
        }
        let name = key.file_name();
        match self.meta(&hex)? {
            // Metadata written before names were recorded cannot be checked: the name
            // is recorded now (best effort: a read-only cache stays as it is), as the
            // reference has always been trusted.
            Some(meta) if meta.names.is_empty() => {
                if let Err(e) = self.add_name(&hex, &name) {
                    tracing::debug!("recording {name} for blob sha256:{hex}: {e:#}");
                }
            }
            Some(meta) if meta.names.contains(&name) => {}
            Some(meta) => {
                tracing::warn!(
                    "ignoring cache reference {}: it names blob sha256:{hex}, which was stored as {} ({}), not under this name",
                    path.display(),
                    meta.names.join(", "),
                    meta.origin
                );
                return Ok(None);
            }
            None => {
                tracing::warn!(
                    "ignoring cache reference {}: blob sha256:{hex} has no metadata to check it against",
                    path.display()
                );
                return Ok(None);
            }
        }
        Ok(Some(hex))
    }

    /// Records `name` among the references blob `hex` is stored under.
    fn add_name(&self, hex: &str, name: &str) -> Result<()> {
        let Some(mut meta) = self.meta(hex)? else {
            bail!("blob sha256:{hex} has no metadata to record the reference {name} in");
        };
        if !meta.names.iter().any(|n| n == name) {
            meta.names.push(name.to_string());
            self.write_meta(&meta)?;
        }
        Ok(())
    }

    /// Re-hashes a blob (a full read: about 1-2 s per GiB on a 2-core machine) and
    /// removes it, with its metadata, when its content no longer matches its name.
    /// Returns whether the blob is intact.
    pub fn verify_blob(&self, hex: &str) -> Result<bool> {
        let path = self.blob_path(hex);
        let (actual, size) = sha256_file(&path)?;
        let expected_size = self.meta(hex)?.map(|m| m.size);
        if actual == hex && expected_size.is_none_or(|s| s == size) {
            return Ok(true);
        }
        tracing::warn!(
            "cached {} is corrupt (sha256 is now {actual}); discarding it",
            path.display()
        );
        self.remove_blob(hex)?;
        Ok(false)
    }

    fn remove_blob(&self, hex: &str) -> Result<()> {
        for path in [self.blob_path(hex), self.meta_path(hex)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
        }
        Ok(())
    }

    /// Renames a verified temporary file to `blobs/sha256/<hex>`, makes it read-only,
    /// records its metadata with the names of `keys`, and points each of `keys` at it
    /// (metadata first, so the references check out on lookup). An existing blob with
    /// the same digest is kept as is.
    pub fn commit(
        &self,
        temp: AtomicFile,
        hex: &str,
        origin: &str,
        source_digest: Option<String>,
        keys: &[&RefKey],
    ) -> Result<PathBuf> {
        let dest = self.blob_path(hex);
        let size = fs::metadata(temp.path())
            .with_context(|| format!("reading the size of {}", temp.path().display()))?
            .len();
        set_read_only(temp.path())?;
        if dest.is_file() {
            // Same content already stored (another URL, or a race lost): keep the old file
            // untouched, the temp is dropped and deleted.
            drop(temp);
        } else {
            temp.persist(&dest)?;
        }
        let now = now_rfc3339();
        let old = self.meta(hex)?;
        let created = old
            .as_ref()
            .map(|m| m.created.clone())
            .unwrap_or_else(|| now.clone());
        let mut names = old.map(|m| m.names).unwrap_or_default();
        for k in keys {
            let name = k.file_name();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        self.write_meta(&BlobMeta {
            digest: hex.to_string(),
            size,
            origin: origin.to_string(),
            source_digest,
            names,
            created,
            last_used: now,
        })?;
        for k in keys {
            self.write_ref(k, hex)?;
        }
        Ok(dest)
    }

    /// Points `key` at blob `hex` (atomically replacing an older reference), and records
    /// the name in the blob's metadata first, so the reference checks out on lookup.
    pub fn set_ref(&self, key: &RefKey, hex: &str) -> Result<()> {
        self.add_name(hex, &key.file_name())?;
        self.write_ref(key, hex)
    }

    fn write_ref(&self, key: &RefKey, hex: &str) -> Result<()> {
        crate::io::atomic::write(&self.ref_path(key), hex.as_bytes())
            .context("writing a cache reference")
    }

    pub fn meta(&self, hex: &str) -> Result<Option<BlobMeta>> {
        let path = self.meta_path(hex);
        match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(meta) => Ok(Some(meta)),
                Err(e) => {
                    tracing::warn!("ignoring unreadable cache metadata {}: {e}", path.display());
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn write_meta(&self, meta: &BlobMeta) -> Result<()> {
        let mut temp = AtomicFile::new_in(&self.root.join("meta"))?;
        serde_json::to_writer_pretty(&mut temp, meta).context("writing cache metadata")?;
        temp.persist(&self.meta_path(&meta.digest))
    }

    /// Records a use of blob `hex` (for `prune --days`). The blob itself is not touched.
    pub fn touch(&self, hex: &str) -> Result<()> {
        let path = self.blob_path(hex);
        let mut meta = match self.meta(hex)? {
            Some(m) => m,
            None => {
                let size = fs::metadata(&path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .len();
                BlobMeta {
                    digest: hex.to_string(),
                    size,
                    origin: "unknown".to_string(),
                    source_digest: None,
                    names: Vec::new(),
                    created: now_rfc3339(),
                    last_used: String::new(),
                }
            }
        };
        meta.last_used = now_rfc3339();
        self.write_meta(&meta)
    }

    /// The `.tmp-*` files of the cache's directories: files being written now (their
    /// writer holds a lock) and files a killed process left behind.
    pub fn temp_files(&self) -> Result<Vec<TempFile>> {
        let mut out = Vec::new();
        for dir in [
            self.blob_dir(),
            self.root.join("meta"),
            self.root.join("refs"),
        ] {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
            };
            for entry in rd {
                let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
                if !entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                out.push(TempFile {
                    in_use: crate::io::atomic::in_use(&entry.path()),
                    size: meta.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    path: entry.path(),
                });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Every blob with its size and last use, most recently used first.
    pub fn list(&self) -> Result<Vec<ListEntry>> {
        let dir = self.blob_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or_default();
            let meta = self.meta(&name)?;
            out.push(ListEntry {
                key: format!("sha256:{name}"),
                size,
                last_used: meta
                    .as_ref()
                    .map(|m| m.last_used.clone())
                    .unwrap_or_default(),
                origin: meta.map(|m| m.origin).unwrap_or_default(),
                path: entry.path(),
            });
        }
        out.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.key.cmp(&b.key)));
        Ok(out)
    }

    /// Removes blobs not used for `older_than` (all when `None`), the references that
    /// named them, and partial downloads (older than `older_than`, or all).
    pub fn prune(&self, older_than: Option<Duration>) -> Result<PruneReport> {
        let cutoff = older_than.map(|d| {
            chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::TimeDelta::MAX)
        });
        let mut report = PruneReport::default();
        for entry in self.list()? {
            let hex = entry.key.trim_start_matches("sha256:").to_string();
            let stale = match cutoff {
                None => true,
                Some(cutoff) => chrono::DateTime::parse_from_rfc3339(&entry.last_used)
                    .map(|t| t < cutoff)
                    .unwrap_or(true),
            };
            if stale {
                self.remove_blob(&hex)?;
                report.blobs += 1;
                report.bytes += entry.size;
            }
        }
        // Temporary files left by a killed process: nobody holds their lock. A file
        // younger than a few seconds may belong to a writer that has not taken its lock
        // yet; a locked one belongs to a running writer, however old it is.
        let ago = |d: Duration| {
            SystemTime::now()
                .checked_sub(d)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        for t in self.temp_files()? {
            let old_enough = match t.in_use {
                Some(true) => false,
                Some(false) => t.modified < ago(TEMP_GRACE),
                None => t.modified < ago(TEMP_UNKNOWN_AGE),
            };
            if !old_enough {
                continue;
            }
            match fs::remove_file(&t.path) {
                Ok(()) => {
                    report.temps += 1;
                    report.bytes += t.size;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", t.path.display())),
            }
        }
        // References to removed blobs are dangling now: drop them.
        let refs = self.root.join("refs");
        for entry in fs::read_dir(&refs).with_context(|| format!("listing {}", refs.display()))? {
            let path = entry?.path();
            let target = fs::read_to_string(&path).unwrap_or_default();
            if !self.blob_path(target.trim()).is_file() {
                let _ = fs::remove_file(&path);
            }
        }
        // Kept stage disks: by age of last use (their modification time is refreshed
        // on every use), and with the base they stand on.
        let stages = self.root.join("stages");
        if let Ok(rd) = fs::read_dir(&stages) {
            let limit = older_than.map(|d| {
                SystemTime::now()
                    .checked_sub(d)
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            });
            let mut dirs = Vec::new();
            for entry in rd.flatten() {
                let path = entry.path();
                // A settled disk keeps a directory beside it (`<key>.d`): it goes with
                // its disk, below. Other directories are a build's half-made ones
                // (`<key>.d.tmp-…`), removed only once old.
                if path.is_dir() && path.extension().is_some_and(|e| e == "d") {
                    dirs.push(path);
                    continue;
                }
                let old = match limit {
                    None => true,
                    Some(limit) => entry
                        .metadata()
                        .and_then(|m| m.accessed().or_else(|_| m.modified()))
                        .map(|m| m < limit)
                        .unwrap_or(true),
                };
                if !old {
                    continue;
                }
                if path.is_dir() {
                    let _ = fs::remove_dir_all(&path);
                } else if fs::remove_file(&path).is_ok()
                    && path.extension().is_some_and(|e| e == "qcow2")
                {
                    report.stages += 1;
                }
            }
            for dir in dirs {
                if !dir.with_extension("qcow2").is_file() {
                    let _ = fs::remove_dir_all(&dir);
                }
            }
        }
        let partial = self.partial_dir();
        let limit = older_than.map(|d| {
            SystemTime::now()
                .checked_sub(d)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        });
        for entry in
            fs::read_dir(&partial).with_context(|| format!("listing {}", partial.display()))?
        {
            let entry = entry?;
            let old = match limit {
                None => true,
                Some(limit) => entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|m| m < limit)
                    .unwrap_or(true),
            };
            if old {
                let _ = fs::remove_file(entry.path());
                if entry.file_name().to_string_lossy().ends_with(".part") {
                    report.partials += 1;
                }
            }
        }
        Ok(report)
    }
}

/// Cached files are read-only: nothing in diskforge may write to them.
fn set_read_only(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o444))
        .with_context(|| format!("making {} read-only", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn commit_lookup_prune() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path()).unwrap();
        let mut temp = cache.temp_blob().unwrap();
        temp.write_all(b"hello").unwrap();
        let hex = sha256_hex(b"hello");
        let key = RefKey::Url("http://x/y".into());
        let path = cache.commit(temp, &hex, "test", None, &[&key]).unwrap();
        assert_eq!(cache.lookup(&key).unwrap().as_deref(), Some(hex.as_str()));
        assert!(cache.verify_blob(&hex).unwrap());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert_eq!(cache.list().unwrap().len(), 1);
        // Recently used: survives a 1-day prune, not --all.
        assert_eq!(
            cache.prune(Some(Duration::from_secs(86400))).unwrap().blobs,
            0
        );
        assert_eq!(cache.prune(None).unwrap().blobs, 1);
        assert_eq!(cache.lookup(&key).unwrap(), None);
        assert!(fs::read_dir(cache.blob_dir()).unwrap().next().is_none());
    }

    /// Kept stage disks: private, counted and removed by prune, a settled disk's
    /// directory with its disk, and an orphaned directory on its own.
    #[test]
    fn prune_removes_stage_disks_with_what_is_kept_beside_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path()).unwrap();
        let stages = cache.stage_dir().unwrap();
        assert_eq!(
            fs::metadata(&stages).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for name in ["a.qcow2", "b.qcow2"] {
            fs::write(stages.join(name), b"disk").unwrap();
        }
        fs::create_dir_all(stages.join("b.d/packages")).unwrap();
        fs::create_dir_all(stages.join("orphan.d")).unwrap();
        // Recently used: nothing goes on a 1-day prune but the directory without a disk.
        let report = cache.prune(Some(Duration::from_secs(86400))).unwrap();
        assert_eq!(report.stages, 0);
        assert!(stages.join("b.d").is_dir() && !stages.join("orphan.d").exists());
        let report = cache.prune(None).unwrap();
        assert_eq!(report.stages, 2);
        assert!(fs::read_dir(&stages).unwrap().next().is_none());
    }

    #[test]
    fn corrupt_blob_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path()).unwrap();
        let hex = sha256_hex(b"data");
        let mut temp = cache.temp_blob().unwrap();
        temp.write_all(b"daTa").unwrap();
        cache.commit(temp, &hex, "test", None, &[]).unwrap();
        assert!(!cache.verify_blob(&hex).unwrap());
        assert!(!cache.blob_path(&hex).exists());
    }

    #[test]
    fn a_reference_to_a_blob_stored_under_another_name_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path()).unwrap();
        let store = |data: &[u8], key: &RefKey| {
            let mut temp = cache.temp_blob().unwrap();
            temp.write_all(data).unwrap();
            let hex = sha256_hex(data);
            cache.commit(temp, &hex, "test", None, &[key]).unwrap();
            hex
        };
        let (a, b) = (
            RefKey::Url("http://x/a".into()),
            RefKey::Url("http://x/b".into()),
        );
        let hex_a = store(b"content a", &a);
        let hex_b = store(b"content b", &b);
        assert_eq!(cache.lookup(&b).unwrap().as_deref(), Some(hex_b.as_str()));
        // b's reference now names a's blob: intact, but not what b was stored as.
        fs::write(cache.ref_path(&b), &hex_a).unwrap();
        assert!(cache.verify_blob(&hex_a).unwrap());
        assert_eq!(cache.lookup(&b).unwrap(), None);
        assert_eq!(cache.lookup(&a).unwrap().as_deref(), Some(hex_a.as_str()));
        // Storing b again repairs the reference; the same content under a second name
        // keeps both names.
        store(b"content b", &b);
        assert_eq!(cache.lookup(&b).unwrap().as_deref(), Some(hex_b.as_str()));
        let c = RefKey::Source {
            algorithm: "sha256".into(),
            hex: hex_a.clone(),
        };
        store(b"content a", &c);
        assert_eq!(cache.lookup(&a).unwrap().as_deref(), Some(hex_a.as_str()));
        assert_eq!(cache.lookup(&c).unwrap().as_deref(), Some(hex_a.as_str()));
        // A reference to a blob without metadata cannot be checked.
        fs::remove_file(cache.meta_path(&hex_a)).unwrap();
        assert_eq!(cache.lookup(&a).unwrap(), None);
    }

    #[test]
    fn references_from_before_names_were_recorded_are_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path()).unwrap();
        let mut temp = cache.temp_blob().unwrap();
        temp.write_all(b"old").unwrap();
        let hex = sha256_hex(b"old");
        cache.commit(temp, &hex, "test", None, &[]).unwrap();
        let key = RefKey::Url("http://x/old".into());
        fs::write(cache.ref_path(&key), &hex).unwrap();
        assert!(cache.meta(&hex).unwrap().unwrap().names.is_empty());
        assert_eq!(cache.lookup(&key).unwrap().as_deref(), Some(hex.as_str()));
        assert_eq!(cache.meta(&hex).unwrap().unwrap().names, [key.file_name()]);
    }
}
