//! The QEMU guest agent over the virtio-serial channel `org.qemu.guest_agent.0`, as
//! KubeVirt attaches it, and as kubevirt/containerdisks asks it before promoting an
//! image: `guest-sync` (to skip whatever an earlier session left in the channel), then
//! `guest-ping` and `guest-get-osinfo`. The guest is not trusted: every answer is one
//! line of at most [`MAX_LINE`] bytes, read with a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The virtio-serial port name the agent listens on.
pub const CHANNEL: &str = "org.qemu.guest_agent.0";
/// The longest answer line accepted from the guest.
const MAX_LINE: u64 = 64 << 10;
/// How long one request waits for its answer before the exchange starts over.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// What `guest-get-osinfo` reports (the fields diskforge prints).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct OsInfo {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub pretty_name: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub version_id: Option<String>,
    #[serde(default)]
    pub kernel_release: Option<String>,
}

impl std::fmt::Display for OsInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unknown = "?".to_string();
        write!(
            f,
            "{} {}",
            self.name.as_ref().unwrap_or(&unknown),
            self.version
                .as_ref()
                .or(self.version_id.as_ref())
                .unwrap_or(&unknown)
        )?;
        if let Some(k) = &self.kernel_release {
            write!(f, " (kernel {k})")?;
        }
        Ok(())
    }
}

/// One agent session on QEMU's end of the channel (a Unix socket).
struct Session {
    out: UnixStream,
    lines: BufReader<UnixStream>,
}

impl Session {
    fn connect(socket: &Path) -> Result<Session> {
        let s = UnixStream::connect(socket).with_context(|| {
            format!("connecting to the guest agent channel {}", socket.display())
        })?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok(Session {
            out: s.try_clone()?,
            lines: BufReader::new(s),
        })
    }

    fn send(&mut self, request: &serde_json::Value) -> Result<()> {
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        self.out
            .write_all(&line)
            .context("writing to the guest agent channel")
    }

    /// The next answer line (none before `until`).
    fn answer(&mut self, until: Instant) -> Result<Option<serde_json::Value>> {
        let mut buf = Vec::new();
        loop {
            crate::sys::interrupt::check()?;
            if Instant::now() > until {
                return Ok(None);
            }
            let mut limited = (&mut self.lines).take(MAX_LINE - buf.len() as u64);
            match limited.read_until(b'\n', &mut buf) {
                Ok(0) => bail!("the guest agent channel closed"),
                Ok(_) if buf.ends_with(b"\n") => {
                    let text = String::from_utf8_lossy(&buf);
                    // A line the agent sent before this session (or garbage): skipped.
                    if let Ok(v) = serde_json::from_str(&text) {
                        return Ok(Some(v));
                    }
                    buf.clear();
                }
                Ok(_) if buf.len() as u64 >= MAX_LINE => {
                    bail!("the guest agent sent a line longer than {MAX_LINE} bytes")
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e).context("reading from the guest agent channel"),
            }
        }
    }

    /// Sends `command` and returns its `return` value.
    fn execute(&mut self, command: &str, until: Instant) -> Result<Option<serde_json::Value>> {
        self.send(&serde_json::json!({"execute": command}))?;
        match self.answer(until)? {
            None => Ok(None),
            Some(v) => match (v.get("return"), v.get("error")) {
                (Some(r), _) => Ok(Some(r.clone())),
                (None, Some(e)) => bail!("the guest agent refused {command}: {e}"),
                _ => bail!("the guest agent answered {command} with {v}"),
            },
        }
    }
}

/// Waits for the agent to answer `guest-sync`, then requires `guest-ping` and
/// `guest-get-osinfo` to answer; returns the OS info. Fails at `deadline`.
pub fn check(socket: &Path, deadline: Instant) -> Result<OsInfo> {
    let mut id: u64 = u64::from(std::process::id()) << 16;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        id += 1;
        let until = (Instant::now() + ANSWER_WAIT).min(deadline);
        let mut s = match Session::connect(socket) {
            Ok(s) => s,
            Err(e) => {
                last = format!("{e:#}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        s.send(&serde_json::json!({"execute": "guest-sync", "arguments": {"id": id}}))?;
        let synced = loop {
            match s.answer(until)? {
                None => break false,
                Some(v) if v.get("return").and_then(|r| r.as_u64()) == Some(id) => break true,
                Some(_) => {}
            }
        };
        if !synced {
            last = "no answer to guest-sync".into();
            continue;
        }
        let until = (Instant::now() + ANSWER_WAIT).min(deadline);
        if s.execute("guest-ping", until)?.is_none() {
            bail!("the guest agent answered guest-sync but not guest-ping");
        }
        let until = (Instant::now() + ANSWER_WAIT).min(deadline);
        let info = s
            .execute("guest-get-osinfo", until)?
            .context("the guest agent did not answer guest-get-osinfo")?;
        return serde_json::from_value(info.clone())
            .with_context(|| format!("reading guest-get-osinfo's answer {info}"));
    }
    bail!("the guest agent did not answer on {CHANNEL} ({last})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_info_reads_what_the_agent_reports() {
        let v = serde_json::json!({"name": "Debian GNU/Linux", "kernel-release": "6.1.0-28-cloud-amd64",
            "version": "12 (bookworm)", "pretty-name": "Debian GNU/Linux 12 (bookworm)",
            "version-id": "12", "kernel-version": "#1 SMP", "machine": "x86_64", "id": "debian"});
        let info: OsInfo = serde_json::from_value(v).unwrap();
        assert_eq!(
            info.to_string(),
            "Debian GNU/Linux 12 (bookworm) (kernel 6.1.0-28-cloud-amd64)"
        );
        assert_eq!(info.version_id.as_deref(), Some("12"));
    }

    /// A fake agent on a socket pair: stale output, then answers in protocol order.
    #[test]
    fn the_exchange_skips_stale_lines_and_needs_every_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let agent = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut out = conn.try_clone().unwrap();
            let mut lines = BufReader::new(conn);
            out.write_all(b"{\"return\": 1}\n").unwrap();
            let mut line = String::new();
            lines.read_line(&mut line).unwrap();
            let req: serde_json::Value = serde_json::from_str(&line).unwrap();
            let id = req["arguments"]["id"].as_u64().unwrap();
            out.write_all(format!("{{\"return\": {id}}}\n").as_bytes())
                .unwrap();
            line.clear();
            lines.read_line(&mut line).unwrap();
            assert!(line.contains("guest-ping"));
            out.write_all(b"{\"return\": {}}\n").unwrap();
            line.clear();
            lines.read_line(&mut line).unwrap();
            assert!(line.contains("guest-get-osinfo"));
            out.write_all(
                b"{\"return\": {\"name\": \"Alpine Linux\", \"version-id\": \"3.20\"}}\n",
            )
            .unwrap();
        });
        let info = check(&path, Instant::now() + Duration::from_secs(20)).unwrap();
        agent.join().unwrap();
        assert_eq!(info.to_string(), "Alpine Linux 3.20");
    }
}
