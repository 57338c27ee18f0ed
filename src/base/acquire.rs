//! Base image acquisition: from a resolved source (URL + checksum, or a local file) to a
//! verified, standalone image in the cache that is never modified afterwards.
//!
//! For a URL the flow is: resolve the expected checksum (literal, or a checksum file that
//! may be OpenPGP-signed) → look the checksum up in the cache → under the key's lock,
//! look again (a concurrent build may have finished it) → download into
//! `partial/<key>.part`, hashing the bytes as they arrive for the checksum and
//! decompressing `.xz`/`.gz`/`.zst` into a temporary blob hashed for the cache key →
//! verify → `qemu-img` check (declared format, no backing file) → rename into
//! `blobs/sha256/<digest>`.
//!
//! Every cache hit re-hashes the blob before it is used: a corrupt entry is discarded and
//! fetched again in the same run. A full re-read is the only check that catches silent
//! corruption, and it costs little next to a build: sha256 (SHA-NI) reads about
//! 1.2 GiB/s from the page cache on a 2-core build machine, so under a second for a
//! typical cloud image; a cold disk read is the bound.
//!
//! The download sink writes with std I/O from the async task: writes are sequential
//! 8-64 KiB appends, cheaper than handing each chunk to a blocking thread.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::base::checksum::{self, ChecksumMismatch, Digest, Hasher};
use crate::base::download::{Http, RetryPolicy, Sink};
use crate::base::signature;
use crate::cache::{Cache, RefKey};
use crate::io::atomic::AtomicFile as TempFile;
use crate::io::decompress::{Compression, Decoder};
use crate::io::hash::{sha256_hex, HashingWriter, Tap};
use crate::recipe::{Arch, BaseSpec, Checksum, ChecksumFile, ChecksumSpec, DiskFormat};

/// Where a base image comes from, after catalog and recipe resolution.
#[derive(Debug, Clone, PartialEq)]
pub enum BaseSource {
    /// A download; `.xz`, `.gz`, `.zst` are decompressed. A `signing-key` that is not a
    /// URL must already be an absolute path (or relative to the working directory).
    Url { url: String, checksum: ChecksumSpec },
    /// A local image file, used in place (never copied, never modified).
    Path(PathBuf),
}

/// A base image ready to be acquired.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedBase {
    pub source: BaseSource,
    /// Format of the (decompressed) image.
    pub format: DiskFormat,
    pub arch: Arch,
}

impl ResolvedBase {
    /// From an inline recipe `base:` (`url:` or `path:`); relative paths (the image, a
    /// signing key) are taken relative to `recipe_dir`. Catalog entries are resolved
    /// elsewhere and build a [`ResolvedBase`] directly.
    pub fn from_spec(spec: &BaseSpec, recipe_dir: &Path) -> Result<ResolvedBase> {
        let format = spec.format.unwrap_or_default();
        let arch = spec.arch.unwrap_or_default();
        let file_url = spec
            .url
            .as_deref()
            .and_then(crate::recipe::host::file_url_path)
            .transpose()
            .map_err(|e| anyhow::anyhow!(e))?;
        let source = match (&spec.url, &spec.path) {
            (Some(_), None) if file_url.is_some() => {
                BaseSource::Path(file_url.expect("checked just above"))
            }
            (Some(url), None) => {
                let Some(checksum) = spec.checksum.clone() else {
                    bail!(
                        "base url {url} has no checksum: give `checksum: sha256:…`, a checksum \
                         file, or `checksum: none` to accept an unverified download"
                    );
                };
                let checksum = match checksum {
                    ChecksumSpec::File(mut f) => {
                        if let Some(key) = &f.signing_key {
                            if !is_url(key) && !key.starts_with(BUILTIN_KEY) {
                                f.signing_key =
                                    Some(recipe_dir.join(key).to_string_lossy().into_owned());
                            }
                        }
                        ChecksumSpec::File(f)
                    }
                    literal => literal,
                };
                BaseSource::Url {
                    url: url.clone(),
                    checksum,
                }
            }
            (None, Some(path)) => BaseSource::Path(recipe_dir.join(path)),
            (Some(_), Some(_)) => bail!("base has both `url` and `path`; choose one"),
            (None, None) => {
                bail!("base has neither `url` nor `path` (catalog entries are resolved first)")
            }
        };
        Ok(ResolvedBase {
            source,
            format,
            arch,
        })
    }
}

impl ResolvedBase {
    /// From a catalog entry's image for `arch`. A relative `signing-key` is taken
    /// relative to the entry's directory, or from the built-in keys.
    pub fn from_catalog(
        entry: &crate::base::catalog::CatalogEntry,
        arch: Arch,
        origin: &crate::base::catalog::Origin,
    ) -> Result<ResolvedBase> {
        let Some(image) = entry.images.get(&arch) else {
            bail!(
                "catalog entry {} has no image for {}",
                entry.name,
                arch.as_str()
            );
        };
        let mut checksum = image.checksum.clone();
        let dir = match origin {
            crate::base::catalog::Origin::Dir(d) => d.clone(),
            crate::base::catalog::Origin::Embedded => {
                if let ChecksumSpec::File(f) = &mut checksum {
                    if let Some(k) = f.signing_key.as_mut().filter(|k| !is_url(k)) {
                        *k = format!("{BUILTIN_KEY}{k}");
                    }
                }
                PathBuf::new()
            }
        };
        let spec = BaseSpec {
            url: Some(image.url.clone()),
            checksum: Some(checksum),
            format: Some(entry.format),
            arch: Some(arch),
            ..BaseSpec::default()
        };
        ResolvedBase::from_spec(&spec, &dir)
    }
}

/// Runs an async acquisition from synchronous code, on the process's runtime; fails
/// when called from inside it, where the async function must be awaited instead.
fn block_on<F: std::future::Future<Output = Result<T>>, T>(future: F) -> Result<T> {
    if tokio::runtime::Handle::try_current().is_ok() {
        bail!("block_on called inside an async runtime: await the async function instead");
    }
    crate::sys::rt::block_on(future)
}

/// [`prepare`] for synchronous callers.
pub fn prepare_blocking(
    spec: &ResolvedBase,
    cache: &Cache,
    opts: &AcquireOptions,
) -> Result<Prepared> {
    block_on(prepare(spec, cache, opts))
}

/// [`fetch`] for synchronous callers.
pub fn fetch_blocking(
    spec: &ResolvedBase,
    prepared: &Prepared,
    cache: &Cache,
    opts: &AcquireOptions,
) -> Result<CachedBase> {
    block_on(fetch(spec, prepared, cache, opts))
}

/// [`acquire`] for synchronous callers.
pub fn acquire_blocking(
    spec: &ResolvedBase,
    cache: &Cache,
    opts: &AcquireOptions,
) -> Result<CachedBase> {
    block_on(acquire(spec, cache, opts))
}

/// [`fetch_file`] for synchronous callers.
pub fn fetch_file_blocking(
    url: &str,
    checksum: &Checksum,
    member: Option<&str>,
    cache: &Cache,
    opts: &AcquireOptions,
) -> Result<PathBuf> {
    block_on(fetch_file(url, checksum, member, cache, opts))
}

/// How acquisition may behave.
#[derive(Debug, Clone, Default)]
pub struct AcquireOptions {
    /// Use the cache only; a missing entry is an error naming the URL.
    pub offline: bool,
    pub retry: RetryPolicy,
}

/// A verified base image.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedBase {
    /// The read-only cached file (or the local file for a `path` base).
    pub path: PathBuf,
    /// `sha256:<hex>` of the image content (decompressed).
    pub digest: String,
    pub format: DiskFormat,
    pub virtual_size: u64,
}

/// Prefix of a signing key taken from the built-in catalog keys.
const BUILTIN_KEY: &str = "builtin:";

/// Largest checksum file, signature or key fetched into memory.
const SMALL_FILE_LIMIT: usize = 16 << 20;

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// The last path segment of a URL, without query or fragment.
pub fn url_file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
}

fn source_key(d: &Digest) -> RefKey {
    RefKey::Source {
        algorithm: d.algorithm.name().to_string(),
        hex: d.hex.clone(),
    }
}

/// What is known about a base before it is fetched: the checksum it must have (read
/// from a checksum file, whose signature is verified, when the recipe names one), its
/// cache key, and the verified cache entry when there is one.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The upstream checksum (`None`: `checksum: none`, or a local file).
    pub expected: Option<Digest>,
    /// A verified cached (or local) copy, when there is one.
    pub cached: Option<CachedBase>,
}

impl Prepared {
    /// Identifies the base's content for build keys: the upstream checksum, else the
    /// content digest of the copy at hand.
    pub fn identity(&self) -> Option<String> {
        self.expected
            .as_ref()
            .map(|d| d.to_string())
            .or_else(|| self.cached.as_ref().map(|c| c.digest.clone()))
    }
}

/// Resolves a base without downloading the image: reads (and verifies) its checksum
/// file, and finds and verifies a cached copy. A local file is hashed and checked.
pub async fn prepare(
    spec: &ResolvedBase,
    cache: &Cache,
    opts: &AcquireOptions,
) -> Result<Prepared> {
    match &spec.source {
        BaseSource::Path(path) => Ok(Prepared {
            expected: None,
            cached: Some(acquire_local(path, spec.format).await?),
        }),
        BaseSource::Url { url, checksum } => {
            let url_key = RefKey::Url(url.to_string());
            if let ChecksumSpec::Literal(Checksum::None) = checksum {
                tracing::warn!("base {url} has `checksum: none`: the download is NOT verified");
            }
            let expected = match checksum {
                ChecksumSpec::Literal(c) => Digest::from_checksum(c),
                ChecksumSpec::File(_) if opts.offline => None,
                ChecksumSpec::File(f) => {
                    let http = Http::new(opts.retry.clone())?;
                    Some(
                        resolve_checksum_file(&http, url, f)
                            .await
                            .with_context(|| format!("finding the checksum of {url}"))?,
                    )
                }
            };
            // Offline with a checksum file: the last download of this URL stands in.
            let key = expected.as_ref().map(source_key).unwrap_or(url_key);
            let cached = match cached_blob(cache, &key).await? {
                Some(hex) => Some(cached_base(cache, &hex, spec.format, url)?),
                None => None,
            };
            Ok(Prepared { expected, cached })
        }
    }
}

/// Downloads a prepared base that is not cached yet; returns the verified copy.
pub async fn fetch(
    spec: &ResolvedBase,
    prepared: &Prepared,
    cache: &Cache,
    opts: &AcquireOptions,
) -> Result<CachedBase> {
    if let Some(c) = &prepared.cached {
        return Ok(c.clone());
    }
    let BaseSource::Url { url, .. } = &spec.source else {
        bail!("a local base is never fetched");
    };
    if opts.offline {
        bail!(
            "--offline: the base image {url} is not in the cache {}",
            cache.root().display()
        );
    }
    let url_key = RefKey::Url(url.to_string());
    let http = Http::new(opts.retry.clone())?;
    let key = prepared
        .expected
        .as_ref()
        .map(source_key)
        .unwrap_or(url_key.clone());
    let hex = fetch_into_cache(
        &http,
        url,
        prepared.expected.as_ref(),
        &key,
        cache,
        Some(spec.format),
    )
    .await?;
    cache.set_ref(&url_key, &hex)?;
    cached_base(cache, &hex, spec.format, url)
}

/// Gets the base image into the cache (or checks a local one) and returns it verified.
pub async fn acquire(
    spec: &ResolvedBase,
    cache: &Cache,
    opts: &AcquireOptions,
) -> Result<CachedBase> {
    let prepared = prepare(spec, cache, opts).await?;
    fetch(spec, &prepared, cache, opts).await
}

async fn acquire_local(path: &Path, format: DiskFormat) -> Result<CachedBase> {
    let path = fs::canonicalize(path)
        .with_context(|| format!("base image {} does not exist", path.display()))?;
    let p = path.clone();
    let (hex, _) = tokio::task::spawn_blocking(move || crate::io::hash::sha256_file(&p))
        .await
        .context("hashing the local base image")??;
    let info = crate::sys::qemu_img::check_standalone(&path, format)
        .with_context(|| format!("checking local base image {}", path.display()))?;
    Ok(CachedBase {
        path,
        digest: format!("sha256:{hex}"),
        format,
        virtual_size: info.virtual_size,
    })
}

/// A verified cache entry for `key`, or `None` (missing, or corrupt and discarded).
async fn cached_blob(cache: &Cache, key: &RefKey) -> Result<Option<String>> {
    let Some(hex) = cache.lookup(key)? else {
        return Ok(None);
    };
    let c = cache.clone();
    let h = hex.clone();
    let intact = tokio::task::spawn_blocking(move || c.verify_blob(&h))
        .await
        .context("re-hashing a cached file")??;
    if !intact {
        return Ok(None);
    }
    cache.touch(&hex)?;
    Ok(Some(hex))
}

fn cached_base(cache: &Cache, hex: &str, format: DiskFormat, url: &str) -> Result<CachedBase> {
    let path = cache.blob_path(hex);
    let info = crate::sys::qemu_img::check_standalone(&path, format)
        .with_context(|| format!("checking the base image downloaded from {url}"))?;
    Ok(CachedBase {
        path,
        digest: format!("sha256:{hex}"),
        format,
        virtual_size: info.virtual_size,
    })
}

/// Returns the blob for `key`, downloading `url` under the key's lock when it is missing.
async fn fetch_into_cache(
    http: &Http,
    url: &str,
    expected: Option<&Digest>,
    key: &RefKey,
    cache: &Cache,
    format: Option<DiskFormat>,
) -> Result<String> {
    if let Some(hex) = cached_blob(cache, key).await? {
        tracing::info!("using cached {url} (sha256:{hex})");
        return Ok(hex);
    }
    let _lock = cache.lock(key).await?;
    // Whoever held the lock before us may have stored it.
    if let Some(hex) = cached_blob(cache, key).await? {
        tracing::info!("using {url} just stored by another diskforge process");
        return Ok(hex);
    }
    let compression = Compression::from_name(url_file_name(url));
    let part_key = sha256_hex(
        format!(
            "{url}\n{}",
            expected.map(|d| d.to_string()).unwrap_or_default()
        )
        .as_bytes(),
    );
    let mut ingest = Ingest::open(cache, &part_key, url, expected, compression)?;
    let label = format!("downloading {}", url_file_name(url));
    if let Err(e) = http.download(url, &mut ingest, Some(&label)).await {
        // Keep received bytes for the next run to resume from; an empty file helps nobody.
        if ingest.len == 0 {
            ingest.discard_part();
        }
        return Err(e);
    }
    let done = ingest.finish()?;
    if let Some(format) = format {
        crate::sys::qemu_img::check_standalone(done.temp.path(), format)
            .with_context(|| format!("checking the base image downloaded from {url}"))?;
    }
    let source = expected.map(|d| d.to_string());
    cache.commit(done.temp, &done.hex, url, source, &[key])?;
    Ok(done.hex)
}

/// Resolves the expected digest from a (possibly signed) checksum file.
async fn resolve_checksum_file(http: &Http, image_url: &str, f: &ChecksumFile) -> Result<Digest> {
    let bytes = http
        .fetch_bytes(&f.url, SMALL_FILE_LIMIT)
        .await
        .with_context(|| format!("fetching checksum file {}", f.url))?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("checksum file {} is not UTF-8 text", f.url))?;
    let what = format!("checksum file {}", f.url);
    let body = match (&f.signing_key, &f.signature_url) {
        (Some(key), sig_url) => {
            let key = load_key(http, key).await?;
            signature::check_fingerprints(&key, &f.signing_key_fingerprints)
                .with_context(|| format!("checking the signing key for {}", f.url))?;
            let dir = tempfile::tempdir().context("creating a temporary directory")?;
            let file = dir.path().join("checksums");
            fs::write(&file, &text).with_context(|| format!("writing {}", file.display()))?;
            match sig_url {
                Some(sig_url) => {
                    let sig = http
                        .fetch_bytes(sig_url, SMALL_FILE_LIMIT)
                        .await
                        .with_context(|| format!("fetching signature {sig_url}"))?;
                    let sig_path = dir.path().join("checksums.sig");
                    fs::write(&sig_path, sig)
                        .with_context(|| format!("writing {}", sig_path.display()))?;
                    signature::verify_detached(&file, &sig_path, &key, &what)?;
                    if checksum::is_clearsigned(&text) {
                        checksum::strip_clearsign(&text)?
                    } else {
                        text
                    }
                }
                None => {
                    if !checksum::is_clearsigned(&text) {
                        bail!(
                            "{what} is not cleartext-signed; give `signature-url` for a \
                             detached signature"
                        );
                    }
                    signature::verify_clearsigned(&file, &key, &what)?
                }
            }
        }
        (None, Some(_)) => bail!("{what}: `signature-url` needs `signing-key`"),
        (None, None) if checksum::is_clearsigned(&text) => checksum::strip_clearsign(&text)?,
        (None, None) => text,
    };
    let name = f
        .file
        .clone()
        .unwrap_or_else(|| url_file_name(image_url).to_string());
    checksum::find_in_checksum_file(&body, &name, f.algorithm)
        .with_context(|| format!("reading {what}"))
}

async fn load_key(http: &Http, key: &str) -> Result<Vec<u8>> {
    if let Some(rel) = key.strip_prefix(BUILTIN_KEY) {
        crate::base::catalog::Origin::Embedded.key(rel)
    } else if is_url(key) {
        http.fetch_bytes(key, SMALL_FILE_LIMIT)
            .await
            .with_context(|| format!("fetching signing key {key}"))
    } else {
        fs::read(key).with_context(|| format!("reading signing key {key}"))
    }
}

/// Fetches a small artifact (a static binary, an archive) through the cache and returns
/// the read-only cached file. With `member`, the download is a `.whl`/`.zip` or
/// `.tar`/`.tar.gz` archive and the returned file is that member, extracted and cached
/// under its own digest. The checksum covers the download (the archive).
pub async fn fetch_file(
    url: &str,
    checksum: &Checksum,
    member: Option<&str>,
    cache: &Cache,
    opts: &AcquireOptions,
) -> Result<PathBuf> {
    let expected = Digest::from_checksum(checksum);
    if expected.is_none() {
        tracing::warn!("{url} has `checksum: none`: the download is NOT verified");
    }
    let url_key = RefKey::Url(url.to_string());
    let key = expected.as_ref().map(source_key).unwrap_or(url_key.clone());
    let archive_hex = if opts.offline {
        match cached_blob(cache, &key).await? {
            Some(hex) => hex,
            None => bail!(
                "--offline: {url} is not in the cache {}",
                cache.root().display()
            ),
        }
    } else {
        let http = Http::new(opts.retry.clone())?;
        // Archives are stored as downloaded; only members are extracted.
        let hex = fetch_into_cache(&http, url, expected.as_ref(), &key, cache, None).await?;
        cache.set_ref(&url_key, &hex)?;
        hex
    };
    let Some(member) = member else {
        return Ok(cache.blob_path(&archive_hex));
    };
    let member_key = RefKey::Member {
        archive: archive_hex.clone(),
        member: member.to_string(),
    };
    if let Some(hex) = cached_blob(cache, &member_key).await? {
        return Ok(cache.blob_path(&hex));
    }
    let _lock = cache.lock(&member_key).await?;
    let archive = cache.blob_path(&archive_hex);
    let tap = Tap::new();
    let mut out = HashingWriter::new(cache.temp_blob()?, tap.clone(), None);
    extract_member(&archive, member, &mut out)
        .with_context(|| format!("extracting {member} from {url}"))?;
    let temp = out.into_inner();
    let hex = tap.digest().0.trim_start_matches("sha256:").to_string();
    cache.commit(temp, &hex, &format!("{url}!{member}"), None, &[&member_key])
}

/// Copies one member of a zip (`.whl`) or tar (optionally gzip) archive into `out`.
fn extract_member(archive: &Path, member: &str, out: &mut impl Write) -> Result<()> {
    let mut file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic)?;
    file.seek(SeekFrom::Start(0))?;
    let wanted = member.trim_start_matches("./");
    if n >= 4 && magic == *b"PK\x03\x04" {
        let mut zip = zip::ZipArchive::new(file).context("reading the zip archive")?;
        let mut entry = zip
            .by_name(wanted)
            .with_context(|| format!("the archive has no member {member}"))?;
        std::io::copy(&mut entry, out).context("extracting the member")?;
        return Ok(());
    }
    let reader: Box<dyn Read> = if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().context("reading the tar archive")? {
        let mut entry = entry.context("reading the tar archive")?;
        let path = entry.path().context("reading a tar entry name")?;
        let name = path.to_string_lossy();
        if name.trim_start_matches("./") == wanted {
            std::io::copy(&mut entry, out).context("extracting the member")?;
            return Ok(());
        }
    }
    bail!("the archive has no member {member}")
}

/// What the download sink does with the content, besides keeping the `.part` file.
enum Content {
    /// Uncompressed: the `.part` file is the content; only its sha256 is needed.
    Plain(Sha256),
    /// Compressed: decompressed on the fly into a temporary blob, hashed by the tap.
    Decoded(Box<Decoder<HashingWriter<TempFile>>>, Tap),
}

/// `partial/<key>.json`: which download a `.part` file belongs to.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartMeta {
    url: String,
    validator: Option<String>,
}

/// The download sink: appends to `partial/<key>.part` (kept across retries and runs for
/// resuming), hashes for the checksum, and hashes or decompresses for the cache key.
struct Ingest {
    cache: Cache,
    url: String,
    expected: Option<Digest>,
    compression: Compression,
    part_path: PathBuf,
    meta_path: PathBuf,
    part: File,
    len: u64,
    validator: Option<String>,
    source: Hasher,
    content: Content,
}

/// A verified download, ready to commit.
struct Ingested {
    temp: TempFile,
    hex: String,
}

impl Ingest {
    fn open(
        cache: &Cache,
        key: &str,
        url: &str,
        expected: Option<&Digest>,
        compression: Compression,
    ) -> Result<Ingest> {
        let dir = cache.partial_dir();
        let part_path = dir.join(format!("{key}.part"));
        let meta_path = dir.join(format!("{key}.json"));
        let part = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part_path)
            .with_context(|| format!("opening {}", part_path.display()))?;
        let meta: Option<PartMeta> = fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|m: &PartMeta| m.url == url);
        let mut ingest = Ingest {
            cache: cache.clone(),
            url: url.to_string(),
            expected: expected.cloned(),
            compression,
            part_path,
            meta_path,
            part,
            len: 0,
            validator: meta.and_then(|m| m.validator),
            source: Hasher::new(
                expected
                    .map(|d| d.algorithm)
                    .unwrap_or(crate::recipe::HashAlgorithm::Sha256),
            ),
            content: Content::Plain(Sha256::new()),
        };
        ingest.content = ingest.new_content()?;
        if let Err(e) = ingest.replay() {
            tracing::warn!("discarding unusable partial download of {url}: {e:#}");
            ingest.reset()?;
        } else if ingest.len > 0 {
            tracing::info!("found {} bytes of an earlier download of {url}", ingest.len);
        }
        Ok(ingest)
    }

    fn new_content(&self) -> Result<Content> {
        let tap = Tap::new();
        let temp = HashingWriter::new(self.cache.temp_blob()?, tap.clone(), None);
        Ok(match Decoder::new(self.compression, temp)? {
            Some(d) => Content::Decoded(Box::new(d), tap),
            None => Content::Plain(Sha256::new()),
        })
    }

    /// Feeds the bytes of an earlier run's `.part` through the hashers and decoder.
    fn replay(&mut self) -> Result<()> {
        self.part.seek(SeekFrom::Start(0))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = self
                .part
                .read(&mut buf)
                .context("reading the partial download")?;
            if n == 0 {
                break;
            }
            self.consume(&buf[..n])?;
            self.len += n as u64;
        }
        Ok(())
    }

    fn consume(&mut self, data: &[u8]) -> Result<()> {
        self.source.update(data);
        match &mut self.content {
            Content::Plain(h) => h.update(data),
            Content::Decoded(d, _) => d.write_all(data).with_context(|| {
                format!("decompressing ({}) {}", self.compression.name(), self.url)
            })?,
        }
        Ok(())
    }

    /// Removes the partial download (its bytes are wrong or no longer needed).
    fn discard_part(&self) {
        let _ = fs::remove_file(&self.part_path);
        let _ = fs::remove_file(&self.meta_path);
    }

    /// Checks the checksum and returns the content as a temporary blob with its digest.
    /// On a mismatch nothing is kept: no partial file, no temporary blob.
    fn finish(self) -> Result<Ingested> {
        let actual = self.source.clone().finish();
        if let Some(expected) = &self.expected {
            if actual != *expected {
                self.discard_part();
                return Err(ChecksumMismatch {
                    url: self.url.clone(),
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                }
                .into());
            }
        }
        self.part
            .sync_all()
            .with_context(|| format!("syncing {}", self.part_path.display()))?;
        let result = match self.content {
            Content::Plain(h) => {
                let temp = TempFile::adopt(&self.part_path, &self.cache.blob_dir())?;
                Ingested {
                    temp,
                    hex: hex::encode(h.finalize()),
                }
            }
            Content::Decoded(d, tap) => {
                let finished = (*d).finish().with_context(|| {
                    format!("decompressing ({}) {}", self.compression.name(), self.url)
                });
                let finished = match finished {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = fs::remove_file(&self.part_path);
                        let _ = fs::remove_file(&self.meta_path);
                        return Err(e);
                    }
                };
                let mut temp = finished.into_inner();
                temp.flush().context("writing the decompressed image")?;
                let hex = tap.digest().0.trim_start_matches("sha256:").to_string();
                let _ = fs::remove_file(&self.part_path);
                Ingested { temp, hex }
            }
        };
        let _ = fs::remove_file(&self.meta_path);
        Ok(result)
    }
}

impl Sink for Ingest {
    fn position(&self) -> u64 {
        self.len
    }

    fn validator(&self) -> Option<String> {
        self.validator.clone()
    }

    fn set_validator(&mut self, validator: Option<String>) -> Result<()> {
        self.validator = validator;
        let meta = PartMeta {
            url: self.url.clone(),
            validator: self.validator.clone(),
        };
        fs::write(&self.meta_path, serde_json::to_vec(&meta)?)
            .with_context(|| format!("writing {}", self.meta_path.display()))
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        if let Err(e) = self.consume(data) {
            // Undecodable bytes would poison every later resume: start over next time.
            self.discard_part();
            return Err(e);
        }
        self.part
            .write_all(data)
            .with_context(|| format!("writing {}", self.part_path.display()))?;
        self.len += data.len() as u64;
        Ok(())
    }

    fn reset(&mut self) -> Result<()> {
        self.part
            .set_len(0)
            .with_context(|| format!("truncating {}", self.part_path.display()))?;
        self.part.seek(SeekFrom::Start(0))?;
        self.len = 0;
        self.source = Hasher::new(self.source.algorithm());
        self.content = self.new_content()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::catalog::{CatalogEntry, CatalogImage};

    #[test]
    fn file_names_of_urls() {
        assert_eq!(url_file_name("https://h/a/b.qcow2.xz?x=1#f"), "b.qcow2.xz");
        assert_eq!(url_file_name("https://h/b.img"), "b.img");
    }

    #[test]
    fn relative_paths_follow_the_recipe_or_catalog() {
        let checksum = ChecksumSpec::File(ChecksumFile {
            url: "https://h/SHA256SUMS".into(),
            file: None,
            algorithm: None,
            signing_key: Some("keys/release.asc".into()),
            signature_url: None,
            signing_key_fingerprints: Vec::new(),
        });
        let mut images = std::collections::BTreeMap::new();
        images.insert(
            Arch::Amd64,
            CatalogImage {
                url: "https://h/disk.qcow2".into(),
                checksum,
            },
        );
        let entry = CatalogEntry {
            name: "x".into(),
            description: "x".into(),
            os: "debian".into(),
            release: "12".into(),
            format: DiskFormat::Raw,
            homepage: None,
            images,
            build: None,
            virtual_size: None,
            firmware: Default::default(),
        };
        let cat = crate::base::catalog::Origin::Dir("/cat".into());
        let base = ResolvedBase::from_catalog(&entry, Arch::Amd64, &cat).unwrap();
        assert_eq!(base.format, DiskFormat::Raw);
        let BaseSource::Url {
            checksum: ChecksumSpec::File(f),
            ..
        } = &base.source
        else {
            panic!("{base:?}")
        };
        assert_eq!(f.signing_key.as_deref(), Some("/cat/keys/release.asc"));
        assert!(ResolvedBase::from_catalog(&entry, Arch::Arm64, &cat).is_err());

        let local = BaseSpec {
            path: Some("img/disk.qcow2".into()),
            ..BaseSpec::default()
        };
        let base = ResolvedBase::from_spec(&local, Path::new("/r")).unwrap();
        assert_eq!(base.source, BaseSource::Path("/r/img/disk.qcow2".into()));
    }

    #[test]
    fn block_on_refuses_to_nest() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt
            .block_on(async { block_on(async { Ok(()) }) })
            .unwrap_err();
        assert!(err.to_string().contains("await"));
    }
}
