//! qemu-img through the exec door: `info` parsed into types, overlays, resize,
//! convert (flatten) and check — and the one check every disk from an untrusted place
//! goes through before anything opens it ([`inspect_untrusted`]).

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::sys::exec::Cmd;

/// The disk formats a containerDisk holds.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    Deserialize,
    schemars::JsonSchema,
    Default,
)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

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
    /// Set (true) for an encrypted image.
    #[serde(default)]
    pub encrypted: Option<bool>,
    #[serde(default)]
    pub format_specific: Option<FormatSpecific>,
}

/// What `qemu-img check --output=json` found in a qcow2.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "kebab-case")]
pub struct CheckReport {
    /// Metadata that points to the wrong place: data would be lost or read wrongly.
    #[serde(default)]
    pub corruptions: u64,
    /// Clusters allocated but unused: harmless, space only.
    #[serde(default)]
    pub leaks: u64,
    /// Parts qemu-img could not check at all.
    #[serde(default)]
    pub check_errors: u64,
}

/// `format-specific` of `qemu-img info`: for qcow2, whether it has an external data file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct FormatSpecific {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl ImageInfo {
    pub fn has_backing_file(&self) -> bool {
        self.backing_filename.is_some() || self.full_backing_filename.is_some()
    }

    /// How the image is encrypted ("luks", "aes"), when it is: qemu-img says
    /// `encrypted: true` and names the scheme under `format-specific.data.encrypt`.
    pub fn encryption(&self) -> Option<String> {
        let scheme = self
            .format_specific
            .as_ref()
            .and_then(|f| f.data.get("encrypt"))
            .map(|e| {
                e.get("format")
                    .and_then(|v| v.as_str())
                    .unwrap_or("unknown scheme")
                    .to_string()
            });
        match (self.encrypted, scheme) {
            (_, Some(s)) => Some(s),
            (Some(true), None) => Some("unknown scheme".into()),
            _ => None,
        }
    }

    /// The external data file of a qcow2 image, if it names one.
    pub fn data_file(&self) -> Option<String> {
        self.format_specific
            .as_ref()
            .and_then(|f| f.data.get("data-file"))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    }
}

/// Smallest disk taken for a containerDisk: anything smaller holds no bootable system.
pub const MIN_DISK: u64 = 1 << 20;

/// Formats whose magic bytes are recognized and refused: they can reference other host
/// files (vmdk descriptors, extents) or are not what KubeVirt boots.
const FOREIGN_MAGIC: &[(&[u8], &str)] = &[
    (b"QFI\0", "qed"),
    (b"KDMV", "vmdk"),
    (b"# Disk DescriptorFile", "vmdk descriptor"),
    (b"conectix", "vpc/vhd"),
    (b"vhdxfile", "vhdx"),
    (b"<<< ", "vdi"),
    (b"LUKS\xba\xbe", "luks"),
    (b"Bochs Virtual HD Image", "bochs"),
    (b"#!/bin/sh\n#V2.0 Format", "cloop"),
    (b"WithoutFreeSpace", "parallels"),
    (b"WithouFreSpacExt", "parallels"),
];

/// Checks a disk that came from somewhere diskforge does not control (a layer, a
/// user's file) before anything opens it, and returns its info. It must be a regular
/// file (not a link or device) holding qcow2 or raw, read with that explicit format;
/// a qcow2 must have neither a backing file nor an external data file (either would let
/// the image read other host files); a raw disk must be a whole number of 512-byte
/// sectors; any disk at least [`MIN_DISK`].
pub fn inspect_untrusted(path: &Path) -> Result<ImageInfo> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.file_type().is_file() {
        bail!(
            "{} is not a regular file (a link, device or directory): refusing it as a disk",
            path.display()
        );
    }
    let info = inspect_as(path, None)?;
    // A raw disk's size is the file's (qemu-img rounds it up to a sector).
    let size = if info.format == DiskFormat::Raw.as_str() {
        meta.len()
    } else {
        info.virtual_size
    };
    if size < MIN_DISK {
        bail!(
            "{} is a {} image of {size} bytes: too small to be a VM disk",
            path.display(),
            info.format,
        );
    }
    if info.format == DiskFormat::Raw.as_str() && meta.len() % 512 != 0 {
        bail!(
            "{} is {} bytes, not a whole number of 512-byte sectors: not a raw disk",
            path.display(),
            meta.len()
        );
    }
    Ok(info)
}

/// The one check every disk from outside goes through before qemu-img opens it as an
/// image (a layer's disk, a user's file, a downloaded or local base): its first bytes
/// say qcow2 or raw (other formats are refused: several can name host files), and, when
/// given, the format `declared` for it; a qcow2 header naming a backing file or an
/// external data file is refused before qemu-img reads anything; then `qemu-img info`
/// with that explicit format, whose answer must agree.
fn inspect_as(path: &Path, declared: Option<DiskFormat>) -> Result<ImageInfo> {
    let mut head = Vec::with_capacity(512);
    let (file, _) = super::file::open_regular(path).context("refusing it as a disk")?;
    file.take(512)
        .read_to_end(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    let format =
        sniff(&head).with_context(|| format!("{} is not a usable disk", path.display()))?;
    if let Some(d) = declared {
        if d != format {
            bail!(
                "{} is {} but the recipe declares {}",
                path.display(),
                format.as_str(),
                d.as_str()
            );
        }
    }
    if format == DiskFormat::Qcow2 {
        check_qcow2_header(&head).with_context(|| format!("refusing {}", path.display()))?;
    }
    let info: ImageInfo = info_cmd(path)
        .arg("-f")
        .arg(format.as_str())
        .run_json()
        .with_context(|| {
            format!(
                "{} is not a valid {} image",
                path.display(),
                format.as_str()
            )
        })?;
    check_info(path, &info, format)?;
    if format == DiskFormat::Qcow2 {
        check_intact(path)?;
    }
    Ok(info)
}

/// `qemu-img check` of a qcow2, as JSON; exit codes 2 (corruptions) and 3 (leaks) are
/// findings, read from the report.
pub fn check_json_cmd(path: &Path) -> Cmd {
    Cmd::new("qemu-img", format!("checking {}", path.display()))
        .args(["check", "--output=json", "-U", "-f", "qcow2"])
        .arg(path)
        .ok_code(2)
        .ok_code(3)
}

/// Refuses a qcow2 whose metadata `qemu-img check` finds corrupt (a truncated or
/// damaged file: its tables point past its end) or cannot check. Leaked clusters only
/// cost space and are accepted.
pub fn check_intact(path: &Path) -> Result<CheckReport> {
    let report: CheckReport = check_json_cmd(path).run_json()?;
    if report.corruptions > 0 || report.check_errors > 0 {
        bail!(
            "{} is corrupt: qemu-img check found {} corruption(s) and {} error(s) in its qcow2 metadata (a truncated or damaged file); KubeVirt could not boot it",
            path.display(),
            report.corruptions,
            report.check_errors
        );
    }
    Ok(report)
}

/// The format of a disk from its first bytes: qcow2, a refused foreign format, or raw.
pub fn sniff(head: &[u8]) -> Result<DiskFormat> {
    if head.starts_with(b"QFI\xfb") {
        return Ok(DiskFormat::Qcow2);
    }
    if let Some((_, name)) = FOREIGN_MAGIC.iter().find(|(m, _)| head.starts_with(m)) {
        bail!("it is a {name} image: a containerDisk holds qcow2 or raw");
    }
    Ok(DiskFormat::Raw)
}

/// Refuses qcow2 headers naming a backing file or an external data file (incompatible
/// feature bit 2), read from the header itself before qemu-img opens anything.
fn check_qcow2_header(head: &[u8]) -> Result<()> {
    let be64 = |at: usize| -> Option<u64> {
        head.get(at..at + 8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    };
    let version = head
        .get(4..8)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
        .context("truncated qcow2 header")?;
    if be64(8).context("truncated qcow2 header")? != 0 {
        bail!("the qcow2 header names a backing file: a containerDisk must be standalone");
    }
    if version >= 3 && be64(72).context("truncated qcow2 header")? & (1 << 2) != 0 {
        bail!("the qcow2 image keeps its data in an external data file");
    }
    Ok(())
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

/// Checks that `path` (a base image, a built disk) is a standalone image in the declared
/// format, the way every disk from outside is checked ([`inspect_as`]).
pub fn check_standalone(path: &Path, format: DiskFormat) -> Result<ImageInfo> {
    inspect_as(path, Some(format))
}

/// Checks the info of `path`: the declared format, no backing file, no data file.
pub fn check_info(path: &Path, info: &ImageInfo, format: DiskFormat) -> Result<()> {
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
            "{} has a backing file ({}): it must be standalone",
            path.display(),
            info.backing_filename.as_deref().unwrap_or("?")
        );
    }
    if let Some(f) = info.data_file() {
        bail!(
            "{} keeps its data in an external file ({f}): refusing it",
            path.display()
        );
    }
    if let Some(scheme) = info.encryption() {
        bail!(
            "{} is encrypted ({scheme}): KubeVirt cannot boot an encrypted containerDisk, it has no key for it",
            path.display()
        );
    }
    Ok(())
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

/// A new empty qcow2 image of `bytes`.
pub fn create_cmd(path: &Path, bytes: u64) -> Cmd {
    Cmd::new("qemu-img", format!("creating {}", path.display()))
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(bytes.to_string())
}

/// The resize command as a plan shows it before the size is known.
pub fn resize_placeholder_cmd(path: &Path, size: &str) -> Cmd {
    Cmd::new("qemu-img", format!("resizing {}", path.display()))
        .args(["resize", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size)
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
        let info: ImageInfo = serde_json::from_str(include_str!(
            "../../tests/fixtures/qemu-img-info-overlay.json"
        ))
        .unwrap();
        assert_eq!(info.format, "qcow2");
        assert_eq!(info.virtual_size, 2 << 30);
        assert!(info.has_backing_file());
    }

    #[test]
    fn parses_captured_info_of_raw() {
        let info: ImageInfo =
            serde_json::from_str(include_str!("../../tests/fixtures/qemu-img-info-raw.json"))
                .unwrap();
        assert_eq!(info.format, "raw");
        assert!(!info.has_backing_file());
    }

    #[test]
    fn encrypted_images_are_refused_by_their_info() {
        let info: ImageInfo = serde_json::from_str(include_str!(
            "../../tests/fixtures/qemu-img-info-encrypted.json"
        ))
        .unwrap();
        assert_eq!(info.encryption().as_deref(), Some("luks"));
        let e = check_info(Path::new("disk.qcow2"), &info, DiskFormat::Qcow2).unwrap_err();
        assert!(format!("{e:#}").contains("encrypted (luks)"), "{e:#}");
        let plain: ImageInfo =
            serde_json::from_str(include_str!("../../tests/fixtures/qemu-img-info-raw.json"))
                .unwrap();
        assert_eq!(plain.encryption(), None);
    }

    #[test]
    fn check_reports_parse() {
        let r: CheckReport = serde_json::from_str(
            r#"{"image-end-offset": 21168128, "total-clusters": 1024, "corruptions": 322,
                "check-errors": 0, "allocated-clusters": 640, "filename": "a.qcow2", "format": "qcow2"}"#,
        )
        .unwrap();
        assert_eq!((r.corruptions, r.leaks, r.check_errors), (322, 0, 0));
    }

    #[test]
    fn sniffing_refuses_foreign_formats() {
        assert_eq!(sniff(b"QFI\xfb\0\0\0\x03").unwrap(), DiskFormat::Qcow2);
        assert_eq!(sniff(&[0u8; 512]).unwrap(), DiskFormat::Raw);
        assert!(sniff(b"# Disk DescriptorFile\nRW 8 FLAT \"/etc/shadow\" 0")
            .unwrap_err()
            .to_string()
            .contains("vmdk"));
        let mut h = vec![0u8; 104];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(check_qcow2_header(&h).is_ok());
        h[72..80].copy_from_slice(&4u64.to_be_bytes());
        assert!(check_qcow2_header(&h).is_err());
        h[72..80].copy_from_slice(&0u64.to_be_bytes());
        h[8..16].copy_from_slice(&0x200u64.to_be_bytes());
        assert!(check_qcow2_header(&h).is_err());
    }
}
