//! `diskforge build` on a Debian userland on a GPT disk with the ext4 root last (the
//! shared test base, also served to tests/it/fleet.rs): every customization present and
//! read back, secrets only where the recipe put them on the published disk, ttyd
//! enabled, hygiene applied, exactly one appliance launch, the base untouched; Ctrl-C in
//! the middle; the incremental stage cache; shrinking refused. The partition layouts of
//! real cloud images (LVM, xfs, btrfs, MBR, root not last by number) are the layout
//! zoo's (tests/it/layout_zoo.rs).
use crate::common;
use common::guest::section;
use common::Run;

use std::path::Path;
use std::process::{Command, Output};

use common::guest::{base_in, fish, sha256};

const TOOLS: &[&str] = &["qemu-img", "guestfish", "mmdebstrap"];

/// `diskforge --json-events --accel tcg --cache-dir CACHE build RECIPE`, libguestfs
/// under TCG.
fn tcg_build(cache: &Path, recipe: &Path) -> Command {
    let mut c = common::diskforge_tcg();
    c.args(["--json-events", "--accel", "tcg", "--cache-dir"])
        .arg(cache)
        .arg("build")
        .arg(recipe);
    c
}

fn build(recipe: &Path, out: &Path, cache: &Path) -> Output {
    let mut c = common::diskforge();
    common::guestfs_env(&mut c);
    let output = c
        .args(["--json-events", "-v", "--accel", "tcg", "--cache-dir"])
        .arg(cache)
        .arg("build")
        .arg(recipe)
        .arg("--disk-only")
        .arg(out)
        .env("DISKFORGE_TEST_PW", "pw-Planted-Secret-77")
        .env("DISKFORGE_TEST_ROOT_PW", "pw-Root-Secret-91")
        .env("DISKFORGE_TEST_TTYD_PW", "pw-Ttyd-Secret-53")
        .output()
        .unwrap();
    common::events::check(&output.stderr);
    output
}

/// The secrets the first test plants: (value, how often the published disk may hold
/// it). Passwords are hashed on the host and the secret variable only reaches the
/// guest through the staged script: never on the disk. The ttyd credential is written
/// once, where the recipe asks for it (its EnvironmentFile).
const SECRETS: &[(&str, usize)] = &[
    ("pw-Planted-Secret-77", 0),
    ("pw-Root-Secret-91", 0),
    ("tok-Variable-Secret-29", 0),
    ("pw-Ttyd-Secret-53", 1),
];

fn launches(out: &Output) -> Option<u64> {
    String::from_utf8_lossy(&out.stderr).lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["event"] == "appliance_launches")
            .then(|| v["count"].as_u64())
            .flatten()
    })
}

/// How the build found the guest's root (`fstab` or `inspection`).
fn found_by(out: &Output) -> Option<String> {
    String::from_utf8_lossy(&out.stderr).lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["event"] == "filesystem")
            .then(|| v["found_by"].as_str().map(str::to_string))
            .flatten()
    })
}

fn qemu_img_info(p: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(p)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

fn gpt_ext4_grows_and_gets_every_customization_in_one_launch() {
    let t = tempfile::tempdir().unwrap();
    let base = base_in(t.path());
    let base_sum = sha256(&base);
    std::fs::write(t.path().join("banner.txt"), "copied from the recipe dir\n").unwrap();
    std::fs::copy("/usr/bin/true", t.path().join("ttyd-bin")).unwrap();
    let recipe = t.path().join("r.yaml");
    std::fs::write(
        &recipe,
        r#"
name: guest-test
env: [SITE_TOKEN]
base: {path: base.qcow2}
disk: {size: 2G}
customize:
  groups: [{name: labgroup, gid: 2345}]
  users:
    - {name: lab, uid: 1500, groups: [labgroup], password: {env: DISKFORGE_TEST_PW}, ssh-authorized-keys: ["ssh-ed25519 AAAATESTKEY lab@test"], sudo: true}
  directories: [{path: /srv/lab, owner: lab, group: labgroup, mode: "0750"}]
  files:
    - {path: /etc/motd, content: "hello from diskforge\n", mode: "0644"}
    - {path: /opt/banner.txt, source: banner.txt, owner: lab, mode: "0600"}
    # What a build machine leaves behind and hygiene removes.
    - {path: /var/lib/systemd/random-seed, content: "seed of the build\n", mode: "0600"}
    - {path: /var/lib/urandom/random-seed, content: "seed of the build\n", mode: "0600"}
    - {path: /etc/lvm/devices/system.devices, content: "IDTYPE=sys_wwid IDNAME=build-disk\n"}
  symlinks: [{path: /usr/local/bin/hello, target: /bin/echo}]
  commands: ["echo first > /var/tmp/order", "echo second >> /var/tmp/order", "echo ${SITE_TOKEN} | sha256sum > /var/tmp/token.sha256"]
  enable-units: [ssh.service]
  hostname: guest-test
  timezone: Europe/Berlin
  firstboot-commands: ["touch /var/tmp/firstboot-ran"]
  root-password: {env: DISKFORGE_TEST_ROOT_PW}
ttyd:
  enabled: true
  source: {path: ttyd-bin}
  port: 8081
  credential: {user: admin, password: {env: DISKFORGE_TEST_TTYD_PW}}
output:
  kubevirt: {instancetype: u1.small, preference: debian}
"#,
    )
    .unwrap();
    // Built and published the way users publish: to a registry and a layout, the layer
    // uncompressed so that the scans below read the disk's bytes in every blob.
    let reg = common::registry::Registry::start(None);
    let layout = t.path().join("published");
    let mut c = common::diskforge();
    common::guestfs_env(&mut c);
    let out = c
        .args(["--json-events", "-v", "--accel", "tcg", "--cache-dir"])
        .arg(t.path().join("cache"))
        .arg("build")
        .arg(&recipe)
        .args(["--compression", "none", "--tls-verify=false", "--output"])
        .arg(format!("docker://{}/lab/secrets:1", reg.addr))
        .arg("--output")
        .arg(format!("oci:{}:1", layout.display()))
        .arg("--kubevirt-manifests")
        .arg(t.path().join("k8s"))
        .env("DISKFORGE_TEST_PW", SECRETS[0].0)
        .env("DISKFORGE_TEST_ROOT_PW", SECRETS[1].0)
        .env("SITE_TOKEN", SECRETS[2].0)
        .env("DISKFORGE_TEST_TTYD_PW", SECRETS[3].0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let plan = common::diskforge()
        .args(["-v", "plan", "--json"])
        .arg(&recipe)
        .env("DISKFORGE_TEST_PW", SECRETS[0].0)
        .env("DISKFORGE_TEST_ROOT_PW", SECRETS[1].0)
        .env("SITE_TOKEN", SECRETS[2].0)
        .env("DISKFORGE_TEST_TTYD_PW", SECRETS[3].0)
        .succeeds();
    for (secret, _) in SECRETS {
        for (what, bytes) in [
            (
                "build output, events and debug log",
                [&out.stdout[..], &out.stderr[..]].concat(),
            ),
            ("plan", [&plan.stdout[..], &plan.stderr[..]].concat()),
        ] {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(secret),
                "{secret} leaked into the {what}"
            );
        }
    }
    // Everything published — the layer, config (labels, history), manifest, SBOM and
    // provenance, in the layout, beside it and in the registry's storage — holds each
    // secret only as often as the disk may.
    for (secret, allowed) in SECRETS {
        for tree in [t.path(), reg.dir.path()] {
            assert_eq!(
                common::occurrences_in_tree(tree, secret.as_bytes()),
                *allowed,
                "{secret} under {}",
                tree.display()
            );
        }
    }
    // The cluster side, from the recipe and the pushed image: valid for KubeVirt's and
    // CDI's API definitions, the VM pinned by digest with the recipe's instancetype and
    // preference, a Service for ttyd's port, CDI importing at least the disk's size.
    let pinned = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|w| w.contains("/lab/secrets@sha256:"))
        .unwrap_or_else(|| {
            panic!(
                "no pinned reference on stdout: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
        .to_string();
    let k8s = t.path().join("k8s/guest-test");
    let mut files: Vec<_> = std::fs::read_dir(&k8s)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let v = common::kubevirt::validate(common::kubevirt::validator_python(), &files);
    assert!(
        v.status.success(),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let all: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for want in [
        format!("image: {pinned}"),
        "kind: VirtualMachineClusterInstancetype".into(),
        "name: u1.small".into(),
        "name: debian".into(),
        "kind: Service".into(),
        "targetPort: 8081".into(),
        "kind: DataImportCron".into(),
        "storage: 3Gi".into(),
    ] {
        assert!(all.contains(&want), "{want} not in the manifests:\n{all}");
    }
    // The published disk, free blocks included (converted to raw).
    let out_disk = t.path().join("out.qcow2");
    let m = common::first_manifest(&layout);
    let layer = layout.join("blobs/sha256").join(
        m["layers"][0]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let x = t.path().join("x");
    std::fs::create_dir(&x).unwrap();
    Command::new("tar")
        .args(["--numeric-owner", "-xf"])
        .arg(&layer)
        .arg("-C")
        .arg(&x)
        .succeeds();
    std::fs::rename(x.join("disk/disk.qcow2"), &out_disk).unwrap();
    let raw = raw_copy(&out_disk);
    for (secret, allowed) in SECRETS {
        assert_eq!(
            common::occurrences(&raw, secret.as_bytes()),
            *allowed,
            "{secret} on the published disk"
        );
    }
    std::fs::remove_file(&raw).unwrap();
    assert_eq!(launches(&out), Some(1), "appliance launches: {stderr}");
    // fstab names the root /dev/sda2: found without libguestfs inspection.
    assert_eq!(found_by(&out).as_deref(), Some("fstab"), "{stderr}");
    assert_eq!(sha256(&base), base_sum, "the base image was modified");

    let info = qemu_img_info(&out_disk);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 2u64 << 30);
    assert!(info.get("backing-filename").is_none(), "{info}");
    Command::new("qemu-img")
        .arg("check")
        .arg(&out_disk)
        .succeeds();

    let text = fish(
        &["--ro", "-a", out_disk.to_str().unwrap(), "-i"],
        "echo ==statvfs\nstatvfs /\necho ==motd\ncat /etc/motd\necho ==banner\nstat /opt/banner.txt\necho ==passwd\ncat /etc/passwd\necho ==group\ncat /etc/group\necho ==shadow\ncat /etc/shadow\necho ==keys\ncat /home/lab/.ssh/authorized_keys\necho ==sudo\ncat /etc/sudoers.d/lab\necho ==srv\nstat /srv/lab\necho ==link\nreadlink /usr/local/bin/hello\necho ==order\ncat /var/tmp/order\necho ==token\ncat /var/tmp/token.sha256\necho ==wants\nls /etc/systemd/system/multi-user.target.wants\necho ==unit\ncat /etc/systemd/system/diskforge-ttyd.service\necho ==ttydenv\nstat /etc/diskforge/ttyd.env\necho ==ttydenvtext\ncat /etc/diskforge/ttyd.env\necho ==ttydbin\nstat /usr/local/bin/ttyd\necho ==hostname\ncat /etc/hostname\necho ==tz\nreadlink /etc/localtime\necho ==mid\nfilesize /etc/machine-id\necho ==sshkeys\nglob-expand /etc/ssh/ssh_host_*\necho ==stage\nis-dir /var/tmp/diskforge-stage\necho ==seeds\nexists /var/lib/systemd/random-seed\nexists /var/lib/urandom/random-seed\nexists /etc/lvm/devices/system.devices\nis-dir /etc/lvm/devices\necho ==end\n",
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
    // The command saw the secret variable's value (only its hash is kept).
    use sha2::Digest as _;
    assert_eq!(
        section(&text, "token"),
        format!(
            "{}  -",
            hex::encode(sha2::Sha256::digest(format!("{}\n", SECRETS[2].0)))
        )
    );
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
    assert_eq!(
        section(&text, "ttydenvtext"),
        "TTYD_CREDENTIAL=\"admin:pw-Ttyd-Secret-53\""
    );
    assert!(
        shadow.lines().any(|l| l.starts_with("root:$6$")),
        "no root hash"
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
    // The random seeds and LVM's devices file are gone; their directories stay.
    assert_eq!(
        section(&text, "seeds"),
        "false\nfalse\nfalse\ntrue",
        "random seeds or LVM devices file left"
    );
}

/// Every `appliance_launches` count a build reported, in order.
/// `disk` converted to a raw image beside it (`NAME.raw`), to search all its bytes.
fn raw_copy(disk: &Path) -> std::path::PathBuf {
    let raw = disk.with_extension("raw");
    Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(disk)
        .arg(&raw)
        .succeeds();
    raw
}

fn all_launches(out: &Output) -> Vec<u64> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "appliance_launches")
        .filter_map(|v| v["count"].as_u64())
        .collect()
}

/// `--incremental` keeps the grown disk as a stage, and the customized disk beside it.
/// A rebuild that changes only the content of a recipe file and ttyd's command line and
/// credential rewrites them on the host: no appliance, the plan says so and is what
/// runs, the file's owner and mode stay, and the old credential is gone from every
/// block of the new disk. A change after the packages that the host cannot make (a
/// file's mode) reuses the grown stage: one launch. (xfs on MBR, which this test's
/// layout replaced, grows in tests/it/layout_zoo.rs: el-like for xfs, cirros-like for
/// MBR.)
fn incremental_rebuild_reuses_the_grown_stage() {
    let t = tempfile::tempdir().unwrap();
    let base = base_in(t.path());
    let base_sum = sha256(&base);
    std::fs::copy("/usr/bin/true", t.path().join("ttyd-bin")).unwrap();
    let cache = t.path().join("cache");
    let recipe = t.path().join("r.yaml");
    // The user's SSH key is named after the file's content, so it changes with it.
    let write_recipe_with = |v: &str, mode: &str, port: u16, more_users: &str| {
        std::fs::write(
            &recipe,
            format!(
                "base: {{path: base.qcow2}}\ndisk: {{size: +1G}}\n\
                 customize: {{files: [{{path: /etc/v, content: {v}, mode: \"{mode}\"}}], \
                 users: [{{name: lab, password: {{env: DISKFORGE_TEST_PW}}, \
                 ssh-authorized-keys: [\"ssh-ed25519 AAAAKEY{v} lab@test\"]}}{more_users}]}}\n\
                 ttyd: {{enabled: true, source: {{path: ttyd-bin}}, port: {port}, \
                 credential: {{user: web, password: {{env: DISKFORGE_TEST_TTYD_PW}}}}}}\n"
            ),
        )
        .unwrap()
    };
    let write_recipe = |v: &str, mode: &str, port: u16| write_recipe_with(v, mode, port, "");
    // Each build runs exactly the commands its plan lists, on the miss and on the hits.
    let incremental = |out_disk: &Path, password: &str, user_password: &str| {
        let plan = common::diskforge()
            .args(["--accel", "tcg", "--cache-dir"])
            .arg(&cache)
            .args(["plan", "--json", "--incremental"])
            .arg(&recipe)
            .arg("--disk-only")
            .arg(out_disk)
            .succeeds();
        let out = tcg_build(&cache, &recipe)
            .arg("--incremental")
            .arg("--disk-only")
            .arg(out_disk)
            .env("DISKFORGE_TEST_TTYD_PW", password)
            .env("DISKFORGE_TEST_PW", user_password)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let planned = common::planned_commands(&plan.stdout);
        assert!(!planned.is_empty());
        common::assert_ran_the_plan(&common::executed_commands(&out.stderr), &planned);
        let steps: Vec<String> = serde_json::from_slice::<serde_json::Value>(&plan.stdout).unwrap()
            ["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_str().unwrap().to_string())
            .collect();
        (out, steps)
    };
    let read_back = |disk: &Path| {
        fish(
            &["--ro", "-a", disk.to_str().unwrap(), "-i"],
            "echo ==statvfs\nstatvfs /\necho ==v\ncat /etc/v\necho ==vstat\nstat /etc/v\n\
             echo ==unit\ncat /etc/systemd/system/diskforge-ttyd.service\n\
             echo ==env\ncat /etc/diskforge/ttyd.env\necho ==envstat\nstat /etc/diskforge/ttyd.env\n\
             echo ==shadow\ncat /etc/shadow\necho ==shadowb\ncat /etc/shadow-\n\
             echo ==keys\ncat /home/lab/.ssh/authorized_keys\n\
             echo ==keysstat\nstat /home/lab/.ssh/authorized_keys\necho ==end\n",
        )
    };
    const OLD_PW: &str = "pw-Old-Ttyd-Secret-11";
    const NEW_PW: &str = "pw-New-Ttyd-Secret-22";
    const USER_PW: &str = "pw-User-Secret-33";
    const NEW_USER_PW: &str = "pw-New-User-Secret-44";
    // The password /etc/shadow of `text` holds for lab.
    let lab_password_is = |text: &str, password: &str| {
        let shadow = section(text, "shadow");
        let hash = shadow
            .lines()
            .find_map(|l| l.strip_prefix("lab:"))
            .and_then(|rest| rest.split(':').next())
            .unwrap_or_else(|| panic!("no lab in /etc/shadow: {shadow}"));
        diskforge::guest::script::matches_hash(
            &diskforge::recipe::SecretValue::new(password.into()),
            hash,
        )
    };

    write_recipe("one", "0644", 7681);
    let (out, steps) = incremental(&t.path().join("one.qcow2"), OLD_PW, USER_PW);
    assert_eq!(all_launches(&out), [1, 1], "grow + packages, then the rest");
    assert!(steps.iter().any(|s| s == "settle"), "{steps:?}");
    let kept: Vec<serde_json::Value> = common::events::named(&out.stderr, "stage-kept");
    assert_eq!(kept.len(), 2, "the stage and the customized disk: {kept:?}");
    assert_eq!(kept[1]["settled"], true, "{kept:?}");

    // Content only: the host rewrites it.
    write_recipe("two", "0644", 7682);
    let plan = common::diskforge()
        .arg("--cache-dir")
        .arg(&cache)
        .arg("plan")
        .arg(&recipe)
        .arg("--incremental")
        .succeeds();
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("guest-packages") && l.contains("[cached]")),
        "growth and packages not marked cached:\n{text}"
    );
    assert!(
        text.contains("no appliance: rewrite SSH keys, /etc/v, passwords and ttyd's command line"),
        "the plan does not say the host rewrites the files:\n{text}"
    );
    let two = t.path().join("two.qcow2");
    let (out, steps) = incremental(&two, NEW_PW, NEW_USER_PW);
    assert!(all_launches(&out).is_empty(), "an appliance ran: {steps:?}");
    assert!(steps.iter().any(|s| s == "patch"), "{steps:?}");
    assert!(!steps.iter().any(|s| s == "guest"), "{steps:?}");
    let patched = common::events::named(&out.stderr, "patched");
    let paths: Vec<&str> = patched[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/home/lab/.ssh/authorized_keys",
            "/etc/v",
            "/etc/shadow",
            "/etc/shadow-",
            "/etc/systemd/system/diskforge-ttyd.service",
            "/etc/diskforge/ttyd.env"
        ]
    );
    for secret in [NEW_PW, NEW_USER_PW] {
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains(secret),
            "a secret leaked into the build's output"
        );
    }
    let text = read_back(&two);
    let sv = common::guest::record(section(&text, "statvfs"));
    assert!(
        sv["blocks"] * sv["bsize"] > (1500u64 << 20),
        "the reused stage is not grown: {text}"
    );
    assert_eq!(section(&text, "v"), "two");
    assert!(
        section(&text, "vstat").contains("mode: 33188"),
        "/etc/v is not 0644: {text}"
    );
    assert!(
        section(&text, "unit")
            .contains("ExecStart=/usr/local/bin/ttyd -p 7682 -W -c ${TTYD_CREDENTIAL}"),
        "{text}"
    );
    assert!(section(&text, "env").contains(NEW_PW), "{text}");
    assert!(
        section(&text, "envstat").contains("mode: 33152"),
        "the credential file is not 0600: {text}"
    );
    // Deleted is not erased: the old credential's blocks were zeroed.
    let raw = raw_copy(&two);
    assert_eq!(
        common::occurrences(&raw, OLD_PW.as_bytes()),
        0,
        "the old credential is on the disk"
    );
    assert_eq!(common::occurrences(&raw, NEW_PW.as_bytes()), 1);
    std::fs::remove_file(&raw).unwrap();

    // The user's new password too, through its hash in /etc/shadow, and the new key
    // in the home /etc/passwd gives, still the user's and 0600.
    assert!(lab_password_is(&text, NEW_USER_PW), "{text}");
    assert_eq!(section(&text, "keys"), "ssh-ed25519 AAAAKEYtwo lab@test");
    let keys = common::guest::record(section(&text, "keysstat"));
    assert_eq!(keys["mode"], 0o100600, "{text}");
    assert_ne!(keys["uid"], 0, "the key file is root's: {text}");

    // A mode is not content: the appliance runs again, on the grown stage.
    write_recipe("two", "0600", 7682);
    let three = t.path().join("three.qcow2");
    let (out, steps) = incremental(&three, NEW_PW, NEW_USER_PW);
    assert_eq!(
        all_launches(&out),
        [1],
        "the stage was not reused: {steps:?}"
    );
    let text = read_back(&three);
    assert_eq!(section(&text, "v"), "two");
    assert!(
        section(&text, "vstat").contains("mode: 33152"),
        "/etc/v is not 0600: {text}"
    );
    let settled: Vec<String> = common::events::named(&out.stderr, "stage-kept")
        .iter()
        .filter(|e| e["settled"] == true)
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(settled.len(), 1, "the customized disk was not kept again");

    // Every password hash the kept disk holds (lab's, in /etc/shadow and its backup).
    let old_hashes: Vec<String> = [section(&text, "shadow"), section(&text, "shadowb")]
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| l.split(':').nth(1))
        .filter(|h| h.starts_with("$6$"))
        .map(str::to_string)
        .collect();
    assert!(!old_hashes.is_empty(), "{text}");

    // Two users appended (one with a group, sudo, a password and a key), and lab's
    // password rotated: added on the host, as the guest's own useradd, chpasswd and
    // the script's key and sudoers lines would.
    const GUEST_PW: &str = "pw-Guest-Secret-55";
    const GUEST_KEY: &str = "ssh-ed25519 AAAAGUESTKEY guest@test";
    write_recipe_with(
        "two",
        "0600",
        7682,
        &format!(
            ", {{name: guest, shell: /bin/sh, groups: [lab], sudo: true, \
             password: {{env: DISKFORGE_TEST_GUEST_PW}}, ssh-authorized-keys: [\"{GUEST_KEY}\"]}}, \
             {{name: ops}}"
        ),
    );
    std::env::set_var("DISKFORGE_TEST_GUEST_PW", GUEST_PW);
    let four = t.path().join("four.qcow2");
    const ROTATED_PW: &str = "pw-Lab-Rotated-66";
    let (out, steps) = incremental(&four, NEW_PW, ROTATED_PW);
    assert!(all_launches(&out).is_empty(), "an appliance ran: {steps:?}");
    assert!(steps.iter().any(|s| s == "patch"), "{steps:?}");
    let patched = common::events::named(&out.stderr, "patched");
    assert_eq!(
        patched[0]["added_users"],
        serde_json::json!(["guest", "ops"])
    );
    for secret in [GUEST_PW, ROTATED_PW] {
        assert!(!String::from_utf8_lossy(&out.stderr).contains(secret));
    }
    // No hash of the build before is left anywhere on the disk, free blocks included.
    let raw = raw_copy(&four);
    for h in &old_hashes {
        assert_eq!(
            common::occurrences(&raw, h.as_bytes()),
            0,
            "an old hash is on the disk"
        );
    }
    std::fs::remove_file(&raw).unwrap();
    // The oracle: the same lines run by the guest's own tools in an appliance, on an
    // overlay of the disk the rebuild stood on; both disks' files compared.
    let oracle = t.path().join("oracle.qcow2");
    Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            &settled[0],
        ])
        .arg(&oracle)
        .succeeds();
    let added = fish(
        &["--ro", "-a", four.to_str().unwrap()],
        "run\nmount-ro /dev/sda2 /\ncat /etc/shadow\n",
    );
    let guest_hash = added
        .lines()
        .find_map(|l| l.strip_prefix("guest:"))
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no guest in /etc/shadow: {added}"))
        .to_string();
    assert!(diskforge::guest::script::matches_hash(
        &diskforge::recipe::SecretValue::new(GUEST_PW.into()),
        &guest_hash
    ));
    // The day of the new entries is the rebuild's (the comparison below masks days: the
    // appliance may run on the next one).
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    for name in ["guest:", "ops:"] {
        let day: u64 = added
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split(':').nth(1))
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("no day for {name} in /etc/shadow: {added}"));
        assert!(
            day == today || day + 1 == today,
            "{name} day {day}, today {today}"
        );
    }
    // No double quotes or backslashes: the lines go through guestfish's quoting.
    let listing = |root: &str| {
        format!(
            "for f in passwd passwd- group group- shadow shadow- gshadow gshadow- subuid subuid- subgid subgid-; do \
               echo '##' $f; if [ ! -e {root}/etc/$f ]; then echo absent; else case $f in \
                 shadow*) awk -F: -v OFS=: '$2 ~ /^[$]/ {{ $2 = 1 }} {{ $3 = 1; print }}' {root}/etc/$f ;; \
                 *) cat {root}/etc/$f ;; esac; fi; done; \
             for h in guest ops; do echo '## home' $h; cd {root}/home/$h && find . -printf '%y_%m_%U_%G_%s_%p ' | xargs -n1 | sort; \
               echo '## times' $h; find . -mindepth 1 ! -path './.ssh*' -printf '%A@_%T@_%p ' | xargs -n1 | sort; done; \
             echo; echo '## keys'; cat {root}/home/guest/.ssh/authorized_keys; \
             echo '## sudoers'; stat -c '%a %U %G %s' {root}/etc/sudoers.d {root}/etc/sudoers.d/guest; cat {root}/etc/sudoers.d/guest"
        )
    };
    let script = format!(
        "run\nmount /dev/sda2 /\nmount-ro /dev/sdb2 /mnt\n\
         sh \"useradd -m -s /bin/sh -G lab guest && echo 'guest:{guest_hash}' | chpasswd -e && \
           grp=$(id -gn guest) && install -d -m 0700 -o guest -g $grp /home/guest/.ssh && \
           echo '{GUEST_KEY}' > /tmp/k && install -m 0600 -o guest -g $grp /tmp/k /home/guest/.ssh/authorized_keys && rm /tmp/k && \
           mkdir -p /etc/sudoers.d && echo 'guest ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/guest && chmod 0440 /etc/sudoers.d/guest && \
           useradd -m -s /bin/bash ops\"\n\
         echo ==useradd\nsh \"{}\"\necho ==host\nsh \"{}\"\necho ==end\n",
        listing(""),
        listing("/mnt")
    );
    let both = fish(
        &[
            "--format=qcow2",
            "-a",
            oracle.to_str().unwrap(),
            "-a",
            four.to_str().unwrap(),
        ],
        &script,
    );
    let (by_useradd, by_host) = (section(&both, "useradd"), section(&both, "host"));
    for part in [
        "guest:x:",
        "## home ops",
        "## times guest",
        "./.bashrc",
        "authorized_keys",
        "ssh-ed25519 AAAAGUESTKEY",
        "440 root root",
        "guest ALL=(ALL) NOPASSWD:ALL",
    ] {
        assert!(by_useradd.contains(part), "no {part}: {both}");
    }
    assert_eq!(
        by_host, by_useradd,
        "the host added the user unlike the guest's useradd:\n--- host\n{by_host}\n--- useradd\n{by_useradd}"
    );
    assert_eq!(sha256(&base), base_sum, "the base was modified");
}

/// `plan --incremental` lists the settle step where the host can rewrite files later,
/// and not with `DISKFORGE_HOST_PATCH=0`, nor for a recipe with nothing to rewrite.
fn the_customized_disk_is_kept_only_where_files_can_be_rewritten() {
    let t = tempfile::tempdir().unwrap();
    common::disk::qcow2(t.path(), "b.qcow2", "1G");
    let recipe = t.path().join("r.yaml");
    let steps = |text: &str, switch: Option<&str>| -> Vec<String> {
        std::fs::write(&recipe, text).unwrap();
        let mut c = common::diskforge();
        c.arg("--cache-dir")
            .arg(t.path().join("cache"))
            .args(["plan", "--json", "--incremental"])
            .arg(&recipe);
        if let Some(v) = switch {
            c.env("DISKFORGE_HOST_PATCH", v);
        }
        let out = c.succeeds();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_str().unwrap().to_string())
            .collect()
    };
    let with_file = "base: {path: b.qcow2}\ncustomize: {files: [{path: /etc/motd, content: hi}]}\n";
    let kept = steps(with_file, None);
    assert_eq!(
        kept,
        [
            "base",
            "overlay",
            "guest-packages",
            "stage",
            "guest",
            "settle",
            "finalize",
            "pack",
            "publish",
            "attest"
        ]
    );
    assert!(!steps(with_file, Some("0")).contains(&"settle".to_string()));
    let nothing = "base: {path: b.qcow2}\ncustomize: {hostname: lab}\n";
    assert!(!steps(nothing, None).contains(&"settle".to_string()));
}

fn shrinking_is_refused_with_both_sizes() {
    let t = tempfile::tempdir().unwrap();
    common::disk::qcow2(t.path(), "b.qcow2", "2G");
    let recipe = t.path().join("r.yaml");
    std::fs::write(&recipe, "base: {path: b.qcow2}\ndisk: {size: 1G}\n").unwrap();
    let out = build(&recipe, &t.path().join("o.qcow2"), &t.path().join("cache"));
    // Found before anything runs: an invalid recipe, located at disk.size.
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("r.yaml:2:")
            && e.contains("disk.size: the disk cannot shrink")
            && e.contains("2.0 GiB")
            && e.contains("1.0 GiB"),
        "{e}"
    );
    // validate finds it too.
    common::diskforge().arg("validate").arg(&recipe).exits(2);
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

fn ctrl_c_during_customization_stops_the_appliance_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let base = base_in(t.path());
    let base_sum = sha256(&base);
    let recipe = t.path().join("r.yaml");
    std::fs::write(
        &recipe,
        "base: {path: base.qcow2}\ndisk: {size: +1G}\ncustomize: {commands: [\"sleep 600\"]}\n",
    )
    .unwrap();
    let cache = t.path().join("cache");
    let out_dir = t.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let events = t.path().join("events.jsonl");
    let child = tcg_build(&cache, &recipe)
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

/// `--cache-dir c`, relative to where diskforge runs: the overlay names its backing file
/// (the base downloaded into the cache) by a path qemu-img resolves from the overlay's
/// own directory, so every such path is made absolute once, when the command line is
/// read. A real build from a downloaded base succeeds.
fn a_relative_cache_dir_builds() {
    let t = tempfile::tempdir().unwrap();
    let base = common::guest::base_qcow2();
    let server = common::http::TestServer::start();
    server.serve("base.qcow2", std::fs::read(&base).unwrap());
    std::fs::write(
        t.path().join("r.yaml"),
        format!(
            "base: {{url: \"{}\", checksum: \"sha256:{}\"}}\n",
            server.url("base.qcow2"),
            sha256(&base)
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut c = common::diskforge();
    common::guestfs_env(&mut c);
    let out = c
        .current_dir(t.path())
        .args(["--json-events", "--accel", "tcg", "--cache-dir", "c"])
        .args(["build", "r.yaml", "--disk-only", "out.qcow2"])
        .env("DISKFORGE_WORK_DIR", "w")
        .output()
        .unwrap();
    let took = started.elapsed();
    common::events::check(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < std::time::Duration::from_secs(900), "took {took:?}");
    // The disk is standalone, and the base went into the relative cache.
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(t.path().join("out.qcow2"))
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert!(info.get("backing-filename").is_none(), "{info}");
    let blobs: Vec<_> = std::fs::read_dir(t.path().join("c/blobs/sha256"))
        .unwrap()
        .collect();
    assert_eq!(
        blobs.len(),
        1,
        "the base is cached under the relative cache dir"
    );
    // DISKFORGE_CACHE_DIR=c finds the same cache, and the plan names it as $CACHE.
    let plan = common::diskforge()
        .current_dir(t.path())
        .env("DISKFORGE_CACHE_DIR", "c")
        .args([
            "--accel",
            "tcg",
            "plan",
            "r.yaml",
            "--disk-only",
            "out2.qcow2",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&plan.stdout);
    assert_eq!(plan.status.code(), Some(0), "{text}");
    assert!(
        text.contains("qemu-img create -q -f qcow2 -F qcow2 -b $CACHE/blobs/sha256/"),
        "{text}"
    );
    // The work directory was cleaned up and nothing half-written is left.
    let work_left: Vec<_> = std::fs::read_dir(t.path().join("w"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(work_left.is_empty(), "{work_left:?}");
    assert!(common::temp_files(t.path()).is_empty());
}

crate::tests! {
    fn gpt_ext4_grows_and_gets_every_customization_in_one_launch [TOOLS, common::kubevirt::validator_need()];
    fn incremental_rebuild_reuses_the_grown_stage [TOOLS];
    fn shrinking_is_refused_with_both_sizes [&["qemu-img"]];
    fn the_customized_disk_is_kept_only_where_files_can_be_rewritten [&["qemu-img", "qemu-storage-daemon", "debugfs", "e2fsck"], crate::host_patch::fuse()];
    fn ctrl_c_during_customization_stops_the_appliance_and_leaves_nothing [TOOLS];
    fn a_relative_cache_dir_builds [TOOLS];
}
