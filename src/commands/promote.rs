//! `diskforge push docker://SOURCE docker://DEST…`: promotion of a registry image by
//! digest (staging → production), the same bytes under the same digest.

use std::process::ExitCode;

use anyhow::{Context as _, Result};

use super::out::outln;
use super::UsageError;
use crate::cli::{GlobalOpts, PushArgs};
use crate::pipeline::promote;
use crate::registry::{self, RemoteRef};

/// Promotes `args.layout` (a `docker://` reference) to `args.destinations`.
pub fn run(g: &GlobalOpts, args: PushArgs) -> Result<ExitCode> {
    let src = super::remote_ref(&args.layout)?;
    if args.kubevirt.kubevirt_manifests.is_some() || args.report.print_vm_manifest {
        return Err(UsageError(
            "--kubevirt-manifests and --print-vm-manifest need a layout source; \
             write them from the staging push"
                .into(),
        )
        .into());
    }
    if let Some(d) = &args.expect_digest {
        crate::oci::image::digest(d).map_err(|e| UsageError(format!("--expect-digest: {e:#}")))?;
    }
    let mut groups: Vec<Vec<RemoteRef>> = Vec::new();
    for d in &args.destinations {
        if !d.starts_with("docker://") {
            return Err(
                UsageError(format!("{d}: promotion writes to docker://HOST/REPO:TAG")).into(),
            );
        }
        let r = super::remote_ref(d)?;
        if r.digest.is_some() {
            return Err(UsageError(format!(
                "{d}: a destination takes a tag; the digest is the source's"
            ))
            .into());
        }
        match groups
            .iter_mut()
            .find(|g| g[0].registry == r.registry && g[0].repository == r.repository)
        {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    let opts = super::registry_options(&args.registry, &[])?;
    if opts.creds.is_some() && groups.iter().any(|g| g[0].registry != src.registry) {
        // --creds names no registry: sent to both, the source's credential would reach
        // the destination registry or the other way round.
        return Err(UsageError(
            "--creds names no registry, so it cannot be used to promote between two \
             registries: put one entry per registry in an auth file (--authfile)"
                .into(),
        )
        .into());
    }
    let ctx = super::context_without_cache(g, opts)?;
    let expect = args.expect_digest.as_deref();
    let (digest, results) = crate::sys::rt::block_on(async {
        // Read from a mirror when registries.conf has one that holds it, written to
        // each destination's location.
        let from = registry::source::for_pull(&src, &ctx.registry).await?;
        let src_client = &from.client;
        let image = promote::resolve_source(src_client, &from.image, expect).await?;
        eprintln!("promoting {}", src.pinned(&image.digest));
        let mut results = Vec::new();
        for group in &groups {
            let targets = group
                .iter()
                .map(|d| Ok(ctx.registry.conf.push_target(d)?.image))
                .collect::<Result<Vec<_>>>()?;
            let dst_client = if targets[0].registry == from.image.registry {
                None
            } else {
                Some(
                    registry::source::for_push(&group[0], &ctx.registry)
                        .await?
                        .client,
                )
            };
            let dst = dst_client.as_ref().unwrap_or(src_client);
            let done = promote::promote(
                src_client,
                &from.image.repository,
                &image,
                dst,
                &targets,
                args.with_attachments,
            )
            .await
            .with_context(|| {
                format!(
                    "promoting {} to {}/{}",
                    src.pinned(&image.digest),
                    group[0].registry,
                    group[0].repository
                )
            })?;
            results.push(done);
        }
        anyhow::Ok((image.digest, results))
    })?;
    for p in &results {
        let c = &p.counts;
        eprintln!(
            "{}: {} blob(s) copied, {} mounted, {} already present; {} manifest(s) written; \
             tags {}; attachments: {}",
            p.pinned,
            c.copied_blobs,
            c.mounted_blobs,
            c.skipped_blobs,
            c.manifests,
            p.tags.join(", "),
            if p.attachments.is_empty() {
                "none".to_string()
            } else {
                p.attachments.join(", ")
            }
        );
        outln!("{}", p.pinned)?;
    }
    if let Some(f) = &args.report.digest_file {
        crate::io::atomic::write(f, format!("{digest}\n").as_bytes())
            .with_context(|| format!("writing {}", f.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
