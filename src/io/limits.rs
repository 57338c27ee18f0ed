//! Bounds on what untrusted peers can make diskforge hold: every document read from a
//! registry, a layout or a guest is read with a cap, and every transfer with a deadline
//! on inactivity, so a hostile server can neither exhaust memory nor park a command.

use std::io::Read;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Manifests, indexes and image configs: registries refuse manifests over 4 MiB.
pub const MAX_DOCUMENT: u64 = 4 << 20;
/// An HTTP page read by a probe (ttyd's page is about 730 KB).
pub const MAX_PAGE: u64 = 8 << 20;

/// Reads all of `r`, failing once more than `cap` bytes arrive.
pub fn read_capped(r: impl Read, cap: u64, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(cap + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {what}"))?;
    if buf.len() as u64 > cap {
        bail!("{what} is larger than {cap} bytes: refusing to read it");
    }
    Ok(buf)
}

/// Reads an HTTP response body of at most `cap` bytes, where each chunk must arrive
/// within `idle` and the whole body within `deadline`.
pub async fn read_body_capped(
    mut resp: reqwest::Response,
    cap: u64,
    idle: Duration,
    deadline: Duration,
    what: &str,
) -> Result<Vec<u8>> {
    if resp.content_length().is_some_and(|n| n > cap) {
        bail!(
            "{what} is {} bytes, more than the {cap} allowed: refusing to read it",
            resp.content_length().unwrap_or_default()
        );
    }
    let started = tokio::time::Instant::now();
    let mut buf = Vec::new();
    loop {
        crate::sys::interrupt::check()?;
        let left = deadline.saturating_sub(started.elapsed());
        if left.is_zero() {
            bail!("{what} did not arrive within {}s", deadline.as_secs());
        }
        let chunk = match tokio::time::timeout(idle.min(left), resp.chunk()).await {
            Err(_) if left <= idle => bail!(
                "{what} did not arrive within {}s (after {} bytes)",
                deadline.as_secs(),
                buf.len()
            ),
            Err(_) => bail!(
                "{what}: no data for {}s (after {} bytes)",
                idle.as_secs(),
                buf.len()
            ),
            Ok(r) => r.with_context(|| format!("reading {what}"))?,
        };
        let Some(chunk) = chunk else {
            return Ok(buf);
        };
        if buf.len() as u64 + chunk.len() as u64 > cap {
            bail!("{what} is larger than {cap} bytes: refusing to read it");
        }
        buf.extend_from_slice(&chunk);
    }
}

/// Adds two sizes read from untrusted input, failing instead of wrapping.
pub fn add(a: u64, b: u64, what: &str) -> Result<u64> {
    a.checked_add(b)
        .with_context(|| format!("{what}: size overflow ({a} + {b})"))
}

/// The deepest flow collections (`[…]`, `{…}`) may nest in a YAML file diskforge
/// reads. A recipe needs a handful; the YAML parser takes time quadratic in the depth
/// (160 KB of `[` took 34 s), so deeper files are refused before it sees them.
pub const MAX_YAML_NESTING: usize = 64;

/// Where flow collections in `text` first nest deeper than [`MAX_YAML_NESTING`], as a
/// 1-based (line, column). Every bracket counts, in quoted strings and comments too: a
/// count that is too high can only refuse a pathological file, one too low would let
/// it reach the parser.
pub fn yaml_too_deep(text: &str) -> Option<(usize, usize)> {
    let (mut depth, mut line, mut column) = (0usize, 1usize, 0usize);
    for c in text.chars() {
        column += 1;
        match c {
            '\n' => {
                line += 1;
                column = 0;
            }
            '[' | '{' => {
                depth += 1;
                if depth > MAX_YAML_NESTING {
                    return Some((line, column));
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn deep_flow_nesting_is_found_with_its_position() {
        let ok = format!(
            "a: {}{}\n",
            "[".repeat(MAX_YAML_NESTING),
            "]".repeat(MAX_YAML_NESTING)
        );
        assert_eq!(yaml_too_deep(&ok), None);
        let deep = format!("a: 1\nb: {}", "[{".repeat(40_000));
        assert_eq!(yaml_too_deep(&deep), Some((2, 4 + MAX_YAML_NESTING)));
        assert_eq!(yaml_too_deep("cmd: test ] ] && [ -f x ]\n"), None);
    }
    use super::*;

    #[test]
    fn caps_hold_exactly() {
        assert_eq!(read_capped(&[1u8; 10][..], 10, "x").unwrap().len(), 10);
        assert!(read_capped(&[1u8; 11][..], 10, "x").is_err());
        assert!(add(u64::MAX, 1, "tar entry").is_err());
        assert_eq!(add(2, 3, "x").unwrap(), 5);
    }
}
