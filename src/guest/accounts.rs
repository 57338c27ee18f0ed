//! Adding users on the host the way the guest script's `useradd -m` and `chpasswd -e`
//! leave the account files on a Debian or Ubuntu guest (shadow's useradd, the `passwd`
//! package), so that a rebuild which only appends users to a recipe needs no appliance.
//!
//! The edits follow what that useradd does, read from its own settings on the disk
//! (`/etc/login.defs`, `/etc/default/useradd`): the next free UID above the highest in
//! `UID_MIN..=UID_MAX` (or the recipe's), a private group with the same GID when it is
//! free, membership in the supplementary groups (`/etc/group` and `/etc/gshadow`), a
//! locked shadow entry with today's day and the login.defs ageing, subordinate IDs when
//! `/etc/subuid` and `/etc/subgid` exist, and each file's backup (`FILE-`) as it was
//! before the last write, as shadow's commonio leaves it. Anything these settings say
//! that is not modelled here (another home base or skeleton, a mail spool, inactivity,
//! expiry, a `USERADD_CMD`) makes [`supported`] say no, and the appliance adds the user.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};

/// Paths whose content `useradd` reads or writes: a recipe file or link there is written
/// after the users in a full build, so a kept disk's copy would be read too early.
pub const USERADD_TOUCHES: &[&str] = &[
    "/etc/default/useradd",
    "/etc/group",
    "/etc/group-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/login.defs",
    "/etc/nsswitch.conf",
    "/etc/os-release",
    "/etc/passwd",
    "/etc/passwd-",
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/skel",
    "/etc/subgid",
    "/etc/subgid-",
    "/etc/subuid",
    "/etc/subuid-",
    "/etc/sudoers.d",
    "/home",
    "/usr/lib/os-release",
    "/var/log",
];

/// What a kept disk's account files hold, recorded when the disk is kept on a guest
/// whose useradd the host can follow ([`supported`]): a rebuild that appends users to
/// the recipe adds them on the host unless one of them is already there.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KeptAccounts {
    /// The [`MODEL`] the disk was checked for (0: a record from before there was
    /// one); a record of another is not used.
    #[serde(default)]
    pub model: u32,
    pub users: Vec<String>,
    pub groups: Vec<String>,
    /// UIDs in /etc/passwd.
    #[serde(default)]
    pub uids: Vec<u32>,
    /// Names in /home, /etc/sudoers.d and at the top of /etc/skel.
    #[serde(default)]
    pub homes: Vec<String>,
    #[serde(default)]
    pub sudoers: Vec<String>,
    #[serde(default)]
    pub skel: Vec<String>,
}

impl KeptAccounts {
    /// The names in a passwd(5) and a group(5) file, the UIDs of the first.
    pub fn from_files(passwd: &str, group: &str) -> KeptAccounts {
        let names = |t: &str| rows(t).iter().map(|f| f[0].to_string()).collect();
        KeptAccounts {
            model: MODEL,
            users: names(passwd),
            groups: names(group),
            uids: ids(passwd).into_iter().collect(),
            homes: Vec::new(),
            sudoers: Vec::new(),
            skel: Vec::new(),
        }
    }

    /// Why the host cannot add `u` to this disk as the guest script would, when the
    /// script's own lines would do something the model does not (or fail).
    pub fn refuses(&self, u: &crate::recipe::UserSpec, shell: &str) -> Option<String> {
        let n = &u.name;
        if self.users.contains(n) {
            return Some(format!(
                "{n} is already on the disk (the script changes it with usermod)"
            ));
        }
        if self.groups.contains(n) {
            return Some(format!("a group {n} is already on the disk"));
        }
        if let Some(g) = u.groups.iter().find(|g| !self.groups.contains(g)) {
            return Some(format!("{n}'s group {g} is not a group name on the disk"));
        }
        if u.uid.is_some_and(|x| self.uids.contains(&x)) {
            return Some(format!("{n}'s UID is taken"));
        }
        if !plain_shell(shell) {
            return Some(format!(
                "{n}'s shell {shell:?} is not an absolute path useradd takes"
            ));
        }
        if self.homes.contains(n) {
            return Some(format!("/home/{n} is already on the disk"));
        }
        if u.sudo && self.sudoers.contains(n) {
            return Some(format!("/etc/sudoers.d/{n} is already on the disk"));
        }
        if !u.ssh_authorized_keys.is_empty() && self.skel.iter().any(|e| e == ".ssh") {
            return Some("/etc/skel has a .ssh".into());
        }
        None
    }
}

/// A login shell useradd takes and a passwd line can hold: absolute, printable, no
/// colon.
pub fn plain_shell(shell: &str) -> bool {
    shell.starts_with('/') && shell.chars().all(|c| c.is_ascii_graphic() && c != ':')
}

/// A user the recipe appends, as the guest script would add it.
#[derive(Clone)]
pub struct NewUser {
    pub name: String,
    pub uid: Option<u32>,
    pub shell: String,
    pub groups: Vec<String>,
    /// Its `$6$…` hash, when the recipe sets a password.
    pub hash: Option<String>,
    pub sudo: bool,
    /// `authorized_keys` content, when the recipe gives keys.
    pub keys: Option<Vec<u8>>,
}

impl std::fmt::Debug for NewUser {
    // The hash is a secret's: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("name", &self.name)
            .field("uid", &self.uid)
            .finish_non_exhaustive()
    }
}

/// A file and its backup (`/etc/passwd` and `/etc/passwd-`).
#[derive(Clone, PartialEq, Eq)]
pub struct Pair {
    pub now: String,
    pub backup: String,
}

impl std::fmt::Debug for Pair {
    // A shadow file holds hashes: only sizes are printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pair({} + {} bytes)", self.now.len(), self.backup.len())
    }
}

impl Pair {
    pub fn new(now: String, backup: String) -> Pair {
        Pair { now, backup }
    }

    /// What shadow's commonio does on a change: the old content becomes the backup.
    fn write(&mut self, new: String) {
        self.backup = std::mem::replace(&mut self.now, new);
    }
}

/// The account files of a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountFiles {
    pub passwd: Pair,
    pub group: Pair,
    pub shadow: Pair,
    pub gshadow: Pair,
    /// `None` when the guest has no `/etc/subuid` (useradd then adds no range).
    pub subuid: Option<Pair>,
    pub subgid: Option<Pair>,
}

/// A user as added: where its home goes and with which mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub home_mode: u32,
}

/// `KEY VALUE` lines of login.defs(5); comments and blank lines skipped.
pub fn parse_login_defs(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next().unwrap_or("").to_string()))
        })
        .collect()
}

/// `KEY=VALUE` lines of `/etc/default/useradd`.
pub fn parse_useradd_defaults(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect()
}

/// Why users cannot be added on the host to a guest with this os-release, login.defs
/// and `/etc/default/useradd` (`None`: absent) as its useradd would; `Ok` when they
/// can.
pub fn supported(
    os_release: &str,
    login_defs: &str,
    useradd_defaults: Option<&str>,
) -> Result<(), String> {
    let os = parse_useradd_defaults(os_release);
    let family = |k: &str| {
        os.get(k)
            .is_some_and(|v| v.split_whitespace().any(|w| w == "debian" || w == "ubuntu"))
    };
    if !family("ID") && !family("ID_LIKE") {
        return Err(format!(
            "the guest is {}, not Debian or Ubuntu, whose useradd is the one modelled",
            os.get("ID").map(String::as_str).unwrap_or("unknown")
        ));
    }
    let defs = parse_login_defs(login_defs);
    if defs.get("USERGROUPS_ENAB").map(String::as_str) != Some("yes") {
        return Err("login.defs does not set USERGROUPS_ENAB yes".into());
    }
    for k in ["USERADD_CMD", "MAX_MEMBERS_PER_GROUP"] {
        if defs.get(k).is_some_and(|v| !v.is_empty() && v != "0") {
            return Err(format!("login.defs sets {k}"));
        }
    }
    if let Err(e) = Settings::read(&defs) {
        return Err(format!("{e:#}"));
    }
    let defaults = parse_useradd_defaults(useradd_defaults.unwrap_or(""));
    for (k, v) in &defaults {
        let fine = match k.as_str() {
            "GROUP" | "SHELL" | "LOG_INIT" => true,
            "HOME" => v == "/home",
            "SKEL" => v == "/etc/skel",
            "INACTIVE" => v == "-1" || v.is_empty(),
            "EXPIRE" => v.is_empty(),
            "CREATE_MAIL_SPOOL" => v.eq_ignore_ascii_case("no"),
            _ => false,
        };
        if !fine {
            return Err(format!("/etc/default/useradd sets {k}={v}"));
        }
    }
    Ok(())
}

/// The version of what a kept disk's check decides and records for adding users: a
/// record of another version is not used (the disk still serves the other rewrites).
pub const MODEL: u32 = 1;

/// The shadow release the model follows and the tests check against the guest's own
/// useradd (Debian 12, Ubuntu 24.04).
pub const MODELLED_SHADOW: &str = "4.13";

/// Whether the guest's dpkg database (`/var/lib/dpkg/status`) has the `passwd` package
/// (shadow's useradd) of the release the model follows.
pub fn shadow_modelled(dpkg_status: &str) -> Result<(), String> {
    let version = dpkg_status
        .split("\n\n")
        .find(|stanza| {
            stanza.lines().any(|l| l == "Package: passwd")
                && stanza
                    .lines()
                    .any(|l| l.starts_with("Status: ") && l.ends_with(" installed"))
        })
        .and_then(|stanza| stanza.lines().find_map(|l| l.strip_prefix("Version: ")))
        .ok_or("the guest has no installed passwd package")?;
    // [epoch:]upstream[-revision], upstream with a +dfsg-like suffix.
    let upstream = version.split_once(':').map_or(version, |(_, v)| v);
    let release = upstream.split(['-', '+', '~']).next().unwrap_or_default();
    if release != MODELLED_SHADOW {
        return Err(format!(
            "the guest's useradd is shadow {release} (passwd {version}); the host follows {MODELLED_SHADOW}"
        ));
    }
    Ok(())
}

/// The login.defs values useradd reads, with shadow's defaults.
struct Settings {
    uid: (u32, u32),
    gid: (u32, u32),
    sub_uid: (u64, u64, u64),
    sub_gid: (u64, u64, u64),
    /// Shadow ageing fields: minimum, maximum, warning (`None`: empty).
    ageing: [Option<i64>; 3],
    home_mode: u32,
}

impl Settings {
    fn read(defs: &BTreeMap<String, String>) -> Result<Settings> {
        let num = |k: &str, default: i64| -> Result<i64> {
            match defs.get(k) {
                None => Ok(default),
                Some(v) => v
                    .parse::<i64>()
                    .with_context(|| format!("login.defs: {k} {v:?} is not a number")),
            }
        };
        // As shadow reads them (strtol, base 0): 0x… hexadecimal, 0… octal, else
        // decimal.
        let octal = |k: &str| -> Result<Option<u32>> {
            defs.get(k)
                .map(|v| {
                    if v.contains(['+', '-']) {
                        bail!("login.defs: {k} {v:?} has a sign");
                    }
                    let parsed = if let Some(h) = v.strip_prefix("0x") {
                        u32::from_str_radix(h, 16)
                    } else if v.len() > 1 && v.starts_with('0') {
                        u32::from_str_radix(&v[1..], 8)
                    } else {
                        v.parse()
                    };
                    parsed.with_context(|| format!("login.defs: {k} {v:?} is not a number"))
                })
                .transpose()
        };
        let id = |k: &str, d: i64| -> Result<u32> {
            u32::try_from(num(k, d)?).with_context(|| format!("login.defs: {k} is out of range"))
        };
        let big = |k: &str, d: i64| -> Result<u64> {
            u64::try_from(num(k, d)?).with_context(|| format!("login.defs: {k} is out of range"))
        };
        let age = |k: &str| -> Result<Option<i64>> {
            Ok(match num(k, -1)? {
                -1 => None,
                v => Some(v),
            })
        };
        let umask = octal("UMASK")?.unwrap_or(0o22);
        let s = Settings {
            uid: (id("UID_MIN", 1000)?, id("UID_MAX", 60000)?),
            gid: (id("GID_MIN", 1000)?, id("GID_MAX", 60000)?),
            sub_uid: (
                big("SUB_UID_MIN", 100_000)?,
                big("SUB_UID_MAX", 600_100_000)?,
                big("SUB_UID_COUNT", 65536)?,
            ),
            sub_gid: (
                big("SUB_GID_MIN", 100_000)?,
                big("SUB_GID_MAX", 600_100_000)?,
                big("SUB_GID_COUNT", 65536)?,
            ),
            ageing: [
                age("PASS_MIN_DAYS")?,
                age("PASS_MAX_DAYS")?,
                age("PASS_WARN_AGE")?,
            ],
            home_mode: octal("HOME_MODE")?.unwrap_or(0o777 & !umask),
        };
        if s.uid.0 > s.uid.1 || s.gid.0 > s.gid.1 {
            bail!("login.defs: an empty UID or GID range");
        }
        if s.sub_uid.2 == 0 || s.sub_gid.2 == 0 {
            bail!("login.defs: SUB_UID_COUNT or SUB_GID_COUNT is 0");
        }
        Ok(s)
    }
}

/// The lines of a colon-separated account file, split into fields.
fn rows(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(':').collect())
        .collect()
}

/// The numeric third field of every line (UIDs of passwd, GIDs of group).
fn ids(text: &str) -> BTreeSet<u32> {
    rows(text)
        .iter()
        .filter_map(|f| f.get(2)?.parse().ok())
        .collect()
}

fn has_name(text: &str, name: &str) -> bool {
    rows(text).iter().any(|f| f[0] == name)
}

/// `text` with `line` appended on a line of its own.
fn append(text: &str, line: &str) -> String {
    let mut s = text.to_string();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s.push_str(line);
    s.push('\n');
    s
}

/// The next ID useradd picks: one above the highest used in `min..=max`, or the lowest
/// free one there when the highest is taken.
fn next_id(used: &BTreeSet<u32>, (min, max): (u32, u32)) -> Option<u32> {
    let candidate = used
        .range(min..=max)
        .next_back()
        .map_or(Some(min), |h| h.checked_add(1))?;
    if candidate <= max {
        return Some(candidate);
    }
    (min..=max).find(|i| !used.contains(i))
}

/// The lowest range of `count` IDs from `min` that overlaps none in `text` (subuid(5))
/// and ends by `max`.
fn free_range(text: &str, (min, max, count): (u64, u64, u64)) -> Option<u64> {
    let taken: Vec<(u64, u64)> = rows(text)
        .iter()
        .filter_map(|f| {
            let start: u64 = f.get(1)?.parse().ok()?;
            let n: u64 = f.get(2)?.parse().ok()?;
            Some((start, start.checked_add(n)?))
        })
        .collect();
    let mut candidates: Vec<u64> = std::iter::once(min)
        .chain(taken.iter().map(|r| r.1).filter(|e| *e >= min))
        .collect();
    candidates.sort_unstable();
    candidates.into_iter().find(|start| {
        let end = start.saturating_add(count);
        end.saturating_sub(1) <= max && taken.iter().all(|(s, e)| end <= *s || *start >= *e)
    })
}

/// Whether every line of a subuid(5) file is `OWNER:START:COUNT` (shadow keeps other
/// lines, blank ones and comments, and sorts them in no defined order: such a file is
/// left to the guest's useradd).
pub fn plain_ranges(text: &str) -> bool {
    text.lines().all(|l| {
        let f: Vec<&str> = l.split(':').collect();
        f.len() == 3
            && !f[0].is_empty()
            && f[1].parse::<u64>().is_ok()
            && f[2].parse::<u64>().is_ok()
    })
}

/// A subuid(5) file in the order shadow's range search leaves it (it sorts the file by
/// start, count and owner before looking for room, and writes it so).
fn sorted_ranges(text: &str) -> Result<String> {
    let mut lines: Vec<(u64, u64, &str)> = Vec::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = l.split(':').collect();
        let (Some(start), Some(count)) = (
            f.get(1).and_then(|v| v.parse().ok()),
            f.get(2).and_then(|v| v.parse().ok()),
        ) else {
            bail!("a subordinate ID line that is not OWNER:START:COUNT");
        };
        lines.push((start, count, l));
    }
    let owner = |l: &str| l.split(':').next().unwrap_or_default().to_string();
    lines.sort_by_key(|(start, count, l)| (*start, *count, owner(l)));
    Ok(lines.iter().map(|(_, _, l)| format!("{l}\n")).collect())
}

/// `group` (group(5) or gshadow(5)) with `user` added to the members of `groups`
/// (the fourth field of both).
/// Every group must have a line, unless `optional` (gshadow: useradd skips a group it
/// has no line for).
fn add_member(
    text: &str,
    groups: &[String],
    user: &str,
    what: &str,
    optional: bool,
) -> Result<String> {
    let mut seen = BTreeSet::new();
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, "\n"),
        };
        let mut fields: Vec<String> = body.split(':').map(str::to_string).collect();
        if fields.len() == 4 && groups.contains(&fields[0]) && seen.insert(fields[0].clone()) {
            let members = &mut fields[3];
            if !members.split(',').any(|m| m == user) {
                if !members.is_empty() {
                    members.push(',');
                }
                members.push_str(user);
            }
        }
        out.push_str(&fields.join(":"));
        out.push_str(end);
    }
    if let (false, Some(g)) = (optional, groups.iter().find(|g| !seen.contains(*g))) {
        bail!("the group {g} has no entry in {what}");
    }
    Ok(out)
}

/// `shadow` with each of `hashes`' users given its hash and `day` as the last change, as
/// `chpasswd -e` leaves it; an error when a user has no line. In a `backup`
/// (`/etc/shadow-`, the file as it was before the last `chpasswd`), only users whose
/// line holds a hash (`$…`) get the new one, and a missing user is fine.
pub fn set_password_hashes(
    shadow: &str,
    hashes: &[(String, String)],
    day: u64,
    backup: bool,
) -> Result<String> {
    let mut seen = vec![false; hashes.len()];
    let mut out = String::with_capacity(shadow.len() + 256);
    for line in shadow.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let mut fields: Vec<String> = body.split(':').map(str::to_string).collect();
        let hashed = fields.get(1).is_some_and(|h| h.starts_with('$'));
        if let Some(i) = hashes
            .iter()
            .position(|(u, _)| fields[0] == *u && (hashed || !backup))
        {
            if fields.len() < 3 {
                bail!(
                    "the shadow line of {} has {} fields",
                    hashes[i].0,
                    fields.len()
                );
            }
            fields[1] = hashes[i].1.clone();
            fields[2] = day.to_string();
            seen[i] = true;
        }
        out.push_str(&fields.join(":"));
        out.push_str(end);
    }
    if let (false, Some(i)) = (backup, seen.iter().position(|s| !s)) {
        bail!("no shadow line for {}", hashes[i].0);
    }
    Ok(out)
}

/// Adds `users` to `files` as the guest script would after the users the disk already
/// has: each user's `useradd -m -s SHELL [-u UID] [-G GROUPS]`, then its `chpasswd -e`;
/// `hashes` are this build's new hashes of the users already there (set as their
/// `chpasswd` left them) and of root, whose `chpasswd` runs after every user's.
/// `defs` and `defaults` are the guest's login.defs and `/etc/default/useradd`
/// ([`supported`] said yes to them); `day` is today in days since 1970.
pub fn add_users(
    files: &mut AccountFiles,
    login_defs: &str,
    users: &[NewUser],
    hashes: &[(String, String)],
    day: u64,
) -> Result<Vec<Added>> {
    let s = Settings::read(&parse_login_defs(login_defs))?;
    let root_line_before = rows(&files.shadow.backup)
        .iter()
        .find(|f| f[0] == "root")
        .map(|f| f.join(":"));
    // The users already there: their hashes as their own `chpasswd` set them (every
    // user added below writes the shadow file again, so no backup keeps these lines).
    let existing: Vec<(String, String)> = hashes
        .iter()
        .filter(|(n, _)| n != "root" && !users.iter().any(|u| u.name == *n))
        .cloned()
        .collect();
    files.shadow.now = set_password_hashes(&files.shadow.now, &existing, day, false)?;
    let mut added = Vec::new();
    for u in users {
        if !plain_shell(&u.shell) {
            bail!(
                "the shell {:?} of {} is not one useradd takes",
                u.shell,
                u.name
            );
        }
        if has_name(&files.passwd.now, &u.name) || has_name(&files.shadow.now, &u.name) {
            bail!("the user {} is already on the kept disk", u.name);
        }
        if has_name(&files.group.now, &u.name) {
            bail!(
                "a group named {} is already on the kept disk (useradd refuses to make it the user's group)",
                u.name
            );
        }
        let used_uids = ids(&files.passwd.now);
        let uid = match u.uid {
            Some(x) if used_uids.contains(&x) => bail!("UID {x} of {} is taken", u.name),
            Some(x) => x,
            None => next_id(&used_uids, s.uid)
                .with_context(|| format!("no free UID for {} in login.defs' range", u.name))?,
        };
        let used_gids = ids(&files.group.now);
        let gid = if (s.gid.0..=s.gid.1).contains(&uid) && !used_gids.contains(&uid) {
            uid
        } else {
            next_id(&used_gids, s.gid)
                .with_context(|| format!("no free GID for {} in login.defs' range", u.name))?
        };
        let home = format!("/home/{}", u.name);
        files.passwd.write(append(
            &files.passwd.now,
            &format!("{}:x:{uid}:{gid}::{home}:{}", u.name, u.shell),
        ));
        let age = |v: Option<i64>| v.map(|x| x.to_string()).unwrap_or_default();
        files.shadow.write(append(
            &files.shadow.now,
            &format!(
                "{}:!:{day}:{}:{}:{}:::",
                u.name,
                age(s.ageing[0]),
                age(s.ageing[1]),
                age(s.ageing[2])
            ),
        ));
        let mut groups: Vec<String> = Vec::new();
        for g in &u.groups {
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
        let group = add_member(&files.group.now, &groups, &u.name, "/etc/group", false)?;
        files
            .group
            .write(append(&group, &format!("{}:x:{gid}:", u.name)));
        let gshadow = add_member(&files.gshadow.now, &groups, &u.name, "/etc/gshadow", true)?;
        files
            .gshadow
            .write(append(&gshadow, &format!("{}:!::", u.name)));
        // Subordinate IDs for a user in the login.defs range, when the files exist.
        if (s.uid.0..=s.uid.1).contains(&uid) {
            for (pair, range, what) in [
                (&mut files.subuid, s.sub_uid, "subordinate UIDs"),
                (&mut files.subgid, s.sub_gid, "subordinate GIDs"),
            ] {
                if let Some(p) = pair.as_mut() {
                    let start = free_range(&p.now, range)
                        .with_context(|| format!("no free range of {what} for {}", u.name))?;
                    let line = format!("{}:{start}:{}", u.name, range.2);
                    p.write(append(&sorted_ranges(&p.now)?, &line));
                }
            }
        }
        if let Some(h) = &u.hash {
            let set = set_password_hashes(
                &files.shadow.now,
                &[(u.name.clone(), h.clone())],
                day,
                false,
            )?;
            files.shadow.write(set);
        }
        added.push(Added {
            name: u.name.clone(),
            uid,
            gid,
            home,
            home_mode: s.home_mode,
        });
    }
    // root's `chpasswd` comes last: its backup holds root's line as it was before (the
    // kept disk's backup has it, from the same `chpasswd`).
    if let Some((_, h)) = hashes.iter().find(|(n, _)| n == "root") {
        let before = root_line_before.context(
            "the kept disk's /etc/shadow- has no line for root, which its root password's chpasswd left",
        )?;
        let backup: String = files
            .shadow
            .now
            .split_inclusive('\n')
            .map(|l| {
                if l.split(':').next() == Some("root") {
                    format!("{before}\n")
                } else {
                    l.to_string()
                }
            })
            .collect();
        let set =
            set_password_hashes(&files.shadow.now, &[("root".into(), h.clone())], day, false)?;
        files.shadow = Pair::new(set, backup);
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFS: &str = "# comment\nUID_MIN\t\t\t 1000\nUID_MAX\t\t\t60000\nGID_MIN 1000\nGID_MAX 60000\nPASS_MAX_DAYS\t99999\nPASS_MIN_DAYS\t0\nPASS_WARN_AGE\t7\nUMASK\t\t022\nUSERGROUPS_ENAB yes\nSUB_UID_COUNT 65536\n";

    fn user(name: &str) -> NewUser {
        NewUser {
            name: name.into(),
            uid: None,
            shell: "/bin/sh".into(),
            groups: vec![],
            hash: None,
            sudo: false,
            keys: None,
        }
    }

    /// The account files of a Debian 12 guest with `lab` (UID 1000, in sudo, a
    /// password) added by the guest script, as measured on the demo's disk.
    fn debian_with_lab() -> AccountFiles {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
        let group = "root:x:0:\nsudo:x:27:\nnogroup:x:65534:\n";
        let gshadow = "root:*::\nsudo:*::\nnogroup:*::\n";
        let shadow = "root:*:20454:0:99999:7:::\nnobody:*:20454:0:99999:7:::\n";
        AccountFiles {
            passwd: Pair::new(
                format!("{passwd}lab:x:1000:1000::/home/lab:/bin/bash\n"),
                passwd.into(),
            ),
            group: Pair::new(
                "root:x:0:\nsudo:x:27:lab\nnogroup:x:65534:\nlab:x:1000:\n".into(),
                group.into(),
            ),
            gshadow: Pair::new(
                "root:*::\nsudo:*::lab\nnogroup:*::\nlab:!::\n".into(),
                gshadow.into(),
            ),
            shadow: Pair::new(
                format!("{shadow}lab:$6$old$h:20790:0:99999:7:::\n"),
                format!("{shadow}lab:!:20790:0:99999:7:::\n"),
            ),
            subuid: Some(Pair::new("lab:100000:65536\n".into(), String::new())),
            subgid: Some(Pair::new("lab:100000:65536\n".into(), String::new())),
        }
    }

    #[test]
    fn a_user_appended_is_what_useradd_and_chpasswd_leave() {
        let mut f = debian_with_lab();
        let before = f.clone();
        let mut guest = user("guest");
        guest.groups = vec!["sudo".into(), "sudo".into()];
        guest.hash = Some("$6$new$g".into());
        let added = add_users(
            &mut f,
            DEFS,
            &[guest],
            &[("lab".into(), "$6$again$h".into())],
            20792,
        )
        .unwrap();
        assert_eq!(
            added,
            [Added {
                name: "guest".into(),
                uid: 1001,
                gid: 1001,
                home: "/home/guest".into(),
                home_mode: 0o755,
            }]
        );
        assert_eq!(
            f.passwd,
            Pair::new(
                format!(
                    "{}guest:x:1001:1001::/home/guest:/bin/sh\n",
                    before.passwd.now
                ),
                before.passwd.now.clone()
            )
        );
        assert_eq!(
            f.group.now,
            "root:x:0:\nsudo:x:27:lab,guest\nnogroup:x:65534:\nlab:x:1000:\nguest:x:1001:\n"
        );
        assert_eq!(f.group.backup, before.group.now);
        assert_eq!(
            f.gshadow.now,
            "root:*::\nsudo:*::lab,guest\nnogroup:*::\nlab:!::\nguest:!::\n"
        );
        assert_eq!(
            f.subuid.as_ref().unwrap().now,
            "lab:100000:65536\nguest:165536:65536\n"
        );
        assert_eq!(f.subgid.as_ref().unwrap().backup, "lab:100000:65536\n");
        // lab's new hash, guest's own; the backup is the file before guest's chpasswd:
        // no hash of the build before is anywhere.
        assert_eq!(
            f.shadow.now,
            "root:*:20454:0:99999:7:::\nnobody:*:20454:0:99999:7:::\nlab:$6$again$h:20792:0:99999:7:::\nguest:$6$new$g:20792:0:99999:7:::\n"
        );
        assert_eq!(
            f.shadow.backup,
            "root:*:20454:0:99999:7:::\nnobody:*:20454:0:99999:7:::\nlab:$6$again$h:20792:0:99999:7:::\nguest:!:20792:0:99999:7:::\n"
        );
    }

    #[test]
    fn ids_follow_useradd() {
        // Explicit UID; the private group takes the same GID when it is free.
        let mut f = debian_with_lab();
        let mut a = user("a");
        a.uid = Some(1500);
        let mut b = user("b");
        b.hash = None;
        let added = add_users(&mut f, DEFS, &[a, b], &[], 20792).unwrap();
        assert_eq!((added[0].uid, added[0].gid), (1500, 1500));
        assert_eq!((added[1].uid, added[1].gid), (1501, 1501));
        // Without a password, the shadow backup is the file before b's useradd.
        assert!(!f.shadow.backup.contains("\nb:"));
        assert!(f.shadow.now.ends_with("b:!:20792:0:99999:7:::\n"));
        // A taken GID: the next above the highest.
        let mut f = debian_with_lab();
        f.group.now.push_str("staff2:x:1001:\n");
        let added = add_users(&mut f, DEFS, &[user("c")], &[], 1).unwrap();
        assert_eq!((added[0].uid, added[0].gid), (1001, 1002));
        // No room above the highest UID: the lowest free one.
        let mut f = debian_with_lab();
        f.passwd
            .now
            .push_str("top:x:60000:60000::/home/top:/bin/sh\n");
        let added = add_users(&mut f, DEFS, &[user("d")], &[], 1).unwrap();
        assert_eq!(added[0].uid, 1001);
        // Out of the range: no subordinate IDs.
        let mut f = debian_with_lab();
        let mut e = user("e");
        e.uid = Some(70000);
        add_users(&mut f, DEFS, &[e], &[], 1).unwrap();
        assert!(!f.subuid.unwrap().now.contains("e:"));
    }

    #[test]
    fn roots_chpasswd_comes_last() {
        let mut f = debian_with_lab();
        f.shadow.now = f
            .shadow
            .now
            .replace("root:*:20454", "root:$6$oldroot$r:20790");
        let hashes = [("root".to_string(), "$6$newroot$r".to_string())];
        add_users(&mut f, DEFS, &[user("g")], &hashes, 20792).unwrap();
        assert!(f.shadow.now.starts_with("root:$6$newroot$r:20792:"));
        // Before root's chpasswd: root as the kept disk's backup had it, g added.
        assert!(f.shadow.backup.starts_with("root:*:20454:"));
        assert!(f.shadow.backup.contains("\ng:!:20792:"));
        assert!(!f.shadow.backup.contains("oldroot") && !f.shadow.now.contains("oldroot"));
    }

    #[test]
    fn refusals() {
        let mut f = debian_with_lab();
        assert!(add_users(&mut f, DEFS, &[user("lab")], &[], 1).is_err());
        let mut f = debian_with_lab();
        assert!(add_users(&mut f, DEFS, &[user("sudo")], &[], 1).is_err());
        let mut f = debian_with_lab();
        let mut x = user("x");
        x.uid = Some(1000);
        assert!(add_users(&mut f, DEFS, &[x], &[], 1).is_err());
        let mut f = debian_with_lab();
        let mut y = user("y");
        y.groups = vec!["missing".into()];
        assert!(add_users(&mut f, DEFS, &[y], &[], 1).is_err());
    }

    #[test]
    fn gshadow_lines_are_optional_and_ranges_sorted() {
        // useradd skips a group gshadow has no line for; group(5) must have it.
        let mut f = debian_with_lab();
        f.gshadow.now = f.gshadow.now.replace("sudo:*::lab\n", "");
        let mut g = user("g");
        g.groups = vec!["sudo".into()];
        add_users(&mut f, DEFS, &[g], &[], 1).unwrap();
        assert!(f.group.now.contains("sudo:x:27:lab,g\n"));
        assert!(!f.gshadow.now.contains("sudo:"));
        // The range search sorts the file before it appends.
        let mut f = debian_with_lab();
        f.subuid = Some(Pair::new(
            "b:165536:65536\na:100000:65536\n".into(),
            String::new(),
        ));
        add_users(&mut f, DEFS, &[user("c")], &[], 1).unwrap();
        assert_eq!(
            f.subuid.unwrap().now,
            "a:100000:65536\nb:165536:65536\nc:231072:65536\n"
        );
        // Ties by owner, not by the rest of the line.
        assert_eq!(
            sorted_ranges("lab1:5:1\nlab:5:1\n").unwrap(),
            "lab:5:1\nlab1:5:1\n"
        );
        assert!(plain_ranges("a:1:2\nb:3:4\n") && plain_ranges(""));
        assert!(!plain_ranges("a:1:2\n\n") && !plain_ranges("# x\na:1:2\n"));
        // A shell useradd refuses, or one that would break the passwd line.
        for shell in ["bash", "/bin/sh:0", "/bin/sh\nx:x:0:0::/:/bin/sh", ""] {
            let mut f = debian_with_lab();
            let mut u = user("s");
            u.shell = shell.into();
            assert!(add_users(&mut f, DEFS, &[u], &[], 1).is_err(), "{shell:?}");
            assert!(!plain_shell(shell));
        }
        assert!(plain_shell("/usr/bin/fish"));
    }

    #[test]
    fn a_kept_disk_refuses_what_the_script_would_do_otherwise() {
        let kept = KeptAccounts {
            homes: vec!["old".into()],
            sudoers: vec!["README".into(), "ops".into()],
            skel: vec![".bashrc".into(), ".ssh".into()],
            ..KeptAccounts::from_files(
                "root:x:0:0::/root:/bin/sh\nlab:x:1000:1000::/home/lab:/bin/sh\n",
                "root:x:0:\nlab:x:1000:\nsudo:x:27:\n",
            )
        };
        let spec = |yaml: &str| -> crate::recipe::UserSpec { serde_yaml::from_str(yaml).unwrap() };
        let refused = |yaml: &str| kept.refuses(&spec(yaml), "/bin/sh");
        assert_eq!(
            refused("{name: guest, groups: [sudo, lab], uid: 1001, sudo: true}"),
            None
        );
        for yaml in [
            "{name: lab}",
            "{name: sudo}",
            "{name: guest, groups: [wheel]}",
            "{name: guest, groups: [\"27\"]}",
            "{name: guest, uid: 1000}",
            "{name: old}",
            "{name: ops, sudo: true}",
            "{name: guest, ssh-authorized-keys: [\"ssh-ed25519 AAAA k\"]}",
        ] {
            assert!(refused(yaml).is_some(), "{yaml}");
        }
        assert!(kept.refuses(&spec("{name: guest}"), "sh").is_some());
        assert_eq!(kept.uids, [0, 1000]);
    }

    #[test]
    fn only_the_modelled_shadow_release_is_followed() {
        let status = |v: &str, st: &str| {
            format!("Package: login\nStatus: install ok installed\nVersion: 1:4.17\n\nPackage: passwd\nStatus: {st}\nPriority: required\nVersion: {v}\n\n")
        };
        let installed = "install ok installed";
        assert!(shadow_modelled(&status("1:4.13+dfsg1-1", installed)).is_ok());
        assert!(shadow_modelled(&status("1:4.13+dfsg1-4ubuntu3", installed)).is_ok());
        assert!(shadow_modelled(&status("1:4.8.1-2ubuntu2", installed)).is_err());
        assert!(shadow_modelled(&status("1:4.17.4-2", installed)).is_err());
        assert!(shadow_modelled(&status("1:4.13+dfsg1-1", "deinstall ok config-files")).is_err());
        assert!(shadow_modelled("Package: login\nVersion: 1:4.13\n").is_err());
    }

    #[test]
    fn only_settings_modelled_are_supported() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        let ubuntu = "ID=ubuntu\nID_LIKE=debian\n";
        let fedora = "ID=fedora\n";
        assert!(supported(debian, DEFS, Some("SHELL=/bin/sh\n# HOME=/srv\n")).is_ok());
        assert!(supported(ubuntu, "HOME_MODE 0750\nUSERGROUPS_ENAB yes\n", None).is_ok());
        assert!(supported(fedora, DEFS, None).is_err());
        assert!(supported(debian, "USERGROUPS_ENAB no\n", None).is_err());
        assert!(supported(debian, DEFS, Some("HOME=/srv\n")).is_err());
        assert!(supported(debian, DEFS, Some("CREATE_MAIL_SPOOL=yes\n")).is_err());
        assert!(supported(debian, DEFS, Some("INACTIVE=30\n")).is_err());
        assert!(supported(debian, &format!("{DEFS}USERADD_CMD /x\n"), None).is_err());
        assert!(supported(debian, &format!("{DEFS}UID_MIN many\n"), None).is_err());
        let ubuntu_defs = parse_login_defs("HOME_MODE 0750\n");
        assert_eq!(Settings::read(&ubuntu_defs).unwrap().home_mode, 0o750);
        assert_eq!(
            Settings::read(&parse_login_defs("UMASK 077\n"))
                .unwrap()
                .home_mode,
            0o700
        );
        // As strtol(…, 0) reads them: no leading 0, decimal.
        assert_eq!(
            Settings::read(&parse_login_defs("HOME_MODE 488\n"))
                .unwrap()
                .home_mode,
            0o750
        );
        assert!(Settings::read(&parse_login_defs("UMASK +022\n")).is_err());
        assert_eq!(
            Settings::read(&parse_login_defs("HOME_MODE 0x1e8\n"))
                .unwrap()
                .home_mode,
            0o750
        );
    }
}
