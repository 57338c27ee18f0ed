//! Reading from a registry: manifests (bounded, digest-checked), small blobs in memory,
//! the first bytes of a blob, the referrers API, and whole blobs into a file, resumed
//! with `Range` after a failure and checked against their size and digest.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE, RANGE};
use reqwest::{Method, StatusCode};
use tokio::io::AsyncSeekExt;

use super::client::{short, Client, Scope};
use super::request::{watched, Request, Watch};
use crate::io::limits::MAX_DOCUMENT;

impl Client {
    /// GET a manifest or index: its bytes (at most 4 MiB, within the deadline), digest
    /// (computed; must match a digest reference and the registry's header) and media
    /// type. `None` when the registry does not have it.
    pub async fn manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<(Vec<u8>, String, String)>> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let mut h = HeaderMap::new();
        h.insert(
            ACCEPT,
            HeaderValue::from_str(&crate::oci::image::MANIFEST_TYPES.join(", "))?,
        );
        let resp = self
            .send(Request::new(Method::GET, &url, Scope::pull(repo)).headers(h))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.fail("GET", &url, resp).await);
        }
        let media = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = crate::io::limits::read_body_capped(
            resp,
            MAX_DOCUMENT,
            self.idle,
            self.idle,
            &format!("the manifest {repo}:{reference}"),
        )
        .await?;
        let digest = crate::io::hash::sha256_digest(&bytes);
        if reference.starts_with("sha256:") && reference != digest {
            bail!(
                "the manifest {repo}@{reference} from {} hashes to {digest}: refusing it",
                self.registry
            );
        }
        if let Some(h) = header_digest.filter(|h| h.starts_with("sha256:")) {
            if h != digest {
                bail!("the registry says the manifest {repo}:{reference} is {h} but it hashes to {digest}");
            }
        }
        Ok(Some((bytes, digest, media)))
    }

    /// The size of a blob the registry has, or `None`.
    pub async fn blob_size(&self, repo: &str, digest: &str) -> Result<Option<u64>> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self
            .send(Request::new(Method::HEAD, &url, Scope::pull(repo)))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp.content_length().unwrap_or(0))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.fail("HEAD", &url, resp).await),
        }
    }

    /// GET a small blob (a config: at most 4 MiB), checking its size and digest.
    pub async fn small_blob(&self, repo: &str, digest: &str, size: u64) -> Result<Vec<u8>> {
        if size > MAX_DOCUMENT {
            bail!("{digest} declares {size} bytes for a document: more than the {MAX_DOCUMENT} allowed");
        }
        self.checked_blob(repo, digest, size, self.idle).await
    }

    /// A blob of at most `cap` bytes whose descriptor says `size`, checked.
    pub async fn small_blob_up_to(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        cap: u64,
    ) -> Result<Vec<u8>> {
        if size > cap {
            bail!("{digest} declares {size} bytes: more than the {cap} allowed here");
        }
        self.checked_blob(repo, digest, size, self.idle * 4).await
    }

    /// GETs a blob whose size is already bounded, in memory, within `deadline`, and
    /// checks it against its descriptor's size and digest.
    async fn checked_blob(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        deadline: Duration,
    ) -> Result<Vec<u8>> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self
            .send(Request::new(Method::GET, &url, Scope::pull(repo)))
            .await?;
        if !resp.status().is_success() {
            return Err(self.fail("GET", &url, resp).await);
        }
        let bytes = crate::io::limits::read_body_capped(
            resp,
            size,
            self.idle,
            deadline,
            &format!("blob {digest}"),
        )
        .await?;
        if bytes.len() as u64 != size || crate::io::hash::sha256_digest(&bytes) != digest {
            bail!(
                "blob {digest} from {} does not match its descriptor",
                self.registry
            );
        }
        Ok(bytes)
    }

    /// The referrers index of `digest` from the OCI referrers API, or None when the
    /// registry does not answer it with an index (the referrers tag schema applies).
    pub async fn referrers(&self, repo: &str, digest: &str) -> Result<Option<Vec<u8>>> {
        let url = self.url(&format!("/v2/{repo}/referrers/{digest}"));
        let resp = self
            .send(Request::new(Method::GET, &url, Scope::pull(repo)))
            .await?;
        let is_index = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with(crate::oci::image::MEDIA_INDEX));
        if !resp.status().is_success() || !is_index {
            return Ok(None);
        }
        let bytes = crate::io::limits::read_body_capped(
            resp,
            MAX_DOCUMENT,
            self.idle,
            self.idle,
            &format!("the referrers of {repo}@{digest}"),
        )
        .await?;
        Ok(Some(bytes))
    }

    /// Whether the registry answers the OCI referrers API for `repo` (otherwise the
    /// referrers tag schema is used).
    pub async fn has_referrers_api(&self, repo: &str, digest: &str) -> Result<bool> {
        Ok(self.referrers(repo, digest).await?.is_some())
    }

    /// The first `n` bytes of a blob (fewer when it is shorter); never reads more, even
    /// from a registry that ignores `Range`.
    pub async fn blob_prefix(&self, repo: &str, digest: &str, n: u64) -> Result<Vec<u8>> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let mut h = HeaderMap::new();
        h.insert(
            RANGE,
            HeaderValue::from_str(&format!("bytes=0-{}", n.saturating_sub(1)))?,
        );
        let mut resp = self
            .send(Request::new(Method::GET, &url, Scope::pull(repo)).headers(h))
            .await?;
        if !resp.status().is_success() {
            return Err(self.fail("GET", &url, resp).await);
        }
        let started = Instant::now();
        let mut buf = Vec::new();
        while (buf.len() as u64) < n {
            let left = self.idle.saturating_sub(started.elapsed());
            let chunk = tokio::time::timeout(left, resp.chunk())
                .await
                .map_err(|_| {
                    anyhow!(
                        "reading the start of blob {digest}: no complete answer within {}s",
                        self.idle.as_secs()
                    )
                })??;
            let Some(chunk) = chunk else { break };
            let take = chunk.len().min((n - buf.len() as u64) as usize);
            buf.extend_from_slice(&chunk[..take]);
        }
        Ok(buf)
    }

    /// Downloads a blob into `out` (resuming with `Range` after a failure), checking size
    /// and digest; the file is truncated first.
    pub async fn blob_to_file(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        out: &Path,
    ) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(out)
            .await
            .with_context(|| format!("opening {}", out.display()))?;
        let mut sha = <sha2::Sha256 as sha2::Digest>::new();
        let mut have = 0u64;
        let mut failures = 0u32;
        let mut progress =
            crate::progress::bytes(&format!("pulling {}", short(digest)), Some(size));
        while have < size || size == 0 {
            let mut h = HeaderMap::new();
            if have > 0 {
                h.insert(RANGE, HeaderValue::from_str(&format!("bytes={have}-"))?);
            }
            let resp = self
                .send(Request::new(Method::GET, &url, Scope::pull(repo)).headers(h))
                .await?;
            let status = resp.status();
            if !(status.is_success()) {
                return Err(self.fail("GET", &url, resp).await);
            }
            if have > 0 && status != StatusCode::PARTIAL_CONTENT {
                // The registry sent the whole blob again: start over.
                file.set_len(0).await?;
                file.seek(std::io::SeekFrom::Start(0)).await?;
                sha = <sha2::Sha256 as sha2::Digest>::new();
                have = 0;
            }
            let watch = Watch::new();
            let mut resp = resp;
            let read = async {
                while let Some(chunk) = resp.chunk().await.context("reading the blob")? {
                    crate::sys::interrupt::check()?;
                    if have + chunk.len() as u64 > size {
                        bail!("blob {digest} is longer than its declared {size} bytes");
                    }
                    file.write_all(&chunk)
                        .await
                        .with_context(|| format!("writing {}", out.display()))?;
                    sha2::Digest::update(&mut sha, &chunk);
                    have += chunk.len() as u64;
                    watch.add(chunk.len() as u64);
                    progress.inc(chunk.len() as u64);
                }
                Ok(())
            };
            match watched(
                read,
                &watch,
                self.idle,
                &format!("pulling blob {}", short(digest)),
            )
            .await
            {
                Ok(()) if have == size => break,
                Ok(()) => {
                    failures += 1;
                    tracing::warn!(
                        "blob {} ended at byte {have} of {size}; resuming",
                        short(digest)
                    );
                }
                Err(e)
                    if e.downcast_ref::<crate::sys::interrupt::Interrupted>()
                        .is_some()
                        || crate::io::tls::is_name_not_resolved(&e) =>
                {
                    return Err(e)
                }
                Err(e) if format!("{e:#}").contains("longer than its declared") => return Err(e),
                Err(e) => {
                    failures += 1;
                    tracing::warn!("{e:#}; resuming at byte {have}");
                }
            }
            if self.policy.gives_up(failures) {
                bail!("pulling blob {digest}: giving up after {failures} attempts");
            }
            tokio::time::sleep(self.policy.wait(failures, None)).await;
        }
        file.flush().await?;
        file.sync_all().await?;
        progress.finish();
        let actual = format!("sha256:{}", hex::encode(sha2::Digest::finalize(sha)));
        if actual != digest {
            bail!(
                "blob {digest} from {} hashes to {actual}: refusing it",
                self.registry
            );
        }
        Ok(())
    }
}
