//! Choosing the accelerator for QEMU and the libguestfs appliance: KVM when it really
//! works, TCG otherwise.
//!
//! `/dev/kvm` existing is not enough: on some nested hosts QEMU fails at vCPU setup
//! ("failed to set MSR"), so `auto` starts a tiny VM with `-accel kvm` and keeps KVM only
//! if that VM is still running a moment later. The answer is computed once per process,
//! and a definite one (KVM works, or a kernel fails under it) is remembered until the
//! host reboots or its kernel, QEMU or `/dev/kvm` change ([`probe_kvm_remembered`]).

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
    // Recipes built side by side wait for the first probe instead of probing (and
    // warning) once each: one decision, one warning per command.
    static PROBING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_probe = PROBING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(chosen) = CHOSEN.get() {
        return Ok(*chosen);
    }
    let chosen = match requested {
        Accel::Tcg => Effective::Tcg,
        Accel::Kvm => match probe_kvm_remembered() {
            Ok(()) => Effective::Kvm,
            Err(e) => bail!("--accel kvm was requested but KVM does not work here: {e:#}"),
        },
        Accel::Auto => match probe_kvm_remembered() {
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

/// [`probe_kvm`], remembered for the rest of the host's boot: the probe boots a kernel,
/// which takes seconds that every build paid again, and its answer stays
/// the same while the boot, the kernel it boots, QEMU and `/dev/kvm` do. Only definite
/// answers are kept (KVM works; a kernel fails under it), never a timeout or an
/// interruption. Kept in `$XDG_RUNTIME_DIR` or `/run/diskforge` (both cleared at boot).
pub fn probe_kvm_remembered() -> Result<()> {
    let (Some(key), Some(file)) = (probe_key(), memo_file()) else {
        return probe_kvm();
    };
    if let Some(answer) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|text| memo_answer(&text, &key))
    {
        tracing::debug!("KVM probe answer remembered in {}", file.display());
        return answer.map_err(|why| anyhow::anyhow!("{why} (probed earlier since boot)"));
    }
    let result = probe_kvm();
    let answer = match &result {
        Ok(()) => Some("ok".to_string()),
        Err(e) if format!("{e:#}").starts_with(KERNEL_FAILS) => Some(format!("fail {e:#}")),
        Err(_) => None,
    };
    if let Some(answer) = answer {
        let tmp = file.with_extension(format!("{}.tmp", std::process::id()));
        let one_line = answer.lines().next().unwrap_or_default().to_string();
        let written = std::fs::write(&tmp, format!("{key}\n{one_line}\n"))
            .and_then(|_| std::fs::rename(&tmp, &file));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!("cannot remember the KVM probe in {}: {e}", file.display());
        }
    }
    result
}

/// The answer a memo holds for `key`: `None` when it is for something else.
fn memo_answer(text: &str, key: &str) -> Option<std::result::Result<(), String>> {
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    match lines.next()? {
        "ok" => Some(Ok(())),
        l => l.strip_prefix("fail ").map(|why| Err(why.to_string())),
    }
}

/// What the probe's answer depends on: this boot, `/dev/kvm`, the kernel it boots and
/// the QEMU it runs. `None` when one of them cannot be read (nothing is remembered).
fn probe_key() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let stamp = |p: &std::path::Path| -> Option<String> {
        let m = std::fs::metadata(p).ok()?;
        Some(format!(
            "{}:{}:{}:{}:{}",
            p.display(),
            m.dev(),
            m.ino(),
            m.size(),
            m.ctime()
        ))
    };
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let qemu = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("qemu-system-x86_64"))
            .find(|p| p.is_file())
    })?;
    let kvm = std::fs::metadata("/dev/kvm").ok()?;
    let kernel = host_kernel().map_or(Some("firmware".to_string()), |k| stamp(&k))?;
    Some(format!(
        "kvm-probe 1 boot={} kvm={}:{} kernel={kernel} qemu={}",
        boot.trim(),
        kvm.rdev(),
        kvm.ctime(),
        stamp(&qemu)?
    ))
}

/// Where the answer is kept: a directory cleared at boot, private to the user.
fn memo_file() -> Option<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => std::path::PathBuf::from(d),
        _ => {
            let d = std::path::PathBuf::from("/run/diskforge");
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .ok()?;
            d
        }
    };
    dir.is_dir().then(|| dir.join("diskforge-kvm-probe"))
}

/// How [`probe_kernel`]'s definite failure starts.
const KERNEL_FAILS: &str = "a guest kernel fails under KVM";

/// Checks that `/dev/kvm` can be opened and that QEMU can run a guest with it.
pub fn probe_kvm() -> Result<()> {
    let dev = std::path::Path::new("/dev/kvm");
    if !dev.exists() {
        bail!("/dev/kvm does not exist");
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        bail!("cannot open /dev/kvm: {e}");
    }
    match host_kernel() {
        Some(kernel) => probe_kernel(&kernel),
        None => probe_firmware(),
    }
}

/// The newest kernel in /boot (libguestfs needs one there too).
fn host_kernel() -> Option<std::path::PathBuf> {
    let mut kernels: Vec<std::path::PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels.pop()
}

/// How long the kernel probe may take: a working KVM reaches the kernel's panic (no
/// root filesystem) in a second or two.
const KERNEL_PROBE_LIMIT: Duration = Duration::from_secs(30);

/// Boots the host's kernel without a root filesystem: it must print its banner and
/// panic (QEMU then exits: `-no-reboot`). Some hosts run firmware under KVM but fail
/// as soon as the kernel runs 64-bit code ("KVM internal error ... emulation failure"),
/// and QEMU then stops the guest without exiting: a VM that never boots.
fn probe_kernel(kernel: &std::path::Path) -> Result<()> {
    use std::io::Read;
    let cmd = Cmd::new(
        "qemu-system-x86_64",
        "probing KVM by booting the host's kernel",
    )
    .die_with_parent()
    .args([
        "-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "256",
    ])
    .args(["-nodefaults", "-no-user-config", "-display", "none"])
    .args(["-no-reboot", "-monitor", "none", "-serial", "stdio"])
    .arg("-kernel")
    .arg(kernel)
    .args(["-append", "console=ttyS0 panic=-1 loglevel=4"]);
    let mut child = cmd.spawn(std::process::Stdio::piped(), std::process::Stdio::piped())?;
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let (err_tx, err_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let err_thread = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = err.read(&mut chunk) {
            if n == 0 || err_tx.send(chunk[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let started = std::time::Instant::now();
    let mut stderr = Vec::new();
    let verdict = loop {
        while let Ok(bytes) = err_rx.try_recv() {
            stderr.extend(bytes);
        }
        if String::from_utf8_lossy(&stderr).contains("KVM internal error") {
            break Err("KVM internal error");
        }
        if let Some(status) = child.try_wait()? {
            break Ok(status);
        }
        if started.elapsed() > KERNEL_PROBE_LIMIT || crate::sys::interrupt::signal().is_some() {
            break Err("no exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if verdict.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = out_thread.join().unwrap_or_default();
    let _ = err_thread.join();
    while let Ok(bytes) = err_rx.try_recv() {
        stderr.extend(bytes);
    }
    let said = String::from_utf8_lossy(&stderr);
    let said = said.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    match verdict {
        Err("KVM internal error") => bail!("{KERNEL_FAILS}: {said}"),
        Err(_) => bail!(
            "a guest kernel did not get to its first messages under KVM within {}s",
            KERNEL_PROBE_LIMIT.as_secs()
        ),
        Ok(_) if String::from_utf8_lossy(&stdout).contains("Linux version") => Ok(()),
        Ok(status) => bail!("a guest kernel under KVM exited ({status}) without booting: {said}"),
    }
}

/// Without a kernel to boot: SeaBIOS runs and searches for a boot device, which is
/// enough to exercise vCPU setup. A failing KVM makes QEMU exit within milliseconds.
fn probe_firmware() -> Result<()> {
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

#[cfg(test)]
mod memo_tests {
    use super::*;

    #[test]
    fn a_remembered_answer_counts_only_for_its_own_key() {
        let key = "kvm-probe 1 boot=b kvm=1:2 kernel=k qemu=q";
        assert_eq!(memo_answer(&format!("{key}\nok\n"), key), Some(Ok(())));
        assert_eq!(
            memo_answer(
                &format!("{key}\nfail {KERNEL_FAILS}: KVM internal error\n"),
                key
            ),
            Some(Err(format!("{KERNEL_FAILS}: KVM internal error")))
        );
        // Another boot, kernel or QEMU: probe again.
        assert_eq!(
            memo_answer(&format!("{key}\nok\n"), "kvm-probe 1 boot=c"),
            None
        );
        // Anything else is no answer.
        assert_eq!(memo_answer(&format!("{key}\n"), key), None);
        assert_eq!(memo_answer(&format!("{key}\nmaybe\n"), key), None);
        assert_eq!(memo_answer("", key), None);
    }
}
