//! Registry publishing: streaming push of an OCI layout, authentication, retries.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::cli::{GlobalOpts, PushArgs};

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// False: plain HTTP and unverified TLS allowed for every destination (`--tls-verify=false`).
    pub tls_verify: bool,
    /// Registries (`host[:port]`) that may be reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// `USER:PASSWORD` from `--creds` / `DISKFORGE_CREDS`; auth files otherwise.
    pub creds: Option<crate::recipe::SecretValue>,
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct PushOutcome {
    /// `HOST/REPO@sha256:…` of the first destination.
    pub pinned: String,
    /// The manifest digest `sha256:…`.
    pub digest: String,
    pub uploaded_blobs: usize,
    pub skipped_blobs: usize,
    pub mounted_blobs: usize,
}

/// Pushes the image tagged `tag` in the OCI layout `layout` to every `docker://HOST/REPO:TAG`
/// destination (same repository: one upload, several tags).
pub fn push_layout(
    _layout: &Path,
    _tag: &str,
    _destinations: &[String],
    _opts: &RegistryOptions,
) -> Result<PushOutcome> {
    bail!("pushing to a registry is not implemented yet")
}

/// Pulls `docker://HOST/REPO:TAG|@sha256:…` into the OCI layout `layout` under `tag`;
/// returns the manifest digest.
pub fn pull_to_layout(
    _reference: &str,
    _layout: &Path,
    _tag: &str,
    _opts: &RegistryOptions,
) -> Result<String> {
    bail!("pulling from a registry is not implemented yet")
}

pub fn cmd_push(_global: &GlobalOpts, _args: PushArgs) -> Result<ExitCode> {
    bail!("`push` is not implemented yet")
}

/// `diskforge inspect docker://…`: manifest, config, layers, and the disk's format and
/// virtual size read from the start of the layer.
pub fn cmd_inspect_remote(
    _global: &GlobalOpts,
    _args: crate::cli::InspectArgs,
) -> Result<ExitCode> {
    bail!("inspecting a registry image is not implemented yet")
}

/// Pushes an image index combining per-architecture images of one repository.
pub fn push_index(
    _destination: &str,
    _images: &[String],
    _opts: &RegistryOptions,
) -> Result<String> {
    bail!("pushing an image index is not implemented yet")
}

/// A KubeVirt VirtualMachine manifest that boots `pinned` (`HOST/REPO@sha256:…`) as a
/// containerDisk.
pub fn vm_manifest(
    pinned: &str,
    name: &str,
    instancetype: Option<&str>,
    preference: Option<&str>,
) -> String {
    let mut s = format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: {name}\nspec:\n  runStrategy: Always\n"
    );
    if let Some(i) = instancetype {
        s.push_str(&format!("  instancetype:\n    name: {i}\n"));
    }
    if let Some(p) = preference {
        s.push_str(&format!("  preference:\n    name: {p}\n"));
    }
    s.push_str("  template:\n    spec:\n      domain:\n        devices:\n          disks:\n            - name: rootdisk\n              disk:\n                bus: virtio\n");
    if instancetype.is_none() {
        s.push_str("        resources:\n          requests:\n            memory: 2Gi\n");
    }
    s.push_str(&format!(
        "      volumes:\n        - name: rootdisk\n          containerDisk:\n            image: {pinned}\n"
    ));
    s
}
