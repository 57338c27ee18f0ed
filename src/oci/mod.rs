//! OCI packing: the containerDisk layer, config and manifest, layouts and archives, and
//! the `pack`, `inspect` and `index` commands.

pub mod dest;
pub mod image;
pub mod layer;
pub mod layout;
pub mod pack;
pub mod read;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::cli::{CompressionArg, GlobalOpts, IndexArgs, InspectArgs, OutputOpts, PackArgs};
use crate::recipe::{Compression, SecretValue};
use crate::registry::RegistryOptions;
pub use dest::ImageRef;
pub use layout::{Descriptor, Layout};
pub use pack::{PackSpec, PackedImage};

/// The result of writing an image to its destinations.
#[derive(Debug, Clone)]
pub struct Published {
    pub image: PackedImage,
    /// One line per destination: `oci:DIR:TAG` or `HOST/REPO@sha256:…`.
    pub written: Vec<String>,
    /// `HOST/REPO@sha256:…` of the first registry destination.
    pub pinned: Option<String>,
}

/// Packs once and writes every destination: layouts get the blobs (hard links after the
/// first), archives a tar of a one-image layout, registries a streaming push from the
/// packed layout.
pub fn pack_and_write(
    spec: &PackSpec,
    dests: &[ImageRef],
    reg: &RegistryOptions,
    work: &Path,
) -> Result<Published> {
    if dests.is_empty() {
        bail!("no destination: give --output oci:DIR[:TAG], oci-archive:FILE or docker://HOST/REPO:TAG");
    }
    layer::check_level(spec.layer.compression, spec.layer.level)?;
    layer::validate_disk_name(&spec.disk_name)?;
    let arch = spec.meta.architecture.clone();
    // Pack into the first layout destination, or a staging layout in the work dir.
    let staging;
    let (primary, primary_tags): (Layout, Vec<String>) = match dests.iter().find_map(|d| match d {
        ImageRef::Layout { dir, .. } => Some(dir.clone()),
        _ => None,
    }) {
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
    let stage = crate::progress::stage(
        "pack",
        format!(
            "packing {} ({}) into an OCI layer",
            spec.disk.display(),
            compression_name(spec.layer.compression)
        ),
    );
    let image = pack::pack_to_layout(spec, &primary, &primary_tags)?;
    stage.done();
    crate::progress::event(
        "packed",
        json!({"manifest": image.manifest.digest, "layer": image.layer.digest,
               "layer_size": image.layer.size, "diff_id": image.layer.diff_id}),
    );
    let primary_tag = primary_tags[0].clone();
    let mut written = Vec::new();
    let mut pinned = None;
    let mut registry_refs = Vec::new();
    for d in dests {
        match d {
            ImageRef::Layout { dir, .. } => {
                let tag = d.tag_or_latest();
                if dir != primary.root() {
                    let l = Layout::create(dir)?;
                    pack::copy_image(&primary, &image.manifest, &l, &tag, Some(&arch))?;
                }
                written.push(format!("oci:{}:{tag}", dir.display()));
            }
            ImageRef::Archive { file, .. } => {
                let tag = d.tag_or_latest();
                pack::write_archive(&primary, &image.manifest, file, &tag, Some(&arch))?;
                written.push(format!("oci-archive:{}:{tag}", file.display()));
            }
            ImageRef::Registry { reference } => registry_refs.push(format!("docker://{reference}")),
        }
    }
    if !registry_refs.is_empty() {
        // Destinations in the same repository share one upload.
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for r in registry_refs {
            let repo = repo_of(&r);
            match groups.iter_mut().find(|(k, _)| *k == repo) {
                Some((_, v)) => v.push(r),
                None => groups.push((repo, vec![r])),
            }
        }
        for (_, refs) in groups {
            let stage = crate::progress::stage("push", format!("pushing to {}", refs.join(", ")));
            let outcome = crate::registry::push_layout(primary.root(), &primary_tag, &refs, reg)?;
            stage.done();
            written.push(outcome.pinned.clone());
            pinned.get_or_insert(outcome.pinned);
        }
    }
    Ok(Published {
        image,
        written,
        pinned,
    })
}

/// `docker://HOST/REPO:TAG` → `HOST/REPO`.
fn repo_of(r: &str) -> String {
    let s = r.trim_start_matches("docker://");
    let s = s.split('@').next().unwrap_or(s);
    match s.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo.to_string(),
        _ => s.to_string(),
    }
}

pub fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
        Compression::None => "uncompressed",
    }
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::None => Compression::None,
        }
    }
}

/// Registry options from the command line (plus registries a recipe marks insecure).
pub fn registry_options(o: &OutputOpts, insecure: &[String]) -> RegistryOptions {
    RegistryOptions {
        tls_verify: o.tls_verify,
        insecure_registries: insecure.to_vec(),
        creds: o.creds.clone().map(SecretValue::new),
    }
}

/// Warns once that zstd layers need a recent CDI importer.
pub fn warn_compression(c: Compression) {
    if c == Compression::Zstd {
        tracing::warn!(
            "zstd layers cannot be read by CDI importers older than v1.57; use gzip for older clusters"
        );
    }
}

/// Writes `REPO@sha256:…` to the digest file atomically.
pub fn write_digest_file(path: &Path, pinned: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut t = crate::cache::TempFile::new_in(&dir)?;
    std::io::Write::write_all(&mut t, format!("{pinned}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    t.persist(path)
}

/// `diskforge pack DISK --output …`.
pub fn cmd_pack(global: &GlobalOpts, args: PackArgs) -> Result<ExitCode> {
    let info = crate::qemu_img::info(&args.disk)?;
    if info.format != "qcow2" && info.format != "raw" {
        bail!(
            "{} is a {} image: a containerDisk holds qcow2 or raw",
            args.disk.display(),
            info.format
        );
    }
    if info.has_backing_file() {
        bail!(
            "{} has a backing file ({}): flatten it first (qemu-img convert -O qcow2 IN OUT)",
            args.disk.display(),
            info.backing_filename.clone().unwrap_or_default()
        );
    }
    let compression: Compression = args.output.compression.map(Into::into).unwrap_or_default();
    warn_compression(compression);
    let disk_name = args.disk_name.clone().unwrap_or_else(|| {
        if info.format == "qcow2" {
            "disk.qcow2"
        } else {
            "disk.img"
        }
        .to_string()
    });
    let epoch = layer::mtime_from_env()?;
    let mut labels = pack::parse_pairs(&args.label, "--label")?;
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
        meta: image::ImageMeta {
            architecture: args.arch.clone(),
            created: image::rfc3339(epoch),
            created_by: format!("diskforge {} pack", env!("CARGO_PKG_VERSION")),
            labels,
            env: Vec::new(),
            annotations: Default::default(),
        },
        layer: layer::LayerOptions {
            compression,
            level: args.output.compression_level,
            mtime: epoch,
            threads: 0,
        },
    };
    let dests = args
        .output
        .output
        .iter()
        .map(|s| ImageRef::parse(s))
        .collect::<Result<Vec<_>>>()?;
    let work = global.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let reg = registry_options(&args.output, &[]);
    let published = pack_and_write(&spec, &dests, &reg, &work)?;
    report(&published, &args.output)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints what was written, and writes the digest file / VM manifest when asked.
pub fn report(p: &Published, o: &OutputOpts) -> Result<()> {
    println!(
        "image {}  layer {} ({})",
        p.image.manifest.digest,
        p.image.layer.digest,
        crate::progress::human_bytes(p.image.layer.size)
    );
    for w in &p.written {
        println!("{w}");
    }
    if let Some(f) = &o.digest_file {
        match &p.pinned {
            Some(pinned) => write_digest_file(f, pinned)?,
            None => bail!("--digest-file needs a docker:// destination"),
        }
    }
    if o.print_vm_manifest {
        match &p.pinned {
            Some(pinned) => print!(
                "{}",
                crate::registry::vm_manifest(pinned, "diskforge-vm", None, None)
            ),
            None => bail!("--print-vm-manifest needs a docker:// destination"),
        }
    }
    Ok(())
}

/// `diskforge inspect IMAGE`.
pub fn cmd_inspect(global: &GlobalOpts, args: InspectArgs) -> Result<ExitCode> {
    let r = ImageRef::parse(&args.image)?;
    let work = global.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let reg = RegistryOptions {
        tls_verify: args.tls_verify,
        ..Default::default()
    };
    if let ImageRef::Registry { .. } = r {
        return crate::registry::cmd_inspect_remote(global, args);
    }
    let img = read::open_image(&r, &reg, &work)?;
    let (_, disk) = read::scan_layers(&img, None)?;
    let layers: Vec<_> = img.manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| json!({"digest": l["digest"], "size": l["size"], "mediaType": l["mediaType"]}))
        .collect();
    let summary = json!({
        "image": args.image,
        "digest": img.manifest_desc.digest,
        "architecture": img.config["architecture"],
        "os": img.config["os"],
        "created": img.config["created"],
        "labels": img.config["config"]["Labels"],
        "env": img.config["config"]["Env"],
        "layers": layers,
        "disk": disk.as_ref().map(|(p, h)| json!({"path": p, "format": h.format, "virtual_size": h.virtual_size})),
    });
    print_summary(&summary, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints an image summary as JSON or as text.
pub fn print_summary(s: &serde_json::Value, as_json: bool) -> Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!("Image:        {}", s["image"].as_str().unwrap_or_default());
    println!("Digest:       {}", s["digest"].as_str().unwrap_or_default());
    println!(
        "Platform:     {}/{}",
        s["os"].as_str().unwrap_or("?"),
        s["architecture"].as_str().unwrap_or("?")
    );
    println!("Created:      {}", s["created"].as_str().unwrap_or("-"));
    if let Some(d) = s["disk"].as_object() {
        println!(
            "Disk:         {} ({}, virtual size {})",
            d["path"].as_str().unwrap_or_default(),
            d["format"].as_str().unwrap_or_default(),
            crate::progress::human_bytes(d["virtual_size"].as_u64().unwrap_or(0))
        );
    } else {
        println!("Disk:         none found under disk/");
    }
    println!("Layers:");
    for l in s["layers"].as_array().into_iter().flatten() {
        println!(
            "  {}  {:>10}  {}",
            l["digest"].as_str().unwrap_or_default(),
            crate::progress::human_bytes(l["size"].as_u64().unwrap_or(0)),
            l["mediaType"].as_str().unwrap_or_default()
        );
    }
    if let Some(labels) = s["labels"].as_object() {
        println!("Labels:");
        for (k, v) in labels {
            println!("  {k}={}", v.as_str().unwrap_or_default());
        }
    }
    if let Some(env) = s["env"].as_array() {
        println!("Env:");
        for e in env {
            println!("  {}", e.as_str().unwrap_or_default());
        }
    }
    Ok(())
}

/// `diskforge index DEST IMAGE...`: a multi-architecture index.
pub fn cmd_index(_global: &GlobalOpts, args: IndexArgs) -> Result<ExitCode> {
    let dest = ImageRef::parse(&args.destination)?;
    match dest {
        ImageRef::Registry { .. } => {
            let reg = RegistryOptions {
                tls_verify: args.tls_verify,
                ..Default::default()
            };
            let d = crate::registry::push_index(&args.destination, &args.images, &reg)?;
            println!("{d}");
        }
        ImageRef::Layout { ref dir, .. } => {
            let layout = Layout::open(dir)?;
            let mut manifests = Vec::new();
            for i in &args.images {
                let tag = i
                    .strip_prefix("oci:")
                    .map(|_| ImageRef::parse(i))
                    .transpose()?;
                let tag = match tag {
                    Some(ImageRef::Layout { dir: d2, tag }) if d2 == *dir => tag,
                    Some(_) => bail!(
                        "{i}: the images of an index must be in the destination layout {}",
                        dir.display()
                    ),
                    None => Some(i.clone()),
                };
                let desc = layout.resolve(tag.as_deref())?;
                let m: serde_json::Value =
                    serde_json::from_slice(&layout.read_blob(&desc.digest)?)?;
                let cfg: serde_json::Value = serde_json::from_slice(
                    &layout.read_blob(
                        m["config"]["digest"]
                            .as_str()
                            .context("manifest without config")?,
                    )?,
                )?;
                manifests.push(json!({
                    "mediaType": desc.media_type, "digest": desc.digest, "size": desc.size,
                    "platform": {"os": cfg["os"], "architecture": cfg["architecture"]},
                }));
            }
            let index = json!({"schemaVersion": 2, "mediaType": image::MEDIA_INDEX, "manifests": manifests});
            let blob = image::Blob::from_value(&index)?;
            layout.write_blob(&blob)?;
            let desc = Descriptor {
                media_type: image::MEDIA_INDEX.into(),
                digest: blob.digest.clone(),
                size: blob.size,
            };
            layout.set_tag(&dest.tag_or_latest(), &desc, None)?;
            println!("{}", blob.digest);
        }
        ImageRef::Archive { .. } => bail!("an index can be written to oci:DIR:TAG or docker://…"),
    }
    Ok(ExitCode::SUCCESS)
}
