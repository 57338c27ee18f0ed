//! HTTP(S) downloads that stream into a [`Sink`], resume with `Range` after an interrupted
//! transfer, and retry transient failures (connect errors, resets, 5xx, 429) with
//! exponential backoff. Other statuses (404, 403, …) fail at once with an error naming
//! the URL and status.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::header::{CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use reqwest::StatusCode;

pub use crate::io::retry::RetryPolicy;

/// Where downloaded bytes go. The position is where a resumed request starts.
pub trait Sink {
    /// Bytes already held (the start of the next `Range` request).
    fn position(&self) -> u64;
    /// ETag or Last-Modified of the held bytes, sent as `If-Range` so a changed file is
    /// sent whole instead of being spliced onto the old bytes.
    fn validator(&self) -> Option<String>;
    fn set_validator(&mut self, validator: Option<String>) -> Result<()>;
    fn write(&mut self, data: &[u8]) -> Result<()>;
    /// Drops the held bytes: the server is sending the content from the start.
    fn reset(&mut self) -> Result<()>;
}

/// A sink in memory, for small files (checksum files, signatures, keys).
#[derive(Debug, Default)]
pub struct MemorySink {
    pub data: Vec<u8>,
    validator: Option<String>,
    limit: usize,
}

impl Sink for MemorySink {
    fn position(&self) -> u64 {
        self.data.len() as u64
    }
    fn validator(&self) -> Option<String> {
        self.validator.clone()
    }
    fn set_validator(&mut self, validator: Option<String>) -> Result<()> {
        self.validator = validator;
        Ok(())
    }
    fn write(&mut self, data: &[u8]) -> Result<()> {
        if self.data.len() + data.len() > self.limit {
            bail!("more than {} bytes", self.limit);
        }
        self.data.extend_from_slice(data);
        Ok(())
    }
    fn reset(&mut self) -> Result<()> {
        self.data.clear();
        Ok(())
    }
}

/// A non-retryable HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("GET {url} failed: HTTP {status}")]
pub struct HttpStatusError {
    pub url: String,
    pub status: u16,
}

/// An HTTP client with a retry policy.
#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
    policy: RetryPolicy,
}

enum Attempt {
    Done,
    /// Retry; the bool says whether this attempt made progress.
    Retry {
        error: anyhow::Error,
        progressed: bool,
        wait: Option<Duration>,
    },
}

fn transient_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// `bytes START-END/TOTAL` → START.
fn content_range_start(value: &str) -> Option<u64> {
    value
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

impl Http {
    pub fn new(policy: RetryPolicy) -> Result<Http> {
        let client = crate::io::tls::client_builder()
            .user_agent(concat!("diskforge/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // A stalled transfer is a transient failure: resume instead of hanging.
            .read_timeout(Duration::from_secs(60))
            .build()
            .context("creating the HTTP client")?;
        Ok(Http { client, policy })
    }

    /// A small file into memory (at most `limit` bytes), with the same retries.
    pub async fn fetch_bytes(&self, url: &str, limit: usize) -> Result<Vec<u8>> {
        let mut sink = MemorySink {
            limit,
            ..MemorySink::default()
        };
        self.download(url, &mut sink, None).await?;
        Ok(sink.data)
    }

    /// Streams `url` into `sink`, resuming from `sink.position()`. `label` turns on
    /// byte progress.
    pub async fn download<S: Sink + Send>(
        &self,
        url: &str,
        sink: &mut S,
        label: Option<&str>,
    ) -> Result<()> {
        let mut failures = 0u32;
        let mut progress: Option<crate::progress::Bytes> = None;
        loop {
            match self.attempt(url, sink, label, &mut progress).await? {
                Attempt::Done => {
                    if let Some(p) = progress {
                        p.finish();
                    }
                    return Ok(());
                }
                Attempt::Retry {
                    error,
                    progressed,
                    wait,
                } => {
                    // A transfer that keeps moving forward is not failing: only
                    // consecutive attempts without progress count against the limit.
                    failures = if progressed { 1 } else { failures + 1 };
                    if self.policy.gives_up(failures) {
                        return Err(error.context(format!(
                            "giving up on {url} after {failures} failed attempts"
                        )));
                    }
                    let wait = self.policy.wait(failures, wait);
                    tracing::warn!(
                        "download of {url} interrupted ({error:#}); retrying in {} (at byte {})",
                        crate::progress::format_duration(wait),
                        sink.position()
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn attempt<S: Sink + Send>(
        &self,
        url: &str,
        sink: &mut S,
        label: Option<&str>,
        progress: &mut Option<crate::progress::Bytes>,
    ) -> Result<Attempt> {
        let offset = sink.position();
        let mut request = self.client.get(url);
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
            if let Some(v) = sink.validator() {
                request = request.header(IF_RANGE, v);
            }
        }
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_builder() => {
                return Err(e).with_context(|| format!("invalid download URL {url}"))
            }
            Err(e) if crate::io::tls::name_not_resolved(&e).is_some() => {
                // No retry: a name that does not resolve now will not in a few seconds.
                return Err(anyhow::Error::new(e).context(format!("GET {url}")));
            }
            Err(e) => {
                return Ok(Attempt::Retry {
                    error: anyhow::Error::new(e).context(format!("GET {url}")),
                    progressed: false,
                    wait: None,
                })
            }
        };
        let status = response.status();
        let start = match status {
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let start = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_start);
                if start != Some(offset) {
                    sink.reset()?;
                    return Ok(Attempt::Retry {
                        error: anyhow::anyhow!(
                            "GET {url}: asked for bytes from {offset}, got Content-Range {start:?}"
                        ),
                        progressed: false,
                        wait: None,
                    });
                }
                tracing::info!("resuming {url} at byte {offset}");
                offset
            }
            s if s.is_success() => {
                if offset > 0 {
                    tracing::info!("{url}: the server sent the whole file again; restarting");
                    sink.reset()?;
                }
                let validator = validator_of(response.headers());
                sink.set_validator(validator)?;
                0
            }
            StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
                // The partial file is not a prefix of what the server has now.
                sink.reset()?;
                return Ok(Attempt::Retry {
                    error: anyhow::anyhow!("GET {url}: HTTP 416 for a resumed range"),
                    progressed: false,
                    wait: Some(Duration::ZERO),
                });
            }
            s if transient_status(s) => {
                let wait = crate::io::retry::retry_after(response.headers());
                return Ok(Attempt::Retry {
                    error: HttpStatusError {
                        url: url.to_string(),
                        status: s.as_u16(),
                    }
                    .into(),
                    progressed: false,
                    wait,
                });
            }
            s => {
                return Err(HttpStatusError {
                    url: url.to_string(),
                    status: s.as_u16(),
                }
                .into())
            }
        };
        let expected_total = response.content_length().map(|n| n + start);
        if let Some(label) = label {
            let p = progress.get_or_insert_with(|| crate::progress::bytes(label, expected_total));
            p.set_position(start);
        }
        let mut received = 0u64;
        loop {
            crate::sys::interrupt::check()?;
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    sink.write(&chunk)
                        .with_context(|| format!("storing data downloaded from {url}"))?;
                    received += chunk.len() as u64;
                    if let Some(p) = progress.as_mut() {
                        p.inc(chunk.len() as u64);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Ok(Attempt::Retry {
                        error: anyhow::Error::new(e).context(format!(
                            "reading the body of {url} at byte {}",
                            start + received
                        )),
                        progressed: received > 0,
                        wait: None,
                    })
                }
            }
        }
        if let Some(total) = expected_total {
            if sink.position() != total {
                return Ok(Attempt::Retry {
                    error: anyhow::anyhow!(
                        "GET {url}: body ended at byte {} of {total}",
                        sink.position()
                    ),
                    progressed: received > 0,
                    wait: None,
                });
            }
        }
        Ok(Attempt::Done)
    }
}

/// A validator usable in `If-Range`: a strong ETag, else Last-Modified.
fn validator_of(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let etag = headers
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.starts_with("W/"));
    etag.or_else(|| headers.get(LAST_MODIFIED).and_then(|v| v.to_str().ok()))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes */200"), None);
    }
}
