//! The web desktop end to end (`desktop:` in a recipe): recipes/desktop.yaml (the demo
//! plus noVNC) is planned and built once, under emulation, into an OCI layout; the
//! image says which port its desktop serves, and the VNC password is nowhere in the
//! plan, the logs, the labels or on the disk (free blocks included) except obfuscated
//! in the one file the VNC server reads (0600, the session user's). Then the same
//! image is booted once with `diskforge run`, which prints the desktop's URL; the probe
//! `run --check` uses sees the page, the WebSocket upgrade and a VNC server asking for
//! authentication; and headless Chromium opens noVNC's page: a wrong password never
//! shows the desktop, the right one shows a window (the canvas compared against a
//! blank one), captured in target/test-artifacts/novnc-desktop.png.
use crate::common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::browser::{self, BackgroundRun};

const TOOLS: &[&str] = &["qemu-img", "guestfish", "qemu-system-x86_64", "tar"];
const LAB_PASSWORD: &str = "Lab-desk-Pass-5150";
/// The VNC password (VNC authentication uses at most 8 characters).
const PASSWORD: &str = "Dk7-vnc9";

fn diskforge(cache: &Path) -> Command {
    let mut c = common::diskforge();
    common::guestfs_env(&mut c);
    c.arg("--cache-dir")
        .arg(cache)
        .env("DISKFORGE_LAB_PASSWORD", LAB_PASSWORD)
        .env("DISKFORGE_DESKTOP_PASSWORD", PASSWORD)
        .env("SOURCE_DATE_EPOCH", "1767225600");
    c
}

/// stdout of a successful run, after checking that no password leaked into it.
fn ok(out: &Output, what: &str) -> String {
    let text = common::text(out);
    assert!(out.status.success(), "{what} failed:\n{text}");
    for p in [PASSWORD, LAB_PASSWORD] {
        assert!(!text.contains(p), "{what}: a password leaked:\n{text}");
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn blob(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn desktop_builds_boots_and_shows_a_window_in_the_browser_only_with_its_password() {
    let python = browser::python();
    let started = Instant::now();
    let root = common::repo_root();
    let cache = root.join("target/e2e-cache");
    let recipe = root.join("recipes/desktop.yaml");
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let image = format!("oci:{}:1", layout.display());

    // 1. The plan shows the desktop, not its password.
    let plan = ok(
        &diskforge(&cache)
            .args(["plan"])
            .arg(&recipe)
            .output()
            .unwrap(),
        "diskforge plan",
    );
    assert!(
        plan.contains("desktop: noVNC on port 6080 for user lab"),
        "{plan}"
    );
    assert!(
        plan.contains("tigervnc-standalone-server tigervnc-tools novnc websockify twm xterm"),
        "{plan}"
    );

    // 2. One build. Incremental: the disk after the package install is kept in the
    //    cache under target/, so only the first run pays for the packages (about 190
    //    of them, most pulled in by Mesa and Node.js dependencies of Debian's packages).
    let build_started = Instant::now();
    let out = diskforge(&cache)
        .args(["build", "--incremental"])
        .arg(&recipe)
        .args(["--output", &image])
        .output()
        .unwrap();
    ok(&out, "diskforge build");
    let build_time = build_started.elapsed();

    // 3. The image: its label names the desktop port; no password in its config.
    let index = json(&layout.join("index.json"));
    let manifest = json(&blob(
        &layout,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ));
    let config_path = blob(&layout, manifest["config"]["digest"].as_str().unwrap());
    let config = json(&config_path);
    assert_eq!(
        config["config"]["Labels"][diskforge::pipeline::publish::DESKTOP_PORT_LABEL],
        "6080",
        "{config}"
    );
    assert_eq!(
        common::occurrences(&config_path, PASSWORD.as_bytes()),
        0,
        "the password is in the image config"
    );
    let layer = blob(&layout, manifest["layers"][0]["digest"].as_str().unwrap());
    let x = t.path().join("x");
    std::fs::create_dir(&x).unwrap();
    assert!(Command::new("tar")
        .arg("-xf")
        .arg(&layer)
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap()
        .success());
    let disk = x.join("disk/disk.qcow2");
    let size = std::fs::metadata(&disk).unwrap().len();

    // 4. The password file: where the VNC server reads it, obfuscated, 0600, lab's.
    let facts = common::guest::fish(
        &["--ro", "-i", "-a", disk.to_str().unwrap()],
        "stat /etc/diskforge/desktop.vncpasswd\nfilesize /etc/diskforge/desktop.vncpasswd\nsh \"id -u lab\"\n",
    );
    let field = |name: &str| {
        facts
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {facts}"))
            .to_string()
    };
    assert_eq!(
        field("mode").parse::<u32>().unwrap() & 0o7777,
        0o600,
        "{facts}"
    );
    assert_ne!(field("uid"), "0", "{facts}");
    let lab_uid = facts
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(field("uid"), lab_uid, "{facts}");
    assert!(facts.lines().any(|l| l.trim() == "8"), "{facts}");

    // 5. The plaintext is nowhere on the disk, not even in free blocks.
    let raw = t.path().join("disk.raw");
    assert!(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&disk)
        .arg(&raw)
        .status()
        .unwrap()
        .success());
    assert_eq!(
        common::occurrences(&raw, PASSWORD.as_bytes()),
        0,
        "the desktop password is on the disk"
    );
    std::fs::remove_file(&raw).unwrap();
    std::fs::remove_dir_all(&x).unwrap();

    // 6. Boot it once; everything below uses this VM.
    let boot_started = Instant::now();
    let mut run = diskforge(&cache);
    run.args(["run", "--memory", "1024"]).arg(&image);
    let mut vm = BackgroundRun::start(run);
    let (url, port) = vm.desktop_url(Duration::from_secs(300));
    assert!(url.ends_with("/vnc.html"), "{url}");
    let log = vm.stderr_reader();
    let report = {
        let mut gone = || (!vm.running()).then(|| format!("diskforge run exited:\n{}", log()));
        diskforge::vm::desktop::check_port(
            port,
            Instant::now() + Duration::from_secs(600),
            &mut gone,
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
    };
    assert!(
        report.contains("asks for authentication") && report.contains("WebSocket: upgraded"),
        "{report}"
    );
    let boot_time = boot_started.elapsed();

    // 7. A wrong password never shows the desktop.
    let refused = browser::artifacts().join("novnc-refused.png");
    let wrong = browser::novnc(
        python,
        &url,
        "Wrong-99",
        &[
            "--expect-refused",
            "--screenshot",
            refused.to_str().unwrap(),
            "--timeout",
            "120",
        ],
    );
    let text = common::text(&wrong);
    assert!(wrong.status.success(), "wrong password:\n{text}");
    assert!(text.contains("desktop: not shown"), "{text}");
    assert!(!text.contains("Wrong-99"), "{text}");

    // 8. The right one shows a window.
    let screenshot = browser::artifacts().join("novnc-desktop.png");
    let _ = std::fs::remove_file(&screenshot);
    let right = browser::novnc(
        python,
        &url,
        PASSWORD,
        &[
            "--screenshot",
            screenshot.to_str().unwrap(),
            "--timeout",
            "300",
        ],
    );
    let text = common::text(&right);
    assert!(right.status.success(), "right password:\n{text}");
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(text.contains("connected: yes"), "{text}");
    assert!(text.contains("canvas: 1280x800"), "{text}");
    // twm and an xterm leave the top edge the root window's colour: what the Xfce test
    // (openrc_guest) tells its panel from.
    assert!(text.contains("(a panel: no)"), "{text}");
    assert!(screenshot.is_file());

    let (code, stderr) = vm.stop();
    assert_eq!(code, Some(0), "diskforge run after Ctrl-C:\n{stderr}");
    assert!(
        !stderr.contains(PASSWORD),
        "diskforge run: the password leaked"
    );
    eprintln!(
        "desktop image: built in {:.0} s, disk {:.0} MiB; desktop answered {:.0} s after boot; whole test {:.0} s",
        build_time.as_secs_f64(),
        size as f64 / (1 << 20) as f64,
        boot_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// The manifests of a desktop image: a `NAME-desktop` Service beside `NAME-ttyd`, valid
/// for KubeVirt and CDI under the strict validator.
fn desktop_manifests_are_valid_for_kubevirt() {
    let python = common::kubevirt::validator_python();
    let mut input = diskforge::kubevirt::ManifestInput::new(
        "registry.example.com/lab/desktop",
        "latest",
        "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
        "desktop",
        4 << 30,
    );
    input.ttyd_port = Some(7681);
    input.desktop_port = Some(6080);
    let m = diskforge::kubevirt::Manifests::generate(&input).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut files = m.write_dir(dir.path()).unwrap();
    let stream = dir.path().join("all.yaml");
    std::fs::write(&stream, m.to_yaml_stream().unwrap()).unwrap();
    files.push(stream);
    let service = std::fs::read_to_string(dir.path().join("service-desktop.yaml")).unwrap();
    assert!(
        service.contains("name: desktop-desktop") && service.contains("port: 6080"),
        "{service}"
    );
    let out = common::kubevirt::validate(python, &files);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the validator refused:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("12/12 documents valid"), "{stdout}");
}

crate::tests! {
    fn desktop_builds_boots_and_shows_a_window_in_the_browser_only_with_its_password [common::GUEST_TOOLS, TOOLS, browser::needs()];
    fn desktop_manifests_are_valid_for_kubevirt [common::kubevirt::validator_need()];
}
