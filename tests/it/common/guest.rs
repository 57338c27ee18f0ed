//! Guest test fixtures: a real Debian userland (mmdebstrap minbase, built once and kept
//! under target/), small partitioned disks made with guestfish, and read-back scripts.

use super::Run;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs a guestfish script (one appliance launch) and returns stdout; panics on failure.
pub fn fish(args: &[&str], script: &str) -> String {
    let mut c = Command::new("guestfish");
    super::guestfs_env(&mut c);
    let mut child = c
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting guestfish");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "guestfish failed: {}\nscript:\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Debian bookworm minbase root tree as a tarball, built once per checkout.
pub fn rootfs_tarball() -> PathBuf {
    let dir = super::repo_root().join("target/test-rootfs");
    let tar = dir.join("bookworm-minbase.tar");
    if tar.is_file() {
        return tar;
    }
    let _lock = super::lock_in(&dir, ".lock");
    if tar.is_file() {
        return tar;
    }
    let mirror = std::env::var("DISKFORGE_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    // mmdebstrap picks the output format from the extension: keep `.tar` last.
    let tmp = dir.join("bookworm-minbase.partial.tar");
    let _ = std::fs::remove_file(&tmp);
    Command::new("mmdebstrap")
        .args([
            "--variant=minbase",
            "--quiet",
            "--include=systemd-sysv,passwd,login,openssh-server",
        ])
        .arg("bookworm")
        .arg(&tmp)
        .arg(&mirror)
        .succeeds();
    std::fs::rename(&tmp, &tar).unwrap();
    tar
}

/// Layouts of test disks (the layout zoo, tests/fixtures/layouts/, has the others).
#[derive(Clone, Copy, Debug)]
pub enum Layout {
    /// GPT: a 100 MiB vfat partition, then the ext4 root (last).
    GptExt4,
}

/// A raw disk of `size_mib` holding the Debian tree in `layout`.
pub fn make_disk(dir: &Path, layout: Layout, size_mib: u64) -> PathBuf {
    let disk = dir.join(format!("{layout:?}.raw"));
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(size_mib << 20).unwrap();
    drop(f);
    let tar = rootfs_tarball();
    let (prep, root, fstab) = match layout {
        Layout::GptExt4 => (
            "part-init /dev/sda gpt\npart-add /dev/sda p 2048 206847\npart-add /dev/sda p 206848 -34\nmkfs vfat /dev/sda1\nmkfs ext4 /dev/sda2\n",
            "/dev/sda2",
            "/dev/sda2 / ext4 defaults 0 1\n",
        ),
    };
    let script = format!(
        "run\n{prep}mount {root} /\ntar-in {} /\nwrite /etc/fstab \"{}\"\nwrite /etc/machine-id \"0123456789abcdef0123456789abcdef\\n\"\ntouch /etc/ssh/ssh_host_test_key\n",
        tar.display(),
        fstab.replace('\n', "\\n")
    );
    fish(
        &["--rw", "--format=raw", "-a", disk.to_str().unwrap()],
        &script,
    );
    disk
}

/// sha256 of a file.
pub fn sha256(p: &Path) -> String {
    diskforge::io::hash::sha256_file(p).unwrap().0
}

/// guestfish `key: value` records as numbers where they parse.
pub fn record(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .filter_map(|(k, v)| Some((k.trim().to_string(), v.trim().parse().ok()?)))
        .collect()
}

/// A base image as upstreams publish them: the Debian tree on a 700 MiB GPT/ext4 disk, as
/// qcow2, made once per checkout under target/ (one appliance launch the first time).
pub fn base_qcow2() -> PathBuf {
    let dir = super::repo_root().join("target/test-rootfs");
    let image = dir.join("base-gpt-ext4.qcow2");
    if image.is_file() {
        return image;
    }
    // Also creates `dir`.
    rootfs_tarball();
    let _lock = super::lock_in(&dir, ".base-lock");
    if image.is_file() {
        return image;
    }
    let work = tempfile::tempdir_in(&dir).unwrap();
    let raw = make_disk(work.path(), Layout::GptExt4, 700);
    let tmp = dir.join("base-gpt-ext4.partial.qcow2");
    Command::new("qemu-img")
        .args(["convert", "-q", "-O", "qcow2"])
        .arg(&raw)
        .arg(&tmp)
        .succeeds();
    std::fs::rename(&tmp, &image).unwrap();
    image
}

/// [`base_qcow2`] as `DIR/base.qcow2`, for a recipe in DIR (`base: {path: base.qcow2}`):
/// a hard link to the shared copy (diskforge never writes its base; tests check that).
pub fn base_in(dir: &Path) -> PathBuf {
    let link = dir.join("base.qcow2");
    let shared = base_qcow2();
    if std::fs::hard_link(&shared, &link).is_err() {
        std::fs::copy(&shared, &link).unwrap();
    }
    link
}

/// The lines between `==name` and the next `==` marker of a guestfish script's output
/// (the script echoes a marker before each read-back); empty for an empty section.
pub fn section<'a>(text: &'a str, name: &str) -> &'a str {
    let start = text
        .find(&format!("=={name}\n"))
        .unwrap_or_else(|| panic!("no section {name} in {text}"))
        + name.len()
        + 3;
    let rest = &text[start..];
    if rest.starts_with("==") {
        return "";
    }
    rest[..rest.find("\n==").unwrap_or(rest.len())].trim_end_matches('\n')
}
