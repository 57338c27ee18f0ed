//! `diskforge verify`: pull an image as a node would, unpack its layers with numeric
//! ownership, and check the containerDisk contract KubeVirt enforces; `--boot` then
//! boots the disk on an overlay, as virt-launcher does.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::{GlobalOpts, VerifyArgs};
use crate::oci::ImageRef;

/// The image breaks the containerDisk contract (exit code 4).
#[derive(Debug, thiserror::Error)]
#[error("{image} is not a valid containerDisk:\n{}", .problems.join("\n"))]
pub struct ContractViolation {
    pub image: String,
    pub problems: Vec<String>,
}

pub fn cmd_verify(global: &GlobalOpts, args: VerifyArgs) -> Result<ExitCode> {
    let work = global.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let r = ImageRef::parse(&args.image)?;
    let reg = crate::registry::RegistryOptions {
        tls_verify: args.tls_verify,
        ..Default::default()
    };
    let img = crate::oci::read::open_image(&r, &reg, &work)?;
    let temp = tempfile::Builder::new()
        .prefix("diskforge-verify-")
        .tempdir_in(&work)
        .context("creating a temp dir to unpack the image")?;
    let (entries, disk) = crate::oci::read::scan_layers(&img, Some(temp.path()))?;
    let mut ok = Vec::new();
    let mut problems = Vec::new();
    let files: Vec<_> = entries
        .iter()
        .filter(|e| e.path.starts_with("disk/") && e.kind != 'd')
        .collect();
    if files.len() == 1 && files[0].kind == '-' {
        ok.push(format!("exactly one file under /disk: {}", files[0].path));
    } else {
        problems.push(format!(
            "/disk must hold exactly one regular file, it holds: {}",
            files
                .iter()
                .map(|e| format!("{} ({})", e.path, e.kind))
                .collect::<Vec<_>>()
                .join(", ")
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
    if let Some((path, _)) = &disk {
        let info = crate::qemu_img::info(path)?;
        if info.format == "qcow2" || info.format == "raw" {
            ok.push(format!("qemu-img: {} disk", info.format));
        } else {
            problems.push(format!(
                "qemu-img says the disk is {}, not qcow2 or raw",
                info.format
            ));
        }
        if info.has_backing_file() {
            problems.push(format!(
                "the disk has a backing file ({}): it must be standalone",
                info.backing_filename.clone().unwrap_or_default()
            ));
        } else {
            ok.push("no backing file".into());
        }
        if let Some(want) = &args.size {
            let want_bytes = match crate::recipe::Size::parse(want).map_err(anyhow::Error::msg)? {
                crate::recipe::Size::Absolute(b) => b,
                crate::recipe::Size::Relative(_) => {
                    anyhow::bail!("--size must be absolute, like 4G")
                }
            };
            if info.virtual_size == want_bytes {
                ok.push(format!(
                    "virtual size {}",
                    crate::progress::human_bytes(info.virtual_size)
                ));
            } else {
                problems.push(format!(
                    "virtual size is {} bytes, expected {want} ({want_bytes} bytes)",
                    info.virtual_size
                ));
            }
        }
    } else {
        problems.push("no disk file found under /disk".into());
    }
    for l in &ok {
        println!("  ok    {l}");
    }
    for p in &problems {
        println!("  FAIL  {p}");
    }
    if !problems.is_empty() {
        return Err(ContractViolation {
            image: args.image.clone(),
            problems,
        }
        .into());
    }
    if args.boot {
        let (path, header) = disk.context("no disk to boot")?;
        let accel = crate::accel::resolve(global.accel)?;
        let boot = crate::run::BootDisk::from_file(path, header.format);
        let mut vm = crate::run::start_vm(
            &boot,
            &crate::run::VmOptions {
                memory_mib: 1024,
                cpus: 2,
                guest_ttyd_port: 7681,
                console: false,
                accel,
            },
            &work,
        )?;
        crate::run::wait_for_ttyd(
            &mut vm,
            std::time::Instant::now() + std::time::Duration::from_secs(900),
        )?;
        println!("  ok    boots, and ttyd answers");
    }
    println!("{}: containerDisk contract satisfied", args.image);
    Ok(ExitCode::SUCCESS)
}
