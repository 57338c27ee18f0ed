//! `diskforge run`: boot an image, layout or disk locally on a throwaway overlay, print
//! where ttyd, the web desktop and SSH answer; `--check` proves it boots and serves
//! ttyd, and the desktop when the image has one (exit 4 when it does not).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::out::{out, outln};
use crate::cli::{GlobalOpts, RunArgs};
use crate::recipe::{DiskFormat, Firmware};
use crate::vm::{self, probe};

/// A disk ready to boot (checked), with whatever temp dir holds it.
pub struct BootDisk {
    pub path: PathBuf,
    pub format: DiskFormat,
    /// The firmware the image's label records (images only).
    pub labelled_firmware: Option<Firmware>,
    /// The image's label says it has the QEMU guest agent.
    pub labelled_guest_agent: bool,
    /// The guest port of the web desktop, from the image's label.
    pub labelled_desktop_port: Option<u16>,
    _temp: Option<crate::io::scratch::ScratchDir>,
}

/// Resolves an image reference or a disk file to a checked disk; images are unpacked
/// (only their disk file, under a fixed name) into a temp dir under `scratch`.
pub fn boot_disk(
    image: &str,
    g: &GlobalOpts,
    registry: &crate::registry::RegistryOptions,
) -> Result<BootDisk> {
    let is_ref = image.starts_with("oci:")
        || image.starts_with("oci-archive:")
        || image.starts_with("docker://");
    if !is_ref {
        let path = PathBuf::from(image);
        let info = crate::sys::qemu_img::inspect_untrusted(&path)?;
        return Ok(BootDisk {
            path,
            format: super::disk::format_of(&info),
            labelled_firmware: None,
            labelled_guest_agent: false,
            labelled_desktop_port: None,
            _temp: None,
        });
    }
    let scratch = super::scratch_root(g)?;
    let (img, holder) = super::verify::open_any(&super::image_ref(image)?, &scratch, registry)?;
    let temp = crate::io::scratch::ScratchDir::new_in(&scratch, "run")?;
    let scan = crate::oci::read::scan_layers(&img, Some(temp.path()), super::expand_limit()?)?;
    if let Some(p) = scan.problems.first() {
        anyhow::bail!("{image} is not a containerDisk: {p}");
    }
    let labelled_firmware = super::image::labelled_firmware(&img.config);
    let labelled_guest_agent = crate::oci::image::labels(&img.config)
        .get(crate::pipeline::publish::GUEST_AGENT_LABEL)
        .is_some_and(|v| v == "true");
    let labelled_desktop_port = crate::oci::image::labels(&img.config)
        .get(crate::pipeline::publish::DESKTOP_PORT_LABEL)
        .and_then(|v| v.parse::<u16>().ok())
        .filter(|p| *p != 0);
    drop(holder);
    let path = scan
        .extracted
        .with_context(|| format!("{image} holds no disk under /disk"))?;
    let info = crate::sys::qemu_img::inspect_untrusted(&path)?;
    Ok(BootDisk {
        path,
        format: super::disk::format_of(&info),
        labelled_firmware,
        labelled_guest_agent,
        labelled_desktop_port,
        _temp: Some(temp),
    })
}

fn pair(s: &str, what: &str) -> Result<(String, String)> {
    s.split_once(':')
        .map(|(u, p)| (u.to_string(), p.to_string()))
        .with_context(|| format!("{what} must be USER:PASSWORD"))
}

pub fn run(g: &GlobalOpts, args: RunArgs) -> Result<ExitCode> {
    let registry = super::registry_options(&args.registry, &[])?;
    let login = args
        .login
        .as_deref()
        .map(|l| pair(l, "--login"))
        .transpose()?;
    let ttyd_auth = args
        .ttyd_auth
        .as_deref()
        .map(|l| pair(l, "--ttyd-auth"))
        .transpose()?;
    for (_, p) in login.iter().chain(ttyd_auth.iter()) {
        crate::redact::register(p);
    }
    let wanted = args
        .firmware
        .as_deref()
        .map(super::parse_firmware)
        .transpose()?;
    let user_data = args
        .user_data
        .as_deref()
        .map(vm::seed::read_user_data)
        .transpose()?;
    let disk = boot_disk(&args.image, g, &registry)?;
    let firmware = wanted.or(disk.labelled_firmware).unwrap_or(Firmware::Bios);
    let desktop_port = args
        .desktop_port
        .or(disk.labelled_desktop_port)
        .unwrap_or(0);
    let accel = crate::sys::accel::resolve(super::context(g, registry)?.accel)?;
    let scratch = super::scratch_root(g)?;
    super::disk::check_boot_layout(&disk.path, disk.format, firmware, accel, &scratch)?;
    eprintln!("firmware: {firmware}");
    let mut machine = vm::start(
        &disk.path,
        disk.format,
        &vm::VmOptions {
            memory_mib: args.memory,
            cpus: args.cpus,
            guest_ttyd_port: args.ttyd_port,
            guest_desktop_port: desktop_port,
            console: args.console && !args.check,
            accel,
            firmware,
            ovmf_dir: vm::firmware::OVMF_DIR.into(),
            user_data: user_data.clone(),
        },
        &scratch,
    )?;
    if args.ttyd_port != 0 {
        eprintln!(
            "ttyd:  http://127.0.0.1:{}/  (open it in a browser)",
            machine.ttyd_port
        );
    }
    if machine.desktop_port != 0 {
        eprintln!(
            "desktop: {}  (noVNC; it asks for the desktop's VNC password)",
            vm::desktop::url(machine.desktop_port)
        );
    }
    eprintln!("ssh:   ssh -p {} USER@127.0.0.1", machine.ssh_port);
    if !args.check {
        if !args.console {
            eprintln!("serial console log: {}", machine.serial_log.display());
        }
        eprintln!("(the VM runs on a throwaway overlay; Ctrl-C stops it)");
        let status = loop {
            if let Some(s) = machine.exited() {
                break s;
            }
            if crate::sys::interrupt::interrupted() {
                drop(machine);
                crate::progress::say("stopped the VM and removed its overlay");
                return Ok(ExitCode::SUCCESS);
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        return Ok(if status.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let started = Instant::now();
    let opts = probe::CheckOptions {
        ttyd_port: args.ttyd_port,
        ttyd_auth,
        login,
        command: args.command.clone(),
        deadline: started + Duration::from_secs(args.timeout),
    };
    let agent = args.guest_agent || disk.labelled_guest_agent;
    let checked = probe::check(&mut machine, &opts).and_then(|report| {
        let report = if machine.desktop_port != 0 {
            format!(
                "{report}{}",
                vm::desktop::check(&mut machine, opts.deadline)?
            )
        } else {
            report
        };
        let report = if user_data.is_some() {
            format!(
                "{report}{}\n",
                probe::wait_for_cloud_init(&mut machine, opts.deadline)?
            )
        } else {
            report
        };
        if !agent {
            return Ok(format!(
                "{report}guest agent: not checked (the image does not say it has one; --guest-agent requires it)\n"
            ));
        }
        let info = vm::agent::check(&machine.agent_socket, opts.deadline)
            .map_err(|e| probe::BootCheckFailed(format!("{e:#}")))?;
        Ok(format!(
            "{report}guest agent: answers guest-ping; guest-get-osinfo: {info}\n"
        ))
    });
    match checked {
        Ok(report) => {
            out!("{report}")?;
            outln!(
                "check passed in {}",
                crate::progress::format_duration(started.elapsed())
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let tail = machine.serial_tail(40);
            Err(e).context(format!("--- serial console (last 40 lines) ---\n{tail}"))
        }
    }
}
