//! Loading a recipe file into a typed [`Recipe`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Recipe;

/// What the command line adds to a recipe file.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--set KEY=VALUE` pairs, as given.
    pub set: Vec<String>,
    /// `--catalog DIR`.
    pub catalog: Option<PathBuf>,
}

/// A recipe after loading: the merged, substituted recipe and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedRecipe {
    pub recipe: Recipe,
    /// The file given on the command line.
    pub path: PathBuf,
    /// Its directory: relative paths in the recipe are resolved against it.
    pub dir: PathBuf,
    /// `sha256:` of the canonical JSON of the resolved recipe (labels, up-to-date checks).
    pub digest: String,
}

/// Reads and parses one recipe file.
pub fn load(path: &Path, _opts: &LoadOptions) -> Result<LoadedRecipe> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading recipe {}", path.display()))?;
    let recipe: Recipe = serde_yaml::from_str(&text)
        .with_context(|| format!("parsing recipe {}", path.display()))?;
    let dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let digest = recipe_digest(&recipe)?;
    Ok(LoadedRecipe {
        recipe,
        path: path.to_path_buf(),
        dir,
        digest,
    })
}

/// `sha256:` of the canonical JSON of a recipe.
pub fn recipe_digest(recipe: &Recipe) -> Result<String> {
    let json = serde_json::to_vec(recipe).context("serializing recipe")?;
    Ok(format!("sha256:{}", crate::cache::sha256_hex(&json)))
}
