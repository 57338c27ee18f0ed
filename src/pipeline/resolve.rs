//! From a recipe file to everything a build depends on, read once: the loaded recipe,
//! the base (catalog entry checked, checksum file read and verified, cached copy found),
//! the ttyd binary and copied files by digest, the destinations with their templates expanded
//! (the clock and git read once), and the target disk size. Nothing slow happens here:
//! no image is downloaded and no appliance started.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{BuildEnv, BuildOptions};
use crate::base::acquire::{AcquireOptions, Prepared, ResolvedBase};
use crate::base::catalog::{self, CatalogEntry};
use crate::base::CachedBase;
use crate::cache::Cache;
use crate::oci::{Compression, ImageRef};
use crate::recipe::{self, Arch, Firmware, LoadedRecipe, Seg, Size, TtydSource};

/// Where the base comes from, resolved.
#[derive(Debug, Clone)]
pub enum Base {
    /// A download (catalog image or recipe URL) or a local file.
    Image {
        spec: ResolvedBase,
        prepared: Prepared,
    },
    /// A base diskforge builds from distribution packages (`build:` catalog entries).
    Build {
        entry: CatalogEntry,
        /// The definition hash that keys the built base.
        hash: String,
        cached: Option<CachedBase>,
    },
}

impl Base {
    /// The verified copy at hand, if any.
    pub fn cached(&self) -> Option<&CachedBase> {
        match self {
            Base::Image { prepared, .. } => prepared.cached.as_ref(),
            Base::Build { cached, .. } => cached.as_ref(),
        }
    }

    /// What identifies the base's content for build keys.
    pub fn identity(&self) -> Result<String> {
        match self {
            Base::Image { prepared, spec } => prepared.identity().with_context(|| {
                let why = match &spec.source {
                    crate::base::BaseSource::Url {
                        checksum: crate::recipe::ChecksumSpec::File(f),
                        ..
                    } => format!(
                        "its checksum file {} is not read with --offline and the base is not cached",
                        f.url
                    ),
                    _ => "it has `checksum: none` and is not cached".to_string(),
                };
                format!(
                    "the base {}: {why}: nothing identifies its content yet",
                    describe_source(spec)
                )
            }),
            Base::Build { hash, .. } => Ok(format!("build:{hash}")),
        }
    }
}

fn describe_source(spec: &ResolvedBase) -> String {
    match &spec.source {
        crate::base::BaseSource::Url { url, .. } => url.clone(),
        crate::base::BaseSource::Path(p) => p.display().to_string(),
    }
}

/// The ttyd binary copied from the host into the guest.
#[derive(Debug, Clone)]
pub enum TtydBinary {
    /// Downloaded through the cache; the digest is the recipe's pin.
    Url {
        url: String,
        sha256: String,
        member: Option<String>,
    },
    /// A file next to the recipe.
    File { path: PathBuf, sha256: String },
}

impl TtydBinary {
    pub fn digest(&self) -> &str {
        match self {
            TtydBinary::Url { sha256, .. } | TtydBinary::File { sha256, .. } => sha256,
        }
    }
}

/// Everything a build depends on.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub loaded: LoadedRecipe,
    /// The image name (`name:`, else the recipe's file name).
    pub name: String,
    pub arch: Arch,
    /// A short name for the base (catalog name, URL or path), for labels and messages.
    pub base_label: String,
    /// The base's distribution family, when a catalog entry names it.
    pub base_os: Option<String>,
    pub base: Base,
    pub ttyd: Option<TtydBinary>,
    /// Copied files: guest path and `sha256:` of the host file.
    pub files: Vec<(String, String)>,
    pub dests: Vec<ImageRef>,
    /// Creation time of the image (`SOURCE_DATE_EPOCH` or now), read once.
    pub epoch: u64,
    pub git_sha: Option<String>,
    pub git_remote: Option<String>,
    pub compression: Compression,
    pub level: Option<u32>,
    /// The base's virtual size and the disk's target size, when known before fetching.
    pub base_size: Option<u64>,
    pub target_size: Option<u64>,
    /// The firmware VMs boot the image with: `boot.firmware`, else the catalog entry's
    /// default, else BIOS.
    pub firmware: Firmware,
}

/// A recipe marked `partial: true`: a shared parent that other recipes extend, not an
/// image of its own. Commands over many recipes skip it.
#[derive(Debug, thiserror::Error)]
#[error("{} is a partial recipe (`partial: true`): build a recipe that extends it", .0.display())]
pub struct PartialRecipe(pub PathBuf);

/// Loads and resolves `path`.
pub fn resolve(path: &Path, opts: &BuildOptions, env: &BuildEnv) -> Result<Resolved> {
    let loaded = recipe::load(
        path,
        &recipe::LoadOptions {
            set: opts.set.clone(),
            host: opts.host.clone(),
            references: Some(catalog_references(opts)),
        },
    )?;
    if loaded.recipe.partial {
        return Err(PartialRecipe(path.to_path_buf()).into());
    }
    let entry = catalog_entry(&loaded, opts)?;
    let firmware = check_loaded(&loaded, entry.as_ref().map(|(e, _)| e), opts, &env.cache)?;
    let r = &loaded.recipe;
    let spec = r.base.clone().context("the recipe has no base")?;
    let arch = opts.arch.or(spec.arch).unwrap_or_default();
    let FoundBase {
        base,
        label: base_label,
        recorded_size,
        os: base_os,
    } = resolve_base(&loaded, entry, arch, &env.cache, env.offline)?;
    let base_size = base.cached().map(|c| c.virtual_size).or(recorded_size);
    let target_size = base_size
        .map(|b| target_size(r.disk.size, b))
        .transpose()
        .map_err(|e| shrink_error(&loaded, &e))?;
    let ttyd = ttyd_binary(&loaded)?;
    let mut files = Vec::new();
    for f in &r.customize.files {
        if let Some(src) = &f.source {
            let p = loaded.dir.join(&src.0);
            let (h, _) = crate::io::hash::sha256_file(&p)
                .with_context(|| format!("hashing {}", p.display()))?;
            files.push((f.path.0.clone(), format!("sha256:{h}")));
        }
    }
    let epoch = created_epoch()?;
    let git_sha = git(&loaded.dir, &["rev-parse", "--short=12", "HEAD"]);
    // A remote URL with credentials in it never becomes a label.
    let git_remote =
        git(&loaded.dir, &["config", "--get", "remote.origin.url"]).filter(|s| !s.contains('@'));
    let name = image_name(&loaded)?;
    let vars = TagVars {
        name: &name,
        arch,
        version: r.output.version.as_deref(),
        git_sha: git_sha.as_deref(),
        epoch,
    };
    let dests = destinations(&loaded, &vars, opts)?;
    let compression = opts.compression.unwrap_or(r.output.compression);
    let level = opts.level.or(r.output.compression_level);
    crate::oci::layer::check_level(compression, level)?;
    Ok(Resolved {
        name,
        arch,
        base_label,
        base_os,
        base,
        ttyd,
        files,
        dests,
        epoch,
        git_sha,
        git_remote,
        compression,
        level,
        base_size,
        target_size,
        firmware,
        loaded,
    })
}

/// What `validate` checks beyond the recipe itself, without network: the catalog entry
/// exists, and the disk does not shrink below a base size known before any download
/// (a built base, a size the catalog records, a local file, a cached download).
pub fn check_static(path: &Path, opts: &BuildOptions, env: &BuildEnv) -> Result<LoadedRecipe> {
    let loaded = recipe::load(
        path,
        &recipe::LoadOptions {
            set: opts.set.clone(),
            host: opts.host.clone(),
            references: Some(catalog_references(opts)),
        },
    )?;
    let entry = catalog_entry(&loaded, opts)?;
    check_loaded(&loaded, entry.as_ref().map(|(e, _)| e), opts, &env.cache)?;
    Ok(loaded)
}

/// [`check_static`] of a loaded recipe: `resolve` runs it before anything slow, so `plan`
/// and `build` report an unknown catalog entry or a shrinking disk (exit 2, located)
/// before they fetch a checksum file, and a firmware the base cannot boot with. Returns
/// the firmware the image boots with.
/// The catalog entry the recipe's base names (looked up once), and where it was found.
fn catalog_entry(
    loaded: &LoadedRecipe,
    opts: &BuildOptions,
) -> Result<Option<(CatalogEntry, catalog::Origin)>> {
    let r = &loaded.recipe;
    let Some(name) = r
        .base
        .as_ref()
        .filter(|_| !r.partial)
        .and_then(|b| b.catalog.as_ref())
    else {
        return Ok(None);
    };
    match catalog::find_entry(name, &loaded.dir, opts.catalog.as_deref()) {
        Ok(found) => Ok(Some(found)),
        Err(e) => Err(match e.downcast_ref::<catalog::UnknownEntry>() {
            Some(u) => loaded
                .error_at(&[Seg::key("base"), Seg::key("catalog")], u.to_string())
                .into(),
            None => e,
        }),
    }
}

fn check_loaded(
    loaded: &LoadedRecipe,
    entry: Option<&CatalogEntry>,
    opts: &BuildOptions,
    cache: &Cache,
) -> Result<Firmware> {
    let r = &loaded.recipe;
    let Some(spec) = r.base.clone().filter(|_| !r.partial) else {
        return Ok(r.boot.firmware.unwrap_or(Firmware::Bios));
    };
    let mut firmware = r.boot.firmware.unwrap_or(Firmware::Bios);
    let arch = opts.arch.or(spec.arch).unwrap_or_default();
    let size = if let (Some(name), Some(entry)) = (&spec.catalog, entry) {
        if !entry.images.is_empty() && !entry.images.contains_key(&arch) {
            return Err(loaded
                .error_at(
                    &[Seg::key("base"), Seg::key("catalog")],
                    format!("catalog entry {name} has no {} image", arch.as_str()),
                )
                .into());
        }
        firmware = entry.firmware.resolve(r.boot.firmware).map_err(|e| {
            loaded.error_at(
                &[Seg::key("boot"), Seg::key("firmware")],
                format!("{e} (catalog entry {name})"),
            )
        })?;
        match (&entry.build, entry.virtual_size) {
            (Some(b), _) => b.size_bytes().ok(),
            (None, Some(Size::Absolute(n))) => Some(n),
            _ => None,
        }
    } else if let Some(p) = local_base(&spec) {
        // Read the way the build will (declared format, nothing it names opened); a
        // file that fails that check is reported by the build, with the reason.
        crate::sys::qemu_img::check_standalone(&loaded.dir.join(p), spec.format.unwrap_or_default())
            .ok()
            .map(|i| i.virtual_size)
    } else if let Some(url) = &spec.url {
        cache
            .lookup(&crate::cache::RefKey::Url(url.clone()))?
            .and_then(|hex| crate::sys::qemu_img::info(&cache.blob_path(&hex)).ok())
            .map(|i| i.virtual_size)
    } else {
        None
    };
    if let Some(b) = size {
        target_size(r.disk.size, b).map_err(|e| shrink_error(loaded, &e))?;
    }
    Ok(firmware)
}

/// A disk asked to be smaller than its base.
#[derive(Debug, thiserror::Error)]
#[error(
    "the disk cannot shrink: the base is {} ({base} bytes) and the recipe asks for {} ({target} bytes)",
    crate::progress::human_bytes(*.base),
    crate::progress::human_bytes(*.target)
)]
pub struct Shrink {
    pub base: u64,
    pub target: u64,
}

/// The disk's size on a base of `base` bytes: the recipe's `disk.size`, else the base's.
/// The one refuse-to-shrink check, whenever the base's size becomes known (from the
/// catalog or a cached copy at resolve, from the fetched base at build).
pub fn target_size(size: Option<Size>, base: u64) -> std::result::Result<u64, Shrink> {
    let target = size.map_or(base, |s| s.target(base));
    if target < base {
        return Err(Shrink { base, target });
    }
    Ok(target)
}

/// A shrinking disk, located at `disk.size` of the recipe.
fn shrink_error(loaded: &LoadedRecipe, e: &Shrink) -> anyhow::Error {
    loaded
        .error_at(&[Seg::key("disk"), Seg::key("size")], e.to_string())
        .into()
}

/// The catalog entry a recipe names exists (with an image for the architecture built):
/// checked with the recipe's other errors, in one pass.
fn catalog_references(opts: &BuildOptions) -> recipe::References {
    let catalog_dir = opts.catalog.clone();
    let arch_opt = opts.arch;
    recipe::References(std::sync::Arc::new(
        move |r: &recipe::Recipe, dir: &Path| {
            let mut issues = Vec::new();
            let Some(spec) = &r.base else { return issues };
            let Some(name) = &spec.catalog else {
                return issues;
            };
            let at = vec![Seg::key("base"), Seg::key("catalog")];
            match catalog::find_entry(name, dir, catalog_dir.as_deref()) {
                Ok((entry, _)) => {
                    let arch = arch_opt.or(spec.arch).unwrap_or_default();
                    if !entry.images.is_empty() && !entry.images.contains_key(&arch) {
                        issues.push((
                            at,
                            format!("catalog entry {name} has no {} image", arch.as_str()),
                        ));
                    }
                }
                Err(e) => {
                    if let Some(u) = e.downcast_ref::<catalog::UnknownEntry>() {
                        issues.push((at, u.to_string()));
                    }
                }
            }
            issues
        },
    ))
}

/// The local file a base names: `path`, or a `file://` URL.
fn local_base(spec: &recipe::BaseSpec) -> Option<PathBuf> {
    match (
        &spec.path,
        spec.url.as_deref().map(recipe::host::file_url_path),
    ) {
        (Some(p), _) => Some(PathBuf::from(p)),
        (None, Some(Some(Ok(p)))) => Some(p),
        _ => None,
    }
}

/// The base a recipe names, as resolved: what it is, a short label, the size its catalog
/// entry records and its distribution family (catalog entries only).
struct FoundBase {
    base: Base,
    label: String,
    recorded_size: Option<u64>,
    os: Option<String>,
}

fn resolve_base(
    loaded: &LoadedRecipe,
    entry: Option<(CatalogEntry, catalog::Origin)>,
    arch: Arch,
    cache: &Cache,
    offline: bool,
) -> Result<FoundBase> {
    let spec = loaded
        .recipe
        .base
        .clone()
        .context("the recipe has no base")?;
    let acquire = AcquireOptions {
        offline,
        ..Default::default()
    };
    if let (Some(name), Some((entry, origin))) = (&spec.catalog, entry) {
        let recorded = match (&entry.build, entry.virtual_size) {
            (Some(b), _) => match b.size {
                Size::Absolute(n) => Some(n),
                Size::Relative(_) => None,
            },
            (None, Some(Size::Absolute(n))) => Some(n),
            _ => None,
        };
        if entry.build.is_some() {
            let (hash, cached) = crate::base::build::cached_build(&entry, arch, cache)?;
            return Ok(FoundBase {
                os: Some(entry.os.clone()),
                base: Base::Build {
                    entry,
                    hash,
                    cached,
                },
                label: name.clone(),
                recorded_size: recorded,
            });
        }
        let rb = ResolvedBase::from_catalog(&entry, arch, &origin)?;
        let prepared = crate::base::acquire::prepare_blocking(&rb, cache, &acquire)?;
        return Ok(FoundBase {
            base: Base::Image { spec: rb, prepared },
            label: name.clone(),
            recorded_size: recorded,
            os: Some(entry.os.clone()),
        });
    }
    let rb = ResolvedBase::from_spec(&spec, &loaded.dir)?;
    let label = spec.url.clone().or(spec.path.clone()).unwrap_or_default();
    let prepared = crate::base::acquire::prepare_blocking(&rb, cache, &acquire)?;
    Ok(FoundBase {
        base: Base::Image { spec: rb, prepared },
        label,
        recorded_size: None,
        os: None,
    })
}

fn ttyd_binary(loaded: &LoadedRecipe) -> Result<Option<TtydBinary>> {
    let t = &loaded.recipe.ttyd;
    if !t.enabled {
        return Ok(None);
    }
    Ok(match &t.source {
        TtydSource::Package(_) => None,
        TtydSource::Url(u) => Some(TtydBinary::Url {
            url: u.url.clone(),
            sha256: u.sha256.to_string(),
            member: u.member.clone(),
        }),
        TtydSource::Path(p) => {
            let path = loaded.dir.join(&p.0);
            let (h, _) = crate::io::hash::sha256_file(&path)
                .with_context(|| format!("hashing ttyd.source.path {}", path.display()))?;
            Some(TtydBinary::File {
                path,
                sha256: format!("sha256:{h}"),
            })
        }
    })
}

/// The image name: `name:` (validated with the recipe), else the recipe's file name,
/// which must be as plain as a `name:` would have to be (`...yaml` would name `..`).
pub fn image_name(loaded: &LoadedRecipe) -> Result<String> {
    if let Some(n) = &loaded.recipe.name {
        return Ok(n.clone());
    }
    let stem = loaded
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    if !crate::recipe::validate::valid_image_name(&stem) {
        bail!(
            "the file name of {} cannot name the image ({stem:?} would be its output directory out/{stem}): set `name:` in the recipe",
            loaded.path.display()
        );
    }
    Ok(stem)
}

/// The creation time: `SOURCE_DATE_EPOCH` when set, otherwise now.
fn created_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(_) => crate::oci::layer::mtime_from_env(),
        Err(_) => Ok(chrono::Utc::now().timestamp().max(0) as u64),
    }
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    crate::sys::exec::Cmd::new("git", "reading the recipe's git checkout")
        .args(args)
        .current_dir(dir)
        .run()
        .ok()
        .map(|o| o.stdout_str())
        .filter(|s| !s.is_empty())
}

/// What the templates of tags and `--output` destinations expand to.
pub struct TagVars<'a> {
    pub name: &'a str,
    pub arch: Arch,
    pub version: Option<&'a str>,
    pub git_sha: Option<&'a str>,
    /// The image's creation time: `{date}` is its UTC day.
    pub epoch: u64,
}

/// Expands `{name}`, `{arch}`, `{date}`, `{version}` and `{git_sha}` in `template`.
pub fn expand_template(template: &str, v: &TagVars<'_>) -> Result<String> {
    let mut out = template
        .replace("{name}", v.name)
        .replace("{arch}", v.arch.as_str());
    if out.contains("{date}") {
        let date = chrono::DateTime::from_timestamp(v.epoch as i64, 0)
            .unwrap_or_default()
            .format("%Y%m%d")
            .to_string();
        out = out.replace("{date}", &date);
    }
    if out.contains("{version}") {
        match v.version {
            Some(ver) => out = out.replace("{version}", ver),
            None => bail!("{{version}} is used but output.version is not set"),
        }
    }
    if out.contains("{git_sha}") {
        match v.git_sha {
            Some(s) => out = out.replace("{git_sha}", s),
            None => bail!("{{git_sha}} is used but the recipe is not in a git checkout"),
        }
    }
    Ok(out)
}

/// Expands a tag template (see [`expand_template`]) and checks the result is a tag.
pub fn expand_tag(template: &str, v: &TagVars<'_>) -> Result<String> {
    let out = expand_template(template, v).with_context(|| format!("tag {template:?}"))?;
    crate::oci::layout::validate_tag(&out)?;
    Ok(out)
}

/// Checks a `--output` template before any work: whatever a recipe's values expand it
/// to, it must name a destination.
pub fn check_destination_template(template: &str) -> Result<()> {
    let probe = TagVars {
        name: "x",
        arch: Arch::Amd64,
        version: Some("1"),
        git_sha: Some("0123456789ab"),
        epoch: 0,
    };
    ImageRef::parse(&expand_template(template, &probe)?)?;
    Ok(())
}

/// Whether the recipe at `path` names a registry repository (its own destinations are
/// then `docker://`), read from the recipe alone.
pub fn names_repository(path: &Path, opts: &BuildOptions) -> Result<bool> {
    let loaded = recipe::load(
        path,
        &recipe::LoadOptions {
            set: opts.set.clone(),
            host: opts.host.clone(),
            references: None,
        },
    )?;
    Ok(loaded.recipe.output.repository.is_some())
}

/// Where a build writes: `--output` (templates expanded), else `docker://REPOSITORY:TAG`
/// per tag, else `oci:out/NAME:TAG` per tag.
fn destinations(
    loaded: &LoadedRecipe,
    v: &TagVars<'_>,
    opts: &BuildOptions,
) -> Result<Vec<ImageRef>> {
    if !opts.outputs.is_empty() {
        return opts
            .outputs
            .iter()
            .map(|s| {
                let dest = expand_template(s, v).with_context(|| format!("--output {s:?}"))?;
                ImageRef::parse(&dest)
            })
            .collect();
    }
    let o = &loaded.recipe.output;
    let tags = o
        .tags
        .iter()
        .map(|t| expand_tag(t, v))
        .collect::<Result<Vec<_>>>()?;
    tags.iter()
        .map(|t| match &o.repository {
            Some(repo) => ImageRef::parse(&format!("docker://{repo}:{t}")),
            None => ImageRef::parse(&format!("oci:out/{}:{t}", v.name)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_templates_expand() {
        let v = |version, git_sha, epoch| TagVars {
            name: "lab",
            arch: Arch::Arm64,
            version,
            git_sha,
            epoch,
        };
        assert_eq!(
            expand_tag("v{version}-{date}", &v(Some("1.2"), None, 1_700_000_000)).unwrap(),
            "v1.2-20231114"
        );
        assert_eq!(
            expand_tag("{name}-{git_sha}", &v(None, Some("abc123"), 0)).unwrap(),
            "lab-abc123"
        );
        assert_eq!(
            expand_tag("{name}-{arch}", &v(None, None, 0)).unwrap(),
            "lab-arm64"
        );
        assert!(expand_tag("{version}", &v(None, None, 0)).is_err());
        assert!(expand_tag("a/b", &v(None, None, 0)).is_err());
        // Destinations expand whole: the repository may name the image too.
        assert_eq!(
            expand_template("docker://r.example/lab/{name}:1-{arch}", &v(None, None, 0)).unwrap(),
            "docker://r.example/lab/lab:1-arm64"
        );
    }
}
