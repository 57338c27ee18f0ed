//! Catalog entries: one YAML file per base image under `base-images/`, naming the
//! official image URL and official checksum source per architecture, or a build
//! definition for bases diskforge builds itself.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::recipe::{Arch, ChecksumSpec, DiskFormat, Firmware};

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
    /// The images' virtual size as published (e.g. `3.5G`), so a recipe that would
    /// shrink the disk is refused before anything is downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_size: Option<crate::recipe::Size>,
    /// The firmware the image boots with [default: BIOS only].
    #[serde(default)]
    pub firmware: FirmwareSupport,
}

/// What firmware an image can boot with, and which one VMs get unless the recipe says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FirmwareSupport {
    /// The firmware a recipe on this base gets when it names none (`boot.firmware`).
    pub default: Firmware,
    /// Every firmware the image boots with (a hybrid BIOS+UEFI image with a signed shim
    /// lists all three).
    pub supports: Vec<Firmware>,
}

impl Default for FirmwareSupport {
    fn default() -> Self {
        FirmwareSupport {
            default: Firmware::Bios,
            supports: vec![Firmware::Bios],
        }
    }
}

impl FirmwareSupport {
    /// A problem with the entry itself: a default it does not support, or no firmware.
    pub fn problem(&self) -> Option<String> {
        if !self.supports.contains(&self.default) {
            return Some(format!(
                "firmware.default {} is not in firmware.supports",
                self.default
            ));
        }
        None
    }

    /// The firmware a recipe asking for `wanted` boots with, or why the base cannot.
    pub fn resolve(&self, wanted: Option<Firmware>) -> Result<Firmware, String> {
        let f = wanted.unwrap_or(self.default);
        if self.supports.contains(&f) {
            Ok(f)
        } else {
            Err(format!(
                "the base boots with {} only, not {f}",
                self.supports
                    .iter()
                    .map(|f| f.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }
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
    /// How the disk is laid out and booted.
    #[serde(default, skip_serializing_if = "BaseLayout::is_mbr")]
    pub layout: BaseLayout,
    /// The init system the base boots with [default: systemd].
    #[serde(default, skip_serializing_if = "BaseInit::is_systemd")]
    pub init: BaseInit,
}

/// The init system of a built base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BaseInit {
    /// systemd as PID 1 (`systemd-sysv`), systemd-networkd DHCP, systemd-resolved.
    #[default]
    Systemd,
    /// sysvinit as PID 1 with OpenRC starting the services (`sysvinit-core`, `openrc`),
    /// ifupdown with dhclient for DHCP on `eth0` (`net.ifnames=0`), a getty on the
    /// serial console; no systemd package at all.
    Openrc,
}

impl BaseInit {
    fn is_systemd(&self) -> bool {
        *self == BaseInit::Systemd
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            BaseInit::Systemd => "systemd",
            BaseInit::Openrc => "openrc",
        }
    }
}

/// The disk layout of a built base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BaseLayout {
    /// MBR with one bootable ext4 partition and extlinux: BIOS only.
    #[default]
    Mbr,
    /// GPT as Debian's cloud images have it: a BIOS boot partition (GRUB for BIOS), an
    /// EFI system partition with Debian's signed shim and GRUB (UEFI, Secure Boot), and
    /// the ext4 root last.
    Gpt,
}

impl BaseLayout {
    pub fn is_mbr(&self) -> bool {
        *self == BaseLayout::Mbr
    }
}

/// Every catalog file, built into the binary so an installed diskforge knows the whole
/// catalog anywhere (a test checks this list against `base-images/`).
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "almalinux-9",
        include_str!("../../base-images/almalinux-9.yaml"),
    ),
    (
        "centos-stream-9",
        include_str!("../../base-images/centos-stream-9.yaml"),
    ),
    (
        "centos-stream-10",
        include_str!("../../base-images/centos-stream-10.yaml"),
    ),
    ("cirros", include_str!("../../base-images/cirros.yaml")),
    (
        "debian-12",
        include_str!("../../base-images/debian-12.yaml"),
    ),
    (
        "debian-12-minimal",
        include_str!("../../base-images/debian-12-minimal.yaml"),
    ),
    (
        "debian-12-minimal-uefi",
        include_str!("../../base-images/debian-12-minimal-uefi.yaml"),
    ),
    (
        "debian-13",
        include_str!("../../base-images/debian-13.yaml"),
    ),
    (
        "fedora-43",
        include_str!("../../base-images/fedora-43.yaml"),
    ),
    (
        "opensuse-leap-15.6",
        include_str!("../../base-images/opensuse-leap-15.6.yaml"),
    ),
    (
        "ubuntu-22.04",
        include_str!("../../base-images/ubuntu-22.04.yaml"),
    ),
    (
        "ubuntu-24.04",
        include_str!("../../base-images/ubuntu-24.04.yaml"),
    ),
];

/// The signing keys the catalog pins (`base-images/keys/`), built in as well.
pub const EMBEDDED_KEYS: &[(&str, &[u8])] = &[
    (
        "keys/fedora-43.asc",
        include_bytes!("../../base-images/keys/fedora-43.asc"),
    ),
    (
        "keys/ubuntu-cloudimage-keyring.asc",
        include_bytes!("../../base-images/keys/ubuntu-cloudimage-keyring.asc"),
    ),
];

/// Where a catalog entry was found: relative paths in it (signing keys) are resolved
/// against a directory, or against the built-in keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Dir(std::path::PathBuf),
    Embedded,
}

impl Origin {
    /// The bytes of a key the entry names by a relative path.
    pub fn key(&self, rel: &str) -> anyhow::Result<Vec<u8>> {
        use anyhow::Context;
        match self {
            Origin::Dir(d) => std::fs::read(d.join(rel))
                .with_context(|| format!("reading signing key {}", d.join(rel).display())),
            Origin::Embedded => EMBEDDED_KEYS
                .iter()
                .find(|(n, _)| *n == rel)
                .map(|(_, b)| b.to_vec())
                .with_context(|| format!("the built-in catalog has no key {rel}")),
        }
    }
}

/// Every catalog entry name known (the directories' and the built-in ones).
pub fn names(dirs: &[std::path::PathBuf]) -> Vec<String> {
    let mut out: Vec<String> = EMBEDDED.iter().map(|(n, _)| n.to_string()).collect();
    for d in dirs {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "yaml") {
                    if let Some(stem) = p.file_stem() {
                        out.push(stem.to_string_lossy().into_owned());
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The directories searched for `NAME.yaml`, in order: `--catalog DIR`, then
/// `base-images/` in the recipe's directory and each parent.
pub fn search_dirs(
    recipe_dir: &std::path::Path,
    catalog_override: Option<&std::path::Path>,
) -> Vec<std::path::PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = catalog_override {
        dirs.push(d.to_path_buf());
    }
    let abs = std::fs::canonicalize(recipe_dir).unwrap_or_else(|_| recipe_dir.to_path_buf());
    for a in abs.ancestors() {
        dirs.push(a.join("base-images"));
    }
    dirs
}

impl BuildSpec {
    /// A build definition that cannot work: cloud-init with OpenRC (Debian's cloud-init
    /// starts from systemd units only), or a package that brings another init back.
    pub fn problem(&self) -> Option<String> {
        if self.init == BaseInit::Openrc {
            if self.cloud_init {
                return Some(
                    "build.cloud-init: Debian's cloud-init starts from systemd units only; it cannot be combined with build.init: openrc".into(),
                );
            }
            if let Some(p) = self
                .packages
                .iter()
                .find(|p| matches!(p.as_str(), "systemd" | "systemd-sysv" | "systemd-resolved"))
            {
                return Some(format!(
                    "build.packages: {p} cannot be installed on a base with build.init: openrc (no systemd there)"
                ));
            }
        }
        None
    }

    /// The disk size of the built image in bytes.
    pub fn size_bytes(&self) -> anyhow::Result<u64> {
        match self.size {
            crate::recipe::Size::Absolute(b) => Ok(b),
            crate::recipe::Size::Relative(_) => anyhow::bail!("build.size must be absolute"),
        }
    }
}

/// Parses a catalog file.
pub fn parse_entry(text: &str, origin: &str) -> anyhow::Result<CatalogEntry> {
    use anyhow::Context;
    if let Some((line, column)) = crate::io::limits::yaml_too_deep(text) {
        anyhow::bail!(
            "{origin}:{line}:{column}: flow collections nested more than {} deep: refused before parsing",
            crate::io::limits::MAX_YAML_NESTING
        );
    }
    let entry: CatalogEntry =
        serde_yaml::from_str(text).with_context(|| format!("parsing catalog entry {origin}"))?;
    if let Some(p) = entry.firmware.problem() {
        anyhow::bail!("catalog entry {origin}: {p}");
    }
    if let Some(p) = entry.build.as_ref().and_then(BuildSpec::problem) {
        anyhow::bail!("catalog entry {origin}: {p}");
    }
    Ok(entry)
}

/// A catalog name that is not in the catalog.
#[derive(Debug, thiserror::Error)]
#[error("unknown catalog entry {name:?}{}", match .suggestion { Some(s) => format!(": did you mean `{s}`?"), None => String::new() })]
pub struct UnknownEntry {
    pub name: String,
    pub suggestion: Option<String>,
    pub known: Vec<String>,
}

/// Finds catalog entry `name`: in `--catalog DIR`, then `base-images/` in the recipe's
/// directory and its parents, then the built-in copy.
pub fn find_entry(
    name: &str,
    recipe_dir: &std::path::Path,
    catalog_override: Option<&std::path::Path>,
) -> anyhow::Result<(CatalogEntry, Origin)> {
    use anyhow::Context;
    let dirs = search_dirs(recipe_dir, catalog_override);
    let valid = !name.is_empty() && !name.contains('/') && !name.contains("..");
    if valid {
        for d in &dirs {
            let p = d.join(format!("{name}.yaml"));
            if p.is_file() {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                let entry = parse_entry(&text, &p.display().to_string())?;
                return Ok((entry, Origin::Dir(d.clone())));
            }
        }
        if let Some((_, text)) = EMBEDDED.iter().find(|(n, _)| *n == name) {
            return Ok((
                parse_entry(text, &format!("built-in {name}"))?,
                Origin::Embedded,
            ));
        }
    }
    let known = names(&dirs);
    let refs: Vec<&str> = known.iter().map(String::as_str).collect();
    let suggestion = crate::recipe::diag::did_you_mean(name, &refs).map(str::to_string);
    Err(UnknownEntry {
        name: name.to_string(),
        suggestion,
        known,
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_openrc_build_refuses_what_needs_systemd() {
        let entry = |build: &str| {
            parse_entry(
                &format!("name: x\ndescription: x\nos: debian\nrelease: \"12\"\nbuild:\n  tool: mmdebstrap\n  suite: bookworm\n  kernel: linux-image-cloud-amd64\n  size: 2G\n{build}"),
                "x.yaml",
            )
        };
        let e = entry("  init: openrc\n").unwrap();
        assert_eq!(e.build.unwrap().init, BaseInit::Openrc);
        // The default is systemd, and it is not written out: existing definitions keep
        // their hash (and their cached builds).
        let e = entry("").unwrap();
        assert_eq!(e.build.as_ref().unwrap().init, BaseInit::Systemd);
        assert!(!serde_json::to_string(&e.build)
            .unwrap()
            .contains("\"init\""));
        let err = entry("  init: openrc\n  cloud-init: true\n").unwrap_err();
        assert!(format!("{err:#}").contains("cloud-init"), "{err:#}");
        let err = entry("  init: openrc\n  packages: [systemd-sysv]\n").unwrap_err();
        assert!(format!("{err:#}").contains("systemd-sysv"), "{err:#}");
        let err = entry("  init: runit\n").unwrap_err();
        assert!(format!("{err:#}").contains("init"), "{err:#}");
    }

    #[test]
    fn every_catalog_file_and_key_is_built_in() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("base-images");
        let mut files: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut embedded: Vec<String> = EMBEDDED.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(files, embedded);
        let mut keys: Vec<String> = std::fs::read_dir(root.join("keys"))
            .unwrap()
            .map(|e| format!("keys/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        keys.sort();
        let mut ek: Vec<String> = EMBEDDED_KEYS.iter().map(|(n, _)| n.to_string()).collect();
        ek.sort();
        assert_eq!(keys, ek);
        for (name, text) in EMBEDDED {
            let e = parse_entry(text, name).unwrap();
            assert_eq!(&e.name, name);
        }
    }

    #[test]
    fn unknown_names_get_a_suggestion() {
        let e = find_entry("debain-12", std::path::Path::new("/nonexistent"), None).unwrap_err();
        let u = e.downcast_ref::<UnknownEntry>().unwrap();
        assert_eq!(u.suggestion.as_deref(), Some("debian-12"));
        assert!(u.known.len() >= 11);
        assert!(find_entry("../etc", std::path::Path::new("/"), None).is_err());
        let (e, o) =
            find_entry("ubuntu-24.04", std::path::Path::new("/nonexistent"), None).unwrap();
        assert_eq!(o, Origin::Embedded);
        assert!(e.images.contains_key(&crate::recipe::Arch::Amd64));
    }
}
