//! OCI packing: the containerDisk layer, config and manifest, layouts and archives.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::{GlobalOpts, IndexArgs, InspectArgs, PackArgs};

pub fn cmd_pack(_global: &GlobalOpts, _args: PackArgs) -> Result<ExitCode> {
    bail!("`pack` is not implemented yet")
}

pub fn cmd_inspect(_global: &GlobalOpts, _args: InspectArgs) -> Result<ExitCode> {
    bail!("`inspect` is not implemented yet")
}

pub fn cmd_index(_global: &GlobalOpts, _args: IndexArgs) -> Result<ExitCode> {
    bail!("`index` is not implemented yet")
}
