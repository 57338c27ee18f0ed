//! Command dispatch: turns a parsed [`Cli`] into calls of the library modules.

use std::process::ExitCode;

use anyhow::{bail, Result};
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
pub fn exit_code_for(_err: &anyhow::Error) -> ExitCode {
    ExitCode::from(1)
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    crate::progress::configure(cli.global.json_events, cli.global.quiet);
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
        other => bail!("`{}` is not implemented yet", command_name(&other)),
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

fn command_name(cmd: &Command) -> &'static str {
    match cmd {
        Command::Validate(_) => "validate",
        Command::Plan(_) => "plan",
        Command::Build(_) => "build",
        Command::Pack(_) => "pack",
        Command::Push(_) => "push",
        Command::Inspect(_) => "inspect",
        Command::Index(_) => "index",
        Command::Run(_) => "run",
        Command::Verify(_) => "verify",
        Command::Schema => "schema",
        Command::Base(_) => "base",
        Command::Cache(_) => "cache",
        Command::Completions { .. } => "completions",
    }
}
