//! Semantic checks of a merged recipe: what the types alone cannot say. Every problem
//! is collected (with the key path it concerns), so a file's errors come all at once.
//! Apart from resolving the real paths of files the recipe names, nothing here does
//! I/O.

use std::path::Path;

use super::diag::Seg;
use super::host::{file_url_path, written_outside, HostAccess};
use super::{Recipe, Secret, Size, TtydSource};

/// Problems found: the key path and what is wrong.
pub type Issues = Vec<(Vec<Seg>, String)>;

fn k(parts: &[&str]) -> Vec<Seg> {
    parts.iter().map(|p| Seg::key(p)).collect()
}

fn ki(a: &str, b: &str, i: usize, c: &str) -> Vec<Seg> {
    vec![Seg::key(a), Seg::key(b), Seg::Index(i), Seg::key(c)]
}

/// Checks a merged recipe.
pub fn check(r: &Recipe, issues: &mut Issues) {
    if r.version != 1 {
        issues.push((
            k(&["version"]),
            format!("unsupported recipe version {} (only 1 exists)", r.version),
        ));
    }
    check_output(r, issues);
    if r.partial {
        return;
    }
    check_base(r, issues);
    if let Some(Size::Relative(0)) | Some(Size::Absolute(0)) = r.disk.size {
        issues.push((
            k(&["disk", "size"]),
            "the disk size must be larger than zero".into(),
        ));
    }
    if let Some(p) = &r.disk.grow.partition {
        if !p.starts_with("/dev/") {
            issues.push((
                k(&["disk", "grow", "partition"]),
                format!("{p:?} is not a device such as /dev/sda1"),
            ));
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, u) in r.customize.users.iter().enumerate() {
        let at = ki("customize", "users", i, "name");
        if !valid_name(&u.name) {
            issues.push((at.clone(), format!("{:?} is not a valid user name", u.name)));
        }
        if !names.insert(u.name.clone()) {
            issues.push((at, format!("user {} is listed twice", u.name)));
        }
    }
    for (i, g) in r.customize.groups.iter().enumerate() {
        if !valid_name(&g.name) {
            issues.push((
                ki("customize", "groups", i, "name"),
                format!("{:?} is not a valid group name", g.name),
            ));
        }
    }
    for (i, f) in r.customize.files.iter().enumerate() {
        if f.content.is_some() == f.source.is_some() {
            issues.push((
                ki("customize", "files", i, "path"),
                format!("file {}: give exactly one of content and source", f.path.0),
            ));
        }
    }
    if let Some(tz) = &r.customize.timezone {
        if tz.contains("..") || tz.starts_with('/') || tz.contains(' ') {
            issues.push((
                k(&["customize", "timezone"]),
                format!("{tz:?} is not an IANA time zone such as Europe/Berlin"),
            ));
        }
    }
    if let Some(h) = &r.customize.hostname {
        if h.is_empty()
            || h.len() > 63
            || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            || h.starts_with('-')
        {
            issues.push((
                k(&["customize", "hostname"]),
                format!("{h:?} is not a valid host name"),
            ));
        }
    }
    check_ttyd(r, issues);
    check_desktop(r, issues);
}

/// An image name: what the default destination `oci:out/NAME` and the `{name}` tag
/// template take, so a plain file name that is also a valid tag.
pub fn valid_image_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !n.starts_with(['.', '-'])
}

/// A repository as the distribution spec writes it: `[HOST[:PORT]/]PATH`, where PATH
/// has at least one component (two without a host) and every component is lowercase
/// letters and digits joined by `.`, `_`, `__` or runs of `-`. No `..`, no empty
/// component, nothing a path or URL could be steered with.
fn valid_repository(repo: &str) -> bool {
    let mut parts: Vec<&str> = repo.split('/').collect();
    if parts.len() < 2 {
        return false;
    }
    let first = parts[0];
    if first.contains('.') || first.contains(':') || first == "localhost" {
        let (host, port) = match first.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (first, None),
        };
        let host_ok = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        if !host_ok || !port_ok {
            return false;
        }
        parts.remove(0);
    }
    parts.iter().all(|c| path_component(c))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn path_component(c: &str) -> bool {
    let alnum = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
    if !c.starts_with(alnum) || !c.ends_with(alnum) {
        return false;
    }
    c.split(alnum)
        .filter(|sep| !sep.is_empty())
        .all(|sep| sep == "." || sep == "_" || sep == "__" || sep.chars().all(|ch| ch == '-'))
}

fn check_base(r: &Recipe, issues: &mut Issues) {
    let Some(base) = &r.base else {
        issues.push((
            k(&["base"]),
            "the recipe has no base: give base.catalog, base.url or base.path".into(),
        ));
        return;
    };
    let sources = [
        base.catalog.is_some(),
        base.url.is_some(),
        base.path.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if sources != 1 {
        issues.push((
            k(&["base"]),
            "give exactly one of base.catalog, base.url and base.path".into(),
        ));
    }
    if let Some(url) = &base.url {
        match file_url_path(url) {
            Some(Err(problem)) => issues.push((k(&["base", "url"]), problem)),
            Some(Ok(_)) if base.checksum.is_some() => issues.push((
                k(&["base", "checksum"]),
                "a file:// base is read in place, like base.path, and its checksum is not checked: remove checksum".into(),
            )),
            Some(Ok(_)) => {}
            None if !(url.starts_with("http://") || url.starts_with("https://")) => {
                issues.push((
                    k(&["base", "url"]),
                    format!("{url:?} is not an http(s) or file:// URL"),
                ))
            }
            None => {}
        }
        if base.checksum.is_none() && file_url_path(url).is_none() {
            issues.push((
                k(&["base", "url"]),
                "a downloaded base needs a checksum (a literal sha256:/sha512: value or a checksum file); write `checksum: none` to opt out explicitly".into(),
            ));
        }
    }
    if let Some(super::ChecksumSpec::File(f)) = &base.checksum {
        if f.signature_url.is_some() && f.signing_key.is_none() {
            issues.push((
                k(&["base", "checksum", "signature-url"]),
                "a signature without a signing-key cannot be verified: add signing-key (a key file next to the recipe or a URL)".into(),
            ));
        }
    }
}

fn check_ttyd(r: &Recipe, issues: &mut Issues) {
    if !r.ttyd.enabled {
        return;
    }
    if r.ttyd.port == 0 {
        issues.push((k(&["ttyd", "port"]), "ttyd.port must be 1-65535".into()));
    }
    if r.ttyd.command.is_empty() {
        issues.push((
            k(&["ttyd", "command"]),
            "ttyd.command must name a program (default: login)".into(),
        ));
    }
    if let TtydSource::Url(u) = &r.ttyd.source {
        if !(u.url.starts_with("http://") || u.url.starts_with("https://")) {
            issues.push((
                k(&["ttyd", "source", "url"]),
                format!("{:?} is not an http(s) URL", u.url),
            ));
        }
        if matches!(u.sha256, super::Checksum::None) {
            issues.push((
                k(&["ttyd", "source", "sha256"]),
                "the ttyd download must be pinned by its sha256".into(),
            ));
        }
    }
}

fn check_desktop(r: &Recipe, issues: &mut Issues) {
    let d = &r.desktop;
    if !d.enabled {
        return;
    }
    if d.port == 0 {
        issues.push((
            k(&["desktop", "port"]),
            "desktop.port must be 1-65535".into(),
        ));
    } else if r.ttyd.enabled && r.ttyd.port == d.port {
        issues.push((
            k(&["desktop", "port"]),
            format!("desktop.port {} is ttyd's port too", d.port),
        ));
    } else if d.port == DESKTOP_VNC_PORT {
        issues.push((
            k(&["desktop", "port"]),
            format!("desktop.port {DESKTOP_VNC_PORT} is the VNC server's own port in the guest"),
        ));
    }
    match &d.user {
        None => issues.push((
            k(&["desktop"]),
            "desktop.user is required: the session runs as that user (a recipe user or one the base has)".into(),
        )),
        Some(u) if u == "root" => issues.push((
            k(&["desktop", "user"]),
            "the desktop session must not run as root: name an ordinary user".into(),
        )),
        Some(_) => {}
    }
    if parse_geometry(&d.geometry).is_none() {
        issues.push((
            k(&["desktop", "geometry"]),
            format!(
                "{:?} is not WIDTHxHEIGHT (e.g. 1280x800, each 64-8192)",
                d.geometry
            ),
        ));
    }
    if d.credential.is_none() {
        issues.push((
            k(&["desktop"]),
            "desktop.credential is required: the VNC password noVNC asks for ({env: NAME} or {file: PATH})".into(),
        ));
    }
    if let super::DesktopSession::Custom(c) = &d.session {
        if c.command.is_empty() {
            issues.push((
                k(&["desktop", "session", "command"]),
                "desktop.session.command must name a program".into(),
            ));
        }
    }
}

/// The VNC server's port in the guest (display :1), on the guest's localhost only.
pub const DESKTOP_VNC_PORT: u16 = 5901;

/// `WIDTHxHEIGHT`, each 64-8192.
pub fn parse_geometry(g: &str) -> Option<(u32, u32)> {
    let (w, h) = g.split_once('x')?;
    let n = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
            .filter(|v| (64..=8192).contains(v))
    };
    Some((n(w)?, n(h)?))
}

/// A VNC password as VNC authentication uses it: 6 to 8 characters (the protocol takes
/// the first 8 bytes only, so a longer one would be silently cut), printable ASCII.
pub fn check_vnc_password(p: &str) -> Result<(), String> {
    if !(6..=8).contains(&p.len()) {
        return Err(format!(
            "the desktop credential must be 6 to 8 characters long (VNC authentication uses 8 at most), not {}",
            p.len()
        ));
    }
    if !p.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the desktop credential must be printable ASCII without spaces".into());
    }
    Ok(())
}

fn check_output(r: &Recipe, issues: &mut Issues) {
    if let Some(n) = &r.name {
        if !valid_image_name(n) {
            issues.push((
                k(&["name"]),
                format!("{n:?} is not a plain image name such as ubuntu-24.04-lab: letters, digits, '.', '_' and '-', not starting with '.' or '-' (it names the output directory out/NAME and may appear in tags)"),
            ));
        }
    }
    let o = &r.output;
    for t in &o.tags {
        let probe = t
            .replace("{date}", "20260101")
            .replace("{version}", "1")
            .replace("{git_sha}", "abc")
            .replace("{name}", "x")
            .replace("{arch}", "amd64");
        if crate::oci::layout::validate_tag(&probe).is_err() {
            issues.push((
                k(&["output", "tags"]),
                format!("{t:?} is not a valid tag (templates: {{date}}, {{version}}, {{git_sha}}, {{name}}, {{arch}})"),
            ));
        }
        if t.contains("{version}") && o.version.is_none() {
            issues.push((
                k(&["output", "tags"]),
                format!("tag {t:?} uses {{version}} but output.version is not set"),
            ));
        }
    }
    if o.tags.is_empty() {
        issues.push((
            k(&["output", "tags"]),
            "output.tags must name at least one tag".into(),
        ));
    }
    if let Some(repo) = &o.repository {
        if !valid_repository(repo) {
            issues.push((
                k(&["output", "repository"]),
                format!("{repo:?} is not a repository such as registry.example.com/lab/image (lowercase path components of letters and digits joined by '.', '_', '__' or '-')"),
            ));
        }
    }
    if crate::oci::layer::check_level(o.compression, o.compression_level).is_err() {
        issues.push((
            k(&["output", "compression-level"]),
            "gzip levels are 1-9, zstd levels 1-19".into(),
        ));
    }
    if crate::oci::layer::validate_disk_name(&o.disk_name).is_err() {
        issues.push((
            k(&["output", "disk-name"]),
            format!(
                "{:?} must be a plain file name such as disk.qcow2",
                o.disk_name
            ),
        ));
    }
}

/// Files the recipe names must really lie inside its directory: the path as written
/// (no `..`, not absolute) and the file it resolves to (a symlink to `/etc/shadow` is
/// refused). The base and copied files may also lie in a directory the command line
/// allows (`host`), judged by their real paths; the `--base` file is always allowed.
/// Secrets and the ttyd binary stay in the recipe's directory. Files that do not exist
/// yet are reported too.
pub fn check_files(r: &Recipe, dir: &Path, host: &HostAccess, issues: &mut Issues) {
    let root = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let confined = HostAccess::default();
    let mut check = |path: Vec<Seg>, rel: &Path, reach: Reach| {
        let access = match reach {
            Reach::Recipe => &confined,
            Reach::Base | Reach::Allowed => host,
        };
        if let Some(problem) = located(&root, dir, rel, access, reach) {
            issues.push((path, problem));
        }
    };
    if let Some(b) = &r.base {
        if let Some(p) = &b.path {
            check(k(&["base", "path"]), Path::new(p), Reach::Base);
        }
        if let Some(Some(Ok(p))) = b.url.as_deref().map(file_url_path) {
            check(k(&["base", "url"]), &p, Reach::Base);
        }
    }
    for (i, f) in r.customize.files.iter().enumerate() {
        if let Some(src) = &f.source {
            check(
                ki("customize", "files", i, "source"),
                Path::new(&src.0),
                Reach::Allowed,
            );
        }
    }
    if let TtydSource::Path(p) = &r.ttyd.source {
        check(k(&["ttyd", "source", "path"]), &p.0, Reach::Recipe);
    }
    let mut secret = |path: Vec<Seg>, s: &Secret| {
        if let Secret::File(f) = s {
            check(path, Path::new(f), Reach::Recipe);
        }
    };
    for (i, u) in r.customize.users.iter().enumerate() {
        if let Some(p) = &u.password {
            secret(ki("customize", "users", i, "password"), p);
        }
    }
    if let Some(p) = &r.customize.root_password {
        secret(k(&["customize", "root-password"]), p);
    }
    if let Some(c) = &r.ttyd.credential {
        secret(k(&["ttyd", "credential", "password"]), &c.password);
    }
    if let Some(c) = &r.desktop.credential {
        secret(k(&["desktop", "credential"]), c);
    }
}

/// How far a file the recipe names may lie from the recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Only in the recipe's directory (secrets, the ttyd binary).
    Recipe,
    /// Also in directories the command line allows (copied files).
    Allowed,
    /// The base: also in allowed directories, or the `--base` file.
    Base,
}

/// Why `rel` (relative to `dir`, whose real path is `root`) is not a regular file the
/// recipe may name, judged by its real path.
fn located(root: &Path, dir: &Path, rel: &Path, host: &HostAccess, reach: Reach) -> Option<String> {
    let shown = rel.display();
    let how = match reach {
        Reach::Recipe => "secrets from elsewhere: use `{env: NAME}`",
        Reach::Allowed => {
            "allow its directory with --allow-path DIR or DISKFORGE_ALLOW_PATH=DIR (the person running diskforge decides, not the recipe)"
        }
        Reach::Base => {
            "allow its directory with --allow-path DIR or DISKFORGE_ALLOW_PATH=DIR, or name the file with `diskforge build --base PATH`"
        }
    };
    if written_outside(rel) && !host.allows_dirs() && host.base().is_none() {
        return Some(format!(
            "`{shown}` leaves the recipe's directory: files a recipe names must lie in its directory unless the command line allows more ({how})"
        ));
    }
    let real = match std::fs::canonicalize(dir.join(rel)) {
        Err(_) => {
            return Some(format!(
                "`{shown}` does not exist (relative to {}){}",
                dir.display(),
                nearby(root, dir, rel)
                    .map(|n| format!(": did you mean `{n}`?"))
                    .unwrap_or_default()
            ))
        }
        Ok(real) => real,
    };
    let allowed = real.starts_with(root)
        || (reach != Reach::Recipe && host.dir_allows(&real))
        || (reach == Reach::Base && host.is_base(&real));
    if !allowed {
        let through = if written_outside(rel) {
            String::new()
        } else {
            " (through a symbolic link)".to_string()
        };
        return Some(format!(
            "`{shown}` resolves to {}{through}, outside the recipe's directory and every allowed directory: refused ({how})",
            real.display()
        ));
    }
    if !real.is_file() {
        return Some(format!("`{shown}` is not a regular file"));
    }
    None
}

/// A file next to the missing `rel` whose name is close to its name (a typo), written
/// the way `rel` was. Only inside the recipe's directory (real path `root`): names
/// elsewhere on the host are not the recipe's to learn.
fn nearby(root: &Path, dir: &Path, rel: &Path) -> Option<String> {
    if written_outside(rel) {
        return None;
    }
    let name = rel.file_name()?.to_str()?;
    let parent = rel.parent().unwrap_or(Path::new(""));
    let real_parent = std::fs::canonicalize(dir.join(parent)).ok()?;
    if !real_parent.starts_with(root) {
        return None;
    }
    let entries: Vec<String> = std::fs::read_dir(real_parent)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let names: Vec<&str> = entries.iter().map(String::as_str).collect();
    let close = super::diag::did_you_mean(name, &names)?;
    Some(parent.join(close).display().to_string())
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_out_of_the_directory_are_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("ok.txt"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("evil")).unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        let none = HostAccess::default();
        let at = |rel: &str, host: &HostAccess, reach| {
            located(&root, t.path(), Path::new(rel), host, reach)
        };
        assert_eq!(at("ok.txt", &none, Reach::Recipe), None);
        assert!(at("evil", &none, Reach::Recipe)
            .unwrap()
            .contains("symbolic link"));
        assert!(at("../x", &none, Reach::Recipe).unwrap().contains("leaves"));
        assert!(at("/etc/passwd", &none, Reach::Recipe)
            .unwrap()
            .contains("leaves"));
        assert!(at("missing", &none, Reach::Recipe)
            .unwrap()
            .contains("does not exist"));
        // An allowed directory opens it to the base and copied files, never to secrets.
        let etc = HostAccess::new(&["/etc".into()], None).unwrap();
        assert_eq!(at("/etc/passwd", &etc, Reach::Allowed), None);
        assert_eq!(at("evil", &etc, Reach::Base), None);
        assert!(at("/etc/passwd", &etc, Reach::Recipe)
            .unwrap()
            .contains("refused"));
        assert!(at("/usr/bin/env", &etc, Reach::Base)
            .unwrap()
            .contains("refused"));
        // The --base file is allowed as the base only, and not its directory.
        let base = HostAccess::new(&[], Some(Path::new("/etc/passwd"))).unwrap();
        assert_eq!(at("/etc/passwd", &base, Reach::Base), None);
        assert!(at("/etc/passwd", &base, Reach::Allowed)
            .unwrap()
            .contains("refused"));
        assert!(at("/etc/group", &base, Reach::Base)
            .unwrap()
            .contains("refused"));
    }

    #[test]
    fn names_and_repositories_cannot_steer_paths() {
        for ok in ["demo", "ubuntu-24.04-lab", "Lab_1", "_x"] {
            assert!(valid_image_name(ok), "{ok}");
        }
        for bad in [
            "",
            "../../x",
            "a/b",
            "..",
            ".hidden",
            "-x",
            "a b",
            "x\n",
            &"a".repeat(129),
        ] {
            assert!(!valid_image_name(bad), "{bad:?}");
        }
        for ok in [
            "registry.example.com/lab/image",
            "127.0.0.1:5000/lab/x",
            "localhost/a",
            "lab/x",
            "reg.example/a__b/c-d/e.f/g--h",
        ] {
            assert!(valid_repository(ok), "{ok}");
        }
        for bad in [
            "x",
            "../../x",
            "lab/../x",
            "reg.example/../../x",
            "reg.example//x",
            "reg.example/x/",
            "reg.example/Lab",
            "reg.example:0/x",
            "reg.example:99999/x",
            "reg..example/x",
            "reg.example/a...b",
            "reg.example/a___b",
            "reg.example/-a",
            "reg.example/a:b",
            "reg.example/a@b",
            "lab/x?y",
        ] {
            assert!(!valid_repository(bad), "{bad}");
        }
    }

    #[test]
    fn geometries_and_vnc_passwords() {
        assert_eq!(parse_geometry("1280x800"), Some((1280, 800)));
        for bad in [
            "1280*800",
            "x800",
            "1280x",
            "32x32",
            "99999x10",
            "+1280x800",
            "1280x800x24",
        ] {
            assert_eq!(parse_geometry(bad), None, "{bad}");
        }
        assert!(check_vnc_password("abc123").is_ok());
        assert!(check_vnc_password("Dk7-vnc9").is_ok());
        for bad in ["abc12", "123456789", "with space", "tab\there"] {
            assert!(check_vnc_password(bad).is_err(), "{bad}");
        }
    }
}
