//! What is said about a built image, attached to it: an SPDX SBOM of the guest's
//! packages and an in-toto SLSA provenance statement, as OCI artifacts whose `subject`
//! is the image manifest (found through the referrers API, or the referrers tag schema
//! `sha256-<hex>` on registries without it, and the same tag in OCI layouts); and, with a
//! key, a cosign-format signature of the manifest digest (`sha256-<hex>.sig`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result};

use crate::oci::image::{self, Blob, Descriptor, Document, MEDIA_INDEX, MEDIA_MANIFEST};
use crate::oci::Layout;
use crate::provenance::packages::{self, Distro, Package};
use crate::provenance::{sign, slsa, spdx, PrivateKey};
use crate::registry::{Client, RemoteRef};

/// The artifact type of the SBOM artifacts.
pub const SPDX_TYPE: &str = "application/spdx+json";
/// The artifact type of the provenance artifacts.
pub const PROVENANCE_TYPE: &str = "application/vnd.in-toto+json";

/// The guest's distribution and packages, from what `guest::read_packages` copied out.
pub fn guest_packages(dir: &Path) -> Result<(Distro, Vec<Package>)> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    let distro = match read("os-release") {
        Ok(t) => Distro::from_os_release(&t)?,
        Err(_) => Distro {
            id: "unknown".into(),
            version_id: String::new(),
        },
    };
    let pkgs = if let Ok(status) = read("dpkg-status") {
        let mut pkgs = packages::parse_dpkg_status(&status)?;
        let licences = copyright_licences(&dir.join("copyright.tar"))?;
        for p in &mut pkgs {
            p.licence = licences.get(&p.name).cloned();
        }
        pkgs
    } else if let Ok(rpm) = read("rpm-qa") {
        packages::parse_rpm_qa(&rpm)?
    } else if let Ok(apk) = read("apk-installed") {
        packages::parse_apk_installed(&apk)?
    } else {
        Vec::new()
    };
    Ok((distro, pkgs))
}

/// Licence per package from the machine-readable copyright files in `tar`.
fn copyright_licences(tar_path: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let Ok(f) = std::fs::File::open(tar_path) else {
        return Ok(out);
    };
    let mut a = tar::Archive::new(f);
    for e in a.entries().context("reading the copyright files")? {
        let mut e = e.context("reading the copyright files")?;
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let Some(pkg) = path
            .trim_start_matches("./")
            .split('/')
            .next()
            .map(str::to_string)
        else {
            continue;
        };
        let text = crate::io::limits::read_capped(&mut e, 1 << 20, "a copyright file")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if let Some(l) = packages::dep5_licence(&text) {
            out.insert(pkg, l);
        }
    }
    Ok(out)
}

/// An artifact to attach: its type, its one layer, and annotations.
pub struct Artifact {
    pub artifact_type: &'static str,
    pub content: Blob,
    pub annotations: BTreeMap<String, String>,
}

/// The documents about a build, for an image once its digest is known.
pub struct Documents {
    pub sbom: Vec<u8>,
    pub provenance: Vec<u8>,
    pub package_count: usize,
}

/// What goes into them besides the image.
pub struct Inputs<'a> {
    pub repository: &'a str,
    pub image_digest: &'a str,
    pub base: spdx::Artifact,
    pub recipe: spdx::Artifact,
    pub extends: Vec<slsa::Dependency>,
    pub files: Vec<slsa::Dependency>,
    pub distro: Distro,
    pub packages: Vec<Package>,
    pub created: String,
    pub started: String,
    pub finished: String,
}

pub fn documents(i: &Inputs<'_>, key: Option<&PrivateKey>) -> Result<Documents> {
    let sbom = spdx::document(&spdx::SbomInput {
        image: i.repository,
        image_digest: i.image_digest,
        base: &i.base,
        recipe: &i.recipe,
        distro: &i.distro,
        packages: &i.packages,
        created: &i.created,
    })?;
    let base_dep = slsa::Dependency {
        name: i
            .base
            .download
            .clone()
            .unwrap_or_else(|| i.base.name.clone()),
        digest: i.base.digest.clone(),
    };
    let recipe_dep = slsa::Dependency {
        name: i.recipe.name.clone(),
        digest: i.recipe.digest.clone(),
    };
    let (provenance, _) = slsa::attestation(
        &slsa::BuildRecord {
            image: i.repository,
            image_digest: i.image_digest,
            recipe: &recipe_dep,
            extends: &i.extends,
            base: &base_dep,
            files: &i.files,
            started: &i.started,
            finished: &i.finished,
        },
        key,
    )?;
    Ok(Documents {
        sbom,
        provenance,
        package_count: i.packages.len(),
    })
}

/// The two artifacts of `docs`.
pub fn artifacts(docs: &Documents, created: &str) -> Vec<Artifact> {
    let ann = BTreeMap::from([(
        "org.opencontainers.image.created".to_string(),
        created.to_string(),
    )]);
    vec![
        Artifact {
            artifact_type: SPDX_TYPE,
            content: Blob::raw(docs.sbom.clone()),
            annotations: ann.clone(),
        },
        Artifact {
            artifact_type: PROVENANCE_TYPE,
            content: Blob::raw(docs.provenance.clone()),
            annotations: ann,
        },
    ]
}

/// The referrers-tag-schema tag of a manifest digest: `sha256-<hex>`.
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// The referrers index after adding `entries` (existing entries kept, none twice).
pub(crate) fn referrers_index(existing: Option<&[u8]>, entries: &[Descriptor]) -> Result<Blob> {
    let mut manifests: Vec<Descriptor> = match existing.map(image::parse_document).transpose()? {
        Some(Document::Index(i)) => i.manifests().clone(),
        _ => Vec::new(),
    };
    for e in entries {
        if !manifests.iter().any(|m| m.digest() == e.digest()) {
            manifests.push(e.clone());
        }
    }
    image::index(manifests)
}

/// Writes the artifacts (and a signature) into a layout next to the image `subject`.
pub fn to_layout(
    layout: &Layout,
    subject: &Descriptor,
    artifacts: &[Artifact],
    signature: Option<&sign::ImageSignature>,
) -> Result<()> {
    let mut entries = Vec::new();
    for a in artifacts {
        let (config, manifest) =
            image::artifact(a.artifact_type, &a.content, subject, &a.annotations)?;
        for b in [&config, &a.content, &manifest] {
            layout.write_blob(b)?;
        }
        entries.push(artifact_descriptor(&manifest, a)?);
    }
    if !entries.is_empty() {
        let tag = referrers_tag(subject.digest().as_ref());
        let existing = layout
            .tags()?
            .into_iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, d)| layout.read_blob(&d))
            .transpose()?;
        let idx = referrers_index(existing.as_deref(), &entries)?;
        layout.write_blob(&idx)?;
        layout.set_tag(&tag, &idx.descriptor(MEDIA_INDEX)?, None)?;
    }
    if let Some(sig) = signature {
        let sig_tag = sign::signature_tag(subject.digest().as_ref())?;
        let existing = layout
            .tags()?
            .into_iter()
            .find(|(t, _)| *t == sig_tag)
            .map(|(_, d)| layout.read_blob(&d))
            .transpose()?;
        let att = sign::attach(subject.digest().as_ref(), sig, existing.as_deref())?;
        for b in att.blobs.iter().chain(std::iter::once(&att.manifest)) {
            layout.write_blob(b)?;
        }
        layout.set_tag(&att.tag, &att.manifest.descriptor(MEDIA_MANIFEST)?, None)?;
    }
    Ok(())
}

fn artifact_descriptor(manifest: &Blob, a: &Artifact) -> Result<Descriptor> {
    let mut d = manifest.descriptor(MEDIA_MANIFEST)?;
    d.set_artifact_type(Some(a.artifact_type.into()));
    if !a.annotations.is_empty() {
        d.set_annotations(Some(a.annotations.clone().into_iter().collect()));
    }
    Ok(d)
}

/// Pushes the artifacts (and a signature) next to the image `subject` in `r`'s
/// repository. Registries without the referrers API get the referrers tag.
pub async fn to_registry(
    client: &Client,
    r: &RemoteRef,
    subject: &Descriptor,
    artifacts: &[Artifact],
    signature: Option<&sign::ImageSignature>,
) -> Result<()> {
    let repo = &r.repository;
    let mut entries = Vec::new();
    for a in artifacts {
        let (config, manifest) =
            image::artifact(a.artifact_type, &a.content, subject, &a.annotations)?;
        for b in [&config, &a.content] {
            client.put_small_blob(repo, &b.bytes, &b.digest).await?;
        }
        client
            .put_manifest(repo, &manifest.digest, &manifest.bytes, MEDIA_MANIFEST)
            .await?;
        entries.push(artifact_descriptor(&manifest, a)?);
    }
    if !entries.is_empty()
        && !client
            .has_referrers_api(repo, subject.digest().as_ref())
            .await?
    {
        let tag = referrers_tag(subject.digest().as_ref());
        let existing = client.manifest(repo, &tag).await?.map(|(b, _, _)| b);
        let idx = referrers_index(existing.as_deref(), &entries)?;
        client
            .put_manifest(repo, &tag, &idx.bytes, MEDIA_INDEX)
            .await?;
    }
    if let Some(sig) = signature {
        let digest = subject.digest().to_string();
        let sig_tag = sign::signature_tag(&digest)?;
        let existing = client.manifest(repo, &sig_tag).await?.map(|(b, _, _)| b);
        let att = sign::attach(&digest, sig, existing.as_deref())?;
        for b in &att.blobs {
            client.put_small_blob(repo, &b.bytes, &b.digest).await?;
        }
        client
            .put_manifest(repo, &att.tag, &att.manifest.bytes, MEDIA_MANIFEST)
            .await?;
    }
    Ok(())
}

/// What an image has attached, as far as `inspect` and `verify` show it.
#[derive(Debug, Default, serde::Serialize)]
pub struct Attached {
    /// Signatures in the `.sig` manifest.
    pub signatures: usize,
    /// Of those, valid for the given key (when one was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_signatures: Option<usize>,
    /// Packages in the SBOM (besides the image, base and recipe entries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sbom_packages: Option<usize>,
    /// The provenance's resolved dependencies (name → digest).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub materials: Vec<(String, String)>,
    /// Whether the provenance envelope verified with the given key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance_signed: Option<bool>,
}

/// Where attached documents are read from: a layout, or a registry repository (where
/// manifests and blobs live behind different endpoints).
pub trait BlobSource {
    fn blob(&self, digest: &str, size: u64) -> Result<Vec<u8>>;
    fn manifest(&self, digest: &str, size: u64) -> Result<Vec<u8>>;
    fn tagged(&self, tag: &str) -> Result<Option<Vec<u8>>>;
    /// The referrers index of `digest`: the referrers tag schema's `sha256-<hex>` tag
    /// (layouts, and registries without the referrers API).
    fn referrers(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        self.tagged(&referrers_tag(digest))
    }
}

/// Finds what is attached to `digest` (repository `repo` for signature identities).
pub fn read_attached(
    src: &dyn BlobSource,
    repo: &str,
    digest: &str,
    key: Option<&crate::provenance::PublicKey>,
) -> Result<Attached> {
    let mut out = Attached::default();
    if let Some(sig_manifest) = src.tagged(&sign::signature_tag(digest)?)? {
        let layers = crate::provenance::attach::layers_of(&sig_manifest)?;
        out.signatures = layers.len();
        if let Some(k) = key {
            let mut blobs = BTreeMap::new();
            for l in &layers {
                let d = l["digest"].as_str().unwrap_or_default().to_string();
                let size = l["size"].as_u64().unwrap_or(0);
                if let Ok(b) = src.blob(&d, size) {
                    blobs.insert(d, b);
                }
            }
            let verdicts = sign::verify(digest, repo, &sig_manifest, &blobs, k)?;
            out.valid_signatures = Some(verdicts.iter().filter(|v| v.is_valid()).count());
        }
    }
    if let Some(idx) = src.referrers(digest)? {
        let Document::Index(idx) = image::parse_document(&idx)? else {
            return Ok(out);
        };
        for d in idx.manifests() {
            let t = d
                .artifact_type()
                .as_ref()
                .map(|t| t.to_string())
                .unwrap_or_default();
            let Document::Manifest(m) =
                image::parse_document(&src.manifest(d.digest().as_ref(), d.size())?)?
            else {
                continue;
            };
            let Some(l) = m.layers().first() else {
                continue;
            };
            let body = src.blob(l.digest().as_ref(), l.size())?;
            if t == SPDX_TYPE {
                let v: serde_json::Value =
                    serde_json::from_slice(&body).context("parsing the SBOM")?;
                let n = v["packages"].as_array().map(|p| p.len()).unwrap_or(0);
                out.sbom_packages = Some(n.saturating_sub(3));
            } else if t == PROVENANCE_TYPE {
                let statement = match key {
                    Some(k) => match crate::provenance::dsse::verify(&body, k) {
                        Ok((_, payload)) => {
                            out.provenance_signed = Some(true);
                            payload
                        }
                        Err(_) => {
                            out.provenance_signed = Some(false);
                            dsse_payload(&body).unwrap_or(body.clone())
                        }
                    },
                    None => dsse_payload(&body).unwrap_or(body.clone()),
                };
                let v: serde_json::Value =
                    serde_json::from_slice(&statement).context("parsing the provenance")?;
                for dep in v["predicate"]["buildDefinition"]["resolvedDependencies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    out.materials.push((
                        dep["uri"]
                            .as_str()
                            .or(dep["name"].as_str())
                            .unwrap_or_default()
                            .to_string(),
                        dep["digest"]["sha256"]
                            .as_str()
                            .map(|h| format!("sha256:{h}"))
                            .unwrap_or_default(),
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// The payload of an unverified DSSE envelope (for display only).
fn dsse_payload(envelope: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let v: serde_json::Value = serde_json::from_slice(envelope).ok()?;
    base64::engine::general_purpose::STANDARD
        .decode(v["payload"].as_str()?)
        .ok()
}

/// Blobs and tags of a layout.
pub struct LayoutSource<'a>(pub &'a Layout);

impl BlobSource for LayoutSource<'_> {
    fn blob(&self, digest: &str, size: u64) -> Result<Vec<u8>> {
        let d = Descriptor::new(
            image::MediaType::Other("application/octet-stream".into()),
            size,
            image::digest(digest)?,
        );
        if size > 64 << 20 {
            anyhow::bail!("{digest} is too large to read as a document");
        }
        let mut r = self.0.open_blob(&d)?;
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut buf)?;
        Ok(buf)
    }
    fn manifest(&self, digest: &str, size: u64) -> Result<Vec<u8>> {
        self.blob(digest, size)
    }
    fn tagged(&self, tag: &str) -> Result<Option<Vec<u8>>> {
        match self.0.tags()?.into_iter().find(|(t, _)| t == tag) {
            Some((_, d)) => Ok(Some(self.0.read_blob(&d)?)),
            None => Ok(None),
        }
    }
}

/// Blobs and tags of a remote repository (documents capped as everywhere).
pub struct RegistrySource<'a> {
    pub client: &'a Client,
    pub repo: &'a str,
}

impl BlobSource for RegistrySource<'_> {
    fn blob(&self, digest: &str, size: u64) -> Result<Vec<u8>> {
        crate::sys::rt::block_on(
            self.client
                .small_blob_up_to(self.repo, digest, size, 64 << 20),
        )
    }
    fn referrers(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        // The referrers API where the registry has it (a build then writes no
        // referrers tag), else the tag.
        match crate::sys::rt::block_on(self.client.referrers(self.repo, digest))? {
            Some(idx) => Ok(Some(idx)),
            None => self.tagged(&referrers_tag(digest)),
        }
    }
    fn manifest(&self, digest: &str, _size: u64) -> Result<Vec<u8>> {
        // `Client::manifest` checks the bytes hash to the digest asked for.
        crate::sys::rt::block_on(self.client.manifest(self.repo, digest))?
            .map(|(b, _, _)| b)
            .with_context(|| format!("the registry has no manifest {}@{digest}", self.repo))
    }
    fn tagged(&self, tag: &str) -> Result<Option<Vec<u8>>> {
        Ok(crate::sys::rt::block_on(self.client.manifest(self.repo, tag))?.map(|(b, _, _)| b))
    }
}
