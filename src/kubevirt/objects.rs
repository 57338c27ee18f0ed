//! Builds each cluster object for one image from a validated [`ManifestInput`].

use std::collections::BTreeMap;

use anyhow::Result;

use super::input::{
    pinned_image, storage_request, tracked_url, BootFirmware, ManifestInput, Scope, TypeRef,
    PERSISTENT_SUFFIX,
};
use super::types::*;

/// The pod label that ties a VM's virt-launcher pod to its Service.
pub const VM_LABEL: &str = "diskforge.io/vm";
/// CDI only updates a DataSource that carries this label with its DataImportCron's name.
pub const DATA_IMPORT_CRON_LABEL: &str = "cdi.kubevirt.io/dataImportCron";
/// Labels CDI copies from a DataImportCron to its imports and DataSource, and KubeVirt
/// reads for `inferFromVolume`.
const DEFAULT_INSTANCETYPE: &str = "instancetype.kubevirt.io/default-instancetype";
const DEFAULT_INSTANCETYPE_KIND: &str = "instancetype.kubevirt.io/default-instancetype-kind";
const DEFAULT_PREFERENCE: &str = "instancetype.kubevirt.io/default-preference";
const DEFAULT_PREFERENCE_KIND: &str = "instancetype.kubevirt.io/default-preference-kind";

const ROOT_DISK: &str = "rootdisk";
/// The NoCloud disk KubeVirt makes from the user-data Secret.
const CLOUD_INIT_DISK: &str = "cloudinitdisk";
const POD_NETWORK: &str = "default";
/// CDI's own defaults, written out so the objects say what they do.
const GARBAGE_COLLECT: &str = "Outdated";
const IMPORTS_TO_KEEP: u32 = 3;

/// The VM that boots the containerDisk pinned by digest, always running.
pub fn virtual_machine(input: &ManifestInput) -> Result<VirtualMachine> {
    let image = pinned_image(&input.repository, &input.digest)?;
    Ok(vm(
        input,
        &input.name,
        "Always",
        VolumeSource::ContainerDisk { image },
        Vec::new(),
    ))
}

/// A VM whose disk is a persistent clone of the DataSource's latest import. It is
/// created halted: start it with `virtctl start` (or copy it) once the first import is
/// done; each new VM gets the import that is current when it is created.
pub fn persistent_virtual_machine(input: &ManifestInput) -> VirtualMachine {
    let name = format!("{}{PERSISTENT_SUFFIX}", input.name);
    let volume = format!("{name}-{ROOT_DISK}");
    let template = DataVolumeTemplate {
        metadata: NameOnly {
            name: volume.clone(),
        },
        spec: DataVolumeSpec {
            source: None,
            source_ref: Some(SourceRef {
                kind: "DataSource",
                name: input.name.clone(),
                namespace: input.namespace.clone(),
            }),
            storage: storage_spec(input),
        },
    };
    vm(
        input,
        &name,
        "Halted",
        VolumeSource::DataVolume { name: volume },
        vec![template],
    )
}

fn vm(
    input: &ManifestInput,
    name: &str,
    run_strategy: &'static str,
    source: VolumeSource,
    data_volume_templates: Vec<DataVolumeTemplate>,
) -> VirtualMachine {
    // An instancetype sets the memory; KubeVirt refuses a VM that sets it as well.
    let resources = match input.instancetype {
        Some(_) => None,
        None => Some(Requests {
            requests: Memory {
                memory: input.memory.clone(),
            },
        }),
    };
    let (features, firmware) = match input.boot {
        BootFirmware::Bios => (None, None),
        BootFirmware::Efi { secure_boot } => (
            secure_boot.then_some(Features {
                smm: FeatureState { enabled: true },
            }),
            Some(FirmwareSpec {
                bootloader: Bootloader {
                    efi: Efi { secure_boot },
                },
            }),
        ),
    };
    let mut disks = vec![Disk {
        name: ROOT_DISK.to_string(),
        disk: DiskTarget { bus: "virtio" },
    }];
    let mut volumes = vec![Volume {
        name: ROOT_DISK.to_string(),
        source,
    }];
    if let Some(secret) = &input.user_data_secret {
        disks.push(Disk {
            name: CLOUD_INIT_DISK.to_string(),
            disk: DiskTarget { bus: "virtio" },
        });
        volumes.push(Volume {
            name: CLOUD_INIT_DISK.to_string(),
            source: VolumeSource::CloudInitNoCloud {
                user_data_secret_ref: SecretRef {
                    name: secret.clone(),
                },
            },
        });
    }
    let spec = VirtualMachineSpec {
        run_strategy,
        instancetype: input.instancetype.as_ref().map(|r| Matcher {
            kind: r.instancetype_kind(),
            name: r.name.clone(),
        }),
        preference: input.preference.as_ref().map(|r| Matcher {
            kind: r.preference_kind(),
            name: r.name.clone(),
        }),
        data_volume_templates,
        template: VmiTemplate {
            metadata: LabelsOnly {
                labels: BTreeMap::from([(VM_LABEL.to_string(), name.to_string())]),
            },
            spec: VmiSpec {
                domain: Domain {
                    devices: Devices {
                        disks,
                        interfaces: vec![Interface {
                            name: POD_NETWORK.to_string(),
                            masquerade: Empty {},
                        }],
                    },
                    features,
                    firmware,
                    resources,
                },
                networks: vec![Network {
                    name: POD_NETWORK.to_string(),
                    pod: Empty {},
                }],
                volumes,
            },
        },
    };
    Object::new(meta(input, name, BTreeMap::new()), spec)
}

/// Polls the tag on the schedule and imports each new digest into a volume.
pub fn data_import_cron(input: &ManifestInput) -> Result<DataImportCron> {
    let url = tracked_url(&input.repository, &input.tag)?;
    let spec = DataImportCronSpec {
        template: CronTemplate {
            spec: DataVolumeSpec {
                source: Some(RegistrySource {
                    registry: RegistryUrl {
                        url,
                        pull_method: input.pull_method,
                        platform: input
                            .architecture
                            .clone()
                            .map(|architecture| PlatformOptions { architecture }),
                    },
                }),
                source_ref: None,
                storage: storage_spec(input),
            },
        },
        schedule: input.schedule.clone(),
        garbage_collect: GARBAGE_COLLECT,
        imports_to_keep: IMPORTS_TO_KEEP,
        managed_data_source: input.name.clone(),
    };
    Ok(Object::new(
        meta(input, &input.name, instancetype_labels(input)),
        spec,
    ))
}

/// The DataSource the DataImportCron keeps pointing at its latest import. CDI would
/// create it on its own; declaring it lets VMs that reference it be applied together.
pub fn data_source(input: &ManifestInput) -> DataSource {
    let mut labels = instancetype_labels(input);
    labels.insert(DATA_IMPORT_CRON_LABEL.to_string(), input.name.clone());
    Object::new(
        meta(input, &input.name, labels),
        DataSourceSpec { source: Empty {} },
    )
}

/// What `virtctl expose vm VM --name NAME --port PORT` creates: a TCP Service selecting
/// the VM template's labels, so it follows the VM across restarts and migrations.
pub fn expose(
    vm: &VirtualMachine,
    name: &str,
    port_name: &str,
    port: u16,
    service_type: ServiceType,
) -> Service {
    let metadata = ObjectMeta {
        name: name.to_string(),
        namespace: vm.metadata.namespace.clone(),
        labels: BTreeMap::new(),
    };
    let spec = ServiceSpec {
        service_type,
        selector: vm.spec.template.metadata.labels.clone(),
        ports: vec![ServicePort {
            name: port_name.to_string(),
            protocol: "TCP",
            port,
            target_port: port,
        }],
    };
    Object::new(metadata, spec)
}

fn storage_spec(input: &ManifestInput) -> StorageSpec {
    StorageSpec {
        resources: Requests {
            requests: Storage {
                storage: storage_request(input.disk_virtual_size),
            },
        },
        storage_class_name: input.storage_class.clone(),
    }
}

fn meta(input: &ManifestInput, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: name.to_string(),
        namespace: input.namespace.clone(),
        labels,
    }
}

/// The recipe's instancetype and preference as CDI's default-* labels.
fn instancetype_labels(input: &ManifestInput) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut add = |name_label: &str, kind_label: &str, r: &TypeRef, kind: &str| {
        labels.insert(name_label.to_string(), r.name.clone());
        // Without the kind label KubeVirt assumes the cluster-wide kind.
        if r.scope == Scope::Namespace {
            labels.insert(kind_label.to_string(), kind.to_string());
        }
    };
    if let Some(r) = &input.instancetype {
        add(
            DEFAULT_INSTANCETYPE,
            DEFAULT_INSTANCETYPE_KIND,
            r,
            r.instancetype_kind(),
        );
    }
    if let Some(r) = &input.preference {
        add(
            DEFAULT_PREFERENCE,
            DEFAULT_PREFERENCE_KIND,
            r,
            r.preference_kind(),
        );
    }
    labels
}
