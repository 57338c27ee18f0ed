//! Browser tests of ttyd: headless Chromium driven by tests/browser/ttyd_login.py
//! (Selenium), a `diskforge run` in the background that is always stopped, and a
//! plain-HTTP wait for ttyd.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

/// What driving Chromium needs (Selenium, chromium, chromedriver installed by
/// ci/setup-system.sh).
pub fn needs() -> Vec<crate::harness::Need> {
    use crate::harness::Need;
    vec![
        Need::tool("chromium"),
        Need::tool("chromedriver"),
        super::python_need(&["selenium"]),
    ]
}

/// The python3 that drives Chromium (see [`needs`]).
pub fn python() -> &'static str {
    super::python(&["selenium"])
}

/// The browser's python3 when everything [`needs`] lists is installed; None (with a
/// note) outside CI when something is missing, a failure under CI=true.
pub fn python_if_installed() -> Option<&'static str> {
    let missing: Vec<String> = needs()
        .iter()
        .filter(|n| !n.is_present())
        .map(|n| n.describe())
        .collect();
    if missing.is_empty() {
        return Some(python());
    }
    assert!(
        !super::in_ci(),
        "missing under CI=true: {}",
        missing.join(", ")
    );
    eprintln!(
        "no browser, checking without it: missing {}",
        missing.join(", ")
    );
    None
}

/// Where screenshots go: target/test-artifacts/.
/// tests/browser/novnc_desktop.py against noVNC's page at `url`, with `password` as the
/// VNC password it types.
pub fn novnc(python: &str, url: &str, password: &str, args: &[&str]) -> Output {
    Command::new(python)
        .arg(crate::common::repo_root().join("tests/browser/novnc_desktop.py"))
        .arg(url)
        .args(args)
        .env("NOVNC_PASSWORD", password)
        .output()
        .expect("running tests/browser/novnc_desktop.py")
}

pub fn artifacts() -> PathBuf {
    let dir = super::repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs tests/browser/ttyd_login.py on `url` with `args`; `env` carries the passwords
/// (never on the command line).
pub fn ttyd_session(python: &str, url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(python);
    c.arg(super::repo_root().join("tests/browser/ttyd_login.py"))
        .arg(url)
        .args(args)
        .env_remove("TTYD_LOGIN_PASSWORD")
        .env_remove("TTYD_BASIC_PASSWORD");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running tests/browser/ttyd_login.py")
}

/// The lines after `--- command output ---` in the script's output.
pub fn command_output(stdout: &str) -> Vec<String> {
    stdout
        .split("--- command output ---")
        .nth(1)
        .unwrap_or_else(|| panic!("no command output in:\n{stdout}"))
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// True once something answers HTTP on 127.0.0.1:`port` as ttyd (its `server:` header
/// or its page; a 401 counts: ttyd asks for its credential). A port QEMU forwards
/// accepts connections before the guest listens, so a connection alone proves nothing.
pub fn ttyd_answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = Vec::new();
    let _ = s.take(64 << 10).read_to_end(&mut head);
    String::from_utf8_lossy(&head)
        .to_lowercase()
        .contains("ttyd")
}

/// Polls [`ttyd_answers`] until `within` has passed; panics with `context()` then, or
/// as soon as `alive()` says the server is gone.
pub fn wait_for_ttyd(
    port: u16,
    within: Duration,
    mut alive: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let start = Instant::now();
    while !ttyd_answers(port) {
        assert!(alive(), "exited before ttyd answered:\n{}", context());
        assert!(
            start.elapsed() < within,
            "ttyd did not answer on port {port} within {within:?}:\n{}",
            context()
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    eprintln!("ttyd answered on port {port} after {:?}", start.elapsed());
}

/// `diskforge run IMAGE` in the background, its stderr collected (and echoed). Stopped
/// with SIGINT, as Ctrl-C would: diskforge then stops QEMU and removes the overlay.
/// Dropped while still running (a failed assertion), it is interrupted the same way
/// and, should that not end it, it and its QEMU are killed: no VM outlives the test.
pub struct BackgroundRun {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundRun {
    pub fn start(mut cmd: Command) -> BackgroundRun {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting diskforge run");
        let pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                eprintln!("  run| {line}");
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        BackgroundRun {
            child: Some(child),
            stderr,
            reader: Some(reader),
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// What `run` wrote to stderr so far, readable while the run is borrowed mutably.
    pub fn stderr_reader(&self) -> impl Fn() -> String {
        let log = Arc::clone(&self.stderr);
        move || log.lock().unwrap().clone()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The ttyd URL `run` prints ("ttyd:  http://127.0.0.1:PORT/ …"), waiting for it.
    pub fn ttyd_url(&mut self, within: Duration) -> (String, u16) {
        let start = Instant::now();
        loop {
            let text = self.stderr();
            if let Some(found) = printed_ttyd_url(&text) {
                return found;
            }
            assert!(self.running(), "diskforge run exited:\n{text}");
            assert!(
                start.elapsed() < within,
                "diskforge run printed no ttyd URL:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The desktop URL `run` prints ("desktop: http://127.0.0.1:PORT/vnc.html …") and its
    /// port, waiting for it.
    pub fn desktop_url(&mut self, within: Duration) -> (String, u16) {
        let start = Instant::now();
        loop {
            let text = self.stderr();
            let url = text
                .lines()
                .find_map(|l| l.strip_prefix("desktop:"))
                .and_then(|l| l.split_whitespace().next());
            if let Some(url) = url {
                let port = url
                    .trim_start_matches("http://127.0.0.1:")
                    .split('/')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("no port in {url}"));
                return (url.to_string(), port);
            }
            assert!(self.running(), "diskforge run exited:\n{text}");
            assert!(
                start.elapsed() < within,
                "diskforge run printed no desktop URL:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Interrupts it and waits for it to exit; returns its exit code and stderr.
    pub fn stop(&mut self) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("stopped twice");
        let code = interrupt(&mut child, Duration::from_secs(60));
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (code, self.stderr())
    }
}

/// The URL on the line `run` starts with "ttyd:", and its port.
fn printed_ttyd_url(stderr: &str) -> Option<(String, u16)> {
    let url = stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("ttyd:"))
        .flat_map(str::split_whitespace)
        .find(|w| w.starts_with("http://127.0.0.1:"))?;
    let port = url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches('/')
        .parse()
        .ok()?;
    Some((url.to_string(), port))
}

/// SIGINT, then up to `within` for the exit; SIGKILL after that. The exit code.
fn interrupt(child: &mut Child, within: Duration) -> Option<i32> {
    if let Ok(Some(s)) = child.try_wait() {
        return s.code();
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    match child.wait_timeout(within) {
        Ok(Some(s)) => s.code(),
        _ => {
            eprintln!("diskforge run ignored SIGINT for {within:?}: killing it");
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

impl Drop for BackgroundRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let text = self.stderr();
            interrupt(&mut child, Duration::from_secs(30));
            // A killed diskforge leaves its QEMU behind: find it by its port forward.
            if let Some((_, port)) = printed_ttyd_url(&text) {
                for pid in processes_with(&forward_marker(port)) {
                    let _ = Command::new("kill").args(["-KILL", &pid]).status();
                }
            }
        }
    }
}

/// What QEMU's command line holds when it forwards host `port`.
pub fn forward_marker(port: u16) -> String {
    format!("hostfwd=tcp:127.0.0.1:{port}-")
}

/// PIDs of the processes whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<String> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            pids.push(name);
        }
    }
    pids
}

/// A process killed (and reaped) on drop: a server a test started directly.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A file's size, for messages.
pub fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
