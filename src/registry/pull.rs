//! Reading from registries: pulling an image into a layout (every blob verified), the
//! config of a remote image (for up-to-date checks), and a remote summary that reads
//! only the first bytes of the layer.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use super::{Client, RemoteRef};
use crate::oci::image::{self, Blob, Descriptor, Document, ImageConfiguration, ImageManifest};
use crate::oci::read::{disk_from_prefix, DiskHeader};
use crate::oci::Layout;

/// A remote image resolved to its platform manifest.
pub struct RemoteImage {
    /// Digest of the manifest `reference` named (an index's, for multi-arch images).
    pub digest: String,
    /// The platform manifest and its bytes, digest and media type.
    pub manifest: ImageManifest,
    pub manifest_blob: Blob,
    pub media_type: String,
}

/// Resolves `r` to the manifest for `arch`; `None` when the registry does not have it.
pub async fn resolve(client: &Client, r: &RemoteRef, arch: &str) -> Result<Option<RemoteImage>> {
    let Some((bytes, digest, media)) = client.manifest(&r.repository, r.reference()).await? else {
        return Ok(None);
    };
    let (manifest, blob, media) = match image::parse_document(&bytes)
        .with_context(|| format!("parsing the manifest of {r}"))?
    {
        Document::Manifest(m) => (m, Blob::raw(bytes), media),
        Document::Index(idx) => {
            let entry = idx
                .manifests()
                .iter()
                .find(|m| {
                    m.platform()
                        .as_ref()
                        .is_some_and(|p| p.architecture().to_string() == arch)
                })
                .with_context(|| format!("{r} has no {arch} image"))?;
            let d = entry.digest().to_string();
            let (bytes, _, media) = client
                .manifest(&r.repository, &d)
                .await?
                .with_context(|| format!("{r}: the {arch} manifest {d} is missing"))?;
            match image::parse_document(&bytes)? {
                Document::Manifest(m) => (m, Blob::raw(bytes), media),
                Document::Index(_) => bail!("{r}: {d} is an index inside an index"),
            }
        }
    };
    Ok(Some(RemoteImage {
        digest,
        manifest,
        manifest_blob: blob,
        media_type: media,
    }))
}

/// The config of a remote image.
pub async fn config(
    client: &Client,
    r: &RemoteRef,
    img: &RemoteImage,
) -> Result<ImageConfiguration> {
    let c = img.manifest.config();
    let bytes = client
        .small_blob(&r.repository, c.digest().as_ref(), c.size())
        .await
        .with_context(|| format!("pulling the config of {r}"))?;
    image::parse_config(&bytes)
}

/// The labels of the image at `r`, or `None` when there is no image there.
pub async fn labels(
    client: &Client,
    r: &RemoteRef,
    arch: &str,
) -> Result<Option<BTreeMap<String, String>>> {
    let Some(img) = resolve(client, r, arch).await? else {
        return Ok(None);
    };
    Ok(Some(image::labels(&config(client, r, &img).await?)))
}

/// Pulls the image at `r` (platform `arch`) into `layout` under `tag`; returns the
/// platform manifest's descriptor. Blobs are written to temp files and renamed only
/// after their size and digest checked out.
pub async fn pull_image(
    client: &Client,
    r: &RemoteRef,
    arch: &str,
    layout: &Layout,
    tag: &str,
) -> Result<Descriptor> {
    let img = resolve(client, r, arch)
        .await?
        .with_context(|| format!("{r} does not exist"))?;
    let descs: Vec<&Descriptor> = std::iter::once(img.manifest.config())
        .chain(img.manifest.layers())
        .collect();
    for d in descs {
        let digest = d.digest().to_string();
        if layout.has_blob(&digest) {
            continue;
        }
        let temp = layout.new_blob()?;
        client
            .blob_to_file(&r.repository, &digest, d.size(), temp.path())
            .await
            .with_context(|| format!("pulling blob {digest} of {r}"))?;
        temp.persist(&layout.blob_path(&digest)?)?;
    }
    layout.write_blob(&img.manifest_blob)?;
    let media = if img.media_type.is_empty() {
        image::MEDIA_MANIFEST.to_string()
    } else {
        img.media_type.clone()
    };
    let desc = img.manifest_blob.descriptor(&media)?;
    layout.set_tag(tag, &desc, Some(arch))?;
    Ok(desc)
}

/// What `inspect` shows of a remote image, read without pulling the layer.
pub struct RemoteSummary {
    pub digest: String,
    /// The platform manifest's digest (what signatures and SBOMs are attached to).
    pub manifest_digest: String,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
    /// The disk's path in the layer and its header, from the first 64 KiB.
    pub disk: Option<(String, DiskHeader)>,
}

pub async fn summary(client: &Client, r: &RemoteRef, arch: &str) -> Result<RemoteSummary> {
    let img = resolve(client, r, arch)
        .await?
        .with_context(|| format!("{r} does not exist"))?;
    let config = config(client, r, &img).await?;
    let mut disk = None;
    if let Some(l0) = img.manifest.layers().first() {
        let prefix = client
            .blob_prefix(&r.repository, l0.digest().as_ref(), 64 << 10)
            .await?;
        disk = disk_from_prefix(&prefix, &image::media_type(l0));
    }
    Ok(RemoteSummary {
        manifest_digest: img.manifest_blob.digest.clone(),
        digest: img.digest,
        manifest: img.manifest,
        config,
        disk,
    })
}
