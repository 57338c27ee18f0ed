//! Pushing to a real registry (Debian's docker-registry on loopback): skip and mount,
//! faults injected by a loopback proxy, basic auth, and reading back with skopeo.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::registry::{FaultProxy, Registry};

const TOOLS: &[&str] = &["qemu-img", "docker-registry", "skopeo", "htpasswd"];

/// A packed layout with a few MiB of random data; returns (layout dir, manifest digest).
fn layout(dir: &Path, mib: usize) -> (PathBuf, String) {
    let raw = dir.join("d.raw");
    let mut f = std::fs::File::create(&raw).unwrap();
    let mut x: u64 = 0x1234_5678_9abc_def1 ^ mib as u64;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        std::io::Write::write_all(&mut f, &buf).unwrap();
    }
    drop(f);
    let q = dir.join("d.qcow2");
    assert!(Command::new("qemu-img")
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(&raw)
        .arg(&q)
        .status()
        .unwrap()
        .success());
    let l = dir.join("layout");
    let out = common::diskforge()
        .arg("pack")
        .arg(&q)
        .args(["--compression", "none", "--output"])
        .arg(format!("oci:{}:v1", l.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let digest = stdout.split_whitespace().nth(1).unwrap().to_string();
    (l, digest)
}

fn push(layout: &Path, dests: &[String], env: &[(&str, &str)], extra: &[&str]) -> Output {
    let mut c = common::diskforge();
    c.args(["--json-events", "push"])
        .arg(format!("{}:v1", layout.display()))
        .args(dests)
        .args(["--tls-verify=false"])
        .args(extra)
        .env("XDG_CACHE_HOME", layout.parent().unwrap().join("xdg"))
        .env_remove("DISKFORGE_CREDS")
        .env_remove("DOCKER_CONFIG")
        .env_remove("REGISTRY_AUTH_FILE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn events(out: &Output, action: &str) -> usize {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("\"blob\"") && l.contains(&format!("\"action\":\"{action}\"")))
        .count()
}

fn skopeo_digest(reference: &str, creds: Option<&str>) -> String {
    let mut c = Command::new("skopeo");
    c.args(["inspect", "--tls-verify=false"]);
    if let Some(cr) = creds {
        c.args(["--creds", cr]);
    }
    let out = c.arg(reference).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Digest"].as_str().unwrap().to_string()
}

#[test]
fn push_skips_present_blobs_and_mounts_across_repositories() {
    if !common::require(TOOLS) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (l, digest) = layout(t.path(), 6);
    let reg = Registry::start(None);
    let a = format!("docker://{}/lab/a:1", reg.addr);

    let digest_file = t.path().join("digest.txt");
    let out = push(
        &l,
        std::slice::from_ref(&a),
        &[],
        &[
            "--digest-file",
            digest_file.to_str().unwrap(),
            "--print-vm-manifest",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(events(&out, "uploaded"), 2);
    let pinned = format!("{}/lab/a@{digest}", reg.addr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&pinned), "{stdout}");
    assert!(
        stdout.contains("kind: VirtualMachine") && stdout.contains(&format!("image: {pinned}")),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(&digest_file).unwrap().trim(),
        pinned
    );
    assert_eq!(skopeo_digest(&a, None), digest);

    // The same image again, with a second tag: nothing is uploaded.
    let uploads_before =
        reg.count(&["PUT", "/blobs/uploads/"]) + reg.count(&["PATCH", "/blobs/uploads/"]);
    let out = push(
        &l,
        &[a.clone(), format!("docker://{}/lab/a:2", reg.addr)],
        &[],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(events(&out, "uploaded"), 0);
    assert_eq!(events(&out, "skipped"), 2);
    let uploads_after =
        reg.count(&["PUT", "/blobs/uploads/"]) + reg.count(&["PATCH", "/blobs/uploads/"]);
    assert_eq!(
        uploads_before, uploads_after,
        "the registry saw blob uploads on the second push"
    );
    assert_eq!(
        skopeo_digest(&format!("docker://{}/lab/a:2", reg.addr), None),
        digest
    );

    // Another repository of the same registry: blobs are mounted, not uploaded.
    let out = push(&l, &[format!("docker://{}/lab/b:1", reg.addr)], &[], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        events(&out, "mounted"),
        2,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(events(&out, "uploaded"), 0);
    assert_eq!(
        skopeo_digest(&format!("docker://{}/lab/b:1", reg.addr), None),
        digest
    );

    // Pulled back by digest into an OCI layout, the image is the same.
    let copy = t.path().join("copy");
    let st = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://{pinned}"))
        .arg(format!("oci:{}:x", copy.display()))
        .status()
        .unwrap();
    assert!(st.success());
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join("index.json")).unwrap()).unwrap();
    assert_eq!(idx["manifests"][0]["digest"], digest.as_str());

    // diskforge's own pull and remote inspect.
    let out = common::diskforge()
        .args([
            "inspect",
            "--json",
            "--tls-verify=false",
            &format!("docker://{pinned}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["disk"]["format"], "qcow2");
    assert_eq!(s["disk"]["virtual_size"], 6 << 20);
}

#[test]
fn push_survives_connection_resets_and_503s() {
    if !common::require(TOOLS) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (l, digest) = layout(t.path(), 8);
    for (resets, unavailable, repo) in [(1, 0, "reset"), (0, 2, "busy")] {
        // A fresh registry each time, so nothing can be skipped or mounted.
        let reg = Registry::start(None);
        let proxy = FaultProxy::start(&reg.addr, resets, unavailable);
        let dest = format!("docker://{}/lab/{repo}:1", proxy.addr);
        let out = push(&l, std::slice::from_ref(&dest), &[], &[]);
        assert!(
            out.status.success(),
            "{repo}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            proxy.resets_done.load(std::sync::atomic::Ordering::SeqCst),
            resets
        );
        assert_eq!(
            proxy
                .unavailable_done
                .load(std::sync::atomic::Ordering::SeqCst),
            unavailable
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("\"retry\""), "{repo}: no retry event in {err}");
        // Verified through the registry directly, not through the proxy.
        assert_eq!(
            skopeo_digest(&format!("docker://{}/lab/{repo}:1", reg.addr), None),
            digest
        );
        let copy = t.path().join(format!("copy-{repo}"));
        let st = Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--preserve-digests",
                "--src-tls-verify=false",
            ])
            .arg(format!("docker://{}/lab/{repo}:1", reg.addr))
            .arg(format!("oci:{}:x", copy.display()))
            .status()
            .unwrap();
        assert!(st.success(), "the pushed image does not copy back");
    }
}

#[test]
fn basic_auth_from_creds_and_auth_file_and_wrong_creds_fail_cleanly() {
    if !common::require(TOOLS) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (l, digest) = layout(t.path(), 2);
    let password = "S3cret-Pa55word-XYZ";
    let reg = Registry::start(Some(("ci", password)));
    let dest = format!("docker://{}/lab/auth:1", reg.addr);

    // No credentials: refused.
    let out = push(&l, std::slice::from_ref(&dest), &[], &[]);
    assert!(!out.status.success());

    // Wrong password: a clear error, and the password is nowhere in the output.
    let wrong = "Wr0ng-Secret-QQQ";
    let out = push(
        &l,
        std::slice::from_ref(&dest),
        &[("DISKFORGE_CREDS", &format!("ci:{wrong}"))],
        &[],
    );
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("authentication failed"), "{all}");
    assert!(!all.contains(wrong), "the password leaked: {all}");

    // Right credentials through --creds.
    let out = push(
        &l,
        std::slice::from_ref(&dest),
        &[],
        &["--creds", &format!("ci:{password}")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(password));
    assert_eq!(
        skopeo_digest(&dest, Some(&format!("ci:{password}"))),
        digest
    );

    // Through a Docker auth file.
    let cfg = t.path().join("docker");
    std::fs::create_dir_all(&cfg).unwrap();
    let token = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("ci:{password}"),
    );
    std::fs::write(
        cfg.join("config.json"),
        format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"{token}\"}}}}}}",
            reg.addr
        ),
    )
    .unwrap();
    let dest2 = format!("docker://{}/lab/auth2:1", reg.addr);
    let out = push(
        &l,
        std::slice::from_ref(&dest2),
        &[("DOCKER_CONFIG", cfg.to_str().unwrap())],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(password) && !all.contains(&token));
}

/// Size of the largest file under `dir`.
fn largest_file(dir: &Path) -> u64 {
    let mut max = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            max = max.max(if p.is_dir() {
                largest_file(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            });
        }
    }
    max
}

#[test]
fn ctrl_c_during_a_push_leaves_no_tag_and_a_second_push_completes() {
    if !common::require(&["docker-registry", "skopeo", "qemu-img"]) {
        return;
    }
    let reg = common::registry::Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    // A 2 GiB raw disk of zeros packed without compression: a layer large enough to
    // interrupt in the middle of its upload, cheap to make.
    let disk = t.path().join("big.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let l = t.path().join("layout");
    let out = common::diskforge()
        .arg("pack")
        .arg(&disk)
        .args(["--compression", "none", "--output"])
        .arg(format!("oci:{}:v1", l.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dest = format!("docker://{}/lab/cut:1", reg.addr);
    let child = common::diskforge()
        .args(["--json-events", "push"])
        .arg(format!("{}:v1", l.display()))
        .arg(&dest)
        .arg("--tls-verify=false")
        .env("XDG_CACHE_HOME", t.path().join("xdg"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the registry holds part of the layer upload.
    let storage = reg.dir.path().join("data");
    let out = common::interrupt_when(
        child,
        "INT",
        || largest_file(&storage) > 64 << 20,
        std::time::Duration::from_secs(120),
        std::time::Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted by SIGINT"), "{err}");
    assert!(
        !err.contains("retrying"),
        "an interruption is not a retry: {err}"
    );
    // Manifest last: the tag does not exist.
    let inspect = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", &dest])
        .output()
        .unwrap();
    assert!(
        !inspect.status.success(),
        "the tag exists after an interrupted push"
    );

    let out = push(&l, std::slice::from_ref(&dest), &[], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest_digest = std::fs::read_to_string(l.join("index.json")).unwrap();
    let pushed = skopeo_digest(&dest, None);
    assert!(
        manifest_digest.contains(&pushed),
        "{pushed} not in {manifest_digest}"
    );
}
