//! One pipeline for `plan` and `build`: `Plan::new` turns a resolved recipe into typed
//! steps ([`step`]: base, overlay, appliance launches, stage, finalize, then a disk or
//! pack, publish and attest), each with its payload decided once and its key (a hash of
//! its inputs chained to the previous step's key). `plan` prints the payloads (exact
//! command lines, secrets as `***`, tags expanded); `run` executes them, matching every
//! step; the build key is the last key.
//!
//! With `--incremental`, the disk after growth and package installation is kept in the
//! cache under its stage key, and a rebuild whose packages did not change starts from
//! it: only users, files, commands, ttyd and hygiene run again.

pub mod attest;
pub mod promote;
pub mod publish;
pub mod resolve;
pub mod stages;
pub mod step;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use crate::base::CachedBase;
use crate::cache::Cache;
use crate::guest::fish::Session;
use crate::guest::fish::{Drive, Fish};
use crate::guest::script::{self, Customization, Secrets};
use crate::guest::selinux::Relabel;
use crate::oci::Compression;
use crate::recipe::{self, Arch, DiskFormat, LoadedRecipe};
use crate::registry::RegistryOptions;
use crate::sys::accel;
use crate::sys::exec::{Cmd, PathNames};
use crate::sys::qemu_img;
use resolve::TtydBinary;
pub use resolve::{Base, Resolved};
use step::{
    Attest, Backing, BaseAction, Deliver, DeliverStep, DiskStep, Finalize, GrowRoot, Growth,
    GuestSpec, Keyed, Overlay, Pack, Parts, Publish, Settle, Shown, Stage, Step,
};

/// What every build shares: the cache, the accelerator, where work happens, registries.
#[derive(Debug, Clone)]
pub struct BuildEnv {
    pub cache: Cache,
    pub accel: accel::Accel,
    pub offline: bool,
    /// Parent of the work directories [default: the cache's `work/`].
    pub work_root: Option<PathBuf>,
    pub keep_work: bool,
    pub registry: RegistryOptions,
    /// Registry clients made so far, shared by every clone of this context.
    pub clients: crate::registry::Clients,
}

impl BuildEnv {
    /// What publishing an image uses of this context.
    pub fn registries(&self) -> publish::Registries<'_> {
        publish::Registries {
            cache: &self.cache,
            options: &self.registry,
            clients: &self.clients,
        }
    }

    /// This context with the registries `r` lists under `output.insecure-registries`
    /// reached over plain HTTP.
    pub fn for_recipe(&self, r: &recipe::Recipe) -> BuildEnv {
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

/// A build, described: every step decided, each with its key.
pub struct Plan {
    pub resolved: Resolved,
    pub base: Keyed<BaseAction>,
    /// From the base to the disk before finalize: overlay, appliance launches, stage.
    pub disk: Vec<Keyed<DiskStep>>,
    pub finalize: Keyed<Finalize>,
    pub deliver: Deliver,
    /// The key of the whole build (stored as a label; "up to date" compares it).
    pub build_key: String,
    /// `--force`: build an image even when every destination holds one of this key.
    pub force: bool,
    pub work: PathBuf,
    pub customization: Customization,
    /// The work and cache directories as `$WORK` and `$CACHE` in command lines, so a plan
    /// and its build print the same commands wherever their files live.
    pub names: PathNames,
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
        env: &BuildEnv,
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
        let real_secrets = secrets;
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
        let relabel = customization_relabel(r, &resolved, &customization);
        // A build compares the passwords a kept customized disk holds; a plan reads none.
        let unpatchable = real_secrets.map(|s| s.unpatchable(customization.patchable.passwords));
        let base_format = match &resolved.base {
            Base::Image { spec, .. } => spec.format,
            Base::Build { .. } => DiskFormat::Qcow2,
        };
        let keys = Keys::new(&resolved, identity.as_deref(), base_format, &customization)?;
        let stage_hit = if opts.incremental && identity.is_some() {
            stages::lookup(&env.cache, &keys.packages)?
        } else {
            None
        };
        let base_path = resolved
            .base
            .cached()
            .map(|c| c.path.clone())
            .unwrap_or_else(|| env.cache.blob_dir().join(BASE_NOT_YET_CACHED));
        let on_base = |disk: PathBuf, stage: bool| Overlay {
            backing: Backing::Base {
                path: base_path.clone(),
                format: base_format,
            },
            disk,
            size: r.disk.size,
            base_size: resolved.base_size,
            stage,
        };
        let overlay = work.join("overlay.qcow2");
        let stage_disk = work.join("stage.qcow2");
        let has_packages = !customization.package_names.is_empty();
        let grow = match &r.disk.grow {
            g if g.enabled => GrowRoot::IfResized {
                partition: g.partition.clone(),
            },
            _ => GrowRoot::No,
        };
        // With --incremental, the disk after the whole customization is kept too when the
        // host can rewrite files later (there are such files, and the tools are here).
        let settle = opts.incremental
            && keys.settled.is_some()
            && match crate::guest::patch::available() {
                Ok(()) => true,
                Err(why) => {
                    tracing::info!("the customized disk is not kept for host-side rewrites: {why}");
                    false
                }
            };
        let settled_hit = match (&stage_hit, &keys.settled) {
            (Some(stage), Some(k)) if settle => {
                let holds = |s: &stages::Settled| {
                    customization
                        .patchable
                        .files
                        .iter()
                        .all(|f| s.root.holds(&f.path))
                };
                let users = r.customize.users.len();
                match stages::lookup_settled(&env.cache, k, stage, unpatchable.as_ref())?
                    .filter(holds)
                {
                    Some(s) => Some((s, k.clone(), users)),
                    None => settled_with_fewer_users(
                        &env.cache,
                        &resolved,
                        &customization,
                        &keys.packages,
                        stage,
                        unpatchable.as_ref(),
                    )?
                    .filter(|(s, _, _)| holds(s)),
                }
            }
            _ => None,
        };
        let settle_step = |disk: &Path, stage: &Path| -> Result<Option<Keyed<DiskStep>>> {
            Ok(match (&keys.settled, settle) {
                (Some(k), true) => Some(Keyed {
                    key: k.clone(),
                    step: DiskStep::Settle(Settle {
                        disk: disk.to_path_buf(),
                        kept: stages::path(&env.cache, k)?,
                        stage: stage.to_path_buf(),
                        packages: work.join("packages"),
                    }),
                }),
                _ => None,
            })
        };
        let launch = |disk: &Path, parts: Parts, grow: GrowRoot| {
            let (network, sparsify, last) = match parts {
                Parts::Packages => (has_packages, false, false),
                Parts::Rest => (false, r.hygiene.sparsify, true),
                Parts::All => (has_packages, r.hygiene.sparsify, true),
            };
            GuestSpec {
                disk: disk.to_path_buf(),
                parts,
                grow,
                network,
                sparsify,
                // The last launch relabels everything the build wrote, the kept stage
                // included, and reads the package database for the SBOM.
                relabel: if last { relabel } else { Relabel::Skip },
                packages_to: last.then(|| work.join("packages")),
                protect_boot: !writes_boot(r, network, sparsify),
                ttyd_to: if last { ttyd_file.clone() } else { None },
                locate_root: last && settle,
            }
        };
        let keyed = |key: &str, step: DiskStep| Keyed {
            key: key.to_string(),
            step,
        };
        // An overlay on a kept disk: no growth (the kept disk has it).
        let on_kept = |kept: &Path| Overlay {
            backing: Backing::KeptStage(kept.to_path_buf()),
            disk: overlay.clone(),
            size: None,
            base_size: None,
            stage: false,
        };
        let disk = match (opts.incremental, &stage_hit, settled_hit) {
            (false, _, _) => vec![
                keyed(
                    &keys.grow,
                    DiskStep::Overlay(on_base(overlay.clone(), false)),
                ),
                keyed(
                    &keys.guest,
                    DiskStep::Guest(launch(&overlay, Parts::All, grow)),
                ),
            ],
            // The whole customization is done: the host rewrites what changed.
            (true, _, Some((settled, settled_key, users_kept))) => {
                vec![
                    keyed(&keys.packages, DiskStep::KeptPackages),
                    keyed(&settled_key, DiskStep::Overlay(on_kept(&settled.disk))),
                    keyed(
                        &keys.guest,
                        DiskStep::Patch(step::Patch {
                            disk: overlay.clone(),
                            settled,
                            mountpoint: crate::guest::patch::mountpoint(work),
                            packages_to: work.join("packages"),
                            added_users: r.customize.users[users_kept..]
                                .iter()
                                .map(|u| step::AddedUser {
                                    name: u.name.clone(),
                                    keys: !u.ssh_authorized_keys.is_empty(),
                                    sudo: u.sudo,
                                })
                                .collect(),
                        }),
                    ),
                ]
            }
            // Growth and packages are done: the kept stage disk is their result.
            (true, Some(stage), None) => vec![
                keyed(&keys.packages, DiskStep::KeptPackages),
                keyed(&keys.packages, DiskStep::Overlay(on_kept(stage))),
                keyed(
                    &keys.guest,
                    DiskStep::Guest(launch(&overlay, Parts::Rest, GrowRoot::No)),
                ),
            ]
            .into_iter()
            .chain(settle_step(&overlay, stage)?)
            .collect(),
            (true, None, _) => vec![
                keyed(
                    &keys.grow,
                    DiskStep::Overlay(on_base(stage_disk.clone(), true)),
                ),
                keyed(
                    &keys.packages,
                    DiskStep::Guest(launch(&stage_disk, Parts::Packages, grow)),
                ),
                keyed(
                    &keys.packages,
                    DiskStep::Stage(Stage {
                        disk: stage_disk.clone(),
                        kept: stages::path(&env.cache, &keys.packages)?,
                        overlay: overlay.clone(),
                    }),
                ),
                keyed(
                    &keys.guest,
                    DiskStep::Guest(launch(&overlay, Parts::Rest, GrowRoot::No)),
                ),
            ]
            .into_iter()
            .chain(settle_step(
                &overlay,
                &stages::path(&env.cache, &keys.packages)?,
            )?)
            .collect(),
        };
        let o = &r.output;
        let finalize = Keyed {
            key: keys.finalize.clone(),
            step: Finalize {
                from: overlay,
                disk: work.join(format!(
                    "disk.{}",
                    if o.format == DiskFormat::Raw {
                        "img"
                    } else {
                        "qcow2"
                    }
                )),
                format: o.format,
                compress: o.qcow2_compress,
            },
        };
        let image = |step| Keyed {
            key: keys.image.clone(),
            step,
        };
        let deliver = match &opts.disk_only {
            Some(dest) => Deliver::Disk(Keyed {
                key: keys.finalize.clone(),
                step: dest.clone(),
            }),
            None => Deliver::Image {
                pack: image(Pack {
                    disk_name: o.disk_name.clone(),
                    compression: resolved.compression.name(),
                }),
                publish: Keyed {
                    key: keys.image.clone(),
                    step: Publish {
                        destinations: resolved.dests.iter().map(|d| d.to_string()).collect(),
                    },
                },
                attest: Keyed {
                    key: keys.image.clone(),
                    step: Attest {
                        signer: opts.signer.clone(),
                    },
                },
            },
        };
        let base = Keyed {
            key: keys.base.clone(),
            step: base_action(&resolved, work)?,
        };
        let mut plan = Plan {
            base,
            disk,
            finalize,
            deliver,
            build_key: keys.image.clone(),
            force: opts.force,
            work: work.to_path_buf(),
            customization,
            names: PathNames::new(&[(work, "$WORK"), (env.cache.root(), "$CACHE")]),
            resolved,
        };
        if identity.is_none() {
            plan.forget_keys();
        }
        Ok(plan)
    }

    /// Every key becomes [`KEY_NOT_YET_KNOWN`]: they hash a base nothing identifies yet.
    fn forget_keys(&mut self) {
        let unknown = || KEY_NOT_YET_KNOWN.to_string();
        self.build_key = unknown();
        self.base.key = unknown();
        for s in &mut self.disk {
            s.key = unknown();
        }
        self.finalize.key = unknown();
        match &mut self.deliver {
            Deliver::Disk(d) => d.key = unknown(),
            Deliver::Image {
                pack,
                publish,
                attest,
            } => {
                pack.key = unknown();
                publish.key = unknown();
                attest.key = unknown();
            }
        }
    }

    /// The steps in order, with their keys.
    pub fn steps(&self) -> Vec<(&str, Step<'_>)> {
        let mut steps = vec![(self.base.key.as_str(), Step::Base(&self.base.step))];
        steps.extend(
            self.disk
                .iter()
                .map(|s| (s.key.as_str(), Step::Disk(&s.step))),
        );
        steps.push((
            self.finalize.key.as_str(),
            Step::Finalize(&self.finalize.step),
        ));
        match &self.deliver {
            Deliver::Disk(d) => {
                steps.push((d.key.as_str(), Step::Deliver(DeliverStep::Disk(&d.step))))
            }
            Deliver::Image {
                pack,
                publish,
                attest,
            } => steps.extend([
                (
                    pack.key.as_str(),
                    Step::Deliver(DeliverStep::Pack(&pack.step)),
                ),
                (
                    publish.key.as_str(),
                    Step::Deliver(DeliverStep::Publish(&publish.step)),
                ),
                (
                    attest.key.as_str(),
                    Step::Deliver(DeliverStep::Attest(&attest.step)),
                ),
            ]),
        }
        steps
    }

    /// The overlay grows the disk, as far as the plan knows.
    fn grows(&self) -> bool {
        self.disk.iter().any(|s| match &s.step {
            DiskStep::Overlay(o) => o.planned_growth() != Growth::None,
            _ => false,
        })
    }

    /// What `plan` shows of each step, derived from the payload `run` executes.
    pub fn shown(&self) -> Vec<ShownStep> {
        let grows = self.grows();
        self.steps()
            .into_iter()
            .map(|(key, step)| {
                let s = Shown {
                    key,
                    base_label: &self.resolved.base_label,
                    customization: &self.customization,
                    grows,
                };
                ShownStep {
                    name: step.name(),
                    description: step.description(&s),
                    key: key.to_string(),
                    cached: step.cached(),
                    commands: self.commands_of(step, None).unwrap_or_default(),
                    operations: step.operations(&s),
                }
            })
            .collect()
    }

    /// The commands `step` runs on `base` (`None`: the base as the plan knows it), with
    /// the plan's directory names: what `plan` lists and what `run` executes.
    pub fn commands_of(&self, step: Step<'_>, base: Option<&CachedBase>) -> Result<Vec<Cmd>> {
        Ok(step
            .commands_on(base)?
            .into_iter()
            .map(|c| c.named(&self.names))
            .collect())
    }

    /// The plan as JSON (`plan --json`).
    pub fn to_json(&self) -> Value {
        let steps: Vec<Value> = self
            .shown()
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

/// A step as `plan` prints it.
#[derive(Debug, Clone)]
pub struct ShownStep {
    pub name: &'static str,
    pub description: String,
    pub key: String,
    pub cached: bool,
    pub commands: Vec<Cmd>,
    pub operations: Vec<String>,
}

/// The keys of a build's stages, each chained to the one before.
struct Keys {
    base: String,
    grow: String,
    packages: String,
    guest: String,
    /// The guest step's inputs without the content of the files the host can rewrite
    /// (names the settled disk); `None` when there are none.
    settled: Option<String>,
    finalize: String,
    image: String,
}

impl Keys {
    fn new(
        resolved: &Resolved,
        identity: Option<&str>,
        base_format: DiskFormat,
        customization: &Customization,
    ) -> Result<Keys> {
        let r = &resolved.loaded.recipe;
        let sv = &resolved.loaded.secret_values;
        let base = chain(
            "",
            "base",
            json!({"diskforge": env!("CARGO_PKG_VERSION"), "base": identity.unwrap_or(BASE_NOT_YET_CACHED),
                   "arch": resolved.arch.as_str(), "format": base_format.as_str()}),
            sv,
        )?;
        let grow = chain(
            &base,
            "grow",
            json!({"disk": serde_json::to_value(&r.disk)?}),
            sv,
        )?;
        let packages = chain(
            &grow,
            "packages",
            json!({"install": customization.package_names, "remove": r.customize.remove_packages}),
            sv,
        )?;
        let guest = chain(
            &packages,
            "guest",
            json!({"customize": customize_without_packages(r)?, "ttyd": serde_json::to_value(&r.ttyd)?,
                   "desktop": serde_json::to_value(&r.desktop)?,
                   "ttyd-binary": resolved.ttyd.as_ref().map(|t| t.digest().to_string()),
                   "files": resolved.files, "hygiene": serde_json::to_value(&r.hygiene)?}),
            sv,
        )?;
        let settled = settled_key(resolved, customization, &packages, r.customize.users.len())?;
        let finalize = chain(
            &guest,
            "finalize",
            json!({"format": r.output.format.as_str(), "qcow2-compress": r.output.qcow2_compress}),
            sv,
        )?;
        let o = &r.output;
        let image = chain(
            &finalize,
            "pack",
            json!({"compression": resolved.compression.name(), "level": resolved.level,
                   "disk-name": o.disk_name, "labels": o.labels, "annotations": o.annotations,
                   "kubevirt": serde_json::to_value(&o.kubevirt)?, "name": resolved.name,
                   "description": r.description, "version": o.version,
                   "firmware": resolved.firmware.as_str(),
                   "entrypoint": crate::oci::image::ENTRYPOINT_PLACEHOLDER}),
            sv,
        )?;
        Ok(Keys {
            base,
            grow,
            packages,
            guest,
            settled,
            finalize,
            image,
        })
    }
}

/// The key of the disk after the whole customization as the host may patch it: the
/// guest step's inputs (chained to the package stage's key `packages`) without what
/// only the patchable files hold — the content and source of those recipe files, and
/// ttyd's command line and credential user. Two recipes with the same settled key give
/// disks that differ only in those files' content. Of the recipe's users, the first
/// `users_kept` count (all of them: the build's own key; fewer: the key of a disk kept
/// before users were appended, which the host can add).
fn settled_key(
    resolved: &Resolved,
    customization: &Customization,
    packages: &str,
    users_kept: usize,
) -> Result<Option<String>> {
    let p = &customization.patchable;
    if p.is_empty() {
        return Ok(None);
    }
    let r = &resolved.loaded.recipe;
    let mut customize = customize_without_packages(r)?;
    if let Some(users) = customize.get_mut("users").and_then(Value::as_array_mut) {
        users.truncate(users_kept);
    }
    // A recipe without users has no `users` at all.
    if let (0, Some(c)) = (users_kept, customize.as_object_mut()) {
        c.remove("users");
    }
    let mut patched_paths = Vec::new();
    if let Some(files) = customize.get_mut("files").and_then(Value::as_array_mut) {
        for i in &p.recipe_files {
            if let Some(f) = files.get_mut(*i).and_then(Value::as_object_mut) {
                f.remove("content");
                f.remove("source");
                if let Some(path) = f.get("path").and_then(Value::as_str) {
                    patched_paths.push(path.to_string());
                }
            }
        }
    }
    // SSH keys: which users have them stays; the keys themselves are rewritten.
    if let Some(users) = customize.get_mut("users").and_then(Value::as_array_mut) {
        for i in &p.user_keys {
            if let Some(u) = users.get_mut(*i).and_then(Value::as_object_mut) {
                u.insert("ssh-authorized-keys".into(), json!("set"));
            }
        }
    }
    if let (true, Some(c)) = (p.root_keys, customize.as_object_mut()) {
        c.insert("root-ssh-authorized-keys".into(), json!("set"));
    }
    let mut ttyd = serde_json::to_value(&r.ttyd)?;
    if let (true, Some(t)) = (p.ttyd, ttyd.as_object_mut()) {
        for k in ["port", "interface", "writable", "extra-args", "command"] {
            t.remove(k);
        }
        if let Some(c) = t.get_mut("credential").and_then(Value::as_object_mut) {
            c.remove("user");
        }
    }
    let files: Vec<&(String, String)> = resolved
        .files
        .iter()
        .filter(|(path, _)| !patched_paths.contains(path))
        .collect();
    Ok(Some(chain(
        packages,
        "settled",
        json!({"customize": customize, "ttyd": ttyd,
               "desktop": serde_json::to_value(&r.desktop)?,
               "ttyd-binary": resolved.ttyd.as_ref().map(|t| t.digest().to_string()),
               "files": files, "hygiene": serde_json::to_value(&r.hygiene)?,
               "selinux": format!("{:?}", customization_relabel(r, resolved, customization))}),
        &resolved.loaded.secret_values,
    )?))
}

/// A disk kept by a build of this recipe without its last users, when the host can add
/// them as the guest's useradd would ([`crate::guest::accounts`]): with its key and
/// how many of the recipe's users it has. Only when nothing after the users in the
/// guest script depends on them (no commands, no desktop), the logs are emptied (as
/// useradd's lastlog entry is), no recipe file, directory or link goes where useradd
/// reads or writes, and none of the new users is on the disk already.
fn settled_with_fewer_users(
    cache: &Cache,
    resolved: &Resolved,
    customization: &Customization,
    packages: &str,
    stage: &Path,
    unpatchable: Option<&recipe::SecretValue>,
) -> Result<Option<(stages::Settled, String, usize)>> {
    use crate::guest::accounts::USERADD_TOUCHES;
    use crate::guest::patch::under;
    let r = &resolved.loaded.recipe;
    let c = &r.customize;
    let touches = |path: &str| {
        USERADD_TOUCHES
            .iter()
            .any(|d| under(path, d) || under(d, path))
    };
    let appendable = !c.users.is_empty()
        && c.commands.is_empty()
        && !r.desktop.enabled
        && r.hygiene.logs
        && (c.users.iter().all(|u| u.password.is_none()) || customization.patchable.passwords)
        && !c.files.iter().any(|f| touches(&f.path.0))
        && !c.directories.iter().any(|d| touches(&d.path.0))
        && !c.symlinks.iter().any(|l| touches(&l.path.0));
    if !appendable {
        return Ok(None);
    }
    for kept in (0..c.users.len()).rev() {
        let Some(key) = settled_key(resolved, customization, packages, kept)? else {
            return Ok(None);
        };
        let Some(s) = stages::lookup_settled(cache, &key, stage, unpatchable)? else {
            continue;
        };
        let Some(a) = &s.accounts else {
            return Ok(None);
        };
        for u in &c.users[kept..] {
            let home = format!("/home/{}", u.name);
            let shell = u.shell.as_deref().unwrap_or(script::DEFAULT_SHELL);
            let why = a.refuses(u, shell).or_else(|| {
                (!crate::guest::patch::plain_path(&home)
                    || !s.root.holds(&home)
                    || !s.root.holds("/etc/passwd"))
                .then(|| format!("{home} is not on the root filesystem as a plain path"))
            });
            if let Some(why) = why {
                tracing::info!("the appended users are added in the appliance: {why}");
                return Ok(None);
            }
        }
        return Ok(Some((s, key, kept)));
    }
    Ok(None)
}

/// The relabel decision of a build (an input of every disk the last launch makes).
fn customization_relabel(
    r: &recipe::Recipe,
    resolved: &Resolved,
    customization: &Customization,
) -> Relabel {
    Relabel::decide(
        r.customize.selinux_relabel,
        resolved.base_os.as_deref(),
        &customization.package_names,
    )
}

/// A key as JSON: `null` when it is not known yet.
fn known(key: &str) -> Value {
    match key {
        KEY_NOT_YET_KNOWN => Value::Null,
        k => Value::String(k.to_string()),
    }
}

/// The base step: nothing when the base is cached, else a download or a build.
fn base_action(resolved: &Resolved, work: &Path) -> Result<BaseAction> {
    Ok(match (&resolved.base, resolved.base.cached()) {
        (_, Some(c)) => BaseAction::Cached(c.clone()),
        (Base::Image { prepared, spec }, None) => BaseAction::Download {
            from: format!(
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
        },
        (Base::Build { entry, .. }, None) => {
            let spec = entry
                .build
                .as_ref()
                .context("a build base without build:")?;
            let layout = work.join("base.qcow2");
            BaseAction::Build {
                name: entry.name.clone(),
                commands: vec![
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
            }
        }
    })
}

/// A work directory removed on drop unless it must be kept.
pub struct WorkDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl WorkDir {
    pub fn new(env: &BuildEnv) -> Result<WorkDir> {
        let parent = env
            .work_root
            .clone()
            .unwrap_or_else(|| env.cache.root().join("work"));
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a work directory in {}", parent.display()))?;
        let path = dir.path().to_path_buf();
        if env.keep_work {
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
    /// Every destination already holds an image of this build key: nothing was done.
    UpToDate,
}

/// Runs a plan (made with the real secrets and work directory): each step's payload,
/// in order, each step handing what it made to the next, and each given only the part
/// of `env` it uses. First, unless the plan says `force`, an image build whose
/// destinations all hold an image of its build key ends: [`Outcome::UpToDate`].
pub fn run(plan: &Plan, env: &BuildEnv, secrets: &Secrets) -> Result<Outcome> {
    let r = &plan.resolved;
    let env = &env.for_recipe(&r.loaded.recipe);
    if let (Deliver::Image { .. }, false) = (&plan.deliver, plan.force) {
        if publish::up_to_date(&r.dests, &plan.build_key, &env.registry, r.arch.as_str())? {
            return Ok(Outcome::UpToDate);
        }
    }
    crate::progress::say(format!("building {}", r.loaded.path.display()));
    let eff = accel::resolve(env.accel)?;
    if r.loaded.recipe.customize.selinux_relabel == crate::recipe::SelinuxRelabel::Off {
        tracing::warn!(
            "customize.selinux-relabel is false: on an SELinux guest the files this build \
             writes keep no or wrong labels (password login and ttyd may fail under enforcing)"
        );
    }
    let started = chrono::Utc::now();
    let session = Session::new(plan.names.clone());
    let grows = plan.grows();
    let enter = |key: &str, step: Step<'_>| {
        let shown = Shown {
            key,
            base_label: &r.base_label,
            customization: &plan.customization,
            grows,
        };
        (
            StepScope::enter(step.name()),
            crate::progress::stage(step.name(), step.description(&shown)),
        )
    };

    let (_scope, stage) = enter(&plan.base.key, Step::Base(&plan.base.step));
    let base = match &plan.base.step {
        BaseAction::Cached(c) => c.clone(),
        BaseAction::Download { .. } | BaseAction::Build { .. } => {
            acquire_base(r, &env.cache, env.offline, eff, &plan.work, &session)?
        }
    };
    stage.done();

    // Whether the overlay made the disk bigger than the base (decided by the overlay
    // step's payload on the base at hand, and nowhere else).
    let mut resized = false;
    // Where the last launch found the root filesystem (for the settle step).
    let mut root_fs = None;
    for s in &plan.disk {
        let (_scope, stage) = enter(&s.key, Step::Disk(&s.step));
        match &s.step {
            DiskStep::Overlay(o) => {
                for c in plan.commands_of(Step::Disk(&s.step), Some(&base))? {
                    c.run()?;
                }
                resized = o.growth(Some(base.virtual_size))? != Growth::None;
            }
            DiskStep::Guest(g) => {
                if let (Some(t), Some(to)) = (&r.ttyd, &g.ttyd_to) {
                    fetch_ttyd(t, &env.cache, env.offline, to)?;
                }
                let report =
                    crate::guest::run(&guest_job(plan, g, secrets, resized, &session), eff)?;
                root_fs = report.root_fs;
            }
            DiskStep::Settle(st) => settle(plan, st, &s.key, root_fs.take(), secrets),
            DiskStep::Patch(p) => patch(plan, p, secrets)?,
            DiskStep::KeptPackages => {}
            DiskStep::Stage(st) => {
                stages::store(&st.disk, &st.kept, &s.key)?;
                for c in plan.commands_of(Step::Disk(&s.step), Some(&base))? {
                    c.run()?;
                }
            }
        }
        stage.done();
    }

    let (_scope, stage) = enter(&plan.finalize.key, Step::Finalize(&plan.finalize.step));
    let disk = finalize(plan, &plan.finalize.step)?;
    stage.done();

    match &plan.deliver {
        Deliver::Disk(d) => {
            let (_scope, stage) = enter(&d.key, Step::Deliver(DeliverStep::Disk(&d.step)));
            crate::io::atomic::install(&disk.path, &d.step)?;
            stage.done();
            Ok(Outcome::Disk(d.step.clone()))
        }
        Deliver::Image {
            pack,
            publish,
            attest,
        } => {
            // Packing happens while publishing (the layer streams to a registry).
            let (_scope, stage) = enter(&pack.key, Step::Deliver(DeliverStep::Pack(&pack.step)));
            stage.done();
            let (_scope, stage) = enter(
                &publish.key,
                Step::Deliver(DeliverStep::Publish(&publish.step)),
            );
            let published =
                publish::publish(plan, env.registries(), &base, &disk.path, &disk.info)?;
            stage.done();
            let (_scope, stage) = enter(
                &attest.key,
                Step::Deliver(DeliverStep::Attest(&attest.step)),
            );
            publish::attest(
                plan,
                env.registries(),
                &base,
                &published,
                attest.step.signer.as_deref(),
                started,
            )?;
            stage.done();
            Ok(Outcome::Published(Box::new(published)))
        }
    }
}

/// Keeps the customized disk for host-side rewrites, when its root filesystem allows
/// them and a read-only check shows the host can make them. The build does not need
/// it: a failure to keep it is a note or a warning.
fn settle(
    plan: &Plan,
    st: &Settle,
    key: &str,
    root: Option<crate::guest::patch::RootFs>,
    secrets: &Secrets,
) {
    let Some(root) = root.filter(|r| r.editable()) else {
        crate::progress::say(
            "the customized disk is not kept: its root filesystem is not an ext2/3/4 partition \
             the host can rewrite files on (a rebuild customizes it in the appliance)",
        );
        return;
    };
    let files = &plan.customization.patchable.files;
    let checked = match crate::guest::patch::check(&st.disk, &root, files, &plan.work, &plan.names)
    {
        Ok(c) => c,
        Err(e) => {
            crate::progress::say(format!(
                "the customized disk is not kept: the host cannot rewrite its files ({e:#}); a rebuild customizes it in the appliance"
            ));
            return;
        }
    };
    let accounts = checked
        .accounts
        .map_err(|why| {
            tracing::info!("users appended to the recipe later are added in the appliance: {why}")
        })
        .ok();
    let kept = stages::store_settled(
        &st.disk,
        &st.kept,
        key,
        stages::Found { root, accounts },
        &st.stage,
        &secrets.unpatchable(plan.customization.patchable.passwords),
        &st.packages,
    );
    // A failed store leaves nothing of its own behind, and a disk another build kept
    // stays.
    if let Err(e) = kept {
        tracing::warn!("the customized disk is not kept for rebuilds: {e:#}");
    }
}

/// Rewrites the patchable files on an overlay of the settled disk; on failure the
/// settled disk is dropped, so the next build customizes in the appliance.
fn patch(plan: &Plan, p: &step::Patch, secrets: &Secrets) -> Result<()> {
    let files = &plan.customization.patchable.files;
    let names: Vec<String> = p.added_users.iter().map(|u| u.name.clone()).collect();
    let users = new_users(plan, &names)?;
    let done = crate::guest::patch::apply_adding_users(
        &p.disk,
        &p.settled.root,
        files,
        &users,
        &plan.work,
        &secrets.values(),
        &plan.names,
    )
    .map_err(|e| {
        stages::forget(&p.settled.disk);
        e.context(format!(
            "rewriting files of the kept customized disk {} (removed: the next `build --incremental` customizes in the appliance)",
            p.settled.disk.display()
        ))
    })?;
    std::fs::create_dir_all(&p.packages_to)
        .with_context(|| format!("creating {}", p.packages_to.display()))?;
    for e in std::fs::read_dir(&p.settled.packages)
        .with_context(|| format!("listing {}", p.settled.packages.display()))?
    {
        let e = e?;
        std::fs::copy(e.path(), p.packages_to.join(e.file_name()))
            .with_context(|| format!("copying {}", e.path().display()))?;
    }
    if !users.is_empty() {
        crate::progress::say(format!("added {} on the host", names.join(", ")));
    }
    crate::progress::say(format!(
        "rewrote {} on the host: {}",
        match done.len() {
            1 => "1 file".to_string(),
            n => format!("{n} files"),
        },
        done.iter()
            .map(|d| d.path.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    crate::progress::event(
        "patched",
        // No sizes: the credential file's would tell the credential's length.
        json!({"files": done.iter().map(|d| json!({"path": d.path,
               "old_blocks_zeroed": d.old_blocks, "xattrs": d.xattrs})).collect::<Vec<_>>(),
               "added_users": names}),
    );
    Ok(())
}

/// The users a patch adds, as the guest script would: the recipe's spec, the hash of
/// the build's shadow edit and the keys of the build's `authorized_keys` rewrite.
fn new_users(plan: &Plan, names: &[String]) -> Result<Vec<crate::guest::accounts::NewUser>> {
    use crate::guest::patch::PatchData;
    let p = &plan.customization.patchable;
    let hashes: Vec<&(String, String)> = p
        .files
        .iter()
        .filter_map(|f| match &f.data {
            PatchData::Passwords(h) => Some(h),
            _ => None,
        })
        .flatten()
        .collect();
    names
        .iter()
        .map(|name| {
            let u = plan
                .resolved
                .loaded
                .recipe
                .customize
                .users
                .iter()
                .find(|u| &u.name == name)
                .with_context(|| format!("the recipe has no user {name}"))?;
            let hash = match &u.password {
                None => None,
                Some(_) => Some(
                    hashes
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, h)| h.clone())
                        .with_context(|| format!("the password of {name} was not hashed"))?,
                ),
            };
            let keys = match u.ssh_authorized_keys.is_empty() {
                true => None,
                false => Some(
                    p.files
                        .iter()
                        .find_map(|f| match &f.data {
                            PatchData::Content(crate::guest::content::StageData::Bytes(b))
                                if f.home_of.as_ref() == Some(name) =>
                            {
                                Some(b.clone())
                            }
                            _ => None,
                        })
                        .with_context(|| format!("the SSH keys of {name} were not staged"))?,
                ),
            };
            Ok(crate::guest::accounts::NewUser {
                name: name.clone(),
                uid: u.uid,
                shell: u
                    .shell
                    .clone()
                    .unwrap_or_else(|| script::DEFAULT_SHELL.into()),
                groups: u.groups.clone(),
                hash,
                sudo: u.sudo,
                keys,
            })
        })
        .collect()
}

/// The finished disk and what `qemu-img info` says of it.
struct FinishedDisk {
    path: PathBuf,
    info: qemu_img::ImageInfo,
}

/// Runs the finalize commands; the last one's output (`qemu-img info`) is checked.
fn finalize(plan: &Plan, f: &Finalize) -> Result<FinishedDisk> {
    let mut out = None;
    for c in plan.commands_of(Step::Finalize(f), None)? {
        out = Some(c.run()?);
    }
    let out = out.context("finalize ran no command")?;
    let info: qemu_img::ImageInfo = serde_json::from_slice(&out.stdout)
        .context("parsing qemu-img info of the finished disk")?;
    qemu_img::check_info(&f.disk, &info, f.format)?;
    let _ = std::fs::remove_file(&f.from);
    crate::progress::say(format!(
        "disk: {} {}, virtual size {}, {} on disk",
        info.format,
        f.disk.display(),
        crate::progress::human_bytes(info.virtual_size),
        crate::progress::human_bytes(std::fs::metadata(&f.disk).map(|m| m.len()).unwrap_or(0))
    ));
    Ok(FinishedDisk {
        path: f.disk.clone(),
        info,
    })
}

/// Downloads and verifies the base, or builds it; either way into the cache.
fn acquire_base(
    r: &Resolved,
    cache: &Cache,
    offline: bool,
    eff: accel::Effective,
    work: &Path,
    session: &Session,
) -> Result<CachedBase> {
    match &r.base {
        Base::Image { spec, prepared } => {
            let opts = crate::base::AcquireOptions {
                offline,
                ..Default::default()
            };
            crate::base::acquire::fetch_blocking(spec, prepared, cache, &opts)
        }
        Base::Build { entry, .. } => {
            crate::base::build::build_base(entry, r.arch, cache, offline, eff, work, session)
        }
    }
}

/// Puts the ttyd binary into the work directory (fetched through the cache when it is
/// a download).
fn fetch_ttyd(t: &TtydBinary, cache: &Cache, offline: bool, dest: &Path) -> Result<()> {
    let src: PathBuf = match t {
        TtydBinary::File { path, .. } => path.clone(),
        TtydBinary::Url {
            url,
            sha256,
            member,
        } => {
            let checksum = crate::recipe::Checksum::parse(sha256).map_err(anyhow::Error::msg)?;
            let opts = crate::base::AcquireOptions {
                offline,
                ..Default::default()
            };
            crate::base::fetch_file_blocking(url, &checksum, member.as_deref(), cache, &opts)
                .with_context(|| format!("fetching ttyd from {url}"))?
        }
    };
    std::fs::copy(&src, dest)
        .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    Ok(())
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

/// The appliance launch `g` describes; `resized`: the overlay made the disk bigger.
fn guest_job<'a>(
    plan: &'a Plan,
    g: &'a GuestSpec,
    secrets: &Secrets,
    resized: bool,
    session: &'a Session,
) -> crate::guest::GuestJob<'a> {
    let c = &plan.customization;
    crate::guest::GuestJob {
        disk: &g.disk,
        grow: match &g.grow {
            GrowRoot::IfResized { partition } if resized => match partition {
                Some(p) => crate::guest::Grow::Partition(p),
                None => crate::guest::Grow::Root,
            },
            _ => crate::guest::Grow::No,
        },
        parts: match g.parts {
            Parts::Packages => vec![&c.packages],
            Parts::Rest => vec![&c.main],
            Parts::All => vec![&c.packages, &c.main],
        },
        network: g.network,
        sparsify: g.sparsify,
        secrets: secrets.values(),
        work: &plan.work,
        packages_to: g.packages_to.clone(),
        protect_boot: g.protect_boot,
        relabel: g.relabel,
        locate_root: g.locate_root,
        session,
        prefetch: match g.parts {
            Parts::Packages | Parts::All if !c.package_names.is_empty() => {
                Some(crate::guest::apt::Prefetch {
                    packages: c.package_names.clone(),
                    arch: plan.resolved.arch.as_str(),
                    // Lists a later step may read: a kept stage's (a rebuild's recipe
                    // commands may differ), or when commands follow or nothing removes them.
                    keep_lists: g.parts == Parts::Packages || {
                        let r = &plan.resolved.loaded.recipe;
                        !r.hygiene.package_cache || !r.customize.commands.is_empty()
                    },
                })
            }
            _ => None,
        },
    }
}
