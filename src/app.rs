//! Command dispatch: turns a parsed [`Cli`] into calls of the library modules.

use std::process::ExitCode;

use anyhow::Result;
use clap::CommandFactory;

use crate::cli::{CacheCommand, Cli, Command, GlobalOpts};

/// Sets up `tracing` on stderr according to -v/-q (RUST_LOG overrides).
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

/// Exit codes documented in `diskforge --help`.
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    if let Some(sig) = crate::interrupt::signal() {
        return ExitCode::from((128 + sig) as u8);
    }
    if err
        .downcast_ref::<crate::verify::ContractViolation>()
        .is_some()
    {
        return ExitCode::from(4);
    }
    if err.downcast_ref::<crate::exec::MissingTool>().is_some() {
        return ExitCode::from(3);
    }
    if err
        .downcast_ref::<crate::base::checksum::ChecksumMismatch>()
        .is_some()
    {
        return ExitCode::from(4);
    }
    if err
        .downcast_ref::<crate::recipe::load::RecipeError>()
        .is_some()
    {
        return ExitCode::from(2);
    }
    ExitCode::from(1)
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    crate::progress::configure(cli.global.json_events, cli.global.quiet);
    crate::interrupt::install()?;
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "diskforge",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache(cmd) => cache_command(&cli.global, cmd),
        Command::Validate(a) => crate::recipe::commands::cmd_validate(&cli.global, a),
        Command::Schema => crate::recipe::commands::cmd_schema(&cli.global),
        Command::Base(c) => crate::recipe::commands::cmd_base(&cli.global, c),
        Command::Plan(a) => crate::plan::cmd_plan(&cli.global, a),
        Command::Build(a) => crate::build::cmd_build(&cli.global, a),
        Command::Pack(a) => crate::oci::cmd_pack(&cli.global, a),
        Command::Inspect(a) => crate::oci::cmd_inspect(&cli.global, a),
        Command::Index(a) => crate::oci::cmd_index(&cli.global, a),
        Command::Push(a) => crate::registry::cmd_push(&cli.global, a),
        Command::Run(a) => crate::run::cmd_run(&cli.global, a),
        Command::Verify(a) => crate::verify::cmd_verify(&cli.global, a),
    }
}

/// `diskforge cache list|prune`.
fn cache_command(global: &GlobalOpts, cmd: CacheCommand) -> Result<ExitCode> {
    let cache = crate::cache::Cache::open(global.cache_dir.as_deref())?;
    match cmd {
        CacheCommand::List => {
            let entries = cache.list()?;
            println!("{:<73} {:>10}  {:<20}  ORIGIN", "KEY", "SIZE", "LAST USED");
            for e in &entries {
                println!(
                    "{:<73} {:>10}  {:<20}  {}",
                    e.key,
                    crate::progress::human_bytes(e.size),
                    e.last_used,
                    e.origin
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Prune { days, all } => {
            let older_than = (!all).then(|| std::time::Duration::from_secs(days * 86_400));
            let report = cache.prune(older_than)?;
            println!(
                "removed {} cached file(s), {}, and {} partial download(s) from {}",
                report.blobs,
                crate::progress::human_bytes(report.bytes),
                report.partials,
                cache.root().display()
            );
            Ok(ExitCode::SUCCESS)
        }
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

        let missing: anyhow::Result<()> = Err(crate::exec::MissingTool {
            program: "qemu-img".into(),
        }
        .into());
        let e = missing.context("resizing").unwrap_err();
        assert_eq!(exit_code_for(&e), ExitCode::from(3));

        assert_eq!(
            exit_code_for(&anyhow::anyhow!("something else")),
            ExitCode::from(1)
        );
    }
}
