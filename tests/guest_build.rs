//! `diskforge build --disk-only` on disks the tests make (GPT/ext4, MBR/xfs, LVM) with a
//! real Debian userland: growth read back, every customization present, ttyd enabled,
//! hygiene applied, exactly one appliance launch, the base untouched.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::guest::{fish, make_disk, sha256, Layout};

const TOOLS: &[&str] = &["qemu-img", "guestfish", "mmdebstrap"];

fn build(recipe: &Path, out: &Path, cache: &Path) -> Output {
    let mut c = common::diskforge();
    common::guestfs_env(&mut c);
    c.args(["--json-events", "--accel", "tcg", "--cache-dir"])
        .arg(cache)
        .arg("build")
        .arg(recipe)
        .arg("--disk-only")
        .arg(out)
        .env("DISKFORGE_TEST_PW", "pw-Planted-Secret-77")
        .output()
        .unwrap()
}

fn launches(out: &Output) -> Option<u64> {
    String::from_utf8_lossy(&out.stderr).lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["event"] == "appliance_launches")
            .then(|| v["count"].as_u64())
            .flatten()
    })
}

fn section<'a>(text: &'a str, name: &str) -> &'a str {
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

fn qemu_img_info(p: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(p)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn gpt_ext4_grows_and_gets_every_customization_in_one_launch() {
    if !common::require(TOOLS) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let base = make_disk(t.path(), Layout::GptExt4, 900);
    let base_sum = sha256(&base);
    std::fs::write(t.path().join("banner.txt"), "copied from the recipe dir\n").unwrap();
    std::fs::copy("/usr/bin/true", t.path().join("ttyd-bin")).unwrap();
    let recipe = t.path().join("r.yaml");
    std::fs::write(
        &recipe,
        r#"
name: guest-test
base: {path: GptExt4.raw, format: raw}
disk: {size: 2G}
customize:
  groups: [{name: labgroup, gid: 2345}]
  users:
    - {name: lab, uid: 1500, groups: [labgroup], password: {env: DISKFORGE_TEST_PW}, ssh-authorized-keys: ["ssh-ed25519 AAAATESTKEY lab@test"], sudo: true}
  directories: [{path: /srv/lab, owner: lab, group: labgroup, mode: "0750"}]
  files:
    - {path: /etc/motd, content: "hello from diskforge\n", mode: "0644"}
    - {path: /opt/banner.txt, source: banner.txt, owner: lab, mode: "0600"}
  symlinks: [{path: /usr/local/bin/hello, target: /bin/echo}]
  commands: ["echo first > /var/tmp/order", "echo second >> /var/tmp/order"]
  enable-units: [ssh.service]
  hostname: guest-test
  timezone: Europe/Berlin
  firstboot-commands: ["touch /var/tmp/firstboot-ran"]
ttyd:
  enabled: true
  source: {path: ttyd-bin}
  port: 8081
  credential: {user: admin, password: {env: DISKFORGE_TEST_PW}}
"#,
    )
    .unwrap();
    let out_disk = t.path().join("out.qcow2");
    let out = build(&recipe, &out_disk, &t.path().join("cache"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("pw-Planted-Secret-77")
            && !String::from_utf8_lossy(&out.stdout).contains("pw-Planted-Secret-77"),
        "secret leaked"
    );
    assert_eq!(launches(&out), Some(1), "appliance launches: {stderr}");
    assert_eq!(sha256(&base), base_sum, "the base image was modified");

    let info = qemu_img_info(&out_disk);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 2u64 << 30);
    assert!(info.get("backing-filename").is_none(), "{info}");
    assert!(Command::new("qemu-img")
        .arg("check")
        .arg(&out_disk)
        .status()
        .unwrap()
        .success());

    let text = fish(
        &["--ro", "-a", out_disk.to_str().unwrap(), "-i"],
        "echo ==statvfs\nstatvfs /\necho ==motd\ncat /etc/motd\necho ==banner\nstat /opt/banner.txt\necho ==passwd\ncat /etc/passwd\necho ==group\ncat /etc/group\necho ==shadow\ncat /etc/shadow\necho ==keys\ncat /home/lab/.ssh/authorized_keys\necho ==sudo\ncat /etc/sudoers.d/lab\necho ==srv\nstat /srv/lab\necho ==link\nreadlink /usr/local/bin/hello\necho ==order\ncat /var/tmp/order\necho ==wants\nls /etc/systemd/system/multi-user.target.wants\necho ==unit\ncat /etc/systemd/system/diskforge-ttyd.service\necho ==ttydenv\nstat /etc/diskforge/ttyd.env\necho ==ttydbin\nstat /usr/local/bin/ttyd\necho ==hostname\ncat /etc/hostname\necho ==tz\nreadlink /etc/localtime\necho ==mid\nfilesize /etc/machine-id\necho ==sshkeys\nglob-expand /etc/ssh/ssh_host_*\necho ==stage\nis-dir /var/tmp/diskforge-stage\necho ==end\n",
    );
    let sv = common::guest::record(section(&text, "statvfs"));
    let size = sv["blocks"] * sv["bsize"];
    assert!(
        size > (1800u64 << 20),
        "root filesystem did not grow: {size} bytes"
    );
    assert_eq!(section(&text, "motd"), "hello from diskforge");
    assert!(
        section(&text, "banner").contains("mode: 33152"),
        "0600 file: {}",
        section(&text, "banner")
    ); // 0o100600
    assert!(section(&text, "banner").contains("uid: 1500"));
    assert!(section(&text, "passwd").contains("lab:x:1500:"));
    assert!(section(&text, "group").contains("labgroup:x:2345:lab"));
    let shadow = section(&text, "shadow");
    assert!(
        shadow.lines().any(|l| l.starts_with("lab:$")),
        "no password hash for lab"
    );
    assert!(!shadow.contains("pw-Planted-Secret-77"));
    assert_eq!(section(&text, "keys"), "ssh-ed25519 AAAATESTKEY lab@test");
    assert!(section(&text, "sudo").contains("lab ALL=(ALL) NOPASSWD:ALL"));
    assert!(
        section(&text, "srv").contains("mode: 16872"),
        "{}",
        section(&text, "srv")
    ); // 0o40750
    assert_eq!(section(&text, "link"), "/bin/echo");
    assert_eq!(section(&text, "order"), "first\nsecond");
    let wants = section(&text, "wants");
    for unit in [
        "diskforge-ttyd.service",
        "ssh.service",
        "diskforge-firstboot.service",
    ] {
        assert!(wants.contains(unit), "{unit} not enabled: {wants}");
    }
    let unit = section(&text, "unit");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/ttyd -p 8081 -W -c ${TTYD_CREDENTIAL} login"),
        "{unit}"
    );
    assert!(
        unit.contains("Restart=always") && unit.contains("After=network-online.target"),
        "{unit}"
    );
    assert!(!unit.contains("pw-Planted-Secret-77"));
    assert!(
        section(&text, "ttydenv").contains("mode: 33152"),
        "credential file not 0600"
    );
    assert!(
        section(&text, "ttydbin").contains("mode: 33261"),
        "ttyd not 0755"
    ); // 0o100755
    assert_eq!(section(&text, "hostname"), "guest-test");
    assert!(section(&text, "tz").ends_with("Europe/Berlin"));
    assert_eq!(section(&text, "mid"), "0", "machine-id not empty");
    assert_eq!(section(&text, "sshkeys").trim(), "", "ssh host keys left");
    assert_eq!(
        section(&text, "stage"),
        "false",
        "staging directory left behind"
    );
}

fn grow_only(layout: Layout) {
    if !common::require(TOOLS) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let base = make_disk(t.path(), layout, 700);
    let base_sum = sha256(&base);
    let recipe = t.path().join("r.yaml");
    std::fs::write(
        &recipe,
        format!("base: {{path: {layout:?}.raw, format: raw}}\ndisk: {{size: +1G}}\ncustomize: {{files: [{{path: /etc/grown, content: yes}}]}}\n"),
    )
    .unwrap();
    let out_disk = t.path().join("out.qcow2");
    let out = build(&recipe, &out_disk, &t.path().join("cache"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(launches(&out), Some(1));
    assert_eq!(sha256(&base), base_sum);
    let text = fish(
        &["--ro", "-a", out_disk.to_str().unwrap(), "-i"],
        "echo ==statvfs\nstatvfs /\necho ==f\ncat /etc/grown\necho ==end\n",
    );
    let sv = common::guest::record(section(&text, "statvfs"));
    let size = sv["blocks"] * sv["bsize"];
    assert!(
        size > (1500u64 << 20),
        "{layout:?}: root filesystem is {size} bytes after growing a 700 MiB disk by 1 GiB"
    );
    assert_eq!(section(&text, "f"), "yes");
}

#[test]
fn mbr_xfs_grows_in_place() {
    grow_only(Layout::MbrXfs);
}

#[test]
fn lvm_root_grows_pv_lv_and_filesystem() {
    grow_only(Layout::GptLvmExt4);
}

#[test]
fn shrinking_is_refused_with_both_sizes() {
    if !common::require(&["qemu-img"]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("b.qcow2");
    assert!(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("2G")
        .status()
        .unwrap()
        .success());
    let recipe = t.path().join("r.yaml");
    std::fs::write(&recipe, "base: {path: b.qcow2}\ndisk: {size: 1G}\n").unwrap();
    let out = build(&recipe, &t.path().join("o.qcow2"), &t.path().join("cache"));
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("refusing to shrink") && e.contains("2.0 GiB") && e.contains("1.0 GiB"),
        "{e}"
    );
    assert!(!t.path().join("o.qcow2").exists());
}

/// Processes whose command line mentions `needle` (a test's temporary directory).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) {
                found.push(format!("{}: {text}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[test]
fn ctrl_c_during_customization_stops_the_appliance_and_leaves_nothing() {
    if !common::require(TOOLS) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let base = make_disk(t.path(), Layout::GptExt4, 700);
    let base_sum = sha256(&base);
    let recipe = t.path().join("r.yaml");
    std::fs::write(
        &recipe,
        "base: {path: GptExt4.raw, format: raw}\ndisk: {size: +1G}\ncustomize: {commands: [\"sleep 600\"]}\n",
    )
    .unwrap();
    let cache = t.path().join("cache");
    let out_dir = t.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let events = t.path().join("events.jsonl");
    let mut c = common::diskforge();
    common::guestfs_env(&mut c);
    let child = c
        .args(["--json-events", "--accel", "tcg", "--cache-dir"])
        .arg(&cache)
        .arg("build")
        .arg(&recipe)
        .arg("--disk-only")
        .arg(out_dir.join("out.qcow2"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&events).unwrap())
        .spawn()
        .unwrap();
    // Interrupt while the guest runs the recipe's command inside the appliance.
    let out = common::interrupt_when(
        child,
        "INT",
        || {
            std::fs::read_to_string(&events)
                .map(|s| s.contains(r#""stage":"customize""#))
                .unwrap_or(false)
        },
        std::time::Duration::from_secs(300),
        std::time::Duration::from_secs(40),
    );
    let stderr = std::fs::read_to_string(&events).unwrap();
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted by SIGINT"), "{stderr}");

    let left = processes_mentioning(&t.path().to_string_lossy());
    assert!(left.is_empty(), "still running: {left:#?}");
    let work: Vec<_> = std::fs::read_dir(cache.join("work"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(work.is_empty(), "work directory left: {work:?}");
    let outputs: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(outputs.is_empty(), "output left: {outputs:?}");
    assert_eq!(common::temp_files(&cache), Vec::<std::path::PathBuf>::new());
    assert_eq!(sha256(&base), base_sum, "the base changed");
}
