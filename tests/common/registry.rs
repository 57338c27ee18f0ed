//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF distribution
//! registry) on a free loopback port, optionally with htpasswd basic auth. Its access
//! log is kept so tests can see which requests reached it. Killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Registry {
    child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// Starts a registry; with `auth`, `(user, password)` are the only valid credentials.
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cfg = format!(
            "version: 0.1\nlog: {{level: info, accesslog: {{disabled: false}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
            dir.path().join("data").display()
        );
        if let Some((u, p)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect("htpasswd (apache2-utils)");
            assert!(out.status.success());
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            cfg.push_str(&format!(
                "auth: {{htpasswd: {{realm: diskforge-test, path: {}}}}}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
        let log = dir.path().join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("starting docker-registry");
        let addr = format!("127.0.0.1:{port}");
        let r = Registry {
            child,
            addr,
            dir,
            log,
        };
        let t = Instant::now();
        while TcpStream::connect(&r.addr).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "docker-registry did not start: {}",
                r.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        r
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Number of logged requests whose line contains every needle.
    pub fn count(&self, needles: &[&str]) -> usize {
        self.log_text()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }
}

/// A loopback TCP proxy in front of a registry that injects faults into blob uploads:
/// `resets` connections cut in the middle of a large request body, and `unavailable`
/// requests answered with 503, each once per count, then it forwards faithfully.
pub struct FaultProxy {
    pub addr: String,
    pub resets_done: Arc<AtomicUsize>,
    pub unavailable_done: Arc<AtomicUsize>,
}

impl FaultProxy {
    pub fn start(upstream: &str, resets: usize, unavailable: usize) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let resets_done = Arc::new(AtomicUsize::new(0));
        let unavailable_done = Arc::new(AtomicUsize::new(0));
        let (r2, u2) = (resets_done.clone(), unavailable_done.clone());
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let (up, r3, u3) = (upstream.clone(), r2.clone(), u2.clone());
                std::thread::spawn(move || {
                    let _ = serve(client, &up, resets, unavailable, &r3, &u3);
                });
            }
        });
        FaultProxy {
            addr,
            resets_done,
            unavailable_done,
        }
    }
}

fn read_head(c: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut byte)? == 0 {
            return Ok(None);
        }
        head.push(byte[0]);
    }
    Ok(Some(head))
}

/// Serves every request of a (keep-alive) client connection, each over its own upstream
/// connection, so faults can target single requests.
fn serve(
    mut client: TcpStream,
    upstream: &str,
    resets: usize,
    unavailable: usize,
    resets_done: &AtomicUsize,
    unavailable_done: &AtomicUsize,
) -> std::io::Result<()> {
    while let Some(head) = read_head(&mut client)? {
        let text = String::from_utf8_lossy(&head).to_string();
        let len: usize = text
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        let is_blob_put = text.starts_with("PUT ") && text.contains("/blobs/uploads/");
        if is_blob_put && unavailable_done.load(Ordering::SeqCst) < unavailable {
            unavailable_done.fetch_add(1, Ordering::SeqCst);
            // Swallow the body, then refuse.
            std::io::copy(&mut (&client).take(len as u64), &mut std::io::sink())?;
            client.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        }
        let mut up = TcpStream::connect(upstream)?;
        // One request per upstream connection.
        let head_text: String = text
            .split("\r\n")
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
            .collect::<Vec<_>>()
            .join("\r\n");
        let head_text = head_text.trim_end().to_string() + "\r\nConnection: close\r\n\r\n";
        up.write_all(head_text.as_bytes())?;
        if is_blob_put && len > 64 << 10 && resets_done.load(Ordering::SeqCst) < resets {
            resets_done.fetch_add(1, Ordering::SeqCst);
            let mut part = vec![0u8; 64 << 10];
            client.read_exact(&mut part)?;
            up.write_all(&part)?;
            let _ = client.shutdown(std::net::Shutdown::Both);
            let _ = up.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        std::io::copy(&mut (&client).take(len as u64), &mut up)?;
        let mut resp = Vec::new();
        up.read_to_end(&mut resp)?;
        // Tell the client the connection stays usable only if the response has a length.
        client.write_all(&resp)?;
    }
    Ok(())
}
