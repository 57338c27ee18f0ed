//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`) holding
//! any number of images, each tagged through the `org.opencontainers.image.ref.name`
//! annotation. Every file is written to a temp file and renamed, so a failed write never
//! leaves a half-written blob or index. A layout may come from anyone: every blob read
//! from it is checked against its descriptor's size and digest.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::image::{self, Blob, Descriptor, ImageIndex, MediaType, Platform};
use crate::io::atomic::AtomicFile;

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

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
            layout.write_file("index.json", &image::index(Vec::new())?.bytes)?;
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
        let d = image::digest(digest)?;
        Ok(self.blobs_dir().join(d.digest()))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Stores a small blob (config, manifest) unless it is there already.
    pub fn write_blob(&self, blob: &Blob) -> Result<()> {
        let path = self.blob_path(&blob.digest)?;
        if path.exists() {
            return Ok(());
        }
        let mut temp = AtomicFile::new_in(&self.blobs_dir())?;
        std::io::Write::write_all(&mut temp, &blob.bytes)
            .with_context(|| format!("writing blob {}", blob.digest))?;
        temp.persist(&path)
    }

    /// A new blob file, named by its digest when [`AtomicFile::persist`]ed.
    pub fn new_blob(&self) -> Result<AtomicFile> {
        AtomicFile::new_in(&self.blobs_dir())
    }

    /// Reads a small blob (a document: at most 4 MiB) and checks size and digest.
    pub fn read_blob(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        if desc.size() > crate::io::limits::MAX_DOCUMENT {
            bail!(
                "{} declares {} bytes for a document: more than the {} allowed",
                desc.digest(),
                desc.size(),
                crate::io::limits::MAX_DOCUMENT
            );
        }
        let mut r = self.open_blob(desc)?;
        let mut buf = Vec::with_capacity(desc.size() as usize);
        r.read_to_end(&mut buf)
            .with_context(|| format!("reading blob {}", desc.digest()))?;
        Ok(buf)
    }

    /// Opens a blob for streaming. Its file must have the declared size, and the reader
    /// fails at the end of the stream when the content does not hash to the digest.
    pub fn open_blob(&self, desc: &Descriptor) -> Result<VerifiedReader<std::fs::File>> {
        let path = self.blob_path(desc.digest().as_ref())?;
        let (f, meta) = self.open_blob_file(&path).with_context(|| {
            format!(
                "blob {} in {}: the layout is corrupt or was tampered with",
                desc.digest(),
                self.root.display()
            )
        })?;
        if meta.len() != desc.size() {
            bail!(
                "blob {} in {} is {} bytes but its descriptor says {}: the layout is corrupt or was tampered with",
                desc.digest(),
                self.root.display(),
                meta.len(),
                desc.size()
            );
        }
        Ok(VerifiedReader::new(
            f,
            desc.digest().to_string(),
            desc.size(),
        ))
    }

    /// Opens a blob's file when it is a regular file inside the layout: a link may point
    /// to another blob of the layout, never outside it (a hostile layout would read host
    /// files that way); a FIFO, device or directory is refused before it is read.
    fn open_blob_file(&self, path: &Path) -> Result<(std::fs::File, std::fs::Metadata)> {
        let meta = std::fs::symlink_metadata(path)
            .with_context(|| format!("reading {}", path.display()))?;
        if meta.file_type().is_symlink() {
            let target = std::fs::canonicalize(path)
                .with_context(|| format!("following the link {}", path.display()))?;
            let root = std::fs::canonicalize(&self.root)
                .with_context(|| format!("resolving {}", self.root.display()))?;
            if !target.starts_with(&root) {
                bail!(
                    "{} is a link to {}, outside the layout: refusing it",
                    path.display(),
                    target.display()
                );
            }
        }
        crate::sys::file::open_regular(path)
    }

    fn index(&self) -> Result<ImageIndex> {
        let path = self.root.join("index.json");
        let (f, _) = crate::sys::file::open_regular(&path)?;
        let bytes = crate::io::limits::read_capped(
            f,
            crate::io::limits::MAX_DOCUMENT,
            &path.display().to_string(),
        )?;
        match image::parse_document(&bytes)
            .with_context(|| format!("parsing {}", path.display()))?
        {
            image::Document::Index(i) => Ok(i),
            image::Document::Manifest(_) => bail!("{} is not an image index", path.display()),
        }
    }

    /// The tags in this layout with their descriptors.
    pub fn tags(&self) -> Result<Vec<(String, Descriptor)>> {
        Ok(self
            .index()?
            .manifests()
            .iter()
            .filter_map(|m| {
                let name = m.annotations().as_ref()?.get(REF_NAME)?;
                Some((name.clone(), m.clone()))
            })
            .collect())
    }

    /// Points `tag` at `desc` (replacing what the tag pointed at before).
    pub fn set_tag(&self, tag: &str, desc: &Descriptor, arch: Option<&str>) -> Result<()> {
        validate_tag(tag)?;
        let mut index = self.index()?;
        let mut manifests: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|m| ref_name(m) != Some(tag))
            .cloned()
            .collect();
        let mut entry = desc.clone();
        entry.set_annotations(Some(HashMap::from([(
            REF_NAME.to_string(),
            tag.to_string(),
        )])));
        if let Some(arch) = arch {
            let mut p = Platform::default();
            p.set_architecture(arch.into());
            p.set_os("linux".into());
            entry.set_platform(Some(p));
        }
        manifests.push(entry);
        manifests.sort_by(|a, b| ref_name(a).cmp(&ref_name(b)));
        index.set_manifests(manifests);
        index.set_media_type(Some(MediaType::ImageIndex));
        self.write_file("index.json", &Blob::json(&index)?.bytes)
    }

    /// The descriptor a tag points at; without a tag, the only image in the layout.
    pub fn resolve(&self, tag: Option<&str>) -> Result<Descriptor> {
        match tag {
            Some(t) => self
                .tags()?
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
            None => match self.index()?.manifests().as_slice() {
                [one] => Ok(one.clone()),
                [] => bail!("the OCI layout {} holds no image", self.root.display()),
                _ => bail!(
                    "the OCI layout {} holds several images: name one with :TAG (tags: {})",
                    self.root.display(),
                    self.tag_list().unwrap_or_default()
                ),
            },
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
        let mut temp = AtomicFile::new_in(&self.root)?;
        std::io::Write::write_all(&mut temp, bytes)
            .with_context(|| format!("writing {name} in {}", self.root.display()))?;
        temp.persist(&self.root.join(name))
    }
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

/// A layout directory that a command is about to create: unless [`NewLayout::keep`] is
/// called (the command succeeded), dropping it removes the directory, and the parent
/// directories created with it, with everything in them, so a failed or interrupted
/// command leaves no empty layout behind. A directory that existed before is never
/// touched.
#[derive(Debug)]
pub struct NewLayout {
    /// The topmost directory this command creates, when it creates one.
    created: Option<PathBuf>,
}

impl NewLayout {
    /// Notes which of `root` and its parents do not exist yet; call before creating it.
    pub fn before_creating(root: &Path) -> NewLayout {
        let mut created = None;
        let mut p = root;
        while !p.as_os_str().is_empty() && std::fs::symlink_metadata(p).is_err() {
            created = Some(p.to_path_buf());
            match p.parent() {
                Some(parent) => p = parent,
                None => break,
            }
        }
        NewLayout { created }
    }

    /// The command succeeded: the layout stays.
    pub fn keep(mut self) {
        self.created = None;
    }
}

impl Drop for NewLayout {
    fn drop(&mut self) {
        if let Some(dir) = self.created.take() {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => tracing::info!(
                    "removed {}, created by the command that failed",
                    dir.display()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("cannot remove {}: {e}", dir.display()),
            }
        }
    }
}

/// A reader that counts and hashes a blob and turns a wrong size or digest into an
/// error at the end of the stream (or as soon as it reads past the declared size).
pub struct VerifiedReader<R> {
    inner: crate::io::hash::HashingReader<R>,
    digest: String,
    size: u64,
    checked: bool,
}

impl<R: Read> VerifiedReader<R> {
    pub fn new(inner: R, digest: String, size: u64) -> Self {
        VerifiedReader {
            inner: crate::io::hash::HashingReader::new(inner),
            digest,
            size,
            checked: false,
        }
    }
}

impl<R: Read> Read for VerifiedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        crate::sys::interrupt::check_io()?;
        let n = self.inner.read(buf)?;
        if self.inner.count() > self.size {
            return Err(std::io::Error::other(format!(
                "blob {} is longer than its declared {} bytes",
                self.digest, self.size
            )));
        }
        if n == 0 && !buf.is_empty() && !self.checked {
            self.checked = true;
            let count = self.inner.count();
            let hex = self.inner.hex();
            if count != self.size || format!("sha256:{hex}") != self.digest {
                return Err(std::io::Error::other(format!(
                    "blob {} does not match its digest (read {count} bytes hashing to sha256:{hex})",
                    self.digest
                )));
            }
        }
        Ok(n)
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

    fn desc(n: char) -> Descriptor {
        Descriptor::new(
            MediaType::ImageManifest,
            1,
            image::digest(&format!("sha256:{}", n.to_string().repeat(64))).unwrap(),
        )
    }

    #[test]
    fn tags_replace_and_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::create(dir.path()).unwrap();
        let (d1, d2) = (desc('1'), desc('2'));
        l.set_tag("v1", &d1, Some("amd64")).unwrap();
        assert_eq!(l.resolve(None).unwrap().digest(), d1.digest());
        l.set_tag("latest", &d2, None).unwrap();
        assert!(l.resolve(None).is_err(), "two images need a tag");
        l.set_tag("v1", &d2, None).unwrap();
        assert_eq!(l.resolve(Some("v1")).unwrap().digest(), d2.digest());
        assert_eq!(l.tags().unwrap().len(), 2);
        let err = l.resolve(Some("nope")).unwrap_err().to_string();
        assert!(err.contains("latest") && err.contains("v1"), "{err}");
    }

    #[test]
    fn blobs_that_do_not_match_their_descriptor_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::create(dir.path()).unwrap();
        let b = Blob::raw(b"hello".to_vec());
        l.write_blob(&b).unwrap();
        let good = b.descriptor("text/plain").unwrap();
        assert_eq!(l.read_blob(&good).unwrap(), b"hello");
        // Declared bigger than the file: refused before reading.
        let mut big = good.clone();
        big.set_size(10 << 30);
        assert!(l.read_blob(&big).is_err());
        assert!(l.open_blob(&big).is_err());
        // Same size, other content under the name: refused at the end of the stream.
        std::fs::write(l.blob_path(&b.digest).unwrap(), b"HELLO").unwrap();
        let e = l.read_blob(&good).unwrap_err();
        assert!(
            format!("{e:#}").contains("does not match its digest"),
            "{e:#}"
        );
    }

    #[test]
    fn only_the_directories_a_command_created_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("existing");
        std::fs::create_dir(&existing).unwrap();
        let guard = NewLayout::before_creating(&existing);
        Layout::create(&existing).unwrap();
        drop(guard);
        assert!(
            existing.join("index.json").is_file(),
            "an existing directory went"
        );
        let fresh = dir.path().join("a/b/layout");
        let guard = NewLayout::before_creating(&fresh);
        Layout::create(&fresh).unwrap();
        drop(guard);
        assert!(!dir.path().join("a").exists());
        let kept = dir.path().join("kept");
        let guard = NewLayout::before_creating(&kept);
        Layout::create(&kept).unwrap();
        guard.keep();
        assert!(kept.join("index.json").is_file());
    }

    #[test]
    fn bad_tags_are_refused() {
        for t in ["", "-x", ".x", "a:b", "a/b", &"x".repeat(129)] {
            assert!(validate_tag(t).is_err(), "{t:?}");
        }
        assert!(validate_tag("v1.0_rc-2").is_ok());
    }
}
