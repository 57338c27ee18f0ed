//! One pipeline for `plan` and `build`: a build is a list of typed steps (base, overlay,
//! guest, finalize, pack, publish), each able to describe itself (what `plan` prints:
//! exact command lines, secrets as `***`, tags expanded), to give its key (a hash of its
//! inputs chained to the previous step's key) and to run. `plan` describes, `build`
//! runs; the build key is the last key.
//!
//! With `--incremental`, the disk after growth and package installation is kept in the
//! cache under its stage key, and a rebuild whose packages did not change starts from
//! it: only users, files, commands, ttyd and hygiene run again.

pub mod attest;
pub mod promote;
pub mod publish;
pub mod resolve;
pub mod stages;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::base::CachedBase;
use crate::cache::Cache;
use crate::guest::fish::{Drive, Fish};
use crate::guest::script::{self, Customization, Secrets};
use crate::guest::selinux::Relabel;
use crate::oci::Compression;
use crate::recipe::{self, Arch, DiskFormat, LoadedRecipe};
use crate::registry::RegistryOptions;
use crate::sys::accel;
use crate::sys::exec::Cmd;
use crate::sys::qemu_img;
pub use resolve::{Base, Resolved};

/// What every build shares: the cache, the accelerator, where work happens, registries.
#[derive(Debug, Clone)]
pub struct Context {
    pub cache: Cache,
    pub accel: accel::Accel,
    pub offline: bool,
    /// Parent of the work directories [default: the cache's `work/`].
    pub work_root: Option<PathBuf>,
    pub keep_work: bool,
    pub registry: RegistryOptions,
    /// Registry clients made so far, shared by every clone of this context.
    pub clients: Clients,
}

/// One registry client per registry (and way of reaching it) for a whole command: a
/// build's up-to-date check, push and attestations share its connections and token.
#[derive(Clone, Default)]
pub struct Clients(std::sync::Arc<std::sync::Mutex<ClientMap>>);

/// Clients by (registry, reached over plain HTTP).
type ClientMap = std::collections::HashMap<(String, bool), std::sync::Arc<crate::registry::Client>>;

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "Clients({n})")
    }
}

impl Context {
    /// The client for `registry` (connected on first use).
    pub async fn client(&self, registry: &str) -> Result<std::sync::Arc<crate::registry::Client>> {
        let plain = !self.registry.tls_verify
            || self
                .registry
                .insecure_registries
                .iter()
                .any(|r| r == registry);
        let key = (registry.to_string(), plain);
        if let Some(c) = self.clients.0.lock().expect("clients lock").get(&key) {
            return Ok(c.clone());
        }
        let client =
            std::sync::Arc::new(crate::registry::Client::connect(registry, &self.registry).await?);
        Ok(self
            .clients
            .0
            .lock()
            .expect("clients lock")
            .entry(key)
            .or_insert(client)
            .clone())
    }

    /// This context with the registries `r` lists under `output.insecure-registries`
    /// reached over plain HTTP.
    pub fn for_recipe(&self, r: &recipe::Recipe) -> Context {
        let mut c = self.clone();
        c.registry
            .insecure_registries
            .extend(r.output.insecure_registries.iter().cloned());
        c
    }
}

/// What the command line adds to a build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub set: Vec<String>,
    /// Host files allowed beyond the recipe's directory, and the `--base` file.
    pub host: crate::recipe::HostAccess,
    pub catalog: Option<PathBuf>,
    /// `--output` destinations (none: the recipe's).
    pub outputs: Vec<String>,
    pub compression: Option<Compression>,
    pub level: Option<u32>,
    pub arch: Option<Arch>,
    pub incremental: bool,
    pub force: bool,
    /// Stop after the finished disk and write it here.
    pub disk_only: Option<PathBuf>,
    /// Sign the pushed manifest digest (and the provenance) with this key.
    pub signer: Option<std::sync::Arc<crate::provenance::PrivateKey>>,
}

/// One step of a build.
#[derive(Debug)]
pub struct Step {
    pub name: &'static str,
    pub description: String,
    /// A hash of the step's inputs chained to the previous step's key.
    pub key: String,
    /// The external commands the step runs, in order.
    pub commands: Vec<Cmd>,
    /// What the step does inside the appliance (not processes of their own).
    pub operations: Vec<String>,
    /// Nothing to do: the result is in the cache.
    pub cached: bool,
}

/// A build, described.
pub struct Plan {
    pub resolved: Resolved,
    pub steps: Vec<Step>,
    /// The key of the whole build (stored as a label; "up to date" compares it).
    pub build_key: String,
    pub work: PathBuf,
    pub incremental: bool,
    /// The incremental stage disk, when the cache has it.
    pub stage_hit: Option<PathBuf>,
    pub customization: Customization,
    /// What the last guest launch does about SELinux labels.
    pub relabel: Relabel,
}

/// The label holding a build's key.
pub const BUILD_KEY_LABEL: &str = "io.diskforge.build-key";

/// What a plan names the cached base's file with while the base is neither downloaded
/// nor built: its blob name (the digest of its bytes) is known only then. `build` runs
/// the planned command with the real name in its place.
pub const BASE_NOT_YET_CACHED: &str = "BASE-DIGEST";

/// What a plan shows for keys that depend on a base whose digest is not known yet
/// (`checksum: none`, or a checksum file not read with `--offline`, and no cached copy);
/// `plan --json` gives `null`.
pub const KEY_NOT_YET_KNOWN: &str = "unknown until the base is downloaded";

/// `sha256:` of a step's inputs chained to `prev`, with the values of secret variables
/// masked: the build key is published as a label, and must not let anyone test guesses
/// at a secret (changing only a secret therefore needs `build --force`).
fn chain(prev: &str, step: &str, mut inputs: Value, secrets: &[String]) -> Result<String> {
    crate::redact::mask_json(&mut inputs, secrets);
    let bytes =
        crate::io::hash::canonical_json(&json!({"prev": prev, "step": step, "inputs": inputs}))?;
    Ok(crate::io::hash::sha256_digest(&bytes))
}

/// The customization part of a recipe without its packages (the guest step's inputs).
fn customize_without_packages(r: &recipe::Recipe) -> Result<Value> {
    let mut c = serde_json::to_value(&r.customize)?;
    if let Some(m) = c.as_object_mut() {
        m.remove("packages");
        m.remove("remove-packages");
    }
    Ok(c)
}

/// Placeholder secrets: plans never read secrets, but the steps stay the same.
fn placeholder_secrets(r: &recipe::Recipe) -> Secrets {
    let p = || crate::recipe::SecretValue::new(crate::redact::REDACTED.into());
    Secrets {
        users: r
            .customize
            .users
            .iter()
            .filter(|u| u.password.is_some())
            .map(|u| (u.name.clone(), p()))
            .collect(),
        root: r.customize.root_password.as_ref().map(|_| p()),
        ttyd: r.ttyd.credential.as_ref().map(|c| {
            crate::recipe::SecretValue::new(format!("{}:{}", c.user, crate::redact::REDACTED))
        }),
        desktop: r.desktop.credential.as_ref().map(|_| p()),
    }
}

/// Resolves every secret of a recipe (fails early when one is missing).
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
            let joined = format!("{}:{}", c.user, v.expose());
            crate::redact::register(&joined);
            s.ttyd = Some(recipe::SecretValue::new(joined));
        }
    }
    if r.desktop.enabled {
        if let Some(c) = &r.desktop.credential {
            let v = recipe::secret::resolve(c, &loaded.dir)
                .context("resolving the desktop credential")?;
            recipe::validate::check_vnc_password(v.expose()).map_err(anyhow::Error::msg)?;
            s.desktop = Some(v);
        }
    }
    Ok(s)
}

impl Plan {
    /// Describes the build of `resolved`, with its intermediate files under `work`.
    /// `secrets` are `None` for a plan (placeholders stand in).
    pub fn new(
        resolved: Resolved,
        opts: &BuildOptions,
        ctx: &Context,
        work: &Path,
        secrets: Option<&Secrets>,
    ) -> Result<Plan> {
        let r = &resolved.loaded.recipe;
        // A plan (no secrets resolved) may show a base whose content nothing identifies
        // yet (`checksum: none`, or a checksum file not read offline): its keys are
        // unknown. A build needs them.
        let identity = match resolved.base.identity() {
            Ok(id) => Some(id),
            Err(_) if secrets.is_none() => None,
            Err(e) => return Err(e),
        };
        let placeholders;
        let secrets = match secrets {
            Some(s) => s,
            None => {
                placeholders = placeholder_secrets(r);
                &placeholders
            }
        };
        let ttyd_file = resolved.ttyd.as_ref().map(|_| work.join("ttyd"));
        let customization =
            script::generate(r, secrets, &resolved.loaded.dir, ttyd_file.as_deref())?;
        let relabel = Relabel::decide(
            r.customize.selinux_relabel,
            resolved.base_os.as_deref(),
            &customization.package_names,
        );
        let base_format = match &resolved.base {
            Base::Image { spec, .. } => spec.format,
            Base::Build { .. } => DiskFormat::Qcow2,
        };
        let base_path = resolved
            .base
            .cached()
            .map(|c| c.path.clone())
            .unwrap_or_else(|| ctx.cache.blob_dir().join(BASE_NOT_YET_CACHED));
        // Without the base's size (not downloaded yet), a size in the recipe means growth.
        let grows = r.disk.grow.enabled
            && match (resolved.base_size, resolved.target_size) {
                (Some(b), Some(t)) => t > b,
                _ => r.disk.size.is_some(),
            };

        let sv = &resolved.loaded.secret_values;
        let k_base = chain(
            "",
            "base",
            json!({"diskforge": env!("CARGO_PKG_VERSION"), "base": identity.as_deref().unwrap_or(BASE_NOT_YET_CACHED),
                   "arch": resolved.arch.as_str(), "format": base_format.as_str()}),
            sv,
        )?;
        let k_grow = chain(
            &k_base,
            "grow",
            json!({"disk": serde_json::to_value(&r.disk)?}),
            sv,
        )?;
        let k_packages = chain(
            &k_grow,
            "packages",
            json!({"install": customization.package_names, "remove": r.customize.remove_packages}),
            sv,
        )?;
        let k_guest = chain(
            &k_packages,
            "guest",
            json!({"customize": customize_without_packages(r)?, "ttyd": serde_json::to_value(&r.ttyd)?,
                   "desktop": serde_json::to_value(&r.desktop)?,
                   "ttyd-binary": resolved.ttyd.as_ref().map(|t| t.digest().to_string()),
                   "files": resolved.files, "hygiene": serde_json::to_value(&r.hygiene)?}),
            sv,
        )?;
        let k_final = chain(
            &k_guest,
            "finalize",
            json!({"format": r.output.format.as_str(), "qcow2-compress": r.output.qcow2_compress}),
            sv,
        )?;
        let o = &r.output;
        let k_image = chain(
            &k_final,
            "pack",
            json!({"compression": resolved.compression.name(), "level": resolved.level,
                   "disk-name": o.disk_name, "labels": o.labels, "annotations": o.annotations,
                   "kubevirt": serde_json::to_value(&o.kubevirt)?, "name": resolved.name,
                   "description": r.description, "version": o.version,
                   "firmware": resolved.firmware.as_str(),
                   "entrypoint": crate::oci::image::ENTRYPOINT_PLACEHOLDER}),
            sv,
        )?;

        let stage_hit = if opts.incremental && identity.is_some() {
            stages::lookup(&ctx.cache, &k_packages)?
        } else {
            None
        };
        let overlay = work.join("overlay.qcow2");
        let stage_disk = work.join("stage.qcow2");
        let target = resolved.target_size;
        let resize = |disk: &Path| -> Option<Cmd> {
            match (resolved.base_size, target, r.disk.size) {
                (Some(b), Some(t), _) if t > b => Some(qemu_img::resize_cmd(disk, t)),
                // Known once the base is downloaded.
                (None, _, Some(size)) => Some(qemu_img::resize_placeholder_cmd(
                    disk,
                    &format!("<{size} for the downloaded base>"),
                )),
                _ => None,
            }
        };
        let grow_op = || {
            format!(
                "grow {} to the end of the disk, then its filesystem",
                r.disk
                    .grow
                    .partition
                    .clone()
                    .unwrap_or_else(|| "the partition holding /".into())
            )
        };
        let mut steps = Vec::new();
        steps.push(base_step(&resolved, &k_base, work)?);

        let split = opts.incremental;
        if split {
            match &stage_hit {
                Some(stage) => {
                    // Growth and packages are done: the kept stage disk is their result.
                    steps.push(Step {
                        name: "guest-packages",
                        description: format!(
                            "grow and install packages: the kept stage disk {}",
                            short(&k_packages)
                        ),
                        key: k_packages.clone(),
                        commands: Vec::new(),
                        operations: Vec::new(),
                        cached: true,
                    });
                    steps.push(Step {
                        name: "overlay",
                        description: format!(
                            "overlay on the kept stage disk {}",
                            short(&k_packages)
                        ),
                        key: k_packages.clone(),
                        commands: vec![qemu_img::create_overlay_cmd(
                            stage,
                            DiskFormat::Qcow2,
                            &overlay,
                        )],
                        operations: Vec::new(),
                        cached: false,
                    });
                }
                None => {
                    let mut commands = vec![qemu_img::create_overlay_cmd(
                        &base_path,
                        base_format,
                        &stage_disk,
                    )];
                    commands.extend(resize(&stage_disk));
                    steps.push(Step {
                        name: "overlay",
                        description: "stage disk on the cached base (never modified), resized"
                            .into(),
                        key: k_grow.clone(),
                        commands,
                        operations: Vec::new(),
                        cached: false,
                    });
                    let mut ops = Vec::new();
                    if grows {
                        ops.push(grow_op());
                    }
                    ops.extend(customization.packages.steps.iter().cloned());
                    steps.push(Step {
                        name: "guest-packages",
                        description: "one appliance launch: grow and install packages; the disk is kept for later builds".into(),
                        key: k_packages.clone(),
                        commands: vec![Fish::launch_cmd(
                            &[Drive { path: &stage_disk, format: "qcow2", readonly: false }],
                            !customization.package_names.is_empty(),
                        )],
                        operations: ops,
                        cached: false,
                    });
                    steps.push(Step {
                        name: "stage",
                        description: format!("keep the stage disk as {}", short(&k_packages)),
                        key: k_packages.clone(),
                        commands: vec![qemu_img::create_overlay_cmd(
                            &stages::path(&ctx.cache, &k_packages)?,
                            DiskFormat::Qcow2,
                            &overlay,
                        )],
                        operations: Vec::new(),
                        cached: false,
                    });
                }
            }
            steps.push(Step {
                name: "guest",
                description: "one appliance launch: users, files, commands, ttyd, desktop, hygiene"
                    .into(),
                key: k_guest.clone(),
                commands: vec![Fish::launch_cmd(
                    &[Drive {
                        path: &overlay,
                        format: "qcow2",
                        readonly: false,
                    }],
                    false,
                )],
                operations: customization
                    .main
                    .steps
                    .iter()
                    .cloned()
                    .chain(relabel.operation())
                    .collect(),
                cached: false,
            });
        } else {
            let mut commands = vec![qemu_img::create_overlay_cmd(
                &base_path,
                base_format,
                &overlay,
            )];
            commands.extend(resize(&overlay));
            steps.push(Step {
                name: "overlay",
                description: format!(
                    "overlay on the cached base (never modified){}",
                    match target {
                        Some(t) => format!(", resized to {}", crate::progress::human_bytes(t)),
                        None => String::new(),
                    }
                ),
                key: k_grow.clone(),
                commands,
                operations: Vec::new(),
                cached: false,
            });
            let mut ops = Vec::new();
            if grows {
                ops.push(grow_op());
            }
            ops.extend(customization.steps());
            ops.extend(relabel.operation());
            if r.hygiene.sparsify {
                ops.push("zero free space".into());
            }
            steps.push(Step {
                name: "guest",
                description:
                    "one appliance launch: grow, packages, customization, ttyd, desktop, hygiene"
                        .into(),
                key: k_guest.clone(),
                commands: vec![Fish::launch_cmd(
                    &[Drive {
                        path: &overlay,
                        format: "qcow2",
                        readonly: false,
                    }],
                    !customization.package_names.is_empty(),
                )],
                operations: ops,
                cached: false,
            });
        }
        let disk = work.join(format!(
            "disk.{}",
            if o.format == DiskFormat::Raw {
                "img"
            } else {
                "qcow2"
            }
        ));
        let mut fin = vec![qemu_img::convert_cmd(
            &overlay,
            &disk,
            o.format,
            o.qcow2_compress,
        )];
        if o.format == DiskFormat::Qcow2 {
            fin.push(qemu_img::check_cmd(&disk));
        }
        fin.push(qemu_img::info_cmd(&disk));
        steps.push(Step {
            name: "finalize",
            description: "flatten into a standalone disk and check it".into(),
            key: k_final.clone(),
            commands: fin,
            operations: Vec::new(),
            cached: false,
        });
        match &opts.disk_only {
            Some(dest) => steps.push(Step {
                name: "disk",
                description: format!("write the disk to {}", dest.display()),
                key: k_final.clone(),
                commands: Vec::new(),
                operations: Vec::new(),
                cached: false,
            }),
            None => {
                steps.push(Step {
                    name: "pack",
                    description: format!(
                        "pack /disk/{} (107:107, 0440) into an OCI layer ({}), config and manifest",
                        o.disk_name,
                        resolved.compression.name()
                    ),
                    key: k_image.clone(),
                    commands: Vec::new(),
                    operations: Vec::new(),
                    cached: false,
                });
                steps.push(Step {
                    name: "publish",
                    description: format!(
                        "write {}",
                        resolved
                            .dests
                            .iter()
                            .map(|d| d.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    key: k_image.clone(),
                    commands: Vec::new(),
                    operations: Vec::new(),
                    cached: false,
                });
                steps.push(Step {
                    name: "attest",
                    description: format!(
                        "attach an SPDX SBOM of the guest's packages and SLSA provenance{}",
                        match &opts.signer {
                            Some(k) => format!(", signed with key {}", k.public().fingerprint()),
                            None => String::new(),
                        }
                    ),
                    key: k_image.clone(),
                    commands: Vec::new(),
                    operations: Vec::new(),
                    cached: false,
                });
            }
        }
        let build_key = match identity {
            Some(_) => k_image,
            None => {
                for s in &mut steps {
                    s.key = KEY_NOT_YET_KNOWN.to_string();
                }
                KEY_NOT_YET_KNOWN.to_string()
            }
        };
        Ok(Plan {
            resolved,
            steps,
            build_key,
            work: work.to_path_buf(),
            incremental: opts.incremental,
            stage_hit,
            customization,
            relabel,
        })
    }

    /// The plan as JSON (`plan --json`).
    pub fn to_json(&self) -> Value {
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                json!({"step": s.name, "description": s.description, "key": known(&s.key), "cached": s.cached,
                       "commands": s.commands.iter().map(Cmd::display).collect::<Vec<_>>(),
                       "operations": s.operations})
            })
            .collect();
        json!({
            "recipe": self.resolved.loaded.path,
            "recipe_digest": self.resolved.loaded.digest,
            "build_key": known(&self.build_key),
            "destinations": self.resolved.dests.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "steps": steps,
        })
    }
}

/// A key as JSON: `null` when it is not known yet.
fn known(key: &str) -> Value {
    match key {
        KEY_NOT_YET_KNOWN => Value::Null,
        k => Value::String(k.to_string()),
    }
}

fn short(key: &str) -> &str {
    let h = key.trim_start_matches("sha256:");
    &h[..h.len().min(12)]
}

/// The base step: nothing when the base is cached, else a download or a build.
fn base_step(resolved: &Resolved, key: &str, work: &Path) -> Result<Step> {
    let (description, commands, cached) = match (&resolved.base, resolved.base.cached()) {
        (_, Some(c)) => (
            format!("base {} (cached, {})", resolved.base_label, c.digest),
            Vec::new(),
            true,
        ),
        (Base::Image { prepared, spec }, None) => (
            format!(
                "download {}{} and verify it{}",
                resolved.base_label,
                match &spec.source {
                    crate::base::acquire::BaseSource::Url { url, .. }
                        if *url != resolved.base_label =>
                    {
                        format!(" ({url})")
                    }
                    _ => String::new(),
                },
                match (&prepared.expected, &spec.source) {
                    (Some(d), _) => format!(" against {d}"),
                    (
                        None,
                        crate::base::acquire::BaseSource::Url {
                            checksum: crate::recipe::ChecksumSpec::File(f),
                            ..
                        },
                    ) => format!(
                        " against its checksum file {} (not read with --offline; the base's digest is unknown)",
                        f.url
                    ),
                    (None, _) => " — NOT verified (`checksum: none`; the base's digest is unknown until it is downloaded)".to_string(),
                }
            ),
            Vec::new(),
            false,
        ),
        (Base::Build { entry, .. }, None) => {
            let spec = entry
                .build
                .as_ref()
                .context("a build base without build:")?;
            let layout = work.join("base.qcow2");
            (
                format!(
                    "build base {} from distribution packages (cached afterwards)",
                    entry.name
                ),
                vec![
                    crate::base::build::mmdebstrap_cmd(spec, &work.join("rootfs.tar")),
                    qemu_img::create_cmd(&layout, spec.size_bytes()?),
                    Fish::launch_cmd(
                        &[Drive {
                            path: &layout,
                            format: "qcow2",
                            readonly: false,
                        }],
                        false,
                    ),
                ],
                false,
            )
        }
    };
    Ok(Step {
        name: "base",
        description,
        key: key.to_string(),
        commands,
        operations: Vec::new(),
        cached,
    })
}

/// A work directory removed on drop unless it must be kept.
pub struct WorkDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl WorkDir {
    pub fn new(ctx: &Context) -> Result<WorkDir> {
        let parent = ctx
            .work_root
            .clone()
            .unwrap_or_else(|| ctx.cache.root().join("work"));
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a work directory in {}", parent.display()))?;
        let path = dir.path().to_path_buf();
        if ctx.keep_work {
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

/// Sets the `$WORK` and `$CACHE` names used in displayed command lines.
pub fn alias_dirs(ctx: &Context, work: &Path) {
    crate::sys::exec::alias_path(work, "$WORK");
    crate::sys::exec::alias_path(ctx.cache.root(), "$CACHE");
}

/// Reports the step a thread runs on its events until dropped.
struct StepScope(Option<String>);

impl StepScope {
    fn enter(name: &str) -> StepScope {
        StepScope(crate::progress::set_step(Some(name.to_string())))
    }
}

impl Drop for StepScope {
    fn drop(&mut self) {
        crate::progress::set_step(self.0.take());
    }
}

/// What a finished build produced.
#[derive(Debug)]
pub enum Outcome {
    Published(Box<publish::Published>),
    Disk(PathBuf),
}

/// Runs a plan (made with the real secrets and work directory).
pub fn run(plan: &Plan, ctx: &Context, opts: &BuildOptions, secrets: &Secrets) -> Result<Outcome> {
    let r = &plan.resolved;
    let recipe = &r.loaded.recipe;
    let work = &plan.work;
    let eff = accel::resolve(ctx.accel)?;
    if recipe.customize.selinux_relabel == crate::recipe::SelinuxRelabel::Off {
        tracing::warn!(
            "customize.selinux-relabel is false: on an SELinux guest the files this build \
             writes keep no or wrong labels (password login and ttyd may fail under enforcing)"
        );
    }
    let mut base: Option<CachedBase> = r.base.cached().cloned();
    let mut disk: Option<PathBuf> = None;
    let mut finalized: Option<qemu_img::ImageInfo> = None;
    let mut published: Option<publish::Published> = None;
    let started = chrono::Utc::now();
    for step in &plan.steps {
        let _scope = StepScope::enter(step.name);
        let stage = crate::progress::stage(step.name, &step.description);
        match step.name {
            "base" if step.cached => {}
            "base" => base = Some(acquire_base(r, ctx, eff, work)?),
            "overlay" => {
                let b = base.as_ref().context("no base")?;
                overlay_step(step, plan, b)?;
            }
            "guest-packages" if step.cached => {}
            "guest-packages" => {
                let grow = grows(r, base.as_ref().context("no base")?);
                let disk = work.join("stage.qcow2");
                let job = guest_job(plan, secrets, eff, &disk, true, grow);
                crate::guest::run(&job)?;
            }
            "stage" => {
                // The plan's overlay command names the kept disk's path in the cache.
                stages::store(&ctx.cache, &step.key, &work.join("stage.qcow2"))?;
                for c in &step.commands {
                    c.run()?;
                }
            }
            "guest" => {
                if let Some(t) = &r.ttyd {
                    publish::fetch_ttyd(t, ctx, &work.join("ttyd"))?;
                }
                let grow = !plan.incremental && grows(r, base.as_ref().context("no base")?);
                let disk = work.join("overlay.qcow2");
                let job = guest_job(plan, secrets, eff, &disk, false, grow);
                crate::guest::run(&job)?;
            }
            "finalize" => {
                let mut out = None;
                for c in &step.commands {
                    out = Some(c.run()?);
                }
                let info: qemu_img::ImageInfo =
                    serde_json::from_slice(&out.context("no info")?.stdout)
                        .context("parsing qemu-img info of the finished disk")?;
                let path = work.join(format!(
                    "disk.{}",
                    if recipe.output.format == DiskFormat::Raw {
                        "img"
                    } else {
                        "qcow2"
                    }
                ));
                qemu_img::check_info(&path, &info, recipe.output.format)?;
                let _ = std::fs::remove_file(work.join("overlay.qcow2"));
                crate::progress::say(format!(
                    "disk: {} {}, virtual size {}, {} on disk",
                    info.format,
                    path.display(),
                    crate::progress::human_bytes(info.virtual_size),
                    crate::progress::human_bytes(
                        std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
                    )
                ));
                disk = Some(path);
                finalized = Some(info);
            }
            "disk" => {
                let dest = opts
                    .disk_only
                    .as_ref()
                    .context("no --disk-only destination")?;
                crate::io::atomic::install(disk.as_ref().context("no disk")?, dest)?;
                stage.done();
                return Ok(Outcome::Disk(dest.clone()));
            }
            "pack" => {}
            "publish" => {
                let b = base.as_ref().context("no base")?;
                let info = finalized.as_ref().context("no finished disk")?;
                published = Some(publish::publish(
                    plan,
                    ctx,
                    b,
                    disk.as_ref().context("no disk")?,
                    info,
                )?);
            }
            "attest" => {
                let p = published.as_ref().context("nothing published")?;
                let b = base.as_ref().context("no base")?;
                publish::attest(plan, ctx, b, p, opts.signer.as_deref(), started)?;
            }
            other => bail!("unknown step {other}"),
        }
        stage.done();
    }
    match published {
        Some(p) => Ok(Outcome::Published(Box::new(p))),
        None => bail!("the plan has no final step"),
    }
}

fn acquire_base(
    r: &Resolved,
    ctx: &Context,
    eff: accel::Effective,
    work: &Path,
) -> Result<CachedBase> {
    match &r.base {
        Base::Image { spec, prepared } => {
            let opts = crate::base::AcquireOptions {
                offline: ctx.offline,
                ..Default::default()
            };
            crate::base::acquire::block_on(crate::base::acquire::fetch(
                spec, prepared, &ctx.cache, &opts,
            ))
        }
        Base::Build { entry, .. } => {
            crate::base::build::build_base(entry, r.arch, &ctx.cache, ctx.offline, eff, work)
        }
    }
}

/// Runs an overlay step's commands, refusing to shrink.
fn overlay_step(step: &Step, plan: &Plan, base: &CachedBase) -> Result<()> {
    let r = &plan.resolved;
    let target = r
        .loaded
        .recipe
        .disk
        .size
        .map(|s| s.target(base.virtual_size))
        .unwrap_or(base.virtual_size);
    if target < base.virtual_size {
        bail!(
            "refusing to shrink the disk: the base is {} ({} bytes) and the recipe asks for {} ({target} bytes)",
            crate::progress::human_bytes(base.virtual_size),
            base.virtual_size,
            crate::progress::human_bytes(target),
        );
    }
    if plan.stage_hit.is_some() {
        for c in &step.commands {
            c.run()?;
        }
        return Ok(());
    }
    // The plan may have been made before the base was fetched: its commands are rebuilt
    // from the base at hand, in the same order.
    let overlay = plan.work.join(if plan.incremental {
        "stage.qcow2"
    } else {
        "overlay.qcow2"
    });
    qemu_img::create_overlay_cmd(&base.path, base.format, &overlay).run()?;
    if target > base.virtual_size {
        qemu_img::resize_cmd(&overlay, target).run()?;
    }
    Ok(())
}

/// Whether the root partition grows: the recipe wants it and the disk got bigger.
fn grows(r: &Resolved, base: &CachedBase) -> bool {
    let d = &r.loaded.recipe.disk;
    d.grow.enabled
        && d.size
            .is_some_and(|s| s.target(base.virtual_size) > base.virtual_size)
}

/// Whether a guest job may write under `/boot`: package installs and removals (kernel
/// and boot loader hooks), the recipe's own commands, anything it places there, and
/// sparsify (which zeroes every filesystem's free space).
fn writes_boot(recipe: &crate::recipe::Recipe, network: bool, sparsify: bool) -> bool {
    let c = &recipe.customize;
    let under_boot = |p: &str| p == "/boot" || p.starts_with("/boot/");
    network
        || sparsify
        || !c.packages.is_empty()
        || !c.remove_packages.is_empty()
        || !c.commands.is_empty()
        || c.files.iter().any(|f| under_boot(&f.path.0))
        || c.directories.iter().any(|d| under_boot(&d.path.0))
        || c.symlinks.iter().any(|l| under_boot(&l.path.0))
}

fn guest_job<'a>(
    plan: &'a Plan,
    secrets: &Secrets,
    eff: accel::Effective,
    disk: &'a Path,
    packages_only: bool,
    grow: bool,
) -> crate::guest::GuestJob<'a> {
    let recipe = &plan.resolved.loaded.recipe;
    let c = &plan.customization;
    let (parts, network, sparsify) = if packages_only {
        (vec![&c.packages], !c.package_names.is_empty(), false)
    } else if plan.incremental {
        (vec![&c.main], false, recipe.hygiene.sparsify)
    } else {
        (
            vec![&c.packages, &c.main],
            !c.package_names.is_empty(),
            recipe.hygiene.sparsify,
        )
    };
    crate::guest::GuestJob {
        disk,
        grow: grow.then_some(recipe.disk.grow.partition.as_deref()),
        parts,
        network,
        sparsify,
        secrets: secrets.values(),
        work: &plan.work,
        accel: eff,
        // The last launch reads the package database for the SBOM.
        packages_to: (!packages_only).then(|| plan.work.join("packages")),
        protect_boot: !writes_boot(recipe, network, sparsify),
        // The last launch relabels everything the build wrote, the kept stage included.
        relabel: if packages_only {
            Relabel::Skip
        } else {
            plan.relabel
        },
    }
}
