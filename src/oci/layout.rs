//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`) holding
//! any number of images, each tagged through the `org.opencontainers.image.ref.name`
//! annotation. Every file is written to a temp file and renamed, so a failed write never
//! leaves a half-written blob or index.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::image::{canonical_json, Blob, MEDIA_INDEX};
use crate::cache::TempFile;

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A descriptor as stored in `index.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn from_value(v: &Value) -> Result<Descriptor> {
        Ok(Descriptor {
            media_type: v["mediaType"]
                .as_str()
                .context("descriptor without mediaType")?
                .to_string(),
            digest: v["digest"]
                .as_str()
                .context("descriptor without digest")?
                .to_string(),
            size: v["size"].as_u64().context("descriptor without size")?,
        })
    }
}

/// An OCI image layout on disk.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Opens a layout, creating an empty one when the directory is missing or empty.
    pub fn create(root: &Path) -> Result<Layout> {
        std::fs::create_dir_all(root.join("blobs/sha256"))
            .with_context(|| format!("creating OCI layout {}", root.display()))?;
        let layout = Layout {
            root: root.to_path_buf(),
        };
        if !root.join("oci-layout").exists() {
            layout.write_file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        if !root.join("index.json").exists() {
            let empty = json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": []});
            layout.write_file("index.json", &canonical_json(&empty)?)?;
        }
        Ok(layout)
    }

    /// Opens an existing layout.
    pub fn open(root: &Path) -> Result<Layout> {
        if !root.join("oci-layout").is_file() || !root.join("index.json").is_file() {
            bail!(
                "{} is not an OCI image layout (no oci-layout or index.json)",
                root.display()
            );
        }
        Ok(Layout {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    /// The file of a blob `sha256:…`.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .with_context(|| format!("unsupported digest {digest}: only sha256 is supported"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("malformed digest {digest}");
        }
        Ok(self.blobs_dir().join(hex))
    }

    /// Stores a small blob (config, manifest) unless it is there already.
    pub fn write_blob(&self, blob: &Blob) -> Result<()> {
        let path = self.blob_path(&blob.digest)?;
        if path.exists() {
            return Ok(());
        }
        let mut temp = TempFile::new_in(&self.blobs_dir())?;
        std::io::Write::write_all(&mut temp, &blob.bytes)
            .with_context(|| format!("writing blob {}", blob.digest))?;
        temp.persist(&path)
    }

    /// Reads a small blob and checks its digest.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let bytes =
            std::fs::read(&path).with_context(|| format!("reading blob {}", path.display()))?;
        let actual = format!("sha256:{}", crate::cache::sha256_hex(&bytes));
        if actual != digest {
            bail!(
                "blob {} is corrupt: its content hashes to {actual}",
                path.display()
            );
        }
        Ok(bytes)
    }

    pub fn index(&self) -> Result<Value> {
        let path = self.root.join("index.json");
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The tags in this layout with their descriptors.
    pub fn tags(&self) -> Result<Vec<(String, Descriptor)>> {
        let index = self.index()?;
        let mut out = Vec::new();
        for m in index["manifests"].as_array().into_iter().flatten() {
            if let Some(name) = m["annotations"][REF_NAME].as_str() {
                out.push((name.to_string(), Descriptor::from_value(m)?));
            }
        }
        Ok(out)
    }

    /// Points `tag` at `desc` (replacing what the tag pointed at before).
    pub fn set_tag(&self, tag: &str, desc: &Descriptor, platform: Option<&str>) -> Result<()> {
        validate_tag(tag)?;
        let mut index = self.index()?;
        let manifests = index["manifests"]
            .as_array_mut()
            .context("index.json has no manifests list")?;
        manifests.retain(|m| m["annotations"][REF_NAME].as_str() != Some(tag));
        let mut entry = json!({
            "mediaType": desc.media_type,
            "digest": desc.digest,
            "size": desc.size,
            "annotations": {REF_NAME: tag},
        });
        if let Some(arch) = platform {
            entry["platform"] = json!({"os": "linux", "architecture": arch});
        }
        manifests.push(entry);
        manifests.sort_by(|a, b| {
            a["annotations"][REF_NAME]
                .as_str()
                .cmp(&b["annotations"][REF_NAME].as_str())
        });
        self.write_file("index.json", &canonical_json(&index)?)
    }

    /// The descriptor a tag points at; without a tag, the only image in the layout.
    pub fn resolve(&self, tag: Option<&str>) -> Result<Descriptor> {
        let tags = self.tags()?;
        match tag {
            Some(t) => tags
                .into_iter()
                .find(|(n, _)| n == t)
                .map(|(_, d)| d)
                .with_context(|| {
                    format!(
                        "no image tagged {t:?} in {} (tags: {})",
                        self.root.display(),
                        self.tag_list().unwrap_or_default()
                    )
                }),
            None => {
                let index = self.index()?;
                let all = index["manifests"].as_array().cloned().unwrap_or_default();
                match all.as_slice() {
                    [one] => Descriptor::from_value(one),
                    [] => bail!("the OCI layout {} holds no image", self.root.display()),
                    _ => bail!(
                        "the OCI layout {} holds several images: name one with :TAG (tags: {})",
                        self.root.display(),
                        self.tag_list().unwrap_or_default()
                    ),
                }
            }
        }
    }

    fn tag_list(&self) -> Result<String> {
        Ok(self
            .tags()?
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
            .join(", "))
    }

    fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let mut temp = TempFile::new_in(&self.root)?;
        std::io::Write::write_all(&mut temp, bytes)
            .with_context(|| format!("writing {name} in {}", self.root.display()))?;
        temp.persist(&self.root.join(name))
    }
}

/// A tag as the distribution spec allows it.
pub fn validate_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        bail!("invalid tag {tag:?}: use letters, digits, `_`, `.` and `-` (at most 128, not starting with `.` or `-`)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_replace_and_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::create(dir.path()).unwrap();
        let d1 = Descriptor {
            media_type: super::super::image::MEDIA_MANIFEST.into(),
            digest: format!("sha256:{}", "1".repeat(64)),
            size: 1,
        };
        let d2 = Descriptor {
            digest: format!("sha256:{}", "2".repeat(64)),
            ..d1.clone()
        };
        l.set_tag("v1", &d1, Some("amd64")).unwrap();
        assert_eq!(l.resolve(None).unwrap(), d1);
        l.set_tag("latest", &d2, None).unwrap();
        assert!(l.resolve(None).is_err(), "two images need a tag");
        l.set_tag("v1", &d2, None).unwrap();
        assert_eq!(l.resolve(Some("v1")).unwrap(), d2);
        assert_eq!(l.tags().unwrap().len(), 2);
        let err = l.resolve(Some("nope")).unwrap_err().to_string();
        assert!(err.contains("latest") && err.contains("v1"), "{err}");
    }

    #[test]
    fn bad_tags_are_refused() {
        for t in ["", "-x", ".x", "a:b", "a/b", &"x".repeat(129)] {
            assert!(validate_tag(t).is_err(), "{t:?}");
        }
        assert!(validate_tag("v1.0_rc-2").is_ok());
    }
}
