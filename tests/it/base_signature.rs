//! Signed checksum files: keys generated at run time with gpg in a temporary GNUPGHOME,
//! verification by diskforge with sqv (detached) and gpgv (cleartext-signed), tampering
//! rejected before the image is trusted.

use crate::common;
use common::Run;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::http::TestServer;
use diskforge::base::download::RetryPolicy;
use diskforge::base::{acquire, AcquireOptions, BaseSource, ResolvedBase};
use diskforge::cache::Cache;
use diskforge::recipe::{Arch, ChecksumFile, ChecksumSpec, DiskFormat};
use sha2::Digest as _;

fn sha256(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// A throwaway GNUPGHOME with two signing keys; its agent is stopped on drop.
struct Gpg {
    home: tempfile::TempDir,
}

const GOOD: &str = "diskforge test <good@diskforge.invalid>";
const OTHER: &str = "diskforge other <other@diskforge.invalid>";

impl Gpg {
    fn new() -> Gpg {
        // Short path: gpg-agent's socket path has a length limit.
        let home = tempfile::Builder::new()
            .prefix("dfgpg")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        let gpg = Gpg { home };
        for uid in [GOOD, OTHER] {
            gpg.run(&["--quick-gen-key", uid, "ed25519", "sign", "1d"]);
        }
        gpg
    }

    fn run(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args([
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .succeeds();
        out.stdout
    }

    fn export(&self, uid: &str, armor: bool) -> Vec<u8> {
        if armor {
            self.run(&["--armor", "--export", uid])
        } else {
            self.run(&["--export", uid])
        }
    }

    fn clearsign(&self, uid: &str, text: &str) -> Vec<u8> {
        self.sign(uid, "--clearsign", text, "out.asc")
    }

    fn detach_sign(&self, uid: &str, text: &str) -> Vec<u8> {
        self.sign(uid, "--detach-sign", text, "out.sig")
    }

    /// `text` signed by `uid` the way `how` says, read back from the output file `name`.
    fn sign(&self, uid: &str, how: &str, text: &str, name: &str) -> Vec<u8> {
        let input = self.home.path().join("in.txt");
        fs::write(&input, text).unwrap();
        let output = self.home.path().join(name);
        self.run(&[
            "--local-user",
            uid,
            how,
            "--output",
            output.to_str().unwrap(),
            input.to_str().unwrap(),
        ]);
        fs::read(output).unwrap()
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

struct Fixture {
    tmp: tempfile::TempDir,
    server: TestServer,
    gpg: Gpg,
    image: Vec<u8>,
    evil: Vec<u8>,
}

fn make_qcow2(dir: &Path, name: &str, size: &str) -> Vec<u8> {
    fs::read(common::disk::qcow2(dir, name, size)).unwrap()
}

/// What [`fixture`] needs.
const FIXTURE: &[&str] = &["qemu-img", "gpg", "gpgv", "sqv", "gpgconf"];

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let image = make_qcow2(tmp.path(), "good.qcow2", "16M");
    let evil = make_qcow2(tmp.path(), "evil.qcow2", "32M");
    Fixture {
        server: TestServer::start(),
        gpg: Gpg::new(),
        image,
        evil,
        tmp,
    }
}

impl Fixture {
    fn key_file(&self, uid: &str, armor: bool) -> PathBuf {
        let path = self.tmp.path().join(format!(
            "key-{}.{}",
            sha256(uid.as_bytes()),
            if armor { "asc" } else { "gpg" }
        ));
        fs::write(&path, self.gpg.export(uid, armor)).unwrap();
        path
    }

    fn sums(&self, data: &[u8]) -> String {
        format!(
            "{}  other.qcow2\n{}  disk.qcow2\n",
            "1".repeat(64),
            sha256(data)
        )
    }

    fn spec(&self, sums: &str, key: String, sig: Option<&str>) -> ResolvedBase {
        ResolvedBase {
            source: BaseSource::Url {
                url: self.server.url("disk.qcow2"),
                checksum: ChecksumSpec::File(ChecksumFile {
                    url: self.server.url(sums),
                    file: None,
                    algorithm: None,
                    signing_key: Some(key),
                    signature_url: sig.map(|s| self.server.url(s)),
                    signing_key_fingerprints: Vec::new(),
                }),
            },
            format: DiskFormat::Qcow2,
            arch: Arch::Amd64,
        }
    }

    fn cache(&self, name: &str) -> Cache {
        Cache::new(self.tmp.path().join(name)).unwrap()
    }
}

fn opts() -> AcquireOptions {
    AcquireOptions {
        offline: false,
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            ..Default::default()
        },
    }
}

fn blobs(cache: &Cache) -> usize {
    fs::read_dir(cache.blob_dir()).unwrap().count()
}

/// Acquiring `spec` into `cache` fails on the signature ("NOT valid") and caches nothing.
async fn refused_as_not_valid(spec: &ResolvedBase, cache: &Cache) {
    let err = acquire(spec, cache, &opts()).await.unwrap_err();
    assert!(format!("{err:#}").contains("NOT valid"), "{err:#}");
    assert_eq!(blobs(cache), 0);
}

async fn clearsigned_checksum_file_is_verified_and_tampering_rejected() {
    let f = fixture();
    f.server.serve("disk.qcow2", f.image.clone());
    let signed = f.gpg.clearsign(GOOD, &f.sums(&f.image));
    f.server.serve("SHA256SUMS.asc", signed.clone());
    // The key as an armored file, and as a URL serving the binary key.
    let key_path = f.key_file(GOOD, true).to_string_lossy().into_owned();
    f.server.serve("key.gpg", f.gpg.export(GOOD, false));

    let cache = f.cache("c1");
    let got = acquire(
        &f.spec("SHA256SUMS.asc", key_path.clone(), None),
        &cache,
        &opts(),
    )
    .await
    .unwrap();
    assert_eq!(got.digest, format!("sha256:{}", sha256(&f.image)));
    let cache = f.cache("c2");
    acquire(
        &f.spec("SHA256SUMS.asc", f.server.url("key.gpg"), None),
        &cache,
        &opts(),
    )
    .await
    .unwrap();

    // An attacker swaps the image and edits the hash in the signed text.
    let tampered = String::from_utf8(signed)
        .unwrap()
        .replace(&sha256(&f.image), &sha256(&f.evil));
    f.server.serve("evil/SHA256SUMS.asc", tampered.into_bytes());
    f.server.serve("evil.qcow2", f.evil.clone());
    let mut spec = f.spec("evil/SHA256SUMS.asc", key_path.clone(), None);
    if let BaseSource::Url { url, .. } = &mut spec.source {
        *url = f.server.url("evil.qcow2");
    }
    if let BaseSource::Url {
        checksum: ChecksumSpec::File(cf),
        ..
    } = &mut spec.source
    {
        cf.file = Some("disk.qcow2".into());
    }
    let cache = f.cache("c3");
    let err = acquire(&spec, &cache, &opts()).await.unwrap_err();
    assert!(format!("{err:#}").contains("NOT valid"), "{err:#}");
    assert_eq!(
        f.server.count("evil.qcow2"),
        0,
        "the image is never fetched"
    );
    assert_eq!(blobs(&cache), 0);

    // Signed by a key other than the configured one.
    f.server.serve(
        "other/SHA256SUMS.asc",
        f.gpg.clearsign(OTHER, &f.sums(&f.image)),
    );
    refused_as_not_valid(
        &f.spec("other/SHA256SUMS.asc", key_path.clone(), None),
        &f.cache("c4"),
    )
    .await;

    // A signing key but neither a clearsigned file nor a signature URL.
    f.server
        .serve("plain/SHA256SUMS", f.sums(&f.image).into_bytes());
    let err = acquire(
        &f.spec("plain/SHA256SUMS", key_path, None),
        &f.cache("c5"),
        &opts(),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("not cleartext-signed"),
        "{err:#}"
    );
}

async fn detached_signature_is_verified_with_sqv_and_tampering_rejected() {
    let f = fixture();
    f.server.serve("disk.qcow2", f.image.clone());
    let sums = f.sums(&f.image);
    f.server.serve("SHA256SUMS", sums.clone().into_bytes());
    f.server
        .serve("SHA256SUMS.sig", f.gpg.detach_sign(GOOD, &sums));
    let key = f.key_file(GOOD, true).to_string_lossy().into_owned();

    let cache = f.cache("d1");
    let got = acquire(
        &f.spec("SHA256SUMS", key.clone(), Some("SHA256SUMS.sig")),
        &cache,
        &opts(),
    )
    .await
    .unwrap();
    assert_eq!(got.digest, format!("sha256:{}", sha256(&f.image)));

    // The checksum file changed after signing.
    f.server.serve(
        "SHA256SUMS",
        sums.replace(&sha256(&f.image), &sha256(&f.evil))
            .into_bytes(),
    );
    refused_as_not_valid(
        &f.spec("SHA256SUMS", key, Some("SHA256SUMS.sig")),
        &f.cache("d2"),
    )
    .await;
}

async fn clearsigned_file_without_a_key_is_read_after_stripping_the_armor() {
    let f = fixture();
    f.server.serve("disk.qcow2", f.image.clone());
    f.server
        .serve("SHA256SUMS.asc", f.gpg.clearsign(GOOD, &f.sums(&f.image)));
    let spec = ResolvedBase {
        source: BaseSource::Url {
            url: f.server.url("disk.qcow2"),
            checksum: ChecksumSpec::File(ChecksumFile {
                url: f.server.url("SHA256SUMS.asc"),
                file: None,
                algorithm: None,
                signing_key: None,
                signature_url: None,
                signing_key_fingerprints: Vec::new(),
            }),
        },
        format: DiskFormat::Qcow2,
        arch: Arch::Amd64,
    };
    let got = acquire(&spec, &f.cache("e1"), &opts()).await.unwrap();
    assert_eq!(got.digest, format!("sha256:{}", sha256(&f.image)));
}

crate::tests! {
    async fn clearsigned_checksum_file_is_verified_and_tampering_rejected [FIXTURE];
    async fn detached_signature_is_verified_with_sqv_and_tampering_rejected [FIXTURE];
    async fn clearsigned_file_without_a_key_is_read_after_stripping_the_armor [FIXTURE];
}
