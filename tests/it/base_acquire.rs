//! Base acquisition against a real loopback HTTP server, with images made by qemu-img:
//! download, resume, retries, checksum files, decompression, cache integrity, offline
//! mode, concurrency, local bases and the standalone-image check.

use crate::common;
use common::Run;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::http::TestServer;
use diskforge::base::download::{HttpStatusError, RetryPolicy};
use diskforge::base::{
    acquire, acquire_blocking, fetch_file, AcquireOptions, BaseSource, ChecksumMismatch,
    ResolvedBase,
};
use diskforge::cache::{Cache, RefKey};
use diskforge::recipe::{Arch, BaseSpec, Checksum, ChecksumFile, ChecksumSpec, DiskFormat};
use sha2::Digest as _;

fn sha256(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

fn sha512(data: &[u8]) -> String {
    hex::encode(sha2::Sha512::digest(data))
}

/// A small qcow2 made by qemu-img, with some data written so its content is not trivial.
fn make_qcow2(dir: &Path, name: &str, size: &str) -> Vec<u8> {
    let path = common::disk::qcow2(dir, name, size);
    // Some non-zero clusters make the file bigger than the cut points below.
    Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 0 256k",
            "-c",
            "write -P 0x33 1M 64k",
        ])
        .arg(&path)
        .succeeds();
    fs::read(&path).unwrap()
}

fn fast_opts() -> AcquireOptions {
    AcquireOptions {
        offline: false,
        retry: RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            ..Default::default()
        },
    }
}

fn url_base(url: String, checksum: ChecksumSpec) -> ResolvedBase {
    ResolvedBase {
        source: BaseSource::Url { url, checksum },
        format: DiskFormat::Qcow2,
        arch: Arch::Amd64,
    }
}

fn literal(s: &str) -> ChecksumSpec {
    ChecksumSpec::Literal(Checksum::parse(s).unwrap())
}

/// The base `name` served by the fixture's server, checked by the literal sha256 of
/// `data`.
fn sha256_base(f: &Fixture, name: &str, data: &[u8]) -> ResolvedBase {
    url_base(
        f.server.url(name),
        literal(&format!("sha256:{}", sha256(data))),
    )
}

/// The HTTP status of a download error, which must be an [`HttpStatusError`].
fn http_status(err: &anyhow::Error) -> u16 {
    err.downcast_ref::<HttpStatusError>()
        .unwrap_or_else(|| panic!("not an HTTP status error: {err:#}"))
        .status
}

fn checksum_file(url: String) -> ChecksumSpec {
    ChecksumSpec::File(ChecksumFile {
        url,
        file: None,
        algorithm: None,
        signing_key: None,
        signature_url: None,
        signing_key_fingerprints: Vec::new(),
    })
}

/// Names of all files under `dir`, recursively (relative).
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Files in the cache other than lock files (which stay by design).
fn cache_files(cache: &Cache) -> Vec<String> {
    files_under(cache.root())
        .into_iter()
        .filter(|f| !f.starts_with("locks/"))
        .collect()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    cache: Cache,
    server: TestServer,
}

/// What [`fixture`] needs.
const FIXTURE: &[&str] = &["qemu-img", "qemu-io"];

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("work");
    fs::create_dir(&dir).unwrap();
    let cache = Cache::new(tmp.path().join("cache")).unwrap();
    Fixture {
        dir,
        cache,
        server: TestServer::start(),
        _tmp: tmp,
    }
}

impl Fixture {
    /// A qcow2 `name` of `size` (made in the work dir) served at `at`; gives its bytes.
    fn serve_qcow2(&self, at: &str, name: &str, size: &str) -> Vec<u8> {
        let data = make_qcow2(&self.dir, name, size);
        self.server.serve(at, data.clone());
        data
    }

    /// A 16 MiB qcow2 served at `at`, and a base that names it with its sha256.
    fn served_disk(&self, at: &str) -> (Vec<u8>, ResolvedBase) {
        let data = make_qcow2(&self.dir, "disk.qcow2", "16M");
        self.server.serve(at, data.clone());
        let spec = sha256_base(self, at, &data);
        (data, spec)
    }
}

async fn downloads_verifies_caches_and_never_modifies() {
    let f = fixture();
    let (data, spec) = f.served_disk("img/disk.qcow2");
    let got = acquire(&spec, &f.cache, &fast_opts()).await.unwrap();
    assert_eq!(got.digest, format!("sha256:{}", sha256(&data)));
    assert_eq!(got.virtual_size, 16 << 20);
    assert_eq!(got.path, f.cache.blob_path(&sha256(&data)));
    assert_eq!(fs::read(&got.path).unwrap(), data, "byte-identical");
    let meta = fs::metadata(&got.path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o444);
    let mtime = meta.modified().unwrap();

    // Use it the way the disk stages do: as the backing file of a written overlay.
    let overlay = f.dir.join("overlay.qcow2");
    common::disk::overlay(&overlay, &got.path, "qcow2", None);
    Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x77 0 1M"])
        .arg(&overlay)
        .succeeds();

    // Second use: served from the cache, the file untouched.
    let again = acquire(&spec, &f.cache, &fast_opts()).await.unwrap();
    assert_eq!(again, got);
    assert_eq!(f.server.count("img/disk.qcow2"), 1, "downloaded once");
    assert_eq!(fs::metadata(&got.path).unwrap().modified().unwrap(), mtime);
    assert_eq!(sha256(&fs::read(&got.path).unwrap()), sha256(&data));
    // No leftovers: no temp file, no partial download.
    let leftovers: Vec<_> = cache_files(&f.cache)
        .into_iter()
        .filter(|n| n.contains(".tmp-") || n.starts_with("partial/"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let list = f.cache.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].size, data.len() as u64);
}

async fn resumes_with_range_after_a_cut_connection() {
    let f = fixture();
    let data = make_qcow2(&f.dir, "disk.qcow2", "16M");
    assert!(data.len() > 200_000);
    f.server.serve("disk.qcow2", data.clone());
    f.server.cut_after_once("disk.qcow2", 150_000);
    let spec = sha256_base(&f, "disk.qcow2", &data);
    let got = acquire(&spec, &f.cache, &fast_opts()).await.unwrap();
    assert_eq!(got.digest, format!("sha256:{}", sha256(&data)));
    let reqs = f.server.requests("disk.qcow2");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].range, None);
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=150000-"));
    assert_eq!(reqs[1].status, 206);
    assert!(reqs[1].if_range.is_some(), "If-Range guards the splice");
}

async fn resumes_a_partial_download_left_by_an_earlier_run() {
    let f = fixture();
    let data = make_qcow2(&f.dir, "disk.qcow2", "16M");
    let compressed = xz(&data);
    f.server.serve("disk.qcow2.xz", compressed.clone());
    let cut = compressed.len() / 2;
    f.server.cut_after_once("disk.qcow2.xz", cut);
    let spec = sha256_base(&f, "disk.qcow2.xz", &compressed);
    // A run that gives up after the first failure leaves its partial file behind.
    let mut give_up = fast_opts();
    give_up.retry.max_attempts = 1;
    let err = acquire(&spec, &f.cache, &give_up).await.unwrap_err();
    assert!(format!("{err:#}").contains("giving up"), "{err:#}");
    let partial: Vec<_> = files_under(&f.cache.partial_dir());
    assert!(partial.iter().any(|p| p.ends_with(".part")), "{partial:?}");

    let got = acquire(&spec, &f.cache, &fast_opts()).await.unwrap();
    assert_eq!(got.digest, format!("sha256:{}", sha256(&data)));
    let reqs = f.server.requests("disk.qcow2.xz");
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].range, Some(format!("bytes={cut}-")));
    assert!(files_under(&f.cache.partial_dir()).is_empty());
}

async fn restarts_when_the_server_ignores_ranges() {
    let f = fixture();
    let (data, spec) = f.served_disk("disk.qcow2");
    f.server.no_ranges("disk.qcow2");
    f.server.cut_after_once("disk.qcow2", 100_000);
    let got = acquire(&spec, &f.cache, &fast_opts()).await.unwrap();
    assert_eq!(got.digest, format!("sha256:{}", sha256(&data)));
    let reqs = f.server.requests("disk.qcow2");
    assert_eq!(reqs[1].status, 200, "{reqs:?}");
}

async fn retries_503_then_succeeds() {
    let f = fixture();
    let (_, spec) = f.served_disk("disk.qcow2");
    f.server.fail_503("disk.qcow2", 2);
    acquire(&spec, &f.cache, &fast_opts()).await.unwrap();
    let statuses: Vec<u16> = f
        .server
        .requests("disk.qcow2")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [503, 503, 200]);
}

async fn persistent_503_gives_up_naming_url_and_status() {
    let f = fixture();
    f.server.serve("disk.qcow2", b"never served".to_vec());
    f.server.fail_503("disk.qcow2", 100);
    let url = f.server.url("disk.qcow2");
    let spec = url_base(url.clone(), literal(&format!("sha256:{}", "0".repeat(64))));
    let err = acquire(&spec, &f.cache, &fast_opts()).await.unwrap_err();
    assert_eq!(http_status(&err), 503);
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&url) && msg.contains("4 failed attempts"),
        "{msg}"
    );
    assert_eq!(f.server.count("disk.qcow2"), 4);
    assert_eq!(cache_files(&f.cache), Vec::<String>::new());
}

async fn not_found_fails_at_once_naming_url_and_status() {
    let f = fixture();
    let url = f.server.url("missing.qcow2");
    let spec = url_base(url.clone(), literal(&format!("sha256:{}", "0".repeat(64))));
    let err = acquire(&spec, &f.cache, &fast_opts()).await.unwrap_err();
    assert_eq!(http_status(&err), 404);
    assert!(format!("{err:#}").contains(&url), "{err:#}");
    assert_eq!(f.server.count("missing.qcow2"), 1, "404 is not retried");
    assert_eq!(cache_files(&f.cache), Vec::<String>::new());
}

async fn checksum_mismatch_is_typed_and_leaves_nothing() {
    let f = fixture();
    let data = f.serve_qcow2("disk.qcow2", "disk.qcow2", "16M");
    let wrong = sha256(b"something else");
    let url = f.server.url("disk.qcow2");
    let spec = url_base(url.clone(), literal(&format!("sha256:{wrong}")));
    let err = acquire(&spec, &f.cache, &fast_opts()).await.unwrap_err();
    let mismatch = err
        .downcast_ref::<ChecksumMismatch>()
        .unwrap_or_else(|| panic!("not a checksum mismatch: {err:#}"));
    assert_eq!(mismatch.url, url);
    assert_eq!(mismatch.expected, format!("sha256:{wrong}"));
    assert_eq!(mismatch.actual, format!("sha256:{}", sha256(&data)));
    assert_eq!(cache_files(&f.cache), Vec::<String>::new());
}

async fn gnu_checksum_file_binary_and_text_mode() {
    let f = fixture();
    let data = f.serve_qcow2("rel/disk-1.qcow2", "disk.qcow2", "16M");
    let other = f.serve_qcow2("rel/other.qcow2", "other.qcow2", "32M");
    f.server.serve(
        "rel/SHA256SUMS",
        format!(
            "{}  other.qcow2\n{} *disk-1.qcow2\n",
            sha256(&other),
            sha256(&data)
        )
        .into_bytes(),
    );
    let spec = url_base(
        f.server.url("rel/disk-1.qcow2"),
        checksum_file(f.server.url("rel/SHA256SUMS")),
    );
    let got = acquire(&spec, &f.cache, &fast_opts()).await.unwrap();
    assert_eq!(got.digest, format!("sha256:{}", sha256(&data)));
    let spec = url_base(
        f.server.url("rel/other.qcow2"),
        checksum_file(f.server.url("rel/SHA256SUMS")),
    );
    let got = acquire(&spec, &f.cache, &fast_opts()).await.unwrap();
    assert_eq!(got.virtual_size, 32 << 20);
}

async fn bsd_checksum_file_with_sha512_and_explicit_name() {
    let f = fixture();
    let data = f.serve_qcow2("download?id=7", "disk.qcow2", "16M");
    f.server.serve(
        "CHECKSUM",
        format!(
            "# Fedora-Cloud.qcow2: {} bytes\nSHA512 (Fedora-Cloud.qcow2) = {}\n",
            data.len(),
            sha512(&data)
        )
        .into_bytes(),
    );
    let spec = url_base(
        f.server.url("download?id=7"),
        ChecksumSpec::File(ChecksumFile {
            url: f.server.url("CHECKSUM"),
            file: Some("Fedora-Cloud.qcow2".into()),
            algorithm: None,
            signing_key: None,
            signature_url: None,
            signing_key_fingerprints: Vec::new(),
        }),
    );
    let got = acquire(&spec, &f.cache, &fast_opts()).await.unwrap();
    assert_eq!(got.digest, format!("sha256:{}", sha256(&data)));
    // The upstream sha512 names the blob too.
    let key = RefKey::Source {
        algorithm: "sha512".into(),
        hex: sha512(&data),
    };
    assert_eq!(f.cache.lookup(&key).unwrap(), Some(sha256(&data)));
}

async fn literal_sha512_and_its_mismatch() {
    let f = fixture();
    let data = f.serve_qcow2("disk.qcow2", "disk.qcow2", "16M");
    let spec = url_base(
        f.server.url("disk.qcow2"),
        literal(&format!("sha512:{}", sha512(&data))),
    );
    acquire(&spec, &f.cache, &fast_opts()).await.unwrap();
    let mut bad = sha512(&data);
    bad.replace_range(0..1, if bad.starts_with('0') { "1" } else { "0" });
    let other_cache = Cache::new(f.dir.join("cache2")).unwrap();
    let spec = url_base(
        f.server.url("disk.qcow2"),
        literal(&format!("sha512:{bad}")),
    );
    let err = acquire(&spec, &other_cache, &fast_opts())
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<ChecksumMismatch>().is_some(), "{err:#}");
}

/// A reference that names another intact blob (a misdirected `refs/` file) is not
/// trusted: the blob's record does not list that name, so the base is fetched again and
/// the build gets the image its checksum names, not the other one.
async fn a_reference_naming_another_intact_blob_is_not_trusted() {
    let f = fixture();
    let a = f.serve_qcow2("a.qcow2", "a.qcow2", "8M");
    let b = f.serve_qcow2("b.qcow2", "b.qcow2", "16M");
    let spec = |name: &str, data: &[u8]| {
        url_base(
            f.server.url(name),
            literal(&format!("sha512:{}", sha512(data))),
        )
    };
    acquire(&spec("a.qcow2", &a), &f.cache, &fast_opts())
        .await
        .unwrap();
    let got = acquire(&spec("b.qcow2", &b), &f.cache, &fast_opts())
        .await
        .unwrap();
    assert_eq!(got.digest, format!("sha256:{}", sha256(&b)));
    assert_eq!(f.server.count("b.qcow2"), 1);
    // b's checksum now names a's blob, which is intact.
    let b_ref = f.cache.root().join("refs").join(
        RefKey::Source {
            algorithm: "sha512".into(),
            hex: sha512(&b),
        }
        .file_name(),
    );
    fs::write(&b_ref, sha256(&a)).unwrap();
    let again = acquire(&spec("b.qcow2", &b), &f.cache, &fast_opts())
        .await
        .unwrap();
    assert_eq!(
        again.digest,
        format!("sha256:{}", sha256(&b)),
        "got a's blob"
    );
    assert_eq!(again.virtual_size, 16 << 20);
    assert_eq!(f.server.count("b.qcow2"), 2, "b was not fetched again");
    assert_eq!(
        fs::read_to_string(&b_ref).unwrap(),
        sha256(&b),
        "reference repaired"
    );
    assert!(!cache_files(&f.cache).iter().any(|p| p.contains(".tmp-")));
    // a is still found under its own name.
    let a_again = acquire(&spec("a.qcow2", &a), &f.cache, &fast_opts())
        .await
        .unwrap();
    assert_eq!(a_again.digest, format!("sha256:{}", sha256(&a)));
    assert_eq!(f.server.count("a.qcow2"), 1);
}

fn xz(data: &[u8]) -> Vec<u8> {
    compress_with(data, &["xz", "-c", "-T1"])
}

fn compress_with(data: &[u8], argv: &[&str]) -> Vec<u8> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

async fn decompresses_xz_gz_zst_while_streaming() {
    let f = fixture();
    let data = make_qcow2(&f.dir, "disk.qcow2", "16M");
    let mut sums = String::new();
    for (ext, argv) in [
        ("xz", &["xz", "-c", "-T1"][..]),
        ("gz", &["gzip", "-c"][..]),
        ("zst", &["zstd", "-q", "-c"][..]),
    ] {
        let compressed = compress_with(&data, argv);
        sums.push_str(&format!("{}  disk.qcow2.{ext}\n", sha256(&compressed)));
        let cut = compressed.len() / 3;
        f.server.serve(&format!("disk.qcow2.{ext}"), compressed);
        // Resuming mid-stream must continue the same decompression.
        f.server.cut_after_once(&format!("disk.qcow2.{ext}"), cut);
    }
    f.server.serve("SHA256SUMS", sums.into_bytes());
    for ext in ["xz", "gz", "zst"] {
        let cache = Cache::new(f.dir.join(format!("cache-{ext}"))).unwrap();
        let spec = url_base(
            f.server.url(&format!("disk.qcow2.{ext}")),
            checksum_file(f.server.url("SHA256SUMS")),
        );
        let got = acquire(&spec, &cache, &fast_opts()).await.unwrap();
        // The cache key is the decompressed content; the file is the qcow2 itself.
        assert_eq!(got.digest, format!("sha256:{}", sha256(&data)), "{ext}");
        assert_eq!(fs::read(&got.path).unwrap(), data, "{ext}");
        assert_eq!(got.virtual_size, 16 << 20);
        assert!(files_under(&cache.partial_dir()).is_empty());
        let reqs = f.server.requests(&format!("disk.qcow2.{ext}"));
        assert_eq!(reqs.len(), 2, "{ext}: {reqs:?}");
        assert_eq!(reqs[1].status, 206, "{ext}");
    }
}

async fn corrupt_cache_entry_is_discarded_and_fetched_again() {
    let f = fixture();
    let (data, spec) = f.served_disk("disk.qcow2");
    let got = acquire(&spec, &f.cache, &fast_opts()).await.unwrap();
    // Bit rot (or a careless hand) changes a byte of the cached file.
    fs::set_permissions(&got.path, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(&got.path).unwrap();
    bytes[100_000] ^= 0xff;
    fs::write(&got.path, &bytes).unwrap();

    let again = acquire(&spec, &f.cache, &fast_opts()).await.unwrap();
    assert_eq!(again.digest, got.digest);
    assert_eq!(fs::read(&again.path).unwrap(), data);
    assert_eq!(
        f.server.count("disk.qcow2"),
        2,
        "fetched again in the same run"
    );
}

async fn offline_uses_the_cache_only() {
    let f = fixture();
    let data = f.serve_qcow2("disk.qcow2", "disk.qcow2", "16M");
    f.server.serve(
        "SHA256SUMS",
        format!("{}  disk.qcow2\n", sha256(&data)).into_bytes(),
    );
    let offline = AcquireOptions {
        offline: true,
        ..fast_opts()
    };
    let spec = url_base(
        f.server.url("disk.qcow2"),
        checksum_file(f.server.url("SHA256SUMS")),
    );
    // Miss: a clear error naming the URL, and no request at all.
    let err = acquire(&spec, &f.cache, &offline).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("--offline") && msg.contains(&f.server.url("disk.qcow2")),
        "{msg}"
    );
    assert_eq!(
        f.server.count("disk.qcow2") + f.server.count("SHA256SUMS"),
        0
    );

    acquire(&spec, &f.cache, &fast_opts()).await.unwrap();
    let requests = f.server.count("disk.qcow2") + f.server.count("SHA256SUMS");
    // Hit: the checksum file is not fetched either.
    let got = acquire(&spec, &f.cache, &offline).await.unwrap();
    assert_eq!(got.digest, format!("sha256:{}", sha256(&data)));
    assert_eq!(
        f.server.count("disk.qcow2") + f.server.count("SHA256SUMS"),
        requests
    );
}

fn two_concurrent_acquisitions_download_once() {
    let f = fixture();
    let (_, spec) = f.served_disk("disk.qcow2");
    // A slow response keeps the first download in flight while the second arrives.
    f.server.delay("disk.qcow2", Duration::from_millis(700));
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                // Separate Cache values and runtimes, as two processes would have.
                let cache = Cache::new(f.cache.root()).unwrap();
                let spec = spec.clone();
                s.spawn(move || {
                    let rt = tokio::runtime::Runtime::new().unwrap();
                    rt.block_on(acquire(&spec, &cache, &fast_opts())).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results[0], results[1]);
    assert_eq!(f.server.count("disk.qcow2"), 1);
}

async fn local_path_base_is_used_in_place() {
    let f = fixture();
    let data = make_qcow2(&f.dir, "local.qcow2", "16M");
    let spec = ResolvedBase::from_spec(
        &BaseSpec {
            path: Some("local.qcow2".into()),
            ..BaseSpec::default()
        },
        &f.dir,
    )
    .unwrap();
    let got = acquire(&spec, &f.cache, &fast_opts()).await.unwrap();
    assert_eq!(
        got.path,
        fs::canonicalize(f.dir.join("local.qcow2")).unwrap()
    );
    assert_eq!(got.digest, format!("sha256:{}", sha256(&data)));
    assert_eq!(got.virtual_size, 16 << 20);
    assert!(cache_files(&f.cache).is_empty());
}

async fn qcow2_with_a_backing_file_is_refused() {
    let f = fixture();
    make_qcow2(&f.dir, "base.qcow2", "16M");
    common::disk::overlay(
        &f.dir.join("overlay.qcow2"),
        Path::new("base.qcow2"),
        "qcow2",
        None,
    );
    let overlay = fs::read(f.dir.join("overlay.qcow2")).unwrap();
    f.server.serve("overlay.qcow2", overlay.clone());
    let spec = sha256_base(&f, "overlay.qcow2", &overlay);
    let err = acquire(&spec, &f.cache, &fast_opts()).await.unwrap_err();
    assert!(format!("{err:#}").contains("backing file"), "{err:#}");
    assert!(
        files_under(&f.cache.blob_dir()).is_empty(),
        "an unusable image is not cached"
    );
    // The same for a local path.
    let local = ResolvedBase {
        source: BaseSource::Path(f.dir.join("overlay.qcow2")),
        format: DiskFormat::Qcow2,
        arch: Arch::Amd64,
    };
    let err = acquire(&local, &f.cache, &fast_opts()).await.unwrap_err();
    assert!(format!("{err:#}").contains("backing file"), "{err:#}");
}

async fn declared_format_must_match() {
    let f = fixture();
    let (_, mut spec) = f.served_disk("disk.img");
    spec.format = DiskFormat::Raw;
    let err = acquire(&spec, &f.cache, &fast_opts()).await.unwrap_err();
    assert!(format!("{err:#}").contains("declares raw"), "{err:#}");
}

async fn remote_base_needs_a_checksum_unless_none() {
    let f = fixture();
    let spec = BaseSpec {
        url: Some(f.server.url("disk.qcow2")),
        ..BaseSpec::default()
    };
    let err = ResolvedBase::from_spec(&spec, &f.dir).unwrap_err();
    assert!(format!("{err:#}").contains("checksum: none"), "{err:#}");

    let data = f.serve_qcow2("disk.qcow2", "disk.qcow2", "16M");
    let spec = BaseSpec {
        url: Some(f.server.url("disk.qcow2")),
        checksum: Some(literal("none")),
        ..BaseSpec::default()
    };
    let resolved = ResolvedBase::from_spec(&spec, &f.dir).unwrap();
    let got = acquire(&resolved, &f.cache, &fast_opts()).await.unwrap();
    assert_eq!(got.digest, format!("sha256:{}", sha256(&data)));
    // Cached by URL.
    acquire(&resolved, &f.cache, &fast_opts()).await.unwrap();
    assert_eq!(f.server.count("disk.qcow2"), 1);
}

async fn fetch_file_extracts_members_of_zip_and_tar_gz() {
    let f = fixture();
    let binary: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let wheel = {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        zip.start_file("pkg/__init__.py", opts).unwrap();
        zip.write_all(b"").unwrap();
        zip.start_file("pkg/binary/tool.x86_64", opts).unwrap();
        zip.write_all(&binary).unwrap();
        zip.finish().unwrap().into_inner()
    };
    let tgz = {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_size(binary.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        builder
            .append_data(&mut header, "./tool-1.0/bin/tool", &binary[..])
            .unwrap();
        builder.into_inner().unwrap().finish().unwrap()
    };
    f.server.serve("tool-1.0-py3-none-any.whl", wheel.clone());
    f.server.serve("tool-1.0.tar.gz", tgz.clone());
    let opts = fast_opts();
    for (path, archive, member) in [
        (
            "tool-1.0-py3-none-any.whl",
            &wheel,
            "pkg/binary/tool.x86_64",
        ),
        ("tool-1.0.tar.gz", &tgz, "tool-1.0/bin/tool"),
    ] {
        let sum = Checksum::parse(&format!("sha256:{}", sha256(archive))).unwrap();
        let got = fetch_file(&f.server.url(path), &sum, Some(member), &f.cache, &opts)
            .await
            .unwrap();
        assert_eq!(fs::read(&got).unwrap(), binary, "{path}");
        assert_eq!(
            fs::metadata(&got).unwrap().permissions().mode() & 0o777,
            0o444
        );
        // Second call: no download.
        fetch_file(&f.server.url(path), &sum, Some(member), &f.cache, &opts)
            .await
            .unwrap();
        assert_eq!(f.server.count(path), 1);
        let err = fetch_file(&f.server.url(path), &sum, Some("nope"), &f.cache, &opts)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("no member nope"), "{err:#}");
    }
    // Without a member: the download itself.
    let sum = Checksum::parse(&format!("sha256:{}", sha256(&wheel))).unwrap();
    let got = fetch_file(
        &f.server.url("tool-1.0-py3-none-any.whl"),
        &sum,
        None,
        &f.cache,
        &opts,
    )
    .await
    .unwrap();
    assert_eq!(fs::read(got).unwrap(), wheel);
}

fn cache_list_and_prune_commands() {
    let f = fixture();
    let (data, spec) = f.served_disk("disk.qcow2");
    acquire_blocking(&spec, &f.cache, &fast_opts()).unwrap();
    let out = common::diskforge()
        .arg("--cache-dir")
        .arg(f.cache.root())
        .args(["cache", "list"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&sha256(&data)), "{stdout}");
    assert!(stdout.contains(&f.server.url("disk.qcow2")), "{stdout}");

    let prune = |args: &[&str]| {
        let out = common::diskforge()
            .arg("--cache-dir")
            .arg(f.cache.root())
            .args(["cache", "prune"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(prune(&["--days", "1"]).contains("removed 0 cached file"));
    assert_eq!(f.cache.list().unwrap().len(), 1);
    // An entry last used long ago goes with --days.
    let meta_path = f
        .cache
        .root()
        .join("meta")
        .join(format!("{}.json", sha256(&data)));
    let meta = fs::read_to_string(&meta_path).unwrap();
    let last_used = f.cache.list().unwrap()[0].last_used.clone();
    fs::write(&meta_path, meta.replace(&last_used, "2020-01-01T00:00:00Z")).unwrap();
    assert!(prune(&["--days", "30"]).contains("removed 1 cached file"));
    assert!(f.cache.list().unwrap().is_empty());
    // --all removes everything, recent or not.
    acquire_blocking(&spec, &f.cache, &fast_opts()).unwrap();
    assert_eq!(f.server.count("disk.qcow2"), 2);
    assert!(prune(&["--all"]).contains("removed 1 cached file"));
    assert!(f.cache.list().unwrap().is_empty());
    assert!(files_under(&f.cache.root().join("refs")).is_empty());
}

crate::tests! {
    async fn downloads_verifies_caches_and_never_modifies [FIXTURE];
    async fn resumes_with_range_after_a_cut_connection [FIXTURE];
    async fn resumes_a_partial_download_left_by_an_earlier_run [FIXTURE];
    async fn restarts_when_the_server_ignores_ranges [FIXTURE];
    async fn retries_503_then_succeeds [FIXTURE];
    async fn persistent_503_gives_up_naming_url_and_status [FIXTURE];
    async fn not_found_fails_at_once_naming_url_and_status [FIXTURE];
    async fn checksum_mismatch_is_typed_and_leaves_nothing [FIXTURE];
    async fn gnu_checksum_file_binary_and_text_mode [FIXTURE];
    async fn bsd_checksum_file_with_sha512_and_explicit_name [FIXTURE];
    async fn literal_sha512_and_its_mismatch [FIXTURE];
    async fn a_reference_naming_another_intact_blob_is_not_trusted [FIXTURE];
    async fn decompresses_xz_gz_zst_while_streaming [FIXTURE, &["xz", "gzip", "zstd"]];
    async fn corrupt_cache_entry_is_discarded_and_fetched_again [FIXTURE];
    async fn offline_uses_the_cache_only [FIXTURE];
    fn two_concurrent_acquisitions_download_once [FIXTURE];
    async fn local_path_base_is_used_in_place [FIXTURE];
    async fn qcow2_with_a_backing_file_is_refused [FIXTURE];
    async fn declared_format_must_match [FIXTURE];
    async fn remote_base_needs_a_checksum_unless_none [FIXTURE];
    async fn fetch_file_extracts_members_of_zip_and_tar_gz [FIXTURE];
    fn cache_list_and_prune_commands [FIXTURE];
}
