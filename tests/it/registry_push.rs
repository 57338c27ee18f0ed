//! Pushing to a real registry (Debian's docker-registry on loopback): skip and mount,
//! faults injected by a loopback proxy, basic auth, and reading back with skopeo.

use crate::common;
use common::Run;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::registry::{FaultProxy, Faults, Registry};

const TOOLS: &[&str] = &["qemu-img", "docker-registry", "skopeo", "htpasswd"];

/// A qcow2 of `mib` MiB of pseudo-random (incompressible) data.
fn random_qcow2(dir: &Path, mib: usize) -> PathBuf {
    common::disk::random_qcow2(dir, "d", mib, 0x1234_5678_9abc_def1 ^ mib as u64)
}

/// A packed layout with a few MiB of random data; returns (layout dir, manifest digest).
fn layout(dir: &Path, mib: usize) -> (PathBuf, String) {
    let q = random_qcow2(dir, mib);
    let l = dir.join("layout");
    let out = common::diskforge()
        .arg("pack")
        .arg(&q)
        .args(["--compression", "none", "--output"])
        .arg(format!("oci:{}:v1", l.display()))
        .succeeds();
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
    let out = c.output().unwrap();
    common::events::check(&out.stderr);
    out
}

/// [`push`] of `layout` to `dest` alone, which must succeed; gives its stderr.
fn pushed(layout: &Path, dest: &str) -> String {
    let out = push(layout, &[dest.to_string()], &[], &[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}

/// stdout then stderr of a command that must have succeeded.
fn succeeded(out: &Output) -> String {
    let all = common::text(out);
    assert!(out.status.success(), "{all}");
    all
}

fn events(out: &Output, action: &str) -> usize {
    common::events::blob_actions(&out.stderr, action)
}

/// A registry behind a proxy that injects `faults`.
fn faulty_registry(faults: Faults) -> (Registry, FaultProxy) {
    let reg = Registry::start(None);
    let proxy = FaultProxy::start_with(&reg.addr, faults);
    (reg, proxy)
}

/// Asserts that the registry serves `reference` (`lab/x:1`) as `digest`, read by skopeo.
fn assert_served(reg: &Registry, reference: &str, digest: &str) {
    assert_eq!(
        skopeo_digest(&format!("docker://{}/{reference}", reg.addr), None),
        digest,
        "{reference}"
    );
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

fn push_skips_present_blobs_and_mounts_across_repositories() {
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
    succeeded(&out);
    assert_eq!(events(&out, "uploaded"), 2);
    let pinned = format!("{}/lab/a@{digest}", reg.addr);
    // With --print-vm-manifest stdout is the manifest and nothing else: it parses as
    // one YAML document; the pinned reference goes to stderr.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let vm: serde_json::Value =
        serde_yaml::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(vm["kind"], "VirtualMachine", "{stdout}");
    assert_eq!(
        vm["spec"]["template"]["spec"]["volumes"][0]["containerDisk"]["image"],
        pinned.as_str()
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&pinned));
    // The digest file holds the manifest digest, as podman's --digestfile does.
    assert_eq!(
        std::fs::read_to_string(&digest_file).unwrap().trim(),
        digest
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
    succeeded(&out);
    assert_eq!(events(&out, "uploaded"), 0);
    assert_eq!(events(&out, "skipped"), 2);
    let uploads_after =
        reg.count(&["PUT", "/blobs/uploads/"]) + reg.count(&["PATCH", "/blobs/uploads/"]);
    assert_eq!(
        uploads_before, uploads_after,
        "the registry saw blob uploads on the second push"
    );
    assert_served(&reg, "lab/a:2", &digest);

    // Another repository of the same registry: blobs are mounted, not uploaded.
    let out = push(&l, &[format!("docker://{}/lab/b:1", reg.addr)], &[], &[]);
    succeeded(&out);
    common::events::assert_mounted_not_uploaded(&out.stderr, 2);
    assert_served(&reg, "lab/b:1", &digest);

    // Pulled back by digest into an OCI layout, the image is the same.
    let copy = t.path().join("copy");
    common::registry::skopeo_pull(&pinned, &copy, "x");
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join("index.json")).unwrap()).unwrap();
    assert_eq!(idx["manifests"][0]["digest"], digest.as_str());

    // diskforge's own pull and remote inspect.
    let s = common::inspect_json(&["--tls-verify=false", &format!("docker://{pinned}")]);
    assert_eq!(s["disk"]["format"], "qcow2");
    assert_eq!(s["disk"]["virtual_size"], 6 << 20);
}

fn push_survives_connection_resets_and_503s() {
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
        assert_served(&reg, &format!("lab/{repo}:1"), &digest);
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

/// A push that takes longer than any request timeout (300 MB at 0.8 MB/s, over six
/// minutes) completes, and a chunk refused by a gateway in front of the registry (503,
/// never reaching it) resumes where the registry says the upload stands instead of
/// sending the blob again.
///
/// Six minutes of waiting on a throttled link and no CPU: `ci/test.sh` runs it beside
/// the rest of the suite (`cargo test --test registry_push -- --ignored`).
fn a_300_mb_push_at_0_8_mb_per_s_completes_and_a_refused_chunk_resumes() {
    let t = tempfile::tempdir().unwrap();
    let (l, digest) = layout(t.path(), 287); // 300 MB (287 MiB) of incompressible data
    let layer = largest_file(&l.join("blobs/sha256"));
    assert!(layer >= 300_000_000, "layer is {layer} bytes");
    let (reg, proxy) = faulty_registry(Faults {
        // Upload requests in order: the config, then the layer's 16 MiB chunks;
        // the layer's fourth chunk is refused once.
        skip: 4,
        unavailable: 1,
        throttle: Some(800_000),
        ..Faults::default()
    });
    let dest = format!("docker://{}/lab/slow:1", proxy.addr);
    let started = std::time::Instant::now();
    let out = push(&l, std::slice::from_ref(&dest), &[], &[]);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        took.as_secs() >= 300,
        "the throttle did not hold: {took:?} for {layer} bytes"
    );
    assert_eq!(
        proxy
            .unavailable_done
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let resumed = common::events::numbers(&err, "retry", "resume_at");
    assert_eq!(resumed, vec![3 * (16 << 20)], "{err}");
    let sent = proxy.body_bytes.load(std::sync::atomic::Ordering::SeqCst) as u64;
    assert!(
        sent < layer + (1 << 20),
        "{sent} bytes reached the registry for a {layer}-byte layer: the upload restarted"
    );
    assert!(reg.count(&["PATCH", "/lab/slow/blobs/uploads/"]) >= 18);
    assert_served(&reg, "lab/slow:1", &digest);
    eprintln!("300 MB push at 0.8 MB/s with one refused chunk: {took:?}, {sent} body bytes");
}

/// A chunk cut in the middle of its body: the distribution registry cancels such an
/// upload (its stored size no longer matches the upload state), so the blob starts over
/// in a new upload, and the push completes with the right digest.
fn a_chunk_cut_mid_body_is_sent_again_and_the_push_completes() {
    let t = tempfile::tempdir().unwrap();
    let (l, digest) = layout(t.path(), 40);
    let (reg, proxy) = faulty_registry(Faults {
        skip: 2, // the layer's second chunk
        resets: 1,
        reset_after: Some(6 << 20),
        ..Faults::default()
    });
    let dest = format!("docker://{}/lab/cut:1", proxy.addr);
    let err = pushed(&l, &dest);
    assert_eq!(
        proxy.resets_done.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(err.contains("\"event\":\"retry\""), "{err}");
    assert_served(&reg, "lab/cut:1", &digest);
}

/// The registry timeout bounds inactivity, not a request's duration: one upload
/// request of an 8 MiB layer at 1 MB/s lasts over 8 s and completes with a 3 s timeout,
/// without a retry.
fn a_request_may_outlast_the_timeout_while_bytes_flow() {
    let t = tempfile::tempdir().unwrap();
    let (l, digest) = layout(t.path(), 8);
    let (reg, proxy) = faulty_registry(Faults {
        throttle: Some(1_000_000),
        ..Faults::default()
    });
    let dest = format!("docker://{}/lab/steady:1", proxy.addr);
    let started = std::time::Instant::now();
    let out = push(
        &l,
        std::slice::from_ref(&dest),
        &[],
        &["--registry-timeout", "3"],
    );
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(took.as_secs() >= 8, "the throttle did not hold: {took:?}");
    assert!(!err.contains("\"event\":\"retry\""), "{err}");
    assert_eq!(
        reg.count(&["PATCH", "/lab/steady/blobs/uploads/"]),
        0,
        "the layer was not sent in one request"
    );
    assert_served(&reg, "lab/steady:1", &digest);
}

/// The layer's first chunk refused by a gateway before it reaches the registry: the
/// registry then answers `Range: 0-0` for the upload, which it also says when it holds
/// one byte, so the upload starts over instead of resuming at byte 1 (which lost the
/// first byte and failed the commit on its digest).
fn a_refused_first_chunk_starts_the_upload_over() {
    let t = tempfile::tempdir().unwrap();
    let (l, digest) = layout(t.path(), 40);
    let (reg, proxy) = faulty_registry(Faults {
        skip: 1, // the config passes; the layer's first chunk is refused
        unavailable: 1,
        ..Faults::default()
    });
    let dest = format!("docker://{}/lab/first:1", proxy.addr);
    let err = pushed(&l, &dest);
    assert_eq!(
        proxy
            .unavailable_done
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let retries: Vec<serde_json::Value> = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "retry")
        .collect();
    assert_eq!(retries.len(), 1, "{err}");
    assert!(
        retries[0]["resume_at"].is_null(),
        "resumed instead of starting over: {err}"
    );
    assert_served(&reg, "lab/first:1", &digest);
}

/// When one tag of a multi-tag push is refused, the error says exactly which tags point
/// at the new image and which do not, and the image stays pullable by digest.
fn a_refused_tag_is_reported_with_where_every_tag_points() {
    let t = tempfile::tempdir().unwrap();
    let (l, digest) = layout(t.path(), 2);
    let reg = Registry::start(None);
    // Tag c already holds an older image.
    let older_dir = t.path().join("older");
    std::fs::create_dir(&older_dir).unwrap();
    let (older, older_digest) = layout(&older_dir, 3);
    let out = push(
        &older,
        &[format!("docker://{}/lab/multi:c", reg.addr)],
        &[],
        &[],
    );
    succeeded(&out);
    let proxy = FaultProxy::start_with(
        &reg.addr,
        Faults {
            refuse: Some("PUT /v2/lab/multi/manifests/b "),
            ..Faults::default()
        },
    );
    let dests: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|t| format!("docker://{}/lab/multi:{t}", proxy.addr))
        .collect();
    let out = push(&l, &dests, &[], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("not under every tag"), "{err}");
    assert!(err.contains(&format!("a -> {digest} (updated)")), "{err}");
    assert!(err.contains("b: not updated ("), "{err}");
    assert!(
        err.contains("disk full"),
        "the registry's reason is lost: {err}"
    );
    assert!(err.contains("; the tag does not exist"), "{err}");
    assert!(
        err.contains(&format!(
            "c: not updated (an earlier tag failed); it points at {older_digest}"
        )),
        "{err}"
    );
    // What the report says is what the registry holds.
    assert_served(&reg, "lab/multi:a", &digest);
    assert_served(&reg, "lab/multi:c", &older_digest);
    let st = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/lab/multi:b", reg.addr))
        .output()
        .unwrap();
    assert!(!st.status.success(), "tag b exists");
    assert_served(&reg, &format!("lab/multi@{digest}"), &digest);
}

fn basic_auth_from_creds_and_auth_file_and_wrong_creds_fail_cleanly() {
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
    let all = common::text(&out);
    assert!(all.contains("authentication failed"), "{all}");
    assert!(!all.contains(wrong), "the password leaked: {all}");

    // Right credentials through --creds.
    let out = push(
        &l,
        std::slice::from_ref(&dest),
        &[],
        &["--creds", &format!("ci:{password}")],
    );
    let all = succeeded(&out);
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
    let all = succeeded(&out);
    assert!(!all.contains(password) && !all.contains(&token));
}

/// `dir/big.raw`: a sparse raw disk of `size` bytes of zeros.
fn sparse_zeros(dir: &Path, size: u64) -> PathBuf {
    let disk = dir.join("big.raw");
    std::fs::File::create(&disk).unwrap().set_len(size).unwrap();
    disk
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

/// Interrupts `child` (a push or pack to `reg`) with SIGINT once the registry holds more
/// than 64 MiB of a layer upload; it must exit 130 saying so. Gives its stderr.
fn interrupted_mid_upload(child: std::process::Child, reg: &Registry) -> String {
    let storage = reg.dir.path().join("data");
    let out = common::interrupt_when(
        child,
        "INT",
        || largest_file(&storage) > 64 << 20,
        std::time::Duration::from_secs(120),
        std::time::Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted by SIGINT"), "{err}");
    err
}

/// `dest` has no tag in the registry (`why` says what should have prevented it).
fn assert_no_tag(dest: &str, why: &str) {
    let inspect = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", dest])
        .output()
        .unwrap();
    assert!(!inspect.status.success(), "{why}");
}

fn ctrl_c_during_a_push_leaves_no_tag_and_a_second_push_completes() {
    let reg = common::registry::Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    // A 2 GiB raw disk of zeros packed without compression: a layer large enough to
    // interrupt in the middle of its upload, cheap to make.
    let disk = sparse_zeros(t.path(), 2 << 30);
    let l = t.path().join("layout");
    common::diskforge()
        .arg("pack")
        .arg(&disk)
        .args(["--compression", "none", "--output"])
        .arg(format!("oci:{}:v1", l.display()))
        .succeeds();
    let dest = format!("docker://{}/lab/cut:1", reg.addr);
    let child = common::diskforge()
        .args(["--json-events", "push"])
        .arg(format!("{}:v1", l.display()))
        .arg(&dest)
        .arg("--tls-verify=false")
        .env("XDG_CACHE_HOME", t.path().join("xdg"))
        .spawned();
    // Interrupt once the registry holds part of the layer upload.
    let err = interrupted_mid_upload(child, &reg);
    assert!(
        !err.contains("retrying"),
        "an interruption is not a retry: {err}"
    );
    // Manifest last: the tag does not exist.
    assert_no_tag(&dest, "the tag exists after an interrupted push");

    // The whole 2 GiB layer goes up again, in a new upload, from the file: memory stays
    // far below the layer's size.
    let mut c = common::diskforge();
    c.args(["--json-events", "push"])
        .arg(format!("{}:v1", l.display()))
        .arg(&dest)
        .arg("--tls-verify=false")
        .env("XDG_CACHE_HOME", t.path().join("xdg"));
    let (out, kib) = common::hostile::with_peak_rss(&mut c, std::time::Duration::from_secs(600));
    succeeded(&out);
    assert!(kib < 100 << 10, "pushing a 2 GiB layer took {kib} KiB");
    eprintln!("pushing 2 GiB: peak RSS {} MiB", kib >> 10);
    let manifest_digest = std::fs::read_to_string(l.join("index.json")).unwrap();
    let pushed = skopeo_digest(&dest, None);
    assert!(
        manifest_digest.contains(&pushed),
        "{pushed} not in {manifest_digest}"
    );
}

/// `pack` to a registry uploads the layer while it packs it: the layer's bytes reach the
/// registry before the packed layer is complete (seen from outside: before its blob
/// appears in the OCI layout written beside), the image is complete (skopeo copies it,
/// checking every digest), and packing the same disk again uploads nothing.
fn pack_uploads_the_layer_while_packing_and_the_same_disk_again_uploads_nothing() {
    use std::io::Read as _;
    use std::sync::atomic::Ordering::SeqCst;
    let t = tempfile::tempdir().unwrap();
    let disk = random_qcow2(t.path(), 48);
    let reg = Registry::start(None);
    let proxy = FaultProxy::start_with(&reg.addr, Faults::default());
    let pack = |tag: &str| {
        let layout = t.path().join(format!("layout-{tag}"));
        let mut child = common::diskforge()
            .args(["--json-events", "pack"])
            .arg(&disk)
            .args(["--tls-verify=false", "--output"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg("--output")
            .arg(format!("docker://{}/lab/stream:{tag}", proxy.addr))
            .env("XDG_CACHE_HOME", t.path().join("xdg"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The layer blob gets its name when packing is complete: how many bytes had
        // reached the registry then?
        let blobs = layout.join("blobs/sha256");
        let body_bytes = proxy.body_bytes.clone();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done2 = done.clone();
        let watcher = std::thread::spawn(move || {
            while !done2.load(SeqCst) {
                let named = std::fs::read_dir(&blobs)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|e| {
                        !e.file_name().to_string_lossy().starts_with('.')
                            && e.metadata().is_ok_and(|m| m.len() > 1 << 20)
                    });
                if named {
                    return Some(body_bytes.load(SeqCst));
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            None
        });
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = child.wait().unwrap();
        done.store(true, SeqCst);
        let sent_when_packed = watcher.join().unwrap();
        assert!(status.success(), "{err}");
        common::events::check(err.as_bytes());
        (err, sent_when_packed)
    };

    let sent_before = proxy.body_bytes.load(SeqCst);
    let (err, sent_when_packed) = pack("1");
    let sent_when_packed = sent_when_packed.expect("the layer blob never appeared") - sent_before;
    let layer_size: u64 = err
        .lines()
        .find(|l| l.contains("\"event\":\"packed\""))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["layer_size"].as_u64())
        .unwrap_or_else(|| panic!("no packed event: {err}"));
    assert!(
        sent_when_packed > 0,
        "no layer byte had reached the registry when the layer was complete: {err}"
    );
    let streamed = err
        .lines()
        .find(|l| l.contains("\"what\":\"uploading while packing\""))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap_or_else(|| panic!("no upload while packing: {err}"));
    assert_eq!(streamed["bytes"].as_u64(), Some(layer_size), "{err}");
    let blob_events =
        |err: &str, action: &str| common::events::blob_actions(err.as_bytes(), action);
    assert_eq!(blob_events(&err, "uploaded"), 2, "{err}");
    copies_back_intact(
        &format!("{}/lab/stream:1", reg.addr),
        &t.path().join("copy"),
    );

    // The same disk again: the registry is asked first and nothing is sent.
    // Every request goes through the proxy: only the manifest (under a KiB) is sent.
    let before = proxy.body_bytes.load(SeqCst);
    let (err, _) = pack("2");
    let sent = proxy.body_bytes.load(SeqCst) - before;
    assert!(sent < 4096, "{sent} bytes sent on the second pack: {err}");
    assert_eq!(blob_events(&err, "skipped"), 2, "{err}");
    assert!(!err.contains("uploading while packing"), "{err}");
    assert_eq!(
        skopeo_digest(&format!("docker://{}/lab/stream:2", reg.addr), None),
        skopeo_digest(&format!("docker://{}/lab/stream:1", reg.addr), None)
    );
}

/// When the upload that runs while packing breaks, the finished layer is uploaded the
/// ordinary way and the push completes with an intact image.
fn a_broken_upload_while_packing_falls_back_to_the_finished_layer() {
    let t = tempfile::tempdir().unwrap();
    let disk = random_qcow2(t.path(), 24);
    let (reg, proxy) = faulty_registry(Faults {
        // The first blob upload request is the layer's, sent while packing.
        resets: 1,
        reset_after: Some(2 << 20),
        ..Faults::default()
    });
    let out = common::diskforge()
        .arg("pack")
        .arg(&disk)
        .args(["--tls-verify=false", "--output"])
        .arg(format!("docker://{}/lab/broken:1", proxy.addr))
        .env("XDG_CACHE_HOME", t.path().join("xdg"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        proxy.resets_done.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(
        err.contains("uploading the layer while packing did not work"),
        "{err}"
    );
    copies_back_intact(
        &format!("{}/lab/broken:1", reg.addr),
        &t.path().join("copy"),
    );
}

/// skopeo copies `reference` into an OCI layout in `dir`, checking every blob against
/// its digest.
fn copies_back_intact(reference: &str, dir: &Path) {
    Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:x", dir.display()))
        .succeeds();
}

/// Ctrl-C while the layer is being packed and uploaded at once: exit 130, no fallback
/// upload, no tag in the registry, and no half-written blob in the layout beside.
fn ctrl_c_while_uploading_during_packing_leaves_no_tag_and_no_partial_blob() {
    let reg = Registry::start(None);
    let t = tempfile::tempdir().unwrap();
    // 2 GiB of zeros packed without compression: packing and uploading take long enough
    // to interrupt in the middle, and the disk is cheap to make.
    let disk = sparse_zeros(t.path(), 2 << 30);
    let layout = t.path().join("layout");
    let dest = format!("docker://{}/lab/cut-while-packing:1", reg.addr);
    let child = common::diskforge()
        .args(["--json-events", "pack"])
        .arg(&disk)
        .args(["--compression", "none", "--tls-verify=false", "--output"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg("--output")
        .arg(&dest)
        .env("XDG_CACHE_HOME", t.path().join("xdg"))
        .spawned();
    // Interrupt once the registry holds part of the layer, which the packer is still
    // writing (its blob has no name in the layout yet).
    let blobs = layout.join("blobs/sha256");
    let err = interrupted_mid_upload(child, &reg);
    assert!(
        !err.contains("uploading it now") && !err.contains("retrying"),
        "an interruption is neither a fallback nor a retry: {err}"
    );
    assert!(
        !err.contains("\"event\":\"packed\""),
        "packing finished before the interruption; the test proves nothing: {err}"
    );
    assert_no_tag(&dest, "the tag exists after Ctrl-C");
    let leftovers: Vec<_> = std::fs::read_dir(&blobs)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(leftovers.is_empty(), "left in the layout: {leftovers:?}");
}

/// An HTTPS registry (verified with --cert-dir) whose uploads go on at a plain-HTTP
/// address (its `http.host` says so): the upload is refused before anything — the
/// credential least of all — goes over plain HTTP.
fn an_https_registry_cannot_move_an_upload_to_plain_http() {
    let t = tempfile::tempdir().unwrap();
    let (l, _) = layout(t.path(), 1);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let other = common::hostile::FakeServer::start_on("127.0.0.2", move |r, c| {
        s2.lock().unwrap().push(r.clone());
        common::hostile::head(
            c,
            "500 Internal Server Error",
            &[("Content-Length", "0".into())],
        );
    });
    let password = "Tl5-Pa55word-Downgrade";
    let (reg, ca) = Registry::start_tls_with(
        Some(("ci", password)),
        Some(&format!("http://{}", other.addr)),
    );
    let certs = t.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), ca).unwrap();
    let started = std::time::Instant::now();
    let out = common::diskforge()
        .args(["--json-events", "push"])
        .arg(format!("{}:v1", l.display()))
        .arg(format!("docker://{}/lab/tls:1", reg.addr))
        .args(["--creds", &format!("ci:{password}"), "--cert-dir"])
        .arg(&certs)
        .env("XDG_CACHE_HOME", t.path().join("xdg"))
        .env_remove("DISKFORGE_CREDS")
        .env_remove("DOCKER_CONFIG")
        .env_remove("REGISTRY_AUTH_FILE")
        .output()
        .unwrap();
    let took = started.elapsed();
    common::events::check(&out.stderr);
    let msg = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(took < std::time::Duration::from_secs(60), "took {took:?}");
    // The registry did hand out the plain-HTTP location.
    assert!(
        reg.count(&["POST", "/blobs/uploads/"]) >= 1,
        "{}",
        reg.log_text()
    );
    let reached = seen.lock().unwrap().clone();
    assert!(
        reached.is_empty(),
        "requests went over plain HTTP to {}: {reached:?}",
        other.addr
    );
    assert!(msg.contains("does not downgrade"), "{msg}");
    assert!(!msg.contains(password), "{msg}");
    assert!(common::temp_files(t.path()).is_empty());
    // Nothing was tagged.
    assert_eq!(reg.count(&["PUT", "/manifests/"]), 0, "{}", reg.log_text());
}

crate::tests! {
    fn push_skips_present_blobs_and_mounts_across_repositories [TOOLS];
    fn push_survives_connection_resets_and_503s [TOOLS];
    fn a_300_mb_push_at_0_8_mb_per_s_completes_and_a_refused_chunk_resumes [TOOLS] ignore "six minutes on a throttled link; ci/test.sh runs it beside the other tests";
    fn a_chunk_cut_mid_body_is_sent_again_and_the_push_completes [TOOLS];
    fn a_request_may_outlast_the_timeout_while_bytes_flow [TOOLS];
    fn a_refused_first_chunk_starts_the_upload_over [TOOLS];
    fn a_refused_tag_is_reported_with_where_every_tag_points [TOOLS];
    fn basic_auth_from_creds_and_auth_file_and_wrong_creds_fail_cleanly [TOOLS];
    fn ctrl_c_during_a_push_leaves_no_tag_and_a_second_push_completes [&["docker-registry", "skopeo", "qemu-img"]];
    fn pack_uploads_the_layer_while_packing_and_the_same_disk_again_uploads_nothing [TOOLS];
    fn a_broken_upload_while_packing_falls_back_to_the_finished_layer [TOOLS];
    fn ctrl_c_while_uploading_during_packing_leaves_no_tag_and_no_partial_blob [&["docker-registry", "skopeo", "qemu-img"]];
    fn an_https_registry_cannot_move_an_upload_to_plain_http [&["qemu-img", "docker-registry", "openssl", "htpasswd"]];
}
