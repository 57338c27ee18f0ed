//! Provenance of built images: cosign-format signatures of pushed manifests, an SPDX
//! SBOM of the guest's packages, and an in-toto SLSA provenance statement (optionally
//! in a signed DSSE envelope). Pure functions: callers fetch and push the bytes.

pub mod attach;
pub mod dsse;
pub mod keys;
pub mod packages;
pub mod sign;
pub mod slsa;
pub mod spdx;

pub use keys::{PrivateKey, PublicKey};

use anyhow::{bail, Context, Result};

use crate::oci::image::Blob;

/// The hex part of a `sha256:<64 lowercase hex digits>` digest; an error otherwise.
pub(crate) fn sha256_hex(digest: &str) -> Result<&str> {
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("{digest:?} is not a sha256 digest"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        bail!("{digest:?} is not a sha256 digest (64 lowercase hex digits)");
    }
    Ok(hex)
}

/// A blob of exactly these bytes, with its sha256 digest and size.
pub(crate) fn blob_of(bytes: Vec<u8>) -> Blob {
    let digest = format!("sha256:{}", crate::io::hash::sha256_hex(&bytes));
    let size = bytes.len() as u64;
    Blob {
        bytes,
        digest,
        size,
    }
}
