//! The image config, manifest and index of a containerDisk as oci-spec types, written
//! as canonical JSON (keys sorted, no whitespace, no timestamp but the one given), so
//! identical inputs give identical digests; and the strict parsing of such documents
//! read from untrusted places.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use oci_spec::image::{
    ConfigBuilder, HistoryBuilder, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, RootFsBuilder,
};
pub use oci_spec::image::{
    Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Platform,
};

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every manifest media type diskforge reads (what it asks registries for).
pub const MANIFEST_TYPES: &[&str] = &[
    MEDIA_MANIFEST,
    MEDIA_INDEX,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_LIST,
];

/// What one layer pass produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// `sha256:…` of the compressed blob.
    pub digest: String,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// `sha256:…` of the uncompressed tar.
    pub diff_id: String,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
    pub media_type: &'static str,
}

/// Everything the config says besides the layer.
#[derive(Debug, Clone, Default)]
pub struct ImageMeta {
    /// `amd64`, `arm64`.
    pub architecture: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// The history entry's `created_by` (no secrets: tool, version, recipe name).
    pub created_by: String,
    pub labels: BTreeMap<String, String>,
    /// `KEY=VALUE` environment entries (KubeVirt instancetype/preference hints).
    pub env: Vec<String>,
    /// Manifest annotations.
    pub annotations: BTreeMap<String, String>,
}

/// A serialized document plus its digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub size: u64,
}

impl Blob {
    /// Canonical JSON of `value`.
    pub fn json<T: serde::Serialize>(value: &T) -> Result<Blob> {
        Ok(Blob::raw(crate::io::hash::canonical(value)?))
    }

    /// Bytes as they are (a payload, a pulled manifest).
    pub fn raw(bytes: Vec<u8>) -> Blob {
        let digest = crate::io::hash::sha256_digest(&bytes);
        let size = bytes.len() as u64;
        Blob {
            bytes,
            digest,
            size,
        }
    }

    pub fn descriptor(&self, media_type: &str) -> Result<Descriptor> {
        Ok(Descriptor::new(
            MediaType::from(media_type),
            self.size,
            digest(&self.digest)?,
        ))
    }
}

/// A `sha256:<64 hex>` digest; anything else (other algorithms, malformed values from
/// untrusted documents) is refused.
pub fn digest(s: &str) -> Result<Digest> {
    let hex = s
        .strip_prefix("sha256:")
        .with_context(|| format!("unsupported digest {s:?}: only sha256 is supported"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        bail!("malformed digest {s:?}");
    }
    Digest::from_str(s).with_context(|| format!("malformed digest {s:?}"))
}

/// The config's Entrypoint: nothing runs in a containerDisk; runtimes that boot it
/// (crun-vm) recognise this value.
pub const ENTRYPOINT_PLACEHOLDER: &str = "no-entrypoint";

/// The image configuration for one containerDisk layer.
pub fn config(meta: &ImageMeta, layer: &Layer) -> Result<Blob> {
    // What kubevirt/containerdisks sets (its PR #100): an image runtime such as crun-vm
    // reads this placeholder as "no entrypoint" and boots the disk, and engines that
    // require an entrypoint (Docker) accept the image without one on the command line.
    let mut cfg = ConfigBuilder::default().entrypoint(vec![ENTRYPOINT_PLACEHOLDER.to_string()]);
    if !meta.labels.is_empty() {
        cfg = cfg.labels(
            meta.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
        );
    }
    if !meta.env.is_empty() {
        cfg = cfg.env(meta.env.clone());
    }
    let config = ImageConfigurationBuilder::default()
        .architecture(meta.architecture.as_str())
        .os("linux")
        .created(meta.created.clone())
        .config(cfg.build().context("building the image config")?)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![layer.diff_id.clone()])
                .build()
                .context("building the image rootfs")?,
        )
        .history(vec![HistoryBuilder::default()
            .created(meta.created.clone())
            .created_by(meta.created_by.clone())
            .build()
            .context("building the image history")?])
        .build()
        .context("building the image config")?;
    Blob::json(&config)
}

/// The manifest pointing at `config` and `layer`.
pub fn manifest(
    config: &Blob,
    layer: &Layer,
    annotations: &BTreeMap<String, String>,
) -> Result<Blob> {
    let mut m = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config.descriptor(MEDIA_CONFIG)?)
        .layers(vec![Descriptor::new(
            MediaType::from(layer.media_type),
            layer.size,
            digest(&layer.digest)?,
        )]);
    if !annotations.is_empty() {
        m = m.annotations(
            annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
        );
    }
    Blob::json(&m.build().context("building the manifest")?)
}

/// The empty config of artifact manifests (`{}`), as the image spec defines it.
pub const MEDIA_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// An artifact manifest about `subject`: the empty config, one layer `content` of type
/// `artifact_type`. Returns the config blob and the manifest.
pub fn artifact(
    artifact_type: &str,
    content: &Blob,
    subject: &Descriptor,
    annotations: &BTreeMap<String, String>,
) -> Result<(Blob, Blob)> {
    let config = Blob::raw(b"{}".to_vec());
    let mut subject = subject.clone();
    subject.set_annotations(None);
    subject.set_platform(None);
    let mut m = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::from(artifact_type))
        .config(config.descriptor(MEDIA_EMPTY)?)
        .layers(vec![content.descriptor(artifact_type)?])
        .subject(subject);
    if !annotations.is_empty() {
        m = m.annotations(
            annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
        );
    }
    let manifest = Blob::json(&m.build().context("building the artifact manifest")?)?;
    Ok((config, manifest))
}

/// An index of per-platform manifests.
pub fn index(manifests: Vec<Descriptor>) -> Result<Blob> {
    let idx = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .context("building the image index")?;
    Blob::json(&idx)
}

/// A manifest or an index, as read from a layout or a registry.
#[derive(Debug, Clone)]
// Parsed once per read and moved out at once: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Document {
    Manifest(ImageManifest),
    Index(ImageIndex),
}

/// Parses a manifest or index (OCI or Docker schema 2). Documents come from untrusted
/// places: every digest in them must be a well-formed sha256.
pub fn parse_document(bytes: &[u8]) -> Result<Document> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).context("the manifest is not valid JSON")?;
    let media = v["mediaType"].as_str().unwrap_or_default();
    let is_index = media == MEDIA_INDEX || media == MEDIA_DOCKER_LIST || v["manifests"].is_array();
    let doc = if is_index {
        let idx: ImageIndex =
            serde_json::from_value(v).context("the image index does not match the OCI schema")?;
        for m in idx.manifests() {
            digest(m.digest().as_ref())?;
        }
        Document::Index(idx)
    } else {
        let m: ImageManifest =
            serde_json::from_value(v).context("the manifest does not match the OCI schema")?;
        digest(m.config().digest().as_ref())?;
        for l in m.layers() {
            digest(l.digest().as_ref())?;
        }
        Document::Manifest(m)
    };
    Ok(doc)
}

/// Parses an image config.
pub fn parse_config(bytes: &[u8]) -> Result<ImageConfiguration> {
    serde_json::from_slice(bytes).context("the image config does not match the OCI schema")
}

/// The labels of a config (empty when it has none).
pub fn labels(config: &ImageConfiguration) -> BTreeMap<String, String> {
    config
        .config()
        .as_ref()
        .and_then(|c| c.labels().clone())
        .map(|l| l.into_iter().collect())
        .unwrap_or_default()
}

/// The descriptor's media type as a string.
pub fn media_type(d: &Descriptor) -> String {
    d.media_type().to_string()
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

    fn meta() -> ImageMeta {
        ImageMeta {
            architecture: "amd64".into(),
            created: rfc3339(0),
            created_by: "diskforge test".into(),
            labels: [("b".to_string(), "2".to_string()), ("a".into(), "1".into())]
                .into_iter()
                .collect(),
            env: vec!["X=1".into()],
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn config_and_manifest_are_canonical_and_parse_back() {
        let c = config(&meta(), &layer()).unwrap();
        assert_eq!(c, config(&meta(), &layer()).unwrap());
        let text = String::from_utf8(c.bytes.clone()).unwrap();
        assert!(
            text.starts_with(
                r#"{"architecture":"amd64","config":{"Entrypoint":["no-entrypoint"],"Env":["X=1"],"Labels":{"a":"1","b":"2"}}"#
            ),
            "{text}"
        );
        let parsed = parse_config(&c.bytes).unwrap();
        assert_eq!(labels(&parsed)["a"], "1");
        let m = manifest(&c, &layer(), &BTreeMap::new()).unwrap();
        let Document::Manifest(pm) = parse_document(&m.bytes).unwrap() else {
            panic!("not a manifest")
        };
        assert_eq!(pm.config().digest().to_string(), c.digest);
        assert_eq!(pm.layers()[0].size(), 10);
        assert_eq!(
            pm.layers()[0].media_type().to_string(),
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
    }

    #[test]
    fn hostile_documents_are_refused() {
        let bad_digest = r#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:../../etc","size":1},"layers":[]}"#;
        assert!(parse_document(bad_digest.as_bytes()).is_err());
        let other_algo = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"sha512:{}","size":1}},"layers":[]}}"#,
            "a".repeat(128)
        );
        assert!(parse_document(other_algo.as_bytes()).is_err());
        assert!(parse_document(b"[]").is_err());
        assert!(digest(&format!("sha256:{}", "A".repeat(64))).is_err());
    }

    #[test]
    fn an_index_is_recognized() {
        let m = Blob::raw(b"{}".to_vec());
        let mut d = m.descriptor(MEDIA_MANIFEST).unwrap();
        d.set_platform(Some(Platform::default()));
        let i = index(vec![d]).unwrap();
        assert!(matches!(
            parse_document(&i.bytes).unwrap(),
            Document::Index(idx) if idx.manifests().len() == 1
        ));
    }
}
