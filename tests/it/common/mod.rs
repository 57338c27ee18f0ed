//! Shared helpers for integration tests: tool requirements, the built binary, scratch dirs.
//!
//! Each test module uses it as `crate::common` and takes what it needs.

use std::path::PathBuf;
use std::process::Command;

pub use crate::harness::in_ci;

/// What building a Debian guest takes (a test's needs list it beside its own).
pub const GUEST_TOOLS: &[&str] = &["qemu-img", "guestfish", "mmdebstrap"];
use crate::harness::{Need, SYSTEM_SETUP};

/// A python3 that can import every one of `modules`: the one on PATH, or Debian's when
/// PATH leads to another Python (where ci/setup-system.sh installs them).
pub fn python_with(modules: &[&str]) -> Option<&'static str> {
    let import = format!("import {}", modules.join(", "));
    ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", &import])
            .output()
            .is_ok_and(|out| out.status.success())
    })
}

/// The need for a python3 that can import every one of `modules`.
pub fn python_need(modules: &'static [&'static str]) -> Need {
    Need::check(
        format!("python3 with {}", modules.join(", ")),
        SYSTEM_SETUP,
        move || python_with(modules).is_some(),
    )
}

/// The python3 of a declared [`python_need`].
pub fn python(modules: &[&str]) -> &'static str {
    python_with(modules).unwrap_or_else(|| {
        panic!(
            "no python3 can import {} although the test declared the need",
            modules.join(", ")
        )
    })
}

/// Running a command whose outcome the test knows.
pub trait Run {
    /// Runs the command to completion and returns its output; panics, naming the
    /// command, its exit status, stdout and stderr, when it cannot start or fails.
    fn succeeds(&mut self) -> std::process::Output;
    /// Runs the command to completion and returns its output; panics, naming the
    /// command, its exit status, stdout and stderr, unless it exits with `code`.
    fn exits(&mut self, code: i32) -> std::process::Output;
    /// Starts the command with stdout and stderr captured, for a test that signals or
    /// watches it before collecting its output.
    fn spawned(&mut self) -> std::process::Child;
}

impl Run for Command {
    fn succeeds(&mut self) -> std::process::Output {
        self.exits_as(|s| s.success())
    }

    fn exits(&mut self, code: i32) -> std::process::Output {
        self.exits_as(|s| s.code() == Some(code))
    }

    fn spawned(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {self:?}: {e}"))
    }
}

trait ExitsAs {
    fn exits_as(
        &mut self,
        expected: impl Fn(&std::process::ExitStatus) -> bool,
    ) -> std::process::Output;
}

impl ExitsAs for Command {
    fn exits_as(
        &mut self,
        expected: impl Fn(&std::process::ExitStatus) -> bool,
    ) -> std::process::Output {
        let out = self
            .output()
            .unwrap_or_else(|e| panic!("running {self:?}: {e}"));
        assert!(
            expected(&out.status),
            "{self:?} exited {}: {}",
            out.status,
            text(&out)
        );
        out
    }
}

/// The digest of the first manifest a layout's index.json lists.
pub fn first_manifest_digest(layout: &std::path::Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no manifest in {index}"))
        .to_string()
}

/// The layout's JSON blob `digest` (a manifest, a config).
pub fn json_blob(layout: &std::path::Path, digest: &str) -> serde_json::Value {
    let hex = digest.trim_start_matches("sha256:");
    serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

/// The manifest a layout's index.json lists first.
pub fn first_manifest(layout: &std::path::Path) -> serde_json::Value {
    json_blob(layout, &first_manifest_digest(layout))
}

/// The manifest digest a layout's index.json gives `tag`.
pub fn tagged_digest(layout: &std::path::Path, tag: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("tag {tag} not in {v}"))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The `diskforge` binary built for this test run.
pub fn diskforge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diskforge"));
    cmd.env_remove("RUST_LOG");
    cmd
}

/// stdout then stderr of a finished command, for assertions and their messages.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What `diskforge inspect --json ARGS` prints (the image reference among `args`),
/// which must succeed.
pub fn inspect_json(args: &[&str]) -> serde_json::Value {
    let out = diskforge()
        .args(["inspect", "--json"])
        .args(args)
        .succeeds();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Asserts that the stdout or stderr of a finished command contains `needle`; the
/// failure shows both.
#[track_caller]
pub fn assert_says(out: &std::process::Output, needle: &str) {
    let all = text(out);
    assert!(all.contains(needle), "{all}");
}

/// The stdout of a finished command that must have succeeded without any of `secrets`
/// in its output; `what` names it in the failure.
pub fn ok_without(out: &std::process::Output, what: &str, secrets: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    for secret in secrets {
        assert!(
            !stderr.contains(secret) && !String::from_utf8_lossy(&out.stdout).contains(secret),
            "{what}: a secret leaked"
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `yaml` to `file` and runs `diskforge validate FILE` with `env` set, which
/// must refuse it (exit 2); gives its stderr.
pub fn refused_by_validate(file: &std::path::Path, yaml: &str, env: &[(&str, &str)]) -> String {
    std::fs::write(file, yaml).unwrap();
    let out = diskforge()
        .arg("validate")
        .arg(file)
        .envs(env.iter().copied())
        .exits(2);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Takes the exclusive lock `dir/name` (created when missing) and holds it until the
/// returned file is dropped: fixtures built once per checkout are built by one test.
pub fn lock_in(dir: &std::path::Path, name: &str) -> std::fs::File {
    std::fs::create_dir_all(dir).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(name))
        .unwrap();
    lock.lock().unwrap();
    lock
}

/// [`diskforge`] with its cache and work directories inside `dir` (so a test sees
/// whether anything was created there) and a fixed SOURCE_DATE_EPOCH.
pub fn diskforge_in(dir: &std::path::Path) -> Command {
    let mut c = diskforge();
    c.env("DISKFORGE_CACHE_DIR", dir.join("cache"))
        .env("DISKFORGE_WORK_DIR", dir.join("work"))
        .env("SOURCE_DATE_EPOCH", "1767225600");
    c
}

/// [`diskforge_tcg`] with its cache in `cache` (kept across runs under target/ by the
/// tests that build guests).
pub fn diskforge_cached(cache: &std::path::Path) -> Command {
    let mut c = diskforge_tcg();
    c.arg("--cache-dir").arg(cache);
    c
}

/// Runs `cmd` with a stdout whose reader is already gone (`cmd | head -0`) and
/// returns its output (stderr captured).
pub fn with_closed_stdout(cmd: &mut Command) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    cmd.stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap()
}

/// A P-256 signing key (PKCS#8 PEM, as `openssl genpkey` writes it) at `key` and its
/// public key at `public`.
pub fn openssl_p256_key(key: &std::path::Path, public: &std::path::Path) {
    Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(key)
        .succeeds();
    Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(key)
        .arg("-out")
        .arg(public)
        .succeeds();
}

/// [`diskforge`] with libguestfs set up for machines without a working KVM.
pub fn diskforge_tcg() -> Command {
    let mut c = diskforge();
    guestfs_env(&mut c);
    c
}

/// libguestfs and QEMU settings for machines without a working KVM.
pub fn guestfs_env(cmd: &mut Command) -> &mut Command {
    cmd.env("LIBGUESTFS_BACKEND", "direct")
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
/// Sends `signal` (e.g. "INT") to `child` once `ready` holds (polled for up to
/// `ready_within`), then waits up to `exit_within` for it to exit. Returns its output.
pub fn interrupt_when(
    mut child: std::process::Child,
    signal: &str,
    ready: impl Fn() -> bool,
    ready_within: std::time::Duration,
    exit_within: std::time::Duration,
) -> std::process::Output {
    use wait_timeout::ChildExt;
    let start = std::time::Instant::now();
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "exited ({status}) before it was interrupted: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            start.elapsed() < ready_within,
            "never reached the point to interrupt"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
    let interrupted_at = std::time::Instant::now();
    if child.wait_timeout(exit_within).unwrap().is_none() {
        let _ = child.kill();
        panic!("still running {exit_within:?} after SIG{signal}");
    }
    eprintln!("exited {:?} after SIG{signal}", interrupted_at.elapsed());
    child.wait_with_output().unwrap()
}

/// Every path under `dir` whose name starts with `.tmp-` (a half-written file).
pub fn temp_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            out.push(p.clone());
        }
        if p.is_dir() {
            out.extend(temp_files(&p));
        }
    }
    out
}

/// How often `needle` occurs in the file at `path` (streamed; matches across read
/// boundaries count).
pub fn occurrences(path: &std::path::Path, needle: &[u8]) -> usize {
    use std::io::Read;
    assert!(!needle.is_empty());
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let mut carry: Vec<u8> = Vec::new();
    let mut count = 0;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return count;
        }
        let mut window = std::mem::take(&mut carry);
        window.extend_from_slice(&buf[..n]);
        count += window
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count();
        let keep = needle.len() - 1;
        carry = window[window.len().saturating_sub(keep)..].to_vec();
    }
}

/// Occurrences of `needle` in every regular file under `dir`.
pub fn occurrences_in_tree(dir: &std::path::Path, needle: &[u8]) -> usize {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                n += occurrences_in_tree(&p, needle);
            } else if m.is_file() {
                n += occurrences(&p, needle);
            }
        }
    }
    n
}

/// The (step, command line) pairs `plan --json` lists, in order.
pub fn planned_commands(plan_json: &[u8]) -> Vec<(String, String)> {
    let plan: serde_json::Value = serde_json::from_slice(plan_json)
        .unwrap_or_else(|e| panic!("plan --json: {e}: {}", String::from_utf8_lossy(plan_json)));
    plan["steps"]
        .as_array()
        .expect("plan steps")
        .iter()
        .flat_map(|s| {
            let step = s["step"].as_str().unwrap().to_string();
            s["commands"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |c| (step.clone(), c.as_str().unwrap().to_string()))
        })
        .collect()
}

/// The (step, command line) pairs a build with `--json-events` ran, from its `exec`
/// events, in order. Commands run while the recipe is resolved (reading a local base's
/// size, before the first step) carry no step: `plan` runs them too.
pub fn executed_commands(stderr: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "exec" && v["step"].is_string())
        .map(|v| {
            (
                v["step"].as_str().unwrap().to_string(),
                v["command"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Asserts that a build ran exactly the commands its plan listed, in order. The one
/// thing a plan cannot know is the blob name of a base not yet in the cache
/// (`diskforge::pipeline::BASE_NOT_YET_CACHED`): there the executed command must hold a
/// `$CACHE/blobs/sha256/<64 hex digits>` and be the planned one otherwise.
pub fn assert_ran_the_plan(executed: &[(String, String)], planned: &[(String, String)]) {
    let token = format!(
        "$CACHE/blobs/sha256/{}",
        diskforge::pipeline::BASE_NOT_YET_CACHED
    );
    let matches = |(es, ec): &(String, String), (ps, pc): &(String, String)| {
        if es != ps {
            return false;
        }
        let Some((before, after)) = pc.split_once(&token) else {
            return ec == pc;
        };
        let prefix = format!("{before}$CACHE/blobs/sha256/");
        let Some(rest) = ec.strip_prefix(&prefix) else {
            return false;
        };
        rest.len() >= 64
            && rest[..64].bytes().all(|b| b.is_ascii_hexdigit())
            && &rest[64..] == after
    };
    assert!(
        executed.len() == planned.len() && executed.iter().zip(planned).all(|(e, p)| matches(e, p)),
        "the build ran other commands than its plan listed:\n ran: {executed:#?}\n planned: {planned:#?}"
    );
}

/// The need for a file a setup script installs outside PATH (a linter, a verifier).
pub fn installed_need(path: fn() -> PathBuf, what: &str, setup: &'static str) -> Need {
    Need::check(what, setup, move || path().exists())
}

pub mod browser;
pub mod disk;
pub mod events;
pub mod guest;
pub mod hostile;
pub mod http;
pub mod kubevirt;
pub mod registry;
pub mod zoo;
