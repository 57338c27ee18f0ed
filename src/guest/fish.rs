//! One libguestfs appliance for a whole guest stage: `guestfish --listen` starts it
//! once, and every operation is a `guestfish --remote` call into it. That keeps host-side
//! decisions (which partition holds `/`, which filesystem it is) in Rust while paying
//! for exactly one appliance launch.
//!
//! Each remote command is sent with guestfish's `-` prefix so a failing command does not
//! stop the server. The client then exits 0 and says nothing: the error is printed by
//! the server. So the server's stderr goes to a file, and after every call what it
//! wrote since the previous one is read back; `libguestfs: error:` lines there (or from
//! the client) fail the call.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};

use crate::sys::accel::Effective;
use crate::sys::exec::{Cmd, PathNames};

/// What the appliance launches of one build (or one command) share: their count, kept
/// by [`Fish::launch`] (builds side by side, `build --jobs`, each count their own), and
/// the directories their command lines show by name.
#[derive(Debug, Default)]
pub struct Session {
    launches: AtomicUsize,
    names: PathNames,
}

impl Session {
    pub fn new(names: PathNames) -> Session {
        Session {
            launches: AtomicUsize::new(0),
            names,
        }
    }

    /// The directories command lines show by name.
    pub fn names(&self) -> &PathNames {
        &self.names
    }

    /// Launches so far.
    pub fn launches(&self) -> usize {
        self.launches.load(Ordering::SeqCst)
    }
}

/// A running guestfish server with its appliance. Dropping it shuts the appliance down.
pub struct Fish {
    pid: u32,
    accel: Effective,
    secrets: Vec<String>,
    closed: bool,
    /// The server's stderr, and how much of it earlier calls have read.
    server_log: tempfile::NamedTempFile,
    server_log_read: Cell<u64>,
}

/// How long an appliance may take to come up. Under TCG on a busy machine a launch takes
/// 15–60 s; a guest kernel that hangs (seen with two vCPUs under load) must fail the
/// build rather than leave it waiting forever.
const LAUNCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(900);

/// A drive to attach.
pub struct Drive<'a> {
    pub path: &'a Path,
    pub format: &'a str,
    pub readonly: bool,
}

impl Fish {
    /// The command that starts the server (what `plan` shows for a guest step).
    pub fn launch_cmd(drives: &[Drive<'_>], network: bool) -> Cmd {
        let mut cmd = Cmd::new("guestfish", "starting the libguestfs server").arg("--listen");
        if network {
            cmd = cmd.arg("--network");
        }
        for d in drives {
            cmd = cmd
                .arg(if d.readonly { "--ro" } else { "--rw" })
                .arg(format!("--format={}", d.format))
                .arg("-a")
                .arg(d.path);
        }
        cmd
    }

    /// Starts guestfish with the drives attached and launches the appliance (libguestfs's
    /// one vCPU: see [`LAUNCH_TIMEOUT`] and ARCHITECTURE.md for why not two).
    pub fn launch(
        drives: &[Drive<'_>],
        network: bool,
        accel: Effective,
        session: &Session,
    ) -> Result<Fish> {
        let cmd = accel.libguestfs_env(Fish::launch_cmd(drives, network).named(&session.names));
        let server_log = tempfile::Builder::new()
            .prefix("diskforge-guestfish-")
            .tempfile()
            .context("creating a file for the guestfish server's messages")?;
        let log_writer = server_log
            .reopen()
            .context("opening the guestfish server's message file")?;
        // The server forks and keeps running with stderr open: read stdout (the PID line)
        // to its end; stderr goes to the file, or the read would never finish.
        let mut child = cmd.spawn(std::process::Stdio::piped(), log_writer.into())?;
        let mut text = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().expect("stdout is piped"), &mut text)
            .context("reading the guestfish server's PID")?;
        let status = child.wait().context("waiting for guestfish --listen")?;
        if !status.success() {
            let mut said = String::new();
            let _ = server_log.reopen().map(|mut f| f.read_to_string(&mut said));
            bail!(
                "guestfish --listen failed ({status}): {} {}",
                text.trim(),
                said.trim()
            );
        }
        let pid = text
            .split(|c: char| c == ';' || c.is_whitespace())
            .find_map(|w| w.strip_prefix("GUESTFISH_PID="))
            .and_then(|p| p.parse::<u32>().ok())
            .with_context(|| format!("guestfish --listen printed no GUESTFISH_PID: {text:?}"))?;
        let fish = Fish {
            pid,
            accel,
            secrets: Vec::new(),
            closed: false,
            server_log,
            server_log_read: Cell::new(0),
        };
        let launch = session.launches.fetch_add(1, Ordering::SeqCst) + 1;
        crate::progress::event("appliance", serde_json::json!({"launch": launch}));
        fish.call_with(&["run"], Some(LAUNCH_TIMEOUT))
            .context("launching the libguestfs appliance")?;
        Ok(fish)
    }

    /// Values to redact from errors of later calls.
    pub fn add_secret(&mut self, s: &str) {
        if !s.is_empty() {
            self.secrets.push(s.to_string());
        }
    }

    fn remote(&self, description: String) -> Cmd {
        let mut c = Cmd::new("guestfish", description)
            .internal()
            .arg(format!("--remote={}", self.pid));
        for s in &self.secrets {
            c = c.secret(s.clone());
        }
        self.accel.libguestfs_env(c)
    }

    /// Runs one guestfish command in the appliance and returns its output.
    pub fn call(&self, words: &[&str]) -> Result<String> {
        let out = self.call_bytes(words)?;
        Ok(String::from_utf8_lossy(&out).trim_end().to_string())
    }

    /// Like [`Fish::call`], for commands that print raw bytes (`pread-device`).
    pub fn call_bytes(&self, words: &[&str]) -> Result<Vec<u8>> {
        self.call_bytes_with(words, None)
    }

    /// [`Fish::call`] that fails after `timeout`.
    fn call_with(&self, words: &[&str], timeout: Option<std::time::Duration>) -> Result<String> {
        let out = self.call_bytes_with(words, timeout)?;
        Ok(String::from_utf8_lossy(&out).trim_end().to_string())
    }

    fn call_bytes_with(
        &self,
        words: &[&str],
        timeout: Option<std::time::Duration>,
    ) -> Result<Vec<u8>> {
        let (name, args) = words.split_first().context("empty guestfish command")?;
        let mut cmd = self
            .remote(format!("guestfish {name}"))
            .arg("--")
            .arg(format!("-{name}"))
            .args(args);
        if let Some(t) = timeout {
            cmd = cmd.timeout(t);
        }
        let out = cmd.run()?;
        let err = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.server_said()?
        );
        let errors: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("error:") || l.contains("unknown command"))
            .collect();
        if !errors.is_empty() {
            bail!(
                "guestfish {name} failed: {}",
                crate::sys::exec::redact(&errors.join("\n"), &self.secrets)
            );
        }
        Ok(out.stdout)
    }

    /// What the server wrote to its stderr since the last call (a libguestfs error
    /// message may span several lines: they are joined to the `error:` line).
    fn server_said(&self) -> Result<String> {
        let mut f = self
            .server_log
            .reopen()
            .context("reading the guestfish server's messages")?;
        f.seek(std::io::SeekFrom::Start(self.server_log_read.get()))
            .context("reading the guestfish server's messages")?;
        let mut bytes = Vec::new();
        f.take(1 << 20)
            .read_to_end(&mut bytes)
            .context("reading the guestfish server's messages")?;
        self.server_log_read
            .set(self.server_log_read.get() + bytes.len() as u64);
        let text = String::from_utf8_lossy(&bytes);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::debug!("guestfish server: {line}");
        }
        Ok(if text.contains("error:") {
            text.replace('\n', " ")
        } else {
            String::new()
        })
    }

    /// Like [`Fish::call`], for commands whose failure is an answer ("no such partition").
    pub fn try_call(&self, words: &[&str]) -> Option<String> {
        self.call(words).ok()
    }

    /// Shuts the appliance down cleanly (flushing every write to the disk).
    pub fn close(mut self) -> Result<()> {
        // On failure `self` is dropped unclosed, so Drop still stops the server.
        self.call(&["shutdown"])?;
        self.closed = true;
        let _ = self
            .remote("stopping the libguestfs server".into())
            .arg("--")
            .arg("exit")
            .cleanup()
            .run();
        Ok(())
    }
}

impl Drop for Fish {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        if crate::sys::interrupt::interrupted() {
            // The server may be busy with a long command (a package install): asking it to
            // exit would wait for that. Stop the appliance and the server directly.
            crate::sys::exec::kill_tree(self.pid, std::time::Duration::from_secs(5));
            return;
        }
        let stopped = self
            .remote("stopping the libguestfs server".into())
            .arg("--")
            .arg("exit")
            .timeout(std::time::Duration::from_secs(30))
            .cleanup()
            .run();
        if stopped.is_err() {
            crate::sys::exec::kill_tree(self.pid, std::time::Duration::from_secs(5));
        }
    }
}

/// Typed queries: the appliance's answers parsed into values (the parsers are tested on
/// captured output below). Commands whose output is not used go through [`Fish::call`].
impl Fish {
    fn lines(&self, words: &[&str]) -> Result<Vec<String>> {
        Ok(self.call(words)?.lines().map(str::to_string).collect())
    }

    fn flag(&self, words: &[&str]) -> Result<bool> {
        parse_bool(&self.call(words)?).with_context(|| format!("guestfish {}", words[0]))
    }

    pub fn number(&self, words: &[&str]) -> Result<u64> {
        let out = self.call(words)?;
        out.trim()
            .parse()
            .with_context(|| format!("guestfish {} answered {out:?}, not a number", words[0]))
    }

    /// Whole disks, partitions and logical volumes the appliance sees.
    pub fn block_devices(&self) -> Result<Vec<String>> {
        let mut devices = self.lines(&["list-devices"])?;
        devices.extend(self.lines(&["list-partitions"])?);
        devices.extend(self.lines(&["lvs"])?);
        Ok(devices)
    }

    /// Physical volumes (LVM).
    pub fn physical_volumes(&self) -> Result<Vec<String>> {
        self.lines(&["pvs"])
    }

    /// Sets a block device read-only (or read-write again) in the appliance's kernel.
    pub fn set_read_only(&self, device: &str, read_only: bool) -> Result<()> {
        let verb = if read_only {
            "blockdev-setro"
        } else {
            "blockdev-setrw"
        };
        self.call(&[verb, device]).map(|_| ())
    }

    /// What `blkid` reports for a device (`TYPE`, `UUID`, `LABEL`, `PART_ENTRY_UUID`…);
    /// empty for a device blkid knows nothing about.
    pub fn blkid(&self, device: &str) -> BTreeMap<String, String> {
        record(&self.try_call(&["blkid", device]).unwrap_or_default())
    }

    /// Size of a block device in bytes.
    pub fn size_bytes(&self, device: &str) -> Result<u64> {
        self.number(&["blockdev-getsize64", device])
    }

    /// Size of a block device in 512-byte sectors.
    pub fn size_sectors(&self, device: &str) -> Result<u64> {
        self.number(&["blockdev-getsz", device])
    }

    /// The filesystem on a device (`ext4`, `xfs`, `btrfs`, …).
    pub fn vfs_type(&self, device: &str) -> Result<String> {
        self.call(&["vfs-type", device])
    }

    pub fn is_file(&self, path: &str) -> Result<bool> {
        self.flag(&["is-file", path])
    }

    pub fn is_dir(&self, path: &str) -> Result<bool> {
        self.flag(&["is-dir", path])
    }

    /// Whether a device is an LVM logical volume.
    pub fn is_lv(&self, device: &str) -> bool {
        self.try_call(&["is-lv", device])
            .is_some_and(|s| parse_bool(&s) == Some(true))
    }

    /// Mounts a filesystem read-only; false when it cannot be (not a filesystem, a
    /// journal that needs replaying on a read-only device).
    pub fn try_mount_ro(&self, device: &str, mountpoint: &str) -> bool {
        self.try_call(&["mount-ro", device, mountpoint]).is_some()
    }

    /// Mounts a filesystem with `options` (none: libguestfs's defaults).
    pub fn mount(&self, device: &str, mountpoint: &str, options: &[String]) -> Result<()> {
        if options.is_empty() {
            self.call(&["mount", device, mountpoint])?;
        } else {
            self.call(&["mount-options", &options.join(","), device, mountpoint])?;
        }
        Ok(())
    }

    pub fn umount_all(&self) -> Result<()> {
        self.call(&["umount-all"]).map(|_| ())
    }

    /// Roots libguestfs inspection finds (`inspect-os`).
    pub fn inspect_os(&self) -> Result<Vec<String>> {
        self.lines(&["inspect-os"])
    }

    /// The mount points inspection found for `root`, shortest first (at least `/`).
    pub fn inspect_mountpoints(&self, root: &str) -> Result<Vec<(String, String)>> {
        Ok(parse_mountpoints(
            &self.call(&["inspect-get-mountpoints", root])?,
            root,
        ))
    }

    /// Total size of the filesystem mounted at `mountpoint`, in bytes.
    pub fn filesystem_bytes(&self, mountpoint: &str) -> Result<u64> {
        parse_statvfs_bytes(&self.call(&["statvfs", mountpoint])?)
            .with_context(|| format!("statvfs {mountpoint}"))
    }

    /// The disk a partition is on, and its number.
    pub fn partition_of(&self, partition: &str) -> Result<(String, u32)> {
        let disk = self.call(&["part-to-dev", partition])?;
        let num = self.number(&["part-to-partnum", partition])?;
        Ok((
            disk,
            u32::try_from(num).context("partition number out of range")?,
        ))
    }

    /// The partition table type of a disk.
    pub fn partition_table(&self, disk: &str) -> Result<Table> {
        Table::parse(&self.call(&["part-get-parttype", disk])?)
    }

    /// The partitions of a disk, as `part-list` reports them.
    pub fn partitions(&self, disk: &str) -> Result<Vec<Partition>> {
        parse_part_list(&self.call(&["part-list", disk])?)
    }

    /// What identifies a GPT partition to the guest: type GUID, unique GUID (PARTUUID),
    /// name and attribute bits.
    pub fn gpt_identity(&self, disk: &str, num: u32) -> Result<[String; 4]> {
        let n = num.to_string();
        Ok([
            self.call(&["part-get-gpt-type", disk, &n])?,
            self.call(&["part-get-gpt-guid", disk, &n])?,
            self.try_call(&["part-get-name", disk, &n])
                .unwrap_or_default(),
            self.call(&["part-get-gpt-attributes", disk, &n])?,
        ])
    }

    /// Moves a GPT's backup header and table to the end of the (grown) disk and returns
    /// the last usable LBA the primary header then records.
    pub fn expand_gpt(&self, disk: &str) -> Result<u64> {
        self.call(&["part-expand-gpt", disk])?;
        let header = self.call_bytes(&[
            "pread-device",
            disk,
            &GPT_HEADER_PREFIX.to_string(),
            &GPT_HEADER_OFFSET.to_string(),
        ])?;
        gpt_last_usable(&header).with_context(|| format!("reading the GPT header of {disk}"))
    }
}

/// One partition as `part-list` reports it (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub num: u32,
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
    pub size: u64,
}

/// Parses guestfish's `part-list` output (records of `part_num`, `part_start`,
/// `part_end`, `part_size`).
pub fn parse_part_list(text: &str) -> Result<Vec<Partition>> {
    let mut out = Vec::new();
    let mut cur: [Option<u64>; 4] = [None; 4];
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once(':') else {
            continue;
        };
        let slot = match k.trim() {
            "part_num" => 0,
            "part_start" => 1,
            "part_end" => 2,
            "part_size" => 3,
            _ => continue,
        };
        let v: u64 = v
            .trim()
            .parse()
            .with_context(|| format!("part-list: {} is not a number: {line:?}", k.trim()))?;
        cur[slot] = Some(v);
        if let [Some(num), Some(start), Some(end), Some(size)] = cur {
            out.push(Partition {
                num: u32::try_from(num).context("part-list: partition number out of range")?,
                start,
                end,
                size,
            });
            cur = [None; 4];
        }
    }
    if cur.iter().any(Option::is_some) {
        bail!("part-list output ends in the middle of a partition record: {text:?}");
    }
    Ok(out)
}

/// The partition table type (`part-get-parttype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Gpt,
    Mbr,
}

impl Table {
    pub fn parse(s: &str) -> Result<Table> {
        match s.trim() {
            "gpt" => Ok(Table::Gpt),
            "msdos" => Ok(Table::Mbr),
            other => bail!("a {other} partition table cannot be grown (GPT and MBR can)"),
        }
    }
}

/// Where the primary GPT header is read: LBA 1 of a 512-byte-sector disk, as far as
/// the last usable LBA (bytes 48..56).
const GPT_HEADER_OFFSET: u64 = 512;
const GPT_HEADER_PREFIX: usize = 56;

/// The last usable LBA a GPT header records. After moving the backup header to the end
/// of a grown disk, sgdisk (libguestfs' `part-expand-gpt`) aligns it down to the
/// partitions' alignment (2048 sectors for the usual 1 MiB), so it can lie before
/// `total - 34`: growing must stop there.
pub fn gpt_last_usable(header: &[u8]) -> Result<u64> {
    if header.len() < GPT_HEADER_PREFIX || &header[..8] != b"EFI PART" {
        bail!(
            "no GPT header at LBA 1 ({} bytes read, signature {:?})",
            header.len(),
            String::from_utf8_lossy(&header[..header.len().min(8)])
        );
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&header[48..56]);
    Ok(u64::from_le_bytes(b))
}

/// guestfish's booleans.
fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// `inspect-get-mountpoints` output (`/boot: /dev/sda1` lines), shortest mount point
/// first; just `/` on `root` when it lists none.
fn parse_mountpoints(text: &str, root: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(m, d)| (m.trim().to_string(), d.trim().to_string()))
        .collect();
    v.sort_by_key(|(m, _)| (m.len(), m.clone()));
    if v.is_empty() {
        v.push(("/".into(), root.to_string()));
    }
    v
}

/// Bytes of a filesystem from `statvfs` output (blocks × fragment size).
fn parse_statvfs_bytes(text: &str) -> Result<u64> {
    let r = record(text);
    let field = |k: &str| -> Result<u64> {
        r.get(k)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("statvfs without {k}"))
    };
    field("blocks")?
        .checked_mul(field("frsize")?)
        .context("statvfs size overflow")
}

/// Parses guestfish's `key: value` record output.
pub fn record(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `part-list /dev/sda` recorded on a disk with Ubuntu 24.04's cloud image layout.
    const UBUNTU: &str = include_str!("../../tests/fixtures/part-list-ubuntu.txt");

    #[test]
    fn parses_recorded_part_list() {
        let parts = parse_part_list(UBUNTU).unwrap();
        let nums: Vec<u32> = parts.iter().map(|p| p.num).collect();
        assert_eq!(nums, vec![14, 15, 16, 1]);
        let p1 = parts[3];
        assert!(parts[..3].iter().all(|p| p.start < p1.start));
        assert_eq!(p1.size, p1.end - p1.start + 1);
        assert!(parse_part_list("[0] = {\n  part_num: 1\n  part_start: x\n").is_err());
        assert!(parse_part_list("[0] = {\n  part_num: 1\n").is_err());
    }

    #[test]
    fn the_last_usable_lba_is_read_from_the_gpt_header() {
        // The first 56 bytes of a primary GPT header after `sgdisk -e` on a 5 GiB disk
        // (10485760 sectors): last usable 0x9ff800 = 10483712, not 10485726.
        let mut h = b"EFI PART\x00\x00\x01\x00\x5c\x00\x00\x00".to_vec();
        h.extend_from_slice(&[0; 4]); // CRC32 (not checked here)
        h.extend_from_slice(&[0; 4]); // reserved
        h.extend_from_slice(&1u64.to_le_bytes()); // current LBA
        h.extend_from_slice(&10485759u64.to_le_bytes()); // backup LBA
        h.extend_from_slice(&34u64.to_le_bytes()); // first usable
        h.extend_from_slice(&[0x00, 0xf8, 0x9f, 0x00, 0, 0, 0, 0]); // last usable
        assert_eq!(gpt_last_usable(&h).unwrap(), 10483712);
        assert!(gpt_last_usable(&h[..40]).is_err());
        let mut mbr = h.clone();
        mbr[..8].copy_from_slice(b"NOT GPT!");
        assert!(gpt_last_usable(&mbr).is_err());
    }

    #[test]
    fn answers_parse_into_values() {
        assert_eq!(parse_bool("true\n"), Some(true));
        assert_eq!(parse_bool("false"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
        assert_eq!(
            parse_mountpoints(
                "/boot: /dev/sda16\n/: /dev/sda1\n/boot/efi: /dev/sda15\n",
                "/dev/sda1"
            ),
            [
                ("/".to_string(), "/dev/sda1".to_string()),
                ("/boot".into(), "/dev/sda16".into()),
                ("/boot/efi".into(), "/dev/sda15".into()),
            ]
        );
        assert_eq!(
            parse_mountpoints("", "/dev/vg/root"),
            [("/".to_string(), "/dev/vg/root".to_string())]
        );
        // statvfs as guestfish prints it.
        let statvfs = "bsize: 4096\nfrsize: 4096\nblocks: 1000\nbfree: 10\nbavail: 5\nfiles: 64\nffree: 3\nfavail: 3\nfsid: 1\nflag: 4096\nnamemax: 255\n";
        assert_eq!(parse_statvfs_bytes(statvfs).unwrap(), 4_096_000);
        assert!(parse_statvfs_bytes("bsize: 4096\n").is_err());
        assert!(Table::parse("loop").is_err());
        assert_eq!(Table::parse("msdos\n").unwrap(), Table::Mbr);
    }
}
