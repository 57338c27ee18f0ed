//! `diskforge sign IMAGE --key FILE`: signs an image's manifest digest — never a tag —
//! in the cosign attachment format (`sha256-<hex>.sig` next to the image), which
//! cosign, containers/image (skopeo, podman, CRI-O) and policy controllers check.

use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};

use super::out::outln;
use crate::cli::{GlobalOpts, SignArgs};
use crate::oci::{ImageRef, Layout};
use crate::pipeline::attest;
use crate::provenance::sign;
use crate::registry;

pub fn run(_g: &GlobalOpts, args: SignArgs) -> Result<ExitCode> {
    let key = super::build::load_key(&args.key, &args.key_password)?;
    match super::image_ref(&args.image)? {
        d @ (ImageRef::DockerArchive(_) | ImageRef::Storage { .. }) => {
            bail!("{d}: sign takes a registry image or an OCI layout")
        }
        ImageRef::Registry(r) => {
            let opts = super::registry_options(&args.registry, &[])?;
            let pinned = crate::sys::rt::block_on(async {
                // Signed where the signature is written: the registry's location.
                let to = registry::source::for_push(&r, &opts).await?;
                let client = &to.client;
                let (bytes, digest, media) = client
                    .manifest(&to.image.repository, to.image.reference())
                    .await?
                    .with_context(|| format!("{r} does not exist"))?;
                let repository = format!("{}/{}", r.registry, r.repository);
                let sig = sign::sign(&key, &repository, &digest)?;
                let media = if media.is_empty() {
                    crate::oci::image::MEDIA_MANIFEST.to_string()
                } else {
                    media
                };
                let subject = crate::oci::image::Blob::raw(bytes).descriptor(&media)?;
                attest::to_registry(client, &to.image, &subject, &[], Some(&sig)).await?;
                Ok::<_, anyhow::Error>(r.pinned(&digest))
            })?;
            outln!("{pinned}")?;
        }
        ImageRef::Layout { dir, tag } => {
            let layout = Layout::open(&dir)?;
            let desc = layout.resolve(tag.as_deref())?;
            let name = crate::pipeline::publish::layout_identity(&dir);
            let sig = sign::sign(&key, &name, desc.digest().as_ref())?;
            attest::to_layout(&layout, &desc, &[], Some(&sig))?;
            outln!("{}", desc.digest())?;
        }
        ImageRef::Archive { .. } => bail!("sign takes a registry image or an OCI layout"),
    }
    eprintln!("signed with key {}", key.public().fingerprint());
    Ok(ExitCode::SUCCESS)
}
