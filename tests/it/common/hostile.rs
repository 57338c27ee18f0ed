//! Hostile peers and inputs for the security tests: OCI layouts built by hand with
//! whatever tar entries a test wants, and a fake HTTP server whose handler writes raw
//! responses (huge bodies, a byte now and then, bogus headers).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;

use sha2::Digest as _;

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// One raw tar header (ustar) with `name` written as given, unchecked.
pub fn tar_header(name: &str, kind: u8, size: u64, uid: u64, mode: u32) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.as_bytes();
    h[..n.len().min(100)].copy_from_slice(&n[..n.len().min(100)]);
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{:0w$o}\0", v, w = len - 1);
        h[at..at + len].copy_from_slice(&s.as_bytes()[s.len() - len..]);
    };
    octal(&mut h, 100, 8, mode as u64);
    octal(&mut h, 108, 8, uid);
    octal(&mut h, 116, 8, uid);
    if size < 0o77777777777 {
        octal(&mut h, 124, 12, size);
    } else {
        // base-256, as GNU tar writes large sizes
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h, 136, 12, 946_684_800);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// A link entry's header (`kind` b'1' hard, b'2' symbolic) pointing at `target`.
pub fn link_header(name: &str, kind: u8, target: &str) -> [u8; 512] {
    let mut h = tar_header(name, kind, 0, 107, 0o777);
    let t = target.as_bytes();
    h[157..157 + t.len().min(100)].copy_from_slice(&t[..t.len().min(100)]);
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A tar stream from entries (name, type, content, uid, mode); data padded to blocks.
pub fn tar(entries: &[(&str, u8, &[u8], u64, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data, uid, mode) in entries {
        out.extend_from_slice(&tar_header(name, *kind, data.len() as u64, *uid, *mode));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Writes an OCI layout at `dir` with one image (tag `t`) whose single uncompressed
/// layer is `layer`; `declared_size` overrides the layer's size in the manifest.
pub fn layout_with_layer(dir: &Path, layer: &[u8], declared_size: Option<u64>) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| -> String {
        let d = sha(data);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), data).unwrap();
        d
    };
    let layer_digest = put(layer);
    let layer = serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": layer_digest, "size": declared_size.unwrap_or(layer.len() as u64)});
    finish_layout(dir, &layer_digest, layer);
}

/// Writes the config (with `diff_id`), the manifest of one layer (`layer`, its
/// descriptor; the blob is already in place) and the index tagging it `t` into the OCI
/// layout at `dir`.
pub fn finish_layout(dir: &Path, diff_id: &str, layer: serde_json::Value) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| -> String {
        let d = sha(data);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), data).unwrap();
        d
    };
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}});
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [layer],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = put(&manifest);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
        "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "t"},
        "platform": {"os": "linux", "architecture": "amd64"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// An OCI layout at `layout` (tag `t`) whose one uncompressed layer holds `disk` as a
/// containerDisk holds it: `disk/disk.qcow2` owned by 107, mode 0440.
pub fn disk_image(layout: &Path, disk: &Path) {
    let bytes = std::fs::read(disk).unwrap();
    layout_with_layer(
        layout,
        &tar(&[
            ("disk/", b'5', b"", 107, 0o555),
            ("disk/disk.qcow2", b'0', &bytes, 107, 0o440),
        ]),
        None,
    );
}

/// A request as the fake server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
}

type Handler = dyn Fn(&Request, &mut TcpStream) + Send + Sync;

/// A fake HTTP/1.1 server on loopback; the handler writes the whole raw response and
/// the connection is closed after it. A TLS handshake (a client probing for HTTPS) is
/// hung up on at once, as a plain-HTTP server's refusal would be.
pub struct FakeServer {
    pub addr: String,
}

impl FakeServer {
    pub fn start(handler: impl Fn(&Request, &mut TcpStream) + Send + Sync + 'static) -> FakeServer {
        FakeServer::start_on("127.0.0.1", handler)
    }

    /// The same on another loopback address (`127.0.0.2`: another host to a client).
    pub fn start_on(
        ip: &str,
        handler: impl Fn(&Request, &mut TcpStream) + Send + Sync + 'static,
    ) -> FakeServer {
        assert!(
            ip.starts_with("127."),
            "test servers listen on loopback only"
        );
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handler: Arc<Handler> = Arc::new(handler);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { continue };
                let h = handler.clone();
                std::thread::spawn(move || {
                    let mut first = [0u8; 1];
                    if matches!(c.peek(&mut first), Ok(1) if first[0] == 0x16) {
                        return;
                    }
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let mut line = String::new();
                    if r.read_line(&mut line).is_err() {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or("").to_string();
                    let path = parts.next().unwrap_or("").to_string();
                    let mut headers = BTreeMap::new();
                    loop {
                        let mut l = String::new();
                        if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    h(
                        &Request {
                            method,
                            path,
                            headers,
                        },
                        &mut c,
                    );
                    let _ = c.flush();
                });
            }
        });
        FakeServer { addr }
    }
}

/// Writes a response head.
pub fn head(c: &mut TcpStream, status: &str, headers: &[(&str, String)]) {
    let mut s = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    let _ = c.write_all(s.as_bytes());
}

/// Runs `cmd` under `/usr/bin/time` and returns (output, peak RSS in KiB). A command
/// still running after `limit` is killed (with everything it started) and the test
/// fails: a hostile peer that makes diskforge hang must fail the suite, not stall it.
pub fn with_peak_rss(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
) -> (std::process::Output, u64) {
    use std::os::unix::process::CommandExt;
    use wait_timeout::ChildExt;
    let prog = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("rss");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut t = std::process::Command::new("/usr/bin/time");
    t.arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&marker)
        .arg(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .process_group(0);
    if let Some(d) = cmd.get_current_dir() {
        t.current_dir(d);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    let mut child = t.spawn().unwrap();
    let status = match child.wait_timeout(limit).unwrap() {
        Some(status) => status,
        None => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!(
                "{cmd:?} was still running after {limit:?}: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
    };
    let rss = std::fs::read_to_string(&marker)
        .unwrap_or_default()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    assert!(rss > 0, "/usr/bin/time recorded no peak RSS for {cmd:?}");
    let out = std::process::Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    };
    (out, rss)
}
