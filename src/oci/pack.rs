//! Packing a disk into an image and writing it to every destination.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::dest::ImageRef;
use super::image::{self, ImageMeta, MEDIA_MANIFEST};
use super::layer::{self, Layer, LayerOptions};
use super::layout::{Descriptor, Layout};
use crate::cache::TempFile;

/// What to pack.
#[derive(Debug, Clone)]
pub struct PackSpec {
    pub disk: PathBuf,
    /// The file name under `/disk/`.
    pub disk_name: String,
    pub meta: ImageMeta,
    pub layer: LayerOptions,
}

/// A packed image in a layout.
#[derive(Debug, Clone)]
pub struct PackedImage {
    pub manifest: Descriptor,
    pub config_digest: String,
    pub layer: Layer,
}

/// Packs `spec` into `layout` and tags it with every tag.
pub fn pack_to_layout(spec: &PackSpec, layout: &Layout, tags: &[String]) -> Result<PackedImage> {
    let layer = layer::write_layer(
        &spec.disk,
        &spec.disk_name,
        &layout.blobs_dir(),
        &spec.layer,
    )?;
    let config = image::config(&spec.meta, &layer)?;
    layout.write_blob(&config)?;
    let manifest = image::manifest(&config, &layer, &spec.meta.annotations)?;
    layout.write_blob(&manifest)?;
    let desc = Descriptor {
        media_type: MEDIA_MANIFEST.into(),
        digest: manifest.digest.clone(),
        size: manifest.size,
    };
    for tag in tags {
        layout.set_tag(tag, &desc, Some(&spec.meta.architecture))?;
    }
    Ok(PackedImage {
        manifest: desc,
        config_digest: config.digest,
        layer,
    })
}

/// The blobs an image needs: manifest, config, layers (index: its manifests too).
pub fn image_blobs(layout: &Layout, desc: &Descriptor) -> Result<Vec<String>> {
    let mut out = vec![desc.digest.clone()];
    let v: serde_json::Value = serde_json::from_slice(&layout.read_blob(&desc.digest)?)
        .with_context(|| format!("parsing manifest {}", desc.digest))?;
    if let Some(ms) = v["manifests"].as_array() {
        for m in ms {
            let d = Descriptor {
                media_type: m["mediaType"].as_str().unwrap_or_default().into(),
                digest: m["digest"]
                    .as_str()
                    .context("index entry without digest")?
                    .into(),
                size: m["size"].as_u64().unwrap_or_default(),
            };
            out.extend(image_blobs(layout, &d)?);
        }
        return Ok(out);
    }
    out.push(
        v["config"]["digest"]
            .as_str()
            .context("manifest without config")?
            .to_string(),
    );
    for l in v["layers"].as_array().into_iter().flatten() {
        out.push(
            l["digest"]
                .as_str()
                .context("layer without digest")?
                .to_string(),
        );
    }
    Ok(out)
}

/// Copies an image's blobs into another layout (hard links when possible) and tags it.
pub fn copy_image(
    from: &Layout,
    desc: &Descriptor,
    to: &Layout,
    tag: &str,
    arch: Option<&str>,
) -> Result<()> {
    for digest in image_blobs(from, desc)? {
        let src = from.blob_path(&digest)?;
        let dst = to.blob_path(&digest)?;
        if dst.exists() {
            continue;
        }
        if std::fs::hard_link(&src, &dst).is_err() {
            let mut temp = TempFile::new_in(&to.blobs_dir())?;
            let mut f =
                std::fs::File::open(&src).with_context(|| format!("opening {}", src.display()))?;
            std::io::copy(&mut crate::interrupt::Checked(&mut f), temp.file())
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
            temp.persist(&dst)?;
        }
    }
    to.set_tag(tag, desc, arch)
}

/// Writes an OCI archive (a tar of a layout holding just this image) atomically.
pub fn write_archive(
    from: &Layout,
    desc: &Descriptor,
    file: &Path,
    tag: &str,
    arch: Option<&str>,
) -> Result<()> {
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".oci-archive-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a staging directory in {}", parent.display()))?;
    let layout = Layout::create(staging.path())?;
    copy_image(from, desc, &layout, tag, arch)?;
    let mut temp = TempFile::new_in(&parent)?;
    {
        let mut b = tar::Builder::new(std::io::BufWriter::new(temp.file().try_clone()?));
        b.mode(tar::HeaderMode::Deterministic);
        b.follow_symlinks(false);
        for name in ["oci-layout", "index.json"] {
            b.append_path_with_name(staging.path().join(name), name)
                .with_context(|| format!("adding {name} to {}", file.display()))?;
        }
        let mut blobs: Vec<_> = std::fs::read_dir(layout.blobs_dir())?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| !n.to_string_lossy().starts_with('.'))
            .collect();
        blobs.sort();
        for n in blobs {
            let name = format!("blobs/sha256/{}", n.to_string_lossy());
            b.append_path_with_name(layout.blobs_dir().join(&n), &name)
                .with_context(|| format!("adding {name} to {}", file.display()))?;
        }
        b.into_inner()
            .context("finishing the archive")?
            .into_inner()
            .map_err(|e| e.into_error())
            .context("flushing the archive")?;
    }
    temp.persist(file)
}

/// Unpacks an OCI archive into `dir` (which becomes a layout).
pub fn extract_archive(file: &Path, dir: &Path) -> Result<Layout> {
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut a = tar::Archive::new(std::io::BufReader::new(f));
    a.set_preserve_permissions(false);
    for entry in a
        .entries()
        .with_context(|| format!("reading {}", file.display()))?
    {
        let mut entry = entry.with_context(|| format!("reading {}", file.display()))?;
        let path = entry.path()?.into_owned();
        let safe = path.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
        if !safe {
            bail!(
                "{}: unsafe path {} in the archive",
                file.display(),
                path.display()
            );
        }
        entry
            .unpack_in(dir)
            .with_context(|| format!("extracting {} from {}", path.display(), file.display()))?;
    }
    Layout::open(dir)
}

/// Parses `KEY=VALUE` pairs.
pub fn parse_pairs(pairs: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("{what} {p:?} is not KEY=VALUE"))?;
        if k.is_empty() {
            bail!("{what} {p:?} has an empty key");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Where a registry destination is pushed from: the packed layout.
pub fn is_registry(d: &ImageRef) -> bool {
    matches!(d, ImageRef::Registry { .. })
}
