//! `diskforge plan`: the ordered steps of a build with their exact command lines.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::{GlobalOpts, PlanArgs};

pub fn cmd_plan(_global: &GlobalOpts, _args: PlanArgs) -> Result<ExitCode> {
    bail!("`plan` is not implemented yet")
}
