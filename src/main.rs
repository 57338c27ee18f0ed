//! The `diskforge` command: parse arguments, set up logging, run, report the error chain.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = diskforge::cli::Cli::parse();
    diskforge::commands::init_logging(&cli.global);
    match diskforge::commands::run(cli) {
        Ok(code) => code,
        Err(err) => diskforge::commands::report_error(&err),
    }
}
