//! Which host files a recipe may name. A recipe (perhaps from a pull request) may name
//! files in its own directory only; the person running diskforge may allow more on the
//! command line: directories (`--allow-path`, `DISKFORGE_ALLOW_PATH`) for the base and
//! copied files, and one base file (`--base`). Decisions are taken on real paths, so a
//! symbolic link cannot lead out of what was allowed.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// What the command line allows beyond the recipe's directory, as real paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAccess {
    /// Directories whose files the base and `files[].source` may name.
    dirs: Vec<PathBuf>,
    /// The base given with `--base`: it replaces the recipe's base.
    base: Option<PathBuf>,
}

impl HostAccess {
    /// Allows `dirs` (each must exist and be a directory) and names the `--base` file
    /// (which must be a regular file). Both are resolved to their real paths now.
    pub fn new(dirs: &[PathBuf], base: Option<&Path>) -> Result<HostAccess> {
        let mut real = Vec::new();
        for d in dirs {
            let r = std::fs::canonicalize(d)
                .with_context(|| format!("--allow-path {}: no such directory", d.display()))?;
            if !r.is_dir() {
                bail!("--allow-path {}: not a directory", d.display());
            }
            real.push(r);
        }
        let base = match base {
            Some(b) => {
                let r = std::fs::canonicalize(b)
                    .with_context(|| format!("--base {}: no such file", b.display()))?;
                if !r.is_file() {
                    bail!("--base {}: not a regular file", b.display());
                }
                Some(r)
            }
            None => None,
        };
        Ok(HostAccess { dirs: real, base })
    }

    /// The `--base` file, as a real path.
    pub fn base(&self) -> Option<&Path> {
        self.base.as_deref()
    }

    /// True when directories were allowed.
    pub fn allows_dirs(&self) -> bool {
        !self.dirs.is_empty()
    }

    /// Whether the real path `real` lies in an allowed directory.
    pub fn dir_allows(&self, real: &Path) -> bool {
        self.dirs.iter().any(|d| real.starts_with(d))
    }

    /// Whether the real path `real` is the `--base` file.
    pub fn is_base(&self, real: &Path) -> bool {
        self.base.as_deref() == Some(real)
    }
}

/// Splits `DISKFORGE_ALLOW_PATH` (colon-separated, like `PATH`; empty entries ignored).
pub fn split_allow_env(value: &str) -> Vec<PathBuf> {
    value
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// The local path a `file://` URL names: `file:///abs/path` or `file://localhost/abs/path`,
/// with `%XX` escapes decoded. `None` for other schemes; an error for a `file:` URL on
/// another host or one that is not absolute.
pub fn file_url_path(url: &str) -> Option<std::result::Result<PathBuf, String>> {
    let rest = url.strip_prefix("file://")?;
    let path = if rest.starts_with('/') {
        rest
    } else if let Some(p) = rest.strip_prefix("localhost") {
        p
    } else {
        return Some(Err(format!(
            "{url:?}: a file:// URL names a file on this machine: file:///ABSOLUTE/PATH"
        )));
    };
    if !path.starts_with('/') {
        return Some(Err(format!(
            "{url:?}: a file:// URL needs an absolute path: file:///ABSOLUTE/PATH"
        )));
    }
    Some(percent_decode(path).map(PathBuf::from).ok_or_else(|| {
        format!("{url:?}: bad %-escape (write %XX with two hex digits, UTF-8 text only)")
    }))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// How far a path as written reaches: relative paths without `..` stay in the recipe's
/// directory unless a symbolic link leads out.
pub fn written_outside(p: &Path) -> bool {
    p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_name_local_absolute_paths() {
        assert_eq!(
            file_url_path("file:///srv/images/u.qcow2")
                .unwrap()
                .unwrap(),
            PathBuf::from("/srv/images/u.qcow2")
        );
        assert_eq!(
            file_url_path("file://localhost/srv/my%20images/u.qcow2")
                .unwrap()
                .unwrap(),
            PathBuf::from("/srv/my images/u.qcow2")
        );
        assert!(file_url_path("https://x/u.qcow2").is_none());
        assert!(file_url_path("file://other.host/u.qcow2").unwrap().is_err());
        assert!(file_url_path("file://localhostx/u").unwrap().is_err());
        assert!(file_url_path("file:///bad%zz").unwrap().is_err());
        assert!(file_url_path("file:///bad%4").unwrap().is_err());
    }

    #[test]
    fn allowed_directories_are_real_paths() {
        let t = tempfile::tempdir().unwrap();
        let images = t.path().join("images");
        std::fs::create_dir(&images).unwrap();
        std::os::unix::fs::symlink(&images, t.path().join("link")).unwrap();
        let a = HostAccess::new(&[t.path().join("link")], None).unwrap();
        let real = std::fs::canonicalize(&images).unwrap();
        assert!(a.dir_allows(&real.join("x.qcow2")));
        assert!(!a.dir_allows(&std::fs::canonicalize(t.path()).unwrap()));
        assert!(HostAccess::new(&[t.path().join("missing")], None).is_err());
        std::fs::write(t.path().join("f"), "x").unwrap();
        assert!(HostAccess::new(&[t.path().join("f")], None).is_err());
        assert!(HostAccess::new(&[], Some(&images)).is_err());
        assert_eq!(
            split_allow_env("/a::/b:"),
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
    }
}
