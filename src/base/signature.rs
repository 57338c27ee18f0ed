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

use crate::exec::{self, Cmd};

const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);

/// An OpenPGP key (armored or binary) as a binary keyring file both tools read.
fn write_keyring(key: &[u8], dir: &Path) -> Result<std::path::PathBuf> {
    let binary = if let Some(armored) = armored_text(key) {
        dearmor(armored).context("decoding the ASCII-armored signing key")?
    } else {
        key.to_vec()
    };
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
        bail!("verifying the signature of {what} needs sqv or gpgv: install the `sqv` package");
    };
    cmd.run().with_context(|| {
        format!("the signature of {what} is NOT valid for the given signing-key")
    })?;
    Ok(())
}

/// Verifies a cleartext-signed file with `key` and returns the signed text.
pub fn verify_clearsigned(signed: &Path, key: &[u8], what: &str) -> Result<String> {
    if !exec::have("gpgv") {
        bail!("verifying the cleartext-signed {what} needs gpgv: install the `gpgv` package");
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
    .with_context(|| format!("the signature of {what} is NOT valid for the given signing-key"))?;
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
}
