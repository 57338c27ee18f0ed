//! Temporary directories under the scratch directory (`--work-dir`, else the system's
//! temp dir) that a killed process cannot leave there for good: each holds a locked
//! owner file while its process runs, and [`reap`], run when a command takes the
//! scratch directory, removes those nobody holds any more (a SIGKILL or a second
//! Ctrl-C skips every cleanup guard: a VM's overlay, a disk extracted for `verify` or
//! `run` stayed behind).

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Directories [`ScratchDir`] makes are named `diskforge-…`; only those are reaped.
const PREFIX: &str = "diskforge-";

/// The owner file inside each of them.
const OWNER: &str = ".diskforge-owner";

/// How old an owner file must be before its directory may be reaped: a process takes
/// the lock just after creating the file, and must not lose its directory in between.
const GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// A `diskforge-<what>-…` directory removed on drop, and by the next [`reap`] once the
/// process that made it is gone.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    owner: Option<File>,
}

impl ScratchDir {
    /// A new directory `diskforge-<what>-…` in `parent`, locked for this process.
    pub fn new_in(parent: &Path, what: &str) -> Result<ScratchDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{what}-"))
            .tempdir_in(parent)
            .with_context(|| format!("creating a {what} directory in {}", parent.display()))?;
        let path = dir.path().join(OWNER);
        let owner = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        owner
            .lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(ScratchDir {
            path: dir.keep(),
            owner: Some(owner),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    /// Removes everything but the owner file first, then the owner file, then the
    /// directory: a process killed in the middle (a second Ctrl-C) leaves a directory
    /// that still has its owner file, which the next [`reap`] recognizes.
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                if e.file_name() == OWNER {
                    continue;
                }
                let _ = match e.file_type() {
                    Ok(t) if t.is_dir() => std::fs::remove_dir_all(e.path()),
                    _ => std::fs::remove_file(e.path()),
                };
            }
        }
        let _ = std::fs::remove_file(self.path.join(OWNER));
        self.owner.take();
        if let Err(e) = std::fs::remove_dir(&self.path) {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Removes the `diskforge-*` directories in `parent` whose owner file nobody holds (and
/// was made more than a few seconds ago); returns how many. Directories without an
/// owner file, and anything else, are left.
pub fn reap(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(PREFIX)
            || !e.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        let Ok(owner) = File::open(e.path().join(OWNER)) else {
            continue;
        };
        let young = owner
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default() < GRACE)
            .unwrap_or(true);
        if young || owner.try_lock().is_err() {
            continue;
        }
        match std::fs::remove_dir_all(e.path()) {
            Ok(()) => {
                tracing::info!("removed {}, left by a killed diskforge", e.path().display());
                removed += 1;
            }
            Err(err) => tracing::warn!("cannot remove {}: {err}", e.path().display()),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory as a killed process leaves it: owner file there, lock released.
    fn abandoned(parent: &Path, what: &str) -> PathBuf {
        let mut d = ScratchDir::new_in(parent, what).unwrap();
        d.owner.take();
        let path = d.path.clone();
        std::mem::forget(d);
        path
    }

    #[test]
    fn only_directories_of_dead_owners_are_reaped() {
        let parent = tempfile::tempdir().unwrap();
        let live = ScratchDir::new_in(parent.path(), "vm").unwrap();
        // A dead owner: the directory stays, its lock is gone.
        let dead_path = abandoned(parent.path(), "run");
        let old = std::time::SystemTime::now() - 2 * GRACE;
        File::options()
            .write(true)
            .open(dead_path.join(OWNER))
            .unwrap()
            .set_modified(old)
            .unwrap();
        // Young and unlocked (a process between creating and locking it): kept.
        let young_path = abandoned(parent.path(), "verify");
        let foreign = parent.path().join("diskforge-mine");
        std::fs::create_dir(&foreign).unwrap();
        assert_eq!(reap(parent.path()), 1);
        assert!(!dead_path.exists());
        assert!(young_path.exists());
        assert!(live.path().exists() && foreign.exists());
        let live_path = live.path().to_path_buf();
        drop(live);
        assert!(!live_path.exists());
    }
}
