//! The `diskforge` command: parse arguments, set up logging, run, report the error chain.

fn main() -> std::process::ExitCode {
    let cli = diskforge::cli::Cli::parse_args();
    diskforge::commands::init_logging(&cli.global);
    match diskforge::commands::run(cli) {
        Ok(code) => code,
        Err(err) => diskforge::commands::report_error(&err),
    }
}
