//! `diskforge plan`: the build's steps, their keys and exact command lines, without
//! running anything (secrets shown as `***`; commands name the work and cache
//! directories `$WORK` and `$CACHE`).

use std::process::ExitCode;

use anyhow::Result;

use super::out::outln;
use crate::cli::{GlobalOpts, PlanArgs};
use crate::pipeline::{self, BuildOptions, Plan};

pub fn run(g: &GlobalOpts, a: PlanArgs) -> Result<ExitCode> {
    let opts = BuildOptions {
        set: a.inputs.set.clone(),
        host: super::host_access(&a.inputs)?,
        catalog: a.inputs.catalog.clone(),
        outputs: a.output.clone(),
        arch: a.inputs.arch.map(super::arch),
        incremental: a.incremental,
        compression: a.layer.compression,
        level: a.layer.compression_level,
        disk_only: a.disk_only.clone(),
        ..Default::default()
    };
    let ctx = super::context(g, crate::registry::RegistryOptions::default())?;
    let resolved = pipeline::resolve::resolve(&a.recipe, &opts, &ctx)?;
    // The plan's work directory is never created: it only names `$WORK`.
    let work = ctx.cache.root().join("work").join("plan");
    let plan = Plan::new(resolved, &opts, &ctx, &work, None)?;
    let text = if a.json {
        serde_json::to_string_pretty(&plan.to_json())?
    } else {
        render(&plan)
    };
    outln!("{}", crate::redact::apply(&text, &[]))?;
    Ok(ExitCode::SUCCESS)
}

fn render(plan: &Plan) -> String {
    let mut s = format!(
        "plan for {} (recipe {})\nbuild key {}\nwrites {}\n",
        plan.resolved.loaded.path.display(),
        plan.resolved.loaded.digest,
        plan.build_key,
        plan.resolved
            .dests
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (i, step) in plan.shown().iter().enumerate() {
        s.push_str(&format!(
            "\n{}. {}: {}{}\n   key {}\n",
            i + 1,
            step.name,
            step.description,
            if step.cached { " [cached]" } else { "" },
            step.key
        ));
        for c in &step.commands {
            s.push_str(&format!("   $ {}\n", c.display()));
        }
        for o in &step.operations {
            s.push_str(&format!("   · {o}\n"));
        }
    }
    s
}
