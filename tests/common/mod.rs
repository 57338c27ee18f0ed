//! Shared helpers for integration tests: tool requirements, the built binary, scratch dirs.
//!
//! Each test file includes this with `mod common;` and uses what it needs.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// True when running under CI (`CI=true`): a missing tool then fails the test.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Returns false (after a loud message) when a tool is missing outside CI; panics in CI.
/// Use as `if !common::require(&["qemu-img"]) { return; }`.
pub fn require(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !diskforge::exec::have(t))
        .collect();
    if missing.is_empty() {
        return true;
    }
    if in_ci() {
        panic!(
            "required tools missing under CI=true: {} (run ci/setup-system.sh)",
            missing.join(", ")
        );
    }
    eprintln!(
        "\n*** SKIPPING: tools not installed: {} (run ci/setup-system.sh) ***\n",
        missing.join(", ")
    );
    false
}

/// The `diskforge` binary built for this test run.
pub fn diskforge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diskforge"));
    cmd.env_remove("RUST_LOG");
    cmd
}

/// libguestfs and QEMU settings for machines without a working KVM.
pub fn guestfs_env(cmd: &mut Command) -> &mut Command {
    cmd.env("LIBGUESTFS_BACKEND", "direct")
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
/// Sends `signal` (e.g. "INT") to `child` once `ready` holds (polled for up to
/// `ready_within`), then waits up to `exit_within` for it to exit. Returns its output.
pub fn interrupt_when(
    mut child: std::process::Child,
    signal: &str,
    ready: impl Fn() -> bool,
    ready_within: std::time::Duration,
    exit_within: std::time::Duration,
) -> std::process::Output {
    use wait_timeout::ChildExt;
    let start = std::time::Instant::now();
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "exited ({status}) before it was interrupted: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            start.elapsed() < ready_within,
            "never reached the point to interrupt"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
    let interrupted_at = std::time::Instant::now();
    if child.wait_timeout(exit_within).unwrap().is_none() {
        let _ = child.kill();
        panic!("still running {exit_within:?} after SIG{signal}");
    }
    eprintln!("exited {:?} after SIG{signal}", interrupted_at.elapsed());
    child.wait_with_output().unwrap()
}

/// Every path under `dir` whose name starts with `.tmp-` (a half-written file).
pub fn temp_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            out.push(p.clone());
        }
        if p.is_dir() {
            out.extend(temp_files(&p));
        }
    }
    out
}

pub mod guest;
pub mod http;
pub mod registry;
