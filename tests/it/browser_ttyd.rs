//! ttyd's own credential prompt (`ttyd.credential` in a recipe, ttyd's `-c`), answered
//! in a real browser: the ttyd build the demo recipe installs runs on the host with a
//! credential, and tests/browser/ttyd_login.py opens it in headless Chromium, checks
//! that the page asks for the credential (401, Basic), answers it, and types a command
//! whose output it reads back from the terminal. Seconds, not a VM boot: logging in
//! through the page of a booted image is in tests/it/e2e_demo.rs.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::browser::{self, KillOnDrop};
use diskforge::recipe::TtydSource;

const CREDENTIAL_USER: &str = "lab";
const CREDENTIAL_PASSWORD: &str = "Ttyd-cred-8812";

/// The ttyd binary of recipes/demo.yaml, through diskforge's cache (the one the e2e
/// test builds with; downloaded and checked against the recipe's sha256 when missing),
/// copied out executable into `dir`.
fn demo_ttyd(dir: &std::path::Path) -> PathBuf {
    let root = common::repo_root();
    let loaded =
        diskforge::recipe::load(&root.join("recipes/demo.yaml"), &Default::default()).unwrap();
    let TtydSource::Url(src) = &loaded.recipe.ttyd.source else {
        panic!("recipes/demo.yaml no longer downloads ttyd: update this test");
    };
    let cache = diskforge::cache::Cache::new(root.join("target/e2e-cache")).unwrap();
    let cached = diskforge::base::fetch_file_blocking(
        &src.url,
        &src.sha256,
        src.member.as_deref(),
        &cache,
        &Default::default(),
    )
    .unwrap();
    let bin = dir.join("ttyd");
    std::fs::copy(&cached, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn ttyd_credential_prompt_is_answered_in_the_browser() {
    let python = browser::python();
    let t = tempfile::tempdir().unwrap();
    let ttyd = demo_ttyd(t.path());
    let port = browser::free_port();
    let mut server = KillOnDrop(
        Command::new(&ttyd)
            .args(["-p", &port.to_string(), "-i", "lo", "-W", "-c"])
            .arg(format!("{CREDENTIAL_USER}:{CREDENTIAL_PASSWORD}"))
            // No `-i` for bash: ttyd's own option parser would take it as its `-i`
            // (interface) without a value and crash. bash on ttyd's pty is
            // interactive anyway.
            .args(["env", "PS1=$ ", "bash", "--norc", "--noprofile"])
            .current_dir(t.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting ttyd"),
    );
    browser::wait_for_ttyd(
        port,
        Duration::from_secs(30),
        || matches!(server.0.try_wait(), Ok(None)),
        || "ttyd on the host".into(),
    );
    let screenshot = browser::artifacts().join("ttyd-credential.png");
    let out = browser::ttyd_session(
        python,
        &format!("http://127.0.0.1:{port}/"),
        &[
            "--basic-auth",
            CREDENTIAL_USER,
            "--command",
            "echo diskforge-$((6*7)); uname -s",
            "--expect",
            "^diskforge-42$",
            "--expect",
            "^Linux$",
            "--screenshot",
            screenshot.to_str().unwrap(),
            "--timeout",
            "120",
        ],
        &[("TTYD_BASIC_PASSWORD", CREDENTIAL_PASSWORD)],
    );
    drop(server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser session failed:\n{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains(CREDENTIAL_PASSWORD) && !stderr.contains(CREDENTIAL_PASSWORD),
        "the credential leaked"
    );
    let lines = browser::command_output(&stdout);
    assert_eq!(
        lines.first().map(String::as_str),
        Some("diskforge-42"),
        "{stdout}"
    );
    assert_eq!(lines.get(1).map(String::as_str), Some("Linux"), "{stdout}");
    assert!(screenshot.is_file());
}

crate::tests! {
    fn ttyd_credential_prompt_is_answered_in_the_browser [browser::needs()];
}
