//! Ctrl-C, SIGTERM and SIGHUP.
//!
//! The first signal only sets a flag. Everything that waits checks it (the exec helper
//! while a child runs, the streaming loops of download, pack and push), returns an
//! [`Interrupted`] error, and the normal unwinding runs every cleanup guard: the work
//! directory goes, temporary files in the cache and the output go, the libguestfs
//! appliance is stopped. A second signal of the same kind ends the process at once
//! (exit status 130 for SIGINT), for when the user does not want to wait for the cleanup.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// The signal that interrupted the run, or 0.
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static FLAGS: OnceLock<Vec<(i32, Arc<AtomicBool>)>> = OnceLock::new();

/// The error a step returns when it stopped because of a signal.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {name}: stopped and removed the files of the unfinished step")]
pub struct Interrupted {
    pub name: &'static str,
}

/// Installs the handlers (once per process; later calls do nothing).
pub fn install() -> anyhow::Result<()> {
    if FLAGS.get().is_some() {
        return Ok(());
    }
    let mut flags = Vec::new();
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        let flag = Arc::new(AtomicBool::new(false));
        // Registered first, so it sees the flag as it was before this signal: the second
        // signal of a kind exits at once.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, flag.clone())
            .map_err(|e| anyhow::anyhow!("installing the handler for signal {sig}: {e}"))?;
        signal_hook::flag::register(sig, flag.clone())
            .map_err(|e| anyhow::anyhow!("installing the handler for signal {sig}: {e}"))?;
        flags.push((sig, flag));
    }
    let _ = FLAGS.set(flags);
    Ok(())
}

/// Whether a signal asked the run to stop.
pub fn interrupted() -> bool {
    if SIGNAL.load(Ordering::SeqCst) != 0 {
        return true;
    }
    let Some(flags) = FLAGS.get() else {
        return false;
    };
    for (sig, flag) in flags {
        if flag.load(Ordering::SeqCst) {
            SIGNAL.store(*sig, Ordering::SeqCst);
            return true;
        }
    }
    false
}

/// The signal that interrupted the run, if any.
pub fn signal() -> Option<i32> {
    interrupted().then(|| SIGNAL.load(Ordering::SeqCst))
}

fn name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// The error for the current interruption.
pub fn error() -> Interrupted {
    Interrupted {
        name: name(SIGNAL.load(Ordering::SeqCst)),
    }
}

/// `Err(Interrupted)` once a signal arrived.
pub fn check() -> anyhow::Result<()> {
    if interrupted() {
        return Err(error().into());
    }
    Ok(())
}

/// The same as an I/O error, for `Read`/`Write` adapters in streaming loops. Its kind is
/// `Other`: `ErrorKind::Interrupted` would make `io::copy` and `read_exact` retry.
pub fn check_io() -> std::io::Result<()> {
    if interrupted() {
        return Err(std::io::Error::other(error()));
    }
    Ok(())
}

/// How often a wait looks at the flag: the longest a signal waits to be noticed.
pub const POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Sleeps for `d`, or less when a signal arrives (then `Err(Interrupted)`).
pub fn sleep(d: std::time::Duration) -> anyhow::Result<()> {
    let until = std::time::Instant::now() + d;
    loop {
        check()?;
        let now = std::time::Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep(POLL.min(until - now));
    }
}

/// Completes (with the interruption) once a signal arrives: race a future against it
/// with `tokio::select!` so that no network wait outlasts Ctrl-C.
pub async fn signalled() -> Interrupted {
    loop {
        if interrupted() {
            return error();
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A reader or writer that fails with [`Interrupted`] once a signal arrived: wrap the
/// source of a long `io::copy`, or the destination of a blob download, with it.
pub struct Checked<R>(pub R);

impl<R: std::io::Read> std::io::Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        check_io()?;
        self.0.read(buf)
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Checked<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Err(e) = check_io() {
            return std::task::Poll::Ready(Err(e));
        }
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_signal_means_no_interruption() {
        // Not installed here: the handlers would outlive the test in the test process.
        assert!(!interrupted());
        assert!(check().is_ok());
        assert!(check_io().is_ok());
    }
}
