//! An SPDX 2.3 JSON SBOM of a built image: the image, the base image and the recipe it
//! was built from, and every package installed in the guest. Deterministic: the same
//! inputs give the same bytes (sorted keys and lists, namespace derived from digests,
//! creation time given by the caller).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::attach::Layer;
use super::packages::{Distro, Package};
use super::sha256_hex;

/// Something the image was made from, identified by its sha256 digest.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// What to call it: a catalog name, a recipe path.
    pub name: String,
    pub version: Option<String>,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Where it was downloaded from, if it was.
    pub download: Option<String>,
}

/// Everything the SBOM describes.
#[derive(Debug, Clone)]
pub struct SbomInput<'a> {
    /// The image repository, e.g. `registry.example.com/lab/ubuntu`.
    pub image: &'a str,
    /// The image manifest digest `sha256:<hex>`.
    pub image_digest: &'a str,
    pub base: &'a Artifact,
    pub recipe: &'a Artifact,
    pub distro: &'a Distro,
    pub packages: &'a [Package],
    /// RFC 3339 UTC (`2024-01-02T03:04:05Z`), e.g. from `SOURCE_DATE_EPOCH`.
    pub created: &'a str,
}

/// The media type cosign gives an SPDX JSON SBOM attached to an image.
pub const MEDIA_SPDX_JSON: &str = "text/spdx+json";

const NOASSERTION: &str = "NOASSERTION";
const ID_IMAGE: &str = "SPDXRef-Image";
const ID_BASE: &str = "SPDXRef-BaseImage";
const ID_RECIPE: &str = "SPDXRef-Recipe";

/// The SPDX document as canonical JSON bytes.
pub fn document(input: &SbomInput) -> Result<Vec<u8>> {
    for d in [input.image_digest, &input.base.digest, &input.recipe.digest] {
        sha256_hex(d)?;
    }
    let mut licences = LicenceRefs::default();
    let mut packages = vec![
        image_package(input)?,
        artifact_package(ID_BASE, input.base, "OPERATING-SYSTEM")?,
        artifact_package(ID_RECIPE, input.recipe, "SOURCE")?,
    ];
    let mut relationships = vec![
        relationship("SPDXRef-DOCUMENT", "DESCRIBES", ID_IMAGE),
        relationship(ID_IMAGE, "GENERATED_FROM", ID_RECIPE),
        relationship(ID_IMAGE, "DESCENDANT_OF", ID_BASE),
    ];
    let mut sorted: Vec<&Package> = input.packages.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut ids = BTreeMap::new();
    for p in sorted {
        let id = package_id(p);
        if ids.insert(id.clone(), p).is_some() {
            bail!(
                "two packages map to the SPDX id {id}: {} {}",
                p.name,
                p.arch
            );
        }
        packages.push(guest_package(&id, p, input.distro, &mut licences));
        relationships.push(relationship(ID_IMAGE, "CONTAINS", &id));
    }
    relationships.sort_by_key(|r| r.to_string());
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}@{}", input.image, input.image_digest),
        "documentNamespace": namespace(input),
        "creationInfo": {
            "created": input.created,
            "creators": [format!("Tool: diskforge-{}", env!("CARGO_PKG_VERSION"))],
            "licenseListVersion": licence_list_version(),
        },
        "packages": packages,
        "relationships": relationships,
    });
    if !licences.0.is_empty() {
        doc["hasExtractedLicensingInfos"] = licences.to_json();
    }
    crate::io::hash::canonical_json(&doc)
}

/// The SBOM as the layer of the image's `.sbom` attachment (see [`super::attach`]).
pub fn sbom_layer(document: Vec<u8>) -> Layer {
    Layer {
        media_type: MEDIA_SPDX_JSON.into(),
        bytes: document,
        annotations: BTreeMap::new(),
    }
}

/// A URI unique to this image and recipe: two builds of the same image from the same
/// recipe describe the same thing and may share it.
fn namespace(input: &SbomInput) -> String {
    let key = format!(
        "{}\n{}\n{}",
        input.image, input.image_digest, input.recipe.digest
    );
    let name: String = input
        .image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!(
        "https://diskforge.dev/spdx/{name}-{}",
        crate::io::hash::sha256_hex(key.as_bytes())
    )
}

/// `3.29.0` → `3.29` (the form SPDX asks for).
fn licence_list_version() -> String {
    let v = spdx::identifiers::VERSION;
    v.split('.').take(2).collect::<Vec<_>>().join(".")
}

fn relationship(from: &str, kind: &str, to: &str) -> Value {
    json!({"spdxElementId": from, "relationshipType": kind, "relatedSpdxElement": to})
}

fn image_package(input: &SbomInput) -> Result<Value> {
    let hex = sha256_hex(input.image_digest)?;
    let last = input.image.rsplit('/').next().unwrap_or(input.image);
    // pkg:oci names the image by its last path segment; the repository goes in a qualifier.
    let purl = format!(
        "pkg:oci/{last}@sha256%3A{hex}?repository_url={}",
        input.image.replace(':', "%3A")
    );
    Ok(json!({
        "SPDXID": ID_IMAGE,
        "name": input.image,
        "versionInfo": input.image_digest,
        "primaryPackagePurpose": "CONTAINER",
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": false,
        "checksums": [{"algorithm": "SHA256", "checksumValue": hex}],
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": NOASSERTION,
        "copyrightText": NOASSERTION,
        "externalRefs": [purl_ref(&purl)],
    }))
}

/// SPDX's `downloadLocation` takes a URL (or NONE/NOASSERTION), not a local path or a
/// description such as `built: debian-12-minimal`: those go into `sourceInfo`.
fn is_download_url(s: &str) -> bool {
    ["https://", "http://", "ftp://", "sftp://"]
        .iter()
        .any(|p| s.starts_with(p) && s.len() > p.len())
}

fn artifact_package(id: &str, a: &Artifact, purpose: &str) -> Result<Value> {
    let download = a.download.as_deref().filter(|d| is_download_url(d));
    let mut v = json!({
        "SPDXID": id,
        "name": a.name,
        "primaryPackagePurpose": purpose,
        "downloadLocation": download.unwrap_or(NOASSERTION),
        "filesAnalyzed": false,
        "checksums": [{"algorithm": "SHA256", "checksumValue": sha256_hex(&a.digest)?}],
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": NOASSERTION,
        "copyrightText": NOASSERTION,
    });
    if let Some(version) = &a.version {
        v["versionInfo"] = json!(version);
    }
    if let Some(origin) = a.download.as_deref().filter(|d| !is_download_url(d)) {
        v["sourceInfo"] = json!(origin);
    }
    Ok(v)
}

fn purl_ref(purl: &str) -> Value {
    json!({"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl})
}

/// `SPDXRef-deb-tmux-amd64`: readable, and unique because a package manager holds one
/// package per name and architecture; characters SPDX ids cannot hold become `-`.
fn package_id(p: &Package) -> String {
    let raw = format!("{}-{}-{}", p.ecosystem.purl_type(), p.name, p.arch);
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    // Names that differ only in such characters (libstdc++ / libstdc--) stay apart.
    if clean == raw {
        format!("SPDXRef-{clean}")
    } else {
        format!(
            "SPDXRef-{clean}-{}",
            &crate::io::hash::sha256_hex(raw.as_bytes())[..8]
        )
    }
}

fn guest_package(id: &str, p: &Package, distro: &Distro, lic: &mut LicenceRefs) -> Value {
    let version = match &p.epoch {
        Some(e) => format!("{e}:{}", p.version),
        None => p.version.clone(),
    };
    let declared = p
        .licence
        .as_deref()
        .map(|l| lic.expression(l))
        .unwrap_or_else(|| NOASSERTION.to_string());
    let mut v = json!({
        "SPDXID": id,
        "name": p.name,
        "versionInfo": version,
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": false,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": declared,
        "copyrightText": NOASSERTION,
        "externalRefs": [purl_ref(&p.purl(distro))],
    });
    if let Some((name, version)) = &p.source {
        v["sourceInfo"] = json!(format!("built from source package {name} {version}"));
    }
    v
}

/// Debian's copyright-format short names in SPDX spelling: `GPL-2+` → `GPL-2.0-or-later`,
/// `LGPL-2.1` → `LGPL-2.1-only`, `Expat` → `MIT`, `BSD-3-clause` → `BSD-3-Clause`.
/// Other words are kept.
fn debian_names(raw: &str) -> String {
    let word = |w: &str| -> String {
        if w == "Expat" {
            return "MIT".into();
        }
        let (base, later) = match w.strip_suffix('+') {
            Some(b) => (b, true),
            None => (w, false),
        };
        let gnu = ["GPL-", "LGPL-", "AGPL-"]
            .iter()
            .find_map(|p| base.strip_prefix(p).map(|v| (p, v)));
        match gnu {
            Some((prefix, v))
                if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.') =>
            {
                let v = if v.contains('.') {
                    v.to_string()
                } else {
                    format!("{v}.0")
                };
                format!("{prefix}{v}-{}", if later { "or-later" } else { "only" })
            }
            // Debian writes SPDX ids in its own case (`BSD-3-clause`).
            _ => spdx::identifiers::LICENSES
                .iter()
                .find(|l| l.name.eq_ignore_ascii_case(w))
                .map_or_else(|| w.to_string(), |l| l.name.to_string()),
        }
    };
    raw.split(' ').map(word).collect::<Vec<_>>().join(" ")
}

/// Licences that are not SPDX expressions, declared as `LicenseRef-…` with their text.
#[derive(Default)]
struct LicenceRefs(BTreeMap<String, (String, String)>);

impl LicenceRefs {
    /// `raw` as an SPDX expression when it is one or can be fixed into one (`GPLv2+` →
    /// `GPL-2.0-or-later`, lower-case operators); else a `LicenseRef-` standing for it.
    fn expression(&mut self, raw: &str) -> String {
        let debian = debian_names(raw);
        let fixed = match spdx::Expression::canonicalize(&debian) {
            Ok(Some(c)) => c,
            Ok(None) => debian,
            Err(_) => String::new(),
        };
        if let Ok(expr) = spdx::Expression::parse(&fixed) {
            // Distribution-defined references (Fedora's `LicenseRef-Fedora-Public-Domain`)
            // must be declared in the document too.
            for r in expr.requirements() {
                if let spdx::LicenseItem::Other(other) = &r.req.license {
                    if other.doc_ref.is_none() {
                        let id = format!("LicenseRef-{}", other.lic_ref);
                        let text = format!("A licence the distribution names {id}; its text is not in the package database.");
                        self.0.entry(id).or_insert((other.lic_ref.clone(), text));
                    }
                }
            }
            return fixed;
        }
        let id: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let id = format!(
            "LicenseRef-{id}-{}",
            &crate::io::hash::sha256_hex(raw.as_bytes())[..8]
        );
        let text = format!(
            "The package states its licence as \"{raw}\", which is not an SPDX license expression."
        );
        self.0.insert(id.clone(), (raw.to_string(), text));
        id
    }

    fn to_json(&self) -> Value {
        let infos: Vec<Value> = self
            .0
            .iter()
            .map(|(id, (name, text))| json!({"licenseId": id, "name": name, "extractedText": text}))
            .collect();
        Value::Array(infos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provenance::packages::{parse_rpm_qa, Ecosystem};

    fn artifact(name: &str, c: char) -> Artifact {
        Artifact {
            name: name.into(),
            version: None,
            digest: format!("sha256:{}", c.to_string().repeat(64)),
            download: None,
        }
    }

    fn doc(packages: &[Package], image_digest: &str) -> Value {
        let base = artifact("debian-12", 'b');
        let recipe = artifact("recipes/demo.yaml", 'c');
        let distro = Distro {
            id: "fedora".into(),
            version_id: "40".into(),
        };
        let input = SbomInput {
            image: "registry.example.com/lab/x",
            image_digest,
            base: &base,
            recipe: &recipe,
            distro: &distro,
            packages,
            created: "2024-01-02T03:04:05Z",
        };
        serde_json::from_slice(&document(&input).unwrap()).unwrap()
    }

    fn rpms() -> Vec<Package> {
        parse_rpm_qa(include_str!("../../tests/fixtures/rpm-qa-fedora40.tsv")).unwrap()
    }

    #[test]
    fn same_inputs_same_bytes_and_namespace_follows_the_digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        let mut reversed = rpms();
        reversed.reverse();
        let a = doc(&rpms(), &d);
        assert_eq!(a, doc(&reversed, &d), "package order does not matter");
        let other = doc(&rpms(), &format!("sha256:{}", "e".repeat(64)));
        assert_ne!(a["documentNamespace"], other["documentNamespace"]);
        assert!(a["documentNamespace"]
            .as_str()
            .unwrap()
            .starts_with("https://diskforge.dev/spdx/registry.example.com-lab-x-"));
    }

    #[test]
    fn packages_and_relationships() {
        let v = doc(&rpms(), &format!("sha256:{}", "a".repeat(64)));
        let packages = v["packages"].as_array().unwrap();
        assert_eq!(packages.len(), 3 + 9);
        let rels = v["relationships"].as_array().unwrap();
        let count = |kind: &str| {
            rels.iter()
                .filter(|r| r["relationshipType"] == kind)
                .count()
        };
        assert_eq!(
            (
                count("DESCRIBES"),
                count("CONTAINS"),
                count("GENERATED_FROM"),
                count("DESCENDANT_OF")
            ),
            (1, 9, 1, 1)
        );
        let ssl = packages
            .iter()
            .find(|p| p["name"] == "openssl-libs")
            .unwrap();
        assert_eq!(ssl["versionInfo"], "1:3.2.2-3.fc40");
        assert_eq!(ssl["licenseDeclared"], "Apache-2.0");
        assert_eq!(
            ssl["sourceInfo"],
            "built from source package openssl 3.2.2-3.fc40"
        );
        assert_eq!(
            ssl["externalRefs"][0]["referenceLocator"],
            "pkg:rpm/fedora/openssl-libs@3.2.2-3.fc40?arch=x86_64&distro=fedora-40&epoch=1"
        );
        let image = &packages[0];
        assert_eq!(image["SPDXID"], ID_IMAGE);
        assert_eq!(image["checksums"][0]["checksumValue"], "a".repeat(64));
    }

    #[test]
    fn licences_become_spdx_expressions_or_declared_references() {
        let v = doc(&rpms(), &format!("sha256:{}", "a".repeat(64)));
        let declared = |name: &str| {
            v["packages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap()["licenseDeclared"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(declared("bash"), "GPL-3.0-or-later");
        let mut refs = LicenceRefs::default();
        // Debian's copyright-format short names.
        assert_eq!(refs.expression("GPL-2+"), "GPL-2.0-or-later");
        assert_eq!(refs.expression("BSD-3-clause"), "BSD-3-Clause");
        assert_eq!(refs.expression("LGPL-2.1 or Expat"), "LGPL-2.1-only OR MIT");
        assert!(refs
            .expression("GPL-2+ with OpenSSL exception")
            .starts_with("LicenseRef-GPL-2--with-"));
        assert_eq!(declared("vim-minimal"), "Vim AND MIT");
        let pd = declared("tzdata");
        assert!(pd.starts_with("LicenseRef-Public-Domain-"), "{pd}");
        let refs: Vec<&str> = v["hasExtractedLicensingInfos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["licenseId"].as_str().unwrap())
            .collect();
        assert!(refs.contains(&pd.as_str()));
        assert!(
            refs.contains(&"LicenseRef-Fedora-Public-Domain"),
            "{refs:?}"
        );
    }

    #[test]
    fn package_ids_are_valid_and_distinct() {
        let p = |name: &str| Package {
            ecosystem: Ecosystem::Deb,
            name: name.into(),
            version: "1".into(),
            epoch: None,
            arch: "amd64".into(),
            source: None,
            licence: None,
        };
        assert_eq!(package_id(&p("tmux")), "SPDXRef-deb-tmux-amd64");
        let (a, b) = (package_id(&p("libstdc++6")), package_id(&p("libstdc--6")));
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
    }
}
