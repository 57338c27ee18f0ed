//! Image references on the command line: `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`,
//! `docker://HOST/REPO[:TAG|@DIGEST]`, and the destinations only written to:
//! `docker-archive:FILE[:NAME[:TAG]]` and `containers-storage:NAME[:TAG]`.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::reference::RemoteRef;

/// Where an image is written to or read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// An OCI layout directory and a tag (None: the only image / `latest` for writes).
    Layout { dir: PathBuf, tag: Option<String> },
    /// A tar of an OCI layout.
    Archive { file: PathBuf, tag: Option<String> },
    /// A registry reference, parsed and validated when the `ImageRef` was made.
    Registry(RemoteRef),
    /// What `docker load` / `podman load` read (written only).
    DockerArchive(super::docker_archive::DockerArchiveRef),
    /// An image in the local podman / CRI-O store, `NAME[:TAG]` (written only).
    Storage { name: String },
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef> {
        if let Some(rest) = s.strip_prefix("docker://") {
            if rest.is_empty() || !rest.contains('/') {
                bail!("{s:?}: a registry destination is docker://HOST/REPOSITORY[:TAG]");
            }
            return match RemoteRef::parse(rest) {
                Ok(r) => Ok(ImageRef::Registry(r)),
                Err(e) => bail!(
                    "{s:?} is not an image reference such as docker://HOST/REPOSITORY:TAG ({:#})",
                    e.root_cause()
                ),
            };
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            return Ok(ImageRef::DockerArchive(
                super::docker_archive::DockerArchiveRef::parse(rest)?,
            ));
        }
        if let Some(name) = s.strip_prefix("containers-storage:") {
            if name.contains('@') || name.parse::<oci_client::Reference>().is_err() {
                bail!("{s:?}: expected containers-storage:NAME[:TAG], e.g. containers-storage:localhost/lab/demo:1");
            }
            return Ok(ImageRef::Storage {
                name: name.to_string(),
            });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (file, tag) = split_tag(rest, s)?;
            return Ok(ImageRef::Archive { file, tag });
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = split_tag(rest, s)?;
            return Ok(ImageRef::Layout { dir, tag });
        }
        bail!("{s:?}: expected oci:DIR[:TAG], oci-archive:FILE[:TAG], docker://HOST/REPO:TAG, docker-archive:FILE[:NAME[:TAG]] or containers-storage:NAME[:TAG]")
    }

    /// The tag, `latest` when none was given.
    pub fn tag_or_latest(&self) -> String {
        match self {
            ImageRef::Layout { tag, .. } | ImageRef::Archive { tag, .. } => {
                tag.clone().unwrap_or_else(|| "latest".into())
            }
            ImageRef::Registry(r) => r.tag_or_latest().to_string(),
            ImageRef::DockerArchive(r) => r
                .name
                .as_deref()
                .and_then(|n| n.rsplit_once(':'))
                .map(|(_, t)| t.to_string())
                .unwrap_or_else(|| "latest".into()),
            ImageRef::Storage { name } => match name.rsplit_once(':') {
                Some((_, t)) if !t.contains('/') => t.to_string(),
                _ => "latest".into(),
            },
        }
    }

    /// Whether this names a place images are only written to (`docker-archive:`,
    /// `containers-storage:`), never read from by diskforge.
    pub fn is_write_only(&self) -> bool {
        matches!(self, ImageRef::DockerArchive(_) | ImageRef::Storage { .. })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Layout { dir, tag } => write!(
                f,
                "oci:{}:{}",
                dir.display(),
                tag.as_deref().unwrap_or("latest")
            ),
            ImageRef::Archive { file, tag } => write!(
                f,
                "oci-archive:{}:{}",
                file.display(),
                tag.as_deref().unwrap_or("latest")
            ),
            ImageRef::Registry(r) => write!(f, "docker://{r}"),
            ImageRef::DockerArchive(r) => write!(f, "{r}"),
            ImageRef::Storage { name } => write!(f, "containers-storage:{name}"),
        }
    }
}

fn split_tag(rest: &str, whole: &str) -> Result<(PathBuf, Option<String>)> {
    if rest.is_empty() {
        bail!("{whole:?}: the path is missing");
    }
    // A tag never contains `/`; a colon followed by a path segment belongs to the path.
    match rest.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') && !path.is_empty() => {
            super::layout::validate_tag(tag)?;
            Ok((PathBuf::from(path), Some(tag.to_string())))
        }
        _ => Ok((PathBuf::from(rest), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        assert_eq!(
            ImageRef::parse("oci:out/demo:v1").unwrap(),
            ImageRef::Layout {
                dir: "out/demo".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            ImageRef::parse("oci:out/demo").unwrap(),
            ImageRef::Layout {
                dir: "out/demo".into(),
                tag: None
            }
        );
        assert_eq!(
            ImageRef::parse("oci-archive:x.tar:t").unwrap(),
            ImageRef::Archive {
                file: "x.tar".into(),
                tag: Some("t".into())
            }
        );
        assert_eq!(
            ImageRef::parse("docker://127.0.0.1:5000/lab/x:1").unwrap(),
            ImageRef::Registry(RemoteRef {
                registry: "127.0.0.1:5000".into(),
                repository: "lab/x".into(),
                tag: Some("1".into()),
                digest: None,
            })
        );
        let d = format!("sha256:{}", "c".repeat(64));
        let pinned = ImageRef::parse(&format!("docker://127.0.0.1:5000/lab/x@{d}")).unwrap();
        assert_eq!(pinned.tag_or_latest(), "latest");
        assert_eq!(
            pinned.to_string(),
            format!("docker://127.0.0.1:5000/lab/x@{d}")
        );
        assert_eq!(
            ImageRef::parse("docker://127.0.0.1:5000/lab/x")
                .unwrap()
                .tag_or_latest(),
            "latest"
        );
        assert!(ImageRef::parse("out/demo").is_err());
        assert!(ImageRef::parse("oci:").is_err());
        assert!(ImageRef::parse("oci:dir:bad/tag:x!").is_err());
        assert!(ImageRef::parse("docker://noslash").is_err());
        for bad in [
            "docker://127.0.0.1:5000/Lab/x:1",
            "docker://127.0.0.1:5000/lab/x:bad tag!",
            "docker://127.0.0.1:5000//x",
            "docker://127.0.0.1:5000/lab/x@sha256:short",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}
