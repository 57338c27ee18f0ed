//! Copying what a registry holds under a digest into another repository, of the same
//! registry or another one: blobs first (skipped when present, mounted across
//! repositories of one registry, otherwise streamed from registry to registry), child
//! manifests by digest, and the document itself only when the caller puts it. Bytes are
//! copied as they are, so every digest stays the same.

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::Client;
use crate::oci::image::{self, Document};

/// A manifest or index read from the source and checked against its digest.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: String,
}

/// What a copy did, blob by blob and manifest by manifest.
#[derive(Debug, Clone, Default)]
pub struct CopyCounts {
    /// Blobs streamed from the source registry.
    pub copied_blobs: usize,
    /// Blobs mounted from the source repository (same registry).
    pub mounted_blobs: usize,
    /// Blobs the destination already had.
    pub skipped_blobs: usize,
    /// Manifests and indexes written (child manifests and attachments included).
    pub manifests: usize,
}

/// One source repository and one destination repository.
pub struct Copier<'a> {
    pub src: &'a Client,
    pub src_repo: &'a str,
    pub dst: &'a Client,
    pub dst_repo: &'a str,
    pub counts: CopyCounts,
}

impl<'a> Copier<'a> {
    pub fn new(src: &'a Client, src_repo: &'a str, dst: &'a Client, dst_repo: &'a str) -> Self {
        Copier {
            src,
            src_repo,
            dst,
            dst_repo,
            counts: CopyCounts::default(),
        }
    }

    /// The source's manifest under `reference` (a tag or digest), or `None`.
    pub async fn fetch(&self, reference: &str) -> Result<Option<Fetched>> {
        let got = self
            .src
            .manifest(self.src_repo, reference)
            .await
            .with_context(|| {
                format!(
                    "reading {}/{}:{reference}",
                    self.src.registry, self.src_repo
                )
            })?;
        Ok(got.map(|(bytes, digest, media)| {
            let media_type = if media.is_empty() || media.starts_with("text/") {
                media_type_of(&bytes)
            } else {
                media
            };
            Fetched {
                bytes,
                digest,
                media_type,
            }
        }))
    }

    /// Copies everything `m` refers to (its blobs; for an index, each child manifest by
    /// digest after its blobs), but not `m` itself. Returns the child manifests' digests.
    pub async fn copy_below(&mut self, m: &Fetched) -> Result<Vec<String>> {
        let doc = image::parse_document(&m.bytes)
            .with_context(|| format!("parsing {} from {}", m.digest, self.src.registry))?;
        match doc {
            Document::Manifest(_) => {
                self.copy_blobs_of(m).await?;
                Ok(Vec::new())
            }
            Document::Index(idx) => {
                let mut children = Vec::new();
                for d in idx.manifests() {
                    let digest = d.digest().to_string();
                    let child = self.fetch(&digest).await?.with_context(|| {
                        format!(
                            "{}/{}@{}: its child manifest {digest} is missing",
                            self.src.registry, self.src_repo, m.digest
                        )
                    })?;
                    if matches!(image::parse_document(&child.bytes)?, Document::Index(_)) {
                        bail!("{digest} is an index inside an index: not copied");
                    }
                    self.copy_blobs_of(&child).await?;
                    self.put(&child, &digest).await?;
                    children.push(digest);
                }
                Ok(children)
            }
        }
    }

    /// Writes `m` to the destination under `reference` (a tag or its digest).
    pub async fn put(&mut self, m: &Fetched, reference: &str) -> Result<()> {
        let written = self
            .dst
            .put_manifest(self.dst_repo, reference, &m.bytes, &m.media_type)
            .await
            .with_context(|| {
                format!(
                    "writing {} to {}/{}:{reference}",
                    m.digest, self.dst.registry, self.dst_repo
                )
            })?;
        if written != m.digest {
            bail!("{} was written as {written}", m.digest);
        }
        self.counts.manifests += 1;
        let sep = if reference.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        crate::progress::event(
            "manifest",
            json!({"reference": format!("{}/{}{sep}{reference}", self.dst.registry, self.dst_repo),
                "digest": m.digest}),
        );
        Ok(())
    }

    async fn copy_blobs_of(&mut self, m: &Fetched) -> Result<()> {
        let Document::Manifest(man) = image::parse_document(&m.bytes)? else {
            bail!("{} is not an image manifest", m.digest);
        };
        for d in std::iter::once(man.config()).chain(man.layers()) {
            self.blob(d.digest().as_ref(), d.size())
                .await
                .with_context(|| {
                    format!(
                        "copying blob {} of {} to {}/{}",
                        d.digest(),
                        m.digest,
                        self.dst.registry,
                        self.dst_repo
                    )
                })?;
        }
        Ok(())
    }

    async fn blob(&mut self, digest: &str, size: u64) -> Result<()> {
        let report = |action: &str| {
            crate::progress::event(
                "blob",
                json!({"digest": digest, "action": action, "size": size}),
            )
        };
        if self.dst.blob_size(self.dst_repo, digest).await?.is_some() {
            self.counts.skipped_blobs += 1;
            report("skipped");
            return Ok(());
        }
        if self.src.registry == self.dst.registry
            && self.src_repo != self.dst_repo
            && self
                .dst
                .mount(self.dst_repo, self.src_repo, digest)
                .await
                .unwrap_or(false)
        {
            self.counts.mounted_blobs += 1;
            crate::progress::event(
                "blob",
                json!({"digest": digest, "action": "mounted", "from": self.src_repo, "size": size}),
            );
            return Ok(());
        }
        self.dst
            .copy_blob_from(self.src, self.src_repo, self.dst_repo, digest, size)
            .await?;
        self.counts.copied_blobs += 1;
        report("uploaded");
        Ok(())
    }
}

/// The media type a document declares, else what its shape says.
fn media_type_of(bytes: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    match v["mediaType"].as_str() {
        Some(m) if !m.is_empty() => m.to_string(),
        _ if v["manifests"].is_array() => image::MEDIA_INDEX.to_string(),
        _ => image::MEDIA_MANIFEST.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::media_type_of;

    #[test]
    fn a_document_without_media_type_is_typed_by_its_shape() {
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"manifests":[]}"#),
            crate::oci::image::MEDIA_INDEX
        );
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"config":{},"layers":[]}"#),
            crate::oci::image::MEDIA_MANIFEST
        );
        assert_eq!(
            media_type_of(
                br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
            ),
            "application/vnd.docker.distribution.manifest.v2+json"
        );
    }
}
