//! One client per registry, built once: how it was reached (HTTPS, or plain HTTP where
//! allowed), its TLS settings and credentials, and the one rule for where a request may
//! go and whether it carries the credential, [`credential_allowed`]: a credential goes
//! only to the origin it was issued for (the registry; the token realm for the token
//! request), never to a host a response named, and nothing goes over plain HTTP unless
//! plain HTTP was allowed. Requests are sent by [`request`](super::request); tokens are
//! in [`token`](super::token), pushing in [`upload`](super::upload), pulling in
//! [`download`](super::download).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use oci_client::secrets::RegistryAuth;
use reqwest::{Method, Url};

use super::RegistryOptions;
use crate::io::retry::RetryPolicy;

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
pub(super) fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

/// Who a request is addressed to, for [`credential_allowed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Audience {
    /// The registry's API (and any URL a registry response named).
    Registry,
    /// The token realm named by the registry's `WWW-Authenticate` challenge, for the
    /// token request only.
    TokenRealm,
}

/// What a request does for a repository, which is the token's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Pull,
    /// Pull and push.
    Push,
}

/// Whom a request is for, and so which credential it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The registry's challenge probe (`GET /v2/`): no credential; a 401 is its answer.
    Probe,
    /// The registry's API for a repository: the token for `action` (or the Basic
    /// credential when the registry issues no tokens).
    Repository { repo: String, action: Action },
    /// The token request to the realm the registry's challenge named: the Basic
    /// credential.
    TokenRealm,
}

impl Scope {
    pub fn pull(repo: &str) -> Scope {
        Scope::Repository {
            repo: repo.to_string(),
            action: Action::Pull,
        }
    }
    pub fn push(repo: &str) -> Scope {
        Scope::Repository {
            repo: repo.to_string(),
            action: Action::Push,
        }
    }
}

/// Tokens per repository and action; `None`: the registry issues none (Basic or
/// anonymous).
pub(super) type TokenCache = HashMap<(String, Action), Option<String>>;

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

/// A client for one registry.
pub struct Client {
    pub registry: String,
    base: String,
    origin: Url,
    plaintext: Plaintext,
    pub(super) http: reqwest::Client,
    pub(super) auth: RegistryAuth,
    secrets: Vec<String>,
    pub(super) tokens: Mutex<TokenCache>,
    /// The longest silence tolerated, and the stall window of a transfer.
    pub(super) idle: Duration,
    pub(super) policy: RetryPolicy,
    /// `--max-layer-size`, checked with the registry's known limit before a push.
    pub max_layer_size: Option<u64>,
}

/// Turns a transport error into one a user can act on (plain HTTP registry, untrusted
/// certificate, refused connection).
pub(super) fn explain(registry: &str, e: &reqwest::Error, tls_verify: bool) -> String {
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

impl Client {
    /// Connects to `registry` (`host[:port]`): finds out whether it speaks HTTPS or, when
    /// allowed, plain HTTP, and loads the credentials for it.
    pub async fn connect(registry: &str, opts: &RegistryOptions) -> Result<Client> {
        if opts.blocked_registries.iter().any(|r| r == registry) {
            anyhow::bail!("{registry} is blocked (blocked = true in registries.conf): diskforge does not contact it");
        }
        let listed = opts.insecure_registries.iter().any(|r| r == registry)
            || opts.conf.insecure_host(registry);
        let insecure = !opts.tls_verify || listed;
        let mut hosts = opts.insecure_registries.clone();
        if listed {
            hosts.push(registry.to_string());
        }
        let plaintext = Plaintext {
            anywhere: !opts.tls_verify,
            hosts,
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

    pub(super) fn redact(&self, s: &str) -> String {
        crate::sys::exec::redact(s, &self.secrets)
    }

    /// Whether a request to `url` may carry the credential (see [`credential_allowed`]).
    pub(super) fn may_carry(&self, url: &str, audience: Audience) -> Result<bool> {
        let target = Url::parse(url).with_context(|| format!("{url} is not a valid URL"))?;
        Ok(credential_allowed(
            &self.origin,
            &target,
            audience,
            &self.plaintext,
        )?)
    }

    /// Whether a credential for this registry was found.
    pub(super) fn has_credentials(&self) -> bool {
        !matches!(self.auth, RegistryAuth::Anonymous)
    }

    /// The error for a 401 from `url`, which was sent without the credential because
    /// it is not the registry's own origin.
    pub(super) fn withheld(&self, method: &Method, url: &str) -> anyhow::Error {
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

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An upload location may be relative to the registry.
    pub(super) fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            self.url(location)
        }
    }
}

pub(super) fn short(d: &str) -> &str {
    let h = d.trim_start_matches("sha256:");
    &h[..h.len().min(12)]
}

/// One client per registry (and way of reaching it) for a whole command: a build's
/// push and attestations, and every recipe of `build --jobs`, share its connections
/// and token.
#[derive(Clone, Default)]
pub struct Clients(std::sync::Arc<Mutex<ClientMap>>);

/// Clients by (registry, reached over plain HTTP).
type ClientMap = HashMap<(String, bool), std::sync::Arc<Client>>;

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "Clients({n})")
    }
}

impl Clients {
    /// The client for `registry` as `opts` reach it (connected on first use).
    pub async fn get(
        &self,
        registry: &str,
        opts: &RegistryOptions,
    ) -> Result<std::sync::Arc<Client>> {
        let plain = !opts.tls_verify
            || opts.insecure_registries.iter().any(|r| r == registry)
            || opts.conf.insecure_host(registry);
        let key = (registry.to_string(), plain);
        if let Some(c) = self.0.lock().expect("clients lock").get(&key) {
            return Ok(c.clone());
        }
        let client = std::sync::Arc::new(Client::connect(registry, opts).await?);
        Ok(self
            .0
            .lock()
            .expect("clients lock")
            .entry(key)
            .or_insert(client)
            .clone())
    }
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
}
