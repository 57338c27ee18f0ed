//! Registry image references (`[docker://]HOST/REPO[:TAG][@DIGEST]`), parsed and
//! validated once where they enter diskforge and passed around typed from there.

use anyhow::{Context, Result};

/// A registry reference split into registry, repository and tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    /// `host[:port]` as diskforge connects to it (Docker Hub: `index.docker.io`).
    pub registry: String,
    pub repository: String,
    /// `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl RemoteRef {
    /// Parses `[docker://]HOST/REPO[:TAG][@DIGEST]` (Docker Hub names are normalized as
    /// the container tools do: `alpine` is `docker.io/library/alpine:latest`). The
    /// repository must be lower case, the tag valid and a digest complete.
    pub fn parse(s: &str) -> Result<RemoteRef> {
        let s = s.trim_start_matches("docker://");
        let r: oci_client::Reference = s
            .parse()
            .with_context(|| format!("{s:?} is not an image reference such as HOST/REPO:TAG"))?;
        Ok(RemoteRef {
            registry: r.resolve_registry().to_string(),
            repository: r.repository().to_string(),
            tag: r.tag().map(str::to_string),
            digest: r.digest().map(str::to_string),
        })
    }

    /// The digest when pinned, else the tag (`latest` when neither is given).
    pub fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The tag, `latest` when none was given.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// `HOST/REPO`: the repository with its registry, as signatures name it.
    pub fn repository_path(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `HOST/REPO@DIGEST`.
    pub fn pinned(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.registry, self.repository)
    }
}

impl std::fmt::Display for RemoteRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = RemoteRef::parse(s).unwrap();
        (r.registry, r.repository, r.tag, r.digest)
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn references_split_and_print() {
        let r = RemoteRef::parse("docker://127.0.0.1:5000/lab/x:1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference()),
            ("127.0.0.1:5000", "lab/x", "1")
        );
        assert_eq!(r.to_string(), "127.0.0.1:5000/lab/x:1");
        assert_eq!(r.repository_path(), "127.0.0.1:5000/lab/x");
        let d = format!("sha256:{}", "a".repeat(64));
        let p = RemoteRef::parse(&format!("reg.example.com/a/b@{d}")).unwrap();
        assert_eq!(p.reference(), d);
        assert_eq!(p.tag_or_latest(), "latest");
        assert_eq!(p.pinned(&d), format!("reg.example.com/a/b@{d}"));
    }

    #[test]
    fn a_reference_names_its_registry_port_tag_and_digest() {
        let d = format!("sha256:{}", "b".repeat(64));
        // No tag and no digest: `latest`, as the container tools read it.
        assert_eq!(
            parts("localhost:5000/x"),
            ("localhost:5000".into(), "x".into(), some("latest"), None)
        );
        assert_eq!(
            parts("reg.example.com/team/app/disk:v1.2"),
            (
                "reg.example.com".into(),
                "team/app/disk".into(),
                some("v1.2"),
                None
            )
        );
        // A digest alone pins the image; with a tag both are kept.
        assert_eq!(
            parts(&format!("127.0.0.1:5000/lab/x@{d}")),
            (
                "127.0.0.1:5000".into(),
                "lab/x".into(),
                None,
                Some(d.clone())
            )
        );
        let both = RemoteRef::parse(&format!("127.0.0.1:5000/lab/x:1@{d}")).unwrap();
        assert_eq!((both.tag_or_latest(), both.reference()), ("1", d.as_str()));
        assert_eq!(both.to_string(), format!("127.0.0.1:5000/lab/x:1@{d}"));
        // Docker Hub: a first component without `.`, `:` or `localhost` is a namespace,
        // and official images live under `library/`.
        assert_eq!(
            parts("docker://alpine"),
            (
                "index.docker.io".into(),
                "library/alpine".into(),
                some("latest"),
                None
            )
        );
        assert_eq!(parts("kubevirt/fedora:40").1, "kubevirt/fedora");
        assert_eq!(parts("docker.io/kubevirt/fedora:40").0, "index.docker.io");
    }

    #[test]
    fn malformed_references_are_refused_with_the_text_given() {
        for bad in [
            "",
            "docker://",
            "127.0.0.1:5000/Lab/x:1",
            "127.0.0.1:5000/lab/x:bad tag!",
            "127.0.0.1:5000//x",
            "127.0.0.1:5000/lab/x@sha256:short",
            "127.0.0.1:5000/lab/x@md5:abc",
            "reg.example.com/a b",
        ] {
            let e = RemoteRef::parse(bad).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains("is not an image reference"), "{bad}: {msg}");
            assert!(
                msg.contains(&format!("{:?}", bad.trim_start_matches("docker://"))),
                "{bad}: {msg}"
            );
        }
    }
}
