//! `diskforge verify`: check the containerDisk contract KubeVirt enforces.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::{GlobalOpts, VerifyArgs};

pub fn cmd_verify(_global: &GlobalOpts, _args: VerifyArgs) -> Result<ExitCode> {
    bail!("`verify` is not implemented yet")
}
