//! `diskforge build`: recipe → finished disk → packed and published image.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::{BuildArgs, GlobalOpts};

pub fn cmd_build(_global: &GlobalOpts, _args: BuildArgs) -> Result<ExitCode> {
    bail!("`build` is not implemented yet")
}
