//! The layout zoo: disks shaped like the official cloud images of diskforge's catalog,
//! made by the generator scripts in tests/fixtures/layouts/ (see the comment block of
//! each), built once per checkout and cached under target/zoo/ by the hash of those
//! scripts. Readers for a disk's partition table (`sfdisk --json` on a raw copy) and for
//! the bytes of each partition.

use super::Run;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The generator scripts.
pub fn scripts_dir() -> PathBuf {
    super::repo_root().join("tests/fixtures/layouts")
}

/// sha256 over the names and contents of every generator script (and the Debian mirror
/// they use), so editing any of them builds the zoo anew.
pub fn scripts_hash() -> String {
    let mut names: Vec<PathBuf> = std::fs::read_dir(scripts_dir())
        .expect("listing tests/fixtures/layouts")
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let mut h = Sha256::new();
    for p in names {
        h.update(p.file_name().unwrap().to_string_lossy().as_bytes());
        h.update([0]);
        h.update(std::fs::read(&p).unwrap());
        h.update([0]);
    }
    h.update(std::env::var("DISKFORGE_DEBIAN_MIRROR").unwrap_or_default());
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fixture disk and how long building it took (measured when it was built, possibly
/// by an earlier test run).
pub struct Fixture {
    pub path: PathBuf,
    pub build_time: Duration,
    pub built_now: bool,
}

/// The cached fixture `name` (a script `NAME.sh`), built first when missing. Tests that
/// run in parallel build it once: the builder holds a per-fixture file lock, and the
/// finished disk appears under its final name in one rename.
pub fn fixture(name: &str) -> Fixture {
    let zoo = super::repo_root().join("target/zoo");
    let key = &scripts_hash()[..16];
    let dir = zoo.join(key);
    if !dir.is_dir() {
        prune(&zoo, key);
    }
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join(format!("{name}.qcow2"));
    let seconds = dir.join(format!("{name}.build-seconds"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{name}.lock")))
        .unwrap();
    lock.lock().unwrap();
    if disk.is_file() {
        let secs: f64 = std::fs::read_to_string(&seconds)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0.0);
        return Fixture {
            path: disk,
            build_time: Duration::from_secs_f64(secs),
            built_now: false,
        };
    }
    let partial = dir.join(format!(".tmp-{name}.qcow2"));
    let _ = std::fs::remove_file(&partial);
    let started = Instant::now();
    let mut cmd = Command::new("bash");
    super::guestfs_env(&mut cmd);
    cmd.arg(scripts_dir().join(format!("{name}.sh")))
        .arg(&partial)
        .arg(zoo.join("work"))
        .succeeds();
    let took = started.elapsed();
    std::fs::write(&seconds, format!("{:.1}\n", took.as_secs_f64())).unwrap();
    std::fs::rename(&partial, &disk).unwrap();
    eprintln!("built the {name} fixture in {:.0}s", took.as_secs_f64());
    Fixture {
        path: disk,
        build_time: took,
        built_now: true,
    }
}

/// Removes the fixtures of other versions of the scripts (directories named by a
/// 16-digit hash other than `key`), which are not used again.
fn prune(zoo: &Path, key: &str) {
    let Ok(entries) = std::fs::read_dir(zoo) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name != key && name.len() == 16 && name.chars().all(|c| c.is_ascii_hexdigit()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Places `src` at `dest` as a hard link, or a copy when linking fails (another
/// filesystem). Safe because diskforge only ever reads its base.
pub fn link_or_copy(src: &Path, dest: &Path) {
    if std::fs::hard_link(src, dest).is_err() {
        std::fs::copy(src, dest).unwrap();
    }
}

/// A sparse raw copy of a disk image, for tools that read raw disks (sfdisk, sgdisk).
pub fn raw_copy(image: &Path, dest: &Path) -> PathBuf {
    let st = Command::new("qemu-img")
        .args(["convert", "-q", "-O", "raw"])
        .arg(image)
        .arg(dest)
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img convert {} failed", image.display());
    dest.to_path_buf()
}

/// A partition table as `sfdisk --json` reports it (sectors of 512 bytes).
#[derive(Debug, Clone, Deserialize)]
pub struct Table {
    pub label: String,
    pub id: String,
    /// GPT only: the first and last usable LBA.
    pub firstlba: Option<u64>,
    pub lastlba: Option<u64>,
    pub sectorsize: u64,
    pub partitions: Vec<Partition>,
}

/// One partition table entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Partition {
    pub node: String,
    pub start: u64,
    pub size: u64,
    #[serde(rename = "type")]
    pub kind: String,
    /// GPT: the PARTUUID.
    pub uuid: Option<String>,
    /// GPT: the partition name.
    pub name: Option<String>,
    /// GPT: the attribute bits, e.g. "LegacyBIOSBootable GUID:52".
    pub attrs: Option<String>,
    /// MBR: the boot flag.
    pub bootable: Option<bool>,
}

impl Partition {
    /// The partition number (the digits at the end of the node name).
    pub fn number(&self) -> u32 {
        let digits: String = self
            .node
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        digits.parse().unwrap()
    }

    /// The last sector.
    pub fn end(&self) -> u64 {
        self.start + self.size - 1
    }

    /// Everything but the device node name, which differs between two copies of a disk.
    pub fn entry(&self) -> Partition {
        Partition {
            node: format!("partition {}", self.number()),
            ..self.clone()
        }
    }
}

impl Table {
    /// The entry of partition `number`.
    pub fn partition(&self, number: u32) -> &Partition {
        self.partitions
            .iter()
            .find(|p| p.number() == number)
            .unwrap_or_else(|| panic!("no partition {number} in {self:#?}"))
    }
}

#[derive(Deserialize)]
struct SfdiskJson {
    partitiontable: Table,
}

/// The partition table of a raw disk.
pub fn table(raw: &Path) -> Table {
    let out = Command::new("sfdisk").arg("--json").arg(raw).succeeds();
    let t: SfdiskJson = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t.partitiontable.sectorsize, 512);
    t.partitiontable
}

/// sha256 of the bytes of partition `p` of a raw disk.
pub fn partition_hash(raw: &Path, p: &Partition) -> String {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(raw).unwrap();
    f.seek(SeekFrom::Start(p.start * 512)).unwrap();
    let mut left = p.size * 512;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        f.read_exact(&mut buf[..n]).unwrap();
        h.update(&buf[..n]);
        left -= n as u64;
    }
    hex(&h.finalize())
}

/// Where two partitions (of two raw disks) differ, for failure messages: how many 4 KiB
/// blocks differ and the byte offsets (within the partition) of the first few.
pub fn partition_diff(raw_a: &Path, a: &Partition, raw_b: &Path, b: &Partition) -> String {
    use std::io::{Seek, SeekFrom};
    let open = |raw: &Path, p: &Partition| {
        let mut f = std::fs::File::open(raw).unwrap();
        f.seek(SeekFrom::Start(p.start * 512)).unwrap();
        f.take(p.size * 512)
    };
    let (mut fa, mut fb) = (open(raw_a, a), open(raw_b, b));
    let (mut ba, mut bb) = ([0u8; 4096], [0u8; 4096]);
    let (mut offset, mut differing, mut first) = (0u64, 0u64, Vec::new());
    loop {
        let na = fa.read(&mut ba).unwrap();
        let nb = fb.read(&mut bb).unwrap();
        if na == 0 && nb == 0 {
            break;
        }
        if ba[..na] != bb[..nb] {
            differing += 1;
            if first.len() < 8 {
                first.push(format!("{offset:#x}"));
            }
        }
        offset += na.max(nb) as u64;
    }
    format!(
        "{differing} of {} 4-KiB blocks differ, the first at byte offsets {}",
        offset.div_ceil(4096),
        first.join(", ")
    )
}

/// Whether partition `a` of `raw_a` and `b` of `raw_b` hold an ext2/3/4 filesystem and
/// differ only inside its primary superblock (bytes 1024 to 2047): the mount count and
/// times that a read-write mount writes even when no file changes.
pub fn only_ext_superblock_differs(
    raw_a: &Path,
    a: &Partition,
    raw_b: &Path,
    b: &Partition,
) -> bool {
    use std::io::{Seek, SeekFrom};
    let open = |raw: &Path, p: &Partition| {
        let mut f = std::fs::File::open(raw).unwrap();
        f.seek(SeekFrom::Start(p.start * 512)).unwrap();
        f.take(p.size * 512)
    };
    let (mut fa, mut fb) = (open(raw_a, a), open(raw_b, b));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut first = true;
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb {
            return false;
        }
        if na == 0 {
            return true;
        }
        if first {
            // The ext magic 0xEF53 at offset 1080, in both.
            if na < 2048 || ba[1080..1082] != [0x53, 0xef] || bb[1080..1082] != [0x53, 0xef] {
                return false;
            }
            if ba[..1024] != bb[..1024] || ba[2048..na] != bb[2048..na] {
                return false;
            }
            first = false;
        } else if ba[..na] != bb[..nb] {
            return false;
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// Where the GPT headers of a raw disk point: (total sectors, the primary header's
/// AlternateLBA, the backup header's MyLBA, the primary header's LastUsableLBA). The
/// backup header must be the disk's last sector for firmware and the kernel to trust it.
pub fn gpt_headers(raw: &Path) -> (u64, u64, u64, u64) {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(raw).unwrap();
    let total = f.metadata().unwrap().len() / 512;
    let mut read_header = |lba: u64| {
        let mut h = [0u8; 92];
        f.seek(SeekFrom::Start(lba * 512)).unwrap();
        f.read_exact(&mut h).unwrap();
        assert_eq!(&h[..8], b"EFI PART", "no GPT header at LBA {lba}");
        h
    };
    let u64_at = |h: &[u8; 92], off: usize| u64::from_le_bytes(h[off..off + 8].try_into().unwrap());
    let primary = read_header(1);
    let backup = read_header(total - 1);
    (
        total,
        u64_at(&primary, 32),
        u64_at(&backup, 24),
        u64_at(&primary, 48),
    )
}
