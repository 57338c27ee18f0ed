//! ECDSA P-256 signing and verification keys in the PEM formats operators already have:
//! PKCS#8 and SEC1 private keys from openssl, cosign's password-encrypted keys
//! (`ENCRYPTED SIGSTORE PRIVATE KEY`, older `ENCRYPTED COSIGN PRIVATE KEY`), and SPKI
//! public keys. Key material never reaches `Debug` or `Display`.

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use crypto_secretbox::aead::{Aead, KeyInit, OsRng};
use crypto_secretbox::XSalsa20Poly1305;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::recipe::{Secret, SecretValue};

const PEM_SIGSTORE: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
const PEM_COSIGN: &str = "ENCRYPTED COSIGN PRIVATE KEY";

/// A private ECDSA P-256 key. `Debug` shows only the public key's fingerprint.
pub struct PrivateKey(SigningKey);

/// A public ECDSA P-256 key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public().fingerprint())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PrivateKey {
    /// A new random key.
    pub fn generate() -> PrivateKey {
        PrivateKey(SigningKey::random(&mut OsRng))
    }

    /// Parses a PEM private key: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or a
    /// cosign-encrypted key, which needs `password`.
    pub fn from_pem(pem: &str, password: Option<&SecretValue>) -> Result<PrivateKey> {
        let label = pem_label(pem)?;
        let key = match label.as_str() {
            "PRIVATE KEY" => p256::SecretKey::from_pkcs8_pem(pem)
                .context("parsing a PKCS#8 private key (only ECDSA P-256 is supported)")?,
            "EC PRIVATE KEY" => p256::SecretKey::from_sec1_pem(pem)
                .context("parsing a SEC1 EC private key (only P-256 is supported)")?,
            PEM_SIGSTORE | PEM_COSIGN => {
                let password = password.with_context(|| {
                    format!("the key is a password-protected {label}: give its password")
                })?;
                let der = decrypt_cosign(&pem_body(pem)?, password.expose().as_bytes())?;
                p256::SecretKey::from_pkcs8_der(&der)
                    .context("the decrypted cosign key is not a PKCS#8 ECDSA P-256 key")?
            }
            other => bail!("unsupported private key PEM type {other:?}: expected PRIVATE KEY, EC PRIVATE KEY or {PEM_SIGSTORE}"),
        };
        Ok(PrivateKey(SigningKey::from(key)))
    }

    /// Reads a private key file; the password of an encrypted key comes from `password`
    /// (an environment variable or a file, resolved relative to `base_dir`).
    pub fn load(path: &Path, password: Option<&Secret>, base_dir: &Path) -> Result<PrivateKey> {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading private key {}", path.display()))?;
        let password = password
            .map(|s| crate::recipe::secret::resolve(s, base_dir))
            .transpose()?;
        PrivateKey::from_pem(&pem, password.as_ref())
            .with_context(|| format!("loading private key {}", path.display()))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(*self.0.verifying_key())
    }

    /// ECDSA over SHA-256 of `message`, ASN.1 DER. Deterministic (RFC 6979): the same
    /// key and message always give the same signature.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let sig: Signature = self.0.sign(message);
        sig.to_der().as_bytes().to_vec()
    }

    /// The key as cosign writes it: PKCS#8 encrypted with scrypt (N=2^16, r=8, p=1) and
    /// NaCl secretbox under a fresh random salt and nonce, in an
    /// `ENCRYPTED SIGSTORE PRIVATE KEY` PEM block.
    pub fn to_cosign_pem(&self, password: &SecretValue) -> Result<String> {
        let der = p256::SecretKey::from(&self.0)
            .to_pkcs8_der()
            .context("encoding the private key as PKCS#8")?;
        let json = encrypt_cosign(der.as_bytes(), password.expose().as_bytes())?;
        Ok(pem_encode(PEM_SIGSTORE, &json))
    }
}

impl PublicKey {
    /// Parses a PEM SPKI public key (`PUBLIC KEY`).
    pub fn from_pem(pem: &str) -> Result<PublicKey> {
        let key = p256::PublicKey::from_public_key_pem(pem)
            .context("parsing a PEM public key (only ECDSA P-256 is supported)")?;
        Ok(PublicKey(VerifyingKey::from(&key)))
    }

    pub fn load(path: &Path) -> Result<PublicKey> {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading public key {}", path.display()))?;
        PublicKey::from_pem(&pem).with_context(|| format!("loading public key {}", path.display()))
    }

    pub fn to_pem(&self) -> Result<String> {
        p256::PublicKey::from(&self.0)
            .to_public_key_pem(LineEnding::LF)
            .context("encoding the public key as PEM")
    }

    /// `sha256:` of the DER SPKI encoding, to name a key in messages without showing it.
    pub fn fingerprint(&self) -> String {
        match p256::PublicKey::from(&self.0).to_public_key_der() {
            Ok(der) => format!("sha256:{}", crate::io::hash::sha256_hex(der.as_bytes())),
            Err(_) => "sha256:?".to_string(),
        }
    }

    /// True when `signature` (ASN.1 DER) is this key's ECDSA signature over SHA-256 of
    /// `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match DerSignature::from_bytes(signature) {
            Ok(sig) => self.0.verify(message, &sig).is_ok(),
            Err(_) => false,
        }
    }
}

/// The PEM block's label (`-----BEGIN LABEL-----`).
fn pem_label(pem: &str) -> Result<String> {
    let line = pem
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("-----BEGIN "))
        .context("no PEM block (-----BEGIN …-----) found")?;
    Ok(line
        .trim_start_matches("-----BEGIN ")
        .trim_end_matches('-')
        .to_string())
}

/// The base64-decoded body of the first PEM block.
fn pem_body(pem: &str) -> Result<Vec<u8>> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN "))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END "))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .context("the PEM body is not valid base64")
}

fn pem_encode(label: &str, body: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(body);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The JSON inside cosign's encrypted PEM block (go-securesystemslib `encrypted`):
/// byte strings are standard base64, as Go's encoding/json writes `[]byte`.
#[derive(Serialize, Deserialize)]
struct Encrypted {
    kdf: Kdf,
    cipher: Cipher,
    #[serde(with = "b64")]
    ciphertext: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    #[serde(with = "b64")]
    salt: Vec<u8>,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    #[serde(with = "b64")]
    nonce: Vec<u8>,
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// The scrypt parameter sets the reference implementation accepts (legacy, standard,
/// OWASP). Anything else is refused: a tampered file could otherwise ask for a cost
/// that never finishes.
const SCRYPT_ALLOWED: [ScryptParams; 3] = [
    ScryptParams {
        n: 1 << 15,
        r: 8,
        p: 1,
    },
    ScryptParams {
        n: 1 << 16,
        r: 8,
        p: 1,
    },
    ScryptParams {
        n: 1 << 17,
        r: 8,
        p: 1,
    },
];

fn scrypt_key(password: &[u8], salt: &[u8], params: ScryptParams) -> Result<Zeroizing<[u8; 32]>> {
    if !SCRYPT_ALLOWED.contains(&params) {
        bail!(
            "unsupported scrypt parameters N={} r={} p={}",
            params.n,
            params.r,
            params.p
        );
    }
    let log_n = params.n.trailing_zeros() as u8;
    let p = scrypt::Params::new(log_n, params.r, params.p, 32)
        .map_err(|e| anyhow::anyhow!("scrypt parameters: {e}"))?;
    let mut key = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(password, salt, &p, key.as_mut())
        .map_err(|e| anyhow::anyhow!("deriving the key with scrypt: {e}"))?;
    Ok(key)
}

/// Decrypts the JSON body of a cosign-encrypted key; the plaintext is wiped when dropped.
fn decrypt_cosign(json: &[u8], password: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let data: Encrypted =
        serde_json::from_slice(json).context("the encrypted key is not cosign's JSON format")?;
    if data.kdf.name != "scrypt" {
        bail!(
            "unsupported key derivation {:?}: expected scrypt",
            data.kdf.name
        );
    }
    if data.cipher.name != "nacl/secretbox" {
        bail!(
            "unsupported cipher {:?}: expected nacl/secretbox",
            data.cipher.name
        );
    }
    if data.cipher.nonce.len() != 24 {
        bail!("the secretbox nonce must be 24 bytes");
    }
    let key = scrypt_key(password, &data.kdf.salt, data.kdf.params)?;
    XSalsa20Poly1305::new(key.as_ref().into())
        .decrypt(
            data.cipher.nonce.as_slice().into(),
            data.ciphertext.as_slice(),
        )
        .map(Zeroizing::new)
        .map_err(|_| {
            anyhow::anyhow!("decrypting the key failed: wrong password or a damaged key file")
        })
}

/// Encrypts `plaintext` into cosign's JSON format with the standard scrypt parameters.
fn encrypt_cosign(plaintext: &[u8], password: &[u8]) -> Result<Vec<u8>> {
    use crypto_secretbox::aead::rand_core::RngCore as _;
    let mut salt = vec![0u8; 32];
    OsRng.fill_bytes(&mut salt);
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut nonce);
    let params = SCRYPT_ALLOWED[1];
    let key = scrypt_key(password, &salt, params)?;
    let ciphertext = XSalsa20Poly1305::new(key.as_ref().into())
        .encrypt(&nonce.into(), plaintext)
        .map_err(|_| anyhow::anyhow!("encrypting the key failed"))?;
    let data = Encrypted {
        kdf: Kdf {
            name: "scrypt".into(),
            params,
            salt,
        },
        cipher: Cipher {
            name: "nacl/secretbox".into(),
            nonce: nonce.to_vec(),
        },
        ciphertext,
    };
    serde_json::to_vec(&data).context("serializing the encrypted key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn secret(s: &str) -> SecretValue {
        SecretValue::new(s.to_string())
    }

    #[test]
    fn pkcs8_and_sec1_pem_load_the_same_key() {
        let key = PrivateKey::generate();
        let sk = p256::SecretKey::from(&key.0);
        let pkcs8 = sk.to_pkcs8_pem(LineEnding::LF).unwrap();
        let sec1 = sk.to_sec1_pem(LineEnding::LF).unwrap();
        assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        for pem in [pkcs8.as_str(), sec1.as_str()] {
            let loaded = PrivateKey::from_pem(pem, None).unwrap();
            assert_eq!(loaded.public(), key.public());
        }
    }

    #[test]
    fn cosign_encrypted_key_round_trips_and_needs_the_right_password() {
        let key = PrivateKey::generate();
        let pem = key.to_cosign_pem(&secret("correct horse")).unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
        let body: Value = serde_json::from_slice(&pem_body(&pem).unwrap()).unwrap();
        assert_eq!(body["kdf"]["name"], "scrypt");
        assert_eq!(body["kdf"]["params"], json!({"N": 65536, "r": 8, "p": 1}));
        assert_eq!(body["cipher"]["name"], "nacl/secretbox");
        let loaded = PrivateKey::from_pem(&pem, Some(&secret("correct horse"))).unwrap();
        assert_eq!(loaded.public(), key.public());
        let wrong = PrivateKey::from_pem(&pem, Some(&secret("battery"))).unwrap_err();
        assert!(format!("{wrong:#}").contains("wrong password"), "{wrong:#}");
        let missing = PrivateKey::from_pem(&pem, None).unwrap_err();
        assert!(
            format!("{missing:#}").contains("give its password"),
            "{missing:#}"
        );
        // The older label holds the same format.
        let old = pem.replace("SIGSTORE", "COSIGN");
        assert!(PrivateKey::from_pem(&old, Some(&secret("correct horse"))).is_ok());
    }

    #[test]
    fn tampered_encrypted_keys_are_refused() {
        let pem = PrivateKey::generate().to_cosign_pem(&secret("pw")).unwrap();
        let mut body: Value = serde_json::from_slice(&pem_body(&pem).unwrap()).unwrap();
        let ct = body["ciphertext"].as_str().unwrap().to_string();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut bytes = b64.decode(&ct).unwrap();
        bytes[20] ^= 1;
        body["ciphertext"] = json!(b64.encode(&bytes));
        let flipped = pem_encode(PEM_SIGSTORE, body.to_string().as_bytes());
        assert!(PrivateKey::from_pem(&flipped, Some(&secret("pw"))).is_err());
        body["ciphertext"] = json!(ct);
        body["kdf"]["params"]["N"] = json!(1u64 << 30);
        let costly = pem_encode(PEM_SIGSTORE, body.to_string().as_bytes());
        let err = PrivateKey::from_pem(&costly, Some(&secret("pw"))).unwrap_err();
        assert!(
            format!("{err:#}").contains("unsupported scrypt parameters"),
            "{err:#}"
        );
    }

    #[test]
    fn signatures_are_deterministic_der_and_verify() {
        let key = PrivateKey::generate();
        let a = key.sign(b"payload");
        assert_eq!(a, key.sign(b"payload"), "RFC 6979 signatures repeat");
        assert_eq!(a[0], 0x30, "ASN.1 DER SEQUENCE");
        let public = PublicKey::from_pem(&key.public().to_pem().unwrap()).unwrap();
        assert!(public.verify(b"payload", &a));
        assert!(!public.verify(b"payloaD", &a));
        assert!(!public.verify(b"payload", &a[1..]));
        assert!(!PrivateKey::generate().public().verify(b"payload", &a));
    }

    #[test]
    fn debug_output_shows_no_key_material() {
        let key = PrivateKey::generate();
        let sk = p256::SecretKey::from(&key.0);
        let scalar = hex::encode(sk.to_bytes());
        let pkcs8 = sk.to_pkcs8_pem(LineEnding::LF).unwrap();
        let body_line = pkcs8.lines().nth(1).unwrap().to_string();
        let shown = format!("{key:?}");
        assert!(shown.starts_with("PrivateKey(public sha256:"), "{shown}");
        assert!(!shown.contains(&scalar) && !shown.contains(&body_line));
        assert_eq!(format!("{:?} {}", secret("pw"), secret("pw")), "*** ***");
    }

    #[test]
    fn other_pem_types_are_named_in_the_error() {
        let err = PrivateKey::from_pem(
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            None,
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("\"RSA PRIVATE KEY\""),
            "{err:#}"
        );
        assert!(PrivateKey::from_pem("not a key", None).is_err());
        assert!(PublicKey::from_pem(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
        )
        .is_err());
    }
}
