//! One libguestfs appliance for a whole guest stage: `guestfish --listen` starts it
//! once, and every operation is a `guestfish --remote` call into it. That keeps host-side
//! decisions (which partition holds `/`, which filesystem it is) in Rust while paying
//! for exactly one appliance launch.
//!
//! Each remote command is sent with guestfish's `-` prefix so a failing command does not
//! stop the server; failures are detected from the `libguestfs: error:` lines instead.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};

use crate::accel::Effective;
use crate::exec::Cmd;

/// Appliance launches in this process (reported after a build).
static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// Appliance launches so far in this process.
pub fn launches() -> usize {
    LAUNCHES.load(Ordering::SeqCst)
}

/// A running guestfish server with its appliance. Dropping it shuts the appliance down.
pub struct Fish {
    pid: u32,
    accel: Effective,
    secrets: Vec<String>,
    closed: bool,
}

/// A drive to attach.
pub struct Drive<'a> {
    pub path: &'a Path,
    pub format: &'a str,
    pub readonly: bool,
}

impl Fish {
    /// Starts guestfish with the drives attached and launches the appliance.
    pub fn launch(drives: &[Drive<'_>], network: bool, accel: Effective) -> Result<Fish> {
        let mut cmd = Cmd::new("guestfish", "starting the libguestfs server").arg("--listen");
        if network {
            cmd = cmd.arg("--network");
        }
        for d in drives {
            cmd = cmd
                .arg(if d.readonly { "--ro" } else { "--rw" })
                .arg(format!("--format={}", d.format))
                .arg("-a")
                .arg(d.path);
        }
        let cmd = accel.libguestfs_env(cmd);
        // The server forks and keeps running with stderr open: read stdout (the PID line)
        // to its end and leave stderr to the terminal, or the read would never finish.
        let mut child = cmd.spawn(std::process::Stdio::piped(), std::process::Stdio::inherit())?;
        let mut text = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().expect("stdout is piped"), &mut text)
            .context("reading the guestfish server's PID")?;
        let status = child.wait().context("waiting for guestfish --listen")?;
        if !status.success() {
            bail!("guestfish --listen failed ({status}): {}", text.trim());
        }
        let pid = text
            .split(|c: char| c == ';' || c.is_whitespace())
            .find_map(|w| w.strip_prefix("GUESTFISH_PID="))
            .and_then(|p| p.parse::<u32>().ok())
            .with_context(|| format!("guestfish --listen printed no GUESTFISH_PID: {text:?}"))?;
        let fish = Fish {
            pid,
            accel,
            secrets: Vec::new(),
            closed: false,
        };
        LAUNCHES.fetch_add(1, Ordering::SeqCst);
        crate::progress::event("appliance", serde_json::json!({"launch": launches()}));
        fish.call(&["run"])
            .context("launching the libguestfs appliance")?;
        Ok(fish)
    }

    /// Values to redact from errors of later calls.
    pub fn add_secret(&mut self, s: &str) {
        if !s.is_empty() {
            self.secrets.push(s.to_string());
        }
    }

    fn remote(&self, description: String) -> Cmd {
        let mut c = Cmd::new("guestfish", description).arg(format!("--remote={}", self.pid));
        for s in &self.secrets {
            c = c.secret(s.clone());
        }
        self.accel.libguestfs_env(c)
    }

    /// Runs one guestfish command in the appliance and returns its output.
    pub fn call(&self, words: &[&str]) -> Result<String> {
        let (name, args) = words.split_first().context("empty guestfish command")?;
        let cmd = self
            .remote(format!("guestfish {name}"))
            .arg("--")
            .arg(format!("-{name}"))
            .args(args);
        let out = cmd.run()?;
        let err = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("error:") || l.contains("unknown command"))
            .collect();
        if !errors.is_empty() {
            bail!(
                "guestfish {name} failed: {}",
                crate::exec::redact(&errors.join("\n"), &self.secrets)
            );
        }
        Ok(out.stdout_str())
    }

    /// Like [`Fish::call`], for commands whose failure is an answer ("no such partition").
    pub fn try_call(&self, words: &[&str]) -> Option<String> {
        self.call(words).ok()
    }

    /// Shuts the appliance down cleanly (flushing every write to the disk).
    pub fn close(mut self) -> Result<()> {
        // On failure `self` is dropped unclosed, so Drop still stops the server.
        self.call(&["shutdown"])?;
        self.closed = true;
        let _ = self
            .remote("stopping the libguestfs server".into())
            .arg("--")
            .arg("exit")
            .cleanup()
            .run();
        Ok(())
    }
}

impl Drop for Fish {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        if crate::interrupt::interrupted() {
            // The server may be busy with a long command (a package install): asking it to
            // exit would wait for that. Stop the appliance and the server directly.
            crate::interrupt::kill_tree(self.pid, std::time::Duration::from_secs(5));
            return;
        }
        let stopped = self
            .remote("stopping the libguestfs server".into())
            .arg("--")
            .arg("exit")
            .timeout(std::time::Duration::from_secs(30))
            .cleanup()
            .run();
        if stopped.is_err() {
            crate::interrupt::kill_tree(self.pid, std::time::Duration::from_secs(5));
        }
    }
}

/// Parses guestfish's `key: value` record output.
pub fn record(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}
