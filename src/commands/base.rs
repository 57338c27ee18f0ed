//! `diskforge base list`: the catalog (a directory's entries, else the built-in ones)
//! with each image's URL and how it is verified.

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::out::outln;
use crate::base::catalog::{self, CatalogEntry};
use crate::cli::{BaseCommand, GlobalOpts};

pub fn run(_g: &GlobalOpts, cmd: BaseCommand) -> Result<ExitCode> {
    let BaseCommand::List { catalog } = cmd;
    let dir = catalog.or_else(|| {
        let cwd = std::env::current_dir().unwrap_or_default();
        cwd.ancestors()
            .map(|a| a.join("base-images"))
            .find(|d| d.is_dir())
    });
    let mut entries: Vec<(CatalogEntry, String)> = Vec::new();
    match dir.filter(|d| d.is_dir()) {
        Some(dir) => {
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect();
            files.sort();
            for f in files {
                let e = super::validate::validate_catalog_file(&f)?;
                entries.push((e, f.display().to_string()));
            }
        }
        None => {
            for (name, text) in catalog::EMBEDDED {
                entries.push((catalog::parse_entry(text, name)?, "built-in".into()));
            }
        }
    }
    for (e, origin) in &entries {
        outln!("{}  ({} {}; {})", e.name, e.os, e.release, origin)?;
        outln!("    {}", e.description)?;
        outln!(
            "    firmware: {} (supports {})",
            e.firmware.default,
            e.firmware
                .supports
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        for (arch, img) in &e.images {
            outln!("    {:<6} {}", arch.as_str(), img.url)?;
            let src = match &img.checksum {
                crate::recipe::ChecksumSpec::Literal(c) => c.to_string(),
                crate::recipe::ChecksumSpec::File(f) => {
                    let mut s = format!("checksum file {}", f.url);
                    match &f.signing_key {
                        Some(k) if f.signing_key_fingerprints.is_empty() => {
                            s.push_str(&format!(" (signed; key {k})"))
                        }
                        Some(k) => s.push_str(&format!(
                            " (signed; key {k}, pinned {})",
                            f.signing_key_fingerprints.join(", ")
                        )),
                        None => s.push_str(" (not signed: HTTPS only)"),
                    }
                    s
                }
            };
            outln!("           {src}")?;
        }
        if let Some(b) = &e.build {
            outln!(
                "    built locally: {} {} (kernel {}, {}), mirror {}",
                b.tool,
                b.suite,
                b.kernel,
                b.size,
                crate::base::build::mirror(b)
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
