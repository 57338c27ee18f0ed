//! What a disk needs to boot with a firmware, read from the disk itself in one
//! read-only appliance launch: the partition table, an EFI system partition and the
//! loaders on it (the removable-media path `EFI/BOOT/BOOTX64.EFI`, a distribution's
//! `shimx64.efi` or `grubx64.efi`), whether a shim is there for Secure Boot, and for BIOS
//! the MBR's boot code or GPT's BIOS boot partition. [`BootFacts::missing`] is pure and
//! says what a firmware would not find.

use std::path::Path;

use anyhow::{Context, Result};

use super::fish::{Drive, Fish, Table};
use crate::recipe::{DiskFormat, Firmware};
use crate::sys::accel::Effective;

/// GPT partition type of an EFI system partition.
const ESP_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// GPT partition type of a BIOS boot partition (GRUB's core image on GPT).
const BIOS_BOOT_GUID: &str = "21686148-6449-6E6F-744E-656564454649";
/// MBR partition id of an EFI system partition.
const ESP_MBR_ID: &str = "239";
/// What shim's SBAT section says of itself (every shim since 15.3 carries it).
const SHIM_SBAT: &[u8] = b"UEFI shim";

/// The removable-media loader path OVMF boots when its variable store names nothing.
pub const REMOVABLE_LOADER: &str = "efi/boot/bootx64.efi";

/// What the disk holds for booting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootFacts {
    /// `gpt`, `mbr`, or none.
    pub table: Option<&'static str>,
    /// The EFI system partition (device), when there is one with a FAT filesystem.
    pub esp: Option<String>,
    /// EFI loaders found on the ESP, lower-case paths (`efi/boot/bootx64.efi`).
    pub loaders: Vec<String>,
    /// A shim (`shimx64.efi`, or a removable loader that is shim) is on the ESP.
    pub shim: bool,
    /// The MBR holds boot code (its first 440 bytes are not all zero).
    pub mbr_code: bool,
    /// A GPT BIOS boot partition exists (for GRUB on GPT).
    pub bios_boot_partition: bool,
}

impl BootFacts {
    /// What `firmware` would not find on the disk (empty: it has what it needs).
    pub fn missing(&self, firmware: Firmware) -> Vec<String> {
        let mut m = Vec::new();
        match firmware {
            Firmware::Bios => {
                if !self.mbr_code {
                    m.push("no boot code in the MBR (BIOS starts there)".to_string());
                }
            }
            Firmware::Uefi | Firmware::UefiSecureBoot => {
                if self.esp.is_none() {
                    m.push(format!(
                        "no EFI system partition ({} partition table has none with a FAT filesystem)",
                        self.table.unwrap_or("no")
                    ));
                } else if self.loaders.is_empty() {
                    m.push(format!(
                        "no EFI loader on the EFI system partition {}: neither EFI/BOOT/BOOTX64.EFI nor a distribution's EFI/<name>/shimx64.efi or grubx64.efi",
                        self.esp.as_deref().unwrap_or_default()
                    ));
                } else if firmware == Firmware::UefiSecureBoot && !self.shim {
                    m.push(format!(
                        "no shim on the EFI system partition {} (Secure Boot starts a Microsoft-signed shim; loaders found: {})",
                        self.esp.as_deref().unwrap_or_default(),
                        self.loaders.join(", ")
                    ));
                }
            }
        }
        m
    }

    /// One line for people: what was found.
    pub fn summary(&self) -> String {
        format!(
            "{} partition table{}; EFI system partition: {}; EFI loaders: {}; shim: {}; MBR boot code: {}",
            self.table.unwrap_or("no"),
            if self.bios_boot_partition {
                " with a BIOS boot partition"
            } else {
                ""
            },
            self.esp.as_deref().unwrap_or("none"),
            if self.loaders.is_empty() {
                "none".to_string()
            } else {
                self.loaders.join(", ")
            },
            if self.shim { "yes" } else { "no" },
            if self.mbr_code { "yes" } else { "no" },
        )
    }
}

/// EFI loaders among the (lower-cased) file paths of an ESP.
pub fn loaders_in(paths: &[String]) -> Vec<String> {
    let mut out: Vec<String> = paths
        .iter()
        .filter(|p| {
            let parts: Vec<&str> = p.split('/').collect();
            *p == REMOVABLE_LOADER
                || (parts.len() == 3
                    && parts[0] == "efi"
                    && matches!(parts[2], "shimx64.efi" | "grubx64.efi"))
        })
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Reads what `disk` holds for booting, in one read-only appliance launch.
pub fn inspect(
    disk: &Path,
    format: DiskFormat,
    accel: Effective,
    work: &Path,
) -> Result<BootFacts> {
    let stage = crate::progress::stage(
        "boot-inspect",
        format!("reading the boot layout of {}", disk.display()),
    );
    let f = Fish::launch(
        &[Drive {
            path: disk,
            format: format.as_str(),
            readonly: true,
        }],
        false,
        accel,
        &crate::guest::fish::Session::default(),
    )?;
    let facts =
        read(&f, work).with_context(|| format!("reading the boot layout of {}", disk.display()))?;
    f.close()?;
    stage.done();
    Ok(facts)
}

fn read(f: &Fish, work: &Path) -> Result<BootFacts> {
    let mut facts = BootFacts::default();
    let mbr = f.call_bytes(&["pread-device", "/dev/sda", "440", "0"])?;
    facts.mbr_code = mbr.iter().any(|b| *b != 0);
    let table = match f.try_call(&["part-get-parttype", "/dev/sda"]) {
        Some(t) => Table::parse(&t).ok(),
        None => None,
    };
    facts.table = table.map(|t| match t {
        Table::Gpt => "gpt",
        Table::Mbr => "mbr",
    });
    let Some(table) = table else {
        return Ok(facts);
    };
    for p in f.partitions("/dev/sda")? {
        let n = p.num.to_string();
        let dev = format!("/dev/sda{n}");
        let is_esp = match table {
            Table::Gpt => {
                let t = f.call(&["part-get-gpt-type", "/dev/sda", &n])?;
                if t.eq_ignore_ascii_case(BIOS_BOOT_GUID) {
                    facts.bios_boot_partition = true;
                }
                t.eq_ignore_ascii_case(ESP_GUID)
            }
            Table::Mbr => f
                .try_call(&["part-get-mbr-id", "/dev/sda", &n])
                .is_some_and(|id| id.trim() == ESP_MBR_ID),
        };
        if !is_esp || facts.esp.is_some() {
            continue;
        }
        if f.try_call(&["vfs-type", &dev]).as_deref() != Some("vfat") || !f.try_mount_ro(&dev, "/")
        {
            continue;
        }
        facts.esp = Some(dev);
        let files: Vec<String> = f
            .call(&["find", "/"])?
            .lines()
            .map(str::to_string)
            .collect();
        let lower: Vec<String> = files.iter().map(|p| p.to_ascii_lowercase()).collect();
        facts.loaders = loaders_in(&lower);
        facts.shim = lower.iter().any(|p| p.ends_with("/shimx64.efi"));
        if !facts.shim {
            if let Some(i) = lower.iter().position(|p| p == REMOVABLE_LOADER) {
                let host = work.join("bootx64.efi");
                f.call(&[
                    "download",
                    &format!("/{}", files[i]),
                    &host.to_string_lossy(),
                ])?;
                let bytes =
                    std::fs::read(&host).with_context(|| format!("reading {}", host.display()))?;
                let _ = std::fs::remove_file(&host);
                facts.shim = bytes.windows(SHIM_SBAT.len()).any(|w| w == SHIM_SBAT);
            }
        }
        f.umount_all()?;
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(esp: bool, loaders: &[&str], shim: bool) -> BootFacts {
        BootFacts {
            table: Some("gpt"),
            esp: esp.then(|| "/dev/sda15".to_string()),
            loaders: loaders.iter().map(|s| s.to_string()).collect(),
            shim,
            mbr_code: true,
            bios_boot_partition: true,
        }
    }

    #[test]
    fn loaders_are_the_removable_path_or_a_distribution_loader() {
        let paths: Vec<String> = [
            "efi",
            "efi/boot",
            "efi/boot/bootx64.efi",
            "efi/boot/fbx64.efi",
            "efi/debian/shimx64.efi",
            "efi/debian/grub.cfg",
            "efi/fedora/grubx64.efi",
            "efi/debian/sub/grubx64.efi",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            loaders_in(&paths),
            [
                "efi/boot/bootx64.efi",
                "efi/debian/shimx64.efi",
                "efi/fedora/grubx64.efi"
            ]
        );
    }

    #[test]
    fn each_firmware_names_what_it_misses() {
        let bios_only = BootFacts {
            table: Some("mbr"),
            mbr_code: true,
            ..Default::default()
        };
        assert!(bios_only.missing(Firmware::Bios).is_empty());
        for f in [Firmware::Uefi, Firmware::UefiSecureBoot] {
            let m = bios_only.missing(f);
            assert_eq!(m.len(), 1);
            assert!(m[0].starts_with("no EFI system partition"), "{m:?}");
        }
        let empty_esp = facts(true, &[], false);
        assert!(empty_esp.missing(Firmware::Uefi)[0].starts_with("no EFI loader"));
        let grub_only = facts(true, &["efi/boot/bootx64.efi"], false);
        assert!(grub_only.missing(Firmware::Uefi).is_empty());
        assert!(grub_only.missing(Firmware::UefiSecureBoot)[0].starts_with("no shim"));
        let signed = facts(true, &["efi/boot/bootx64.efi"], true);
        assert!(signed.missing(Firmware::UefiSecureBoot).is_empty());
        let no_code = BootFacts {
            mbr_code: false,
            ..signed
        };
        assert!(no_code.missing(Firmware::Bios)[0].starts_with("no boot code"));
    }
}
