//! Opening files that may come from anyone. `open` on a FIFO blocks until a writer
//! appears (forever, and a signal only restarts it), and a character device can return
//! bytes without end: a file from a layout, an archive or a user is opened without
//! blocking (`O_NONBLOCK`, `O_NOCTTY`) and refused by what `fstat` says before a single
//! byte is read.

use std::fs::{File, Metadata};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// What a file that is not a regular file is, for messages.
pub fn kind_name(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "an unknown kind of file"
    }
}

/// Opens `path` for reading without blocking and returns it with its metadata (taken
/// from the open file, so nothing can swap it in between) when it is a regular file.
/// Links are followed; callers that must not follow them check first.
pub fn open_regular(path: &Path) -> Result<(File, Metadata)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("reading the metadata of {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "{} is not a regular file ({}): refusing to read it",
            path.display(),
            kind_name(meta.file_type())
        );
    }
    Ok((file, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_and_devices_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_regular(dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("a directory"), "{e:#}");
        let e = open_regular(Path::new("/dev/zero")).unwrap_err();
        assert!(format!("{e:#}").contains("a character device"), "{e:#}");
        let f = dir.path().join("f");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(open_regular(&f).unwrap().1.len(), 3);
    }
}
