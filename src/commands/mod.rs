//! One file per subcommand: map the command line to typed options, call the pipeline
//! and the library, print results. Results go to stdout (one documented format per
//! flag); everything meant for people goes to stderr.

pub mod base;
pub mod build;
pub mod cache;
pub mod disk;
pub mod image;
pub mod init;
pub mod out;
pub mod outdated;
pub mod plan;
pub mod promote;
pub mod run;
pub mod sign;
pub mod summary;
pub mod validate;
pub mod verify;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::{Cli, Command, GlobalOpts, RegistryArgs};
use crate::pipeline;
use crate::registry::RegistryOptions;

/// Exit code of `outdated` when some image needs a rebuild.
pub const EXIT_STALE: u8 = 5;

/// Sets up `tracing` on stderr according to -v/-q (RUST_LOG overrides). Colour only on
/// a terminal, and never with NO_COLOR set.
pub fn init_logging(global: &GlobalOpts) {
    let level = if global.quiet {
        "error"
    } else {
        match global.verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("diskforge={level}")));
    let color = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    // With --json-events a warning is an event, not also a log line: stderr stays JSON
    // lines (debug and trace lines asked for with -v still print).
    let json = global.json_events;
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(Redacting)
                .with_ansi(color)
                .with_target(false)
                .without_time()
                .with_filter(tracing_subscriber::filter::filter_fn(move |m| {
                    !(json && *m.level() == tracing::Level::WARN)
                })),
        )
        .with(WarningEvents)
        .try_init();
}

/// Every warning is also a `warning` event (docs/events.md) when `--json-events` is on,
/// so that CI sees them without parsing log lines.
struct WarningEvents;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarningEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() != tracing::Level::WARN {
            return;
        }
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "message" {
                    self.0 = value.to_string();
                }
            }
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        crate::progress::event("warning", serde_json::json!({ "message": m.0 }));
    }
}

/// stderr for log lines, with every registered secret replaced by `***`.
struct Redacting;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Redacting {
    type Writer = RedactingWriter;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter(Vec::new())
    }
}

struct RedactingWriter(Vec<u8>);

impl std::io::Write for RedactingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactingWriter {
    fn drop(&mut self) {
        // Written from the thread that logs, so a recipe's lines carry its name; wrapped
        // to a terminal's width.
        let mut text = crate::progress::prefixed(&crate::redact::apply(
            &String::from_utf8_lossy(&self.0),
            &[],
        ));
        if let Some(width) = crate::progress::stderr_width() {
            text = crate::progress::wrap(&text, width);
        }
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), text.as_bytes());
    }
}

pub use out::{ClosedStdout, EXIT_CLOSED_STDOUT};

/// Exit codes documented in `diskforge --help` and docs/cli.md.
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    ExitCode::from(exit_code_number(err))
}

/// The number behind [`exit_code_for`].
pub fn exit_code_number(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<ClosedStdout>().is_some() {
        return EXIT_CLOSED_STDOUT;
    }
    if let Some(sig) = crate::sys::interrupt::signal() {
        return (128 + sig) as u8;
    }
    let verification = err.downcast_ref::<verify::ContractViolation>().is_some()
        || err
            .downcast_ref::<crate::base::checksum::ChecksumMismatch>()
            .is_some()
        || err
            .downcast_ref::<crate::base::signature::SignatureInvalid>()
            .is_some()
        || err
            .downcast_ref::<crate::vm::probe::BootCheckFailed>()
            .is_some()
        || err
            .downcast_ref::<crate::pipeline::promote::DigestMismatch>()
            .is_some();
    if verification {
        return 4;
    }
    if err
        .downcast_ref::<crate::sys::exec::MissingTool>()
        .is_some()
        || err
            .downcast_ref::<crate::guest::selinux::NoRelabelTool>()
            .is_some()
    {
        return 3;
    }
    if err.downcast_ref::<crate::recipe::RecipeErrors>().is_some()
        || err.downcast_ref::<UsageError>().is_some()
        || err.downcast_ref::<crate::vm::seed::BadUserData>().is_some()
    {
        return 2;
    }
    1
}

/// A `--firmware` value of `run` and `verify` (exit 2 when it names none).
pub fn parse_firmware(s: &str) -> anyhow::Result<crate::recipe::Firmware> {
    use crate::recipe::Firmware;
    Firmware::parse(s).ok_or_else(|| {
        UsageError(format!(
            "--firmware {s:?}: expected one of {}",
            Firmware::ALL.map(Firmware::as_str).join(", ")
        ))
        .into()
    })
}

/// A wrong combination of options (exit code 2), found before any work starts.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `--pull-method` as the cluster objects spell it.
pub fn pull_method(a: crate::cli::PullMethodArg) -> crate::kubevirt::PullMethod {
    match a {
        crate::cli::PullMethodArg::Pod => crate::kubevirt::PullMethod::Pod,
        crate::cli::PullMethodArg::Node => crate::kubevirt::PullMethod::Node,
    }
}

/// An image reference given on the command line: a malformed one is wrong usage.
pub fn image_ref(s: &str) -> Result<crate::oci::dest::ImageRef> {
    crate::oci::dest::ImageRef::parse(s).map_err(|e| UsageError(format!("{e:#}")).into())
}

/// A registry reference given on the command line: a malformed one is wrong usage.
pub fn remote_ref(s: &str) -> Result<crate::registry::RemoteRef> {
    crate::registry::RemoteRef::parse(s).map_err(|e| UsageError(format!("{e:#}")).into())
}

/// The error message as printed: the whole chain, secrets removed.
pub fn error_text(err: &anyhow::Error) -> String {
    crate::redact::apply(&format!("{err:#}"), &[])
}

/// Reports a command's error: a `recipe-error` event per located recipe error, an
/// `error` event, and the `error:` line on stderr. Returns the exit code.
pub fn report_error(err: &anyhow::Error) -> ExitCode {
    if err.downcast_ref::<ClosedStdout>().is_some() {
        // The reader went away: nothing to tell it, and stderr may be gone too.
        return ExitCode::from(EXIT_CLOSED_STDOUT);
    }
    recipe_error_events(err);
    let code = exit_code_for(err);
    let text = error_text(err);
    crate::progress::event(
        "error",
        serde_json::json!({"message": text, "exit_code": exit_code_number(err)}),
    );
    eprintln!("error: {text}");
    code
}

/// One `recipe-error` event per located error in `err`, if it holds recipe errors.
pub fn recipe_error_events(err: &anyhow::Error) {
    if let Some(errors) = err.downcast_ref::<crate::recipe::RecipeErrors>() {
        for e in &errors.0 {
            crate::progress::event(
                "recipe-error",
                serde_json::json!({"file": e.file.display().to_string(), "line": e.line,
                                   "column": e.column, "key": e.key, "message": e.message}),
            );
        }
    }
}

pub fn run(mut cli: Cli) -> Result<ExitCode> {
    crate::progress::configure(cli.global.json_events, cli.global.quiet);
    crate::sys::interrupt::install()?;
    crate::sys::rt::init()?;
    absolute_dirs(&mut cli.global)?;
    let g = &cli.global;
    match cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut crate::cli::command(), "diskforge", &mut script);
            out::write_bytes(&script)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out_dir } => man_pages(out_dir.as_deref()),
        Command::Cache(cmd) => cache::run(g, cmd),
        Command::Validate(a) => validate::run(g, a),
        Command::Init(a) => init::run(g, a),
        Command::Schema => validate::schema(),
        Command::Base(c) => base::run(g, c),
        Command::Plan(a) => plan::run(g, a),
        Command::Build(a) => build::run(g, *a),
        Command::Outdated(a) => outdated::run(g, a),
        Command::Pack(a) => image::pack(g, a),
        Command::Inspect(a) => image::inspect(g, a),
        Command::Index(a) => image::index(g, a),
        Command::Push(a) => image::push(g, a),
        Command::Run(a) => run::run(g, a),
        Command::Verify(a) => verify::run(g, a),
        Command::Sign(a) => sign::run(g, a),
    }
}

/// `diskforge man`: diskforge(1) on stdout, or every page written into `out_dir`, each
/// whole or not at all.
fn man_pages(out_dir: Option<&std::path::Path>) -> Result<ExitCode> {
    let mut cmd = crate::cli::command().disable_help_subcommand(true);
    cmd.build();
    let render = |c: &clap::Command| -> Result<Vec<u8>> {
        let mut page = Vec::new();
        clap_mangen::Man::new(c.clone())
            .render(&mut page)
            .with_context(|| format!("rendering the manual page of {}", c.get_name()))?;
        Ok(page)
    };
    let Some(dir) = out_dir else {
        out::write_bytes(&render(&cmd)?)?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fn pages(c: &clap::Command, out: &mut Vec<clap::Command>) {
        out.push(c.clone());
        for sc in c.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages(sc, out);
        }
    }
    let mut all = Vec::new();
    pages(&cmd, &mut all);
    for c in &all {
        let name = clap_mangen::Man::new(c.clone()).get_filename();
        let path = dir.join(&name);
        crate::io::atomic::write(&path, &render(c)?)?;
        crate::progress::say(format!("wrote {}", path.display()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Makes the cache and work directories (`--cache-dir`/`DISKFORGE_CACHE_DIR`,
/// `--work-dir`/`DISKFORGE_WORK_DIR`) absolute, once, before anything uses them: an
/// overlay names its backing file by a path qemu-img resolves from the overlay's own
/// directory, and plans show these directories as `$CACHE`/`$WORK` by their text.
fn absolute_dirs(g: &mut GlobalOpts) -> Result<()> {
    for (dir, what) in [
        (&mut g.cache_dir, "--cache-dir"),
        (&mut g.work_dir, "--work-dir"),
    ] {
        if let Some(d) = dir {
            *d = std::path::absolute(&*d)
                .with_context(|| format!("making {what} {} absolute", d.display()))?;
        }
    }
    Ok(())
}

/// Registry options from the command line and registries.conf (plus registries a recipe
/// marks insecure). A registries.conf that cannot be read is wrong usage.
pub fn registry_options(a: &RegistryArgs, insecure: &[String]) -> Result<RegistryOptions> {
    let conf = crate::registry::conf::load(a.registries_conf.as_deref())
        .map_err(|e| UsageError(format!("{e:#}")))?;
    for what in &conf.ignored {
        tracing::warn!("{what}");
    }
    for what in &conf.notes {
        tracing::debug!("{what}");
    }
    let mut insecure = insecure.to_vec();
    insecure.extend(conf.insecure.iter().cloned());
    Ok(RegistryOptions {
        tls_verify: a.tls_verify,
        insecure_registries: insecure,
        blocked_registries: conf.blocked.clone(),
        conf,
        creds: a.creds.clone().map(|c| {
            crate::redact::register(&c);
            if let Some((_, p)) = c.split_once(':') {
                crate::redact::register(p);
            }
            crate::recipe::SecretValue::new(c)
        }),
        authfile: a.authfile.clone(),
        cert_dir: a.cert_dir.clone(),
        timeout: Duration::from_secs(a.registry_timeout.max(1)),
        max_layer_size: None,
    })
}

/// Registry options of a command that pushes layers: `--max-layer-size` as well.
pub fn push_options(
    a: &RegistryArgs,
    limit: &crate::cli::LayerLimitOpts,
) -> Result<RegistryOptions> {
    let mut o = registry_options(a, &[])?;
    o.max_layer_size = match &limit.max_layer_size {
        None => None,
        Some(s) => match crate::recipe::Size::parse(s) {
            Ok(crate::recipe::Size::Absolute(n)) => Some(n),
            _ if s.parse::<u64>().is_ok_and(|n| n > 0) => s.parse().ok(),
            _ => {
                return Err(UsageError(format!(
                    "--max-layer-size {s:?}: give a size such as 5G, 500M or a number of bytes"
                ))
                .into())
            }
        },
    };
    Ok(o)
}

/// The pipeline context of a command.
pub fn context(g: &GlobalOpts, registry: RegistryOptions) -> Result<pipeline::BuildEnv> {
    let mut ctx = context_without_cache(g, registry)?;
    ctx.cache = crate::cache::Cache::open(g.cache_dir.as_deref())?;
    Ok(ctx)
}

/// The pipeline context of a command that only reads: its cache is read as it is and
/// never created.
pub fn context_without_cache(
    g: &GlobalOpts,
    registry: RegistryOptions,
) -> Result<pipeline::BuildEnv> {
    let root = match &g.cache_dir {
        Some(d) => d.clone(),
        None => crate::cache::Cache::default_root()?,
    };
    Ok(pipeline::BuildEnv {
        cache: crate::cache::Cache::read_only(root),
        accel: match g.accel {
            crate::cli::Accel::Auto => crate::sys::accel::Accel::Auto,
            crate::cli::Accel::Kvm => crate::sys::accel::Accel::Kvm,
            crate::cli::Accel::Tcg => crate::sys::accel::Accel::Tcg,
        },
        offline: g.offline,
        work_root: g.work_dir.clone(),
        keep_work: g.keep_work_dir,
        registry,
        clients: Default::default(),
    })
}

/// A scratch directory for commands that unpack or pull (`inspect`, `verify`, `run`).
/// How big a disk a layer may expand to: `DISKFORGE_MAX_DISK_SIZE` (bytes, or with a
/// K/M/G/T suffix), else [`crate::oci::read::DEFAULT_MAX_DISK`].
pub fn expand_limit() -> Result<crate::oci::read::ExpandLimit> {
    let Ok(v) = std::env::var("DISKFORGE_MAX_DISK_SIZE") else {
        return Ok(crate::oci::read::ExpandLimit::default());
    };
    match crate::recipe::Size::parse(v.trim()) {
        Ok(crate::recipe::Size::Absolute(max_disk)) => {
            Ok(crate::oci::read::ExpandLimit { max_disk })
        }
        _ => Err(UsageError(format!(
            "DISKFORGE_MAX_DISK_SIZE={v:?} must be an absolute size such as 100G"
        ))
        .into()),
    }
}

/// The directory commands unpack and boot images in; what killed runs left there is
/// removed first ([`crate::io::scratch::reap`]).
pub fn scratch_root(g: &GlobalOpts) -> Result<PathBuf> {
    let dir = match &g.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    crate::io::scratch::reap(&dir);
    Ok(dir)
}

/// What the command line allows a recipe to name on the host: `--allow-path` and
/// `DISKFORGE_ALLOW_PATH` directories, and the `--base` file. A directory or file that
/// does not exist is wrong usage.
pub fn host_access(inputs: &crate::cli::RecipeInputs) -> Result<crate::recipe::HostAccess> {
    let mut dirs = inputs.allow_path.clone();
    if let Some(env) = std::env::var_os("DISKFORGE_ALLOW_PATH") {
        dirs.extend(crate::recipe::host::split_allow_env(&env.to_string_lossy()));
    }
    crate::recipe::HostAccess::new(&dirs, inputs.base.as_deref())
        .map_err(|e| UsageError(format!("{e:#}")).into())
}

pub fn arch(a: crate::cli::ArchArg) -> crate::recipe::Arch {
    match a {
        crate::cli::ArchArg::Amd64 => crate::recipe::Arch::Amd64,
        crate::cli::ArchArg::Arm64 => crate::recipe::Arch::Arm64,
    }
}

#[cfg(test)]
mod tests {
    use super::exit_code_for;
    use anyhow::Context;
    use std::process::ExitCode;

    #[test]
    fn exit_codes_follow_the_error_type_through_context() {
        let mismatch: anyhow::Result<()> = Err(crate::base::checksum::ChecksumMismatch {
            url: "http://x/base.qcow2".into(),
            expected: "sha256:aa".into(),
            actual: "sha256:bb".into(),
        }
        .into());
        let e = mismatch.context("getting the base image").unwrap_err();
        assert_eq!(exit_code_for(&e), ExitCode::from(4));
        let missing: anyhow::Result<()> = Err(crate::sys::exec::MissingTool {
            program: "qemu-img".into(),
        }
        .into());
        assert_eq!(
            exit_code_for(&missing.context("resizing").unwrap_err()),
            ExitCode::from(3)
        );
        let boot: anyhow::Result<()> =
            Err(crate::vm::probe::BootCheckFailed("Login incorrect".into()).into());
        assert_eq!(
            exit_code_for(&boot.context("checking").unwrap_err()),
            ExitCode::from(4)
        );
        let bad_sig: anyhow::Result<()> = Err(anyhow::anyhow!("sqv: exit status 1"));
        let bad_sig = bad_sig
            .context(crate::base::signature::SignatureInvalid("bad".into()))
            .context("fetching the checksum file");
        assert_eq!(exit_code_for(&bad_sig.unwrap_err()), ExitCode::from(4));
        let usage = anyhow::Error::from(super::UsageError("x".into()));
        assert_eq!(exit_code_for(&usage), ExitCode::from(2));
        assert_eq!(
            exit_code_for(&anyhow::anyhow!("something else")),
            ExitCode::from(1)
        );
    }
}
