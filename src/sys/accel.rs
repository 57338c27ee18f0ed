//! Choosing the accelerator for QEMU and the libguestfs appliance: KVM when it really
//! works, TCG otherwise.
//!
//! `/dev/kvm` existing is not enough: on some nested hosts QEMU fails at vCPU setup
//! ("failed to set MSR"), so `auto` starts a tiny VM with `-accel kvm` and keeps KVM only
//! if that VM is still running a moment later. The answer is computed once per process.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Result};

/// The accelerator asked for (`--accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// KVM when it works, TCG (with a warning) otherwise.
    #[default]
    Auto,
    Kvm,
    Tcg,
}
use crate::sys::exec::Cmd;

/// The accelerator in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effective {
    Kvm,
    Tcg,
}

impl Effective {
    pub fn as_str(self) -> &'static str {
        match self {
            Effective::Kvm => "kvm",
            Effective::Tcg => "tcg",
        }
    }

    /// QEMU arguments selecting this accelerator and a matching CPU model.
    pub fn qemu_args(self) -> Vec<&'static str> {
        match self {
            Effective::Kvm => vec!["-accel", "kvm", "-cpu", "host"],
            Effective::Tcg => vec!["-accel", "tcg,thread=multi", "-cpu", "max"],
        }
    }

    /// Sets the libguestfs environment for this accelerator on a command.
    pub fn libguestfs_env(self, cmd: Cmd) -> Cmd {
        let cmd = cmd.env("LIBGUESTFS_BACKEND", "direct");
        match self {
            Effective::Kvm => cmd,
            Effective::Tcg => cmd.env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg"),
        }
    }
}

static CHOSEN: OnceLock<Effective> = OnceLock::new();

/// Resolves `--accel` (or `DISKFORGE_ACCEL`) to the accelerator to use. `auto` probes KVM
/// once and warns once when it falls back to TCG; `kvm` fails if KVM does not work.
pub fn resolve(requested: Accel) -> Result<Effective> {
    if let Some(chosen) = CHOSEN.get() {
        return Ok(*chosen);
    }
    let chosen = match requested {
        Accel::Tcg => Effective::Tcg,
        Accel::Kvm => match probe_kvm() {
            Ok(()) => Effective::Kvm,
            Err(e) => bail!("--accel kvm was requested but KVM does not work here: {e:#}"),
        },
        Accel::Auto => match probe_kvm() {
            Ok(()) => Effective::Kvm,
            Err(e) => {
                tracing::warn!(
                    "KVM is not usable ({}); falling back to TCG emulation, which is much slower",
                    first_line(&format!("{e:#}"))
                );
                crate::progress::event(
                    "accel",
                    serde_json::json!({"accel": "tcg", "reason": format!("{e:#}")}),
                );
                Effective::Tcg
            }
        },
    };
    Ok(*CHOSEN.get_or_init(|| chosen))
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s)
}

/// Checks that `/dev/kvm` can be opened and that QEMU can run a vCPU with it.
pub fn probe_kvm() -> Result<()> {
    let dev = std::path::Path::new("/dev/kvm");
    if !dev.exists() {
        bail!("/dev/kvm does not exist");
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        bail!("cannot open /dev/kvm: {e}");
    }
    // No disk and no network: SeaBIOS runs and searches for a boot device, which is
    // enough to exercise vCPU setup. A failing KVM makes QEMU exit within milliseconds.
    Cmd::new("qemu-system-x86_64", "probing KVM with a tiny VM")
        .die_with_parent()
        .args(["-accel", "kvm", "-cpu", "host", "-machine", "q35"])
        .args([
            "-m",
            "64",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .args(["-serial", "null", "-monitor", "none"])
        .stays_up(Duration::from_secs(3))
}
