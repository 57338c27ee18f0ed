//! The guest stage: one libguestfs appliance launch per disk stage, in which diskforge
//! grows the root partition and filesystem in place, runs the customization parts,
//! applies hygiene and zeroes free space; then the overlay chain is flattened into a
//! standalone disk.
//!
//! Host-side decisions (which partition holds `/`, which filesystem, how to grow it) are
//! made in Rust from what the appliance reports; the guest-side work is a generated
//! script run with the guest's own tools (see [`script`]).

pub mod accounts;
pub mod apt;
pub mod boot;
pub mod content;
pub mod fish;
pub mod fstab;
pub mod grow;
pub mod patch;
pub mod script;
pub mod selinux;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::sys::accel::Effective;
use fish::{Drive, Fish};
use script::Part;

/// One appliance launch on a disk.
pub struct GuestJob<'a> {
    /// The qcow2 overlay to work on (already resized).
    pub disk: &'a Path,
    pub grow: Grow<'a>,
    /// Customization parts run in order.
    pub parts: Vec<&'a Part>,
    /// The appliance needs a network (package installs).
    pub network: bool,
    /// Zero the free space of every filesystem at the end.
    pub sparsify: bool,
    /// Strings to redact from errors and logs (secret values).
    pub secrets: Vec<String>,
    pub work: &'a Path,
    /// Copy the guest's package database here (for the SBOM), after customization.
    pub packages_to: Option<PathBuf>,
    /// Mount `/boot` and what lies under it read-only: nothing in the job writes there,
    /// so those partitions stay byte for byte as the base had them (a read-write mount
    /// alone rewrites an ext4 superblock or an xfs log).
    pub protect_boot: bool,
    /// Relabel for SELinux at the end (the last launch of a build).
    pub relabel: selinux::Relabel,
    /// The build's launches (counted, and named directories in their command lines).
    pub session: &'a fish::Session,
    /// The apt packages the first part installs: fetched on the host while the
    /// appliance grows the disk (see [`apt`]).
    pub prefetch: Option<apt::Prefetch>,
    /// Report where the root filesystem lies (a disk kept for [`patch`]).
    pub locate_root: bool,
}

/// Whether a launch grows a partition and its filesystem to the end of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grow<'a> {
    /// The disk did not get bigger: partitions stay as they are.
    No,
    /// The partition holding `/`.
    Root,
    /// This partition (`disk.grow.partition`).
    Partition(&'a str),
}

/// What the guest stage measured.
#[derive(Debug, Clone, Default)]
pub struct GuestReport {
    pub root_device: String,
    pub fs_type: String,
    pub fs_size_before: u64,
    pub fs_size_after: u64,
    pub launches: usize,
    /// Where the root filesystem lies in the disk, when the job asked
    /// ([`GuestJob::locate_root`]) and it is a partition or the whole disk.
    pub root_fs: Option<patch::RootFs>,
}

/// Runs `job` in one appliance launch, accelerated with `accel`.
pub fn run(job: &GuestJob<'_>, accel: Effective) -> Result<GuestReport> {
    let launches_before = job.session.launches();
    let mut f = Fish::launch(
        &[Drive {
            path: job.disk,
            format: "qcow2",
            readonly: false,
        }],
        job.network,
        accel,
        job.session,
    )?;
    for s in &job.secrets {
        f.add_secret(s);
    }
    let ((root, mounts), found_by) = find_root(&f)?;
    let root_dev = mounts
        .iter()
        .find(|(mp, _)| mp == "/")
        .map(|(_, d)| d.clone())
        .unwrap_or_else(|| root.clone());
    let (root_block, _) = split_btrfsvol(&root_dev);
    let fs_type = f.vfs_type(&root_block)?;

    mount_all(&f, &mounts, job.protect_boot)?;
    let before = f.filesystem_bytes("/")?;
    let prefetch = job.prefetch.as_ref().and_then(|p| {
        apt::start(&f, job.work, p, job.session.names())
            .map_err(|e| not_prefetched(&format!("{e:#}"), &job.secrets))
            .ok()
            .flatten()
    });
    let mut after = before;
    if job.grow != Grow::No {
        f.umount_all()?;
        let stage = crate::progress::stage(
            "grow",
            format!("growing {root_block} ({fs_type}) to fill the disk"),
        );
        grow(&f, &root_block, &fs_type, job.grow, &mounts)?;
        stage.done();
        mount_all(&f, &mounts, job.protect_boot)?;
        after = f.filesystem_bytes("/")?;
        if after <= before {
            bail!(
                "the root filesystem did not grow: {} before, {} after",
                crate::progress::human_bytes(before),
                crate::progress::human_bytes(after)
            );
        }
        crate::progress::say(format!(
            "root filesystem {} ({}) grew from {} to {}",
            root_block,
            fs_type,
            crate::progress::human_bytes(before),
            crate::progress::human_bytes(after)
        ));
    }
    crate::progress::event(
        "filesystem",
        json!({"device": root_block, "type": fs_type, "found_by": found_by, "size_before": before, "size_after": after}),
    );
    let parts: Vec<&Part> = job
        .parts
        .iter()
        .copied()
        .filter(|p| !p.is_empty())
        .collect();
    if !parts.is_empty() || job.packages_to.is_some() {
        let staging = Staging::mount(&f)?;
        if let Some(pending) = prefetch {
            match pending.wait() {
                Ok(fetched) => match apt::install(&f, &fetched, script::STAGE) {
                    Ok(()) => {
                        let bytes = fetched.bytes();
                        crate::progress::say(format!(
                            "fetched {} package lists and {} packages ({}) on the host in {:.1} s",
                            fetched.lists(),
                            fetched.debs(),
                            crate::progress::human_bytes(bytes),
                            fetched.seconds
                        ));
                        crate::progress::event(
                            "apt-prefetch",
                            json!({"fetched": true, "lists": fetched.lists(), "packages": fetched.debs(), "bytes": bytes, "seconds": fetched.seconds}),
                        );
                    }
                    Err(e) => not_prefetched(&format!("{e:#}"), &job.secrets),
                },
                Err(e) => not_prefetched(&format!("{e:#}"), &job.secrets),
            }
        }
        if !parts.is_empty() {
            let steps: usize = parts.iter().map(|p| p.steps.len()).sum();
            let stage = crate::progress::stage(
                "customize",
                format!("customizing the guest ({steps} steps)"),
            );
            for (i, part) in parts.iter().enumerate() {
                run_part(&f, job, part, i)?;
            }
            stage.done();
        }
        if let Some(dir) = &job.packages_to {
            read_packages(&f, dir).context("reading the guest's installed packages")?;
        }
        staging.unmount(&f)?;
    }
    // After everything that writes files, before free space is zeroed.
    if job.relabel != selinux::Relabel::Skip {
        let mut writable = Vec::new();
        for (mp, dev) in &mounts {
            if job.protect_boot && is_boot(mp) {
                continue;
            }
            let (block, _) = split_btrfsvol(dev);
            writable.push((mp.clone(), f.vfs_type(&block)?));
        }
        selinux::relabel(&f, job.relabel, &writable)?;
    }
    if job.sparsify {
        let stage = crate::progress::stage("sparsify", "zeroing free space");
        let mut mps: Vec<&String> = mounts.iter().map(|(m, _)| m).collect();
        mps.sort();
        for mp in mps {
            if let Err(e) = f.call(&["zero-free-space", mp]) {
                tracing::warn!("cannot zero free space of {mp}: {e:#}");
            }
        }
        stage.done();
    }
    let root_fs = if job.locate_root {
        locate(&f, &root_block, &fs_type, &mounts)
    } else {
        None
    };
    f.umount_all()?;
    f.close()?;
    // The build's own counter: other builds of the command (`--jobs`) launch their own
    // appliances meanwhile.
    let launches = job.session.launches() - launches_before;
    crate::progress::event("appliance_launches", json!({"count": launches}));
    Ok(GuestReport {
        root_device: root_block,
        fs_type,
        fs_size_before: before,
        fs_size_after: after,
        launches,
        root_fs,
    })
}

/// Where the root filesystem `dev` lies in the disk: a partition of it, or the whole
/// disk. `None` for anything else (a logical volume, a btrfs subvolume's device, md):
/// the host does not rewrite files there.
fn locate(
    f: &Fish,
    dev: &str,
    fs_type: &str,
    mounts: &[(String, String)],
) -> Option<patch::RootFs> {
    let other_mounts = mounts
        .iter()
        .filter(|(mp, _)| mp != "/")
        .map(|(mp, _)| mp.clone())
        .collect();
    let (offset, size) = if dev == "/dev/sda" {
        (0, f.number(&["blockdev-getsize64", dev]).ok()?)
    } else {
        let (disk, num) = f.partition_of(dev).ok()?;
        if disk != "/dev/sda" {
            return None;
        }
        let p = f
            .partitions(&disk)
            .ok()?
            .into_iter()
            .find(|p| p.num == num)?;
        (p.start, p.size)
    };
    Some(patch::RootFs {
        offset,
        size,
        fs_type: fs_type.to_string(),
        other_mounts,
    })
}

/// The host-side fetch did not happen: the guest updates its lists itself, as it would
/// without it.
fn not_prefetched(why: &str, secrets: &[String]) {
    let why = crate::sys::exec::redact(why, secrets);
    tracing::info!("the guest fetches its own package lists: the host could not ({why})");
    crate::progress::event("apt-prefetch", json!({"fetched": false, "reason": why}));
}

/// The staging directory, a tmpfs over [`script::STAGE`] for the launch: what is staged
/// (secrets among it) lives in the appliance's memory, never on the guest's disk.
struct Staging;

impl Staging {
    fn mount(f: &Fish) -> Result<Staging> {
        f.call(&["mkdir-p", script::STAGE])?;
        f.call(&[
            "debug",
            "sh",
            &format!(
                "mount -t tmpfs -o mode=0700,size=75% diskforge-stage /sysroot{}",
                script::STAGE
            ),
        ])
        .context("mounting a tmpfs over the staging directory")?;
        // Proof that the mount took: a file created now must not be on the guest's disk.
        let fstype = f.call(&[
            "debug",
            "sh",
            &format!("stat -f -c %T /sysroot{}", script::STAGE),
        ])?;
        if !fstype.contains("tmpfs") {
            bail!("the staging directory is on {fstype:?}, not a tmpfs: refusing to stage secrets on the guest's disk");
        }
        Ok(Staging)
    }

    fn unmount(self, f: &Fish) -> Result<()> {
        f.call(&["debug", "sh", &format!("umount /sysroot{}", script::STAGE)])
            .context("unmounting the staging tmpfs")?;
        f.call(&["rmdir", script::STAGE])?;
        Ok(())
    }
}

fn run_part(f: &Fish, job: &GuestJob<'_>, part: &Part, index: usize) -> Result<()> {
    let tarball = job.work.join(format!("stage-{index}.tar"));
    let _ = std::fs::remove_file(&tarball);
    let _cleanup = RemoveOnDrop(tarball.clone());
    part.write_tar(&tarball)?;
    f.call(&["tar-in", &tarball.to_string_lossy(), script::STAGE])?;
    let resolv = f
        .call(&["debug", "sh", "cat /etc/resolv.conf"])
        .unwrap_or_else(|_| "nameserver 10.0.2.3".into());
    let resolv_file = job.work.join("resolv.conf");
    std::fs::write(&resolv_file, format!("{resolv}\n")).context("writing resolv.conf")?;
    f.call(&[
        "upload",
        &resolv_file.to_string_lossy(),
        &format!("{}/resolv.conf.appliance", script::STAGE),
    ])?;
    // The last mark ends the script's last stage.
    let status = f.call(&[
        "sh",
        &format!(
            "/bin/sh {s}/customize.sh > {s}/log 2>&1; rc=$?; read -r up _ < /proc/uptime || up=-; echo \"{m} $up end\" >> {s}/log; echo $rc",
            s = script::STAGE,
            m = STAGE_MARK,
        ),
    ])?;
    let log = f
        .call(&["cat", &format!("{}/log", script::STAGE)])
        .unwrap_or_default();
    let log = crate::sys::exec::redact(&log, &job.secrets);
    for line in log.lines() {
        tracing::debug!(target: "diskforge::guest", "{line}");
    }
    for (name, seconds) in stage_times(&log) {
        tracing::debug!(target: "diskforge::guest", "took {seconds:.1} s: {name}");
        crate::progress::event(
            "guest-stage",
            json!({"part": index, "stage": name, "seconds": seconds}),
        );
    }
    // The next part stages its own files.
    f.call(&["sh", &format!("rm -rf {}/*", script::STAGE)])?;
    let code = status
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string();
    if code != "0" {
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        let last_step = log
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("==> "))
            .unwrap_or("the start of the script");
        let net = if job.network {
            format!(
                "\n(the appliance had network: yes, user-mode networking with DNS from `{}`; a failing package install usually means the guest's mirror is unreachable or a package name is wrong)",
                resolv.lines().next().unwrap_or("")
            )
        } else {
            String::new()
        };
        bail!("guest customization failed at step \"{last_step}\" (exit {code}); guest output:\n{tail}{net}");
    }
    Ok(())
}

/// How the guest script marks the start of a stage (`prelude.sh`'s `mark`).
const STAGE_MARK: &str = "diskforge-stage";

/// The stages the guest script marked, in order, with how long each lasted (from its
/// mark to the next one, by the guest's uptime). Marks without a time are skipped.
fn stage_times(log: &str) -> Vec<(String, f64)> {
    let marks: Vec<(f64, &str)> = log
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(STAGE_MARK)?.strip_prefix(' ')?;
            let (t, name) = rest.split_once(' ')?;
            Some((t.parse::<f64>().ok()?, name.trim()))
        })
        .collect();
    marks
        .windows(2)
        .map(|w| (w[0].1.to_string(), (w[1].0 - w[0].0).max(0.0)))
        .collect()
}

/// Copies what the SBOM is made of out of the guest into `dir`: `os-release`, and the
/// package database — `dpkg-status` plus `copyright.tar` (each package's
/// /usr/share/doc/PKG/copyright), `rpm-qa` (the guest's own `rpm -qa`), or
/// `apk-installed`. Anything produced in the guest is written to the staging tmpfs.
fn read_packages(f: &Fish, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let download = |from: &str, to: &str| -> Result<()> {
        f.call(&["download", from, &dir.join(to).to_string_lossy()])
            .map(|_| ())
    };
    let is_file = |p: &str| f.is_file(p).unwrap_or(false);
    for p in ["/etc/os-release", "/usr/lib/os-release"] {
        if is_file(p) {
            download(p, "os-release")?;
            break;
        }
    }
    let s = script::STAGE;
    if is_file("/var/lib/dpkg/status") {
        download("/var/lib/dpkg/status", "dpkg-status")?;
        f.call(&[
            "sh",
            &format!("cd /usr/share/doc && find . -mindepth 2 -maxdepth 2 -name copyright -type f | tar cf {s}/copyright.tar -T -"),
        ])?;
        download(&format!("{s}/copyright.tar"), "copyright.tar")?;
    } else if is_file("/usr/bin/rpm") || is_file("/bin/rpm") {
        f.call(&[
            "sh",
            &format!(
                "rpm -qa --queryformat {} > {s}/rpm-qa",
                crate::sys::exec::shell_quote(crate::provenance::packages::RPM_QUERYFORMAT)
            ),
        ])?;
        download(&format!("{s}/rpm-qa"), "rpm-qa")?;
    } else if is_file("/lib/apk/db/installed") {
        download("/lib/apk/db/installed", "apk-installed")?;
    }
    Ok(())
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `btrfsvol:/dev/sda2/@` → (`/dev/sda2`, Some(`@`)).
fn split_btrfsvol(dev: &str) -> (String, Option<String>) {
    if let Some(rest) = dev.strip_prefix("btrfsvol:") {
        // The device is /dev/XXX; the subvolume follows the next '/'.
        let parts: Vec<&str> = rest.splitn(4, '/').collect();
        if parts.len() == 4 {
            return (
                format!("/{}/{}", parts[1], parts[2]),
                Some(parts[3].to_string()),
            );
        }
    }
    (dev.to_string(), None)
}

/// The root device and every (mount point, device) of the guest, shortest mount point
/// first.
type Root = (String, Vec<(String, String)>);

/// The guest's root filesystem and its mount points, found with every disk, partition
/// and logical volume set read-only in the appliance's kernel: finding them mounts
/// filesystems read-only, but a read-only XFS mount still writes its log at unmount
/// unless its block device is read-only; so partitions the job never writes (an xfs
/// `/boot`) keep their bytes.
///
/// First the fast path ([`fstab_root`]): blkid of every device, then the one ext or xfs
/// filesystem holding an `/etc/fstab` whose every device entry resolves. Otherwise
/// libguestfs inspection (`inspect-os`, which also knows btrfs subvolumes, other
/// operating systems and odd fstabs, at several seconds per filesystem under TCG). A
/// filesystem whose journal needs replaying cannot be mounted from a read-only device:
/// when inspection finds no root that way, it runs again on writable devices.
/// Also says how it was found: `fstab` or `inspection`.
fn find_root(f: &Fish) -> Result<(Root, &'static str)> {
    // Whole disks too: a filesystem may sit on one without a partition table.
    let devices = f.block_devices()?;
    for d in &devices {
        f.set_read_only(d, true)?;
    }
    let fast = fstab_root(f, &devices);
    let unmounted = f.umount_all();
    let fast = fast.and_then(|found| unmounted.map(|_| found));
    let roots = match &fast {
        Ok(None) => f.inspect_os(),
        _ => Ok(Vec::new()),
    };
    for d in &devices {
        f.set_read_only(d, false)?;
    }
    if let Some(found) = fast? {
        return Ok((found, "fstab"));
    }
    let mut roots = roots?;
    if roots.is_empty() {
        roots = f.inspect_os()?;
    }
    let Some(root) = roots.first().cloned() else {
        bail!("no operating system found in the disk (libguestfs inspect-os found no root filesystem)");
    };
    let mounts = f.inspect_mountpoints(&root)?;
    Ok(((root, mounts), "inspection"))
}

/// The fast path of [`find_root`]: `None` when the disk is not of the plain kind it
/// knows (btrfs anywhere, no or several filesystems holding an fstab, an entry it cannot
/// resolve). Leaves filesystems mounted: the caller unmounts.
fn fstab_root(f: &Fish, devices: &[String]) -> Result<Option<Root>> {
    let mut known = Vec::new();
    for name in devices {
        let mut ids = f.blkid(name);
        // blkid's low-level probe names the partition table's identifiers PART_ENTRY_*.
        for (probe, tag) in [
            ("PART_ENTRY_UUID", "PARTUUID"),
            ("PART_ENTRY_NAME", "PARTLABEL"),
        ] {
            if let Some(v) = ids.remove(probe) {
                ids.insert(tag.to_string(), v);
            }
        }
        known.push(fstab::Device {
            name: name.clone(),
            ids,
        });
    }
    if known.iter().any(|d| d.fs_type() == "btrfs") {
        return Ok(None);
    }
    let mut candidates: Vec<&fstab::Device> = known
        .iter()
        .filter(|d| fstab::SIMPLE_FILESYSTEMS.contains(&d.fs_type()))
        .collect();
    // The biggest first: a root's fstab names the others, which then need no mount.
    let mut sizes = std::collections::HashMap::new();
    for d in &candidates {
        sizes.insert(d.name.clone(), f.size_bytes(&d.name)?);
    }
    candidates.sort_by_key(|d| std::cmp::Reverse(sizes[&d.name]));
    let mut found: Option<Vec<(String, String)>> = None;
    for d in candidates {
        if found
            .as_ref()
            .is_some_and(|m| m.iter().any(|(_, dev)| *dev == d.name))
        {
            continue;
        }
        if !f.try_mount_ro(&d.name, "/") {
            continue;
        }
        let fstab = if f.is_file("/etc/fstab")? {
            Some(f.call(&["cat", "/etc/fstab"])?)
        } else {
            None
        };
        f.call(&["umount", "/"])?;
        let Some(fstab) = fstab else {
            continue;
        };
        let Some(mounts) = fstab::mountpoints(&fstab, &known) else {
            return Ok(None);
        };
        let root_is_here = mounts.iter().any(|(m, dev)| m == "/" && *dev == d.name);
        if !root_is_here || found.is_some() {
            return Ok(None);
        }
        found = Some(mounts);
    }
    Ok(found.map(|mounts| {
        let root = mounts
            .iter()
            .find(|(m, _)| m == "/")
            .map(|(_, d)| d.clone())
            .expect("mountpoints() has a / entry");
        tracing::debug!("found the root {root} from its fstab: {mounts:?}");
        (root, mounts)
    }))
}

/// `/boot` or a mount point under it.
fn is_boot(mp: &str) -> bool {
    mp == "/boot" || mp.starts_with("/boot/")
}

fn mount_all(f: &Fish, mounts: &[(String, String)], protect_boot: bool) -> Result<()> {
    for (mp, dev) in mounts {
        let (block, subvol) = split_btrfsvol(dev);
        if mp != "/" && !f.is_dir(mp)? {
            f.call(&["mkdir-p", mp])?;
        }
        let read_only = protect_boot && is_boot(mp);
        let mut options = Vec::new();
        if read_only {
            options.push("ro".to_string());
            // A read-only XFS mount still writes its log at unmount unless told not to.
            if f.vfs_type(&block)? == "xfs" {
                options.push("norecovery".to_string());
            }
        }
        if let Some(sv) = subvol {
            options.push(format!("subvol={sv}"));
        }
        f.mount(&block, mp, &options)?;
    }
    Ok(())
}

/// Grows the partition under `root_block` (or the LVM PV under it) to the end of the
/// disk, then the filesystem. Everything must be unmounted.
fn grow(
    f: &Fish,
    root_block: &str,
    fs_type: &str,
    which: Grow<'_>,
    mounts: &[(String, String)],
) -> Result<()> {
    use grow::{GrowInput, Op, Table};
    let fs = grow::FsKind::parse(fs_type)?;
    let lvm = f.is_lv(root_block);
    let part = match which {
        Grow::No => return Ok(()),
        Grow::Partition(p) => p.to_string(),
        Grow::Root if lvm => {
            let pvs = f.physical_volumes()?;
            match pvs.as_slice() {
                [one] => one.clone(),
                _ => bail!(
                    "the root LV {root_block} sits on several physical volumes ({}); name the partition to grow with disk.grow.partition",
                    pvs.join(", ")
                ),
            }
        }
        Grow::Root => root_block.to_string(),
    };
    let (disk, partnum) = f.partition_of(&part).with_context(|| {
        format!("{part} is not a partition: nothing to grow (set disk.grow.enabled: false)")
    })?;
    let table = f.partition_table(&disk)?;
    let partitions = f.partitions(&disk)?;
    let identity = (table == Table::Gpt)
        .then(|| f.gpt_identity(&disk, partnum))
        .transpose()?;
    // Where the partition may end: on GPT what the header records once the backup
    // header moved to the new end of the disk, on MBR the disk's last sector.
    let last_sector = match table {
        Table::Gpt => f.expand_gpt(&disk)?,
        Table::Mbr => f
            .size_sectors(&disk)?
            .checked_sub(1)
            .context("an empty disk")?,
    };
    let ops = grow::plan_grow(&GrowInput {
        disk: &disk,
        partition: &part,
        partnum,
        table,
        partitions: &partitions,
        last_sector,
        root_device: root_block,
        lvm,
        fs,
    })?;
    let root_mount = mounts
        .iter()
        .find(|(m, _)| m == "/")
        .map(|(_, d)| d.clone())
        .unwrap_or_else(|| root_block.to_string());
    for op in &ops {
        match op {
            Op::ResizePartition {
                disk,
                num,
                end_sector,
            } => f.call(&[
                "part-resize",
                disk,
                &num.to_string(),
                &end_sector.to_string(),
            ])?,
            Op::PvResize { pv } => f.call(&["pvresize", pv])?,
            Op::LvExtendFree { lv } => f.call(&["lvresize-free", lv, "100"])?,
            Op::ResizeExt { device } => {
                f.call(&["e2fsck-f", device])?;
                f.call(&["resize2fs", device])?
            }
            Op::GrowXfs | Op::GrowBtrfs => {
                mount_all(f, &[("/".to_string(), root_mount.clone())], false)?;
                let grown = if *op == Op::GrowXfs {
                    f.call(&["xfs-growfs", "/"])
                } else {
                    f.call(&["btrfs-filesystem-resize", "/"])
                };
                f.umount_all()?;
                grown?
            }
        };
    }
    if let Some(before) = identity {
        let after = f.gpt_identity(&disk, partnum)?;
        if after != before {
            bail!("growing {part} changed its GPT identity: before {before:?}, after {after:?}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_times_run_from_one_mark_to_the_next() {
        let log = "diskforge-stage 10.00 install packages: tmux\n\
                   ==> noise\n\
                   diskforge-stage 12.50 packages: apt-get update\n\
                   Get:1 http://deb.debian.org bookworm InRelease\n\
                   diskforge-stage - a mark without a time\n\
                   diskforge-stage 30.25 hygiene: logs\n\
                   diskforge-stage 31.00 end\n";
        let t = stage_times(log);
        let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "install packages: tmux",
                "packages: apt-get update",
                "hygiene: logs"
            ]
        );
        assert!((t[0].1 - 2.5).abs() < 1e-9 && (t[1].1 - 17.75).abs() < 1e-9);
        assert!((t[2].1 - 0.75).abs() < 1e-9);
        assert!(stage_times("no marks at all\n").is_empty());
    }
}
