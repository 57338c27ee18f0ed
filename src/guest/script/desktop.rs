//! The web desktop, started on boot (systemd units, or OpenRC services on guests whose
//! init is not systemd): Xtigervnc on the guest's localhost only, running the session as
//! the recipe's user, and websockify serving noVNC's page and proxying its WebSocket to
//! it — all from the distribution's packages. The VNC
//! password enters the guest only on the staging tmpfs and is written once, obfuscated
//! by `vncpasswd -f`, to the one file the server reads (0600, the session user's).

use anyhow::{Context, Result};

use super::{Part, Secrets, StageData};
use crate::recipe::validate::DESKTOP_VNC_PORT;
use crate::recipe::Desktop;
use crate::sys::exec::shell_quote as q;

/// The distribution packages the desktop needs besides its session's (Debian names).
/// `tigervnc-tools` has `vncpasswd`, which the server package does not pull in.
pub const PACKAGES: &[&str] = &[
    "tigervnc-standalone-server",
    "tigervnc-tools",
    "novnc",
    "websockify",
];
/// The unit that runs the VNC server and the session.
pub const VNC_UNIT: &str = "diskforge-desktop-vnc.service";
/// The unit that runs websockify with noVNC's page.
pub const WEB_UNIT: &str = "diskforge-desktop-web.service";
/// The OpenRC services, under /etc/init.d, on guests without systemd.
pub const VNC_SERVICE: &str = "diskforge-desktop-vnc";
pub const WEB_SERVICE: &str = "diskforge-desktop-web";
/// The VNC password file, in `vncpasswd -f` form.
pub const PASSWD: &str = "/etc/diskforge/desktop.vncpasswd";
const START: &str = "/usr/local/lib/diskforge/desktop-start.sh";

/// Every package the desktop installs, session included.
pub fn packages(d: &Desktop) -> Vec<String> {
    let mut v: Vec<String> = PACKAGES.iter().map(|s| s.to_string()).collect();
    v.extend(d.session.packages());
    v
}

pub fn install(g: &mut Part, d: &Desktop, secrets: &Secrets) -> Result<()> {
    let user = d
        .user
        .as_deref()
        .context("desktop.user is required when the desktop is enabled")?;
    let cred = secrets
        .desktop
        .as_ref()
        .context("the desktop credential was not resolved")?;
    g.step(&format!(
        "desktop: noVNC on port {} for user {user}, VNC on localhost:{DESKTOP_VNC_PORT} with a password, {}",
        d.port, d.geometry
    ));
    let uq = q(user);
    g.line(format!(
        "id -u {uq} >/dev/null 2>&1 || {{ echo {} >&2; exit 1; }}",
        q(&format!(
            "desktop.user {user} does not exist in the guest: add it under customize.users"
        ))
    ));
    g.line("case \"$(guest_init)\" in systemd|openrc) ;; *) echo 'the desktop is started by systemd units or OpenRC services: this guest has neither' >&2; exit 1 ;; esac");
    g.line("for b in Xtigervnc websockify; do have \"$b\" || { echo \"$b is not installed: the desktop packages are missing\" >&2; exit 1; }; done");
    g.line("[ -f /usr/share/novnc/vnc.html ] || { echo 'noVNC is not installed at /usr/share/novnc' >&2; exit 1; }");

    // The plaintext stays on the staging tmpfs; only the obfuscated form is written.
    let pw = g.stage(
        "secrets/desktop.pass".into(),
        StageData::Bytes(format!("{}\n", cred.expose()).into_bytes()),
        0o600,
    );
    g.line("vp=$(command -v tigervncpasswd || command -v vncpasswd) || { echo 'vncpasswd is not installed' >&2; exit 1; }");
    g.line("install -d -m 0755 /etc/diskforge");
    g.line(format!(
        "(umask 077; \"$vp\" -f < {pw} > {PASSWD}.tmp) && [ \"$(stat -c %s {PASSWD}.tmp)\" = 8 ] || {{ rm -f {PASSWD}.tmp; echo 'vncpasswd -f failed' >&2; exit 1; }}"
    ));
    g.line(format!(
        "chown {uq}: {PASSWD}.tmp && chmod 0600 {PASSWD}.tmp && mv {PASSWD}.tmp {PASSWD}"
    ));

    let session: Vec<String> = d.session.command().iter().map(|w| q(w)).collect();
    let start = include_str!("desktop-start.sh")
        .replace("@VNC_PORT@", &DESKTOP_VNC_PORT.to_string())
        .replace("@PASSWD@", PASSWD)
        .replace("@GEOMETRY@", &q(&d.geometry))
        .replace("@NAME@", "diskforge")
        .replace("@SESSION@", &session.join(" "));
    let s = g.stage(
        "desktop-start.sh".into(),
        StageData::Bytes(start.into_bytes()),
        0o755,
    );
    let vnc = include_str!("diskforge-desktop-vnc.service").replace("@USER@", user);
    let v = g.stage(VNC_UNIT.into(), StageData::Bytes(vnc.into_bytes()), 0o644);
    let web = include_str!("diskforge-desktop-web.service")
        .replace("@PORT@", &d.port.to_string())
        .replace("@VNC_PORT@", &DESKTOP_VNC_PORT.to_string());
    let w = g.stage(WEB_UNIT.into(), StageData::Bytes(web.into_bytes()), 0o644);
    let vnc_rc = include_str!("diskforge-desktop-vnc.openrc").replace("@USER@", user);
    let vo = g.stage(
        format!("{VNC_SERVICE}.openrc"),
        StageData::Bytes(vnc_rc.into_bytes()),
        0o755,
    );
    let web_rc = include_str!("diskforge-desktop-web.openrc")
        .replace("@PORT@", &d.port.to_string())
        .replace("@VNC_PORT@", &DESKTOP_VNC_PORT.to_string());
    let wo = g.stage(
        format!("{WEB_SERVICE}.openrc"),
        StageData::Bytes(web_rc.into_bytes()),
        0o755,
    );
    g.line(format!("install -D -m 0755 {s} {START}"));
    g.line("if [ \"$(guest_init)\" = systemd ]; then");
    g.line(format!(
        "  install -m 0644 {v} /etc/systemd/system/{VNC_UNIT}; install -m 0644 {w} /etc/systemd/system/{WEB_UNIT}"
    ));
    g.line(format!("  systemctl enable {VNC_UNIT} {WEB_UNIT}"));
    g.line("else");
    g.line(format!(
        "  install -m 0755 {vo} /etc/init.d/{VNC_SERVICE}; install -m 0755 {wo} /etc/init.d/{WEB_SERVICE}"
    ));
    g.line(format!(
        "  rc-update add {VNC_SERVICE} default; rc-update add {WEB_SERVICE} default"
    ));
    g.line("fi");
    Ok(())
}
