//! Packing a disk into an image in a layout, and copying images between layouts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::image::{self, Descriptor, Document, ImageMeta, MEDIA_MANIFEST};
use super::layer::{self, Layer, LayerOptions};
use super::layout::Layout;
use crate::io::atomic::AtomicFile;

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
    let layer = layer::write_layer(&spec.disk, &spec.disk_name, layout, &spec.layer)?;
    let config = image::config(&spec.meta, &layer)?;
    layout.write_blob(&config)?;
    let manifest = image::manifest(&config, &layer, &spec.meta.annotations)?;
    layout.write_blob(&manifest)?;
    let desc = manifest.descriptor(MEDIA_MANIFEST)?;
    for tag in tags {
        layout.set_tag(tag, &desc, Some(&spec.meta.architecture))?;
    }
    Ok(PackedImage {
        manifest: desc,
        config_digest: config.digest,
        layer,
    })
}

/// The descriptors an image needs: manifest, config, layers (an index: its manifests'
/// too), each once.
pub fn image_blobs(layout: &Layout, desc: &Descriptor) -> Result<Vec<Descriptor>> {
    let mut out = vec![desc.clone()];
    match image::parse_document(&layout.read_blob(desc)?)
        .with_context(|| format!("parsing {}", desc.digest()))?
    {
        Document::Index(idx) => {
            for m in idx.manifests() {
                for d in image_blobs(layout, m)? {
                    if !out.iter().any(|o| o.digest() == d.digest()) {
                        out.push(d);
                    }
                }
            }
        }
        Document::Manifest(m) => {
            out.push(m.config().clone());
            out.extend(m.layers().iter().cloned());
        }
    }
    Ok(out)
}

/// Copies an image's blobs into another layout (hard links when possible, else a
/// verified copy) and tags it.
pub fn copy_image(
    from: &Layout,
    desc: &Descriptor,
    to: &Layout,
    tag: &str,
    arch: Option<&str>,
) -> Result<()> {
    for d in image_blobs(from, desc)? {
        let digest = d.digest().to_string();
        let dst = to.blob_path(&digest)?;
        if dst.exists() {
            continue;
        }
        let src = from.blob_path(&digest)?;
        if std::fs::hard_link(&src, &dst).is_err() {
            let mut temp = AtomicFile::new_in(&to.blobs_dir())?;
            std::io::copy(&mut from.open_blob(&d)?, temp.file())
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
            temp.persist(&dst)?;
        }
    }
    to.set_tag(tag, desc, arch)
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
