//! Rewriting files of a kept disk on the host, without an appliance.
//!
//! `build --incremental` keeps the disk after the whole customization (the "settled"
//! stage) when the files whose content may change between builds — the recipe's plain
//! files, ttyd's unit and start script — are ones nothing later in the customization
//! reads. A rebuild in which only their content changed then rewrites them in place:
//! the disk's root filesystem (ext2/3/4) is exposed as a file by `qemu-storage-daemon`'s
//! FUSE export of a new overlay, and e2fsprogs' `debugfs` replaces each file's data.
//!
//! What the guest script had made of the file stays: its inode's mode, owner, group,
//! inherited flags, project and every extended attribute (an SELinux label included)
//! are copied to the new inode, so the result is the file `install -m MODE -o OWNER -g
//! GROUP` would have written and the relabel would have labelled. The old file is
//! unlinked and its data blocks zeroed before anything can reuse them (deleted is not
//! erased: an old credential must not stay in the free blocks of a published disk), and
//! `e2fsck -fn` checks the filesystem before the export ends. Password hashes are an edit
//! of `/etc/shadow` (and of its backup), every other line as the disk has it.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::accounts::{self, AccountFiles, Added, KeptAccounts, NewUser, Pair};
use super::content::StageData;
use crate::sys::exec::Cmd;

/// Where a kept disk's root filesystem lies, recorded when the disk is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RootFs {
    /// Byte offset of the filesystem in the disk (0: the whole disk).
    pub offset: u64,
    /// Its size in bytes.
    pub size: u64,
    /// `ext2`, `ext3` or `ext4`.
    pub fs_type: String,
    /// The guest's other mount points: a file under one of them is not on this
    /// filesystem.
    pub other_mounts: Vec<String>,
}

impl RootFs {
    /// Whether the host can rewrite files of this filesystem.
    pub fn editable(&self) -> bool {
        matches!(self.fs_type.as_str(), "ext2" | "ext3" | "ext4")
    }

    /// Whether `path` lies on this filesystem (not under another mount point).
    pub fn holds(&self, path: &str) -> bool {
        !self.other_mounts.iter().any(|m| under(path, m))
    }
}

/// Whether `path` is `dir` or lies below it.
pub fn under(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    dir.is_empty()
        || path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Whether the guest script writes a file on every guest, or only on some (ttyd's
/// unit on systemd guests, its start script on the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Always,
    IfPresent,
}

/// What a rewritten file holds.
#[derive(Clone)]
pub enum PatchData {
    /// This content, whole.
    Content(StageData),
    /// The disk's shadow(5) file with these users' password hashes (`$6$…`) set and
    /// their last-change day made today, as `chpasswd -e` leaves it; every other line
    /// and field as the disk has it.
    Passwords(Vec<(String, String)>),
    /// The disk's shadow backup (`/etc/shadow-`, the file as it was before the last
    /// `chpasswd`): where it holds one of these users with a password hash (set by an
    /// earlier `chpasswd` of the customization), the new hash and day; users without
    /// one there stay as they are. The build before must leave no old hash behind.
    BackupPasswords(Vec<(String, String)>),
}

/// One file the host rewrites with new content.
#[derive(Clone)]
pub struct PatchFile {
    pub path: String,
    pub data: PatchData,
    pub presence: Presence,
    /// The file is in this user's home, which the guest script found with `getent`:
    /// the disk's /etc/passwd must give the home the path starts with.
    pub home_of: Option<String>,
}

impl std::fmt::Debug for PatchFile {
    // The content may be a credential: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatchFile")
            .field("path", &self.path)
            .field("presence", &self.presence)
            .finish_non_exhaustive()
    }
}

/// A guest path `debugfs` takes as one word, unquoted: absolute, no `.` or `..`
/// component, none starting with `-` (an option to debugfs' commands), and only
/// letters, digits and `._+-@=:,/`. Other paths are left to the appliance.
pub fn plain_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() > 1
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-@=:,/".contains(c))
        && path
            .split('/')
            .skip(1)
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.starts_with('-'))
}

/// The programs a patch runs.
pub const TOOLS: [&str; 3] = ["qemu-storage-daemon", "debugfs", "e2fsck"];

/// Whether this host can patch: the programs, and FUSE; `DISKFORGE_HOST_PATCH=0` says
/// not to (debugfs and e2fsck then never read a guest's filesystem on the host).
pub fn available() -> Result<(), String> {
    if std::env::var("DISKFORGE_HOST_PATCH").is_ok_and(|v| v == "0") {
        return Err("DISKFORGE_HOST_PATCH=0".into());
    }
    for t in TOOLS {
        if !crate::sys::exec::have(t) {
            return Err(format!("{t} is not installed"));
        }
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing (no FUSE)".into());
    }
    Ok(())
}

/// Where [`apply`] exposes the root filesystem, under its work directory.
pub fn mountpoint(work: &Path) -> PathBuf {
    work.join("patch").join("root")
}

/// The command that exposes the root filesystem of `disk` (a qcow2) as the file
/// `mountpoint`, read-write (or read-only: [`check`]).
pub fn export_cmd(disk: &Path, root: &RootFs, mountpoint: &Path, writable: bool) -> Cmd {
    let blockdev = |v: serde_json::Value| v.to_string();
    Cmd::new(
        "qemu-storage-daemon",
        format!(
            "exposing the root filesystem of {} to the host",
            disk.display()
        ),
    )
    .arg("--blockdev")
    .arg(blockdev(json!({"driver": "file", "node-name": "file",
                         "filename": disk.to_string_lossy(), "read-only": !writable})))
    .arg("--blockdev")
    .arg(blockdev(
        json!({"driver": "qcow2", "node-name": "disk", "file": "file", "read-only": !writable}),
    ))
    .arg("--blockdev")
    .arg(blockdev(
        json!({"driver": "raw", "node-name": "root", "file": "disk",
               "offset": root.offset, "size": root.size, "read-only": !writable}),
    ))
    .arg("--export")
    .arg(blockdev(
        json!({"type": "fuse", "id": "root", "node-name": "root",
               "mountpoint": mountpoint.to_string_lossy(), "writable": writable}),
    ))
}

/// What a patch did to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patched {
    pub path: String,
    pub bytes: u64,
    /// Blocks of the old content freed and zeroed.
    pub old_blocks: usize,
    /// Extended attributes carried over (`security.selinux`, …).
    pub xattrs: Vec<String>,
}

/// What [`check`] found on a disk about to be kept.
#[derive(Debug)]
pub struct Checked {
    /// How many of the files the disk has.
    pub present: usize,
    /// Its accounts, when the host can add users to it ([`accounts`]); why not, else.
    pub accounts: Result<KeptAccounts, String>,
}

/// Checks, read-only, that [`apply`] can rewrite `files` on `disk` (a disk about to be
/// kept): the export works on this host, the filesystem is clean, and every file the
/// customization always writes is a plain regular file; and whether users can be added
/// on the host.
pub fn check(
    disk: &Path,
    root: &RootFs,
    files: &[PatchFile],
    work: &Path,
    names: &crate::sys::exec::PathNames,
) -> Result<Checked> {
    let session = Session::open(disk, root, files, work, &[], names, false)?;
    let mut present = 0;
    for f in files {
        if session.existing(f)?.is_some() {
            present += 1;
        }
    }
    // Whatever keeps users from being added on the host is a reason, not a failure:
    // the disk is still kept for the other rewrites.
    let accounts = session.accounts().unwrap_or_else(|e| Err(format!("{e:#}")));
    session.export.finish()?;
    Ok(Checked { present, accounts })
}

/// Rewrites `files` in the root filesystem of `disk` (an overlay the build owns),
/// keeping each inode's mode, owner, group and extended attributes. A file marked
/// [`Presence::Always`] must be there; one marked [`Presence::IfPresent`] is skipped
/// when it is not. `secrets` are masked in errors.
pub fn apply(
    disk: &Path,
    root: &RootFs,
    files: &[PatchFile],
    work: &Path,
    secrets: &[String],
    names: &crate::sys::exec::PathNames,
) -> Result<Vec<Patched>> {
    apply_adding_users(disk, root, files, &[], work, secrets, names)
}

/// [`apply`], after adding `users` as the guest script's `useradd -m`, `chpasswd -e`,
/// SSH key and sudoers lines would have after the users the disk has ([`accounts`]).
/// The account files (and their backups) are rewritten like any other file, with the
/// password hashes of `files`' shadow edit; the new homes are copies of `/etc/skel`.
/// Files in the new users' homes among `files` are left to the addition.
pub fn apply_adding_users(
    disk: &Path,
    root: &RootFs,
    files: &[PatchFile],
    users: &[NewUser],
    work: &Path,
    secrets: &[String],
    names: &crate::sys::exec::PathNames,
) -> Result<Vec<Patched>> {
    let homes: Vec<String> = users.iter().map(|u| format!("/home/{}", u.name)).collect();
    if let Some(h) = homes.iter().find(|h| !plain_path(h) || !root.holds(h)) {
        bail!("{h} cannot be made on the host");
    }
    let session = Session::open(disk, root, files, work, secrets, names, true)?;
    let (fs, export, dir, stats) = (&session.fs, &session.export, &session.dir, &session.stats);
    let mut files = files.to_vec();
    let mut added = Vec::new();
    if !users.is_empty() {
        if let Err(why) = session.accounts()? {
            bail!("users cannot be added on the host: {why}");
        }
        let hashes: Vec<(String, String)> = files
            .iter()
            .find_map(|f| match &f.data {
                PatchData::Passwords(h) => Some(h.clone()),
                _ => None,
            })
            .unwrap_or_default();
        files.retain(|f| {
            !matches!(
                f.data,
                PatchData::Passwords(_) | PatchData::BackupPasswords(_)
            ) && !f
                .home_of
                .as_ref()
                .is_some_and(|u| users.iter().any(|n| &n.name == u))
        });
        let (rewrites, a) = session.account_rewrites(users, &hashes)?;
        added = a;
        files.splice(0..0, rewrites);
    }
    let files = &files;
    let mut done = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let Some(old) = session.existing(f)? else {
            continue;
        };
        let blocks = fs.blocks(&f.path)?;
        let xattrs = fs.xattr_names(&f.path)?;
        let mut script = String::new();
        // Each value in a file of its own name (never one an earlier file left).
        for (k, name) in xattrs.iter().enumerate() {
            fs.run(false, &format!("ea_get -f xattr-{i}-{k} {} {name}", f.path))?;
            if !dir.join(format!("xattr-{i}-{k}")).is_file() {
                bail!("cannot read the extended attribute {name} of {}", f.path);
            }
        }
        let data_name = format!("data-{i}");
        let bytes = match &f.data {
            PatchData::Content(data) => write_data(data, &dir.join(&data_name))?,
            PatchData::Passwords(hashes) | PatchData::BackupPasswords(hashes) => {
                let (now, _) = fs.run(false, &format!("cat {}", f.path))?;
                let day = today();
                let backup = matches!(f.data, PatchData::BackupPasswords(_));
                let text = set_password_hashes(&now, hashes, day, backup)
                    .with_context(|| format!("setting passwords in {}", f.path))?;
                write_data(&StageData::Bytes(text.into_bytes()), &dir.join(&data_name))?
            }
        };
        let (parent, name) = f.path.rsplit_once('/').context("an absolute path")?;
        let parent = if parent.is_empty() { "/" } else { parent };
        // Unlinked first (its extent tree intact), then its data blocks zeroed while
        // nothing can take them, then the new file.
        fs.script(&format!("cd {parent}\nrm {name}\n"))?;
        if fs.stat(&f.path)?.is_some() {
            bail!("{} is still there after it was removed", f.path);
        }
        export.zero_blocks(&blocks, stats.block_size)?;
        fs.script(&format!("cd {parent}\nwrite {data_name} {name}\n"))?;
        let written = fs
            .stat(&f.path)?
            .with_context(|| format!("{} is missing after it was written", f.path))?;
        // The flags a new file inherits from its directory (what `install` would have
        // got) stay as they were; how the data is held (extents, inline) is the new
        // file's; and the project stays.
        let flags = (written.flags & !INHERITED) | (old.flags & INHERITED);
        script.push_str(&format!("cd {parent}\n"));
        script.push_str(&format!(
            "sif {name} mode 0{:o}\nsif {name} uid {}\nsif {name} gid {}\nsif {name} flags {flags:#x}\n",
            old.mode, old.uid, old.gid
        ));
        if let Some(project) = old.project {
            script.push_str(&format!("sif {name} projid {project}\n"));
        }
        for (k, attr) in xattrs.iter().enumerate() {
            script.push_str(&format!("ea_set -f xattr-{i}-{k} {name} {attr}\n"));
        }
        fs.script(&script)?;
        let new = fs
            .stat(&f.path)?
            .with_context(|| format!("{} is missing after it was rewritten", f.path))?;
        if new.kind != "regular"
            || new.size != bytes
            || (new.mode, new.uid, new.gid, new.flags, new.project)
                != (old.mode, old.uid, old.gid, flags, old.project)
        {
            // No sizes: the credential file's would tell the credential's length.
            bail!(
                "rewriting {} did not take: now a {} of {} the expected size, mode {:o}, owner {}:{}, flags {:#x} (expected mode {:o}, owner {}:{}, flags {flags:#x})",
                f.path,
                new.kind,
                if new.size == bytes { "exactly" } else { "not" },
                new.mode,
                new.uid,
                new.gid,
                new.flags,
                old.mode,
                old.uid,
                old.gid
            );
        }
        let now = fs.xattr_names(&f.path)?;
        if now != xattrs {
            bail!(
                "rewriting {} lost extended attributes: {:?} before, {:?} after",
                f.path,
                xattrs,
                now
            );
        }
        done.push(Patched {
            path: f.path.clone(),
            bytes,
            old_blocks: blocks.len(),
            xattrs,
        });
    }
    if !users.is_empty() {
        // Listed once for every home.
        let skel = session.skel()?.map_err(|why| anyhow::anyhow!(why))?;
        for (u, a) in users.iter().zip(&added) {
            done.extend(session.make_home(u, a, &skel)?);
        }
    }
    Cmd::new(
        "e2fsck",
        "checking the root filesystem after rewriting files",
    )
    .internal()
    .args(["-f", "-n", "root"])
    .current_dir(dir)
    .run()?;
    session.export.finish()?;
    Ok(done)
}

/// An exported root filesystem with `debugfs` ready on it; the export ends and the
/// work directory goes on drop.
struct Session<'a> {
    // Dropped in this order: the export stops before its directory goes.
    export: Export,
    fs: Debugfs<'a>,
    stats: Stats,
    dir: PathBuf,
    _clean: RemoveDirOnDrop,
}

impl<'a> Session<'a> {
    fn open(
        disk: &Path,
        root: &RootFs,
        files: &[PatchFile],
        work: &Path,
        secrets: &'a [String],
        names: &crate::sys::exec::PathNames,
        writable: bool,
    ) -> Result<Session<'a>> {
        if !root.editable() {
            bail!(
                "the root filesystem is {}: only ext2/3/4 is rewritten on the host",
                root.fs_type
            );
        }
        if let Some(f) = files
            .iter()
            .find(|f| !plain_path(&f.path) || !root.holds(&f.path))
        {
            bail!("{} cannot be rewritten on the host", f.path);
        }
        let file = mountpoint(work);
        let dir = file
            .parent()
            .context("the mount point's directory")?
            .to_path_buf();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let clean = RemoveDirOnDrop(dir.clone());
        let export = Export::start(disk, root, &dir, names, writable)?;
        let fs = Debugfs {
            dir: dir.clone(),
            secrets,
        };
        let stats = fs.stats()?;
        if stats.features.iter().any(|f| f == "needs_recovery") || stats.state != "clean" {
            bail!(
                "the root filesystem was not cleanly unmounted (state {:?}, features {})",
                stats.state,
                stats.features.join(" ")
            );
        }
        Ok(Session {
            export,
            fs,
            stats,
            dir,
            _clean: clean,
        })
    }

    /// The inode `f` has now: `None` when an [`Presence::IfPresent`] file is not there;
    /// an error when an [`Presence::Always`] one is not, or when it is anything but a
    /// plain regular file (a link, one with more names, or data inside its inode).
    fn existing(&self, f: &PatchFile) -> Result<Option<Inode>> {
        // Every directory on the way is one, not a symbolic link: debugfs follows links
        // in a path, but its `cd` and `rm` do not, and the guest's own paths (merged
        // /usr, /var/run) are what the customization wrote through.
        let mut at = String::new();
        let parents: Vec<&str> = f.path.split('/').skip(1).collect();
        for c in &parents[..parents.len().saturating_sub(1)] {
            at.push('/');
            at.push_str(c);
            match self.fs.stat(&at)? {
                Some(d) if d.kind == "directory" => {}
                Some(d) => bail!(
                    "{at} on the kept disk is a {}, not a directory: {} is not rewritten on the host",
                    d.kind,
                    f.path
                ),
                None => match f.presence {
                    Presence::Always => bail!(
                        "{} is missing from the kept disk, which the customization wrote",
                        f.path
                    ),
                    Presence::IfPresent => return Ok(None),
                },
            }
        }
        if let Some(user) = &f.home_of {
            let (passwd, _) = self.fs.run(false, "cat /etc/passwd")?;
            let home = passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|fields| fields.len() >= 6 && fields[0] == user)
                .map(|fields| fields[5].trim_end_matches('/').to_string());
            match home {
                Some(h) if under(&f.path, &h) && h != "/" => {}
                h => bail!(
                    "the home of {user} on the kept disk is {}, not where {} is: it is not rewritten on the host",
                    h.as_deref().unwrap_or("missing"),
                    f.path
                ),
            }
        }
        let Some(old) = self.fs.stat(&f.path)? else {
            return match f.presence {
                Presence::Always => bail!(
                    "{} is missing from the kept disk, which the customization wrote",
                    f.path
                ),
                Presence::IfPresent => Ok(None),
            };
        };
        if old.kind != "regular" || old.flags & INLINE_DATA != 0 || old.links != 1 {
            bail!(
                "{} on the kept disk is a {} with {} link(s) and flags {:#x}: only a plain regular file is rewritten",
                f.path,
                old.kind,
                old.links,
                old.flags
            );
        }
        Ok(Some(old))
    }
}

/// A file or directory [`Session::make_home`] made: (path, kind, mode with the type,
/// uid, gid, size of a regular file).
type Made = (String, &'static str, u32, u64, u64, Option<u64>);

impl Session<'_> {
    /// A regular file's content; `None` when the path is not one.
    fn text(&self, path: &str) -> Result<Option<String>> {
        match self.fs.stat(path)? {
            Some(i) if i.kind == "regular" => {
                let (out, _) = self.fs.run(false, &format!("cat {path}"))?;
                if out.contains('\u{FFFD}') {
                    bail!("{path} is not UTF-8 text");
                }
                Ok(Some(out))
            }
            _ => Ok(None),
        }
    }

    /// Whether users can be added on the host as the guest's useradd would
    /// ([`accounts::supported`]), with the names its account files hold; why not, else.
    fn accounts(&self) -> Result<Result<KeptAccounts, String>> {
        let fs = &self.fs;
        let os = match self.text("/etc/os-release")? {
            Some(t) => t,
            None => match self.text("/usr/lib/os-release")? {
                Some(t) => t,
                None => return Ok(Err("the guest has no os-release".into())),
            },
        };
        let Some(defs) = self.text("/etc/login.defs")? else {
            return Ok(Err("the guest has no /etc/login.defs".into()));
        };
        let defaults = self.text("/etc/default/useradd")?;
        if let Err(why) = accounts::supported(&os, &defs, defaults.as_deref()) {
            return Ok(Err(why));
        }
        let status = self.text("/var/lib/dpkg/status")?.unwrap_or_default();
        if let Err(why) = accounts::shadow_modelled(&status) {
            return Ok(Err(why));
        }
        let plain = |i: &Option<Inode>| {
            i.as_ref()
                .is_some_and(|i| i.kind == "regular" && i.links == 1 && i.flags & INLINE_DATA == 0)
        };
        for base in ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"] {
            for p in [base.to_string(), format!("{base}-")] {
                if !plain(&fs.stat(&p)?) {
                    return Ok(Err(format!("{p} is not a plain regular file")));
                }
            }
        }
        for base in ["/etc/subuid", "/etc/subgid"] {
            let backup = format!("{base}-");
            let (f, b) = (fs.stat(base)?, fs.stat(&backup)?);
            if f.is_some() && !(plain(&f) && plain(&b)) {
                return Ok(Err(format!(
                    "{base} and its backup {backup} are not plain regular files"
                )));
            }
            if f.is_some() && !accounts::plain_ranges(&self.text(base)?.unwrap_or_default()) {
                return Ok(Err(format!(
                    "{base} has lines other than OWNER:START:COUNT"
                )));
            }
        }
        for dir in ["/home", "/etc/skel"] {
            if fs.stat(dir)?.is_none_or(|i| i.kind != "directory") {
                return Ok(Err(format!("{dir} is not a directory")));
            }
        }
        let skel = match self.skel()? {
            Ok(s) => s,
            Err(why) => return Ok(Err(why)),
        };
        // Labels and ACLs are made by the guest's own tools: not for new files here.
        let labelled = ["/etc/passwd", "/home", "/etc/skel", "/etc/sudoers.d"]
            .into_iter()
            .map(str::to_string)
            .chain(skel.iter().map(|(rel, _)| format!("/etc/skel/{rel}")));
        for p in labelled {
            if fs.stat(&p)?.is_some() && !fs.xattr_names(&p)?.is_empty() {
                return Ok(Err(format!(
                    "{p} has extended attributes (an SELinux label or an ACL), which new files would need too"
                )));
            }
        }
        // shadow's useradd runs the scripts in these (none on a stock guest).
        for hooks in [
            "/etc/shadow-maint/useradd-pre.d",
            "/etc/shadow-maint/useradd-post.d",
        ] {
            if !self.names_in(hooks)?.is_empty() {
                return Ok(Err(format!("{hooks} has hooks useradd would run")));
            }
        }
        let (passwd, group) = (
            self.text("/etc/passwd")?.unwrap_or_default(),
            self.text("/etc/group")?.unwrap_or_default(),
        );
        let mut kept = KeptAccounts::from_files(&passwd, &group);
        kept.homes = self.names_in("/home")?;
        kept.sudoers = self.names_in("/etc/sudoers.d")?;
        kept.skel = self.names_in("/etc/skel")?;
        Ok(Ok(kept))
    }

    /// The names in a directory (none when it is not one).
    fn names_in(&self, dir: &str) -> Result<Vec<String>> {
        if self.fs.stat(dir)?.is_none_or(|i| i.kind != "directory") {
            return Ok(Vec::new());
        }
        let (list, _) = self.fs.run(false, &format!("ls -p {dir}"))?;
        let mut names: Vec<String> = list
            .lines()
            .filter_map(|l| l.split('/').nth(5).map(str::to_string))
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .collect();
        names.sort();
        Ok(names)
    }

    /// What `/etc/skel` holds, parents before their entries: (path below it, inode).
    /// Only directories and regular files (what `useradd -m` copies as they are);
    /// anything else is why not.
    fn skel(&self) -> Result<Result<Vec<(String, Inode)>, String>> {
        let mut out = Vec::new();
        let mut dirs = vec![String::new()];
        while let Some(rel) = dirs.pop() {
            let at = if rel.is_empty() {
                "/etc/skel".to_string()
            } else {
                format!("/etc/skel/{rel}")
            };
            for n in self.names_in(&at)? {
                let r = if rel.is_empty() {
                    n.clone()
                } else {
                    format!("{rel}/{n}")
                };
                let path = format!("/etc/skel/{r}");
                if !plain_path(&path) {
                    return Ok(Err(format!("{path} is not a plain name")));
                }
                let Some(i) = self.fs.stat(&path)? else {
                    return Ok(Err(format!("{path} vanished")));
                };
                match i.kind.as_str() {
                    "directory" => dirs.push(r.clone()),
                    "regular" if i.links == 1 => {}
                    k => return Ok(Err(format!("{path} is a {k}, which is not copied here"))),
                }
                out.push((r, i));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Ok(out))
    }

    /// The account files after adding `users` (with `hashes` from the shadow edit), as
    /// rewrites of every file (or backup) that changes.
    fn account_rewrites(
        &self,
        users: &[NewUser],
        hashes: &[(String, String)],
    ) -> Result<(Vec<PatchFile>, Vec<Added>)> {
        let read = |p: &str| -> Result<String> {
            self.text(p)?
                .with_context(|| format!("{p} is missing from the kept disk"))
        };
        let pair = |p: &str| -> Result<Pair> { Ok(Pair::new(read(p)?, read(&format!("{p}-"))?)) };
        let optional = |p: &str| -> Result<Option<Pair>> {
            match self.fs.stat(p)? {
                Some(_) => pair(p).map(Some),
                None => Ok(None),
            }
        };
        let mut files = AccountFiles {
            passwd: pair("/etc/passwd")?,
            group: pair("/etc/group")?,
            shadow: pair("/etc/shadow")?,
            gshadow: pair("/etc/gshadow")?,
            subuid: optional("/etc/subuid")?,
            subgid: optional("/etc/subgid")?,
        };
        let before = files.clone();
        let day = today();
        let added = accounts::add_users(&mut files, &read("/etc/login.defs")?, users, hashes, day)?;
        let mut out = Vec::new();
        let pairs = [
            ("/etc/passwd", Some(&files.passwd), Some(&before.passwd)),
            ("/etc/group", Some(&files.group), Some(&before.group)),
            ("/etc/shadow", Some(&files.shadow), Some(&before.shadow)),
            ("/etc/gshadow", Some(&files.gshadow), Some(&before.gshadow)),
            ("/etc/subuid", files.subuid.as_ref(), before.subuid.as_ref()),
            ("/etc/subgid", files.subgid.as_ref(), before.subgid.as_ref()),
        ];
        for (path, now, was) in pairs {
            let (Some(now), Some(was)) = (now, was) else {
                continue;
            };
            for (p, new, old) in [
                (path.to_string(), &now.now, &was.now),
                (format!("{path}-"), &now.backup, &was.backup),
            ] {
                if new != old {
                    out.push(PatchFile {
                        path: p,
                        data: PatchData::Content(StageData::Bytes(new.clone().into_bytes())),
                        presence: Presence::Always,
                        home_of: None,
                    });
                }
            }
        }
        Ok((out, added))
    }

    /// Makes `u`'s home as `useradd -m` copies it from `/etc/skel`, then its SSH keys and
    /// sudoers file as the guest script's lines write them. `skel` is [`Session::skel`].
    fn make_home(&self, u: &NewUser, a: &Added, skel: &[(String, Inode)]) -> Result<Vec<Patched>> {
        let fs = &self.fs;
        let h = &a.home;
        if fs.stat(h)?.is_some() {
            bail!("{h} is already on the kept disk, which useradd would not copy /etc/skel into");
        }
        let mut made: Vec<Made> = Vec::new();
        let mut script = String::new();
        let owned = |script: &mut String, path: &str, mode: u32, uid: u64, gid: u64| {
            script.push_str(&format!(
                "sif {path} mode 0{mode:o}\nsif {path} uid {uid}\nsif {path} gid {gid}\n"
            ));
        };
        let (uid, gid) = (u64::from(a.uid), u64::from(a.gid));
        script.push_str(&format!("mkdir {h}\n"));
        owned(&mut script, h, 0o40000 | a.home_mode, uid, gid);
        made.push((
            h.clone(),
            "directory",
            0o40000 | a.home_mode,
            uid,
            gid,
            None,
        ));
        let write = |script: &mut String, local: &str, to: &str| -> Result<()> {
            let (parent, name) = to.rsplit_once('/').context("an absolute path")?;
            script.push_str(&format!("cd {parent}\nwrite {local} {name}\ncd /\n"));
            Ok(())
        };
        for (k, (rel, i)) in skel.iter().enumerate() {
            let to = format!("{h}/{rel}");
            if i.kind == "directory" {
                script.push_str(&format!("mkdir {to}\n"));
                made.push((to.clone(), "directory", i.mode, uid, gid, None));
            } else {
                let local = format!("skel-{}-{k}", u.name);
                fs.run(false, &format!("dump /etc/skel/{rel} {local}"))?;
                if !self.dir.join(&local).is_file() {
                    bail!("cannot read /etc/skel/{rel}");
                }
                write(&mut script, &local, &to)?;
                made.push((to.clone(), "regular", i.mode, uid, gid, Some(i.size)));
            }
            owned(&mut script, &to, i.mode, uid, gid);
            // useradd keeps the copied entries' access and modification times.
            for (field, t) in [("atime", i.atime), ("mtime", i.mtime)] {
                let Some((secs, extra)) = t else { continue };
                script.push_str(&format!("sif {to} {field} @{secs}\n"));
                if let Some(e) = extra {
                    script.push_str(&format!("sif {to} {field}_extra {e:#x}\n"));
                }
            }
        }
        if let Some(keys) = &u.keys {
            let ssh = format!("{h}/.ssh");
            if made.iter().any(|m| m.0 == ssh) {
                bail!("/etc/skel has a .ssh, which the host does not merge SSH keys into");
            }
            script.push_str(&format!("mkdir {ssh}\n"));
            owned(&mut script, &ssh, 0o40700, uid, gid);
            made.push((ssh.clone(), "directory", 0o40700, uid, gid, None));
            let local = format!("keys-{}", u.name);
            write_data(&StageData::Bytes(keys.clone()), &self.dir.join(&local))?;
            let to = format!("{ssh}/authorized_keys");
            write(&mut script, &local, &to)?;
            owned(&mut script, &to, 0o100600, uid, gid);
            made.push((to, "regular", 0o100600, uid, gid, Some(keys.len() as u64)));
        }
        if u.sudo {
            let d = "/etc/sudoers.d";
            match fs.stat(d)? {
                None => {
                    script.push_str(&format!("mkdir {d}\n"));
                    owned(&mut script, d, 0o40755, 0, 0);
                    made.push((d.into(), "directory", 0o40755, 0, 0, None));
                }
                Some(i) if i.kind == "directory" => {}
                Some(i) => bail!("{d} on the kept disk is a {}", i.kind),
            }
            let to = format!("{d}/{}", u.name);
            if fs.stat(&to)?.is_some() {
                bail!("{to} is already on the kept disk");
            }
            let line = format!("{} ALL=(ALL) NOPASSWD:ALL\n", u.name).into_bytes();
            let local = format!("sudo-{}", u.name);
            write_data(&StageData::Bytes(line.clone()), &self.dir.join(&local))?;
            write(&mut script, &local, &to)?;
            owned(&mut script, &to, 0o100440, 0, 0);
            made.push((to, "regular", 0o100440, 0, 0, Some(line.len() as u64)));
        }
        fs.script(&script)?;
        let mut done = Vec::new();
        for (path, kind, mode, uid, gid, size) in made {
            let i = fs
                .stat(&path)?
                .with_context(|| format!("{path} is missing after it was made"))?;
            if i.kind != kind
                || (i.mode, i.uid, i.gid) != (mode, uid, gid)
                || size.is_some_and(|s| s != i.size)
            {
                bail!(
                    "making {path} did not take: a {} with mode {:o}, owner {}:{} (expected a {kind} with mode {mode:o}, owner {uid}:{gid})",
                    i.kind,
                    i.mode,
                    i.uid,
                    i.gid
                );
            }
            done.push(Patched {
                path,
                bytes: size.unwrap_or(0),
                old_blocks: 0,
                xattrs: Vec::new(),
            });
        }
        Ok(done)
    }
}

/// The inode flag of a file whose data lives in the inode itself.
const INLINE_DATA: u64 = 0x1000_0000;
/// The inode flags a new regular file inherits from its directory in ext4
/// (`EXT4_FL_INHERITED` within `EXT4_REG_FLMASK`): secure deletion, undelete,
/// compression, sync, nodump, noatime, nocompress, data journaling, notail, DAX,
/// project inheritance.
const INHERITED: u64 =
    0x1 | 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x400 | 0x4000 | 0x8000 | 0x0200_0000 | 0x2000_0000;

pub use super::accounts::set_password_hashes;

/// Today in days since 1970: the last-change day `chpasswd` and `useradd` write.
fn today() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0)
}

fn write_data(data: &StageData, to: &Path) -> Result<u64> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    match data {
        StageData::Bytes(b) => {
            std::io::Write::write_all(&mut out, b)
                .with_context(|| format!("writing {}", to.display()))?;
            Ok(b.len() as u64)
        }
        StageData::File(p) => {
            let mut f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
            std::io::copy(&mut f, &mut out)
                .with_context(|| format!("copying {} to {}", p.display(), to.display()))
        }
    }
}

/// The running FUSE export: stopped (flushed, then SIGTERM) on drop.
struct Export {
    child: Option<Child>,
    file: PathBuf,
}

impl Export {
    fn start(
        disk: &Path,
        root: &RootFs,
        dir: &Path,
        names: &crate::sys::exec::PathNames,
        writable: bool,
    ) -> Result<Export> {
        let file = dir.join("root");
        debug_assert_eq!(file, mountpoint(dir.parent().unwrap_or(dir)));
        File::create(&file).with_context(|| format!("creating {}", file.display()))?;
        let log = dir.join("export.log");
        let err = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = export_cmd(disk, root, &file, writable).named(names);
        if !writable {
            // The check before a disk is kept: where the filesystem lies is known only
            // once the launch found it, so the plan names the check, not its command.
            cmd = cmd.internal();
        }
        let child = cmd.spawn(Stdio::null(), Stdio::from(err))?;
        let mut export = Export {
            child: Some(child),
            file,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::fs::metadata(&export.file).is_ok_and(|m| m.len() == root.size) {
                return Ok(export);
            }
            if let Some(c) = export.child.as_mut() {
                if let Some(status) = c.try_wait().context("waiting for qemu-storage-daemon")? {
                    export.child = None;
                    bail!(
                        "qemu-storage-daemon could not export {} ({status}): {}",
                        disk.display(),
                        std::fs::read_to_string(&log).unwrap_or_default().trim()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "qemu-storage-daemon did not export {} within 20 s: {}",
                    disk.display(),
                    std::fs::read_to_string(&log).unwrap_or_default().trim()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Overwrites `blocks` (filesystem block numbers) with zeros.
    fn zero_blocks(&self, blocks: &[u64], block_size: u64) -> Result<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.file)
            .with_context(|| format!("opening {}", self.file.display()))?;
        let zeros = vec![0u8; block_size as usize];
        for b in blocks {
            f.write_all_at(&zeros, b * block_size)
                .with_context(|| format!("zeroing block {b} of the root filesystem"))?;
        }
        f.sync_all().context("flushing the zeroed blocks")
    }

    /// Flushes the export and stops it.
    fn finish(mut self) -> Result<()> {
        File::open(&self.file)
            .and_then(|f| f.sync_all())
            .context("flushing the root filesystem's export")?;
        let status = self.stop();
        match status {
            Some(s) if !s.success() && s.code() != Some(0) => {
                // SIGTERM is how it is asked to end: a signal status is the normal one.
                use std::os::unix::process::ExitStatusExt;
                if s.signal().is_none() {
                    bail!("qemu-storage-daemon ended with {s}");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        crate::sys::exec::kill_tree(child.id(), Duration::from_secs(10));
        child.wait().ok()
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        self.stop();
    }
}

struct RemoveDirOnDrop(PathBuf);
impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `debugfs` on the exported filesystem (the file `root` in `dir`, which is also its
/// working directory: the data and attribute files it reads and writes are there).
struct Debugfs<'a> {
    dir: PathBuf,
    secrets: &'a [String],
}

/// What `debugfs stats` says of a filesystem.
#[derive(Debug, PartialEq, Eq)]
struct Stats {
    block_size: u64,
    features: Vec<String>,
    state: String,
}

/// What `debugfs stat` says of an inode.
#[derive(Debug, PartialEq, Eq)]
struct Inode {
    kind: String,
    /// Permission bits and the file type (`i_mode`).
    mode: u32,
    flags: u64,
    uid: u64,
    gid: u64,
    size: u64,
    links: u64,
    /// The project ID, when the inode has room for one.
    project: Option<u64>,
    /// Seconds, and the extra field (nanoseconds and epoch bits) of a large inode.
    atime: Option<(u64, Option<u64>)>,
    mtime: Option<(u64, Option<u64>)>,
}

impl Debugfs<'_> {
    fn cmd(&self, writable: bool) -> Cmd {
        let mut c = Cmd::new("debugfs", "rewriting files of the root filesystem")
            .internal()
            .current_dir(&self.dir)
            .timeout(Duration::from_secs(120));
        for s in self.secrets {
            c = c.secret(s.clone());
        }
        if writable {
            c = c.arg("-w");
        }
        c
    }

    /// One request; debugfs reports errors on stderr and exits 0, so the caller
    /// checks what it expected (`stderr` is returned beside `stdout`).
    fn run(&self, writable: bool, request: &str) -> Result<(String, String)> {
        let out = self.cmd(writable).args(["-R", request, "root"]).run()?;
        Ok((
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Runs a request file in one writable session; any complaint on stderr (beyond
    /// debugfs' banner) fails it.
    fn script(&self, script: &str) -> Result<()> {
        let file = self.dir.join("requests");
        std::fs::write(&file, script).with_context(|| format!("writing {}", file.display()))?;
        let out = self.cmd(true).args(["-f", "requests", "root"]).run()?;
        let err = String::from_utf8_lossy(&out.stderr);
        let complaints: Vec<&str> = err
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
            .collect();
        if !complaints.is_empty() {
            bail!(
                "debugfs refused a request ({}): {}",
                script.lines().next().unwrap_or_default(),
                crate::sys::exec::redact(&complaints.join("; "), self.secrets)
            );
        }
        Ok(())
    }

    fn stats(&self) -> Result<Stats> {
        let (out, err) = self.run(false, "stats -h")?;
        parse_stats(&out).with_context(|| format!("reading the filesystem's superblock: {err}"))
    }

    fn stat(&self, path: &str) -> Result<Option<Inode>> {
        let (out, err) = self.run(false, &format!("stat {path}"))?;
        if out.trim().is_empty() {
            if err.contains("not found") {
                return Ok(None);
            }
            bail!("debugfs stat {path}: {}", err.trim());
        }
        parse_stat(&out).map(Some)
    }

    fn blocks(&self, path: &str) -> Result<Vec<u64>> {
        let (out, err) = self.run(false, &format!("blocks {path}"))?;
        out.split_whitespace()
            .map(|w| {
                w.parse::<u64>()
                    .with_context(|| format!("debugfs blocks {path}: {w:?} ({})", err.trim()))
            })
            .collect()
    }

    fn xattr_names(&self, path: &str) -> Result<Vec<String>> {
        let (out, _) = self.run(false, &format!("ea_list {path}"))?;
        Ok(parse_ea_list(&out))
    }
}

fn parse_stats(out: &str) -> Result<Stats> {
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    Ok(Stats {
        block_size: field("Block size:")
            .context("no block size")?
            .parse()
            .context("the block size is not a number")?,
        features: field("Filesystem features:")
            .context("no feature list")?
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        state: field("Filesystem state:").context("no state")?,
    })
}

/// Reads `debugfs stat`'s first lines: `Inode: N   Type: regular    Mode:  0644
/// Flags: 0x80000`, `User:     0   Group:     0 … Size: 286`, `Links: 1 …`.
fn parse_stat(out: &str) -> Result<Inode> {
    let word_after =
        |key: &str| -> Option<&str> { out.split_whitespace().skip_while(|w| *w != key).nth(1) };
    let num = |key: &str| -> Result<u64> {
        let w = word_after(key).with_context(|| format!("no {key} in debugfs stat"))?;
        match w.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => w.parse(),
        }
        .with_context(|| format!("{key} {w:?} is not a number"))
    };
    let kind = word_after("Type:")
        .context("no Type: in debugfs stat")?
        .to_string();
    let perm = u32::from_str_radix(word_after("Mode:").context("no Mode:")?, 8)
        .context("Mode: is not octal")?;
    let type_bits = match kind.as_str() {
        "regular" => 0o100000,
        "directory" => 0o040000,
        "symlink" => 0o120000,
        _ => 0,
    };
    // ` mtime: 0x6b14230f:00000000 -- Sat Dec  5 …` (no `:extra` in a small inode)
    let time = |key: &str| -> Option<(u64, Option<u64>)> {
        let w = word_after(key)?.strip_prefix("0x")?;
        Some(match w.split_once(':') {
            Some((s, e)) => (
                u64::from_str_radix(s, 16).ok()?,
                Some(u64::from_str_radix(e, 16).ok()?),
            ),
            None => (u64::from_str_radix(w, 16).ok()?, None),
        })
    };
    Ok(Inode {
        atime: time("atime:"),
        mtime: time("mtime:"),
        mode: type_bits | perm,
        flags: num("Flags:")?,
        uid: num("User:")?,
        gid: num("Group:")?,
        size: num("Size:")?,
        links: num("Links:")?,
        project: num("Project:").ok(),
        kind,
    })
}

/// The names `debugfs ea_list` prints, one per `  NAME (LEN) = VALUE` line.
fn parse_ea_list(out: &str) -> Vec<String> {
    let mut names: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| {
            let t = l.trim_start();
            t.split_once(" (").map(|(n, _)| n.to_string())
        })
        .filter(|n| !n.is_empty() && !n.contains(char::is_whitespace))
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_debugfs_stat_and_stats() {
        let stat = "Inode: 186   Type: regular    Mode:  0640   Flags: 0x80000\nGeneration: 2107777802    Version: 0x00000000:00000004\nUser:  1000   Group:    27   Project:     0   Size: 286\nFile ACL: 0\nLinks: 1   Blockcount: 8\n";
        assert_eq!(
            parse_stat(stat).unwrap(),
            Inode {
                kind: "regular".into(),
                mode: 0o100640,
                flags: 0x80000,
                uid: 1000,
                gid: 27,
                size: 286,
                links: 1,
                project: Some(0),
                atime: None,
                mtime: None,
            }
        );
        let times = format!("{stat} ctime: 0x6b14230f:00000004 -- Sat Dec  5 14:43:27 2026\n atime: 0x6b14230e:00000008 -- Sat\n mtime: 0x5f5e1000 -- Sun\n");
        let i = parse_stat(&times).unwrap();
        assert_eq!(i.atime, Some((0x6b14230e, Some(8))));
        assert_eq!(i.mtime, Some((0x5f5e1000, None)));
        let stats = "Filesystem volume name:   <none>\nFilesystem features:      has_journal ext_attr extent 64bit metadata_csum\nFilesystem state:         clean\nBlock size:               4096\n";
        let s = parse_stats(stats).unwrap();
        assert_eq!(s.block_size, 4096);
        assert_eq!(s.state, "clean");
        assert!(s.features.contains(&"metadata_csum".to_string()));
        assert!(parse_stats("Filesystem state: clean\n").is_err());
    }

    #[test]
    fn reads_attribute_names() {
        let out = "Extended attributes:\n  security.selinux (27) = \"system_u:object_r:etc_t:s0\\000\"\n  user.note (2) = \"hi\"\n";
        assert_eq!(parse_ea_list(out), vec!["security.selinux", "user.note"]);
        assert!(parse_ea_list("").is_empty());
    }

    #[test]
    fn passwords_change_only_their_users_hash_and_day() {
        let shadow = "root:*:19000:0:99999:7:::\nlab:!:19000:0:99999:7:::\nweb:$6$old$x:19001:0:99999:7:::\n";
        let hashes = vec![
            ("lab".to_string(), "$6$salt$new".to_string()),
            ("root".to_string(), "$6$r$h".to_string()),
        ];
        assert_eq!(
            set_password_hashes(shadow, &hashes, 20000, false).unwrap(),
            "root:$6$r$h:20000:0:99999:7:::\nlab:$6$salt$new:20000:0:99999:7:::\nweb:$6$old$x:19001:0:99999:7:::\n"
        );
        // Without a final newline, and a user who is not there.
        assert_eq!(
            set_password_hashes("lab:!:1::::::", &hashes[..1], 5, false).unwrap(),
            "lab:$6$salt$new:5::::::"
        );
        let e = set_password_hashes("root:*:1::::::\n", &hashes, 5, false).unwrap_err();
        assert!(e.to_string().contains("no shadow line for lab"), "{e}");
        // A name is a whole field, not a prefix.
        assert!(set_password_hashes("labx:!:1::::::\n", &hashes[..1], 5, false).is_err());
        // The backup: only a hash an earlier chpasswd set is replaced; no line is fine.
        assert_eq!(
            set_password_hashes(shadow, &hashes, 20000, true).unwrap(),
            "root:*:19000:0:99999:7:::\nlab:!:19000:0:99999:7:::\nweb:$6$old$x:19001:0:99999:7:::\n"
        );
        assert_eq!(
            set_password_hashes("lab:$6$a$b:3::::::\n", &hashes, 9, true).unwrap(),
            "lab:$6$salt$new:9::::::\n"
        );
    }

    #[test]
    fn only_plain_paths_reach_debugfs() {
        assert!(plain_path("/etc/motd"));
        assert!(plain_path("/home/lab/.config/app-1.conf"));
        for bad in [
            "etc/motd",
            "/",
            "/etc/with space",
            "/etc/\"q\"",
            "/etc/../shadow",
            "/etc/./motd",
            "/etc//motd",
            "/etc/motd/",
            "/etc/a;b",
            "/etc/é",
            "/etc/-n",
        ] {
            assert!(!plain_path(bad), "{bad}");
        }
    }

    #[test]
    fn files_under_other_mounts_are_not_on_the_root_filesystem() {
        let r = RootFs {
            offset: 1 << 20,
            size: 1 << 30,
            fs_type: "ext4".into(),
            other_mounts: vec!["/boot".into(), "/var/lib/data/".into()],
        };
        assert!(r.holds("/etc/motd"));
        assert!(r.holds("/bootstrap.sh"));
        assert!(!r.holds("/boot/grub/grub.cfg"));
        assert!(!r.holds("/var/lib/data/x"));
        assert!(r.editable());
        assert!(!RootFs {
            fs_type: "xfs".into(),
            ..r
        }
        .editable());
    }
}
