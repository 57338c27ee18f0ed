//! `diskforge validate` and `diskforge schema`: recipes and catalog entries checked
//! without side effects (no download, no network), every error of a file at once with
//! its file, line, column and key.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::out::{out, outln};
use crate::base::catalog::CatalogEntry;
use crate::cli::{GlobalOpts, ValidateArgs};
use crate::recipe::diag::{self, RecipeError, RecipeErrors, Seg};

/// True for files of the base image catalog: in a `base-images/` directory, or with a
/// top-level key only catalog entries have (`images:`, `build:`, `os:`, `release:`).
fn is_catalog_file(path: &Path, text: &str) -> bool {
    path.parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "base-images")
        || text.lines().any(|l| {
            ["images:", "build:", "os:", "release:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
}

/// Checks one catalog file strictly, with located errors.
pub fn validate_catalog_file(path: &Path) -> Result<CatalogEntry> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let de = serde_yaml::Deserializer::from_str(&text);
    let entry: CatalogEntry = serde_path_to_error::deserialize(de).map_err(|e| {
        let segs = diag::parse_path(&e.path().to_string());
        let inner = e.into_inner();
        let (line, column) = inner
            .location()
            .map(|l| (l.line(), l.column()))
            .or_else(|| diag::locate(&text, &segs))
            .unwrap_or((1, 1));
        anyhow::Error::from(RecipeErrors(vec![RecipeError {
            file: path.to_path_buf(),
            line,
            column,
            key: diag::path_string(&segs),
            message: diag::humanize(&inner.to_string()),
        }]))
    })?;
    let mut errors = Vec::new();
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if entry.name != stem {
        errors.push(diag::at(
            path,
            &text,
            &[Seg::key("name")],
            format!(
                "the entry name {:?} must equal the file name {stem:?}",
                entry.name
            ),
        ));
    }
    if let Some(p) = entry.firmware.problem() {
        errors.push(diag::at(
            path,
            &text,
            &[Seg::key("firmware"), Seg::key("default")],
            p,
        ));
    }
    if entry.images.is_empty() && entry.build.is_none() {
        errors.push(diag::at(
            path,
            &text,
            &[Seg::key("images")],
            "a catalog entry needs images (per architecture) or a build section",
        ));
    }
    for (arch, img) in &entry.images {
        if let crate::recipe::ChecksumSpec::File(f) = &img.checksum {
            let at = [
                Seg::key("images"),
                Seg::key(arch.as_str()),
                Seg::key("checksum"),
                Seg::key("signature-url"),
            ];
            if f.signature_url.is_some() && f.signing_key.is_none() {
                errors.push(diag::at(
                    path,
                    &text,
                    &at,
                    "a signature without a signing-key cannot be verified: pin the key (keys/NAME.asc and its fingerprints)",
                ));
            }
            if let Some(k) = &f.signing_key {
                let dir = path.parent().unwrap_or(Path::new("."));
                if !k.starts_with("http") && !dir.join(k).is_file() {
                    errors.push(diag::at(
                        path,
                        &text,
                        &at[..3],
                        format!("signing-key {k} does not exist"),
                    ));
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(RecipeErrors(errors).into());
    }
    Ok(entry)
}

pub fn run(g: &GlobalOpts, args: ValidateArgs) -> Result<ExitCode> {
    // Read the cache if there is one; never create it.
    let ctx = super::context_without_cache(g, crate::registry::RegistryOptions::default())?;
    let opts = crate::pipeline::BuildOptions {
        set: args.inputs.set.clone(),
        host: super::host_access(&args.inputs)?,
        catalog: args.inputs.catalog.clone(),
        arch: args.inputs.arch.map(super::arch),
        ..Default::default()
    };
    let mut code = ExitCode::SUCCESS;
    for path in &args.recipes {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let result = if is_catalog_file(path, &text) {
            validate_catalog_file(path).map(|_| ())
        } else {
            crate::pipeline::resolve::check_static(path, &opts, &ctx).map(|_| ())
        };
        match result {
            Ok(()) => outln!("OK    {}", path.display())?,
            Err(e) => code = super::report_error(&e),
        }
    }
    Ok(code)
}

/// The JSON Schema of recipe v1, as printed by `diskforge schema`.
pub fn schema_json() -> Result<String> {
    let schema = schemars::schema_for!(crate::recipe::Recipe);
    let mut s = serde_json::to_string_pretty(&schema).context("serializing the schema")?;
    s.push('\n');
    Ok(s)
}

pub fn schema() -> Result<ExitCode> {
    out!("{}", schema_json()?)?;
    Ok(ExitCode::SUCCESS)
}
