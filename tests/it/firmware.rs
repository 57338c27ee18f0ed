//! `run --firmware`: a disk without what UEFI needs is refused before QEMU starts, naming
//! what is missing (read from the disk in one read-only appliance launch); an unknown
//! firmware is a usage error. The Secure Boot boots themselves are tests/it/e2e_uefi.rs's.
use crate::common;

use std::path::Path;
use std::process::Output;

const TOOLS: &[&str] = &["qemu-img", "guestfish"];

fn run(disk: &Path, firmware: &str) -> Output {
    let mut c = common::diskforge();
    common::guestfs_env(&mut c);
    c.args(["--accel", "tcg", "run", "--check", "--ttyd-port", "0"])
        .args(["--firmware", firmware])
        .arg(disk)
        .output()
        .unwrap()
}

fn an_unknown_firmware_is_a_usage_error() {
    let t = tempfile::tempdir().unwrap();
    let out = run(&t.path().join("nothing.qcow2"), "efi");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--firmware \"efi\"") && err.contains("uefi-secure-boot"),
        "{err}"
    );
}

fn disks_without_what_uefi_needs_are_refused_before_qemu_starts() {
    let t = tempfile::tempdir().unwrap();
    let mbr = t.path().join("mbr.img");
    let empty_esp = t.path().join("esp.img");
    // A BIOS-only layout (MBR, one ext4 partition) and a GPT disk whose ESP is empty.
    common::guest::fish(
        &[
            "-N",
            &format!("{}=fs:ext4:64M", mbr.display()),
            "-N",
            &format!("{}=part:64M:gpt", empty_esp.display()),
        ],
        "part-set-gpt-type /dev/sdb 1 C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nmkfs vfat /dev/sdb1\n",
    );
    for (disk, firmware, want) in [
        (&mbr, "uefi", "no EFI system partition"),
        (
            &empty_esp,
            "uefi-secure-boot",
            "no EFI loader on the EFI system partition /dev/sda1",
        ),
    ] {
        let out = run(disk, firmware);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{err}");
        assert!(
            err.contains(&format!("cannot boot with {firmware}: {want}")),
            "{err}"
        );
        // Refused before QEMU: `run` prints where SSH answers only once the VM runs.
        assert!(!err.contains("ssh:"), "QEMU was started: {err}");
    }
}

crate::tests! {
    fn an_unknown_firmware_is_a_usage_error;
    fn disks_without_what_uefi_needs_are_refused_before_qemu_starts [TOOLS];
}
