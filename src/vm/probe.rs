//! Probing a booted guest the way its users meet it: ttyd's page over HTTP, then a
//! terminal session over ttyd's WebSocket that reaches a login prompt, logs in and runs
//! a command. The guest is the thing under test, not a trusted peer: pages are read
//! with a size cap, WebSocket frames and messages are limited (tungstenite), and every
//! wait has a deadline.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use super::Vm;

/// A boot check failed (exit code 4).
#[derive(Debug, thiserror::Error)]
#[error("boot check failed: {0}")]
pub struct BootCheckFailed(pub String);

/// The most a single WebSocket message from the guest may hold.
const MAX_MESSAGE: usize = 1 << 20;

/// What `--check` does.
pub struct CheckOptions {
    /// 0: wait for a login prompt on the serial console instead of ttyd.
    pub ttyd_port: u16,
    /// ttyd's own basic-auth credential (`-c USER:PASSWORD`), when it has one.
    pub ttyd_auth: Option<(String, String)>,
    /// Log in as USER with PASSWORD and run `command`.
    pub login: Option<(String, String)>,
    pub command: Option<String>,
    pub deadline: Instant,
}

/// The longest one request to the guest may take.
const REQUEST: Duration = Duration::from_secs(20);

/// GETs `path` from 127.0.0.1:`port`: the body on 200, at most [`crate::io::limits::MAX_PAGE`],
/// within 20 s.
pub fn http_get(port: u16, path: &str, auth: Option<&(String, String)>) -> Result<String> {
    http_get_until(port, path, auth, Instant::now() + REQUEST)
}

/// [`http_get`] that gives up at `deadline` (or 20 s, whichever comes first) and at
/// once when a signal arrives: a guest port that accepts and never answers must not
/// hold up `--timeout` or Ctrl-C.
pub fn http_get_until(
    port: u16,
    path: &str,
    auth: Option<&(String, String)>,
    deadline: Instant,
) -> Result<String> {
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .min(REQUEST);
    let get = async {
        let client = crate::io::tls::client_builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("creating the HTTP client")?;
        let mut req = client.get(format!("http://127.0.0.1:{port}{path}"));
        if let Some((u, p)) = auth {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().await?;
        if !resp.status().is_success() {
            bail!("HTTP {}", resp.status());
        }
        let body = crate::io::limits::read_body_capped(
            resp,
            crate::io::limits::MAX_PAGE,
            REQUEST,
            Duration::from_secs(60),
            "the ttyd page",
        )
        .await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    crate::sys::rt::block_on(async {
        tokio::select! {
            r = tokio::time::timeout(wait, get) => {
                r.map_err(|_| anyhow!("no answer within {} s", wait.as_secs_f32().ceil()))?
            }
            i = crate::sys::interrupt::signalled() => Err(i.into()),
        }
    })
}

/// Waits until ttyd serves its page on the VM's forwarded port.
pub fn wait_for_ttyd(
    vm: &mut Vm,
    auth: Option<&(String, String)>,
    deadline: Instant,
) -> Result<()> {
    loop {
        crate::sys::interrupt::check()?;
        if let Some(s) = vm.exited() {
            return Err(BootCheckFailed(format!("QEMU exited ({s}) before ttyd answered")).into());
        }
        match http_get_until(vm.ttyd_port, "/", auth, deadline) {
            Ok(b) if b.to_lowercase().contains("ttyd") => return Ok(()),
            Err(e) if e.is::<crate::sys::interrupt::Interrupted>() => return Err(e),
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(BootCheckFailed(format!(
                "timed out waiting for ttyd on http://127.0.0.1:{}/",
                vm.ttyd_port
            ))
            .into());
        }
        crate::sys::interrupt::sleep(until(deadline, Duration::from_secs(2)))?;
    }
}

/// Runs the boot check; returns a report of what was seen.
pub fn check(vm: &mut Vm, o: &CheckOptions) -> Result<String> {
    let stage = crate::progress::stage("boot", "waiting for the guest to boot");
    if o.ttyd_port == 0 {
        loop {
            crate::sys::interrupt::check()?;
            if let Some(s) = vm.exited() {
                return Err(BootCheckFailed(format!(
                    "QEMU exited ({s}) before the guest showed a login prompt"
                ))
                .into());
            }
            if vm.serial_contains("login:") {
                stage.done();
                return Ok("serial console: login prompt seen\n".into());
            }
            if Instant::now() > o.deadline {
                return Err(BootCheckFailed(
                    "timed out waiting for a login prompt on the serial console".into(),
                )
                .into());
            }
            crate::sys::interrupt::sleep(until(o.deadline, Duration::from_secs(2)))?;
        }
    }
    wait_for_ttyd(vm, o.ttyd_auth.as_ref(), o.deadline)?;
    stage.done();
    let port = vm.ttyd_port;
    let mut report = format!("ttyd page: http://127.0.0.1:{port}/ answered\n");
    let stage = crate::progress::stage("ttyd", "opening a ttyd terminal session");
    let mut t = Terminal::connect_until(port, o.ttyd_auth.as_ref(), o.deadline)?;
    // Some gettys only print the prompt after a key press.
    t.send_input("\r")?;
    let mut nudged = Instant::now();
    let mut seen = String::new();
    while !seen.contains("login:") {
        crate::sys::interrupt::check()?;
        if Instant::now() > o.deadline {
            return Err(BootCheckFailed(format!(
                "timed out waiting for a login prompt in the ttyd session; it showed: {:?}",
                tail(&seen)
            ))
            .into());
        }
        seen.push_str(&t.read_output(until(o.deadline, SLICE))?);
        bound(&mut seen);
        if nudged.elapsed() > Duration::from_secs(10) {
            t.send_input("\r")?;
            nudged = Instant::now();
        }
    }
    stage.done();
    report.push_str("ttyd session: login prompt seen\n");
    if let Some((user, password)) = &o.login {
        let stage = crate::progress::stage("login", format!("logging in as {user} over ttyd"));
        let out = log_in(&mut t, user, password, o.command.as_deref(), o.deadline)?;
        stage.done();
        report.push_str(&format!("logged in as {user}; command output:\n{out}\n"));
        let _ = t.send_input("exit\r");
    }
    Ok(report)
}

/// Logs in as `user` at the login prompt `t` shows, runs `command` [default: the user,
/// the root filesystem size and the machine-id] and returns its output. A refused
/// password is a failed boot check: the image does not do what its recipe says.
pub fn log_in(
    t: &mut Terminal,
    user: &str,
    password: &str,
    command: Option<&str>,
    deadline: Instant,
) -> Result<String> {
    t.send_input(&format!("{user}\r"))?;
    t.wait_for(&["assword:"], deadline)?;
    t.send_input(&format!("{password}\r"))?;
    let after = t.wait_for(&["$ ", "# ", "incorrect"], deadline)?;
    if after.contains("incorrect") {
        return Err(BootCheckFailed(format!(
            "logging in as {user} over ttyd failed: Login incorrect"
        ))
        .into());
    }
    let command =
        command.unwrap_or("id -un; df -B1 --output=size / | tail -n1; cat /etc/machine-id");
    // The quotes keep the markers out of the terminal's echo of the typed line.
    t.send_input(&format!(
        "echo DISKFORGE-\"\"BEGIN; {command}; echo DISKFORGE-\"\"END\r"
    ))?;
    let out = t.wait_for(&["DISKFORGE-END\r\n", "DISKFORGE-END\n"], deadline)?;
    let body = out
        .rsplit_once("DISKFORGE-BEGIN")
        .map(|(_, b)| b)
        .unwrap_or(&out)
        .split("DISKFORGE-END")
        .next()
        .unwrap_or("")
        .replace('\r', "");
    Ok(body.trim().to_string())
}

/// The longest a read from the terminal blocks before the deadline and the signal flag
/// are looked at again.
const SLICE: Duration = Duration::from_millis(250);

/// `most`, or less when `deadline` is nearer (never zero: a zero socket timeout means
/// none).
fn until(deadline: Instant, most: Duration) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .min(most)
        .max(Duration::from_millis(10))
}

/// Keeps the text seen from the guest bounded.
fn bound(s: &mut String) {
    if s.len() > 256 << 10 {
        let cut = s.len() - (64 << 10);
        let cut = (cut..s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(s.len());
        s.drain(..cut);
    }
}

fn tail(s: &str) -> String {
    let start = s.len().saturating_sub(300);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    s[start..].to_string()
}

/// A ttyd terminal session (its `tty` WebSocket protocol: client messages start with
/// `0` for input; server messages with `0` carry terminal output).
pub struct Terminal {
    ws: WebSocket<TcpStream>,
}

impl Terminal {
    pub fn connect(port: u16, auth: Option<&(String, String)>) -> Result<Terminal> {
        Terminal::connect_until(port, auth, Instant::now() + Duration::from_secs(10))
    }

    /// Opens a session, giving up at `deadline` and when a signal arrives.
    pub fn connect_until(
        port: u16,
        auth: Option<&(String, String)>,
        deadline: Instant,
    ) -> Result<Terminal> {
        use tungstenite::client::IntoClientRequest;
        use tungstenite::HandshakeError;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, until(deadline, Duration::from_secs(5)))
            .context("connecting to ttyd")?;
        // Short reads: the handshake is resumed after each until it ends, the deadline
        // passes or a signal arrives.
        stream.set_read_timeout(Some(SLICE))?;
        let mut req = format!("ws://127.0.0.1:{port}/ws")
            .into_client_request()
            .context("building the WebSocket request")?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "tty".parse().expect("static header"),
        );
        let token = auth
            .map(|(u, p)| {
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("{u}:{p}"),
                )
            })
            .unwrap_or_default();
        if !token.is_empty() {
            req.headers_mut().insert(
                "Authorization",
                format!("Basic {token}")
                    .parse()
                    .context("Authorization header")?,
            );
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let mut attempt = tungstenite::client::client_with_config(req, stream, Some(config));
        let (ws, _) = loop {
            match attempt {
                Ok(done) => break done,
                Err(HandshakeError::Interrupted(mid)) => {
                    crate::sys::interrupt::check()?;
                    if Instant::now() > deadline {
                        return Err(BootCheckFailed(
                            "timed out opening the ttyd WebSocket session".into(),
                        )
                        .into());
                    }
                    attempt = mid.handshake();
                }
                Err(HandshakeError::Failure(e)) => {
                    bail!("ttyd refused the WebSocket session: {e}")
                }
            }
        };
        let mut t = Terminal { ws };
        let hello = serde_json::json!({"AuthToken": token, "columns": 100, "rows": 30});
        t.ws.send(Message::Binary(hello.to_string().into_bytes().into()))
            .context("starting the ttyd session")?;
        Ok(t)
    }

    /// Types `text` into the terminal.
    pub fn send_input(&mut self, text: &str) -> Result<()> {
        let mut msg = vec![b'0'];
        msg.extend_from_slice(text.as_bytes());
        self.ws
            .send(Message::Binary(msg.into()))
            .context("writing to the ttyd session")
    }

    /// Terminal output received within `wait` (possibly empty).
    pub fn read_output(&mut self, wait: Duration) -> Result<String> {
        self.ws.get_ref().set_read_timeout(Some(wait))?;
        match self.ws.read() {
            Ok(Message::Binary(b)) if b.first() == Some(&b'0') => {
                Ok(String::from_utf8_lossy(&b[1..]).into_owned())
            }
            Ok(Message::Text(t)) if t.starts_with('0') => Ok(t[1..].to_string()),
            Ok(Message::Close(_)) => bail!("ttyd closed the terminal session"),
            Ok(_) => Ok(String::new()),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(String::new())
            }
            Err(e) => Err(anyhow!("reading from the ttyd session: {e}")),
        }
    }

    /// Reads until one of `needles` shows up; returns what was read.
    pub fn wait_for(&mut self, needles: &[&str], deadline: Instant) -> Result<String> {
        let mut seen = String::new();
        loop {
            crate::sys::interrupt::check()?;
            if needles.iter().any(|n| seen.contains(n)) {
                return Ok(seen);
            }
            if Instant::now() > deadline {
                return Err(BootCheckFailed(format!(
                    "timed out waiting for {needles:?} in the ttyd session; it showed: {:?}",
                    tail(&seen)
                ))
                .into());
            }
            seen.push_str(&self.read_output(until(deadline, SLICE))?);
            bound(&mut seen);
        }
    }
}

/// After the boot check with a NoCloud seed attached: waits for cloud-init's final
/// message on the serial console ("Cloud-init v. … finished at …") and requires it to
/// name the NoCloud datasource. A console that never mentions cloud-init by now means
/// a guest without it: reported, not failed.
pub fn wait_for_cloud_init(vm: &mut Vm, deadline: Instant) -> Result<String> {
    let stage = crate::progress::stage("cloud-init", "waiting for cloud-init to finish");
    let console = vm.serial_tail(usize::MAX);
    if !console.to_ascii_lowercase().contains("cloud-init") {
        stage.done();
        return Ok(
            "cloud-init: not checked: nothing on the serial console mentions cloud-init (the guest seems to have none); the seed was attached"
                .into(),
        );
    }
    loop {
        crate::sys::interrupt::check()?;
        if let Some(line) = cloud_init_finished(&vm.serial_tail(usize::MAX)) {
            stage.done();
            if !line.contains("NoCloud") {
                return Err(BootCheckFailed(format!(
                    "cloud-init finished without the NoCloud seed: {line}"
                ))
                .into());
            }
            return Ok(format!("cloud-init ran: {line}"));
        }
        if let Some(s) = vm.exited() {
            return Err(
                BootCheckFailed(format!("QEMU exited ({s}) before cloud-init finished")).into(),
            );
        }
        if Instant::now() > deadline {
            return Err(
                BootCheckFailed("timed out waiting for cloud-init to finish".into()).into(),
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// cloud-init's final message on a console, if it is there.
fn cloud_init_finished(console: &str) -> Option<String> {
    console
        .lines()
        .map(|l| l.trim_matches(|c: char| c.is_control() || c.is_whitespace()))
        .find_map(|l| {
            let at = l.find("Cloud-init v. ")?;
            let line = &l[at..];
            line.contains(" finished at ")
                .then(|| line.chars().take(300).collect())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A fake ttyd whose login prompt refuses every password: the first line typed is
    /// the user name, the second the password.
    fn refusing_ttyd() -> u16 {
        use tungstenite::handshake::server::{Request, Response};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            // The callback's error type is tungstenite's, not ours.
            #[allow(clippy::result_large_err)]
            let mut ws = tungstenite::accept_hdr(stream, |_: &Request, mut r: Response| {
                r.headers_mut()
                    .insert("Sec-WebSocket-Protocol", "tty".parse().unwrap());
                Ok(r)
            })
            .unwrap();
            let mut lines = 0;
            while let Ok(msg) = ws.read() {
                let Message::Binary(b) = msg else { continue };
                // Terminal input starts with `0`; the session's opening JSON with `{`.
                let Some(input) = b.strip_prefix(b"0") else {
                    continue;
                };
                for _ in input.iter().filter(|c| **c == b'\r') {
                    lines += 1;
                    let answer: &[u8] = match lines {
                        1 => b"0lab\r\nPassword: ",
                        _ => b"0\r\n\r\nLogin incorrect\r\nlab login: ",
                    };
                    let _ = ws.send(Message::Binary(answer.to_vec().into()));
                }
            }
        });
        port
    }

    #[test]
    fn a_refused_password_is_a_failed_boot_check() {
        let port = refusing_ttyd();
        let mut t = Terminal::connect(port, None).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let e = log_in(&mut t, "lab", "not-the-password", None, deadline).unwrap_err();
        assert!(e.downcast_ref::<BootCheckFailed>().is_some(), "{e:#}");
        let text = format!("{e:#}");
        assert!(text.contains("Login incorrect"), "{text}");
        assert!(!text.contains("not-the-password"), "{text}");
    }

    #[test]
    fn cloud_inits_final_message_is_found_on_a_noisy_console() {
        let console = "[  OK  ] Started cloud-final.service\r\n\x1b[0m[   42.1] cloud-init[512]: Cloud-init v. 22.4.2 finished at Fri, 04 Dec 2026 23:00:00 +0000. Datasource DataSourceNoCloud [seed=/dev/vdb][dsmode=net].  Up 42.10 seconds\r\n";
        let line = cloud_init_finished(console).unwrap();
        assert!(
            line.starts_with("Cloud-init v. 22.4.2 finished at"),
            "{line}"
        );
        assert!(line.contains("DataSourceNoCloud"), "{line}");
        assert_eq!(
            cloud_init_finished("Cloud-init v. 22.4.2 running 'init' at"),
            None
        );
    }
}
