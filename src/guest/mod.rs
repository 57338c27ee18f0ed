//! The guest stage: overlay on the cached base, resize, then ONE appliance launch that
//! grows the root partition and filesystem in place, customizes the guest, installs
//! ttyd and applies golden-image hygiene; finally the overlay chain is flattened into a
//! standalone qcow2.

pub mod fish;
pub mod script;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::accel::Effective;
use crate::exec::Cmd;
use crate::qemu_img;
use crate::recipe::DiskFormat;
use fish::{Drive, Fish};
use script::Customization;

/// What the guest stage needs besides the recipe.
pub struct GuestJob<'a> {
    /// The cached base (read-only; never modified).
    pub base: &'a Path,
    pub base_format: DiskFormat,
    pub base_size: u64,
    /// Target virtual size (>= base size).
    pub target_size: u64,
    pub grow: bool,
    pub grow_partition: Option<&'a str>,
    pub customization: &'a Customization,
    pub sparsify: bool,
    /// Extra strings to redact from errors (secret values).
    pub secrets: Vec<String>,
    pub work: &'a Path,
    pub accel: Effective,
    pub output_format: DiskFormat,
    pub qcow2_compress: bool,
}

/// What the guest stage measured.
#[derive(Debug, Clone, Default)]
pub struct GuestReport {
    pub root_device: String,
    pub fs_type: String,
    pub fs_size_before: u64,
    pub fs_size_after: u64,
    pub launches: usize,
}

/// The overlay step's commands (also shown by `plan`).
pub fn overlay_cmds(
    job_base: &Path,
    base_format: DiskFormat,
    overlay: &Path,
    target: u64,
) -> Vec<Cmd> {
    vec![
        qemu_img::create_overlay_cmd(job_base, base_format, overlay),
        qemu_img::resize_cmd(overlay, target),
    ]
}

/// Creates the overlay and resizes it; refuses to shrink.
pub fn prepare_overlay(job: &GuestJob<'_>, overlay: &Path) -> Result<()> {
    if job.target_size < job.base_size {
        bail!(
            "refusing to shrink the disk: the base is {} ({} bytes) and the recipe asks for {} ({} bytes)",
            crate::progress::human_bytes(job.base_size),
            job.base_size,
            crate::progress::human_bytes(job.target_size),
            job.target_size
        );
    }
    let cmds = overlay_cmds(job.base, job.base_format, overlay, job.target_size);
    cmds[0].run()?;
    if job.target_size > job.base_size {
        cmds[1].run()?;
    }
    Ok(())
}

/// Grows, customizes and cleans the guest on `overlay` in one appliance launch.
pub fn customize(job: &GuestJob<'_>, overlay: &Path) -> Result<GuestReport> {
    let c = job.customization;
    let launches_before = fish::launches();
    let mut f = Fish::launch(
        &[Drive {
            path: overlay,
            format: "qcow2",
            readonly: false,
        }],
        !c.packages.is_empty(),
        job.accel,
    )?;
    for s in &job.secrets {
        f.add_secret(s);
    }
    let roots: Vec<String> = f
        .call(&["inspect-os"])?
        .lines()
        .map(str::to_string)
        .collect();
    let Some(root) = roots.first().cloned() else {
        bail!("no operating system found in the base image (libguestfs inspect-os found no root filesystem)");
    };
    let mounts = mountpoints(&f, &root)?;
    let root_dev = mounts
        .iter()
        .find(|(mp, _)| mp == "/")
        .map(|(_, d)| d.clone())
        .unwrap_or_else(|| root.clone());
    let (root_block, _) = split_btrfsvol(&root_dev);
    let fs_type = f.call(&["vfs-type", &root_block])?;

    mount_all(&f, &mounts)?;
    let before = fs_size(&f, "/")?;
    f.call(&["umount-all"])?;

    if job.grow && job.target_size > job.base_size {
        let stage = crate::progress::stage(
            "grow",
            format!("growing {root_block} ({fs_type}) to fill the disk"),
        );
        grow(&f, &root_block, &fs_type, job.grow_partition, &mounts)?;
        stage.done();
    }
    mount_all(&f, &mounts)?;
    let after = fs_size(&f, "/")?;
    if job.grow && job.target_size > job.base_size {
        let grown = after.saturating_sub(before);
        let wanted = job.target_size - job.base_size;
        if grown < wanted / 2 {
            bail!(
                "the root filesystem did not grow: {} before, {} after, for a disk {} larger",
                crate::progress::human_bytes(before),
                crate::progress::human_bytes(after),
                crate::progress::human_bytes(wanted)
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
        json!({"device": root_block, "type": fs_type, "size_before": before, "size_after": after}),
    );

    if !c.is_empty() {
        let stage = crate::progress::stage(
            "customize",
            format!("customizing the guest ({} steps)", c.steps.len()),
        );
        run_script(&f, job, c)?;
        stage.done();
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
    f.call(&["umount-all"])?;
    f.close()?;
    let launches = fish::launches() - launches_before;
    crate::progress::say(format!(
        "{launches} appliance launch{} for grow, customization, ttyd and hygiene",
        if launches == 1 { "" } else { "es" }
    ));
    crate::progress::event("appliance_launches", json!({"count": launches}));
    Ok(GuestReport {
        root_device: root_block,
        fs_type,
        fs_size_before: before,
        fs_size_after: after,
        launches,
    })
}

fn run_script(f: &Fish, job: &GuestJob<'_>, c: &Customization) -> Result<()> {
    let tarball = job.work.join("stage.tar");
    let _ = std::fs::remove_file(&tarball);
    c.write_tar(&tarball)?;
    let _cleanup = RemoveOnDrop(tarball.clone());
    f.call(&["mkdir-p", script::STAGE])?;
    f.call(&["chmod", "0700", script::STAGE])?;
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
    let status = f.call(&[
        "sh",
        &format!(
            "/bin/sh {s}/customize.sh > {s}/log 2>&1; echo $?",
            s = script::STAGE
        ),
    ])?;
    let log = f
        .call(&["cat", &format!("{}/log", script::STAGE)])
        .unwrap_or_default();
    let log = crate::exec::redact(&log, &job.secrets);
    for line in log.lines() {
        tracing::debug!(target: "diskforge::guest", "{line}");
    }
    f.call(&["rm-rf", script::STAGE])?;
    let code = status
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string();
    if code != "0" {
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let last_step = log
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("==> "))
            .unwrap_or("the start of the script");
        let net = if c.packages.is_empty() {
            String::new()
        } else {
            format!(
                "\n(the appliance had network: yes, user-mode networking with DNS from `{}`; a failing package install usually means the guest's mirror is unreachable or a package name is wrong)",
                resolv.lines().next().unwrap_or("")
            )
        };
        bail!(
            "guest customization failed at step \"{last_step}\" (exit {code}); guest output:\n{}{net}",
            tail.join("\n")
        );
    }
    Ok(())
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Mountpoints of a guest root, shortest first.
fn mountpoints(f: &Fish, root: &str) -> Result<Vec<(String, String)>> {
    let text = f.call(&["inspect-get-mountpoints", root])?;
    let mut v: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(m, d)| (m.trim().to_string(), d.trim().to_string()))
        .collect();
    v.sort_by_key(|(m, _)| (m.len(), m.clone()));
    if v.is_empty() {
        v.push(("/".into(), root.to_string()));
    }
    Ok(v)
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

fn mount_all(f: &Fish, mounts: &[(String, String)]) -> Result<()> {
    for (mp, dev) in mounts {
        let (block, subvol) = split_btrfsvol(dev);
        if mp != "/" {
            f.call(&["mkdir-p", mp])?;
        }
        match subvol {
            Some(sv) => f.call(&["mount-options", &format!("subvol={sv}"), &block, mp])?,
            None => f.call(&["mount", &block, mp])?,
        };
    }
    Ok(())
}

/// Total size of the filesystem mounted at `mp`, in bytes.
fn fs_size(f: &Fish, mp: &str) -> Result<u64> {
    let r = fish::record(&f.call(&["statvfs", mp])?);
    let blocks: u64 = r
        .get("blocks")
        .and_then(|v| v.parse().ok())
        .context("statvfs without blocks")?;
    let frsize: u64 = r
        .get("frsize")
        .and_then(|v| v.parse().ok())
        .context("statvfs without frsize")?;
    Ok(blocks * frsize)
}

/// Grows the partition under `root_block` (or the LVM PV under it) to the end of the
/// disk, then the filesystem. Everything must be unmounted.
fn grow(
    f: &Fish,
    root_block: &str,
    fs_type: &str,
    partition: Option<&str>,
    mounts: &[(String, String)],
) -> Result<()> {
    let is_lv = f
        .try_call(&["is-lv", root_block])
        .map(|s| s == "true")
        .unwrap_or(false);
    let part = match partition {
        Some(p) => p.to_string(),
        None if is_lv => {
            let pvs: Vec<String> = f.call(&["pvs"])?.lines().map(str::to_string).collect();
            match pvs.as_slice() {
                [one] => one.clone(),
                _ => bail!(
                    "the root LV {root_block} sits on several physical volumes ({}); name the partition to grow with disk.grow.partition",
                    pvs.join(", ")
                ),
            }
        }
        None => root_block.to_string(),
    };
    let disk = f.call(&["part-to-dev", &part]).with_context(|| {
        format!("{part} is not a partition: nothing to grow (set disk.grow.enabled: false)")
    })?;
    let num: u32 = f
        .call(&["part-to-partnum", &part])?
        .trim()
        .parse()
        .context("partition number")?;
    let table = f.call(&["part-get-parttype", &disk])?;
    let parts = part_list(f, &disk)?;
    let last = parts.iter().map(|p| p.0).max().unwrap_or(0);
    if num != last {
        bail!(
            "{part} is not the last partition of {disk} (partition {last} follows it): it cannot grow in place; \
             move the root partition to the end or set disk.grow.enabled: false"
        );
    }
    match table.as_str() {
        "gpt" => {
            f.call(&["part-expand-gpt", &disk])?;
            let start = parts
                .iter()
                .find(|p| p.0 == num)
                .map(|p| p.1)
                .context("partition start")?
                / 512;
            let total: u64 = f
                .call(&["blockdev-getsz", &disk])?
                .trim()
                .parse()
                .context("disk sectors")?;
            // The backup GPT takes the last 33 sectors.
            let end = total - 34;
            let n = num.to_string();
            let typ = f.call(&["part-get-gpt-type", &disk, &n])?;
            let guid = f.call(&["part-get-gpt-guid", &disk, &n])?;
            let name = f
                .try_call(&["part-get-name", &disk, &n])
                .unwrap_or_default();
            let attrs = f.try_call(&["part-get-gpt-attributes", &disk, &n]);
            let bootable = f
                .try_call(&["part-get-bootable", &disk, &n])
                .map(|b| b == "true")
                .unwrap_or(false);
            f.call(&["part-del", &disk, &n])?;
            f.call(&["part-add", &disk, "p", &start.to_string(), &end.to_string()])?;
            f.call(&["part-set-gpt-type", &disk, &n, &typ])?;
            f.call(&["part-set-gpt-guid", &disk, &n, &guid])?;
            if !name.is_empty() {
                f.call(&["part-set-name", &disk, &n, &name])?;
            }
            if let Some(a) = attrs {
                f.call(&["part-set-gpt-attributes", &disk, &n, &a])?;
            }
            if bootable {
                f.call(&["part-set-bootable", &disk, &n, "true"])?;
            }
        }
        "msdos" => {
            if num > 4 {
                bail!("{part} is a logical partition: growing it in place is not supported");
            }
            f.call(&["part-resize", &disk, &num.to_string(), "-1"])?;
        }
        other => bail!("{disk} has a {other} partition table: only GPT and MBR can be grown"),
    }
    if is_lv {
        f.call(&["pvresize", &part])?;
        f.call(&["lvresize-free", root_block, "100"])?;
    }
    match fs_type {
        "ext2" | "ext3" | "ext4" => {
            f.call(&["e2fsck-f", root_block])?;
            f.call(&["resize2fs", root_block])?;
        }
        "xfs" | "btrfs" => {
            let root_dev = mounts
                .iter()
                .find(|(m, _)| m == "/")
                .map(|(_, d)| d.clone())
                .unwrap_or_else(|| root_block.to_string());
            mount_all(f, &[("/".to_string(), root_dev)])?;
            if fs_type == "xfs" {
                f.call(&["xfs-growfs", "/"])?;
            } else {
                f.call(&["btrfs-filesystem-resize", "/"])?;
            }
            f.call(&["umount-all"])?;
        }
        other => bail!("growing a {other} filesystem is not supported (ext2/3/4, xfs, btrfs are); set disk.grow.enabled: false"),
    }
    Ok(())
}

/// (number, start byte) of every partition.
fn part_list(f: &Fish, disk: &str) -> Result<Vec<(u32, u64)>> {
    let text = f.call(&["part-list", disk])?;
    let mut out = Vec::new();
    let mut cur: BTreeMap<String, String> = BTreeMap::new();
    for l in text.lines() {
        let l = l.trim();
        if let Some((k, v)) = l.split_once(':') {
            cur.insert(k.trim().to_string(), v.trim().to_string());
        }
        if l.starts_with("part_size") {
            let num = cur
                .get("part_num")
                .and_then(|v| v.parse().ok())
                .context("part_num")?;
            let start = cur
                .get("part_start")
                .and_then(|v| v.parse().ok())
                .context("part_start")?;
            out.push((num, start));
            cur.clear();
        }
    }
    Ok(out)
}

/// Flattens `overlay` into a standalone image at `dest` and checks it.
pub fn finalize(
    overlay: &Path,
    dest: &Path,
    format: DiskFormat,
    compress: bool,
) -> Result<qemu_img::ImageInfo> {
    qemu_img::convert_cmd(overlay, dest, format, compress).run()?;
    if format == DiskFormat::Qcow2 {
        qemu_img::check_cmd(dest).run()?;
    }
    qemu_img::check_standalone(dest, format)
}
