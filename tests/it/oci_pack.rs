//! `diskforge pack` into OCI layouts and archives, checked with tools diskforge did not
//! write: skopeo, umoci and GNU tar.

use crate::common;
use common::Run;

use std::path::{Path, PathBuf};
use std::process::Command;

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("starting a tool");
    assert!(
        out.status.success(),
        "{:?} failed: {}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A qcow2 holding `mib` MiB of random data, half of it compressible.
fn random_qcow2(dir: &Path, mib: usize) -> PathBuf {
    common::disk::half_compressible_qcow2(dir, "disk", mib, 0x9E37_79B9_7F4A_7C15)
}

fn pack_command(disk: &Path, extra: &[&str]) -> Command {
    let mut c = common::diskforge();
    c.arg("pack")
        .arg(disk)
        .args(extra)
        .env("SOURCE_DATE_EPOCH", "1700000000");
    c
}

fn pack(disk: &Path, extra: &[&str]) -> std::process::Output {
    pack_command(disk, extra).output().unwrap()
}

/// [`pack`] that must succeed.
fn packed(disk: &Path, extra: &[&str]) -> std::process::Output {
    pack_command(disk, extra).succeeds()
}

/// Packs `disk` with `extra` options into `layout` as tag v1; gives the manifest.
fn packed_v1(disk: &Path, layout: &Path, extra: &[&str]) -> serde_json::Value {
    let output = format!("oci:{}:v1", layout.display());
    packed(disk, &[extra, &["--output", &output]].concat());
    common::json_blob(layout, &common::tagged_digest(layout, "v1"))
}

/// The diff_id of the first layer, from the config of manifest `m`.
fn diff_id(layout: &Path, m: &serde_json::Value) -> String {
    let cfg = common::json_blob(layout, m["config"]["digest"].as_str().unwrap());
    cfg["rootfs"]["diff_ids"][0].as_str().unwrap().to_string()
}

/// The first layer's blob of manifest `m` in `layout`.
fn layer_blob(layout: &Path, m: &serde_json::Value) -> PathBuf {
    layout.join("blobs/sha256").join(
        m["layers"][0]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    )
}

/// `sha256:<hex>` of what `decompress` (a shell command reading "$1") writes for `blob`.
fn decompressed_digest(decompress: &str, blob: &Path) -> String {
    let out = sh(Command::new("sh")
        .arg("-c")
        .arg(format!("{decompress} \"$1\" | sha256sum"))
        .arg("sh")
        .arg(blob));
    format!("sha256:{}", out.split_whitespace().next().unwrap())
}

/// umoci unpacks `image` (`DIR:TAG`) into `bundle`, and the disk it finds is `disk`.
fn assert_umoci_unpacks_the_disk(image: &str, bundle: &Path, disk: &Path) {
    sh(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(image)
        .arg(bundle));
    assert_eq!(
        std::fs::read(bundle.join("rootfs/disk/disk.qcow2")).unwrap(),
        std::fs::read(disk).unwrap(),
        "umoci unpacked another disk"
    );
}

fn packed_layout_meets_the_containerdisk_contract() {
    let t = tempfile::tempdir().unwrap();
    let disk = random_qcow2(t.path(), 24);
    let layout = t.path().join("layout");
    let archive = t.path().join("image.tar");
    packed(
        &disk,
        &[
            "--output",
            &format!("oci:{}:v1", layout.display()),
            "--output",
            &format!("oci-archive:{}:v1", archive.display()),
            "--label",
            "org.opencontainers.image.title=test disk",
        ],
    );

    // skopeo reads the layout and the archive, and copies the image.
    let inspect = sh(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:v1", layout.display())));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["Labels"]["org.opencontainers.image.title"], "test disk");
    assert_eq!(v["Created"], "2023-11-14T22:13:20Z");
    sh(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display())));
    let copy = t.path().join("copy");
    sh(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("oci:{}:v1", copy.display())));
    assert_eq!(
        common::tagged_digest(&copy, "v1"),
        common::tagged_digest(&layout, "v1"),
        "skopeo copy changed the manifest"
    );

    // umoci understands the layout.
    let stat = sh(Command::new("umoci")
        .args(["stat", "--image"])
        .arg(format!("{}:v1", layout.display())));
    assert!(stat.contains("diskforge"), "history missing: {stat}");

    // The layer, as a runtime extracts it.
    let m = common::json_blob(&layout, &common::tagged_digest(&layout, "v1"));
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let blob = layer_blob(&layout, &m);
    let listing = sh(Command::new("tar")
        .args(["--numeric-owner", "-tvzf"])
        .arg(&blob));
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 2, "{listing}");
    assert!(
        lines[0].starts_with("dr-xr-xr-x 107/107") && lines[0].ends_with(" disk/"),
        "{listing}"
    );
    assert!(
        lines[1].starts_with("-r--r----- 107/107") && lines[1].ends_with(" disk/disk.qcow2"),
        "{listing}"
    );
    let x = t.path().join("x");
    std::fs::create_dir(&x).unwrap();
    sh(Command::new("tar")
        .args(["--numeric-owner", "-xzf"])
        .arg(&blob)
        .arg("-C")
        .arg(&x));
    let files: Vec<_> = std::fs::read_dir(x.join("disk")).unwrap().collect();
    assert_eq!(files.len(), 1);
    assert_eq!(
        std::fs::read(x.join("disk/disk.qcow2")).unwrap(),
        std::fs::read(&disk).unwrap()
    );
    // The config's diff_id is the sha256 of the uncompressed tar.
    let cfg = common::json_blob(&layout, m["config"]["digest"].as_str().unwrap());
    let tar_bytes = {
        let mut d = flate2::read::MultiGzDecoder::new(std::fs::File::open(&blob).unwrap());
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut v).unwrap();
        v
    };
    assert_eq!(
        cfg["rootfs"]["diff_ids"][0].as_str().unwrap(),
        format!("sha256:{}", diskforge::io::hash::sha256_hex(&tar_bytes))
    );

    // inspect reads the disk header from the layer.
    let s = common::inspect_json(&[&format!("oci:{}:v1", layout.display())]);
    assert_eq!(s["disk"]["format"], "qcow2");
    assert_eq!(s["disk"]["virtual_size"], 24 << 20);
}

fn same_input_gives_identical_digests_for_every_compression() {
    let t = tempfile::tempdir().unwrap();
    let disk = random_qcow2(t.path(), 12);
    // The second run sees one CPU (pack uses as many threads as it may run on): the
    // bytes must not depend on how the compression was spread over threads.
    let one_cpu = diskforge::sys::exec::have("taskset");
    for comp in ["gzip", "zstd", "none"] {
        let mut digests = Vec::new();
        for run in 0..2 {
            let layout = t.path().join(format!("{comp}-{run}"));
            let args = [
                "--compression",
                comp,
                "--output",
                &format!("oci:{}:x", layout.display()),
            ];
            let out = if run == 1 && one_cpu {
                Command::new("taskset")
                    .args(["-c", "0", env!("CARGO_BIN_EXE_diskforge"), "pack"])
                    .arg(&disk)
                    .args(args)
                    .env("SOURCE_DATE_EPOCH", "1700000000")
                    .env_remove("RUST_LOG")
                    .output()
                    .unwrap()
            } else {
                pack(&disk, &args)
            };
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let d = common::tagged_digest(&layout, "x");
            let m = common::json_blob(&layout, &d);
            digests.push((
                d,
                m["layers"][0]["digest"].clone(),
                m["config"]["digest"].clone(),
            ));
        }
        assert_eq!(
            digests[0], digests[1],
            "{comp}: two packs of the same disk differ (the second on one CPU: {one_cpu})"
        );
    }
    // A different SOURCE_DATE_EPOCH is a different image.
    let layout = t.path().join("other-epoch");
    let out = common::diskforge()
        .arg("pack")
        .arg(&disk)
        .args([
            "--compression",
            "none",
            "--output",
            &format!("oci:{}:x", layout.display()),
        ])
        .env("SOURCE_DATE_EPOCH", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_ne!(
        common::tagged_digest(&layout, "x"),
        common::tagged_digest(&t.path().join("none-0"), "x")
    );
}

/// The gzip layer is several gzip members (compressed in parallel): gzip, Python's gzip
/// module and umoci (Go) must each read all of it, back to the tar of the config's
/// diff_id and the disk.
fn other_tools_decompress_the_gzip_layer_to_the_diff_id() {
    let t = tempfile::tempdir().unwrap();
    // Several 1 MiB gzip members.
    let disk = random_qcow2(t.path(), 8);
    let layout = t.path().join("layout");
    let m = packed_v1(&disk, &layout, &[]);
    let diff_id = diff_id(&layout, &m);
    let blob = layer_blob(&layout, &m);

    sh(Command::new("gzip").arg("-t").arg(&blob));
    assert_eq!(decompressed_digest("gzip -dc", &blob), diff_id, "gzip -dc");
    let py = sh(Command::new("python3")
        .arg("-c")
        .arg(
            "import gzip, hashlib, sys\n\
             h = hashlib.sha256()\n\
             with gzip.open(sys.argv[1]) as f:\n\
             \x20   for chunk in iter(lambda: f.read(1 << 20), b''): h.update(chunk)\n\
             print('sha256:' + h.hexdigest())",
        )
        .arg(&blob));
    assert_eq!(py.trim(), diff_id, "python3 gzip");

    assert_umoci_unpacks_the_disk(
        &format!("{}:v1", layout.display()),
        &t.path().join("bundle"),
        &disk,
    );
}

/// Packing streams: peak memory does not grow with the disk. A 64 MiB and a 4 GiB disk
/// (sparse, so the test needs no disk space) are packed with the default gzip; the
/// second may take a few MiB more, never 100 MiB.
fn packing_memory_stays_flat_in_the_disk_size() {
    let t = tempfile::tempdir().unwrap();
    let mut rss = Vec::new();
    for (name, size) in [("small", 64u64 << 20), ("big", 4u64 << 30)] {
        let raw = t.path().join(format!("{name}.raw"));
        std::fs::File::create(&raw).unwrap().set_len(size).unwrap();
        let layout = t.path().join(format!("l-{name}"));
        let (out, kib) = common::hostile::with_peak_rss(
            common::diskforge()
                .arg("pack")
                .arg(&raw)
                .arg("--output")
                .arg(format!("oci:{}", layout.display())),
            std::time::Duration::from_secs(600),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("packing {size} bytes: peak RSS {} MiB", kib >> 10);
        rss.push(kib);
        std::fs::remove_dir_all(&layout).unwrap();
    }
    assert!(rss[1] < 100 << 10, "packing 4 GiB took {} KiB", rss[1]);
    assert!(
        rss[1] < rss[0] + (24 << 10),
        "memory grows with the disk: {} KiB for 64 MiB, {} KiB for 4 GiB",
        rss[0],
        rss[1]
    );
}

fn disks_over_8_gib_get_a_valid_tar_header() {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("big.raw");
    let size: u64 = 9 << 30;
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    let layout = t.path().join("big");
    packed(
        &raw,
        &[
            "--compression",
            "zstd",
            "--compression-level",
            "1",
            "--output",
            &format!("oci:{}", layout.display()),
        ],
    );
    let d = common::tagged_digest(&layout, "latest");
    let m = common::json_blob(&layout, &d);
    let blob = layer_blob(&layout, &m);
    let listing = sh(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc '{}' | tar --numeric-owner -tvf -",
        blob.display()
    )));
    assert!(
        listing.contains(&format!(" {size} ")) && listing.contains("disk/disk.img"),
        "{listing}"
    );
    assert!(!listing.contains('S'), "sparse entry in {listing}");
}

fn refused_inputs_leave_the_layout_untouched() {
    let t = tempfile::tempdir().unwrap();
    let disk = random_qcow2(t.path(), 2);
    let layout = t.path().join("l");
    assert!(
        pack(&disk, &["--output", &format!("oci:{}:a", layout.display())])
            .status
            .success()
    );
    let before: Vec<_> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let index_before = std::fs::read(layout.join("index.json")).unwrap();

    // An overlay with a backing file is not a containerDisk.
    let overlay = t.path().join("overlay.qcow2");
    common::disk::overlay(&overlay, &disk, "qcow2", None);
    let out = pack(
        &overlay,
        &["--output", &format!("oci:{}:b", layout.display())],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("backing file"), "{err}");
    // A missing disk.
    let out = pack(
        &t.path().join("missing.qcow2"),
        &["--output", &format!("oci:{}:c", layout.display())],
    );
    assert!(!out.status.success());
    // A bad destination and a bad compression level fail before anything is written.
    let out = pack(&disk, &["--output", "nowhere"]);
    assert!(!out.status.success());
    let out = pack(
        &disk,
        &[
            "--compression-level",
            "42",
            "--output",
            &format!("oci:{}:d", layout.display()),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("level"));

    let after: Vec<_> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        before.len(),
        after.len(),
        "blobs changed: {before:?} -> {after:?}"
    );
    assert_eq!(
        index_before,
        std::fs::read(layout.join("index.json")).unwrap()
    );
}

fn ctrl_c_while_packing_leaves_the_layout_as_it_was() {
    let t = tempfile::tempdir().unwrap();
    let small_dir = t.path().join("small");
    std::fs::create_dir(&small_dir).unwrap();
    let small = random_qcow2(&small_dir, 2);
    let big = random_qcow2(t.path(), 768);
    let layout = t.path().join("l");
    assert!(pack(
        &small,
        &["--output", &format!("oci:{}:old", layout.display())]
    )
    .status
    .success());
    let index_before = std::fs::read(layout.join("index.json")).unwrap();

    let child = common::diskforge()
        .arg("pack")
        .arg(&big)
        .args(["--output", &format!("oci:{}:new", layout.display())])
        .spawned();
    let blobs = layout.join("blobs/sha256");
    // Interrupt while the layer is being written (its temporary file exists).
    let out = common::interrupt_when(
        child,
        "INT",
        || !common::temp_files(&blobs).is_empty(),
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted by SIGINT"), "{err}");

    assert_eq!(common::temp_files(t.path()), Vec::<PathBuf>::new());
    assert_eq!(
        index_before,
        std::fs::read(layout.join("index.json")).unwrap()
    );
    // Every blob left is whole: its content hashes to its name.
    for e in std::fs::read_dir(&blobs).unwrap() {
        let p = e.unwrap().path();
        let (hex, _) = diskforge::io::hash::sha256_file(&p).unwrap();
        assert_eq!(p.file_name().unwrap().to_string_lossy(), hex);
    }
    let ls = sh(Command::new("umoci").args(["ls", "--layout"]).arg(&layout));
    assert_eq!(ls.trim(), "old");
    sh(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:old", layout.display())));
}

fn index_combines_per_architecture_images() {
    let t = tempfile::tempdir().unwrap();
    let disk = random_qcow2(t.path(), 1);
    let layout = t.path().join("multi");
    for arch in ["amd64", "arm64"] {
        packed(
            &disk,
            &[
                "--arch",
                arch,
                "--output",
                &format!("oci:{}:{arch}", layout.display()),
            ],
        );
    }
    common::diskforge()
        .args([
            "index",
            &format!("oci:{}:multi", layout.display()),
            "amd64",
            "arm64",
        ])
        .succeeds();
    let raw = sh(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:multi", layout.display())));
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["mediaType"], "application/vnd.oci.image.index.v1+json");
    let archs: Vec<&str> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    // skopeo resolves the index to this machine's image.
    let inspect = sh(Command::new("skopeo")
        .args(["inspect", "--override-arch", "arm64"])
        .arg(format!("oci:{}:multi", layout.display())));
    assert!(inspect.contains("\"Architecture\": \"arm64\""), "{inspect}");
}

fn a_missing_tool_exits_3_and_names_it() {
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("d.qcow2");
    std::fs::write(&disk, b"not really a disk").unwrap();
    let layout = t.path().join("l");
    let out = common::diskforge()
        .env("PATH", t.path())
        .arg("pack")
        .arg(&disk)
        .args(["--output", &format!("oci:{}:x", layout.display())])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("qemu-img is not installed"), "{err}");
}

/// The zstd layer is two frames (a stored first frame for CDI's importer, then libzstd's):
/// the zstd tool and umoci (Go, klauspost's decoder, as in containerd and CDI) must read
/// both, back to the tar of the config's diff_id and the disk.
fn other_tools_decompress_the_zstd_layer_to_the_diff_id() {
    let t = tempfile::tempdir().unwrap();
    let disk = random_qcow2(t.path(), 4);
    let layout = t.path().join("layout");
    let m = packed_v1(&disk, &layout, &["--compression", "zstd"]);
    assert!(m["layers"][0]["mediaType"]
        .as_str()
        .unwrap()
        .ends_with("+zstd"));
    let diff_id = diff_id(&layout, &m);
    let blob = layer_blob(&layout, &m);
    let head = std::fs::read(&blob).unwrap();
    assert_eq!(
        &head[..5],
        &[0x28, 0xB5, 0x2F, 0xFD, 0x60],
        "a stored first frame"
    );

    sh(Command::new("zstd").arg("-tq").arg(&blob));
    assert_eq!(decompressed_digest("zstd -dcq", &blob), diff_id, "zstd -dc");
    // containers/image (skopeo) decodes the layer with klauspost's zstd, as containerd
    // and CDI do, and writes it again as gzip; umoci (no zstd in Debian's build) then
    // unpacks that copy.
    let regz = t.path().join("regz");
    sh(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-compress-format", "gzip"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("oci:{}:v1", regz.display())));
    let m2 = common::json_blob(&regz, &common::tagged_digest(&regz, "v1"));
    assert!(m2["layers"][0]["mediaType"]
        .as_str()
        .unwrap()
        .ends_with("+gzip"));
    let regz_blob = layer_blob(&regz, &m2);
    assert_eq!(
        decompressed_digest("gzip -dc", &regz_blob),
        diff_id,
        "the tar skopeo decoded"
    );
    assert_umoci_unpacks_the_disk(
        &format!("{}:v1", regz.display()),
        &t.path().join("bundle"),
        &disk,
    );
}

crate::tests! {
    fn packed_layout_meets_the_containerdisk_contract [&["qemu-img", "skopeo", "umoci", "tar"]];
    fn same_input_gives_identical_digests_for_every_compression [&["qemu-img"]];
    fn other_tools_decompress_the_gzip_layer_to_the_diff_id [&["qemu-img", "gzip", "python3", "umoci"]];
    fn packing_memory_stays_flat_in_the_disk_size [&["qemu-img"]];
    fn disks_over_8_gib_get_a_valid_tar_header [&["qemu-img", "tar", "zstd"]];
    fn refused_inputs_leave_the_layout_untouched [&["qemu-img"]];
    fn ctrl_c_while_packing_leaves_the_layout_as_it_was [&["qemu-img", "skopeo", "umoci"]];
    fn index_combines_per_architecture_images [&["qemu-img", "skopeo"]];
    fn a_missing_tool_exits_3_and_names_it;
    fn other_tools_decompress_the_zstd_layer_to_the_diff_id [&["qemu-img", "zstd", "skopeo", "umoci"]];
}
