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

/// The catalog files built into the binary, so an installed diskforge finds its catalog
/// anywhere.
pub const EMBEDDED: &[(&str, &str)] = &[(
    "debian-12-minimal",
    include_str!("../../base-images/debian-12-minimal.yaml"),
)];

/// Parses a catalog file.
pub fn parse_entry(text: &str, origin: &str) -> anyhow::Result<CatalogEntry> {
    use anyhow::Context;
    serde_yaml::from_str(text).with_context(|| format!("parsing catalog entry {origin}"))
}

/// Finds catalog entry `name`: in `--catalog DIR`, then `base-images/` in the recipe's
/// directory and its parents, then the built-in copy. Returns the entry and the
/// directory relative paths in it are resolved against.
pub fn find_entry(
    name: &str,
    recipe_dir: &std::path::Path,
    catalog_override: Option<&std::path::Path>,
) -> anyhow::Result<(CatalogEntry, std::path::PathBuf)> {
    use anyhow::Context;
    if name.is_empty() || name.contains('/') || name.contains("..") {
        anyhow::bail!("invalid catalog name {name:?}");
    }
    let mut dirs = Vec::new();
    if let Some(d) = catalog_override {
        dirs.push(d.to_path_buf());
    }
    let abs = std::fs::canonicalize(recipe_dir).unwrap_or_else(|_| recipe_dir.to_path_buf());
    for a in abs.ancestors() {
        dirs.push(a.join("base-images"));
    }
    for d in &dirs {
        let p = d.join(format!("{name}.yaml"));
        if p.is_file() {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let entry = parse_entry(&text, &p.display().to_string())?;
            return Ok((entry, d.clone()));
        }
    }
    if let Some((_, text)) = EMBEDDED.iter().find(|(n, _)| *n == name) {
        return Ok((
            parse_entry(text, &format!("built-in {name}"))?,
            recipe_dir.to_path_buf(),
        ));
    }
    let known: Vec<&str> = EMBEDDED.iter().map(|(n, _)| *n).collect();
    anyhow::bail!(
        "catalog entry {name:?} not found (looked in {} and the built-in catalog: {})",
        dirs.iter()
            .take(3)
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        known.join(", ")
    )
}
