//! OCI archives (`oci-archive:FILE`): a tar of a layout. Written deterministically and
//! atomically; read back strictly — only `oci-layout`, `index.json` and
//! `blobs/sha256/<hex>` regular files are taken, anything else refuses the archive.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::image::Descriptor;
use super::layout::Layout;
use super::pack::copy_image;
use crate::io::atomic::{parent_dir, AtomicFile};

/// Writes an archive holding just the image `desc` of `from`, tagged `tag`.
pub fn write_archive(
    from: &Layout,
    desc: &Descriptor,
    file: &Path,
    tag: &str,
    arch: Option<&str>,
) -> Result<()> {
    let parent = parent_dir(file);
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".oci-archive-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a staging directory in {}", parent.display()))?;
    let layout = Layout::create(staging.path())?;
    copy_image(from, desc, &layout, tag, arch)?;
    let temp = AtomicFile::new_in(&parent)?;
    {
        let mut b = tar::Builder::new(std::io::BufWriter::new(temp.reopen()?));
        b.mode(tar::HeaderMode::Deterministic);
        b.follow_symlinks(false);
        for name in ["oci-layout", "index.json"] {
            b.append_path_with_name(staging.path().join(name), name)
                .with_context(|| format!("adding {name} to {}", file.display()))?;
        }
        let mut blobs: Vec<_> = std::fs::read_dir(layout.blobs_dir())?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| !n.to_string_lossy().starts_with('.'))
            .collect();
        blobs.sort();
        for n in blobs {
            let name = format!("blobs/sha256/{}", n.to_string_lossy());
            b.append_path_with_name(layout.blobs_dir().join(&n), &name)
                .with_context(|| format!("adding {name} to {}", file.display()))?;
        }
        b.into_inner()
            .context("finishing the archive")?
            .into_inner()
            .map_err(|e| e.into_error())
            .context("flushing the archive")?;
    }
    temp.persist(file)
}

/// Whether `name` is a file an OCI layout may hold.
fn layout_member(name: &str) -> bool {
    match name {
        "oci-layout" | "index.json" => true,
        _ => name.strip_prefix("blobs/sha256/").is_some_and(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }),
    }
}

/// Unpacks an OCI archive into the empty directory `dir` (which becomes a layout).
pub fn extract_archive(file: &Path, dir: &Path) -> Result<Layout> {
    let (f, _) = crate::sys::file::open_regular(file)
        .with_context(|| format!("opening the OCI archive {}", file.display()))?;
    let mut a = tar::Archive::new(std::io::BufReader::new(f));
    std::fs::create_dir_all(dir.join("blobs/sha256"))
        .with_context(|| format!("creating {}", dir.display()))?;
    for entry in a
        .entries()
        .with_context(|| format!("reading {}", file.display()))?
    {
        crate::sys::interrupt::check()?;
        let mut entry = entry.with_context(|| format!("reading {}", file.display()))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = raw.strip_prefix("./").unwrap_or(&raw).to_string();
        match entry.header().entry_type() {
            tar::EntryType::Directory if matches!(name.trim_end_matches('/'), "blobs" | "blobs/sha256" | "") => continue,
            tar::EntryType::Regular | tar::EntryType::Continuous if layout_member(&name) => {}
            _ => bail!(
                "{}: unexpected entry {name:?} in an OCI archive (only oci-layout, index.json and blobs/sha256/<digest> files are allowed)",
                file.display()
            ),
        }
        let dest = dir.join(&name);
        let mut out = AtomicFile::for_dest(&dest)?;
        std::io::copy(&mut crate::sys::interrupt::Checked(&mut entry), out.file())
            .with_context(|| format!("extracting {name} from {}", file.display()))?;
        out.persist(&dest)?;
    }
    Layout::open(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_layout_files_are_members() {
        assert!(layout_member("index.json") && layout_member("oci-layout"));
        assert!(layout_member(&format!("blobs/sha256/{}", "a".repeat(64))));
        for bad in [
            "../x",
            "blobs/sha256/../../etc/passwd",
            "blobs/sha256/ABC",
            "x/index.json",
            "/index.json",
        ] {
            assert!(!layout_member(bad), "{bad}");
        }
    }
}
