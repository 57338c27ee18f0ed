//! The incremental stage cache (`build --incremental`): the disk after growth and
//! package installation, kept under its stage key as a qcow2 overlay of the cached base.
//! Kept disks are read-only; later builds put their own overlay on top.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cache::Cache;

/// Where the stage disk of `key` lives.
pub fn path(cache: &Cache, key: &str) -> Result<PathBuf> {
    let hex = key.trim_start_matches("sha256:");
    Ok(cache.stage_dir()?.join(format!("{hex}.qcow2")))
}

/// The kept stage disk of `key`, when it is there and its base still is.
pub fn lookup(cache: &Cache, key: &str) -> Result<Option<PathBuf>> {
    let p = path(cache, key)?;
    if !p.is_file() {
        return Ok(None);
    }
    let info = crate::sys::qemu_img::info(&p)?;
    let backing = info.full_backing_filename.or(info.backing_filename);
    if backing.is_some_and(|b| !Path::new(&b).is_file()) {
        tracing::info!(
            "the kept stage disk {} lost its base: rebuilding it",
            p.display()
        );
        let _ = std::fs::remove_file(&p);
        return Ok(None);
    }
    Ok(Some(p))
}

/// Keeps `disk` (an overlay of a cached base) as `dest`, the stage disk of `key`
/// ([`path`], decided by the plan).
pub fn store(disk: &Path, dest: &Path, key: &str) -> Result<()> {
    crate::io::atomic::install(disk, dest)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o444))
        .with_context(|| format!("making {} read-only", dest.display()))?;
    crate::progress::event(
        "stage-kept",
        serde_json::json!({"key": key, "path": dest.display().to_string()}),
    );
    Ok(())
}
