//! The one door every external command (qemu-img, guestfish, QEMU, gpgv, …) goes through.
//!
//! A [`Cmd`] carries a human description separate from its argv, runs with stdin
//! closed, logs its argv at debug level with secrets redacted, captures stderr and
//! puts its tail into the error, and can time out. [`Cmd::run_json`] parses JSON output
//! straight into serde types.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use wait_timeout::ChildExt;

/// How many bytes of stderr end up in an error message.
const STDERR_TAIL: usize = 4096;

pub use crate::redact::REDACTED;

/// A program diskforge needs is not installed (exit status 3).
#[derive(Debug, thiserror::Error)]
#[error("{program} is not installed or not on PATH{} (ci/setup-system.sh installs every tool diskforge uses)", package_hint(program))]
pub struct MissingTool {
    pub program: String,
}

/// The Debian package that provides `program`, as a hint.
fn package_hint(program: &str) -> String {
    let package = match program.rsplit('/').next().unwrap_or(program) {
        "qemu-img" => "qemu-utils",
        "guestfish" | "virt-customize" | "virt-sparsify" => "libguestfs-tools",
        "qemu-system-x86_64" => "qemu-system-x86",
        "qemu-system-aarch64" => "qemu-system-arm",
        "gpgv" => "gpgv",
        "sqv" => "sqv",
        "git" => "git",
        "setpriv" => "util-linux",
        "skopeo" => "skopeo",
        n if n.starts_with("OVMF_") => "ovmf",
        _ => return String::new(),
    };
    format!(": Debian package {package}")
}

/// An external command about to run.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    description: String,
    secrets: Vec<String>,
    timeout: Option<Duration>,
    current_dir: Option<std::path::PathBuf>,
    input: Option<Vec<u8>>,
    cleanup: bool,
    internal: bool,
    /// Non-zero exit codes that still mean the command did its job.
    ok_codes: Vec<i32>,
    /// Started through `setpriv --pdeathsig KILL`: the kernel kills it when diskforge
    /// dies, however it dies.
    die_with_parent: bool,
    /// Directories shown by name in [`Cmd::display`].
    names: PathNames,
}

/// What a finished command left behind.
#[derive(Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Output {
    /// stdout as UTF-8 (lossy), trimmed of the trailing newline.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim_end().to_string()
    }
}

impl Cmd {
    /// A command with a description of what it does ("growing /dev/sda1 of disk.qcow2").
    pub fn new(program: impl AsRef<OsStr>, description: impl Into<String>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            description: description.into(),
            secrets: Vec::new(),
            timeout: None,
            current_dir: None,
            input: None,
            cleanup: false,
            internal: false,
            ok_codes: Vec::new(),
            die_with_parent: false,
            names: PathNames::default(),
        }
    }

    /// Shows the directories of `names` by name in [`Cmd::display`].
    pub fn named(mut self, names: &PathNames) -> Self {
        self.names = names.clone();
        self
    }

    /// Ties a long-running child (QEMU) to diskforge's life: it is started through
    /// util-linux's `setpriv --pdeathsig KILL`, which asks the kernel to send it SIGKILL
    /// when the thread that started it exits, so a SIGKILL or a second Ctrl-C of
    /// diskforge, which skip every cleanup guard, cannot leave it running with its
    /// forwarded ports. (`prctl` from a `pre_exec` hook would need unsafe code, which
    /// the crate forbids.) Start such a child from a thread that lives as long as it
    /// should: the main thread.
    pub fn die_with_parent(mut self) -> Self {
        self.die_with_parent = true;
        self
    }

    /// The program and arguments actually executed.
    fn argv(&self) -> (OsString, Vec<OsString>) {
        if !self.die_with_parent {
            return (self.program.clone(), self.args.clone());
        }
        let mut args: Vec<OsString> = ["--pdeathsig", "KILL", "--"]
            .iter()
            .map(OsString::from)
            .collect();
        args.push(self.program.clone());
        args.extend(self.args.iter().cloned());
        (OsString::from("setpriv"), args)
    }

    /// A `std::process::Command` for [`Cmd::argv`] with the environment and directory.
    fn command(&self) -> Command {
        let (program, args) = self.argv();
        let mut command = Command::new(program);
        command.args(args);
        for (k, v) in &self.envs {
            command.env(k, v);
        }
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        command
    }

    /// Treats exit code `code` as success too: for tools whose exit code reports a
    /// finding (`qemu-img check`: 2 corruptions, 3 leaks) that the caller reads from
    /// their output.
    pub fn ok_code(mut self, code: i32) -> Self {
        self.ok_codes.push(code);
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.current_dir = Some(dir.as_ref().to_owned());
        self
    }

    /// A value that must never be shown: it is replaced by `***` in logs and errors.
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        let s = secret.into();
        if !s.is_empty() {
            self.secrets.push(s);
        }
        self
    }

    /// Bytes written to the command's stdin (otherwise stdin is closed): for programs
    /// that take their input there, such as credential helpers. Never logged.
    pub fn input(mut self, data: Vec<u8>) -> Self {
        self.input = Some(data);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Marks a cleanup command (stopping a server, removing a mount): it runs to the end
    /// even after Ctrl-C, where every other command is killed.
    pub fn cleanup(mut self) -> Self {
        self.cleanup = true;
        self
    }

    /// Marks an operation inside a running tool (a `guestfish --remote` call) rather
    /// than a process of its own: it is not reported as an `exec` event.
    pub fn internal(mut self) -> Self {
        self.internal = true;
        self
    }

    /// Reports the command as an `exec` event (with the step that runs it).
    fn report(&self) {
        tracing::debug!(command = %self.display(), "{}", self.description);
        if !self.internal {
            crate::progress::event(
                "exec",
                serde_json::json!({"command": self.display(), "description": self.description}),
            );
        }
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn program(&self) -> &OsStr {
        &self.program
    }

    /// The argv as one shell-quoted line with secrets redacted and the directories of
    /// its [`PathNames`] written by name (`$WORK`, `$CACHE`), for logs,
    /// events and plans.
    pub fn display(&self) -> String {
        let (program, args) = self.argv();
        let mut words = vec![shell_quote(&program.to_string_lossy())];
        words.extend(args.iter().map(|a| shell_quote(&a.to_string_lossy())));
        redact(&self.names.apply(&words.join(" ")), &self.secrets)
    }

    /// Runs to completion; a non-zero exit is an error carrying the stderr tail.
    pub fn run(&self) -> Result<Output> {
        self.report();
        let started = Instant::now();
        let mut command = self.command();
        command
            .stdin(if self.input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| self.spawn_error(e))?;
        if let (Some(data), Some(mut stdin)) = (self.input.clone(), child.stdin.take()) {
            std::thread::spawn(move || {
                let _ = std::io::Write::write_all(&mut stdin, &data);
            });
        }
        // Drain both pipes on their own threads so a chatty child never blocks on a full pipe.
        let mut out_pipe = child.stdout.take().expect("stdout is piped");
        let mut err_pipe = child.stderr.take().expect("stderr is piped");
        let out_thread = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out_pipe.read_to_end(&mut buf);
            buf
        });
        let err_thread = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err_pipe.read_to_end(&mut buf);
            buf
        });
        // Wait in short slices: a timeout or Ctrl-C kills the child.
        let status = loop {
            if let Some(status) = child
                .wait_timeout(Duration::from_millis(100))
                .context("waiting for a child")?
            {
                break status;
            }
            if !self.cleanup && crate::sys::interrupt::interrupted() {
                let _ = child.kill();
                let _ = child.wait();
                return Err(crate::sys::interrupt::error())
                    .with_context(|| format!("{}: stopped", self.description));
            }
            if let Some(limit) = self.timeout {
                if started.elapsed() >= limit {
                    let _ = child.kill();
                    let _ = child.wait();
                    let stderr = err_thread.join().unwrap_or_default();
                    bail!(
                        "{}: timed out after {}s: {}{}",
                        self.description,
                        limit.as_secs(),
                        self.display(),
                        self.tail(&stderr)
                    );
                }
            }
        };
        if !status.success() && !self.cleanup && crate::sys::interrupt::interrupted() {
            // The child got the terminal's Ctrl-C too: report the interruption, not its exit.
            return Err(crate::sys::interrupt::error())
                .with_context(|| format!("{}: stopped", self.description));
        }
        let stdout = out_thread.join().unwrap_or_default();
        let stderr = err_thread.join().unwrap_or_default();
        let elapsed = started.elapsed();
        tracing::debug!(
            status = %status,
            elapsed_ms = elapsed.as_millis() as u64,
            "{} finished",
            self.description
        );
        let accepted =
            status.success() || status.code().is_some_and(|c| self.ok_codes.contains(&c));
        if !accepted {
            let mut tail = self.tail(&stderr);
            if tail.is_empty() {
                // Some tools (guestfish, virt-customize) report on stdout.
                tail = self.tail(&stdout);
            }
            bail!(
                "{}: `{}` failed ({}){}",
                self.description,
                self.display(),
                status,
                tail
            );
        }
        Ok(Output {
            stdout,
            stderr,
            elapsed,
        })
    }

    /// Starts the command and checks that it is still running after `grace`; it is then
    /// killed. Used to probe whether a long-running program (QEMU with KVM) can start at
    /// all: an early exit is an error carrying its output tail.
    pub fn stays_up(&self, grace: Duration) -> Result<()> {
        self.report();
        let mut command = self.command();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| self.spawn_error(e))?;
        let mut err_pipe = child.stderr.take().expect("stderr is piped");
        let err_thread = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err_pipe.read_to_end(&mut buf);
            buf
        });
        match child.wait_timeout(grace).context("waiting for a child")? {
            None => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = err_thread.join();
                Ok(())
            }
            Some(status) => {
                let stderr = err_thread.join().unwrap_or_default();
                bail!(
                    "{}: `{}` exited early ({}){}",
                    self.description,
                    self.display(),
                    status,
                    self.tail(&stderr)
                )
            }
        }
    }

    /// Starts a long-running command (a VM) and returns its handle; stdin is closed,
    /// stdout and stderr go where the caller says. The caller owns the child's lifetime.
    pub fn spawn(&self, stdout: Stdio, stderr: Stdio) -> Result<std::process::Child> {
        self.report();
        let mut command = self.command();
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        command.spawn().map_err(|e| self.spawn_error(e))
    }

    fn spawn_error(&self, e: std::io::Error) -> anyhow::Error {
        let program = self.argv().0.to_string_lossy().into_owned();
        if e.kind() == std::io::ErrorKind::NotFound {
            return anyhow::Error::new(MissingTool { program })
                .context(format!("{}: cannot start the program", self.description));
        }
        anyhow::Error::new(e).context(format!("{}: cannot start {program}", self.description))
    }

    /// Runs and parses stdout as JSON into `T`.
    pub fn run_json<T: DeserializeOwned>(&self) -> Result<T> {
        let out = self.run()?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "{}: cannot parse the JSON output of `{}`",
                self.description,
                self.display()
            )
        })
    }

    fn tail(&self, bytes: &[u8]) -> String {
        // Masked before it is cut, so the cut cannot leave part of a secret behind.
        let text = redact(String::from_utf8_lossy(bytes).trim(), &self.secrets);
        if text.is_empty() {
            return String::new();
        }
        let start = text.len().saturating_sub(STDERR_TAIL);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        format!("\n--- output tail ---\n{}", &text[start..])
    }
}

/// Directories shown by name in command lines (`$WORK`, `$CACHE`), so a plan and the
/// build it describes print the same commands wherever their files live. A value the
/// plan holds and gives to the commands it makes; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PathNames(std::sync::Arc<Vec<(String, String)>>);

impl PathNames {
    /// `(directory, name)` pairs.
    pub fn new(pairs: &[(&Path, &str)]) -> PathNames {
        let mut v: Vec<(String, String)> = pairs
            .iter()
            .map(|(d, n)| {
                (
                    d.to_string_lossy().trim_end_matches('/').to_string(),
                    n.to_string(),
                )
            })
            .filter(|(d, _)| !d.is_empty())
            .collect();
        // Longest first: a work directory inside the cache is shown as `$WORK`.
        v.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        PathNames(std::sync::Arc::new(v))
    }

    fn apply(&self, line: &str) -> String {
        let mut out = line.to_string();
        for (prefix, name) in self.0.iter() {
            out = out.replace(prefix.as_str(), name);
        }
        out
    }
}

/// Replaces every occurrence of each secret (the given ones and the registered ones)
/// by `***`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    crate::redact::apply(text, secrets)
}

/// Adds a value that must never be shown, anywhere.
pub fn register_secret(value: &str) {
    crate::redact::register(value)
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+%^".contains(&b));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// True when `program` is found on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Kills `pid` and all its descendants, for helpers that run in their
/// own session (the libguestfs server and its appliance). SIGTERM, then SIGKILL after
/// `grace` for whatever is still alive. The tree is listed before the first signal and
/// parents go first, so nothing gets the chance to start a replacement child.
pub fn kill_tree(pid: u32, grace: std::time::Duration) {
    let mut all = vec![pid];
    all.extend(descendants(pid).into_iter().rev());
    for p in &all {
        send(*p, "TERM");
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if all.iter().all(|p| !alive(*p)) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for p in all.iter().filter(|p| alive(**p)) {
        send(*p, "KILL");
    }
}

fn send(pid: u32, sig: &str) {
    // It may have exited on its own meanwhile: a failing `kill` is fine.
    let _ = Cmd::new("kill", format!("sending SIG{sig} to process {pid}"))
        .internal()
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .cleanup()
        .run();
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Every descendant of `pid`, deepest first.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    for t in tasks {
        let children = std::fs::read_to_string(t.join("children")).unwrap_or_default();
        for c in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            out.extend(descendants(c));
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_and_redacts() {
        let cmd = Cmd::new("virt-customize", "customizing")
            .args([
                "-a",
                "disk one.qcow2",
                "--password",
                "root:password:hunter2",
            ])
            .secret("hunter2");
        assert_eq!(
            cmd.display(),
            "virt-customize -a 'disk one.qcow2' --password root:password:***"
        );
    }

    #[test]
    fn commands_show_their_named_directories_and_no_others() {
        let names = PathNames::new(&[
            (Path::new("cache/builds/build-1/"), "$WORK"),
            (Path::new("cache"), "$CACHE"),
        ]);
        let cmd = |n: Option<&PathNames>| {
            let c = Cmd::new("qemu-img", "converting").args([
                "convert",
                "cache/builds/build-1/o.qcow2",
                "cache/blobs/x",
            ]);
            match n {
                Some(n) => c.named(n),
                None => c,
            }
        };
        assert_eq!(
            cmd(Some(&names)).display(),
            "qemu-img convert $WORK/o.qcow2 $CACHE/blobs/x"
        );
        // Nothing set on this thread or elsewhere changes another command's line.
        assert_eq!(
            cmd(None).display(),
            "qemu-img convert cache/builds/build-1/o.qcow2 cache/blobs/x"
        );
    }

    #[test]
    fn failure_carries_stderr_tail_and_description() {
        let err = Cmd::new("sh", "failing on purpose")
            .args(["-c", "echo 'secret-xyz broke' >&2; exit 3"])
            .secret("secret-xyz")
            .run()
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("failing on purpose"), "{msg}");
        assert!(msg.contains("*** broke"), "{msg}");
        assert!(!msg.contains("secret-xyz"), "{msg}");
    }

    #[test]
    fn a_secret_cut_by_the_tail_leaves_no_piece_behind() {
        // The secret straddles the start of the 4096-byte tail.
        let secret = "S3cret-Straddling-The-Cut";
        let script = format!(
            "printf '%s%s' '{secret}' \"$(head -c 4090 /dev/zero | tr '\\0' x)\" >&2; exit 1"
        );
        let err = Cmd::new("sh", "failing on purpose")
            .args(["-c", &script])
            .secret(secret)
            .run()
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("xxxx"), "{msg}");
        for piece in ["Cut", "The-Cut", "Straddling"] {
            assert!(!msg.contains(piece), "a piece of the secret: {piece}");
        }
    }

    #[test]
    fn timeout_kills_the_child() {
        let started = Instant::now();
        let err = Cmd::new("sleep", "sleeping")
            .arg("30")
            .timeout(Duration::from_millis(200))
            .run()
            .unwrap_err();
        assert!(format!("{err:#}").contains("timed out"));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn run_json_parses_output() {
        #[derive(serde::Deserialize)]
        struct V {
            a: u32,
        }
        let v: V = Cmd::new("echo", "printing json")
            .arg(r#"{"a": 7}"#)
            .run_json()
            .unwrap();
        assert_eq!(v.a, 7);
    }

    #[test]
    fn missing_program_is_named() {
        let err = Cmd::new("no-such-tool-diskforge", "probing")
            .run()
            .unwrap_err();
        assert!(format!("{err:#}").contains("no-such-tool-diskforge is not installed"));
        assert_eq!(
            err.downcast_ref::<MissingTool>().unwrap().program,
            "no-such-tool-diskforge"
        );
        let known = MissingTool {
            program: "/usr/bin/virt-customize".into(),
        };
        assert!(known
            .to_string()
            .contains("not on PATH: Debian package libguestfs-tools"));
    }
    #[test]
    fn kill_tree_stops_a_process_and_its_children() {
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 300 & sleep 300 & wait; sleep 300")
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let kids = descendants(child.id());
        assert_eq!(kids.len(), 2, "two sleeps under the shell: {kids:?}");
        kill_tree(child.id(), std::time::Duration::from_secs(5));
        let status = child.wait().unwrap();
        assert!(!status.success());
        for k in kids {
            assert!(!alive(k), "{k} survived");
        }
    }
}
