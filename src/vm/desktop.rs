//! Probing the web desktop of a booted guest the way noVNC meets it: its page over
//! HTTP, the WebSocket upgrade websockify answers, and the start of the VNC handshake
//! behind it (RFB version, then the security types: VNC authentication must be asked
//! for, no anonymous access offered). Like ttyd's probe, the guest is untrusted:
//! messages are capped and every wait has a deadline.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use super::probe::{http_get_until, BootCheckFailed};
use super::Vm;

/// The page noVNC's users open.
pub const PAGE: &str = "/vnc.html";
/// Where websockify takes noVNC's WebSocket (any path works; noVNC asks for this one).
const WS_PATH: &str = "/websockify";
/// RFB security type 1: no authentication.
const SECURITY_NONE: u8 = 1;
/// RFB security type 2: VNC authentication (DES challenge-response).
pub const SECURITY_VNC_AUTH: u8 = 2;
const MAX_MESSAGE: usize = 64 << 10;

/// The desktop's URL on the host.
pub fn url(host_port: u16) -> String {
    format!("http://127.0.0.1:{host_port}{PAGE}")
}

/// Waits until the desktop answers on the VM's forwarded port and asks for VNC
/// authentication; returns the report lines.
pub fn check(vm: &mut Vm, deadline: Instant) -> Result<String> {
    let port = vm.desktop_port;
    check_port(port, deadline, || {
        vm.exited().map(|s| format!("QEMU exited ({s})"))
    })
}

/// [`check`] on 127.0.0.1:`port`; `gone` says why waiting is pointless (the VM
/// exited), if it is.
pub fn check_port(
    port: u16,
    deadline: Instant,
    mut gone: impl FnMut() -> Option<String>,
) -> Result<String> {
    let stage = crate::progress::stage("desktop", "waiting for the noVNC desktop page");
    loop {
        crate::sys::interrupt::check()?;
        if let Some(why) = gone() {
            return Err(BootCheckFailed(format!("{why} before the desktop answered")).into());
        }
        match http_get_until(port, PAGE, None, deadline) {
            Ok(b) if b.contains("noVNC") => break,
            Err(e) if e.is::<crate::sys::interrupt::Interrupted>() => return Err(e),
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(BootCheckFailed(format!(
                "timed out waiting for the desktop page on {}",
                url(port)
            ))
            .into());
        }
        crate::sys::interrupt::sleep(Duration::from_secs(2))?;
    }
    stage.done();
    let mut report = format!("desktop page: {} answered (noVNC)\n", url(port));
    // The VNC server may start after websockify: retry until it greets.
    let types = loop {
        match rfb_security_types(port, deadline) {
            Ok(t) => break t,
            Err(e) if e.is::<crate::sys::interrupt::Interrupted>() => return Err(e),
            Err(e) if Instant::now() > deadline => {
                return Err(BootCheckFailed(format!(
                    "the desktop's VNC handshake did not complete: {e:#}"
                ))
                .into())
            }
            Err(_) => crate::sys::interrupt::sleep(Duration::from_secs(2))?,
        }
    };
    report.push_str("desktop WebSocket: upgraded; VNC server greeted (RFB 3.8)\n");
    if types.contains(&SECURITY_NONE) || !types.contains(&SECURITY_VNC_AUTH) {
        return Err(BootCheckFailed(format!(
            "the desktop's VNC server offers security types {types:?}: VNC authentication (2) must be required, no anonymous access (1)"
        ))
        .into());
    }
    report.push_str("desktop VNC: asks for authentication (VNC password)\n");
    Ok(report)
}

/// Opens noVNC's WebSocket through websockify, answers the VNC server's version and
/// returns the security types it offers.
fn rfb_security_types(port: u16, deadline: Instant) -> Result<Vec<u8>> {
    use tungstenite::client::IntoClientRequest;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .context("connecting to websockify")?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("ws://127.0.0.1:{port}{WS_PATH}")
        .into_client_request()
        .context("building the WebSocket request")?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "binary".parse().expect("static header"),
    );
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let (mut ws, _) = tungstenite::client::client_with_config(req, stream, Some(config))
        .map_err(|e| anyhow::anyhow!("websockify refused the WebSocket upgrade: {e}"))?;
    let mut rfb = Rfb::default();
    let version = rfb.take(&mut ws, 12, deadline)?;
    let version = parse_version(&version)?;
    if version < (3, 7) {
        bail!(
            "the VNC server speaks RFB {}.{}, older than 3.7",
            version.0,
            version.1
        );
    }
    ws.send(Message::Binary(b"RFB 003.008\n".to_vec().into()))
        .context("answering the VNC server's version")?;
    let n = rfb.take(&mut ws, 1, deadline)?[0];
    if n == 0 {
        bail!("the VNC server refused the connection");
    }
    let types = rfb.take(&mut ws, n as usize, deadline)?;
    let _ = ws.close(None);
    Ok(types)
}

/// RFB bytes arrive in WebSocket messages of any size: a buffer to take them from.
#[derive(Default)]
struct Rfb {
    buf: Vec<u8>,
}

impl Rfb {
    fn take(
        &mut self,
        ws: &mut WebSocket<TcpStream>,
        n: usize,
        deadline: Instant,
    ) -> Result<Vec<u8>> {
        while self.buf.len() < n {
            crate::sys::interrupt::check()?;
            if Instant::now() > deadline {
                bail!("timed out reading from the VNC server");
            }
            match ws.read().context("reading from the desktop's WebSocket")? {
                Message::Binary(b) => self.buf.extend_from_slice(&b),
                Message::Text(t) => self.buf.extend_from_slice(t.as_bytes()),
                Message::Close(_) => {
                    bail!("websockify closed the connection (is the VNC server running?)")
                }
                _ => {}
            }
        }
        Ok(self.buf.drain(..n).collect())
    }
}

/// `RFB 003.008\n` → (3, 8).
fn parse_version(v: &[u8]) -> Result<(u32, u32)> {
    let s = std::str::from_utf8(v)
        .ok()
        .filter(|s| s.len() == 12 && s.starts_with("RFB ") && s.ends_with('\n') && &s[7..8] == ".");
    let s = s.with_context(|| {
        format!(
            "not a VNC server greeting: {:?}",
            String::from_utf8_lossy(v)
        )
    })?;
    let n = |t: &str| t.parse::<u32>().ok();
    match (n(&s[4..7]), n(&s[8..11])) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("not a VNC server greeting: {s:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnc_greetings_are_parsed_and_anything_else_refused() {
        assert_eq!(parse_version(b"RFB 003.008\n").unwrap(), (3, 8));
        assert_eq!(parse_version(b"RFB 003.003\n").unwrap(), (3, 3));
        for bad in [
            &b"HTTP/1.1 200"[..],
            b"RFB 003.008",
            b"RFB 0x3.008\n",
            b"RFB 003,008\n",
        ] {
            assert!(parse_version(bad).is_err(), "{bad:?}");
        }
    }
}
