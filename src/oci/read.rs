//! Reading images back: opening any reference as a layout, streaming a layer, and
//! finding the disk inside it.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::dest::ImageRef;
use super::layout::{Descriptor, Layout};

/// An image opened for reading, with the temp dir that holds it when it had to be
/// unpacked or pulled.
pub struct OpenedImage {
    pub layout: Layout,
    pub manifest_desc: Descriptor,
    pub manifest: Value,
    pub config: Value,
    _temp: Option<tempfile::TempDir>,
}

/// Opens `oci:`, `oci-archive:` or `docker://` (pulled into a temp layout under `work`).
pub fn open_image(
    r: &ImageRef,
    reg: &crate::registry::RegistryOptions,
    work: &Path,
) -> Result<OpenedImage> {
    let (layout, tag, temp) = match r {
        ImageRef::Layout { dir, tag } => (Layout::open(dir)?, tag.clone(), None),
        ImageRef::Archive { file, tag } => {
            let t = tempfile::Builder::new()
                .prefix("diskforge-archive-")
                .tempdir_in(work)
                .context("creating a temp dir for the archive")?;
            let l = super::pack::extract_archive(file, t.path())?;
            (l, tag.clone(), Some(t))
        }
        ImageRef::Registry { reference } => {
            let t = tempfile::Builder::new()
                .prefix("diskforge-pull-")
                .tempdir_in(work)
                .context("creating a temp dir for the pull")?;
            let l = Layout::create(t.path())?;
            crate::registry::pull_to_layout(reference, t.path(), "pulled", reg)?;
            (l, Some("pulled".to_string()), Some(t))
        }
    };
    let manifest_desc = layout.resolve(tag.as_deref())?;
    let mut manifest: Value = serde_json::from_slice(&layout.read_blob(&manifest_desc.digest)?)
        .context("parsing the manifest")?;
    let mut manifest_desc = manifest_desc;
    if manifest["manifests"].is_array() {
        // An index: take the entry for this machine's architecture.
        let arch = host_arch();
        let entry = manifest["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["platform"]["architecture"].as_str() == Some(arch))
            .with_context(|| format!("the image index has no {arch} image"))?
            .clone();
        manifest_desc = Descriptor {
            media_type: entry["mediaType"].as_str().unwrap_or_default().into(),
            digest: entry["digest"]
                .as_str()
                .context("index entry without digest")?
                .into(),
            size: entry["size"].as_u64().unwrap_or_default(),
        };
        manifest = serde_json::from_slice(&layout.read_blob(&manifest_desc.digest)?)
            .context("parsing the manifest")?;
    }
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .context("manifest without config")?;
    let config: Value = serde_json::from_slice(&layout.read_blob(config_digest)?)
        .context("parsing the image config")?;
    Ok(OpenedImage {
        layout,
        manifest_desc,
        manifest,
        config,
        _temp: temp,
    })
}

pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

/// A decompressing reader for a layer blob of the given media type.
pub fn layer_reader(path: &Path, media_type: &str) -> Result<Box<dyn Read>> {
    let f =
        std::fs::File::open(path).with_context(|| format!("opening layer {}", path.display()))?;
    let f = std::io::BufReader::with_capacity(1 << 20, f);
    Ok(
        if media_type.ends_with("+gzip") || media_type.ends_with(".gzip") {
            Box::new(flate2::read::MultiGzDecoder::new(f))
        } else if media_type.ends_with("+zstd") {
            Box::new(zstd::stream::read::Decoder::with_buffer(f).context("starting zstd decoder")?)
        } else if media_type.ends_with(".tar") || media_type.ends_with("diff.tar") {
            Box::new(f)
        } else {
            bail!("unsupported layer media type {media_type}")
        },
    )
}

/// One entry of a layer, as a runtime would see it.
#[derive(Debug, Clone)]
pub struct EntryInfo {
    pub path: String,
    pub kind: char,
    pub uid: u64,
    pub gid: u64,
    pub mode: u32,
    pub size: u64,
}

/// Format and virtual size of a disk, read from its first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskHeader {
    pub format: &'static str,
    pub virtual_size: u64,
}

/// Reads the qcow2 header (magic `QFI\xfb`, virtual size at offset 24); anything else is
/// taken as raw with the file's size.
pub fn disk_header(first: &[u8], file_size: u64) -> DiskHeader {
    if first.len() >= 32 && first[..4] == [b'Q', b'F', b'I', 0xfb] {
        let mut b = [0u8; 8];
        b.copy_from_slice(&first[24..32]);
        DiskHeader {
            format: "qcow2",
            virtual_size: u64::from_be_bytes(b),
        }
    } else {
        DiskHeader {
            format: "raw",
            virtual_size: file_size,
        }
    }
}

/// The disk file found in a layer: where it is (extracted path, or its path in the
/// layer) and its header.
pub type FoundDisk = (PathBuf, DiskHeader);

/// Walks the layers of an image; for each entry calls `visit`. The disk file's content is
/// written to `extract_to/NAME` when given, else only its first 512 bytes are read.
/// Returns every entry and the header of the first regular file under `disk/`.
pub fn scan_layers(
    img: &OpenedImage,
    extract_to: Option<&Path>,
) -> Result<(Vec<EntryInfo>, Option<FoundDisk>)> {
    let mut entries = Vec::new();
    let mut disk = None;
    for l in img.manifest["layers"].as_array().into_iter().flatten() {
        let digest = l["digest"].as_str().context("layer without digest")?;
        let media = l["mediaType"].as_str().unwrap_or_default();
        let reader = layer_reader(&img.layout.blob_path(digest)?, media)?;
        let mut a = tar::Archive::new(reader);
        for e in a.entries().context("reading the layer tar")? {
            let mut e = e.context("reading the layer tar")?;
            let h = e.header().clone();
            let path = e
                .path()?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            let kind = match h.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => '-',
                tar::EntryType::Directory => 'd',
                tar::EntryType::Symlink => 'l',
                tar::EntryType::Link => 'h',
                tar::EntryType::GNUSparse => 'S',
                _ => '?',
            };
            let info = EntryInfo {
                path: path.clone(),
                kind,
                uid: h.uid().unwrap_or(u64::MAX),
                gid: h.gid().unwrap_or(u64::MAX),
                mode: h.mode().unwrap_or(0),
                size: h.size().unwrap_or(0),
            };
            if kind == '-' && path.starts_with("disk/") && disk.is_none() {
                let name = path.trim_start_matches("disk/").to_string();
                match extract_to {
                    Some(dir) => {
                        let dest = dir.join(&name);
                        let mut out = std::fs::File::create(&dest)
                            .with_context(|| format!("creating {}", dest.display()))?;
                        let mut first = vec![0u8; 512];
                        let n = read_up_to(&mut e, &mut first)?;
                        std::io::Write::write_all(&mut out, &first[..n])?;
                        std::io::copy(&mut crate::interrupt::Checked(&mut e), &mut out)
                            .with_context(|| {
                                format!("extracting the disk to {}", dest.display())
                            })?;
                        disk = Some((dest, disk_header(&first[..n], info.size)));
                    }
                    None => {
                        let mut first = vec![0u8; 512];
                        let n = read_up_to(&mut e, &mut first)?;
                        disk = Some((PathBuf::from(&path), disk_header(&first[..n], info.size)));
                        entries.push(info);
                        // The header is all inspect needs: stop before reading the disk.
                        return Ok((entries, disk));
                    }
                }
            }
            entries.push(info);
        }
    }
    Ok((entries, disk))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = r.read(&mut buf[n..]).context("reading the layer")?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow2_header_gives_virtual_size() {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[24..32].copy_from_slice(&(4u64 << 30).to_be_bytes());
        assert_eq!(
            disk_header(&h, 1000),
            DiskHeader {
                format: "qcow2",
                virtual_size: 4 << 30
            }
        );
        assert_eq!(disk_header(&[0u8; 64], 77).format, "raw");
        assert_eq!(disk_header(&[0u8; 64], 77).virtual_size, 77);
    }
}
