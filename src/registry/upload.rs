//! Pushing to a registry: manifests, small blobs in one request, blobs from files in
//! chunks that resume where the registry says it stopped, blobs streamed from another
//! registry, and a layer uploaded while it is being packed.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Method, StatusCode};

use super::client::{short, AuthError, Client, HttpError, PlaintextRefused, Scope};
use super::request::Request;

/// Upload chunk size: small enough that one chunk finishes in seconds even on a slow
/// link (a failed chunk is all a retry repeats), large enough to keep requests few.
pub const CHUNK: u64 = 16 << 20;

impl Client {
    /// PUT a manifest under a tag or digest; returns its digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<String> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let put = Request::new(Method::PUT, &url, Scope::push(repo))
            .header(CONTENT_TYPE, HeaderValue::from_str(media_type)?)
            .bytes(bytes.to_vec());
        self.send_expecting(put, StatusCode::is_success).await?;
        Ok(crate::io::hash::sha256_digest(bytes))
    }

    /// Asks the registry to mount `digest` from repository `from`; true when it did.
    pub async fn mount(&self, repo: &str, from: &str, digest: &str) -> Result<bool> {
        let url = self.url(&format!(
            "/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"
        ));
        let resp = self
            .send(Request::new(Method::POST, &url, Scope::push(repo)).bytes(Vec::new()))
            .await?;
        Ok(resp.status() == StatusCode::CREATED)
    }

    /// Uploads a small in-memory blob (one request) unless the registry has it.
    pub async fn put_small_blob(&self, repo: &str, data: &[u8], digest: &str) -> Result<()> {
        if self.blob_size(repo, digest).await?.is_some() {
            return Ok(());
        }
        let location = self.start_upload(repo).await?;
        let url = with_digest(&location, digest);
        let put = Request::new(Method::PUT, &url, Scope::push(repo))
            .octet_stream()
            .bytes(data.to_vec());
        self.send_expecting(put, StatusCode::is_success).await?;
        Ok(())
    }

    /// Uploads the blob in `path` (`digest`, `size` bytes): one request for small blobs;
    /// for large ones chunks that, after a failure, resume where the registry says it
    /// stopped.
    pub async fn upload(&self, repo: &str, path: &Path, digest: &str, size: u64) -> Result<()> {
        let mut progress =
            crate::progress::bytes(&format!("uploading {}", short(digest)), Some(size));
        let mut failures = 0u32;
        let mut chunked = size > CHUNK;
        let mut session: Option<(String, u64)> = None;
        loop {
            crate::sys::interrupt::check()?;
            let (mut location, mut offset) = match session.take() {
                Some(s) => s,
                None => (self.start_upload(repo).await?, 0),
            };
            progress.set_position(offset);
            let result = if chunked {
                self.send_chunks(repo, &mut location, &mut offset, path, size, &mut progress)
                    .await
            } else {
                self.send_whole(repo, &location, path, digest, size, &mut progress)
                    .await
            };
            let e = match result {
                Ok(Sent::Done) => break,
                // A failed commit is retried like a failed chunk: the registry's Range
                // then says whether the bytes are still there to commit again.
                Ok(Sent::Chunked) => match self.finish_upload(repo, &location, digest).await {
                    Ok(()) => break,
                    Err(e) => e,
                },
                Ok(Sent::ChunksRefused) => {
                    tracing::info!(
                        "{} does not take chunked uploads: sending {} in one request",
                        self.registry,
                        short(digest)
                    );
                    chunked = false;
                    continue;
                }
                Err(e) => e,
            };
            if e.downcast_ref::<crate::sys::interrupt::Interrupted>()
                .is_some()
                || e.downcast_ref::<AuthError>().is_some()
                || e.downcast_ref::<PlaintextRefused>().is_some()
                || crate::io::tls::is_name_not_resolved(&e)
            {
                return Err(e);
            }
            failures += 1;
            if self.policy.gives_up(failures) {
                return Err(e.context(format!(
                    "uploading blob {digest}: giving up after {failures} attempts"
                )));
            }
            // A commit the registry refused as a client error (the bytes it holds do not
            // hash to the digest) cannot succeed by committing them again: start over.
            let refused_commit = e
                .downcast_ref::<HttpError>()
                .is_some_and(|h| h.method == "PUT" && (400..500).contains(&h.status));
            if chunked && !refused_commit {
                session = self.resume_point(repo, &location).await;
            }
            let wait = self.policy.wait(failures, None);
            tracing::warn!(
                "uploading blob {} failed ({}); {} in {}",
                short(digest),
                self.redact(&format!("{e:#}")),
                match &session {
                    Some((_, at)) => format!("resuming at byte {at}"),
                    None => "restarting".to_string(),
                },
                crate::progress::format_duration(wait)
            );
            crate::progress::event(
                "retry",
                serde_json::json!({"digest": digest, "attempt": failures,
                    "resume_at": session.as_ref().map(|(_, at)| *at)}),
            );
            tokio::time::sleep(wait).await;
        }
        progress.finish();
        Ok(())
    }

    /// Copies the blob `digest` (`size` bytes) from `src_repo` of the registry `src` into
    /// `repo` of this one: the GET's body is the PUT's body, so the blob passes through
    /// in flight and is never held whole, in memory or on disk. Its size and digest are
    /// checked on the way, and a body that grows past `size` or hashes to something else
    /// fails the upload before it is committed (the registry checks the digest as well).
    /// Each client sends its own credential to its own registry only. A failed attempt
    /// starts over with a new GET and a new upload session.
    pub async fn copy_blob_from(
        &self,
        src: &Client,
        src_repo: &str,
        repo: &str,
        digest: &str,
        size: u64,
    ) -> Result<()> {
        let mut progress = crate::progress::bytes(
            &format!("copying {} from {}", short(digest), src.registry),
            Some(size),
        );
        let mut failures = 0u32;
        loop {
            crate::sys::interrupt::check()?;
            progress.set_position(0);
            let e = match self
                .copy_blob_once(src, src_repo, repo, digest, size, &mut progress)
                .await
            {
                Ok(()) => break,
                Err(e) => e,
            };
            if e.downcast_ref::<crate::sys::interrupt::Interrupted>()
                .is_some()
                || e.downcast_ref::<AuthError>().is_some()
                || e.downcast_ref::<PlaintextRefused>().is_some()
            {
                return Err(e);
            }
            failures += 1;
            if self.policy.gives_up(failures) {
                return Err(e.context(format!(
                    "copying blob {digest} from {}/{src_repo}: giving up after {failures} attempts",
                    src.registry
                )));
            }
            let wait = self.policy.wait(failures, None);
            tracing::warn!(
                "copying blob {} failed ({}); restarting in {}",
                short(digest),
                self.redact(&src.redact(&format!("{e:#}"))),
                crate::progress::format_duration(wait)
            );
            tokio::time::sleep(wait).await;
        }
        progress.finish();
        Ok(())
    }

    async fn copy_blob_once(
        &self,
        src: &Client,
        src_repo: &str,
        repo: &str,
        digest: &str,
        size: u64,
        progress: &mut crate::progress::Bytes,
    ) -> Result<()> {
        let get = src.url(&format!("/v2/{src_repo}/blobs/{digest}"));
        let resp = src
            .send_expecting(
                Request::new(Method::GET, &get, Scope::pull(src_repo)),
                StatusCode::is_success,
            )
            .await?;
        let body = checked_stream(Box::pin(resp.bytes_stream()), digest.to_string(), size);
        let location = self.start_upload(repo).await?;
        let url = with_digest(&location, digest);
        let what = format!("blob {} from {}", short(digest), src.registry);
        let put = Request::new(Method::PUT, &url, Scope::push(repo))
            .octet_stream()
            .content_length(size)
            .stream(body, &what)
            .progress(progress);
        self.send_expecting(put, StatusCode::is_success).await?;
        Ok(())
    }

    /// Uploads a blob while it is still being written: one PATCH whose body follows the
    /// file as it grows (chunked transfer encoding) and ends when the writer reports the
    /// blob complete, then the commit under the digest the writer reports. Returns that
    /// digest and size. Best effort: on any failure (or when the writer gives up) the
    /// upload session is cancelled and the error returned, and the caller uploads the
    /// finished blob the ordinary, resumable way.
    pub async fn upload_growing(
        &self,
        repo: &str,
        feed: tokio::sync::watch::Receiver<crate::io::growing::Growth>,
    ) -> Result<(String, u64)> {
        let location = self.start_upload(repo).await?;
        let mut progress = crate::progress::silent_bytes("uploading while packing");
        let result = async {
            let body = crate::io::growing::follow(feed.clone());
            let patch = Request::new(Method::PATCH, &location, Scope::push(repo))
                .octet_stream()
                .stream(body, "the layer being packed")
                .progress(&mut progress);
            let resp = self.send_expecting(patch, StatusCode::is_success).await?;
            let next = self.next_location(&resp, &location);
            // The body ended, so the writer reported the blob complete.
            let (digest, size) = feed
                .borrow()
                .complete
                .clone()
                .context("the layer being packed ended unfinished")?;
            self.finish_upload(repo, &next, &digest).await?;
            Ok((digest, size))
        }
        .await;
        progress.finish();
        if result.is_err() {
            // Best effort: the registry drops abandoned sessions by itself too.
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                self.send(Request::new(Method::DELETE, &location, Scope::push(repo))),
            )
            .await;
        }
        result
    }

    async fn start_upload(&self, repo: &str) -> Result<String> {
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let post = Request::new(Method::POST, &url, Scope::push(repo))
            .content_length(0)
            .bytes(Vec::new());
        let resp = self
            .send_expecting(post, |s| *s == StatusCode::ACCEPTED)
            .await?;
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .context("the registry started an upload without a Location")?;
        Ok(self.absolute(loc))
    }

    /// Where an upload goes on after `resp`: its `Location` when it names one (made
    /// absolute), else `current`.
    fn next_location(&self, resp: &reqwest::Response, current: &str) -> String {
        resp.headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| self.absolute(l))
            .unwrap_or_else(|| current.to_string())
    }

    /// Commits a chunked upload.
    async fn finish_upload(&self, repo: &str, location: &str, digest: &str) -> Result<()> {
        let url = with_digest(location, digest);
        let put = Request::new(Method::PUT, &url, Scope::push(repo))
            .content_length(0)
            .bytes(Vec::new());
        self.send_expecting(put, StatusCode::is_success).await?;
        Ok(())
    }

    /// Where an interrupted upload goes on: the registry's current location for it and
    /// how many bytes it holds (`Range: 0-N` → N+1). `None`: start over, which is also the
    /// answer to `Range: 0-0` — the distribution registry says that both for an empty
    /// upload and for one holding a single byte, and resuming at the wrong one of the two
    /// corrupts the blob.
    async fn resume_point(&self, repo: &str, location: &str) -> Option<(String, u64)> {
        let resp = self
            .send(Request::new(Method::GET, location, Scope::push(repo)))
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let offset = match resp.headers().get(RANGE) {
            None => return None,
            Some(r) => resume_offset(r.to_str().ok()?)?,
        };
        Some((self.next_location(&resp, location), offset))
    }

    /// PATCHes `path` from `offset` in chunks, keeping `location` and `offset` current
    /// so a failure can resume.
    async fn send_chunks(
        &self,
        repo: &str,
        location: &mut String,
        offset: &mut u64,
        path: &Path,
        size: u64,
        progress: &mut crate::progress::Bytes,
    ) -> Result<Sent> {
        while *offset < size {
            let len = CHUNK.min(size - *offset);
            let range = format!("{}-{}", *offset, *offset + len - 1);
            // Sent once: after a failure `upload` asks the registry where to resume.
            let patch = Request::new(Method::PATCH, location.as_str(), Scope::push(repo))
                .octet_stream()
                .content_length(len)
                .header(
                    HeaderName::from_static("content-range"),
                    HeaderValue::from_str(&range)?,
                )
                .file(path, *offset, len)
                .once()
                .progress(progress);
            let resp = self.send(patch).await?;
            let status = resp.status();
            if *offset == 0 && matches!(status.as_u16(), 400 | 404 | 405 | 416 | 501) {
                return Ok(Sent::ChunksRefused);
            }
            if status != StatusCode::ACCEPTED && !status.is_success() {
                return Err(self.fail("PATCH", location, resp).await);
            }
            *location = self.next_location(&resp, location);
            *offset += len;
        }
        Ok(Sent::Chunked)
    }

    /// One PUT with the whole blob (`?digest=`).
    async fn send_whole(
        &self,
        repo: &str,
        location: &str,
        path: &Path,
        digest: &str,
        size: u64,
        progress: &mut crate::progress::Bytes,
    ) -> Result<Sent> {
        let url = with_digest(location, digest);
        progress.set_position(0);
        let put = Request::new(Method::PUT, &url, Scope::push(repo))
            .octet_stream()
            .content_length(size)
            .file(path, 0, size)
            .once()
            .progress(progress);
        self.send_expecting(put, StatusCode::is_success).await?;
        Ok(Sent::Done)
    }
}

enum Sent {
    Done,
    /// All chunks sent; the upload is committed with a PUT to its location.
    Chunked,
    /// The registry does not take PATCH uploads.
    ChunksRefused,
}

/// A blob's bytes as they arrive, failing the stream when they run past `size`, end
/// short of it, or hash to another digest than `digest`: a request carrying this body
/// then breaks off before the registry could commit it.
fn checked_stream(
    body: impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send + Unpin + 'static,
    digest: String,
    size: u64,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    struct State<B> {
        body: B,
        sha: sha2::Sha256,
        have: u64,
        digest: String,
        size: u64,
        done: bool,
    }
    let state = State {
        body,
        sha: <sha2::Sha256 as sha2::Digest>::new(),
        have: 0,
        digest,
        size,
        done: false,
    };
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    futures_util::stream::unfold(state, move |mut st| async move {
        if st.done {
            return None;
        }
        match st.body.next().await {
            Some(Ok(chunk)) => {
                st.have += chunk.len() as u64;
                if st.have > st.size {
                    st.done = true;
                    let e = invalid(format!(
                        "blob {} is longer than its declared {} bytes",
                        st.digest, st.size
                    ));
                    return Some((Err(e), st));
                }
                sha2::Digest::update(&mut st.sha, &chunk);
                Some((Ok(chunk), st))
            }
            Some(Err(e)) => {
                st.done = true;
                Some((Err(std::io::Error::other(e)), st))
            }
            None => {
                st.done = true;
                let actual = format!(
                    "sha256:{}",
                    hex::encode(sha2::Digest::finalize(st.sha.clone()))
                );
                if st.have != st.size || actual != st.digest {
                    let e = invalid(format!(
                        "blob {} arrived as {} bytes hashing to {actual}, not {} bytes",
                        st.digest, st.have, st.size
                    ));
                    return Some((Err(e), st));
                }
                None
            }
        }
    })
}

/// The byte an upload resumes at from the registry's `Range: 0-N` (N+1), or `None` to
/// start a new upload: `0-0` is ambiguous (nothing or one byte), anything else malformed.
fn resume_offset(range: &str) -> Option<u64> {
    let (start, end) = range.trim().split_once('-')?;
    let (start, end): (u64, u64) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    (start == 0 && end > 0).then_some(end + 1)
}

/// An upload location with the `digest` query parameter that commits it.
fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_resumes_after_the_last_byte_the_registry_holds() {
        assert_eq!(resume_offset("0-16777215"), Some(16 << 20));
        assert_eq!(resume_offset(" 0-1 "), Some(2));
        // The distribution registry answers 0-0 for an empty upload and for a one-byte
        // one: resuming at 1 would drop the first byte, so the upload starts over.
        assert_eq!(resume_offset("0-0"), None);
        for bad in ["", "0", "bytes=0-9", "5-9", "0-x", "-9"] {
            assert_eq!(resume_offset(bad), None, "{bad:?}");
        }
    }
}
