//! The cluster side of an image: KubeVirt and CDI objects that consume it, as typed values.
//!
//! From one [`ManifestInput`] (image, digest, name, disk size, instancetype, ttyd port,
//! schedule) [`Manifests::generate`] builds
//!
//! - a `VirtualMachine` booting the containerDisk pinned by digest (`vm.yaml`),
//! - a `Service` for ttyd when the image runs it, like `virtctl expose` (`service.yaml`),
//!   and one for its web desktop (noVNC) when it has one (`service-desktop.yaml`),
//! - a CDI `DataImportCron` that polls the tag and imports each new digest
//!   (`dataimportcron.yaml`), and the `DataSource` it keeps current (`datasource.yaml`),
//! - a halted `VirtualMachine` with a persistent disk cloned from that DataSource
//!   (`vm-persistent.yaml`).
//!
//! The types in [`types`] are small hand-written serde structs holding only the fields
//! written here, not the kube / k8s-openapi crates. Output is deterministic: fields in
//! declaration order, labels sorted. docs/kubevirt.md explains how a cluster uses them.

mod input;
mod objects;
pub mod types;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

pub use input::{
    pinned_image, storage_request, tracked_url, BootFirmware, ManifestInput, Scope, TypeRef,
    DEFAULT_MEMORY, DEFAULT_SCHEDULE, DESKTOP_SERVICE_SUFFIX, PERSISTENT_SUFFIX, SERVICE_SUFFIX,
};
pub use objects::{expose, DATA_IMPORT_CRON_LABEL, VM_LABEL};
pub use types::{PullMethod, ServiceType};

use types::{DataImportCron, DataSource, Service, VirtualMachine};

/// Every file name [`Manifests::write_dir`] may write, in the order it writes them.
pub const FILE_NAMES: [&str; 6] = [
    "vm.yaml",
    "service.yaml",
    "service-desktop.yaml",
    "dataimportcron.yaml",
    "datasource.yaml",
    "vm-persistent.yaml",
];

/// The objects for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifests {
    pub vm: VirtualMachine,
    /// Present when the image runs ttyd.
    pub service: Option<Service>,
    /// Present when the image has a web desktop (`NAME-desktop`, port `desktop`).
    pub desktop_service: Option<Service>,
    pub data_import_cron: DataImportCron,
    pub data_source: DataSource,
    pub persistent_vm: VirtualMachine,
}

impl Manifests {
    /// Validates the input and builds every object.
    pub fn generate(input: &ManifestInput) -> Result<Manifests> {
        input.validate().context("generating KubeVirt manifests")?;
        let vm = objects::virtual_machine(input)?;
        let service = input.ttyd_port.map(|port| {
            let name = format!("{}{SERVICE_SUFFIX}", input.name);
            expose(&vm, &name, "ttyd", port, input.service_type)
        });
        let desktop_service = input.desktop_port.map(|port| {
            let name = format!("{}{DESKTOP_SERVICE_SUFFIX}", input.name);
            expose(&vm, &name, "desktop", port, input.service_type)
        });
        Ok(Manifests {
            service,
            desktop_service,
            data_import_cron: objects::data_import_cron(input)?,
            data_source: objects::data_source(input),
            persistent_vm: objects::persistent_virtual_machine(input),
            vm,
        })
    }

    /// Each object as YAML with the file name it is written to, in [`FILE_NAMES`] order.
    pub fn documents(&self) -> Result<Vec<(&'static str, String)>> {
        let mut docs = vec![("vm.yaml", to_yaml(&self.vm)?)];
        if let Some(service) = &self.service {
            docs.push(("service.yaml", to_yaml(service)?));
        }
        if let Some(service) = &self.desktop_service {
            docs.push(("service-desktop.yaml", to_yaml(service)?));
        }
        docs.push(("dataimportcron.yaml", to_yaml(&self.data_import_cron)?));
        docs.push(("datasource.yaml", to_yaml(&self.data_source)?));
        docs.push(("vm-persistent.yaml", to_yaml(&self.persistent_vm)?));
        Ok(docs)
    }

    /// All objects as one multi-document YAML stream (for `kubectl apply -f -`).
    pub fn to_yaml_stream(&self) -> Result<String> {
        let docs = self.documents()?;
        Ok(docs
            .iter()
            .map(|(_, yaml)| format!("---\n{yaml}"))
            .collect())
    }

    /// Writes each object to its own file in `dir` (created if needed), atomically, and
    /// removes a file of [`FILE_NAMES`] this set no longer has (a `service.yaml` left
    /// from a build with ttyd), so `kubectl apply -f DIR` applies exactly this set.
    /// Returns the paths written.
    pub fn write_dir(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let docs = self.documents()?;
        let mut written = Vec::new();
        for (file, yaml) in &docs {
            let path = dir.join(file);
            crate::io::atomic::write(&path, yaml.as_bytes())?;
            written.push(path);
        }
        for stale in FILE_NAMES
            .iter()
            .filter(|f| !docs.iter().any(|(d, _)| d == *f))
        {
            let path = dir.join(stale);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing stale {}", path.display()))
                }
                _ => {}
            }
        }
        Ok(written)
    }
}

fn to_yaml<T: Serialize>(object: &T) -> Result<String> {
    serde_yaml::to_string(object).context("serializing a manifest to YAML")
}

#[cfg(test)]
mod tests;
