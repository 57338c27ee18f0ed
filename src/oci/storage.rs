//! `containers-storage:NAME[:TAG]`: the local image store podman and CRI-O read,
//! written through skopeo (which follows `CONTAINERS_STORAGE_CONF` / `storage.conf` the
//! way podman does). diskforge never writes the store's files itself.

use std::path::Path;

use anyhow::Result;

use crate::sys::exec::Cmd;

/// Copies the image `tag` of the OCI layout at `layout` into the store as `name`.
pub fn write(layout: &Path, tag: Option<&str>, name: &str) -> Result<()> {
    let from = match tag {
        Some(t) => format!("oci:{}:{t}", layout.display()),
        None => format!("oci:{}", layout.display()),
    };
    Cmd::new(
        "skopeo",
        format!("copy the image into containers-storage:{name}"),
    )
    .args([
        "copy",
        "--quiet",
        &from,
        &format!("containers-storage:{name}"),
    ])
    .run()?;
    Ok(())
}
