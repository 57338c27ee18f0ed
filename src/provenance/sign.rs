//! Image signatures in the sigstore/cosign attachment format: a "simple signing" payload
//! naming the repository and manifest digest, signed with ECDSA P-256, stored as a layer
//! of an OCI manifest tagged `sha256-<hex>.sig` next to the image. This is what
//! `cosign verify --key` and containers/image's `sigstoreSigned` policy (skopeo, podman,
//! CRI-O) read.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use base64::Engine as _;
use serde_json::{json, Value};

use super::attach::{self, Attachment, Kind, Layer};
use super::keys::{PrivateKey, PublicKey};
use super::sha256_hex;

pub const MEDIA_SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const ANNOTATION_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
const SIGNATURE_TYPE: &str = "cosign container image signature";

/// One signature: the payload bytes and the base64 DER signature over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSignature {
    pub payload: Vec<u8>,
    pub signature: String,
}

/// The tag cosign and containers/image look up for the signatures of `manifest_digest`.
pub fn signature_tag(manifest_digest: &str) -> Result<String> {
    attach::tag(manifest_digest, Kind::Signature)
}

/// The simple-signing payload, byte for byte as cosign writes it (keys sorted, no
/// whitespace, `"optional":null`). `repository` is the image's name without tag or
/// digest, e.g. `registry.example.com/lab/ubuntu`.
pub fn payload(repository: &str, manifest_digest: &str) -> Result<Vec<u8>> {
    sha256_hex(manifest_digest)?;
    check_repository(repository)?;
    let v = json!({
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": SIGNATURE_TYPE,
        },
        "optional": null,
    });
    crate::io::hash::canonical_json(&v)
}

/// Signs the image `repository@manifest_digest`.
pub fn sign(key: &PrivateKey, repository: &str, manifest_digest: &str) -> Result<ImageSignature> {
    let payload = payload(repository, manifest_digest)?;
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&payload));
    Ok(ImageSignature { payload, signature })
}

/// The `.sig` manifest for `manifest_digest` with `sig` appended to the signatures of
/// `existing` (the current `.sig` manifest, if the registry has one). An identical
/// signature already present is not added twice.
pub fn attach(
    manifest_digest: &str,
    sig: &ImageSignature,
    existing: Option<&[u8]>,
) -> Result<Attachment> {
    let layer = Layer {
        media_type: MEDIA_SIMPLE_SIGNING.into(),
        bytes: sig.payload.clone(),
        annotations: BTreeMap::from([(ANNOTATION_SIGNATURE.to_string(), sig.signature.clone())]),
    };
    attach::attach(manifest_digest, Kind::Signature, layer, existing)
}

/// Why one layer of a `.sig` manifest was or was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub layer_digest: String,
    /// `None` when the signature is valid for the image, else the reason it is not.
    pub rejected: Option<String>,
}

impl Verdict {
    pub fn is_valid(&self) -> bool {
        self.rejected.is_none()
    }
}

/// Checks every signature in a `.sig` manifest against `key` for the image
/// `repository@manifest_digest`. `blobs` maps payload digests to their bytes (as fetched).
/// A signature is valid when its payload matches its descriptor, the signature verifies
/// over the payload, the payload names `manifest_digest`, and its docker-reference names
/// `repository` (any tag or digest it carries is ignored, as containers/image's
/// `matchRepository` does).
pub fn verify(
    manifest_digest: &str,
    repository: &str,
    sig_manifest: &[u8],
    blobs: &BTreeMap<String, Vec<u8>>,
    key: &PublicKey,
) -> Result<Vec<Verdict>> {
    sha256_hex(manifest_digest)?;
    let layers = attach::layers_of(sig_manifest)?;
    Ok(layers
        .iter()
        .map(|layer| Verdict {
            layer_digest: layer["digest"].as_str().unwrap_or_default().to_string(),
            rejected: check_layer(layer, manifest_digest, repository, blobs, key).err(),
        })
        .collect())
}

fn check_layer(
    layer: &Value,
    manifest_digest: &str,
    repository: &str,
    blobs: &BTreeMap<String, Vec<u8>>,
    key: &PublicKey,
) -> std::result::Result<(), String> {
    if layer["mediaType"] != json!(MEDIA_SIMPLE_SIGNING) {
        return Err(format!("not a signature layer ({})", layer["mediaType"]));
    }
    let digest = layer["digest"].as_str().ok_or("layer without digest")?;
    let payload = blobs
        .get(digest)
        .ok_or_else(|| format!("payload {digest} was not provided"))?;
    let actual = super::blob_of(payload.clone());
    if actual.digest != digest || Some(actual.size) != layer["size"].as_u64() {
        return Err(format!(
            "payload does not match its descriptor (content is {} of {} bytes)",
            actual.digest, actual.size
        ));
    }
    let b64 = layer["annotations"][ANNOTATION_SIGNATURE]
        .as_str()
        .ok_or_else(|| format!("no {ANNOTATION_SIGNATURE} annotation"))?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("signature is not base64: {e}"))?;
    if !key.verify(payload, &der) {
        return Err(format!(
            "signature does not verify with key {}",
            key.fingerprint()
        ));
    }
    let (signed_ref, signed_digest) = parse_payload(payload)?;
    if signed_digest != manifest_digest {
        return Err(format!(
            "signature is for {signed_digest}, not {manifest_digest}"
        ));
    }
    if repository_name(&signed_ref) != repository_name(repository) {
        return Err(format!(
            "signature is for repository {signed_ref}, not {repository}"
        ));
    }
    Ok(())
}

/// The docker-reference and manifest digest of a payload, parsed as strictly as
/// containers/image does (exact field sets, known type).
fn parse_payload(payload: &[u8]) -> std::result::Result<(String, String), String> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("payload: {e}"))?;
    exact_fields(&v, &["critical", "optional"], "payload")?;
    if !(v["optional"].is_null() || v["optional"].is_object()) {
        return Err("payload: optional is neither null nor an object".into());
    }
    let critical = &v["critical"];
    exact_fields(critical, &["identity", "image", "type"], "critical")?;
    if critical["type"] != json!(SIGNATURE_TYPE) {
        return Err(format!("unknown signature type {}", critical["type"]));
    }
    exact_fields(&critical["image"], &["docker-manifest-digest"], "image")?;
    exact_fields(&critical["identity"], &["docker-reference"], "identity")?;
    let digest = critical["image"]["docker-manifest-digest"].as_str();
    let reference = critical["identity"]["docker-reference"].as_str();
    match (reference, digest) {
        (Some(r), Some(d)) => Ok((r.to_string(), d.to_string())),
        _ => Err("payload: docker-reference and docker-manifest-digest must be strings".into()),
    }
}

fn exact_fields(v: &Value, fields: &[&str], what: &str) -> std::result::Result<(), String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{what} is not an object"))?;
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != fields {
        return Err(format!("{what} has fields {keys:?}, expected {fields:?}"));
    }
    Ok(())
}

/// The repository of a docker reference, normalized the way Docker names are: tag and
/// digest dropped, `docker.io` and `library/` added to short Docker Hub names.
pub fn repository_name(reference: &str) -> String {
    let name = reference.split('@').next().unwrap_or(reference);
    let name = match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => name,
    };
    let (first, rest) = name.split_once('/').unwrap_or(("", name));
    let is_host = first.contains('.') || first.contains(':') || first == "localhost";
    match (is_host, first) {
        (true, "index.docker.io") => format!("docker.io/{rest}"),
        (true, _) => name.to_string(),
        (false, "") => format!("docker.io/library/{rest}"),
        (false, _) => format!("docker.io/{name}"),
    }
}

fn check_repository(repository: &str) -> Result<()> {
    let ok = !repository.is_empty()
        && !repository.contains('@')
        && !repository.rsplit('/').next().unwrap_or("").contains(':')
        && repository
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:".contains(&b));
    if !ok {
        bail!("{repository:?} is not a repository name (HOST/PATH without tag or digest)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO: &str = "registry.example.com/lab/x";

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn blobs_of(a: &Attachment) -> BTreeMap<String, Vec<u8>> {
        a.blobs
            .iter()
            .map(|b| (b.digest.clone(), b.bytes.clone()))
            .collect()
    }

    #[test]
    fn payload_is_byte_for_byte_cosigns() {
        let p = payload(REPO, &digest('a')).unwrap();
        let expected = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"{REPO}"}},"image":{{"docker-manifest-digest":"{}"}},"type":"cosign container image signature"}},"optional":null}}"#,
            digest('a')
        );
        assert_eq!(String::from_utf8(p).unwrap(), expected);
        assert_eq!(
            signature_tag(&digest('a')).unwrap(),
            format!("sha256-{}.sig", "a".repeat(64))
        );
        assert!(payload("registry.example.com/lab/x:1", &digest('a')).is_err());
        assert!(payload(REPO, "sha256:abc").is_err());
        assert!(payload(REPO, &digest('A')).is_err());
    }

    #[test]
    fn attachment_is_an_oci_manifest_with_one_signature_layer() {
        let key = PrivateKey::generate();
        let sig = sign(&key, REPO, &digest('a')).unwrap();
        assert_eq!(
            sig,
            sign(&key, REPO, &digest('a')).unwrap(),
            "deterministic"
        );
        let a = attach(&digest('a'), &sig, None).unwrap();
        assert!(a.changed);
        let m: oci_spec::image::ImageManifest = serde_json::from_slice(&a.manifest.bytes).unwrap();
        assert_eq!(m.layers().len(), 1);
        let layer = &m.layers()[0];
        assert_eq!(layer.media_type().to_string(), MEDIA_SIMPLE_SIGNING);
        assert_eq!(
            layer.annotations().as_ref().unwrap()[ANNOTATION_SIGNATURE],
            sig.signature
        );
        let blobs = blobs_of(&a);
        assert_eq!(blobs[&layer.digest().to_string()], sig.payload);
        let config: Value =
            serde_json::from_slice(&blobs[&m.config().digest().to_string()]).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"],
            json!([layer.digest().to_string()])
        );
        let v = verify(&digest('a'), REPO, &a.manifest.bytes, &blobs, &key.public()).unwrap();
        assert!(v.len() == 1 && v[0].is_valid(), "{v:?}");
    }

    #[test]
    fn signatures_append_once() {
        let (k1, k2) = (PrivateKey::generate(), PrivateKey::generate());
        let s1 = sign(&k1, REPO, &digest('a')).unwrap();
        let s2 = sign(&k2, REPO, &digest('a')).unwrap();
        let first = attach(&digest('a'), &s1, None).unwrap();
        let second = attach(&digest('a'), &s2, Some(&first.manifest.bytes)).unwrap();
        assert!(second.changed);
        let again = attach(&digest('a'), &s1, Some(&second.manifest.bytes)).unwrap();
        assert!(!again.changed && again.blobs.is_empty());
        assert_eq!(again.manifest.bytes, second.manifest.bytes);
        let mut blobs = blobs_of(&first);
        blobs.extend(blobs_of(&second));
        for key in [&k1, &k2] {
            let v = verify(
                &digest('a'),
                REPO,
                &second.manifest.bytes,
                &blobs,
                &key.public(),
            )
            .unwrap();
            assert_eq!(v.iter().filter(|v| v.is_valid()).count(), 1, "{v:?}");
        }
    }

    fn rejection(
        manifest: &[u8],
        blobs: &BTreeMap<String, Vec<u8>>,
        key: &PublicKey,
        repo: &str,
    ) -> String {
        let v = verify(&digest('a'), repo, manifest, blobs, key).unwrap();
        assert_eq!(v.len(), 1);
        v[0].rejected
            .clone()
            .expect("the signature must be rejected")
    }

    #[test]
    fn verify_rejects_wrong_key_tampering_other_digests_and_repositories() {
        let key = PrivateKey::generate();
        let good = attach(&digest('a'), &sign(&key, REPO, &digest('a')).unwrap(), None).unwrap();
        let blobs = blobs_of(&good);
        let other_key = PrivateKey::generate().public();
        assert!(
            rejection(&good.manifest.bytes, &blobs, &other_key, REPO).contains("does not verify")
        );
        assert!(rejection(
            &good.manifest.bytes,
            &blobs,
            &key.public(),
            "registry.example.com/lab/y"
        )
        .contains("not registry.example.com/lab/y"));
        // The payload bytes changed under the same descriptor.
        let mut tampered = blobs.clone();
        for (_, bytes) in tampered
            .iter_mut()
            .filter(|(_, b)| b.starts_with(b"{\"critical\""))
        {
            bytes[20] ^= 1;
        }
        assert!(
            rejection(&good.manifest.bytes, &tampered, &key.public(), REPO)
                .contains("does not match its descriptor")
        );
        // A correctly signed payload for another image.
        let elsewhere =
            attach(&digest('a'), &sign(&key, REPO, &digest('b')).unwrap(), None).unwrap();
        assert!(rejection(
            &elsewhere.manifest.bytes,
            &blobs_of(&elsewhere),
            &key.public(),
            REPO
        )
        .contains(&format!("is for {}", digest('b'))));
    }

    #[test]
    fn payload_parsing_is_strict() {
        let ok = String::from_utf8(payload(REPO, &digest('a')).unwrap()).unwrap();
        assert!(parse_payload(ok.as_bytes()).is_ok());
        let extra = ok.replace(r#""type""#, r#""x":1,"type""#);
        assert!(parse_payload(extra.as_bytes())
            .unwrap_err()
            .contains("critical has fields"));
        let other = ok.replace(
            "cosign container image signature",
            "atomic container signature",
        );
        assert!(parse_payload(other.as_bytes())
            .unwrap_err()
            .contains("unknown signature type"));
        let annotated = ok.replace(r#""optional":null"#, r#""optional":{"creator":"x"}"#);
        assert!(parse_payload(annotated.as_bytes()).is_ok());
    }

    #[test]
    fn repository_names_normalize_like_docker_references() {
        for (a, b) in [
            ("127.0.0.1:5000/lab/x:1", "127.0.0.1:5000/lab/x"),
            ("127.0.0.1:5000/lab/x@sha256:00", "127.0.0.1:5000/lab/x"),
            ("ubuntu", "docker.io/library/ubuntu"),
            ("kubevirt/fedora:40", "docker.io/kubevirt/fedora"),
            (
                "index.docker.io/kubevirt/fedora",
                "docker.io/kubevirt/fedora",
            ),
            ("localhost/lab", "localhost/lab"),
        ] {
            assert_eq!(repository_name(a), b, "{a}");
        }
    }
}
