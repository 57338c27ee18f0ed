//! Hostile files: layouts whose blobs are not files, disks that are corrupt or
//! encrypted, layers that expand without end, and what interrupted commands leave
//! behind. Each test is an attack or an accident that worked once, and must now fail
//! cleanly, within bounded time and memory, leaving nothing behind.

use crate::common;
use common::Run;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::hostile::{layout_with_layer, tar, with_peak_rss};
use sha2::Digest as _;

use common::diskforge_tcg as df;

use common::text;

fn sha_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// Creates a real qcow2 of `size` at `path` with `qemu-img create` and extra `args`.
fn qemu_img_create(path: &Path, size: &str, args: &[&str]) {
    Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .args(args)
        .arg(path)
        .arg(size)
        .succeeds();
}

/// The entries of `dir` (empty when it does not exist).
fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// A layout whose layer blob (or config blob) is a FIFO, a directory, a link to a
/// device or a link to a file outside the layout: `verify` and `inspect` refuse it by
/// name within seconds, instead of blocking in `open` forever, and leave nothing in
/// their scratch directory.
fn blobs_that_are_not_regular_files_are_refused_at_once() {
    let t = tempfile::tempdir().unwrap();
    let disk_path = t.path().join("small.qcow2");
    qemu_img_create(&disk_path, "8M", &[]);
    let disk = std::fs::read(&disk_path).unwrap();
    let layer = tar(&[
        ("disk/", b'5', b"", 107, 0o555),
        ("disk/disk.qcow2", b'0', &disk, 107, 0o440),
    ]);
    let layer_hex = sha_hex(&layer);
    // The real layer, kept outside every layout, for the link case.
    let outside = t.path().join("outside-layer");
    std::fs::write(&outside, &layer).unwrap();
    type Replace = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Replace, &str)> = vec![
        (
            "fifo",
            Box::new(|p: &Path| {
                assert!(Command::new("mkfifo").arg(p).status().unwrap().success());
            }),
            "not a regular file",
        ),
        (
            "dir",
            Box::new(|p: &Path| std::fs::create_dir(p).unwrap()),
            "not a regular file",
        ),
        (
            "device",
            Box::new(|p: &Path| std::os::unix::fs::symlink("/dev/zero", p).unwrap()),
            "outside the layout",
        ),
        (
            "link-out",
            Box::new(move |p: &Path| std::os::unix::fs::symlink(&outside, p).unwrap()),
            "outside the layout",
        ),
    ];
    for (name, replace, why) in &cases {
        let layout = t.path().join(name);
        layout_with_layer(&layout, &layer, None);
        let blob = layout.join("blobs/sha256").join(&layer_hex);
        std::fs::remove_file(&blob).unwrap();
        replace(&blob);
        let scratch = t.path().join(format!("scratch-{name}"));
        std::fs::create_dir(&scratch).unwrap();
        for cmd in ["verify", "inspect"] {
            let started = Instant::now();
            let (out, rss_kib) = with_peak_rss(
                df().arg("--work-dir")
                    .arg(&scratch)
                    .arg(cmd)
                    .arg(format!("oci:{}:t", layout.display())),
                Duration::from_secs(30),
            );
            let took = started.elapsed();
            let msg = text(&out);
            assert!(!out.status.success(), "{cmd} accepted a {name} blob: {msg}");
            assert!(
                msg.contains(why) && msg.contains(&layer_hex),
                "{cmd}, {name}: the error must name the blob and why: {msg}"
            );
            assert!(
                took < Duration::from_secs(5),
                "{cmd}, {name}: took {took:?}"
            );
            assert!(rss_kib < 100 << 10, "{cmd}, {name}: peak RSS {rss_kib} KiB");
            assert!(
                entries(&scratch).is_empty(),
                "{cmd}, {name}: left behind {:?}",
                entries(&scratch)
            );
        }
    }
    // The config blob as a FIFO: refused the same way before anything reads it.
    let layout = t.path().join("config-fifo");
    layout_with_layer(&layout, &layer, None);
    let manifest = common::first_manifest(&layout);
    let config_hex = manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let config = layout.join("blobs/sha256").join(&config_hex);
    std::fs::remove_file(&config).unwrap();
    Command::new("mkfifo").arg(&config).succeeds();
    for cmd in ["verify", "inspect"] {
        let started = Instant::now();
        let (out, _) = with_peak_rss(
            df().arg(cmd).arg(format!("oci:{}:t", layout.display())),
            Duration::from_secs(30),
        );
        let msg = text(&out);
        assert!(!out.status.success(), "{cmd}: {msg}");
        assert!(
            msg.contains("not a regular file") && msg.contains(&config_hex),
            "{cmd}: {msg}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{cmd}");
    }
}

/// A real qcow2 with 40 MiB of data, cut in half: its header still reads, but
/// `qemu-img check` finds clusters past the end of the file.
fn truncated_qcow2(path: &Path) {
    qemu_img_create(path, "64M", &[]);
    Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xab 0 40M"])
        .arg(path)
        .succeeds();
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
}

/// A LUKS-encrypted qcow2, as `qemu-img create` makes one.
fn encrypted_qcow2(path: &Path) {
    qemu_img_create(
        path,
        "64M",
        &[
            "--object",
            "secret,id=sec0,data=x",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0",
        ],
    );
}

/// A qcow2 cut in half and a LUKS-encrypted qcow2: `pack` refuses both (and creates no
/// layout), `verify` of an image holding one fails the contract (exit 4) instead of
/// saying "contract satisfied", `run` refuses them before starting QEMU, and `build`
/// refuses them as a local base. KubeVirt cannot boot either.
fn corrupt_and_encrypted_disks_are_refused() {
    let t = tempfile::tempdir().unwrap();
    // Neutral names: the messages name the files, and must say why by themselves.
    let corrupt = t.path().join("a.qcow2");
    truncated_qcow2(&corrupt);
    let encrypted = t.path().join("b.qcow2");
    encrypted_qcow2(&encrypted);
    for (disk, why) in [
        (&corrupt, "is corrupt: qemu-img check found"),
        (&encrypted, "is encrypted (luks)"),
    ] {
        let label = disk.file_stem().unwrap().to_string_lossy().into_owned();
        let out_layout = t.path().join(format!("out-{label}"));
        let (out, rss_kib) = with_peak_rss(
            df().arg("pack")
                .arg(disk)
                .arg("-o")
                .arg(format!("oci:{}:t", out_layout.display())),
            Duration::from_secs(60),
        );
        let msg = text(&out);
        assert!(!out.status.success(), "pack accepted the {why} disk: {msg}");
        assert!(msg.contains(why), "pack, {why}: {msg}");
        assert!(rss_kib < 100 << 10, "pack, {why}: peak RSS {rss_kib} KiB");
        assert!(
            !out_layout.exists(),
            "pack of a refused disk left a layout behind"
        );

        let out = df()
            .args(["run", "--check", "--timeout", "5"])
            .arg(disk)
            .output()
            .unwrap();
        let msg = text(&out);
        assert!(!out.status.success() && msg.contains(why), "run: {msg}");

        // An image holding the disk, built by hand.
        let layout = t.path().join(format!("img-{label}"));
        common::hostile::disk_image(&layout, disk);
        let scratch = t.path().join(format!("scratch-{label}"));
        std::fs::create_dir(&scratch).unwrap();
        let started = Instant::now();
        let (out, rss_kib) = with_peak_rss(
            df().arg("--work-dir")
                .arg(&scratch)
                .arg("verify")
                .arg(format!("oci:{}:t", layout.display())),
            Duration::from_secs(60),
        );
        let msg = text(&out);
        assert_eq!(out.status.code(), Some(4), "verify, {why}: {msg}");
        assert!(
            msg.contains(why) && !msg.contains("contract satisfied"),
            "verify, {why}: {msg}"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(rss_kib < 100 << 10, "verify, {why}: peak RSS {rss_kib} KiB");
        assert!(
            entries(&scratch).is_empty(),
            "verify, {why}: left behind {:?}",
            entries(&scratch)
        );

        // A build on it as a local base stops before any appliance starts.
        let dir = t.path().join(format!("build-{label}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::hard_link(disk, dir.join("base.qcow2")).unwrap();
        std::fs::write(dir.join("r.yaml"), "name: r\nbase: {path: base.qcow2}\n").unwrap();
        let built = dir.join("built");
        let out = df()
            .current_dir(&dir)
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .arg("--work-dir")
            .arg(&scratch)
            .args(["--accel", "tcg", "build"])
            .arg("r.yaml")
            .arg("-o")
            .arg(format!("oci:{}:t", built.display()))
            .output()
            .unwrap();
        let msg = text(&out);
        assert!(
            !out.status.success() && msg.contains(why),
            "build, {why}: {msg}"
        );
        assert!(!built.exists(), "build, {why}: left a layout behind");
        assert!(
            entries(&scratch).is_empty(),
            "build, {why}: left behind {:?}",
            entries(&scratch)
        );
    }
}

/// The QEMU processes whose command line names `marker` (a test's own scratch dir).
fn qemu_pids(marker: &Path) -> Vec<u32> {
    let marker = marker.display().to_string();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("qemu-system") && cmdline.contains(&marker) {
            pids.push(pid);
        }
    }
    pids
}

/// Kills (on drop) every QEMU a test started, so a failing test leaves none running.
struct QemuReaper(PathBuf);

impl Drop for QemuReaper {
    fn drop(&mut self) {
        for pid in qemu_pids(&self.0) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Waits up to `within` for `cond`.
fn eventually(within: Duration, cond: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// `run --check` on a disk that never brings ttyd up (an empty qcow2: QEMU keeps
/// running, the forwarded port accepts connections and never answers).
fn run_check(disk: &Path, scratch: &Path, timeout: u64) -> Command {
    let mut c = df();
    c.arg("--work-dir")
        .arg(scratch)
        .args(["--accel", "tcg", "run", "--check", "--timeout"])
        .arg(timeout.to_string())
        .arg(disk)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c
}

/// `run --check` reacts at once: SIGTERM while the probe waits for ttyd ends it within
/// 3 s with status 143, `--timeout 5` ends it in well under the probe's old 20 s
/// request timeout, and in both cases no QEMU and no overlay is left.
fn run_check_stops_promptly_and_takes_qemu_with_it() {
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("empty.qcow2");
    qemu_img_create(&disk, "64M", &[]);

    // SIGTERM once QEMU runs and the probe is waiting on the forwarded port.
    let scratch = t.path().join("scratch-term");
    std::fs::create_dir(&scratch).unwrap();
    let _reaper = QemuReaper(scratch.clone());
    let child = run_check(&disk, &scratch, 600).spawn().unwrap();
    let started = Instant::now();
    let out = common::interrupt_when(
        child,
        "TERM",
        || !qemu_pids(&scratch).is_empty() && started.elapsed() > Duration::from_secs(3),
        Duration::from_secs(60),
        Duration::from_secs(3),
    );
    assert_eq!(out.status.code(), Some(143), "{}", text(&out));
    assert!(
        eventually(Duration::from_secs(2), || qemu_pids(&scratch).is_empty()),
        "QEMU still runs after SIGTERM: {:?}",
        qemu_pids(&scratch)
    );
    assert!(
        entries(&scratch).is_empty(),
        "left behind {:?}",
        entries(&scratch)
    );

    // --timeout 5: a failed boot check (exit 4) soon after the 5 s.
    let scratch = t.path().join("scratch-timeout");
    std::fs::create_dir(&scratch).unwrap();
    let _reaper = QemuReaper(scratch.clone());
    let started = Instant::now();
    let (out, rss_kib) = with_peak_rss(&mut run_check(&disk, &scratch, 5), Duration::from_secs(60));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    common::assert_says(&out, "timed out");
    assert!(took < Duration::from_secs(12), "--timeout 5 took {took:?}");
    assert!(rss_kib < 200 << 10, "peak RSS {rss_kib} KiB");
    assert!(qemu_pids(&scratch).is_empty(), "QEMU left running");
    assert!(
        entries(&scratch).is_empty(),
        "left behind {:?}",
        entries(&scratch)
    );
}

/// When diskforge dies without unwinding (SIGKILL, or a second Ctrl-C, which exits at
/// once), QEMU dies with it instead of running on with its forwarded ports, and the
/// next command that takes the scratch directory removes what the dead run left there
/// (the VM's overlay).
fn qemu_does_not_outlive_a_killed_run() {
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("empty.qcow2");
    qemu_img_create(&disk, "64M", &[]);
    for signals in [&["KILL"][..], &["INT", "INT"][..]] {
        let scratch = t.path().join(format!("scratch-{}", signals.join("-")));
        std::fs::create_dir(&scratch).unwrap();
        let _reaper = QemuReaper(scratch.clone());
        let mut child = run_check(&disk, &scratch, 600).spawn().unwrap();
        assert!(
            eventually(Duration::from_secs(60), || !qemu_pids(&scratch).is_empty()),
            "QEMU never started"
        );
        std::thread::sleep(Duration::from_secs(1));
        for s in signals {
            Command::new("kill")
                .arg(format!("-{s}"))
                .arg(child.id().to_string())
                .succeeds();
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = child.wait().unwrap();
        assert!(!status.success());
        assert!(
            eventually(Duration::from_secs(5), || qemu_pids(&scratch).is_empty()),
            "QEMU outlived diskforge after SIG{signals:?}: {:?}",
            qemu_pids(&scratch)
        );
        if signals == ["KILL"] {
            assert!(
                !entries(&scratch).is_empty(),
                "SIGKILL left nothing to reap"
            );
        }
        // Older than the few seconds a live run may take to lock its directory.
        std::thread::sleep(Duration::from_secs(11));
        let out = df()
            .arg("--work-dir")
            .arg(&scratch)
            .arg("verify")
            .arg(format!("oci:{}:t", t.path().join("nothing").display()))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            entries(&scratch).is_empty(),
            "the next run left {:?} in place",
            entries(&scratch)
        );
    }
}

/// A writer that hashes and counts what it passes on.
struct Hashing<W> {
    inner: W,
    sha: sha2::Sha256,
    n: u64,
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.sha.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One zstd frame, or one gzip member, of `data`.
fn frame(gzip: bool, data: &[u8]) -> Vec<u8> {
    if gzip {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    } else {
        zstd::stream::encode_all(data, 1).unwrap()
    }
}

/// Writes, into a new layout at `dir`, an image whose zstd (or gzip) layer holds
/// `disk/disk.img` of `claimed` bytes: `head`, then zeros. The blob is streamed as
/// concatenated frames or members (one of 64 MiB of zeros, repeated), so a 20 GiB
/// entry costs a few MiB of zstd or 20 MiB of gzip and no time to make; it is never
/// held in memory.
fn zero_bomb_layout(dir: &Path, head: &[u8], claimed: u64, gzip: bool) {
    use std::io::Write;
    const CHUNK: u64 = 64 << 20;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let tmp = blobs.join("layer.partial");
    let mut w = Hashing {
        inner: std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap()),
        sha: sha2::Sha256::new(),
        n: 0,
    };
    let mut first = common::hostile::tar_header("disk/", b'5', 0, 107, 0o555).to_vec();
    first.extend_from_slice(&common::hostile::tar_header(
        "disk/disk.img",
        b'0',
        claimed,
        107,
        0o440,
    ));
    first.extend_from_slice(head);
    // Zeros up to a whole chunk of the entry, so the rest is whole repeated chunks.
    let after_head = claimed - head.len() as u64;
    first.resize(first.len() + (after_head % CHUNK) as usize, 0);
    w.write_all(&frame(gzip, &first)).unwrap();
    let zeros = frame(gzip, &vec![0u8; CHUNK as usize]);
    for _ in 0..after_head / CHUNK {
        w.write_all(&zeros).unwrap();
    }
    // Padding to a block, then the end-of-archive blocks.
    let pad = (512 - claimed % 512) % 512;
    w.write_all(&frame(gzip, &vec![0u8; pad as usize + 1024]))
        .unwrap();
    w.flush().unwrap();
    let (layer_hex, layer_size) = (hex::encode(w.sha.clone().finalize()), w.n);
    drop(w);
    std::fs::rename(&tmp, blobs.join(&layer_hex)).unwrap();
    // The diff_id would take hashing the whole expanded stream: a made-up one will do,
    // nothing reads that far.
    common::hostile::finish_layout(
        dir,
        &format!("sha256:{}", "0".repeat(64)),
        serde_json::json!({"mediaType": if gzip { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar+zstd" },
            "digest": format!("sha256:{layer_hex}"), "size": layer_size}),
    );
}

/// Bytes allocated on disk under `dir` (what holes do not cost).
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut n = 0;
    for p in entries(dir) {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        n += m.blocks() * 512;
        if m.is_dir() {
            n += allocated(&p);
        }
    }
    n
}

/// Runs `cmd` under [`with_peak_rss`] while watching how much `scratch` allocates;
/// returns (output, peak RSS KiB, most bytes allocated under `scratch`, time taken).
fn watched(
    cmd: &mut Command,
    scratch: &Path,
    limit: Duration,
) -> (std::process::Output, u64, u64, Duration) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, scratch) = (stop.clone(), scratch.to_path_buf());
        std::thread::spawn(move || {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                most = most.max(allocated(&scratch));
                std::thread::sleep(Duration::from_millis(50));
            }
            most
        })
    };
    let started = Instant::now();
    let (out, rss) = with_peak_rss(cmd, limit);
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    (out, rss, watcher.join().unwrap(), took)
}

/// A 20 GiB disk entry of zeros in a zstd layer of a few MiB (or a gzip layer of
/// 20 MiB). Behind a qcow2 header that
/// says 64 MiB, `verify` stops as soon as the entry's size contradicts the header;
/// as a raw disk, it stops at the limit `DISKFORGE_MAX_DISK_SIZE` sets; a raw disk of
/// zeros under the limit is accepted and written as holes. Never more than a few MiB
/// land in the scratch directory, and nothing stays there.
fn expanding_layers_are_capped_and_written_sparse() {
    let t = tempfile::tempdir().unwrap();
    let small = t.path().join("small.qcow2");
    qemu_img_create(&small, "64M", &[]);
    let header = std::fs::read(&small).unwrap();
    let huge = 20u64 << 30;
    // (name, disk head, entry size, DISKFORGE_MAX_DISK_SIZE, why it is refused)
    type Case<'a> = (&'a str, Vec<u8>, u64, Option<&'a str>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("qcow2", header.clone(), huge, None, Some("virtual size")),
        // 20 MiB of gzip members.
        ("qcow2-gzip", header, huge, None, Some("virtual size")),
        (
            "raw",
            Vec::new(),
            huge,
            Some("1G"),
            Some("DISKFORGE_MAX_DISK_SIZE"),
        ),
        ("raw-ok", Vec::new(), 2 << 30, None, None),
    ];
    for (name, head, claimed, max, refused) in cases {
        let layout = t.path().join(name);
        zero_bomb_layout(&layout, &head, claimed, name.ends_with("-gzip"));
        let scratch = t.path().join(format!("scratch-{name}"));
        std::fs::create_dir(&scratch).unwrap();
        let mut cmd = df();
        cmd.arg("--work-dir")
            .arg(&scratch)
            .arg("verify")
            .arg(format!("oci:{}:t", layout.display()));
        if let Some(m) = max {
            cmd.env("DISKFORGE_MAX_DISK_SIZE", m);
        }
        let (out, rss_kib, most, took) = watched(&mut cmd, &scratch, Duration::from_secs(120));
        let msg = text(&out);
        eprintln!(
            "{name}: {took:?}, peak RSS {} MiB, scratch at most {} KiB",
            rss_kib >> 10,
            most >> 10
        );
        match refused {
            Some(why) => {
                assert_eq!(out.status.code(), Some(4), "{name}: {msg}");
                assert!(msg.contains(why), "{name}: {msg}");
                assert!(took < Duration::from_secs(20), "{name}: took {took:?}");
            }
            None => assert!(
                out.status.success() && msg.contains("contract satisfied"),
                "{name}: {msg}"
            ),
        }
        assert!(rss_kib < 100 << 10, "{name}: peak RSS {rss_kib} KiB");
        assert!(
            most < 64 << 20,
            "{name}: the scratch dir grew to {most} bytes"
        );
        assert!(
            entries(&scratch).is_empty(),
            "{name}: left behind {:?}",
            entries(&scratch)
        );
    }
}

/// Every `.tmp-*` file directly in `dir`.
fn temps_in(dir: &Path) -> Vec<PathBuf> {
    entries(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
        })
        .collect()
}

/// A base download killed with SIGKILL leaves its temporary blob in the cache:
/// `cache list` shows it, `cache prune --all` removes it, while a temporary file whose
/// download still runs (its writer holds a lock on it) is listed as in use and kept.
fn temporary_files_of_killed_downloads_are_listed_and_pruned() {
    use std::io::Write;
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("base.qcow2");
    qemu_img_create(&disk, "64M", &[]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&std::fs::read(&disk).unwrap()).unwrap();
    let gz = gz.finish().unwrap();
    let gz_hex = sha_hex(&gz);
    // Half the file, then nothing: the download stays in progress until it is killed.
    let server = common::hostile::FakeServer::start(move |_, c| {
        common::hostile::head(c, "200 OK", &[("Content-Length", gz.len().to_string())]);
        let _ = c.write_all(&gz[..gz.len() / 2]);
        let _ = c.flush();
        std::thread::sleep(Duration::from_secs(120));
    });
    let dir = t.path().join("recipe");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("r.yaml"),
        format!(
            "name: r\nbase:\n  url: http://{}/base.qcow2.gz\n  checksum: sha256:{gz_hex}\n",
            server.addr
        ),
    )
    .unwrap();
    let cache = t.path().join("cache");
    let blobs = cache.join("blobs/sha256");
    let cache_cmd = |args: &[&str]| {
        let out = df()
            .arg("--cache-dir")
            .arg(&cache)
            .arg("cache")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "cache {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut build = df()
        .current_dir(&dir)
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--work-dir")
        .arg(t.path().join("work"))
        .args(["--accel", "tcg", "build", "r.yaml", "-o"])
        .arg(format!("oci:{}:t", t.path().join("out").display()))
        .spawned();
    assert!(
        eventually(Duration::from_secs(60), || !temps_in(&blobs).is_empty()),
        "the download never started"
    );
    let temp = temps_in(&blobs).remove(0);
    let name = temp.file_name().unwrap().to_string_lossy().into_owned();
    // While the download runs: listed as in use, and kept by the most thorough prune.
    std::thread::sleep(Duration::from_secs(6));
    let listed = cache_cmd(&["list"]);
    assert!(
        listed.contains(&name) && listed.contains("in use"),
        "{listed}"
    );
    cache_cmd(&["prune", "--all"]);
    assert!(
        temp.exists(),
        "prune removed the file of a running download"
    );

    build.kill().unwrap();
    build.wait().unwrap();
    // The killed writer's lock is gone with it.
    let listed = cache_cmd(&["list"]);
    assert!(
        listed.contains(&name) && listed.contains("left by"),
        "{listed}"
    );
    std::thread::sleep(Duration::from_secs(6));
    let pruned = cache_cmd(&["prune", "--all"]);
    assert!(pruned.contains("1 temporary file"), "{pruned}");
    assert!(temps_in(&blobs).is_empty(), "{:?}", temps_in(&blobs));
    assert!(common::temp_files(&cache).is_empty());
    assert!(!cache_cmd(&["list"]).contains(".tmp-"));
}

/// `pack` into a layout directory that did not exist, interrupted while it writes the
/// layer: the directory it created is removed (no empty layout with `"manifests": []`
/// stays behind); into a layout that existed, the layout is left as it was.
fn an_interrupted_pack_removes_the_layout_it_created() {
    let t = tempfile::tempdir().unwrap();
    // Random data, so packing takes long enough to be interrupted in the middle.
    let disk = t.path().join("random.img");
    Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 512M /dev/urandom > {}", disk.display()))
        .succeeds();
    let small = t.path().join("small.qcow2");
    qemu_img_create(&small, "8M", &[]);
    let existing = t.path().join("existing");
    df().arg("pack")
        .arg(&small)
        .arg("-o")
        .arg(format!("oci:{}:old", existing.display()))
        .succeeds();
    let index_before = std::fs::read(existing.join("index.json")).unwrap();

    let fresh = t.path().join("new/nested/layout");
    for (layout, created) in [(&fresh, true), (&existing, false)] {
        let child = df()
            .arg("pack")
            .arg(&disk)
            .arg("-o")
            .arg(format!("oci:{}:t", layout.display()))
            .spawned();
        let blobs = layout.join("blobs/sha256");
        let out = common::interrupt_when(
            child,
            "INT",
            || !temps_in(&blobs).is_empty(),
            Duration::from_secs(60),
            Duration::from_secs(20),
        );
        assert_eq!(out.status.code(), Some(130), "{}", text(&out));
        if created {
            assert!(
                !t.path().join("new").exists(),
                "an interrupted pack left {} behind",
                t.path().join("new").display()
            );
        } else {
            assert_eq!(
                std::fs::read(existing.join("index.json")).unwrap(),
                index_before
            );
            assert!(temps_in(&blobs).is_empty());
        }
    }
    assert!(common::temp_files(t.path()).is_empty());
}

/// Unmounts a test's tmpfs however the test ends.
struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A pack into a new layout on a filesystem that fills up: exit 1 naming the cause, and
/// the layout directory it created is gone (no empty `"manifests": []` layout left).
fn a_pack_that_runs_out_of_space_removes_the_layout_it_created() {
    let t = tempfile::tempdir().unwrap();
    let full = t.path().join("full");
    std::fs::create_dir(&full).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "diskforge-full"])
        .arg(&full)
        .output()
        .unwrap();
    if !mounted.status.success() {
        let why = text(&mounted);
        assert!(
            !common::in_ci(),
            "cannot mount a tmpfs under CI=true (needs root): {why}"
        );
        eprintln!("\n*** SKIPPING: cannot mount a small tmpfs (needs root): {why} ***\n");
        return;
    }
    let _unmount = Unmount(full.clone());
    // Random data does not compress: the layer cannot fit in 4 MiB.
    let disk = t.path().join("random.img");
    Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 32M /dev/urandom > {}", disk.display()))
        .succeeds();
    let layout = full.join("new/layout");
    let started = std::time::Instant::now();
    let out = df()
        .arg("pack")
        .arg(&disk)
        .arg("-o")
        .arg(format!("oci:{}:t", layout.display()))
        .exits(1);
    assert!(
        text(&out).contains("No space left on device"),
        "the error does not say why: {}",
        text(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        !full.join("new").exists(),
        "a pack that ran out of space left {} behind",
        full.join("new").display()
    );
    assert_eq!(
        std::fs::read_dir(&full).unwrap().count(),
        0,
        "the full filesystem is not empty again"
    );
}

/// 160 KB of nested flow sequences: refused quickly (exit 2) with the position where
/// the nesting went too deep, before the YAML parser sees it (which took 34 s).
fn deeply_nested_flow_collections_are_refused_quickly() {
    let t = tempfile::tempdir().unwrap();
    for (name, open, close) in [("seq", "[", "]"), ("map", "{a: ", "}")] {
        let f = t.path().join(format!("deep-{name}.yaml"));
        let n = 80_000;
        std::fs::write(
            &f,
            format!("name: x\nbase: {}{}\n", open.repeat(n), close.repeat(n)),
        )
        .unwrap();
        let started = Instant::now();
        let (out, rss_kib) = with_peak_rss(df().arg("validate").arg(&f), Duration::from_secs(120));
        let took = started.elapsed();
        let msg = text(&out);
        assert!(
            took < Duration::from_secs(3),
            "{name}: took {took:?}: {msg}"
        );
        assert_eq!(out.status.code(), Some(2), "{name}: {msg}");
        assert!(msg.contains("nested"), "{name}: {msg}");
        assert!(
            msg.contains(&format!("{}:2:", f.display())),
            "{name}: no position: {msg}"
        );
        assert!(rss_kib < 100 << 10, "{name}: peak RSS {rss_kib} KiB");
    }
}

crate::tests! {
    fn blobs_that_are_not_regular_files_are_refused_at_once [&["qemu-img", "mkfifo", "/usr/bin/time"]];
    fn corrupt_and_encrypted_disks_are_refused [&["qemu-img", "qemu-io", "/usr/bin/time"]];
    fn run_check_stops_promptly_and_takes_qemu_with_it [&["qemu-img", "qemu-system-x86_64", "setpriv"]];
    fn qemu_does_not_outlive_a_killed_run [&["qemu-img", "qemu-system-x86_64", "setpriv"]];
    fn expanding_layers_are_capped_and_written_sparse [&["qemu-img", "/usr/bin/time"]];
    fn temporary_files_of_killed_downloads_are_listed_and_pruned [&["qemu-img"]];
    fn an_interrupted_pack_removes_the_layout_it_created [&["qemu-img"]];
    fn a_pack_that_runs_out_of_space_removes_the_layout_it_created [&["qemu-img", "mount", "umount"]];
    fn deeply_nested_flow_collections_are_refused_quickly;
}
