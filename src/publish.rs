//! Packing a finished disk and sending it to every output of a build: labels from the
//! recipe and its inputs (no secrets), tags expanded, default destination `oci:out/NAME`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};

use crate::build::Prepared;
use crate::cli::{GlobalOpts, OutputOpts};
use crate::oci::{self, image::ImageMeta, layer::LayerOptions, ImageRef, PackSpec, Published};

/// Expands `{date}`, `{version}` and `{git_sha}` in a tag template.
pub fn expand_tag(
    template: &str,
    version: Option<&str>,
    git_sha: Option<&str>,
    epoch: u64,
) -> Result<String> {
    let mut out = template.to_string();
    if out.contains("{date}") {
        let date = chrono::DateTime::from_timestamp(epoch as i64, 0)
            .unwrap_or_default()
            .format("%Y%m%d")
            .to_string();
        out = out.replace("{date}", &date);
    }
    if out.contains("{version}") {
        match version {
            Some(v) => out = out.replace("{version}", v),
            None => bail!("tag {template:?} uses {{version}} but output.version is not set"),
        }
    }
    if out.contains("{git_sha}") {
        match git_sha {
            Some(s) => out = out.replace("{git_sha}", s),
            None => {
                bail!("tag {template:?} uses {{git_sha}} but the recipe is not in a git checkout")
            }
        }
    }
    oci::layout::validate_tag(&out)?;
    Ok(out)
}

/// The short commit of the recipe's git checkout, if any.
pub fn git_sha(dir: &Path) -> Option<String> {
    crate::exec::Cmd::new("git", "reading the recipe's git commit")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(dir)
        .run()
        .ok()
        .map(|o| o.stdout_str())
        .filter(|s| !s.is_empty())
}

/// The creation time: `SOURCE_DATE_EPOCH` when set, otherwise now (a build is an event;
/// `pack` of an existing disk uses a fixed time instead).
fn created_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(_) => oci::layer::mtime_from_env(),
        Err(_) => Ok(chrono::Utc::now().timestamp().max(0) as u64),
    }
}

fn image_name(loaded: &crate::recipe::LoadedRecipe) -> String {
    loaded.recipe.name.clone().unwrap_or_else(|| {
        loaded
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into())
    })
}

/// Where a build writes: `--output`, else `docker://REPOSITORY:TAG` per tag, else
/// `oci:out/NAME:TAG` per tag.
pub fn destinations(
    loaded: &crate::recipe::LoadedRecipe,
    outputs: &OutputOpts,
) -> Result<Vec<ImageRef>> {
    let o = &loaded.recipe.output;
    if !outputs.output.is_empty() {
        return outputs.output.iter().map(|s| ImageRef::parse(s)).collect();
    }
    let epoch = created_epoch()?;
    let sha = git_sha(&loaded.dir);
    let tags = o
        .tags
        .iter()
        .map(|t| expand_tag(t, o.version.as_deref(), sha.as_deref(), epoch))
        .collect::<Result<Vec<_>>>()?;
    let name = image_name(loaded);
    match &o.repository {
        Some(repo) => tags
            .iter()
            .map(|t| ImageRef::parse(&format!("docker://{repo}:{t}")))
            .collect(),
        None => tags
            .iter()
            .map(|t| ImageRef::parse(&format!("oci:out/{name}:{t}")))
            .collect(),
    }
}

/// The labels of the image at a destination, when it exists.
fn existing_labels(
    d: &ImageRef,
    reg: &crate::registry::RegistryOptions,
) -> Option<serde_json::Value> {
    match d {
        ImageRef::Layout { dir, tag } => {
            let l = oci::Layout::open(dir).ok()?;
            let desc = l.resolve(Some(tag.as_deref().unwrap_or("latest"))).ok()?;
            let m: serde_json::Value =
                serde_json::from_slice(&l.read_blob(&desc.digest).ok()?).ok()?;
            let c: serde_json::Value =
                serde_json::from_slice(&l.read_blob(m["config"]["digest"].as_str()?).ok()?).ok()?;
            Some(c["config"]["Labels"].clone())
        }
        ImageRef::Registry { reference } => crate::registry::remote_config(reference, reg)
            .ok()
            .flatten()
            .map(|c| c["config"]["Labels"].clone()),
        ImageRef::Archive { .. } => None,
    }
}

/// True when every destination already holds an image whose build key is `key`.
pub fn all_up_to_date(
    dests: &[ImageRef],
    key: &str,
    reg: &crate::registry::RegistryOptions,
) -> bool {
    !dests.is_empty()
        && dests.iter().all(|d| {
            existing_labels(d, reg)
                .is_some_and(|l| l[crate::build::BUILD_KEY_LABEL].as_str() == Some(key))
        })
}

pub fn publish(
    global: &GlobalOpts,
    p: &Prepared,
    disk: &Path,
    outputs: &OutputOpts,
    work: &Path,
) -> Result<Published> {
    let _ = global;
    let r = &p.loaded.recipe;
    let o = &r.output;
    let name = image_name(&p.loaded);
    let epoch = created_epoch()?;
    let sha = git_sha(&p.loaded.dir);
    let dests = destinations(&p.loaded, outputs)?;
    let created = oci::image::rfc3339(epoch);
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    labels.insert("org.opencontainers.image.created".into(), created.clone());
    labels.insert("org.opencontainers.image.title".into(), name.clone());
    if let Some(d) = &r.description {
        labels.insert("org.opencontainers.image.description".into(), d.clone());
    }
    if let Some(v) = &o.version {
        labels.insert("org.opencontainers.image.version".into(), v.clone());
    }
    if let Some(s) = &sha {
        labels.insert("org.opencontainers.image.revision".into(), s.clone());
    }
    if let Some(src) = crate::exec::Cmd::new("git", "reading the recipe's git remote")
        .args(["config", "--get", "remote.origin.url"])
        .current_dir(&p.loaded.dir)
        .run()
        .ok()
        .map(|o| o.stdout_str())
        .filter(|s| !s.is_empty() && !s.contains('@'))
    {
        labels.insert("org.opencontainers.image.source".into(), src);
    }
    labels.insert(
        "org.opencontainers.image.base.name".into(),
        p.base_name.clone(),
    );
    labels.insert(
        "org.opencontainers.image.base.digest".into(),
        p.base.digest.clone(),
    );
    labels.insert("io.diskforge.recipe.digest".into(), p.loaded.digest.clone());
    labels.insert("io.diskforge.base.checksum".into(), p.base.digest.clone());
    labels.insert(
        "io.diskforge.version".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    labels.insert(crate::build::BUILD_KEY_LABEL.into(), p.build_key.clone());
    for (k, v) in &o.labels {
        labels.insert(k.clone(), v.clone());
    }
    let mut env = Vec::new();
    if let Some(i) = &o.kubevirt.instancetype {
        env.push(format!("INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE={i}"));
    }
    if let Some(pr) = &o.kubevirt.preference {
        env.push(format!("INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE={pr}"));
    }
    let compression = outputs.compression.map(Into::into).unwrap_or(o.compression);
    oci::warn_compression(compression);
    let spec = PackSpec {
        disk: disk.to_path_buf(),
        disk_name: o.disk_name.clone(),
        meta: ImageMeta {
            architecture: r
                .base
                .as_ref()
                .and_then(|b| b.arch)
                .unwrap_or_default()
                .as_str()
                .to_string(),
            created,
            created_by: format!("diskforge {} build {}", env!("CARGO_PKG_VERSION"), name),
            labels,
            env,
            annotations: o.annotations.clone(),
        },
        layer: LayerOptions {
            compression,
            level: outputs.compression_level.or(o.compression_level),
            mtime: oci::layer::mtime_from_env()?,
            threads: 0,
        },
    };
    let reg = oci::registry_options(outputs, &o.insecure_registries);
    oci::pack_and_write(&spec, &dests, &reg, work)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_templates_expand() {
        assert_eq!(
            expand_tag("v{version}-{date}", Some("1.2"), None, 1_700_000_000).unwrap(),
            "v1.2-20231114"
        );
        assert_eq!(
            expand_tag("{git_sha}", None, Some("abc123"), 0).unwrap(),
            "abc123"
        );
        assert!(expand_tag("{version}", None, None, 0).is_err());
        assert!(expand_tag("a/b", None, None, 0).is_err());
    }
}
