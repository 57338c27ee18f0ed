//! `diskforge build`: one recipe, or many in parallel (`--jobs`), each checked for being
//! up to date first; one failing recipe does not stop the others (unless
//! `--fail-fast`); a table on stdout and a JSON report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::out::{out, outln};
use super::UsageError;
use crate::cli::{BuildArgs, GlobalOpts, ReportOpts};
use crate::pipeline::resolve::PartialRecipe;
use crate::pipeline::{self, publish::Published, BuildEnv, BuildOptions, Outcome, Plan, WorkDir};

/// What happened to one recipe.
#[derive(Debug, Clone, Serialize)]
pub struct RecipeReport {
    pub recipe: PathBuf,
    pub name: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<String>,
    pub destinations: Vec<String>,
    pub duration_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why a recipe was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What became of a recipe (`status` in the report and the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Built,
    UpToDate,
    Failed,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Built => "built",
            Status::UpToDate => "up-to-date",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

/// Loads a signing key; the password of an encrypted one comes from a file or
/// DISKFORGE_KEY_PASSWORD, never from the command line.
pub fn load_key(
    path: &Path,
    password: &crate::cli::KeyPassword,
) -> Result<crate::provenance::PrivateKey> {
    let secret = match &password.key_password_file {
        Some(f) => Some(crate::recipe::Secret::File(f.display().to_string())),
        None => std::env::var_os("DISKFORGE_KEY_PASSWORD")
            .map(|_| crate::recipe::Secret::Env("DISKFORGE_KEY_PASSWORD".into())),
    };
    crate::provenance::PrivateKey::load(path, secret.as_ref(), Path::new("."))
}

pub fn options(a: &BuildArgs) -> Result<BuildOptions> {
    Ok(BuildOptions {
        set: a.inputs.set.clone(),
        host: super::host_access(&a.inputs)?,
        catalog: a.inputs.catalog.clone(),
        outputs: a.destinations.clone(),
        compression: a.output.layer.compression,
        level: a.output.layer.compression_level,
        arch: a.inputs.arch.map(super::arch),
        incremental: a.incremental,
        force: a.force,
        disk_only: a.disk_only.clone(),
        signer: a
            .sign_key
            .as_deref()
            .map(|k| load_key(k, &a.key_password).map(std::sync::Arc::new))
            .transpose()?,
    })
}

/// Options that need a registry destination, checked before any work.
pub fn check_report_opts(report: &ReportOpts, dests: &[String]) -> Result<()> {
    if report.print_vm_manifest
        && !dests.is_empty()
        && !dests.iter().any(|d| d.starts_with("docker://"))
    {
        return Err(UsageError(
            "--print-vm-manifest needs a docker:// destination: a VM boots an image from a registry".into(),
        )
        .into());
    }
    Ok(())
}

/// The recipes selected by `--only` / `--except` (matched on the recipe's file stem).
fn select(args: &BuildArgs) -> Result<Vec<PathBuf>> {
    let pats = |v: &[String]| -> Result<Vec<glob::Pattern>> {
        v.iter()
            .map(|p| glob::Pattern::new(p).with_context(|| format!("bad pattern {p:?}")))
            .collect()
    };
    let only = pats(&args.only)?;
    let except = pats(&args.except)?;
    Ok(args
        .recipes
        .iter()
        .filter(|p| {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            (only.is_empty() || only.iter().any(|g| g.matches(&stem)))
                && !except.iter().any(|g| g.matches(&stem))
        })
        .cloned()
        .collect())
}

/// Recipes built at once by default: one per core, and no more than the memory carries
/// (an appliance and a package install take about 2 GiB).
pub fn default_jobs() -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb >> 20)
        .unwrap_or(2);
    cores.min((mem_gib / 2).max(1) as usize).max(1)
}

/// What `build` was asked, checked and typed before any work: every later function
/// gets this (or the part of it it needs), never the command line.
pub struct BuildRequest {
    pub recipes: Vec<PathBuf>,
    pub opts: BuildOptions,
    pub registry: crate::registry::RegistryOptions,
    pub report: ReportOpts,
    /// `--report FILE`.
    pub report_file: Option<PathBuf>,
    pub jobs: usize,
    pub fail_fast: bool,
    pub pull_method: Option<crate::kubevirt::PullMethod>,
    pub kubevirt_manifests: Option<PathBuf>,
}

impl BuildRequest {
    /// Checks the command line (wrong usage exits 2 before any work) and types it.
    pub fn from_args(args: BuildArgs) -> Result<BuildRequest> {
        let recipes = select(&args)?;
        if recipes.is_empty() {
            return Err(UsageError("no recipe left after --only/--except".into()).into());
        }
        if args.disk_only.is_some() && recipes.len() > 1 {
            return Err(UsageError("--disk-only takes one recipe".into()).into());
        }
        let report = &args.output.report;
        if recipes.len() > 1 && (report.digest_file.is_some() || report.print_vm_manifest) {
            return Err(
                UsageError("--digest-file and --print-vm-manifest take one recipe".into()).into(),
            );
        }
        if recipes.len() > 1 {
            if let Some(o) = args.destinations.iter().find(|o| !o.contains("{name}")) {
                return Err(UsageError(format!(
                    "--output {o} would receive every recipe: with several recipes, name each image with {{name}} (e.g. docker://HOST/lab/{{name}}:latest)"
                ))
                .into());
            }
        }
        check_report_opts(report, &args.destinations)?;
        // A destination malformed whatever the templates expand to is wrong usage, found
        // before any work; one that only a recipe's values make malformed fails at resolve.
        for o in &args.destinations {
            pipeline::resolve::check_destination_template(o)
                .map_err(|e| UsageError(format!("{e:#}")))?;
        }
        let opts = options(&args)?;
        if args.destinations.is_empty() && report.print_vm_manifest {
            // The recipe's own destinations push exactly when it names a repository
            // (resolve::destinations): known from the recipe alone, before any work.
            let kind = match pipeline::resolve::names_repository(&recipes[0], &opts)? {
                true => "docker://",
                false => "oci:",
            };
            check_report_opts(report, &[kind.to_string()])?;
        }
        Ok(BuildRequest {
            registry: super::push_options(&args.registry, &args.limit)?,
            jobs: args
                .jobs
                .unwrap_or_else(default_jobs)
                .clamp(1, recipes.len()),
            recipes,
            opts,
            report: args.output.report,
            report_file: args.report,
            fail_fast: args.fail_fast,
            pull_method: args.kubevirt.pull_method.map(super::pull_method),
            kubevirt_manifests: args.kubevirt.kubevirt_manifests,
        })
    }
}

pub fn run(g: &GlobalOpts, args: BuildArgs) -> Result<ExitCode> {
    let request = BuildRequest::from_args(args)?;
    let env = super::context(g, request.registry.clone())?;
    let recipes = &request.recipes;
    let started = Instant::now();
    let (reports, single_error) = if recipes.len() == 1 {
        let (report, error) = build_one(&recipes[0], &request, &env, true);
        (vec![report], error)
    } else {
        (build_many(&request, &env), None)
    };
    if let Some(f) = &request.report_file {
        let doc = serde_json::json!({"recipes": reports, "duration_seconds": started.elapsed().as_secs_f64()});
        crate::io::atomic::write(f, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    if recipes.len() > 1 {
        print_table(&reports)?;
    }
    crate::progress::say(format!(
        "build finished in {}",
        crate::progress::format_duration(started.elapsed())
    ));
    let failed: Vec<&RecipeReport> = reports
        .iter()
        .filter(|r| r.status == Status::Failed)
        .collect();
    match failed.as_slice() {
        [] => Ok(ExitCode::SUCCESS),
        [one] if recipes.len() == 1 => {
            Err(single_error
                .unwrap_or_else(|| anyhow::anyhow!(one.error.clone().unwrap_or_default())))
        }
        many => {
            for f in many {
                eprintln!(
                    "error: {}: {}",
                    f.recipe.display(),
                    f.error.as_deref().unwrap_or("")
                );
            }
            Ok(ExitCode::from(1))
        }
    }
}

fn build_many(request: &BuildRequest, env: &BuildEnv) -> Vec<RecipeReport> {
    let (recipes, jobs) = (&request.recipes, request.jobs);
    crate::progress::say(format!(
        "building {} recipes, {jobs} at a time",
        recipes.len()
    ));
    crate::progress::label_by_recipe(true);
    // Reversed: workers pop from the end, and recipes start in the order given.
    let queue = Arc::new(Mutex::new(
        recipes
            .iter()
            .cloned()
            .enumerate()
            .rev()
            .collect::<Vec<_>>(),
    ));
    let results = Arc::new(Mutex::new(vec![None; recipes.len()]));
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        for _ in 0..jobs {
            let (queue, results, stop) = (queue.clone(), results.clone(), stop.clone());
            s.spawn(move || loop {
                let next = queue.lock().expect("queue lock").pop();
                let Some((i, path)) = next else { break };
                let report = if stop.load(Ordering::SeqCst) {
                    skipped(&path, "not started: a recipe failed and --fail-fast is set")
                } else if crate::sys::interrupt::interrupted() {
                    skipped(&path, "not started: interrupted")
                } else {
                    let (report, error) = build_one(&path, request, env, false);
                    if let Some(e) = error {
                        super::recipe_error_events(&e);
                    }
                    report
                };
                if report.status == Status::Failed && request.fail_fast {
                    stop.store(true, Ordering::SeqCst);
                }
                results.lock().expect("results lock")[i] = Some(report);
            });
        }
    });
    let mut out = Vec::new();
    for (i, r) in Arc::try_unwrap(results)
        .map(|m| m.into_inner().expect("results lock"))
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        out.push(r.unwrap_or_else(|| skipped(&recipes[i], "not started")));
    }
    out
}

/// The report of a recipe before anything happened to it.
fn blank(path: &Path) -> RecipeReport {
    RecipeReport {
        recipe: path.to_path_buf(),
        name: stem(path),
        status: Status::Skipped,
        digest: None,
        pinned: None,
        destinations: Vec::new(),
        duration_seconds: 0.0,
        layer_size: None,
        build_key: None,
        error: None,
        reason: None,
    }
}

fn skipped(path: &Path, reason: &str) -> RecipeReport {
    RecipeReport {
        reason: Some(reason.to_string()),
        ..blank(path)
    }
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Builds one recipe (`single`: the only one of the command): its report, and the typed
/// error of a failed build (a single build returns it: exit code, events; a build of
/// several reports its recipe errors as events). Among several recipes, a partial one
/// (a shared parent) is skipped.
pub fn build_one(
    path: &Path,
    request: &BuildRequest,
    env: &BuildEnv,
    single: bool,
) -> (RecipeReport, Option<anyhow::Error>) {
    let started = Instant::now();
    crate::progress::set_recipe(Some(path.display().to_string()));
    let mut report = blank(path);
    let mut error = None;
    match build_recipe(path, request, env, single, &mut report) {
        Ok(()) => {}
        Err(e) if !single && e.is::<PartialRecipe>() => {
            report.reason = Some("partial recipe: a shared parent that others extend".into());
            crate::progress::say(format!("skipping {}: a partial recipe", path.display()));
        }
        Err(e) => {
            report.status = Status::Failed;
            report.error = Some(super::error_text(&e));
            crate::progress::event("recipe-failed", serde_json::json!({"error": report.error}));
            error = Some(e);
        }
    }
    report.duration_seconds = started.elapsed().as_secs_f64();
    crate::progress::set_recipe(None);
    (report, error)
}

fn build_recipe(
    path: &Path,
    request: &BuildRequest,
    env: &BuildEnv,
    single: bool,
    report: &mut RecipeReport,
) -> Result<()> {
    let opts = &request.opts;
    let resolved = pipeline::resolve::resolve(path, opts, env)?;
    report.name = resolved.name.clone();
    report.destinations = resolved.dests.iter().map(|d| d.to_string()).collect();
    check_report_opts(
        &request.report,
        &report
            .destinations
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>(),
    )?;
    // Secrets first: a missing one fails before anything slow happens.
    let secrets = pipeline::resolve_secrets(&resolved.loaded)?;
    let work = WorkDir::new(env)?;
    let plan = Plan::new(resolved, opts, env, work.path(), Some(&secrets))?;
    report.build_key = Some(plan.build_key.clone());
    match pipeline::run(&plan, env, &secrets)? {
        Outcome::UpToDate => {
            report.status = Status::UpToDate;
            crate::progress::event(
                "up_to_date",
                serde_json::json!({"build_key": plan.build_key}),
            );
            let dests = &plan.resolved.dests;
            let msg = format!(
                "up to date: {} already hold{} an image built from the same inputs (build key {}); nothing to do (--force rebuilds)",
                report.destinations.join(", "),
                if dests.len() == 1 { "s" } else { "" },
                &plan.build_key[7..19]
            );
            if single && !request.report.print_vm_manifest {
                outln!("{msg}")?;
            } else {
                crate::progress::say(msg);
            }
        }
        Outcome::Disk(d) => {
            report.status = Status::Built;
            outln!("{}", d.display())?;
        }
        Outcome::Published(p) => {
            report.status = Status::Built;
            report.digest = Some(p.image.manifest.digest().to_string());
            report.pinned = p.pinned.clone();
            report.layer_size = Some(p.image.layer.size);
            let image = ClusterImage {
                pinned: p.pinned.as_deref(),
                tag: p.tags.first().map(String::as_str),
                name: &plan.resolved.name,
                disk_virtual_size: p.disk_virtual_size,
                recipe: Some(&plan.resolved.loaded.recipe),
                pull_method: request.pull_method,
                firmware: plan.resolved.firmware,
            };
            let dir = request
                .kubevirt_manifests
                .as_ref()
                .map(|d| d.join(dns_name(&plan.resolved.name)));
            if single {
                print_published(&p, &image, &request.report, dir.as_deref())?;
            } else if let (Some(dir), Some(m)) = (&dir, image.manifests()?) {
                m.write_dir(dir)?;
            }
        }
    }
    Ok(())
}

/// What the cluster-side manifests are made from.
pub struct ClusterImage<'a> {
    /// `HOST/REPO@sha256:…`, when the image was pushed.
    pub pinned: Option<&'a str>,
    /// The tag CDI follows.
    pub tag: Option<&'a str>,
    pub name: &'a str,
    pub disk_virtual_size: u64,
    pub recipe: Option<&'a crate::recipe::Recipe>,
    /// `--pull-method`.
    pub pull_method: Option<crate::kubevirt::PullMethod>,
    /// The firmware the image boots with.
    pub firmware: crate::recipe::Firmware,
}

impl ClusterImage<'_> {
    /// The KubeVirt/CDI objects for the pushed image (`None`: nothing was pushed).
    pub fn manifests(&self) -> Result<Option<crate::kubevirt::Manifests>> {
        let Some(pinned) = self.pinned else {
            return Ok(None);
        };
        let (repo, digest) = pinned
            .split_once('@')
            .context("a pinned reference without a digest")?;
        let tag = self.tag.unwrap_or("latest");
        let mut input = crate::kubevirt::ManifestInput::new(
            repo,
            tag,
            digest,
            &dns_name(self.name),
            self.disk_virtual_size,
        );
        input.pull_method = self.pull_method;
        if let Some(r) = self.recipe {
            let k = &r.output.kubevirt;
            input.instancetype = k
                .instancetype
                .as_deref()
                .map(crate::kubevirt::TypeRef::cluster);
            input.preference = k
                .preference
                .as_deref()
                .map(crate::kubevirt::TypeRef::cluster);
            input.ttyd_port = r.ttyd.enabled.then_some(r.ttyd.port);
            input.desktop_port = r.desktop.enabled.then_some(r.desktop.port);
            input.user_data_secret = k.cloud_init.as_ref().map(|c| c.user_data_secret.clone());
        }
        input.boot = match self.firmware {
            crate::recipe::Firmware::Bios => crate::kubevirt::BootFirmware::Bios,
            f => crate::kubevirt::BootFirmware::Efi {
                secure_boot: f == crate::recipe::Firmware::UefiSecureBoot,
            },
        };
        crate::kubevirt::Manifests::generate(&input).map(Some)
    }
}

/// A Kubernetes object name from an image name (lower case, `-` for anything else,
/// at most 52 characters so derived names still fit).
pub(crate) fn dns_name(name: &str) -> String {
    let mut s: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.truncate(52);
    let s = s.trim_matches('-').to_string();
    match s.chars().next() {
        Some(c) if c.is_ascii_alphabetic() => s,
        _ => format!("vm-{s}").trim_end_matches('-').to_string(),
    }
}

/// Prints what was written, and writes the digest file, the VM manifest and the
/// cluster manifests when asked. With `--print-vm-manifest` the manifest is the only
/// thing on stdout.
pub fn print_published(
    p: &Published,
    image: &ClusterImage<'_>,
    report: &ReportOpts,
    manifests_dir: Option<&Path>,
) -> Result<()> {
    let summary = format!(
        "image {}  layer {} ({})\n{}",
        p.image.manifest.digest(),
        p.image.layer.digest,
        crate::progress::human_bytes(p.image.layer.size),
        p.written.join("\n")
    );
    if report.print_vm_manifest {
        eprintln!("{summary}");
    } else {
        outln!("{summary}")?;
    }
    if let Some(f) = &report.digest_file {
        crate::io::atomic::write(f, format!("{}\n", p.image.manifest.digest()).as_bytes())?;
    }
    let manifests = if report.print_vm_manifest || manifests_dir.is_some() {
        image.manifests()?
    } else {
        None
    };
    if report.print_vm_manifest {
        let m = manifests
            .as_ref()
            .context("--print-vm-manifest needs a docker:// destination")?;
        let (_, yaml) = m
            .documents()?
            .into_iter()
            .next()
            .context("no VM manifest")?;
        out!("{yaml}")?;
    }
    if let Some(dir) = manifests_dir {
        match &manifests {
            Some(m) => {
                for f in m.write_dir(dir)? {
                    crate::progress::say(format!("wrote {}", f.display()));
                }
            }
            None => crate::progress::say(
                "no KubeVirt manifests: the image was not pushed to a registry (give a docker:// destination)",
            ),
        }
    }
    Ok(())
}

fn print_table(reports: &[RecipeReport]) -> Result<()> {
    outln!(
        "{:<28} {:<11} {:>9} {:>10}  DIGEST / ERROR / REASON",
        "RECIPE",
        "STATUS",
        "TIME",
        "LAYER"
    )?;
    for r in reports {
        outln!(
            "{:<28} {:<11} {:>9} {:>10}  {}",
            r.name,
            r.status.as_str(),
            crate::progress::format_duration(std::time::Duration::from_secs_f64(
                r.duration_seconds
            )),
            r.layer_size
                .map(crate::progress::human_bytes)
                .unwrap_or_else(|| "-".into()),
            r.digest
                .clone()
                .or_else(|| r
                    .error
                    .as_ref()
                    .map(|e| e.lines().next().unwrap_or("").to_string()))
                .or_else(|| r.reason.clone())
                .unwrap_or_else(|| "-".into())
        )?;
    }
    Ok(())
}
