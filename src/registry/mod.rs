//! Registries: a client built once per registry (transport, auth, bounds), pushing
//! images from a layout, pulling them into one, and reading what a registry holds.

pub mod auth;
pub mod client;
pub mod conf;
pub mod copy;
mod download;
pub mod limits;
pub mod pull;
pub mod push;
pub mod request;
pub mod source;
mod token;
mod upload;

use std::path::PathBuf;
use std::time::Duration;

pub use crate::oci::reference::RemoteRef;
pub use client::{AuthError, Client, Clients};

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// False: plain HTTP and unverified TLS allowed for every registry (`--tls-verify=false`).
    pub tls_verify: bool,
    /// Registries (`host[:port]`) that may be reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Registries (`host[:port]`) never contacted (`blocked = true` in registries.conf).
    pub blocked_registries: Vec<String>,
    /// registries.conf's prefixes, locations and mirrors (see [`source`]).
    pub conf: conf::RegistriesConf,
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
            blocked_registries: Vec::new(),
            conf: conf::RegistriesConf::default(),
            creds: None,
            authfile: None,
            cert_dir: None,
            timeout: Duration::from_secs(60),
            max_layer_size: None,
        }
    }
}
