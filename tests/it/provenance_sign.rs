//! cosign-format signatures checked the way a cluster checks them: images pushed to a
//! real registry (Debian's docker-registry on loopback), signatures made with keys from
//! openssl and put next to the image under `sha256-<hex>.sig` with skopeo, then
//! `skopeo copy` under a `sigstoreSigned` policy with sigstore attachments enabled.
//! Cases: a signed image, an unsigned one, a signature by another key, a tampered
//! payload and a payload naming another digest; diskforge's own verification must agree
//! with skopeo in every case.
//!
//! Debian's skopeo 1.9 is built with sigstore verification removed: it finds, fetches
//! and classifies the attachments, then refuses every sigstore signature with
//! [`DEBIAN_DISABLED`]. With that skopeo the test checks what it can (the attachment
//! is found and taken for a signature; an unsigned image has none). The verdicts come
//! from sigstore-rs (the sigstore project's cosign verification, ci/cosign-verify), and
//! openssl checks the signature bytes of every attachment.

use crate::common;
use common::Run;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::registry::Registry;
use diskforge::oci::image::{Blob, MEDIA_MANIFEST};
use diskforge::oci::Layout;
use diskforge::provenance::attach::Attachment;
use diskforge::provenance::sign::{self, ImageSignature};
use diskforge::provenance::{PrivateKey, PublicKey};
use diskforge::recipe::{Secret, SecretValue};

const TOOLS: &[&str] = &["qemu-img", "docker-registry", "skopeo", "openssl"];

/// What Debian's skopeo says instead of verifying a sigstore signature.
const DEBIAN_DISABLED: &str = "Debian-local change: sigstore disabled";

/// Packs `disk` and pushes it as `repo:tag`; a label makes each tag a distinct image.
/// Returns the manifest digest.
fn push_image(disk: &Path, repo: &str, tag: &str) -> String {
    let out = common::diskforge()
        .arg("pack")
        .arg(disk)
        .args(["--compression", "none", "--label"])
        .arg(format!("case={tag}"))
        .arg("--output")
        .arg(format!("docker://{repo}:{tag}"))
        .arg("--tls-verify=false")
        .env("XDG_CACHE_HOME", disk.parent().unwrap().join("xdg"))
        .succeeds();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let digest = stdout.split_whitespace().nth(1).unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{stdout}");
    digest
}

/// A skopeo policy and registries.d that accept nothing from the registry but images
/// signed by `pubkey`, with sigstore attachments enabled for the repository.
fn verifier_config(dir: &Path, repo: &str, pubkey: &Path) -> (PathBuf, PathBuf) {
    let policy = dir.join("policy.json");
    let v = serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {repo: [{
                "type": "sigstoreSigned",
                "keyPath": pubkey,
                "signedIdentity": {"type": "matchRepository"},
            }]},
        },
    });
    std::fs::write(&policy, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let regd = dir.join("registries.d");
    std::fs::create_dir_all(&regd).unwrap();
    std::fs::write(
        regd.join("lab.yaml"),
        format!("docker:\n  {repo}:\n    use-sigstore-attachments: true\n"),
    )
    .unwrap();
    (policy, regd)
}

/// A policy that accepts anything and an empty registries.d, for plain copies that must
/// not depend on the machine's /etc/containers.
fn permissive_config(dir: &Path) -> (PathBuf, PathBuf) {
    let policy = dir.join("accept.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let regd = dir.join("registries.d-empty");
    std::fs::create_dir_all(&regd).unwrap();
    (policy, regd)
}

/// Puts a `.sig` attachment next to the image: its blobs and manifest go into an OCI
/// layout, and skopeo copies that to the registry byte for byte.
fn push_attachment(work: &Path, repo: &str, a: &Attachment) {
    let dir = work.join(format!("sig-{}", &a.tag[7..19]));
    let layout = Layout::create(&dir).unwrap();
    for b in &a.blobs {
        layout.write_blob(b).unwrap();
    }
    layout.write_blob(&a.manifest).unwrap();
    let desc = a.manifest.descriptor(MEDIA_MANIFEST).unwrap();
    layout.set_tag(&a.tag, &desc, None).unwrap();
    let (policy, regd) = permissive_config(work);
    Command::new("skopeo")
        .arg("--policy")
        .arg(&policy)
        .arg("--registries.d")
        .arg(&regd)
        .args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:{}", dir.display(), a.tag))
        .arg(format!("docker://{repo}:{}", a.tag))
        .succeeds();
}

/// What skopeo says when copying `repo:tag` under the verifying policy.
fn skopeo_verify(work: &Path, policy: &Path, regd: &Path, repo: &str, tag: &str) -> Output {
    Command::new("skopeo")
        .arg("--policy")
        .arg(policy)
        .arg("--registries.d")
        .arg(regd)
        .args([
            "--debug",
            "copy",
            "--remove-signatures",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://{repo}:{tag}"))
        .arg(format!("oci:{}:{tag}", work.join("pulled").display()))
        .output()
        .unwrap()
}

/// The independent cosign verifier (sigstore-rs, built by ci/setup-verifiers.sh from
/// ci/cosign-verify).
fn cosign_verifier() -> PathBuf {
    let dir = match std::env::var("DISKFORGE_VERIFIERS_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => std::env::var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"))
            .join("diskforge/verifiers"),
    };
    dir.join("bin/cosign-verify")
}

/// The need for [`cosign_verifier`].
fn cosign_verifier_need() -> crate::harness::Need {
    common::installed_need(
        cosign_verifier,
        "cosign-verify (sigstore-rs)",
        "ci/setup-verifiers.sh",
    )
}

/// Payload blobs by digest.
type Payloads = BTreeMap<String, Vec<u8>>;

/// The attachment manifest under `tag` and its layers' blobs as the registry serves
/// them (fetched with skopeo), or `None` when the registry has none.
fn fetch_attachment(work: &Path, repo: &str, tag: &str) -> Option<(Vec<u8>, Payloads)> {
    let dir = work.join(format!("fetched-{}", &tag[7..19]));
    let (policy, regd) = permissive_config(work);
    let mut skopeo = Command::new("skopeo");
    skopeo
        .arg("--policy")
        .arg(&policy)
        .arg("--registries.d")
        .arg(&regd);
    let out = common::registry::skopeo_copy(skopeo, &[], &format!("{repo}:{tag}"), &dir, tag)
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("manifest unknown"), "fetching {tag}: {err}");
        return None;
    }
    let layout = Layout::open(&dir).unwrap();
    let desc = layout.resolve(Some(tag)).unwrap();
    let manifest = layout.read_blob(&desc).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let blobs = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .map(|d| {
            (
                d.clone(),
                std::fs::read(layout.blob_path(&d).unwrap()).unwrap(),
            )
        })
        .collect();
    Some((manifest, blobs))
}

/// For each layer of a `.sig` manifest: does `openssl dgst -verify` accept its
/// signature annotation over its payload with the public key `pubkey`?
fn openssl_verifies(
    work: &Path,
    manifest: &[u8],
    blobs: &BTreeMap<String, Vec<u8>>,
    pubkey: &Path,
) -> Vec<bool> {
    use base64::Engine as _;
    let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    let mut out = Vec::new();
    for l in m["layers"].as_array().unwrap() {
        let b64 = l["annotations"][sign::ANNOTATION_SIGNATURE]
            .as_str()
            .unwrap();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let (payload, sig) = (work.join("payload"), work.join("payload.sig"));
        std::fs::write(&payload, &blobs[l["digest"].as_str().unwrap()]).unwrap();
        std::fs::write(&sig, der).unwrap();
        let r = openssl_dgst_verify(pubkey, &sig, &payload)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&r.stdout).to_string();
        assert_eq!(r.status.success(), said.contains("Verified OK"), "{said}");
        out.push(r.status.success());
    }
    out
}

/// A registry on loopback, the repository `HOST/lab/NAME` in it, and a 16 MiB disk in
/// `dir` to push there.
fn registry_and_disk(dir: &Path, name: &str) -> (Registry, String, PathBuf) {
    let reg = Registry::start(None);
    let repo = format!("{}/lab/{name}", reg.addr);
    let disk = common::disk::qcow2(dir, "d.qcow2", "16M");
    (reg, repo, disk)
}

/// An image pushed as `HOST/lab/NAME:1` to a registry on loopback (kept running while
/// the first value lives): the repository, the manifest digest, and the keys made in
/// `dir` with the signing key loaded.
fn pushed_image(dir: &Path, name: &str) -> (Registry, String, String, Keys, PrivateKey) {
    let (reg, repo, disk) = registry_and_disk(dir, name);
    let keys = openssl_keys(dir);
    let signer = PrivateKey::load(&keys.pkcs8, None, dir).unwrap();
    let digest = push_image(&disk, &repo, "1");
    (reg, repo, digest, keys, signer)
}

/// A provenance dependency `name` whose digest is the hex digit `c` 64 times.
fn fake_dependency(name: &str, c: char) -> diskforge::provenance::slsa::Dependency {
    diskforge::provenance::slsa::Dependency {
        name: name.into(),
        digest: format!("sha256:{}", c.to_string().repeat(64)),
    }
}

/// The packages of the captured dpkg status of a Debian 12 minbase tree.
fn minbase_packages() -> Vec<diskforge::provenance::packages::Package> {
    let status = std::fs::read_to_string(
        common::repo_root().join("tests/fixtures/dpkg-status-bookworm-minbase"),
    )
    .unwrap();
    diskforge::provenance::packages::parse_dpkg_status(&status).unwrap()
}

/// `openssl dgst -sha256 -verify` of `signature` over `data` with the public key
/// `public`, run to completion.
fn openssl_dgst_verify(public: &Path, signature: &Path, data: &Path) -> Command {
    let mut c = Command::new("openssl");
    c.args(["dgst", "-sha256", "-verify"])
        .arg(public)
        .arg("-signature")
        .arg(signature)
        .arg(data);
    c
}

/// Keys from openssl: a PKCS#8 signing key, its SPKI public key, a SEC1 key of someone
/// else, and the signing key re-encrypted in cosign's format.
struct Keys {
    pkcs8: PathBuf,
    public: PathBuf,
    other_sec1: PathBuf,
    encrypted: PathBuf,
}

fn openssl_keys(dir: &Path) -> Keys {
    let k = Keys {
        pkcs8: dir.join("signer.pem"),
        public: dir.join("signer.pub"),
        other_sec1: dir.join("other.pem"),
        encrypted: dir.join("signer.cosign.key"),
    };
    common::openssl_p256_key(&k.pkcs8, &k.public);
    Command::new("openssl")
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
        ])
        .arg(&k.other_sec1)
        .succeeds();
    let key = PrivateKey::load(&k.pkcs8, None, dir).unwrap();
    let pem = key
        .to_cosign_pem(&SecretValue::new("lab password".into()))
        .unwrap();
    std::fs::write(&k.encrypted, pem).unwrap();
    k
}

/// One image and what every verifier must say about it.
struct Case {
    tag: &'static str,
    digest: String,
    accepted: bool,
    /// What skopeo's refusal says.
    skopeo_reason: &'static str,
    /// Whether openssl verifies the attached signature bytes; `None`: nothing attached.
    openssl: Option<bool>,
}

/// Pushes one image per case and attaches its signature (or none, or a bad one).
fn prepare_cases(w: &Path, repo: &str, disk: &Path, keys: &Keys) -> Vec<Case> {
    let signer = PrivateKey::load(&keys.pkcs8, None, w).unwrap();
    let other = PrivateKey::load(&keys.other_sec1, None, w).unwrap();
    let case = |tag, accepted, skopeo_reason, openssl| Case {
        tag,
        digest: push_image(disk, repo, tag),
        accepted,
        skopeo_reason,
        openssl,
    };
    let bad_crypto = "cryptographic signature verification failed";
    let cases = vec![
        case("signed", true, "", Some(true)),
        case("unsigned", false, "no signature exists", None),
        case("wrong-key", false, bad_crypto, Some(false)),
        case("tampered", false, bad_crypto, Some(false)),
        case("other-digest", false, "does not match", Some(true)),
        case(
            "not-a-signature",
            false,
            "1 sigstore non-signature attachments",
            Some(true),
        ),
    ];
    let d = |i: usize| cases[i].digest.as_str();
    // The signed image is signed by `diskforge sign`, with the cosign-format encrypted
    // key and its password from the environment (never the command line).
    let out = common::diskforge()
        .args(["--json-events", "sign", "--tls-verify=false", "--key"])
        .arg(&keys.encrypted)
        .arg(format!("docker://{repo}:signed"))
        .env("DISKFORGE_KEY_PASSWORD", "lab password")
        .output()
        .unwrap();
    let said = common::text(&out);
    assert!(out.status.success(), "diskforge sign: {said}");
    assert!(
        !said.contains("lab password") && !said.contains("PRIVATE KEY"),
        "key material or its password in the output: {said}"
    );
    assert!(
        said.contains(d(0)),
        "sign does not name the digest it signed: {said}"
    );
    let by_other = sign::sign(&other, repo, d(2)).unwrap();
    push_attachment(w, repo, &sign::attach(d(2), &by_other, None).unwrap());
    // A claim added to the payload after signing: new bytes, old signature.
    let genuine = sign::sign(&signer, repo, d(3)).unwrap();
    let text = String::from_utf8(genuine.payload.clone()).unwrap();
    let forged = ImageSignature {
        payload: text
            .replace(r#""optional":null"#, r#""optional":{"creator":"mallory"}"#)
            .into_bytes(),
        signature: genuine.signature,
    };
    assert_ne!(forged.payload, genuine.payload);
    push_attachment(w, repo, &sign::attach(d(3), &forged, None).unwrap());
    // A valid signature of the signed image, attached to another one.
    let sig = sign::sign(&signer, repo, d(0)).unwrap();
    push_attachment(w, repo, &sign::attach(d(4), &sig, None).unwrap());
    // A valid signature under a layer media type that does not say "signature".
    let mut other_type =
        sign::attach(d(5), &sign::sign(&signer, repo, d(5)).unwrap(), None).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&other_type.manifest.bytes).unwrap();
    m["layers"][0]["mediaType"] = "application/vnd.example.note.v1+json".into();
    other_type.manifest = Blob::json(&m).unwrap();
    push_attachment(w, repo, &other_type);
    cases
}

/// Checks one case with diskforge, openssl and skopeo. Returns false when skopeo
/// could not verify sigstore signatures at all.
fn check_case(w: &Path, repo: &str, keys: &Keys, verifier: &(PathBuf, PathBuf), c: &Case) -> bool {
    let public = PublicKey::load(&keys.public).unwrap();
    let fetched = fetch_attachment(w, repo, &sign::signature_tag(&c.digest).unwrap());
    let verdicts = match &fetched {
        Some((m, blobs)) => sign::verify(&c.digest, repo, m, blobs, &public).unwrap(),
        None => Vec::new(),
    };
    let ours = verdicts.iter().any(|v| v.is_valid());
    assert_eq!(ours, c.accepted, "diskforge on {}: {verdicts:?}", c.tag);
    let by_openssl = fetched
        .as_ref()
        .map(|(m, blobs)| openssl_verifies(w, m, blobs, &keys.public));
    assert_eq!(
        by_openssl,
        c.openssl.map(|o| vec![o]),
        "openssl on {}",
        c.tag
    );
    eprintln!("{}: diskforge {verdicts:?}, openssl {by_openssl:?}", c.tag);
    // `diskforge verify --key` as users run it: exit 0 only for a valid signature of the
    // image by this key, 4 (a failed check) otherwise.
    let out = common::diskforge()
        .args(["verify", "--tls-verify=false", "--key"])
        .arg(&keys.public)
        .arg(format!("docker://{repo}:{}", c.tag))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(if c.accepted { 0 } else { 4 }),
        "diskforge verify --key on {}: {}{}",
        c.tag,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // sigstore-rs, the sigstore project's own implementation of `cosign verify --key`:
    // exit 0 only when a signature by this key covers this image's digest.
    let out = Command::new(cosign_verifier())
        .arg(format!("{repo}:{}", c.tag))
        .arg(&keys.public)
        .arg("--http")
        .output()
        .unwrap();
    let said = common::text(&out);
    assert_eq!(
        out.status.code(),
        Some(if c.accepted { 0 } else { 1 }),
        "sigstore-rs on {}: {said}",
        c.tag
    );
    if c.accepted {
        assert!(said.contains(&c.digest), "{said}");
    }
    eprintln!("{}: sigstore-rs {}", c.tag, said.trim());

    let out = skopeo_verify(w, &verifier.0, &verifier.1, repo, c.tag);
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    if said.contains(DEBIAN_DISABLED) {
        // This skopeo found the attachment and took it for a signature, then gave up.
        assert!(
            !out.status.success() && c.openssl.is_some(),
            "{}: {said}",
            c.tag
        );
        assert!(
            said.contains("Found a sigstore attachment manifest with 1 layers"),
            "{said}"
        );
        return false;
    }
    assert_eq!(
        out.status.success(),
        c.accepted,
        "skopeo on {}: {said}",
        c.tag
    );
    assert!(
        said.contains(c.skopeo_reason),
        "skopeo on {} refused for another reason: {said}",
        c.tag
    );
    true
}

fn sigstore_rs_skopeo_and_diskforge_agree_on_cosign_signatures() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (_reg, repo, disk) = registry_and_disk(w, "x");
    let keys = openssl_keys(w);
    let cases = prepare_cases(w, &repo, &disk, &keys);
    let verifier = verifier_config(w, &repo, &keys.public);
    let mut skopeo_verified = true;
    for c in &cases {
        skopeo_verified &= check_case(w, &repo, &keys, &verifier, c);
    }
    if !skopeo_verified {
        eprintln!(
            "\n*** {} cannot verify sigstore signatures ({DEBIAN_DISABLED}): it found the \
             attachments and told signatures from other attachments; openssl checked the \
             cryptography ***\n",
            skopeo_version()
        );
    }
}

/// The encrypted cosign-format key loads with its password from a file or from the
/// environment, gives openssl's key back, and signs in well under the 2 s budget.
fn encrypted_key_from_password_file_or_environment() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let keys = openssl_keys(w);
    std::fs::write(w.join("password"), "lab password\n").unwrap();
    std::env::set_var("DISKFORGE_TEST_KEY_PASSWORD", "lab password");
    let signer = PrivateKey::load(&keys.pkcs8, None, w).unwrap();
    let public = PublicKey::load(&keys.public).unwrap();
    assert_eq!(
        public,
        signer.public(),
        "openssl's public key is the signer's"
    );
    let t = Instant::now();
    let from_file =
        PrivateKey::load(&keys.encrypted, Some(&Secret::File("password".into())), w).unwrap();
    let load_time = t.elapsed();
    let env = Secret::Env("DISKFORGE_TEST_KEY_PASSWORD".into());
    let from_env = PrivateKey::load(&keys.encrypted, Some(&env), w).unwrap();
    assert_eq!(
        (from_file.public(), from_env.public()),
        (public.clone(), public)
    );
    let wrong = Secret::Env("PATH".into());
    assert!(PrivateKey::load(&keys.encrypted, Some(&wrong), w).is_err());

    let digest = format!("sha256:{}", "a".repeat(64));
    let t = Instant::now();
    let sig = sign::sign(&from_file, "127.0.0.1:5000/lab/x", &digest).unwrap();
    let attachment = sign::attach(&digest, &sig, None).unwrap();
    let sign_time = t.elapsed();
    assert!(attachment.changed);
    eprintln!(
        "decrypting the cosign key (scrypt N=2^16, r=8, p=1): {load_time:?}; \
         signing + attachment: {sign_time:?}"
    );
}

fn skopeo_version() -> String {
    let out = Command::new("skopeo").arg("--version").succeeds();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Decrypts a cosign-format key the way cosign does, with independent implementations:
/// Python's hashlib scrypt and libsodium's secretbox (PyNaCl). Returns the PKCS#8 DER.
const PYTHON_DECRYPT: &str = r#"
import base64, hashlib, json, os, sys
import nacl.secret
lines = open(sys.argv[1]).read().splitlines()
body = json.loads(base64.b64decode("".join(l for l in lines if not l.startswith("-----"))))
kdf, cipher = body["kdf"], body["cipher"]
assert kdf["name"] == "scrypt" and cipher["name"] == "nacl/secretbox", body
p = kdf["params"]
key = hashlib.scrypt(os.environ["KEY_PASSWORD"].encode(), salt=base64.b64decode(kdf["salt"]),
                     n=p["N"], r=p["r"], p=p["p"], maxmem=1 << 28, dklen=32)
der = nacl.secret.SecretBox(key).decrypt(base64.b64decode(body["ciphertext"]),
                                         base64.b64decode(cipher["nonce"]))
sys.stdout.buffer.write(der)
"#;

/// [`PYTHON_DECRYPT`] of the cosign-format key `encrypted` with `password`.
fn python_decrypt(encrypted: &Path, password: &str) -> Command {
    let mut c = Command::new(common::python(&["nacl.secret"]));
    c.arg("-c")
        .arg(PYTHON_DECRYPT)
        .arg(encrypted)
        .env("KEY_PASSWORD", password);
    c
}

fn encrypted_key_decrypts_with_libsodium_and_python_scrypt() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let keys = openssl_keys(w);
    let der = python_decrypt(&keys.encrypted, "lab password")
        .succeeds()
        .stdout;
    std::fs::write(w.join("decrypted.der"), der).unwrap();
    let public = Command::new("openssl")
        .args(["pkey", "-inform", "DER", "-pubout", "-in"])
        .arg(w.join("decrypted.der"))
        .succeeds()
        .stdout;
    assert_eq!(
        String::from_utf8(public).unwrap(),
        std::fs::read_to_string(&keys.public).unwrap(),
        "the decrypted key is openssl's signing key"
    );
    let wrong = python_decrypt(&keys.encrypted, "not the password")
        .output()
        .unwrap();
    assert!(!wrong.status.success(), "a wrong password must not decrypt");
}

/// The SLSA provenance envelope verifies with openssl over the DSSE pre-authentication
/// encoding, computed here from the specification.
fn provenance_envelope_verifies_with_openssl() {
    use base64::Engine as _;
    use diskforge::provenance::slsa::{self, BuildRecord};
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let keys = openssl_keys(w);
    let signer = PrivateKey::load(&keys.pkcs8, None, w).unwrap();
    let dep = fake_dependency;
    let (recipe, base) = (
        dep("recipes/demo.yaml", 'b'),
        dep("https://example.org/base.qcow2", 'c'),
    );
    let record = BuildRecord {
        image: "127.0.0.1:5000/lab/x",
        image_digest: &format!("sha256:{}", "a".repeat(64)),
        recipe: &recipe,
        extends: &[],
        base: &base,
        files: &[dep("files/motd", 'd')],
        started: "2024-01-02T03:04:05Z",
        finished: "2024-01-02T03:05:06Z",
    };
    let (envelope, _) = slsa::attestation(&record, Some(&signer)).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&envelope).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64.decode(v["payload"].as_str().unwrap()).unwrap();
    let payload_type = v["payloadType"].as_str().unwrap();
    assert_eq!(payload_type, "application/vnd.in-toto+json");
    let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
    let mut pae = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    pae.extend_from_slice(&payload);
    std::fs::write(w.join("pae"), &pae).unwrap();
    let sig = b64
        .decode(v["signatures"][0]["sig"].as_str().unwrap())
        .unwrap();
    std::fs::write(w.join("pae.sig"), sig).unwrap();
    let out = openssl_dgst_verify(&keys.public, &w.join("pae.sig"), &w.join("pae")).succeeds();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Verified OK"));
    // The same bytes without the encoding must not verify: the signature covers the PAE.
    std::fs::write(w.join("payload"), &payload).unwrap();
    let bare = openssl_dgst_verify(&keys.public, &w.join("pae.sig"), &w.join("payload"))
        .output()
        .unwrap();
    assert!(!bare.status.success());
}

/// The SBOM and the signed provenance of an image, attached as `.sbom` and `.att` the
/// way cosign stores them, survive the trip through a real registry: the envelope still
/// verifies and names the image, the SBOM comes back byte for byte.
fn sbom_and_provenance_attachments_round_trip_through_the_registry() {
    use diskforge::provenance::attach::{self, Kind};
    use diskforge::provenance::packages::Distro;
    use diskforge::provenance::slsa::{self, BuildRecord, Dependency};
    use diskforge::provenance::{dsse, spdx};
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (_reg, repo, digest, keys, signer) = pushed_image(w, "x");

    let packages = minbase_packages();
    let dep = fake_dependency;
    let (recipe, base) = (
        dep("recipes/demo.yaml", 'b'),
        dep("https://example.org/base.qcow2", 'c'),
    );
    let artifact = |d: &Dependency| spdx::Artifact {
        name: d.name.clone(),
        version: None,
        digest: d.digest.clone(),
        download: None,
    };
    let distro = Distro::from_os_release("ID=debian\nVERSION_ID=12\n").unwrap();
    let sbom = spdx::document(&spdx::SbomInput {
        image: &repo,
        image_digest: &digest,
        base: &artifact(&base),
        recipe: &artifact(&recipe),
        distro: &distro,
        packages: &packages,
        created: "2024-01-02T03:04:05Z",
    })
    .unwrap();
    let record = BuildRecord {
        image: &repo,
        image_digest: &digest,
        recipe: &recipe,
        extends: &[],
        base: &base,
        files: &[],
        started: "2024-01-02T03:04:05Z",
        finished: "2024-01-02T03:05:06Z",
    };
    let (envelope, _) = slsa::attestation(&record, Some(&signer)).unwrap();
    let sbom_att =
        attach::attach(&digest, Kind::Sbom, spdx::sbom_layer(sbom.clone()), None).unwrap();
    let prov_att = attach::attach(
        &digest,
        Kind::Attestation,
        slsa::attestation_layer(envelope),
        None,
    )
    .unwrap();
    push_attachment(w, &repo, &sbom_att);
    push_attachment(w, &repo, &prov_att);

    let (m, blobs) = fetch_attachment(w, &repo, &sbom_att.tag).unwrap();
    let layers = attach::layers_of(&m).unwrap();
    assert_eq!(layers[0]["mediaType"], "text/spdx+json");
    assert_eq!(blobs[layers[0]["digest"].as_str().unwrap()], sbom);

    let (m, blobs) = fetch_attachment(w, &repo, &prov_att.tag).unwrap();
    let layers = attach::layers_of(&m).unwrap();
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.dsse.envelope.v1+json"
    );
    assert_eq!(
        layers[0]["annotations"]["predicateType"],
        slsa::PREDICATE_TYPE
    );
    let fetched = &blobs[layers[0]["digest"].as_str().unwrap()];
    let public = PublicKey::load(&keys.public).unwrap();
    let (_, statement) = dsse::verify(fetched, &public).unwrap();
    let statement: serde_json::Value = serde_json::from_slice(&statement).unwrap();
    assert_eq!(
        format!(
            "sha256:{}",
            statement["subject"][0]["digest"]["sha256"]
                .as_str()
                .unwrap()
        ),
        digest
    );
    let stranger = PrivateKey::load(&keys.other_sec1, None, w)
        .unwrap()
        .public();
    assert!(dsse::verify(fetched, &stranger).is_err());
}

/// What a build attaches in a registry (SBOM and provenance as referrers, a cosign
/// signature) is read back by `verify --key` and `inspect --key` from that registry:
/// the referrers are manifests, fetched from the manifests endpoint.
fn attached_documents_are_read_back_from_the_registry_by_verify_and_inspect() {
    use diskforge::pipeline::attest;
    use diskforge::provenance::packages::Distro;
    use diskforge::provenance::spdx;
    use diskforge::registry::{Client, RegistryOptions, RemoteRef};
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (_reg, repo, digest, keys, signer) = pushed_image(w, "attached");
    let packages = minbase_packages();
    let artifact = |name: &str, c: char| spdx::Artifact {
        name: name.into(),
        version: None,
        digest: format!("sha256:{}", c.to_string().repeat(64)),
        download: None,
    };
    let docs = attest::documents(
        &attest::Inputs {
            repository: &repo,
            image_digest: &digest,
            base: artifact("https://example.org/base.qcow2", 'c'),
            recipe: artifact("recipes/demo.yaml", 'b'),
            extends: Vec::new(),
            files: vec![fake_dependency("files/motd", 'd')],
            distro: Distro::from_os_release("ID=debian\nVERSION_ID=12\n").unwrap(),
            packages: packages.clone(),
            created: "2024-01-02T03:04:05Z".into(),
            started: "2024-01-02T03:04:05Z".into(),
            finished: "2024-01-02T03:05:06Z".into(),
        },
        Some(&signer),
    )
    .unwrap();
    let r = RemoteRef::parse(&format!("{repo}:1")).unwrap();
    let opts = RegistryOptions {
        tls_verify: false,
        ..RegistryOptions::default()
    };
    let sig = sign::sign(&signer, &repo, &digest).unwrap();
    diskforge::sys::rt::block_on(async {
        let client = Client::connect(&r.registry, &opts).await.unwrap();
        let (manifest, _, _) = client
            .manifest(&r.repository, &digest)
            .await
            .unwrap()
            .unwrap();
        let subject = diskforge::oci::image::Descriptor::new(
            diskforge::oci::image::MediaType::ImageManifest,
            manifest.len() as u64,
            diskforge::oci::image::digest(&digest).unwrap(),
        );
        attest::to_registry(
            &client,
            &r,
            &subject,
            &attest::artifacts(&docs, "2024-01-02T03:05:06Z"),
            Some(&sig),
        )
        .await
        .unwrap();
    });

    let pinned = format!("docker://{repo}@{digest}");
    let out = common::diskforge()
        .args(["verify", "--tls-verify=false", "--key"])
        .arg(&keys.public)
        .arg(&pinned)
        .env("XDG_CACHE_HOME", w.join("xdg"))
        .succeeds();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("1 valid signature"), "{said}");
    let out = common::diskforge()
        .args(["inspect", "--json", "--tls-verify=false", "--key"])
        .arg(&keys.public)
        .arg(&pinned)
        .env("XDG_CACHE_HOME", w.join("xdg"))
        .succeeds();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = &v["attached"];
    assert_eq!(a["valid_signatures"], 1, "{a}");
    assert_eq!(a["provenance_signed"], true, "{a}");
    assert_eq!(a["sbom_packages"], packages.len(), "{a}");
    let materials = a["materials"].to_string();
    assert!(materials.contains("files/motd"), "{materials}");
}

crate::tests! {
    fn sigstore_rs_skopeo_and_diskforge_agree_on_cosign_signatures [TOOLS, cosign_verifier_need()];
    fn encrypted_key_from_password_file_or_environment [&["openssl"]];
    fn encrypted_key_decrypts_with_libsodium_and_python_scrypt [&["openssl"], common::python_need(&["nacl.secret"])];
    fn provenance_envelope_verifies_with_openssl [&["openssl"]];
    fn sbom_and_provenance_attachments_round_trip_through_the_registry [TOOLS];
    fn attached_documents_are_read_back_from_the_registry_by_verify_and_inspect [TOOLS];
}
