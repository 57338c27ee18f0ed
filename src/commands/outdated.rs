//! `diskforge outdated`: for schedulers — which recipes need a rebuild and why, without
//! building anything. It reads each recipe and its base's checksum file (so an upstream
//! base that changed is seen), computes the build key, and compares it with the labels
//! of the image at each destination. Exit 0 when every image is current, 5 when some
//! recipe needs a rebuild. Partial recipes (shared parents) are listed as skipped.

use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use super::out::outln;
use super::{UsageError, EXIT_STALE};
use crate::cli::{GlobalOpts, OutdatedArgs};
use crate::pipeline::resolve::PartialRecipe;
use crate::pipeline::{self, publish, BuildOptions, Plan, BUILD_KEY_LABEL};

#[derive(Debug, Serialize)]
struct Status {
    recipe: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<String>,
    /// `current`, `stale`, or `skipped` (a partial recipe).
    status: &'static str,
    reasons: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    build_key: Option<String>,
}

pub fn run(g: &GlobalOpts, args: OutdatedArgs) -> Result<ExitCode> {
    let opts = BuildOptions {
        set: args.inputs.set.clone(),
        host: super::host_access(&args.inputs)?,
        catalog: args.inputs.catalog.clone(),
        outputs: args.output.clone(),
        arch: args.inputs.arch.map(super::arch),
        ..Default::default()
    };
    if args.recipes.len() > 1 {
        if let Some(o) = args.output.iter().find(|o| !o.contains("{name}")) {
            return Err(UsageError(format!(
                "--output {o} would be checked for every recipe: with several recipes, name each image with {{name}}"
            ))
            .into());
        }
    }
    let ctx = super::context(g, super::registry_options(&args.registry, &[])?)?;
    let mut rows = Vec::new();
    for path in &args.recipes {
        let resolved = match pipeline::resolve::resolve(path, &opts, &ctx) {
            Ok(r) => r,
            Err(e) if e.is::<PartialRecipe>() => {
                rows.push(Status {
                    recipe: path.display().to_string(),
                    name: path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    destination: None,
                    status: "skipped",
                    reasons: vec!["partial recipe: a shared parent that others extend".into()],
                    build_key: None,
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        let ctx = ctx.for_recipe(&resolved.loaded.recipe);
        // Named in displayed steps only: nothing is written there.
        let work = ctx.cache.root().join("work").join("plan");
        let plan = Plan::new(resolved, &opts, &ctx, &work, None)?;
        let r = &plan.resolved;
        for d in &r.dests {
            let labels = publish::existing_labels(d, &ctx.registry, r.arch.as_str())?;
            let mut reasons = Vec::new();
            match &labels {
                None => reasons.push("image missing".to_string()),
                Some(l) if l.get(BUILD_KEY_LABEL) != Some(&plan.build_key) => {
                    let differs = |k: &str, now: &str| l.get(k).map(String::as_str) != Some(now);
                    if differs("io.diskforge.recipe.digest", &r.loaded.digest) {
                        reasons.push("recipe changed".into());
                    }
                    if differs("io.diskforge.base.checksum", &r.base.identity()?) {
                        reasons.push("base changed upstream".into());
                    }
                    if differs("io.diskforge.version", env!("CARGO_PKG_VERSION")) {
                        reasons.push("diskforge version changed".into());
                    }
                    if reasons.is_empty() {
                        reasons
                            .push("an input file changed (copied files or the ttyd binary)".into());
                    }
                }
                Some(_) => {}
            }
            rows.push(Status {
                recipe: path.display().to_string(),
                name: r.name.clone(),
                destination: Some(d.to_string()),
                status: if reasons.is_empty() {
                    "current"
                } else {
                    "stale"
                },
                reasons,
                build_key: Some(plan.build_key.clone()),
            });
        }
    }
    let doc = serde_json::json!({ "recipes": rows });
    if let Some(f) = &args.report {
        crate::io::atomic::write(f, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        outln!(
            "{:<24} {:<8} {:<50} REASONS",
            "RECIPE",
            "STATUS",
            "DESTINATION"
        )?;
        for s in &rows {
            outln!(
                "{:<24} {:<8} {:<50} {}",
                s.name,
                s.status,
                s.destination.as_deref().unwrap_or("-"),
                s.reasons.join("; ")
            )?;
        }
    }
    Ok(if rows.iter().any(|s| s.status == "stale") {
        ExitCode::from(EXIT_STALE)
    } else {
        ExitCode::SUCCESS
    })
}
