//! Semantic checks of a merged recipe: what the types alone cannot say. Errors point at
//! the key in the recipe file that was given.

use std::path::Path;

use anyhow::Result;

use super::load::{find_key, RecipeError};
use super::{Recipe, Size};

fn fail(file: &Path, text: &str, path: &[&str], message: impl Into<String>) -> anyhow::Error {
    let (line, column) = find_key(text, path)
        .or_else(|| find_key(text, &path[..1]))
        .unwrap_or((1, 1));
    RecipeError {
        file: file.to_path_buf(),
        line,
        column,
        key: path.join("."),
        message: message.into(),
    }
    .into()
}

/// Checks a merged recipe; `file`/`text` are the recipe given (for error locations).
pub fn check(r: &Recipe, file: &Path, text: &str) -> Result<()> {
    if r.version != 1 {
        return Err(fail(
            file,
            text,
            &["version"],
            format!("unsupported recipe version {} (only 1 exists)", r.version),
        ));
    }
    if r.partial {
        return check_output(r, file, text);
    }
    let Some(base) = &r.base else {
        return Err(fail(
            file,
            text,
            &["base"],
            "the recipe has no base: give base.catalog, base.url or base.path",
        ));
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
        return Err(fail(
            file,
            text,
            &["base"],
            "give exactly one of base.catalog, base.url and base.path",
        ));
    }
    if let Some(url) = &base.url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(fail(
                file,
                text,
                &["base", "url"],
                format!("{url:?} is not an http(s) URL"),
            ));
        }
        if base.checksum.is_none() {
            return Err(fail(
                file,
                text,
                &["base", "url"],
                "a downloaded base needs a checksum (a literal sha256:/sha512: value or a checksum file); write `checksum: none` to opt out explicitly",
            ));
        }
    }
    if let Some(Size::Relative(0)) | Some(Size::Absolute(0)) = r.disk.size {
        return Err(fail(
            file,
            text,
            &["disk", "size"],
            "the disk size must be larger than zero",
        ));
    }
    if let Some(p) = &r.disk.grow.partition {
        if !p.starts_with("/dev/") {
            return Err(fail(
                file,
                text,
                &["disk", "grow", "partition"],
                format!("{p:?} is not a device such as /dev/sda1"),
            ));
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for u in &r.customize.users {
        if !valid_name(&u.name) {
            return Err(fail(
                file,
                text,
                &["customize", "users", "name"],
                format!("{:?} is not a valid user name", u.name),
            ));
        }
        if !names.insert(u.name.clone()) {
            return Err(fail(
                file,
                text,
                &["customize", "users", "name"],
                format!("user {} is listed twice", u.name),
            ));
        }
    }
    for g in &r.customize.groups {
        if !valid_name(&g.name) {
            return Err(fail(
                file,
                text,
                &["customize", "groups", "name"],
                format!("{:?} is not a valid group name", g.name),
            ));
        }
    }
    for f in &r.customize.files {
        match (&f.content, &f.source) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(fail(
                    file,
                    text,
                    &["customize", "files", "path"],
                    format!("file {}: give exactly one of content and source", f.path.0),
                ))
            }
            _ => {}
        }
    }
    if let Some(tz) = &r.customize.timezone {
        if tz.contains("..") || tz.starts_with('/') || tz.contains(' ') {
            return Err(fail(
                file,
                text,
                &["customize", "timezone"],
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
            return Err(fail(
                file,
                text,
                &["customize", "hostname"],
                format!("{h:?} is not a valid host name"),
            ));
        }
    }
    if r.ttyd.enabled {
        if r.ttyd.port == 0 {
            return Err(fail(
                file,
                text,
                &["ttyd", "port"],
                "ttyd.port must be 1-65535",
            ));
        }
        if r.ttyd.command.is_empty() {
            return Err(fail(
                file,
                text,
                &["ttyd", "command"],
                "ttyd.command must name a program (default: login)",
            ));
        }
        if let super::TtydSource::Url(u) = &r.ttyd.source {
            if !(u.url.starts_with("http://") || u.url.starts_with("https://")) {
                return Err(fail(
                    file,
                    text,
                    &["ttyd", "source", "url"],
                    format!("{:?} is not an http(s) URL", u.url),
                ));
            }
            if matches!(u.sha256, super::Checksum::None) {
                return Err(fail(
                    file,
                    text,
                    &["ttyd", "source", "sha256"],
                    "the ttyd download must be pinned by its sha256",
                ));
            }
        }
    }
    check_output(r, file, text)
}

fn check_output(r: &Recipe, file: &Path, text: &str) -> Result<()> {
    let o = &r.output;
    for t in &o.tags {
        let probe = t
            .replace("{date}", "20260101")
            .replace("{version}", "1")
            .replace("{git_sha}", "abc");
        if crate::oci::layout::validate_tag(&probe).is_err() {
            return Err(fail(
                file,
                text,
                &["output", "tags"],
                format!("{t:?} is not a valid tag (templates: {{date}}, {{version}}, {{git_sha}})"),
            ));
        }
        if t.contains("{version}") && o.version.is_none() {
            return Err(fail(
                file,
                text,
                &["output", "tags"],
                format!("tag {t:?} uses {{version}} but output.version is not set"),
            ));
        }
    }
    if o.tags.is_empty() {
        return Err(fail(
            file,
            text,
            &["output", "tags"],
            "output.tags must name at least one tag",
        ));
    }
    if let Some(repo) = &o.repository {
        let ok = !repo.is_empty()
            && repo.contains('/')
            && !repo.contains(':')
            && repo
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c));
        let host_port_ok = repo
            .split('/')
            .next()
            .is_some_and(|h| h.contains('.') || h.contains(':') || h == "localhost");
        if !(ok || host_port_ok && repo.matches(':').count() == 1) {
            return Err(fail(
                file,
                text,
                &["output", "repository"],
                format!("{repo:?} is not a repository such as registry.example.com/lab/image"),
            ));
        }
    }
    if crate::oci::layer::check_level(o.compression, o.compression_level).is_err() {
        return Err(fail(
            file,
            text,
            &["output", "compression-level"],
            "gzip levels are 1-9, zstd levels 1-19",
        ));
    }
    if crate::oci::layer::validate_disk_name(&o.disk_name).is_err() {
        return Err(fail(
            file,
            text,
            &["output", "disk-name"],
            format!(
                "{:?} must be a plain file name such as disk.qcow2",
                o.disk_name
            ),
        ));
    }
    Ok(())
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
