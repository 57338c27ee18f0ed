//! Recipes: schema types, loading (`extends:`, variables) and pure validation.

pub mod types;

pub use types::*;
