//! A real HTTP/1.1 server on loopback for download tests (std TcpListener + threads).
//!
//! It serves byte strings under paths, honours `Range: bytes=N-`/`N-M` (206) with
//! `If-Range` against its strong ETag, and can be told to misbehave: cut the connection
//! after N body bytes once, answer 503 a number of times, or stall before the body. It
//! logs every request (path, Range header, status) so tests can count downloads.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Default)]
struct Resource {
    data: Arc<Vec<u8>>,
    etag: String,
    /// Close the connection after this many body bytes, once.
    cut_after: Option<usize>,
    /// Answer 503 this many more times.
    unavailable: u32,
    /// Wait this long before sending the body.
    delay: Duration,
    /// Ignore Range requests (answer 200 with everything).
    no_ranges: bool,
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct State {
    resources: Mutex<HashMap<String, Resource>>,
    log: Mutex<Vec<Request>>,
}

/// The server; stops accepting when dropped.
pub struct TestServer {
    port: u16,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    pub fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = handle(conn, &s);
                });
            }
        });
        TestServer { port, state, stop }
    }

    /// `http://127.0.0.1:PORT/path` (path without the leading slash).
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// Serves `data` under `/path`.
    pub fn serve(&self, path: &str, data: Vec<u8>) {
        use sha2::Digest;
        let etag = format!("\"{}\"", &hex::encode(sha2::Sha256::digest(&data))[..16]);
        self.with(path, |r| {
            r.data = Arc::new(data);
            r.etag = etag;
        });
    }

    pub fn cut_after_once(&self, path: &str, bytes: usize) {
        self.with(path, |r| r.cut_after = Some(bytes));
    }

    pub fn fail_503(&self, path: &str, times: u32) {
        self.with(path, |r| r.unavailable = times);
    }

    pub fn delay(&self, path: &str, delay: Duration) {
        self.with(path, |r| r.delay = delay);
    }

    pub fn no_ranges(&self, path: &str) {
        self.with(path, |r| r.no_ranges = true);
    }

    fn with(&self, path: &str, f: impl FnOnce(&mut Resource)) {
        let key = format!("/{}", path.trim_start_matches('/'));
        let mut map = self.state.resources.lock().unwrap();
        f(map.entry(key).or_default());
    }

    /// Every request for `/path`, in order.
    pub fn requests(&self, path: &str) -> Vec<Request> {
        let key = format!("/{}", path.trim_start_matches('/'));
        self.state
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == key)
            .cloned()
            .collect()
    }

    pub fn count(&self, path: &str) -> usize {
        self.requests(path).len()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn handle(conn: TcpStream, state: &State) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned();
    let if_range = headers.get("if-range").cloned();
    // Decide under the lock, send outside it.
    let (status, body, extra, cut, delay) = {
        let mut map = state.resources.lock().unwrap();
        match map.get_mut(&path) {
            None => (404, Vec::new(), String::new(), None, Duration::ZERO),
            Some(r) if r.unavailable > 0 => {
                r.unavailable -= 1;
                (503, Vec::new(), String::new(), None, Duration::ZERO)
            }
            Some(r) => {
                let total = r.data.len();
                let honour = !r.no_ranges && if_range.as_deref().is_none_or(|v| v == r.etag);
                let start = range
                    .as_deref()
                    .filter(|_| honour)
                    .and_then(|v| v.strip_prefix("bytes="))
                    .and_then(|v| v.split_once('-'))
                    .map(|(a, b)| (a.parse::<usize>().unwrap_or(0), b.parse::<usize>().ok()));
                let cut = r.cut_after.take();
                let etag = format!("ETag: {}\r\n", r.etag);
                match start {
                    Some((a, _)) if a >= total => (
                        416,
                        Vec::new(),
                        format!("Content-Range: bytes */{total}\r\n"),
                        None,
                        Duration::ZERO,
                    ),
                    Some((a, b)) => {
                        let end = b.map(|b| (b + 1).min(total)).unwrap_or(total);
                        (
                            206,
                            r.data[a..end].to_vec(),
                            format!("{etag}Content-Range: bytes {a}-{}/{total}\r\n", end - 1),
                            cut,
                            r.delay,
                        )
                    }
                    None => (200, r.data.to_vec(), etag, cut, r.delay),
                }
            }
        }
    };
    state.log.lock().unwrap().push(Request {
        method: method.clone(),
        path,
        range,
        if_range,
        status,
    });
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Service Unavailable",
    };
    let mut out = conn;
    write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )?;
    out.flush()?;
    if method == "HEAD" {
        return Ok(());
    }
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    let limit = cut.unwrap_or(body.len()).min(body.len());
    for chunk in body[..limit].chunks(64 * 1024) {
        out.write_all(chunk)?;
    }
    out.flush()?;
    if cut.is_some() {
        let _ = out.shutdown(Shutdown::Both);
    }
    Ok(())
}
