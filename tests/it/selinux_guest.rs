//! SELinux guests: a build on a guest with a policy leaves every file with the label
//! the guest's policy gives it, and the image boots enforcing with login and ttyd
//! working. On the project's own Debian base with Debian's reference policy installed
//! and every file labelled (tests/fixtures/selinux/debian-12-selinux.yaml, built once
//! and cached under target/selinux-fixture/): Fedora and EL packages cannot be fetched
//! here, but the mechanism (policy, file_contexts, setfiles, enforcing boot) is the same.
//!
//! - a build with a user and password, the ttyd credential, a file, a directory, a
//!   package and ttyd: `setfiles -n -v` over the result lists no file whose label would
//!   change; the same recipe with `selinux-relabel: false` lists /etc/shadow and ttyd
//!   (the check can fail);
//! - an `--incremental` rebuild that changes only two files' content, the user's
//!   password and the ttyd credential rewrites them on the host (no appliance), each
//!   file keeping the label the relabel gave it: `setfiles -n -v` lists nothing over
//!   that disk either;
//! - that rebuilt disk boots with SELinux enforcing, the user logs in through ttyd with
//!   the new password and credential, and the
//!   audit log and the kernel log hold no AVC denial for ttyd, login, the user's shell,
//!   password checks, sudo or the files the build wrote (Debian's reference policy denies
//!   systemd-tmpfiles and udev a few things at every boot; those are listed, not failed);
//! - a guest without SELinux gets no relabel step in `plan`, `selinux-relabel: maybe`
//!   is a located error, and a config naming a policy that is not installed fails the
//!   build naming the missing file.
use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TOOLS: &[&str] = &["qemu-img", "guestfish", "mmdebstrap", "qemu-system-x86_64"];
const PASSWORD: &str = "Sel-lab-Pass-5521";
const TTYD_PASSWORD: &str = "Sel-ttyd-Cred-0917";
/// The user's password and the ttyd credential of the rebuild that rewrites files on
/// the host.
const NEW_PASSWORD: &str = "Sel-lab-Pass-7306";
const NEW_TTYD_PASSWORD: &str = "Sel-ttyd-Cred-4481";
const FILE_CONTEXTS: &str = "/etc/selinux/default/contexts/files/file_contexts";

fn diskforge(cache: &Path) -> Command {
    let mut c = common::diskforge_cached(cache);
    c.env("SEL_LAB_PASSWORD", PASSWORD)
        .env("SEL_TTYD_PASSWORD", TTYD_PASSWORD)
        .env("SOURCE_DATE_EPOCH", "1767225600");
    c
}

fn ok(out: &Output, what: &str) -> String {
    common::ok_without(
        out,
        what,
        &[PASSWORD, TTYD_PASSWORD, NEW_PASSWORD, NEW_TTYD_PASSWORD],
    )
}

/// The cache shared with the end-to-end test: the built Debian base and the ttyd
/// download are made once per checkout.
fn cache() -> PathBuf {
    common::repo_root().join("target/e2e-cache")
}

/// The SELinux fixture: built once per version of its recipe, under a lock.
fn fixture() -> PathBuf {
    let root = common::repo_root();
    let recipe = root.join("tests/fixtures/selinux/debian-12-selinux.yaml");
    let hash = common::guest::sha256(&recipe);
    let dir = root.join("target/selinux-fixture");
    let image = dir.join(format!("debian-12-selinux-{}.qcow2", &hash[..16]));
    let _lock = common::lock_in(&dir, ".lock");
    if image.is_file() {
        return image;
    }
    let partial = dir.join("partial.qcow2");
    let _ = std::fs::remove_file(&partial);
    let started = std::time::Instant::now();
    let out = diskforge(&cache())
        .arg("build")
        .arg(&recipe)
        .arg("--disk-only")
        .arg(&partial)
        .output()
        .unwrap();
    ok(&out, "building the SELinux fixture");
    eprintln!(
        "built the SELinux fixture in {:.0?}: {}",
        started.elapsed(),
        image.display()
    );
    std::fs::rename(&partial, &image).unwrap();
    image
}

/// A recipe on the fixture in `dir` (a hard link to the shared copy, as `base_in` does).
fn recipe_on_fixture(dir: &Path, relabel: &str, with_package: bool) -> PathBuf {
    let link = dir.join("base.qcow2");
    std::fs::hard_link(fixture(), &link).unwrap();
    let demo = diskforge::recipe::load(
        &common::repo_root().join("recipes/demo.yaml"),
        &Default::default(),
    )
    .unwrap();
    let diskforge::recipe::TtydSource::Url(ttyd) = &demo.recipe.ttyd.source else {
        panic!("recipes/demo.yaml no longer downloads ttyd: update this test");
    };
    let packages = if with_package { "[tmux]" } else { "[]" };
    let text = format!(
        r#"version: 1
name: selinux-lab
base: {{path: base.qcow2}}
disk: {{size: 4G}}
customize:
  packages: {packages}
  users:
    - name: lab
      shell: /bin/bash
      sudo: true
      password: {{env: SEL_LAB_PASSWORD}}
  directories:
    - path: /srv/lab
      owner: lab
  files:
    - path: /etc/motd
      content: "SELinux lab\n"
    - path: /srv/lab/notes.txt
      content: "notes\n"
      owner: lab
  hostname: selinux-lab
  selinux-relabel: {relabel}
ttyd:
  enabled: true
  source:
    url:
      url: {url}
      sha256: {sha}
      member: {member}
  port: 7681
  command: [login]
  credential:
    user: lab
    password: {{env: SEL_TTYD_PASSWORD}}
"#,
        url = ttyd.url,
        sha = ttyd.sha256,
        member = ttyd.member.as_deref().unwrap(),
    );
    let path = dir.join("selinux-lab.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every file of the guest in `disk` whose label `setfiles` would change, with the
/// guest's own setfiles in a dry run over every filesystem of the guest.
fn labels_that_would_change(disk: &Path) -> Vec<String> {
    // setfiles does not cross filesystems: name every mount point (the fixture has one).
    let out = common::guest::fish(
        &["--ro", "-i", "-a", disk.to_str().unwrap()],
        &format!(
            "echo ==mounts\nmountpoints\necho ==dry-run\nsh \"setfiles -n -v {FILE_CONTEXTS} / 2>&1; echo setfiles-exit=$?\"\necho ==end\n"
        ),
    );
    let mounts = section(&out, "mounts");
    assert_eq!(
        mounts.lines().count(),
        1,
        "the fixture grew a filesystem the dry run does not name: {mounts}"
    );
    let dry = section(&out, "dry-run");
    assert!(dry.contains("setfiles-exit=0"), "setfiles failed:\n{dry}");
    dry.lines()
        .filter(|l| l.contains("relabel") || l.contains("Relabel"))
        .map(str::to_string)
        .collect()
}

fn section(text: &str, name: &str) -> String {
    let start = format!("=={name}\n");
    let i = text
        .find(&start)
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        + start.len();
    let rest = &text[i..];
    rest[..rest.find("\n==").map(|j| j + 1).unwrap_or(rest.len())].to_string()
}

fn a_build_on_an_selinux_guest_leaves_every_label_right_and_boots_enforcing() {
    let t = tempfile::tempdir_in(common::repo_root().join("target")).unwrap();

    // Control: without the relabel, the files the build wrote carry wrong labels.
    let off_dir = t.path().join("off");
    std::fs::create_dir(&off_dir).unwrap();
    let off_recipe = recipe_on_fixture(&off_dir, "false", false);
    let off_disk = off_dir.join("disk.qcow2");
    let out = diskforge(&cache())
        .arg("build")
        .arg(&off_recipe)
        .arg("--disk-only")
        .arg(&off_disk)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(&out, "the build with selinux-relabel: false");
    assert!(
        stderr.contains("selinux-relabel is false"),
        "no warning for selinux-relabel: false:\n{stderr}"
    );
    let wrong = labels_that_would_change(&off_disk);
    for expected in ["/etc/shadow", "/usr/local/bin/ttyd", "/srv/lab/notes.txt"] {
        assert!(
            wrong.iter().any(|l| l.contains(&format!("{expected} "))),
            "the dry run does not list {expected} as mislabelled without the relabel: {wrong:#?}"
        );
    }
    std::fs::remove_file(&off_disk).unwrap();

    // The build: `plan` lists the relabel; the build relabels the root filesystem.
    let dir = t.path().join("auto");
    std::fs::create_dir(&dir).unwrap();
    let recipe = recipe_on_fixture(&dir, "auto", true);
    let plan = ok(
        &diskforge(&cache())
            .arg("plan")
            .arg(&recipe)
            .output()
            .unwrap(),
        "plan",
    );
    assert!(
        plan.contains("relabel every writable filesystem with the guest's SELinux policy"),
        "{plan}"
    );
    // Incremental: the packages are installed in a launch of their own and kept; the
    // last launch relabels what both wrote.
    let disk = dir.join("disk.qcow2");
    let out = diskforge(&cache())
        .args(["--json-events", "build", "--incremental"])
        .arg(&recipe)
        .arg("--disk-only")
        .arg(&disk)
        .output()
        .unwrap();
    ok(&out, "the build on the SELinux guest");
    common::events::check(&out.stderr);
    let relabel: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "selinux_relabel")
        .collect();
    assert_eq!(relabel.len(), 1, "one relabel event expected: {relabel:?}");
    assert_eq!(relabel[0]["policy"], "default");
    assert_eq!(relabel[0]["mode"], "enforcing");
    assert_eq!(relabel[0]["filesystems"], "/");
    assert_eq!(relabel[0]["tool"], "guest setfiles");

    let wrong = labels_that_would_change(&disk);
    assert!(
        wrong.is_empty(),
        "labels setfiles would still change after the build: {wrong:#?}"
    );
    std::fs::remove_file(&disk).unwrap();

    // A rebuild that changes two files' content and the ttyd credential: the host
    // rewrites them on the kept customized disk, each keeping its label.
    let text = std::fs::read_to_string(&recipe).unwrap();
    let text = text
        .replace(
            "content: \"SELinux lab\\n\"",
            "content: \"SELinux lab, rebuilt\\n\"",
        )
        .replace("content: \"notes\\n\"", "content: \"notes, rebuilt\\n\"");
    assert!(
        text.contains("notes, rebuilt") && text.contains("lab, rebuilt"),
        "{text}"
    );
    std::fs::write(&recipe, text).unwrap();
    let disk = dir.join("rebuilt.qcow2");
    let out = diskforge(&cache())
        .args(["--json-events", "build", "--incremental"])
        .arg(&recipe)
        .arg("--disk-only")
        .arg(&disk)
        .env("SEL_LAB_PASSWORD", NEW_PASSWORD)
        .env("SEL_TTYD_PASSWORD", NEW_TTYD_PASSWORD)
        .output()
        .unwrap();
    ok(&out, "the rebuild on the SELinux guest");
    common::events::check(&out.stderr);
    assert!(
        common::events::named(&out.stderr, "appliance_launches").is_empty(),
        "the rebuild launched an appliance"
    );
    let patched = common::events::named(&out.stderr, "patched");
    let files = patched[0]["files"].as_array().unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "/etc/motd",
            "/srv/lab/notes.txt",
            "/etc/shadow",
            "/etc/shadow-",
            "/etc/systemd/system/diskforge-ttyd.service",
            "/etc/diskforge/ttyd.env"
        ]
    );
    for f in files {
        assert!(
            f["xattrs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == "security.selinux"),
            "no label carried over: {f}"
        );
    }
    let wrong = labels_that_would_change(&disk);
    assert!(
        wrong.is_empty(),
        "labels setfiles would change after the host rewrote files: {wrong:#?}"
    );

    // Boot the rebuilt disk: enforcing, the user logs in through ttyd with the new
    // credential, reads the rewritten file, and no AVC denial for any of it.
    let command = "echo mode=$(/usr/sbin/getenforce); echo ctx=$(id -Z); \
                   echo notes=$(cat /srv/lab/notes.txt); \
                   echo ttyd=$(ps -eo label,comm | awk '$2 == \"ttyd\" {print $1}'); \
                   echo auditd=$(systemctl is-active auditd); \
                   sudo -n grep 'avc: *denied' /var/log/audit/audit.log | sed 's/^/audit-avc: /'; \
                   sudo -n dmesg | grep 'avc: *denied' | sed 's/^/kernel-avc: /'; echo avc-end";
    // The guest has no cloud-init (Debian's minimal base installs it only when asked): a
    // NoCloud seed handed to it, as KubeVirt hands user-data to every VM, is reported as
    // not checked, and the boot check still passes.
    let user_data = disk.with_file_name("user-data.yaml");
    std::fs::write(
        &user_data,
        "#cloud-config\nruncmd:\n  - [touch, /var/tmp/never]\n",
    )
    .unwrap();
    let out = diskforge(&cache())
        .args(["run", "--check", "--timeout", "900", "--memory", "1024"])
        .arg(&disk)
        .arg("--user-data")
        .arg(&user_data)
        .args(["--ttyd-auth", &format!("lab:{NEW_TTYD_PASSWORD}")])
        .args(["--login", &format!("lab:{NEW_PASSWORD}")])
        .args(["--command", command])
        .output()
        .unwrap();
    let report = ok(&out, "diskforge run --check on the SELinux guest");
    let value = |key: &str| -> String {
        report
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the guest's output:\n{report}"))
            .trim()
            .to_string()
    };
    assert_eq!(value("mode"), "Enforcing", "{report}");
    assert_eq!(value("notes"), "notes, rebuilt", "{report}");
    assert!(
        report.contains("cloud-init: not checked: nothing on the serial console mentions cloud-init (the guest seems to have none); the seed was attached"),
        "{report}"
    );
    assert!(
        value("ctx").starts_with("unconfined_u:unconfined_r:unconfined_t:"),
        "the user's shell is not in the policy's user domain:\n{report}"
    );
    let ttyd = value("ttyd");
    assert!(
        !ttyd.is_empty() && !ttyd.contains("kernel_t") && !ttyd.contains("unlabeled_t"),
        "ttyd runs in {ttyd:?}:\n{report}"
    );
    assert_eq!(value("auditd"), "active", "{report}");
    assert!(report.contains("avc-end"), "{report}");
    let denials: Vec<&str> = report
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("audit-avc:") || l.starts_with("kernel-avc:"))
        .collect();
    // Debian's reference policy denies a few things to systemd-tmpfiles and udev early in
    // every boot (relabelfrom on /etc/mtab, setrlimit): gaps of that policy, not of the
    // image. Nothing may be denied to ttyd, login, the user's shell, password checks or
    // sudo, nor touch anything the build wrote.
    let ours = [
        "comm=\"ttyd\"",
        "comm=\"(ttyd)\"",
        "comm=\"login\"",
        "comm=\"bash\"",
        "comm=\"sh\"",
        "comm=\"unix_chkpwd\"",
        "comm=\"sudo\"",
        ":initrc_t:",
        ":local_login_t:",
        ":unconfined_t:",
        ":chkpwd_t:",
        ":sudo_t:",
        "name=\"ttyd",
        "name=\"shadow\"",
        "name=\"passwd\"",
        "name=\"group\"",
        "name=\"motd\"",
        "name=\"notes.txt\"",
        "name=\"lab\"",
        "name=\"diskforge",
    ];
    let ours: Vec<&&str> = denials
        .iter()
        .filter(|d| ours.iter().any(|o| d.contains(o)))
        .collect();
    assert!(
        ours.is_empty(),
        "AVC denials for ttyd, login, the shell or the build's files:\n{ours:#?}"
    );
    eprintln!(
        "{} AVC denials elsewhere (the reference policy's own gaps):\n{}",
        denials.len(),
        denials.join("\n")
    );
}

/// `plan --json` of `recipe` (no secret is read by a plan).
fn plan_json(recipe: &Path, cache: &Path) -> String {
    let out = common::diskforge()
        .arg("--cache-dir")
        .arg(cache)
        .args(["--offline", "plan", "--json"])
        .arg(recipe)
        .output()
        .unwrap();
    ok(&out, &format!("plan of {}", recipe.display()))
}

fn plan_shows_the_relabel_only_where_a_policy_may_be() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let write = |name: &str, customize: &str| {
        let p = t.path().join(name);
        std::fs::write(
            &p,
            format!("version: 1\nbase: {{catalog: debian-12-minimal}}\ncustomize:\n{customize}"),
        )
        .unwrap();
        p
    };
    // Debian without a policy: no relabel step, no check at all (the demo's base).
    let plain = plan_json(&write("plain.yaml", "  hostname: lab\n"), &cache);
    assert!(!plain.contains("SELinux"), "{plain}");
    let demo = plan_json(&common::repo_root().join("recipes/demo.yaml"), &cache);
    assert!(!demo.contains("SELinux"), "{demo}");
    // Installing a policy, or asking for the relabel, brings it into the plan.
    let installs = plan_json(
        &write("installs.yaml", "  packages: [selinux-policy-default]\n"),
        &cache,
    );
    assert!(
        installs.contains("with the guest's SELinux policy"),
        "{installs}"
    );
    assert!(installs.contains("when the guest has one"), "{installs}");
    let required = plan_json(
        &write(
            "required.yaml",
            "  hostname: lab\n  selinux-relabel: true\n",
        ),
        &cache,
    );
    assert!(
        required.contains("required: the build fails without one"),
        "{required}"
    );
    // The setting is part of the guest step's key.
    let key = |plan: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(plan).unwrap();
        let steps = v["steps"].as_array().unwrap();
        let guest = steps.iter().find(|s| s["step"] == "guest").unwrap();
        guest["key"].as_str().unwrap().to_string()
    };
    let off = plan_json(
        &write("off.yaml", "  hostname: lab\n  selinux-relabel: false\n"),
        &cache,
    );
    assert_ne!(key(&plain), key(&off));
    assert_ne!(key(&plain), key(&required));
}

fn a_bad_setting_is_a_located_error() {
    let t = tempfile::tempdir().unwrap();
    let stderr = common::refused_by_validate(
        &t.path().join("bad.yaml"),
        "version: 1\nbase: {catalog: fedora-43}\ncustomize:\n  hostname: lab\n  selinux-relabel: maybe\n",
        &[],
    );
    assert!(
        stderr.contains("bad.yaml:5:3: customize.selinux-relabel"),
        "not located at the key: {stderr}"
    );
    assert!(
        stderr.contains("expected `auto`, `true` or `false`"),
        "{stderr}"
    );
}

/// Builds a recipe on the test base whose commands write `/etc/selinux` as `setup`
/// says; returns the exit code and stderr.
fn build_with_selinux_setup(dir: &Path, setup: &[&str]) -> (Option<i32>, String) {
    common::guest::base_in(dir);
    let commands: String = setup.iter().map(|c| format!("    - {c}\n")).collect();
    let recipe = dir.join("r.yaml");
    std::fs::write(
        &recipe,
        format!(
            "version: 1\nbase: {{path: base.qcow2}}\ncustomize:\n  commands:\n{commands}ttyd:\n  enabled: false\n"
        ),
    )
    .unwrap();
    let out = diskforge(&dir.join("cache"))
        .arg("build")
        .arg(&recipe)
        .arg("--disk-only")
        .arg(dir.join("disk.qcow2"))
        .output()
        .unwrap();
    assert!(
        !dir.join("disk.qcow2").exists(),
        "a failed build left its disk behind"
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn a_policy_that_is_named_but_missing_or_cannot_be_applied_fails_the_build() {
    let t = tempfile::tempdir_in(common::repo_root().join("target")).unwrap();
    // The config names a policy whose files are not there.
    let missing = t.path().join("missing");
    std::fs::create_dir(&missing).unwrap();
    let (code, stderr) = build_with_selinux_setup(
        &missing,
        &[
            "mkdir -p /etc/selinux",
            "printf 'SELINUX=enforcing\\nSELINUXTYPE=targeted\\n' > /etc/selinux/config",
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("/etc/selinux/targeted/contexts/files/file_contexts is missing"),
        "{stderr}"
    );
    // The policy is there, but neither the guest nor the appliance can apply it.
    let no_tool = t.path().join("no-tool");
    std::fs::create_dir(&no_tool).unwrap();
    let (code, stderr) = build_with_selinux_setup(
        &no_tool,
        &[
            "mkdir -p /etc/selinux/lab/contexts/files",
            "echo '/.* system_u:object_r:etc_t:s0' > /etc/selinux/lab/contexts/files/file_contexts",
            "printf 'SELINUX=permissive\\nSELINUXTYPE=lab\\n' > /etc/selinux/config",
            "test -z \"$(command -v setfiles)\"",
        ],
    );
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("the guest has no `setfiles` (package policycoreutils)"),
        "{stderr}"
    );
}

crate::tests! {
    fn a_build_on_an_selinux_guest_leaves_every_label_right_and_boots_enforcing [TOOLS];
    fn plan_shows_the_relabel_only_where_a_policy_may_be;
    fn a_bad_setting_is_a_located_error;
    fn a_policy_that_is_named_but_missing_or_cannot_be_applied_fails_the_build [&["qemu-img", "guestfish", "mmdebstrap"]];
}
