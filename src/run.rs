//! `diskforge run`: boot an image or a disk locally in QEMU on a copy-on-write overlay
//! (the artifact is never modified), with ttyd and SSH forwarded to free localhost
//! ports. `--check` waits until the guest boots and ttyd serves its page and a websocket
//! session that shows a login prompt (optionally logging in), then stops the VM.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cli::{GlobalOpts, RunArgs};
use crate::exec::Cmd;
use crate::oci::ImageRef;

/// A disk ready to boot, with whatever temp dir holds it.
pub struct BootDisk {
    pub path: PathBuf,
    pub format: String,
    _temp: Option<tempfile::TempDir>,
}

/// Resolves `IMAGE|oci:DIR[:TAG]|oci-archive:FILE|docker://…|DISK` to a disk file; images
/// are unpacked (streaming) into a temp dir under `work`.
pub fn boot_disk(image: &str, tls_verify: bool, work: &Path) -> Result<BootDisk> {
    let is_ref = image.starts_with("oci:")
        || image.starts_with("oci-archive:")
        || image.starts_with("docker://");
    if !is_ref {
        let path = PathBuf::from(image);
        let info = crate::qemu_img::info(&path)?;
        return Ok(BootDisk {
            path,
            format: info.format,
            _temp: None,
        });
    }
    let r = ImageRef::parse(image)?;
    let reg = crate::registry::RegistryOptions {
        tls_verify,
        ..Default::default()
    };
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let img = crate::oci::read::open_image(&r, &reg, work)?;
    let temp = tempfile::Builder::new()
        .prefix("diskforge-run-")
        .tempdir_in(work)
        .context("creating a temp dir for the disk")?;
    let (_, disk) = crate::oci::read::scan_layers(&img, Some(temp.path()))?;
    let (path, header) = disk.with_context(|| format!("{image} holds no disk under /disk"))?;
    Ok(BootDisk {
        path,
        format: header.format.to_string(),
        _temp: Some(temp),
    })
}

impl BootDisk {
    /// A disk file that is already on disk.
    pub fn from_file(path: PathBuf, format: &str) -> BootDisk {
        BootDisk {
            path,
            format: format.to_string(),
            _temp: None,
        }
    }
}

/// Waits until ttyd serves its page on the VM's forwarded port.
pub fn wait_for_ttyd(vm: &mut Vm, deadline: Instant) -> Result<()> {
    loop {
        crate::interrupt::check()?;
        if let Some(s) = vm.exited() {
            bail!(
                "QEMU exited ({s}) before ttyd answered\n{}",
                vm.serial_tail(40)
            );
        }
        if http_get(vm.ttyd_port, "/")
            .map(|b| b.to_lowercase().contains("ttyd"))
            .unwrap_or(false)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "timed out waiting for ttyd\n--- serial console ---\n{}",
                vm.serial_tail(40)
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free localhost port")?;
    Ok(l.local_addr()?.port())
}

/// A running VM; killed on drop.
pub struct Vm {
    child: Child,
    pub serial_log: PathBuf,
    pub ttyd_port: u16,
    pub ssh_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    /// The last `n` lines of the serial console.
    pub fn serial_tail(&self, n: usize) -> String {
        let text = std::fs::read(&self.serial_log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// VM settings.
pub struct VmOptions {
    pub memory_mib: u32,
    pub cpus: u32,
    pub guest_ttyd_port: u16,
    pub console: bool,
    pub accel: crate::accel::Effective,
}

/// Boots `disk` on a fresh overlay.
pub fn start_vm(disk: &BootDisk, o: &VmOptions, work: &Path) -> Result<Vm> {
    let dir = tempfile::Builder::new()
        .prefix("diskforge-vm-")
        .tempdir_in(work)
        .context("creating the VM directory")?;
    let overlay = dir.path().join("overlay.qcow2");
    Cmd::new("qemu-img", "creating a throwaway overlay for the VM")
        .args(["create", "-q", "-f", "qcow2", "-F", &disk.format, "-b"])
        .arg(
            std::fs::canonicalize(&disk.path)
                .with_context(|| format!("resolving {}", disk.path.display()))?,
        )
        .arg(&overlay)
        .run()?;
    let ttyd_port = free_port()?;
    let ssh_port = free_port()?;
    let serial_log = dir.path().join("serial.log");
    let mut nic = format!("user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{ssh_port}-:22");
    if o.guest_ttyd_port != 0 {
        nic.push_str(&format!(
            ",hostfwd=tcp:127.0.0.1:{ttyd_port}-:{}",
            o.guest_ttyd_port
        ));
    }
    let mut cmd = Cmd::new("qemu-system-x86_64", "booting the VM")
        .args(o.accel.qemu_args())
        .args([
            "-machine",
            "q35",
            "-m",
            &o.memory_mib.to_string(),
            "-smp",
            &o.cpus.to_string(),
        ])
        .args(["-display", "none", "-no-user-config", "-nodefaults"])
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=qcow2,cache=unsafe",
            overlay.display()
        ))
        .args(["-nic", &nic])
        .args(["-device", "virtio-rng-pci"]);
    cmd = if o.console {
        cmd.args(["-serial", "mon:stdio"])
    } else {
        cmd.arg("-serial")
            .arg(format!("file:{}", serial_log.display()))
    };
    let (out, err) = if o.console {
        (Stdio::inherit(), Stdio::inherit())
    } else {
        (Stdio::null(), Stdio::inherit())
    };
    let child = cmd.spawn(out, err)?;
    Ok(Vm {
        child,
        serial_log,
        ttyd_port,
        ssh_port,
        _dir: dir,
    })
}

/// `diskforge run`.
pub fn cmd_run(global: &GlobalOpts, args: RunArgs) -> Result<ExitCode> {
    let work = global.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let disk = boot_disk(&args.image, args.tls_verify, &work)?;
    let accel = crate::accel::resolve(global.accel)?;
    let mut vm = start_vm(
        &disk,
        &VmOptions {
            memory_mib: args.memory,
            cpus: args.cpus,
            guest_ttyd_port: args.ttyd_port,
            console: args.console && !args.check,
            accel,
        },
        &work,
    )?;
    if !args.check {
        if args.ttyd_port != 0 {
            println!("ttyd:  http://127.0.0.1:{}/", vm.ttyd_port);
        }
        println!("ssh:   ssh -p {} USER@127.0.0.1", vm.ssh_port);
        if !args.console {
            println!("serial console log: {}", vm.serial_log.display());
        }
        println!("(the VM runs on a throwaway overlay; Ctrl-C stops it)");
        let status = loop {
            if let Some(s) = vm.child.try_wait().context("waiting for QEMU")? {
                break s;
            }
            if crate::interrupt::interrupted() {
                // Ctrl-C is how this VM is meant to end: dropping `vm` stops QEMU and
                // removes the overlay.
                drop(vm);
                crate::progress::say("stopped the VM and removed its overlay");
                return Ok(ExitCode::SUCCESS);
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        return Ok(if status.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let login = args.login.as_deref().map(|l| {
        l.split_once(':')
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .context("--login must be USER:PASSWORD")
    });
    let login = login.transpose()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout);
    let result = check(&mut vm, &args, login.as_ref(), deadline);
    match result {
        Ok(report) => {
            print!("{report}");
            println!(
                "check passed in {}",
                crate::progress::format_duration(started.elapsed())
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let tail = vm.serial_tail(40);
            let mut msg = format!("{e:#}\n--- serial console (last 40 lines) ---\n{tail}");
            if let Some((_, p)) = &login {
                msg = crate::exec::redact(&msg, std::slice::from_ref(p));
            }
            bail!(msg)
        }
    }
}

fn check(
    vm: &mut Vm,
    args: &RunArgs,
    login: Option<&(String, String)>,
    deadline: Instant,
) -> Result<String> {
    let stage = crate::progress::stage("boot", "waiting for the guest to boot");
    if args.ttyd_port == 0 {
        loop {
            crate::interrupt::check()?;
            if let Some(s) = vm.exited() {
                bail!("QEMU exited ({s}) before the guest showed a login prompt");
            }
            if std::fs::read(&vm.serial_log)
                .map(|b| String::from_utf8_lossy(&b).contains("login:"))
                .unwrap_or(false)
            {
                stage.done();
                return Ok("serial console: login prompt seen\n".into());
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {}s waiting for a login prompt on the serial console",
                    args.timeout
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    let port = vm.ttyd_port;
    // 1. The ttyd page over HTTP.
    loop {
        crate::interrupt::check()?;
        if let Some(s) = vm.exited() {
            bail!("QEMU exited ({s}) before ttyd answered");
        }
        if let Ok(body) = http_get(port, "/") {
            if body.to_lowercase().contains("ttyd") {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {}s waiting for ttyd on http://127.0.0.1:{port}/",
                args.timeout
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    stage.done();
    let mut report = format!("ttyd page: http://127.0.0.1:{port}/ answered\n");
    // 2. A terminal session that reaches a login prompt.
    let stage = crate::progress::stage("ttyd", "opening a ttyd websocket session");
    let mut ws = Ws::connect(port)?;
    ws.send(br#"{"AuthToken":"","columns":100,"rows":30}"#)?;
    // Some gettys only print the prompt after a key press.
    let mut seen = String::new();
    let mut nudged = Instant::now();
    ws.send(b"0\r")?;
    while !seen.contains("login:") {
        if Instant::now() > deadline {
            bail!(
                "timed out waiting for a login prompt in the ttyd session; it showed: {:?}",
                tail(&seen)
            );
        }
        seen.push_str(&ws.read_output(Duration::from_secs(3))?);
        if nudged.elapsed() > Duration::from_secs(10) {
            ws.send(b"0\r")?;
            nudged = Instant::now();
        }
    }
    stage.done();
    report.push_str("ttyd session: login prompt seen\n");
    if let Some((user, password)) = login {
        let stage = crate::progress::stage("login", format!("logging in as {user} over ttyd"));
        ws.send(format!("0{user}\r").as_bytes())?;
        wait_for(&mut ws, &["assword:"], deadline)?;
        ws.send(format!("0{password}\r").as_bytes())?;
        let after = wait_for(&mut ws, &["$ ", "# ", "incorrect"], deadline)?;
        if after.contains("incorrect") {
            bail!("login as {user} over ttyd failed: Login incorrect");
        }
        let command = args.command.clone().unwrap_or_else(|| {
            "id -un; df -B1 --output=size / | tail -n1; cat /etc/machine-id".to_string()
        });
        // The quotes keep the markers out of the terminal's echo of the typed line.
        ws.send(
            format!("0echo DISKFORGE-\"\"BEGIN; {command}; echo DISKFORGE-\"\"END\r").as_bytes(),
        )?;
        let out = wait_for(&mut ws, &["DISKFORGE-END\r\n", "DISKFORGE-END\n"], deadline)?;
        let body = out
            .rsplit_once("DISKFORGE-BEGIN")
            .map(|(_, b)| b)
            .unwrap_or(&out)
            .split("DISKFORGE-END")
            .next()
            .unwrap_or("")
            .replace('\r', "");
        stage.done();
        report.push_str(&format!(
            "logged in as {user}; command output:\n{}\n",
            body.trim()
        ));
        let _ = ws.send(b"0exit\r");
    }
    Ok(report)
}

fn tail(s: &str) -> String {
    let start = s.len().saturating_sub(300);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    s[start..].to_string()
}

fn wait_for(ws: &mut Ws, needles: &[&str], deadline: Instant) -> Result<String> {
    let mut seen = String::new();
    loop {
        crate::interrupt::check()?;
        if needles.iter().any(|n| seen.contains(n)) {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            bail!(
                "timed out waiting for {:?} in the ttyd session; it showed: {:?}",
                needles,
                tail(&seen)
            );
        }
        seen.push_str(&ws.read_output(Duration::from_secs(3))?);
    }
}

/// GET `path` from 127.0.0.1:port; the body on 200.
pub fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
        bail!("HTTP {}", text.lines().next().unwrap_or(""));
    }
    Ok(text)
}

/// A minimal RFC 6455 client speaking ttyd's `tty` protocol: client messages are binary
/// frames (masked); the first byte of each message is its type (`0` = terminal data).
struct Ws {
    s: std::io::BufReader<TcpStream>,
}

impl Ws {
    fn connect(port: u16) -> Result<Ws> {
        let stream = TcpStream::connect(("127.0.0.1", port)).context("connecting to ttyd")?;
        let key = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            rand_bytes::<16>(),
        );
        let mut w = stream.try_clone()?;
        write!(
            w,
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: tty\r\n\r\n"
        )?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut s = std::io::BufReader::new(stream);
        let mut status = String::new();
        s.read_line(&mut status)
            .context("reading the websocket handshake")?;
        if !status.contains(" 101") {
            bail!("ttyd refused the websocket upgrade: {}", status.trim());
        }
        loop {
            let mut l = String::new();
            s.read_line(&mut l)?;
            if l == "\r\n" || l.is_empty() {
                break;
            }
        }
        Ok(Ws { s })
    }

    fn send(&mut self, payload: &[u8]) -> Result<()> {
        let mut frame = vec![0x82u8];
        let n = payload.len();
        if n < 126 {
            frame.push(0x80 | n as u8);
        } else if n < 65536 {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
        let mask = rand_bytes::<4>();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.s
            .get_mut()
            .write_all(&frame)
            .context("writing to the ttyd websocket")?;
        Ok(())
    }

    /// Terminal output received within `wait` (possibly empty).
    fn read_output(&mut self, wait: Duration) -> Result<String> {
        self.s.get_ref().set_read_timeout(Some(wait))?;
        let mut out = String::new();
        let mut hdr = [0u8; 2];
        match self.s.read_exact(&mut hdr) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(out)
            }
            Err(e) => return Err(e).context("reading from the ttyd websocket"),
        }
        self.s
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))?;
        let opcode = hdr[0] & 0x0f;
        let mut len = (hdr[1] & 0x7f) as u64;
        if len == 126 {
            let mut b = [0u8; 2];
            self.s.read_exact(&mut b)?;
            len = u16::from_be_bytes(b) as u64;
        } else if len == 127 {
            let mut b = [0u8; 8];
            self.s.read_exact(&mut b)?;
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        self.s.read_exact(&mut payload)?;
        match opcode {
            0x8 => bail!("ttyd closed the websocket session"),
            0x0..=0x2 if payload.first() == Some(&b'0') => {
                out.push_str(&String::from_utf8_lossy(&payload[1..]));
            }
            _ => {}
        }
        Ok(out)
    }
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b
}
