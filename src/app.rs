//! Command dispatch: turns a parsed [`Cli`] into calls of the library modules.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::CommandFactory;

use crate::cli::{Cli, Command, GlobalOpts};

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
        other => bail!("`{}` is not implemented yet", command_name(&other)),
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
