//! Serde types for the fields diskforge writes into KubeVirt, CDI and core Kubernetes objects.
//!
//! Each struct holds only the fields diskforge sets, in the order they are written: the
//! full API types (kube, k8s-openapi and KubeVirt's Go types) describe every field of
//! every kind and would be heavy dependencies for five small objects. Field names follow
//! the published API definitions (`tests/kubevirt/*-swagger.json`), which the test suite
//! validates every generated object against.

use std::collections::BTreeMap;

use serde::Serialize;

/// The apiVersion and kind an object's spec belongs to.
pub trait Kind {
    const API_VERSION: &'static str;
    const KIND: &'static str;
}

/// A top-level object: apiVersion, kind, metadata, spec (written in that order).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Object<S> {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: ObjectMeta,
    pub spec: S,
}

impl<S: Kind> Object<S> {
    pub fn new(metadata: ObjectMeta, spec: S) -> Self {
        Object {
            api_version: S::API_VERSION,
            kind: S::KIND,
            metadata,
            spec,
        }
    }
}

/// `kubevirt.io/v1` VirtualMachine.
pub type VirtualMachine = Object<VirtualMachineSpec>;
/// `cdi.kubevirt.io/v1beta1` DataImportCron.
pub type DataImportCron = Object<DataImportCronSpec>;
/// `cdi.kubevirt.io/v1beta1` DataSource.
pub type DataSource = Object<DataSourceSpec>;
/// core `v1` Service.
pub type Service = Object<ServiceSpec>;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Kind for VirtualMachineSpec {
    const API_VERSION: &'static str = "kubevirt.io/v1";
    const KIND: &'static str = "VirtualMachine";
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    /// `Always` or `Halted`.
    pub run_strategy: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instancetype: Option<Matcher>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preference: Option<Matcher>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub data_volume_templates: Vec<DataVolumeTemplate>,
    pub template: VmiTemplate,
}

/// An instancetype or preference reference (`InstancetypeMatcher`, `PreferenceMatcher`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Matcher {
    pub kind: &'static str,
    pub name: String,
}

/// A DataVolume created with the VM (`dataVolumeTemplates[]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeTemplate {
    pub metadata: NameOnly,
    pub spec: DataVolumeSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NameOnly {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmiTemplate {
    pub metadata: LabelsOnly,
    pub spec: VmiSpec,
}

/// Template metadata: the labels are copied to the virt-launcher pod.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelsOnly {
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmiSpec {
    pub domain: Domain,
    pub networks: Vec<Network>,
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Domain {
    pub devices: Devices,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Features>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Requests<Memory>>,
}

/// `features: {smm: {enabled: true}}`: Secure Boot needs SMM.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    pub smm: FeatureState,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FeatureState {
    pub enabled: bool,
}

/// `firmware: {bootloader: {efi: {secureBoot: …}}}`; without it KubeVirt boots BIOS.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FirmwareSpec {
    pub bootloader: Bootloader,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bootloader {
    pub efi: Efi,
}

/// KubeVirt turns Secure Boot on when `secureBoot` is left out: it is always written.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Efi {
    pub secure_boot: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Devices {
    pub disks: Vec<Disk>,
    pub interfaces: Vec<Interface>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub name: String,
    pub disk: DiskTarget,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskTarget {
    pub bus: &'static str,
}

/// A guest interface bound to the pod network through NAT. Without a `ports` list
/// KubeVirt forwards every port to the guest.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    pub masquerade: Empty,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    pub name: String,
    pub pod: Empty,
}

/// An object with no fields, written `{}` (a masquerade binding, the pod network, a
/// DataSource source that CDI fills in).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(flatten)]
    pub source: VolumeSource,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum VolumeSource {
    ContainerDisk {
        image: String,
    },
    DataVolume {
        name: String,
    },
    /// cloud-init's NoCloud seed, its user-data read from a Secret (key `userdata`).
    /// KubeVirt's Go field is `UserDataSecretRef`; its JSON name is `secretRef`.
    #[serde(rename_all = "camelCase")]
    CloudInitNoCloud {
        #[serde(rename = "secretRef")]
        user_data_secret_ref: SecretRef,
    },
}

/// A Secret in the VM's namespace, by name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecretRef {
    pub name: String,
}

/// `resources: {requests: …}` of a domain or of a volume claim.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Requests<R> {
    pub requests: R,
}

/// A memory quantity (`2Gi`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    pub memory: String,
}

/// A storage quantity (`5Gi`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    pub storage: String,
}

/// The spec of a CDI DataVolume: where the data comes from and the volume to create.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<RegistrySource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ref: Option<SourceRef>,
    pub storage: StorageSpec,
}

/// `source: {registry: {url: docker://…}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrySource {
    pub registry: RegistryUrl,
}

/// `registry: {url, pullMethod, platform}` (CDI's `DataVolumeSourceRegistry`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryUrl {
    pub url: String,
    /// `node`: the node's container runtime pulls the image; absent: CDI's importer pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_method: Option<PullMethod>,
    /// The architecture CDI imports from a multi-architecture index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformOptions>,
}

/// How CDI pulls a registry image (`pullMethod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PullMethod {
    /// CDI's importer pod reads the registry itself (CDI's default).
    #[default]
    Pod,
    /// The node's container runtime pulls the image, as for any container image.
    Node,
}

/// `platform: {architecture}` (CDI's `PlatformOptions`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlatformOptions {
    pub architecture: String,
}

/// `sourceRef: {kind: DataSource, name, namespace}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceRef {
    pub kind: &'static str,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// CDI's `storage` API: CDI fills in access and volume mode from the StorageProfile and
/// adds the filesystem overhead on Filesystem volumes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    pub resources: Requests<Storage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Kind for DataImportCronSpec {
    const API_VERSION: &'static str = "cdi.kubevirt.io/v1beta1";
    const KIND: &'static str = "DataImportCron";
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataImportCronSpec {
    pub template: CronTemplate,
    pub schedule: String,
    /// `Outdated` (delete imports beyond `importsToKeep`) or `Never`.
    pub garbage_collect: &'static str,
    pub imports_to_keep: u32,
    pub managed_data_source: String,
}

/// The DataVolume each import is created from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CronTemplate {
    pub spec: DataVolumeSpec,
}

impl Kind for DataSourceSpec {
    const API_VERSION: &'static str = "cdi.kubevirt.io/v1beta1";
    const KIND: &'static str = "DataSource";
}

/// The source is left empty: the DataImportCron controller points it at each import.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataSourceSpec {
    pub source: Empty,
}

impl Kind for ServiceSpec {
    const API_VERSION: &'static str = "v1";
    const KIND: &'static str = "Service";
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
}

/// How a Service is reachable (`ExternalName` does not apply to a VM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: String,
    pub protocol: &'static str,
    pub port: u16,
    pub target_port: u16,
}
