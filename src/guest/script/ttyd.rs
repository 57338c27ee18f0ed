//! ttyd, started on boot: a systemd unit (an OpenRC service or a cron `@reboot` line on
//! guests without systemd). The command line is written whole, quoted for each consumer:
//! systemd's `ExecStart=` syntax in the unit, POSIX shell in the start script the
//! fallbacks run. The credential lives only in its root-only EnvironmentFile.

use std::path::Path;

use anyhow::{Context, Result};

use super::{Part, Secrets, StageData};
use crate::guest::patch::{PatchData, PatchFile, Presence};
use crate::recipe::{Ttyd, TtydSource};
use crate::sys::exec::shell_quote as q;

/// Where the ttyd binary goes when it is not installed by the package manager.
pub const BIN: &str = "/usr/local/bin/ttyd";
/// Where the package manager installs it.
const PACKAGED: &str = "/usr/bin/ttyd";
/// The systemd unit diskforge writes for ttyd.
pub const UNIT: &str = "diskforge-ttyd.service";
const ENV_FILE: &str = "/etc/diskforge/ttyd.env";
const START: &str = "/usr/local/lib/diskforge/ttyd-start.sh";
/// Stands for the credential in the argument list; expanded by systemd from the
/// EnvironmentFile (or by the start script), never written as a value.
const CREDENTIAL: &str = "${TTYD_CREDENTIAL}";

pub fn install(g: &mut Part, t: &Ttyd, secrets: &Secrets, binary: Option<&Path>) -> Result<()> {
    g.step(&format!(
        "ttyd on port {} ({})",
        t.port,
        match &t.credential {
            Some(c) => format!("HTTP credential set for user {}", c.user),
            None => "no HTTP credential: whoever reaches the port gets the terminal".into(),
        }
    ));
    let exe = match &t.source {
        TtydSource::Package(_) => PACKAGED.to_string(),
        TtydSource::Url(_) | TtydSource::Path(_) => {
            let bin = binary.context("the ttyd binary was not fetched")?;
            let f = g.stage("ttyd".into(), StageData::File(bin.to_path_buf()), 0o755);
            g.line(format!("install -D -m 0755 {f} {BIN}"));
            BIN.to_string()
        }
    };
    let files = contents(t, secrets);
    if let Some(env) = files.env {
        let f = g.stage(
            "secrets/ttyd.env".into(),
            StageData::Bytes(env.into_bytes()),
            0o600,
        );
        g.line(format!("install -D -m 0600 -o root -g root {f} {ENV_FILE}"));
    }
    let u = g.stage(
        UNIT.into(),
        StageData::Bytes(files.unit.into_bytes()),
        0o644,
    );
    let s = g.stage(
        "ttyd-start.sh".into(),
        StageData::Bytes(files.start.into_bytes()),
        0o755,
    );
    let openrc = include_str!("diskforge-ttyd.openrc").replace("@USER@", &t.user);
    let o = g.stage(
        "diskforge-ttyd.openrc".into(),
        StageData::Bytes(openrc.into_bytes()),
        0o755,
    );

    g.line(format!(
        "[ -x {} ] || {{ echo {} >&2; exit 1; }}",
        q(&exe),
        q(&format!("ttyd is not installed at {exe}"))
    ));
    g.line("if [ \"$(guest_init)\" = systemd ]; then");
    g.line(format!(
        "  install -m 0644 {u} /etc/systemd/system/{UNIT}; systemctl enable {UNIT}"
    ));
    g.line("else");
    g.line(format!("  install -D -m 0755 {s} {START}"));
    if secrets.ttyd.is_some() {
        // The start script runs as the ttyd user and reads the credential itself.
        g.line(format!("  chown {} {ENV_FILE}", q(&t.user)));
    }
    g.line("  if [ \"$(guest_init)\" = openrc ]; then");
    g.line(format!(
        "    install -m 0755 {o} /etc/init.d/diskforge-ttyd; rc-update add diskforge-ttyd default"
    ));
    g.line("  else");
    g.line(format!(
        "    echo {} > /etc/cron.d/diskforge-ttyd",
        q(&format!("@reboot {} {START} >/dev/null 2>&1", t.user))
    ));
    g.line("  fi");
    g.line("fi");
    Ok(())
}

/// What ttyd's files hold: the unit (systemd guests), the start script (the others)
/// and the credential's EnvironmentFile. The command line (port, interface, writable,
/// extra arguments, command) and the credential live only in these files, so a rebuild
/// that changes only those can rewrite them on a kept disk (see [`patch_files`]).
struct Contents {
    unit: String,
    start: String,
    env: Option<String>,
}

fn contents(t: &Ttyd, secrets: &Secrets) -> Contents {
    let exe = match &t.source {
        TtydSource::Package(_) => PACKAGED,
        TtydSource::Url(_) | TtydSource::Path(_) => BIN,
    };
    let mut args: Vec<String> = vec![exe.to_string(), "-p".into(), t.port.to_string()];
    if let Some(i) = &t.interface {
        args.extend(["-i".into(), i.clone()]);
    }
    if t.writable {
        args.push("-W".into());
    }
    if secrets.ttyd.is_some() {
        args.extend(["-c".into(), CREDENTIAL.into()]);
    }
    args.extend(t.extra_args.iter().cloned());
    args.extend(t.command.iter().cloned());
    let env = secrets
        .ttyd
        .as_ref()
        .map(|cred| format!("TTYD_CREDENTIAL={}\n", env_quote(cred.expose())));
    let exec_start = args
        .iter()
        .map(|a| {
            if a == CREDENTIAL {
                a.clone()
            } else {
                systemd_quote(a)
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let unit = include_str!("diskforge-ttyd.service")
        .replace("@USER@", &t.user)
        .replace(
            "@ENVIRONMENT@",
            if secrets.ttyd.is_some() {
                "EnvironmentFile=/etc/diskforge/ttyd.env\n"
            } else {
                ""
            },
        )
        .replace("@EXEC_START@", &exec_start);
    let mut start =
        String::from("#!/bin/sh\n# Starts ttyd on guests without systemd (diskforge).\n");
    if secrets.ttyd.is_some() {
        start.push_str(&format!(". {ENV_FILE}\n"));
    }
    let words: Vec<String> = args
        .iter()
        .map(|a| {
            if a == CREDENTIAL {
                "\"$TTYD_CREDENTIAL\"".to_string()
            } else {
                q(a)
            }
        })
        .collect();
    start.push_str(&format!("exec {}\n", words.join(" ")));
    Contents { unit, start, env }
}

/// ttyd's files as the host rewrites them on a kept disk: each where the guest script
/// put it, when it did (the unit on systemd guests, the start script on the others).
pub fn patch_files(t: &Ttyd, secrets: &Secrets) -> Vec<PatchFile> {
    let c = contents(t, secrets);
    let file = |path: &str, text: String| PatchFile {
        path: path.to_string(),
        data: PatchData::Content(StageData::Bytes(text.into_bytes())),
        presence: Presence::IfPresent,
        home_of: None,
    };
    let mut files = vec![
        file(&format!("/etc/systemd/system/{UNIT}"), c.unit),
        file(START, c.start),
    ];
    files.extend(c.env.map(|e| file(ENV_FILE, e)));
    files
}

/// Quotes one word for a systemd `ExecStart=` line so that systemd passes it on
/// unchanged: `$` and `%` doubled (no variable or specifier expansion), `\` and `"`
/// escaped inside double quotes.
fn systemd_quote(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c))
    {
        w.to_string()
    } else {
        format!(
            "\"{}\"",
            w.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('$', "$$")
                .replace('%', "%%")
        )
    }
}

/// A value for an EnvironmentFile that both systemd and `sh`'s `.` read the same way:
/// double quotes, with `\`, `"`, `$` and `` ` `` escaped.
fn env_quote(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        if matches!(c, '\\' | '"' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_start_words_reach_the_program_unchanged() {
        assert_eq!(systemd_quote("-p"), "-p");
        assert_eq!(systemd_quote("date +%s"), "\"date +%%s\"");
        assert_eq!(systemd_quote("100%"), "\"100%%\"");
        assert_eq!(systemd_quote("$HOME"), "\"$$HOME\"");
        assert_eq!(systemd_quote("a \"b\" \\c"), "\"a \\\"b\\\" \\\\c\"");
        assert_eq!(systemd_quote(""), "\"\"");
    }

    #[test]
    fn env_values_read_back_the_same_in_sh() {
        let v = r#"u:p "w$x`y\z"#;
        let line = format!("X={}\nprintf %s \"$X\"", env_quote(v));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&line)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), v);
    }
}
