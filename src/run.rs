//! `diskforge run`: boot an image or disk locally in QEMU on a copy-on-write overlay.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::{GlobalOpts, RunArgs};

pub fn cmd_run(_global: &GlobalOpts, _args: RunArgs) -> Result<ExitCode> {
    bail!("`run` is not implemented yet")
}
