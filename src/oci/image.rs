//! The image config and manifest of a containerDisk, serialized deterministically
//! (object keys sorted, no timestamps but the one given) so identical inputs give
//! identical digests.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::layer::Layer;

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Everything the config says besides the layer.
#[derive(Debug, Clone, Default)]
pub struct ImageMeta {
    /// `amd64`, `arm64`.
    pub architecture: String,
    /// RFC 3339 creation time (from `SOURCE_DATE_EPOCH` or the fixed default).
    pub created: String,
    /// The history entry's `created_by` (no secrets: tool, version, recipe name).
    pub created_by: String,
    pub labels: BTreeMap<String, String>,
    /// `KEY=VALUE` environment entries (KubeVirt instancetype/preference hints).
    pub env: Vec<String>,
    /// Manifest annotations.
    pub annotations: BTreeMap<String, String>,
}

/// Serialized JSON plus its digest and size.
#[derive(Debug, Clone)]
pub struct Blob {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub size: u64,
}

impl Blob {
    pub fn from_value(v: &Value) -> Result<Blob> {
        let bytes = canonical_json(v)?;
        let digest = format!("sha256:{}", crate::cache::sha256_hex(&bytes));
        let size = bytes.len() as u64;
        Ok(Blob {
            bytes,
            digest,
            size,
        })
    }
}

/// JSON with object keys sorted at every level and no insignificant whitespace.
pub fn canonical_json(v: &Value) -> Result<Vec<u8>> {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                let mut out = serde_json::Map::new();
                for (k, v) in sorted {
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sort(v)).context("serializing JSON")
}

/// The image configuration for one containerDisk layer.
pub fn config(meta: &ImageMeta, layer: &Layer) -> Result<Blob> {
    let mut cfg = serde_json::Map::new();
    if !meta.labels.is_empty() {
        cfg.insert("Labels".into(), json!(meta.labels));
    }
    if !meta.env.is_empty() {
        cfg.insert("Env".into(), json!(meta.env));
    }
    let v = json!({
        "architecture": meta.architecture,
        "os": "linux",
        "created": meta.created,
        "config": Value::Object(cfg),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": meta.created, "created_by": meta.created_by}],
    });
    // Checked against oci-spec's type so a field name typo cannot slip through.
    let _: oci_spec::image::ImageConfiguration = serde_json::from_value(v.clone())
        .context("the image config does not match the OCI schema")?;
    Blob::from_value(&v)
}

/// The manifest pointing at `config` and `layer`.
pub fn manifest(
    config: &Blob,
    layer: &Layer,
    annotations: &BTreeMap<String, String>,
) -> Result<Blob> {
    let mut v = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}],
    });
    if !annotations.is_empty() {
        v["annotations"] = json!(annotations);
    }
    let _: oci_spec::image::ImageManifest =
        serde_json::from_value(v.clone()).context("the manifest does not match the OCI schema")?;
    Blob::from_value(&v)
}

/// RFC 3339 UTC for seconds since the epoch.
pub fn rfc3339(epoch: u64) -> String {
    chrono::DateTime::from_timestamp(epoch as i64, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer() -> Layer {
        Layer {
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 10,
            diff_id: format!("sha256:{}", "b".repeat(64)),
            tar_size: 2048,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        }
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v = json!({"b": 1, "a": {"d": 2, "c": [ {"z": 1, "y": 2} ]}});
        let s = String::from_utf8(canonical_json(&v).unwrap()).unwrap();
        assert_eq!(s, r#"{"a":{"c":[{"y":2,"z":1}],"d":2},"b":1}"#);
    }

    #[test]
    fn config_digest_does_not_depend_on_label_insertion_order() {
        let mut a = ImageMeta {
            architecture: "amd64".into(),
            created: rfc3339(0),
            created_by: "diskforge".into(),
            ..Default::default()
        };
        let mut b = a.clone();
        a.labels.insert("x".into(), "1".into());
        a.labels.insert("a".into(), "2".into());
        b.labels.insert("a".into(), "2".into());
        b.labels.insert("x".into(), "1".into());
        assert_eq!(
            config(&a, &layer()).unwrap().digest,
            config(&b, &layer()).unwrap().digest
        );
        a.labels.insert("x".into(), "3".into());
        assert_ne!(
            config(&a, &layer()).unwrap().digest,
            config(&b, &layer()).unwrap().digest
        );
    }

    #[test]
    fn manifest_references_config_and_layer() {
        let meta = ImageMeta {
            architecture: "arm64".into(),
            created: rfc3339(946_684_800),
            created_by: "diskforge".into(),
            ..Default::default()
        };
        let c = config(&meta, &layer()).unwrap();
        let m = manifest(&c, &layer(), &BTreeMap::new()).unwrap();
        let v: Value = serde_json::from_slice(&m.bytes).unwrap();
        assert_eq!(v["config"]["digest"], c.digest);
        assert_eq!(v["layers"][0]["digest"], layer().digest);
        assert_eq!(v["layers"][0]["size"], 10);
        let cv: Value = serde_json::from_slice(&c.bytes).unwrap();
        assert_eq!(cv["architecture"], "arm64");
        assert_eq!(cv["created"], "2000-01-01T00:00:00Z");
    }
}
