//! The one request path to a registry. A [`Request`] says what is sent, where, for which
//! repository and action, and whether it may be sent again; [`Client::send`] sends it;
//! [`classify`] sorts every answer into what happens next — done, retry (after the
//! backoff or the registry's `Retry-After`), renew the token, authentication failed, or
//! fail — and the loop applies that. Whether a request carries the credential is decided
//! by [`credential_allowed`](super::client) before the first attempt.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE,
};
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::client::{Audience, AuthError, Client, HttpError, Scope};
use crate::io::retry::retry_after;

/// A transfer must move at least this many bytes in every window of the idle timeout.
pub const MIN_WINDOW_BYTES: u64 = 64 << 10;

/// A request's body.
pub enum Body {
    Empty,
    Bytes(bytes::Bytes),
    /// `len` bytes of `path` from `offset`, opened again for every attempt.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    /// Bytes produced once (a blob in flight from another registry, a layer being
    /// packed): a request with this body is sent once.
    Stream {
        stream: Option<BoxStream<'static, std::io::Result<bytes::Bytes>>>,
        what: String,
    },
}

/// One request to a registry, built with [`Request::new`] and the methods after it.
pub struct Request<'p> {
    pub method: Method,
    pub url: String,
    pub scope: Scope,
    pub headers: HeaderMap,
    pub body: Body,
    /// Sent once even when its body could be sent again: an upload session's chunk,
    /// whose caller resumes from where the registry says it stopped instead.
    once: bool,
    progress: Option<&'p mut crate::progress::Bytes>,
}

impl<'p> Request<'p> {
    pub fn new(method: Method, url: impl Into<String>, scope: Scope) -> Request<'p> {
        Request {
            method,
            url: url.into(),
            scope,
            headers: HeaderMap::new(),
            body: Body::Empty,
            once: false,
            progress: None,
        }
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    pub fn headers(mut self, h: HeaderMap) -> Self {
        self.headers.extend(h);
        self
    }

    /// `Content-Type: application/octet-stream`: a blob's bytes.
    pub fn octet_stream(self) -> Self {
        self.header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )
    }

    /// `Content-Length: len`, for a body whose length reqwest cannot know (a file range,
    /// a stream) or an empty one that a registry wants declared.
    pub fn content_length(self, len: u64) -> Self {
        self.header(CONTENT_LENGTH, HeaderValue::from(len))
    }

    pub fn bytes(mut self, b: impl Into<bytes::Bytes>) -> Self {
        self.body = Body::Bytes(b.into());
        self
    }

    pub fn file(mut self, path: &std::path::Path, offset: u64, len: u64) -> Self {
        self.body = Body::File {
            path: path.to_path_buf(),
            offset,
            len,
        };
        self
    }

    /// `what` names the body in a stall error.
    pub fn stream<S>(mut self, s: S, what: &str) -> Self
    where
        S: futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
    {
        self.body = Body::Stream {
            stream: Some(s.boxed()),
            what: what.to_string(),
        };
        self
    }

    /// Sent once: the caller retries in its own way (see the field).
    pub fn once(mut self) -> Self {
        self.once = true;
        self
    }

    /// Counts the body's bytes into `p` as they go.
    pub fn progress(mut self, p: &'p mut crate::progress::Bytes) -> Self {
        self.progress = Some(p);
        self
    }

    /// Whether a failed attempt may be sent again by [`Client::send`].
    pub fn replayable(&self) -> bool {
        !self.once && !matches!(self.body, Body::Stream { .. })
    }

    /// Whether the body is transferred as a stream (judged by stalls, not a deadline).
    fn streamed(&self) -> bool {
        matches!(self.body, Body::File { .. } | Body::Stream { .. })
    }

    fn describe(&self) -> String {
        match self.scope {
            Scope::TokenRealm => format!("token request to {}", self.url),
            _ => format!("{} {}", self.method, self.url),
        }
    }
}

/// What came back from one attempt, as [`classify`] needs it.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    Response(StatusCode, &'a HeaderMap),
    /// No response: timed out, stalled, or the connection failed. `lasting` when a
    /// retry cannot help: a name that does not resolve, or Ctrl-C.
    NoResponse {
        lasting: bool,
    },
}

/// What an attempt carried, as [`classify`] needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// Asked for no credential (the challenge probe): a 401 or 403 is its answer.
    Nothing,
    /// The credential was withheld: the URL is not the origin it was issued for.
    Withheld,
    /// The credential found for the registry (or none, when none was found) was sent;
    /// `renewable` while a token can still be renewed once.
    Credential { renewable: bool },
}

/// What happens after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// An answer for the caller (which reads its status: 404 can mean "not there").
    Done,
    /// A transient failure: again after the registry's `Retry-After`, else the backoff.
    Retry(Option<Duration>),
    /// 401 with a token that may have expired: drop it and ask again.
    RenewToken,
    /// The registry refused the credential, or wants one that was withheld or missing.
    Auth,
    /// Nothing a retry can fix.
    Fail,
}

fn transient(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// The one decision of what an answer means, for every request.
pub fn classify(answer: Answer<'_>, carried: Carried) -> Class {
    let (status, headers) = match answer {
        Answer::NoResponse { lasting: true } => return Class::Fail,
        Answer::NoResponse { lasting: false } => return Class::Retry(None),
        Answer::Response(s, h) => (s, h),
    };
    let refused = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
    match carried {
        _ if transient(status) => Class::Retry(retry_after(headers)),
        Carried::Nothing => Class::Done,
        Carried::Withheld if refused => Class::Auth,
        Carried::Credential { renewable: true } if status == StatusCode::UNAUTHORIZED => {
            Class::RenewToken
        }
        Carried::Credential { .. } if refused => Class::Auth,
        _ => Class::Done,
    }
}

impl Client {
    /// Sends `req`: every request to a registry or its token realm goes through here.
    /// Applies [`classify`] to each attempt; retries a replayable request with backoff
    /// (or the registry's `Retry-After`, capped) up to the retry policy; renews the
    /// token once on 401; raises [`AuthError`] when the registry refuses the
    /// credential. A request that is not replayable fails on its first transient error,
    /// after waiting out a `Retry-After` so that its caller's retry honours it.
    pub async fn send(&self, mut req: Request<'_>) -> Result<reqwest::Response> {
        let audience = match req.scope {
            Scope::TokenRealm => Audience::TokenRealm,
            _ => Audience::Registry,
        };
        let allowed = self.may_carry(&req.url, audience)?;
        let mut failures = 0u32;
        let mut renewed = false;
        loop {
            crate::sys::interrupt::check()?;
            let carried = match (&req.scope, allowed) {
                (Scope::Probe, _) => Carried::Nothing,
                (_, false) => Carried::Withheld,
                (Scope::Repository { .. }, true) => Carried::Credential {
                    renewable: !renewed,
                },
                (Scope::TokenRealm, true) => Carried::Credential { renewable: false },
            };
            let auth = match carried {
                Carried::Credential { .. } => self.authorization(&req.scope).await?,
                _ => None,
            };
            let outcome = self.attempt(&mut req, auth).await;
            let class = match &outcome {
                Ok(resp) => {
                    // -vv: the HTTP trace (method, URL, status; never a header).
                    tracing::trace!("{} -> {}", req.describe(), resp.status());
                    classify(Answer::Response(resp.status(), resp.headers()), carried)
                }
                Err(e) => classify(
                    Answer::NoResponse {
                        lasting: lasting(e),
                    },
                    carried,
                ),
            };
            let (error, wait) = match (class, outcome) {
                (Class::Done, Ok(resp)) => return Ok(resp),
                (Class::Fail, Err(e)) => return Err(e),
                (Class::Auth, Ok(resp))
                    if carried == Carried::Withheld
                        && resp.status() == StatusCode::UNAUTHORIZED =>
                {
                    return Err(self.withheld(&req.method, &req.url))
                }
                (Class::Auth, Ok(resp)) => {
                    let status = resp.status();
                    let detail = self.error_detail(resp).await;
                    return Err(AuthError {
                        had_credentials: self.has_credentials(),
                        registry: self.registry.clone(),
                        detail: format!("{}: HTTP {status}: {detail}", req.describe()),
                    }
                    .into());
                }
                (Class::RenewToken, _) => {
                    renewed = true;
                    self.forget_token(&req.scope);
                    if req.replayable() {
                        continue;
                    }
                    (
                        anyhow!(
                            "{}: HTTP 401 (token expired?); retrying with a new token",
                            req.describe()
                        ),
                        None,
                    )
                }
                (Class::Retry(wait), Ok(resp)) => {
                    (self.fail(req.method.as_str(), &req.url, resp).await, wait)
                }
                (Class::Retry(wait), Err(e)) => (e, wait),
                (class, outcome) => unreachable!(
                    "classify answered {class:?} for {}",
                    if outcome.is_ok() {
                        "a response"
                    } else {
                        "no response"
                    }
                ),
            };
            if !req.replayable() {
                if let Some(w) = wait {
                    tokio::time::sleep(w.min(self.policy.max_retry_after)).await;
                }
                return Err(error);
            }
            failures += 1;
            if self.policy.gives_up(failures) {
                return Err(error.context(format!("giving up after {failures} attempts")));
            }
            let pause = self.policy.wait(failures, wait);
            tracing::warn!(
                "{} (attempt {failures}); retrying in {}",
                self.redact(&format!("{error:#}")),
                crate::progress::format_duration(pause)
            );
            crate::progress::event(
                "retry",
                serde_json::json!({"url": req.url, "attempt": failures, "wait_ms": pause.as_millis() as u64}),
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// One attempt of `req`: a body-less or in-memory request waits at most the idle
    /// timeout for the response headers; a streamed body may take as long as it keeps
    /// moving (see [`watched`]).
    async fn attempt(
        &self,
        req: &mut Request<'_>,
        auth: Option<HeaderValue>,
    ) -> Result<reqwest::Response> {
        let (method, url) = (req.method.clone(), req.url.clone());
        let mut builder = self
            .http
            .request(method.clone(), &url)
            .headers(req.headers.clone());
        if let Some(auth) = auth {
            builder = builder.header(AUTHORIZATION, auth);
        }
        let watch = Watch::new();
        let what = match &mut req.body {
            Body::Empty => String::new(),
            Body::Bytes(b) => {
                builder = builder.body(b.clone());
                String::new()
            }
            Body::File { path, offset, len } => {
                let mut f = tokio::fs::File::open(&path)
                    .await
                    .with_context(|| format!("opening {}", path.display()))?;
                f.seek(std::io::SeekFrom::Start(*offset)).await?;
                let s = tokio_util::io::ReaderStream::with_capacity(f.take(*len), 256 << 10);
                builder = builder.body(reqwest::Body::wrap_stream(counted(s, &watch)));
                format!("{len} bytes")
            }
            Body::Stream { stream, what } => {
                let s = stream
                    .take()
                    .context("a streamed body can be sent only once")?;
                builder = builder.body(reqwest::Body::wrap_stream(counted(s, &watch)));
                what.clone()
            }
        };
        let sending = async {
            builder
                .send()
                .await
                .map_err(|e| self.transport_error(&method, &url, e))
        };
        if !req.streamed() {
            return match tokio::time::timeout(self.idle, sending).await {
                Err(_) => Err(anyhow!(
                    "{method} {url}: no answer within {}s",
                    self.idle.as_secs()
                )),
                Ok(r) => r,
            };
        }
        let r = watched(sending, &watch, self.idle, &format!("{method} of {what}")).await;
        if let Some(p) = req.progress.as_deref_mut() {
            p.inc(watch.total.load(Ordering::Relaxed));
        }
        r
    }

    /// A failed send as an error: one whose name does not resolve keeps its typed
    /// source (it is not retried); others say what to do about them.
    fn transport_error(&self, method: &Method, url: &str, e: reqwest::Error) -> anyhow::Error {
        if crate::io::tls::name_not_resolved(&e).is_some() {
            return anyhow::Error::new(e).context(format!("{method} {url}"));
        }
        anyhow!(
            "{method} {url}: {}",
            super::client::explain(&self.registry, &e, true)
        )
    }

    /// The registry's error message (its JSON `errors`, or the start of the body).
    pub(super) async fn error_detail(&self, resp: reqwest::Response) -> String {
        let body = crate::io::limits::read_body_capped(
            resp,
            64 << 10,
            Duration::from_secs(5),
            Duration::from_secs(10),
            "error body",
        )
        .await
        .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let text = match v["errors"].as_array() {
            Some(errs) => errs
                .iter()
                .map(|e| {
                    format!(
                        "{} {}",
                        e["code"].as_str().unwrap_or_default(),
                        e["message"].as_str().unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            None => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        };
        self.redact(text.trim())
    }

    /// [`Client::send`], then the [`HttpError`] naming the request for an answer whose
    /// status `wanted` refuses (most callers want any 2xx: [`StatusCode::is_success`]).
    pub(super) async fn send_expecting(
        &self,
        req: Request<'_>,
        wanted: impl Fn(&StatusCode) -> bool,
    ) -> Result<reqwest::Response> {
        let (method, url) = (req.method.clone(), req.url.clone());
        let resp = self.send(req).await?;
        if !wanted(&resp.status()) {
            return Err(self.fail(method.as_str(), &url, resp).await);
        }
        Ok(resp)
    }

    /// The [`HttpError`] for an answer the caller cannot use.
    pub(super) async fn fail(
        &self,
        method: &str,
        url: &str,
        resp: reqwest::Response,
    ) -> anyhow::Error {
        let status = resp.status().as_u16();
        HttpError {
            method: method.to_string(),
            url: url.to_string(),
            status,
            detail: self.error_detail(resp).await,
        }
        .into()
    }
}

/// Errors no retry fixes: Ctrl-C, a name that does not resolve.
fn lasting(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::sys::interrupt::Interrupted>()
        .is_some()
        || crate::io::tls::is_name_not_resolved(e)
}

/// `body` with every chunk counted into `watch`, stopping on Ctrl-C.
fn counted<S>(
    body: S,
    watch: &Watch,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static
where
    S: futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
{
    let w = watch.clone();
    body.map(move |chunk| {
        crate::sys::interrupt::check_io()?;
        if let Ok(b) = &chunk {
            w.add(b.len() as u64);
        }
        chunk
    })
}

/// Tracks a transfer's progress for the stall check.
#[derive(Clone)]
pub(super) struct Watch {
    window_start: Arc<Mutex<Instant>>,
    bytes: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
}

impl Watch {
    pub(super) fn new() -> Watch {
        Watch {
            window_start: Arc::new(Mutex::new(Instant::now())),
            bytes: Arc::new(AtomicU64::new(0)),
            total: Arc::new(AtomicU64::new(0)),
        }
    }
    pub(super) fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.total.fetch_add(n, Ordering::Relaxed);
    }
    /// True when a full window went by with too little progress; starts a new window
    /// when one ended with enough.
    fn stalled(&self, window: Duration) -> bool {
        let mut start = self.window_start.lock().expect("watch lock");
        if start.elapsed() < window {
            return false;
        }
        if self.bytes.swap(0, Ordering::Relaxed) < MIN_WINDOW_BYTES {
            return true;
        }
        *start = Instant::now();
        false
    }
}

/// Runs `fut`, failing when `watch` sees a stalled window.
pub(super) async fn watched<T>(
    fut: impl std::future::Future<Output = Result<T>>,
    watch: &Watch,
    window: Duration,
    what: &str,
) -> Result<T> {
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(Duration::from_millis(250).min(window));
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = tick.tick() => {
                crate::sys::interrupt::check()?;
                if watch.stalled(window) {
                    bail!(
                        "{what} stalled: fewer than {} KiB moved in {}s (after {} bytes)",
                        MIN_WINDOW_BYTES >> 10,
                        window.as_secs(),
                        watch.total.load(Ordering::Relaxed)
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{RETRY_AFTER, WWW_AUTHENTICATE};

    fn answer(status: u16, headers: &[(HeaderName, &str)]) -> (StatusCode, HeaderMap) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        (StatusCode::from_u16(status).unwrap(), h)
    }

    fn class(status: u16, headers: &[(HeaderName, &str)], carried: Carried) -> Class {
        let (s, h) = answer(status, headers);
        classify(Answer::Response(s, &h), carried)
    }

    const SENT: Carried = Carried::Credential { renewable: true };
    const RENEWED: Carried = Carried::Credential { renewable: false };

    #[test]
    fn answers_the_caller_reads_are_done() {
        // 404 is how a registry says "not here" (a blob to upload, a missing tag); 202
        // starts an upload; 206 answers a Range; 416 refuses a chunk the caller handles.
        for status in [200, 201, 202, 204, 206, 307, 400, 404, 405, 416] {
            assert_eq!(class(status, &[], SENT), Class::Done, "{status}");
            assert_eq!(
                class(status, &[], Carried::Withheld),
                Class::Done,
                "{status}"
            );
        }
    }

    #[test]
    fn transient_answers_are_retried_after_the_registrys_retry_after() {
        assert_eq!(
            class(429, &[(RETRY_AFTER, "3")], SENT),
            Class::Retry(Some(Duration::from_secs(3)))
        );
        assert_eq!(
            class(503, &[(RETRY_AFTER, "Tue, 14 Nov 2000 22:13:50 GMT")], SENT),
            Class::Retry(Some(Duration::ZERO))
        );
        for status in [408, 500, 502, 503, 504] {
            assert_eq!(class(status, &[], SENT), Class::Retry(None), "{status}");
        }
        // An unreadable Retry-After is ignored: the backoff applies.
        assert_eq!(
            class(503, &[(RETRY_AFTER, "soon")], SENT),
            Class::Retry(None)
        );
        // Transient wins over everything else, for the probe and the realm as well.
        assert_eq!(class(502, &[], Carried::Nothing), Class::Retry(None));
        assert_eq!(class(500, &[], Carried::Withheld), Class::Retry(None));
        assert_eq!(class(503, &[], RENEWED), Class::Retry(None));
    }

    #[test]
    fn a_401_renews_the_token_once_then_fails_authentication() {
        let challenge = (
            WWW_AUTHENTICATE,
            r#"Bearer realm="https://auth.example/token",service="reg.example",error="invalid_token""#,
        );
        assert_eq!(
            class(401, std::slice::from_ref(&challenge), SENT),
            Class::RenewToken
        );
        assert_eq!(class(401, &[challenge], RENEWED), Class::Auth);
        // 403: the credential was read and refused; a new token would not help.
        assert_eq!(class(403, &[], SENT), Class::Auth);
        assert_eq!(class(403, &[], RENEWED), Class::Auth);
        // Basic auth: the same 401 either way.
        let basic = (WWW_AUTHENTICATE, r#"Basic realm="registry""#);
        assert_eq!(
            class(401, std::slice::from_ref(&basic), SENT),
            Class::RenewToken
        );
        assert_eq!(class(401, &[basic], RENEWED), Class::Auth);
    }

    #[test]
    fn a_401_where_the_credential_was_withheld_is_an_authentication_failure() {
        // Another host asked for credentials it was not sent: never renewed or resent.
        let basic = (WWW_AUTHENTICATE, r#"Basic realm="other""#);
        assert_eq!(class(401, &[basic], Carried::Withheld), Class::Auth);
        assert_eq!(class(403, &[], Carried::Withheld), Class::Auth);
    }

    #[test]
    fn the_challenge_probe_takes_a_401_as_its_answer() {
        let challenge = (WWW_AUTHENTICATE, r#"Bearer realm="https://a.example/t""#);
        assert_eq!(class(401, &[challenge], Carried::Nothing), Class::Done);
        assert_eq!(class(403, &[], Carried::Nothing), Class::Done);
        assert_eq!(class(200, &[], Carried::Nothing), Class::Done);
    }

    #[test]
    fn no_response_is_retried_unless_a_retry_cannot_help() {
        assert_eq!(
            classify(Answer::NoResponse { lasting: false }, SENT),
            Class::Retry(None)
        );
        assert_eq!(
            classify(Answer::NoResponse { lasting: true }, SENT),
            Class::Fail
        );
        assert_eq!(
            classify(Answer::NoResponse { lasting: true }, Carried::Nothing),
            Class::Fail
        );
    }

    #[test]
    fn only_a_body_that_can_be_produced_again_is_replayed() {
        let url = "https://reg.example/v2/a/blobs/uploads/1";
        let r = |m: Method| Request::new(m, url, Scope::push("a"));
        assert!(r(Method::GET).replayable());
        assert!(r(Method::PUT).bytes(b"{}".to_vec()).replayable());
        assert!(r(Method::PUT)
            .file(std::path::Path::new("/dev/null"), 0, 0)
            .replayable());
        assert!(!r(Method::PATCH)
            .file(std::path::Path::new("/dev/null"), 0, 0)
            .once()
            .replayable());
        let body = futures_util::stream::iter([Ok(bytes::Bytes::from_static(b"x"))]);
        assert!(!r(Method::PUT).stream(body, "a blob").replayable());
    }

    /// A loopback server: `GET /v2/` answers 200 (the ping and the challenge probe, no
    /// challenge); every other request gets the next of `answers` (status line and
    /// headers) and is recorded as `METHOD PATH` with the bytes of its body.
    /// `METHOD PATH` and body length of each request the server answered.
    type Seen = Arc<Mutex<Vec<(String, usize)>>>;

    fn serve(answers: Vec<&'static str>) -> (String, Seen) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Seen = Default::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut answers = answers.into_iter();
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut r = BufReader::new(conn);
                let mut line = String::new();
                // A TLS hello (the https ping) is not a request line: drop it.
                if r.read_line(&mut line).is_err() || !line.ends_with(" HTTP/1.1\r\n") {
                    continue;
                }
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let mut parts = line.split(' ');
                let (method, path) = (parts.next().unwrap(), parts.next().unwrap());
                let head = if path == "/v2/" {
                    "200 OK"
                } else {
                    log.lock().unwrap().push((format!("{method} {path}"), len));
                    answers.next().unwrap_or("500 Out Of Answers")
                };
                let _ = write!(
                    r.get_mut(),
                    "HTTP/1.1 {head}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        (addr, seen)
    }

    fn client(addr: &str) -> Client {
        crate::sys::rt::init().ok();
        let opts = super::super::RegistryOptions {
            tls_verify: false,
            timeout: Duration::from_secs(5),
            ..Default::default()
        };
        crate::sys::rt::block_on(Client::connect(addr, &opts)).unwrap()
    }

    #[test]
    fn a_replayable_request_is_retried_after_retry_after_and_renews_its_token_once() {
        let (addr, seen) = serve(vec![
            "503 Service Unavailable\r\nRetry-After: 1",
            "401 Unauthorized",
            "200 OK",
        ]);
        let c = client(&addr);
        let url = format!("http://{addr}/v2/lab/x/manifests/1");
        let started = Instant::now();
        let resp = crate::sys::rt::block_on(
            c.send(Request::new(Method::PUT, &url, Scope::push("lab/x")).bytes(&b"{}"[..])),
        )
        .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_secs(1));
        let seen = seen.lock().unwrap().clone();
        let put = ("PUT /v2/lab/x/manifests/1".to_string(), 2);
        assert_eq!(seen, vec![put.clone(), put.clone(), put]);
    }

    #[test]
    fn a_second_401_is_an_authentication_error() {
        let (addr, seen) = serve(vec!["401 Unauthorized", "401 Unauthorized"]);
        let c = client(&addr);
        let url = format!("http://{addr}/v2/lab/x/blobs/sha256:0");
        let e = crate::sys::rt::block_on(c.send(Request::new(
            Method::HEAD,
            &url,
            Scope::pull("lab/x"),
        )))
        .unwrap_err();
        let auth = e.downcast_ref::<AuthError>().expect("an AuthError");
        assert!(!auth.had_credentials);
        assert!(auth.detail.contains("HTTP 401"), "{}", auth.detail);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_streamed_body_is_sent_once_and_its_retry_after_is_waited_out() {
        let (addr, seen) = serve(vec![
            "503 Service Unavailable\r\nRetry-After: 1",
            "201 Created",
        ]);
        let c = client(&addr);
        let url = format!("http://{addr}/v2/lab/x/blobs/uploads/1?digest=sha256:0");
        let body = futures_util::stream::iter([Ok(bytes::Bytes::from_static(b"blob"))]);
        let started = Instant::now();
        let put = Request::new(Method::PUT, &url, Scope::push("lab/x"))
            .header(reqwest::header::CONTENT_LENGTH, HeaderValue::from(4u64))
            .stream(body, "a blob");
        let e = crate::sys::rt::block_on(c.send(put)).unwrap_err();
        assert_eq!(
            e.downcast_ref::<HttpError>().map(|h| h.status),
            Some(503),
            "{e:#}"
        );
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert_eq!(seen.lock().unwrap().len(), 1, "the stream was sent again");
    }
}
