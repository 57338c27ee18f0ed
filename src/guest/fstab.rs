//! Finding the guest's mount points from its `/etc/fstab`, host-side: the fast path
//! beside libguestfs inspection (`inspect-os`), which under TCG spends seconds per
//! filesystem starting probe processes and Augeas in the appliance. Anything this module
//! cannot resolve with certainty returns `None`, and the caller falls back to inspection.

use std::collections::BTreeMap;

/// What `blkid` reports for one block device, under the name libguestfs uses for it
/// (`/dev/sda2`, `/dev/VG/LV`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    /// `TYPE`, `UUID`, `LABEL`, `PARTUUID`, `PARTLABEL`, … as blkid names them.
    pub ids: BTreeMap<String, String>,
}

impl Device {
    pub fn fs_type(&self) -> &str {
        self.ids.get("TYPE").map_or("", String::as_str)
    }
}

/// Filesystems whose root this module can recognise and mount with no options. btrfs
/// is left to inspection: its root is often a subvolume.
pub const SIMPLE_FILESYSTEMS: &[&str] = &["ext2", "ext3", "ext4", "xfs"];

/// fstab types that name no block device of the guest.
const NOT_A_DEVICE: &[&str] = &[
    "swap",
    "proc",
    "sysfs",
    "tmpfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "configfs",
    "efivarfs",
    "hugetlbfs",
    "mqueue",
    "nfs",
    "nfs4",
    "cifs",
    "smbfs",
    "9p",
    "virtiofs",
    "overlay",
    "none",
];

/// The mount points of an fstab as (mount point, device), shortest mount point first, or
/// `None` when an entry that names a device cannot be resolved to exactly one of
/// `devices` (another layout, a network root, an escaped label: inspection decides).
pub fn mountpoints(fstab: &str, devices: &[Device]) -> Option<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in fstab.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 {
            return None;
        }
        let (spec, mp, fstype) = (fields[0], fields[1], fields[2]);
        let options = fields.get(3).copied().unwrap_or("defaults");
        if NOT_A_DEVICE.contains(&fstype)
            || fstype.starts_with("fuse")
            || !mp.starts_with('/')
            || options.split(',').any(|o| o == "bind" || o == "rbind")
        {
            continue;
        }
        if options.split(',').any(|o| o.starts_with("subvol")) || mp.contains('\\') {
            return None;
        }
        let device = resolve(spec, devices)?;
        if out.iter().any(|(m, _)| m == mp) {
            return None;
        }
        out.push((mp.to_string(), device));
    }
    if !out.iter().any(|(m, _)| m == "/") {
        return None;
    }
    out.sort_by_key(|(m, _)| (m.len(), m.clone()));
    Some(out)
}

/// The one device an fstab `spec` names: `UUID=`, `LABEL=`, `PARTUUID=`, `PARTLABEL=`,
/// their `/dev/disk/by-*` links, or a device path as the guest's kernel names it.
pub fn resolve(spec: &str, devices: &[Device]) -> Option<String> {
    let by_id = |key: &str, value: &str| -> Option<String> {
        let value = value.trim_matches('"');
        let found: Vec<&Device> = devices
            .iter()
            .filter(|d| {
                d.ids.get(key).is_some_and(|v| {
                    if key.ends_with("UUID") {
                        v.eq_ignore_ascii_case(value)
                    } else {
                        v == value
                    }
                })
            })
            .collect();
        match found.as_slice() {
            [one] => Some(one.name.clone()),
            _ => None,
        }
    };
    for (prefix, key) in [
        ("UUID=", "UUID"),
        ("LABEL=", "LABEL"),
        ("PARTUUID=", "PARTUUID"),
        ("PARTLABEL=", "PARTLABEL"),
        ("/dev/disk/by-uuid/", "UUID"),
        ("/dev/disk/by-label/", "LABEL"),
        ("/dev/disk/by-partuuid/", "PARTUUID"),
        ("/dev/disk/by-partlabel/", "PARTLABEL"),
    ] {
        if let Some(value) = spec.strip_prefix(prefix) {
            if value.contains('\\') {
                return None;
            }
            return by_id(key, value);
        }
    }
    let name = appliance_name(spec)?;
    devices.iter().any(|d| d.name == name).then_some(name)
}

/// The name libguestfs gives the device a guest calls `spec`: `/dev/vda2`, `/dev/xvda2`,
/// `/dev/hda2` and `/dev/sda2` are all `/dev/sda2` in the appliance (one disk attached);
/// `/dev/mapper/VG-LV` (dashes in names doubled) is `/dev/VG/LV`.
pub fn appliance_name(spec: &str) -> Option<String> {
    if let Some(dm) = spec.strip_prefix("/dev/mapper/") {
        // Split at the first single dash; "--" stands for a dash inside a name.
        let bytes = dm.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'-' {
                if bytes.get(i + 1) == Some(&b'-') {
                    i += 2;
                    continue;
                }
                let (vg, lv) = (&dm[..i], &dm[i + 1..]);
                if vg.is_empty() || lv.is_empty() {
                    return None;
                }
                return Some(format!(
                    "/dev/{}/{}",
                    vg.replace("--", "-"),
                    lv.replace("--", "-")
                ));
            }
            i += 1;
        }
        return None;
    }
    let rest = spec.strip_prefix("/dev/")?;
    for prefix in ["xvd", "vd", "sd", "hd"] {
        if let Some(tail) = rest.strip_prefix(prefix) {
            let letters = tail.bytes().take_while(u8::is_ascii_lowercase).count();
            let (disk, part) = tail.split_at(letters);
            if letters == 0 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            return Some(format!("/dev/sd{disk}{part}"));
        }
    }
    // /dev/VG/LV as written.
    let parts: Vec<&str> = rest.split('/').collect();
    (parts.len() == 2 && parts.iter().all(|p| !p.is_empty())).then(|| spec.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, ids: &[(&str, &str)]) -> Device {
        Device {
            name: name.into(),
            ids: ids
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The devices of the layout zoo's ubuntu-like and lvm-like disks, as blkid reports
    /// them in the appliance.
    fn ubuntu() -> Vec<Device> {
        vec![
            dev("/dev/sda14", &[("PARTUUID", "a1")]),
            dev(
                "/dev/sda15",
                &[("TYPE", "vfat"), ("UUID", "5A1B-2C3D"), ("LABEL", "UEFI")],
            ),
            dev(
                "/dev/sda16",
                &[("TYPE", "ext4"), ("UUID", "b0"), ("LABEL", "BOOT")],
            ),
            dev(
                "/dev/sda1",
                &[
                    ("TYPE", "ext4"),
                    ("UUID", "7E916E07-d248-4b1a-868f-5ce16e88abae"),
                    ("LABEL", "cloudimg-rootfs"),
                    ("PARTUUID", "c3d4"),
                ],
            ),
        ]
    }

    #[test]
    fn an_ubuntu_fstab_resolves_by_label_and_uuid() {
        let fstab = "# comment\nLABEL=cloudimg-rootfs\t/\text4\tdiscard,errors=remount-ro\t0 1\nLABEL=BOOT\t/boot\text4\tdefaults\t0 2\nLABEL=UEFI\t/boot/efi\tvfat\tumask=0077\t0 1\n/swap.img none swap sw 0 0\nproc /proc proc defaults 0 0\n";
        assert_eq!(
            mountpoints(fstab, &ubuntu()).unwrap(),
            [
                ("/".to_string(), "/dev/sda1".to_string()),
                ("/boot".into(), "/dev/sda16".into()),
                ("/boot/efi".into(), "/dev/sda15".into()),
            ]
        );
        // UUIDs compare without case; quotes are allowed.
        assert_eq!(
            resolve("UUID=\"7e916e07-D248-4b1a-868f-5ce16e88abae\"", &ubuntu()).as_deref(),
            Some("/dev/sda1")
        );
        assert_eq!(
            resolve("PARTUUID=c3d4", &ubuntu()).as_deref(),
            Some("/dev/sda1")
        );
        assert_eq!(
            resolve("/dev/disk/by-label/BOOT", &ubuntu()).as_deref(),
            Some("/dev/sda16")
        );
    }

    #[test]
    fn device_paths_take_the_appliances_names() {
        assert_eq!(appliance_name("/dev/vda1").as_deref(), Some("/dev/sda1"));
        assert_eq!(appliance_name("/dev/xvda15").as_deref(), Some("/dev/sda15"));
        assert_eq!(appliance_name("/dev/sda").as_deref(), Some("/dev/sda"));
        assert_eq!(
            appliance_name("/dev/mapper/rootvg-rootlv").as_deref(),
            Some("/dev/rootvg/rootlv")
        );
        assert_eq!(
            appliance_name("/dev/mapper/my--vg-root--lv").as_deref(),
            Some("/dev/my-vg/root-lv")
        );
        assert_eq!(
            appliance_name("/dev/rootvg/rootlv").as_deref(),
            Some("/dev/rootvg/rootlv")
        );
        assert_eq!(appliance_name("/dev/nvme0n1p1"), None);
        assert_eq!(appliance_name("/dev/md0"), None);
        let lvm = vec![
            dev("/dev/sda2", &[("TYPE", "xfs"), ("UUID", "6db7")]),
            dev("/dev/rootvg/rootlv", &[("TYPE", "xfs"), ("UUID", "8837")]),
        ];
        assert_eq!(
            mountpoints(
                "/dev/mapper/rootvg-rootlv / xfs defaults 0 0\nUUID=6db7 /boot xfs defaults 0 0\n",
                &lvm
            )
            .unwrap(),
            [
                ("/".to_string(), "/dev/rootvg/rootlv".to_string()),
                ("/boot".into(), "/dev/sda2".into()),
            ]
        );
    }

    #[test]
    fn anything_uncertain_is_left_to_inspection() {
        let d = ubuntu();
        // No root entry; an unknown UUID; an ambiguous label; subvolumes; escapes.
        assert_eq!(
            mountpoints("LABEL=BOOT /boot ext4 defaults 0 2\n", &d),
            None
        );
        assert_eq!(mountpoints("UUID=ffff / ext4 defaults 0 1\n", &d), None);
        let mut twice = d.clone();
        twice.push(dev("/dev/sdb1", &[("LABEL", "BOOT")]));
        assert_eq!(
            mountpoints(
                "LABEL=cloudimg-rootfs / ext4 defaults 0 1\nLABEL=BOOT /boot ext4 defaults 0 2\n",
                &twice
            ),
            None
        );
        assert_eq!(
            mountpoints("LABEL=cloudimg-rootfs / btrfs subvol=root 0 0\n", &d),
            None
        );
        assert_eq!(
            mountpoints("LABEL=my\\040disk / ext4 defaults 0 0\n", &d),
            None
        );
        assert_eq!(
            mountpoints("/dev/nvme0n1p1 / ext4 defaults 0 0\n", &d),
            None
        );
        assert_eq!(mountpoints("LABEL=cloudimg-rootfs /\n", &d), None);
        // A device path the appliance does not have.
        assert_eq!(mountpoints("/dev/vdb1 / ext4 defaults 0 1\n", &d), None);
        // Network, memory and bind mounts are not devices and do not stop the fast path.
        assert!(mountpoints(
            "LABEL=cloudimg-rootfs / ext4 defaults 0 1\nserver:/export /mnt/nfs nfs defaults 0 0\ntmpfs /tmp tmpfs defaults 0 0\n/srv /var/srv none bind 0 0\n",
            &d
        )
        .is_some());
    }
}
