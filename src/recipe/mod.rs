//! Recipes: schema types, loading (`extends:`, variables) and pure validation.

pub mod commands;
pub mod load;
pub mod secret;
pub mod types;
pub mod validate;

pub use load::{load, LoadOptions, LoadedRecipe};
pub use secret::SecretValue;
pub use types::*;
