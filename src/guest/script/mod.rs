//! The guest-side customization: POSIX shell scripts plus staging tarballs (files, SSH
//! keys, commands, the ttyd binary, secrets), generated from the recipe in its order and
//! run inside the guest with the guest's own tools.
//!
//! It comes in two parts so `build --incremental` can keep the disk between them:
//! [`Customization::packages`] (install and remove packages) and
//! [`Customization::main`] (everything else). A full build runs both in one appliance
//! launch.
//!
//! Secrets: user and root passwords are hashed on the host (SHA-512 crypt) and only the
//! hash enters the guest; the ttyd credential is written once, to the EnvironmentFile
//! the recipe asked for. Everything staged lives on a tmpfs mounted over the staging
//! directory for the launch, so no plaintext ever reaches the guest's disk, not even
//! its free blocks. Every argument is shell-quoted whole ([`crate::sys::exec::shell_quote`]);
//! nothing is ever dropped from a word to make it fit.

mod desktop;
mod hygiene;
mod ttyd;
mod users;

pub use users::{matches_hash, shadow_hash};

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::guest::patch::{PatchData, PatchFile, Presence};
use crate::recipe::{Customize, Recipe, SecretValue, TtydSource};
use crate::sys::exec::shell_quote as q;

/// Where the staging tarball is unpacked in the guest (a tmpfs during the launch).
pub const STAGE: &str = "/var/tmp/diskforge-stage";

/// The shell functions every part starts with.
const PRELUDE: &str = include_str!("prelude.sh");

pub use super::content::StageData;

#[derive(Clone)]
pub struct StageFile {
    pub name: String,
    pub data: StageData,
    pub mode: u32,
}

/// Secrets resolved on the host, by role.
#[derive(Default, Clone)]
pub struct Secrets {
    /// Per user name.
    pub users: Vec<(String, SecretValue)>,
    pub root: Option<SecretValue>,
    /// `user:password` for ttyd's basic auth.
    pub ttyd: Option<SecretValue>,
    /// The desktop's VNC password.
    pub desktop: Option<SecretValue>,
}

impl Secrets {
    /// The secrets that reach the disk outside the files the host may rewrite — the
    /// desktop's password file (made by the guest's vncpasswd), and users' and root's
    /// passwords unless `hashes_rewritten` — as one value: a disk kept for host-side
    /// rewrites is reused only while these are the same.
    pub fn unpatchable(&self, hashes_rewritten: bool) -> SecretValue {
        let mut s = String::new();
        if !hashes_rewritten {
            for (name, v) in &self.users {
                s.push_str(&format!("user\0{name}\0{}\0", v.expose()));
            }
            if let Some(v) = &self.root {
                s.push_str(&format!("root\0{}\0", v.expose()));
            }
        }
        if let Some(v) = &self.desktop {
            s.push_str(&format!("desktop\0{}\0", v.expose()));
        }
        SecretValue::new(s)
    }

    /// Every value to redact from messages.
    pub fn values(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .users
            .iter()
            .map(|(_, s)| s.expose().to_string())
            .collect();
        v.extend(self.root.iter().map(|s| s.expose().to_string()));
        if let Some(t) = &self.ttyd {
            v.push(t.expose().to_string());
            if let Some((_, p)) = t.expose().split_once(':') {
                v.push(p.to_string());
            }
        }
        v.extend(self.desktop.iter().map(|s| s.expose().to_string()));
        v
    }
}

/// One script with the files it reads.
#[derive(Default)]
pub struct Part {
    pub script: String,
    pub files: Vec<StageFile>,
    /// Human-readable steps (what `plan` shows).
    pub steps: Vec<String>,
}

impl Part {
    fn new() -> Part {
        Part {
            script: PRELUDE.replace("@STAGE@", STAGE),
            ..Part::default()
        }
    }

    /// True when there is nothing to run.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    fn step(&mut self, what: &str) {
        let _ = writeln!(self.script, "\nstep {}", q(what));
        self.steps.push(what.to_string());
    }

    fn line(&mut self, l: impl AsRef<str>) {
        self.script.push_str(l.as_ref());
        self.script.push('\n');
    }

    /// Stages `data` as `$S/name` and returns that path (quoted for the shell).
    fn stage(&mut self, name: String, data: StageData, mode: u32) -> String {
        let path = format!("\"$S\"/{}", q(&name));
        self.files.push(StageFile { name, data, mode });
        path
    }

    /// Writes the staging tarball (mode 0600: it may hold secrets).
    pub fn write_tar(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        let mut b = tar::Builder::new(std::io::BufWriter::new(f));
        let script = StageFile {
            name: "customize.sh".into(),
            data: StageData::Bytes(self.script.clone().into_bytes()),
            mode: 0o700,
        };
        for sf in self.files.iter().chain(std::iter::once(&script)) {
            let mut h = tar::Header::new_gnu();
            h.set_mode(sf.mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            match &sf.data {
                StageData::Bytes(bytes) => {
                    h.set_size(bytes.len() as u64);
                    b.append_data(&mut h, &sf.name, bytes.as_slice())
                }
                StageData::File(p) => {
                    let f = std::fs::File::open(p)
                        .with_context(|| format!("opening {}", p.display()))?;
                    h.set_size(f.metadata()?.len());
                    b.append_data(&mut h, &sf.name, f)
                }
            }
            .with_context(|| format!("adding {} to the staging tarball", sf.name))?;
        }
        b.into_inner()
            .context("finishing the staging tarball")?
            .flush()
            .context("writing the staging tarball")?;
        Ok(())
    }
}

/// The whole customization of a recipe.
pub struct Customization {
    /// Package installs and removals (the disk after this part is what
    /// `build --incremental` keeps).
    pub packages: Part,
    /// Everything else: users, files, commands, units, ttyd, hygiene.
    pub main: Part,
    /// The packages installed (the appliance needs a network when there are some).
    pub package_names: Vec<String>,
    /// What of `main` the host may rewrite on a kept disk.
    pub patchable: Patchable,
}

/// The files of the main part whose content alone may change between two builds with
/// the same disk otherwise: the host rewrites them on a disk kept after the whole
/// customization (`build --incremental`, see [`crate::guest::patch`]) instead of
/// running the customization again. A file qualifies when the script writes it whole
/// (`install`, `chpasswd -e` for password hashes) and nothing after it reads or changes
/// it.
#[derive(Debug, Default, Clone)]
pub struct Patchable {
    /// Indices into `customize.files`.
    pub recipe_files: Vec<usize>,
    /// Indices into `customize.users` of the users whose SSH keys are rewritable
    /// (`/home/NAME/.ssh/authorized_keys`).
    pub user_keys: Vec<usize>,
    /// root's SSH keys.
    pub root_keys: bool,
    /// ttyd's unit, start script and credential file (its command line and credential).
    pub ttyd: bool,
    /// Every such file with the content this build gives it, in the order the script
    /// writes them; user and root password hashes as an edit of /etc/shadow (and of
    /// its backup).
    pub files: Vec<PatchFile>,
    /// User and root password hashes are rewritten.
    pub passwords: bool,
    /// Passwords are set that are not rewritten (the desktop's, through the guest's
    /// vncpasswd; users' and root's when the recipe has commands): a kept disk is
    /// reused only while they are the same ([`Secrets::unpatchable`]).
    pub kept_passwords: bool,
}

impl Patchable {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Where a later step of the main part (or of the SBOM's reading of the guest) reads or
/// writes, and the programs, libraries and settings later steps run with (a recipe
/// file could change what they do): a recipe file there is not rewritten on the host.
const LATER_STEPS_TOUCH: &[&str] = &[
    "/.autorelabel",
    "/bin",
    "/boot",
    "/etc/apt",
    "/etc/cloud",
    "/etc/conf.d",
    "/etc/cron.d",
    "/etc/default",
    "/etc/diskforge",
    "/etc/dnf",
    "/etc/environment",
    "/etc/group",
    "/etc/gshadow",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/init.d",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ld.so.preload",
    "/etc/localtime",
    "/etc/login.defs",
    "/etc/lvm",
    "/etc/machine-id",
    "/etc/nsswitch.conf",
    "/etc/os-release",
    "/etc/pam.d",
    "/etc/passwd",
    "/etc/resolv.conf",
    "/etc/runlevels",
    "/etc/security",
    "/etc/selinux",
    "/etc/shadow",
    "/etc/ssh",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/systemd",
    "/etc/timezone",
    "/etc/yum.conf",
    "/etc/yum.repos.d",
    "/etc/zypp",
    "/lib",
    "/lib/apk",
    "/root",
    "/sbin",
    "/usr/bin",
    "/usr/lib",
    "/usr/lib64",
    "/usr/local/bin",
    "/usr/local/lib/diskforge",
    "/usr/local/lib/systemd",
    "/usr/local/sbin",
    "/usr/sbin",
    "/usr/share/doc",
    "/usr/share/novnc",
    "/usr/share/zoneinfo",
    "/var/cache",
    "/var/lib/apt",
    "/var/lib/cloud",
    "/var/lib/dbus",
    "/var/lib/dpkg",
    "/var/lib/rpm",
    "/var/lib/systemd",
    "/var/lib/urandom",
    "/var/log",
    "/var/tmp",
];

/// Which files the host may rewrite (see [`Patchable`]), in the order the script
/// writes them: users' SSH keys, recipe files, root's SSH keys, the password hashes,
/// ttyd's files. Recipe commands may read any file: with commands, no recipe file is.
fn patchable(recipe: &Recipe, secrets: &Secrets, recipe_dir: &Path) -> Result<Patchable> {
    let c = &recipe.customize;
    let mut p = Patchable::default();
    let content = |b: Vec<u8>| PatchData::Content(StageData::Bytes(b));
    // Recipe commands run after users, root and files and may read or change any of
    // them (append a key, expire or lock a password): with commands, only ttyd's files
    // are rewritable.
    let no_commands = c.commands.is_empty();
    for (i, u) in c.users.iter().enumerate() {
        let path = format!("/home/{}/.ssh/authorized_keys", u.name);
        if no_commands
            && !u.ssh_authorized_keys.is_empty()
            && crate::guest::patch::plain_path(&path)
        {
            p.user_keys.push(i);
            p.files.push(PatchFile {
                path,
                data: content(users::keys_file(&u.ssh_authorized_keys)),
                presence: Presence::Always,
                home_of: Some(u.name.clone()),
            });
        }
    }
    if no_commands {
        for (i, f) in c.files.iter().enumerate() {
            let path = f.path.0.as_str();
            let data = match (&f.content, &f.source) {
                (Some(text), None) => StageData::Bytes(text.clone().into_bytes()),
                (None, Some(src)) => StageData::File(recipe_dir.join(&src.0)),
                _ => continue,
            };
            let written_once = c.files.iter().filter(|o| o.path.0 == path).count() == 1;
            let linked = c.symlinks.iter().any(|l| {
                crate::guest::patch::under(path, &l.path.0)
                    || crate::guest::patch::under(&l.path.0, path)
            });
            let touched = LATER_STEPS_TOUCH
                .iter()
                .any(|d| crate::guest::patch::under(path, d));
            if crate::guest::patch::plain_path(path) && written_once && !linked && !touched {
                p.recipe_files.push(i);
                p.files.push(PatchFile {
                    path: path.to_string(),
                    data: PatchData::Content(data),
                    presence: Presence::Always,
                    home_of: None,
                });
            }
        }
    }
    if no_commands && !c.root_ssh_authorized_keys.is_empty() {
        p.root_keys = true;
        p.files.push(PatchFile {
            path: "/root/.ssh/authorized_keys".into(),
            data: content(users::keys_file(&c.root_ssh_authorized_keys)),
            presence: Presence::Always,
            home_of: Some("root".into()),
        });
    }
    // Each hash with a fresh salt, as the script's own `chpasswd -e` lines get; the
    // backup `chpasswd` leaves holds earlier hashes of this build, which go too.
    let mut hashes = Vec::new();
    for (name, secret) in &secrets.users {
        hashes.push((name.clone(), shadow_hash(secret)?));
    }
    if let Some(r) = &secrets.root {
        hashes.push(("root".to_string(), shadow_hash(r)?));
    }
    let has_passwords = c.users.iter().any(|u| u.password.is_some()) || c.root_password.is_some();
    if no_commands && !hashes.is_empty() {
        p.passwords = true;
        p.files.push(PatchFile {
            path: "/etc/shadow".into(),
            data: PatchData::Passwords(hashes.clone()),
            presence: Presence::Always,
            home_of: None,
        });
        p.files.push(PatchFile {
            path: "/etc/shadow-".into(),
            data: PatchData::BackupPasswords(hashes),
            presence: Presence::IfPresent,
            home_of: None,
        });
    }
    if recipe.ttyd.enabled {
        p.ttyd = true;
        p.files.extend(ttyd::patch_files(&recipe.ttyd, secrets));
    }
    p.kept_passwords = (has_passwords && !p.passwords)
        || (recipe.desktop.enabled && recipe.desktop.credential.is_some());
    Ok(p)
}

impl Customization {
    /// Every step, in order.
    pub fn steps(&self) -> Vec<String> {
        self.packages
            .steps
            .iter()
            .chain(&self.main.steps)
            .cloned()
            .collect()
    }
}

/// Generates the customization for a recipe. `ttyd_binary` is the host file to install
/// when ttyd does not come from the package manager. Files named by the recipe must
/// already have been checked (real paths inside the recipe's directory).
pub fn generate(
    recipe: &Recipe,
    secrets: &Secrets,
    recipe_dir: &Path,
    ttyd_binary: Option<&Path>,
) -> Result<Customization> {
    let c: &Customize = &recipe.customize;
    let t = &recipe.ttyd;
    let mut package_names = c.packages.clone();
    if c.guest_agent && !package_names.iter().any(|p| p == GUEST_AGENT_PACKAGE) {
        package_names.push(GUEST_AGENT_PACKAGE.to_string());
    }
    if t.enabled {
        if let TtydSource::Package(p) = &t.source {
            package_names.push(p.clone());
        }
    }
    if recipe.desktop.enabled {
        for p in desktop::packages(&recipe.desktop) {
            if !package_names.contains(&p) {
                package_names.push(p);
            }
        }
    }
    let mut pk = Part::new();
    if !package_names.is_empty() || !c.remove_packages.is_empty() {
        pk.step(PACKAGE_SPEEDUPS);
        pk.line("man_db_index_off");
    }
    if !package_names.is_empty() {
        pk.step(&format!("install packages: {}", package_names.join(" ")));
        let words: Vec<String> = package_names.iter().map(|p| q(p)).collect();
        pk.line(format!(
            "with_appliance_dns install_packages {} || {{ rc=$?; man_db_index_back; echo \"package installation failed (exit $rc)\" >&2; exit $rc; }}",
            words.join(" ")
        ));
    }
    if !c.remove_packages.is_empty() {
        pk.step(&format!("remove packages: {}", c.remove_packages.join(" ")));
        let words: Vec<String> = c.remove_packages.iter().map(|p| q(p)).collect();
        pk.line(format!(
            "remove_packages {} || {{ rc=$?; man_db_index_back; exit $rc; }}",
            words.join(" ")
        ));
    }
    if !pk.is_empty() {
        pk.line("man_db_index_back");
    }

    let mut g = Part::new();
    users::groups_and_users(&mut g, c, secrets)?;
    files(&mut g, c, recipe_dir)?;
    users::root(&mut g, c, secrets)?;
    for (i, cmd) in c.commands.iter().enumerate() {
        g.step(&format!("command {}: {}", i + 1, first_line(cmd)));
        let f = g.stage(
            format!("commands/{i}.sh"),
            StageData::Bytes(format!("{cmd}\n").into_bytes()),
            0o700,
        );
        g.line(format!("/bin/sh -e {f}"));
    }
    for u in &c.enable_units {
        g.step(&format!("enable {u}"));
        g.line(format!("enable_unit {}", q(u)));
    }
    for u in &c.disable_units {
        g.step(&format!("disable {u}"));
        g.line(format!(
            "if have systemctl; then systemctl disable {} || true; fi",
            q(u)
        ));
    }
    if let Some(hn) = &c.hostname {
        g.step(&format!("hostname {hn}"));
        g.line(format!("echo {} > /etc/hostname", q(hn)));
        g.line(format!(
            "if [ -f /etc/hosts ] && ! grep -q '^127.0.1.1' /etc/hosts; then printf '127.0.1.1\\t%s\\n' {} >> /etc/hosts; fi",
            q(hn)
        ));
    }
    if let Some(tz) = &c.timezone {
        g.step(&format!("timezone {tz}"));
        let z = q(tz);
        g.line(format!(
            "[ -e /usr/share/zoneinfo/{z} ] || {{ echo {} >&2; exit 1; }}",
            q(&format!(
                "unknown time zone {tz}: /usr/share/zoneinfo/{tz} is missing"
            ))
        ));
        g.line(format!(
            "ln -sfn /usr/share/zoneinfo/{z} /etc/localtime; echo {z} > /etc/timezone"
        ));
    }
    firstboot(&mut g, c);
    if c.guest_agent {
        guest_agent(&mut g);
    }
    if t.enabled {
        ttyd::install(&mut g, t, secrets, ttyd_binary)?;
    }
    if recipe.desktop.enabled {
        desktop::install(&mut g, &recipe.desktop, secrets)?;
    }
    hygiene::apply(&mut g, &recipe.hygiene);
    g.line("\necho '==> customization finished'");
    Ok(Customization {
        packages: pk,
        main: g,
        package_names,
        patchable: patchable(recipe, secrets, recipe_dir)?,
    })
}

/// What the package step does differently from a plain `apt-get install` to be quick,
/// as `plan` shows it (none of it changes which packages or files are installed).
pub const PACKAGE_SPEEDUPS: &str = "package manager (apt): lists and packages fetched on the host with the guest's own sources and keys (by the guest when the host cannot), lists without translations, dpkg without fsync, man-db's index left to the VM's man-db.timer";

/// A user's login shell when the recipe names none.
pub const DEFAULT_SHELL: &str = "/bin/bash";

/// The QEMU guest agent's package: the same name in the apt, dnf, yum, zypper and apk
/// repositories of every distribution in the catalog.
pub const GUEST_AGENT_PACKAGE: &str = "qemu-guest-agent";

/// Starts the guest agent at boot, by the guest's init (`guest_init`, the one decision
/// every service of diskforge's follows). Debian's and Fedora's units are static and
/// started by udev when the `org.qemu.guest_agent.0` port appears (nothing to enable);
/// others are enabled; OpenRC gets the service in its default runlevel.
fn guest_agent(g: &mut Part) {
    g.step("enable the QEMU guest agent");
    g.line("case \"$(guest_init)\" in");
    g.line("  systemd)");
    g.line("    state=$(systemctl is-enabled qemu-guest-agent.service 2>/dev/null || true)");
    g.line("    case \"$state\" in static|enabled|indirect|alias) ;; *) systemctl enable qemu-guest-agent.service ;; esac ;;");
    g.line("  openrc) rc-update add qemu-guest-agent default ;;");
    g.line(
        "  *) echo 'no systemd or OpenRC: cannot start qemu-guest-agent at boot' >&2; exit 1 ;;",
    );
    g.line("esac");
}

fn files(g: &mut Part, c: &Customize, recipe_dir: &Path) -> Result<()> {
    for d in &c.directories {
        g.step(&format!("directory {}", d.path.0));
        let p = q(&d.path.0);
        g.line(format!("mkdir -p {p}"));
        match (d.owner.as_deref(), d.group.as_deref()) {
            (Some(o), Some(gr)) => g.line(format!("chown {} {p}", q(&format!("{o}:{gr}")))),
            (Some(o), None) => g.line(format!("chown {} {p}", q(o))),
            (None, Some(gr)) => g.line(format!("chgrp {} {p}", q(gr))),
            (None, None) => {}
        }
        if let Some(m) = d.mode {
            g.line(format!("chmod {:04o} {p}", m.0));
        }
    }
    for (i, f) in c.files.iter().enumerate() {
        g.step(&format!("file {}", f.path.0));
        let data = match (&f.content, &f.source) {
            (Some(text), None) => StageData::Bytes(text.clone().into_bytes()),
            (None, Some(src)) => StageData::File(recipe_dir.join(&src.0)),
            _ => bail!("file {}: give exactly one of content and source", f.path.0),
        };
        let staged = g.stage(format!("files/{i}"), data, 0o644);
        let mode = f.mode.map(|m| m.0).unwrap_or(0o644);
        let p = q(&f.path.0);
        g.line(format!(
            "mkdir -p \"$(dirname {p})\"; install -m {mode:04o} -o {} -g {} {staged} {p}",
            q(f.owner.as_deref().unwrap_or("root")),
            q(f.group.as_deref().or(f.owner.as_deref()).unwrap_or("root")),
        ));
    }
    for l in &c.symlinks {
        g.step(&format!("symlink {} -> {}", l.path.0, l.target));
        let p = q(&l.path.0);
        g.line(format!(
            "mkdir -p \"$(dirname {p})\"; ln -sfn {} {p}",
            q(&l.target)
        ));
    }
    Ok(())
}

fn firstboot(g: &mut Part, c: &Customize) {
    if c.firstboot_commands.is_empty() {
        return;
    }
    g.step("first-boot commands");
    let mut body = String::from("#!/bin/sh\n# Run once on the first boot (diskforge).\nset -e\n");
    for cmd in &c.firstboot_commands {
        body.push_str(cmd);
        body.push('\n');
    }
    let f = g.stage(
        "firstboot.sh".into(),
        StageData::Bytes(body.into_bytes()),
        0o755,
    );
    g.line(format!(
        "install -D -m 0755 {f} /usr/local/lib/diskforge/firstboot.sh"
    ));
    let u = g.stage(
        "diskforge-firstboot.service".into(),
        StageData::Bytes(include_str!("diskforge-firstboot.service").into()),
        0o644,
    );
    g.line("if [ \"$(guest_init)\" = systemd ]; then");
    g.line(format!("  install -m 0644 {u} /etc/systemd/system/diskforge-firstboot.service; systemctl enable diskforge-firstboot.service"));
    g.line("else");
    g.line(format!(
        "  echo {} > /etc/cron.d/diskforge-firstboot",
        q("@reboot root [ -e /var/lib/diskforge/firstboot.done ] || { /usr/local/lib/diskforge/firstboot.sh && mkdir -p /var/lib/diskforge && touch /var/lib/diskforge/firstboot.done; }")
    ));
    g.line("fi");
}

/// The first line of a command for a step title, shortened — after masking secrets, so
/// a cut can never leave part of one behind.
fn first_line(s: &str) -> String {
    let masked = crate::redact::apply(s, &[]);
    let l = masked.lines().next().unwrap_or_default();
    match l.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &l[..i]),
        None => l.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `script` parses as POSIX shell (`sh -n`).
    fn assert_valid_sh(script: &str) {
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn recipe(yaml: &str) -> Recipe {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn all_text(c: &Customization) -> String {
        let mut s = c.packages.script.clone() + &c.main.script;
        for f in c.packages.files.iter().chain(&c.main.files) {
            if let StageData::Bytes(b) = &f.data {
                s.push_str(&String::from_utf8_lossy(b));
            }
        }
        s
    }

    #[test]
    fn only_files_nothing_later_reads_are_rewritable() {
        let r = recipe(
            "customize:\n  files:\n    - {path: /etc/motd, content: a}\n    - {path: /etc/hostname, content: b}\n    - {path: /var/log/app.log, content: c}\n    - {path: /etc/ssh/sshd_config.d/x.conf, content: d}\n    - {path: /opt/app/dup, content: e}\n    - {path: /opt/app/dup, content: f}\n    - {path: /opt/app/linked, content: g}\n    - {path: \"/opt/with space\", content: h}\n    - {path: /home/lab/.profile, content: i, owner: lab}\n  symlinks: [{path: /opt/app/linked, target: /etc/motd}]\n",
        );
        let c = generate(&r, &Secrets::default(), Path::new("."), None).unwrap();
        let paths: Vec<&str> = c.patchable.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["/etc/motd", "/home/lab/.profile"]);
        assert_eq!(c.patchable.recipe_files, [0, 8]);
        assert!(!c.patchable.ttyd && !c.patchable.kept_passwords);
        assert!(c
            .patchable
            .files
            .iter()
            .all(|f| f.presence == Presence::Always));

        // Users' and root's keys and passwords too: the hashes as an edit of
        // /etc/shadow and of its backup, in the order the script writes them (users'
        // keys, files, root's keys, passwords), then ttyd's files where they are.
        let text = |commands: &str| {
            format!(
                "customize:\n  files: [{{path: /etc/motd, content: a}}]\n  commands: {commands}\n  users: [{{name: lab, password: {{env: X}}, ssh-authorized-keys: [\"ssh-ed25519 AAAA lab\"]}}]\n  root-password: {{env: Y}}\n  root-ssh-authorized-keys: [\"ssh-ed25519 BBBB root\"]\nttyd: {{enabled: true, source: {{package: ttyd}}}}\n"
            )
        };
        let secrets = Secrets {
            users: vec![("lab".into(), SecretValue::new("pw".into()))],
            root: Some(SecretValue::new("rootpw".into())),
            ..Secrets::default()
        };
        let c = generate(&recipe(&text("[]")), &secrets, Path::new("."), None).unwrap();
        let paths: Vec<&str> = c.patchable.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/home/lab/.ssh/authorized_keys",
                "/etc/motd",
                "/root/.ssh/authorized_keys",
                "/etc/shadow",
                "/etc/shadow-",
                "/etc/systemd/system/diskforge-ttyd.service",
                "/usr/local/lib/diskforge/ttyd-start.sh"
            ]
        );
        assert_eq!(c.patchable.user_keys, [0]);
        assert_eq!(c.patchable.recipe_files, [0]);
        assert!(c.patchable.root_keys && c.patchable.passwords && c.patchable.ttyd);
        assert!(!c.patchable.kept_passwords);
        assert_eq!(c.patchable.files[0].home_of.as_deref(), Some("lab"));
        assert_eq!(c.patchable.files[2].home_of.as_deref(), Some("root"));
        let hashes = match (&c.patchable.files[3].data, &c.patchable.files[4].data) {
            (PatchData::Passwords(h), PatchData::BackupPasswords(b)) => {
                assert_eq!(h, b);
                h.clone()
            }
            _ => panic!("/etc/shadow and its backup are not password edits"),
        };
        assert_eq!(
            (hashes[0].0.as_str(), hashes[1].0.as_str()),
            ("lab", "root")
        );
        assert!(matches_hash(&SecretValue::new("pw".into()), &hashes[0].1));
        assert!(matches_hash(
            &SecretValue::new("rootpw".into()),
            &hashes[1].1
        ));
        assert!(c.patchable.files[..4]
            .iter()
            .all(|f| f.presence == Presence::Always));
        assert!(c.patchable.files[4..]
            .iter()
            .all(|f| f.presence == Presence::IfPresent));

        // Commands run after users, root and files and may read or change them (append
        // a key, expire a password): only ttyd's own files stay rewritable, and the
        // passwords are compared instead.
        let c = generate(&recipe(&text("[\"true\"]")), &secrets, Path::new("."), None).unwrap();
        let paths: Vec<&str> = c.patchable.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/etc/systemd/system/diskforge-ttyd.service",
                "/usr/local/lib/diskforge/ttyd-start.sh"
            ]
        );
        assert!(c.patchable.recipe_files.is_empty() && c.patchable.user_keys.is_empty());
        assert!(!c.patchable.root_keys && !c.patchable.passwords);
        assert!(c.patchable.kept_passwords);
        assert_ne!(
            secrets.unpatchable(false).expose(),
            secrets.unpatchable(true).expose()
        );
        assert!(secrets.unpatchable(true).expose().is_empty());
    }

    /// The files the host rewrites hold what the guest script installs: the unit, the
    /// start script and the credential file, byte for byte.
    #[test]
    fn rewritten_ttyd_files_are_the_ones_the_script_installs() {
        let r = recipe(
            "ttyd: {enabled: true, source: {package: ttyd}, port: 8080, credential: {user: web, password: {env: X}}}\n",
        );
        let secrets = Secrets {
            ttyd: Some(SecretValue::new("web:pw".into())),
            ..Secrets::default()
        };
        let c = generate(&r, &secrets, Path::new("."), None).unwrap();
        let staged = |name: &str| {
            c.main
                .files
                .iter()
                .find(|f| f.name == name)
                .map(|f| match &f.data {
                    StageData::Bytes(b) => b.clone(),
                    StageData::File(_) => panic!("{name} is a host file"),
                })
                .unwrap_or_else(|| panic!("{name} is not staged"))
        };
        let patched = |path: &str| {
            c.patchable
                .files
                .iter()
                .find(|f| f.path == path)
                .map(|f| match &f.data {
                    PatchData::Content(StageData::Bytes(b)) => b.clone(),
                    _ => panic!("{path} is not content made on the host"),
                })
                .unwrap_or_else(|| panic!("{path} is not rewritable"))
        };
        assert_eq!(
            patched("/etc/systemd/system/diskforge-ttyd.service"),
            staged(ttyd::UNIT)
        );
        assert_eq!(
            patched("/usr/local/lib/diskforge/ttyd-start.sh"),
            staged("ttyd-start.sh")
        );
        assert_eq!(
            patched("/etc/diskforge/ttyd.env"),
            staged("secrets/ttyd.env")
        );
        assert!(String::from_utf8_lossy(&staged(ttyd::UNIT)).contains("-p 8080"));
    }

    #[test]
    fn script_keeps_recipe_order_and_batches_packages() {
        let r = recipe(
            "customize:\n  packages: [tmux, htop]\n  users: [{name: lab, sudo: true}]\n  files: [{path: /etc/motd, content: hi}]\n  commands: [\"echo one\", \"echo two\"]\n  enable-units: [ssh.service]\n  hostname: lab\nttyd: {enabled: true, source: {package: ttyd}}\n",
        );
        let c = generate(&r, &Secrets::default(), Path::new("."), None).unwrap();
        let pk = &c.packages.script;
        assert_eq!(
            pk.matches("with_appliance_dns install_packages").count(),
            1,
            "one batched call:\n{pk}"
        );
        assert!(pk.contains("with_appliance_dns install_packages tmux htop ttyd"));
        let s = &c.main.script;
        let pos = |needle: &str| {
            s.find(needle)
                .unwrap_or_else(|| panic!("{needle} missing in\n{s}"))
        };
        assert!(pos("useradd") < pos("/etc/motd"));
        assert!(pos("/etc/motd") < pos("commands/0.sh"));
        assert!(pos("commands/0.sh") < pos("commands/1.sh"));
        assert!(pos("commands/1.sh") < pos("enable_unit ssh.service"));
        assert!(pos("enable_unit ssh.service") < pos("/etc/hostname"));
        assert!(pos("/etc/hostname") < pos(ttyd::UNIT));
        assert!(pos(ttyd::UNIT) < pos(": > /etc/machine-id"));
        assert_eq!(c.package_names, vec!["tmux", "htop", "ttyd"]);
        assert_eq!(c.steps()[0], PACKAGE_SPEEDUPS);
        assert!(c.steps()[1].starts_with("install packages"));
    }

    #[test]
    fn packages_go_in_quickly_and_the_guest_keeps_its_settings() {
        let r = recipe("customize:\n  packages: [tmux]\n  remove-packages: [nano]\n");
        let c = generate(&r, &Secrets::default(), Path::new("."), None).unwrap();
        let pk = &c.packages.script;
        let pos = |needle: &str| {
            pk.find(needle)
                .unwrap_or_else(|| panic!("{needle} missing in\n{pk}"))
        };
        // man-db's flag is set aside before dpkg runs and put back after the last
        // package change, on failure too.
        assert!(pos("\nman_db_index_off") < pos("install_packages tmux"));
        assert!(pos("remove_packages nano") < pk.rfind("\nman_db_index_back").unwrap());
        assert_eq!(pk.matches("rc=$?; man_db_index_back;").count(), 2, "{pk}");
        // dpkg's fsync is off through the command line only: nothing written to the
        // guest's dpkg configuration.
        assert!(pk.contains("APT_BUILD_OPTS='-o DPkg::Options::=--force-unsafe-io'"));
        assert!(pk.contains("--no-install-recommends $APT_BUILD_OPTS"));
        assert!(pk.contains("apt-get remove -y -q --purge $APT_BUILD_OPTS"));
        assert!(!pk.contains("dpkg.cfg.d"), "{pk}");
        assert!(pk.contains("apt-get update -q -o Acquire::Languages=none"));
        assert_eq!(pk.matches("apt-get update -q").count(), 1, "{pk}");
        // The update is skipped only on the marker the host-side fetch leaves.
        assert!(
            pk.contains(&format!(
                "if [ -e \"$S/{}\" ]; then",
                crate::guest::apt::MARKER
            )),
            "{pk}"
        );
        // Nothing of it without packages.
        let none = generate(
            &recipe("customize:\n  users: [{name: lab}]\n"),
            &Secrets::default(),
            Path::new("."),
            None,
        )
        .unwrap();
        assert!(none.packages.is_empty());
        assert!(!none.steps().iter().any(|s| s == PACKAGE_SPEEDUPS));
        // The whole script is valid POSIX shell.
        assert_valid_sh(pk);
    }

    #[test]
    fn the_guest_agent_is_installed_with_the_packages_and_started_at_boot() {
        let r = recipe("customize:\n  packages: [tmux]\n  guest-agent: true\n");
        let c = generate(&r, &Secrets::default(), Path::new("."), None).unwrap();
        assert_eq!(c.package_names, vec!["tmux", "qemu-guest-agent"]);
        assert!(c
            .packages
            .script
            .contains("with_appliance_dns install_packages tmux qemu-guest-agent"));
        let s = &c.main.script;
        assert!(
            s.contains("systemctl enable qemu-guest-agent.service"),
            "{s}"
        );
        assert!(s.contains("rc-update add qemu-guest-agent default"), "{s}");
        // One init decision for every service of diskforge's, in valid shell.
        assert!(s.contains("case \"$(guest_init)\" in"), "{s}");
        assert_valid_sh(s);
        let off = generate(
            &recipe("customize:\n  packages: [tmux]\n"),
            &Secrets::default(),
            Path::new("."),
            None,
        )
        .unwrap();
        assert!(!all_text(&off).contains("qemu-guest-agent"));
    }

    #[test]
    fn passwords_enter_the_guest_only_as_hashes() {
        let r = recipe(
            "customize:\n  users: [{name: lab, password: {env: X}}]\n  root-password: {env: Z}\nttyd: {enabled: true, source: {package: ttyd}, credential: {user: u, password: {env: Y}}}\n",
        );
        let s = Secrets {
            users: vec![("lab".into(), SecretValue::new("pw-Secret-1".into()))],
            root: Some(SecretValue::new("pw-Secret-3".into())),
            ttyd: Some(SecretValue::new("u:pw-Secret-2".into())),
            desktop: None,
        };
        let c = generate(&r, &s, Path::new("."), None).unwrap();
        let text = all_text(&c);
        assert!(
            !text.contains("pw-Secret-1") && !text.contains("pw-Secret-3"),
            "{text}"
        );
        assert!(
            text.contains("lab:$6$") && text.contains("root:$6$"),
            "{text}"
        );
        assert!(text.contains("chpasswd -e"), "{text}");
        // The ttyd credential is staged once, for its EnvironmentFile, never in the unit.
        assert_eq!(text.matches("pw-Secret-2").count(), 1, "{text}");
        let unit = c.main.files.iter().find(|f| f.name == ttyd::UNIT).unwrap();
        let StageData::Bytes(u) = &unit.data else {
            panic!()
        };
        let u = String::from_utf8_lossy(u);
        assert!(!u.contains("pw-Secret"), "{u}");
        assert!(
            u.contains("-c ${TTYD_CREDENTIAL}")
                && u.contains("EnvironmentFile=/etc/diskforge/ttyd.env"),
            "{u}"
        );
        for f in c
            .main
            .files
            .iter()
            .filter(|f| f.name.starts_with("secrets/"))
        {
            assert_eq!(f.mode, 0o600, "{}", f.name);
        }
    }

    #[test]
    fn ttyd_unit_reflects_the_recipe_and_fallbacks_keep_every_argument() {
        let r = recipe(
            "ttyd: {enabled: true, source: {path: ttyd}, port: 8080, interface: eth0, writable: false, command: [bash, -c, \"echo it's $HOME\"], extra-args: [-t, fontSize=18], user: lab}\n",
        );
        let c = generate(
            &r,
            &Secrets::default(),
            Path::new("."),
            Some(Path::new("/bin/true")),
        )
        .unwrap();
        let file = |name: &str| {
            let f = c.main.files.iter().find(|f| f.name == name).unwrap();
            let StageData::Bytes(b) = &f.data else {
                panic!()
            };
            String::from_utf8_lossy(b).into_owned()
        };
        let u = file(ttyd::UNIT);
        assert!(
            u.contains("ExecStart=/usr/local/bin/ttyd -p 8080 -i eth0 -t fontSize=18 bash -c \"echo it's $$HOME\""),
            "{u}"
        );
        assert!(
            u.contains("User=lab") && u.contains("Restart=always"),
            "{u}"
        );
        assert!(!u.contains(" -W"), "{u}");
        let start = file("ttyd-start.sh");
        assert!(start.contains(r#"'echo it'\''s $HOME'"#), "{start}");
        assert!(c.package_names.is_empty());
    }

    #[test]
    fn desktop_installs_its_packages_and_writes_the_password_only_through_vncpasswd() {
        let r = recipe(
            "customize:\n  packages: [tmux]\n  users: [{name: lab}]\ndesktop: {enabled: true, user: lab, port: 6090, geometry: 1024x768, credential: {env: V}}\n",
        );
        let s = Secrets {
            desktop: Some(SecretValue::new("vnc-Pw-9".into())),
            ..Secrets::default()
        };
        let c = generate(&r, &s, Path::new("."), None).unwrap();
        assert_eq!(
            c.package_names,
            vec![
                "tmux",
                "tigervnc-standalone-server",
                "tigervnc-tools",
                "novnc",
                "websockify",
                "twm",
                "xterm"
            ]
        );
        // Staged once, for vncpasswd -f to read from the tmpfs; nowhere else.
        let text = all_text(&c);
        assert_eq!(text.matches("vnc-Pw-9").count(), 1, "{text}");
        let secret = c
            .main
            .files
            .iter()
            .find(|f| f.name == "secrets/desktop.pass")
            .unwrap();
        assert_eq!(secret.mode, 0o600);
        let m = &c.main.script;
        assert!(
            m.contains(
                "\"$vp\" -f < \"$S\"/secrets/desktop.pass > /etc/diskforge/desktop.vncpasswd.tmp"
            ),
            "{m}"
        );
        assert!(
            m.contains("chown lab: /etc/diskforge/desktop.vncpasswd.tmp && chmod 0600"),
            "{m}"
        );
        assert!(m.contains("id -u lab"), "{m}");
        let file = |name: &str| {
            let f = c.main.files.iter().find(|f| f.name == name).unwrap();
            let StageData::Bytes(b) = &f.data else {
                panic!()
            };
            String::from_utf8_lossy(b).into_owned()
        };
        let vnc = file(desktop::VNC_UNIT);
        assert!(vnc.contains("User=lab"), "{vnc}");
        let start = file("desktop-start.sh");
        assert!(
            start.contains("-localhost -rfbport 5901 -SecurityTypes VncAuth")
                && start
                    .contains("-PasswordFile /etc/diskforge/desktop.vncpasswd -geometry 1024x768"),
            "{start}"
        );
        assert!(start.contains("'twm & w=$!;"), "{start}");
        let web = file(desktop::WEB_UNIT);
        assert!(
            web.contains(
                "ExecStart=/usr/bin/websockify --web /usr/share/novnc 6090 127.0.0.1:5901"
            ),
            "{web}"
        );
        // Guests whose init is not systemd get OpenRC services doing the same.
        let vnc_rc = file(&format!("{}.openrc", desktop::VNC_SERVICE));
        assert!(
            vnc_rc.starts_with("#!/sbin/openrc-run\n")
                && vnc_rc.contains("command=/usr/local/lib/diskforge/desktop-start.sh\n")
                && vnc_rc.contains("command_user=\"lab\"\n")
                && vnc_rc.contains("supervisor=supervise-daemon\n"),
            "{vnc_rc}"
        );
        let web_rc = file(&format!("{}.openrc", desktop::WEB_SERVICE));
        assert!(
            web_rc.contains("command=/usr/bin/websockify\n")
                && web_rc.contains("command_args=\"--web /usr/share/novnc 6090 127.0.0.1:5901\"\n")
                && web_rc.contains("command_user=\"nobody:nogroup\"\n"),
            "{web_rc}"
        );
        assert!(
            m.contains("rc-update add diskforge-desktop-vnc default; rc-update add diskforge-desktop-web default"),
            "{m}"
        );
        assert!(
            m.find(&format!(
                "systemctl enable {} {}",
                desktop::VNC_UNIT,
                desktop::WEB_UNIT
            ))
            .unwrap()
                < m.find(": > /etc/machine-id").unwrap()
        );
        // The shell script the session runs under is valid POSIX shell.
        assert_valid_sh(&start);
    }

    #[test]
    fn removed_ssh_host_keys_come_back_under_systemd_or_openrc() {
        let r = recipe("customize:\n  users: [{name: lab}]\n");
        let c = generate(&r, &Secrets::default(), Path::new("."), None).unwrap();
        let m = &c.main.script;
        assert!(m.contains("rm -f /etc/ssh/ssh_host_*"), "{m}");
        assert!(
            m.contains("systemd) install -m 0644 \"$S\"/diskforge-ssh-hostkeys.service /etc/systemd/system/diskforge-ssh-hostkeys.service; systemctl enable diskforge-ssh-hostkeys.service ;;"),
            "{m}"
        );
        assert!(
            m.contains("openrc) install -m 0755 \"$S\"/diskforge-ssh-hostkeys.openrc /etc/init.d/diskforge-ssh-hostkeys; rc-update add diskforge-ssh-hostkeys default ;;"),
            "{m}"
        );
        let f = c
            .main
            .files
            .iter()
            .find(|f| f.name == "diskforge-ssh-hostkeys.openrc")
            .unwrap();
        let StageData::Bytes(b) = &f.data else {
            panic!()
        };
        let service = String::from_utf8_lossy(b);
        assert!(service.contains("before ssh sshd"), "{service}");
        assert!(service.contains("/usr/bin/ssh-keygen -A"), "{service}");
    }

    #[test]
    fn a_disabled_desktop_adds_nothing() {
        let r = recipe("desktop: {user: lab, credential: {env: V}}\n");
        let c = generate(&r, &Secrets::default(), Path::new("."), None).unwrap();
        assert!(c.package_names.is_empty());
        assert!(!all_text(&c).contains("vnc"), "{}", all_text(&c));
    }
}
