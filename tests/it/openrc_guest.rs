//! Guests without systemd: ttyd and the web desktop started by OpenRC, and the Xfce
//! session seen in a browser. On the project's own Debian 12 base built with
//! `build.init: openrc` (sysvinit as PID 1, OpenRC, ifupdown DHCP, no systemd package)
//! with the desktop's packages installed at base-build time
//! (tests/fixtures/openrc/debian-12-openrc-desktop.yaml, built once and cached by the
//! hash of its definition in the cache under target/):
//!
//! - a recipe with a user, ttyd (with its credential) and `desktop:` with the `xfce`
//!   session builds; the disk holds the OpenRC services in the default runlevel and no
//!   systemd unit of diskforge's;
//! - `diskforge run --check` boots it: ttyd answers and the user logs in through it,
//!   the desktop's page, WebSocket upgrade and password-asking VNC server answer; the
//!   command run in the guest shows sysvinit as PID 1, no systemd, diskforge's services
//!   (ttyd, the desktop's two, the SSH host keys) and sshd started by OpenRC
//!   (`rc-service … status`), the VNC server running as the user,
//!   websockify as `nobody`, and Xfce's panel, window manager and desktop running;
//! - booted again, headless Chromium with a wrong password never sees the desktop;
//!   with the right one it sees Xfce: a panel along the top edge in a colour little
//!   of the screen below has (the minimal session leaves the top edge the root
//!   window's colour) and far more colours than twm and an xterm draw (the panels, the
//!   icons),
//!   captured in target/test-artifacts/novnc-xfce.png.
use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::browser::{self, BackgroundRun};

const TOOLS: &[&str] = &["qemu-img", "guestfish", "mmdebstrap", "qemu-system-x86_64"];
const LAB_PASSWORD: &str = "Orc-lab-Pass-7731";
const TTYD_PASSWORD: &str = "Orc-ttyd-Cred-4410";
/// The VNC password (VNC authentication uses at most 8 characters).
const VNC_PASSWORD: &str = "Xf4-orc8";
/// More than the minimal session draws (twm and an antialiased xterm on a plain root
/// window: black, white and the greys of the text), less than Xfce's panels and icons
/// (270 to 500 seen).
const XFCE_MIN_COLOURS: u32 = 150;

fn diskforge(cache: &Path) -> Command {
    let mut c = common::diskforge_cached(cache);
    c.env("ORC_LAB_PASSWORD", LAB_PASSWORD)
        .env("ORC_TTYD_PASSWORD", TTYD_PASSWORD)
        .env("ORC_DESKTOP_PASSWORD", VNC_PASSWORD)
        .env("SOURCE_DATE_EPOCH", "1767225600");
    c
}

fn ok(out: &Output, what: &str) -> String {
    common::ok_without(out, what, &[LAB_PASSWORD, TTYD_PASSWORD, VNC_PASSWORD])
}

/// The cache shared with the other guest tests: the built base and the ttyd download
/// are made once per checkout.
fn cache() -> PathBuf {
    common::repo_root().join("target/e2e-cache")
}

fn catalog() -> PathBuf {
    common::repo_root().join("tests/fixtures/openrc")
}

/// A recipe on the OpenRC base with a user, ttyd and the Xfce desktop.
fn recipe(dir: &Path) -> PathBuf {
    let demo = diskforge::recipe::load(
        &common::repo_root().join("recipes/demo.yaml"),
        &Default::default(),
    )
    .unwrap();
    let diskforge::recipe::TtydSource::Url(ttyd) = &demo.recipe.ttyd.source else {
        panic!("recipes/demo.yaml no longer downloads ttyd: update this test");
    };
    let text = format!(
        r#"version: 1
name: openrc-desktop
base: {{catalog: debian-12-openrc-desktop}}
disk: {{size: 4G}}
customize:
  users:
    - name: lab
      shell: /bin/bash
      sudo: true
      password: {{env: ORC_LAB_PASSWORD}}
  hostname: openrc-desktop
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
    password: {{env: ORC_TTYD_PASSWORD}}
desktop:
  enabled: true
  user: lab
  session: xfce
  credential: {{env: ORC_DESKTOP_PASSWORD}}
"#,
        url = ttyd.url,
        sha = ttyd.sha256,
        member = ttyd.member.as_deref().unwrap(),
    );
    let path = dir.join("openrc-desktop.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The value of the line `key=value` in the guest's output.
fn value(report: &str, key: &str) -> String {
    report
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the guest's output:\n{report}"))
        .trim()
        .to_string()
}

fn ttyd_and_the_xfce_desktop_run_under_openrc_and_xfce_shows_in_the_browser() {
    let python = browser::python();
    let started = Instant::now();
    let t = tempfile::tempdir_in(common::repo_root().join("target")).unwrap();
    let recipe = recipe(t.path());
    let disk = t.path().join("disk.qcow2");

    // 1. The plan shows the desktop; the build (the base is built first when the cache
    //    does not hold it) installs it.
    let plan = ok(
        &diskforge(&cache())
            .arg("plan")
            .arg("--catalog")
            .arg(catalog())
            .arg(&recipe)
            .output()
            .unwrap(),
        "plan",
    );
    assert!(
        plan.contains("desktop: noVNC on port 6080 for user lab"),
        "{plan}"
    );
    let out = diskforge(&cache())
        .arg("build")
        .arg("--catalog")
        .arg(catalog())
        .arg(&recipe)
        .arg("--disk-only")
        .arg(&disk)
        .output()
        .unwrap();
    ok(&out, "the build on the OpenRC base");
    let build_time = started.elapsed();

    // 2. What the disk starts at boot: OpenRC services in the default runlevel, no
    //    systemd units of diskforge's, and no systemd at all.
    let facts = common::guest::fish(
        &["--ro", "-i", "-a", disk.to_str().unwrap()],
        "sh \"for s in diskforge-ttyd diskforge-desktop-vnc diskforge-desktop-web diskforge-ssh-hostkeys; do [ -x /etc/init.d/$s ] && [ -L /etc/runlevels/default/$s ] && echo rc-default=$s; done; ls /etc/systemd/system | grep diskforge | sed 's/^/systemd-unit=/'; [ -e /usr/bin/systemctl ] && echo systemctl=present; readlink -f /sbin/init | sed 's/^/init=/'; true\"\n",
    );
    for s in [
        "diskforge-ttyd",
        "diskforge-desktop-vnc",
        "diskforge-desktop-web",
        "diskforge-ssh-hostkeys",
    ] {
        assert!(
            facts.lines().any(|l| l.trim() == format!("rc-default={s}")),
            "{s} is not an OpenRC service in the default runlevel:\n{facts}"
        );
    }
    assert!(!facts.contains("systemd-unit="), "{facts}");
    assert!(!facts.contains("systemctl=present"), "{facts}");
    assert_eq!(value(&facts, "init"), "/usr/sbin/init", "{facts}");

    // 3. Boot it: ttyd and the desktop answer, and the guest shows who started them.
    let command = "echo pid1=$(cat /proc/1/comm); \
        echo systemd-run=$(test -d /run/systemd/system && echo yes || echo no); \
        for s in diskforge-ttyd diskforge-desktop-vnc diskforge-desktop-web diskforge-ssh-hostkeys ssh; do \
          echo \"$s=$(sudo -n rc-service $s status 2>&1 | tr -d '*' | tr -s ' ' | sed 's/^ //')\"; done; \
        echo ssh-rc=$(sudo -n rc-status default | awk '$1 == \"ssh\" {print $3}'); \
        echo vnc-user=$(ps -o user= -C Xtigervnc | sort -u | tr '\\n' ' '); \
        echo web-user=$(ps -o user=,args= -C websockify,python3 | awk '/websockify/ {print $1}' | sort -u | tr '\\n' ' '); \
        echo supervisor=$(ps -o args= -C supervise-daemon | grep -c diskforge-desktop); \
        i=0; while [ $i -lt 90 ] && ! { pgrep -u lab -x xfce4-panel && pgrep -u lab -x xfdesktop; } >/dev/null; do sleep 2; i=$((i+1)); done; \
        for p in xfce4-session xfwm4 xfce4-panel xfdesktop; do echo \"xfce-$p=$(pgrep -u lab -x $p >/dev/null && echo running || echo missing)\"; done; \
        echo checks-end";
    let boot_started = Instant::now();
    let out = diskforge(&cache())
        .args(["run", "--check", "--timeout", "900", "--memory", "2048"])
        .arg(&disk)
        .args(["--desktop-port", "6080"])
        .args(["--ttyd-auth", &format!("lab:{TTYD_PASSWORD}")])
        .args(["--login", &format!("lab:{LAB_PASSWORD}")])
        .args(["--command", command])
        .output()
        .unwrap();
    let report = ok(&out, "diskforge run --check on the OpenRC guest");
    let check_time = boot_started.elapsed();
    let all = common::text(&out);
    assert!(
        all.contains("asks for authentication") && all.contains("WebSocket: upgraded"),
        "{all}"
    );
    assert!(report.contains("checks-end"), "{report}");
    assert_eq!(value(&report, "pid1"), "init", "{report}");
    assert_eq!(value(&report, "systemd-run"), "no", "{report}");
    // The SSH host keys the build removed are made again before sshd starts.
    for s in [
        "diskforge-ttyd",
        "diskforge-desktop-vnc",
        "diskforge-desktop-web",
        "diskforge-ssh-hostkeys",
    ] {
        assert_eq!(value(&report, s), "status: started", "{report}");
    }
    // Debian's own sshd script (an LSB script OpenRC runs) answers `status` itself.
    assert_eq!(value(&report, "ssh"), "sshd is running.", "{report}");
    assert_eq!(value(&report, "ssh-rc"), "started", "{report}");
    assert_eq!(value(&report, "vnc-user"), "lab", "{report}");
    assert_eq!(value(&report, "web-user"), "nobody", "{report}");
    assert_eq!(value(&report, "supervisor"), "2", "{report}");
    for p in ["xfce4-session", "xfwm4", "xfce4-panel", "xfdesktop"] {
        assert_eq!(value(&report, &format!("xfce-{p}")), "running", "{report}");
    }

    // 4. Booted again: the browser sees Xfce only with the right password.
    let browser_started = Instant::now();
    let mut run = diskforge(&cache());
    run.args(["run", "--memory", "2048", "--desktop-port", "6080"])
        .arg(&disk);
    let mut vm = BackgroundRun::start(run);
    let (url, _) = vm.desktop_url(Duration::from_secs(300));
    let log = vm.stderr_reader();
    {
        let port: u16 = url
            .trim_start_matches("http://127.0.0.1:")
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {url}"));
        let mut gone = || (!vm.running()).then(|| format!("diskforge run exited:\n{}", log()));
        diskforge::vm::desktop::check_port(
            port,
            Instant::now() + Duration::from_secs(600),
            &mut gone,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let wrong = browser::novnc(
        python,
        &url,
        "Wrong-77",
        &[
            "--expect-refused",
            "--screenshot",
            browser::artifacts()
                .join("novnc-xfce-refused.png")
                .to_str()
                .unwrap(),
            "--timeout",
            "120",
        ],
    );
    let text = common::text(&wrong);
    assert!(wrong.status.success(), "wrong password:\n{text}");
    assert!(text.contains("desktop: not shown"), "{text}");

    let screenshot = browser::artifacts().join("novnc-xfce.png");
    let _ = std::fs::remove_file(&screenshot);
    let right = browser::novnc(
        python,
        &url,
        VNC_PASSWORD,
        &[
            "--screenshot",
            screenshot.to_str().unwrap(),
            "--timeout",
            "600",
            "--min-colours",
            &XFCE_MIN_COLOURS.to_string(),
            "--expect-top-panel",
        ],
    );
    let text = common::text(&right);
    assert!(right.status.success(), "right password:\n{text}");
    assert!(!text.contains(VNC_PASSWORD), "{text}");
    assert!(text.contains("connected: yes"), "{text}");
    assert!(text.contains("canvas: 1280x800"), "{text}");
    let colours: u32 = value(&text.replace(": ", "="), "canvas colours")
        .parse()
        .unwrap();
    assert!(colours >= XFCE_MIN_COLOURS, "{text}");
    // Xfce's panel along the top, in a colour of its own: not the minimal session's look.
    assert!(text.contains("(a panel: yes)"), "{text}");
    assert!(screenshot.is_file());
    let (code, stderr) = vm.stop();
    assert_eq!(code, Some(0), "diskforge run after Ctrl-C:\n{stderr}");
    for p in [LAB_PASSWORD, TTYD_PASSWORD, VNC_PASSWORD] {
        assert!(!stderr.contains(p), "diskforge run: a password leaked");
    }
    eprintln!(
        "OpenRC desktop: built in {:.0} s (base included when not cached), run --check {:.0} s, browser boot {:.0} s, whole test {:.0} s; Xfce canvas: {colours} colours",
        build_time.as_secs_f64(),
        check_time.as_secs_f64(),
        browser_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

crate::tests! {
    fn ttyd_and_the_xfce_desktop_run_under_openrc_and_xfce_shows_in_the_browser [common::GUEST_TOOLS, TOOLS, browser::needs()];
}
