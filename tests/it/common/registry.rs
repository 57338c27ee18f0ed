//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF distribution
//! registry) on a free loopback port, optionally with htpasswd basic auth or HTTPS. Its access
//! log is kept so tests can see which requests reached it. Killed on drop.

use super::Run;
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
        Registry::start_with(auth, None, None)
    }

    /// Starts a registry speaking HTTPS only, with a certificate for 127.0.0.1 issued by
    /// a throwaway CA. Returns it and the CA certificate (PEM).
    pub fn start_tls() -> (Registry, Vec<u8>) {
        Registry::start_tls_with(None, None)
    }

    /// [`Registry::start_tls`] with `auth` as in [`Registry::start`] and, with `host`, the
    /// registry's `http.host`: the URL it puts into the locations it hands out (an upload
    /// goes on there).
    pub fn start_tls_with(auth: Option<(&str, &str)>, host: Option<&str>) -> (Registry, Vec<u8>) {
        let certs = tempfile::tempdir().unwrap();
        let d = certs.path();
        let openssl = |args: &[&str]| {
            Command::new("openssl").args(args).current_dir(d).succeeds();
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=diskforge test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        let r = Registry::start_with(
            auth,
            Some((d.join("server.crt"), d.join("server.key"))),
            host,
        );
        let ca = std::fs::read(d.join("ca.crt")).unwrap();
        (r, ca)
    }

    fn start_with(
        auth: Option<(&str, &str)>,
        tls: Option<(PathBuf, PathBuf)>,
        host: Option<&str>,
    ) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let tls = match tls {
            Some((cert, key)) => {
                let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
                std::fs::copy(cert, &c).unwrap();
                std::fs::copy(key, &k).unwrap();
                format!(
                    ", tls: {{certificate: {}, key: {}}}",
                    c.display(),
                    k.display()
                )
            }
            None => String::new(),
        };
        let tls = match host {
            Some(h) => format!("{tls}, host: \"{h}\""),
            None => tls,
        };
        let mut cfg = format!(
            "version: 0.1\nlog: {{level: info, accesslog: {{disabled: false}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}{tls}}}\n",
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
    /// Request body bytes forwarded upstream, over all requests.
    pub body_bytes: Arc<AtomicUsize>,
}

/// What a [`FaultProxy`] does to the traffic it forwards. Faults target blob upload
/// requests with a body (PUT or PATCH under `/blobs/uploads/`), counted in order.
#[derive(Clone, Copy, Default)]
pub struct Faults {
    /// How many blob upload requests pass untouched before the faults start.
    pub skip: usize,
    /// Blob upload requests whose body (over `reset_after`) is cut after `reset_after`
    /// bytes.
    pub resets: usize,
    /// Where a reset cuts a body [default: 64 KiB].
    pub reset_after: Option<usize>,
    /// Blob upload requests answered with 503 without reaching the registry.
    pub unavailable: usize,
    /// Request bodies forwarded at no more than this many bytes per second.
    pub throttle: Option<u64>,
    /// Requests whose request line contains this are answered with 500.
    pub refuse: Option<&'static str>,
}

impl FaultProxy {
    pub fn start(upstream: &str, resets: usize, unavailable: usize) -> FaultProxy {
        FaultProxy::start_with(
            upstream,
            Faults {
                resets,
                unavailable,
                ..Faults::default()
            },
        )
    }

    pub fn start_with(upstream: &str, faults: Faults) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let counters = Counters::default();
        let c2 = counters.clone();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let (up, c3) = (upstream.clone(), c2.clone());
                std::thread::spawn(move || {
                    let _ = serve(client, &up, faults, &c3);
                });
            }
        });
        FaultProxy {
            addr,
            resets_done: counters.resets,
            unavailable_done: counters.unavailable,
            body_bytes: counters.body_bytes,
        }
    }
}

#[derive(Clone, Default)]
struct Counters {
    resets: Arc<AtomicUsize>,
    unavailable: Arc<AtomicUsize>,
    body_bytes: Arc<AtomicUsize>,
    bodies: Arc<AtomicUsize>,
}

/// Copies `len` bytes from `from` to `to`, at no more than `rate` bytes per second.
fn forward(
    from: &mut TcpStream,
    to: &mut impl Write,
    len: usize,
    rate: Option<u64>,
    counted: &AtomicUsize,
) -> std::io::Result<()> {
    let start = Instant::now();
    let mut buf = vec![0u8; 16 << 10];
    let mut done = 0usize;
    while done < len {
        let n = from.read(&mut buf[..(len - done).min(16 << 10)])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        to.write_all(&buf[..n])?;
        done += n;
        counted.fetch_add(n, Ordering::SeqCst);
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(done as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    Ok(())
}

/// Forwards a chunked request body (`Transfer-Encoding: chunked`) as it comes, counting
/// its payload bytes; with `cut`, stops after that many payload bytes and returns false.
fn forward_chunked(
    from: &mut TcpStream,
    to: &mut impl Write,
    cut: Option<usize>,
    rate: Option<u64>,
    counted: &AtomicUsize,
) -> std::io::Result<bool> {
    let mut payload = 0usize;
    loop {
        let line = read_line(from)?;
        to.write_all(&line)?;
        let text = String::from_utf8_lossy(&line);
        let hex = text.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(hex, 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size line {text:?}")))?;
        if size == 0 {
            // Trailers up to the empty line.
            loop {
                let l = read_line(from)?;
                to.write_all(&l)?;
                if l == b"\r\n" {
                    return Ok(true);
                }
            }
        }
        let take = match cut {
            Some(c) if payload + size > c => c - payload,
            _ => size,
        };
        forward(from, to, take, rate, counted)?;
        payload += take;
        if take < size {
            return Ok(false);
        }
        let crlf = read_line(from)?;
        to.write_all(&crlf)?;
    }
}

fn read_line(c: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if c.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        line.push(byte[0]);
    }
    Ok(line)
}

fn read_head(c: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut byte)? == 0 {
            return Ok(None);
        }
        // A TLS ClientHello (a client probing for HTTPS): plain HTTP only, so hang up
        // at once, as a plain-HTTP registry's refusal would.
        if head.is_empty() && byte[0] == 0x16 {
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
    faults: Faults,
    counters: &Counters,
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
        let chunked = text
            .lines()
            .any(|l| l.trim().to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
        let request_line = text.lines().next().unwrap_or_default();
        if faults.refuse.is_some_and(|r| request_line.contains(r)) {
            if chunked {
                let ignored = AtomicUsize::new(0);
                forward_chunked(&mut client, &mut std::io::sink(), None, None, &ignored)?;
            } else {
                std::io::copy(&mut (&client).take(len as u64), &mut std::io::sink())?;
            }
            client.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: 56\r\n\r\n{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"disk full...\"}]}",
            )?;
            continue;
        }
        let is_blob_body = (text.starts_with("PUT ") || text.starts_with("PATCH "))
            && text.contains("/blobs/uploads/");
        let targeted =
            is_blob_body && counters.bodies.fetch_add(1, Ordering::SeqCst) >= faults.skip;
        if targeted && counters.unavailable.load(Ordering::SeqCst) < faults.unavailable {
            counters.unavailable.fetch_add(1, Ordering::SeqCst);
            // Swallow the body, then refuse: the registry never sees the request.
            if chunked {
                let ignored = AtomicUsize::new(0);
                forward_chunked(&mut client, &mut std::io::sink(), None, None, &ignored)?;
            } else {
                std::io::copy(&mut (&client).take(len as u64), &mut std::io::sink())?;
            }
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
        let cut = faults.reset_after.unwrap_or(64 << 10);
        if chunked {
            let reset = targeted && counters.resets.load(Ordering::SeqCst) < faults.resets;
            let whole = forward_chunked(
                &mut client,
                &mut up,
                reset.then_some(cut),
                faults.throttle,
                &counters.body_bytes,
            )?;
            if !whole {
                counters.resets.fetch_add(1, Ordering::SeqCst);
                let _ = client.shutdown(std::net::Shutdown::Both);
                let _ = up.shutdown(std::net::Shutdown::Both);
                return Ok(());
            }
            let mut resp = Vec::new();
            up.read_to_end(&mut resp)?;
            client.write_all(&resp)?;
            continue;
        }
        if targeted && len > cut && counters.resets.load(Ordering::SeqCst) < faults.resets {
            counters.resets.fetch_add(1, Ordering::SeqCst);
            forward(
                &mut client,
                &mut up,
                cut,
                faults.throttle,
                &counters.body_bytes,
            )?;
            let _ = client.shutdown(std::net::Shutdown::Both);
            let _ = up.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        forward(
            &mut client,
            &mut up,
            len,
            faults.throttle,
            &counters.body_bytes,
        )?;
        let mut resp = Vec::new();
        up.read_to_end(&mut resp)?;
        // Tell the client the connection stays usable only if the response has a length.
        client.write_all(&resp)?;
    }
    Ok(())
}

/// Copies the image `docker://<reference>` from a plain-HTTP registry into the OCI
/// layout `into` as `tag`, keeping its digests: a pull by a tool diskforge did not write.
pub fn skopeo_pull(reference: &str, into: &std::path::Path, tag: &str) {
    skopeo_copy(
        std::process::Command::new("skopeo"),
        &[],
        reference,
        into,
        tag,
    )
    .succeeds();
}

/// `skopeo` (with the global options already on it) copying `docker://<reference>` from
/// a plain-HTTP registry into the OCI layout `into` as `tag`, digests kept, `extra`
/// options added: the command, to run as the test needs.
pub fn skopeo_copy(
    mut skopeo: std::process::Command,
    extra: &[&str],
    reference: &str,
    into: &std::path::Path,
    tag: &str,
) -> std::process::Command {
    skopeo
        .args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--src-tls-verify=false",
        ])
        .args(extra)
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:{tag}", into.display()));
    skopeo
}
