//! Disks for tests, made by qemu-img: empty ones of a size, and ones full of
//! pseudo-random data (so compression and upload have real work to do).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::Run;

/// An empty qcow2 of `size` (qemu-img's notation: `16M`, `2G`) at `dir/name`.
pub fn qcow2(dir: &Path, name: &str, size: &str) -> PathBuf {
    let path = dir.join(name);
    Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg(size)
        .succeeds();
    path
}

/// A qcow2 overlay at `path` on `backing` (of `backing_format`), with `size` when given
/// (qemu-img takes the backing file's otherwise). `backing` is written into the overlay
/// as given: a relative one is resolved from the overlay's directory.
pub fn overlay(path: &Path, backing: &Path, backing_format: &str, size: Option<&str>) -> PathBuf {
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "qcow2", "-F", backing_format, "-b"])
        .arg(backing)
        .arg(path)
        .args(size);
    if let Some(dir) = path.parent().filter(|_| backing.is_relative()) {
        c.current_dir(dir);
    }
    c.succeeds();
    path.to_path_buf()
}

/// A qcow2 `dir/<name>.qcow2` holding `mib` MiB of xorshift output started from `seed`
/// (incompressible).
pub fn random_qcow2(dir: &Path, name: &str, mib: usize, seed: u64) -> PathBuf {
    filled_qcow2(dir, name, mib, seed, usize::MAX)
}

/// [`random_qcow2`] whose second half is compressible, like a real filesystem: each of
/// its bytes keeps only its low four bits.
pub fn half_compressible_qcow2(dir: &Path, name: &str, mib: usize, seed: u64) -> PathBuf {
    filled_qcow2(dir, name, mib, seed, mib << 19)
}

/// xorshift output from `seed`, masked to four bits from byte `compressible_from` on.
fn filled_qcow2(
    dir: &Path,
    name: &str,
    mib: usize,
    seed: u64,
    compressible_from: usize,
) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    let mut f = std::fs::File::create(&raw).unwrap();
    let mut x = seed;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..mib {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let start = compressible_from.saturating_sub(i << 20).min(buf.len());
        buf[start..].iter_mut().for_each(|b| *b &= 0x0f);
        f.write_all(&buf).unwrap();
    }
    drop(f);
    let q = dir.join(format!("{name}.qcow2"));
    Command::new("qemu-img")
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(&raw)
        .arg(&q)
        .succeeds();
    std::fs::remove_file(&raw).unwrap();
    q
}
