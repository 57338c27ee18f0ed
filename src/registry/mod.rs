//! Registries: a client built once per registry (transport, auth, bounds), pushing
//! images from a layout, pulling them into one, and reading what a registry holds.

pub mod auth;
pub mod client;
pub mod copy;
pub mod limits;
pub mod pull;
pub mod push;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

pub use client::{AuthError, Client};

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// False: plain HTTP and unverified TLS allowed for every registry (`--tls-verify=false`).
    pub tls_verify: bool,
    /// Registries (`host[:port]`) that may be reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// `USER:PASSWORD` from `--creds` / `DISKFORGE_CREDS`; auth files otherwise.
    pub creds: Option<crate::recipe::SecretValue>,
    /// `--authfile`: the only auth file read when given.
    pub authfile: Option<PathBuf>,
    /// `--cert-dir`: CA certificates (`*.crt`) and a client certificate (`*.cert`/`*.key`).
    pub cert_dir: Option<PathBuf>,
    /// Longest silence (and least progress window) tolerated from a registry.
    pub timeout: Duration,
    /// `--max-layer-size`: the largest compressed layer pushed (registries' own
    /// documented limits apply too, see `limits`).
    pub max_layer_size: Option<u64>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            tls_verify: true,
            insecure_registries: Vec::new(),
            creds: None,
            authfile: None,
            cert_dir: None,
            timeout: Duration::from_secs(60),
            max_layer_size: None,
        }
    }
}

/// A registry reference split into registry, repository and tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl RemoteRef {
    /// Parses `[docker://]HOST/REPO[:TAG][@DIGEST]` (Docker Hub names are normalized as
    /// the container tools do).
    pub fn parse(s: &str) -> Result<RemoteRef> {
        let s = s.trim_start_matches("docker://");
        let r: oci_client::Reference = s
            .parse()
            .with_context(|| format!("{s:?} is not an image reference such as HOST/REPO:TAG"))?;
        Ok(RemoteRef {
            registry: r.resolve_registry().to_string(),
            repository: r.repository().to_string(),
            tag: r.tag().map(str::to_string),
            digest: r.digest().map(str::to_string),
        })
    }

    /// The digest when pinned, else the tag (`latest` when neither is given).
    pub fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// `HOST/REPO@DIGEST`.
    pub fn pinned(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.registry, self.repository)
    }
}

impl std::fmt::Display for RemoteRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_and_print() {
        let r = RemoteRef::parse("docker://127.0.0.1:5000/lab/x:1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference()),
            ("127.0.0.1:5000", "lab/x", "1")
        );
        assert_eq!(r.to_string(), "127.0.0.1:5000/lab/x:1");
        let d = format!("sha256:{}", "a".repeat(64));
        let p = RemoteRef::parse(&format!("reg.example.com/a/b@{d}")).unwrap();
        assert_eq!(p.reference(), d);
        assert_eq!(p.pinned(&d), format!("reg.example.com/a/b@{d}"));
        assert!(RemoteRef::parse("reg.example.com/a@sha256:short").is_err());
    }
}
