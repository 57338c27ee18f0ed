//! Rewriting files of a kept disk on the host (`guest::patch`), on an ext4 filesystem
//! made by `mkfs.ext4 -d` inside a partitioned qcow2: new content, the inode's owner,
//! mode and SELinux label kept, the old content gone from every block of the disk, the
//! backing file untouched, and refusals for what it must not touch.

use std::path::{Path, PathBuf};
use std::process::Command;

use diskforge::guest::patch::{self, PatchData, PatchFile, Presence, RootFs};
use diskforge::guest::script::StageData;

use crate::harness::{Need, SYSTEM_SETUP};

const OFFSET: u64 = 1 << 20;
const FS_SIZE: u64 = 62 << 20;
const OLD_SECRET: &str = "OLD-CREDENTIAL-5f1c9e";
/// The hash /etc/shadow holds for lab before the rewrite.
const OLD_HASH: &str = "$6$oldsalt$OLDHASHa1b2c3";
/// The label `setfiles` writes: the context with its trailing NUL.
const LABEL: &[u8] = b"system_u:object_r:etc_t:s0\0";

/// The need for FUSE (the export of a disk's root filesystem).
pub fn fuse() -> Need {
    Need::check("/dev/fuse (FUSE)", SYSTEM_SETUP, || {
        Path::new("/dev/fuse").exists()
    })
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("starting a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn debugfs(dev: &str, writable: bool, request: &str) -> String {
    let mut c = Command::new("debugfs");
    if writable {
        c.arg("-w");
    }
    sh(c.args(["-R", request, dev]))
}

/// A 64 MiB disk: an ext4 filesystem at 1 MiB holding /etc/motd (three blocks of old
/// content with a credential in it, owner 1000:27, mode 0640, an SELinux label),
/// /etc/ttyd.service, and /etc/link, a symbolic link. Returns the qcow2 overlay to
/// patch and its backing file.
fn kept_disk(dir: &Path) -> (PathBuf, PathBuf) {
    let tree = dir.join("tree/etc");
    std::fs::create_dir_all(&tree).unwrap();
    let old = format!("{OLD_SECRET}\n").repeat(500);
    std::fs::write(tree.join("motd"), old).unwrap();
    std::fs::write(tree.join("ttyd.service"), "ExecStart=ttyd -p 7681 login\n").unwrap();
    std::fs::write(
        tree.join("shadow"),
        format!("root:*:19000:0:99999:7:::\nlab:{OLD_HASH}:19000:0:99999:7:::\n"),
    )
    .unwrap();
    // The backup chpasswd leaves holds the earlier hash too.
    std::fs::write(
        tree.join("shadow-"),
        format!("root:*:19000:0:99999:7:::\nlab:{OLD_HASH}:19000:0:99999:7:::\n"),
    )
    .unwrap();
    std::fs::write(
        tree.join("passwd"),
        "root:x:0:0:root:/root:/bin/bash\nlab:x:1000:1000::/home/lab:/bin/bash\nsvc:x:999:999::/var/lib/svc:/bin/sh\n",
    )
    .unwrap();
    let ssh = dir.join("tree/home/lab/.ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(ssh.join("authorized_keys"), "ssh-ed25519 OLDKEY lab\n").unwrap();
    let other = dir.join("tree/home/svc/.ssh");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("authorized_keys"), "ssh-ed25519 STRAY svc\n").unwrap();
    std::os::unix::fs::symlink("motd", tree.join("link")).unwrap();
    // A directory reached through a symbolic link (as /var/run or merged /usr are).
    std::fs::create_dir(tree.join("real")).unwrap();
    std::fs::write(tree.join("real/f"), "through a link\n").unwrap();
    std::os::unix::fs::symlink("real", tree.join("linkdir")).unwrap();
    // A file of eight extents (data between holes): more than an inode holds, so its
    // extent tree has a block of its own.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(tree.join("sparse")).unwrap();
        for i in 0..8u64 {
            f.write_all_at(format!("{OLD_SECRET}\n").repeat(100).as_bytes(), i * 65536)
                .unwrap();
        }
    }
    let raw = dir.join("disk.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-b", "4096", "-E", &format!("offset={OFFSET}"), "-d"])
        .arg(dir.join("tree"))
        .arg(&raw)
        .arg(format!("{}k", FS_SIZE >> 10)));
    let dev = format!("{}?offset={OFFSET}", raw.display());
    std::fs::write(dir.join("label"), LABEL).unwrap();
    for r in [
        "sif /etc/motd uid 1000".to_string(),
        "sif /etc/motd gid 27".into(),
        "sif /etc/motd mode 0100640".into(),
        // nodump, which a file made in that directory would have inherited.
        "sif /etc/motd flags 0x80040".into(),
        format!(
            "ea_set -f {} /etc/motd security.selinux",
            dir.join("label").display()
        ),
    ] {
        debugfs(&dev, true, &r);
    }
    let base = dir.join("kept.qcow2");
    sh(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&base));
    std::fs::remove_file(&raw).unwrap();
    let overlay = dir.join("overlay.qcow2");
    sh(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&overlay));
    (overlay, base)
}

fn root() -> RootFs {
    RootFs {
        offset: OFFSET,
        size: FS_SIZE,
        fs_type: "ext4".into(),
        other_mounts: vec!["/boot".into()],
    }
}

fn file(path: &str, content: &str, presence: Presence) -> PatchFile {
    PatchFile {
        path: path.into(),
        data: PatchData::Content(StageData::Bytes(content.as_bytes().to_vec())),
        presence,
        home_of: None,
    }
}

fn sha256(p: &Path) -> String {
    sh(Command::new("sha256sum").arg(p))
}

fn rewrites_files_keeping_owner_mode_and_label_and_erases_the_old_content() {
    let dir = tempfile::tempdir().unwrap();
    let (overlay, base) = kept_disk(dir.path());
    let base_sum = sha256(&base);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let new_motd = "Welcome, new content.\n";
    let done = patch::apply(
        &overlay,
        &root(),
        &[
            file("/etc/motd", new_motd, Presence::Always),
            file(
                "/etc/ttyd.service",
                "ExecStart=ttyd -p 7682 login\n",
                Presence::IfPresent,
            ),
            file("/etc/not-on-this-guest", "x", Presence::IfPresent),
            file("/etc/sparse", "not sparse any more\n", Presence::Always),
            PatchFile {
                path: "/etc/shadow".into(),
                data: PatchData::Passwords(vec![("lab".into(), "$6$new$NEWHASH".into())]),
                presence: Presence::Always,
                home_of: None,
            },
            PatchFile {
                path: "/etc/shadow-".into(),
                data: PatchData::BackupPasswords(vec![("lab".into(), "$6$new$NEWHASH".into())]),
                presence: Presence::IfPresent,
                home_of: None,
            },
            PatchFile {
                home_of: Some("lab".into()),
                ..file(
                    "/home/lab/.ssh/authorized_keys",
                    "ssh-ed25519 NEWKEY lab\n",
                    Presence::Always,
                )
            },
        ],
        &work,
        &[],
        &Default::default(),
    )
    .expect("patching the kept disk");
    let paths: Vec<&str> = done.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/etc/motd",
            "/etc/ttyd.service",
            "/etc/sparse",
            "/etc/shadow",
            "/etc/shadow-",
            "/home/lab/.ssh/authorized_keys"
        ],
        "{done:?}"
    );
    assert_eq!(done[0].old_blocks, 3, "{done:?}");
    assert_eq!(done[0].xattrs, ["security.selinux"]);
    assert_eq!(done[0].bytes, new_motd.len() as u64);
    assert_eq!(
        std::fs::read_dir(&work).unwrap().count(),
        0,
        "the patch left files in the work directory"
    );
    assert_eq!(sha256(&base), base_sum, "the kept disk was written");

    // Read back from a raw copy of the result.
    let raw = dir.path().join("result.raw");
    sh(Command::new("qemu-img")
        .args(["convert", "-q", "-O", "raw"])
        .arg(&overlay)
        .arg(&raw));
    let dev = format!("{}?offset={OFFSET}", raw.display());
    assert_eq!(debugfs(&dev, false, "cat /etc/motd"), new_motd);
    assert_eq!(
        debugfs(&dev, false, "cat /etc/ttyd.service"),
        "ExecStart=ttyd -p 7682 login\n"
    );
    let shadow = debugfs(&dev, false, "cat /etc/shadow");
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    assert_eq!(
        shadow,
        format!("root:*:19000:0:99999:7:::\nlab:$6$new$NEWHASH:{today}:0:99999:7:::\n")
    );
    assert_eq!(debugfs(&dev, false, "cat /etc/shadow-"), shadow);
    assert_eq!(
        debugfs(&dev, false, "cat /home/lab/.ssh/authorized_keys"),
        "ssh-ed25519 NEWKEY lab\n"
    );
    let stat = debugfs(&dev, false, "stat /etc/motd");
    assert!(stat.contains("Type: regular"), "{stat}");
    assert!(stat.contains("Mode:  0640"), "{stat}");
    assert!(
        stat.contains("Flags: 0x80040"),
        "the inode flags changed: {stat}"
    );
    assert_eq!(
        debugfs(&dev, false, "cat /etc/sparse"),
        "not sparse any more\n"
    );
    assert!(
        stat.split_whitespace()
            .collect::<Vec<_>>()
            .windows(4)
            .any(|w| w == ["User:", "1000", "Group:", "27"]),
        "{stat}"
    );
    let label = dir.path().join("label-after");
    debugfs(
        &dev,
        false,
        &format!("ea_get -f {} /etc/motd security.selinux", label.display()),
    );
    assert_eq!(std::fs::read(&label).unwrap(), LABEL);
    let bytes = std::fs::read(&raw).unwrap();
    for old in [OLD_SECRET, OLD_HASH] {
        assert!(
            !bytes.windows(old.len()).any(|w| w == old.as_bytes()),
            "the old content {old} is still in the disk's blocks"
        );
    }
    sh(Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(format!("{}?offset={OFFSET}", raw.display())));
}

fn refuses_what_is_not_a_plain_file_on_the_root_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let (overlay, _base) = kept_disk(dir.path());
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let attempt = |f: PatchFile| {
        patch::apply(
            &overlay,
            &root(),
            &[f],
            &work,
            &["s3cret-value".to_string()],
            &Default::default(),
        )
        .expect_err("the patch went through")
        .to_string()
    };
    let e = attempt(file("/etc/absent", "x", Presence::Always));
    assert!(e.contains("/etc/absent is missing"), "{e}");
    let e = attempt(file("/etc/link", "x", Presence::Always));
    assert!(e.contains("only a plain regular file"), "{e}");
    // A file in a home that is not the user's on the disk.
    let e = attempt(PatchFile {
        home_of: Some("svc".into()),
        ..file("/home/svc/.ssh/authorized_keys", "x", Presence::Always)
    });
    assert!(
        e.contains("the home of svc on the kept disk is /var/lib/svc"),
        "{e}"
    );
    let e = attempt(file("/etc/linkdir/f", "x", Presence::Always));
    assert!(
        e.contains("/etc/linkdir on the kept disk is a symlink, not a directory"),
        "{e}"
    );
    let e = attempt(file("/boot/grub.cfg", "x", Presence::Always));
    assert!(e.contains("cannot be rewritten on the host"), "{e}");
    let e = attempt(file("/etc/a b", "x", Presence::Always));
    assert!(e.contains("cannot be rewritten on the host"), "{e}");
    let xfs = RootFs {
        fs_type: "xfs".into(),
        ..root()
    };
    let e = patch::apply(&overlay, &xfs, &[], &work, &[], &Default::default())
        .expect_err("xfs was patched")
        .to_string();
    assert!(e.contains("only ext2/3/4"), "{e}");
}

/// The check made before a disk is kept: read-only, it counts the files the disk has
/// and refuses one that is not a plain regular file.
fn checks_a_disk_read_only_before_it_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (overlay, _base) = kept_disk(dir.path());
    let before = sha256(&overlay);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let present = patch::check(
        &overlay,
        &root(),
        &[
            file("/etc/motd", "new", Presence::Always),
            file("/etc/ttyd.service", "new", Presence::IfPresent),
            file("/etc/absent", "new", Presence::IfPresent),
        ],
        &work,
        &Default::default(),
    )
    .expect("checking the disk");
    assert_eq!(present.present, 2);
    // The fixture has no os-release: users are not added on the host.
    let why = present
        .accounts
        .expect_err("accounts of a disk without os-release");
    assert!(why.contains("os-release"), "{why}");
    let e = patch::check(
        &overlay,
        &root(),
        &[file("/etc/link", "new", Presence::IfPresent)],
        &work,
        &Default::default(),
    )
    .expect_err("a symbolic link passed the check")
    .to_string();
    assert!(e.contains("only a plain regular file"), "{e}");
    assert_eq!(sha256(&overlay), before, "the check wrote to the disk");
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
}

const TOOLS: &[&str] = &[
    "qemu-img",
    "qemu-storage-daemon",
    "debugfs",
    "e2fsck",
    "mkfs.ext4",
];

crate::tests! {
    fn rewrites_files_keeping_owner_mode_and_label_and_erases_the_old_content [TOOLS, fuse()];
    fn refuses_what_is_not_a_plain_file_on_the_root_filesystem [TOOLS, fuse()];
    fn checks_a_disk_read_only_before_it_is_kept [TOOLS, fuse()];
}
