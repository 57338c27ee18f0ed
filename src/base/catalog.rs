//! Catalog entries: one YAML file per base image under `base-images/`, naming the
//! official image URL and official checksum source per architecture, or a build
//! definition for bases diskforge builds itself.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::recipe::{Arch, ChecksumSpec, DiskFormat};

/// `base-images/NAME.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CatalogEntry {
    /// Entry name; must equal the file stem.
    pub name: String,
    pub description: String,
    /// Distribution family (`debian`, `ubuntu`, `fedora`, `centos`, `almalinux`,
    /// `opensuse`, `cirros`): selects the package manager and hygiene steps.
    pub os: String,
    pub release: String,
    /// Disk format after decompression.
    #[serde(default)]
    pub format: DiskFormat,
    /// Upstream page describing the images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homepage: Option<String>,
    /// Downloadable images per architecture.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<Arch, CatalogImage>,
    /// A base diskforge builds itself from distribution packages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildSpec>,
}

/// One downloadable image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CatalogImage {
    pub url: String,
    pub checksum: ChecksumSpec,
}

/// How to build a bootable base from distribution packages (Debian: mmdebstrap).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BuildSpec {
    /// The builder; only `mmdebstrap` exists.
    pub tool: String,
    /// Distribution suite, e.g. `bookworm`.
    pub suite: String,
    /// Package mirror [default: the host's Debian mirror, or `DISKFORGE_DEBIAN_MIRROR`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// Kernel package, e.g. `linux-image-cloud-amd64`.
    pub kernel: String,
    /// Extra packages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// Disk size of the built image, e.g. `2G`.
    pub size: crate::recipe::Size,
    /// Install cloud-init.
    #[serde(default)]
    pub cloud_init: bool,
}
