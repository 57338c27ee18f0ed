//! Booting a disk locally in QEMU on a throwaway overlay (the disk itself is never
//! written), with ttyd and SSH forwarded to free localhost ports, and probing what the
//! guest serves. The guest is not trusted: see [`probe`].

pub mod agent;
pub mod desktop;
pub mod firmware;
pub mod probe;
pub mod seed;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use anyhow::{Context, Result};

use crate::recipe::{DiskFormat, Firmware};
use crate::sys::exec::Cmd;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free localhost port")?;
    Ok(l.local_addr()?.port())
}

/// VM settings.
pub struct VmOptions {
    pub memory_mib: u32,
    pub cpus: u32,
    /// The guest's ttyd port (0: none).
    pub guest_ttyd_port: u16,
    /// The guest's noVNC port (0: none).
    pub guest_desktop_port: u16,
    /// Serial console on this terminal instead of a log file.
    pub console: bool,
    pub accel: crate::sys::accel::Effective,
    /// BIOS, or UEFI (with Secure Boot) from OVMF images.
    pub firmware: Firmware,
    /// Where the OVMF images are ([`firmware::OVMF_DIR`]).
    pub ovmf_dir: PathBuf,
    /// cloud-config user-data ([`seed::read_user_data`]) for a NoCloud seed disk.
    pub user_data: Option<String>,
}

/// A running VM; QEMU is killed and its overlay removed on drop.
pub struct Vm {
    child: Child,
    pub serial_log: PathBuf,
    pub ttyd_port: u16,
    /// The host port forwarded to the guest's noVNC port (0: not forwarded).
    pub desktop_port: u16,
    pub ssh_port: u16,
    /// QEMU's end of the guest agent channel ([`agent::CHANNEL`]), a Unix socket.
    pub agent_socket: PathBuf,
    /// Declared before the directory: removed before it, after QEMU is gone.
    _vars: Option<firmware::VarsCopy>,
    _dir: crate::io::scratch::ScratchDir,
    /// Under the system's temp dir: a Unix socket path must stay short.
    _socket_dir: tempfile::TempDir,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    /// The last `n` lines of the serial console (the guest's output: bounded read).
    pub fn serial_tail(&self, n: usize) -> String {
        let text = std::fs::File::open(&self.serial_log)
            .ok()
            .and_then(|f| {
                let len = f.metadata().ok()?.len();
                let mut f = f;
                std::io::Seek::seek(
                    &mut f,
                    std::io::SeekFrom::Start(len.saturating_sub(64 << 10)),
                )
                .ok()?;
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut buf).ok()?;
                Some(String::from_utf8_lossy(&buf).into_owned())
            })
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The exit status, once QEMU has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether the serial console shows `needle` in its last 64 KiB.
    pub fn serial_contains(&self, needle: &str) -> bool {
        self.serial_tail(usize::MAX).contains(needle)
    }
}

/// Boots `disk` (already checked with [`crate::sys::qemu_img::inspect_untrusted`]) on a
/// fresh overlay in `work`. The overlay names the disk's format explicitly, so QEMU
/// never probes it.
pub fn start(disk: &Path, format: DiskFormat, o: &VmOptions, work: &Path) -> Result<Vm> {
    let ovmf = firmware::Ovmf::for_firmware(o.firmware, &o.ovmf_dir);
    if let Some(ovmf) = &ovmf {
        ovmf.check_installed()?;
    }
    let dir = crate::io::scratch::ScratchDir::new_in(work, "vm")?;
    let vars = ovmf
        .as_ref()
        .map(|ovmf| ovmf.vars_copy(dir.path()))
        .transpose()?;
    let seed = o
        .user_data
        .as_deref()
        .map(|u| seed::make(dir.path(), u, "diskforge-run"))
        .transpose()?;
    let overlay = dir.path().join("overlay.qcow2");
    let disk =
        std::fs::canonicalize(disk).with_context(|| format!("resolving {}", disk.display()))?;
    crate::sys::qemu_img::create_overlay_cmd(&disk, format, &overlay).run()?;
    let socket_dir = tempfile::Builder::new()
        .prefix("diskforge-qga-")
        .tempdir()
        .context("creating a directory for the guest agent socket")?;
    let agent_socket = socket_dir.path().join("qga.sock");
    let ttyd_port = free_port()?;
    let ssh_port = free_port()?;
    let serial_log = dir.path().join("serial.log");
    let mut nic = format!("user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{ssh_port}-:22");
    if o.guest_ttyd_port != 0 {
        nic.push_str(&format!(
            ",hostfwd=tcp:127.0.0.1:{ttyd_port}-:{}",
            o.guest_ttyd_port
        ));
    }
    let desktop_port = if o.guest_desktop_port != 0 {
        let p = free_port()?;
        nic.push_str(&format!(
            ",hostfwd=tcp:127.0.0.1:{p}-:{}",
            o.guest_desktop_port
        ));
        p
    } else {
        0
    };
    let mut cmd = Cmd::new("qemu-system-x86_64", "booting the VM")
        .die_with_parent()
        .args(o.accel.qemu_args())
        .args([
            "-machine",
            firmware::Ovmf::machine(o.firmware),
            "-m",
            &o.memory_mib.to_string(),
            "-smp",
            &o.cpus.to_string(),
        ])
        .args(["-display", "none", "-no-user-config", "-nodefaults"]);
    if let (Some(ovmf), Some(vars)) = (&ovmf, &vars) {
        cmd = cmd.args(ovmf.qemu_args(vars));
    }
    cmd = cmd
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=qcow2,cache=unsafe",
            overlay.display()
        ))
        .args(["-nic", &nic]);
    if let Some(seed) = &seed {
        cmd = cmd.arg("-drive").arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            seed.display()
        ));
    }
    cmd = cmd
        .args(["-device", "virtio-rng-pci"])
        // The guest agent's channel, as KubeVirt gives every VM.
        .arg("-chardev")
        .arg(format!(
            "socket,id=qga0,path={},server=on,wait=off",
            agent_socket.display()
        ))
        .args(["-device", "virtio-serial-pci"])
        .args([
            "-device",
            &format!("virtserialport,chardev=qga0,name={}", agent::CHANNEL),
        ]);
    cmd = if o.console {
        cmd.args(["-serial", "mon:stdio"])
    } else {
        cmd.arg("-serial")
            .arg(format!("file:{}", serial_log.display()))
    };
    let (out, err) = if o.console {
        (Stdio::inherit(), Stdio::inherit())
    } else {
        (Stdio::null(), Stdio::inherit())
    };
    let child = cmd.spawn(out, err)?;
    Ok(Vm {
        child,
        serial_log,
        ttyd_port,
        desktop_port,
        ssh_port,
        agent_socket,
        _vars: vars,
        _dir: dir,
        _socket_dir: socket_dir,
    })
}
