//! One client per registry: the HTTP transport of the distribution API, built once.
//!
//! Every request, the token handshake included, is sent here on reqwest so that
//! diskforge controls what an untrusted registry can do to it: documents are read with
//! a size cap and a deadline, transfers fail when they stall (fewer than
//! [`MIN_WINDOW_BYTES`] in a window) instead of after a total time, uploads go in chunks
//! and resume where the registry says it stopped, and `Retry-After` is honoured
//! (capped). Where a request may go and whether it carries the credential is decided in
//! one place, [`credential_allowed`]: a credential goes only to the origin it was issued
//! for (the registry; the token realm for the token request), never to a host a
//! response named, and nothing goes over plain HTTP unless plain HTTP was allowed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use oci_client::secrets::RegistryAuth;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::RegistryOptions;
use crate::io::limits::MAX_DOCUMENT;
use crate::io::retry::{retry_after, RetryPolicy};

/// Upload chunk size: small enough that one chunk finishes in seconds even on a slow
/// link (a failed chunk is all a retry repeats), large enough to keep requests few.
pub const CHUNK: u64 = 16 << 20;
/// A transfer must move at least this many bytes in every window of the idle timeout.
pub const MIN_WINDOW_BYTES: u64 = 64 << 10;
/// The largest token response read (registries answer a few KiB).
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

/// A registry refused or failed a request.
#[derive(Debug, thiserror::Error)]
#[error("{method} {url}: HTTP {status}{}", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) })]
pub struct HttpError {
    pub method: String,
    pub url: String,
    pub status: u16,
    pub detail: String,
}

/// The registry refused the credentials, or asked for some and none were found: the
/// message says which.
#[derive(Debug, thiserror::Error)]
#[error("{}", auth_message(.registry, .detail, *.had_credentials))]
pub struct AuthError {
    pub registry: String,
    pub detail: String,
    /// Whether a credential for the registry was found (and sent where allowed).
    pub had_credentials: bool,
}

fn auth_message(registry: &str, detail: &str, had_credentials: bool) -> String {
    if had_credentials {
        format!("authentication failed for {registry} with the credentials found for it: check --creds / DISKFORGE_CREDS or the auth file ({detail})")
    } else {
        format!("authentication required by {registry}: no credentials for it were found: give --creds USER:PASSWORD or DISKFORGE_CREDS, or log in with `podman login {registry}` or `skopeo login {registry}` ({detail})")
    }
}

/// diskforge refused to send a request over plain HTTP (a downgrade from HTTPS, or a
/// credential in plain text) where plain HTTP was not allowed.
#[derive(Debug, thiserror::Error)]
#[error("refusing to send a request to {url}: {why}; allow plain HTTP with --tls-verify=false (or list {authority} under output.insecure-registries) only if the network is trusted")]
pub struct PlaintextRefused {
    pub url: String,
    pub authority: String,
    pub why: String,
}

/// Where plain HTTP is allowed: everywhere with `--tls-verify=false`, else only to the
/// listed insecure registries.
#[derive(Debug, Clone)]
struct Plaintext {
    anywhere: bool,
    hosts: Vec<String>,
}

impl Plaintext {
    fn allows(&self, url: &Url) -> bool {
        let target = authority(url);
        self.anywhere || self.hosts.iter().any(|h| h.eq_ignore_ascii_case(&target))
    }
}

/// `host[:port]` of a URL, as registries are named on the command line.
fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

/// Who a request is addressed to, for [`credential_allowed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audience {
    /// The registry's API (and any URL a registry response named).
    Registry,
    /// The token realm named by the registry's `WWW-Authenticate` challenge, for the
    /// token request only.
    TokenRealm,
}

/// The one rule for where requests go and what they carry. `issuer` is the origin the
/// credential was issued for (the registry as diskforge reached it). Refuses (error) any
/// request over plain HTTP that `plaintext` does not allow — which covers a registry on
/// HTTPS naming an `http://` location or realm — and otherwise says whether the request
/// may carry the credential: to the token realm for the token request, else only to the
/// issuer's own scheme, host and port. A host a response named never gets it.
fn credential_allowed(
    issuer: &Url,
    target: &Url,
    audience: Audience,
    plaintext: &Plaintext,
) -> Result<bool, PlaintextRefused> {
    match target.scheme() {
        "https" => {}
        "http" if plaintext.allows(target) => {}
        scheme => {
            let why = if scheme != "http" {
                format!("{scheme}: is not a registry URL scheme")
            } else if issuer.scheme() == "https" {
                format!(
                    "it is plain HTTP, {} was reached over HTTPS, and diskforge does not downgrade to plain HTTP",
                    authority(issuer)
                )
            } else {
                "it is plain HTTP, which is allowed only for the registry itself".to_string()
            };
            return Err(PlaintextRefused {
                url: target.as_str().to_string(),
                authority: authority(target),
                why,
            });
        }
    }
    Ok(audience == Audience::TokenRealm
        || (issuer.scheme() == target.scheme()
            && issuer.host_str() == target.host_str()
            && issuer.port_or_known_default() == target.port_or_known_default()))
}

/// A redirect is followed only where [`credential_allowed`] lets a request go; reqwest
/// itself drops the Authorization header when a redirect leaves the host.
fn redirect_policy(plaintext: Plaintext) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 10 {
            return attempt.error("more than 10 redirects");
        }
        let Some(from) = attempt.previous().last().cloned() else {
            return attempt.follow();
        };
        match credential_allowed(&from, attempt.url(), Audience::Registry, &plaintext) {
            Ok(_) => attempt.follow(),
            Err(e) => attempt.error(e),
        }
    })
}

/// The realm and service of a `WWW-Authenticate: Bearer …` challenge (the scope is the
/// repository asked for).
#[derive(Debug, Default, PartialEq, Eq)]
struct BearerChallenge {
    realm: String,
    service: Option<String>,
}

/// Parses a Bearer challenge (`Bearer realm="…",service="…",scope="…"`); `None` for any
/// other scheme (Basic: the credential goes to the registry itself).
fn bearer_challenge(header: &str) -> Option<BearerChallenge> {
    let rest = header.trim();
    let (scheme, mut rest) = rest.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut c = BearerChallenge::default();
    loop {
        rest = rest.trim_start_matches(|ch: char| ch == ',' || ch.is_whitespace());
        if rest.is_empty() {
            break;
        }
        let (key, after) = rest.split_once('=')?;
        let (value, after) = match after.strip_prefix('"') {
            Some(q) => {
                let mut value = String::new();
                let mut chars = q.char_indices();
                let mut end = None;
                while let Some((i, ch)) = chars.next() {
                    match ch {
                        '\\' => value.extend(chars.next().map(|(_, e)| e)),
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        _ => value.push(ch),
                    }
                }
                (value, &q[end?..])
            }
            None => {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            }
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => c.realm = value,
            "service" => c.service = Some(value),
            _ => {}
        }
        rest = after;
    }
    (!c.realm.is_empty()).then_some(c)
}

/// A client for one registry.
pub struct Client {
    pub registry: String,
    base: String,
    origin: Url,
    plaintext: Plaintext,
    http: reqwest::Client,
    auth: RegistryAuth,
    secrets: Vec<String>,
    tokens: Mutex<HashMap<(String, bool), Option<String>>>,
    idle: Duration,
    policy: RetryPolicy,
    /// `--max-layer-size`, checked with the registry's known limit before a push.
    pub max_layer_size: Option<u64>,
}

/// Turns a transport error into one a user can act on (plain HTTP registry, untrusted
/// certificate, refused connection).
fn explain(registry: &str, e: &reqwest::Error, tls_verify: bool) -> String {
    let mut chain = String::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cur {
        chain.push_str(&c.to_string());
        chain.push_str(": ");
        cur = c.source();
    }
    let lower = chain.to_lowercase();
    let hint = if lower.contains("invalidcontenttype") || lower.contains("corrupt message") {
        format!(
            " — {registry} answered in plain HTTP, not HTTPS: for a registry without TLS use --tls-verify=false (or list it under output.insecure-registries)"
        )
    } else if lower.contains("certificate") || lower.contains("unknownissuer") {
        if tls_verify {
            format!(" — {registry}'s certificate is not trusted: give its CA with --cert-dir DIR, or use --tls-verify=false")
        } else {
            String::new()
        }
    } else if lower.contains("connection refused") {
        format!(" — nothing listens at {registry}")
    } else {
        String::new()
    };
    format!("{}{hint}", chain.trim_end_matches(": "))
}

fn transient(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// Tracks a transfer's progress for the stall check.
#[derive(Clone)]
struct Watch {
    window_start: Arc<Mutex<Instant>>,
    bytes: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            window_start: Arc::new(Mutex::new(Instant::now())),
            bytes: Arc::new(AtomicU64::new(0)),
            total: Arc::new(AtomicU64::new(0)),
        }
    }
    fn add(&self, n: u64) {
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
async fn watched<T>(
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

impl Client {
    /// Connects to `registry` (`host[:port]`): finds out whether it speaks HTTPS or, when
    /// allowed, plain HTTP, and loads the credentials for it.
    pub async fn connect(registry: &str, opts: &RegistryOptions) -> Result<Client> {
        let insecure = !opts.tls_verify || opts.insecure_registries.iter().any(|r| r == registry);
        let plaintext = Plaintext {
            anywhere: !opts.tls_verify,
            hosts: opts.insecure_registries.clone(),
        };
        let mut builder = crate::io::tls::client_builder()
            .user_agent(concat!("diskforge/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .redirect(redirect_policy(plaintext.clone()))
            .danger_accept_invalid_certs(insecure);
        if let Some(dir) = &opts.cert_dir {
            let (pems, identity) = cert_dir(dir)?;
            for pem in &pems {
                for c in reqwest::Certificate::from_pem_bundle(pem)
                    .context("reading a CA certificate of --cert-dir")?
                {
                    builder = builder.add_root_certificate(c);
                }
            }
            if let Some(id) = identity {
                builder = builder.identity(id);
            }
        }
        let http = builder.build().context("creating the HTTP client")?;
        let idle = opts.timeout;
        // Find the scheme: HTTPS first; plain HTTP only where allowed, as podman does.
        let ping = |scheme: &'static str| {
            let http = http.clone();
            let url = format!("{scheme}://{registry}/v2/");
            async move {
                tokio::time::timeout(idle, http.get(&url).send())
                    .await
                    .map_err(|_| anyhow!("GET {url}: no answer within {}s", idle.as_secs()))
                    .and_then(|r| {
                        r.map_err(|e| anyhow!("GET {url}: {}", explain(registry, &e, !insecure)))
                    })
            }
        };
        let scheme = match ping("https").await {
            Ok(_) => "https",
            Err(e) if insecure => match ping("http").await {
                Ok(_) => "http",
                Err(e2) => return Err(e2.context(format!("{e:#}"))),
            },
            Err(e) => return Err(e).with_context(|| format!("contacting registry {registry}")),
        };
        let base = format!("{scheme}://{registry}");
        let origin = Url::parse(&base).with_context(|| format!("{base} is not a valid URL"))?;
        let (auth, secrets) = super::auth::for_registry(registry, opts)?;
        Ok(Client {
            registry: registry.to_string(),
            base,
            origin,
            plaintext: if scheme == "http" {
                // Reached over plain HTTP because it was allowed for this registry.
                Plaintext {
                    anywhere: plaintext.anywhere,
                    hosts: [plaintext.hosts, vec![registry.to_string()]].concat(),
                }
            } else {
                plaintext
            },
            http,
            auth,
            secrets,
            tokens: Mutex::new(HashMap::new()),
            idle,
            policy: RetryPolicy::default(),
            max_layer_size: opts.max_layer_size,
        })
    }

    /// Strings to keep out of every message (credential values).
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    fn redact(&self, s: &str) -> String {
        crate::sys::exec::redact(s, &self.secrets)
    }

    /// Whether a request to `url` may carry the credential (see [`credential_allowed`]).
    fn may_carry(&self, url: &str, audience: Audience) -> Result<bool> {
        let target = Url::parse(url).with_context(|| format!("{url} is not a valid URL"))?;
        Ok(credential_allowed(
            &self.origin,
            &target,
            audience,
            &self.plaintext,
        )?)
    }

    /// The error for a 401 from `url`, which was sent without the credential because
    /// it is not the registry's own origin.
    /// Whether a credential for this registry was found.
    fn has_credentials(&self) -> bool {
        !matches!(self.auth, RegistryAuth::Anonymous)
    }

    fn withheld(&self, method: &Method, url: &str) -> anyhow::Error {
        let host = Url::parse(url)
            .map(|u| authority(&u))
            .unwrap_or_else(|_| url.to_string());
        AuthError {
            had_credentials: self.has_credentials(),
            registry: self.registry.clone(),
            detail: format!(
                "{method} {url}: HTTP 401: the registry sent this request to {host}, not to {}; diskforge sends the credential only to {}",
                self.registry, self.registry
            ),
        }
        .into()
    }

    /// The Authorization header for `repo` (push: pull and push scope): the token from
    /// the handshake, cached per repository, or the Basic credential. Only for a URL
    /// [`Client::may_carry`] allows.
    async fn authorization(&self, repo: &str, push: bool) -> Result<Option<HeaderValue>> {
        let key = (repo.to_string(), push);
        let cached = self.tokens.lock().expect("token lock").get(&key).cloned();
        let token = match cached {
            Some(t) => t,
            None => {
                let t =
                    match tokio::time::timeout(self.idle * 2, self.fetch_token(repo, push)).await {
                        Err(_) => bail!(
                            "authenticating to {}: no answer within {}s",
                            self.registry,
                            (self.idle * 2).as_secs()
                        ),
                        Ok(t) => t?,
                    };
                self.tokens
                    .lock()
                    .expect("token lock")
                    .insert(key, t.clone());
                t
            }
        };
        let value = match (token, &self.auth) {
            (Some(t), _) => format!("Bearer {t}"),
            (None, RegistryAuth::Basic(u, p)) => format!(
                "Basic {}",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("{u}:{p}")
                )
            ),
            (None, _) => return Ok(None),
        };
        let mut v = HeaderValue::from_str(&value).context("building the Authorization header")?;
        v.set_sensitive(true);
        Ok(Some(v))
    }

    /// The token handshake: the registry's challenge names a Bearer realm, which issues a
    /// token for `repo` (with the Basic credential when there is one). `None`: no Bearer
    /// challenge, so the Basic credential (if any) goes to the registry itself. Every
    /// token is registered with the redactor the moment it is read.
    async fn fetch_token(&self, repo: &str, push: bool) -> Result<Option<String>> {
        if let RegistryAuth::Bearer(t) = &self.auth {
            return Ok(Some(t.clone()));
        }
        let url = self.url("/v2/");
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| anyhow!("GET {url}: {}", explain(&self.registry, &e, true)))?;
        tracing::trace!("GET {url} -> {}", resp.status());
        let Some(challenge) = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .and_then(bearer_challenge)
        else {
            return Ok(None);
        };
        let realm = Url::parse(&challenge.realm).with_context(|| {
            format!(
                "{} named the token realm {:?}, which is not a URL",
                self.registry, challenge.realm
            )
        })?;
        let with_credential = self.may_carry(realm.as_str(), Audience::TokenRealm)?;
        let scope = format!(
            "repository:{repo}:{}",
            if push { "pull,push" } else { "pull" }
        );
        let mut query = vec![("scope", scope.as_str())];
        if let Some(s) = &challenge.service {
            query.push(("service", s.as_str()));
        }
        let mut req = self.http.get(realm.clone()).query(&query);
        if let (true, RegistryAuth::Basic(u, p)) = (with_credential, &self.auth) {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow!("GET {realm}: {}", explain(&self.registry, &e, true)))?;
        let status = resp.status();
        tracing::trace!("GET {realm} (token) -> {status}");
        if !status.is_success() {
            let detail = self.error_detail(resp).await;
            return Err(AuthError {
                had_credentials: self.has_credentials(),
                registry: self.registry.clone(),
                detail: format!("token request to {realm}: HTTP {status}: {detail}"),
            }
            .into());
        }
        let body = crate::io::limits::read_body_capped(
            resp,
            MAX_TOKEN_RESPONSE,
            self.idle,
            self.idle,
            "the token response",
        )
        .await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("the token response of {realm} is not JSON"))?;
        let token = v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .filter(|t| !t.is_empty())
            .with_context(|| format!("the token response of {realm} holds no token"))?;
        crate::redact::register(token);
        Ok(Some(token.to_string()))
    }

    fn forget_token(&self, repo: &str, push: bool) {
        self.tokens
            .lock()
            .expect("token lock")
            .remove(&(repo.to_string(), push));
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An upload location may be relative to the registry.
    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            self.url(location)
        }
    }

    /// Sends a request without a streaming body: retries transient failures (honouring
    /// `Retry-After`), renews the token once on 401, and waits at most the idle timeout
    /// for the response headers.
    async fn send(
        &self,
        method: Method,
        url: &str,
        repo: &str,
        push: bool,
        headers: HeaderMap,
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response> {
        let carries = self.may_carry(url, Audience::Registry)?;
        let mut failures = 0u32;
        let mut renewed = false;
        loop {
            crate::sys::interrupt::check()?;
            let mut req = self
                .http
                .request(method.clone(), url)
                .headers(headers.clone());
            let auth = match carries {
                true => self.authorization(repo, push).await?,
                false => None,
            };
            if let Some(auth) = auth {
                req = req.header(reqwest::header::AUTHORIZATION, auth);
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let outcome = tokio::time::timeout(self.idle, req.send()).await;
            if let Ok(Ok(resp)) = &outcome {
                // -vv: the HTTP trace (method, URL, status; never a header).
                tracing::trace!("{method} {url} -> {}", resp.status());
            }
            let (error, wait) = match outcome {
                Err(_) => (
                    anyhow!("{method} {url}: no answer within {}s", self.idle.as_secs()),
                    None,
                ),
                Ok(Err(e)) if crate::io::tls::name_not_resolved(&e).is_some() => {
                    // No retry: a name that does not resolve now will not in a few seconds.
                    return Err(anyhow::Error::new(e).context(format!("{method} {url}")));
                }
                Ok(Err(e)) => (
                    anyhow!("{method} {url}: {}", explain(&self.registry, &e, true)),
                    None,
                ),
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED && !carries {
                        return Err(self.withheld(&method, url));
                    }
                    if status == StatusCode::UNAUTHORIZED && !renewed {
                        renewed = true;
                        self.forget_token(repo, push);
                        continue;
                    }
                    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                        let detail = self.error_detail(resp).await;
                        return Err(AuthError {
                            had_credentials: self.has_credentials(),
                            registry: self.registry.clone(),
                            detail: format!("{method} {url}: HTTP {status}: {detail}"),
                        }
                        .into());
                    }
                    if !transient(status) {
                        return Ok(resp);
                    }
                    let wait = retry_after(resp.headers());
                    let detail = self.error_detail(resp).await;
                    (
                        HttpError {
                            method: method.to_string(),
                            url: url.to_string(),
                            status: status.as_u16(),
                            detail,
                        }
                        .into(),
                        wait,
                    )
                }
            };
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
                serde_json::json!({"url": url, "attempt": failures, "wait_ms": pause.as_millis() as u64}),
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// The registry's error message (its JSON `errors`, or the start of the body).
    async fn error_detail(&self, resp: reqwest::Response) -> String {
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

    async fn fail(&self, method: &str, url: &str, resp: reqwest::Response) -> anyhow::Error {
        let status = resp.status().as_u16();
        HttpError {
            method: method.to_string(),
            url: url.to_string(),
            status,
            detail: self.error_detail(resp).await,
        }
        .into()
    }

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
        let resp = self.send(Method::GET, &url, repo, false, h, None).await?;
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

    /// PUT a manifest under a tag or digest; returns its digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<String> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(media_type)?);
        let resp = self
            .send(Method::PUT, &url, repo, true, h, Some(bytes.to_vec()))
            .await?;
        if !resp.status().is_success() {
            return Err(self.fail("PUT", &url, resp).await);
        }
        Ok(crate::io::hash::sha256_digest(bytes))
    }

    /// The size of a blob the registry has, or `None`.
    pub async fn blob_size(&self, repo: &str, digest: &str) -> Result<Option<u64>> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let resp = self
            .send(Method::HEAD, &url, repo, false, HeaderMap::new(), None)
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp.content_length().unwrap_or(0))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.fail("HEAD", &url, resp).await),
        }
    }

    /// Asks the registry to mount `digest` from repository `from`; true when it did.
    pub async fn mount(&self, repo: &str, from: &str, digest: &str) -> Result<bool> {
        let url = self.url(&format!(
            "/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"
        ));
        let resp = self
            .send(
                Method::POST,
                &url,
                repo,
                true,
                HeaderMap::new(),
                Some(Vec::new()),
            )
            .await?;
        Ok(resp.status() == StatusCode::CREATED)
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
            .send(Method::GET, &url, repo, false, HeaderMap::new(), None)
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

    /// Uploads a small in-memory blob (one request) unless the registry has it.
    pub async fn put_small_blob(&self, repo: &str, data: &[u8], digest: &str) -> Result<()> {
        if self.blob_size(repo, digest).await?.is_some() {
            return Ok(());
        }
        let location = self.start_upload(repo).await?;
        let url = with_digest(&location, digest);
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let resp = self
            .send(Method::PUT, &url, repo, true, h, Some(data.to_vec()))
            .await?;
        if !resp.status().is_success() {
            return Err(self.fail("PUT", &url, resp).await);
        }
        Ok(())
    }

    /// The referrers index of `digest` from the OCI referrers API, or None when the
    /// registry does not answer it with an index (the referrers tag schema applies).
    pub async fn referrers(&self, repo: &str, digest: &str) -> Result<Option<Vec<u8>>> {
        let url = self.url(&format!("/v2/{repo}/referrers/{digest}"));
        let resp = self
            .send(Method::GET, &url, repo, false, HeaderMap::new(), None)
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
        let mut resp = self.send(Method::GET, &url, repo, false, h, None).await?;
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
            let resp = self.send(Method::GET, &url, repo, false, h, None).await?;
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
            .send(Method::GET, &get, src_repo, false, HeaderMap::new(), None)
            .await?;
        if !resp.status().is_success() {
            return Err(src.fail("GET", &get, resp).await);
        }
        let body = checked_stream(Box::pin(resp.bytes_stream()), digest.to_string(), size);
        let location = self.start_upload(repo).await?;
        let url = with_digest(&location, digest);
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from(size));
        let what = format!("blob {} from {}", short(digest), src.registry);
        let resp = self
            .send_body(Method::PUT, &url, repo, h, body, &what, progress)
            .await?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(self.fail("PUT", &url, resp).await);
        }
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
            let mut h = HeaderMap::new();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            let body = crate::io::growing::follow(feed.clone());
            let resp = self
                .send_body(
                    Method::PATCH,
                    &location,
                    repo,
                    h,
                    body,
                    "the layer being packed",
                    &mut progress,
                )
                .await?;
            let status = resp.status();
            if status != StatusCode::ACCEPTED && !status.is_success() {
                return Err(self.fail("PATCH", &location, resp).await);
            }
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
                self.send(
                    Method::DELETE,
                    &location,
                    repo,
                    true,
                    HeaderMap::new(),
                    None,
                ),
            )
            .await;
        }
        result
    }

    async fn start_upload(&self, repo: &str) -> Result<String> {
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let resp = self
            .send(Method::POST, &url, repo, true, h, Some(Vec::new()))
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.fail("POST", &url, resp).await);
        }
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
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let resp = self
            .send(Method::PUT, &url, repo, true, h, Some(Vec::new()))
            .await?;
        if !resp.status().is_success() {
            return Err(self.fail("PUT", &url, resp).await);
        }
        Ok(())
    }

    /// Where an interrupted upload goes on: the registry's current location for it and
    /// how many bytes it holds (`Range: 0-N` → N+1). `None`: start over, which is also the
    /// answer to `Range: 0-0` — the distribution registry says that both for an empty
    /// upload and for one holding a single byte, and resuming at the wrong one of the two
    /// corrupts the blob.
    async fn resume_point(&self, repo: &str, location: &str) -> Option<(String, u64)> {
        let resp = self
            .send(Method::GET, location, repo, true, HeaderMap::new(), None)
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
            let mut h = HeaderMap::new();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(CONTENT_LENGTH, HeaderValue::from(len));
            h.insert(
                "content-range",
                HeaderValue::from_str(&format!("{}-{}", *offset, *offset + len - 1))?,
            );
            let resp = self
                .stream_request(
                    Method::PATCH,
                    location,
                    repo,
                    h,
                    path,
                    *offset,
                    len,
                    progress,
                )
                .await?;
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
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from(size));
        progress.set_position(0);
        let resp = self
            .stream_request(Method::PUT, &url, repo, h, path, 0, size, progress)
            .await?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(self.fail("PUT", &url, resp).await);
        }
        Ok(Sent::Done)
    }

    /// Sends `len` bytes of `path` from `offset` as the body, failing on a stall.
    #[allow(clippy::too_many_arguments)]
    async fn stream_request(
        &self,
        method: Method,
        url: &str,
        repo: &str,
        headers: HeaderMap,
        path: &Path,
        offset: u64,
        len: u64,
        progress: &mut crate::progress::Bytes,
    ) -> Result<reqwest::Response> {
        let mut f = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        f.seek(std::io::SeekFrom::Start(offset)).await?;
        let stream = tokio_util::io::ReaderStream::with_capacity(f.take(len), 256 << 10);
        self.send_body(
            method,
            url,
            repo,
            headers,
            stream,
            &format!("{len} bytes"),
            progress,
        )
        .await
    }

    /// Sends `body` as a request's body, failing when it stalls; `what` names the body in
    /// that error.
    #[allow(clippy::too_many_arguments)]
    async fn send_body<S>(
        &self,
        method: Method,
        url: &str,
        repo: &str,
        headers: HeaderMap,
        body: S,
        what: &str,
        progress: &mut crate::progress::Bytes,
    ) -> Result<reqwest::Response>
    where
        S: futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
    {
        let watch = Watch::new();
        let w2 = watch.clone();
        let stream = body.map(move |chunk| {
            crate::sys::interrupt::check_io()?;
            if let Ok(b) = &chunk {
                w2.add(b.len() as u64);
            }
            chunk
        });
        let carries = self.may_carry(url, Audience::Registry)?;
        let mut req = self
            .http
            .request(method.clone(), url)
            .headers(headers)
            .body(reqwest::Body::wrap_stream(stream));
        let auth = match carries {
            true => self.authorization(repo, true).await?,
            false => None,
        };
        if let Some(auth) = auth {
            req = req.header(reqwest::header::AUTHORIZATION, auth);
        }
        let before = watch.total.load(Ordering::Relaxed);
        let resp = watched(
            async {
                req.send()
                    .await
                    .map_err(|e| anyhow!("{method} {url}: {}", explain(&self.registry, &e, true)))
            },
            &watch,
            self.idle,
            &format!("{method} of {what}"),
        )
        .await;
        progress.inc(watch.total.load(Ordering::Relaxed) - before);
        let resp = resp?;
        tracing::trace!("{method} {url} -> {}", resp.status());
        if transient(resp.status()) {
            let wait = retry_after(resp.headers());
            let err = self.fail(method.as_str(), url, resp).await;
            if let Some(w) = wait {
                tokio::time::sleep(w.min(self.policy.max_retry_after)).await;
            }
            return Err(err);
        }
        if resp.status() == StatusCode::UNAUTHORIZED && !carries {
            return Err(self.withheld(&method, url));
        }
        if resp.status() == StatusCode::UNAUTHORIZED {
            self.forget_token(repo, true);
            return Err(anyhow!(
                "{method} {url}: HTTP 401 (token expired?); retrying with a new token"
            ));
        }
        if resp.status() == StatusCode::FORBIDDEN {
            let detail = self.error_detail(resp).await;
            return Err(AuthError {
                had_credentials: self.has_credentials(),
                registry: self.registry.clone(),
                detail,
            }
            .into());
        }
        Ok(resp)
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

fn short(d: &str) -> &str {
    let h = d.trim_start_matches("sha256:");
    &h[..h.len().min(12)]
}

/// Reads a containers-style certificate directory: `*.crt` are CA certificates (PEM),
/// `NAME.cert` + `NAME.key` a client certificate.
fn cert_dir(dir: &Path) -> Result<(Vec<Vec<u8>>, Option<reqwest::Identity>)> {
    let mut roots = Vec::new();
    let mut identity = None;
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("reading --cert-dir {}", dir.display()))?;
    for e in entries {
        let p = e?.path();
        match p.extension().and_then(|x| x.to_str()) {
            Some("crt") => {
                let pem = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                reqwest::Certificate::from_pem_bundle(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", p.display()))?;
                roots.push(pem);
            }
            Some("cert") => {
                let key = p.with_extension("key");
                let mut pem =
                    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                pem.extend(std::fs::read(&key).with_context(|| {
                    format!("reading {} (the key for {})", key.display(), p.display())
                })?);
                identity = Some(reqwest::Identity::from_pem(&pem).with_context(|| {
                    format!(
                        "{} and {} are not a PEM certificate and key",
                        p.display(),
                        key.display()
                    )
                })?);
            }
            _ => {}
        }
    }
    Ok((roots, identity))
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

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn a_credential_goes_only_to_the_origin_it_was_issued_for() {
        let strict = Plaintext {
            anywhere: false,
            hosts: Vec::new(),
        };
        let reg = url("https://reg.example:5000");
        let ok = |target: &str, audience| credential_allowed(&reg, &url(target), audience, &strict);
        // The registry itself, default port spelled out or not.
        assert!(ok(
            "https://reg.example:5000/v2/x/blobs/uploads/1",
            Audience::Registry
        )
        .unwrap());
        let reg443 = url("https://reg.example");
        assert!(credential_allowed(
            &reg443,
            &url("https://reg.example:443/v2/"),
            Audience::Registry,
            &strict
        )
        .unwrap());
        // A host, port or scheme a response named: sent there, but without it.
        for other in [
            "https://other.example:5000/v2/x/blobs/uploads/1",
            "https://reg.example:5001/v2/",
            "https://reg.example/v2/",
        ] {
            assert!(!ok(other, Audience::Registry).unwrap(), "{other}");
        }
        // The token realm gets it for the token request, on any host over HTTPS.
        assert!(ok("https://auth.example/token", Audience::TokenRealm).unwrap());
        // Plain HTTP from an HTTPS registry: refused, for the realm too.
        for (target, audience) in [
            (
                "http://reg.example:5000/v2/x/blobs/uploads/1",
                Audience::Registry,
            ),
            ("http://other.example/v2/", Audience::Registry),
            ("http://auth.example/token", Audience::TokenRealm),
        ] {
            let e = ok(target, audience).unwrap_err();
            assert!(e.to_string().contains("does not downgrade"), "{e}");
        }
        assert!(ok("ftp://reg.example:5000/x", Audience::Registry).is_err());
        // --tls-verify=false allows plain HTTP anywhere, still without the credential
        // for other hosts.
        let loose = Plaintext {
            anywhere: true,
            hosts: Vec::new(),
        };
        assert!(!credential_allowed(
            &reg,
            &url("http://other.example/v2/"),
            Audience::Registry,
            &loose
        )
        .unwrap());
        assert!(credential_allowed(
            &reg,
            &url("http://auth.example/t"),
            Audience::TokenRealm,
            &loose
        )
        .unwrap());
        // A registry listed as insecure: plain HTTP to it, not to the hosts it names.
        let listed = Plaintext {
            anywhere: false,
            hosts: vec!["127.0.0.1:5000".into()],
        };
        let upper = Plaintext {
            anywhere: false,
            hosts: vec!["Reg.Example:5000".into()],
        };
        assert!(upper.allows(&url("http://reg.example:5000/v2/")));
        let plain = url("http://127.0.0.1:5000");
        assert!(credential_allowed(
            &plain,
            &url("http://127.0.0.1:5000/v2/"),
            Audience::Registry,
            &listed
        )
        .unwrap());
        let e = credential_allowed(
            &plain,
            &url("http://127.0.0.2:5000/t"),
            Audience::TokenRealm,
            &listed,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("only for the registry itself"),
            "{e}"
        );
    }

    #[test]
    fn bearer_challenges_are_parsed_and_others_ignored() {
        assert_eq!(
            bearer_challenge(
                r#"Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull""#
            ),
            Some(BearerChallenge {
                realm: "https://auth.example/token".into(),
                service: Some("reg.example".into()),
            })
        );
        assert_eq!(
            bearer_challenge(r#"bearer service="a, b" , realm="https://x/t?a=\"q\"""#),
            Some(BearerChallenge {
                realm: r#"https://x/t?a="q""#.into(),
                service: Some("a, b".into()),
            })
        );
        assert_eq!(
            bearer_challenge("Bearer realm=https://x/t,service=s"),
            Some(BearerChallenge {
                realm: "https://x/t".into(),
                service: Some("s".into()),
            })
        );
        for other in [
            r#"Basic realm="registry""#,
            "Bearer",
            r#"Bearer service="s""#,
            r#"Bearer realm="unterminated"#,
            "",
        ] {
            assert_eq!(bearer_challenge(other), None, "{other}");
        }
    }
}
