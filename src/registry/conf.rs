//! `registries.conf` (containers-registries.conf(5), version 2), as podman and skopeo read
//! it: `insecure = true` lets a registry be reached over plain HTTP or unverified TLS,
//! `blocked = true` refuses it. The file is `--registries-conf FILE`, else
//! `$CONTAINERS_REGISTRIES_CONF`, else `$HOME/.config/containers/registries.conf`, else
//! `/etc/containers/registries.conf` (the first that exists; the user's file replaces
//! the system's, as in containers/image). Location rewrites and mirrors are not applied:
//! an entry using them is named in a warning, never silently half-honoured.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// What diskforge takes from a registries.conf.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RegistriesConf {
    /// The file read, if any.
    pub path: Option<PathBuf>,
    /// Registries (`host[:port]`) marked `insecure = true`.
    pub insecure: Vec<String>,
    /// Registries (`host[:port]`) marked `blocked = true`.
    pub blocked: Vec<String>,
    /// What the file asks for that diskforge does not do, one sentence each.
    pub ignored: Vec<String>,
}

/// The keys of a `[[registry]]` table diskforge reads; others (`aliases`,
/// `short-name-mode`, `credential-helpers`, …) belong to other programs and are left be.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Raw {
    #[serde(default)]
    registry: Vec<RawRegistry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawRegistry {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror: Vec<toml::Value>,
}

/// The registries.conf that applies: `explicit`, else the environment's, else the
/// user's, else the system's (the first that exists).
pub fn path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("CONTAINERS_REGISTRIES_CONF").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let user = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".config/containers/registries.conf"));
    user.into_iter()
        .chain([PathBuf::from("/etc/containers/registries.conf")])
        .find(|p| p.is_file())
}

/// Reads the registries.conf that applies (see [`path`]); none is an empty one. A file
/// named explicitly must exist.
pub fn load(explicit: Option<&Path>) -> Result<RegistriesConf> {
    let Some(p) = path(explicit) else {
        return Ok(RegistriesConf::default());
    };
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let mut conf =
        parse(&text).with_context(|| format!("{} is not a valid registries.conf", p.display()))?;
    conf.path = Some(p);
    Ok(conf)
}

/// Parses a registries.conf's text.
pub fn parse(text: &str) -> Result<RegistriesConf> {
    let raw: Raw = toml::from_str(text)?;
    let mut conf = RegistriesConf::default();
    for r in raw.registry {
        let prefix = r
            .prefix
            .clone()
            .or_else(|| r.location.clone())
            .context("a [[registry]] table has neither prefix nor location")?;
        let host = prefix.split('/').next().unwrap_or_default().to_string();
        if host.starts_with("*.") {
            conf.ignored
                .push(format!("{prefix}: wildcard prefixes are not applied"));
            continue;
        }
        if let (Some(p), Some(l)) = (&r.prefix, &r.location) {
            if p != l {
                conf.ignored.push(format!(
                    "{prefix}: the rewrite to location {l} is not applied"
                ));
            }
        }
        if !r.mirror.is_empty() {
            conf.ignored.push(format!("{prefix}: mirrors are not used"));
        }
        let whole_host = !prefix.contains('/');
        if r.insecure {
            // TLS is a property of the host, whatever part of it the prefix names.
            conf.insecure.push(host.clone());
        }
        if r.blocked {
            if whole_host {
                conf.blocked.push(host);
            } else {
                conf.ignored.push(format!(
                    "{prefix}: blocking part of a registry is not applied (block the host {host})"
                ));
            }
        }
    }
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_insecure_and_blocked_and_names_what_it_ignores() {
        let conf = parse(
            r#"
unqualified-search-registries = ["docker.io"]
short-name-mode = "enforcing"

[[registry]]
location = "127.0.0.1:5000"
insecure = true

[[registry]]
prefix = "evil.example.com"
location = "evil.example.com"
blocked = true

[[registry]]
prefix = "quay.io/team"
location = "mirror.internal/team"
insecure = true

[[registry]]
location = "docker.io"
[[registry.mirror]]
location = "mirror.gcr.io"

[[registry]]
prefix = "ghcr.io/org/private"
blocked = true

[aliases]
"fedora" = "registry.fedoraproject.org/fedora"
"#,
        )
        .unwrap();
        assert_eq!(conf.insecure, ["127.0.0.1:5000", "quay.io"]);
        assert_eq!(conf.blocked, ["evil.example.com"]);
        assert_eq!(conf.ignored.len(), 3, "{:?}", conf.ignored);
        assert!(conf.ignored[0].contains("rewrite to location mirror.internal/team"));
        assert!(conf.ignored[1].contains("docker.io: mirrors are not used"));
        assert!(conf.ignored[2].contains("block the host ghcr.io"));
    }

    #[test]
    fn an_empty_or_commented_file_is_no_configuration() {
        assert_eq!(parse("# nothing\n").unwrap(), RegistriesConf::default());
        assert!(parse("[[registry]]\ninsecure = true\n").is_err());
        let e = parse("[[registry]]\nlocation = 5\n").unwrap_err();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
    }
}
