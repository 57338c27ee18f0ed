//! `diskforge cache list|prune`.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{CacheCommand, GlobalOpts};

pub fn run(g: &GlobalOpts, cmd: CacheCommand) -> Result<ExitCode> {
    let cache = crate::cache::Cache::open(g.cache_dir.as_deref())?;
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
                "removed {} cached file(s), {}, {} kept stage disk(s) and {} partial download(s) from {}",
                report.blobs,
                crate::progress::human_bytes(report.bytes),
                report.stages,
                report.partials,
                cache.root().display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
