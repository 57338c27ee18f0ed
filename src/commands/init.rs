//! `diskforge init`: a commented starter recipe that validates as written, for a base from
//! the catalog. It never overwrites a file.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::out::outln;
use super::UsageError;
use crate::base::catalog;
use crate::cli::{GlobalOpts, InitArgs};

pub fn run(_g: &GlobalOpts, args: InitArgs) -> Result<ExitCode> {
    let path = &args.recipe;
    if path.exists() {
        return Err(UsageError(format!(
            "{} exists: init writes a new recipe and never overwrites one",
            path.display()
        ))
        .into());
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (entry, _) =
        catalog::find_entry(&args.base, dir, args.catalog.as_deref()).map_err(|e| {
            match e.downcast_ref::<catalog::UnknownEntry>() {
                Some(u) => UsageError(format!("--base: {u}")).into(),
                None => e,
            }
        })?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = if crate::recipe::validate::valid_image_name(&stem) {
        stem
    } else {
        "lab".to_string()
    };
    let text = starter(&name, &entry.name, &entry.description);
    crate::io::atomic::write(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    outln!("{}", path.display())?;
    crate::progress::say(format!(
        "wrote {}: check it with `diskforge validate {0}`, see the steps with `diskforge plan {0}`",
        path.display()
    ));
    Ok(ExitCode::SUCCESS)
}

/// The starter recipe: every section, the optional parts commented out.
fn starter(name: &str, base: &str, description: &str) -> String {
    format!(
        r#"# A diskforge recipe (docs/recipes.md lists every key). Check it with
# `diskforge validate`, see what a build runs with `diskforge plan`.
# Editors: `diskforge schema > recipe.schema.json` and a first line
# `# yaml-language-server: $schema=recipe.schema.json`.
name: {name}

base:
  # {description}
  # Other bases: `diskforge base list`; a local image: `path: image.qcow2` next to this
  # file, or `diskforge build --base /path/to/image.qcow2`.
  catalog: {base}

disk:
  size: +4G                 # or an absolute size such as 20G; partition and filesystem grow

customize:
  packages: []              # e.g. [tmux, git]
  # users:
  #   - name: lab
  #     password: {{env: LAB_PASSWORD}}   # secrets come from the environment or a file
  #     sudo: true
  # files:
  #   - path: /etc/motd
  #     content: "Welcome\n"
  # commands:
  #   - echo built by diskforge > /etc/issue.d/diskforge.issue

# ttyd:                     # a web terminal on port 7681
#   enabled: true

output:
  tags: [latest]
  # repository: registry.example.com/lab/{name}   # push there instead of oci:out/{name}
"#
    )
}
