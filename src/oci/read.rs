//! Reading containerDisk images back, from layouts that may come from anyone: resolving
//! a tag (and an index) to a manifest and config, and walking the layers the way a node
//! sees them. Entry paths are never trusted: nothing is ever written under a name taken
//! from the layer, only the one disk file is extracted, under a fixed name, and
//! anything that could escape (absolute paths, `..`, links in `disk/`) is a problem.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::image::{self, Descriptor, Document, ImageConfiguration, ImageManifest};
use super::layout::Layout;
use crate::io::decompress::{self, Compression};

/// The most entries remembered per image (a hostile layer may hold millions).
const MAX_ENTRIES: usize = 10_000;

/// The largest disk file a layer may expand to unless `DISKFORGE_MAX_DISK_SIZE` says
/// otherwise: far beyond any containerDisk a node should pull, far below what fills a
/// scratch disk by surprise.
pub const DEFAULT_MAX_DISK: u64 = 64 << 30;

/// What a layer walk may read: the disk file at most `max_disk` bytes (and a qcow2 file
/// not much bigger than the virtual size its header states), the whole expanded tar
/// stream at most `max_disk` plus [`TAR_SLACK`].
#[derive(Debug, Clone, Copy)]
pub struct ExpandLimit {
    pub max_disk: u64,
}

/// What a tar stream may hold besides the disk: headers, the directory, padding.
pub const TAR_SLACK: u64 = 64 << 20;

impl Default for ExpandLimit {
    fn default() -> Self {
        ExpandLimit {
            max_disk: DEFAULT_MAX_DISK,
        }
    }
}

impl ExpandLimit {
    /// Why a disk entry of `size` bytes whose first bytes gave `header` is refused, if
    /// it is. A qcow2 file holds its clusters plus metadata: the L2 and refcount tables
    /// take at most 3% of the virtual size (512-byte clusters, extended L2 entries), so
    /// a file more than an eighth (and 256 MiB) bigger than its virtual size is not a
    /// disk but a decompression bomb or damage.
    pub fn refuse(&self, path: &str, size: u64, header: &DiskHeader) -> Option<String> {
        if size > self.max_disk {
            return Some(format!(
                "{path} expands to {size} bytes: more than the {} allowed (set DISKFORGE_MAX_DISK_SIZE to allow bigger disks)",
                self.max_disk
            ));
        }
        if header.format == "qcow2" {
            let most = header
                .virtual_size
                .saturating_add(header.virtual_size / 8)
                .saturating_add(256 << 20);
            if size > most {
                return Some(format!(
                    "{path} is a {size}-byte qcow2 file whose header states a virtual size of {} bytes: a qcow2 file is never that much bigger than its virtual size (a decompression bomb or a damaged image)",
                    header.virtual_size
                ));
            }
        }
        None
    }
}

/// A reader that fails once more than `limit` bytes came through it.
struct Capped<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            std::io::Error::other(format!(
                "the layer expands to more than {} bytes (set DISKFORGE_MAX_DISK_SIZE to allow bigger disks)",
                self.limit
            ))
        })?;
        Ok(n)
    }
}

/// One image of a layout, resolved to its platform manifest.
pub struct LayoutImage {
    pub layout: Layout,
    /// The descriptor of the platform manifest.
    pub manifest_desc: Descriptor,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
}

impl LayoutImage {
    /// Resolves `tag` (or the only image) in `layout`; an index is resolved to the entry
    /// for `arch`.
    pub fn open(layout: Layout, tag: Option<&str>, arch: &str) -> Result<LayoutImage> {
        let mut desc = layout.resolve(tag)?;
        let mut doc = image::parse_document(&layout.read_blob(&desc)?)?;
        if let Document::Index(idx) = &doc {
            desc = idx
                .manifests()
                .iter()
                .find(|m| {
                    m.platform()
                        .as_ref()
                        .is_some_and(|p| p.architecture().to_string() == arch)
                })
                .cloned()
                .with_context(|| format!("the image index has no {arch} image"))?;
            doc = image::parse_document(&layout.read_blob(&desc)?)?;
        }
        let Document::Manifest(manifest) = doc else {
            bail!(
                "{} is an index inside an index: not an image",
                desc.digest()
            );
        };
        let config = image::parse_config(&layout.read_blob(manifest.config())?)?;
        Ok(LayoutImage {
            layout,
            manifest_desc: desc,
            manifest,
            config,
        })
    }
}

/// The host's architecture in OCI terms.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

/// One entry of a layer, as a runtime would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// The path as written in the layer (lossy UTF-8, `./` stripped).
    pub path: String,
    /// `-` file, `d` directory, `l` symlink, `h` hard link, `S` sparse, `?` other.
    pub kind: char,
    pub uid: u64,
    pub gid: u64,
    pub mode: u32,
    pub size: u64,
}

/// Format and virtual size of a disk, read from its first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskHeader {
    pub format: &'static str,
    pub virtual_size: u64,
}

/// Reads the qcow2 header (magic `QFI\xfb`, virtual size at offset 24); anything else is
/// taken as raw with the file's size.
pub fn disk_header(first: &[u8], file_size: u64) -> DiskHeader {
    if first.len() >= 32 && first[..4] == [b'Q', b'F', b'I', 0xfb] {
        let mut b = [0u8; 8];
        b.copy_from_slice(&first[24..32]);
        DiskHeader {
            format: "qcow2",
            virtual_size: u64::from_be_bytes(b),
        }
    } else {
        DiskHeader {
            format: "raw",
            virtual_size: file_size,
        }
    }
}

/// What walking an image's layers found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Entries in layer order (at most [`MAX_ENTRIES`]).
    pub entries: Vec<EntryInfo>,
    /// Entries a containerDisk must not have (unsafe paths, links or devices in `disk/`).
    pub problems: Vec<String>,
    /// The disk file the node would use: the last regular file written directly under
    /// `disk/`, with its header.
    pub disk: Option<(EntryInfo, DiskHeader)>,
    /// Where the disk was extracted, when asked to.
    pub extracted: Option<PathBuf>,
}

impl Scan {
    /// Regular files and links directly under `disk/` (what KubeVirt counts).
    pub fn disk_files(&self) -> Vec<&EntryInfo> {
        self.entries
            .iter()
            .filter(|e| e.kind != 'd' && in_disk_dir(&e.path))
            .collect()
    }
}

/// `disk/NAME` with NAME one plain component.
fn in_disk_dir(path: &str) -> bool {
    path.strip_prefix("disk/")
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// Why a layer path is unsafe, if it is: absolute, with `..` or empty components.
fn unsafe_path(path: &str) -> Option<&'static str> {
    if path.starts_with('/') {
        return Some("absolute path");
    }
    let trimmed = path.trim_end_matches('/');
    for c in trimmed.split('/') {
        match c {
            ".." => return Some("`..` component"),
            "" => return Some("empty path component"),
            _ => {}
        }
    }
    None
}

/// Walks the layers of `img`. With `extract_to`, the disk file's content is written to
/// `extract_to/disk` (nothing else is ever written; runs of zeros become holes);
/// otherwise only the first 512 bytes of the disk are read and the walk stops there.
/// A disk entry bigger than `limit` allows is a problem, found before its content is
/// read, and ends the walk.
pub fn scan_layers(
    img: &LayoutImage,
    extract_to: Option<&Path>,
    limit: ExpandLimit,
) -> Result<Scan> {
    let mut scan = Scan::default();
    let total = limit.max_disk.saturating_add(TAR_SLACK);
    for desc in img.manifest.layers() {
        let media = image::media_type(desc);
        let compression = Compression::from_media_type(&media)
            .with_context(|| format!("unsupported layer media type {media}"))?;
        let blob = img.layout.open_blob(desc)?;
        let reader = Capped {
            inner: decompress::reader(
                compression,
                std::io::BufReader::with_capacity(1 << 20, blob),
            )?,
            left: total,
            limit: total,
        };
        let done = scan_one(reader, extract_to, limit, &mut scan)
            .with_context(|| format!("reading layer {}", desc.digest()))?;
        if done {
            break;
        }
    }
    Ok(scan)
}

/// One layer; true when the walk may stop (header-only mode found the disk).
fn scan_one(
    reader: impl Read,
    extract_to: Option<&Path>,
    limit: ExpandLimit,
    scan: &mut Scan,
) -> Result<bool> {
    let mut archive = tar::Archive::new(reader);
    let done = scan_entries(&mut archive, extract_to, limit, scan)?;
    if !done {
        // Read what follows the end-of-archive marker too: the blob's digest is checked
        // when its last byte has been read.
        std::io::copy(&mut archive.into_inner(), &mut std::io::sink())
            .context("reading the end of the layer")?;
    }
    Ok(done)
}

fn scan_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    extract_to: Option<&Path>,
    limit: ExpandLimit,
    scan: &mut Scan,
) -> Result<bool> {
    for entry in archive.entries().context("reading the layer tar")? {
        crate::sys::interrupt::check()?;
        let mut e = entry.context("reading the layer tar")?;
        let h = e.header();
        let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let path = raw.strip_prefix("./").unwrap_or(&raw).to_string();
        let kind = match h.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => '-',
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::GNUSparse => 'S',
            _ => '?',
        };
        let info = EntryInfo {
            path: path.clone(),
            kind,
            uid: h.uid().unwrap_or(u64::MAX),
            gid: h.gid().unwrap_or(u64::MAX),
            mode: h.mode().unwrap_or(0),
            size: e.size(),
        };
        if scan.entries.len() < MAX_ENTRIES {
            scan.entries.push(info.clone());
        }
        if let Some(why) = unsafe_path(&path) {
            scan.problems
                .push(format!("layer entry {path:?} has an unsafe path ({why})"));
            continue;
        }
        if !in_disk_dir(&path) {
            continue;
        }
        if kind != '-' {
            scan.problems.push(format!(
                "{path} is not a regular file (type {kind}): a containerDisk holds one regular file under disk/"
            ));
            continue;
        }
        let mut first = [0u8; 512];
        let n = read_up_to(&mut e, &mut first)?;
        let header = disk_header(&first[..n], info.size);
        match extract_to {
            None => {
                scan.disk = Some((info, header));
                return Ok(true);
            }
            Some(dir) => {
                if let Some(why) = limit.refuse(&path, info.size, &header) {
                    scan.problems.push(why);
                    return Ok(true);
                }
                let dest = dir.join("disk");
                let mut out = crate::io::atomic::AtomicFile::new_in(dir)?;
                let mut sparse = crate::io::sparse::SparseWriter::new(out.file());
                std::io::Write::write_all(&mut sparse, &first[..n])
                    .with_context(|| format!("writing {}", dest.display()))?;
                std::io::copy(&mut crate::sys::interrupt::Checked(&mut e), &mut sparse)
                    .with_context(|| format!("extracting {path} to {}", dest.display()))?;
                sparse
                    .finish()
                    .with_context(|| format!("writing {}", dest.display()))?;
                out.persist(&dest)?;
                scan.extracted = Some(dest);
                scan.disk = Some((info, header));
            }
        }
    }
    Ok(false)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = r.read(&mut buf[n..]).context("reading the layer")?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// The disk's tar entry and header from the first bytes of a (compressed) layer, for
/// inspecting a remote image without pulling it: at most `prefix.len()` bytes are read
/// and every size from the tar headers is checked before it is used.
pub fn disk_from_prefix(prefix: &[u8], media_type: &str) -> Option<(String, DiskHeader)> {
    let compression = Compression::from_media_type(media_type)?;
    let mut r = decompress::reader(compression, prefix).ok()?;
    let mut tar = vec![0u8; 64 << 10];
    let n = read_up_to(&mut r, &mut tar).unwrap_or(0);
    let mut off = 0usize;
    while off.checked_add(512)? <= n {
        let h = tar::Header::from_byte_slice(&tar[off..off + 512]);
        let name = String::from_utf8_lossy(&h.path_bytes()).into_owned();
        if name.is_empty() {
            return None;
        }
        let size = h.entry_size().ok()?;
        let name = name.strip_prefix("./").unwrap_or(&name).to_string();
        if h.entry_type().is_file() && in_disk_dir(&name) {
            let data = &tar[(off + 512).min(n)..(off + 1024).min(n)];
            return Some((name, disk_header(data, size)));
        }
        // PAX/GNU extension headers and entries: skip header + data, rounded to blocks.
        let blocks = size.div_ceil(512).checked_add(1)?;
        off = off.checked_add(usize::try_from(blocks.checked_mul(512)?).ok()?)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow2_header_gives_virtual_size() {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[24..32].copy_from_slice(&(4u64 << 30).to_be_bytes());
        assert_eq!(
            disk_header(&h, 1000),
            DiskHeader {
                format: "qcow2",
                virtual_size: 4 << 30
            }
        );
        assert_eq!(disk_header(&[0u8; 64], 77).format, "raw");
        assert_eq!(disk_header(&[0u8; 64], 77).virtual_size, 77);
    }

    #[test]
    fn unsafe_paths_are_named() {
        assert_eq!(unsafe_path("/tmp/x"), Some("absolute path"));
        assert_eq!(unsafe_path("disk/../../tmp/x"), Some("`..` component"));
        assert_eq!(unsafe_path("disk//tmp/x"), Some("empty path component"));
        assert_eq!(unsafe_path("disk/"), None);
        assert_eq!(unsafe_path("disk/disk.qcow2"), None);
        assert!(in_disk_dir("disk/disk.qcow2"));
        assert!(!in_disk_dir("disk/sub/x") && !in_disk_dir("disk/") && !in_disk_dir("x"));
    }

    /// A raw tar header with `name` and a size field of `size` (octal or base-256).
    fn header(name: &str, size: u64) -> [u8; 512] {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size);
        h.set_cksum();
        *h.as_bytes()
    }

    #[test]
    fn a_hostile_size_field_ends_the_prefix_walk() {
        let mut prefix = Vec::new();
        prefix.extend_from_slice(&header("junk", u64::MAX - 10));
        prefix.extend_from_slice(&header("disk/disk.qcow2", 1 << 20));
        prefix.resize(4096, 0);
        let started = std::time::Instant::now();
        assert_eq!(
            disk_from_prefix(&prefix, "application/vnd.oci.image.layer.v1.tar"),
            None
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let mut ok = Vec::new();
        ok.extend_from_slice(&header("disk/", 0));
        ok.extend_from_slice(&header("disk/disk.img", 1 << 20));
        ok.resize(4096, 0);
        let (name, h) = disk_from_prefix(&ok, "application/vnd.oci.image.layer.v1.tar").unwrap();
        assert_eq!((name.as_str(), h.format), ("disk/disk.img", "raw"));
    }
}
