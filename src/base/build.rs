//! Bases diskforge builds itself: a minimal, bootable Debian cloud-style image made from
//! Debian packages with mmdebstrap, for sites that reach a Debian mirror but not the
//! upstream cloud images. The result is cached under the hash of its definition.
//!
//! One appliance launch lays it out, in one of two layouts ([`BaseLayout`]):
//! - MBR: one bootable ext4 partition (UUID derived from the definition), fstab and
//!   extlinux config by UUID (the disk is `vda` under KubeVirt, `sda` elsewhere) and
//!   syslinux's MBR code: BIOS only;
//! - GPT, as Debian's cloud images: a BIOS boot partition with the guest's own GRUB
//!   (`grub-install --target=i386-pc`), an EFI system partition with Debian's signed
//!   shim as the removable loader `EFI/BOOT/BOOTX64.EFI` next to the signed GRUB (no
//!   boot entry is needed: what a fresh KubeVirt VM's variable store has), and the ext4
//!   root last; one `grub.cfg` on the root serves both, booting `/vmlinuz` so a kernel
//!   update in the guest keeps it bootable.
//!
//! With `init: systemd` (the default) both get systemd-networkd DHCP on every ethernet
//! interface. With `init: openrc` the base has no systemd at all: sysvinit as PID 1 and
//! OpenRC starting the services, ifupdown with dhclient for DHCP on `eth0` (the kernel
//! gets `net.ifnames=0`, so the first interface has that name on every machine type),
//! and a getty on the serial console.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::base::catalog::{BaseInit, BaseLayout, BuildSpec, CatalogEntry};
use crate::base::CachedBase;
use crate::cache::{Cache, RefKey};
use crate::guest::fish::{Drive, Fish};
use crate::recipe::{Arch, DiskFormat};
use crate::sys::accel::Effective;
use crate::sys::exec::Cmd;

/// Bumped when the layout of built bases changes, so old cache entries are not reused.
const BUILDER_VERSION: &str = "debian-base-v1";

/// The Debian mirror to use: `DISKFORGE_DEBIAN_MIRROR`, the entry's, the host's, or
/// deb.debian.org.
pub fn mirror(spec: &BuildSpec) -> String {
    if let Ok(m) = std::env::var("DISKFORGE_DEBIAN_MIRROR") {
        if !m.trim().is_empty() {
            return m.trim().to_string();
        }
    }
    if let Some(m) = &spec.mirror {
        return m.clone();
    }
    host_mirror().unwrap_or_else(|| "http://deb.debian.org/debian".to_string())
}

/// The first Debian (non-security) mirror in the host's apt sources.
fn host_mirror() -> Option<String> {
    let mut texts = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            if e.path()
                .extension()
                .is_some_and(|x| x == "sources" || x == "list")
            {
                texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    texts.push(std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    texts
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split_whitespace())
        .find(|w| {
            (w.starts_with("http://") || w.starts_with("https://"))
                && w.trim_end_matches('/').ends_with("/debian")
        })
        .map(|w| w.trim_end_matches('/').to_string())
}

/// The cache key of a built base: its definition, the mirror and the builder version.
pub fn definition_hash(entry: &CatalogEntry, spec: &BuildSpec, arch: Arch) -> Result<String> {
    let v = serde_json::json!({
        "builder": BUILDER_VERSION,
        "entry": entry.name,
        "build": spec,
        "mirror": mirror(spec),
        "arch": arch.as_str(),
    });
    Ok(crate::io::hash::sha256_hex(
        &crate::io::hash::canonical_json(&v)?,
    ))
}

/// The cached build of `entry`, if there is one, with the definition hash that keys it.
pub fn cached_build(
    entry: &CatalogEntry,
    arch: Arch,
    cache: &Cache,
) -> Result<(String, Option<CachedBase>)> {
    let spec = entry
        .build
        .as_ref()
        .with_context(|| format!("catalog entry {} has no build section", entry.name))?;
    let hash = definition_hash(entry, spec, arch)?;
    let key = RefKey::Url(format!("diskforge-build:{hash}"));
    let Some(hex) = cache.lookup(&key)? else {
        return Ok((hash, None));
    };
    let path = cache.blob_path(&hex);
    let info = crate::sys::qemu_img::info(&path)?;
    Ok((
        hash,
        Some(CachedBase {
            path,
            digest: format!("sha256:{hex}"),
            format: DiskFormat::Qcow2,
            virtual_size: info.virtual_size,
        }),
    ))
}

/// Returns the cached build of `entry`, building it first when needed.
pub fn build_base(
    entry: &CatalogEntry,
    arch: Arch,
    cache: &Cache,
    offline: bool,
    accel: Effective,
    work: &Path,
    session: &crate::guest::fish::Session,
) -> Result<CachedBase> {
    let spec = entry
        .build
        .as_ref()
        .with_context(|| format!("catalog entry {} has no build section", entry.name))?;
    if let Some(p) = spec.problem() {
        bail!("catalog entry {}: {p}", entry.name);
    }
    if spec.tool != "mmdebstrap" {
        bail!(
            "catalog entry {}: unknown build tool {:?} (only mmdebstrap exists)",
            entry.name,
            spec.tool
        );
    }
    if arch != Arch::Amd64 {
        bail!(
            "catalog entry {}: building bases is supported for amd64 only",
            entry.name
        );
    }
    let hash = definition_hash(entry, spec, arch)?;
    let key = RefKey::Url(format!("diskforge-build:{hash}"));
    let _lock = cache.lock_blocking(&key)?;
    if let Some(hex) = cache.lookup(&key)? {
        let path = cache.blob_path(&hex);
        let info = crate::sys::qemu_img::info(&path)?;
        crate::progress::say(format!(
            "base {} (built {}) from the cache",
            entry.name,
            &hash[..12]
        ));
        return Ok(CachedBase {
            path,
            digest: format!("sha256:{hex}"),
            format: DiskFormat::Qcow2,
            virtual_size: info.virtual_size,
        });
    }
    if offline {
        bail!(
            "base {} is not in the cache and --offline forbids building it",
            entry.name
        );
    }
    let disk = build_into(entry, spec, &hash, work, accel, session)?;
    let _ = std::fs::remove_file(work.join("rootfs.tar"));
    let (hex, _) = crate::io::hash::sha256_file(&disk)?;
    let temp = cache.adopt(&disk)?;
    let path = cache.commit(
        temp,
        &hex,
        &format!("built: {} ({})", entry.name, &hash[..12]),
        None,
        &[&key],
    )?;
    // The disk was created at this size (no second qemu-img run the plan does not list).
    Ok(CachedBase {
        path,
        digest: format!("sha256:{hex}"),
        format: DiskFormat::Qcow2,
        virtual_size: spec.size_bytes()?,
    })
}

/// The mmdebstrap command for a build spec.
pub fn mmdebstrap_cmd(spec: &BuildSpec, out: &Path) -> Cmd {
    let mut pkgs: Vec<String> = vec![spec.kernel.clone()];
    match spec.init {
        BaseInit::Systemd => pkgs.extend(["systemd-sysv", "systemd-resolved"].map(String::from)),
        BaseInit::Openrc => pkgs
            .extend(["sysvinit-core", "openrc", "ifupdown", "isc-dhcp-client"].map(String::from)),
    }
    pkgs.extend([
        "udev".into(),
        "dbus".into(),
        "iproute2".into(),
        "netbase".into(),
        "ca-certificates".into(),
        "login".into(),
        "passwd".into(),
        "apt".into(),
    ]);
    if spec.cloud_init {
        pkgs.push("cloud-init".into());
    }
    if spec.layout == BaseLayout::Gpt {
        // shim-signed brings grub-efi-amd64-bin; grub-pc-bin is GRUB for BIOS.
        pkgs.extend(["shim-signed", "grub-efi-amd64-signed", "grub-pc-bin"].map(String::from));
    }
    pkgs.extend(spec.packages.iter().cloned());
    Cmd::new(
        "mmdebstrap",
        format!("building a {} root tree from Debian packages", spec.suite),
    )
    .args(["--variant=minbase", "--quiet"])
    .arg(format!("--include={}", pkgs.join(",")))
    .arg(&spec.suite)
    .arg(out)
    .arg(mirror(spec))
    .env("SOURCE_DATE_EPOCH", source_date_epoch())
    .timeout(std::time::Duration::from_secs(1800))
}

fn source_date_epoch() -> String {
    std::env::var("SOURCE_DATE_EPOCH").unwrap_or_else(|_| "946684800".into())
}

/// A UUID derived from the definition hash, so the same definition gives the same
/// filesystem UUID (and the same fstab and bootloader config).
fn fs_uuid(hash: &str) -> String {
    let h = &hash[..32];
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn build_into(
    entry: &CatalogEntry,
    spec: &BuildSpec,
    hash: &str,
    work: &Path,
    accel: Effective,
    session: &crate::guest::fish::Session,
) -> Result<PathBuf> {
    let stage = crate::progress::stage(
        "base-build",
        format!(
            "building base {} with mmdebstrap ({})",
            entry.name,
            mirror(spec)
        ),
    );
    let tarball = work.join("rootfs.tar");
    mmdebstrap_cmd(spec, &tarball)
        .named(session.names())
        .run()?;
    stage.done();

    let stage = crate::progress::stage(
        "base-layout",
        format!("laying out the bootable disk of {}", entry.name),
    );
    let size = spec
        .size_bytes()
        .with_context(|| format!("catalog entry {}", entry.name))?;
    let disk = work.join("base.qcow2");
    crate::sys::qemu_img::create_cmd(&disk, size)
        .named(session.names())
        .run()?;
    let uuid = fs_uuid(hash);
    let mbr = [
        "/usr/lib/syslinux/mbr/mbr.bin",
        "/usr/lib/SYSLINUX/mbr.bin",
        "/usr/share/syslinux/mbr.bin",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .context("syslinux's mbr.bin is missing: install syslinux-common (ci/setup-system.sh)")?;
    let network = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n";
    let net_file = work.join("80-dhcp.network");
    std::fs::write(&net_file, network).context("writing the network config")?;
    let cmdline = kernel_cmdline(&uuid, spec.init);

    let f = Fish::launch(
        &[Drive {
            path: &disk,
            format: "qcow2",
            readonly: false,
        }],
        false,
        accel,
        session,
    )?;
    match spec.layout {
        BaseLayout::Mbr => lay_out_mbr(&f, &tarball, &uuid, &cmdline, &mbr)?,
        BaseLayout::Gpt => lay_out_gpt(&f, &tarball, &uuid, &cmdline, hash, size)?,
    }
    f.call(&["write", "/etc/hostname", &format!("{}\n", entry.name)])?;
    f.call(&["write", "/etc/machine-id", ""])?;
    match spec.init {
        BaseInit::Systemd => {
            f.call(&["mkdir-p", "/etc/systemd/network"])?;
            f.call(&[
                "upload",
                &net_file.to_string_lossy(),
                "/etc/systemd/network/80-dhcp.network",
            ])?;
            f.call(&[
                "sh",
                "systemctl enable systemd-networkd.service systemd-resolved.service",
            ])?;
        }
        BaseInit::Openrc => set_up_openrc(&f)?,
    }
    f.call(&["sh", "apt-get clean; rm -rf /var/lib/apt/lists/*"])?;
    f.call(&["umount-all"])?;
    f.close()?;
    stage.done();
    Ok(disk)
}

/// The kernel command line of a built base: the root by UUID, the serial console, and
/// with OpenRC the classic interface names ifupdown's `eth0` stanza relies on.
fn kernel_cmdline(uuid: &str, init: BaseInit) -> String {
    let mut c = format!("root=UUID={uuid} ro console=tty0 console=ttyS0,115200n8");
    if init == BaseInit::Openrc {
        c.push_str(" net.ifnames=0");
    }
    c
}

/// What an OpenRC base needs besides its packages: loopback and DHCP on `eth0` through ifupdown
/// (its `networking` service is in OpenRC's sysinit runlevel), a getty on the serial
/// console, and every service its packages enabled in OpenRC's runlevels.
fn set_up_openrc(f: &Fish) -> Result<()> {
    f.call(&[
        "write",
        "/etc/network/interfaces.d/diskforge",
        "auto lo\niface lo inet loopback\n\nauto eth0\nallow-hotplug eth0\niface eth0 inet dhcp\n",
    ])?;
    f.call(&[
        "sh",
        "grep -q '^T0:' /etc/inittab || echo 'T0:2345:respawn:/sbin/getty -L 115200 ttyS0 vt100' >> /etc/inittab",
    ])
    .context("adding a getty on the serial console to /etc/inittab")?;
    f.call(&[
        "sh",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin; [ ! -e /usr/bin/systemctl ] && [ \"$(readlink -f /sbin/init)\" = /usr/sbin/init ] && [ -x /sbin/openrc ] && [ -e /etc/runlevels/sysinit/networking ] || { echo 'the OpenRC base has systemd, no sysvinit init or no networking service' >&2; exit 1; }",
    ])
    .context("checking that the base boots with sysvinit and OpenRC, without systemd")?;
    Ok(())
}

/// MBR, one bootable ext4 partition, extlinux with syslinux's MBR code: BIOS only.
fn lay_out_mbr(f: &Fish, tarball: &Path, uuid: &str, cmdline: &str, mbr: &Path) -> Result<()> {
    f.call(&["part-init", "/dev/sda", "mbr"])?;
    f.call(&["part-add", "/dev/sda", "p", "2048", "-1"])?;
    f.call(&["part-set-bootable", "/dev/sda", "1", "true"])?;
    f.call(&["mkfs", "ext4", "/dev/sda1", "label:root"])?;
    f.call(&["set-uuid", "/dev/sda1", uuid])?;
    f.call(&["mount", "/dev/sda1", "/"])?;
    f.call(&["tar-in", &tarball.to_string_lossy(), "/"])?;
    let kernels = f.call(&["glob-expand", "/boot/vmlinuz-*"])?;
    let kernel = kernels
        .lines()
        .last()
        .context("no kernel in /boot after mmdebstrap")?
        .to_string();
    let initrd = kernel.replace("/vmlinuz-", "/initrd.img-");
    f.call(&[
        "write",
        "/etc/fstab",
        &format!("UUID={uuid} / ext4 errors=remount-ro 0 1\n"),
    ])?;
    f.call(&["mkdir-p", "/boot/extlinux"])?;
    f.call(&[
        "write",
        "/boot/extlinux/extlinux.conf",
        &format!(
            "DEFAULT debian\nPROMPT 0\nTIMEOUT 1\n\nLABEL debian\n  KERNEL {kernel}\n  INITRD {initrd}\n  APPEND {cmdline}\n"
        ),
    ])?;
    f.call(&["extlinux", "/boot/extlinux"])?;
    f.call(&["upload", &mbr.to_string_lossy(), "/boot/extlinux/mbr.bin"])?;
    f.call(&[
        "copy-file-to-device",
        "/boot/extlinux/mbr.bin",
        "/dev/sda",
        "size:440",
    ])?;
    f.call(&["rm", "/boot/extlinux/mbr.bin"])?;
    Ok(())
}

/// The GPT type of the root partition (Linux root, x86-64), as Debian's cloud images.
const ROOT_X86_64_GUID: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
const BIOS_BOOT_GUID: &str = "21686148-6449-6E6F-744E-656564454649";
const ESP_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// The kernel and initrd a boot loader config names: the `/vmlinuz` and `/initrd.img`
/// links the kernel package keeps pointing at the newest kernel, else the newest files.
fn kernel_paths(f: &Fish) -> Result<(String, String)> {
    if f.try_call(&["is-symlink", "/vmlinuz"]).as_deref() == Some("true")
        && f.try_call(&["is-symlink", "/initrd.img"]).as_deref() == Some("true")
    {
        return Ok(("/vmlinuz".into(), "/initrd.img".into()));
    }
    let kernels = f.call(&["glob-expand", "/boot/vmlinuz-*"])?;
    let kernel = kernels
        .lines()
        .last()
        .context("no kernel in /boot after mmdebstrap")?
        .to_string();
    let initrd = kernel.replace("/vmlinuz-", "/initrd.img-");
    Ok((kernel, initrd))
}

/// GPT like Debian's cloud images: 1 BIOS boot (3 MiB), 2 EFI system (124 MiB, vfat),
/// 3 the ext4 root to the end. GRUB for BIOS in the BIOS boot partition; Debian's
/// signed shim and GRUB on the ESP's removable path.
fn lay_out_gpt(
    f: &Fish,
    tarball: &Path,
    uuid: &str,
    cmdline: &str,
    hash: &str,
    size: u64,
) -> Result<()> {
    let last = size / 512 - 34;
    f.call(&["part-init", "/dev/sda", "gpt"])?;
    f.call(&["part-add", "/dev/sda", "p", "2048", "8191"])?;
    f.call(&["part-add", "/dev/sda", "p", "8192", "262143"])?;
    f.call(&["part-add", "/dev/sda", "p", "262144", &last.to_string()])?;
    let esp_partuuid = fs_uuid(&crate::io::hash::sha256_hex(
        format!("{hash} esp").as_bytes(),
    ));
    let root_partuuid = fs_uuid(&crate::io::hash::sha256_hex(
        format!("{hash} root").as_bytes(),
    ));
    for (n, ty, name) in [
        ("1", BIOS_BOOT_GUID, "bios"),
        ("2", ESP_GUID, "esp"),
        ("3", ROOT_X86_64_GUID, "root"),
    ] {
        f.call(&["part-set-gpt-type", "/dev/sda", n, ty])?;
        f.call(&["part-set-name", "/dev/sda", n, name])?;
    }
    f.call(&["part-set-gpt-guid", "/dev/sda", "2", &esp_partuuid])?;
    f.call(&["part-set-gpt-guid", "/dev/sda", "3", &root_partuuid])?;
    f.call(&["mkfs", "vfat", "/dev/sda2"])?;
    f.call(&["mkfs", "ext4", "/dev/sda3", "label:root"])?;
    f.call(&["set-uuid", "/dev/sda3", uuid])?;
    f.call(&["mount", "/dev/sda3", "/"])?;
    f.call(&["tar-in", &tarball.to_string_lossy(), "/"])?;
    f.call(&["mkdir-p", "/boot/efi"])?;
    f.call(&["mount", "/dev/sda2", "/boot/efi"])?;
    f.call(&[
        "write",
        "/etc/fstab",
        &format!(
            "UUID={uuid} / ext4 errors=remount-ro 0 1\nPARTUUID={esp_partuuid} /boot/efi vfat umask=0077 0 1\n"
        ),
    ])?;
    let (kernel, initrd) = kernel_paths(f)?;
    f.call(&["mkdir-p", "/boot/grub"])?;
    f.call(&[
        "write",
        "/boot/grub/grub.cfg",
        &format!(
            "set timeout=1\ninsmod part_gpt\ninsmod ext2\nsearch --no-floppy --fs-uuid --set=root {uuid}\nmenuentry 'Debian GNU/Linux' {{\n  linux {kernel} {cmdline}\n  initrd {initrd}\n}}\n"
        ),
    ])?;
    // The signed GRUB reads grub.cfg from its prefix (EFI/debian) or from where it was
    // started (EFI/BOOT): both hold the stub that finds the root's grub.cfg.
    let stub = format!(
        "search.fs_uuid {uuid} root\nset prefix=($root)'/boot/grub'\nconfigfile $prefix/grub.cfg\n"
    );
    for dir in ["/boot/efi/EFI/BOOT", "/boot/efi/EFI/debian"] {
        f.call(&["mkdir-p", dir])?;
        f.call(&["write", &format!("{dir}/grub.cfg"), &stub])?;
    }
    for (from, to) in [
        (
            "/usr/lib/shim/shimx64.efi.signed",
            "/boot/efi/EFI/BOOT/BOOTX64.EFI",
        ),
        (
            "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
            "/boot/efi/EFI/BOOT/grubx64.efi",
        ),
        (
            "/usr/lib/shim/mmx64.efi.signed",
            "/boot/efi/EFI/BOOT/mmx64.efi",
        ),
        (
            "/usr/lib/shim/shimx64.efi.signed",
            "/boot/efi/EFI/debian/shimx64.efi",
        ),
        (
            "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
            "/boot/efi/EFI/debian/grubx64.efi",
        ),
        (
            "/usr/lib/shim/mmx64.efi.signed",
            "/boot/efi/EFI/debian/mmx64.efi",
        ),
    ] {
        // The packages' names may be links (`…signed` to `…signed.latest`): copied is
        // the file they name, resolved inside the guest.
        let file = f.call(&["realpath", from])?;
        f.call(&["cp", &file, to])
            .with_context(|| format!("putting {from} on the EFI system partition"))?;
    }
    // The appliance's kernel may name the disk /dev/sdb: the guest's tools find it.
    f.call(&[
        "sh",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin; disk=/dev/$(lsblk -ndo PKNAME \"$(findmnt -no SOURCE -T /boot)\") && grub-install --target=i386-pc --boot-directory=/boot \"$disk\"",
    ])
    .context("installing GRUB for BIOS into the BIOS boot partition")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_openrc_base_gets_sysvinit_openrc_and_ifupdown_instead_of_systemd() {
        let spec = |init: &str| {
            let text = format!("tool: mmdebstrap\nsuite: bookworm\nkernel: linux-image-cloud-amd64\nsize: 2G\ninit: {init}\n");
            serde_yaml::from_str::<BuildSpec>(&text).unwrap()
        };
        let argv = |s: &BuildSpec| mmdebstrap_cmd(s, Path::new("out.tar")).display();
        let openrc = argv(&spec("openrc"));
        assert!(
            openrc.contains("sysvinit-core,openrc,ifupdown,isc-dhcp-client"),
            "{openrc}"
        );
        assert!(!openrc.contains("systemd"), "{openrc}");
        let systemd = argv(&spec("systemd"));
        assert!(
            systemd.contains("systemd-sysv,systemd-resolved"),
            "{systemd}"
        );
        assert!(!systemd.contains("openrc"), "{systemd}");
        assert!(kernel_cmdline("u", BaseInit::Openrc).ends_with(" net.ifnames=0"));
        assert!(!kernel_cmdline("u", BaseInit::Systemd).contains("ifnames"));
    }

    #[test]
    fn uuid_is_derived_from_the_definition() {
        let u = fs_uuid(&"0123456789abcdef".repeat(4));
        assert_eq!(u, "01234567-89ab-4def-8123-456789abcdef");
        assert_eq!(u.len(), 36);
        assert_ne!(fs_uuid(&"fedcba9876543210".repeat(4)), u);
    }
}
