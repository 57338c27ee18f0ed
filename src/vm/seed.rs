//! cloud-init's NoCloud seed, made the way KubeVirt makes its `cloudInitNoCloud` volume:
//! an ISO 9660 image labelled `cidata` holding `user-data` and `meta-data` (genisoimage
//! with Joliet and Rock Ridge), attached as a virtio disk.
//!
//! User-data is `#cloud-config` YAML. Secrets never sit in the file: `${env:NAME}` and
//! `${file:PATH}` (relative to the user-data file, one trailing newline dropped) are
//! replaced on the host, every value so read is registered with the redactor, and the
//! seed lives in the VM's directory (mode 0600), removed with it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::sys::exec::Cmd;

/// The header cloud-init needs to read user-data as cloud-config.
pub const HEADER: &str = "#cloud-config";

/// A user-data file that is not usable cloud-config (a usage error: exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct BadUserData {
    pub path: String,
    pub message: String,
}

/// Reads user-data, replaces its `${env:…}` and `${file:…}` references, and checks it
/// is cloud-config: the header on the first line, then a YAML mapping.
pub fn read_user_data(path: &Path) -> Result<String> {
    let bad = |message: String| BadUserData {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    if text.lines().next().map(str::trim_end) != Some(HEADER) {
        return Err(bad(format!(
            "user-data must start with a `{HEADER}` line (cloud-init ignores it otherwise)"
        ))
        .into());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let text = substitute(&text, dir).map_err(|e| bad(format!("{e:#}")))?;
    match serde_yaml::from_str::<serde_yaml::Value>(&text) {
        Ok(v @ serde_yaml::Value::Mapping(_)) => {
            register_passwords(&v);
            Ok(text)
        }
        Ok(_) => Err(bad("cloud-config must be a YAML mapping".into()).into()),
        Err(e) => {
            let at = e
                .location()
                .map(|l| format!("{}:{}: ", l.line(), l.column()))
                .unwrap_or_default();
            // serde_yaml's message may quote the value: masked, as it may be a secret.
            Err(bad(format!(
                "{at}not valid YAML: {}",
                crate::redact::apply(&e.to_string(), &[])
            ))
            .into())
        }
    }
}

/// Registers every password written in the cloud-config itself as a secret, so it is
/// masked wherever diskforge might show it.
fn register_passwords(v: &serde_yaml::Value) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, v) in m {
                let key = k.as_str().unwrap_or_default();
                if matches!(
                    key,
                    "password" | "passwd" | "plain_text_passwd" | "hashed_passwd"
                ) {
                    if let Some(s) = v.as_str() {
                        crate::redact::register(s);
                    }
                }
                register_passwords(v);
            }
        }
        serde_yaml::Value::Sequence(s) => s.iter().for_each(register_passwords),
        _ => {}
    }
}

/// Replaces `${env:NAME}` and `${file:PATH}`; every value is registered as a secret.
fn substitute(text: &str, dir: &Path) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').context("a `${` without its closing `}`")?;
        let reference = &after[..end];
        let value = if let Some(name) = reference.strip_prefix("env:") {
            std::env::var(name)
                .with_context(|| format!("${{env:{name}}}: the environment variable is not set"))?
        } else if let Some(file) = reference.strip_prefix("file:") {
            let p = dir.join(file);
            let v = std::fs::read_to_string(&p)
                .with_context(|| format!("${{file:{file}}}: reading {}", p.display()))?;
            v.strip_suffix('\n').unwrap_or(&v).to_string()
        } else {
            bail!("${{{reference}}}: only ${{env:NAME}} and ${{file:PATH}} are replaced");
        };
        crate::redact::register(&value);
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The genisoimage command that writes the seed.
pub fn seed_cmd(dir: &Path, iso: &Path) -> Cmd {
    Cmd::new("genisoimage", "making cloud-init's NoCloud seed (cidata)")
        .args(["-quiet", "-output"])
        .arg(iso)
        .args([
            "-volid",
            "cidata",
            "-joliet",
            "-rock",
            "user-data",
            "meta-data",
        ])
        .current_dir(dir)
}

/// Writes `user-data` and `meta-data` (instance ID and hostname, as KubeVirt writes
/// them) into `dir` and makes the seed image there; returns its path.
pub fn make(dir: &Path, user_data: &str, hostname: &str) -> Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let files = dir.join("cidata");
    std::fs::create_dir(&files).context("creating the seed's directory")?;
    let instance = format!("{hostname}.{}", std::process::id());
    for (name, text) in [
        ("user-data", user_data.to_string()),
        (
            "meta-data",
            format!("instance-id: {instance}\nlocal-hostname: {hostname}\n"),
        ),
    ] {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(files.join(name))
            .with_context(|| format!("writing the seed's {name}"))?;
        std::io::Write::write_all(&mut f, text.as_bytes())
            .with_context(|| format!("writing the seed's {name}"))?;
    }
    let iso = dir.join("cidata.iso");
    seed_cmd(&files, &iso).run()?;
    std::fs::remove_dir_all(&files).context("removing the seed's files")?;
    Ok(iso)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_must_be_cloud_config() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("ud");
        for (text, want) in [
            ("users: []\n", "must start with a `#cloud-config` line"),
            ("#cloud-config\nusers: [\n", "not valid YAML"),
            ("#cloud-config\n- a\n", "must be a YAML mapping"),
            (
                "#cloud-config\nx: ${nope}\n",
                "only ${env:NAME} and ${file:PATH}",
            ),
            (
                "#cloud-config\nx: ${env:DISKFORGE_TEST_SURELY_UNSET}\n",
                "is not set",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = read_user_data(&p).unwrap_err();
            assert!(e.downcast_ref::<BadUserData>().is_some(), "{e:#}");
            assert!(e.to_string().contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn secrets_are_read_from_files_and_masked() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("pw"), "pw-Seed-Secret-61\n").unwrap();
        let p = t.path().join("ud");
        std::fs::write(
            &p,
            "#cloud-config\nchpasswd:\n  users: [{name: lab, password: \"${file:pw}\", type: text}]\n",
        )
        .unwrap();
        let text = read_user_data(&p).unwrap();
        assert!(text.contains("password: \"pw-Seed-Secret-61\""), "{text}");
        assert_eq!(
            crate::redact::apply("said pw-Seed-Secret-61", &[]),
            format!("said {}", crate::redact::REDACTED)
        );
    }
}
