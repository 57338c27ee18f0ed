//! SELinux labels for what the guest stage wrote. Files created from outside a running
//! guest (libguestfs, a chroot) get no label, or keep the label of the file they
//! replaced: on an enforcing guest an unlabelled `/etc/shadow` breaks password login and
//! systemd may not execute an unlabelled ttyd. So the last appliance launch of a build
//! relabels every filesystem it may have written with the guest's own policy.
//!
//! `/.autorelabel` is no answer for a containerDisk: its writes are discarded at every
//! VM start, so every start would relabel the whole disk and reboot.
//!
//! Debian's appliance has no `setfiles` (policycoreutils is only in the Red Hat
//! family's appliance package list), so the guest's own `setfiles` runs first choice,
//! inside the guest; libguestfs's `selinux-relabel` is the fallback where the appliance
//! has it.

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::fish::Fish;
use crate::recipe::SelinuxRelabel;
use crate::sys::exec::shell_quote as q;

/// What the build does about SELinux labels, decided when the plan is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relabel {
    /// Nothing: the recipe opted out, or the guest is known to have no policy.
    Skip,
    /// Relabel when the guest's `/etc/selinux/config` names a policy (`auto`).
    IfPolicy,
    /// Relabel, or fail the build (`selinux-relabel: true`).
    Required,
}

/// Distribution families whose official images ship no SELinux policy: with `auto`,
/// their builds skip the check unless the recipe installs a policy package.
const WITHOUT_POLICY: &[&str] = &["debian", "ubuntu", "cirros", "opensuse", "alpine"];

impl Relabel {
    /// The decision for a recipe setting, the base's distribution family (catalog
    /// entries know it; a recipe's own URL or file does not) and the packages the recipe
    /// installs.
    pub fn decide(setting: SelinuxRelabel, os: Option<&str>, packages: &[String]) -> Relabel {
        match setting {
            SelinuxRelabel::Off => Relabel::Skip,
            SelinuxRelabel::Required => Relabel::Required,
            SelinuxRelabel::Auto => {
                let installs_policy = packages.iter().any(|p| p.starts_with("selinux-policy"));
                match os {
                    Some(os) if WITHOUT_POLICY.contains(&os) && !installs_policy => Relabel::Skip,
                    _ => Relabel::IfPolicy,
                }
            }
        }
    }

    /// The operation `plan` lists, if any.
    pub fn operation(self) -> Option<String> {
        let what = "relabel every writable filesystem with the guest's SELinux policy \
                    (the guest's `setfiles -F FILE_CONTEXTS MOUNTPOINT…`, FILE_CONTEXTS from \
                    the SELINUXTYPE of /etc/selinux/config)";
        match self {
            Relabel::Skip => None,
            Relabel::IfPolicy => Some(format!("{what}, when the guest has one")),
            Relabel::Required => Some(format!("{what}; required: the build fails without one")),
        }
    }
}

/// No way to relabel the guest exists (exit status 3, like a missing host tool).
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot relabel the guest's SELinux policy {policy}: the guest has no `setfiles` \
     (package policycoreutils) and this libguestfs appliance has no `selinux-relabel`; \
     install policycoreutils in the guest (customize.packages) or set \
     `customize.selinux-relabel: false` to build an image whose new files are unlabelled"
)]
pub struct NoRelabelTool {
    pub policy: String,
}

/// The parts of `/etc/selinux/config` that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `SELINUX=`: `enforcing`, `permissive` or `disabled`.
    pub mode: String,
    /// `SELINUXTYPE=`, e.g. `targeted` (Fedora, EL) or `default` (Debian's refpolicy).
    pub policy: String,
}

impl Config {
    /// Parses the file's `KEY=VALUE` lines; `None` without a `SELINUXTYPE`.
    pub fn parse(text: &str) -> Option<Config> {
        let mut mode = String::new();
        let mut policy = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
            match k.trim() {
                "SELINUX" => mode = v.to_ascii_lowercase(),
                "SELINUXTYPE" => policy = v,
                _ => {}
            }
        }
        // A policy name is a directory under /etc/selinux: never a path.
        let valid = !policy.is_empty()
            && !policy.contains('/')
            && policy != "."
            && policy != ".."
            && !policy.contains(char::is_whitespace);
        valid.then_some(Config { mode, policy })
    }

    /// Where the policy's file contexts live in the guest.
    pub fn file_contexts(&self) -> String {
        format!("/etc/selinux/{}/contexts/files/file_contexts", self.policy)
    }
}

/// Filesystems that hold no extended attributes (their labels come from the mount).
const NO_XATTRS: &[&str] = &["vfat", "msdos", "exfat", "ntfs", "iso9660", "swap"];

/// Relabels the guest's writable filesystems: `mounts` are (mount point, filesystem
/// type) of every filesystem mounted read-write. Returns the mount points relabelled
/// (none when the guest has no policy and `relabel` allows that).
pub fn relabel(f: &Fish, relabel: Relabel, mounts: &[(String, String)]) -> Result<Vec<String>> {
    if relabel == Relabel::Skip {
        return Ok(Vec::new());
    }
    let config = if f.is_file("/etc/selinux/config")? {
        Config::parse(&f.call(&["cat", "/etc/selinux/config"])?)
    } else {
        None
    };
    let config = match (config, relabel) {
        (Some(c), Relabel::IfPolicy) if c.mode == "disabled" => {
            tracing::debug!("the guest's SELinux is disabled: no relabel");
            return Ok(Vec::new());
        }
        (Some(c), _) => c,
        (None, Relabel::IfPolicy) => return Ok(Vec::new()),
        (None, _) => bail!(
            "customize.selinux-relabel is true, but the guest has no /etc/selinux/config \
             naming a policy (SELINUXTYPE=…)"
        ),
    };
    let contexts = config.file_contexts();
    if !f.is_file(&contexts)? {
        bail!(
            "the guest's /etc/selinux/config names the SELinux policy {:?}, but {contexts} \
             is missing: install the policy package in the guest, or fix SELINUXTYPE",
            config.policy
        );
    }
    let targets: Vec<String> = mounts
        .iter()
        .filter(|(_, fs)| !NO_XATTRS.contains(&fs.as_str()))
        .map(|(mp, _)| mp.clone())
        .collect();
    let stage = crate::progress::stage(
        "selinux-relabel",
        format!(
            "relabelling {} with the SELinux policy {}",
            targets.join(" "),
            config.policy
        ),
    );
    let guest_setfiles = f.call(&["sh", "command -v setfiles || true"])?;
    let how = if !guest_setfiles.trim().is_empty() {
        // setfiles does not cross filesystems: every mount point is named. -F resets
        // the whole context (user, role, level), as a fresh install labels it.
        let mut words = vec![q(guest_setfiles.trim()), "-F".into(), q(&contexts)];
        words.extend(targets.iter().map(|t| q(t)));
        f.call(&["sh", &words.join(" ")])
            .with_context(|| format!("relabelling the guest with its {contexts}"))?;
        "guest setfiles"
    } else if f.try_call(&["available", "selinuxrelabel"]).is_some() {
        for t in &targets {
            f.call(&["selinux-relabel", &contexts, t, "force:true"])
                .with_context(|| format!("relabelling {t} with the guest's {contexts}"))?;
        }
        "libguestfs selinux-relabel"
    } else {
        return Err(NoRelabelTool {
            policy: config.policy,
        }
        .into());
    };
    stage.done();
    crate::progress::event(
        "selinux_relabel",
        json!({"policy": config.policy, "mode": config.mode, "filesystems": targets.join(" "), "tool": how}),
    );
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_config_files_distributions_ship() {
        let fedora = "# This file controls the state of SELinux\nSELINUX=enforcing\n# SELINUXTYPE= can take\nSELINUXTYPE=targeted\n";
        assert_eq!(
            Config::parse(fedora),
            Some(Config {
                mode: "enforcing".into(),
                policy: "targeted".into()
            })
        );
        let debian = "SELINUX=permissive\nSELINUXTYPE=\"default\"\nSETLOCALDEFS=0\n";
        let c = Config::parse(debian).unwrap();
        assert_eq!(c.policy, "default");
        assert_eq!(
            c.file_contexts(),
            "/etc/selinux/default/contexts/files/file_contexts"
        );
        assert_eq!(Config::parse("SELINUX=disabled\n"), None);
        assert_eq!(Config::parse("SELINUXTYPE=../../tmp\n"), None);
        assert_eq!(Config::parse("#SELINUXTYPE=targeted\n"), None);
    }

    #[test]
    fn decides_from_the_setting_the_family_and_the_packages() {
        use SelinuxRelabel::*;
        let none: Vec<String> = Vec::new();
        assert_eq!(Relabel::decide(Off, Some("fedora"), &none), Relabel::Skip);
        assert_eq!(
            Relabel::decide(Required, Some("debian"), &none),
            Relabel::Required
        );
        assert_eq!(
            Relabel::decide(Auto, Some("fedora"), &none),
            Relabel::IfPolicy
        );
        assert_eq!(
            Relabel::decide(Auto, Some("centos"), &none),
            Relabel::IfPolicy
        );
        assert_eq!(Relabel::decide(Auto, None, &none), Relabel::IfPolicy);
        assert_eq!(Relabel::decide(Auto, Some("debian"), &none), Relabel::Skip);
        let policy = vec!["tmux".to_string(), "selinux-policy-default".to_string()];
        assert_eq!(
            Relabel::decide(Auto, Some("debian"), &policy),
            Relabel::IfPolicy
        );
        assert!(Relabel::Skip.operation().is_none());
        assert!(Relabel::IfPolicy
            .operation()
            .unwrap()
            .contains("when the guest has one"));
    }
}
