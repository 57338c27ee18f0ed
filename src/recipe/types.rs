//! The recipe schema, v1: strict serde types (unknown keys are errors, kebab-case keys).
//!
//! Values that have a grammar of their own (sizes, checksums, secrets, relative paths)
//! are newtypes that check it while deserializing, so a bad value is reported with the
//! file, line and column of the key that holds it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A whole recipe after `extends:` and variables are resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Recipe {
    /// Schema version; only `1` exists.
    #[serde(default = "one")]
    pub version: u32,
    /// Image name, used for the default repository and in labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// One line that says what the image is for (the `description` label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A shared parent meant only to be extended: it need not name a base and cannot be
    /// built itself. Not inherited by the recipes that extend it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// A parent recipe, relative to this file. Maps merge deeply, lists append,
    /// scalars override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// Variables for `${NAME}` substitution in string values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, VarValue>,
    /// Environment variables that may be substituted (nothing else is read): a name, or
    /// `{name: NAME, secret: true}` for a value that must never be shown. Names that
    /// look like secrets (PASSWORD, TOKEN, SECRET, …) are secret anyway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Where the base image comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseSpec>,
    #[serde(default)]
    pub disk: DiskSpec,
    #[serde(default)]
    pub customize: Customize,
    #[serde(default)]
    pub ttyd: Ttyd,
    #[serde(default)]
    pub desktop: Desktop,
    #[serde(default)]
    pub hygiene: Hygiene,
    #[serde(default)]
    pub boot: Boot,
    #[serde(default)]
    pub output: Output,
}

/// The keys a recipe may have at its top level.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "version",
    "name",
    "description",
    "partial",
    "extends",
    "vars",
    "env",
    "base",
    "disk",
    "customize",
    "ttyd",
    "desktop",
    "hygiene",
    "boot",
    "output",
];

/// The value of a recipe variable: text, a number or true/false.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum VarValue {
    Text(String),
    Number(serde_json::Number),
    Bool(bool),
}

/// An environment variable a recipe may read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EnvVar {
    Name(String),
    Declared {
        name: String,
        /// Never show the value (plans, logs, errors).
        #[serde(default)]
        secret: bool,
    },
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

/// The base image: a catalog name, or an inline source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BaseSpec {
    /// A catalog entry: `base-images/NAME.yaml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<String>,
    /// Download URL (http or https). `.xz`, `.gz` and `.zst` are decompressed while streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A local image file, relative to the recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How the download is verified. Required for `url` (use `none` to opt out loudly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<ChecksumSpec>,
    /// Disk format of the (decompressed) image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// CPU architecture of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
}

/// How a downloaded base is verified.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ChecksumSpec {
    /// `sha256:HEX`, `sha512:HEX`, or `none`.
    Literal(Checksum),
    /// A checksum file published next to the image.
    File(ChecksumFile),
}

// A string is a literal checksum (its own error message says what is wrong with it);
// a mapping is a checksum file.
impl<'de> Deserialize<'de> for ChecksumSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Literal(String),
            File(ChecksumFile),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "checksum must be `sha256:HEX`, `sha512:HEX`, `none`, or a checksum file `{url: …, file: …}` (its keys: url, file, algorithm, signing-key, signature-url)",
            )
        })? {
            Raw::Literal(s) => Checksum::parse(&s)
                .map(ChecksumSpec::Literal)
                .map_err(serde::de::Error::custom),
            Raw::File(f) => Ok(ChecksumSpec::File(f)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ChecksumFile {
    /// URL of a checksum file in GNU (`hash  name`) or BSD (`SHA256 (name) = hash`) form.
    pub url: String,
    /// The file name to look up in it (default: the last path segment of the image URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Hash algorithm used by the file (default: guessed from the hash length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<HashAlgorithm>,
    /// OpenPGP key (path relative to the recipe, or URL) that signed the checksum file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
    /// URL of a detached signature; without it the checksum file must be clearsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_url: Option<String>,
    /// Fingerprints (40 hex digits) of the primary keys the signing key must hold, and
    /// nothing else: pins a key that is fetched or kept beside the recipe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_key_fingerprints: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    Sha256,
    Sha512,
}

impl HashAlgorithm {
    pub fn hex_len(self) -> usize {
        match self {
            HashAlgorithm::Sha256 => 64,
            HashAlgorithm::Sha512 => 128,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha512 => "sha512",
        }
    }
}

/// A literal checksum, or the explicit opt-out `none`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Checksum {
    Digest {
        algorithm: HashAlgorithm,
        hex: String,
    },
    None,
}

impl Checksum {
    pub fn parse(s: &str) -> Result<Checksum, String> {
        if s == "none" {
            return Ok(Checksum::None);
        }
        let (alg, hex) = s.split_once(':').ok_or_else(|| {
            format!("checksum `{s}` must be `sha256:HEX`, `sha512:HEX` or `none`")
        })?;
        let algorithm = match alg {
            "sha256" => HashAlgorithm::Sha256,
            "sha512" => HashAlgorithm::Sha512,
            other => {
                return Err(format!(
                    "unsupported checksum algorithm `{other}` (use sha256 or sha512)"
                ))
            }
        };
        if hex.len() != algorithm.hex_len() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{alg} checksum must be {} hex digits, got `{hex}`",
                algorithm.hex_len()
            ));
        }
        Ok(Checksum::Digest {
            algorithm,
            hex: hex.to_ascii_lowercase(),
        })
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checksum::Digest { algorithm, hex } => write!(f, "{}:{hex}", algorithm.name()),
            Checksum::None => f.write_str("none"),
        }
    }
}

pub use crate::sys::qemu_img::DiskFormat;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
    Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    #[default]
    Amd64,
    Arm64,
}

impl Arch {
    /// The OCI architecture name.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

/// How the image is booted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Boot {
    /// The firmware VMs boot the image with [default: the catalog entry's default, else
    /// `bios`]. It must be one the base supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
}

/// The firmware a VM boots with, as KubeVirt sets it up.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    /// Legacy BIOS (SeaBIOS): KubeVirt's default.
    Bios,
    /// UEFI (OVMF) without Secure Boot.
    Uefi,
    /// UEFI with Secure Boot (q35 with SMM, Microsoft's keys enrolled): what the common
    /// preferences for Fedora, RHEL, CentOS Stream and AlmaLinux select.
    UefiSecureBoot,
}

impl Firmware {
    pub const ALL: [Firmware; 3] = [Firmware::Bios, Firmware::Uefi, Firmware::UefiSecureBoot];

    /// The recipe's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
            Firmware::UefiSecureBoot => "uefi-secure-boot",
        }
    }

    pub fn parse(s: &str) -> Option<Firmware> {
        Firmware::ALL.into_iter().find(|f| f.as_str() == s)
    }

    pub fn is_uefi(self) -> bool {
        self != Firmware::Bios
    }
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Target size and growth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DiskSpec {
    /// Target virtual size: absolute (`10G`) or relative to the base (`+4G`).
    /// Units: K, M, G, T (powers of 1024), optional `i`/`iB`/`B` suffix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    #[serde(default)]
    pub grow: Grow,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Grow {
    /// Grow a partition and its filesystem to fill the disk (default: true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The partition to grow, e.g. `/dev/sda1` (default: the one holding `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
}

impl Default for Grow {
    fn default() -> Self {
        Grow {
            enabled: true,
            partition: None,
        }
    }
}

/// A disk size: absolute bytes or growth relative to the base image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Size {
    Absolute(u64),
    Relative(u64),
}

impl Size {
    pub fn parse(s: &str) -> Result<Size, String> {
        let t = s.trim();
        if t.starts_with('-') {
            return Err(format!("size `{s}` is negative: disks can only grow"));
        }
        let (relative, t) = match t.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        if num.is_empty() {
            return Err(format!(
                "size `{s}` has no number (examples: `10G`, `+4G`, `512M`)"
            ));
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("size `{s}` is too large"))?;
        let mult: u64 = match unit.trim() {
            // A bare number is almost always a unit forgotten (`10` meant 10G): bytes
            // must be said.
            "" if n != 0 => {
                return Err(format!(
                    "size `{s}` has no unit: write `{s}G` for gibibytes (units K, M, G, T), or `{s}B` for bytes"
                ))
            }
            "" | "B" => 1,
            "K" | "KiB" | "Ki" | "k" => 1 << 10,
            "M" | "MiB" | "Mi" => 1 << 20,
            "G" | "GiB" | "Gi" => 1 << 30,
            "T" | "TiB" | "Ti" => 1 << 40,
            other => {
                return Err(format!(
                    "size `{s}` has an unknown unit `{other}` (use K, M, G or T)"
                ))
            }
        };
        let bytes = n
            .checked_mul(mult)
            .ok_or_else(|| format!("size `{s}` is too large"))?;
        if bytes == 0 {
            return Err(format!("size `{s}` is zero"));
        }
        Ok(if relative {
            Size::Relative(bytes)
        } else {
            Size::Absolute(bytes)
        })
    }

    /// The target size for a base of `current` bytes.
    pub fn target(self, current: u64) -> u64 {
        match self {
            Size::Absolute(b) => b,
            Size::Relative(b) => current.saturating_add(b),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (prefix, b) = match self {
            Size::Absolute(b) => ("", *b),
            Size::Relative(b) => ("+", *b),
        };
        for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
            if b % (1u64 << shift) == 0 {
                return write!(f, "{prefix}{}{unit}", b >> shift);
            }
        }
        write!(f, "{prefix}{b}")
    }
}

/// Guest customization. Runs in this order: packages (one batched install), package
/// removals, groups, users (with their SSH keys and passwords), directories, files,
/// symlinks, root password and SSH keys, commands, units, hostname, timezone,
/// first-boot commands. Within a list, the recipe's order is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Customize {
    /// Packages installed with the guest's package manager, in one batch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// Packages removed after the install.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_packages: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directories: Vec<DirSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub symlinks: Vec<SymlinkSpec>,
    /// Root's password (a secret: `{env: NAME}` or `{file: PATH}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_password: Option<Secret>,
    /// SSH public keys authorized for root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub root_ssh_authorized_keys: Vec<String>,
    /// Shell commands run in the guest (`/bin/sh -c`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    /// systemd units to enable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enable_units: Vec<String>,
    /// systemd units to disable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disable_units: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// An IANA time zone such as `Europe/Berlin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Commands run once on the guest's first boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firstboot_commands: Vec<String>,
    /// Give every file the SELinux label the guest's policy assigns, at the end of the
    /// guest stage: `auto` (when the guest has a policy), `true` (required: the build
    /// fails when it cannot be done) or `false` (skip, with a warning on every build).
    #[serde(default, skip_serializing_if = "SelinuxRelabel::is_auto")]
    pub selinux_relabel: SelinuxRelabel,
    /// Install and enable the QEMU guest agent (`qemu-guest-agent`), which KubeVirt
    /// asks for the guest's OS, addresses and users over its virtio-serial channel.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guest_agent: bool,
}

/// `customize.selinux-relabel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SelinuxRelabel {
    /// Relabel when the guest's `/etc/selinux/config` names an installed policy.
    #[default]
    Auto,
    /// Relabel, or fail the build.
    Required,
    /// Never relabel.
    Off,
}

impl SelinuxRelabel {
    fn is_auto(&self) -> bool {
        *self == SelinuxRelabel::Auto
    }

    /// The recipe's spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            SelinuxRelabel::Auto => "auto",
            SelinuxRelabel::Required => "true",
            SelinuxRelabel::Off => "false",
        }
    }
}

impl Serialize for SelinuxRelabel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SelinuxRelabel::Auto => s.serialize_str("auto"),
            SelinuxRelabel::Required => s.serialize_bool(true),
            SelinuxRelabel::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for SelinuxRelabel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const HINT: &str = "expected `auto`, `true` or `false`";
        match Scalar::deserialize(d).map_err(|_| serde::de::Error::custom(HINT))? {
            Scalar::Bool(true) => Ok(SelinuxRelabel::Required),
            Scalar::Bool(false) => Ok(SelinuxRelabel::Off),
            Scalar::Text(t) if t == "auto" => Ok(SelinuxRelabel::Auto),
            other => Err(serde::de::Error::custom(format!(
                "{HINT}, found {}",
                other.describe()
            ))),
        }
    }
}

impl JsonSchema for SelinuxRelabel {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SelinuxRelabel".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`auto` (relabel when the guest has an SELinux policy), `true` (required) or `false` (skip)",
            "oneOf": [{"type": "boolean"}, {"const": "auto"}]
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GroupSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UserSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Supplementary groups (they must exist in the guest or under `groups`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Login shell (default `/bin/bash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Password (a secret). Without one the account has no password login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// Passwordless sudo through `/etc/sudoers.d/USER`.
    #[serde(default)]
    pub sudo: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DirSpec {
    /// Absolute path in the guest.
    pub path: GuestPath,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

/// A file written into the guest: inline `content` or a `source` file next to the recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileSpec {
    /// Absolute path in the guest.
    pub path: GuestPath,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// A host file relative to the recipe's directory; elsewhere only in a directory the
    /// command line allows (`--allow-path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<HostFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SymlinkSpec {
    /// Absolute path of the link in the guest.
    pub path: GuestPath,
    /// What the link points to.
    pub target: String,
}

/// A secret value: read from an environment variable or a file at build time, never
/// written in the recipe itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum Secret {
    /// The name of an environment variable holding the secret.
    Env(String),
    /// A file in the recipe's directory holding the secret; one trailing newline is
    /// dropped.
    File(String),
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        enum Tagged {
            Env(String),
            File(String),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Tagged(Tagged),
            // Only matched to say why it is refused; the value itself is never used.
            Plain(#[allow(dead_code)] String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("a secret must be `{env: NAME}` or `{file: PATH}`")
        })? {
            Raw::Plain(_) => Err(serde::de::Error::custom(
                "plaintext secrets are not allowed in a recipe: use `{env: NAME}` or `{file: PATH}`",
            )),
            Raw::Tagged(Tagged::Env(n)) => Ok(Secret::Env(n)),
            Raw::Tagged(Tagged::File(p)) => Ok(Secret::File(p)),
        }
    }
}

/// Where ttyd comes from and how it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Ttyd {
    /// Install ttyd and start it on boot (default: false).
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub source: TtydSource,
    /// TCP port (default 7681).
    #[serde(default = "default_ttyd_port")]
    pub port: u16,
    /// Network interface or address to bind (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The command served to each client (default `login`).
    #[serde(default = "default_ttyd_command")]
    pub command: Vec<String>,
    /// The user ttyd runs as (default root, which `login` needs).
    #[serde(default = "default_ttyd_user")]
    pub user: String,
    /// Let clients type (default true; ttyd 1.7+ is read-only without `-W`).
    #[serde(default = "yes")]
    pub writable: bool,
    /// HTTP basic auth for the terminal page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<TtydCredential>,
    /// More ttyd arguments, placed before the command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
}

impl Default for Ttyd {
    fn default() -> Self {
        Ttyd {
            enabled: false,
            source: TtydSource::default(),
            port: default_ttyd_port(),
            interface: None,
            command: default_ttyd_command(),
            user: default_ttyd_user(),
            writable: true,
            credential: None,
            extra_args: Vec::new(),
        }
    }
}

fn default_ttyd_port() -> u16 {
    7681
}
fn default_ttyd_command() -> Vec<String> {
    vec!["login".to_string()]
}
fn default_ttyd_user() -> String {
    "root".to_string()
}

/// A graphical desktop in the browser: a VNC server (bound to the guest's localhost
/// only) running a session as `user`, and websockify serving noVNC's page and proxying
/// its WebSocket to the VNC server. All from the distribution's packages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Desktop {
    /// Install the desktop and start it on boot (default: false).
    #[serde(default)]
    pub enabled: bool,
    /// TCP port of noVNC's page and WebSocket (default 6080).
    #[serde(default = "default_desktop_port")]
    pub port: u16,
    /// The user the session runs as: a recipe user or one the base already has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Screen size, WIDTHxHEIGHT (default 1280x800).
    #[serde(default = "default_desktop_geometry")]
    pub geometry: String,
    /// What runs on the screen (default `minimal`: twm and an xterm).
    #[serde(default)]
    pub session: DesktopSession,
    /// The VNC password noVNC asks for (6 to 8 characters: VNC authentication uses
    /// the first 8). Required when the desktop is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Secret>,
}

impl Default for Desktop {
    fn default() -> Self {
        Desktop {
            enabled: false,
            port: default_desktop_port(),
            user: None,
            geometry: default_desktop_geometry(),
            session: DesktopSession::default(),
            credential: None,
        }
    }
}

fn default_desktop_port() -> u16 {
    6080
}
fn default_desktop_geometry() -> String {
    "1280x800".to_string()
}

/// The session on the desktop: a named package set, or packages and a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum DesktopSession {
    Named(NamedSession),
    Custom(CustomSession),
}

impl Default for DesktopSession {
    fn default() -> Self {
        DesktopSession::Named(NamedSession::Minimal)
    }
}

/// The sessions diskforge knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NamedSession {
    /// twm with an xterm: the smallest window manager Debian has (openbox pulls in
    /// imlib2 and with it ghostscript and image codecs, ~100 MiB more).
    Minimal,
    /// Xfce (xfce4 and xfce4-terminal): a full desktop, many more packages.
    Xfce,
}

/// A session of one's own: the packages it needs and the command that runs it (it
/// gets `DISPLAY`; when it exits, it is started again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CustomSession {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    pub command: Vec<String>,
}

impl DesktopSession {
    /// The packages the session needs.
    pub fn packages(&self) -> Vec<String> {
        let v: &[&str] = match self {
            DesktopSession::Named(NamedSession::Minimal) => &["twm", "xterm"],
            DesktopSession::Named(NamedSession::Xfce) => &["xfce4", "xfce4-terminal", "dbus-x11"],
            DesktopSession::Custom(c) => return c.packages.clone(),
        };
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The command that runs it.
    pub fn command(&self) -> Vec<String> {
        let v: &[&str] = match self {
            // The xterm is what keeps the session alive; twm goes with it. A given
            // position spares twm's interactive placement.
            DesktopSession::Named(NamedSession::Minimal) => &[
                "sh",
                "-c",
                "twm & w=$!; xterm -fa Monospace -fs 11 -geometry 100x30+40+40; kill $w",
            ],
            // The panel's default layout at once, not its first-start question.
            DesktopSession::Named(NamedSession::Xfce) => {
                &["env", "XFCE_PANEL_MIGRATE_DEFAULT=1", "startxfce4"]
            }
            DesktopSession::Custom(c) => return c.command.clone(),
        };
        v.iter().map(|s| s.to_string()).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TtydCredential {
    pub user: String,
    pub password: Secret,
}

/// Where the ttyd binary comes from.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum TtydSource {
    /// The guest's package manager installs this package (default `ttyd`).
    Package(String),
    /// A static binary downloaded on the host through the cache and verified.
    Url(TtydUrl),
    /// A local binary, relative to the recipe.
    Path(RelPath),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TtydUrl {
    pub url: String,
    /// Checksum of the downloaded file (`sha256:HEX`).
    pub sha256: Checksum,
    /// When the download is an archive (`.whl`/`.zip`, `.tar.gz`), the binary's path in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

// YAML writes a variant as a one-key map (`{url: {...}}`); going through serde's
// buffered untagged path accepts that form, which the YAML deserializer alone does not.
impl<'de> Deserialize<'de> for TtydSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        enum Tagged {
            Package(String),
            Url(TtydUrl),
            Path(RelPath),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Tagged(Tagged),
        }
        let Raw::Tagged(t) = Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "ttyd.source must be `{package: NAME}`, `{url: {url, sha256, member}}` or `{path: FILE}`",
            )
        })?;
        Ok(match t {
            Tagged::Package(p) => TtydSource::Package(p),
            Tagged::Url(u) => TtydSource::Url(u),
            Tagged::Path(p) => TtydSource::Path(p),
        })
    }
}

impl Default for TtydSource {
    fn default() -> Self {
        TtydSource::Package("ttyd".to_string())
    }
}

/// Golden-image hygiene, each step switchable (all on by default but `sparsify`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Hygiene {
    /// Empty `/etc/machine-id` so each VM gets its own.
    #[serde(default = "yes")]
    pub machine_id: bool,
    /// Remove SSH host keys (regenerated on first boot).
    #[serde(default = "yes")]
    pub ssh_host_keys: bool,
    /// Clean package manager caches.
    #[serde(default = "yes")]
    pub package_cache: bool,
    /// Clear cloud-init state so first boot runs it.
    #[serde(default = "yes")]
    pub cloud_init: bool,
    /// Remove build logs and truncate `/var/log`.
    #[serde(default = "yes")]
    pub logs: bool,
    /// Remove the saved random seeds (`/var/lib/systemd/random-seed`,
    /// `/var/lib/urandom/random-seed`), so VMs do not all credit the same seed.
    #[serde(default = "yes")]
    pub random_seed: bool,
    /// Remove LVM's `/etc/lvm/devices/system.devices`, which names the build's disks by
    /// their IDs and would hide the VM's own disks from LVM.
    #[serde(default = "yes")]
    pub lvm_devices: bool,
    /// Zero free space so the image packs small (costs time).
    #[serde(default)]
    pub sparsify: bool,
}

impl Default for Hygiene {
    fn default() -> Self {
        Hygiene {
            machine_id: true,
            ssh_host_keys: true,
            package_cache: true,
            cloud_init: true,
            logs: true,
            random_seed: true,
            lvm_devices: true,
            sparsify: false,
        }
    }
}

/// The image diskforge produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Output {
    /// Image repository, e.g. `registry.example.com/lab/ubuntu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Tags; templates `{date}`, `{git_sha}`, `{version}`, `{name}`, `{arch}` are expanded.
    #[serde(default = "default_tags")]
    pub tags: Vec<String>,
    /// The image version (`{version}`, label `org.opencontainers.image.version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub compression: Compression,
    /// Compression level (gzip 1-9, zstd 1-19).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<u32>,
    /// The disk's file name under `/disk/`.
    #[serde(default = "default_disk_name")]
    pub disk_name: String,
    /// Disk format in the image.
    #[serde(default)]
    pub format: DiskFormat,
    /// Compress qcow2 clusters (smaller file, slower guest reads).
    #[serde(default)]
    pub qcow2_compress: bool,
    /// Registries (`host[:port]`) that may be reached over plain HTTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
    #[serde(default)]
    pub kubevirt: KubevirtHints,
}

impl Default for Output {
    fn default() -> Self {
        Output {
            repository: None,
            tags: default_tags(),
            version: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            compression: Compression::default(),
            compression_level: None,
            disk_name: default_disk_name(),
            format: DiskFormat::Qcow2,
            qcow2_compress: false,
            insecure_registries: Vec::new(),
            kubevirt: KubevirtHints::default(),
        }
    }
}

fn default_tags() -> Vec<String> {
    vec!["latest".to_string()]
}
fn default_disk_name() -> String {
    "disk.qcow2".to_string()
}

pub use crate::oci::layer::Compression;

/// Hints CDI turns into PVC labels (`INSTANCETYPE_KUBEVIRT_IO_DEFAULT_*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KubevirtHints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instancetype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<String>,
    /// cloud-init for the VM manifests: a NoCloud volume whose user-data comes from a
    /// Secret, never written inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInitSpec>,
}

/// `output.kubevirt.cloud-init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CloudInitSpec {
    /// The Secret (in the VM's namespace) whose `userdata` key holds the user-data:
    /// `kubectl create secret generic NAME --from-file=userdata=user-data.yaml`.
    pub user_data_secret: String,
}

/// File permission bits, written as an octal string (`"0644"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mode(pub u32);

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

/// An absolute path inside the guest, without `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GuestPath(pub String);

/// A path relative to the recipe's directory that stays inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelPath(pub PathBuf);

impl RelPath {
    pub fn parse(s: &str) -> Result<RelPath, String> {
        let p = Path::new(s);
        if s.is_empty() {
            return Err("empty path".to_string());
        }
        for c in p.components() {
            match c {
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir => {
                    return Err(format!(
                        "path `{s}` leaves the recipe's directory (`..` is not allowed)"
                    ))
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(format!(
                        "path `{s}` must be relative to the recipe's directory"
                    ))
                }
            }
        }
        Ok(RelPath(p.to_path_buf()))
    }
}

/// A file on the building host: relative to the recipe's directory, or (absolute or
/// with `..`) in a directory the command line allows; where it really lies is checked
/// when the recipe is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostFile(pub PathBuf);

impl HostFile {
    pub fn parse(s: &str) -> Result<HostFile, String> {
        if s.is_empty() {
            return Err("empty path".to_string());
        }
        Ok(HostFile(PathBuf::from(s)))
    }
}

impl GuestPath {
    pub fn parse(s: &str) -> Result<GuestPath, String> {
        if !s.starts_with('/') {
            return Err(format!("guest path `{s}` must be absolute"));
        }
        if Path::new(s)
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(format!("guest path `{s}` must not contain `..`"));
        }
        Ok(GuestPath(s.to_string()))
    }
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(Mode(m)),
            _ => Err(format!(
                "mode `{s}` must be octal permission bits such as \"0644\""
            )),
        }
    }
}

/// A scalar as YAML gave it, for newtypes that want to explain a wrong type.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn describe(&self) -> String {
        match self {
            Scalar::Text(t) => format!("the text {t:?}"),
            Scalar::Int(n) => format!("the number {n}"),
            Scalar::Float(n) => format!("the number {n}"),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// Serde and JSON Schema glue for the string-grammar newtypes.
macro_rules! string_newtype {
    ($ty:ty, $name:literal, $desc:literal, $pattern:expr, $hint:literal, |$v:ident| $to_string:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let $v = self;
                s.serialize_str(&$to_string)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = Scalar::deserialize(d).map_err(|_| {
                    serde::de::Error::custom(concat!("expected ", $hint))
                })?;
                match raw {
                    Scalar::Text(s) => <$ty>::parse(&s).map_err(serde::de::Error::custom),
                    other => Err(serde::de::Error::custom(format!(
                        concat!("expected ", $hint, ", found {}"),
                        other.describe()
                    ))),
                }
            }
        }
        impl JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                let pattern: Option<&str> = $pattern;
                match pattern {
                    Some(p) => schemars::json_schema!({
                        "type": "string", "description": $desc, "pattern": p
                    }),
                    None => schemars::json_schema!({ "type": "string", "description": $desc }),
                }
            }
        }
    };
}

string_newtype!(
    Size,
    "Size",
    "Disk size: `10G` (absolute) or `+4G` (growth); units K, M, G, T",
    Some(r"^\+?[0-9]+(B|K|Ki|KiB|k|M|Mi|MiB|G|Gi|GiB|T|Ti|TiB)$"),
    "a size with a unit such as `10G` or `+4G`",
    |v| v.to_string()
);
string_newtype!(
    Checksum,
    "Checksum",
    "`sha256:HEX`, `sha512:HEX`, or `none`",
    Some(r"^(none|sha256:[0-9a-fA-F]{64}|sha512:[0-9a-fA-F]{128})$"),
    "a checksum such as `sha256:HEX`",
    |v| v.to_string()
);
string_newtype!(
    Mode,
    "Mode",
    "Octal permission bits, e.g. \"0644\"",
    Some(r"^(0o)?[0-7]{1,4}$"),
    "a quoted octal mode such as \"0644\" (unquoted, YAML reads 644 as a decimal number)",
    |v| v.to_string()
);
string_newtype!(
    GuestPath,
    "GuestPath",
    "An absolute path in the guest",
    Some(r"^/"),
    "an absolute guest path such as `/etc/motd`",
    |v| v.0.clone()
);
string_newtype!(
    HostFile,
    "HostFile",
    "A host file relative to the recipe's directory; elsewhere only in a directory allowed with --allow-path",
    None,
    "a path to a file on the building host",
    |v| v.0.to_string_lossy()
);
string_newtype!(
    RelPath,
    "RelPath",
    "A path relative to the recipe's directory, without `..`",
    None,
    "a path relative to the recipe's directory",
    |v| v.0.to_string_lossy()
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("10G").unwrap(), Size::Absolute(10 << 30));
        assert_eq!(Size::parse("+4G").unwrap(), Size::Relative(4 << 30));
        assert_eq!(Size::parse("512MiB").unwrap(), Size::Absolute(512 << 20));
        assert!(Size::parse("10X").unwrap_err().contains("unknown unit"));
        assert!(Size::parse("-3G").unwrap_err().contains("negative"));
        assert!(Size::parse("0G").is_err());
        assert!(Size::parse("G").is_err());
        assert!(Size::parse("99999999999T").is_err());
        assert_eq!(Size::parse("+4G").unwrap().to_string(), "+4G");
        assert_eq!(Size::Relative(4 << 30).target(1 << 30), 5 << 30);
    }

    #[test]
    fn checksums() {
        let h = "a".repeat(64);
        assert_eq!(
            Checksum::parse(&format!("sha256:{h}")).unwrap().to_string(),
            format!("sha256:{h}")
        );
        assert!(Checksum::parse("sha256:abc").is_err());
        assert!(Checksum::parse("md5:abc").is_err());
        assert!(Checksum::parse(&format!("sha512:{h}")).is_err());
        assert_eq!(Checksum::parse("none").unwrap(), Checksum::None);
    }

    #[test]
    fn paths_and_modes() {
        assert!(RelPath::parse("files/motd").is_ok());
        assert!(RelPath::parse("../../etc/shadow").is_err());
        assert!(RelPath::parse("/etc/shadow").is_err());
        assert!(GuestPath::parse("etc/motd").is_err());
        assert!(GuestPath::parse("/etc/../shadow").is_err());
        assert_eq!(Mode::parse("0644").unwrap(), Mode(0o644));
        assert!(Mode::parse("0999").is_err());
        assert!(Mode::parse("77777").is_err());
    }

    #[test]
    fn secrets_reject_plaintext() {
        let err = serde_yaml::from_str::<Secret>("hunter2").unwrap_err();
        assert!(err.to_string().contains("plaintext"), "{err}");
        assert_eq!(
            serde_yaml::from_str::<Secret>("{env: PW}").unwrap(),
            Secret::Env("PW".into())
        );
    }
}
