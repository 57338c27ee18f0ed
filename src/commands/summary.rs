//! The typed summary of an image that `inspect` prints: one value behind the text, the
//! JSON (`--json`, `--format json`) and the `--format '{{.Field}}'` templates, so a field
//! cannot be misspelt into a silent "-". docs/cli.md lists the fields.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use super::UsageError;
use crate::oci::image;
use crate::oci::read::DiskHeader;
use crate::pipeline::attest::Attached;

/// What `inspect` says about an image.
#[derive(Debug, Serialize)]
pub struct ImageSummary {
    pub image: String,
    /// The digest of what the reference names (an index's for a multi-arch image).
    pub digest: String,
    pub architecture: String,
    pub os: String,
    pub created: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub env: Vec<String>,
    pub layers: Vec<LayerSummary>,
    pub disk: Option<DiskSummary>,
    pub attached: Attached,
    /// When the reference names an index: every image in it (the rest of the summary
    /// describes the one for this host's architecture).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformEntry>,
}

/// One image of an index.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformEntry {
    pub digest: String,
    pub os: String,
    pub architecture: String,
}

/// The images an index lists; none for a plain manifest.
pub fn platforms(top: &[u8]) -> Result<Vec<PlatformEntry>> {
    Ok(match image::parse_document(top)? {
        image::Document::Manifest(_) => Vec::new(),
        image::Document::Index(idx) => idx
            .manifests()
            .iter()
            .map(|d| PlatformEntry {
                digest: d.digest().to_string(),
                os: d
                    .platform()
                    .as_ref()
                    .map(|p| p.os().to_string())
                    .unwrap_or_else(|| "unknown".into()),
                architecture: d
                    .platform()
                    .as_ref()
                    .map(|p| p.architecture().to_string())
                    .unwrap_or_else(|| "unknown".into()),
            })
            .collect(),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerSummary {
    pub digest: String,
    pub size: u64,
    #[serde(rename = "mediaType")]
    pub media_type: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskSummary {
    pub path: String,
    pub format: String,
    pub virtual_size: u64,
}

/// The fields `--format` templates name, with what they hold.
pub const FIELDS: &[(&str, &str)] = &[
    ("Image", "the image as given"),
    ("Digest", "the digest of what the reference names"),
    ("Architecture", "the config's architecture"),
    ("Os", "the config's OS"),
    ("Created", "the creation time (RFC 3339), empty when unset"),
    ("Layer", "the disk layer's digest"),
    ("LayerSize", "the disk layer's compressed size in bytes"),
    ("LayerMediaType", "the disk layer's media type"),
    ("DiskPath", "the disk's path in the layer"),
    ("DiskFormat", "qcow2 or raw"),
    ("DiskVirtualSize", "the disk's virtual size in bytes"),
    ("Signatures", "signatures attached"),
    ("Labels.KEY", "the config label KEY"),
];

impl ImageSummary {
    pub fn new(
        name: &str,
        digest: &str,
        manifest: &image::ImageManifest,
        config: &image::ImageConfiguration,
        disk: Option<(&str, &DiskHeader)>,
        attached: Attached,
    ) -> ImageSummary {
        ImageSummary {
            image: name.to_string(),
            digest: digest.to_string(),
            architecture: config.architecture().to_string(),
            os: config.os().to_string(),
            created: config.created().clone(),
            labels: image::labels(config),
            env: config
                .config()
                .as_ref()
                .and_then(|c| c.env().clone())
                .unwrap_or_default(),
            layers: manifest
                .layers()
                .iter()
                .map(|l| LayerSummary {
                    digest: l.digest().to_string(),
                    size: l.size(),
                    media_type: l.media_type().to_string(),
                })
                .collect(),
            disk: disk.map(|(p, h)| DiskSummary {
                path: p.to_string(),
                format: h.format.to_string(),
                virtual_size: h.virtual_size,
            }),
            attached,
            platforms: Vec::new(),
        }
    }

    /// The value of one `--format` field; an unknown field is wrong usage, a field the
    /// image does not have (no disk found, no such label) an error naming it.
    pub fn field(&self, name: &str) -> Result<String> {
        let layer = self.layers.first();
        let missing = |what: &str| -> anyhow::Error { anyhow::anyhow!("{}: {what}", self.image) };
        Ok(match name {
            "Image" => self.image.clone(),
            "Digest" => self.digest.clone(),
            "Architecture" => self.architecture.clone(),
            "Os" => self.os.clone(),
            "Created" => self.created.clone().unwrap_or_default(),
            "Layer" => layer.ok_or_else(|| missing("no layer"))?.digest.clone(),
            "LayerSize" => layer.ok_or_else(|| missing("no layer"))?.size.to_string(),
            "LayerMediaType" => layer.ok_or_else(|| missing("no layer"))?.media_type.clone(),
            "DiskPath" => self.disk_field(|d| d.path.clone())?,
            "DiskFormat" => self.disk_field(|d| d.format.clone())?,
            "DiskVirtualSize" => self.disk_field(|d| d.virtual_size.to_string())?,
            "Signatures" => self.attached.signatures.to_string(),
            other => match other.strip_prefix("Labels.") {
                Some(key) => self
                    .labels
                    .get(key)
                    .cloned()
                    .ok_or_else(|| missing(&format!("no label {key}")))?,
                None => return Err(unknown_field(other)),
            },
        })
    }

    fn disk_field(&self, f: impl Fn(&DiskSummary) -> String) -> Result<String> {
        self.disk
            .as_ref()
            .map(f)
            .ok_or_else(|| anyhow::anyhow!("{}: no disk found under disk/", self.image))
    }

    /// `--format TEMPLATE`: `{{.Field}}` replaced by each field's value.
    pub fn render(&self, template: &str) -> Result<String> {
        let mut out = String::new();
        let mut rest = template;
        while let Some(i) = rest.find("{{") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let Some(end) = after.find("}}") else {
                return Err(
                    UsageError(format!("--format {template:?}: `{{{{` without `}}}}`")).into(),
                );
            };
            let inner = after[..end].trim();
            let Some(name) = inner.strip_prefix('.') else {
                return Err(unknown_field(inner));
            };
            out.push_str(&self.field(name)?);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The summary for people.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line(format!("Image:        {}", self.image));
        line(format!("Digest:       {}", self.digest));
        line(format!("Platform:     {}/{}", self.os, self.architecture));
        line(format!(
            "Created:      {}",
            self.created.as_deref().unwrap_or("-")
        ));
        match &self.disk {
            Some(d) => line(format!(
                "Disk:         {} ({}, virtual size {})",
                d.path,
                d.format,
                crate::progress::human_bytes(d.virtual_size)
            )),
            None => line("Disk:         none found under disk/".into()),
        }
        line("Layers:".into());
        for l in &self.layers {
            line(format!(
                "  {}  {:>10}  {}",
                l.digest,
                crate::progress::human_bytes(l.size),
                l.media_type
            ));
        }
        if !self.labels.is_empty() {
            line("Labels:".into());
            for (k, v) in &self.labels {
                line(format!("  {k}={v}"));
            }
        }
        if !self.env.is_empty() {
            line("Env:".into());
            for e in &self.env {
                line(format!("  {e}"));
            }
        }
        if !self.platforms.is_empty() {
            line("Platforms:".into());
            for p in &self.platforms {
                line(format!("  {}/{}  {}", p.os, p.architecture, p.digest));
            }
        }
        let a = &self.attached;
        match a.valid_signatures {
            Some(v) => line(format!(
                "Signatures:   {} ({v} valid for the given key)",
                a.signatures
            )),
            None => line(format!("Signatures:   {}", a.signatures)),
        }
        match a.sbom_packages {
            Some(n) => line(format!("SBOM:         SPDX 2.3, {n} packages")),
            None => line("SBOM:         none attached".into()),
        }
        if !a.materials.is_empty() {
            line(match a.provenance_signed {
                Some(true) => "Provenance:   SLSA v1, signature valid for the given key".into(),
                Some(false) => "Provenance:   SLSA v1, NOT signed by the given key".into(),
                None => "Provenance:   SLSA v1".into(),
            });
            for (name, digest) in &a.materials {
                line(format!("  {digest}  {name}"));
            }
        }
        s
    }
}

fn unknown_field(name: &str) -> anyhow::Error {
    let names: Vec<&str> = FIELDS.iter().map(|(f, _)| *f).collect();
    let hint = crate::recipe::diag::did_you_mean(name.trim_start_matches('.'), &names)
        .map(|c| format!(": did you mean `{{{{.{c}}}}}`?"))
        .unwrap_or_default();
    UsageError(format!(
        "--format: unknown field `{name}`{hint} (fields: {}; or --format json)",
        names.join(", ")
    ))
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImageSummary {
        ImageSummary {
            image: "oci:x".into(),
            digest: "sha256:ab".into(),
            architecture: "amd64".into(),
            os: "linux".into(),
            created: None,
            labels: [("a.b".to_string(), "c".to_string())].into(),
            env: vec![],
            layers: vec![LayerSummary {
                digest: "sha256:cd".into(),
                size: 7,
                media_type: "m".into(),
            }],
            disk: None,
            attached: Attached::default(),
            platforms: Vec::new(),
        }
    }

    #[test]
    fn templates_name_fields_and_typos_are_refused() {
        let s = sample();
        assert_eq!(
            s.render("{{.Digest}} {{ .LayerSize }} {{.Labels.a.b}}")
                .unwrap(),
            "sha256:ab 7 c"
        );
        let e = s.render("{{.Digset}}").unwrap_err();
        assert!(e.downcast_ref::<UsageError>().is_some());
        assert!(e.to_string().contains("did you mean `{{.Digest}}`"), "{e}");
        assert!(s.render("{{.DiskFormat}}").is_err());
        assert!(s.render("{{.Labels.nope}}").is_err());
        assert!(s.render("{{.Digest").is_err());
    }
}
