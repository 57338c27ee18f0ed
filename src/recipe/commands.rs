//! `diskforge validate`, `schema` and `base list`.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::{BaseCommand, GlobalOpts, ValidateArgs};

pub fn cmd_validate(_global: &GlobalOpts, _args: ValidateArgs) -> Result<ExitCode> {
    bail!("`validate` is not implemented yet")
}

pub fn cmd_schema(_global: &GlobalOpts) -> Result<ExitCode> {
    bail!("`schema` is not implemented yet")
}

pub fn cmd_base(_global: &GlobalOpts, _cmd: BaseCommand) -> Result<ExitCode> {
    bail!("`base list` is not implemented yet")
}
