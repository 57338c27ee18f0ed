//! qemu-img through the exec door: `info` parsed into types, overlays, resize,
//! convert (flatten) and check.

use std::path::Path;

use anyhow::{bail, Result};
use serde::Deserialize;

use crate::exec::Cmd;
use crate::recipe::DiskFormat;

/// The fields of `qemu-img info --output=json` diskforge relies on.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    pub format: String,
    pub virtual_size: u64,
    #[serde(default)]
    pub actual_size: Option<u64>,
    #[serde(default)]
    pub backing_filename: Option<String>,
    #[serde(default)]
    pub full_backing_filename: Option<String>,
    #[serde(default)]
    pub dirty_flag: Option<bool>,
}

impl ImageInfo {
    pub fn has_backing_file(&self) -> bool {
        self.backing_filename.is_some() || self.full_backing_filename.is_some()
    }
}

pub fn info_cmd(path: &Path) -> Cmd {
    Cmd::new(
        "qemu-img",
        format!("reading image info of {}", path.display()),
    )
    .args(["info", "--output=json", "-U"])
    .arg(path)
}

/// `qemu-img info` of one file (its own layer, not the chain).
pub fn info(path: &Path) -> Result<ImageInfo> {
    info_cmd(path).run_json()
}

/// Checks that `path` is a standalone image in the declared format.
pub fn check_standalone(path: &Path, format: DiskFormat) -> Result<ImageInfo> {
    let info = info(path)?;
    if info.format != format.as_str() {
        bail!(
            "{} is {} but the recipe declares {}",
            path.display(),
            info.format,
            format.as_str()
        );
    }
    if info.has_backing_file() {
        bail!(
            "{} has a backing file ({}); a base image must be standalone",
            path.display(),
            info.backing_filename.as_deref().unwrap_or("?")
        );
    }
    Ok(info)
}

/// A qcow2 overlay backed by `backing` (which is only ever read).
pub fn create_overlay_cmd(backing: &Path, backing_format: DiskFormat, overlay: &Path) -> Cmd {
    Cmd::new(
        "qemu-img",
        format!(
            "creating overlay {} over {}",
            overlay.display(),
            backing.display()
        ),
    )
    .args([
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        backing_format.as_str(),
        "-b",
    ])
    .arg(backing)
    .arg(overlay)
}

pub fn resize_cmd(path: &Path, bytes: u64) -> Cmd {
    Cmd::new(
        "qemu-img",
        format!("resizing {} to {bytes} bytes", path.display()),
    )
    .args(["resize", "-q", "-f", "qcow2"])
    .arg(path)
    .arg(bytes.to_string())
}

/// Flattens `src` (and its backing chain) into one standalone image.
pub fn convert_cmd(src: &Path, dst: &Path, format: DiskFormat, compress: bool) -> Cmd {
    let mut cmd = Cmd::new(
        "qemu-img",
        format!("flattening {} into {}", src.display(), dst.display()),
    )
    .args(["convert", "-O", format.as_str()]);
    if compress && format == DiskFormat::Qcow2 {
        cmd = cmd.arg("-c");
    }
    cmd.arg(src).arg(dst)
}

pub fn check_cmd(path: &Path) -> Cmd {
    Cmd::new("qemu-img", format!("checking {}", path.display()))
        .args(["check", "-q"])
        .arg(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_captured_info_with_backing_file() {
        let info: ImageInfo =
            serde_json::from_str(include_str!("../tests/fixtures/qemu-img-info-overlay.json"))
                .unwrap();
        assert_eq!(info.format, "qcow2");
        assert_eq!(info.virtual_size, 2 << 30);
        assert!(info.has_backing_file());
    }

    #[test]
    fn parses_captured_info_of_raw() {
        let info: ImageInfo =
            serde_json::from_str(include_str!("../tests/fixtures/qemu-img-info-raw.json")).unwrap();
        assert_eq!(info.format, "raw");
        assert!(!info.has_backing_file());
    }
}
