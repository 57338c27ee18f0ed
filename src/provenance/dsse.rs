//! DSSE envelopes (Dead Simple Signing Envelope, v1): the signature covers the
//! pre-authentication encoding of the payload type and payload, so neither can be
//! swapped without breaking it. in-toto attestations travel in these.

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};

use super::keys::{PrivateKey, PublicKey};

pub const PAYLOAD_TYPE_IN_TOTO: &str = "application/vnd.in-toto+json";
pub const MEDIA_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";

/// `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in
/// ASCII decimal bytes.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A JSON envelope with one signature by `key` (canonical JSON bytes).
pub fn sign(payload_type: &str, payload: &[u8], key: &PrivateKey) -> Result<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let sig = key.sign(&pae(payload_type, payload));
    let envelope = json!({
        "payloadType": payload_type,
        "payload": b64.encode(payload),
        "signatures": [{"keyid": key.public().fingerprint(), "sig": b64.encode(sig)}],
    });
    crate::io::hash::canonical_json(&envelope)
}

/// The payload type and payload of an envelope that `key` signed; an error when no
/// signature in it verifies.
pub fn verify(envelope: &[u8], key: &PublicKey) -> Result<(String, Vec<u8>)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let v: Value = serde_json::from_slice(envelope).context("parsing the DSSE envelope")?;
    let payload_type = v["payloadType"]
        .as_str()
        .context("the DSSE envelope has no payloadType")?;
    let payload = b64
        .decode(
            v["payload"]
                .as_str()
                .context("the DSSE envelope has no payload")?,
        )
        .context("the DSSE payload is not base64")?;
    let message = pae(payload_type, &payload);
    let signed = v["signatures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| b64.decode(s["sig"].as_str()?).ok())
        .any(|sig| key.verify(&message, &sig));
    if !signed {
        bail!(
            "no signature in the DSSE envelope verifies with key {}",
            key.fingerprint()
        );
    }
    Ok((payload_type.to_string(), payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_specification_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
    }

    #[test]
    fn a_changed_payload_type_or_payload_breaks_the_signature() {
        let key = PrivateKey::generate();
        let env = sign("application/x", b"{}", &key).unwrap();
        assert!(verify(&env, &key.public()).is_ok());
        let mut v: Value = serde_json::from_slice(&env).unwrap();
        v["payloadType"] = json!("application/y");
        assert!(verify(&serde_json::to_vec(&v).unwrap(), &key.public()).is_err());
        v["payloadType"] = json!("application/x");
        v["payload"] = json!(base64::engine::general_purpose::STANDARD.encode(b"[]"));
        assert!(verify(&serde_json::to_vec(&v).unwrap(), &key.public()).is_err());
    }
}
