//! The end-to-end test: plan, then build the demo recipe (a Debian 12 base built from
//! Debian packages, grown, tmux/htop, a lab user, ttyd, signed) and check it ran what
//! the plan listed → push it to a loopback registry → pull it back by digest with
//! skopeo → check the containerDisk contract on the layer as a node unpacks it, and
//! that the password is nowhere on the disk → `diskforge verify` (contract, signature)
//! → the SBOM and provenance from the registry → boot it with `diskforge run` and use
//! the web terminal in headless Chromium (log in through the page, type a command, read
//! its output) → an unchanged rebuild does nothing.
use crate::common;
use common::Run;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::browser::{self, BackgroundRun};
use common::registry::Registry;

/// Beside [`common::GUEST_TOOLS`].
const TOOLS: &[&str] = &[
    "qemu-system-x86_64",
    // The package lists and packages are fetched on the host, and the test says so.
    "apt-get",
    "docker-registry",
    "skopeo",
    "umoci",
    "tar",
];
const PASSWORD: &str = "Lab-e2e-Pass-4711";

fn ok(out: &Output, what: &str) -> String {
    common::ok_without(out, what, &[PASSWORD])
}

fn diskforge(cache: &Path) -> Command {
    let mut c = common::diskforge_cached(cache);
    c.env("DISKFORGE_LAB_PASSWORD", PASSWORD)
        .env("SOURCE_DATE_EPOCH", "1767225600");
    c
}

/// What the test reads in the booted image, as the lab user, one fact a line: a marker,
/// the user, the root filesystem's size, tmux and htop as dpkg has them, the
/// machine-id (regenerated at first boot), the kernel release.
const GUEST_COMMAND: &str = "echo diskforge-$((6*7)); id -un; df -B1 --output=size / | tail -n1; dpkg-query -W -f='${db:Status-Abbrev}${Package}=${Version}\\n' htop tmux; cat /etc/machine-id; uname -r";

/// Boots `image` with `diskforge run`, opens the ttyd URL it prints in headless
/// Chromium, logs in as the lab user through the page, types [`GUEST_COMMAND`] and
/// returns its output lines as read from the terminal; a screenshot is kept in
/// target/test-artifacts/. Then Ctrl-C stops the VM and nothing is left running.
fn browse_demo(python: &str, cache: &Path, image: &Path) -> Vec<String> {
    let mut run = diskforge(cache);
    run.args(["run", "--memory", "1024"])
        .arg(format!("oci:{}:demo", image.display()));
    let mut vm = BackgroundRun::start(run);
    let (url, port) = vm.ttyd_url(Duration::from_secs(300));
    let log = vm.stderr_reader();
    browser::wait_for_ttyd(port, Duration::from_secs(900), || vm.running(), log);
    let screenshot = browser::artifacts().join("ttyd-terminal.png");
    let out = browser::ttyd_session(
        python,
        &url,
        &[
            "--login",
            "lab",
            "--command",
            GUEST_COMMAND,
            "--expect",
            r"^diskforge-42$",
            "--expect",
            r"^[0-9a-f]{32}$",
            "--expect",
            r"^\d+\.\d+\S*$",
            "--screenshot",
            screenshot.to_str().unwrap(),
            "--timeout",
            "600",
        ],
        &[("TTYD_LOGIN_PASSWORD", PASSWORD)],
    );
    let stdout = ok(&out, "the browser session on the ttyd page");
    let lines = browser::command_output(&stdout);
    assert!(screenshot.is_file());
    eprintln!("screenshot of the web terminal: {}", screenshot.display());

    let (code, stderr) = vm.stop();
    assert_eq!(code, Some(0), "diskforge run after Ctrl-C:\n{stderr}");
    assert!(stderr.contains("stopped the VM"), "{stderr}");
    assert!(
        !stderr.contains(PASSWORD),
        "diskforge run: the password leaked"
    );
    assert_eq!(
        browser::processes_with(&browser::forward_marker(port)),
        Vec::<String>::new(),
        "QEMU still runs after diskforge run stopped"
    );
    lines
}

/// Without a browser (outside CI only): the same command through `diskforge run
/// --check`, which logs in over ttyd's WebSocket.
fn check_demo(cache: &Path, image: &Path) -> Vec<String> {
    let out = diskforge(cache)
        .args(["run", "--check", "--timeout", "900", "--memory", "1024"])
        .arg(format!("oci:{}:demo", image.display()))
        .args(["--login", &format!("lab:{PASSWORD}")])
        .args(["--command", GUEST_COMMAND])
        .output()
        .unwrap();
    let report = ok(&out, "diskforge run --check");
    assert!(
        report.contains("ttyd page:") && report.contains("login prompt seen"),
        "{report}"
    );
    report
        .split("command output:")
        .nth(1)
        .unwrap_or_else(|| panic!("no command output in {report}"))
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with("check passed"))
        .collect()
}

fn demo_builds_pushes_verifies_boots_and_serves_ttyd() {
    // Checked before the long build: under CI=true a missing browser fails at once.
    let browser_python = common::browser::python_if_installed();
    let root = common::repo_root();
    // The built base is cached across runs under target/.
    let cache = root.join("target/e2e-cache");
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let dest = format!("docker://{}/lab/demo:1", reg.addr);
    let layout1 = t.path().join("build1");
    // The demo recipe and where every build of it goes.
    let recipe = root.join("recipes/demo.yaml");
    let layout1_ref = format!("oci:{}:1", layout1.display());
    let outputs = ["--output", dest.as_str(), "--output", layout1_ref.as_str()];
    let digest_file = t.path().join("digest");
    // A signing key (PKCS#8 PEM, as `openssl genpkey` writes it), and another one.
    let key = t.path().join("key.pem");
    let pubkey = t.path().join("key.pub");
    let other_pub = t.path().join("other.pub");
    for (k, p) in [(&key, &pubkey), (&t.path().join("other.pem"), &other_pub)] {
        common::openssl_p256_key(k, p);
    }

    // 1. Build and publish to the registry and a local layout in one go. The build runs
    //    exactly the commands `plan` lists for it (on a fresh cache: the base is built
    //    from Debian packages too).
    let out = diskforge(&cache)
        .args(["plan", "--json"])
        .arg(&recipe)
        .args(outputs)
        .output()
        .unwrap();
    let planned = common::planned_commands(ok(&out, "diskforge plan").as_bytes());
    assert!(!planned.is_empty());
    let out = diskforge(&cache)
        .args(["--json-events", "build"])
        .arg(&recipe)
        .args(outputs)
        .arg("--tls-verify=false")
        .arg("--digest-file")
        .arg(&digest_file)
        .arg("--sign-key")
        .arg(&key)
        .output()
        .unwrap();
    ok(&out, "diskforge build");
    common::assert_ran_the_plan(&common::executed_commands(&out.stderr), &planned);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let launches: Vec<u64> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "appliance_launches")
        .filter_map(|v| v["count"].as_u64())
        .collect();
    assert_eq!(
        launches,
        [1],
        "appliance launches of the guest stage: {stderr}"
    );
    // The package lists and packages came from the host, read with the guest's own
    // sources and keys, and the guest skipped its own `apt-get update`.
    let prefetch: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "apt-prefetch")
        .collect();
    assert!(
        prefetch.len() == 1
            && prefetch[0]["fetched"] == true
            && prefetch[0]["packages"].as_u64().unwrap_or(0) >= 2,
        "host-side package fetch: {prefetch:#?}"
    );
    let stages: Vec<String> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "guest-stage")
        .filter_map(|v| v["stage"].as_str().map(String::from))
        .collect();
    assert!(
        stages
            .iter()
            .any(|s| s == "packages: lists and packages fetched on the host")
            && !stages.iter().any(|s| s == "packages: apt-get update"),
        "guest stages: {stages:#?}"
    );
    // A Debian guest without an SELinux policy is not touched: no relabel, not even a
    // look at /etc/selinux.
    let selinux: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with('{') && l.to_lowercase().contains("selinux"))
        .collect();
    assert!(
        selinux.is_empty(),
        "the demo build looked at SELinux: {selinux:#?}"
    );
    let digest = std::fs::read_to_string(&digest_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    let pinned = format!("{}/lab/demo@{digest}", reg.addr);

    // 2. Pull by digest, as a node would, with a tool diskforge did not write.
    let pulled = t.path().join("pulled");
    common::registry::skopeo_pull(&pinned, &pulled, "demo");

    // 3. Unpack the layer with numeric ownership and check the containerDisk contract.
    let m = common::first_manifest(&pulled);
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let blob = pulled.join("blobs/sha256").join(
        layers[0]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let listing = String::from_utf8(
        Command::new("tar")
            .args(["--numeric-owner", "-tvzf"])
            .arg(&blob)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let files: Vec<&str> = listing.lines().filter(|l| !l.starts_with('d')).collect();
    assert_eq!(files.len(), 1, "{listing}");
    assert!(
        files[0].starts_with("-r--r----- 107/107") && files[0].ends_with("disk/disk.qcow2"),
        "{listing}"
    );
    let x = t.path().join("unpacked");
    std::fs::create_dir(&x).unwrap();
    Command::new("tar")
        .args(["--numeric-owner", "-xzf"])
        .arg(&blob)
        .arg("-C")
        .arg(&x)
        .succeeds();
    let info: serde_json::Value = serde_json::from_slice(
        &Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(x.join("disk/disk.qcow2"))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 4u64 << 30);
    assert!(info.get("backing-filename").is_none());
    // The lab user's password is nowhere on the published disk, not even in free
    // blocks: only its hash went in.
    let raw = t.path().join("disk.raw");
    Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(x.join("disk/disk.qcow2"))
        .arg(&raw)
        .succeeds();
    assert_eq!(
        common::occurrences(&raw, PASSWORD.as_bytes()),
        0,
        "the password is on the disk"
    );
    std::fs::remove_file(&raw).unwrap();
    // umoci reads the pulled image too.
    let st = Command::new("umoci")
        .args(["stat", "--image"])
        .arg(format!("{}:demo", pulled.display()))
        .output()
        .unwrap();
    assert!(st.status.success());

    // 4. diskforge's own contract check, from the registry by digest.
    let out = diskforge(&cache)
        .args(["verify", "--tls-verify=false", "--size", "4G"])
        .arg(format!("docker://{pinned}"))
        .output()
        .unwrap();
    let v = ok(&out, "diskforge verify");
    assert!(v.contains("contract satisfied"), "{v}");

    // 4b. Provenance: the signature verifies with the right key only; the SBOM and the
    //     provenance are reachable from the digest (referrers tag, read by skopeo).
    let out = diskforge(&cache)
        .args(["verify", "--tls-verify=false", "--key"])
        .arg(&pubkey)
        .arg(format!("docker://{pinned}"))
        .output()
        .unwrap();
    assert!(ok(&out, "verify --key").contains("valid signature"));
    diskforge(&cache)
        .args(["verify", "--tls-verify=false", "--key"])
        .arg(&other_pub)
        .arg(format!("docker://{pinned}"))
        .exits(4);
    let out = diskforge(&cache)
        .args(["inspect", "--json", "--tls-verify=false", "--key"])
        .arg(&pubkey)
        .arg(format!("docker://{pinned}"))
        .output()
        .unwrap();
    let inspected: serde_json::Value = serde_json::from_str(&ok(&out, "inspect --key")).unwrap();
    let a = &inspected["attached"];
    assert_eq!(a["valid_signatures"], 1, "{a}");
    assert_eq!(a["provenance_signed"], true, "{a}");
    assert!(a["sbom_packages"].as_u64().unwrap_or(0) > 50, "{a}");
    assert!(
        a["materials"].to_string().contains("debian-12-minimal"),
        "{a}"
    );
    let referrers = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!(
            "docker://{}/lab/demo:{}",
            reg.addr,
            digest.replacen(':', "-", 1)
        ))
        .output()
        .unwrap();
    let idx: serde_json::Value = serde_json::from_slice(&referrers.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&referrers.stderr)));
    let types: Vec<&str> = idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["artifactType"].as_str())
        .collect();
    assert_eq!(
        types,
        ["application/spdx+json", "application/vnd.in-toto+json"],
        "{idx}"
    );
    // The SBOM written beside the layout validates with SPDX's own tool.
    let sbom_file = t.path().join("build1.spdx.json");
    Command::new("pyspdxtools")
        .arg("-i")
        .arg(&sbom_file)
        .succeeds();
    let sbom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sbom_file).unwrap()).unwrap();
    let sbom_version = |name: &str| -> String {
        sbom["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in the SBOM"))["versionInfo"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // 5. Boot it on an overlay and use it as its users do: the web terminal in headless
    //    Chromium, logged in as the lab user through the page. (`run --check`, the
    //    WebSocket login, boots every image of the layout zoo.)
    let lines = match browser_python {
        Some(python) => browse_demo(python, &cache, &pulled),
        None => check_demo(&cache, &pulled),
    };
    let all = lines.join("\n");
    // The terminal shows the next prompt after the output.
    let lines: Vec<&String> = lines
        .iter()
        .filter(|l| !(l.contains('@') && l.ends_with('$')))
        .collect();
    assert_eq!(lines.len(), 7, "{all}");
    assert_eq!(lines[0], "diskforge-42", "{all}");
    assert_eq!(lines[1], "lab", "{all}");
    let root_size: u64 = lines[2].parse().unwrap_or_else(|_| panic!("df: {all}"));
    assert!(
        root_size > (3u64 << 30) + (512 << 20),
        "/ was not grown: {root_size} bytes"
    );
    // Both installed, with the versions the SBOM lists.
    for (line, name) in [(lines[3], "htop"), (lines[4], "tmux")] {
        assert_eq!(
            line.as_str(),
            format!("ii {name}={}", sbom_version(name)),
            "{all}"
        );
    }
    assert!(
        lines[5].len() == 32 && lines[5].chars().all(|c| c.is_ascii_hexdigit()),
        "machine-id not regenerated on first boot: {all}"
    );
    assert!(
        lines[6]
            .split('.')
            .take(2)
            .all(|p| p.chars().next().is_some_and(|c| c.is_ascii_digit())),
        "kernel release: {all}"
    );

    // 6. The artifact was not modified by booting it (run uses an overlay).
    assert_eq!(common::first_manifest(&pulled), m);

    // 7. A scheduled rebuild with nothing changed does nothing: the registry and the
    //    layout already hold an image with this build key.
    let out = diskforge(&cache)
        .args(["build"])
        .arg(&recipe)
        .args(outputs)
        .arg("--tls-verify=false")
        .output()
        .unwrap();
    let s = ok(&out, "unchanged rebuild");
    assert!(
        s.contains("up to date"),
        "an unchanged rebuild did work: {s}"
    );
}

crate::tests! {
    fn demo_builds_pushes_verifies_boots_and_serves_ttyd [common::GUEST_TOOLS, TOOLS];
}
