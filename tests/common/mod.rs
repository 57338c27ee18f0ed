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
pub mod guest;
pub mod http;
pub mod registry;
