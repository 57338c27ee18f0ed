//! Hostile images, registries, guests and recipes, probed on loopback: each test is an
//! attack that worked once, and must now fail cleanly, within bounded time and memory,
//! without touching anything outside diskforge's own scratch space.

use crate::common;
use common::Run;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::hostile::{head, layout_with_layer, tar, with_peak_rss, FakeServer};

use common::diskforge_tcg as df;

use common::text;

/// A small real qcow2 disk's bytes.
/// `diskforge <args> oci:<layout>:t` with `scratch` as its work directory.
fn on_image(scratch: &Path, args: &[&str], layout: &Path) -> std::process::Output {
    df().arg("--work-dir")
        .arg(scratch)
        .args(args)
        .arg(format!("oci:{}:t", layout.display()))
        .output()
        .unwrap()
}

/// The commands that read a disk out of an image, each given the image last.
const READERS: [&[&str]; 2] = [&["verify"], &["run", "--check", "--timeout", "5"]];

/// An empty work directory `dir/scratch-NAME`.
fn scratch_dir(dir: &Path, name: &str) -> PathBuf {
    let scratch = dir.join(format!("scratch-{name}"));
    std::fs::create_dir(&scratch).unwrap();
    scratch
}

/// `diskforge verify oci:<layout>:t`.
fn verify(layout: &Path) -> std::process::Output {
    df().arg("verify")
        .arg(format!("oci:{}:t", layout.display()))
        .output()
        .unwrap()
}

/// `diskforge pack DISK -o oci:<dir>/o`.
fn pack_into_o(dir: &Path, disk: &Path) -> std::process::Output {
    df().arg("pack")
        .arg(disk)
        .arg("-o")
        .arg(format!("oci:{}", dir.join("o").display()))
        .output()
        .unwrap()
}

/// Response headers of an OCI image manifest of `len` bytes.
fn manifest_head(c: &mut std::net::TcpStream, len: String) {
    head(
        c,
        "200 OK",
        &[
            (
                "Content-Type",
                "application/vnd.oci.image.manifest.v1+json".into(),
            ),
            ("Content-Length", len),
        ],
    );
}

fn qcow2(dir: &Path) -> Vec<u8> {
    std::fs::read(common::disk::qcow2(dir, "small.qcow2", "8M")).unwrap()
}

fn layer_entries_cannot_write_outside_the_scratch_dir() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path());
    let victim = std::env::temp_dir().join(format!("diskforge-escape-{}", std::process::id()));
    let _ = std::fs::remove_file(&victim);
    let escape = format!("disk/../../../../../../..{}", victim.display());
    let abs = format!("disk/{}", victim.display());
    for (name, path) in [("dotdot", escape.as_str()), ("double-slash", abs.as_str())] {
        let layout = t.path().join(name);
        let layer = tar(&[
            ("disk/", b'5', b"", 107, 0o555),
            (path, b'0', &disk, 107, 0o440),
        ]);
        layout_with_layer(&layout, &layer, None);
        let scratch = scratch_dir(t.path(), name);
        for args in READERS {
            let out = on_image(&scratch, args, &layout);
            let msg = text(&out);
            assert!(!out.status.success(), "{args:?} accepted {path}: {msg}");
            assert!(
                msg.contains("unsafe path") || msg.contains("not a containerDisk"),
                "{msg}"
            );
            assert!(
                !victim.exists(),
                "{args:?} wrote {} through {path}",
                victim.display()
            );
        }
        assert_eq!(
            common::occurrences_in_tree(&scratch, b"QFI\xfb"),
            0,
            "the escaping entry was extracted somewhere"
        );
    }
    // verify names it a contract violation (exit 4).
    df().arg("verify")
        .arg(format!("oci:{}:t", t.path().join("dotdot").display()))
        .exits(4);
}

/// Absolute entries and links in a layer: `verify` and `run` name them, write nothing
/// through them, and `verify` exits 4.
fn absolute_entries_and_links_in_a_layer_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path());
    let victim = std::env::temp_dir().join(format!("diskforge-abs-{}", std::process::id()));
    let _ = std::fs::remove_file(&victim);
    let dir = common::hostile::tar_header("disk/", b'5', 0, 107, 0o555);
    let end = [0u8; 1024];
    let with = |entries: &[&[u8]]| -> Vec<u8> {
        let mut out = dir.to_vec();
        for e in entries {
            out.extend_from_slice(e);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&end);
        out
    };
    let abs_header = common::hostile::tar_header(
        &victim.display().to_string(),
        b'0',
        disk.len() as u64,
        107,
        0o440,
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "absolute",
            with(&[&abs_header, &disk]),
            "unsafe path (absolute path)",
        ),
        (
            "symlink",
            with(&[&common::hostile::link_header(
                "disk/disk.qcow2",
                b'2',
                "/etc/shadow",
            )]),
            "not a regular file (type l)",
        ),
        (
            "hardlink",
            with(&[&common::hostile::link_header(
                "disk/disk.qcow2",
                b'1',
                "/etc/shadow",
            )]),
            "not a regular file (type h)",
        ),
    ];
    for (name, layer, why) in cases {
        let layout = t.path().join(name);
        layout_with_layer(&layout, &layer, None);
        let scratch = scratch_dir(t.path(), name);
        for args in READERS {
            let out = on_image(&scratch, args, &layout);
            let msg = text(&out);
            assert!(
                !out.status.success(),
                "{args:?} accepted the {name} entry: {msg}"
            );
            assert!(msg.contains(why), "{name}, {args:?}: {msg}");
            if args == ["verify"] {
                assert_eq!(out.status.code(), Some(4), "{msg}");
            }
            assert!(!victim.exists(), "{args:?} wrote {}", victim.display());
        }
        assert_eq!(common::occurrences_in_tree(&scratch, b"QFI\xfb"), 0);
        let leftovers: Vec<_> = std::fs::read_dir(&scratch).unwrap().collect();
        assert!(
            leftovers.is_empty(),
            "{name}: left in the work dir: {leftovers:?}"
        );
    }
}

fn disks_that_reach_host_files_are_refused_everywhere() {
    let t = tempfile::tempdir().unwrap();
    let backed = t.path().join("backed.qcow2");
    common::disk::overlay(&backed, Path::new("/etc/shadow"), "raw", Some("8M"));
    let datafile = t.path().join("datafile.qcow2");
    Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o"])
        .arg(format!(
            "data_file={},data_file_raw=on",
            t.path().join("data.raw").display()
        ))
        .arg(&datafile)
        .arg("8M")
        .succeeds();
    let vmdk = t.path().join("desc.vmdk");
    std::fs::write(
        &vmdk,
        "# Disk DescriptorFile\nversion=1\nRW 8 FLAT \"/etc/shadow\" 0\n",
    )
    .unwrap();
    for (disk, why) in [
        (&backed, "backing file"),
        (&datafile, "data"),
        (&vmdk, "vmdk"),
    ] {
        // pack refuses it
        let out = pack_into_o(t.path(), disk);
        assert!(
            !out.status.success() && text(&out).contains(why),
            "pack: {}",
            text(&out)
        );
        // run refuses it as a file
        let out = df()
            .args(["run", "--check", "--timeout", "5"])
            .arg(disk)
            .output()
            .unwrap();
        assert!(
            !out.status.success() && text(&out).contains(why),
            "run: {}",
            text(&out)
        );
        // verify refuses it inside an image (a layout built by hand)
        let layout = t.path().join(format!("img-{}", why.replace(' ', "-")));
        common::hostile::disk_image(&layout, disk);
        let out = df()
            .arg("verify")
            .arg(format!("oci:{}:t", layout.display()))
            .exits(4);
        common::assert_says(&out, why);
    }
}

fn pack_refuses_links_text_files_and_odd_sizes() {
    let t = tempfile::tempdir().unwrap();
    let link = t.path().join("link.img");
    std::os::unix::fs::symlink("/etc/shadow", &link).unwrap();
    let txt = t.path().join("hello.img");
    std::fs::write(&txt, "hello\n").unwrap();
    let odd = t.path().join("odd.img");
    std::fs::write(&odd, vec![0u8; (2 << 20) + 100]).unwrap();
    for (p, why) in [
        (&link, "not a regular file"),
        (&txt, "too small"),
        (&odd, "512-byte sectors"),
    ] {
        let out = pack_into_o(t.path(), p);
        assert!(!out.status.success(), "{} was packed", p.display());
        common::assert_says(&out, why);
    }
    assert!(
        !t.path().join("o").exists(),
        "a refused disk left a layout behind"
    );
}

fn layout_blobs_must_match_their_descriptors() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path());
    let layer = tar(&[
        ("disk/", b'5', b"", 107, 0o555),
        ("disk/disk.qcow2", b'0', &disk, 107, 0o440),
    ]);
    // The layer blob says 10 GB for a few hundred KB.
    let big = t.path().join("big");
    layout_with_layer(&big, &layer, Some(10_000_000_000));
    let out = verify(&big);
    assert!(
        !out.status.success() && text(&out).contains("descriptor says 10000000000"),
        "{}",
        text(&out)
    );
    // Same size, other bytes under the digest's name.
    let tampered = t.path().join("tampered");
    layout_with_layer(&tampered, &layer, None);
    let blob = std::fs::read_dir(tampered.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() == layer.len() as u64)
        .unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n - 2000] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let out = verify(&tampered);
    assert!(
        !out.status.success() && text(&out).contains("does not match its digest"),
        "{}",
        text(&out)
    );
}

/// A registry whose manifest is `manifest` bytes and whose config and first layer are
/// served by `blob`.
fn fake_registry(
    manifest: &'static [u8],
    blob: impl Fn(&str, &mut std::net::TcpStream) + Send + Sync + 'static,
) -> FakeServer {
    FakeServer::start(move |r, c| {
        if r.path == "/v2/" {
            head(c, "200 OK", &[("Content-Length", "0".into())]);
        } else if r.path.contains("/manifests/") {
            manifest_head(c, manifest.len().to_string());
            let _ = c.write_all(manifest);
        } else if let Some(d) = r.path.split("/blobs/").nth(1) {
            blob(d, c);
        } else {
            head(c, "404 Not Found", &[("Content-Length", "0".into())]);
        }
    })
}

/// A minimal valid image config.
const CONFIG: &[u8] =
    br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;

fn manifest_with(config_size: u64, layer_size: u64) -> &'static [u8] {
    use sha2::Digest as _;
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let config_digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(CONFIG)));
    let m = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d('a'), "size": layer_size}]});
    Box::leak(serde_json::to_vec(&m).unwrap().into_boxed_slice())
}

/// Streams `n` zero bytes (never held in memory by the server either).
fn zeros(c: &mut std::net::TcpStream, n: u64) {
    let buf = vec![0u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        if c.write_all(&buf[..k]).is_err() {
            return;
        }
        left -= k as u64;
    }
}

fn hostile_registries_cost_bounded_memory_and_time() {
    // 1. A 3 GiB manifest.
    let huge_manifest = FakeServer::start(|r, c| {
        if r.path == "/v2/" {
            head(c, "200 OK", &[("Content-Length", "0".into())]);
        } else {
            head(
                c,
                "200 OK",
                &[(
                    "Content-Type",
                    "application/vnd.oci.image.manifest.v1+json".into(),
                )],
            );
            zeros(c, 3 << 30);
        }
    });
    // 2. A config that claims and sends 3 GiB.
    let huge_config = fake_registry(manifest_with(3 << 30, 1024), |_, c| {
        head(c, "200 OK", &[("Content-Length", (3u64 << 30).to_string())]);
        zeros(c, 3 << 30);
    });
    // 3. A layer whose first tar header claims 2^64-1 bytes (the walk used to loop).
    let tar_bomb = fake_registry(manifest_with(CONFIG.len() as u64, 1 << 20), |d, c| {
        if !d.starts_with("sha256:aaaa") {
            head(c, "200 OK", &[("Content-Length", CONFIG.len().to_string())]);
            let _ = c.write_all(CONFIG);
            return;
        }
        let mut h = common::hostile::tar_header("junk", b'0', u64::MAX - 10, 0, 0o644).to_vec();
        h.extend_from_slice(&common::hostile::tar_header(
            "disk/disk.qcow2",
            b'0',
            1 << 20,
            107,
            0o440,
        ));
        h.resize(64 << 10, 0);
        head(
            c,
            "206 Partial Content",
            &[("Content-Length", h.len().to_string())],
        );
        let _ = c.write_all(&h);
    });
    // 4. A registry that sends one byte every 2 s.
    let trickle = FakeServer::start(|r, c| {
        if r.path == "/v2/" {
            head(c, "200 OK", &[("Content-Length", "0".into())]);
            return;
        }
        manifest_head(c, "1000000".into());
        for _ in 0..500 {
            if c.write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    for (server, what) in [
        (&huge_manifest, "larger than"),
        (&huge_config, "more than"),
        (&tar_bomb, "Disk:"),
        (&trickle, "within"),
    ] {
        let started = Instant::now();
        let (out, rss_kib) = with_peak_rss(
            df().args(["inspect", "--tls-verify=false", "--registry-timeout", "5"])
                .arg(format!("docker://{}/lab/x:1", server.addr)),
            Duration::from_secs(120),
        );
        let took = started.elapsed();
        let msg = text(&out);
        assert!(msg.contains(what), "{}: {msg}", server.addr);
        assert!(rss_kib < 100 << 10, "{what}: peak RSS {rss_kib} KiB");
        assert!(took < Duration::from_secs(60), "{what}: took {took:?}");
        eprintln!("{what}: {took:?}, peak RSS {} MiB", rss_kib >> 10);
    }
}

fn retry_after_is_honoured_with_a_cap() {
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s2 = served.clone();
    let started = Instant::now();
    let server = FakeServer::start(move |r, c| {
        if r.path == "/v2/" {
            head(c, "200 OK", &[("Content-Length", "0".into())]);
            return;
        }
        if s2.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            head(
                c,
                "429 Too Many Requests",
                &[("Retry-After", "3".into()), ("Content-Length", "0".into())],
            );
            return;
        }
        head(c, "404 Not Found", &[("Content-Length", "0".into())]);
    });
    let out = df()
        .args(["--json-events", "inspect", "--tls-verify=false"])
        .arg(format!("docker://{}/lab/x:1", server.addr))
        .output()
        .unwrap();
    let took = started.elapsed();
    let msg = text(&out);
    assert!(
        msg.contains("\"event\":\"retry\"") && msg.contains("\"wait_ms\":3000"),
        "{msg}"
    );
    assert!(
        took >= Duration::from_secs(3),
        "did not wait for Retry-After: {took:?}"
    );
    assert!(msg.contains("does not exist"), "{msg}");
}

/// A fake ttyd: its page, then a WebSocket upgrade answered with one frame of `claim`
/// bytes (the header says so; `send` bytes of it follow).
fn hostile_terminal(claim: u64, send: usize) -> FakeServer {
    FakeServer::start(move |r, c| {
        if r.headers
            .get("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        {
            let key = r
                .headers
                .get("sec-websocket-key")
                .cloned()
                .unwrap_or_default();
            use base64::Engine;
            use sha1::Digest;
            let accept = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(
                format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
            ));
            let _ = c.write_all(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: tty\r\n\r\n").as_bytes());
            let mut frame = vec![0x82u8, 127];
            frame.extend_from_slice(&claim.to_be_bytes());
            frame.push(b'0');
            frame.resize(frame.len() + send.saturating_sub(1), b'x');
            let _ = c.write_all(&frame);
            std::thread::sleep(Duration::from_secs(2));
        } else {
            head(c, "200 OK", &[("Content-Length", "20".into())]);
            let _ = c.write_all(b"<title>ttyd</title> ");
        }
    })
}

/// A frame claiming 2^62 bytes, and a whole 2 MiB one: the probe refuses both before
/// reading them, at its own 1 MiB limit (the WebSocket library's default, 16 MiB, would
/// take the second).
fn a_hostile_terminal_cannot_make_the_probe_allocate() {
    for (claim, send) in [(1u64 << 62, 4096), (2 << 20, 2 << 20)] {
        let server = hostile_terminal(claim, send);
        let port: u16 = server.addr.rsplit(':').next().unwrap().parse().unwrap();
        let page = diskforge::vm::probe::http_get(port, "/", None).unwrap();
        assert!(page.contains("ttyd"));
        let mut t = diskforge::vm::probe::Terminal::connect(port, None).unwrap();
        let e = t.read_output(Duration::from_secs(5)).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("too long") || e.contains("Capacity"),
            "a {claim}-byte frame: {e}"
        );
    }
}

fn a_huge_ttyd_page_is_refused() {
    let server = FakeServer::start(|_, c| {
        head(c, "200 OK", &[("Content-Length", (2u64 << 30).to_string())]);
        zeros(c, 2 << 30);
    });
    let port: u16 = server.addr.rsplit(':').next().unwrap().parse().unwrap();
    let e = diskforge::vm::probe::http_get(port, "/", None).unwrap_err();
    assert!(format!("{e:#}").contains("more than"), "{e:#}");
}

/// Every request a fake server saw, shared with the test.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<common::hostile::Request>>>;

/// A small pushable layout (tag `t`) under `dir`.
fn small_layout(dir: &Path) -> std::path::PathBuf {
    let layout = dir.join("layout");
    let disk = qcow2(dir);
    let layer = tar(&[
        ("disk/", b'5', b"", 107, 0o555),
        ("disk/disk.qcow2", b'0', &disk, 107, 0o440),
    ]);
    layout_with_layer(&layout, &layer, None);
    layout
}

/// `diskforge --json-events push LAYOUT:t DEST` with `extra` options, credentials only
/// from the command line, the cache under `dir`; killed after 120 s.
fn push_with(dir: &Path, layout: &Path, dest: &str, extra: &[&str]) -> std::process::Output {
    let (out, _) = with_peak_rss(
        df().args(["--json-events", "push"])
            .arg(format!("{}:t", layout.display()))
            .arg(dest)
            .args(extra)
            .env("XDG_CACHE_HOME", dir.join("xdg"))
            .env("HOME", dir)
            .env_remove("DISKFORGE_CREDS")
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("XDG_CONFIG_HOME"),
        Duration::from_secs(120),
    );
    out
}

fn credentials_never_follow_an_upload_location_to_another_host() {
    let t = tempfile::tempdir().unwrap();
    let layout = small_layout(t.path());
    let password = "Upl0ad-Pa55word-QZX";
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("ci:{password}"),
    );
    let basic_shown = basic.clone();
    // The other host: records what reaches it and wants credentials of its own.
    let other_seen: Seen = Default::default();
    let seen = other_seen.clone();
    let other = FakeServer::start_on("127.0.0.2", move |r, c| {
        seen.lock().unwrap().push(r.clone());
        head(
            c,
            "401 Unauthorized",
            &[
                ("WWW-Authenticate", "Basic realm=\"other\"".into()),
                ("Content-Length", "0".into()),
            ],
        );
    });
    // The registry: Basic auth, and every upload it starts goes on at the other host.
    let location = format!("http://{}/v2/lab/x/blobs/uploads/u1?_state=s", other.addr);
    let registry = FakeServer::start(move |r, c| {
        let authorized =
            r.headers.get("authorization").map(String::as_str) == Some(&format!("Basic {basic}"));
        if !authorized {
            head(
                c,
                "401 Unauthorized",
                &[
                    ("WWW-Authenticate", "Basic realm=\"stand-in\"".into()),
                    ("Content-Length", "0".into()),
                ],
            );
        } else if r.path == "/v2/" {
            head(c, "200 OK", &[("Content-Length", "0".into())]);
        } else if r.method == "POST" && r.path.starts_with("/v2/lab/x/blobs/uploads/") {
            head(
                c,
                "202 Accepted",
                &[
                    ("Location", location.clone()),
                    ("Content-Length", "0".into()),
                ],
            );
        } else {
            head(c, "404 Not Found", &[("Content-Length", "0".into())]);
        }
    });
    let started = Instant::now();
    let out = push_with(
        t.path(),
        &layout,
        &format!("docker://{}/lab/x:1", registry.addr),
        &["--tls-verify=false", "--creds", &format!("ci:{password}")],
    );
    let took = started.elapsed();
    let msg = text(&out);
    common::events::check(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(took < Duration::from_secs(60), "took {took:?}: {msg}");
    let reached = other_seen.lock().unwrap().clone();
    assert!(
        !reached.is_empty(),
        "the upload never went to the Location: {msg}"
    );
    for r in &reached {
        assert!(
            !r.headers.contains_key("authorization"),
            "{} {} reached {} with the registry's credential: {:?}",
            r.method,
            r.path,
            other.addr,
            r.headers
        );
    }
    assert!(
        msg.contains("sends the credential only to"),
        "the refusal does not say why: {msg}"
    );
    assert!(
        !msg.contains(password) && !msg.contains(&basic_shown),
        "{msg}"
    );
    assert!(common::temp_files(t.path()).is_empty());
}

fn a_bearer_token_echoed_by_a_registry_is_masked_everywhere() {
    let token = "tok-7f3a9c1e5b2d8f4a6c0e";
    let issued: Seen = Default::default();
    let i2 = issued.clone();
    let token_server = FakeServer::start(move |r, c| {
        i2.lock().unwrap().push(r.clone());
        let body = format!("{{\"token\":\"{token}\",\"expires_in\":300}}");
        head(
            c,
            "200 OK",
            &[
                ("Content-Type", "application/json".into()),
                ("Content-Length", body.len().to_string()),
            ],
        );
        let _ = c.write_all(body.as_bytes());
    });
    let realm = format!("http://{}/token", token_server.addr);
    // The registry asks for a token, then echoes the Authorization it got in an error.
    let registry = FakeServer::start(move |r, c| {
        let Some(auth) = r.headers.get("authorization") else {
            head(
                c,
                "401 Unauthorized",
                &[
                    (
                        "WWW-Authenticate",
                        format!("Bearer realm=\"{realm}\",service=\"stand-in\""),
                    ),
                    ("Content-Length", "0".into()),
                ],
            );
            return;
        };
        let body = format!(
            "{{\"errors\":[{{\"code\":\"DENIED\",\"message\":\"{auth} may not read this\"}}]}}"
        );
        head(
            c,
            "400 Bad Request",
            &[
                ("Content-Type", "application/json".into()),
                ("Content-Length", body.len().to_string()),
            ],
        );
        let _ = c.write_all(body.as_bytes());
    });
    let t = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (out, _) = with_peak_rss(
        df().args(["--json-events", "-v", "inspect", "--tls-verify=false"])
            .arg(format!("docker://{}/lab/x:1", registry.addr))
            .env("XDG_CACHE_HOME", t.path().join("xdg"))
            .env("HOME", t.path())
            .env_remove("DISKFORGE_CREDS")
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE"),
        Duration::from_secs(120),
    );
    let took = started.elapsed();
    let msg = text(&out);
    common::events::check(&out.stderr);
    assert!(!issued.lock().unwrap().is_empty(), "no token was issued");
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(
        msg.contains("DENIED") && msg.contains("Bearer ***"),
        "the registry's error is not shown (masked): {msg}"
    );
    assert!(!msg.contains(token), "the token leaked: {msg}");
    assert!(msg.contains("\"event\":\"error\""), "no error event: {msg}");
    assert!(common::temp_files(t.path()).is_empty());
}

fn a_recipe_name_or_a_reference_cannot_steer_where_images_go() {
    let t = tempfile::tempdir().unwrap();
    let cwd = t.path().join("a/b");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::write(cwd.join("base.qcow2"), qcow2(t.path())).unwrap();
    std::fs::write(
        cwd.join("recipe.yaml"),
        "name: ../../x\nbase: {path: base.qcow2}\n",
    )
    .unwrap();
    std::fs::write(cwd.join("ok.yaml"), "base: {path: base.qcow2}\n").unwrap();
    let layout = small_layout(t.path());
    let run = |args: &[&str]| {
        let started = Instant::now();
        let (out, _) = with_peak_rss(
            df().arg("--json-events")
                .args(args)
                .current_dir(&cwd)
                .env("DISKFORGE_CACHE_DIR", t.path().join("cache"))
                .env("DISKFORGE_WORK_DIR", t.path().join("work"))
                .env("XDG_CACHE_HOME", t.path().join("xdg")),
            Duration::from_secs(120),
        );
        assert!(started.elapsed() < Duration::from_secs(30), "{args:?}");
        common::events::check(&out.stderr);
        let msg = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {msg}");
        assert!(msg.contains("\"exit_code\":2"), "{args:?}: {msg}");
        msg
    };
    for cmd in ["plan", "build"] {
        let msg = run(&[cmd, "recipe.yaml"]);
        assert!(
            msg.contains("recipe.yaml:1:1: name: \"../../x\" is not a plain image name"),
            "{cmd}: {msg}"
        );
    }
    // Without `name:`, the file name stands in for it, and must be as plain.
    std::fs::write(cwd.join("...yaml"), "base: {path: base.qcow2}\n").unwrap();
    let (out, _) = with_peak_rss(
        df().args(["plan", "...yaml"])
            .current_dir(&cwd)
            .env("DISKFORGE_CACHE_DIR", t.path().join("cache"))
            .env("DISKFORGE_WORK_DIR", t.path().join("work")),
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    common::assert_says(&out, "set `name:`");
    let disk = t.path().join("small.qcow2");
    let disk = disk.to_str().unwrap();
    let layout_tag = format!("{}:t", layout.display());
    for args in [
        &["inspect", "docker://127.0.0.1:1/Lab/x:1"][..],
        &["push", &layout_tag, "docker://127.0.0.1:1/lab/x:bad tag!"],
        &["pack", disk, "-o", "docker://127.0.0.1:1/lab//x:1"],
        &["verify", "docker://127.0.0.1:1/lab/x@sha256:short"],
        &[
            "build",
            "ok.yaml",
            "--output",
            "docker://127.0.0.1:1/lab/{name}:a b",
        ],
    ] {
        let msg = run(args);
        assert!(msg.contains("is not an image reference"), "{args:?}: {msg}");
    }
    // Nothing was written anywhere: no image, no cache entry, no half-written file.
    for gone in ["x", "a/x", "a/b/out", "out"] {
        assert!(!t.path().join(gone).exists(), "{gone} was created");
    }
    fn files(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
    let cached = files(&t.path().join("cache"));
    assert!(cached.is_empty(), "the cache holds {cached:?}");
    assert!(common::temp_files(t.path()).is_empty());
}

fn an_ambiguous_checksum_file_is_refused_before_any_download() {
    let server = common::http::TestServer::start();
    let (good, bad) = ("a".repeat(64), "b".repeat(64));
    server.serve(
        "SHA256SUMS",
        format!("{good}  amd64/disk.qcow2\n{bad}  arm64/disk.qcow2\n").into_bytes(),
    );
    server.serve("disk.qcow2", vec![0u8; 4096]);
    let t = tempfile::tempdir().unwrap();
    std::fs::write(
        t.path().join("r.yaml"),
        format!(
            "base:\n  url: {}\n  checksum: {{url: {}}}\n",
            server.url("disk.qcow2"),
            server.url("SHA256SUMS")
        ),
    )
    .unwrap();
    let started = Instant::now();
    let (out, _) = with_peak_rss(
        df().args(["--json-events", "plan"])
            .arg(t.path().join("r.yaml"))
            .env("DISKFORGE_CACHE_DIR", t.path().join("cache"))
            .env("DISKFORGE_WORK_DIR", t.path().join("work")),
        Duration::from_secs(120),
    );
    let msg = text(&out);
    common::events::check(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        msg.contains(&format!("line 1 `{good}  amd64/disk.qcow2`"))
            && msg.contains(&format!("line 2 `{bad}  arm64/disk.qcow2`")),
        "both lines should be named: {msg}"
    );
    assert_eq!(server.count("disk.qcow2"), 0, "the image was downloaded");
    assert!(server.count("SHA256SUMS") >= 1);
    assert!(common::temp_files(t.path()).is_empty());
    assert!(
        !t.path().join("cache/blobs/sha256").exists()
            || std::fs::read_dir(t.path().join("cache/blobs/sha256"))
                .unwrap()
                .next()
                .is_none()
    );
}

/// A base's apt configuration is read on the host to fetch its packages there. Nothing
/// in it may make the host run a program: not the update hooks, not proxy
/// auto-detection, not download methods of its own. apt-get runs for real, with the
/// configuration diskforge writes, against a closed loopback port.
fn a_guests_apt_configuration_runs_nothing_on_the_host() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("host-apt");
    let etc = root.join("etc/apt");
    for d in ["apt.conf.d", "sources.list.d", "methods"] {
        std::fs::create_dir_all(etc.join(d)).unwrap();
    }
    for d in [
        "var/lib/dpkg",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    // A program of the host the configuration names, which must never run.
    let ran = t.path().join("ran");
    let program = t.path().join("program");
    std::fs::write(
        &program,
        format!("#!/bin/sh\necho \"$0 $*\" >> {}\n", ran.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = program.display();
    // A file of the host the configuration would have apt write over.
    let victim = t.path().join("victim");
    std::fs::write(&victim, "the host's\n").unwrap();
    std::fs::write(
        etc.join("apt.conf.d/99hostile"),
        format!(
            "APT::Update::Pre-Invoke {{ \"{p} pre\"; }};\n\
             APT::Update::Post-Invoke {{ \"{p} post\"; }};\n\
             APT::Update::Post-Invoke-Success {{ \"{p} success\"; }};\n\
             Acquire::http::Proxy-Auto-Detect \"{p}\";\n\
             Acquire::https::Proxy-Auto-Detect \"{p}\";\n\
             Dir::Bin::Methods \"{dir}\";\n\
             Dir::Bin::Methods::http \"{dir}/http\";\n\
             Dir::Cache::pkgcache \"{v}\";\n\
             Dir::Cache::srcpkgcache \"{v}\";\n\
             APT::Default-Release \"bookworm\";\n",
            dir = t.path().display(),
            v = victim.display(),
        ),
    )
    .unwrap();
    // A download method of the guest's, named like apt's own.
    std::fs::copy(&program, t.path().join("http")).unwrap();
    std::fs::write(
        etc.join("sources.list"),
        "deb [trusted=yes] http://127.0.0.1:9/debian bookworm main\n",
    )
    .unwrap();
    diskforge::guest::apt::write_config(&root, &["amd64".to_string()]).unwrap();
    let names = diskforge::sys::exec::PathNames::default();
    // What the guest sets is read, and only what decides the choice is taken over.
    let settings = diskforge::guest::apt::adopt_guest_settings(&root, &names).unwrap();
    assert!(settings.plain, "{settings:?}");
    // Connection refused: the update fails (a list it cannot fetch is an error, so the
    // guest fetches for itself), but every hook point was passed.
    let update = diskforge::guest::apt::update_cmd(&root, &names).run();
    assert!(update.is_err(), "an update that fetched nothing succeeded");
    assert!(
        !ran.exists(),
        "the guest's configuration ran a program of the host: {}",
        std::fs::read_to_string(&ran).unwrap_or_default()
    );
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "the host's\n",
        "the guest's configuration had apt write a file of the host"
    );
    // And the configuration apt reads is the guest's, under the root.
    let dump = diskforge::guest::apt::apt(&root, "apt-config", "dump", &names)
        .arg("dump")
        .run()
        .unwrap()
        .stdout_str();
    // apt's keys are case-insensitive, and its dump keeps the case they were set in.
    let value = |key: &str| {
        let prefix = format!("{} \"", key.to_ascii_lowercase());
        dump.lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim_end_matches("\";").to_string())
    };
    assert_eq!(
        value("Dir::Bin::Methods").as_deref(),
        Some("/usr/lib/apt/methods/")
    );
    assert_eq!(
        value("Dir::State::status"),
        Some(format!("{}/var/lib/dpkg/status", root.display()))
    );
    assert_eq!(value("APT::Architecture").as_deref(), Some("amd64"));
    assert_eq!(value("APT::Default-Release").as_deref(), Some("bookworm"));
    assert_eq!(
        value("Dir::Cache::pkgcache").as_deref(),
        Some("pkgcache.bin"),
        "{dump}"
    );
    assert!(
        !dump.contains(&program.display().to_string())
            && !dump.contains(&format!("\"{}\"", t.path().display()))
            && !dump.contains(&format!("{}/http", t.path().display()))
            && !dump.contains(&victim.display().to_string()),
        "the guest's programs or paths are still configured:\n{dump}"
    );
    // A setting that could change what apt chooses and is not taken over: the guest
    // then resolves from its full lists.
    std::fs::write(etc.join("apt.conf.d/50solver"), "APT::Solver \"aspcud\";\n").unwrap();
    diskforge::guest::apt::write_config(&root, &["amd64".to_string()]).unwrap();
    let settings = diskforge::guest::apt::adopt_guest_settings(&root, &names).unwrap();
    assert_eq!(settings.unknown, ["APT::Solver"], "{settings:?}");
    // A configuration that would read a file of the host is refused whole.
    std::fs::write(
        etc.join("apt.conf.d/60include"),
        format!("#include \"{}\";\n", victim.display()),
    )
    .unwrap();
    let e = diskforge::guest::apt::adopt_guest_settings(&root, &names).unwrap_err();
    assert!(format!("{e:#}").contains("#include"), "{e:#}");
}

crate::tests! {
    fn a_guests_apt_configuration_runs_nothing_on_the_host [&["apt-get", "apt-config"]];
    fn layer_entries_cannot_write_outside_the_scratch_dir [&["qemu-img"]];
    fn absolute_entries_and_links_in_a_layer_are_refused [&["qemu-img"]];
    fn disks_that_reach_host_files_are_refused_everywhere [&["qemu-img"]];
    fn pack_refuses_links_text_files_and_odd_sizes [&["qemu-img"]];
    fn layout_blobs_must_match_their_descriptors [&["qemu-img"]];
    fn hostile_registries_cost_bounded_memory_and_time [&["/usr/bin/time"]];
    fn retry_after_is_honoured_with_a_cap;
    fn a_hostile_terminal_cannot_make_the_probe_allocate;
    fn a_huge_ttyd_page_is_refused;
    fn credentials_never_follow_an_upload_location_to_another_host [&["qemu-img", "/usr/bin/time"]];
    fn a_bearer_token_echoed_by_a_registry_is_masked_everywhere [&["/usr/bin/time"]];
    fn a_recipe_name_or_a_reference_cannot_steer_where_images_go [&["qemu-img", "/usr/bin/time"]];
    fn an_ambiguous_checksum_file_is_refused_before_any_download [&["/usr/bin/time"]];
}
