//! What the help, the README and docs/ promise people who script diskforge: exit codes,
//! what stdout holds, option combinations refused before any work, help text, colour,
//! events. Fast: small disks made with qemu-img, a loopback registry, and QEMU booting a
//! blank disk where a boot check has to fail; nothing is built.

use crate::common;
use common::disk::qcow2;
use common::Run;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::registry::Registry;

/// [`common::diskforge_in`] `t`, without colour or credentials from the environment.
fn df(t: &Path) -> Command {
    let mut c = common::diskforge_in(t);
    c.env_remove("NO_COLOR")
        .env_remove("DISKFORGE_CREDS")
        .env_remove("REGISTRY_AUTH_FILE");
    c
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn text(out: &Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

/// The JSON events among stderr's lines (those starting with `{`).
fn events(out: &Output) -> Vec<serde_json::Value> {
    common::events::check(&out.stderr);
    stderr(out)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Whether `s` holds an ANSI colour or style sequence (SGR, `ESC [ … m`). Cursor
/// movements of a progress bar on a terminal are not colour.
fn coloured(s: &str) -> bool {
    s.match_indices("\x1b[").any(|(i, _)| {
        let rest = &s[i + 2..];
        let params = rest
            .find(|c: char| !(c.is_ascii_digit() || c == ';'))
            .unwrap_or(rest.len());
        rest[params..].starts_with('m')
    })
}

/// Whitespace runs collapsed to one space (help text wraps at the terminal width).
fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A recipe with one error of each kind a user makes by leaving out quotes or units,
/// and where each error is (line:column key).
const THREE_TYPE_ERRORS: &str = "name: t\nbase: {path: base.qcow2}\ndisk:\n  size: 10\ncustomize:\n  files:\n    - path: /etc/motd\n      content: hi\n      mode: 644\nttyd:\n  enabled: true\n  port: 70000\n";
const THREE_TYPE_ERRORS_AT: [&str; 3] = [
    ":4:3: disk.size: ",
    ":9:7: customize.files[0].mode: ",
    ":12:3: ttyd.port: ",
];

// ---------------------------------------------------------------------------------
// Exit codes

/// `run --check` promises exit code 4 for a failed boot check. A blank disk never boots:
/// the check times out waiting for ttyd, and the error keeps its type through the
/// serial-console context `run` adds. (A wrong `--login` password is the same error
/// type from the same check: vm::probe's a_refused_password_is_a_failed_boot_check
/// drives the login against a fake ttyd.)
fn a_failed_boot_check_exits_4() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path(), "blank.qcow2", "64M");
    let out = df(t.path())
        .args(["run", "--check", "--timeout", "5", "--accel", "tcg"])
        .args(["--login", "lab:not-the-password"])
        .arg(&disk)
        .exits(4);
    assert!(stderr(&out).contains("boot check failed"), "{}", text(&out));
    assert!(
        stderr(&out).contains("serial console (last 40 lines)"),
        "{}",
        text(&out)
    );
    assert!(
        !text(&out).contains("not-the-password"),
        "the password was shown"
    );
}

/// docs/cli.md's exit-code table lists exactly the codes `diskforge --help` names, and
/// each code is what diskforge returns in its situation.
fn exit_code_table_matches_help_and_behaviour() {
    let doc = std::fs::read_to_string(common::repo_root().join("docs/cli.md")).unwrap();
    let section = doc
        .split("## Exit codes")
        .nth(1)
        .expect("docs/cli.md has an Exit codes section")
        .split("\n## ")
        .next()
        .unwrap();
    let table: BTreeSet<u8> = section
        .lines()
        .filter_map(|l| l.strip_prefix('|'))
        .filter_map(|l| l.split('|').next())
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let want: BTreeSet<u8> = [0, 1, 2, 3, 4, 5, 141].into();
    assert_eq!(table, want, "docs/cli.md's exit codes");
    let signals = section
        .lines()
        .find(|l| l.starts_with("| 128+N"))
        .expect("docs/cli.md has a 128+N row for signals");
    for code in ["130", "143", "129"] {
        assert!(
            signals.contains(code),
            "the 128+N row names {code}: {signals}"
        );
    }
    let help = common::diskforge().arg("--help").output().unwrap();
    let help = squeeze(&stdout(&help));
    let codes = help
        .split("Exit codes:")
        .nth(1)
        .expect("--help names the exit codes");
    let mut named: Vec<String> = table.iter().map(|c| c.to_string()).collect();
    named.extend(["128+N", "130", "143", "129"].map(String::from));
    for code in &named {
        assert!(
            codes.contains(&format!("{code} ")),
            "--help does not name exit code {code}: {codes}"
        );
    }
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    assert!(readme.contains("docs/cli.md"), "README links the table");
    // 141: stdout is a pipe whose reader is gone (catalog.rs has `base list | head`).
    let closed = common::with_closed_stdout(common::diskforge().arg("schema"));
    assert_eq!(closed.status.code(), Some(141), "{}", stderr(&closed));

    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    qcow2(d, "base.qcow2", "64M");
    let recipe = d.join("r.yaml");
    std::fs::write(&recipe, "name: r\nbase: {path: base.qcow2}\n").unwrap();
    let bad = d.join("bad.yaml");
    std::fs::write(&bad, THREE_TYPE_ERRORS).unwrap();
    let layout = d.join("l");
    df(d)
        .arg("pack")
        .arg(d.join("base.qcow2"))
        .arg("-o")
        .arg(format!("oci:{}:v1", layout.display()))
        .succeeds();
    let code = |c: &mut Command| c.output().unwrap().status.code();

    assert_eq!(code(df(d).arg("validate").arg(&recipe)), Some(0));
    assert_eq!(
        code(
            df(d)
                .arg("inspect")
                .arg(format!("oci:{}", d.join("nothing").display()))
        ),
        Some(1)
    );
    assert_eq!(code(df(d).arg("validate").arg(&bad)), Some(2));
    assert_eq!(code(df(d).args(["pack", "--no-such-option"])), Some(2));
    assert_eq!(
        code(
            df(d)
                .env("PATH", d.join("empty"))
                .arg("pack")
                .arg(d.join("base.qcow2"))
        ),
        Some(3)
    );
    assert_eq!(
        code(
            df(d)
                .args(["verify", "--size", "1G"])
                .arg(format!("oci:{}:v1", layout.display()))
        ),
        Some(4)
    );
    assert_eq!(
        code(
            df(d)
                .arg("outdated")
                .arg(&recipe)
                .arg("-o")
                .arg(format!("oci:{}:v1", d.join("never-built").display()))
        ),
        Some(5)
    );
    // A signal: the boot check of a disk that never boots waits; it is stopped.
    let blank = qcow2(d, "blank.qcow2", "64M");
    for (signal, want) in [("INT", 130), ("TERM", 143), ("HUP", 129)] {
        let work = d.join(format!("work-{signal}"));
        std::fs::create_dir_all(&work).unwrap();
        let child = df(d)
            .arg("--work-dir")
            .arg(&work)
            .args(["run", "--check", "--timeout", "600", "--accel", "tcg"])
            .arg(&blank)
            .spawned();
        let w = work.clone();
        let out = common::interrupt_when(
            child,
            signal,
            move || std::fs::read_dir(&w).unwrap().next().is_some(),
            Duration::from_secs(120),
            Duration::from_secs(60),
        );
        assert_eq!(out.status.code(), Some(want), "SIG{signal}: {}", text(&out));
        assert_eq!(
            std::fs::read_dir(&work).unwrap().count(),
            0,
            "SIG{signal} left the VM's overlay behind"
        );
    }
}

// ---------------------------------------------------------------------------------
// stdout and result files

/// With `--print-vm-manifest` stdout is one YAML document and nothing else, for `pack`
/// and `build` (their shared result printer). `push` is covered by
/// registry_push.rs (push_skips_present_blobs_and_mounts_across_repositories).
fn print_vm_manifest_makes_stdout_one_yaml_document() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path(), "lab.qcow2", "64M");
    let reg = Registry::start(None);
    let digest_file = t.path().join("digest");
    let out = df(t.path())
        .arg("pack")
        .arg(&disk)
        .arg("-o")
        .arg(format!("docker://{}/lab/vm:1", reg.addr))
        .args(["--tls-verify=false", "--print-vm-manifest", "--digestfile"])
        .arg(&digest_file)
        .succeeds();
    let yaml = stdout(&out);
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{e}: {yaml}")))
        .collect();
    assert_eq!(docs.len(), 1, "{yaml}");
    assert_eq!(docs[0]["kind"], "VirtualMachine", "{yaml}");
    let digest = std::fs::read_to_string(&digest_file).unwrap();
    let digest = digest.trim();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    assert_eq!(
        docs[0]["spec"]["template"]["spec"]["volumes"][0]["containerDisk"]["image"],
        format!("{}/lab/vm@{digest}", reg.addr).as_str()
    );
    // The human summary is still there, on stderr.
    assert!(
        stderr(&out).contains(&format!("image {digest}")),
        "{}",
        text(&out)
    );
}

/// `--digest-file` (and podman's spelling `--digestfile`) writes the manifest digest for
/// layouts and archives too.
fn digest_file_holds_the_manifest_digest_for_local_destinations() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path(), "lab.qcow2", "64M");
    let layout = t.path().join("layout");
    for (flag, dest, file) in [
        ("--digest-file", format!("oci:{}:v1", layout.display()), "a"),
        (
            "--digestfile",
            format!("oci-archive:{}:v1", t.path().join("image.tar").display()),
            "b",
        ),
    ] {
        let out = df(t.path())
            .arg("pack")
            .arg(&disk)
            .args(["-o", &dest, flag])
            .arg(t.path().join(file))
            .output()
            .unwrap();
        assert!(out.status.success(), "{flag}: {}", text(&out));
    }
    let want = common::tagged_digest(&layout, "v1");
    for file in ["a", "b"] {
        assert_eq!(
            std::fs::read_to_string(t.path().join(file)).unwrap(),
            format!("{want}\n"),
            "{file}"
        );
    }
}

/// Options that cannot work together exit 2 at once: no cache, no work directory, no
/// output, no digest file.
fn option_combinations_that_cannot_work_are_refused_before_any_work() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // A buildable recipe (its base exists): a late check would start building it.
    qcow2(d, "base.qcow2", "64M");
    std::fs::write(d.join("r.yaml"), "name: r\nbase: {path: base.qcow2}\n").unwrap();
    std::fs::write(d.join("r2.yaml"), "name: r2\nbase: {path: base.qcow2}\n").unwrap();
    let s = |p: &str| d.join(p).display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "pack".into(),
                s("base.qcow2"),
                "--print-vm-manifest".into(),
                "-o".into(),
                format!("oci:{}", s("out")),
            ],
            "--print-vm-manifest needs a docker:// destination",
        ),
        (
            // The recipe's own destination is a layout (no output.repository).
            vec!["build".into(), s("r.yaml"), "--print-vm-manifest".into()],
            "--print-vm-manifest needs a docker:// destination",
        ),
        (
            vec![
                "build".into(),
                s("r.yaml"),
                "--disk-only".into(),
                s("disk.qcow2"),
                "--digest-file".into(),
                s("digest"),
            ],
            "--disk-only",
        ),
        (
            vec![
                "build".into(),
                s("r.yaml"),
                "--disk-only".into(),
                s("disk.qcow2"),
                "-o".into(),
                format!("oci:{}", s("out")),
            ],
            "--disk-only",
        ),
        (
            vec![
                "build".into(),
                s("r.yaml"),
                s("r2.yaml"),
                "--digestfile".into(),
                s("digest"),
            ],
            "take one recipe",
        ),
        (
            vec![
                "push".into(),
                format!("oci:{}", s("layout")),
                format!("oci:{}", s("out")),
            ],
            "push writes to docker://",
        ),
    ];
    for (args, why) in cases {
        let started = Instant::now();
        let out = df(d).args(&args).output().unwrap();
        let took = started.elapsed();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(stderr(&out).contains(why), "{args:?}: {}", text(&out));
        assert!(took < Duration::from_secs(20), "{args:?} took {took:?}");
        for p in ["cache", "work", "out", "digest", "disk.qcow2", "layout"] {
            assert!(!d.join(p).exists(), "{args:?} created {p}");
        }
    }
}

/// `push` takes no compression and no `-o`: its help does not offer them and using
/// them is a usage error, not a silent gzip push.
fn push_offers_only_options_it_uses() {
    let help = common::diskforge()
        .args(["push", "--help"])
        .output()
        .unwrap();
    let help = stdout(&help);
    for absent in ["--compression", "--output", "-o,"] {
        assert!(
            !help.contains(absent),
            "push --help offers {absent}:\n{help}"
        );
    }
    for extra in [["--compression", "zstd"], ["-o", "oci:x"]] {
        let out = common::diskforge()
            .arg("push")
            .args(extra)
            .args(["oci:l:v1", "docker://127.0.0.1:1/x/y:1"])
            .exits(2);
        assert!(
            stderr(&out).contains(&format!("unexpected argument '{}'", extra[0])),
            "{}",
            text(&out)
        );
    }
}

/// `pack DISK` without `-o` writes where its help says: oci:out/NAME:latest.
fn pack_without_output_writes_the_documented_default() {
    let help = common::diskforge()
        .args(["pack", "--help"])
        .output()
        .unwrap();
    assert!(
        squeeze(&stdout(&help))
            .contains("[default: oci:out/NAME:latest, NAME from the disk's file name]"),
        "{}",
        stdout(&help)
    );
    let t = tempfile::tempdir().unwrap();
    qcow2(t.path(), "lab.qcow2", "64M");
    let out = df(t.path())
        .current_dir(t.path())
        .args(["pack", "lab.qcow2"])
        .succeeds();
    assert!(
        stdout(&out).contains("oci:out/lab:latest"),
        "{}",
        text(&out)
    );
    let digest = common::tagged_digest(&t.path().join("out/lab"), "latest");
    assert!(
        stdout(&out).contains(&format!("image {digest}")),
        "{}",
        text(&out)
    );
}

/// A text file is no disk: `pack` refuses it (hostile.rs,
/// pack_refuses_links_text_files_and_odd_sizes, has links and odd sizes), and `verify`
/// fails an image that carries one instead of calling the contract satisfied.
fn pack_refuses_and_verify_fails_a_disk_that_is_a_text_file() {
    use common::hostile::{layout_with_layer, tar};
    let t = tempfile::tempdir().unwrap();
    let text_file = t.path().join("notes.img");
    std::fs::write(&text_file, "hello\n").unwrap();
    let out = df(t.path())
        .arg("pack")
        .arg(&text_file)
        .arg("-o")
        .arg(format!("oci:{}", t.path().join("packed").display()))
        .exits(1);
    assert!(
        stderr(&out).contains("raw image of 6 bytes: too small to be a VM disk"),
        "{}",
        text(&out)
    );
    assert!(
        !t.path().join("packed").exists(),
        "a refused disk was packed"
    );

    let layout = t.path().join("img");
    layout_with_layer(
        &layout,
        &tar(&[
            ("disk/", b'5', b"", 107, 0o555),
            ("disk/disk.img", b'0', b"hello\n", 107, 0o440),
        ]),
        None,
    );
    let out = df(t.path())
        .arg("verify")
        .arg(format!("oci:{}:t", layout.display()))
        .exits(4);
    assert!(
        !stdout(&out).contains("contract satisfied"),
        "{}",
        text(&out)
    );
}

// ---------------------------------------------------------------------------------
// Messages

/// Warnings and errors written to a pipe or a file are plain text, with and without
/// NO_COLOR; on a terminal they are coloured unless NO_COLOR is set (the control that
/// shows the check can see colour at all).
fn no_colour_codes_outside_a_terminal() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path(), "lab.qcow2", "64M");
    let zstd_pack = |c: &mut Command| {
        c.arg("pack")
            .arg(&disk)
            .args(["--compression", "zstd", "-o"])
            .arg(format!("oci:{}", t.path().join("l").display()));
    };
    for no_color in [None, Some("1")] {
        let with = |mut c: Command| {
            if let Some(v) = no_color {
                c.env("NO_COLOR", v);
            }
            c
        };
        let mut warn = with(df(t.path()));
        zstd_pack(&mut warn);
        let warn = warn.output().unwrap();
        assert!(warn.status.success(), "{}", text(&warn));
        assert!(
            stderr(&warn).contains("WARN"),
            "no warning: {}",
            text(&warn)
        );
        let mut fail = with(df(t.path()));
        fail.args(["inspect", "oci:/nonexistent/layout"]);
        let fail = fail.output().unwrap();
        assert_eq!(fail.status.code(), Some(1));
        let mut usage = with(df(t.path()));
        usage.args(["pack", "--no-such-option"]);
        let usage = usage.output().unwrap();
        assert_eq!(usage.status.code(), Some(2));
        for (what, out) in [("warning", &warn), ("error", &fail), ("usage", &usage)] {
            assert!(
                !text(out).contains('\x1b'),
                "{what} with NO_COLOR={no_color:?}: {:?}",
                text(out)
            );
        }
    }
    // On a terminal (script(1) gives the command a pty).
    let line = format!(
        "{} pack {} --compression zstd -o oci:{}",
        env!("CARGO_BIN_EXE_diskforge"),
        disk.display(),
        t.path().join("tty").display()
    );
    let tty = |no_color: Option<&str>| {
        let mut c = Command::new("script");
        c.args(["-qec", &line, "/dev/null"])
            .env("DISKFORGE_CACHE_DIR", t.path().join("cache"))
            .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let on_tty = tty(None);
    assert!(on_tty.contains("WARN") && coloured(&on_tty), "{on_tty:?}");
    let plain = tty(Some("1"));
    assert!(plain.contains("WARN") && !coloured(&plain), "{plain:?}");
}

/// HTTPS to a registry that speaks plain HTTP: the error names the cause and the option.
fn https_to_a_plain_http_registry_hints_tls_verify_false() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let out = df(t.path())
        .args(["inspect", &format!("docker://{}/lab/x:1", reg.addr)])
        .exits(1);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{} answered in plain HTTP, not HTTPS", reg.addr)),
        "{err}"
    );
    assert!(err.contains("--tls-verify=false"), "{err}");
}

/// `size: 10`, `mode: 644` and `port: 70000` in one file: all three reported at once, each
/// at its key's line and column, in the recipe's words — by validate, plan and build
/// alike. (Each alone, and in a parent file, is in tests/recipes/malformed/.)
fn type_errors_are_located_in_the_recipes_words_all_at_once() {
    let t = tempfile::tempdir().unwrap();
    let recipe = t.path().join("lab.yaml");
    std::fs::write(&recipe, THREE_TYPE_ERRORS).unwrap();
    // The base exists: every error is about a value (a missing file would be one more).
    std::fs::write(t.path().join("base.qcow2"), b"").unwrap();
    let mut seen = Vec::new();
    for cmd in ["validate", "plan", "build"] {
        let out = df(t.path()).arg(cmd).arg(&recipe).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", text(&out));
        let err = stderr(&out);
        let located: Vec<&str> = err.lines().filter(|l| l.contains("lab.yaml:")).collect();
        assert_eq!(located.len(), 3, "{cmd}: {err}");
        for (line, at) in located.iter().zip(THREE_TYPE_ERRORS_AT) {
            assert!(line.contains(at), "{cmd}: want {at} in {line}");
        }
        for rust in [
            "u16",
            "u32",
            "u64",
            "invalid type",
            "integer",
            "(document)",
            "struct",
        ] {
            assert!(!err.contains(rust), "{cmd} speaks Rust ({rust}): {err}");
        }
        assert!(err.contains("a size with a unit such as `10G`"), "{err}");
        assert!(
            err.contains("a quoted octal mode such as \"0644\""),
            "{err}"
        );
        assert!(err.contains("70000 is out of range"), "{err}");
        seen.push(located.iter().map(|l| l.to_string()).collect::<Vec<_>>());
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "validate, plan and build disagree: {seen:#?}"
    );
    assert!(
        !t.path().join("work").exists(),
        "a recipe error started work"
    );
    // Several errors in one section, and in several items of one list: every one.
    std::fs::write(
        &recipe,
        "name: t\nbase: {path: base.qcow2}\ndisk:\n  size: 10\n  grow:\n    enabled: maybe\ncustomize:\n  files:\n    - path: /etc/motd\n      content: hi\n      mode: 644\n    - path: /etc/issue\n      content: hi\n      mode: 755\nttyd:\n  enabled: true\n  port: 70000\n  bogus: 1\n",
    )
    .unwrap();
    let out = df(t.path()).arg("validate").arg(&recipe).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    let located: Vec<&str> = err.lines().filter(|l| l.contains("lab.yaml:")).collect();
    let want = [
        ":4:3: disk.size: ",
        ":6:5: disk.grow.enabled: ",
        ":11:7: customize.files[0].mode: ",
        ":14:7: customize.files[1].mode: ",
        ":17:3: ttyd.port: ",
        ":18:3: ttyd.bogus: unknown key",
    ];
    assert_eq!(located.len(), want.len(), "{err}");
    for at in want {
        assert_eq!(
            located.iter().filter(|l| l.contains(at)).count(),
            1,
            "want {at} once in\n{err}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Registry options

/// Credentials come from the first source the README's "Registry credentials" section
/// names, in its order: `--creds`/`DISKFORGE_CREDS`, then `--authfile`/
/// `REGISTRY_AUTH_FILE` alone, then the first auth file with an entry for the registry.
/// Each file is shown to win over every later one, and to lose to every earlier one.
fn registry_credentials_are_found_in_the_readme_order() {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    let section = readme
        .split("## Registry credentials")
        .nth(1)
        .expect("README has a Registry credentials section")
        .split("\n## ")
        .next()
        .unwrap();
    let order = [
        "--creds",
        "DISKFORGE_CREDS",
        "--authfile",
        "REGISTRY_AUTH_FILE",
        "$XDG_RUNTIME_DIR/containers/auth.json",
        "$XDG_CONFIG_HOME/containers/auth.json",
        "$DOCKER_CONFIG/config.json",
        "~/.docker/config.json",
    ];
    let at: Vec<usize> = order
        .iter()
        .map(|o| {
            section
                .find(o)
                .unwrap_or_else(|| panic!("README does not name {o}"))
        })
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "README's order: {order:?}"
    );

    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let password = "Right-Pa55-word";
    let reg = Registry::start(Some(("ci", password)));
    let image = format!("docker://{}/lab/auth:1", reg.addr);
    let disk = qcow2(d, "lab.qcow2", "64M");
    df(d)
        .arg("pack")
        .arg(&disk)
        .args(["-o", &image, "--tls-verify=false", "--creds"])
        .arg(format!("ci:{password}"))
        .succeeds();

    let (home, runtime, config, docker) = (
        d.join("home"),
        d.join("run"),
        d.join("config"),
        d.join("docker"),
    );
    // The README's files, in its order.
    let files = [
        runtime.join("containers/auth.json"),
        config.join("containers/auth.json"),
        docker.join("config.json"),
        home.join(".docker/config.json"),
    ];
    let write = |path: &Path, pw: &str| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let auth = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("ci:{pw}"),
        );
        std::fs::write(
            path,
            format!("{{\"auths\":{{\"{}\":{{\"auth\":\"{auth}\"}}}}}}", reg.addr),
        )
        .unwrap();
    };
    let clear = || {
        for f in &files {
            let _ = std::fs::remove_file(f);
        }
    };
    let inspect = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = df(d);
        c.args(["inspect", &image, "--tls-verify=false"])
            .args(args)
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("XDG_CONFIG_HOME", &config)
            .env("DOCKER_CONFIG", &docker);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(!text(&out).contains(password), "the password was shown");
        out.status.code()
    };
    for (i, file) in files.iter().enumerate() {
        clear();
        write(file, password);
        for later in &files[i + 1..] {
            write(later, "wrong");
        }
        assert_eq!(inspect(&[], &[]), Some(0), "{} wins", file.display());
        if let Some(next) = files.get(i + 1) {
            write(file, "wrong");
            write(next, password);
            assert_eq!(
                inspect(&[], &[]),
                Some(1),
                "{} comes before {}",
                file.display(),
                next.display()
            );
        }
    }

    // --authfile and REGISTRY_AUTH_FILE: that file alone, and it must exist.
    let only = d.join("only.json");
    for f in &files {
        write(f, password);
    }
    write(&only, "wrong");
    let only_s = only.to_str().unwrap();
    assert_eq!(inspect(&["--authfile", only_s], &[]), Some(1));
    assert_eq!(inspect(&[], &[("REGISTRY_AUTH_FILE", only_s)]), Some(1));
    write(&only, password);
    for f in &files {
        write(f, "wrong");
    }
    assert_eq!(inspect(&["--authfile", only_s], &[]), Some(0));
    assert_eq!(inspect(&[], &[("REGISTRY_AUTH_FILE", only_s)]), Some(0));
    let missing = d.join("missing.json");
    assert_eq!(
        inspect(&["--authfile", missing.to_str().unwrap()], &[]),
        Some(1)
    );

    // --creds and DISKFORGE_CREDS come before every file.
    let right = format!("ci:{password}");
    assert_eq!(
        inspect(&["--creds", &right, "--authfile", only_s], &[]),
        Some(0)
    );
    write(&only, "wrong");
    assert_eq!(
        inspect(&["--creds", &right, "--authfile", only_s], &[]),
        Some(0)
    );
    assert_eq!(
        inspect(&["--authfile", only_s], &[("DISKFORGE_CREDS", &right)]),
        Some(0)
    );
}

/// `--cert-dir DIR` trusts the CA certificates in DIR, as podman's option does: an HTTPS
/// registry with a private CA is refused without it and reached with it.
fn cert_dir_trusts_a_private_registry_ca() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (reg, ca) = Registry::start_tls();
    let certs = d.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), ca).unwrap();
    let disk = qcow2(d, "lab.qcow2", "64M");
    let image = format!("docker://{}/lab/tls:1", reg.addr);
    let pack = |extra: &[&str]| {
        df(d)
            .arg("pack")
            .arg(&disk)
            .args(["-o", &image])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = pack(&[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let out = pack(&["--cert-dir", certs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = df(d)
        .args(["inspect", &image, "--json", "--cert-dir"])
        .arg(&certs)
        .succeeds();
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
}

// ---------------------------------------------------------------------------------
// Events

/// Every event carries `"v":1`; recipe errors are events (one per error, located), and
/// so is the command's failure with its exit code.
fn json_events_are_versioned_and_include_recipe_errors() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path(), "lab.qcow2", "64M");
    let out = df(t.path())
        .args(["--json-events", "pack"])
        .arg(&disk)
        .arg("-o")
        .arg(format!("oci:{}", t.path().join("l").display()))
        .succeeds();
    // A successful pack writes only events to stderr.
    assert!(
        stderr(&out).lines().all(|l| l.starts_with('{')),
        "{}",
        stderr(&out)
    );
    let evs = events(&out);
    for e in &evs {
        assert_eq!(e["v"], 1, "{e}");
        assert!(e["event"].is_string() && e["time"].is_string(), "{e}");
    }
    let names: BTreeSet<&str> = evs.iter().filter_map(|e| e["event"].as_str()).collect();
    for n in ["exec", "stage-start", "packed", "stage-done"] {
        assert!(names.contains(n), "no {n} event: {names:?}");
    }
    // A warning is an event too (and, with events on, not also a log line).
    let out = df(t.path())
        .args(["--json-events", "pack", "--compression", "zstd"])
        .arg(&disk)
        .arg("-o")
        .arg(format!("oci:{}", t.path().join("z").display()))
        .succeeds();
    assert!(
        stderr(&out).lines().all(|l| l.starts_with('{')),
        "{}",
        stderr(&out)
    );
    let warnings: Vec<String> = events(&out)
        .iter()
        .filter(|e| e["event"] == "warning")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        warnings.len() == 1 && warnings[0].contains("zstd") && warnings[0].contains("CDI"),
        "{warnings:?}"
    );

    let bad = t.path().join("lab.yaml");
    std::fs::write(&bad, THREE_TYPE_ERRORS).unwrap();
    std::fs::write(t.path().join("base.qcow2"), b"").unwrap();
    let bad2 = t.path().join("other.yaml");
    std::fs::write(&bad2, "base: {path: base.qcow2}\ndisk: {size: 10}\n").unwrap();
    let runs: [(&[&str], &[&Path]); 3] = [
        (&["validate"], &[&bad]),
        (&["build"], &[&bad]),
        // Several recipes: each recipe's errors, from the build's worker threads.
        (&["build"], &[&bad, &bad2]),
    ];
    for (cmd, files) in runs {
        let out = df(t.path())
            .arg("--json-events")
            .args(cmd)
            .args(files)
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0), "{}", text(&out));
        let evs = events(&out);
        assert!(evs.iter().all(|e| e["v"] == 1), "{}", stderr(&out));
        let located: Vec<String> = evs
            .iter()
            .filter(|e| e["event"] == "recipe-error")
            .map(|e| {
                assert!(e["message"].is_string(), "{e}");
                format!(
                    "{}:{}:{}: {}: ",
                    e["file"].as_str().unwrap(),
                    e["line"],
                    e["column"],
                    e["key"].as_str().unwrap()
                )
            })
            .collect();
        let mut want: Vec<String> = THREE_TYPE_ERRORS_AT
            .iter()
            .map(|at| format!("{}{at}", bad.display()))
            .collect();
        if files.len() == 2 {
            want.push(format!("{}:2:8: disk.size: ", bad2.display()));
        }
        let mut got = located.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{cmd:?}: {}", stderr(&out));
        if files.len() == 1 {
            let err = evs
                .iter()
                .find(|e| e["event"] == "error")
                .unwrap_or_else(|| panic!("no error event: {}", stderr(&out)));
            assert_eq!(err["exit_code"], 2, "{err}");
        }
    }
}

/// Every event name the code emits is documented in docs/events.md, and the document
/// lists no event the code does not emit.
fn events_doc_names_exactly_the_events_the_code_emits() {
    fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                rs_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    rs_files(&common::repo_root().join("src"), &mut files);
    // `event(` followed by a string literal: the emission sites (`progress::event`).
    let mut emitted: BTreeMap<String, String> = BTreeMap::new();
    for f in &files {
        let src = std::fs::read_to_string(f).unwrap();
        for (i, _) in src.match_indices("event(") {
            let rest = src[i + "event(".len()..].trim_start();
            if let Some(lit) = rest.strip_prefix('"') {
                let name = lit.split('"').next().unwrap();
                emitted.insert(name.to_string(), f.display().to_string());
            }
        }
    }
    for must in ["stage-start", "blob", "recipe-error", "error"] {
        assert!(
            emitted.contains_key(must),
            "the scan missed {must}: {emitted:?}"
        );
    }
    let doc = std::fs::read_to_string(common::repo_root().join("docs/events.md")).unwrap();
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("### `"))
        .filter_map(|l| l.strip_suffix('`'))
        .map(String::from)
        .collect();
    let undocumented: Vec<_> = emitted
        .iter()
        .filter(|(n, _)| !documented.contains(*n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "events missing from docs/events.md: {undocumented:?}"
    );
    let phantom: Vec<_> = documented
        .iter()
        .filter(|n| !emitted.contains_key(*n))
        .collect();
    assert!(
        phantom.is_empty(),
        "docs/events.md lists events the code never emits: {phantom:?}"
    );
    assert!(
        doc.contains("\"v\": 1"),
        "docs/events.md states the version"
    );
}

// ---------------------------------------------------------------------------------
// Help text

/// Every subcommand path (`build`, `cache prune`, …).
fn subcommand_paths(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
    for sub in cmd.get_subcommands() {
        let mut path = prefix.to_vec();
        path.push(sub.get_name().to_string());
        out.push(path.clone());
        subcommand_paths(sub, &path, out);
    }
}

/// Help sections (`Options`, `Registry options`, …) and the long options listed in each.
fn help_sections(help: &str) -> BTreeMap<String, Vec<String>> {
    let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') && !line.contains("Usage") {
            current = line.trim_end_matches(':').to_string();
            sections.entry(current.clone()).or_default();
            continue;
        }
        let t = line.trim_start();
        if line.len() - t.len() > 6 {
            continue; // a description line
        }
        // `-v, --verbose`: the long name after the short one.
        let t = match t.strip_prefix('-') {
            Some(short) if !short.starts_with('-') => {
                t.split_once(", ").map(|(_, l)| l).unwrap_or(t)
            }
            _ => t,
        };
        if let Some(long) = t.strip_prefix("--") {
            let name: String = long
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            sections.entry(current.clone()).or_default().push(name);
        }
    }
    sections
}

/// Every argument of every subcommand has a description; no `[env: …]` is shown twice;
/// the global options are listed once, in `diskforge --help`, and each subcommand's help
/// points there instead of repeating them; a cache or machine option is offered by exactly
/// the subcommands that use it; registry options sit under their own heading.
fn help_describes_every_argument_under_the_right_heading() {
    let root = diskforge::cli::command();
    let mut paths = Vec::new();
    subcommand_paths(&root, &[], &mut paths);
    assert!(paths.len() >= 15, "{paths:?}");

    let mut empty = Vec::new();
    let describe = |cmd: &clap::Command, path: &[String], empty: &mut Vec<String>| {
        for a in cmd.get_arguments() {
            let has = |s: Option<&clap::builder::StyledStr>| {
                s.is_some_and(|s| !s.to_string().trim().is_empty())
            };
            if !has(a.get_help()) && !has(a.get_long_help()) {
                empty.push(format!("{} {}", path.join(" "), a.get_id()));
            }
        }
    };
    describe(&root, &["diskforge".to_string()], &mut empty);
    for path in &paths {
        let mut cmd = &root;
        for p in path {
            cmd = cmd.find_subcommand(p).unwrap();
        }
        describe(cmd, path, &mut empty);
    }
    assert!(
        empty.is_empty(),
        "arguments without a description: {empty:?}"
    );

    let globals: BTreeSet<String> = root
        .get_arguments()
        .filter(|a| a.is_global_set())
        .filter_map(|a| a.get_long().map(String::from))
        .collect();
    assert_eq!(
        globals,
        ["verbose", "quiet", "json-events"].map(String::from).into(),
        "the options every subcommand takes"
    );
    let machine: BTreeMap<String, &[&str]> = diskforge::cli::COMMAND_OPTIONS
        .iter()
        .map(|(id, cmds)| (id.replace('_', "-"), *cmds))
        .collect();
    assert!(machine.contains_key("accel") && machine.contains_key("cache-dir"));
    let registry: BTreeSet<&str> = [
        "tls-verify",
        "creds",
        "authfile",
        "cert-dir",
        "registry-timeout",
        "registries-conf",
    ]
    .into();

    let mut problems = Vec::new();
    let top = common::diskforge()
        .arg("--help")
        .env_remove("DISKFORGE_CREDS")
        .output()
        .unwrap();
    let top_sections = help_sections(&stdout(&top));
    for g in &globals {
        if !top_sections
            .get("Global options")
            .is_some_and(|o| o.contains(g))
        {
            problems.push(format!(
                "diskforge --help: --{g} is not under Global options"
            ));
        }
    }
    for m in machine.keys() {
        if !top_sections.values().flatten().any(|o| o == m) {
            problems.push(format!("diskforge --help does not list --{m}"));
        }
    }
    for path in &paths {
        let out = common::diskforge()
            .arg("help")
            .args(path)
            .env_remove("DISKFORGE_CREDS")
            .output()
            .unwrap();
        assert!(out.status.success(), "help {path:?}");
        let help = stdout(&out);
        let name = path.join(" ");
        let mut envs: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, _) in help.match_indices("[env: ") {
            let var = help[i + 6..].split([']', '=']).next().unwrap();
            *envs.entry(var).or_default() += 1;
        }
        for (var, n) in envs {
            if n > 1 {
                problems.push(format!("{name}: [env: {var}] shown {n} times"));
            }
        }
        if !squeeze(&help).contains("Global options (-v, -q, --json-events) go before or after the subcommand: see `diskforge --help`") {
            problems.push(format!("{name}: its help does not point to the global options"));
        }
        let sections = help_sections(&help);
        let listed: BTreeSet<&String> = sections.values().flatten().collect();
        for (m, cmds) in &machine {
            let offered = listed.contains(m);
            if offered != cmds.contains(&path[0].as_str()) {
                problems.push(format!("{name}: --{m} offered: {offered}"));
            }
        }
        for (section, opts) in &sections {
            for o in opts {
                let ok = match section.as_str() {
                    "Registry options" => registry.contains(o.as_str()),
                    _ => !globals.contains(o) && !registry.contains(o.as_str()),
                };
                if !ok {
                    problems.push(format!("{name}: --{o} is under {section}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A global option works on either side of the subcommand; a cache or machine option
/// works before any subcommand and after one that uses it, and after one that does not
/// it is wrong usage (exit 2) rather than silently ignored.
fn options_are_taken_where_they_are_offered() {
    let t = tempfile::tempdir().unwrap();
    let recipe = common::repo_root().join("recipes/demo.yaml");
    for args in [
        vec!["-q", "validate"],
        vec!["validate", "-q"],
        vec!["validate", "--json-events"],
        vec!["--accel", "tcg", "validate"],
        vec!["validate", "--offline"],
    ] {
        let out = common::diskforge()
            .args(&args)
            .arg(&recipe)
            .env("DISKFORGE_CACHE_DIR", t.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    // docs/cli.md's table says the same as the command line.
    let doc = std::fs::read_to_string(common::repo_root().join("docs/cli.md")).unwrap();
    for (id, cmds) in diskforge::cli::COMMAND_OPTIONS {
        let long = format!("| `--{}", id.replace('_', "-"));
        let row = doc
            .lines()
            .find(|l| l.starts_with(&long))
            .unwrap_or_else(|| panic!("docs/cli.md has no row for {long}"));
        assert!(row.ends_with(&format!("| {} |", cmds.join(", "))), "{row}");
    }
    let out = common::diskforge()
        .args(["validate", "--accel", "tcg"])
        .arg(&recipe)
        .exits(2);
    assert!(
        stderr(&out).contains("unexpected argument '--accel'"),
        "{}",
        text(&out)
    );

    // The value after the subcommand is the one used: `plan` opens (creates) the cache
    // it is given there, never the one before the subcommand.
    let before = t.path().join("before");
    let after = t.path().join("after");
    let out = common::diskforge()
        .arg("--cache-dir")
        .arg(&before)
        .arg("plan")
        .arg(&recipe)
        .args(["--offline", "--cache-dir"])
        .arg(&after)
        .succeeds();
    assert!(after.is_dir(), "{}", text(&out));
    assert!(!before.exists(), "{}", text(&out));
}

/// `diskforge man` prints diskforge(1); `--out-dir` writes one page per subcommand; man
/// reads each page without a warning and it holds the subcommand's options.
fn man_pages_render_for_every_subcommand() {
    let t = tempfile::tempdir().unwrap();
    let out = common::diskforge().arg("man").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let main_page = t.path().join("stdout.1");
    std::fs::write(&main_page, &out.stdout).unwrap();
    let dir = t.path().join("man1");
    common::diskforge()
        .args(["man", "--out-dir"])
        .arg(&dir)
        .succeeds();
    assert_eq!(
        std::fs::read(dir.join("diskforge.1")).unwrap(),
        std::fs::read(&main_page).unwrap(),
        "the printed page is the written one"
    );
    let root = diskforge::cli::command();
    let mut paths = Vec::new();
    subcommand_paths(&root, &[], &mut paths);
    let mut pages = vec![(
        "diskforge.1".to_string(),
        vec!["--json-events", "Exit codes", "diskforge-build(1)"],
    )];
    for p in paths.iter().filter(|p| p[0] != "help") {
        let want = match p.join(" ").as_str() {
            "build" => vec!["--accel", "--jobs", "--incremental"],
            "validate" => vec!["--offline", "--catalog"],
            _ => vec![],
        };
        pages.push((format!("diskforge-{}.1", p.join("-")), want));
    }
    for (page, want) in pages {
        let path = dir.join(&page);
        assert!(path.is_file(), "{page} missing from {}", dir.display());
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&path)
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_FORMATTING", "0")
            .env("PAGER", "cat")
            .output()
            .unwrap();
        // Without a terminal man still overstrikes (bold: `N\bN`); read the letters.
        let mut shown = String::new();
        for c in String::from_utf8_lossy(&out.stdout).chars() {
            if c == '\u{8}' {
                shown.pop();
            } else {
                shown.push(c);
            }
        }
        assert!(out.status.success(), "man -l {page}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).trim().is_empty(),
            "man warns about {page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // man may hyphenate or bold; compare without overstrikes.
        let plain: String = shown.replace("\u{2010}", "-").replace("\u{2212}", "-");
        assert!(plain.contains("NAME"), "{page}: {plain}");
        for w in want {
            assert!(plain.contains(w), "{page} lacks {w}: {plain}");
        }
    }
    assert!(!dir.join("diskforge-help.1").exists(), "no page for `help`");
}

/// Recipes built side by side: every line on stderr that belongs to a recipe says which
/// (`[NAME] `), and the accelerator is probed and warned about once for the command.
fn lines_of_parallel_builds_name_their_recipe() {
    let t = tempfile::tempdir().unwrap();
    for n in ["alpha", "beta"] {
        let sum = diskforge::io::hash::sha256_hex(n.as_bytes());
        std::fs::write(
            t.path().join(format!("{n}.yaml")),
            format!(
                "version: 1\nname: {n}\nbase:\n  url: https://example.invalid/{n}.qcow2\n  checksum: sha256:{sum}\n"
            ),
        )
        .unwrap();
    }
    let out = common::diskforge()
        .current_dir(t.path())
        .args([
            "build",
            "alpha.yaml",
            "beta.yaml",
            "--offline",
            "--jobs",
            "2",
        ])
        .arg("--cache-dir")
        .arg(t.path().join("cache"))
        .args(["-o", "oci:out-{name}"])
        .exits(1);
    let err = stderr(&out);
    for n in ["alpha", "beta"] {
        assert!(
            err.lines().any(|l| l.starts_with(&format!(
                "[{n}] ==> base: download https://example.invalid/{n}.qcow2"
            ))),
            "{err}"
        );
    }
    for l in err
        .lines()
        .filter(|l| l.contains("==>") || l.contains("https://example.invalid"))
    {
        assert!(
            l.starts_with("[alpha] ") || l.starts_with("[beta] ") || l.starts_with("error: "),
            "a recipe's line without its name: {l:?}\n{err}"
        );
    }
    let warnings = err
        .lines()
        .filter(|l| l.contains("KVM is not usable"))
        .count();
    assert!(
        warnings <= 1,
        "the accelerator warning {warnings} times:\n{err}"
    );
}

/// In a terminal a long warning wraps to its width, continued lines indented; outside
/// one it stays a single line, for logs and grep.
fn long_warnings_wrap_in_a_terminal() {
    let t = tempfile::tempdir().unwrap();
    let sum = diskforge::io::hash::sha256_hex(b"alpha");
    std::fs::write(
        t.path().join("alpha.yaml"),
        format!(
            "version: 1\nname: alpha\nbase:\n  url: https://example.invalid/alpha.qcow2\n  checksum: sha256:{sum}\ncustomize:\n  selinux-relabel: false\n"
        ),
    )
    .unwrap();
    let df = std::path::Path::new(env!("CARGO_BIN_EXE_diskforge"));
    let build = format!(
        "{} build alpha.yaml --offline --accel tcg --cache-dir cache -o oci:out",
        df.display()
    );
    // `script` gives the command a terminal of 50 columns.
    let out = Command::new("script")
        .current_dir(t.path())
        .args([
            "-qec",
            &format!("stty rows 24 cols 50; {build}"),
            "/dev/null",
        ])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let warning: Vec<&str> = shown
        .lines()
        .skip_while(|l| !l.contains("selinux-relabel is false"))
        .take_while(|l| !l.starts_with("==>"))
        .collect();
    assert!(warning.len() >= 3, "not wrapped:\n{shown}");
    for l in &warning {
        let plain = l.replace("\u{1b}[33m", "").replace("\u{1b}[0m", "");
        assert!(
            plain.chars().count() <= 50,
            "{plain:?} is wider than 50:\n{shown}"
        );
    }
    assert!(
        warning[1..].iter().all(|l| l.starts_with("    ")),
        "{shown}"
    );
    assert!(
        warning.join(" ").contains("may fail under enforcing"),
        "{shown}"
    );

    let out = Command::new("sh")
        .current_dir(t.path())
        .args(["-c", &build])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        err.lines()
            .any(|l| l.contains("selinux-relabel is false")
                && l.contains("may fail under enforcing")),
        "{err}"
    );
}

crate::tests! {
    fn a_failed_boot_check_exits_4 [&["qemu-img", "qemu-system-x86_64"]];
    fn exit_code_table_matches_help_and_behaviour [&["qemu-img", "qemu-system-x86_64"]];
    fn print_vm_manifest_makes_stdout_one_yaml_document [&["qemu-img", "docker-registry"]];
    fn digest_file_holds_the_manifest_digest_for_local_destinations [&["qemu-img"]];
    fn option_combinations_that_cannot_work_are_refused_before_any_work [&["qemu-img"]];
    fn push_offers_only_options_it_uses;
    fn pack_without_output_writes_the_documented_default [&["qemu-img"]];
    fn pack_refuses_and_verify_fails_a_disk_that_is_a_text_file [&["qemu-img"]];
    fn no_colour_codes_outside_a_terminal [&["qemu-img"], &["script"]];
    fn https_to_a_plain_http_registry_hints_tls_verify_false [&["docker-registry"]];
    fn type_errors_are_located_in_the_recipes_words_all_at_once;
    fn registry_credentials_are_found_in_the_readme_order [&["qemu-img", "docker-registry", "htpasswd"]];
    fn cert_dir_trusts_a_private_registry_ca [&["qemu-img", "docker-registry", "openssl"]];
    fn json_events_are_versioned_and_include_recipe_errors [&["qemu-img"]];
    fn events_doc_names_exactly_the_events_the_code_emits;
    fn help_describes_every_argument_under_the_right_heading;
    fn options_are_taken_where_they_are_offered;
    fn man_pages_render_for_every_subcommand [&["man"]];
    fn lines_of_parallel_builds_name_their_recipe;
    fn long_warnings_wrap_in_a_terminal [&["script", "stty"]];
}
