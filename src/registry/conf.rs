//! `registries.conf` (containers-registries.conf(5), version 2), as podman and skopeo read
//! it. The file is `--registries-conf FILE`, else `$CONTAINERS_REGISTRIES_CONF`, else
//! `$HOME/.config/containers/registries.conf`, else `/etc/containers/registries.conf` (the
//! first that exists; the user's file replaces the system's, as in containers/image).
//! After the system's file come the drop-ins (containers-registries.conf.d(5)): the
//! `*.conf` files of `/etc/containers/registries.conf.d`, then of
//! `$HOME/.config/containers/registries.conf.d`, each directory in alphanumerical order;
//! after the user's own file (found, not named) only the user's drop-ins; a file named
//! with `--registries-conf` or `$CONTAINERS_REGISTRIES_CONF` gets both, as in
//! containers/image. A later `[[registry]]` with the same `prefix` replaces the earlier
//! one, others are added.
//!
//! A reference (`host[:port]/path[:tag][@digest]`) belongs to the `[[registry]]` whose
//! `prefix` (default: its `location`) is its longest match on a path-component boundary;
//! a prefix `*.example.com` matches the sub-domains of `example.com` only. That entry's
//! `location` replaces the prefix for every read; writes go to the name as given, as in
//! podman and skopeo ("redirection and mirrors are processed only when reading
//! images"); `blocked = true` refuses the reference; `insecure = true` lets
//! its location be reached over plain HTTP or unverified TLS. Pulls try the entry's
//! `[[registry.mirror]]`s in order before the location, as [`RegistriesConf::pull_sources`]
//! lists them (`mirror-by-digest-only`, `pull-from-mirror`, a mirror's own `insecure`).
//! What diskforge does not apply (short-name search and aliases) is named in a warning.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::oci::reference::RemoteRef;

/// What diskforge takes from a registries.conf.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RegistriesConf {
    /// The files read, in order (the main file, then the drop-ins).
    pub files: Vec<PathBuf>,
    /// The `[[registry]]` tables, in the file's order.
    pub registries: Vec<Registry>,
    /// Hosts (`host[:port]`) whose `location` is marked `insecure = true`.
    pub insecure: Vec<String>,
    /// Hosts (`host[:port]`) blocked as a whole (a `blocked = true` prefix naming a host).
    pub blocked: Vec<String>,
    /// What the files ask for that diskforge does not do, one sentence each (naming the
    /// file, when read from one).
    pub ignored: Vec<String>,
    /// The same for what is shipped by distributions rather than set by a user (short-name
    /// aliases): said under `-v` only.
    pub notes: Vec<String>,
}

/// One `[[registry]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// `host[:port][/path]`, or `*.domain`.
    pub prefix: String,
    /// What replaces the prefix; empty for a wildcard prefix without one (no rewrite).
    pub location: String,
    pub insecure: bool,
    pub blocked: bool,
    /// Mirrors serve digest references only.
    pub mirror_by_digest_only: bool,
    pub mirrors: Vec<Mirror>,
}

/// One `[[registry.mirror]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub location: String,
    pub insecure: bool,
    pub pull_from: PullFrom,
}

/// `pull-from-mirror`: which references a mirror serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullFrom {
    #[default]
    All,
    DigestOnly,
    TagOnly,
}

/// Where a reference is read or written: the reference rewritten for one location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub image: RemoteRef,
    /// Plain HTTP and unverified TLS allowed for this source's host.
    pub insecure: bool,
    /// A `[[registry.mirror]]` (read only), not the registry's location.
    pub mirror: bool,
}

/// The keys of a `[[registry]]` table diskforge reads; others (`short-name-mode`,
/// `credential-helpers`, …) belong to other programs and are left be.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Raw {
    #[serde(default)]
    registry: Vec<RawRegistry>,
    #[serde(default)]
    unqualified_search_registries: Vec<String>,
    #[serde(default)]
    aliases: toml::Table,
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
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<RawMirror>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawMirror {
    location: String,
    #[serde(default)]
    insecure: bool,
    pull_from_mirror: Option<PullFrom>,
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

/// The files that make up the configuration, in the order they are read: the main file
/// (see [`path`]) and the drop-ins that go with it, those that exist.
pub fn files(explicit: Option<&Path>) -> Result<Vec<PathBuf>> {
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/containers"));
    let main = path(explicit);
    let named = explicit.is_some()
        || std::env::var_os("CONTAINERS_REGISTRIES_CONF").is_some_and(|p| !p.is_empty());
    // As containers/image has it: after the user's own file (found, not named) only the
    // user's drop-ins; otherwise the system's, then the user's.
    let user_file =
        !named && main.is_some() && main == home.as_ref().map(|h| h.join("registries.conf"));
    let mut dirs = Vec::new();
    if !user_file {
        dirs.push(PathBuf::from("/etc/containers/registries.conf.d"));
    }
    dirs.extend(home.map(|h| h.join("registries.conf.d")));
    let mut out: Vec<PathBuf> = main.into_iter().collect();
    for d in dirs {
        out.extend(drop_ins(&d)?);
    }
    Ok(out)
}

/// The `*.conf` files of `dir`, in alphanumerical order (none when it does not exist;
/// one that cannot be read is an error, as in containers/image).
fn drop_ins(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "conf"))
        .collect();
    v.sort();
    Ok(v)
}

/// Reads the registries.conf that applies and its drop-ins (see [`files`]); none is an
/// empty configuration. A file named explicitly must exist.
pub fn load(explicit: Option<&Path>) -> Result<RegistriesConf> {
    let mut conf = RegistriesConf::default();
    for p in files(explicit)? {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let mut one = parse(&text)
            .with_context(|| format!("{} is not a valid registries.conf", p.display()))?;
        for what in one.ignored.iter_mut().chain(one.notes.iter_mut()) {
            *what = format!("{}: {what}", p.display());
        }
        conf.merge(one);
        conf.files.push(p);
    }
    Ok(conf)
}

/// A `location` or `prefix` as containers/image takes it: trailing `/` dropped, no URL
/// scheme.
fn location(field: &str, value: &str) -> Result<String> {
    let v = value.trim_end_matches('/');
    if v.starts_with("http://") || v.starts_with("https://") {
        bail!("{field} {value:?}: give host[:port][/path], without a URL scheme");
    }
    Ok(v.to_string())
}

/// The host (`host[:port]`) of a location.
fn host(location: &str) -> &str {
    location.split('/').next().unwrap_or_default()
}

/// Parses a registries.conf's text.
pub fn parse(text: &str) -> Result<RegistriesConf> {
    let raw: Raw = toml::from_str(text)?;
    let mut conf = RegistriesConf::default();
    if !raw.unqualified_search_registries.is_empty() {
        conf.ignored.push(
            "short names (unqualified-search-registries, aliases) are not resolved: a reference without a registry host is a Docker Hub name, as in Docker"
                .into(),
        );
    } else if !raw.aliases.is_empty() {
        // Distributions ship these (containers-common's shortnames.conf drop-in): a
        // note, not a warning on every command.
        conf.notes.push(
            "short-name aliases are not applied: a reference without a registry host is a Docker Hub name, as in Docker"
                .into(),
        );
    }
    for r in raw.registry {
        let loc = match &r.location {
            Some(l) if !l.trim_end_matches('/').is_empty() => location("location", l)?,
            _ => String::new(),
        };
        let prefix = match &r.prefix {
            Some(p) if !p.is_empty() => location("prefix", p)?,
            _ if !loc.is_empty() => loc.clone(),
            _ => bail!("a [[registry]] table has neither prefix nor location"),
        };
        let wildcard = prefix.starts_with("*.");
        if wildcard && (prefix.contains('/') || prefix.len() == 2) {
            bail!("prefix {prefix:?}: a wildcard prefix is *.DOMAIN, without a path");
        }
        if loc.is_empty() && !wildcard {
            bail!("[[registry]] {prefix}: location is empty and the prefix is not *.DOMAIN");
        }
        let mut mirrors = Vec::new();
        for m in r.mirror {
            if r.mirror_by_digest_only && m.pull_from_mirror.is_some() {
                bail!("[[registry]] {prefix}: mirror-by-digest-only and the pull-from-mirror of mirror {} cannot both be set", m.location);
            }
            let l = location("mirror location", &m.location)?;
            if l.is_empty() {
                bail!("[[registry]] {prefix}: a mirror has an empty location");
            }
            mirrors.push(Mirror {
                location: l,
                insecure: m.insecure,
                pull_from: m.pull_from_mirror.unwrap_or_default(),
            });
        }
        conf.registries.push(Registry {
            prefix,
            location: loc,
            insecure: r.insecure,
            blocked: r.blocked,
            mirror_by_digest_only: r.mirror_by_digest_only,
            mirrors,
        });
    }
    conf.derive_hosts();
    Ok(conf)
}

/// How many bytes of `name` (`host[:port]/path[:tag][@digest]`) `prefix` matches, on a
/// component boundary; `None` when it does not match. `*.example.com` matches the
/// sub-domains of `example.com` in the host only. A prefix naming a host matches that
/// host and port exactly (containers/image lets `example.com` match `example.com:5000`,
/// which its own source calls unintended).
fn matched(name: &str, prefix: &str) -> Option<usize> {
    let end = if let Some(domain) = prefix.strip_prefix('*') {
        let at = name.find(domain)?;
        if name[..at].contains('/') || at == 0 {
            return None;
        }
        at + domain.len()
    } else {
        if !name.starts_with(prefix) {
            return None;
        }
        prefix.len()
    };
    let in_host = !name[..end].contains('/');
    match name.as_bytes().get(end) {
        Some(b'/') => Some(end),
        None | Some(b':' | b'@') if !in_host => Some(end),
        _ => None,
    }
}

/// `name` as registries.conf names it: Docker Hub is `docker.io`.
fn conf_name(r: &RemoteRef) -> String {
    let host = match r.registry.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    };
    let mut s = format!("{host}/{}", r.repository);
    if let Some(t) = &r.tag {
        s.push(':');
        s.push_str(t);
    }
    if let Some(d) = &r.digest {
        s.push('@');
        s.push_str(d);
    }
    s
}

impl RegistriesConf {
    /// Adds a later file's configuration: a `[[registry]]` with a prefix already
    /// configured replaces that one, the others are added.
    pub fn merge(&mut self, later: RegistriesConf) {
        for r in later.registries {
            match self.registries.iter_mut().find(|x| x.prefix == r.prefix) {
                Some(x) => *x = r,
                None => self.registries.push(r),
            }
        }
        self.ignored.extend(later.ignored);
        self.notes.extend(later.notes);
        self.derive_hosts();
    }

    /// The insecure and blocked hosts, from the registries.
    fn derive_hosts(&mut self) {
        self.insecure.clear();
        self.blocked.clear();
        for r in &self.registries {
            for m in r.mirrors.iter().filter(|m| m.insecure) {
                self.insecure.push(host(&m.location).to_string());
            }
            if r.insecure && !r.location.is_empty() {
                // TLS is a property of the host reached, whatever part of it the prefix
                // names.
                self.insecure.push(host(&r.location).to_string());
            }
            if r.blocked && !r.prefix.starts_with("*.") && !r.prefix.contains('/') {
                self.blocked.push(r.prefix.clone());
            }
        }
    }

    /// The `[[registry]]` whose prefix is the longest match of `r`, and how much of
    /// `r`'s name it matched.
    fn find(&self, name: &str) -> Option<(&Registry, usize)> {
        let mut best: Option<(&Registry, usize)> = None;
        for reg in &self.registries {
            if let Some(end) = matched(name, &reg.prefix) {
                if best.is_none_or(|(b, _)| reg.prefix.len() > b.prefix.len()) {
                    best = Some((reg, end));
                }
            }
        }
        best
    }

    /// `r` with the matched prefix replaced by `location` (unchanged for an empty one).
    fn rewrite(r: &RemoteRef, name: &str, end: usize, location: &str) -> Result<RemoteRef> {
        if location.is_empty() {
            return Ok(r.clone());
        }
        let rewritten = format!("{location}{}", &name[end..]);
        let mut image = RemoteRef::parse(&rewritten)
            .with_context(|| format!("rewriting {r} for location {location}"))?;
        // The tag as given: none stays none (`latest` is the reader's default).
        image.tag = r.tag.clone();
        Ok(image)
    }

    fn matching(&self, r: &RemoteRef) -> Result<Option<(&Registry, String, usize)>> {
        let name = conf_name(r);
        let Some((reg, end)) = self.find(&name) else {
            return Ok(None);
        };
        if reg.blocked {
            bail!(
                "{r} is blocked (blocked = true for {} in registries.conf): diskforge does not contact it",
                reg.prefix
            );
        }
        Ok(Some((reg, name, end)))
    }

    /// Whether the entry a host (`host[:port]`) falls under says `insecure = true`: how
    /// containers/image decides TLS for a host, which covers `*.example.com` entries.
    pub fn insecure_host(&self, host: &str) -> bool {
        self.find(&format!("{host}/"))
            .is_some_and(|(reg, _)| reg.insecure)
    }

    /// Where `r` is written: the name as given, never rewritten and never a mirror
    /// ("redirection and mirrors are processed only when reading images", as
    /// containers-registries.conf(5) says), with the entry's `insecure`; a blocked
    /// registry is refused.
    pub fn push_target(&self, r: &RemoteRef) -> Result<Source> {
        let insecure = self.matching(r)?.is_some_and(|(reg, _, _)| reg.insecure);
        Ok(Source {
            image: r.clone(),
            insecure,
            mirror: false,
        })
    }

    /// Where `r` may be read, in the order to try: the mirrors that serve this kind of
    /// reference (by digest or by tag), then the registry's location. Never empty.
    pub fn pull_sources(&self, r: &RemoteRef) -> Result<Vec<Source>> {
        let Some((reg, name, end)) = self.matching(r)? else {
            return Ok(vec![Source {
                image: r.clone(),
                insecure: false,
                mirror: false,
            }]);
        };
        let digested = r.digest.is_some();
        let mut sources = Vec::new();
        for m in &reg.mirrors {
            let serves = if reg.mirror_by_digest_only {
                digested
            } else {
                match m.pull_from {
                    PullFrom::All => true,
                    PullFrom::DigestOnly => digested,
                    PullFrom::TagOnly => !digested,
                }
            };
            if serves {
                sources.push(Source {
                    image: Self::rewrite(r, &name, end, &m.location)?,
                    insecure: m.insecure,
                    mirror: true,
                });
            }
        }
        sources.push(Source {
            image: Self::rewrite(r, &name, end, &reg.location)?,
            insecure: reg.insecure,
            mirror: false,
        });
        Ok(sources)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RemoteRef {
        RemoteRef::parse(s).unwrap()
    }

    fn names(sources: &[Source]) -> Vec<String> {
        sources
            .iter()
            .map(|s| format!("{}{}", if s.mirror { "mirror " } else { "" }, s.image))
            .collect()
    }

    #[test]
    fn reads_registries_and_names_what_it_ignores() {
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
insecure = true

[[registry]]
prefix = "ghcr.io/org/private"
location = "ghcr.io/org/private"
blocked = true

[aliases]
"fedora" = "registry.fedoraproject.org/fedora"
"#,
        )
        .unwrap();
        // TLS follows the host a request is sent to: the location's, a mirror's.
        assert_eq!(
            conf.insecure,
            ["127.0.0.1:5000", "mirror.internal", "mirror.gcr.io"]
        );
        assert_eq!(conf.blocked, ["evil.example.com"]);
        assert_eq!(conf.registries.len(), 5);
        assert_eq!(conf.ignored.len(), 1, "{:?}", conf.ignored);
        assert!(conf.ignored[0].contains("short names"));
        // Aliases alone (a distribution's shortnames.conf) are a note, not a warning.
        let aliases =
            parse("[aliases]\n\"fedora\" = \"registry.fedoraproject.org/fedora\"\n").unwrap();
        assert!(aliases.ignored.is_empty(), "{:?}", aliases.ignored);
        assert_eq!(aliases.notes.len(), 1, "{:?}", aliases.notes);
        // Blocking part of a registry applies to the references under it only.
        let e = conf
            .pull_sources(&r("ghcr.io/org/private/x:1"))
            .unwrap_err();
        assert!(e.to_string().contains("blocked"), "{e}");
        assert!(conf.push_target(&r("ghcr.io/org/private/x:1")).is_err());
        assert!(conf.push_target(&r("ghcr.io/org/public/x:1")).is_ok());
        assert!(conf.pull_sources(&r("evil.example.com/x")).is_err());
    }

    #[test]
    fn the_longest_prefix_on_a_component_boundary_rewrites_the_reference() {
        let conf = parse(
            r#"
[[registry]]
prefix = "lab.example.invalid/team"
location = "127.0.0.1:5000/team"

[[registry]]
prefix = "lab.example.invalid/team/special"
location = "other.example:5001/x/y"

[[registry]]
prefix = "lab.example.invalid"
location = "fallback.example"
"#,
        )
        .unwrap();
        // The location is the last source a read tries.
        let to = |s: &str| {
            let sources = conf.pull_sources(&r(s)).unwrap();
            sources.last().unwrap().image.to_string()
        };
        assert_eq!(
            to("docker://lab.example.invalid/team/x:1"),
            "127.0.0.1:5000/team/x:1"
        );
        assert_eq!(
            to("lab.example.invalid/team/special/disk:2"),
            "other.example:5001/x/y/disk:2"
        );
        // `team2` is not under `team`: the host's entry applies.
        assert_eq!(
            to("lab.example.invalid/team2/x:1"),
            "fallback.example/team2/x:1"
        );
        // Nothing matches: unchanged.
        assert_eq!(
            to("elsewhere.example/team/x:1"),
            "elsewhere.example/team/x:1"
        );
        let d = format!("sha256:{}", "c".repeat(64));
        assert_eq!(
            to(&format!("lab.example.invalid/team/x@{d}")),
            format!("127.0.0.1:5000/team/x@{d}")
        );
        // Docker Hub is `docker.io` in registries.conf.
        let hub = parse(
            "[[registry]]\nprefix = \"docker.io/library\"\nlocation = \"hub.internal/lib\"\n",
        )
        .unwrap();
        assert_eq!(
            hub.pull_sources(&r("alpine:3")).unwrap()[0]
                .image
                .to_string(),
            "hub.internal/lib/alpine:3"
        );
        // A write goes to the name as given, as podman and skopeo write.
        assert_eq!(
            conf.push_target(&r("lab.example.invalid/team/x:1"))
                .unwrap()
                .image
                .to_string(),
            "lab.example.invalid/team/x:1"
        );
    }

    #[test]
    fn wildcard_prefixes_match_sub_domains_only() {
        let conf = parse(
            r#"
[[registry]]
prefix = "*.example.com"
insecure = true
[[registry.mirror]]
location = "cache.internal/example"

[[registry]]
prefix = "*.b.example.com"
location = "b.internal"
"#,
        )
        .unwrap();
        let sources = |s: &str| names(&conf.pull_sources(&r(s)).unwrap());
        assert_eq!(
            sources("a.example.com/x:1"),
            ["mirror cache.internal/example/x:1", "a.example.com/x:1"]
        );
        assert!(conf.pull_sources(&r("a.example.com/x:1")).unwrap()[1].insecure);
        assert!(conf.insecure_host("a.example.com") && !conf.insecure_host("c.b.example.com"));
        assert!(!conf.insecure_host("example.com") && !conf.insecure_host("cache.internal"));
        // A host prefix names a port too.
        assert_eq!(
            sources("a.example.com:5000/x:1"),
            ["a.example.com:5000/x:1"]
        );
        // The longer wildcard wins, and rewrites the host.
        assert_eq!(sources("c.b.example.com/x:1"), ["b.internal/x:1"]);
        // The domain itself, a host merely ending in it, or the domain in a path: no.
        for other in [
            "example.com/x:1",
            "notexample.com/x:1",
            "other.io/a.example.com/x:1",
        ] {
            assert_eq!(sources(other), [r(other).to_string()], "{other}");
        }
        assert!(parse("[[registry]]\nprefix = \"*.example.com/path\"\n").is_err());
        assert!(parse("[[registry]]\nprefix = \"example.com\"\n").is_err());
    }

    #[test]
    fn mirrors_come_first_for_the_references_they_serve() {
        let conf = parse(
            r#"
[[registry]]
location = "reg.example/team"
[[registry.mirror]]
location = "m1.example/team-mirror"
[[registry.mirror]]
location = "m2.example:5000/t"
pull-from-mirror = "digest-only"
insecure = true
[[registry.mirror]]
location = "m3.example"
pull-from-mirror = "tag-only"

[[registry]]
location = "pinned.example"
mirror-by-digest-only = true
[[registry.mirror]]
location = "pm.example"
"#,
        )
        .unwrap();
        let d = format!("sha256:{}", "d".repeat(64));
        let sources = |s: &str| names(&conf.pull_sources(&r(s)).unwrap());
        assert_eq!(
            sources("reg.example/team/x:1"),
            [
                "mirror m1.example/team-mirror/x:1",
                "mirror m3.example/x:1",
                "reg.example/team/x:1"
            ]
        );
        assert_eq!(
            sources(&format!("reg.example/team/x@{d}")),
            [
                format!("mirror m1.example/team-mirror/x@{d}"),
                format!("mirror m2.example:5000/t/x@{d}"),
                format!("reg.example/team/x@{d}")
            ]
        );
        let digested = conf
            .pull_sources(&r(&format!("reg.example/team/x@{d}")))
            .unwrap();
        assert!(digested[1].insecure && !digested[0].insecure);
        assert_eq!(sources("pinned.example/x:1"), ["pinned.example/x:1"]);
        assert_eq!(
            sources(&format!("pinned.example/x@{d}")),
            [
                format!("mirror pm.example/x@{d}"),
                format!("pinned.example/x@{d}")
            ]
        );
        // A push never goes to a mirror.
        assert_eq!(
            conf.push_target(&r("reg.example/team/x:1"))
                .unwrap()
                .image
                .to_string(),
            "reg.example/team/x:1"
        );
        // Both settings at once, or an unknown value: refused, as containers/image does.
        assert!(parse("[[registry]]\nlocation = \"a.example\"\nmirror-by-digest-only = true\n[[registry.mirror]]\nlocation = \"b.example\"\npull-from-mirror = \"all\"\n").is_err());
        let e = parse("[[registry]]\nlocation = \"a.example\"\n[[registry.mirror]]\nlocation = \"b.example\"\npull-from-mirror = \"sometimes\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("sometimes"), "{e:#}");
        assert!(parse("[[registry]]\nlocation = \"https://a.example\"\n").is_err());
    }

    #[test]
    fn a_later_file_replaces_the_registry_of_the_same_prefix_and_adds_the_others() {
        let mut conf = parse(
            "[[registry]]\nprefix = \"a.example/team\"\nlocation = \"old.example/team\"\ninsecure = true\n\
             [[registry]]\nlocation = \"blocked.example\"\nblocked = true\n",
        )
        .unwrap();
        assert_eq!(conf.insecure, ["old.example"]);
        conf.merge(
            parse(
                "unqualified-search-registries = [\"x.example\"]\n\
                 [[registry]]\nprefix = \"a.example/team\"\nlocation = \"new.example/team\"\n\
                 [[registry]]\nlocation = \"b.example\"\ninsecure = true\n",
            )
            .unwrap(),
        );
        let located: Vec<(&str, &str)> = conf
            .registries
            .iter()
            .map(|r| (r.prefix.as_str(), r.location.as_str()))
            .collect();
        assert_eq!(
            located,
            [
                ("a.example/team", "new.example/team"),
                ("blocked.example", "blocked.example"),
                ("b.example", "b.example")
            ]
        );
        // The replaced entry's insecure host is gone with it.
        assert_eq!(conf.insecure, ["b.example"]);
        assert_eq!(conf.blocked, ["blocked.example"]);
        assert_eq!(conf.ignored.len(), 1, "{:?}", conf.ignored);
    }

    #[test]
    fn an_empty_or_commented_file_is_no_configuration() {
        assert_eq!(parse("# nothing\n").unwrap(), RegistriesConf::default());
        assert!(parse("[[registry]]\ninsecure = true\n").is_err());
        let e = parse("[[registry]]\nlocation = 5\n").unwrap_err();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
    }
}
