//! Packing a finished disk and sending it to every destination: labels from the recipe
//! and its inputs (no secrets), one pack into a layout, then layouts, archives and
//! registries (one client per registry, one upload per repository); and the up-to-date
//! check that reads the build key of what a destination already holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use super::{Plan, BUILD_KEY_LABEL};
use crate::base::CachedBase;
use crate::cache::Cache;
use crate::oci::image::{self, ImageMeta};
use crate::oci::layer::LayerOptions;
use crate::oci::{ImageRef, Layout, PackSpec, PackedImage};
use crate::registry::{self, Clients, RegistryOptions, RemoteRef};

/// What publishing wrote.
#[derive(Debug, Clone)]
pub struct Published {
    pub image: PackedImage,
    /// One line per destination: `oci:DIR:TAG`, `oci-archive:FILE:TAG` or
    /// `HOST/REPO@sha256:…`.
    pub written: Vec<String>,
    /// `HOST/REPO@sha256:…` of the first registry destination.
    pub pinned: Option<String>,
    /// The tags of that registry destination.
    pub tags: Vec<String>,
    /// The virtual size of the packed disk.
    pub disk_virtual_size: u64,
}

/// What publishing uses of the command: how registries are reached (with the recipe's
/// insecure registries), the command's clients, and the cache's records of which disks
/// were packed and which registries were pushed to.
#[derive(Clone, Copy)]
pub struct Registries<'a> {
    pub cache: &'a Cache,
    pub options: &'a RegistryOptions,
    pub clients: &'a Clients,
}

impl Registries<'_> {
    /// The client for `registry` (connected on first use).
    async fn client(&self, registry: &str) -> Result<std::sync::Arc<registry::Client>> {
        self.clients.get(registry, self.options).await
    }
}

/// Labels of a built image: what it is, where it came from, and the build key.
pub fn labels(plan: &Plan, base: &CachedBase) -> BTreeMap<String, String> {
    let r = &plan.resolved;
    let recipe = &r.loaded.recipe;
    let o = &recipe.output;
    let mut l = BTreeMap::new();
    l.insert(
        "org.opencontainers.image.created".into(),
        image::rfc3339(r.epoch),
    );
    l.insert("org.opencontainers.image.title".into(), r.name.clone());
    if let Some(d) = &recipe.description {
        l.insert("org.opencontainers.image.description".into(), d.clone());
    }
    if let Some(v) = &o.version {
        l.insert("org.opencontainers.image.version".into(), v.clone());
    }
    if let Some(s) = &r.git_sha {
        l.insert("org.opencontainers.image.revision".into(), s.clone());
    }
    if let Some(src) = &r.git_remote {
        l.insert("org.opencontainers.image.source".into(), src.clone());
    }
    l.insert(
        "org.opencontainers.image.base.name".into(),
        r.base_label.clone(),
    );
    l.insert(
        "org.opencontainers.image.base.digest".into(),
        base.digest.clone(),
    );
    l.insert("io.diskforge.recipe.digest".into(), r.loaded.digest.clone());
    l.insert(
        "io.diskforge.base.checksum".into(),
        r.base.identity().unwrap_or_else(|_| base.digest.clone()),
    );
    l.insert(
        "io.diskforge.version".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    l.insert(FIRMWARE_LABEL.into(), r.firmware.as_str().into());
    if recipe.customize.guest_agent {
        l.insert(GUEST_AGENT_LABEL.into(), "true".into());
    }
    if recipe.desktop.enabled {
        l.insert(DESKTOP_PORT_LABEL.into(), recipe.desktop.port.to_string());
    }
    l.insert(BUILD_KEY_LABEL.into(), plan.build_key.clone());
    for (k, v) in &o.labels {
        l.insert(k.clone(), v.clone());
    }
    l
}

/// The config label that records the firmware the image boots with (`boot.firmware`,
/// else the catalog's default); `run` boots an image with it unless told otherwise.
pub const FIRMWARE_LABEL: &str = "io.diskforge.firmware";

/// The config label (`true`) of an image with the QEMU guest agent installed
/// (`customize.guest-agent`): `run --check` then requires the agent to answer.
pub const GUEST_AGENT_LABEL: &str = "io.diskforge.guest-agent";

/// The config label with the guest port of the web desktop (`desktop.port`, noVNC),
/// present when the image has one: `run` forwards it and `--check` waits for it.
pub const DESKTOP_PORT_LABEL: &str = "io.diskforge.desktop.port";

/// Packs the finished disk of `plan` and writes every destination.
pub fn publish(
    plan: &Plan,
    to: Registries<'_>,
    base: &CachedBase,
    disk: &Path,
    info: &crate::sys::qemu_img::ImageInfo,
) -> Result<Published> {
    let r = &plan.resolved;
    let o = &r.loaded.recipe.output;
    let mut image_env = Vec::new();
    if let Some(i) = &o.kubevirt.instancetype {
        image_env.push(format!("INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE={i}"));
    }
    if let Some(pr) = &o.kubevirt.preference {
        image_env.push(format!("INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE={pr}"));
    }
    warn_compression(r.compression);
    let spec = PackSpec {
        disk: disk.to_path_buf(),
        disk_name: o.disk_name.clone(),
        meta: ImageMeta {
            architecture: r.arch.as_str().to_string(),
            created: image::rfc3339(r.epoch),
            created_by: format!("diskforge {} build {}", env!("CARGO_PKG_VERSION"), r.name),
            labels: labels(plan, base),
            env: image_env,
            annotations: o.annotations.clone(),
        },
        layer: LayerOptions {
            compression: r.compression,
            level: r.level,
            mtime: crate::oci::layer::mtime_from_env()?,
            threads: 0,
            feed: None,
        },
    };
    let mut p = write_image(&spec, &r.dests, to, &plan.work, None)?;
    p.disk_virtual_size = info.virtual_size;
    Ok(p)
}

/// Warns that zstd layers need a recent importer.
pub fn warn_compression(c: crate::oci::Compression) {
    if c == crate::oci::Compression::Zstd {
        tracing::warn!(
            "zstd layers need KubeVirt CDI v1.57 or later and a zstd-capable runtime (containerd 1.5+, CRI-O); CDI releases up to v1.66 refuse ordinary zstd disk layers with \"window size exceeded\" (CDI issue #4277); diskforge's layers start with a stored frame that those importers read intact, a shape that recompression by other tools loses; use gzip where older importers may read a recompressed copy"
        );
    }
}

/// Packs once and writes every destination: layouts get the blobs (hard links after the
/// first), archives a tar of a one-image layout, registries a streaming push from the
/// packed layout.
/// `packing`: a stage that ends when the layer is packed, before anything is copied or
/// pushed (so that "pack done" is never reported after "push done").
pub fn write_image(
    spec: &PackSpec,
    dests: &[ImageRef],
    to: Registries<'_>,
    work: &Path,
    packing: Option<crate::progress::Stage>,
) -> Result<Published> {
    if dests.is_empty() {
        bail!("no destination: give --output oci:DIR[:TAG], oci-archive:FILE or docker://HOST/REPO:TAG");
    }
    crate::oci::layer::check_level(spec.layer.compression, spec.layer.level)?;
    crate::oci::layer::validate_disk_name(&spec.disk_name)?;
    let arch = spec.meta.architecture.clone();
    // Layout directories this command creates go again if it fails.
    let new_layouts: Vec<crate::oci::layout::NewLayout> = dests
        .iter()
        .filter_map(|d| match d {
            ImageRef::Layout { dir, .. } => {
                Some(crate::oci::layout::NewLayout::before_creating(dir))
            }
            _ => None,
        })
        .collect();
    // Pack into the first layout destination, or a staging layout in the work dir.
    let staging;
    let first_layout = dests.iter().find_map(|d| match d {
        ImageRef::Layout { dir, .. } => Some(dir.clone()),
        _ => None,
    });
    let (primary, primary_tags): (Layout, Vec<String>) = match first_layout {
        Some(dir) => {
            let tags = dests
                .iter()
                .filter_map(|d| match d {
                    ImageRef::Layout { dir: d2, .. } if *d2 == dir => Some(d.tag_or_latest()),
                    _ => None,
                })
                .collect();
            (Layout::create(&dir)?, tags)
        }
        None => {
            staging = tempfile::Builder::new()
                .prefix("diskforge-layout-")
                .tempdir_in(work)
                .with_context(|| format!("creating a staging layout in {}", work.display()))?;
            (Layout::create(staging.path())?, vec!["staged".to_string()])
        }
    };
    // Registry destinations, one upload per repository; the first one's layer upload
    // runs while the layer is packed.
    let mut remotes: Vec<RemoteRef> = Vec::new();
    for d in dests {
        if let ImageRef::Registry(r) = d {
            // Written where registries.conf's location for it says.
            remotes.push(to.options.conf.push_target(r)?.image);
        }
    }
    let groups = group_by_repository(remotes);
    // A disk packed before is likely in a registry this cache pushed it to; the push
    // after packing asks first and sends nothing then. Anywhere else it is uploaded
    // while packing.
    let record = PackRecord::new(spec, to.cache)?;
    // A layer that might exceed the registry's limit is packed first and checked before
    // any upload; the layer is at most the disk file plus tar and compression overhead.
    let fits = |g: &[RemoteRef]| -> Result<bool> {
        let limit = registry::limits::layer_limit(&g[0].registry, to.options.max_layer_size);
        let disk = std::fs::metadata(&spec.disk)
            .with_context(|| format!("reading {}", spec.disk.display()))?
            .len();
        let bound = disk.saturating_add(disk / 64).saturating_add(1 << 20);
        Ok(limit.is_none_or(|l| bound <= l.bytes))
    };
    let stream = |g: &[RemoteRef]| -> Result<bool> {
        Ok(fits(g)?
            && (!record.seen()
                || registry::push::PushRecord::new(to.cache, &g[0].registry)?.is_empty()))
    };
    let (image, streamed) = match groups.first() {
        Some(g) if stream(g)? => pack_while_uploading(spec, &primary, &primary_tags, to, g)?,
        _ => (
            crate::oci::pack::pack_to_layout(spec, &primary, &primary_tags)?,
            None,
        ),
    };
    record.add();
    if let Some(stage) = packing {
        stage.done();
    }
    crate::progress::event(
        "packed",
        json!({"manifest": image.manifest.digest().to_string(), "layer": image.layer.digest,
               "layer_size": image.layer.size, "diff_id": image.layer.diff_id}),
    );
    let mut written = Vec::new();
    let mut pinned = None;
    let mut tags = Vec::new();
    for d in dests {
        match d {
            ImageRef::Layout { dir, .. } => {
                let tag = d.tag_or_latest();
                if dir != primary.root() {
                    let l = Layout::create(dir)?;
                    crate::oci::pack::copy_image(&primary, &image.manifest, &l, &tag, Some(&arch))?;
                }
                written.push(format!("oci:{}:{tag}", dir.display()));
            }
            ImageRef::Archive { file, .. } => {
                let tag = d.tag_or_latest();
                crate::oci::archive::write_archive(
                    &primary,
                    &image.manifest,
                    file,
                    &tag,
                    Some(&arch),
                )?;
                written.push(format!("oci-archive:{}:{tag}", file.display()));
            }
            ImageRef::DockerArchive(r) => {
                let img = crate::oci::read::LayoutImage::open(
                    primary.clone(),
                    primary_tags.first().map(String::as_str),
                    &arch,
                )?;
                crate::oci::docker_archive::write(&img, r)?;
                written.push(r.to_string());
            }
            ImageRef::Storage { name } => {
                crate::oci::storage::write(
                    primary.root(),
                    primary_tags.first().map(String::as_str),
                    name,
                )?;
                written.push(format!("containers-storage:{name}"));
            }
            ImageRef::Registry(_) => {}
        }
    }
    for (i, group) in groups.iter().enumerate() {
        let stage = crate::progress::stage(
            "push",
            format!(
                "pushing to {}",
                group
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        let outcome = crate::sys::rt::block_on(async {
            let client = to.client(&group[0].registry).await?;
            let record = registry::push::PushRecord::new(to.cache, &group[0].registry)?;
            let sent: &[String] = match (i, &streamed) {
                (0, Some(d)) => std::slice::from_ref(d),
                _ => &[],
            };
            registry::push::push_image(
                &client,
                &primary,
                &image.manifest,
                group,
                Some(&record),
                sent,
            )
            .await
        })?;
        stage.done();
        written.push(outcome.pinned.clone());
        if pinned.is_none() {
            pinned = Some(outcome.pinned);
            tags = outcome.tags;
        }
    }
    for l in new_layouts {
        l.keep();
    }
    Ok(Published {
        image,
        written,
        pinned,
        tags,
        disk_virtual_size: 0,
    })
}

/// Packs into `layout` while the layer is uploaded to the repository of `group` as it
/// grows, so that the upload ends moments after the packing instead of starting then.
/// Returns the packed image and, when that upload succeeded, the layer digest it
/// committed. A failed upload costs nothing but the time: the push after packing
/// uploads the finished blob the ordinary, resumable way.
fn pack_while_uploading(
    spec: &PackSpec,
    layout: &Layout,
    tags: &[String],
    to: Registries<'_>,
    group: &[RemoteRef],
) -> Result<(PackedImage, Option<String>)> {
    let (feed, follower) = crate::io::growing::channel();
    let mut fed = spec.clone();
    fed.layer.feed = Some(feed);
    let (packed, uploaded) = std::thread::scope(|s| {
        // The packer owns the only feed: when it stops, finished or not, the upload
        // hears of it.
        let packer = s.spawn(move || crate::oci::pack::pack_to_layout(&fed, layout, tags));
        let uploaded = crate::sys::rt::block_on(async {
            let client = to.client(&group[0].registry).await?;
            client.upload_growing(&group[0].repository, follower).await
        });
        let packed = packer
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the packing thread panicked")));
        (packed, uploaded)
    });
    let image = packed?;
    let streamed = match uploaded {
        Ok((digest, _)) if digest == image.layer.digest => Some(digest),
        Ok((digest, _)) => {
            tracing::info!(
                "uploaded {digest} while packing, but the layer is {}",
                image.layer.digest
            );
            None
        }
        Err(e) => {
            if e.downcast_ref::<crate::sys::interrupt::Interrupted>()
                .is_some()
            {
                return Err(e);
            }
            tracing::info!(
                "uploading the layer while packing did not work ({e:#}); uploading it now"
            );
            None
        }
    };
    Ok((image, streamed))
}

/// Which disks were packed before, with which layer options: a disk packed again is
/// likely one a registry this cache pushed to already holds, so its layer is not
/// uploaded to such a registry while packing (the registry is asked first, after
/// packing, and nothing is sent when it has the blob or can mount it). Keyed by the
/// file's identity (device, inode, size, modification and change times)
/// and everything the layer's bytes depend on.
struct PackRecord {
    file: Option<PathBuf>,
}

impl PackRecord {
    fn new(spec: &PackSpec, cache: &crate::cache::Cache) -> Result<PackRecord> {
        use std::os::unix::fs::MetadataExt as _;
        let Ok(m) = std::fs::metadata(&spec.disk) else {
            // Packing reports the missing disk.
            return Ok(PackRecord { file: None });
        };
        let key = format!(
            "{}\0{}\0{}\0{}\0{}.{}\0{}.{}\0{:?}\0{:?}\0{}\0{}\0{}",
            std::fs::canonicalize(&spec.disk)
                .unwrap_or_else(|_| spec.disk.clone())
                .display(),
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
            spec.layer.compression,
            spec.layer.level,
            spec.layer.mtime,
            spec.disk_name,
            env!("CARGO_PKG_VERSION"),
        );
        let dir = cache.state_dir("packed")?;
        Ok(PackRecord {
            file: Some(dir.join(crate::io::hash::sha256_hex(key.as_bytes()))),
        })
    }
    fn seen(&self) -> bool {
        self.file.as_ref().is_some_and(|f| f.exists())
    }
    fn add(&self) {
        if let Some(f) = &self.file {
            // Only an optimization: a failure to record costs a later upload.
            let _ = crate::io::atomic::write(f, b"");
        }
    }
}

/// Registry destinations grouped by registry and repository (one upload each).
fn group_by_repository(refs: Vec<RemoteRef>) -> Vec<Vec<RemoteRef>> {
    let mut groups: Vec<Vec<RemoteRef>> = Vec::new();
    for r in refs {
        match groups
            .iter_mut()
            .find(|g| g[0].registry == r.registry && g[0].repository == r.repository)
        {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
}

/// The labels of the image a destination holds, or `None` when it holds none.
pub fn existing_labels(
    dest: &ImageRef,
    registry: &RegistryOptions,
    arch: &str,
) -> Result<Option<BTreeMap<String, String>>> {
    match dest {
        // Never read back: the image is written again.
        ImageRef::DockerArchive(_) | ImageRef::Storage { .. } => Ok(None),
        ImageRef::Layout { dir, tag } => {
            let Ok(layout) = Layout::open(dir) else {
                return Ok(None);
            };
            let tag = tag.clone().unwrap_or_else(|| "latest".into());
            if !layout.tags()?.iter().any(|(t, _)| *t == tag) {
                return Ok(None);
            }
            let img = crate::oci::read::LayoutImage::open(layout, Some(&tag), arch)?;
            Ok(Some(image::labels(&img.config)))
        }
        ImageRef::Registry(r) => crate::sys::rt::block_on(async {
            let from = registry::source::for_pull(r, registry).await?;
            registry::pull::labels(&from.client, &from.image, arch).await
        }),
        ImageRef::Archive { .. } => Ok(None),
    }
}

/// True when every destination already holds an image whose build key is `key`.
pub fn up_to_date(
    dests: &[ImageRef],
    key: &str,
    registry: &RegistryOptions,
    arch: &str,
) -> Result<bool> {
    if dests.is_empty() {
        return Ok(false);
    }
    for d in dests {
        let labels = existing_labels(d, registry, arch)
            .with_context(|| format!("reading what {d} holds"))?;
        if labels.is_none_or(|l| l.get(BUILD_KEY_LABEL).map(String::as_str) != Some(key)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The identity a signature gives an image in an OCI layout: the directory's name.
pub fn layout_identity(dir: &Path) -> String {
    let name = std::fs::canonicalize(dir)
        .unwrap_or_else(|_| dir.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "image".into()
    } else {
        name
    }
}

/// Attaches the SBOM and the provenance (and, with a key, a signature) to the image at
/// every destination.
pub fn attest(
    plan: &Plan,
    to: Registries<'_>,
    base: &CachedBase,
    published: &Published,
    signer: Option<&crate::provenance::PrivateKey>,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<()> {
    use super::attest::{self, Inputs};
    use crate::provenance::{slsa, spdx};
    let t0 = std::time::Instant::now();
    let r = &plan.resolved;
    let (distro, packages) = attest::guest_packages(&plan.work.join("packages"))?;
    let digest = published.image.manifest.digest().to_string();
    let remotes: Vec<RemoteRef> = r
        .dests
        .iter()
        .filter_map(|d| match d {
            ImageRef::Registry(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    // The name a signature and the documents use: the first registry repository, else
    // the image name.
    let repository = remotes
        .first()
        .map(|x| format!("{}/{}", x.registry, x.repository))
        .unwrap_or_else(|| r.name.clone());
    let chain = r.loaded.chain_digests();
    let (recipe_path, recipe_digest) = chain[0].clone();
    let base_download = match &r.base {
        super::Base::Image { spec, .. } => match &spec.source {
            crate::base::BaseSource::Url { url, .. } => Some(url.clone()),
            crate::base::BaseSource::Path(p) => Some(p.display().to_string()),
        },
        super::Base::Build { entry, .. } => Some(format!("built: {}", entry.name)),
    };
    let created = image::rfc3339(r.epoch);
    let inputs = Inputs {
        repository: &repository,
        image_digest: &digest,
        base: spdx::Artifact {
            name: r.base_label.clone(),
            version: None,
            digest: base.digest.clone(),
            download: base_download,
        },
        recipe: spdx::Artifact {
            name: recipe_path.display().to_string(),
            version: r.loaded.recipe.output.version.clone(),
            digest: recipe_digest,
            download: None,
        },
        extends: chain[1..]
            .iter()
            .map(|(p, d)| slsa::Dependency {
                name: p.display().to_string(),
                digest: d.clone(),
            })
            .collect(),
        files: r
            .loaded
            .recipe
            .customize
            .files
            .iter()
            .filter_map(|f| f.source.as_ref().map(|s| (s, &f.path.0)))
            .filter_map(|(src, guest)| {
                r.files
                    .iter()
                    .find(|(g, _)| g == guest)
                    .map(|(_, d)| slsa::Dependency {
                        name: src.0.display().to_string(),
                        digest: d.clone(),
                    })
            })
            .collect(),
        distro,
        packages,
        created: created.clone(),
        started: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        finished: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let docs = attest::documents(&inputs, signer)?;
    let artifacts = attest::artifacts(&docs, &created);
    // A signature names where the image lives: the registry repository, or for a
    // layout its directory's name.
    let signature = |identity: &str| {
        signer
            .map(|k| crate::provenance::sign::sign(k, identity, &digest))
            .transpose()
    };
    for d in &r.dests {
        if let ImageRef::Layout { dir, .. } = d {
            let sig = signature(&layout_identity(dir))?;
            attest::to_layout(
                &Layout::open(dir)?,
                &published.image.manifest,
                &artifacts,
                sig.as_ref(),
            )?;
            let beside = PathBuf::from(format!(
                "{}.spdx.json",
                dir.display().to_string().trim_end_matches('/')
            ));
            crate::io::atomic::write(&beside, &docs.sbom)?;
        }
    }
    for group in group_by_repository(remotes) {
        let sig = signature(&format!("{}/{}", group[0].registry, group[0].repository))?;
        let target = to.options.conf.push_target(&group[0])?.image;
        crate::sys::rt::block_on(async {
            let client = to.client(&target.registry).await?;
            attest::to_registry(
                &client,
                &target,
                &published.image.manifest,
                &artifacts,
                sig.as_ref(),
            )
            .await
        })?;
    }
    crate::progress::event(
        "attested",
        json!({"sbom_packages": docs.package_count, "signed": signer.is_some(),
               "seconds": t0.elapsed().as_secs_f64()}),
    );
    crate::progress::say(format!(
        "attached an SBOM of {} packages and the provenance{}",
        docs.package_count,
        if signer.is_some() { ", signed" } else { "" }
    ));
    Ok(())
}
