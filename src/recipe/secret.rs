//! Resolving [`Secret`] references to their values at build time.

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};

use super::Secret;

/// A secret value. `Debug` and `Display` print `***`; only [`SecretValue::expose`]
/// gives the value, so it cannot end up in a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: String) -> Self {
        SecretValue(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(crate::sys::exec::REDACTED)
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(crate::sys::exec::REDACTED)
    }
}

/// Reads a secret from its environment variable or file (relative to `recipe_dir`).
/// Errors name the variable or file, never the value.
pub fn resolve(secret: &Secret, recipe_dir: &Path) -> Result<SecretValue> {
    match secret {
        Secret::Env(name) => {
            let v = std::env::var(name)
                .with_context(|| format!("secret environment variable {name} is not set"))?;
            crate::sys::exec::register_secret(&v);
            Ok(SecretValue(v))
        }
        Secret::File(p) => {
            let path = recipe_dir.join(p);
            let mut v = std::fs::read_to_string(&path)
                .with_context(|| format!("reading secret file {}", path.display()))?;
            if v.ends_with('\n') {
                v.pop();
                if v.ends_with('\r') {
                    v.pop();
                }
            }
            crate::sys::exec::register_secret(&v);
            Ok(SecretValue(v))
        }
    }
}
