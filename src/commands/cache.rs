//! `diskforge cache list|prune`.

use std::process::ExitCode;

use anyhow::Result;

use super::out::outln;
use crate::cli::{CacheCommand, GlobalOpts};

pub fn run(g: &GlobalOpts, cmd: CacheCommand) -> Result<ExitCode> {
    let cache = crate::cache::Cache::open(g.cache_dir.as_deref())?;
    match cmd {
        CacheCommand::List => {
            let entries = cache.list()?;
            outln!("{:<73} {:>10}  {:<20}  ORIGIN", "KEY", "SIZE", "LAST USED")?;
            for e in &entries {
                outln!(
                    "{:<73} {:>10}  {:<20}  {}",
                    e.key,
                    crate::progress::human_bytes(e.size),
                    e.last_used,
                    e.origin
                )?;
            }
            for t in cache.temp_files()? {
                let name = t.path.strip_prefix(cache.root()).unwrap_or(&t.path);
                let modified: chrono::DateTime<chrono::Utc> = t.modified.into();
                outln!(
                    "{:<73} {:>10}  {:<20}  {}",
                    name.display(),
                    crate::progress::human_bytes(t.size),
                    modified.format("%Y-%m-%dT%H:%M:%SZ"),
                    match t.in_use {
                        Some(true) => "temporary: in use by a running diskforge",
                        Some(false) => {
                            "temporary: left by a killed diskforge (cache prune removes it)"
                        }
                        None => "temporary: cannot tell whether in use (cache prune removes it after a day)",
                    }
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Prune { days, all } => {
            let older_than = (!all).then(|| std::time::Duration::from_secs(days * 86_400));
            let report = cache.prune(older_than)?;
            outln!(
                "removed {} cached file(s), {} temporary file(s) of killed runs ({} in all), {} kept stage disk(s) and {} partial download(s) from {}",
                report.blobs,
                report.temps,
                crate::progress::human_bytes(report.bytes),
                report.stages,
                report.partials,
                cache.root().display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
