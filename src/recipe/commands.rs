//! `diskforge validate`, `schema` and `base list`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::load::{LoadOptions, RecipeError};
use crate::base::catalog::CatalogEntry;
use crate::cli::{BaseCommand, GlobalOpts, ValidateArgs};

/// True for files of the base image catalog (by directory, or by content).
fn is_catalog_file(path: &Path, text: &str) -> bool {
    path.parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "base-images")
        || (text.lines().any(|l| l.starts_with("os:"))
            && text.lines().any(|l| l.starts_with("release:")))
}

/// Checks one catalog file strictly, with located errors.
pub fn validate_catalog_file(path: &Path) -> Result<CatalogEntry> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let de = serde_yaml::Deserializer::from_str(&text);
    let entry: CatalogEntry = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let (line, column) = inner
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        let mut message = inner.to_string();
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        anyhow::Error::from(RecipeError {
            file: path.to_path_buf(),
            line,
            column,
            key: if key == "." { "(document)".into() } else { key },
            message,
        })
    })?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if entry.name != stem {
        let (line, column) = super::load::find_key(&text, &["name"]).unwrap_or((1, 1));
        return Err(RecipeError {
            file: path.to_path_buf(),
            line,
            column,
            key: "name".into(),
            message: format!(
                "the entry name {:?} must equal the file name {stem:?}",
                entry.name
            ),
        }
        .into());
    }
    if entry.images.is_empty() && entry.build.is_none() {
        return Err(RecipeError {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            key: "images".into(),
            message: "a catalog entry needs images (per architecture) or a build section".into(),
        }
        .into());
    }
    Ok(entry)
}

pub fn cmd_validate(_global: &GlobalOpts, args: ValidateArgs) -> Result<ExitCode> {
    let mut failed = None;
    for path in &args.recipes {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let result = if is_catalog_file(path, &text) {
            validate_catalog_file(path).map(|_| ())
        } else {
            super::load::load(path, &LoadOptions::default()).map(|_| ())
        };
        match result {
            Ok(()) => println!("OK    {}", path.display()),
            Err(e) => {
                eprintln!("error: {e:#}");
                failed = Some(e);
            }
        }
    }
    match failed {
        // The last error decides the exit code (2 for invalid recipes).
        Some(e) if e.downcast_ref::<RecipeError>().is_some() => Ok(ExitCode::from(2)),
        Some(_) => Ok(ExitCode::from(1)),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// The JSON Schema of recipe v1, as printed by `diskforge schema`.
pub fn schema_json() -> Result<String> {
    let schema = schemars::schema_for!(super::Recipe);
    let mut s = serde_json::to_string_pretty(&schema).context("serializing the schema")?;
    s.push('\n');
    Ok(s)
}

pub fn cmd_schema(_global: &GlobalOpts) -> Result<ExitCode> {
    print!("{}", schema_json()?);
    Ok(ExitCode::SUCCESS)
}

pub fn cmd_base(_global: &GlobalOpts, cmd: BaseCommand) -> Result<ExitCode> {
    let BaseCommand::List { catalog } = cmd;
    let mut entries: Vec<(CatalogEntry, String)> = Vec::new();
    let dir = catalog.unwrap_or_else(|| {
        let cwd = std::env::current_dir().unwrap_or_default();
        cwd.ancestors()
            .map(|a| a.join("base-images"))
            .find(|d| d.is_dir())
            .unwrap_or_else(|| cwd.join("base-images"))
    });
    if dir.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for f in files {
            entries.push((validate_catalog_file(&f)?, f.display().to_string()));
        }
    } else {
        for (name, text) in crate::base::catalog::EMBEDDED {
            entries.push((
                crate::base::catalog::parse_entry(text, name)?,
                "built-in".into(),
            ));
        }
    }
    for (e, origin) in &entries {
        println!("{}  ({} {}; {})", e.name, e.os, e.release, origin);
        println!("    {}", e.description);
        for (arch, img) in &e.images {
            println!("    {:<6} {}", arch.as_str(), img.url);
            let src = match &img.checksum {
                crate::recipe::ChecksumSpec::Literal(c) => c.to_string(),
                crate::recipe::ChecksumSpec::File(f) => {
                    let mut s = format!("checksum file {}", f.url);
                    if let Some(k) = &f.signing_key {
                        s.push_str(&format!(" (signed; key {k})"));
                    }
                    s
                }
            };
            println!("           {src}");
        }
        if let Some(b) = &e.build {
            println!(
                "    built locally: {} {} (kernel {}, {}), mirror {}",
                b.tool,
                b.suite,
                b.kernel,
                b.size,
                crate::base::build::mirror(b)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
