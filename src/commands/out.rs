//! Results on stdout. Every result goes through [`write`] (the `out!` and `outln!`
//! macros): a reader that went away (`diskforge base list | head`) is the typed
//! [`ClosedStdout`], which the command returns like any error and `main` turns into
//! status 141 without a message, after every cleanup guard ran. SIGPIPE stays ignored,
//! so a child process closing its stdin is an error to handle, never a silent death.

use std::io::Write;

use anyhow::{Context, Result};

/// The status a shell reports for a process stopped by SIGPIPE.
pub const EXIT_CLOSED_STDOUT: u8 = 141;

/// Stdout is a pipe whose reader is gone.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub struct ClosedStdout;

/// Writes `args` to stdout, flushed.
pub fn write(args: std::fmt::Arguments<'_>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ClosedStdout.into()),
        r => r.context("writing to stdout"),
    }
}

/// Writes `bytes` to stdout as they are, flushed.
pub fn write_bytes(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ClosedStdout.into()),
        r => r.context("writing to stdout"),
    }
}

/// `print!` to stdout through [`write`]; evaluates to `anyhow::Result<()>`.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::commands::out::write(format_args!($($arg)*))
    };
}

/// `println!` to stdout through [`write`]; evaluates to `anyhow::Result<()>`.
macro_rules! outln {
    () => {
        $crate::commands::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::commands::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_is_closed_stdout_and_exits_141() {
        let e: anyhow::Error = anyhow::Error::from(ClosedStdout).context("printing the table");
        assert!(e.downcast_ref::<ClosedStdout>().is_some());
        assert_eq!(super::super::exit_code_number(&e), EXIT_CLOSED_STDOUT);
    }
}
