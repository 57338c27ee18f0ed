//! Atomic file creation: write to `.tmp-*` beside the destination, sync, rename. A file
//! that was not finished is removed when its guard drops (error, Ctrl-C), so no
//! half-written file is ever left under a final name.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A file being written; renamed into place by [`AtomicFile::persist`], removed on drop.
/// Its writer holds an exclusive lock (`flock`) on it until then, so `cache prune` can
/// tell the file of a running writer from one a killed process left behind.
#[derive(Debug)]
pub struct AtomicFile {
    temp: tempfile::NamedTempFile,
}

/// The directory a path lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl AtomicFile {
    /// A new temporary file in `dir` (named `.tmp-…`, so `cache prune` and the tests
    /// recognize leftovers of a killed process).
    pub fn new_in(dir: &Path) -> Result<AtomicFile> {
        let temp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        hold(temp.as_file());
        Ok(AtomicFile { temp })
    }

    /// A temporary file beside `dest`.
    pub fn for_dest(dest: &Path) -> Result<AtomicFile> {
        let dir = parent_dir(dest);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        AtomicFile::new_in(&dir)
    }

    /// Takes over an existing file: renames it to a fresh temporary name in `dir`
    /// (same filesystem), from where it is persisted or, on drop, removed.
    pub fn adopt(src: &Path, dir: &Path) -> Result<AtomicFile> {
        let placeholder = AtomicFile::new_in(dir)?;
        let path = placeholder.temp.into_temp_path();
        if std::fs::rename(src, &path).is_err() {
            // Another filesystem: copy, then drop the source.
            let mut from = File::open(src).with_context(|| format!("opening {}", src.display()))?;
            let mut to =
                File::create(&path).with_context(|| format!("writing {}", path.display()))?;
            std::io::copy(&mut crate::sys::interrupt::Checked(&mut from), &mut to)
                .with_context(|| format!("copying {} to {}", src.display(), path.display()))?;
            std::fs::remove_file(src).with_context(|| format!("removing {}", src.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        hold(&file);
        Ok(AtomicFile {
            temp: tempfile::NamedTempFile::from_parts(file, path),
        })
    }

    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    pub fn file(&mut self) -> &mut File {
        self.temp.as_file_mut()
    }

    /// A second handle on the same file (for writers that need an owned `File`).
    pub fn reopen(&self) -> Result<File> {
        self.temp
            .reopen()
            .with_context(|| format!("reopening {}", self.path().display()))
    }

    /// Syncs and renames to `dest` (same filesystem).
    pub fn persist(self, dest: &Path) -> Result<()> {
        self.temp
            .as_file()
            .sync_all()
            .with_context(|| format!("syncing {}", self.temp.path().display()))?;
        let from = self.temp.path().to_path_buf();
        self.temp
            .persist(dest)
            .map_err(|e| e.error)
            .with_context(|| format!("renaming {} to {}", from.display(), dest.display()))?;
        Ok(())
    }
}

/// Takes the writer's lock on a new temporary file. Only [`in_use`] may hold it for a
/// moment (it is what tells a running writer from a dead one), so waiting for it is
/// short. On a filesystem without `flock` the file stays unlocked and `cache prune`
/// goes by age alone.
fn hold(file: &File) {
    if let Err(e) = file.lock() {
        tracing::debug!("cannot lock a temporary file: {e}");
    }
}

/// Whether a writer holds the lock on the `.tmp-*` file at `path` (see
/// [`AtomicFile`]); `None` when that cannot be told (no `flock` there, or the file went).
pub fn in_use(path: &Path) -> Option<bool> {
    let f = File::open(path).ok()?;
    match f.try_lock() {
        Ok(()) => Some(false),
        Err(std::fs::TryLockError::WouldBlock) => Some(true),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.temp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.temp.flush()
    }
}

/// Writes `data` to `dest` atomically.
pub fn write(dest: &Path, data: &[u8]) -> Result<()> {
    let mut f = AtomicFile::for_dest(dest)?;
    f.write_all(data)
        .with_context(|| format!("writing {}", dest.display()))?;
    f.persist(dest)
}

/// Moves a finished file to `dest` atomically: a rename when both are on one
/// filesystem, else a copy into a temporary file beside `dest` and a rename.
pub fn install(src: &Path, dest: &Path) -> Result<()> {
    if std::fs::rename(src, dest).is_ok() {
        return Ok(());
    }
    let mut temp = AtomicFile::for_dest(dest)?;
    let mut f = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    std::io::copy(&mut crate::sys::interrupt::Checked(&mut f), temp.file())
        .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    temp.persist(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_files_vanish_and_finished_ones_appear_whole() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("x");
        {
            let mut f = AtomicFile::for_dest(&dest).unwrap();
            f.write_all(b"half").unwrap();
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        write(&dest, b"whole").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
