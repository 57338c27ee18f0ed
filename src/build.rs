//! `diskforge build`: recipe → base → overlay + resize → one appliance launch (grow,
//! customize, ttyd, hygiene) → flattened standalone disk → packed and published image.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::base::{AcquireOptions, CachedBase, ResolvedBase};
use crate::cache::Cache;
use crate::cli::{BuildArgs, GlobalOpts};
use crate::guest::script::{self, Customization, Secrets};
use crate::guest::{self, GuestJob};
use crate::recipe::{self, Arch, LoadOptions, LoadedRecipe, TtydSource};

/// Everything resolved before the guest stage runs.
pub struct Prepared {
    /// Hash of every input of the build (see [`build_key`]), stored as a label.
    pub build_key: String,
    pub loaded: LoadedRecipe,
    pub base: CachedBase,
    pub base_name: String,
    pub customization: Customization,
    pub secrets: Secrets,
    pub target_size: u64,
}

/// Loads a recipe with the command line's inputs.
pub fn load(path: &Path, inputs: &crate::cli::RecipeInputs) -> Result<LoadedRecipe> {
    recipe::load(
        path,
        &LoadOptions {
            set: inputs.set.clone(),
            catalog: inputs.catalog.clone(),
        },
    )
}

/// Resolves the recipe's secrets (values never leave this struct but for the guest).
pub fn resolve_secrets(loaded: &LoadedRecipe) -> Result<Secrets> {
    let r = &loaded.recipe;
    let mut s = Secrets::default();
    for u in &r.customize.users {
        if let Some(p) = &u.password {
            let v = recipe::secret::resolve(p, &loaded.dir)
                .with_context(|| format!("resolving the password of user {}", u.name))?;
            s.users.push((u.name.clone(), v));
        }
    }
    if let Some(p) = &r.customize.root_password {
        s.root =
            Some(recipe::secret::resolve(p, &loaded.dir).context("resolving root's password")?);
    }
    if r.ttyd.enabled {
        if let Some(c) = &r.ttyd.credential {
            let v = recipe::secret::resolve(&c.password, &loaded.dir)
                .context("resolving the ttyd credential")?;
            s.ttyd = Some(recipe::SecretValue::new(format!(
                "{}:{}",
                c.user,
                v.expose()
            )));
        }
    }
    Ok(s)
}

/// Acquires (downloads, verifies or builds) the base of a recipe.
pub fn acquire_base(
    global: &GlobalOpts,
    loaded: &LoadedRecipe,
    cache: &Cache,
    catalog: Option<&Path>,
) -> Result<(CachedBase, String)> {
    let spec = loaded
        .recipe
        .base
        .as_ref()
        .with_context(|| format!("{}: the recipe has no base", loaded.path.display()))?;
    let arch = spec.arch.unwrap_or(Arch::Amd64);
    let opts = AcquireOptions {
        offline: global.offline,
        ..Default::default()
    };
    let stage = crate::progress::stage("base", "getting the base image");
    let (base, name) = if let Some(name) = &spec.catalog {
        let (entry, dir) = crate::base::catalog::find_entry(name, &loaded.dir, catalog)?;
        if entry.build.is_some() {
            let accel = crate::accel::resolve(global.accel)?;
            (
                crate::base::build::build_base(&entry, arch, cache, global.offline, accel)?,
                name.clone(),
            )
        } else {
            let resolved = ResolvedBase::from_catalog(&entry, arch, &dir)?;
            (
                crate::base::acquire_blocking(&resolved, cache, &opts)?,
                name.clone(),
            )
        }
    } else {
        let resolved = ResolvedBase::from_spec(spec, &loaded.dir)?;
        let name = spec
            .url
            .clone()
            .or_else(|| spec.path.clone())
            .unwrap_or_default();
        (
            crate::base::acquire_blocking(&resolved, cache, &opts)?,
            name,
        )
    };
    stage.done();
    Ok((base, name))
}

/// The ttyd binary on the host, when it does not come from the guest's packages.
pub fn ttyd_binary(
    global: &GlobalOpts,
    loaded: &LoadedRecipe,
    cache: &Cache,
) -> Result<Option<PathBuf>> {
    let t = &loaded.recipe.ttyd;
    if !t.enabled {
        return Ok(None);
    }
    match &t.source {
        TtydSource::Package(_) => Ok(None),
        TtydSource::Path(p) => {
            let path = loaded.dir.join(&p.0);
            if !path.is_file() {
                bail!("ttyd.source.path {} does not exist", path.display());
            }
            Ok(Some(path))
        }
        TtydSource::Url(u) => {
            let opts = AcquireOptions {
                offline: global.offline,
                ..Default::default()
            };
            let p = crate::base::fetch_file_blocking(
                &u.url,
                &u.sha256,
                u.member.as_deref(),
                cache,
                &opts,
            )
            .with_context(|| format!("fetching ttyd from {}", u.url))?;
            Ok(Some(p))
        }
    }
}

/// A work directory removed on drop unless it must be kept.
pub struct WorkDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl WorkDir {
    pub fn new(global: &GlobalOpts, cache: &Cache) -> Result<WorkDir> {
        let parent = global
            .work_dir
            .clone()
            .unwrap_or_else(|| cache.root().join("work"));
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a work directory in {}", parent.display()))?;
        let path = dir.path().to_path_buf();
        if global.keep_work_dir {
            let kept = dir.keep();
            crate::progress::say(format!("keeping the work directory {}", kept.display()));
            return Ok(WorkDir { dir: None, path });
        }
        Ok(WorkDir {
            dir: Some(dir),
            path,
        })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
}

/// The label holding a build's input hash.
pub const BUILD_KEY_LABEL: &str = "io.diskforge.build-key";

/// A hash of everything a build's result depends on: the resolved recipe, the base
/// image's content, the content of files copied from the recipe's directory, the ttyd
/// binary, and diskforge's version. Secret values are not part of it (they are never
/// stored); change the recipe or use `--force` to rebuild for a new password.
pub fn build_key(loaded: &LoadedRecipe, base: &CachedBase, ttyd: Option<&Path>) -> Result<String> {
    let mut files = Vec::new();
    for f in &loaded.recipe.customize.files {
        if let Some(src) = &f.source {
            let p = loaded.dir.join(&src.0);
            let (h, _) = crate::cache::sha256_file(&p)
                .with_context(|| format!("hashing {}", p.display()))?;
            files.push(serde_json::json!({"path": f.path.0, "sha256": h}));
        }
    }
    let ttyd = match ttyd {
        Some(p) => Some(crate::cache::sha256_file(p)?.0),
        None => None,
    };
    let v = serde_json::json!({
        "recipe": loaded.digest,
        "base": base.digest,
        "files": files,
        "ttyd": ttyd,
        "diskforge": env!("CARGO_PKG_VERSION"),
    });
    Ok(format!(
        "sha256:{}",
        crate::cache::sha256_hex(&crate::oci::image::canonical_json(&v)?)
    ))
}

/// Runs the disk part of a build; returns the finished disk in `work`.
pub fn build_disk(
    global: &GlobalOpts,
    loaded: &LoadedRecipe,
    (base, base_name): (CachedBase, String),
    ttyd: Option<PathBuf>,
    build_key: String,
    work: &Path,
) -> Result<(PathBuf, Prepared)> {
    let secrets = resolve_secrets(loaded)?;
    let r = &loaded.recipe;
    let customization = script::generate(r, &secrets, &loaded.dir, ttyd.as_deref())?;
    let target_size = r
        .disk
        .size
        .map(|s| s.target(base.virtual_size))
        .unwrap_or(base.virtual_size);
    let accel = crate::accel::resolve(global.accel)?;
    let prepared = Prepared {
        build_key,
        loaded: loaded.clone(),
        base: base.clone(),
        base_name,
        customization,
        secrets,
        target_size,
    };
    let job = GuestJob {
        base: &base.path,
        base_format: base.format,
        base_size: base.virtual_size,
        target_size,
        grow: r.disk.grow.enabled,
        grow_partition: r.disk.grow.partition.as_deref(),
        customization: &prepared.customization,
        sparsify: r.hygiene.sparsify,
        secrets: prepared.secrets.values(),
        work,
        accel,
        output_format: r.output.format,
        qcow2_compress: r.output.qcow2_compress,
    };
    let overlay = work.join("overlay.qcow2");
    let stage = crate::progress::stage(
        "resize",
        format!(
            "overlay on the cached base, resized to {}",
            crate::progress::human_bytes(target_size)
        ),
    );
    guest::prepare_overlay(&job, &overlay)?;
    stage.done();
    let stage = crate::progress::stage(
        "guest",
        "one appliance launch: grow, customize, ttyd, hygiene",
    );
    guest::customize(&job, &overlay)?;
    stage.done();
    let stage = crate::progress::stage("finalize", "flattening into a standalone disk");
    let ext = if r.output.format == crate::recipe::DiskFormat::Raw {
        "img"
    } else {
        "qcow2"
    };
    let disk = work.join(format!("disk.{ext}"));
    let info = guest::finalize(&overlay, &disk, r.output.format, r.output.qcow2_compress)?;
    let _ = std::fs::remove_file(&overlay);
    stage.done();
    crate::progress::say(format!(
        "disk: {} {}, virtual size {}, {} on disk",
        info.format,
        disk.display(),
        crate::progress::human_bytes(info.virtual_size),
        crate::progress::human_bytes(std::fs::metadata(&disk).map(|m| m.len()).unwrap_or(0))
    ));
    Ok((disk, prepared))
}

/// Moves a finished file into place atomically (copying across filesystems).
pub fn install_file(src: &Path, dest: &Path) -> Result<()> {
    if std::fs::rename(src, dest).is_ok() {
        return Ok(());
    }
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut temp = crate::cache::TempFile::new_in(&dir)?;
    let mut f = std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    std::io::copy(&mut crate::interrupt::Checked(&mut f), temp.file())
        .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    temp.persist(dest)
}

pub fn cmd_build(global: &GlobalOpts, args: BuildArgs) -> Result<ExitCode> {
    if args.disk_only.is_some() && args.recipes.len() > 1 {
        bail!("--disk-only takes one recipe");
    }
    let cache = Cache::open(global.cache_dir.as_deref())?;
    let started = std::time::Instant::now();
    for path in &args.recipes {
        let loaded = load(path, &args.inputs)?;
        if loaded.recipe.partial {
            bail!(
                "{} is a partial recipe (`partial: true`): build a recipe that extends it",
                path.display()
            );
        }
        // Secrets first: a missing one fails before anything slow happens.
        resolve_secrets(&loaded)?;
        crate::progress::say(format!("building {}", path.display()));
        let base = acquire_base(global, &loaded, &cache, args.inputs.catalog.as_deref())?;
        let ttyd = ttyd_binary(global, &loaded, &cache)?;
        let key = build_key(&loaded, &base.0, ttyd.as_deref())?;
        if args.disk_only.is_none() && !args.force {
            let dests = crate::publish::destinations(&loaded, &args.output)?;
            let reg = crate::oci::registry_options(
                &args.output,
                &loaded.recipe.output.insecure_registries,
            );
            if crate::publish::all_up_to_date(&dests, &key, &reg) {
                println!(
                    "up to date: {} already hold{} an image built from the same inputs (build key {}); nothing to do (--force rebuilds)",
                    dests.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
                    if dests.len() == 1 { "s" } else { "" },
                    &key[7..19]
                );
                crate::progress::event("up_to_date", serde_json::json!({"build_key": key}));
                continue;
            }
        }
        let work = WorkDir::new(global, &cache)?;
        let (disk, prepared) = build_disk(global, &loaded, base, ttyd, key, work.path())?;
        match &args.disk_only {
            Some(dest) => {
                install_file(&disk, dest)?;
                println!("{}", dest.display());
            }
            None => {
                let published =
                    crate::publish::publish(global, &prepared, &disk, &args.output, work.path())?;
                crate::oci::report(&published, &args.output)?;
            }
        }
    }
    crate::progress::say(format!(
        "build finished in {}",
        crate::progress::format_duration(started.elapsed())
    ));
    Ok(ExitCode::SUCCESS)
}
