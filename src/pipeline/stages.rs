//! The incremental stage cache (`build --incremental`): the disk after growth and
//! package installation, kept under its stage key as a qcow2 overlay of the cached base.
//! Kept disks are read-only; later builds put their own overlay on top.
//!
//! Beside it, the settled stage: the disk after the whole customization, on which a
//! rebuild that changes only files the host can rewrite does so without an appliance
//! ([`crate::guest::patch`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cache::Cache;
use crate::guest::accounts::KeptAccounts;
use crate::guest::patch::RootFs;
use crate::recipe::SecretValue;

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
    forget_settled_on(dest);
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

/// A disk kept after the whole customization (`build --incremental`, when the recipe
/// has files the host can rewrite): an overlay of the package stage, with where its
/// root filesystem lies and the package database read from it for the SBOM, in the
/// directory beside it (`<key>.d/`).
#[derive(Debug, Clone)]
pub struct Settled {
    pub disk: PathBuf,
    pub root: RootFs,
    /// The SBOM's inputs as the customization's launch copied them out.
    pub packages: PathBuf,
    /// Its account names, when the host can add users to it.
    pub accounts: Option<Box<KeptAccounts>>,
}

/// What `<key>.d/settled.json` records.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Record {
    root: RootFs,
    /// The package stage the disk is an overlay of. A package stage is rebuilt under
    /// the same name when it was pruned; the disks on the old one are dropped then.
    stage: PathBuf,
    /// A SHA-512 crypt hash (as strong as the guest's /etc/shadow) of the secrets that
    /// reached the disk outside the rewritable files (`Secrets::unpatchable`): the
    /// disk is reused only while they are the same.
    secrets: String,
    /// The names its account files hold, when the host can add users to it as the
    /// guest's useradd would (absent: it cannot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    accounts: Option<KeptAccounts>,
}

const RECORD: &str = "settled.json";

fn sidecar(disk: &Path) -> PathBuf {
    disk.with_extension("d")
}

/// The settled disk of `key`, when it is there whole, stands on `stage` (the package
/// stage this build would use) and holds `secrets` (a build's
/// `Secrets::unpatchable`; `None` for a plan, which reads no secret). One that stands
/// on anything else is removed; one with other passwords is left for the build to
/// replace.
pub fn lookup_settled(
    cache: &Cache,
    key: &str,
    stage: &Path,
    secrets: Option<&SecretValue>,
) -> Result<Option<Settled>> {
    let disk = path(cache, key)?;
    if !disk.is_file() {
        return Ok(None);
    }
    match check_settled(&disk, stage)? {
        Some(rec) => {
            if secrets.is_some_and(|s| !crate::guest::script::matches_hash(s, &rec.secrets)) {
                tracing::info!(
                    "a password changed since the customized disk {} was kept: customizing in the appliance",
                    disk.display()
                );
                return Ok(None);
            }
            Ok(Some(Settled {
                packages: sidecar(&disk).join("packages"),
                disk,
                root: rec.root,
                // A record of another model says nothing about adding users.
                accounts: rec
                    .accounts
                    .filter(|a| a.model == crate::guest::accounts::MODEL)
                    .map(Box::new),
            }))
        }
        None => {
            tracing::info!(
                "the kept customized disk {} is incomplete or stands on another stage: removing it",
                disk.display()
            );
            forget(&disk);
            Ok(None)
        }
    }
}

/// The record of the settled disk `disk` when it is whole and stands on `stage`.
fn check_settled(disk: &Path, stage: &Path) -> Result<Option<Record>> {
    let dir = sidecar(disk);
    let Some(rec) = read_record(&dir) else {
        return Ok(None);
    };
    let info = crate::sys::qemu_img::info(disk)?;
    let backing = info.full_backing_filename.or(info.backing_filename);
    let ok = backing.is_some_and(|b| same_file(Path::new(&b), stage))
        && same_file(&rec.stage, stage)
        && dir.join("packages").is_dir();
    Ok(ok.then_some(rec))
}

/// Whether two paths name the same file (however they are spelled).
fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

fn read_record(dir: &Path) -> Option<Record> {
    let bytes = std::fs::read(dir.join(RECORD)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Drops every settled disk recorded as standing on the package stage `stage` (which is
/// about to be replaced by a new disk under the same name).
fn forget_settled_on(stage: &Path) {
    let Some(dir) = stage.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let side = e.path();
        if side.extension().is_some_and(|x| x == "d")
            && read_record(&side).is_some_and(|r| same_file(&r.stage, stage))
        {
            forget(&side.with_extension("qcow2"));
        }
    }
}

/// Removes a settled disk and what is kept beside it.
pub fn forget(disk: &Path) {
    let _ = std::fs::remove_file(disk);
    let _ = std::fs::remove_dir_all(sidecar(disk));
}

/// A name in the stage directory no other build of this process or another uses.
fn unique(dest: &Path, what: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dest.with_extension(format!("{what}.tmp-{}-{n}", std::process::id()))
}

/// Removes a half-made entry unless it was kept.
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(&p);
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// What the check before keeping found of a customized disk.
#[derive(Debug, Clone)]
pub struct Found {
    pub root: RootFs,
    /// Its account names, when the host can add users to it.
    pub accounts: Option<KeptAccounts>,
}

/// Keeps `disk` (the overlay the customization ran on, an overlay of the package stage
/// `stage`, which finalize reads next) as `dest`, the settled disk of `key`: by a hard
/// link when the cache is on the same filesystem, else a copy; what was `found` and the package
/// database in `packages` beside it. Readable by the owner only: it holds what the
/// build put in the guest. A settled disk of the same key that another build kept on
/// the same stage with the same passwords stays: builds may stand on it.
pub fn store_settled(
    disk: &Path,
    dest: &Path,
    key: &str,
    found: Found,
    stage: &Path,
    secrets: &SecretValue,
    packages: &Path,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // One another build kept on the same stage with the same passwords stays (builds
    // may stand on it): asked before the work, and again before the replacement.
    let kept_already = || -> Result<bool> {
        Ok(dest.is_file()
            && check_settled(dest, stage)?
                .is_some_and(|rec| crate::guest::script::matches_hash(secrets, &rec.secrets)))
    };
    if kept_already()? {
        return Ok(());
    }
    let dir = sidecar(dest);
    let tmp = unique(dest, "d");
    let mut partial_dir = Partial(Some(tmp.clone()));
    std::fs::create_dir_all(tmp.join("packages"))
        .with_context(|| format!("creating {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", tmp.display()))?;
    let record = Record {
        root: found.root,
        stage: stage.canonicalize().unwrap_or_else(|_| stage.to_path_buf()),
        secrets: crate::guest::script::shadow_hash(secrets)?,
        accounts: found.accounts,
    };
    std::fs::write(tmp.join(RECORD), serde_json::to_vec_pretty(&record)?)
        .with_context(|| format!("writing {}", tmp.join(RECORD).display()))?;
    if packages.is_dir() {
        for e in std::fs::read_dir(packages)
            .with_context(|| format!("listing {}", packages.display()))?
        {
            let e = e?;
            if e.file_type()?.is_file() {
                std::fs::copy(e.path(), tmp.join("packages").join(e.file_name()))
                    .with_context(|| format!("keeping {}", e.path().display()))?;
            }
        }
    }
    let part = unique(dest, "qcow2");
    let mut partial_disk = Partial(Some(part.clone()));
    if std::fs::hard_link(disk, &part).is_err() {
        std::fs::copy(disk, &part)
            .with_context(|| format!("copying {} to {}", disk.display(), part.display()))?;
    }
    std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o400))
        .with_context(|| format!("making {} read-only", part.display()))?;
    if kept_already()? {
        return Ok(());
    }
    forget(dest);
    std::fs::rename(&tmp, &dir).with_context(|| format!("keeping {}", dir.display()))?;
    partial_dir.0 = None;
    std::fs::rename(&part, dest).with_context(|| format!("keeping {}", dest.display()))?;
    partial_disk.0 = None;
    crate::progress::event(
        "stage-kept",
        serde_json::json!({"key": key, "path": dest.display().to_string(), "settled": true}),
    );
    Ok(())
}
