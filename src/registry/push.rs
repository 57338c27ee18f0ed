//! Pushing an image from an OCI layout: every blob streamed from its file (skipped when
//! the registry has it, mounted from another repository this cache pushed to when it
//! can), child manifests by digest, and the manifest under each tag last — a tag never
//! points at missing blobs. When a tag fails, the error says exactly which tags point
//! where.

use std::path::Path;

use anyhow::{bail, Result};
use serde_json::json;

use super::{Client, RemoteRef};
use crate::oci::image::{self, Descriptor, Document};
use crate::oci::Layout;

/// What a push did.
#[derive(Debug, Clone, Default)]
pub struct PushOutcome {
    /// `HOST/REPO@sha256:…`.
    pub pinned: String,
    /// The manifest digest `sha256:…`.
    pub digest: String,
    pub uploaded_blobs: usize,
    pub skipped_blobs: usize,
    pub mounted_blobs: usize,
    /// The tags now pointing at `digest`.
    pub tags: Vec<String>,
}

/// Some tags were updated, others not.
#[derive(Debug, thiserror::Error)]
#[error("pushed {digest} to {repo}, but not under every tag:\n{}", .lines.join("\n"))]
pub struct PartialPush {
    pub repo: String,
    pub digest: String,
    /// One line per tag: `  TAG -> DIGEST (updated)` or `  TAG: not updated (ERROR)`.
    pub lines: Vec<String>,
}

fn short(d: &str) -> &str {
    let h = d.trim_start_matches("sha256:");
    &h[..h.len().min(12)]
}

/// Repositories of a registry this cache pushed to (mount sources).
pub struct PushRecord {
    file: std::path::PathBuf,
}

impl PushRecord {
    pub fn new(cache: &crate::cache::Cache, registry: &str) -> Result<PushRecord> {
        let dir = cache.state_dir("pushes")?;
        Ok(PushRecord {
            file: dir.join(format!(
                "{}.json",
                crate::io::hash::sha256_hex(registry.as_bytes())
            )),
        })
    }
    /// True when this cache has pushed nothing to the registry.
    pub fn is_empty(&self) -> bool {
        self.repos().is_empty()
    }
    fn repos(&self) -> Vec<String> {
        std::fs::read(&self.file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
    fn add(&self, repo: &str) {
        let mut repos = self.repos();
        if !repos.iter().any(|r| r == repo) {
            repos.push(repo.to_string());
            if let Ok(bytes) = serde_json::to_vec(&repos) {
                // Only an optimization: a failure to record costs a later upload.
                let _ = crate::io::atomic::write(&self.file, &bytes);
            }
        }
    }
}

/// Pushes the image `desc` of `layout` to `dests` (one repository, several tags).
/// `sent`: blobs already uploaded to that repository by this command (while packing).
pub async fn push_image(
    client: &Client,
    layout: &Layout,
    desc: &Descriptor,
    dests: &[RemoteRef],
    record: Option<&PushRecord>,
    sent: &[String],
) -> Result<PushOutcome> {
    let Some(first) = dests.first() else {
        bail!("no registry destination");
    };
    for d in dests {
        if d.registry != first.registry || d.repository != first.repository {
            bail!(
                "destinations of one push must share the repository {}/{}",
                first.registry,
                first.repository
            );
        }
    }
    let repo = first.repository.as_str();
    let digest = desc.digest().to_string();
    let mut outcome = PushOutcome {
        pinned: first.pinned(&digest),
        digest: digest.clone(),
        ..Default::default()
    };
    let mut children = Vec::new();
    let mut blobs = Vec::new();
    collect(layout, desc, &mut children, &mut blobs)?;
    // Before anything is uploaded: a layer the registry would refuse after the upload.
    for b in blobs
        .iter()
        .filter(|b| image::media_type(b).contains(".layer."))
    {
        super::limits::check_layer(
            &first.registry,
            b.digest().as_ref(),
            b.size(),
            client.max_layer_size,
        )?;
    }
    let mounts = record.map(PushRecord::repos).unwrap_or_default();
    for b in &blobs {
        if sent.iter().any(|d| d.as_str() == b.digest().as_ref()) {
            outcome.uploaded_blobs += 1;
            crate::progress::event(
                "blob",
                json!({"digest": b.digest().to_string(), "action": "uploaded", "size": b.size()}),
            );
            continue;
        }
        push_blob(client, layout, repo, b, &mounts, &mut outcome).await?;
    }
    for c in &children {
        let bytes = layout.read_blob(c)?;
        client
            .put_manifest(repo, c.digest().as_ref(), &bytes, &image::media_type(c))
            .await?;
    }
    let manifest = layout.read_blob(desc)?;
    let media = image::media_type(desc);
    let mut lines = Vec::new();
    let mut failed = false;
    for d in dests {
        let tag = d.tag.clone().unwrap_or_else(|| "latest".into());
        if failed {
            let now = where_tag_points(client, repo, &tag).await;
            lines.push(format!(
                "  {tag}: not updated (an earlier tag failed); {now}"
            ));
            continue;
        }
        match client.put_manifest(repo, &tag, &manifest, &media).await {
            Ok(_) => {
                crate::progress::event(
                    "manifest",
                    json!({"reference": format!("{}/{repo}:{tag}", d.registry), "digest": digest}),
                );
                lines.push(format!("  {tag} -> {digest} (updated)"));
                outcome.tags.push(tag);
            }
            Err(e) => {
                failed = true;
                let now = where_tag_points(client, repo, &tag).await;
                lines.push(format!("  {tag}: not updated ({e:#}); {now}"));
            }
        }
    }
    if failed {
        // The image itself is complete: it can be pulled by digest.
        let _ = client.put_manifest(repo, &digest, &manifest, &media).await;
        return Err(PartialPush {
            repo: format!("{}/{repo}", first.registry),
            digest,
            lines,
        }
        .into());
    }
    if let Some(r) = record {
        r.add(repo);
    }
    Ok(outcome)
}

/// What a tag the push did not update points at now, read back from the registry (a
/// refused PUT may still have landed, or the tag may hold an older image).
async fn where_tag_points(client: &Client, repo: &str, tag: &str) -> String {
    match client.manifest(repo, tag).await {
        Ok(Some((_, digest, _))) => format!("it points at {digest}"),
        Ok(None) => "the tag does not exist".to_string(),
        Err(e) => format!("where it points is unknown ({e:#})"),
    }
}

/// The manifests below an index (pushed by digest before it) and every blob.
fn collect(
    layout: &Layout,
    desc: &Descriptor,
    children: &mut Vec<Descriptor>,
    blobs: &mut Vec<Descriptor>,
) -> Result<()> {
    match image::parse_document(&layout.read_blob(desc)?)? {
        Document::Index(idx) => {
            for m in idx.manifests() {
                collect(layout, m, children, blobs)?;
                children.push(m.clone());
            }
        }
        Document::Manifest(m) => {
            for d in std::iter::once(m.config()).chain(m.layers()) {
                if !blobs.iter().any(|b| b.digest() == d.digest()) {
                    blobs.push(d.clone());
                }
            }
        }
    }
    Ok(())
}

async fn push_blob(
    client: &Client,
    layout: &Layout,
    repo: &str,
    b: &Descriptor,
    mounts: &[String],
    outcome: &mut PushOutcome,
) -> Result<()> {
    let digest = b.digest().to_string();
    let size = b.size();
    if client.blob_size(repo, &digest).await?.is_some() {
        outcome.skipped_blobs += 1;
        crate::progress::event(
            "blob",
            json!({"digest": digest, "action": "skipped", "size": size}),
        );
        tracing::info!("blob {} already in {repo}", short(&digest));
        return Ok(());
    }
    for from in mounts.iter().filter(|r| r.as_str() != repo) {
        if client.mount(repo, from, &digest).await.unwrap_or(false) {
            outcome.mounted_blobs += 1;
            crate::progress::event(
                "blob",
                json!({"digest": digest, "action": "mounted", "from": from, "size": size}),
            );
            tracing::info!("blob {} mounted from {from}", short(&digest));
            return Ok(());
        }
    }
    let path: std::path::PathBuf = layout.blob_path(&digest)?;
    check_blob_file(&path, size)?;
    client.upload(repo, &path, &digest, size).await?;
    outcome.uploaded_blobs += 1;
    crate::progress::event(
        "blob",
        json!({"digest": digest, "action": "uploaded", "size": size}),
    );
    Ok(())
}

/// A layout blob must have its declared size before it is sent anywhere.
fn check_blob_file(path: &Path, size: u64) -> Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("blob {} is missing: {e}", path.display()))?;
    if !meta.is_file() || meta.len() != size {
        bail!(
            "blob {} is {} bytes but its descriptor says {size}: the layout is corrupt",
            path.display(),
            meta.len()
        );
    }
    Ok(())
}
