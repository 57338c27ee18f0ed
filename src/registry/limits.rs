//! How large a layer a registry takes. Some public registries refuse a layer above a
//! fixed size, and only after it was uploaded: a multi-GB upload wasted. diskforge
//! compares the compressed layer with what is known before it uploads anything
//! (docs/cli.md, "Layer size limits", lists the table).

use anyhow::Result;

/// Layer limits of well-known registries: host names as written in references, the
/// limit in bytes, and where it comes from.
pub const KNOWN_LIMITS: &[(&[&str], u64, &str)] = &[
    (
        &["ghcr.io"],
        10_000_000_000,
        "GitHub Container Registry: 10 GB per layer",
    ),
    (
        &["docker.io", "registry-1.docker.io", "index.docker.io"],
        10_000_000_000,
        "Docker Hub: 10 GB per layer",
    ),
    (
        &["quay.io"],
        20 << 30,
        "Quay: default MAXIMUM_LAYER_SIZE 20G",
    ),
];

/// Above this share of a limit, a push warns.
const WARN_PERCENT: u64 = 80;

/// The limit that applies to a layer pushed to `registry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerLimit {
    pub bytes: u64,
    /// Where it comes from: `--max-layer-size`, or a registry's documented limit.
    pub source: String,
}

/// The smaller of `--max-layer-size` and the registry's documented limit; `None` for a
/// registry without a known limit and no option given.
pub fn layer_limit(registry: &str, max_layer_size: Option<u64>) -> Option<LayerLimit> {
    let host = registry.to_ascii_lowercase();
    let known = KNOWN_LIMITS
        .iter()
        .find(|(hosts, _, _)| hosts.contains(&host.as_str()))
        .map(|(_, bytes, source)| LayerLimit {
            bytes: *bytes,
            source: (*source).to_string(),
        });
    let given = max_layer_size.map(|bytes| LayerLimit {
        bytes,
        source: "--max-layer-size".to_string(),
    });
    match (known, given) {
        (Some(k), Some(g)) => Some(if g.bytes <= k.bytes { g } else { k }),
        (k, g) => k.or(g),
    }
}

/// A layer larger than a registry takes, found before uploading it.
#[derive(Debug, thiserror::Error)]
#[error("layer {digest} is {} ({size} bytes), more than {registry} takes ({}: {} bytes): not pushed. {REMEDIES}", crate::progress::human_bytes(*.size), .limit.source, .limit.bytes)]
pub struct LayerTooLarge {
    pub registry: String,
    pub digest: String,
    pub size: u64,
    pub limit: LayerLimit,
}

/// What makes a containerDisk layer smaller.
pub const REMEDIES: &str = "To make it smaller: compress with zstd (--compression zstd or output.compression: zstd; importers need CDI v1.57 or later), zero free space (hygiene.sparsify: true), ask for a smaller disk.size, or push to a registry without this limit";

/// Checks a layer of `size` bytes against the limit for `registry`: an error when over
/// it, a warning when within 20% of it.
pub fn check_layer(
    registry: &str,
    digest: &str,
    size: u64,
    max_layer_size: Option<u64>,
) -> Result<()> {
    let Some(limit) = layer_limit(registry, max_layer_size) else {
        return Ok(());
    };
    if size > limit.bytes {
        return Err(LayerTooLarge {
            registry: registry.to_string(),
            digest: digest.to_string(),
            size,
            limit,
        }
        .into());
    }
    if size.saturating_mul(100) >= limit.bytes.saturating_mul(WARN_PERCENT) {
        tracing::warn!(
            "layer {digest} is {} ({size} bytes), close to what {registry} takes ({}: {} bytes). {REMEDIES}",
            crate::progress::human_bytes(size),
            limit.source,
            limit.bytes
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smaller_limit_applies() {
        assert_eq!(layer_limit("registry.example.com", None), None);
        assert_eq!(layer_limit("GHCR.io", None).unwrap().bytes, 10_000_000_000);
        assert_eq!(layer_limit("quay.io", None).unwrap().bytes, 20 << 30);
        let l = layer_limit("quay.io", Some(1 << 30)).unwrap();
        assert_eq!((l.bytes, l.source.as_str()), (1 << 30, "--max-layer-size"));
        assert_eq!(
            layer_limit("docker.io", Some(u64::MAX)).unwrap().bytes,
            10_000_000_000
        );
        assert!(check_layer("ghcr.io", "sha256:x", 10_000_000_001, None)
            .unwrap_err()
            .downcast_ref::<LayerTooLarge>()
            .is_some());
        assert!(check_layer("ghcr.io", "sha256:x", 10_000_000_000, None).is_ok());
        assert!(check_layer("localhost:5000", "sha256:x", u64::MAX, None).is_ok());
    }
}
