//! `cosign-verify IMAGE PUBLIC_KEY.pem [--http]`: verifies the cosign signatures of a
//! registry image against a public key with sigstore-rs. Finds the `sha256-<hex>.sig`
//! attachment of the image's manifest digest, checks every signature layer's payload
//! (simple signing: the repository and `docker-manifest-digest`) and its ECDSA
//! signature. Exit 0 when a signature by the key covers the image's digest, 1 when none
//! does, 2 on usage or registry errors.

use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
use sigstore::cosign::{verify_constraints, ClientBuilder, CosignCapabilities};
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let http = args.iter().any(|a| a == "--http");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [image, key] = pos[..] else {
        eprintln!("usage: cosign-verify IMAGE PUBLIC_KEY.pem [--http]");
        std::process::exit(2);
    };
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        eprintln!("cosign-verify: {what}: {e}");
        std::process::exit(2)
    };
    let image: OciReference = image
        .parse()
        .unwrap_or_else(|e| fail("image reference", &e));
    let key = std::fs::read(key).unwrap_or_else(|e| fail("reading the public key", &e));
    let verifier = PublicKeyVerifier::try_from(&key).unwrap_or_else(|e| fail("the public key", &e));
    let config = ClientConfig {
        protocol: if http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        ..Default::default()
    };
    let mut client = ClientBuilder::default()
        .with_oci_client_config(config)
        .build()
        .unwrap_or_else(|e| fail("client", &e));
    let (sig_image, digest) = client
        .triangulate(&image, &Auth::Anonymous)
        .await
        .unwrap_or_else(|e| fail("resolving the image", &e));
    let layers = client
        .trusted_signature_layers(&Auth::Anonymous, &image)
        .await
        .unwrap_or_else(|e| fail("fetching signatures", &e));
    println!(
        "image {digest}, signatures under {sig_image}: {} layer(s)",
        layers.len()
    );
    let constraints: VerificationConstraintVec = vec![Box::new(verifier)];
    match verify_constraints(&layers, constraints.iter()) {
        Ok(()) => println!("verified: a signature by the key covers {digest}"),
        Err(e) => {
            println!(
                "not verified: {} constraint(s) unsatisfied",
                e.unsatisfied_constraints.len()
            );
            std::process::exit(1);
        }
    }
}
