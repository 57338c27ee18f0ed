//! Recipes: schema types, loading (`extends:`, variables), located diagnostics and pure
//! validation.

pub mod diag;
pub mod host;
pub mod load;
pub mod secret;
pub mod types;
pub mod validate;

pub use diag::{RecipeError, RecipeErrors, Seg};
pub use host::HostAccess;
pub use load::{load, LoadOptions, LoadedRecipe, References};
pub use secret::SecretValue;
pub use types::*;
