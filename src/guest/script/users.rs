//! Groups, users, their SSH keys and passwords, and root's. Passwords are hashed on the
//! host (SHA-512 crypt, what `chpasswd -e` takes): the plaintext never enters the guest.

use anyhow::{Context, Result};

use super::{Part, Secrets, StageData};
use crate::recipe::{Customize, SecretValue};
use crate::sys::exec::shell_quote as q;

/// `$6$SALT$HASH` for `password`, with a fresh random salt.
pub fn shadow_hash(password: &SecretValue) -> Result<String> {
    use sha_crypt::PasswordHasher;
    let mut salt = [0u8; 12];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?,
        &mut salt,
    )
    .context("reading a random salt")?;
    let h = sha_crypt::ShaCrypt::SHA512
        .hash_password_with_salt(password.expose().as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))?;
    Ok(h.as_str().to_string())
}

/// Whether `password` is the one `hash` (a [`shadow_hash`]) was made from.
pub fn matches_hash(password: &SecretValue, hash: &str) -> bool {
    use sha_crypt::PasswordVerifier;
    sha_crypt::PasswordHash::new(hash).is_ok_and(|h| {
        sha_crypt::ShaCrypt::SHA512
            .verify_password(password.expose().as_bytes(), &h)
            .is_ok()
    })
}

pub(super) fn keys_file(keys: &[String]) -> Vec<u8> {
    let mut s = String::new();
    for k in keys {
        s.push_str(k.trim());
        s.push('\n');
    }
    s.into_bytes()
}

/// Stages `NAME:HASH` and feeds it to `chpasswd -e`.
fn set_password(g: &mut Part, user: &str, secret: &SecretValue, name: String) -> Result<()> {
    let f = g.stage(
        name,
        StageData::Bytes(format!("{user}:{}\n", shadow_hash(secret)?).into_bytes()),
        0o600,
    );
    g.line(format!("chpasswd -e < {f}"));
    Ok(())
}

pub fn groups_and_users(g: &mut Part, c: &Customize, secrets: &Secrets) -> Result<()> {
    for grp in &c.groups {
        g.step(&format!("group {}", grp.name));
        let gid = grp.gid.map(|g| format!("-g {g} ")).unwrap_or_default();
        g.line(format!(
            "getent group {n} >/dev/null || groupadd {gid}{n}",
            n = q(&grp.name)
        ));
    }
    for (i, u) in c.users.iter().enumerate() {
        g.step(&user_summary(u));
        let n = q(&u.name);
        let shell = q(u.shell.as_deref().unwrap_or(super::DEFAULT_SHELL));
        let uid = u.uid.map(|x| format!("-u {x} ")).unwrap_or_default();
        let groups = if u.groups.is_empty() {
            String::new()
        } else {
            format!("-G {} ", q(&u.groups.join(",")))
        };
        g.line(format!(
            "if id {n} >/dev/null 2>&1; then usermod -s {shell} {groups}{n}; else useradd -m -s {shell} {uid}{groups}{n}; fi"
        ));
        if u.password.is_some() {
            let secret = secrets
                .users
                .iter()
                .find(|(name, _)| *name == u.name)
                .map(|(_, s)| s.clone())
                .with_context(|| format!("the password of user {} was not resolved", u.name))?;
            set_password(g, &u.name, &secret, format!("secrets/user-{i}"))?;
        }
        if !u.ssh_authorized_keys.is_empty() {
            let f = g.stage(
                format!("keys/user-{i}"),
                StageData::Bytes(keys_file(&u.ssh_authorized_keys)),
                0o644,
            );
            g.line(format!(
                "home=$(getent passwd {n} | cut -d: -f6); grp=$(id -gn {n}); install -d -m 0700 -o {n} -g \"$grp\" \"$home/.ssh\"; install -m 0600 -o {n} -g \"$grp\" {f} \"$home/.ssh/authorized_keys\""
            ));
        }
        if u.sudo {
            g.line(format!(
                "mkdir -p /etc/sudoers.d; printf '%s ALL=(ALL) NOPASSWD:ALL\\n' {n} > /etc/sudoers.d/{n}; chmod 0440 /etc/sudoers.d/{n}"
            ));
        }
    }
    Ok(())
}

/// What `plan` says about a user: groups, sudo, and whether a password and keys are set
/// (never the password).
fn user_summary(u: &crate::recipe::UserSpec) -> String {
    let groups = if u.groups.is_empty() {
        "no extra groups".to_string()
    } else {
        format!("groups {}", u.groups.join(","))
    };
    let sudo = if u.sudo {
        "sudo without password"
    } else {
        "no sudo"
    };
    let password = if u.password.is_some() {
        "password set"
    } else {
        "no password"
    };
    let keys = match u.ssh_authorized_keys.len() {
        0 => String::new(),
        n => format!(", {n} SSH key{}", if n == 1 { "" } else { "s" }),
    };
    format!("user {} ({groups}; {sudo}; {password}{keys})", u.name)
}

pub fn root(g: &mut Part, c: &Customize, secrets: &Secrets) -> Result<()> {
    if let Some(pw) = &secrets.root {
        g.step("root password");
        set_password(g, "root", pw, "secrets/root".into())?;
    }
    if !c.root_ssh_authorized_keys.is_empty() {
        g.step("root SSH keys");
        let f = g.stage(
            "keys/root".into(),
            StageData::Bytes(keys_file(&c.root_ssh_authorized_keys)),
            0o644,
        );
        g.line(format!(
            "install -d -m 0700 /root/.ssh; install -m 0600 {f} /root/.ssh/authorized_keys"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        use sha_crypt::PasswordVerifier;
        let pw = SecretValue::new("correct horse".into());
        let a = shadow_hash(&pw).unwrap();
        let b = shadow_hash(&pw).unwrap();
        assert!(a.starts_with("$6$") && a != b);
        let parsed = sha_crypt::PasswordHash::new(&a).unwrap();
        assert!(sha_crypt::ShaCrypt::SHA512
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        assert!(sha_crypt::ShaCrypt::SHA512
            .verify_password(b"wrong", &parsed)
            .is_err());
        assert!(matches_hash(&pw, &a));
        assert!(!matches_hash(&SecretValue::new("wrong".into()), &a));
        assert!(!matches_hash(&pw, "not a hash"));
    }
}
