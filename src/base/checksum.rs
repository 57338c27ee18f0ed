//! Checksums: streaming hashers, GNU and BSD checksum files (optionally clearsigned), and
//! the typed mismatch error callers match on.

use std::fmt;

use anyhow::{bail, Result};
use sha2::{Digest as _, Sha256, Sha512};

use crate::recipe::{Checksum, HashAlgorithm};

/// An expected or computed digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    pub algorithm: HashAlgorithm,
    /// Lowercase hex.
    pub hex: String,
}

impl Digest {
    pub fn new(algorithm: HashAlgorithm, hex: &str) -> Digest {
        Digest {
            algorithm,
            hex: hex.to_ascii_lowercase(),
        }
    }

    /// The digest of a literal checksum; `None` for `checksum: none`.
    pub fn from_checksum(c: &Checksum) -> Option<Digest> {
        match c {
            Checksum::Digest { algorithm, hex } => Some(Digest::new(*algorithm, hex)),
            Checksum::None => None,
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

/// The downloaded content does not match its published checksum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("checksum mismatch for {url}: expected {expected}, got {actual}")]
pub struct ChecksumMismatch {
    pub url: String,
    pub expected: String,
    pub actual: String,
}

/// A running hash of either algorithm.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(algorithm: HashAlgorithm) -> Hasher {
        match algorithm {
            HashAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            HashAlgorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub fn algorithm(&self) -> HashAlgorithm {
        match self {
            Hasher::Sha256(_) => HashAlgorithm::Sha256,
            Hasher::Sha512(_) => HashAlgorithm::Sha512,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        let algorithm = self.algorithm();
        let hex = match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        };
        Digest { algorithm, hex }
    }
}

const CLEARSIGN_BEGIN: &str = "-----BEGIN PGP SIGNED MESSAGE-----";
const SIGNATURE_BEGIN: &str = "-----BEGIN PGP SIGNATURE-----";

/// True when `text` is an OpenPGP cleartext-signed message.
pub fn is_clearsigned(text: &str) -> bool {
    text.trim_start().starts_with(CLEARSIGN_BEGIN)
}

/// The signed text of a cleartext-signed message: armor headers and the signature block
/// removed, dash-escaping undone. Only call this on text whose signature was verified, or
/// when no signing key was configured.
pub fn strip_clearsign(text: &str) -> Result<String> {
    let mut lines = text.trim_start().lines();
    if lines.next().map(str::trim_end) != Some(CLEARSIGN_BEGIN) {
        bail!("not a cleartext-signed message");
    }
    // Armor headers (`Hash: SHA256`) end at the first empty line.
    for line in lines.by_ref() {
        if line.trim().is_empty() {
            break;
        }
    }
    let mut body = Vec::new();
    let mut signed = false;
    for line in lines {
        if line.trim_end() == SIGNATURE_BEGIN {
            signed = true;
            break;
        }
        body.push(line.strip_prefix("- ").unwrap_or(line));
    }
    if !signed {
        bail!("cleartext-signed message has no signature block");
    }
    Ok(body.join("\n"))
}

fn algorithm_from_len(len: usize) -> Option<HashAlgorithm> {
    match len {
        64 => Some(HashAlgorithm::Sha256),
        128 => Some(HashAlgorithm::Sha512),
        _ => None,
    }
}

fn algorithm_from_tag(tag: &str) -> Option<HashAlgorithm> {
    match tag.to_ascii_uppercase().replace('-', "").as_str() {
        "SHA256" => Some(HashAlgorithm::Sha256),
        "SHA512" => Some(HashAlgorithm::Sha512),
        _ => None,
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn same_name(listed: &str, wanted: &str) -> bool {
    let listed = listed.trim_start_matches("./");
    listed == wanted || listed.rsplit('/').next() == Some(wanted)
}

/// One `(algorithm tag if any, name, hash)` line of a GNU or BSD checksum file.
fn parse_line(line: &str) -> Option<(Option<&str>, &str, &str)> {
    let line = line.trim_end_matches('\r');
    // BSD: `SHA256 (name) = hash`
    if let Some((left, hash)) = line.rsplit_once(") = ") {
        if let Some((tag, name)) = left.split_once(" (") {
            let hash = hash.trim();
            if is_hex(hash) && !tag.contains(' ') {
                return Some((Some(tag), name, hash));
            }
        }
    }
    // GNU: `hash  name` (text mode) or `hash *name` (binary mode).
    let (hash, rest) = line.split_once(' ')?;
    if !is_hex(hash) {
        return None;
    }
    let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'))?;
    Some((None, name, hash))
}

/// Finds the entry for `file_name` in a checksum file (GNU or BSD form; a clearsigned file
/// must be stripped first). The algorithm comes from the BSD tag, else `algorithm`, else
/// the hash length. An entry matches by its whole name or its last path segment; when
/// several entries match with different hashes of the same algorithm (the name listed
/// twice, or under two directories), the file is ambiguous and refused, naming the lines.
pub fn find_in_checksum_file(
    text: &str,
    file_name: &str,
    algorithm: Option<HashAlgorithm>,
) -> Result<Digest> {
    let mut names = Vec::new();
    let mut found: Vec<(usize, &str, Digest)> = Vec::new();
    let mut other_algorithm = None;
    for (n, line) in text.lines().enumerate() {
        let Some((tag, name, hash)) = parse_line(line) else {
            continue;
        };
        if !same_name(name, file_name) {
            names.push(name.to_string());
            continue;
        }
        // A line of another algorithm than the recipe's (by its tag, or by the length
        // of an untagged hash) is not a candidate.
        let tagged = match tag {
            Some(t) => algorithm_from_tag(t),
            None => algorithm_from_len(hash.len()),
        };
        if let (Some(declared), Some(t)) = (algorithm, tagged) {
            if declared != t {
                other_algorithm.get_or_insert((t, declared));
                continue;
            }
        }
        let digest = entry_digest(tag, hash, file_name, algorithm)?;
        if let Some((first, first_line, _)) = found
            .iter()
            .find(|(_, _, d)| d.algorithm == digest.algorithm && d.hex != digest.hex)
        {
            bail!(
                "checksum file is ambiguous for {file_name}: line {} `{}` and line {} `{}` give different {} hashes; refusing to pick one",
                first + 1,
                first_line.trim_end(),
                n + 1,
                line.trim_end(),
                digest.algorithm.name()
            );
        }
        found.push((n, line, digest));
    }
    if let Some((_, _, d)) = found.into_iter().next() {
        return Ok(d);
    }
    if let Some((tagged, declared)) = other_algorithm {
        bail!(
            "checksum file lists {file_name} as {} but the recipe says {}",
            tagged.name(),
            declared.name()
        );
    }
    names.truncate(8);
    bail!(
        "checksum file has no entry for {file_name}{}",
        if names.is_empty() {
            " (no checksum lines found at all)".to_string()
        } else {
            format!(" (it lists: {})", names.join(", "))
        }
    )
}

/// The digest one checksum line gives for `file_name`.
fn entry_digest(
    tag: Option<&str>,
    hash: &str,
    file_name: &str,
    algorithm: Option<HashAlgorithm>,
) -> Result<Digest> {
    let from_tag = match tag {
        Some(t) => match algorithm_from_tag(t) {
            Some(a) => Some(a),
            None => bail!("checksum file lists {file_name} with unsupported algorithm {t}"),
        },
        None => None,
    };
    let alg = match from_tag
        .or(algorithm)
        .or_else(|| algorithm_from_len(hash.len()))
    {
        Some(a) => a,
        None => bail!(
            "cannot tell the algorithm of the {}-digit hash for {file_name}; set `algorithm`",
            hash.len()
        ),
    };
    if let (Some(declared), Some(tagged)) = (algorithm, from_tag) {
        if declared != tagged {
            bail!(
                "checksum file lists {file_name} as {} but the recipe says {}",
                tagged.name(),
                declared.name()
            );
        }
    }
    if hash.len() != alg.hex_len() {
        bail!(
            "checksum for {file_name} has {} hex digits; {} needs {}",
            hash.len(),
            alg.name(),
            alg.hex_len()
        );
    }
    Ok(Digest::new(alg, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn gnu_text_and_binary_modes() {
        let text = format!("{}  other.img\n{H256} *disk.qcow2\n", "a".repeat(64));
        let d = find_in_checksum_file(&text, "disk.qcow2", None).unwrap();
        assert_eq!(d, Digest::new(HashAlgorithm::Sha256, H256));
        let text = format!("{H256}  ./disk.qcow2\n");
        assert!(find_in_checksum_file(&text, "disk.qcow2", None).is_ok());
    }

    #[test]
    fn bsd_form_with_comments() {
        let h512 = "b".repeat(128);
        let text = format!("# disk.raw.xz: 123 bytes\nSHA512 (disk.raw.xz) = {h512}\n");
        let d = find_in_checksum_file(&text, "disk.raw.xz", None).unwrap();
        assert_eq!(d.algorithm, HashAlgorithm::Sha512);
        let err = find_in_checksum_file(&text, "disk.raw.xz", Some(HashAlgorithm::Sha256));
        assert!(err.is_err());
    }

    #[test]
    fn missing_entry_names_what_is_there() {
        let text = format!("{H256}  a.img\n");
        let msg = find_in_checksum_file(&text, "b.img", None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("b.img") && msg.contains("a.img"), "{msg}");
    }

    #[test]
    fn clearsign_is_stripped() {
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n{H256}  a.img\n- --dash\n\
             -----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n"
        );
        assert!(is_clearsigned(&text));
        let body = strip_clearsign(&text).unwrap();
        assert_eq!(body, format!("{H256}  a.img\n--dash"));
    }

    #[test]
    fn hashers() {
        let mut h = Hasher::new(HashAlgorithm::Sha256);
        h.update(b"");
        assert_eq!(h.finish().hex, H256);
    }

    #[test]
    fn ambiguous_entries_are_refused_naming_both_lines() {
        let other = "a".repeat(64);
        // The same name twice with different hashes.
        let text = format!("{H256}  disk.qcow2\n{other}  disk.qcow2\n");
        let msg = find_in_checksum_file(&text, "disk.qcow2", None)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("ambiguous")
                && msg.contains(&format!("line 1 `{H256}  disk.qcow2`"))
                && msg.contains(&format!("line 2 `{other}  disk.qcow2`")),
            "{msg}"
        );
        // The same file name under two directories.
        let text = format!("# sums\n{other}  amd64/disk.qcow2\n{H256}  arm64/disk.qcow2\n");
        let msg = find_in_checksum_file(&text, "disk.qcow2", None)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 2 `")
                && msg.contains("amd64/disk.qcow2")
                && msg.contains("line 3 `")
                && msg.contains("arm64/disk.qcow2"),
            "{msg}"
        );
        // Naming the entry in full picks it.
        let d = find_in_checksum_file(&text, "arm64/disk.qcow2", None).unwrap();
        assert_eq!(d.hex, H256);
        // BSD and GNU lines that agree, or hashes of two algorithms: nothing to choose.
        let h512 = "b".repeat(128);
        let text = format!(
            "SHA256 (disk.qcow2) = {H256}\n{H256}  ./disk.qcow2\nSHA512 (disk.qcow2) = {h512}\n"
        );
        let d = find_in_checksum_file(&text, "disk.qcow2", None).unwrap();
        assert_eq!(d, Digest::new(HashAlgorithm::Sha256, H256));
        let d = find_in_checksum_file(&text, "disk.qcow2", Some(HashAlgorithm::Sha512)).unwrap();
        assert_eq!(d, Digest::new(HashAlgorithm::Sha512, &h512));
    }
}
