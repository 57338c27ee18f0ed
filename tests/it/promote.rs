//! Promotion by digest (`diskforge push docker://SRC@sha256:… docker://DEST:TAG`) between
//! two real registries (Debian's docker-registry on loopback) and between two
//! repositories of one, checked with skopeo: the destination digest is the source's,
//! every blob is there, attachments come along only when asked, a source that is not
//! the expected digest writes nothing, and a blob is never held in memory on the way.

use crate::common;
use common::Run;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::registry::Registry;
use diskforge::oci::image::Blob;
use diskforge::pipeline::attest::{self, Artifact, PROVENANCE_TYPE, SPDX_TYPE};
use diskforge::provenance::{sign, PrivateKey};
use diskforge::registry::{Client, RegistryOptions, RemoteRef};

const TOOLS: &[&str] = &["qemu-img", "docker-registry", "skopeo"];

/// A qcow2 holding `mib` MiB of pseudo-random (incompressible) data, seeded by `seed`.
fn random_qcow2(dir: &Path, name: &str, mib: usize, seed: u64) -> PathBuf {
    common::disk::random_qcow2(dir, name, mib, 0x9e37_79b9_7f4a_7c15 ^ seed)
}

fn diskforge(work: &Path, args: &[&str]) -> Output {
    let out = common::diskforge()
        .arg("--json-events")
        .args(args)
        .arg("--tls-verify=false")
        .env("XDG_CACHE_HOME", work.join("xdg"))
        .env_remove("DISKFORGE_CREDS")
        .env_remove("DOCKER_CONFIG")
        .env_remove("REGISTRY_AUTH_FILE")
        .output()
        .unwrap();
    common::events::check(&out.stderr);
    out
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn blob_events(out: &Output, action: &str) -> usize {
    common::events::blob_actions(&out.stderr, action)
}

/// `skopeo inspect --raw`: the document's bytes, or None when skopeo finds nothing.
fn raw(reference: &str) -> Option<Vec<u8>> {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(reference)
        .output()
        .unwrap();
    out.status.success().then_some(out.stdout)
}

fn digest_of(bytes: &[u8]) -> String {
    diskforge::io::hash::sha256_digest(bytes)
}

/// Packs a disk for `arch` and pushes it as `repo:arch`; returns its manifest digest.
fn pack(work: &Path, disk: &Path, arch: &str, repo: &str) -> String {
    let out = diskforge(
        work,
        &[
            "pack",
            disk.to_str().unwrap(),
            "--arch",
            arch,
            "--compression",
            "none",
            "--output",
            &format!("docker://{repo}:{arch}"),
        ],
    );
    ok(&out).split_whitespace().nth(1).unwrap().to_string()
}

fn client(addr: &str) -> Client {
    let opts = RegistryOptions {
        tls_verify: false,
        ..RegistryOptions::default()
    };
    diskforge::sys::rt::block_on(Client::connect(addr, &opts)).unwrap()
}

/// Signs `digest` in `repo` (HOST/PATH) and, with `documents`, attaches an SBOM and a
/// provenance statement to it, the way a build does.
fn attach(repo: &str, digest: &str, documents: bool) {
    let r = RemoteRef::parse(repo).unwrap();
    let c = client(&r.registry);
    diskforge::sys::rt::block_on(async {
        let (bytes, _, media) = c.manifest(&r.repository, digest).await.unwrap().unwrap();
        let subject = Blob::raw(bytes).descriptor(&media).unwrap();
        let sig = sign::sign(&PrivateKey::generate(), repo, digest).unwrap();
        let artifacts = if documents {
            vec![
                Artifact {
                    artifact_type: SPDX_TYPE,
                    content: Blob::raw(
                        br#"{"spdxVersion":"SPDX-2.3","packages":[{"name":"a"},{"name":"b"},{"name":"c"},{"name":"bash"}]}"#
                            .to_vec(),
                    ),
                    annotations: Default::default(),
                },
                Artifact {
                    artifact_type: PROVENANCE_TYPE,
                    content: Blob::raw(br#"{"_type":"https://in-toto.io/Statement/v1"}"#.to_vec()),
                    annotations: Default::default(),
                },
            ]
        } else {
            Vec::new()
        };
        attest::to_registry(&c, &r, &subject, &artifacts, Some(&sig))
            .await
            .unwrap();
    });
}

/// A two-architecture index in `stage` (HOST/PATH) with its signature on the index and a
/// signature, SBOM and provenance on the amd64 image; returns (index, amd64) digests.
fn staged_index(work: &Path, stage: &str) -> (String, String) {
    let amd64 = pack(work, &random_qcow2(work, "amd64", 3, 1), "amd64", stage);
    let arm64 = pack(work, &random_qcow2(work, "arm64", 2, 2), "arm64", stage);
    let out = diskforge(
        work,
        &[
            "index",
            &format!("docker://{stage}:1"),
            &format!("docker://{stage}:amd64"),
            &format!("docker://{stage}:arm64"),
        ],
    );
    let stdout = ok(&out);
    let index = stdout.trim().rsplit('@').next().unwrap().to_string();
    assert_eq!(
        digest_of(&raw(&format!("docker://{stage}:1")).unwrap()),
        index
    );
    assert_ne!(index, arm64);
    attach(stage, &index, false);
    attach(stage, &amd64, true);
    (index, amd64)
}

fn sig_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

fn promotion_between_registries_keeps_the_digest_and_copies_attachments_only_when_asked() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let (staging, prod) = (Registry::start(None), Registry::start(None));
    let stage = format!("{}/stage/vm", staging.addr);
    let (index, amd64) = staged_index(w, &stage);

    // Without --with-attachments: the index, both images and every blob; no attachment.
    let plain = format!("{}/prod/plain", prod.addr);
    let out = diskforge(
        w,
        &[
            "push",
            &format!("docker://{stage}@{index}"),
            &format!("docker://{plain}:1"),
            &format!("docker://{plain}:stable"),
            "--digest-file",
            w.join("digest").to_str().unwrap(),
        ],
    );
    assert_eq!(ok(&out).trim(), format!("{plain}@{index}"));
    // Manifests by digest and under each tag, in the event stream as references.
    let stderr = String::from_utf8_lossy(&out.stderr);
    for reference in [
        format!("{plain}@{index}"),
        format!("{plain}@{amd64}"),
        format!("{plain}:stable"),
    ] {
        assert!(
            stderr.contains(&format!("\"reference\":\"{reference}\"")),
            "{reference}: {stderr}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(w.join("digest")).unwrap().trim(),
        index
    );
    for tag in ["1", "stable"] {
        assert_eq!(
            digest_of(&raw(&format!("docker://{plain}:{tag}")).unwrap()),
            index
        );
    }
    // Two configs and two layers crossed from one registry to the other.
    assert_eq!(
        blob_events(&out, "uploaded"),
        4,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(raw(&format!("docker://{plain}:{}", sig_tag(&index))).is_none());
    assert!(raw(&format!("docker://{plain}:{}", sig_tag(&amd64))).is_none());
    assert!(raw(&format!("docker://{plain}:{}", referrers_tag(&amd64))).is_none());
    // Every blob of both architectures is there: skopeo copies all of it, by digest.
    let copy = w.join("copy");
    common::registry::skopeo_copy(
        Command::new("skopeo"),
        &["--all"],
        &format!("{plain}@{index}"),
        &copy,
        "x",
    )
    .succeeds();
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join("index.json")).unwrap()).unwrap();
    assert_eq!(idx["manifests"][0]["digest"], index.as_str());

    // Again: nothing to copy.
    let out = diskforge(
        w,
        &[
            "push",
            &format!("docker://{stage}@{index}"),
            &format!("docker://{plain}:1"),
        ],
    );
    ok(&out);
    assert_eq!(blob_events(&out, "uploaded"), 0);
    assert_eq!(blob_events(&out, "skipped"), 4);

    // With --with-attachments, from the tag (resolved once) and an --expect-digest that
    // holds: signatures of the index and the amd64 image, SBOM and provenance.
    let signed = format!("{}/prod/signed", prod.addr);
    let out = diskforge(
        w,
        &[
            "push",
            &format!("docker://{stage}:1"),
            &format!("docker://{signed}:1"),
            "--with-attachments",
            "--expect-digest",
            &index,
        ],
    );
    assert_eq!(ok(&out).trim(), format!("{signed}@{index}"));
    assert_eq!(
        digest_of(&raw(&format!("docker://{signed}:1")).unwrap()),
        index
    );
    for subject in [&index, &amd64] {
        let tag = sig_tag(subject);
        let src = raw(&format!("docker://{stage}:{tag}")).expect("the staged signature");
        let dst = raw(&format!("docker://{signed}:{tag}"))
            .unwrap_or_else(|| panic!("{tag} was not promoted"));
        assert_eq!(src, dst, "{tag} differs after promotion");
    }
    let referrers = raw(&format!("docker://{signed}:{}", referrers_tag(&amd64)))
        .expect("the referrers of the amd64 image");
    let referrers: serde_json::Value = serde_json::from_slice(&referrers).unwrap();
    let mut types = Vec::new();
    for m in referrers["manifests"].as_array().unwrap() {
        let d = m["digest"].as_str().unwrap();
        let bytes = raw(&format!("docker://{signed}@{d}"))
            .unwrap_or_else(|| panic!("referrer {d} is missing"));
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc["subject"]["digest"], amd64.as_str());
        types.push(m["artifactType"].as_str().unwrap().to_string());
    }
    types.sort();
    let mut want = vec![PROVENANCE_TYPE, SPDX_TYPE];
    want.sort();
    assert_eq!(types, want);
    // diskforge reads them back from the destination as it does after a build.
    let out = diskforge(
        w,
        &["inspect", "--json", &format!("docker://{signed}@{amd64}")],
    );
    let s: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(s["attached"]["signatures"], 1, "{s}");
    assert_eq!(s["attached"]["sbom_packages"], 1, "{s}");
}

fn a_source_that_is_not_the_expected_digest_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let (staging, prod) = (Registry::start(None), Registry::start(None));
    let stage = format!("{}/stage/vm", staging.addr);
    let first = pack(w, &random_qcow2(w, "a", 1, 3), "amd64", &stage);
    // The tag moves on after `first` was checked.
    let moved = pack(w, &random_qcow2(w, "b", 1, 4), "amd64", &stage);
    assert_ne!(first, moved);
    let dest = format!("docker://{}/prod/vm:1", prod.addr);
    let checked = format!("docker://{stage}:amd64@{first}");
    let before = prod.log_text().lines().count();
    for args in [
        vec!["push", checked.as_str(), dest.as_str()],
        vec![
            "push",
            &format!("docker://{stage}:amd64"),
            dest.as_str(),
            "--expect-digest",
            first.as_str(),
        ],
    ] {
        let out = diskforge(w, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{stderr}");
        assert!(
            stderr.contains(&moved) && stderr.contains(&first),
            "{stderr}"
        );
        assert!(stderr.contains("nothing was written"), "{stderr}");
    }
    assert_eq!(
        prod.log_text()
            .lines()
            .filter(|l| l.contains("/v2/"))
            .count(),
        0,
        "the destination registry was contacted: {}",
        prod.log_text()
            .lines()
            .skip(before)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(raw(&dest).is_none());
    // The checked digest itself still promotes.
    let out = diskforge(w, &["push", &format!("docker://{stage}@{first}"), &dest]);
    ok(&out);
    assert_eq!(digest_of(&raw(&dest).unwrap()), first);
}

fn promotion_within_a_registry_mounts_blobs_and_creds_never_cross_registries() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let reg = Registry::start(None);
    let stage = format!("{}/stage/vm", reg.addr);
    let digest = pack(w, &random_qcow2(w, "a", 2, 5), "amd64", &stage);
    let dest = format!("docker://{}/prod/vm:1", reg.addr);
    let out = diskforge(w, &["push", &format!("docker://{stage}@{digest}"), &dest]);
    ok(&out);
    common::events::assert_mounted_not_uploaded(&out.stderr, 2);
    // The registry saw mount requests for prod/vm and no upload of blob bytes to it.
    let to_prod = |method: &str| reg.count(&[method, "/v2/prod/vm/blobs/uploads/"]);
    assert_eq!(to_prod("PUT") + to_prod("PATCH"), 0, "{}", reg.log_text());
    assert_eq!(reg.count(&["\"POST /v2/prod/vm/blobs/uploads/?mount="]), 2);
    assert_eq!(digest_of(&raw(&dest).unwrap()), digest);

    // One --creds for two registries would send one registry's password to the other.
    let other = Registry::start(None);
    let out = common::diskforge()
        .args(["push", &format!("docker://{stage}@{digest}")])
        .arg(format!("docker://{}/prod/vm:1", other.addr))
        .args(["--tls-verify=false", "--creds", "u:p"])
        .env("XDG_CACHE_HOME", w.join("xdg"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(other.count(&["/v2/"]), 0);
}

fn a_large_layer_crosses_registries_without_being_held_in_memory() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let (staging, prod) = (Registry::start(None), Registry::start(None));
    let stage = format!("{}/stage/big", staging.addr);
    let digest = pack(w, &random_qcow2(w, "big", 192, 6), "amd64", &stage);
    let dest = format!("docker://{}/prod/big:1", prod.addr);
    let mut cmd = common::diskforge();
    cmd.args([
        "push",
        &format!("docker://{stage}@{digest}"),
        &dest,
        "--tls-verify=false",
    ])
    .env("XDG_CACHE_HOME", w.join("xdg"));
    let (out, peak_kib) =
        common::hostile::with_peak_rss(&mut cmd, std::time::Duration::from_secs(300));
    ok(&out);
    eprintln!("peak RSS while copying 192 MiB: {peak_kib} KiB");
    assert_eq!(digest_of(&raw(&dest).unwrap()), digest);
    assert!(
        peak_kib < 100 * 1024,
        "a 192 MiB layer was copied with a peak RSS of {peak_kib} KiB"
    );
}

/// An auth file entry per registry: `(registry, user, password)`.
fn auth_file(path: &Path, entries: &[(&str, &str, &str)]) {
    use base64::Engine;
    let auths: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(reg, u, p)| {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            (reg.to_string(), serde_json::json!({ "auth": token }))
        })
        .collect();
    std::fs::write(path, serde_json::json!({ "auths": auths }).to_string()).unwrap();
}

fn each_registry_of_a_promotion_gets_only_its_own_credential() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let staging = Registry::start(Some(("stager", "staging-secret")));
    let prod = Registry::start(Some(("publisher", "prod-secret")));
    let auth = w.join("auth.json");
    auth_file(
        &auth,
        &[
            (&staging.addr, "stager", "staging-secret"),
            (&prod.addr, "publisher", "prod-secret"),
        ],
    );
    let stage = format!("{}/stage/vm", staging.addr);
    let out = diskforge(
        w,
        &[
            "pack",
            random_qcow2(w, "a", 1, 7).to_str().unwrap(),
            "--compression",
            "none",
            "--authfile",
            auth.to_str().unwrap(),
            "--output",
            &format!("docker://{stage}:1"),
        ],
    );
    let digest = ok(&out).split_whitespace().nth(1).unwrap().to_string();
    let dest = format!("docker://{}/prod/vm:1", prod.addr);
    let out = diskforge(
        w,
        &[
            "push",
            &format!("docker://{stage}@{digest}"),
            &dest,
            "--authfile",
            auth.to_str().unwrap(),
        ],
    );
    ok(&out);
    // The registries log the user of every authenticated request: each saw only its own.
    assert!(prod.count(&["publisher"]) > 0, "{}", prod.log_text());
    assert_eq!(prod.count(&["stager"]), 0, "{}", prod.log_text());
    assert_eq!(staging.count(&["publisher"]), 0, "{}", staging.log_text());
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            "publisher:prod-secret",
        ])
        .arg(&dest)
        .succeeds();
    assert_eq!(digest_of(&out.stdout), digest);
}

crate::tests! {
    fn promotion_between_registries_keeps_the_digest_and_copies_attachments_only_when_asked [TOOLS];
    fn a_source_that_is_not_the_expected_digest_writes_nothing [TOOLS];
    fn promotion_within_a_registry_mounts_blobs_and_creds_never_cross_registries [TOOLS];
    fn a_large_layer_crosses_registries_without_being_held_in_memory [&["qemu-img", "docker-registry", "skopeo", "/usr/bin/time"]];
    fn each_registry_of_a_promotion_gets_only_its_own_credential [&["qemu-img", "docker-registry", "skopeo", "htpasswd"]];
}
