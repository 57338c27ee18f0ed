//! Promotion by digest: the image a pipeline tested, copied byte for byte from one
//! repository (a staging one) to another, so the published digest is the tested one.
//! The source is resolved once; a tag is read once and everything after goes by the
//! digest it named, and a digest the caller expects that differs stops the promotion
//! before anything is written. With attachments, the cosign signature tag and the
//! referrers (SBOM, provenance) of the image and of each of its platform manifests
//! come along. Tags are written last.

use anyhow::{bail, Context as _, Result};

use crate::oci::image::{self, Document, MEDIA_INDEX};
use crate::provenance::sign;
use crate::registry::copy::{Copier, CopyCounts, Fetched};
use crate::registry::{Client, RemoteRef};

/// The source no longer is the image the caller checked.
#[derive(Debug, thiserror::Error)]
#[error("{reference} is {actual}, not the expected {expected}: nothing was written")]
pub struct DigestMismatch {
    pub reference: String,
    pub expected: String,
    pub actual: String,
}

/// What a promotion did.
#[derive(Debug, Clone, Default)]
pub struct Promoted {
    /// `HOST/REPO@sha256:…` at the destination.
    pub pinned: String,
    /// The digest copied (the source's, unchanged).
    pub digest: String,
    pub counts: CopyCounts,
    /// The tags now pointing at `digest`.
    pub tags: Vec<String>,
    /// Attachments copied: `sha256-<hex>.sig` tags and referrer manifest digests.
    pub attachments: Vec<String>,
}

/// Reads the source image once: by its tag when it has one (checked against a digest
/// given with it and against `expect`), else by its digest.
pub async fn resolve_source(
    client: &Client,
    src: &RemoteRef,
    expect: Option<&str>,
) -> Result<Fetched> {
    let copier = Copier::new(client, &src.repository, client, &src.repository);
    let reference = src
        .tag
        .as_deref()
        .or(src.digest.as_deref())
        .unwrap_or("latest");
    let got = copier
        .fetch(reference)
        .await?
        .with_context(|| format!("{src} does not exist"))?;
    for wanted in [src.digest.as_deref(), expect].into_iter().flatten() {
        if wanted != got.digest {
            return Err(DigestMismatch {
                reference: src.to_string(),
                expected: wanted.to_string(),
                actual: got.digest.clone(),
            }
            .into());
        }
    }
    Ok(got)
}

/// Copies `image` (read from `src_repo` of `src`) to every destination of one
/// repository of `dst`, with its attachments when asked.
pub async fn promote(
    src: &Client,
    src_repo: &str,
    image: &Fetched,
    dst: &Client,
    dests: &[RemoteRef],
    with_attachments: bool,
) -> Result<Promoted> {
    let Some(first) = dests.first() else {
        bail!("no destination");
    };
    if dests
        .iter()
        .any(|d| d.registry != first.registry || d.repository != first.repository)
    {
        bail!("destinations of one promotion must share one repository");
    }
    let mut c = Copier::new(src, src_repo, dst, &first.repository);
    let children = c.copy_below(image).await?;
    c.put(image, &image.digest).await?;
    let mut attachments = Vec::new();
    if with_attachments {
        for subject in std::iter::once(&image.digest).chain(&children) {
            copy_attachments(&mut c, subject, &mut attachments).await?;
        }
    }
    let mut tags = Vec::new();
    for d in dests {
        let tag = d.tag.clone().unwrap_or_else(|| "latest".into());
        c.put(image, &tag).await?;
        tags.push(tag);
    }
    Ok(Promoted {
        pinned: first.pinned(&image.digest),
        digest: image.digest.clone(),
        counts: c.counts,
        tags,
        attachments,
    })
}

/// The signature tag and the referrers of `subject`, from the source to the destination.
async fn copy_attachments(c: &mut Copier<'_>, subject: &str, done: &mut Vec<String>) -> Result<()> {
    let sig_tag = sign::signature_tag(subject)?;
    if let Some(sig) = c.fetch(&sig_tag).await? {
        c.copy_below(&sig).await?;
        c.put(&sig, &sig_tag).await?;
        done.push(sig_tag);
    }
    let referrers_tag = super::attest::referrers_tag(subject);
    let index = match c.src.referrers(c.src_repo, subject).await? {
        Some(bytes) => Some(bytes),
        None => c.fetch(&referrers_tag).await?.map(|f| f.bytes),
    };
    let Some(index) = index else {
        return Ok(());
    };
    let Document::Index(idx) = image::parse_document(&index)
        .with_context(|| format!("parsing the referrers of {subject}"))?
    else {
        bail!("the referrers of {subject} are not an index");
    };
    let mut entries = Vec::new();
    for d in idx.manifests() {
        let digest = d.digest().to_string();
        let Some(m) = c.fetch(&digest).await? else {
            tracing::warn!("referrer {digest} of {subject} is listed but missing: not copied");
            continue;
        };
        c.copy_below(&m).await?;
        c.put(&m, &digest).await?;
        done.push(digest);
        entries.push(d.clone());
    }
    if !entries.is_empty() && !c.dst.has_referrers_api(c.dst_repo, subject).await? {
        let existing = c
            .dst
            .manifest(c.dst_repo, &referrers_tag)
            .await?
            .map(|(b, _, _)| b);
        let idx = super::attest::referrers_index(existing.as_deref(), &entries)?;
        c.dst
            .put_manifest(c.dst_repo, &referrers_tag, &idx.bytes, MEDIA_INDEX)
            .await
            .with_context(|| format!("writing the referrers tag {referrers_tag}"))?;
    }
    Ok(())
}
