//! `docker-archive:FILE[:NAME[:TAG]]`: the tar `docker save` writes and `docker load` /
//! `podman load` read. Layers are stored uncompressed (`<diff-id>/layer.tar`), as
//! `docker save` stores them, so the image ID (the config's digest) stays the one of the
//! OCI image it was made from. Written through a temp file in the destination's
//! directory and renamed: a failed write leaves nothing behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::read::LayoutImage;
use crate::io::atomic::{parent_dir, AtomicFile};
use crate::io::decompress::{self, Compression};

/// Where a docker archive goes and the name it gives the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerArchiveRef {
    pub file: PathBuf,
    /// `NAME:TAG` for the archive's `RepoTags` (`docker load` names the image by it).
    pub name: Option<String>,
}

impl DockerArchiveRef {
    /// Parses what follows `docker-archive:`. As for skopeo, the path ends at the first
    /// colon; what follows is the image's name, `:latest` added when it has no tag.
    pub fn parse(rest: &str) -> Result<DockerArchiveRef> {
        let (file, name) = match rest.split_once(':') {
            Some((f, n)) => (f, Some(n)),
            None => (rest, None),
        };
        if file.is_empty() {
            bail!("docker-archive:{rest}: the file is missing (docker-archive:FILE[:NAME[:TAG]])");
        }
        let name = match name {
            None => None,
            Some(n) => {
                let parsed: oci_client::Reference = n.parse().with_context(|| {
                    format!("docker-archive:{rest}: {n:?} is not an image name such as lab/demo:1")
                })?;
                if parsed.digest().is_some() {
                    bail!("docker-archive:{rest}: name the image by a tag, not a digest");
                }
                let tag = parsed.tag().unwrap_or("latest");
                Some(if n.ends_with(&format!(":{tag}")) {
                    n.to_string()
                } else {
                    format!("{n}:{tag}")
                })
            }
        };
        Ok(DockerArchiveRef {
            file: PathBuf::from(file),
            name,
        })
    }
}

impl std::fmt::Display for DockerArchiveRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "docker-archive:{}", self.file.display())?;
        if let Some(n) = &self.name {
            write!(f, ":{n}")?;
        }
        Ok(())
    }
}

/// Writes `img` to `dest` as a docker archive. Each layer is decompressed once into a
/// temp file beside the destination (its uncompressed size goes in the tar header
/// before its bytes) and checked against the config's diff ID on the way.
pub fn write(img: &LayoutImage, dest: &DockerArchiveRef) -> Result<()> {
    let parent = parent_dir(&dest.file);
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let diff_ids = img.config.rootfs().diff_ids();
    if diff_ids.len() != img.manifest.layers().len() {
        bail!(
            "the image config lists {} layers, its manifest {}",
            diff_ids.len(),
            img.manifest.layers().len()
        );
    }
    let config_hex = hex_of(img.manifest.config().digest().as_ref())?;
    let config = img.layout.read_blob(img.manifest.config())?;
    let mut layer_names = Vec::new();
    let temp = AtomicFile::new_in(&parent)?;
    {
        let mut b = tar::Builder::new(std::io::BufWriter::new(temp.reopen()?));
        b.mode(tar::HeaderMode::Deterministic);
        for (layer, diff_id) in img.manifest.layers().iter().zip(diff_ids) {
            let hex = hex_of(diff_id)?;
            let name = format!("{hex}/layer.tar");
            let compression = Compression::from_media_type(layer.media_type().as_ref())
                .with_context(|| format!("layer {}: unknown media type", layer.digest()))?;
            let mut plain = tempfile::Builder::new()
                .prefix(".docker-archive-layer-")
                .tempfile_in(&parent)
                .with_context(|| format!("creating a temp file in {}", parent.display()))?;
            let mut r = crate::io::hash::HashingReader::new(decompress::reader(
                compression,
                img.layout.open_blob(layer)?,
            )?);
            {
                let mut w = std::io::BufWriter::new(plain.as_file_mut());
                std::io::copy(&mut r, &mut w)
                    .with_context(|| format!("decompressing layer {}", layer.digest()))?;
                w.flush().context("writing a decompressed layer")?;
            }
            let (got, size) = r.finish();
            if format!("sha256:{got}") != *diff_id {
                bail!(
                    "layer {} decompresses to sha256:{got}, but the config says {diff_id}",
                    layer.digest()
                );
            }
            let mut h = tar::Header::new_gnu();
            h.set_size(size);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            let mut f = plain.reopen().context("reopening a decompressed layer")?;
            b.append_data(&mut h, &name, &mut f as &mut dyn Read)
                .with_context(|| format!("adding {name} to {}", dest.file.display()))?;
            layer_names.push(name);
        }
        let config_name = format!("{config_hex}.json");
        append_bytes(&mut b, &config_name, &config, &dest.file)?;
        let manifest = serde_json::json!([{
            "Config": config_name,
            "RepoTags": dest.name.iter().collect::<Vec<_>>(),
            "Layers": layer_names,
        }]);
        append_bytes(
            &mut b,
            "manifest.json",
            serde_json::to_string(&manifest)?.as_bytes(),
            &dest.file,
        )?;
        b.into_inner()
            .context("finishing the archive")?
            .into_inner()
            .map_err(|e| e.into_error())
            .context("flushing the archive")?;
    }
    temp.persist(&dest.file)
}

fn append_bytes<W: Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
    file: &Path,
) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data)
        .with_context(|| format!("adding {name} to {}", file.display()))
}

fn hex_of(digest: &str) -> Result<String> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()) => Ok(h.into()),
        _ => bail!("{digest:?} is not a sha256 digest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_file_and_an_optional_name() {
        assert_eq!(
            DockerArchiveRef::parse("out/demo.tar").unwrap(),
            DockerArchiveRef {
                file: "out/demo.tar".into(),
                name: None
            }
        );
        assert_eq!(
            DockerArchiveRef::parse("demo.tar:lab/demo").unwrap().name,
            Some("lab/demo:latest".into())
        );
        assert_eq!(
            DockerArchiveRef::parse("demo.tar:lab/demo:v1")
                .unwrap()
                .name,
            Some("lab/demo:v1".into())
        );
        assert!(DockerArchiveRef::parse(":lab/demo").is_err());
        assert!(DockerArchiveRef::parse("demo.tar:Bad Name").is_err());
        let digest = format!("demo.tar:lab/demo@sha256:{}", "a".repeat(64));
        assert!(DockerArchiveRef::parse(&digest).is_err());
    }
}
