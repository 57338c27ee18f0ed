//! The packages installed in a guest, read from the package managers' own databases
//! (dpkg's `status`, `rpm -qa` with [`RPM_QUERYFORMAT`], apk's `installed`), and their
//! package URLs. Pure parsers: the caller reads the files out of the guest.

use anyhow::{bail, Context, Result};

/// Which package manager a package came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ecosystem {
    Deb,
    Rpm,
    Apk,
}

impl Ecosystem {
    /// The package-URL type.
    pub fn purl_type(self) -> &'static str {
        match self {
            Ecosystem::Deb => "deb",
            Ecosystem::Rpm => "rpm",
            Ecosystem::Apk => "apk",
        }
    }
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    pub ecosystem: Ecosystem,
    pub name: String,
    /// The full version as the package manager prints it (`1:2.36-9+deb12u4`,
    /// `8.2.1-3.fc39`, `3.3a-r0`); rpm's epoch is kept apart in `epoch`.
    pub version: String,
    pub epoch: Option<String>,
    pub arch: String,
    /// The source package and its version, when known.
    pub source: Option<(String, String)>,
    /// The licence as the package records it (not necessarily an SPDX expression).
    pub licence: Option<String>,
}

/// The guest distribution, from its `/etc/os-release`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distro {
    /// `ID`: debian, ubuntu, fedora, alpine…
    pub id: String,
    /// `VERSION_ID`: 12, 24.04, 40, 3.20.1…
    pub version_id: String,
}

impl Distro {
    /// Parses os-release (`KEY=value` lines, values optionally quoted).
    pub fn from_os_release(text: &str) -> Result<Distro> {
        let get = |key: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches(['"', '\'']).to_string())
            })
        };
        let id = get("ID").context("os-release has no ID")?;
        // Rolling releases (Arch, Debian sid) have no VERSION_ID.
        let version_id = get("VERSION_ID").unwrap_or_default();
        Ok(Distro { id, version_id })
    }

    /// The purl `distro` qualifier: `debian-12`, `fedora-40`, `alpine-3.20.1`.
    pub fn qualifier(&self) -> String {
        if self.version_id.is_empty() {
            self.id.clone()
        } else {
            format!("{}-{}", self.id, self.version_id)
        }
    }
}

impl Package {
    /// The package URL, e.g. `pkg:deb/debian/tmux@3.3a-3?arch=amd64&distro=debian-12`.
    /// Qualifiers are sorted by key, as the purl spec's canonical form requires.
    pub fn purl(&self, distro: &Distro) -> String {
        let mut qualifiers = vec![("arch", self.arch.clone()), ("distro", distro.qualifier())];
        if let Some(e) = &self.epoch {
            qualifiers.push(("epoch", e.clone()));
        }
        qualifiers.sort();
        let q: Vec<String> = qualifiers
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        format!(
            "pkg:{}/{}/{}@{}?{}",
            self.ecosystem.purl_type(),
            percent_encode(&distro.id),
            percent_encode(&self.name),
            percent_encode(&self.version),
            q.join("&")
        )
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Splits deb822 text (dpkg status, apt lists) into paragraphs of `(field, value)`;
/// continuation lines are appended to the value with newlines.
fn deb822(text: &str) -> Vec<Vec<(String, String)>> {
    let mut paragraphs = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                paragraphs.push(std::mem::take(&mut current));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = current.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            current.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !current.is_empty() {
        paragraphs.push(current);
    }
    paragraphs
}

fn field<'a>(p: &'a [(String, String)], name: &str) -> Option<&'a str> {
    p.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Packages of a dpkg `status` file that are fully installed (`install ok installed`,
/// or held, or selected for removal but still there); removed packages whose
/// configuration files remain, half-installed ones and the like are skipped. dpkg
/// records no licence.
pub fn parse_dpkg_status(text: &str) -> Result<Vec<Package>> {
    let mut out = Vec::new();
    for p in deb822(text) {
        // Status is "WANT FLAG STATE"; only the state says what is on disk.
        let status: Vec<&str> = field(&p, "Status").unwrap_or("").split(' ').collect();
        if status.get(1..) != Some(&["ok", "installed"][..]) {
            continue;
        }
        let name = field(&p, "Package").context("a dpkg status entry has no Package field")?;
        let version =
            field(&p, "Version").with_context(|| format!("dpkg package {name} has no Version"))?;
        let arch = field(&p, "Architecture")
            .with_context(|| format!("dpkg package {name} has no Architecture"))?;
        // `Source: name` or `Source: name (version)` when it differs from the binary's.
        let source = field(&p, "Source").map(|s| match s.split_once(' ') {
            Some((n, v)) => (
                n.to_string(),
                v.trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .to_string(),
            ),
            None => (s.to_string(), version.to_string()),
        });
        out.push(Package {
            ecosystem: Ecosystem::Deb,
            name: name.to_string(),
            version: version.to_string(),
            epoch: None,
            arch: arch.to_string(),
            source: source.or_else(|| Some((name.to_string(), version.to_string()))),
            licence: None,
        });
    }
    out.sort();
    Ok(out)
}

/// The licence of a Debian package from its machine-readable `debian/copyright`
/// (`/usr/share/doc/PKG/copyright`): the `License:` of the `Files: *` paragraph.
/// `None` for free-form copyright files, which state no machine-readable licence.
pub fn dep5_licence(copyright: &str) -> Option<String> {
    let paragraphs = deb822(copyright);
    let header = paragraphs.first()?;
    if !field(header, "Format").is_some_and(|f| f.contains("copyright-format")) {
        return None;
    }
    paragraphs
        .iter()
        .find(|p| field(p, "Files").is_some_and(|f| f.split_whitespace().any(|g| g == "*")))
        .and_then(|p| field(p, "License"))
        .and_then(|l| l.lines().next())
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
}

/// The `rpm -qa --queryformat` argument [`parse_rpm_qa`] reads: one line per package,
/// tab-separated name, epoch, version, release, arch, licence, source rpm.
pub const RPM_QUERYFORMAT: &str =
    "%{NAME}\\t%{EPOCH}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\t%{LICENSE}\\t%{SOURCERPM}\\n";

/// Packages from `rpm -qa --queryformat RPM_QUERYFORMAT`. The `gpg-pubkey` entries rpm
/// lists for imported keys are not packages and are skipped.
pub fn parse_rpm_qa(text: &str) -> Result<Vec<Package>> {
    let none = |s: &str| (!s.is_empty() && s != "(none)").then(|| s.to_string());
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split('\t').collect();
        let [name, epoch, version, release, arch, licence, srpm] = f[..] else {
            bail!(
                "rpm query line {} has {} fields, expected 7 (name, epoch, version, release, arch, license, sourcerpm): {line:?}",
                i + 1,
                f.len()
            );
        };
        if name == "gpg-pubkey" {
            continue;
        }
        out.push(Package {
            ecosystem: Ecosystem::Rpm,
            name: name.to_string(),
            version: format!("{version}-{release}"),
            epoch: none(epoch),
            arch: arch.to_string(),
            source: none(srpm).and_then(|s| source_rpm(&s)),
            licence: none(licence),
        });
    }
    out.sort();
    Ok(out)
}

/// `curl-8.2.1-3.fc39.src.rpm` → (`curl`, `8.2.1-3.fc39`).
fn source_rpm(srpm: &str) -> Option<(String, String)> {
    let base = srpm
        .strip_suffix(".src.rpm")
        .or_else(|| srpm.strip_suffix(".nosrc.rpm"))?;
    let (rest, release) = base.rsplit_once('-')?;
    let (name, version) = rest.rsplit_once('-')?;
    Some((name.to_string(), format!("{version}-{release}")))
}

/// Packages of apk's database (`/lib/apk/db/installed`): blank-line separated records
/// of `X:value` lines (P name, V version, A arch, L licence, o origin).
pub fn parse_apk_installed(text: &str) -> Result<Vec<Package>> {
    let mut out = Vec::new();
    for record in text.split("\n\n").filter(|r| !r.trim().is_empty()) {
        let get = |key: char| {
            record.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(str::to_string)
            })
        };
        let name = get('P').context("an apk database record has no P: (name) line")?;
        let version = get('V').with_context(|| format!("apk package {name} has no V: line"))?;
        let arch = get('A').with_context(|| format!("apk package {name} has no A: line"))?;
        out.push(Package {
            ecosystem: Ecosystem::Apk,
            source: get('o').map(|o| (o, version.clone())),
            licence: get('L').filter(|l| !l.is_empty()),
            epoch: None,
            name,
            version,
            arch,
        });
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DPKG: &str = include_str!("../../tests/fixtures/dpkg-status-bookworm-minbase");
    const RPM: &str = include_str!("../../tests/fixtures/rpm-qa-fedora40.tsv");
    const APK: &str = include_str!("../../tests/fixtures/apk-installed-alpine320");

    fn find<'a>(ps: &'a [Package], name: &str) -> &'a Package {
        ps.iter().find(|p| p.name == name).unwrap()
    }

    fn debian() -> Distro {
        Distro::from_os_release(include_str!("../../tests/fixtures/os-release-debian12")).unwrap()
    }

    #[test]
    fn dpkg_status_of_a_debian_minbase() {
        let ps = parse_dpkg_status(DPKG).unwrap();
        // 102 entries; cron was removed and only its conffiles remain.
        assert_eq!(ps.len(), 101);
        assert!(ps.iter().all(|p| p.name != "cron"));
        let tmux = find(&ps, "tmux");
        assert_eq!(
            tmux.purl(&debian()),
            "pkg:deb/debian/tmux@3.3a-3?arch=amd64&distro=debian-12"
        );
        assert_eq!(tmux.source, Some(("tmux".into(), "3.3a-3".into())));
        // Source named without a version: the binary's version.
        let libc = find(&ps, "libc6");
        assert_eq!(libc.source, Some(("glibc".into(), libc.version.clone())));
        // A binary rebuilt (+b2) from a source package of another version.
        let e2 = find(&ps, "libcom-err2");
        assert_eq!(e2.source, Some(("e2fsprogs".into(), "1.47.0-2".into())));
        assert_eq!(e2.version, "1.47.0-2+b2");
        assert!(ps.iter().all(|p| p.licence.is_none() && !p.arch.is_empty()));
        assert!(ps.windows(2).all(|w| w[0] <= w[1]), "sorted");
    }

    #[test]
    fn dpkg_states_on_disk_count() {
        let entry = |name: &str, status: &str| {
            format!("Package: {name}\nStatus: {status}\nVersion: 1\nArchitecture: all\n\n")
        };
        let text = [
            entry("held", "hold ok installed"),
            entry("leaving", "deinstall ok installed"),
            entry("gone", "deinstall ok config-files"),
            entry("broken", "install ok half-configured"),
            entry("failed", "install reinstreq installed"),
            entry("normal", "install ok installed"),
        ]
        .concat();
        let names: Vec<String> = parse_dpkg_status(&text)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["held", "leaving", "normal"]);
    }

    #[test]
    fn purls_percent_encode_versions_and_sort_qualifiers() {
        let ps = parse_dpkg_status(DPKG).unwrap();
        let libc = find(&ps, "libc6");
        let purl = libc.purl(&debian());
        assert!(
            purl.starts_with("pkg:deb/debian/libc6@2.36-9%2Bdeb12u"),
            "{purl}"
        );
        assert!(purl.ends_with("?arch=amd64&distro=debian-12"), "{purl}");
    }

    #[test]
    fn dep5_copyright_gives_the_licence_of_files_star() {
        let dep5 = include_str!("../../tests/fixtures/copyright-tmux-dep5");
        assert_eq!(dep5_licence(dep5).as_deref(), Some("ISC"));
        let free = include_str!("../../tests/fixtures/copyright-base-files-freeform");
        assert_eq!(dep5_licence(free), None);
    }

    #[test]
    fn rpm_query_output() {
        let ps = parse_rpm_qa(RPM).unwrap();
        assert_eq!(ps.len(), 9, "gpg-pubkey is not a package");
        let fedora = Distro {
            id: "fedora".into(),
            version_id: "40".into(),
        };
        let ssl = find(&ps, "openssl-libs");
        assert_eq!(ssl.epoch.as_deref(), Some("1"));
        assert_eq!(ssl.source, Some(("openssl".into(), "3.2.2-3.fc40".into())));
        assert_eq!(
            ssl.purl(&fedora),
            "pkg:rpm/fedora/openssl-libs@3.2.2-3.fc40?arch=x86_64&distro=fedora-40&epoch=1"
        );
        let curl = find(&ps, "curl");
        assert_eq!(
            (curl.epoch.as_deref(), curl.licence.as_deref()),
            (None, Some("curl"))
        );
        assert_eq!(find(&ps, "tzdata").arch, "noarch");
        let err = parse_rpm_qa("bash\t(none)\t5.2\n").unwrap_err();
        assert!(err.to_string().contains("has 3 fields"), "{err}");
    }

    #[test]
    fn apk_installed_database() {
        let ps = parse_apk_installed(APK).unwrap();
        assert_eq!(ps.len(), 5);
        let alpine = Distro {
            id: "alpine".into(),
            version_id: "3.20.1".into(),
        };
        let crypto = find(&ps, "libcrypto3");
        assert_eq!(crypto.source, Some(("openssl".into(), "3.3.1-r3".into())));
        assert_eq!(crypto.licence.as_deref(), Some("Apache-2.0"));
        assert_eq!(
            find(&ps, "busybox").purl(&alpine),
            "pkg:apk/alpine/busybox@1.36.1-r29?arch=x86_64&distro=alpine-3.20.1"
        );
        assert!(parse_apk_installed("V:1\nA:x86_64\n").is_err());
    }

    #[test]
    fn os_release() {
        assert_eq!(
            debian(),
            Distro {
                id: "debian".into(),
                version_id: "12".into()
            }
        );
        let sid = Distro::from_os_release("ID=debian\nNAME=\"Debian\"\n").unwrap();
        assert_eq!(sid.qualifier(), "debian");
        assert!(Distro::from_os_release("NAME=x\n").is_err());
    }
}
