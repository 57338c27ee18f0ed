//! Packing a finished disk and sending it to every output of a build.

use std::path::Path;

use anyhow::{bail, Result};

use crate::base::CachedBase;
use crate::cli::{GlobalOpts, OutputOpts};
use crate::recipe::LoadedRecipe;

/// Packs `disk` (the finished, standalone disk of `loaded`) and writes it to every
/// destination of `outputs` (or the recipe's default `oci:out/NAME`).
pub fn publish(
    _global: &GlobalOpts,
    _loaded: &LoadedRecipe,
    _base: &CachedBase,
    _disk: &Path,
    _outputs: &OutputOpts,
) -> Result<()> {
    bail!("packing the disk into an OCI image is not implemented yet (use --disk-only FILE)")
}
