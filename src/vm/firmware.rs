//! The firmware of a local boot, set up as KubeVirt sets it up: SeaBIOS (QEMU's
//! default) for BIOS; OVMF from Debian's `ovmf` package for UEFI, with Secure Boot on a
//! q35 machine with SMM, the secure pflash and a variable store with Microsoft's keys
//! enrolled. The variable store is a per-run copy, removed with the VM.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::recipe::Firmware;

/// Where Debian's `ovmf` package installs its images.
pub const OVMF_DIR: &str = "/usr/share/OVMF";

/// The OVMF images for a firmware (none for BIOS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ovmf {
    /// The code image, attached read-only.
    pub code: PathBuf,
    /// The variable store template each run copies.
    pub vars_template: PathBuf,
    pub secure_boot: bool,
}

impl Ovmf {
    /// The images for `firmware` under `dir`: `OVMF_CODE_4M.fd` with an empty
    /// `OVMF_VARS_4M.fd`, or for Secure Boot `OVMF_CODE_4M.secboot.fd` with
    /// `OVMF_VARS_4M.ms.fd` (Microsoft's keys enrolled, Secure Boot on).
    pub fn for_firmware(firmware: Firmware, dir: &Path) -> Option<Ovmf> {
        let (code, vars) = match firmware {
            Firmware::Bios => return None,
            Firmware::Uefi => ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
            Firmware::UefiSecureBoot => ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd"),
        };
        Some(Ovmf {
            code: dir.join(code),
            vars_template: dir.join(vars),
            secure_boot: firmware == Firmware::UefiSecureBoot,
        })
    }

    /// Fails with "not installed" (exit 3, naming the `ovmf` package) when an image is
    /// missing.
    pub fn check_installed(&self) -> Result<()> {
        for p in [&self.code, &self.vars_template] {
            if !p.is_file() {
                return Err(crate::sys::exec::MissingTool {
                    program: p.display().to_string(),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Copies the variable store template into `dir` for one run.
    pub fn vars_copy(&self, dir: &Path) -> Result<VarsCopy> {
        let path = dir.join("OVMF_VARS.fd");
        std::fs::copy(&self.vars_template, &path).with_context(|| {
            format!(
                "copying the UEFI variable store {} for this run",
                self.vars_template.display()
            )
        })?;
        Ok(VarsCopy { path })
    }

    /// QEMU's arguments for this firmware with the run's variable store.
    pub fn qemu_args(&self, vars: &VarsCopy) -> Vec<String> {
        let mut a = Vec::new();
        if self.secure_boot {
            // Secure Boot needs SMM, and the pflash writable only from SMM, or the OS
            // could rewrite the keys (what KubeVirt's `features.smm` gives).
            a.extend(["-global", "driver=cfi.pflash01,property=secure,value=on"].map(String::from));
        }
        a.push("-drive".into());
        a.push(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            self.code.display()
        ));
        a.push("-drive".into());
        a.push(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.path.display()
        ));
        a
    }

    /// The `-machine` value.
    pub fn machine(firmware: Firmware) -> &'static str {
        if firmware == Firmware::UefiSecureBoot {
            "q35,smm=on"
        } else {
            "q35"
        }
    }
}

/// A per-run copy of the UEFI variable store (the guest writes boot entries into it);
/// removed on drop.
#[derive(Debug)]
pub struct VarsCopy {
    pub path: PathBuf,
}

impl Drop for VarsCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_firmware_gets_kubevirts_setup() {
        let d = Path::new("/o");
        assert_eq!(Ovmf::for_firmware(Firmware::Bios, d), None);
        let u = Ovmf::for_firmware(Firmware::Uefi, d).unwrap();
        assert_eq!(u.code, Path::new("/o/OVMF_CODE_4M.fd"));
        assert_eq!(u.vars_template, Path::new("/o/OVMF_VARS_4M.fd"));
        let sb = Ovmf::for_firmware(Firmware::UefiSecureBoot, d).unwrap();
        assert_eq!(sb.code, Path::new("/o/OVMF_CODE_4M.secboot.fd"));
        assert_eq!(sb.vars_template, Path::new("/o/OVMF_VARS_4M.ms.fd"));
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("OVMF_VARS_4M.ms.fd"), b"vars").unwrap();
        let sb = Ovmf::for_firmware(Firmware::UefiSecureBoot, t.path()).unwrap();
        let run = tempfile::tempdir().unwrap();
        let vars = sb.vars_copy(run.path()).unwrap();
        let args = sb.qemu_args(&vars).join(" ");
        assert!(
            args.contains("driver=cfi.pflash01,property=secure,value=on"),
            "{args}"
        );
        assert!(args.contains("unit=0,readonly=on,file="), "{args}");
        assert_eq!(Ovmf::machine(Firmware::UefiSecureBoot), "q35,smm=on");
        assert_eq!(Ovmf::machine(Firmware::Uefi), "q35");
        let path = vars.path.clone();
        assert_eq!(std::fs::read(&path).unwrap(), b"vars");
        drop(vars);
        assert!(!path.exists(), "the run's variable store outlived it");
        // A missing image is a missing package (exit 3), named.
        let e = Ovmf::for_firmware(Firmware::Uefi, t.path())
            .unwrap()
            .check_installed()
            .unwrap_err();
        assert!(e.to_string().contains("OVMF_CODE_4M.fd"), "{e}");
        assert!(e.to_string().contains("ovmf"), "{e}");
    }
}
