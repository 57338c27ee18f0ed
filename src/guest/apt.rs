//! apt's package lists and packages, fetched on the host for an apt guest.
//!
//! Under emulation the appliance's user-mode network and the guest's `apt-get update`
//! are slow (about 14 s for Debian's 9 MB of lists here, against under 2 s on the host).
//! So while the appliance grows the disk, the host runs `apt-get update` and
//! `apt-get install --download-only` on **the guest's own apt files**: its sources,
//! keys, preferences and `auth.conf.d`, its dpkg status and its architectures, each read
//! from the guest, with every path a source names (a `Signed-By` keyring, a
//! `mirror+file:` list) read from the guest too and kept under the fetch's root. The
//! lists and `.deb` files are then put where the guest's apt keeps them, and the guest
//! runs `apt-get install` as before, without `apt-get update`, checking each `.deb`
//! against the lists' hashes; what it lacks it downloads itself.
//!
//! The host's apt never runs with the guest's `apt.conf.d`: that is only parsed
//! (`apt-config`, and never with an `#include`), and the settings that decide what is
//! fetched and chosen are taken over ([`adopt_guest_settings`]); nothing that names a
//! program or a path of the host is. Sources that read local files (`file:`, `copy:`,
//! `cdrom:`) are left to the guest. The lists are verified with the guest's keys only.
//! When anything of this fails (no `apt-get` on the host, a list the host cannot
//! fetch), the guest updates its lists itself, exactly as without it.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::fish::Fish;
use crate::sys::exec::{Cmd, PathNames};

/// What a launch installs with apt, when it installs anything.
#[derive(Debug, Clone)]
pub struct Prefetch {
    pub packages: Vec<String>,
    /// The guest's dpkg architecture (`amd64`, `arm64`).
    pub arch: &'static str,
    /// Something after the install may read the guest's lists (a recipe command, or no
    /// hygiene removing them): they go into the guest's lists directory too.
    pub keep_lists: bool,
}

/// The marker the guest script looks for: lists and packages are in place, skip
/// `apt-get update`.
pub const MARKER: &str = "apt-prefetched";

/// Where, in the staging directory, the lists the install reads are put: the
/// repositories' release files and, of their package indexes, the entries of exactly
/// the packages the host's apt chose to download. apt in the guest then parses a few
/// kilobytes instead of every package of the distribution (50 MB for Debian, 6 s under
/// emulation) and resolves to the same packages: nothing it did not choose is gone.
/// Should it still miss one, the script updates the full lists and installs again.
pub const TRIMMED_LISTS: &str = "apt-lists";

/// `DISKFORGE_HOST_APT=0` leaves the fetch to the guest.
pub const OFF_VAR: &str = "DISKFORGE_HOST_APT";

/// How long the host may take for the lists and packages before the guest does it
/// itself.
const HOST_FETCH_TIMEOUT: Duration = Duration::from_secs(600);

/// A fetch running on the host while the appliance does other work.
pub struct Pending {
    handle: Option<std::thread::JoinHandle<Result<Fetched>>>,
    /// Credentials of the guest's sources (`auth.conf`, `user:password@` in URIs), masked
    /// in what the fetch reports.
    secrets: Vec<String>,
}

/// What the host fetched.
#[derive(Debug)]
pub struct Fetched {
    root: PathBuf,
    lists: Vec<PathBuf>,
    /// The release files and the package indexes cut down to the chosen packages.
    trimmed: Vec<PathBuf>,
    keep_lists: bool,
    debs: Vec<PathBuf>,
    /// Where the guest's apt keeps them.
    guest_lists: String,
    guest_archives: String,
    pub seconds: f64,
}

impl Fetched {
    /// Index files the install reads (the trimmed ones).
    pub fn lists(&self) -> usize {
        self.trimmed.len()
    }

    pub fn debs(&self) -> usize {
        self.debs.len()
    }

    /// What goes into the guest.
    pub fn bytes(&self) -> u64 {
        let full: &[PathBuf] = if self.keep_lists { &self.lists } else { &[] };
        self.trimmed
            .iter()
            .chain(full)
            .chain(&self.debs)
            .filter_map(|p| p.metadata().ok())
            .map(|m| m.len())
            .sum()
    }
}

/// Reads the guest's apt (its root mounted at `/`) into `work` and starts the host-side
/// fetch. `Ok(None)`: not an apt guest, or no `apt-get` on the host.
pub fn start(f: &Fish, work: &Path, p: &Prefetch, names: &PathNames) -> Result<Option<Pending>> {
    if std::env::var_os(OFF_VAR).is_some_and(|v| v == "0") {
        bail!("{OFF_VAR}=0");
    }
    if !crate::sys::exec::have("apt-get") || !crate::sys::exec::have("apt-config") {
        return Ok(None);
    }
    let is_apt = (|| -> Result<bool> {
        Ok(f.is_file("/var/lib/dpkg/status")?
            && (f.is_file("/usr/bin/apt-get")? || f.is_file("/bin/apt-get")?)
            && f.is_dir("/etc/apt")?)
    })()
    .context("looking for apt in the guest")?;
    if !is_apt {
        return Ok(None);
    }
    let root = work.join("host-apt");
    if root.exists() {
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("removing the old {}", root.display()))?;
    }
    // Owner only: the guest's auth.conf.d may hold repository credentials.
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("restricting {}", root.display()))?;
    for d in [
        "etc/apt",
        "var/lib/dpkg",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
    ] {
        let d = root.join(d);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    read_etc_apt(f, &root)?;
    download(f, "/var/lib/dpkg/status", &root.join("var/lib/dpkg/status"))?;
    let mut arches = vec![p.arch.to_string()];
    if f.is_file("/var/lib/dpkg/arch")
        .context("looking for the guest's dpkg architectures")?
    {
        download(f, "/var/lib/dpkg/arch", &root.join("var/lib/dpkg/arch"))?;
        let text = std::fs::read_to_string(root.join("var/lib/dpkg/arch"))
            .context("reading the guest's dpkg architectures")?;
        for a in text.split_whitespace() {
            if !arches.iter().any(|x| x == a) {
                arches.push(a.to_string());
            }
        }
    }
    bring_named_files(f, &root)?;
    write_config(&root, &arches)?;
    let secrets = credentials(&root);
    let packages = p.packages.clone();
    let keep_lists = p.keep_lists;
    let names = names.clone();
    let (recipe, step) = crate::progress::context();
    let handle = std::thread::Builder::new()
        .name("host-apt".into())
        .spawn(move || {
            crate::progress::set_recipe(recipe);
            crate::progress::set_step(step);
            fetch(root, &packages, keep_lists, &names)
        })
        .context("starting the host-side package fetch")?;
    Ok(Some(Pending {
        handle: Some(handle),
        secrets,
    }))
}

impl Pending {
    /// Waits for the host-side fetch. Its error names no credential of the guest's.
    pub fn wait(mut self) -> Result<Fetched> {
        let handle = self.handle.take().expect("waited once");
        match handle.join() {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(e)) => bail!(
                "{}",
                crate::sys::exec::redact(&format!("{e:#}"), &self.secrets)
            ),
            Err(_) => bail!("the host-side package fetch panicked"),
        }
    }
}

impl Drop for Pending {
    /// A build that fails before it waits still lets the fetch end (its apt-get runs
    /// are bounded by their timeout) before the work directory it writes to goes.
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The credentials the guest's apt would send: `auth.conf` and `auth.conf.d` values of
/// `login` and `password`, and the `user:password` of URIs in its sources.
fn credentials(root: &Path) -> Vec<String> {
    let etc = root.join("etc/apt");
    let mut files = vec![etc.join("auth.conf")];
    if let Ok(rd) = std::fs::read_dir(etc.join("auth.conf.d")) {
        files.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
    }
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        for w in words.windows(2) {
            if w[0] == "login" || w[0] == "password" {
                out.push(w[1].to_string());
            }
        }
    }
    for f in source_files(&etc) {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for w in text.split_whitespace() {
            if let Some((_, rest)) = w.split_once("://") {
                if let Some((userinfo, _)) = rest.split_once('@') {
                    if !userinfo.contains('/') {
                        out.push(userinfo.to_string());
                        if let Some((_, pw)) = userinfo.split_once(':') {
                            out.push(pw.to_string());
                        }
                    }
                }
            }
        }
    }
    out.retain(|s| s.len() >= 3);
    out
}

/// Puts the lists and packages where the guest's apt keeps them and leaves the marker in
/// the staging directory `stage`.
pub fn install(f: &Fish, fetched: &Fetched, stage: &str) -> Result<()> {
    let trimmed_dir = format!("{stage}/{TRIMMED_LISTS}");
    f.call(&["mkdir-p", &format!("{trimmed_dir}/partial")])?;
    for (files, dir, what) in [
        (&fetched.trimmed, &trimmed_dir, "trimmed-lists"),
        (&fetched.lists, &fetched.guest_lists, "lists"),
        (&fetched.debs, &fetched.guest_archives, "packages"),
    ] {
        if files.is_empty() || (what == "lists" && !fetched.keep_lists) {
            continue;
        }
        let tarball = fetched.root.join(format!("{what}.tar"));
        write_tar(&tarball, files)?;
        f.call(&["mkdir-p", dir])?;
        f.call(&["tar-in", &tarball.to_string_lossy(), dir])
            .with_context(|| format!("putting the host-fetched {what} into the guest's {dir}"))?;
    }
    f.call(&["write", &format!("{stage}/{MARKER}"), "yes"])?;
    Ok(())
}

fn download(f: &Fish, from: &str, to: &Path) -> Result<()> {
    f.call(&["download", from, &to.to_string_lossy()])
        .with_context(|| format!("reading the guest's {from}"))?;
    Ok(())
}

/// The guest's `/etc/apt`, with every symbolic link replaced by what it points to *in
/// the guest* (a link must never reach a file of the host).
fn read_etc_apt(f: &Fish, root: &Path) -> Result<()> {
    let tarball = root.join("etc-apt.tar");
    f.call(&["tar-out", "/etc/apt", &tarball.to_string_lossy()])
        .context("reading the guest's /etc/apt")?;
    let file =
        std::fs::File::open(&tarball).with_context(|| format!("opening {}", tarball.display()))?;
    let dest = root.join("etc/apt");
    let mut links = Vec::new();
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries().context("reading the guest's /etc/apt")? {
        let mut entry = entry.context("reading the guest's /etc/apt")?;
        let rel = entry
            .path()
            .context("a path in the guest's /etc/apt")?
            .into_owned();
        let Some(rel) = relative(&rel) else {
            continue;
        };
        let to = dest.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => std::fs::create_dir_all(&to)
                .with_context(|| format!("creating {}", to.display()))?,
            tar::EntryType::Regular => {
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                let mut data = Vec::new();
                entry
                    .read_to_end(&mut data)
                    .with_context(|| format!("reading /etc/apt/{}", rel.display()))?;
                std::fs::write(&to, data).with_context(|| format!("writing {}", to.display()))?;
            }
            tar::EntryType::Symlink => links.push(rel),
            _ => {}
        }
    }
    std::fs::remove_file(&tarball).ok();
    for rel in links {
        let guest = format!("/etc/apt/{}", rel.display());
        // A dangling link is what the guest's apt would skip too.
        let Some(real) = f.try_call(&["realpath", &guest]) else {
            continue;
        };
        if f.is_dir(&real).unwrap_or(false) {
            bail!("{guest} links to a directory ({real}): left to the guest");
        }
        if f.is_file(&real).unwrap_or(false) {
            let to = dest.join(&rel);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            download(f, &real, &to)?;
        }
    }
    Ok(())
}

/// Where a path a guest's source names (`/p`) goes under `root`: `..` and `.` taken as
/// the guest's root takes them (never above `/`), so nothing lands outside `root`.
/// `None` for the root itself.
fn under_root(root: &Path, p: &str) -> Option<PathBuf> {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| root.join(parts.join("/")))
}

/// `p` as a plain relative path (no `..`, no root), `None` for `.` itself.
fn relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// The source files of the copied `/etc/apt`.
fn source_files(etc_apt: &Path) -> Vec<PathBuf> {
    let mut files = vec![etc_apt.join("sources.list")];
    if let Ok(dir) = std::fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut more: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    files.into_iter().filter(|p| p.is_file()).collect()
}

/// Reads every file a source names by path from the guest into `root` and points the
/// source at that copy: keyrings (`signed-by=`, `Signed-By:`) and the mirror lists of
/// `mirror+file:` URIs (Debian's cloud images use one). apt reads those paths as they
/// stand, not under its `Dir`, so unchanged they would name the host's files.
fn bring_named_files(f: &Fish, root: &Path) -> Result<()> {
    for file in source_files(&root.join("etc/apt")) {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        if let Some(uri) = local_uri(&text) {
            bail!(
                "{} names a source on the local filesystem ({uri}): left to the guest",
                file.display()
            );
        }
        let mut paths = keyring_paths(&text);
        paths.extend(mirror_file_paths(&text));
        if paths.is_empty() {
            continue;
        }
        for p in &paths {
            let to = under_root(root, p)
                .with_context(|| format!("{} names {p:?} as a file", file.display()))?;
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let real = f.try_call(&["realpath", p]).unwrap_or_else(|| p.clone());
            if f.is_file(&real).unwrap_or(false) {
                download(f, &real, &to)?;
            }
        }
        let rewritten = rewrite_mirror_files(&rewrite_keyring_paths(&text, root), root);
        std::fs::write(&file, rewritten).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

/// The first URI of a sources file that reads the local filesystem (`file:`, `copy:`,
/// `cdrom:`): on the host it would read the host's files. (`mirror+file:` lists are read
/// from the guest's copy.)
fn local_uri(text: &str) -> Option<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split_whitespace())
        .map(|w| w.trim_start_matches('['))
        .find(|w| {
            let w = w.to_ascii_lowercase();
            ["file:", "copy:", "cdrom:"]
                .iter()
                .any(|s| w.starts_with(s))
        })
        .map(String::from)
}

/// The absolute keyring paths of a sources file, in either format.
fn keyring_paths(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    each_keyring_path(text, |p| {
        if !out.iter().any(|o| o == p) {
            out.push(p.to_string());
        }
        p.to_string()
    });
    out
}

/// `text` with every keyring path `P` replaced by `root/P`.
fn rewrite_keyring_paths(text: &str, root: &Path) -> String {
    each_keyring_path(text, |p| {
        under_root(root, p)
            .unwrap_or_else(|| root.join("-"))
            .to_string_lossy()
            .into_owned()
    })
}

/// The `mirror+file:` URI scheme: a local file listing the mirrors.
const MIRROR_FILE: &str = "mirror+file:";

/// The path of a `mirror+file:` URI (`mirror+file:/p` or `mirror+file:///p`).
fn mirror_file_path(word: &str) -> Option<&str> {
    let rest = word.strip_prefix(MIRROR_FILE)?;
    let path = rest.strip_prefix("//").unwrap_or(rest);
    path.starts_with('/').then_some(path)
}

/// `text` with every `mirror+file:` URI passed through `map` (its path in, the new URI
/// out); comment lines are left alone.
fn each_mirror_file(text: &str, mut map: impl FnMut(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('#') || !line.contains(MIRROR_FILE) {
            out.push_str(line);
            continue;
        }
        let mut word = String::new();
        for c in line.chars() {
            if c.is_whitespace() {
                out.push_str(&mirror_word(&word, &mut map));
                word.clear();
                out.push(c);
            } else {
                word.push(c);
            }
        }
        out.push_str(&mirror_word(&word, &mut map));
    }
    out
}

fn mirror_word(word: &str, map: &mut impl FnMut(&str) -> String) -> String {
    match mirror_file_path(word) {
        Some(path) => map(path),
        None => word.to_string(),
    }
}

/// The mirror-list paths of a sources file's `mirror+file:` URIs.
fn mirror_file_paths(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    each_mirror_file(text, |p| {
        if !out.iter().any(|o| o == p) {
            out.push(p.to_string());
        }
        String::new()
    });
    out
}

/// `text` with every `mirror+file:` URI's path `P` replaced by `root/P`.
fn rewrite_mirror_files(text: &str, root: &Path) -> String {
    each_mirror_file(text, |p| {
        format!(
            "{MIRROR_FILE}//{}",
            under_root(root, p)
                .unwrap_or_else(|| root.join("-"))
                .display()
        )
    })
}

/// A path as apt turns a URI into a file name in its lists directory (`URItoFileName`:
/// the scheme dropped, `%xx` for unsafe bytes, `/` as `_`). A `mirror+file:` source's
/// lists are named after its mirror list's path, so the host's, under `root`, carry
/// this prefix the guest's do not.
fn apt_file_name(path: &str) -> String {
    const BAD: &[u8] = b"\\|{}[]<>\"^~_=!@#$%&*";
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        if BAD.contains(&b) || b <= 0x20 || b >= 0x7f {
            out.push_str(&format!("%{b:02x}"));
        } else if b == b'/' {
            out.push('_');
        } else {
            out.push(b as char);
        }
    }
    out
}

/// Renames the lists of `mirror+file:` sources from the host's names (their mirror
/// list under `root`) to the guest's.
fn rename_mirror_file_lists(lists_dir: &Path, root: &Path) -> Result<()> {
    let prefix = apt_file_name(&root.to_string_lossy());
    for e in
        std::fs::read_dir(lists_dir).with_context(|| format!("listing {}", lists_dir.display()))?
    {
        let e = e.with_context(|| format!("listing {}", lists_dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(&prefix) {
            if rest.starts_with('_') {
                let to = lists_dir.join(rest);
                std::fs::rename(e.path(), &to).with_context(|| {
                    format!("renaming {} to {}", e.path().display(), to.display())
                })?;
            }
        }
    }
    Ok(())
}

/// Calls `map` on every absolute path given as a keyring (one-line `[signed-by=A,B]`,
/// deb822 `Signed-By: A B`; fingerprints and inline keys are left alone) and returns the
/// text with each replaced by what `map` returned.
fn each_keyring_path(text: &str, mut map: impl FnMut(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let trimmed = body.trim_start();
        let lower = trimmed.to_ascii_lowercase();
        if lower.starts_with("signed-by:") {
            // deb822: the value after the colon, words separated by spaces or commas.
            let indent = &body[..body.len() - trimmed.len()];
            let value = &trimmed["signed-by:".len()..];
            out.push_str(indent);
            out.push_str(&trimmed[..="signed-by:".len() - 1]);
            out.push_str(&map_words(value, &mut map));
        } else if (lower.starts_with("deb ") || lower.starts_with("deb-src "))
            && trimmed.contains('[')
        {
            // One-line: options in brackets after the type.
            let open = body.find('[').expect("checked");
            let close = body[open..]
                .find(']')
                .map(|i| open + i)
                .unwrap_or(body.len());
            out.push_str(&body[..open]);
            let options = &body[open..close];
            let mut first = true;
            for opt in options.split(' ') {
                if !first {
                    out.push(' ');
                }
                first = false;
                match opt.split_once('=') {
                    Some((k, v)) if k.trim_start_matches('[').eq_ignore_ascii_case("signed-by") => {
                        out.push_str(k);
                        out.push('=');
                        out.push_str(&map_words(v, &mut map));
                    }
                    _ => out.push_str(opt),
                }
            }
            out.push_str(&body[close..]);
        } else {
            out.push_str(body);
        }
        if line.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// `value` with each absolute path among its space- or comma-separated words mapped.
fn map_words(value: &str, map: &mut impl FnMut(&str) -> String) -> String {
    let mut out = String::with_capacity(value.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String, map: &mut dyn FnMut(&str) -> String| {
        if word.starts_with('/') {
            out.push_str(&map(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in value.chars() {
        if c == ' ' || c == ',' || c == '\t' {
            flush(&mut word, &mut out, map);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out, map);
    out
}

/// The configuration that points apt at the guest's files under `root`. `APT_CONFIG`
/// is read before `apt.conf.d`, so `Dir` makes the guest's `apt.conf.d` the one read;
/// the override, given with `-c`, is read after it. Nothing of the guest's
/// configuration makes the host run a program: the hooks and proxy auto-detection are
/// cleared, the download methods and the solver are apt's own, and no file read from
/// the guest is executable.
pub fn write_config(root: &Path, arches: &[String]) -> Result<()> {
    if let Some(bad) = arches.iter().find(|a| {
        a.is_empty()
            || !a
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }) {
        bail!("the guest names an odd dpkg architecture {bad:?}");
    }
    let quote = |s: &str| s.replace('"', "");
    let r = quote(&root.to_string_lossy());
    let arch_list: String = arches
        .iter()
        .map(|a| format!("\"{}\"; ", quote(a)))
        .collect();
    // The guest's own configuration is only read (`guest.conf`, for `apt-config`); what
    // the host's apt-get runs with is apt's defaults under the root (`apt.conf`, no
    // `apt.conf.d` of anyone's) plus the guest's settings [`adopt_guest_settings`] takes.
    let guest = format!("Dir \"{r}/\";\n");
    std::fs::create_dir_all(root.join("empty.d"))
        .with_context(|| format!("creating {}", root.join("empty.d").display()))?;
    let main = format!(
        "Dir \"{r}/\";\nDir::Etc::parts \"{r}/empty.d/\";\nDir::Etc::main \"/dev/null\";\n"
    );
    let over = format!(
        "Dir \"{r}/\";\n\
         Dir::State::status \"{r}/var/lib/dpkg/status\";\n\
         APT::Architecture \"{a}\";\n\
         #clear APT::Architectures;\n\
         APT::Architectures {{ {arch_list}}};\n\
         Acquire::Languages \"none\";\n\
         APT::Sandbox::User \"root\";\n\
         #clear APT::Update::Pre-Invoke;\n\
         #clear APT::Update::Post-Invoke;\n\
         #clear APT::Update::Post-Invoke-Success;\n\
         #clear DPkg::Pre-Invoke;\n\
         #clear DPkg::Post-Invoke;\n\
         #clear DPkg::Pre-Install-Pkgs;\n\
         #clear Acquire::http::Proxy-Auto-Detect;\n\
         #clear Acquire::https::Proxy-Auto-Detect;\n\
         #clear Acquire::http::ProxyAutoDetect;\n\
         Dir::Bin::Methods \"/usr/lib/apt/methods/\";\n\
         APT::Solver \"internal\";\n\
         APT::Planner \"internal\";\n",
        a = quote(&arches[0]),
    );
    for (name, text) in [
        ("guest.conf", guest),
        ("apt.conf", main),
        ("override.conf", over),
    ] {
        let p = root.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// What the guest's apt configuration says, as far as the host's fetch is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSettings {
    /// Only settings the host's apt took over (or that cannot change which packages
    /// apt chooses) differ from apt's defaults: the host chose as the guest would.
    pub plain: bool,
    /// Settings that could change the choice and were not taken over.
    pub unknown: Vec<String>,
}

/// Reads the guest's apt configuration (never run: `apt-config` only parses, and a
/// file with `#include`, which would read a file of the host, is refused), and adds to
/// the host's `apt.conf` the guest's settings that decide what is fetched and chosen
/// (proxies, release pins, recommends, validity checks, index compression). Nothing
/// that names a program or a path of the host is taken over.
pub fn adopt_guest_settings(root: &Path, names: &PathNames) -> Result<GuestSettings> {
    for f in std::iter::once(root.join("etc/apt/apt.conf")).chain(
        std::fs::read_dir(root.join("etc/apt/apt.conf.d"))
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_else(|_| Vec::new()),
    ) {
        if let Ok(text) = std::fs::read_to_string(&f) {
            if text.to_ascii_lowercase().contains("#include") {
                bail!("{} uses #include: left to the guest", f.display());
            }
        }
    }
    let dump = |conf: &str| -> Result<Vec<(String, String)>> {
        let out = apt_config(root, conf, "reading the guest's apt configuration", names)
            .arg("dump")
            .run()?
            .stdout_str();
        Ok(parse_dump(&out))
    };
    let (base, guest) = (dump("apt.conf")?, dump("guest.conf")?);
    let mut adopted = String::new();
    let mut unknown = Vec::new();
    for (key, value) in &guest {
        if base.iter().any(|(k, v)| k == key && v == value) {
            continue;
        }
        match setting(key) {
            Setting::Adopt => {
                let _ = writeln!(adopted, "{key} \"{value}\";");
            }
            Setting::Ignore => {}
            Setting::Unknown => unknown.push(key.trim_end_matches(':').to_string()),
        }
    }
    for (key, _) in &base {
        if !guest.iter().any(|(k, _)| k == key) && setting(key) == Setting::Unknown {
            unknown.push(key.trim_end_matches(':').to_string());
        }
    }
    unknown.sort();
    unknown.dedup();
    if !adopted.is_empty() {
        let p = root.join("apt.conf");
        let mut text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        text.push_str(&adopted);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(GuestSettings {
        plain: unknown.is_empty(),
        unknown,
    })
}

/// `apt-config dump`'s lines (`Key "value";`, list items `Key:: "value";`) as pairs;
/// values with a quote or a line break are dropped (apt-config prints none).
fn parse_dump(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (k, rest) = l.split_once(" \"")?;
            let v = rest.strip_suffix("\";")?;
            (!k.is_empty() && !v.contains('"') && !k.contains(char::is_whitespace))
                .then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    /// Decides what is fetched or chosen, and names no program or host path: the host's
    /// apt takes it over.
    Adopt,
    /// Changes nothing of what `install --download-only` fetches and chooses (paths
    /// under the root, hooks, dpkg, the transport's own details): not taken over.
    Ignore,
    /// Could change the choice: not taken over, and the guest resolves from its full lists.
    Unknown,
}

/// How the host treats a setting of the guest's apt configuration.
fn setting(key: &str) -> Setting {
    let k = key.to_ascii_lowercase();
    let k = k.trim_end_matches(':');
    const ADOPT: &[&str] = &[
        "acquire::http::proxy",
        "acquire::https::proxy",
        "acquire::ftp::proxy",
        "acquire::check-valid-until",
        "acquire::check-date",
        "acquire::max-validtime",
        "acquire::min-validtime",
        "acquire::allowinsecurerepositories",
        "acquire::allowweakrepositories",
        "acquire::allowdowngradetoinsecurerepositories",
        "acquire::by-hash",
        "acquire::gzipindexes",
        "acquire::compressiontypes",
        "acquire::pdiffs",
        "apt::default-release",
        "apt::install-recommends",
        "apt::install-suggests",
        "apt::get::allowunauthenticated",
    ];
    const IGNORE: &[&str] = &[
        "dir",
        "dpkg",
        "binary",
        "debug",
        "quiet",
        "dselect",
        "aptlistbugs",
        "unattended-upgrade",
        "acquire::languages",
        "acquire::retries",
        "acquire::http",
        "acquire::https",
        "acquire::ftp",
        "acquire::cdrom",
        "acquire::gpgv",
        "acquire::changelogs",
        "acquire::indextargets",
        "apt::architecture",
        "apt::architectures",
        "apt::sandbox",
        "apt::update",
        "apt::periodic",
        "apt::keep-downloaded-packages",
        "apt::neverautoremove",
        "apt::versionedkernelpackages",
        "apt::never-markauto-sections",
        "apt::move-autobit-sections",
        "apt::autoremove",
        "apt::compressor",
        "apt::color",
        "apt::cmd",
        "apt::changelogs",
        "apt::key",
        "apt::authentication",
        "apt::build-essential",
        "apt::status-fd",
        "apt::keep-fds",
    ];
    let within = |p: &&str| k == *p || k.starts_with(&format!("{p}::"));
    // Proxy auto-detection names a program: never taken over.
    if k.contains("proxy-auto-detect") || k.contains("proxyautodetect") {
        return Setting::Ignore;
    }
    if ADOPT.iter().any(within) {
        Setting::Adopt
    } else if IGNORE.iter().any(within) {
        Setting::Ignore
    } else {
        Setting::Unknown
    }
}

/// `apt-config` with the configuration file `conf` of `root` (only parses: runs
/// nothing the configuration names).
fn apt_config(root: &Path, conf: &str, description: &str, names: &PathNames) -> Cmd {
    Cmd::new("apt-config", description)
        .internal()
        .named(names)
        .env("APT_CONFIG", root.join(conf))
        .env("LC_ALL", "C")
        .timeout(Duration::from_secs(60))
}

/// An apt command on the guest's files. Internal, like the appliance's own calls: it
/// runs only when the appliance finds an apt guest, so `plan` describes it in the
/// package step's text rather than listing it as a command.
pub fn apt(root: &Path, program: &str, description: &str, names: &PathNames) -> Cmd {
    Cmd::new(program, description)
        .internal()
        .named(names)
        .env("APT_CONFIG", root.join("apt.conf"))
        .env("LC_ALL", "C")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .arg("-c")
        .arg(root.join("override.conf"))
        .timeout(HOST_FETCH_TIMEOUT)
}

/// The host's `apt-get update` of the guest's lists. Any list that cannot be fetched
/// fails it (`--error-on=any`): with some lists missing, the host's apt could choose
/// other packages than the guest's would.
pub fn update_cmd(root: &Path, names: &PathNames) -> Cmd {
    apt(
        root,
        "apt-get",
        "updating the guest's package lists on the host",
        names,
    )
    .args(["-q", "--error-on=any", "update"])
}

fn fetch(
    root: PathBuf,
    packages: &[String],
    keep_lists: bool,
    names: &PathNames,
) -> Result<Fetched> {
    let started = Instant::now();
    if let Some(bad) = packages.iter().find(|p| p.starts_with('-') || p.is_empty()) {
        bail!("{bad:?} is not a package name");
    }
    let settings = adopt_guest_settings(&root, names)?;
    update_cmd(&root, names).run()?;
    apt(
        &root,
        "apt-get",
        "downloading the guest's packages on the host",
        names,
    )
    .args([
        "-q",
        "-y",
        "--no-install-recommends",
        "--download-only",
        "install",
        "--",
    ])
    .args(packages)
    .run()?;
    // Where the host's apt keeps them (its defaults under the root), and where the
    // guest's does (its own configuration, read only).
    let dirs = |conf: &str| -> Result<(PathBuf, PathBuf)> {
        let shell = apt_config(&root, conf, "reading where apt keeps its files", names)
            .args([
                "shell",
                "LISTS",
                "Dir::State::lists/d",
                "ARCHIVES",
                "Dir::Cache::archives/d",
            ])
            .run()?
            .stdout_str();
        let dir_of = |name: &str| -> Result<PathBuf> {
            shell
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .map(|v| PathBuf::from(v.trim_matches('\'')))
                .with_context(|| format!("apt-config printed no {name}: {shell:?}"))
        };
        Ok((dir_of("LISTS")?, dir_of("ARCHIVES")?))
    };
    let (lists_dir, archives_dir) = dirs("apt.conf")?;
    let (guest_lists_dir, guest_archives_dir) = dirs("guest.conf")?;
    rename_mirror_file_lists(&lists_dir, &root)?;
    let in_guest = |p: &Path| -> Result<String> {
        let rel = p.strip_prefix(&root).with_context(|| {
            format!(
                "the guest's apt keeps files outside its root: {}",
                p.display()
            )
        })?;
        Ok(format!("/{}", rel.to_string_lossy().trim_end_matches('/')))
    };
    let files = |dir: &Path, keep: &dyn Fn(&str) -> bool| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(keep))
            .collect();
        v.sort();
        Ok(v)
    };
    let lists = files(&lists_dir, &|n| n != "lock")?;
    if lists.is_empty() {
        bail!("apt-get update on the host fetched no lists");
    }
    let debs = files(&archives_dir, &|n| n.ends_with(".deb"))?;
    // The install reads lists cut down to what the host chose only when the host chose
    // as the guest would: the same apt, and no setting of the guest's that the host did
    // not take over. Otherwise it reads the full lists and resolves for itself (the
    // packages the host fetched still serve, checked by their hashes).
    let same_apt = host_apt_version()? == guest_apt_version(&root.join("var/lib/dpkg/status"));
    let trim = settings.plain && same_apt;
    if !trim {
        tracing::debug!(
            "the guest's apt resolves from its full lists: {}",
            if same_apt {
                format!("its configuration sets {}", settings.unknown.join(", "))
            } else {
                "its apt is another version than the host's".to_string()
            }
        );
    }
    let trimmed = trim_lists(&root.join("trimmed"), &lists, trim.then_some(&debs[..]))?;
    Ok(Fetched {
        trimmed,
        keep_lists,
        guest_lists: in_guest(&guest_lists_dir)?,
        guest_archives: in_guest(&guest_archives_dir)?,
        root,
        lists,
        debs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The host's apt version (`apt-get --version`: `apt 2.6.1 (amd64)`).
fn host_apt_version() -> Result<Option<String>> {
    let out = Cmd::new("apt-get", "reading the host's apt version")
        .internal()
        .arg("--version")
        .timeout(Duration::from_secs(30))
        .run()?
        .stdout_str();
    Ok(out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("apt "))
        .and_then(|l| l.split_whitespace().next())
        .map(String::from))
}

/// The version of the guest's `apt` package, from its dpkg status.
fn guest_apt_version(status: &Path) -> Option<String> {
    let text = std::fs::read_to_string(status).ok()?;
    paragraphs(&text)
        .into_iter()
        .find(|p| field(p, "Package").as_deref() == Some("apt"))
        .and_then(|p| field(&p, "Version"))
}

/// The paragraphs of a deb822 text (blank or whitespace-only lines between them; CR
/// line ends accepted), each as its lines.
fn paragraphs(text: &str) -> Vec<Vec<&str>> {
    let mut out = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(line);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A field of a paragraph (field names are case-insensitive).
fn field(para: &[&str], name: &str) -> Option<String> {
    para.iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (!k.starts_with(char::is_whitespace) && k.eq_ignore_ascii_case(name))
            .then(|| v.trim().to_string())
    })
}

/// Writes into `dir` the release files of `lists` and their package indexes, cut down
/// to the entries of `debs` when given (named `PACKAGE_VERSION_ARCH.deb`, `:` and `_` quoted as
/// apt quotes them). Other indexes (translations, contents, sources) are left out: an
/// install reads none of them.
fn trim_lists(dir: &Path, lists: &[PathBuf], debs: Option<&[PathBuf]>) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let wanted: Option<std::collections::BTreeSet<(String, String, String)>> = debs.map(|debs| {
        debs.iter()
            .filter_map(|p| p.file_name()?.to_str().map(deb_identity))
            .flatten()
            .collect()
    });
    let mut out = Vec::new();
    for p in lists {
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let to = dir.join(name);
        if name.ends_with("_InRelease")
            || name.ends_with("_Release")
            || name.ends_with("_Release.gpg")
        {
            std::fs::copy(p, &to).with_context(|| format!("copying {}", p.display()))?;
        } else if let (true, Some(wanted)) = (name.ends_with("_Packages"), &wanted) {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            std::fs::write(&to, keep_entries(&text, wanted))
                .with_context(|| format!("writing {}", to.display()))?;
        } else if name.ends_with("_Packages") || name.contains("_Packages.") {
            // Whole: not cut down, or compressed (the guest's apt keeps them so), as the
            // guest's own update would leave it.
            std::fs::copy(p, &to).with_context(|| format!("copying {}", p.display()))?;
        } else {
            continue;
        }
        out.push(to);
    }
    Ok(out)
}

/// `(package, version, architecture)` of an archive file name apt gave a `.deb`.
fn deb_identity(file: &str) -> Option<(String, String, String)> {
    let stem = file.strip_suffix(".deb")?;
    let mut parts = stem.split('_');
    let (p, v, a) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((unquote(p), unquote(v), unquote(a)))
}

/// apt's `%xx` quoting undone.
fn unquote(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The paragraphs of a package index whose package, version and architecture are in
/// `wanted`, in their order, each followed by a blank line.
fn keep_entries(
    text: &str,
    wanted: &std::collections::BTreeSet<(String, String, String)>,
) -> String {
    let mut out = String::new();
    for para in paragraphs(text) {
        let (Some(p), Some(v), Some(a)) = (
            field(&para, "Package"),
            field(&para, "Version"),
            field(&para, "Architecture"),
        ) else {
            continue;
        };
        if wanted.contains(&(p, v, a)) {
            for l in para {
                out.push_str(l);
                out.push('\n');
            }
            out.push('\n');
        }
    }
    out
}

/// A tarball of `files` by their names, owned by root, mode 0644.
fn write_tar(path: &Path, files: &[PathBuf]) -> Result<()> {
    let out =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(out));
    for p in files {
        let name = p
            .file_name()
            .with_context(|| format!("{} has no file name", p.display()))?;
        let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        let meta = f
            .metadata()
            .with_context(|| format!("reading {}", p.display()))?;
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(meta.len());
        h.set_mtime(
            meta.modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, f)
            .with_context(|| format!("adding {} to {}", p.display(), path.display()))?;
    }
    std::io::Write::flush(
        &mut b
            .into_inner()
            .with_context(|| format!("finishing {}", path.display()))?,
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_paths_are_found_in_both_formats_and_nothing_else() {
        let one_line = "deb [arch=amd64 signed-by=/usr/share/keyrings/a.gpg] http://x/ y main\n\
                        deb http://z/ w main\n\
                        # deb [signed-by=/commented.gpg] http://c/ c main\n\
                        deb-src [Signed-By=/k/b.gpg,/k/c.gpg] http://x/ y main\n";
        assert_eq!(
            keyring_paths(one_line),
            ["/usr/share/keyrings/a.gpg", "/k/b.gpg", "/k/c.gpg"]
        );
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\n\
                      Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                      Types: deb\nURIs: http://other/\nSuites: s\nComponents: c\n\
                      Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBGP/abc\n \
                      -----END PGP PUBLIC KEY BLOCK-----\n\n\
                      Types: deb\nURIs: http://fp/\nSuites: s\nComponents: c\n\
                      signed-by: 0123456789ABCDEF0123456789ABCDEF01234567\n";
        assert_eq!(
            keyring_paths(deb822),
            ["/usr/share/keyrings/debian-archive-keyring.gpg"]
        );
    }

    #[test]
    fn keyring_paths_are_pointed_under_the_root_and_the_rest_is_unchanged() {
        let root = Path::new("/r/host-apt");
        let text = "deb [arch=amd64 signed-by=/k/a.gpg] http://x/ y main\n\
                    Types: deb\n  Signed-By: /k/b.gpg 0123ABCD\nSuites: s";
        assert_eq!(
            rewrite_keyring_paths(text, root),
            "deb [arch=amd64 signed-by=/r/host-apt/k/a.gpg] http://x/ y main\n\
             Types: deb\n  Signed-By: /r/host-apt/k/b.gpg 0123ABCD\nSuites: s"
        );
        let plain = "deb http://deb.debian.org/debian bookworm main\n";
        assert_eq!(rewrite_keyring_paths(plain, root), plain);
    }

    #[test]
    fn package_indexes_keep_exactly_the_downloaded_entries() {
        let debs: Vec<PathBuf> = [
            "tmux_3.3a-3_amd64.deb",
            "libfoo_1%3a2.0-1_all.deb",
            "not-a-deb.txt",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let wanted: std::collections::BTreeSet<_> = debs
            .iter()
            .filter_map(|p| deb_identity(p.to_str().unwrap()))
            .collect();
        assert!(wanted.contains(&("libfoo".into(), "1:2.0-1".into(), "all".into())));
        assert_eq!(wanted.len(), 2);
        let index = "Package: htop\nVersion: 3.2.2-2\nArchitecture: amd64\n\n\
                     Package: tmux\nVersion: 3.3a-3\nArchitecture: amd64\nDepends: libc6\n\n\
                     Package: tmux\nVersion: 3.3a-3\nArchitecture: arm64\n\n\
                     Package: libfoo\nVersion: 1:2.0-1\nArchitecture: all\nDescription: x\n more\n\n\
                     Package: libfoo\nVersion: 1:2.0-2\nArchitecture: all\n";
        assert_eq!(
            keep_entries(index, &wanted),
            "Package: tmux\nVersion: 3.3a-3\nArchitecture: amd64\nDepends: libc6\n\n\
             Package: libfoo\nVersion: 1:2.0-1\nArchitecture: all\nDescription: x\n more\n\n"
        );
    }

    #[test]
    fn mirror_file_sources_read_the_guests_list_and_their_lists_get_the_guests_names() {
        // Debian's cloud images.
        let text = "Types: deb deb-src\nURIs: mirror+file:///etc/apt/mirrors/debian.list\n\
                    Suites: bookworm\nComponents: main\n\
                    # URIs: mirror+file:///commented.list\n\
                    deb mirror+file:/etc/apt/mirrors/security.list bookworm-security main\n\
                    deb mirror+http://mirrors.example/list bookworm main\n";
        assert_eq!(
            mirror_file_paths(text),
            [
                "/etc/apt/mirrors/debian.list",
                "/etc/apt/mirrors/security.list"
            ]
        );
        let root = Path::new("/c/builds/build-a_b/host-apt");
        let rewritten = rewrite_mirror_files(text, root);
        assert!(rewritten.contains(
            "URIs: mirror+file:///c/builds/build-a_b/host-apt/etc/apt/mirrors/debian.list\n"
        ));
        assert!(rewritten.contains(
            "deb mirror+file:///c/builds/build-a_b/host-apt/etc/apt/mirrors/security.list bookworm-security main\n"
        ));
        assert!(rewritten.contains("# URIs: mirror+file:///commented.list\n"));
        assert!(rewritten.contains("deb mirror+http://mirrors.example/list bookworm main\n"));
        // apt's names: `/` as `_`, a `_` of the path quoted.
        assert_eq!(
            apt_file_name("/c/builds/build-a_b/host-apt"),
            "_c_builds_build-a%5fb_host-apt"
        );
        let t = tempfile::tempdir().unwrap();
        let host = format!(
            "{}_etc_apt_mirrors_debian.list_dists_bookworm_InRelease",
            apt_file_name(&root.to_string_lossy())
        );
        std::fs::write(t.path().join(&host), "x").unwrap();
        std::fs::write(
            t.path()
                .join("deb.debian.org_debian_dists_bookworm_InRelease"),
            "y",
        )
        .unwrap();
        rename_mirror_file_lists(t.path(), root).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "_etc_apt_mirrors_debian.list_dists_bookworm_InRelease",
                "deb.debian.org_debian_dists_bookworm_InRelease"
            ]
        );
    }

    #[test]
    fn paths_a_source_names_stay_under_the_root() {
        let root = Path::new("/c/host-apt");
        assert_eq!(
            under_root(root, "/../../../../home/u/.bashrc"),
            Some(PathBuf::from("/c/host-apt/home/u/.bashrc"))
        );
        assert_eq!(
            under_root(root, "/usr/./share/../share/keyrings/k.gpg"),
            Some(PathBuf::from("/c/host-apt/usr/share/keyrings/k.gpg"))
        );
        assert_eq!(under_root(root, "/.."), None);
        assert_eq!(
            rewrite_keyring_paths("deb [signed-by=/../../etc/k.gpg] http://x/ y main\n", root),
            "deb [signed-by=/c/host-apt/etc/k.gpg] http://x/ y main\n"
        );
        assert_eq!(
            rewrite_mirror_files("URIs: mirror+file:///../../m.list\n", root),
            "URIs: mirror+file:///c/host-apt/m.list\n"
        );
    }

    #[test]
    fn sources_that_read_local_files_are_left_to_the_guest() {
        assert_eq!(
            local_uri("deb [trusted=yes] file:/srv/repo ./\n").as_deref(),
            Some("file:/srv/repo")
        );
        assert!(local_uri("URIs: copy:///media/x\n").is_some());
        assert!(local_uri("deb cdrom:[Debian]/ bookworm main\n").is_some());
        assert_eq!(
            local_uri("# deb file:/x ./\nURIs: mirror+file:///etc/apt/m.list\n"),
            None
        );
    }

    #[test]
    fn the_guests_settings_are_taken_over_ignored_or_kept_from_trimming() {
        assert_eq!(setting("Acquire::http::Proxy"), Setting::Adopt);
        assert_eq!(setting("Acquire::http::Proxy::deb.example"), Setting::Adopt);
        assert_eq!(setting("Acquire::http::Proxy-Auto-Detect"), Setting::Ignore);
        assert_eq!(setting("Acquire::https::ProxyAutoDetect"), Setting::Ignore);
        assert_eq!(setting("APT::Default-Release"), Setting::Adopt);
        assert_eq!(setting("Dir::Bin::Methods::http"), Setting::Ignore);
        assert_eq!(setting("DPkg::Post-Invoke::"), Setting::Ignore);
        assert_eq!(
            setting("APT::Update::Post-Invoke-Success::"),
            Setting::Ignore
        );
        assert_eq!(setting("APT::Solver"), Setting::Unknown);
        assert_eq!(setting("APT::Get::Upgrade-Allow-New"), Setting::Unknown);
        assert_eq!(
            parse_dump(
                "APT \"\";\nAPT::Default-Release \"bookworm\";\nDPkg::Post-Invoke:: \"x y\";\n"
            ),
            [
                ("APT".to_string(), String::new()),
                ("APT::Default-Release".to_string(), "bookworm".to_string()),
                ("DPkg::Post-Invoke::".to_string(), "x y".to_string())
            ]
        );
    }

    #[test]
    fn paragraphs_end_at_blank_or_whitespace_lines_with_crlf_too() {
        let text = "Package: a\r\nVersion: 1\r\n \r\nPackage: b\nDescription: x\n .\n more\n\n\n";
        let ps = paragraphs(text);
        assert_eq!(ps.len(), 2, "{ps:?}");
        assert_eq!(field(&ps[0], "version").as_deref(), Some("1"));
        assert_eq!(field(&ps[1], "Package").as_deref(), Some("b"));
        assert_eq!(guest_apt_version(Path::new("/nonexistent")), None);
    }

    #[test]
    fn the_guests_repository_credentials_are_found_for_masking() {
        let t = tempfile::tempdir().unwrap();
        let etc = t.path().join("etc/apt");
        std::fs::create_dir_all(etc.join("auth.conf.d")).unwrap();
        std::fs::write(
            etc.join("auth.conf.d/private.conf"),
            "machine repo.example/debian login builder password s3cret-token\n",
        )
        .unwrap();
        std::fs::write(
            etc.join("sources.list"),
            "deb https://mirror-user:mirror-pass@mirror.example/debian bookworm main\n\
             deb http://deb.debian.org/debian bookworm main\n",
        )
        .unwrap();
        let found = credentials(t.path());
        for secret in [
            "builder",
            "s3cret-token",
            "mirror-user:mirror-pass",
            "mirror-pass",
        ] {
            assert!(found.iter().any(|f| f == secret), "{secret}: {found:?}");
        }
        // A host name is not a credential.
        assert!(
            !found.iter().any(|f| f.contains("deb.debian.org")),
            "{found:?}"
        );
    }

    #[test]
    fn only_plain_relative_paths_are_unpacked() {
        assert_eq!(relative(Path::new("./a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(relative(Path::new("./")), None);
        assert_eq!(relative(Path::new("../etc/passwd")), None);
        assert_eq!(relative(Path::new("/etc/passwd")), None);
    }
}
