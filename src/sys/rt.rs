//! The process's one async runtime. `commands::run` creates it; synchronous code (the pipeline,
//! which is mostly blocking work: qemu-img, libguestfs, compression) enters it only for
//! network transfers through [`block_on`], from any thread.

use std::sync::OnceLock;

use anyhow::{Context, Result};

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// Builds the runtime (once per process; later calls do nothing).
pub fn init() -> Result<()> {
    if RUNTIME.get().is_some() {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("diskforge-io")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let _ = RUNTIME.set(rt);
    Ok(())
}

/// Runs `fut` to completion on the runtime (building it on first use, for library
/// callers that did not go through `main`). Must not be called from async code.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    if RUNTIME.get().is_none() {
        init().expect("starting the async runtime");
    }
    RUNTIME.get().expect("runtime initialized").block_on(fut)
}
