//! Registry publishing with oci-client: streaming blob upload from the layout's files
//! (never a layer in memory), HEAD to skip blobs the registry has, cross-repository
//! mounts, retries that restart a blob from its file, manifest last; pulls into a layout;
//! remote inspection that reads only the start of the layer.

pub mod auth;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::{json, Value};

use crate::cli::{GlobalOpts, InspectArgs, PushArgs};
use crate::oci::{Descriptor, Layout};

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// False: plain HTTP and unverified TLS allowed for every destination (`--tls-verify=false`).
    pub tls_verify: bool,
    /// Registries (`host[:port]`) that may be reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// `USER:PASSWORD` from `--creds` / `DISKFORGE_CREDS`; auth files otherwise.
    pub creds: Option<crate::recipe::SecretValue>,
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct PushOutcome {
    /// `HOST/REPO@sha256:…` of the first destination.
    pub pinned: String,
    /// The manifest digest `sha256:…`.
    pub digest: String,
    pub uploaded_blobs: usize,
    pub skipped_blobs: usize,
    pub mounted_blobs: usize,
}

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Attempts per blob before a push gives up.
const ATTEMPTS: u32 = 5;

fn parse_ref(s: &str) -> Result<Reference> {
    let s = s.trim_start_matches("docker://");
    s.parse::<Reference>()
        .with_context(|| format!("{s:?} is not an image reference such as HOST/REPO:TAG"))
}

/// A client for `registry`, allowing plain HTTP where the options say so.
fn client(registry: &str, opts: &RegistryOptions) -> Client {
    let mut insecure = opts.insecure_registries.clone();
    if !opts.tls_verify {
        insecure.push(registry.to_string());
    }
    Client::new(ClientConfig {
        protocol: if insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(insecure)
        },
        accept_invalid_certificates: !opts.tls_verify,
        use_monolithic_push: true,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(300)),
        ..Default::default()
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime for the registry")
}

/// Errors that make retrying pointless: the registry refused the credentials. Decided
/// from the error's type and status only — never from its text, which holds URLs whose
/// upload ids and digests can contain "401" or "403".
fn permanent(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode};
    match e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => true,
        E::ServerError { code, .. } => matches!(code, 401 | 403),
        E::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|x| matches!(x.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        E::RequestError(r) => r.status().is_some_and(|s| s == 401 || s == 403),
        _ => false,
    }
}

/// A clear authentication error that never contains the credential.
fn auth_error(registry: &str, e: impl std::fmt::Display, secrets: &[String]) -> anyhow::Error {
    anyhow::anyhow!(
        "authentication failed for {registry}: check --creds / DISKFORGE_CREDS or the auth file ({})",
        crate::exec::redact(&e.to_string(), secrets)
    )
}

/// Pushes the image tagged `tag` in the OCI layout `layout` to every `docker://HOST/REPO:TAG`
/// destination (same repository: one upload, several tags).
pub fn push_layout(
    layout: &Path,
    tag: &str,
    destinations: &[String],
    opts: &RegistryOptions,
) -> Result<PushOutcome> {
    let l = Layout::open(layout)?;
    let desc = l.resolve(Some(tag))?;
    let refs = destinations
        .iter()
        .map(|d| parse_ref(d))
        .collect::<Result<Vec<_>>>()?;
    let first = refs.first().context("no registry destination")?.clone();
    for r in &refs {
        if r.resolve_registry() != first.resolve_registry() || r.repository() != first.repository()
        {
            bail!(
                "destinations of one push must share the repository {}/{}",
                first.resolve_registry(),
                first.repository()
            );
        }
    }
    runtime()?.block_on(push_async(&l, &desc, &refs, opts))
}

async fn push_async(
    l: &Layout,
    desc: &Descriptor,
    refs: &[Reference],
    opts: &RegistryOptions,
) -> Result<PushOutcome> {
    let target = &refs[0];
    let registry = target.resolve_registry().to_string();
    let (auth, secrets) = auth::for_registry(&registry, opts)?;
    let c = client(&registry, opts);
    c.auth(target, &auth, RegistryOperation::Push)
        .await
        .map_err(|e| {
            if permanent(&e) {
                auth_error(&registry, e, &secrets)
            } else {
                anyhow::anyhow!(
                    "contacting {registry}: {}",
                    crate::exec::redact(&e.to_string(), &secrets)
                )
            }
        })?;

    let manifest_bytes = l.read_blob(&desc.digest)?;
    let manifest: Value =
        serde_json::from_slice(&manifest_bytes).context("parsing the manifest")?;
    let mut blobs: Vec<(String, u64)> = vec![(
        manifest["config"]["digest"]
            .as_str()
            .context("manifest without config")?
            .to_string(),
        manifest["config"]["size"].as_u64().unwrap_or(0),
    )];
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        blobs.push((
            layer["digest"]
                .as_str()
                .context("layer without digest")?
                .to_string(),
            layer["size"].as_u64().unwrap_or(0),
        ));
    }
    let mut outcome = PushOutcome {
        pinned: String::new(),
        digest: desc.digest.clone(),
        uploaded_blobs: 0,
        skipped_blobs: 0,
        mounted_blobs: 0,
    };
    let known = pushed_repos(&registry);
    for (digest, size) in &blobs {
        if c.blob_exists(target, digest).await.unwrap_or(false) {
            outcome.skipped_blobs += 1;
            crate::progress::event(
                "blob",
                json!({"digest": digest, "action": "skipped", "size": size}),
            );
            tracing::info!("blob {} already in {}", short(digest), target.repository());
            continue;
        }
        let mut mounted = false;
        for repo in known.iter().filter(|r| r.as_str() != target.repository()) {
            let source: Reference = match format!("{registry}/{repo}:latest").parse() {
                Ok(r) => r,
                Err(_) => continue,
            };
            if c.mount_blob(target, &source, digest).await.is_ok() {
                mounted = true;
                outcome.mounted_blobs += 1;
                crate::progress::event(
                    "blob",
                    json!({"digest": digest, "action": "mounted", "from": repo, "size": size}),
                );
                tracing::info!("blob {} mounted from {repo}", short(digest));
                break;
            }
        }
        if mounted {
            continue;
        }
        upload(&c, target, l, digest, *size, &secrets).await?;
        outcome.uploaded_blobs += 1;
        crate::progress::event(
            "blob",
            json!({"digest": digest, "action": "uploaded", "size": size}),
        );
    }
    // Manifest last: a tag never points at missing blobs.
    let media: reqwest::header::HeaderValue =
        desc.media_type.parse().context("manifest media type")?;
    for r in refs {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match c
                .push_manifest_raw(r, manifest_bytes.clone(), media.clone())
                .await
            {
                Ok(_) => break,
                Err(_) if crate::interrupt::interrupted() => {
                    return Err(crate::interrupt::error().into())
                }
                Err(e) if attempt < ATTEMPTS && !permanent(&e) => {
                    tracing::warn!("pushing the manifest to {r} failed ({e}); retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => bail!(
                    "pushing the manifest to {r}: {}",
                    crate::exec::redact(&e.to_string(), &secrets)
                ),
            }
        }
        crate::progress::event(
            "manifest",
            json!({"reference": r.whole(), "digest": desc.digest}),
        );
    }
    record_push(&registry, target.repository());
    outcome.pinned = format!("{}/{}@{}", registry, target.repository(), desc.digest);
    Ok(outcome)
}

fn short(d: &str) -> &str {
    let h = d.trim_start_matches("sha256:");
    &h[..h.len().min(12)]
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500 * 2u64.pow(attempt.min(6)))
}

/// Uploads one blob from its file, streaming, restarting from the file on transient errors.
async fn upload(
    c: &Client,
    target: &Reference,
    l: &Layout,
    digest: &str,
    size: u64,
    secrets: &[String],
) -> Result<()> {
    let path = l.blob_path(digest)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        crate::interrupt::check()?;
        let file = tokio::fs::File::open(&path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let progress = std::sync::Arc::new(std::sync::Mutex::new(crate::progress::bytes(
            &format!("uploading {}", short(digest)),
            Some(size),
        )));
        let p2 = progress.clone();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map(move |chunk| {
            crate::interrupt::check_io()?;
            if let Ok(b) = &chunk {
                if let Ok(mut p) = p2.lock() {
                    p.inc(b.len() as u64);
                }
            }
            chunk.map_err(oci_client::errors::OciDistributionError::from)
        });
        match c.push_blob_stream(target, stream, digest, Some(size)).await {
            Ok(_) => {
                if let Ok(p) = std::sync::Arc::try_unwrap(progress) {
                    if let Ok(p) = p.into_inner() {
                        p.finish();
                    }
                }
                return Ok(());
            }
            Err(_) if crate::interrupt::interrupted() => {
                return Err(crate::interrupt::error().into())
            }
            Err(e) if attempt < ATTEMPTS && !permanent(&e) => {
                let wait = backoff(attempt);
                tracing::warn!(
                    "uploading blob {} failed (attempt {attempt}/{ATTEMPTS}: {}); retrying from the start of the file in {:?}",
                    short(digest),
                    crate::exec::redact(&e.to_string(), secrets),
                    wait
                );
                crate::progress::event("retry", json!({"digest": digest, "attempt": attempt}));
                tokio::time::sleep(wait).await;
            }
            Err(e) if permanent(&e) => {
                return Err(auth_error(target.resolve_registry(), e, secrets))
            }
            Err(e) => bail!(
                "uploading blob {digest} to {target}: {}",
                crate::exec::redact(&e.to_string(), secrets)
            ),
        }
    }
}

/// Repositories of `registry` this machine pushed to (mount sources).
fn pushed_repos(registry: &str) -> Vec<String> {
    let Ok(root) = crate::cache::Cache::default_root() else {
        return Vec::new();
    };
    let path = root.join("pushes").join(format!(
        "{}.json",
        crate::cache::sha256_hex(registry.as_bytes())
    ));
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn record_push(registry: &str, repo: &str) {
    let Ok(root) = crate::cache::Cache::default_root() else {
        return;
    };
    let dir = root.join("pushes");
    let _ = std::fs::create_dir_all(&dir);
    let mut repos = pushed_repos(registry);
    if !repos.iter().any(|r| r == repo) {
        repos.push(repo.to_string());
    }
    if let Ok(mut t) = crate::cache::TempFile::new_in(&dir) {
        if std::io::Write::write_all(&mut t, &serde_json::to_vec(&repos).unwrap_or_default())
            .is_ok()
        {
            let _ = t.persist(&dir.join(format!(
                "{}.json",
                crate::cache::sha256_hex(registry.as_bytes())
            )));
        }
    }
}

/// Pulls `docker://HOST/REPO:TAG|@sha256:…` into the OCI layout `layout` under `tag`;
/// returns the manifest digest.
pub fn pull_to_layout(
    reference: &str,
    layout: &Path,
    tag: &str,
    opts: &RegistryOptions,
) -> Result<String> {
    let r = parse_ref(reference)?;
    let l = Layout::create(layout)?;
    runtime()?.block_on(async {
        let registry = r.resolve_registry().to_string();
        let (auth, secrets) = auth::for_registry(&registry, opts)?;
        let c = client(&registry, opts);
        let (mut bytes, mut digest) = c
            .pull_manifest_raw(&r, &auth, MANIFEST_TYPES)
            .await
            .map_err(|e| {
                if permanent(&e) {
                    auth_error(&registry, e, &secrets)
                } else {
                    anyhow::anyhow!("pulling the manifest of {reference}: {e}")
                }
            })?;
        let mut v: Value = serde_json::from_slice(&bytes).context("parsing the manifest")?;
        if let Some(list) = v["manifests"].as_array() {
            let arch = crate::oci::read::host_arch();
            let d = list
                .iter()
                .find(|m| m["platform"]["architecture"].as_str() == Some(arch))
                .and_then(|m| m["digest"].as_str())
                .with_context(|| format!("{reference} has no {arch} image"))?
                .to_string();
            let by_digest: Reference = format!("{}/{}@{d}", registry, r.repository()).parse()?;
            (bytes, digest) = c
                .pull_manifest_raw(&by_digest, &auth, MANIFEST_TYPES)
                .await
                .context("pulling the platform manifest")?;
            v = serde_json::from_slice(&bytes).context("parsing the manifest")?;
        }
        let actual = format!("sha256:{}", crate::cache::sha256_hex(&bytes));
        if actual != digest || r.digest().is_some_and(|d| d != actual) {
            bail!("the manifest of {reference} does not match its digest ({actual})");
        }
        let mut descs = vec![v["config"].clone()];
        descs.extend(v["layers"].as_array().cloned().unwrap_or_default());
        for d in descs {
            let dg = d["digest"]
                .as_str()
                .context("descriptor without digest")?
                .to_string();
            let dest = l.blob_path(&dg)?;
            if dest.exists() {
                continue;
            }
            let ld = oci_client::manifest::OciDescriptor {
                media_type: d["mediaType"].as_str().unwrap_or_default().to_string(),
                digest: dg.clone(),
                size: d["size"].as_i64().unwrap_or(0),
                ..Default::default()
            };
            let temp = crate::cache::TempFile::new_in(&l.blobs_dir())?;
            let f = tokio::fs::File::from_std(temp_file_clone(&temp)?);
            c.pull_blob(&r, &ld, crate::interrupt::Checked(f))
                .await
                .with_context(|| format!("pulling blob {dg}"))?;
            let (h, _) = crate::cache::sha256_file(temp.path())?;
            if format!("sha256:{h}") != dg {
                bail!("blob {dg} from {reference} does not match its digest");
            }
            temp.persist(&dest)?;
        }
        let blob = crate::oci::image::Blob {
            bytes: bytes.to_vec(),
            digest: actual.clone(),
            size: bytes.len() as u64,
        };
        l.write_blob(&blob)?;
        l.set_tag(
            tag,
            &Descriptor {
                media_type: v["mediaType"]
                    .as_str()
                    .unwrap_or(crate::oci::image::MEDIA_MANIFEST)
                    .to_string(),
                digest: actual.clone(),
                size: blob.size,
            },
            None,
        )?;
        Ok(actual)
    })
}

fn temp_file_clone(t: &crate::cache::TempFile) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(t.path())
        .with_context(|| format!("opening {}", t.path().display()))
}

/// The image config of a remote image, or None when the image does not exist.
pub fn remote_config(reference: &str, opts: &RegistryOptions) -> Result<Option<Value>> {
    let r = parse_ref(reference)?;
    runtime()?.block_on(async {
        let registry = r.resolve_registry().to_string();
        let (auth, _) = auth::for_registry(&registry, opts)?;
        let c = client(&registry, opts);
        let Ok((bytes, _)) = c.pull_manifest_raw(&r, &auth, MANIFEST_TYPES).await else {
            return Ok(None);
        };
        let m: Value = serde_json::from_slice(&bytes).context("parsing the manifest")?;
        let cd = oci_client::manifest::OciDescriptor {
            media_type: m["config"]["mediaType"].as_str().unwrap_or_default().into(),
            digest: m["config"]["digest"].as_str().unwrap_or_default().into(),
            size: m["config"]["size"].as_i64().unwrap_or(0),
            ..Default::default()
        };
        let mut cfg = Vec::new();
        c.pull_blob(&r, &cd, &mut cfg)
            .await
            .context("pulling the image config")?;
        Ok(Some(
            serde_json::from_slice(&cfg).context("parsing the image config")?,
        ))
    })
}

/// `diskforge push LAYOUT[:TAG] docker://…`.
pub fn cmd_push(_global: &GlobalOpts, args: PushArgs) -> Result<ExitCode> {
    let src = if args.layout.starts_with("oci:") {
        args.layout.clone()
    } else {
        format!("oci:{}", args.layout)
    };
    let (dir, tag) = match crate::oci::ImageRef::parse(&src)? {
        crate::oci::ImageRef::Layout { dir, tag } => (dir, tag),
        _ => bail!("{}: push takes an OCI layout directory", args.layout),
    };
    let layout = Layout::open(&dir)?;
    let tag = match tag {
        Some(t) => t,
        None => {
            let tags = layout.tags()?;
            match tags.as_slice() {
                [(t, _)] => t.clone(),
                _ => bail!(
                    "{} holds {} images: name one with {}:TAG",
                    dir.display(),
                    tags.len(),
                    args.layout
                ),
            }
        }
    };
    let opts = crate::oci::registry_options(&args.output, &[]);
    let outcome = push_layout(&dir, &tag, &args.destinations, &opts)?;
    println!("{}", outcome.pinned);
    eprintln!(
        "blobs: {} uploaded, {} already present, {} mounted",
        outcome.uploaded_blobs, outcome.skipped_blobs, outcome.mounted_blobs
    );
    if let Some(f) = &args.output.digest_file {
        crate::oci::write_digest_file(f, &outcome.pinned)?;
    }
    if args.output.print_vm_manifest {
        print!(
            "{}",
            vm_manifest(&outcome.pinned, "diskforge-vm", None, None)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `diskforge inspect docker://…`: manifest, config, layers, and the disk's format and
/// virtual size read from the start of the layer.
pub fn cmd_inspect_remote(_global: &GlobalOpts, args: InspectArgs) -> Result<ExitCode> {
    let r = parse_ref(&args.image)?;
    let opts = RegistryOptions {
        tls_verify: args.tls_verify,
        ..Default::default()
    };
    let summary = runtime()?.block_on(async {
        let registry = r.resolve_registry().to_string();
        let (auth, secrets) = auth::for_registry(&registry, &opts)?;
        let c = client(&registry, &opts);
        let (bytes, digest) = c
            .pull_manifest_raw(&r, &auth, MANIFEST_TYPES)
            .await
            .map_err(|e| if permanent(&e) { auth_error(&registry, e, &secrets) } else { anyhow::anyhow!("pulling the manifest of {}: {e}", args.image) })?;
        let m: Value = serde_json::from_slice(&bytes).context("parsing the manifest")?;
        let cfg_desc = &m["config"];
        let cd = oci_client::manifest::OciDescriptor {
            media_type: cfg_desc["mediaType"].as_str().unwrap_or_default().into(),
            digest: cfg_desc["digest"].as_str().unwrap_or_default().into(),
            size: cfg_desc["size"].as_i64().unwrap_or(0),
            ..Default::default()
        };
        let mut cfg_bytes = Vec::new();
        c.pull_blob(&r, &cd, &mut cfg_bytes).await.context("pulling the image config")?;
        let cfg: Value = serde_json::from_slice(&cfg_bytes).context("parsing the image config")?;
        let mut disk = Value::Null;
        if let Some(l0) = m["layers"].as_array().and_then(|a| a.first()) {
            let ld = oci_client::manifest::OciDescriptor {
                media_type: l0["mediaType"].as_str().unwrap_or_default().into(),
                digest: l0["digest"].as_str().unwrap_or_default().into(),
                size: l0["size"].as_i64().unwrap_or(0),
                ..Default::default()
            };
            // The first 64 KiB are enough for the tar header and the disk header.
            if let Ok(resp) = c.pull_blob_stream_partial(&r, &ld, 0, Some(64 << 10)).await {
                let mut stream = match resp {
                    oci_client::client::BlobResponse::Full(s) => s.stream,
                    oci_client::client::BlobResponse::Partial(s) => s.stream,
                };
                let mut head = Vec::new();
                while let Some(chunk) = stream.next().await {
                    let Ok(chunk) = chunk else { break };
                    head.extend_from_slice(&chunk);
                    if head.len() >= 64 << 10 {
                        break;
                    }
                }
                if let Some((name, header)) = disk_from_prefix(&head, l0["mediaType"].as_str().unwrap_or_default()) {
                    disk = json!({"path": name, "format": header.format, "virtual_size": header.virtual_size});
                }
            }
        }
        let layers: Vec<Value> = m["layers"].as_array().into_iter().flatten().map(|l| json!({"digest": l["digest"], "size": l["size"], "mediaType": l["mediaType"]})).collect();
        Ok::<Value, anyhow::Error>(json!({
            "image": args.image, "digest": digest, "architecture": cfg["architecture"], "os": cfg["os"],
            "created": cfg["created"], "labels": cfg["config"]["Labels"], "env": cfg["config"]["Env"],
            "layers": layers, "disk": disk,
        }))
    })?;
    crate::oci::print_summary(&summary, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// The disk's tar name and header from the first bytes of a (compressed) layer.
pub fn disk_from_prefix(
    prefix: &[u8],
    media_type: &str,
) -> Option<(String, crate::oci::read::DiskHeader)> {
    use std::io::Read;
    let mut r: Box<dyn Read> = if media_type.ends_with("+gzip") {
        Box::new(flate2::read::MultiGzDecoder::new(prefix))
    } else if media_type.ends_with("+zstd") {
        Box::new(zstd::stream::read::Decoder::new(prefix).ok()?)
    } else {
        Box::new(prefix)
    };
    let mut tar = vec![0u8; 8192];
    let mut n = 0;
    while n < tar.len() {
        match r.read(&mut tar[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let mut off = 0;
    while off + 512 <= n {
        let h = tar::Header::from_byte_slice(&tar[off..off + 512]);
        let name = h.path().ok()?.to_string_lossy().into_owned();
        if name.is_empty() {
            return None;
        }
        let size = h.size().ok()?;
        if h.entry_type().is_file() && name.starts_with("disk/") {
            let data = &tar[(off + 512).min(n)..(off + 1024).min(n)];
            return Some((name, crate::oci::read::disk_header(data, size)));
        }
        off += 512 + (size as usize).div_ceil(512) * 512;
    }
    None
}

/// Pushes an image index combining per-architecture images of one repository.
pub fn push_index(destination: &str, images: &[String], opts: &RegistryOptions) -> Result<String> {
    let dest = parse_ref(destination)?;
    runtime()?.block_on(async {
        let registry = dest.resolve_registry().to_string();
        let (auth, secrets) = auth::for_registry(&registry, opts)?;
        let c = client(&registry, opts);
        c.auth(&dest, &auth, RegistryOperation::Push).await.map_err(|e| auth_error(&registry, e, &secrets))?;
        let mut manifests = Vec::new();
        for i in images {
            let r = parse_ref(i)?;
            if r.resolve_registry() != registry || r.repository() != dest.repository() {
                bail!("{i}: the images of an index must be in {registry}/{}", dest.repository());
            }
            let (bytes, digest) = c.pull_manifest_raw(&r, &auth, MANIFEST_TYPES).await.with_context(|| format!("pulling {i}"))?;
            let m: Value = serde_json::from_slice(&bytes)?;
            let cd = oci_client::manifest::OciDescriptor {
                media_type: m["config"]["mediaType"].as_str().unwrap_or_default().into(),
                digest: m["config"]["digest"].as_str().unwrap_or_default().into(),
                size: m["config"]["size"].as_i64().unwrap_or(0),
                ..Default::default()
            };
            let mut cfg = Vec::new();
            c.pull_blob(&r, &cd, &mut cfg).await.context("pulling the image config")?;
            let cfg: Value = serde_json::from_slice(&cfg)?;
            manifests.push(json!({
                "mediaType": m["mediaType"].as_str().unwrap_or(crate::oci::image::MEDIA_MANIFEST),
                "digest": digest, "size": bytes.len(),
                "platform": {"os": cfg["os"], "architecture": cfg["architecture"]},
            }));
        }
        let index = json!({"schemaVersion": 2, "mediaType": crate::oci::image::MEDIA_INDEX, "manifests": manifests});
        let blob = crate::oci::image::Blob::from_value(&index)?;
        c.push_manifest_raw(&dest, blob.bytes.clone(), crate::oci::image::MEDIA_INDEX.parse().context("media type")?)
            .await
            .with_context(|| format!("pushing the index to {destination}"))?;
        Ok(format!("{}/{}@{}", registry, dest.repository(), blob.digest))
    })
}

/// A KubeVirt VirtualMachine manifest that boots `pinned` (`HOST/REPO@sha256:…`) as a
/// containerDisk.
pub fn vm_manifest(
    pinned: &str,
    name: &str,
    instancetype: Option<&str>,
    preference: Option<&str>,
) -> String {
    let mut s = format!("apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: {name}\nspec:\n  runStrategy: Always\n");
    if let Some(i) = instancetype {
        s.push_str(&format!("  instancetype:\n    name: {i}\n"));
    }
    if let Some(p) = preference {
        s.push_str(&format!("  preference:\n    name: {p}\n"));
    }
    s.push_str("  template:\n    spec:\n      domain:\n        devices:\n          disks:\n            - name: rootdisk\n              disk:\n                bus: virtio\n");
    if instancetype.is_none() {
        s.push_str("        resources:\n          requests:\n            memory: 2Gi\n");
    }
    s.push_str(&format!("      volumes:\n        - name: rootdisk\n          containerDisk:\n            image: {pinned}\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::permanent;
    use oci_client::errors::OciDistributionError as E;

    #[test]
    fn only_refused_credentials_are_permanent() {
        // A transient failure whose URL happens to contain "403" and "401".
        let url = "http://127.0.0.1:5000/v2/lab/x/blobs/uploads/3a0202fe-fb34-403e-b401?digest=sha256%3A401";
        assert!(!permanent(&E::ServerError {
            code: 503,
            url: url.into(),
            message: "denied? no: unavailable".into()
        }));
        assert!(!permanent(&E::GenericError(Some(format!("reset: {url}")))));
        assert!(permanent(&E::ServerError {
            code: 401,
            url: url.into(),
            message: String::new()
        }));
        assert!(permanent(&E::ServerError {
            code: 403,
            url: url.into(),
            message: String::new()
        }));
        assert!(permanent(&E::UnauthorizedError { url: url.into() }));
        assert!(permanent(&E::AuthenticationFailure("bad".into())));
    }
}
