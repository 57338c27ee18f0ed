//! `diskforge verify`: pull an image as a node would, read its layers without trusting
//! them, and check the containerDisk contract KubeVirt enforces — exactly one regular
//! file under /disk, owned by and readable for 107, a standalone qcow2 or raw disk —
//! plus the expected size; `--boot` then boots the disk on an overlay.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};

use super::out::outln;
use crate::cli::{GlobalOpts, VerifyArgs};
use crate::io::scratch::ScratchDir;
use crate::oci::read::LayoutImage;
use crate::oci::{ImageRef, Layout};
use crate::registry::{self, RegistryOptions};

/// The image breaks the containerDisk contract (exit code 4).
#[derive(Debug, thiserror::Error)]
#[error("{image} is not a valid containerDisk:\n{}", .problems.join("\n"))]
pub struct ContractViolation {
    pub image: String,
    pub problems: Vec<String>,
}

/// Opens any image reference as a layout image: registries are pulled (verified) into a
/// temp layout under `scratch`; the returned guard holds what must live as long.
pub fn open_any(
    r: &ImageRef,
    scratch: &Path,
    registry: &RegistryOptions,
) -> Result<(LayoutImage, Option<ScratchDir>)> {
    match r {
        ImageRef::Registry(rr) => {
            let t = ScratchDir::new_in(scratch, "pull")?;
            let layout = Layout::create(t.path())?;
            let arch = crate::oci::read::host_arch();
            crate::sys::rt::block_on(async {
                let src = registry::source::for_pull(rr, registry).await?;
                registry::pull::pull_image(&src.client, &src.image, arch, &layout, "pulled").await
            })?;
            Ok((LayoutImage::open(layout, Some("pulled"), arch)?, Some(t)))
        }
        _ => super::image::open_local(r, scratch),
    }
}

pub fn run(g: &GlobalOpts, args: VerifyArgs) -> Result<ExitCode> {
    let want_size = match &args.size {
        None => None,
        Some(s) => match crate::recipe::Size::parse(s) {
            Ok(crate::recipe::Size::Absolute(b)) => Some(b),
            _ => {
                return Err(super::UsageError(format!(
                    "--size {s:?} must be an absolute size such as 4G"
                ))
                .into())
            }
        },
    };
    let firmware = args
        .firmware
        .as_deref()
        .map(super::parse_firmware)
        .transpose()?;
    let scratch = super::scratch_root(g)?;
    let registry = super::registry_options(&args.registry, &[])?;
    let r = super::image_ref(&args.image)?;
    let (img, _holder) = open_any(&r, &scratch, &registry)?;
    let temp = ScratchDir::new_in(&scratch, "verify")?;
    let scan = crate::oci::read::scan_layers(&img, Some(temp.path()), super::expand_limit()?)?;
    let mut ok = Vec::new();
    let mut problems = scan.problems.clone();
    let files = scan.disk_files();
    if files.len() == 1 && files[0].kind == '-' {
        ok.push(format!("exactly one file under /disk: {}", files[0].path));
    } else {
        problems.push(format!(
            "/disk must hold exactly one regular file, it holds: {}",
            if files.is_empty() {
                "nothing".to_string()
            } else {
                files
                    .iter()
                    .map(|e| format!("{} ({})", e.path, e.kind))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
    }
    for e in &files {
        if e.uid == 107 && e.gid == 107 {
            ok.push(format!("{} owned by 107:107", e.path));
        } else {
            problems.push(format!(
                "{} is owned by {}:{}, not 107:107",
                e.path, e.uid, e.gid
            ));
        }
        let readable = (e.uid == 107 && e.mode & 0o400 != 0)
            || (e.gid == 107 && e.mode & 0o040 != 0)
            || e.mode & 0o004 != 0;
        if readable {
            ok.push(format!("{} readable by 107 (mode {:04o})", e.path, e.mode));
        } else {
            problems.push(format!(
                "{} (mode {:04o}) is not readable by uid 107",
                e.path, e.mode
            ));
        }
    }
    let mut boot = None;
    match &scan.extracted {
        Some(path) => match crate::sys::qemu_img::inspect_untrusted(path) {
            Ok(info) => {
                ok.push(format!(
                    "qemu-img: a standalone {} disk (no backing file, no data file)",
                    info.format
                ));
                if let Some(want) = want_size {
                    if info.virtual_size == want {
                        ok.push(format!(
                            "virtual size {}",
                            crate::progress::human_bytes(want)
                        ));
                    } else {
                        problems.push(format!(
                            "virtual size is {} bytes, expected {} ({want} bytes)",
                            info.virtual_size,
                            args.size.as_deref().unwrap_or_default()
                        ));
                    }
                }
                boot = Some((path.clone(), info));
            }
            Err(e) => problems.push(format!("the disk: {e:#}")),
        },
        None => problems.push("no disk file found under /disk".into()),
    }
    if let (Some(f), Some((path, info))) = (firmware, &boot) {
        let accel = crate::sys::accel::resolve(super::context(g, registry.clone())?.accel)?;
        let facts =
            crate::guest::boot::inspect(path, super::disk::format_of(info), accel, temp.path())?;
        let missing = facts.missing(f);
        if missing.is_empty() {
            ok.push(format!("boots with {f}: {}", facts.summary()));
        } else {
            problems.extend(
                missing
                    .into_iter()
                    .map(|m| format!("cannot boot with {f}: {m}")),
            );
        }
    }
    if let Some(k) = &args.key {
        let key = crate::provenance::PublicKey::load(k)?;
        let digest = img.manifest_desc.digest().to_string();
        let attached = super::image::attached(&r, &img, &registry, &digest, Some(&key))?;
        match attached.valid_signatures {
            Some(n) if n > 0 => ok.push(format!(
                "signed: {n} valid signature(s) of {digest} by key {}",
                key.fingerprint()
            )),
            _ => problems.push(format!(
                "no valid signature of {digest} by key {} ({} signature(s) attached)",
                key.fingerprint(),
                attached.signatures
            )),
        }
    }
    let mut report = VerifyReport {
        image: args.image.clone(),
        digest: img.manifest_desc.digest().to_string(),
        satisfied: problems.is_empty(),
        passed: ok,
        failed: problems,
        booted: None,
    };
    if !args.json {
        report.print_checks()?;
    }
    if !report.satisfied || !args.boot {
        return report.finish(args.json);
    }
    let booted = (|| -> Result<()> {
        let (path, info) = boot.context("no disk to boot")?;
        let accel = crate::sys::accel::resolve(super::context(g, registry)?.accel)?;
        let format = super::disk::format_of(&info);
        let mut vm = crate::vm::start(
            &path,
            format,
            &crate::vm::VmOptions {
                memory_mib: 1024,
                cpus: 2,
                guest_ttyd_port: 7681,
                guest_desktop_port: 0,
                console: false,
                accel,
                firmware: firmware
                    .or_else(|| super::image::labelled_firmware(&img.config))
                    .unwrap_or(crate::recipe::Firmware::Bios),
                ovmf_dir: crate::vm::firmware::OVMF_DIR.into(),
                user_data: None,
            },
            &scratch,
        )?;
        crate::vm::probe::wait_for_ttyd(
            &mut vm,
            None,
            std::time::Instant::now() + std::time::Duration::from_secs(900),
        )
    })();
    report.booted = Some(booted.is_ok());
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    }
    booted?;
    if !args.json {
        outln!("  ok    boots, and ttyd answers")?;
    }
    report.finish_quietly(args.json)
}

/// What `verify` found: the same value behind its lines and `--json`.
#[derive(Debug, serde::Serialize)]
pub struct VerifyReport {
    pub image: String,
    /// The platform manifest's digest.
    pub digest: String,
    /// Every check of the containerDisk contract (and `--key`) passed.
    pub satisfied: bool,
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    /// With `--boot`: whether it booted and ttyd answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booted: Option<bool>,
}

impl VerifyReport {
    fn print_checks(&self) -> Result<()> {
        for l in &self.passed {
            outln!("  ok    {l}")?;
        }
        for p in &self.failed {
            outln!("  FAIL  {p}")?;
        }
        Ok(())
    }

    /// Prints the report (JSON, or the closing line) and turns failures into the
    /// contract violation (exit 4).
    fn finish(self, json: bool) -> Result<ExitCode> {
        if json {
            outln!("{}", serde_json::to_string_pretty(&self)?)?;
        }
        self.finish_quietly(json)
    }

    fn finish_quietly(self, json: bool) -> Result<ExitCode> {
        if !self.satisfied {
            return Err(ContractViolation {
                image: self.image,
                problems: self.failed,
            }
            .into());
        }
        if !json {
            outln!("{}: containerDisk contract satisfied", self.image)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}
