//! cosign's attachment layout: things about an image (signatures `.sig`, attestations
//! `.att`, SBOMs `.sbom`) stored as layers of an OCI manifest tagged
//! `sha256-<hex>.<kind>` in the image's repository, so any registry holds them and
//! cosign, containers/image and policy controllers find them by the image digest.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::oci::image::{Blob, MEDIA_CONFIG, MEDIA_MANIFEST};

/// What is attached, which decides the tag suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Signature,
    Attestation,
    Sbom,
}

impl Kind {
    fn suffix(self) -> &'static str {
        match self {
            Kind::Signature => "sig",
            Kind::Attestation => "att",
            Kind::Sbom => "sbom",
        }
    }
}

/// One layer to attach: its media type, content and descriptor annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub annotations: BTreeMap<String, String>,
}

/// An attachment manifest ready to push: the blobs the registry may not have yet (the
/// config and the new layer; push them first), then the manifest under `tag`.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub tag: String,
    pub blobs: Vec<Blob>,
    pub manifest: Blob,
    /// False when the layer was attached already: nothing needs pushing.
    pub changed: bool,
}

/// `sha256-<hex>.<suffix>`: the tag cosign and containers/image look up.
pub fn tag(manifest_digest: &str, kind: Kind) -> Result<String> {
    super::sha256_hex(manifest_digest)?;
    Ok(format!(
        "{}.{}",
        manifest_digest.replacen(':', "-", 1),
        kind.suffix()
    ))
}

/// The attachment manifest of `kind` for `manifest_digest` with `layer` appended to the
/// layers of `existing` (the current manifest under that tag, if the registry has one),
/// as cosign appends. A layer with the same content and annotations is not added twice.
pub fn attach(
    manifest_digest: &str,
    kind: Kind,
    layer: Layer,
    existing: Option<&[u8]>,
) -> Result<Attachment> {
    let tag = tag(manifest_digest, kind)?;
    let content = super::blob_of(layer.bytes);
    let annotations = json!(layer.annotations);
    let mut layers = match existing {
        Some(bytes) => layers_of(bytes)?,
        None => Vec::new(),
    };
    // A descriptor without annotations and one with an empty map say the same.
    let annotations_of = |l: &Value| match &l["annotations"] {
        Value::Null => json!({}),
        a => a.clone(),
    };
    let same = |l: &Value| l["digest"] == json!(content.digest) && annotations_of(l) == annotations;
    if let (Some(bytes), true) = (existing, layers.iter().any(same)) {
        return Ok(Attachment {
            tag,
            blobs: Vec::new(),
            manifest: super::blob_of(bytes.to_vec()),
            changed: false,
        });
    }
    let mut descriptor = json!({
        "mediaType": layer.media_type,
        "digest": content.digest,
        "size": content.size,
    });
    if !layer.annotations.is_empty() {
        descriptor["annotations"] = annotations;
    }
    layers.push(descriptor);
    let config = config(&layers)?;
    let manifest = Blob::json(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config.digest, "size": config.size},
        "layers": layers,
    }))?;
    Ok(Attachment {
        tag,
        blobs: vec![config, content],
        manifest,
        changed: true,
    })
}

/// The layer descriptors of an attachment manifest.
pub fn layers_of(manifest: &[u8]) -> Result<Vec<Value>> {
    let m: Value = serde_json::from_slice(manifest).context("parsing the attachment manifest")?;
    if m["mediaType"].as_str().is_some_and(|t| t != MEDIA_MANIFEST) {
        bail!(
            "the attachment manifest is a {}, not an OCI image manifest",
            m["mediaType"]
        );
    }
    m["layers"]
        .as_array()
        .cloned()
        .context("the attachment manifest has no layers list")
}

/// A minimal image config listing each layer as uncompressed, as cosign
/// (go-containerregistry's empty image plus appended layers) writes it.
fn config(layers: &[Value]) -> Result<Blob> {
    let diff_ids: Vec<&Value> = layers.iter().map(|l| &l["digest"]).collect();
    let created = "0001-01-01T00:00:00Z";
    let history: Vec<Value> = layers.iter().map(|_| json!({"created": created})).collect();
    Blob::json(&json!({
        "architecture": "",
        "os": "",
        "created": created,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(text: &str, note: &str) -> Layer {
        Layer {
            media_type: "text/plain".into(),
            bytes: text.as_bytes().to_vec(),
            annotations: BTreeMap::from([("note".to_string(), note.to_string())]),
        }
    }

    #[test]
    fn tags_name_the_digest_and_kind() {
        let d = format!("sha256:{}", "a".repeat(64));
        let hex = "a".repeat(64);
        assert_eq!(
            tag(&d, Kind::Signature).unwrap(),
            format!("sha256-{hex}.sig")
        );
        assert_eq!(
            tag(&d, Kind::Attestation).unwrap(),
            format!("sha256-{hex}.att")
        );
        assert_eq!(tag(&d, Kind::Sbom).unwrap(), format!("sha256-{hex}.sbom"));
        assert!(tag("sha256:xyz", Kind::Sbom).is_err());
    }

    #[test]
    fn layers_append_once_and_the_config_lists_them() {
        let d = format!("sha256:{}", "a".repeat(64));
        let first = attach(&d, Kind::Sbom, layer("one", "x"), None).unwrap();
        let m: oci_spec::image::ImageManifest =
            serde_json::from_slice(&first.manifest.bytes).unwrap();
        assert_eq!(m.layers().len(), 1);
        assert_eq!(first.blobs[1].bytes, b"one");
        // Same content, other annotations: a different layer.
        let second = attach(
            &d,
            Kind::Sbom,
            layer("one", "y"),
            Some(&first.manifest.bytes),
        )
        .unwrap();
        assert!(second.changed);
        let m: Value = serde_json::from_slice(&second.manifest.bytes).unwrap();
        assert_eq!(m["layers"].as_array().unwrap().len(), 2);
        let cfg: Value = serde_json::from_slice(&second.blobs[0].bytes).unwrap();
        assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
        assert_eq!(cfg["config"]["digest"], Value::Null);
        assert_eq!(m["config"]["digest"], json!(second.blobs[0].digest));
        let again = attach(
            &d,
            Kind::Sbom,
            layer("one", "x"),
            Some(&second.manifest.bytes),
        )
        .unwrap();
        assert!(!again.changed && again.blobs.is_empty());
        assert_eq!(again.manifest.bytes, second.manifest.bytes);
        let index = br#"{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert!(attach(&d, Kind::Sbom, layer("x", "x"), Some(index)).is_err());
    }
}
