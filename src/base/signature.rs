//! OpenPGP verification of checksum files with `sqv` (preferred) or `gpgv`, through the
//! exec door. Neither touches the user's keyrings: the signing key is written to a
//! temporary keyring and gpgv gets a temporary home.
//!
//! Detached signatures go to `sqv` when installed, else `gpgv`. Cleartext-signed files go
//! to `gpgv`, which writes out exactly the text it verified (the `sqv` in Debian 12, 1.1,
//! only reads detached signatures), so nothing unverified is ever parsed.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;

use crate::sys::exec::{self, Cmd};

const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);

/// A signature or a signing key did not verify (exit code 4).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SignatureInvalid(pub String);

/// A missing verifier (exit code 3), with what it was needed for.
fn missing(program: &str, why: String) -> anyhow::Error {
    anyhow::Error::new(exec::MissingTool {
        program: program.into(),
    })
    .context(why)
}

/// An OpenPGP key (armored or binary) as a binary keyring file both tools read.
fn write_keyring(key: &[u8], dir: &Path) -> Result<std::path::PathBuf> {
    let binary = binary_key(key)?;
    if binary.is_empty() {
        bail!("the signing key is empty");
    }
    let path = dir.join("signing-key.gpg");
    std::fs::write(&path, binary).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn armored_text(key: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(key).ok()?;
    text.trim_start()
        .starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----")
        .then_some(text)
}

/// The binary packets of an ASCII-armored block (headers and CRC line dropped).
fn dearmor(text: &str) -> Result<Vec<u8>> {
    let mut inside = false;
    let mut headers = true;
    let mut b64 = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with("-----BEGIN ") {
            inside = true;
            continue;
        }
        if line.starts_with("-----END ") {
            break;
        }
        if !inside {
            continue;
        }
        if headers {
            if line.is_empty() {
                headers = false;
                continue;
            }
            if line.contains(": ") {
                continue;
            }
            headers = false;
        }
        if line.is_empty() || (line.starts_with('=') && line.len() == 5) {
            continue;
        }
        b64.push_str(line);
    }
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .context("invalid base64 in armored key")
}

/// The binary form of a key (armored or not).
fn binary_key(key: &[u8]) -> Result<Vec<u8>> {
    match armored_text(key) {
        Some(a) => dearmor(a).context("decoding the ASCII-armored signing key"),
        None => Ok(key.to_vec()),
    }
}

/// The v4 fingerprints (upper-case hex) of the primary keys in an OpenPGP key or
/// keyring: SHA-1 over 0x99, the two-byte length and the public-key packet body.
pub fn fingerprints(key: &[u8]) -> Result<Vec<String>> {
    use sha1::Digest as _;
    let data = binary_key(key)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let tag_byte = data[at];
        if tag_byte & 0x80 == 0 {
            bail!("malformed OpenPGP data at byte {at}");
        }
        let (tag, len, header) = if tag_byte & 0x40 != 0 {
            // New format: one-, two- or five-octet length.
            let tag = tag_byte & 0x3f;
            let b0 = *data.get(at + 1).context("truncated OpenPGP packet")? as usize;
            match b0 {
                0..=191 => (tag, b0, 2),
                192..=223 => {
                    let b1 = *data.get(at + 2).context("truncated OpenPGP packet")? as usize;
                    (tag, ((b0 - 192) << 8) + b1 + 192, 3)
                }
                255 => {
                    let b = data
                        .get(at + 2..at + 6)
                        .context("truncated OpenPGP packet")?;
                    (
                        tag,
                        u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize,
                        6,
                    )
                }
                _ => bail!("partial-length OpenPGP packets are not used in keys"),
            }
        } else {
            let tag = (tag_byte >> 2) & 0x0f;
            match tag_byte & 0x03 {
                0 => (
                    tag,
                    *data.get(at + 1).context("truncated OpenPGP packet")? as usize,
                    2,
                ),
                1 => {
                    let b = data
                        .get(at + 1..at + 3)
                        .context("truncated OpenPGP packet")?;
                    (
                        tag,
                        u16::from_be_bytes(b.try_into().expect("2 bytes")) as usize,
                        3,
                    )
                }
                2 => {
                    let b = data
                        .get(at + 1..at + 5)
                        .context("truncated OpenPGP packet")?;
                    (
                        tag,
                        u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize,
                        5,
                    )
                }
                _ => bail!("indeterminate-length OpenPGP packets are not used in keys"),
            }
        };
        let body = data
            .get(at + header..at + header + len)
            .context("truncated OpenPGP packet")?;
        if tag == 6 {
            if body.first() != Some(&4) {
                bail!(
                    "only version 4 OpenPGP keys are supported (found version {:?})",
                    body.first()
                );
            }
            let mut h = sha1::Sha1::new();
            h.update([0x99]);
            h.update((len as u16).to_be_bytes());
            h.update(body);
            out.push(hex::encode_upper(h.finalize()));
        }
        at += header + len;
    }
    if out.is_empty() {
        bail!("no OpenPGP public key found");
    }
    Ok(out)
}

/// Checks that `key` holds exactly the primary keys `pinned` names (none pinned: any).
pub fn check_fingerprints(key: &[u8], pinned: &[String]) -> Result<()> {
    if pinned.is_empty() {
        return Ok(());
    }
    let have = fingerprints(key)?;
    let norm = |f: &String| f.replace(' ', "").to_ascii_uppercase();
    let want: Vec<String> = pinned.iter().map(norm).collect();
    let unexpected: Vec<&String> = have.iter().filter(|f| !want.contains(f)).collect();
    let missing: Vec<&String> = want.iter().filter(|f| !have.contains(f)).collect();
    if !unexpected.is_empty() || !missing.is_empty() {
        return Err(SignatureInvalid(format!(
            "the signing key does not match its pinned fingerprints (unexpected: {unexpected:?}, missing: {missing:?})"
        ))
        .into());
    }
    Ok(())
}

fn gpgv(home: &Path, keyring: &Path, description: String) -> Cmd {
    Cmd::new("gpgv", description)
        .arg("--homedir")
        .arg(home)
        .arg("--keyring")
        .arg(keyring)
        .timeout(VERIFY_TIMEOUT)
}

/// Verifies a detached signature `sig` over `data` with `key`.
pub fn verify_detached(data: &Path, sig: &Path, key: &[u8], what: &str) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary keyring directory")?;
    let keyring = write_keyring(key, dir.path())?;
    let description = format!("verifying the OpenPGP signature of {what}");
    let cmd = if exec::have("sqv") {
        Cmd::new("sqv", description)
            .arg("--keyring")
            .arg(&keyring)
            .arg(sig)
            .arg(data)
            .timeout(VERIFY_TIMEOUT)
    } else if exec::have("gpgv") {
        gpgv(dir.path(), &keyring, description).arg(sig).arg(data)
    } else {
        return Err(missing(
            "sqv",
            format!(
                "verifying the signature of {what} needs sqv or gpgv: install the `sqv` package"
            ),
        ));
    };
    cmd.run().context(SignatureInvalid(format!(
        "the signature of {what} is NOT valid for the given signing-key"
    )))?;
    Ok(())
}

/// Verifies a cleartext-signed file with `key` and returns the signed text.
pub fn verify_clearsigned(signed: &Path, key: &[u8], what: &str) -> Result<String> {
    if !exec::have("gpgv") {
        return Err(missing(
            "gpgv",
            format!("verifying the cleartext-signed {what} needs gpgv: install the `gpgv` package"),
        ));
    }
    let dir = tempfile::tempdir().context("creating a temporary keyring directory")?;
    let keyring = write_keyring(key, dir.path())?;
    let out = dir.path().join("verified.txt");
    gpgv(
        dir.path(),
        &keyring,
        format!("verifying the OpenPGP signature of {what}"),
    )
    .arg("--output")
    .arg(&out)
    .arg(signed)
    .run()
    .context(SignatureInvalid(format!(
        "the signature of {what} is NOT valid for the given signing-key"
    )))?;
    let text = std::fs::read(&out).with_context(|| format!("reading {}", out.display()))?;
    String::from_utf8(text).with_context(|| format!("{what} is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dearmor_drops_headers_and_crc() {
        let text = "-----BEGIN PGP PUBLIC KEY BLOCK-----\nComment: x\n\naGVsbG8g\nd29ybGQ=\n=abcd\n-----END PGP PUBLIC KEY BLOCK-----\n";
        assert_eq!(dearmor(text).unwrap(), b"hello world");
    }

    #[test]
    fn fingerprints_of_the_pinned_catalog_keys() {
        let ubuntu = crate::base::catalog::Origin::Embedded
            .key("keys/ubuntu-cloudimage-keyring.asc")
            .unwrap();
        assert_eq!(
            fingerprints(&ubuntu).unwrap(),
            vec![
                "D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81",
                "4A3CE3CD565D7EB5C810E2B97FF3F408476CF100"
            ]
        );
        let pinned = vec!["D2EB 4462 6FDD C30B 513D 5BB7 1A5D 6C4C 7DB8 7C81".to_string()];
        assert!(
            check_fingerprints(&ubuntu, &pinned).is_err(),
            "an extra key is refused"
        );
        assert!(fingerprints(b"not a key").is_err());
    }
}
