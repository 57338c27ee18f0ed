//! The `diskforge` command: parse arguments, set up logging, run, report the error chain.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = diskforge::cli::Cli::parse();
    diskforge::app::init_logging(&cli.global);
    match diskforge::app::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            diskforge::app::exit_code_for(&err)
        }
    }
}
