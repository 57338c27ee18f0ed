//! `diskforge pack`, `push`, `inspect` and `index`: images that exist already.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};

use super::out::{out, outln};
use super::summary::ImageSummary;
use super::UsageError;
use crate::cli::{GlobalOpts, IndexArgs, InspectArgs, PackArgs, PushArgs};
use crate::oci::image::{self, ImageMeta, Platform};
use crate::oci::layer::LayerOptions;
use crate::oci::read::{self, LayoutImage};
use crate::oci::{ImageRef, Layout, PackSpec};
use crate::registry::{self, RegistryOptions, RemoteRef};

/// The default destination of `pack`: `oci:out/NAME:latest`, NAME from the disk's file.
fn default_pack_dest(disk: &Path) -> String {
    let stem: String = disk
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("oci:out/{stem}:latest")
}

/// `diskforge pack DISK`.
pub fn pack(g: &GlobalOpts, args: PackArgs) -> Result<ExitCode> {
    let outputs = if args.destinations.is_empty() {
        vec![default_pack_dest(&args.disk)]
    } else {
        args.destinations.clone()
    };
    super::build::check_report_opts(&args.report, &outputs)?;
    if args.kubevirt.kubevirt_manifests.is_some()
        && !outputs.iter().any(|d| d.starts_with("docker://"))
    {
        return Err(UsageError(
            "--kubevirt-manifests needs a docker:// destination: a cluster pulls the image from a registry".into(),
        )
        .into());
    }
    let dests = outputs
        .iter()
        .map(|s| super::image_ref(s))
        .collect::<Result<Vec<_>>>()?;
    let info = crate::sys::qemu_img::inspect_untrusted(&args.disk)?;
    let compression = args.layer.compression.unwrap_or_default();
    crate::oci::layer::check_level(compression, args.layer.compression_level)
        .map_err(|e| UsageError(format!("{e:#}")))?;
    crate::pipeline::publish::warn_compression(compression);
    let disk_name = args.disk_name.clone().unwrap_or_else(|| {
        if info.format == "qcow2" {
            "disk.qcow2"
        } else {
            "disk.img"
        }
        .to_string()
    });
    let firmware = args
        .firmware
        .as_deref()
        .map(super::parse_firmware)
        .transpose()?;
    let epoch = crate::oci::layer::mtime_from_env()?;
    let mut labels = crate::oci::pack::parse_pairs(&args.label, "--label")?;
    if let Some(f) = firmware {
        labels.insert(
            crate::pipeline::publish::FIRMWARE_LABEL.into(),
            f.as_str().into(),
        );
    }
    labels
        .entry("org.opencontainers.image.created".into())
        .or_insert_with(|| image::rfc3339(epoch));
    labels.insert(
        "io.diskforge.version".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    let spec = PackSpec {
        disk: args.disk.clone(),
        disk_name,
        meta: ImageMeta {
            architecture: super::arch(args.arch).as_str().to_string(),
            created: image::rfc3339(epoch),
            created_by: format!("diskforge {} pack", env!("CARGO_PKG_VERSION")),
            labels,
            env: Vec::new(),
            annotations: Default::default(),
        },
        layer: LayerOptions {
            compression,
            level: args.layer.compression_level,
            mtime: epoch,
            threads: 0,
            feed: None,
        },
    };
    let ctx = super::context(g, super::push_options(&args.registry, &args.limit)?)?;
    let work = super::scratch_root(g)?;
    if let Some(f) = firmware {
        // Refused before anything is written, as `run --firmware` refuses to boot it.
        let accel = crate::sys::accel::resolve(ctx.accel)?;
        super::disk::check_boot_layout(&args.disk, super::disk::format_of(&info), f, accel, &work)?;
    }
    let stage = crate::progress::stage(
        "pack",
        format!(
            "packing {} ({}) into an OCI layer",
            args.disk.display(),
            compression.name()
        ),
    );
    let mut published =
        crate::pipeline::publish::write_image(&spec, &dests, ctx.registries(), &work, Some(stage))?;
    published.disk_virtual_size = info.virtual_size;
    // The VM is named after the repository it is pulled from, as for `push`; without
    // one, after the disk.
    let name = published
        .pinned
        .as_deref()
        .and_then(|p| p.split_once('@'))
        .and_then(|(repo, _)| repo.rsplit('/').next())
        .map(str::to_string)
        .unwrap_or_else(|| {
            args.disk
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    let image = super::build::ClusterImage {
        pinned: published.pinned.as_deref(),
        tag: published.tags.first().map(String::as_str),
        name: &name,
        disk_virtual_size: info.virtual_size,
        recipe: None,
        pull_method: args.kubevirt.pull_method.map(super::pull_method),
        firmware: firmware.unwrap_or(crate::recipe::Firmware::Bios),
    };
    super::build::print_published(
        &published,
        &image,
        &args.report,
        args.kubevirt.kubevirt_manifests.as_deref(),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `diskforge push LAYOUT[:TAG] docker://…`.
pub fn push(g: &GlobalOpts, args: PushArgs) -> Result<ExitCode> {
    if args.layout.starts_with("docker://") {
        return super::promote::run(g, args);
    }
    if args.with_attachments || args.expect_digest.is_some() {
        return Err(UsageError(
            "--with-attachments and --expect-digest promote a docker:// source".into(),
        )
        .into());
    }
    let src = if args.layout.starts_with("oci:") || args.layout.starts_with("oci-archive:") {
        args.layout.clone()
    } else {
        format!("oci:{}", args.layout)
    };
    let mut refs = Vec::new();
    let mut local = Vec::new();
    for d in &args.destinations {
        match super::image_ref(d)? {
            ImageRef::Registry(r) => refs.push(r),
            l @ (ImageRef::DockerArchive(_) | ImageRef::Storage { .. }) => local.push(l),
            _ => {
                return Err(UsageError(format!(
                    "{d}: push writes to docker://HOST/REPO:TAG, docker-archive:FILE[:NAME[:TAG]] or containers-storage:NAME[:TAG]"
                ))
                .into())
            }
        }
    }
    if local.iter().any(|d| matches!(d, ImageRef::Storage { .. }))
        && !crate::sys::exec::have("skopeo")
    {
        // Found before anything is written.
        return Err(crate::sys::exec::MissingTool {
            program: "skopeo".into(),
        }
        .into());
    }
    // An archive (what `pack -o oci-archive:` writes) is unpacked to a temp layout and
    // pushed from there: the same blobs, so the same digests.
    let unpacked;
    let (layout, tag) = match super::image_ref(&src)? {
        ImageRef::Layout { dir, tag } => (Layout::open(&dir)?, tag),
        ImageRef::Archive { file, tag } => {
            unpacked = tempfile::Builder::new()
                .prefix("diskforge-archive-")
                .tempdir_in(super::scratch_root(g)?)
                .context("creating a temp dir for the archive")?;
            (
                crate::oci::archive::extract_archive(&file, unpacked.path())?,
                tag,
            )
        }
        _ => bail!(
            "{}: push takes an OCI layout directory or an oci-archive: file",
            args.layout
        ),
    };
    let desc = layout.resolve(tag.as_deref())?;
    for d in &local {
        write_local(d, &layout, tag.as_deref())?;
    }
    if refs.is_empty() {
        if let Some(f) = &args.report.digest_file {
            crate::io::atomic::write(f, format!("{}\n", desc.digest()).as_bytes())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let ctx = super::context(g, super::push_options(&args.registry, &args.limit)?)?;
    let mut groups: Vec<Vec<RemoteRef>> = Vec::new();
    for r in refs {
        // Written where registries.conf's location for it says.
        let r = ctx.registry.conf.push_target(&r)?.image;
        match groups
            .iter_mut()
            .find(|g| g[0].registry == r.registry && g[0].repository == r.repository)
        {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    let mut first = None;
    let mut first_tags = Vec::new();
    for group in groups {
        let outcome = crate::sys::rt::block_on(async {
            let client = ctx.clients.get(&group[0].registry, &ctx.registry).await?;
            let record = registry::push::PushRecord::new(&ctx.cache, &group[0].registry)?;
            registry::push::push_image(&client, &layout, &desc, &group, Some(&record), &[]).await
        })?;
        eprintln!(
            "{}: {} blob(s) uploaded, {} already present, {} mounted",
            outcome.pinned, outcome.uploaded_blobs, outcome.skipped_blobs, outcome.mounted_blobs
        );
        if args.report.print_vm_manifest {
            eprintln!("{}", outcome.pinned);
        } else {
            outln!("{}", outcome.pinned)?;
        }
        if first.is_none() {
            first = Some(outcome.pinned);
            first_tags = outcome.tags;
        }
    }
    let pinned = first.context("no destination")?;
    if let Some(f) = &args.report.digest_file {
        crate::io::atomic::write(f, format!("{}\n", desc.digest()).as_bytes())?;
    }
    if args.report.print_vm_manifest || args.kubevirt.kubevirt_manifests.is_some() {
        let img = LayoutImage::open(layout.clone(), tag.as_deref(), read::host_arch())?;
        let size = read::scan_layers(&img, None, super::expand_limit()?)?
            .disk
            .map(|(_, h)| h.virtual_size)
            .unwrap_or(0);
        let (repo, _) = pinned
            .split_once('@')
            .context("a pinned reference without a digest")?;
        let name = repo.rsplit('/').next().unwrap_or("vm").to_string();
        let cluster = super::build::ClusterImage {
            pinned: Some(&pinned),
            tag: first_tags.first().map(String::as_str),
            name: &name,
            disk_virtual_size: size,
            recipe: None,
            pull_method: args.kubevirt.pull_method.map(super::pull_method),
            firmware: labelled_firmware(&img.config).unwrap_or(crate::recipe::Firmware::Bios),
        };
        let m = cluster.manifests()?.context("nothing was pushed")?;
        if args.report.print_vm_manifest {
            let (_, yaml) = m
                .documents()?
                .into_iter()
                .next()
                .context("no VM manifest")?;
            out!("{yaml}")?;
        }
        if let Some(dir) = &args.kubevirt.kubevirt_manifests {
            m.write_dir(dir)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the image `tag` of `layout` to `d`, and
/// prints the destination with the image ID (the config's digest) that `docker images` /
/// `podman images` show.
fn write_local(d: &ImageRef, layout: &Layout, tag: Option<&str>) -> Result<()> {
    let img = LayoutImage::open(layout.clone(), tag, read::host_arch())?;
    let id = img.manifest.config().digest().to_string();
    let stage = crate::progress::stage("write", format!("write {d}"));
    match d {
        ImageRef::DockerArchive(r) => crate::oci::docker_archive::write(&img, r)?,
        // An oci-archive source was unpacked into `layout` already.
        ImageRef::Storage { name } => crate::oci::storage::write(layout.root(), tag, name)?,
        _ => bail!("{d} is not a local destination"),
    }
    stage.done();
    outln!("{d} {id}")?;
    Ok(())
}

/// `diskforge inspect IMAGE`.
pub fn inspect(g: &GlobalOpts, args: InspectArgs) -> Result<ExitCode> {
    let r = super::image_ref(&args.image)?;
    let arch = read::host_arch();
    if args.raw || args.config {
        let bytes = document_bytes(g, &r, &args, arch)?;
        super::out::write_bytes(&bytes)?;
        return Ok(ExitCode::SUCCESS);
    }
    let key = args
        .key
        .as_deref()
        .map(crate::provenance::PublicKey::load)
        .transpose()?;
    let opts = super::registry_options(&args.registry, &[])?;
    let summary = match &r {
        ImageRef::Registry(rr) => {
            use crate::pipeline::attest::{read_attached, RegistrySource};
            let from = crate::sys::rt::block_on(registry::source::for_pull(rr, &opts))?;
            let s =
                crate::sys::rt::block_on(registry::pull::summary(&from.client, &from.image, arch))?;
            let src = RegistrySource {
                client: &from.client,
                repo: &from.image.repository,
            };
            let identity = format!("{}/{}", rr.registry, rr.repository);
            let attached = read_attached(&src, &identity, &s.manifest_digest, key.as_ref())?;
            let mut summary = ImageSummary::new(
                &args.image,
                &s.digest,
                &s.manifest,
                &s.config,
                s.disk.as_ref().map(|(p, h)| (p.as_str(), h)),
                attached,
            );
            // From the source that served the rest.
            let (top, _, _) = crate::sys::rt::block_on(
                from.client
                    .manifest(&from.image.repository, from.image.reference()),
            )?
            .with_context(|| format!("{rr} does not exist"))?;
            summary.platforms = super::summary::platforms(&top)?;
            summary
        }
        _ => {
            let scratch = super::scratch_root(g)?;
            let (img, _temp) = open_local(&r, &scratch)?;
            let scan = read::scan_layers(&img, None, super::expand_limit()?)?;
            let disk = scan.disk.as_ref().map(|(e, h)| (e.path.as_str(), h));
            let digest = img.manifest_desc.digest().to_string();
            let attached = attached(&r, &img, &opts, &digest, key.as_ref())?;
            let mut summary = ImageSummary::new(
                &args.image,
                &digest,
                &img.manifest,
                &img.config,
                disk,
                attached,
            );
            let tag = match &r {
                ImageRef::DockerArchive(_) | ImageRef::Storage { .. } => None,
                ImageRef::Layout { tag, .. } | ImageRef::Archive { tag, .. } => tag.as_deref(),
                ImageRef::Registry(_) => None,
            };
            let top = img.layout.read_blob(&img.layout.resolve(tag)?)?;
            summary.platforms = super::summary::platforms(&top)?;
            summary
        }
    };
    match (args.json, args.format.as_deref()) {
        (true, _) | (false, Some("json")) => outln!("{}", serde_json::to_string_pretty(&summary)?)?,
        (false, Some(template)) => outln!("{}", summary.render(template)?)?,
        (false, None) => out!("{}", summary.text())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `inspect --raw`: the manifest or index the reference names; `--config`: the config
/// of the image for this host's architecture. Both as stored, byte for byte.
fn document_bytes(g: &GlobalOpts, r: &ImageRef, args: &InspectArgs, arch: &str) -> Result<Vec<u8>> {
    if args.raw {
        return top_document(g, r, args);
    }
    match r {
        ImageRef::Registry(rr) => {
            let opts = super::registry_options(&args.registry, &[])?;
            crate::sys::rt::block_on(async {
                let from = registry::source::for_pull(rr, &opts).await?;
                let img = registry::pull::resolve(&from.client, &from.image, arch)
                    .await?
                    .with_context(|| format!("{rr} does not exist"))?;
                let c = img.manifest.config();
                from.client
                    .small_blob(&from.image.repository, c.digest().as_ref(), c.size())
                    .await
            })
        }
        _ => {
            let scratch = super::scratch_root(g)?;
            let (img, _temp) = open_local(r, &scratch)?;
            img.layout.read_blob(img.manifest.config())
        }
    }
}

/// The manifest or index the reference names, as stored.
fn top_document(g: &GlobalOpts, r: &ImageRef, args: &InspectArgs) -> Result<Vec<u8>> {
    match r {
        ImageRef::DockerArchive(_) | ImageRef::Storage { .. } => bail!(
            "{}: diskforge writes this kind of destination but does not read it",
            r
        ),
        ImageRef::Registry(rr) => {
            let opts = super::registry_options(&args.registry, &[])?;
            crate::sys::rt::block_on(async {
                let from = registry::source::for_pull(rr, &opts).await?;
                let (bytes, _, _) = from
                    .client
                    .manifest(&from.image.repository, from.image.reference())
                    .await?
                    .with_context(|| format!("{rr} does not exist"))?;
                Ok(bytes)
            })
        }
        ImageRef::Layout { tag, .. } | ImageRef::Archive { tag, .. } => {
            let scratch = super::scratch_root(g)?;
            let (img, _temp) = open_local(r, &scratch)?;
            let top = img.layout.resolve(tag.as_deref())?;
            img.layout.read_blob(&top)
        }
    }
}

/// Opens a layout or an archive (unpacked into a temp dir under `scratch`).
pub fn open_local(
    r: &ImageRef,
    scratch: &Path,
) -> Result<(LayoutImage, Option<crate::io::scratch::ScratchDir>)> {
    let arch = read::host_arch();
    match r {
        ImageRef::DockerArchive(_) | ImageRef::Storage { .. } => bail!(
            "{}: diskforge writes this kind of destination but does not read it",
            r
        ),
        ImageRef::Layout { dir, tag } => Ok((
            LayoutImage::open(Layout::open(dir)?, tag.as_deref(), arch)?,
            None,
        )),
        ImageRef::Archive { file, tag } => {
            let t = crate::io::scratch::ScratchDir::new_in(scratch, "archive")?;
            let l = crate::oci::archive::extract_archive(file, t.path())?;
            Ok((LayoutImage::open(l, tag.as_deref(), arch)?, Some(t)))
        }
        ImageRef::Registry(_) => bail!("{r} is not a local image"),
    }
}

/// A descriptor for an index entry: the image's manifest with its platform.
fn platform_entry(
    manifest: image::Blob,
    media_type: &str,
    config: &image::ImageConfiguration,
) -> Result<image::Descriptor> {
    let mut d = manifest.descriptor(media_type)?;
    let mut p = Platform::default();
    p.set_architecture(config.architecture().clone());
    p.set_os(config.os().clone());
    d.set_platform(Some(p));
    Ok(d)
}

/// `diskforge index DEST IMAGE...`: a multi-architecture index.
pub fn index(_g: &GlobalOpts, args: IndexArgs) -> Result<ExitCode> {
    match super::image_ref(&args.destination)? {
        d @ (ImageRef::DockerArchive(_) | ImageRef::Storage { .. }) => {
            bail!("{d}: an index can be written to oci:DIR:TAG or docker://…")
        }
        ImageRef::Registry(dest) => {
            let opts = super::registry_options(&args.registry, &[])?;
            let pinned = crate::sys::rt::block_on(async {
                // The index and its images live in one repository: where it is written.
                let to = registry::source::for_push(&dest, &opts).await?;
                let (client, repo) = (&to.client, &to.image.repository);
                let mut entries = Vec::new();
                for i in &args.images {
                    let r = super::remote_ref(i)?;
                    if r.registry != dest.registry || r.repository != dest.repository {
                        bail!(
                            "{i}: the images of an index must be in {}/{}",
                            dest.registry,
                            dest.repository
                        );
                    }
                    let (bytes, _, media) = client
                        .manifest(repo, r.reference())
                        .await?
                        .with_context(|| format!("{i} does not exist"))?;
                    let image::Document::Manifest(m) = image::parse_document(&bytes)? else {
                        bail!("{i} is an index already: give per-architecture images");
                    };
                    let cfg_bytes = client
                        .small_blob(repo, m.config().digest().as_ref(), m.config().size())
                        .await?;
                    let cfg = image::parse_config(&cfg_bytes)?;
                    let media = if media.is_empty() {
                        image::MEDIA_MANIFEST.to_string()
                    } else {
                        media
                    };
                    entries.push(platform_entry(image::Blob::raw(bytes), &media, &cfg)?);
                }
                let platforms: Vec<(String, String)> = entries
                    .iter()
                    .filter_map(|e| {
                        let arch = e.platform().as_ref()?.architecture().to_string();
                        Some((arch, e.digest().to_string()))
                    })
                    .collect();
                let idx = image::index(entries)?;
                let tag = dest.tag.clone().unwrap_or_else(|| "latest".into());
                client
                    .put_manifest(repo, &tag, &idx.bytes, image::MEDIA_INDEX)
                    .await?;
                if let Some(dir) = &args.kubevirt.kubevirt_manifests {
                    let pull = args.kubevirt.pull_method.map(super::pull_method);
                    for (arch, digest) in &platforms {
                        let r = RemoteRef {
                            digest: Some(digest.clone()),
                            tag: None,
                            ..to.image.clone()
                        };
                        let s = registry::pull::summary(client, &r, arch).await?;
                        let size = s
                            .disk
                            .map(|(_, h)| h.virtual_size)
                            .with_context(|| format!("{}: the {arch} image holds no disk", r))?;
                        let m = arch_manifests(&dest, &tag, arch, digest, size, pull)?;
                        m.write_dir(&dir.join(arch))?;
                    }
                }
                Ok(dest.pinned(&idx.digest))
            })?;
            outln!("{pinned}")?;
        }
        ImageRef::Layout { ref dir, ref tag } => {
            if args.kubevirt.kubevirt_manifests.is_some() {
                return Err(UsageError(
                    "--kubevirt-manifests needs an index in a registry (docker://…)".into(),
                )
                .into());
            }
            let layout = Layout::open(dir)?;
            let mut entries = Vec::new();
            for i in &args.images {
                let t = match i.strip_prefix("oci:") {
                    Some(_) => match super::image_ref(i)? {
                        ImageRef::Layout { dir: d2, tag } if d2 == *dir => tag,
                        _ => bail!(
                            "{i}: the images of an index must be in the destination layout {}",
                            dir.display()
                        ),
                    },
                    None => Some(i.clone()),
                };
                let desc = layout.resolve(t.as_deref())?;
                let bytes = layout.read_blob(&desc)?;
                let image::Document::Manifest(m) = image::parse_document(&bytes)? else {
                    bail!("{i} is an index already: give per-architecture images");
                };
                let cfg = image::parse_config(&layout.read_blob(m.config())?)?;
                entries.push(platform_entry(
                    image::Blob::raw(bytes),
                    &image::media_type(&desc),
                    &cfg,
                )?);
            }
            let idx = image::index(entries)?;
            layout.write_blob(&idx)?;
            let desc = idx.descriptor(image::MEDIA_INDEX)?;
            layout.set_tag(tag.as_deref().unwrap_or("latest"), &desc, None)?;
            outln!("{}", idx.digest)?;
        }
        ImageRef::Archive { .. } => bail!("an index can be written to oci:DIR:TAG or docker://…"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The cluster objects for one architecture of an index: named NAME-ARCH, the VM
/// pinned to that architecture's manifest, the DataImportCron following the index's
/// tag and importing that architecture (CDI's `platform.architecture`).
fn arch_manifests(
    dest: &RemoteRef,
    tag: &str,
    arch: &str,
    digest: &str,
    disk_virtual_size: u64,
    pull_method: Option<crate::kubevirt::PullMethod>,
) -> Result<crate::kubevirt::Manifests> {
    let name = dest.repository.rsplit('/').next().unwrap_or("vm");
    let repo = format!("{}/{}", dest.registry, dest.repository);
    let mut input = crate::kubevirt::ManifestInput::new(
        &repo,
        tag,
        digest,
        &super::build::dns_name(&format!("{name}-{arch}")),
        disk_virtual_size,
    );
    input.architecture = Some(arch.to_string());
    input.pull_method = pull_method;
    crate::kubevirt::Manifests::generate(&input)
}

/// What is attached to the image `digest` at `r`: signatures, SBOM, provenance.
pub fn attached(
    r: &ImageRef,
    img: &LayoutImage,
    registry: &RegistryOptions,
    digest: &str,
    key: Option<&crate::provenance::PublicKey>,
) -> Result<crate::pipeline::attest::Attached> {
    use crate::pipeline::attest::{read_attached, LayoutSource, RegistrySource};
    match r {
        ImageRef::DockerArchive(_) | ImageRef::Storage { .. } => bail!(
            "{}: diskforge writes this kind of destination but does not read it",
            r
        ),
        ImageRef::Registry(rr) => {
            let from = crate::sys::rt::block_on(registry::source::for_pull(rr, registry))?;
            let src = RegistrySource {
                client: &from.client,
                repo: &from.image.repository,
            };
            read_attached(
                &src,
                &format!("{}/{}", rr.registry, rr.repository),
                digest,
                key,
            )
        }
        ImageRef::Layout { dir, .. } => read_attached(
            &LayoutSource(&img.layout),
            &crate::pipeline::publish::layout_identity(dir),
            digest,
            key,
        ),
        ImageRef::Archive { file, .. } => read_attached(
            &LayoutSource(&img.layout),
            &crate::pipeline::publish::layout_identity(file),
            digest,
            key,
        ),
    }
}

/// The firmware an image's config label records (`io.diskforge.firmware`), if any.
pub fn labelled_firmware(
    config: &oci_spec::image::ImageConfiguration,
) -> Option<crate::recipe::Firmware> {
    crate::oci::image::labels(config)
        .get(crate::pipeline::publish::FIRMWARE_LABEL)
        .and_then(|v| crate::recipe::Firmware::parse(v))
}
