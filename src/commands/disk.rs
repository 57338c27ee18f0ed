//! What `pack`, `run` and `verify` ask of a disk file before using it: its format as a
//! recipe names it, and whether it holds what a firmware needs to boot.

use anyhow::Result;

use crate::recipe::{DiskFormat, Firmware};

/// The format qemu-img found, as a recipe names it.
pub fn format_of(info: &crate::sys::qemu_img::ImageInfo) -> DiskFormat {
    if info.format == "qcow2" {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    }
}

/// Refuses (exit 4) a disk that lacks what `firmware` needs to boot, before QEMU
/// starts: UEFI needs an EFI system partition with a loader, Secure Boot a shim.
pub fn check_boot_layout(
    disk: &std::path::Path,
    format: DiskFormat,
    firmware: Firmware,
    accel: crate::sys::accel::Effective,
    scratch: &std::path::Path,
) -> Result<()> {
    if !firmware.is_uefi() {
        return Ok(());
    }
    let work = crate::io::scratch::ScratchDir::new_in(scratch, "boot")?;
    let facts = crate::guest::boot::inspect(disk, format, accel, work.path())?;
    let missing = facts.missing(firmware);
    if missing.is_empty() {
        return Ok(());
    }
    Err(crate::vm::probe::BootCheckFailed(format!(
        "{} cannot boot with {firmware}: {} (found: {})",
        disk.display(),
        missing.join("; "),
        facts.summary()
    ))
    .into())
}
