//! SLSA provenance v1 for a built image, as an in-toto Statement v1: the image (name and
//! manifest digest) is the subject; the recipe is the external parameter; the base image,
//! the recipe's `extends:` chain and every copied file are resolved dependencies, each by
//! digest; the builder is this diskforge version.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{json, Value};

use super::attach::Layer;
use super::dsse;
use super::keys::PrivateKey;
use super::sign::ANNOTATION_SIGNATURE;

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
pub const BUILD_TYPE: &str = "https://diskforge.dev/build/v1";

/// A file or download the build used, by sha256 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// A URL, or a path (recipes, copied files).
    pub name: String,
    /// `sha256:<hex>`.
    pub digest: String,
}

/// What the provenance states.
#[derive(Debug, Clone)]
pub struct BuildRecord<'a> {
    /// The image repository, e.g. `registry.example.com/lab/ubuntu`.
    pub image: &'a str,
    /// The image manifest digest `sha256:<hex>`.
    pub image_digest: &'a str,
    /// The recipe the build was started with.
    pub recipe: &'a Dependency,
    /// The recipes it extends, nearest parent first.
    pub extends: &'a [Dependency],
    /// The base image's download URL and digest.
    pub base: &'a Dependency,
    /// Files copied into the guest, by their source path.
    pub files: &'a [Dependency],
    /// RFC 3339 UTC times the build started and finished.
    pub started: &'a str,
    pub finished: &'a str,
}

/// The in-toto statement as a JSON value.
pub fn statement(b: &BuildRecord) -> Result<Value> {
    let version = env!("CARGO_PKG_VERSION");
    let mut resolved = vec![descriptor(b.base, "base")?];
    for (i, r) in b.extends.iter().enumerate() {
        resolved.push(descriptor(r, &format!("extends/{i}"))?);
    }
    let mut files = b
        .files
        .iter()
        .map(|f| descriptor(f, "file"))
        .collect::<Result<Vec<_>>>()?;
    files.sort_by_key(|f| f.to_string());
    resolved.extend(files);
    Ok(json!({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": b.image, "digest": digest_set(b.image_digest)?}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "recipe": {"path": b.recipe.name, "digest": digest_set(&b.recipe.digest)?},
                },
                "resolvedDependencies": resolved,
            },
            "runDetails": {
                "builder": {
                    "id": format!("https://diskforge.dev/builder/diskforge@{version}"),
                    "version": {"diskforge": version},
                },
                "metadata": {"startedOn": b.started, "finishedOn": b.finished},
            },
        },
    }))
}

/// The statement as canonical JSON, in a DSSE envelope signed by `key` when one is
/// given. Returns the bytes and their media type.
pub fn attestation(b: &BuildRecord, key: Option<&PrivateKey>) -> Result<(Vec<u8>, &'static str)> {
    let body = crate::io::hash::canonical_json(&statement(b)?)?;
    match key {
        Some(k) => Ok((
            dsse::sign(dsse::PAYLOAD_TYPE_IN_TOTO, &body, k)?,
            dsse::MEDIA_ENVELOPE,
        )),
        None => Ok((body, dsse::PAYLOAD_TYPE_IN_TOTO)),
    }
}

/// A signed attestation as the layer of the image's `.att` attachment, the way
/// `cosign attest` stores it: the DSSE envelope, its predicate type annotated, and an
/// empty signature annotation (the signature is inside the envelope).
pub fn attestation_layer(envelope: Vec<u8>) -> Layer {
    Layer {
        media_type: dsse::MEDIA_ENVELOPE.into(),
        bytes: envelope,
        annotations: BTreeMap::from([
            (ANNOTATION_SIGNATURE.to_string(), String::new()),
            ("predicateType".to_string(), PREDICATE_TYPE.to_string()),
        ]),
    }
}

/// An SLSA ResourceDescriptor. `role` names what the dependency was for (`base`,
/// `extends/0`, `file`) in its annotations.
fn descriptor(d: &Dependency, role: &str) -> Result<Value> {
    // Downloads are named by URI; local files (recipes, copied files) by path.
    let key = if d.name.contains("://") {
        "uri"
    } else {
        "name"
    };
    Ok(json!({
        key: d.name,
        "digest": digest_set(&d.digest)?,
        "annotations": {"diskforge.role": role},
    }))
}

/// `sha256:<hex>` → `{"sha256": "<hex>"}` (in-toto's DigestSet).
fn digest_set(digest: &str) -> Result<Value> {
    Ok(json!({"sha256": super::sha256_hex(digest)?}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(name: &str, c: char) -> Dependency {
        Dependency {
            name: name.into(),
            digest: format!("sha256:{}", c.to_string().repeat(64)),
        }
    }

    fn record<'a>(
        recipe: &'a Dependency,
        extends: &'a [Dependency],
        base: &'a Dependency,
        files: &'a [Dependency],
    ) -> BuildRecord<'a> {
        BuildRecord {
            image: "registry.example.com/lab/x",
            image_digest: "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            recipe,
            extends,
            base,
            files,
            started: "2024-01-02T03:04:05Z",
            finished: "2024-01-02T03:09:00Z",
        }
    }

    #[test]
    fn statement_names_subject_recipe_and_every_dependency_by_digest() {
        let recipe = dep("recipes/lab.yaml", 'b');
        let extends = [dep("recipes/common.yaml", 'c')];
        let base = dep("https://cloud.debian.org/images/debian-12.qcow2", 'd');
        let files = [dep("files/motd", 'e'), dep("files/bashrc", 'f')];
        let s = statement(&record(&recipe, &extends, &base, &files)).unwrap();
        assert_eq!(s["_type"], STATEMENT_TYPE);
        assert_eq!(s["predicateType"], PREDICATE_TYPE);
        assert_eq!(s["subject"][0]["name"], "registry.example.com/lab/x");
        assert_eq!(s["subject"][0]["digest"]["sha256"], "a".repeat(64));
        let def = &s["predicate"]["buildDefinition"];
        assert_eq!(def["buildType"], BUILD_TYPE);
        assert_eq!(
            def["externalParameters"]["recipe"]["digest"]["sha256"],
            "b".repeat(64)
        );
        let deps = def["resolvedDependencies"].as_array().unwrap();
        assert_eq!(deps.len(), 4);
        assert_eq!(deps[0]["uri"], base.name);
        assert_eq!(deps[1]["name"], "recipes/common.yaml");
        // Files sorted, so the statement does not depend on copy order.
        assert_eq!(deps[2]["name"], "files/bashrc");
        let run = &s["predicate"]["runDetails"];
        assert!(run["builder"]["id"]
            .as_str()
            .unwrap()
            .ends_with(env!("CARGO_PKG_VERSION")));
        assert_eq!(run["metadata"]["finishedOn"], "2024-01-02T03:09:00Z");
        let bad = dep("x", 'Z');
        assert!(statement(&record(&recipe, &[], &bad, &[])).is_err());
    }

    #[test]
    fn signed_attestation_is_a_dsse_envelope_over_the_statement() {
        let (recipe, base) = (dep("r.yaml", 'b'), dep("https://x/base.qcow2", 'c'));
        let b = record(&recipe, &[], &base, &[]);
        let (plain, media) = attestation(&b, None).unwrap();
        assert_eq!(media, dsse::PAYLOAD_TYPE_IN_TOTO);
        let key = PrivateKey::generate();
        let (envelope, media) = attestation(&b, Some(&key)).unwrap();
        assert_eq!(media, dsse::MEDIA_ENVELOPE);
        let (payload_type, payload) = dsse::verify(&envelope, &key.public()).unwrap();
        assert_eq!(
            (payload_type.as_str(), payload),
            (dsse::PAYLOAD_TYPE_IN_TOTO, plain)
        );
        assert!(dsse::verify(&envelope, &PrivateKey::generate().public()).is_err());
    }
}
