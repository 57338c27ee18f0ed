use serde::Deserialize;

use super::types::VolumeSource;
use super::*;

const DIGEST: &str = "sha256:4b1c2a3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcdef";
const GIB: u64 = 1 << 30;

fn input() -> ManifestInput {
    ManifestInput::new(
        "registry.example.com/lab/demo",
        "latest",
        DIGEST,
        "demo",
        4 * GIB,
    )
}

fn with_ttyd() -> ManifestInput {
    ManifestInput {
        ttyd_port: Some(7681),
        ..input()
    }
}

/// The field at `path` (keys separated by '.') of a value serialized to YAML and back.
fn field(object: &impl Serialize, path: &str) -> serde_yaml::Value {
    let mut v = serde_yaml::to_value(object).unwrap();
    for key in path.split('.') {
        v = match key.parse::<usize>() {
            Ok(i) => v[i].clone(),
            Err(_) => v[key].clone(),
        };
    }
    v
}

#[test]
fn the_vm_boots_the_image_pinned_by_digest_and_cdi_follows_the_tag() {
    let m = Manifests::generate(&input()).unwrap();
    assert_eq!(
        m.vm.spec.template.spec.volumes[0].source,
        VolumeSource::ContainerDisk {
            image: format!("registry.example.com/lab/demo@{DIGEST}")
        }
    );
    assert_eq!(
        field(
            &m.data_import_cron,
            "spec.template.spec.source.registry.url"
        ),
        "docker://registry.example.com/lab/demo:latest"
    );
    assert_eq!(field(&m.vm, "spec.runStrategy"), "Always");
    assert_eq!(
        field(
            &m.data_import_cron,
            "spec.template.spec.storage.resources.requests.storage"
        ),
        "5Gi"
    );
}

#[test]
fn the_service_selects_exactly_the_vm_template_labels() {
    let m = Manifests::generate(&with_ttyd()).unwrap();
    let service = m.service.as_ref().unwrap();
    let labels = &m.vm.spec.template.metadata.labels;
    assert_eq!(labels.get(VM_LABEL).map(String::as_str), Some("demo"));
    assert_eq!(&service.spec.selector, labels);
    // The persistent VM is a different VM: the ttyd Service must not reach it too.
    let persistent = &m.persistent_vm.spec.template.metadata.labels;
    assert_eq!(
        persistent.get(VM_LABEL).map(String::as_str),
        Some("demo-persistent")
    );
    assert_ne!(&service.spec.selector, persistent);
    assert_eq!(service.metadata.name, "demo-ttyd");
    assert_eq!(field(service, "spec.type"), "ClusterIP");
    assert_eq!(field(service, "spec.ports.0.port"), 7681);
    assert_eq!(field(service, "spec.ports.0.targetPort"), 7681);
    assert_eq!(field(service, "spec.ports.0.protocol"), "TCP");
    // The pod network and a masquerade interface make the port reachable.
    assert_eq!(
        field(&m.vm, "spec.template.spec.networks.0.name"),
        "default"
    );
    assert!(field(&m.vm, "spec.template.spec.networks.0.pod").is_mapping());
    let iface = field(&m.vm, "spec.template.spec.domain.devices.interfaces.0");
    assert_eq!(iface["name"], "default");
    assert!(iface["masquerade"].is_mapping());

    let no_ttyd = Manifests::generate(&input()).unwrap();
    assert!(no_ttyd.service.is_none());
    let node_port = ManifestInput {
        service_type: ServiceType::NodePort,
        ..with_ttyd()
    };
    let m = Manifests::generate(&node_port).unwrap();
    assert_eq!(field(m.service.as_ref().unwrap(), "spec.type"), "NodePort");
}

#[test]
fn an_instancetype_switches_the_memory_request_off() {
    let plain = Manifests::generate(&input()).unwrap();
    assert_eq!(
        field(
            &plain.vm,
            "spec.template.spec.domain.resources.requests.memory"
        ),
        DEFAULT_MEMORY
    );
    assert!(field(&plain.vm, "spec.instancetype").is_null());

    let typed = ManifestInput {
        instancetype: Some(TypeRef::cluster("u1.medium")),
        preference: Some(TypeRef::cluster("ubuntu")),
        ..input()
    };
    let m = Manifests::generate(&typed).unwrap();
    for vm in [&m.vm, &m.persistent_vm] {
        assert!(field(vm, "spec.template.spec.domain.resources").is_null());
        assert_eq!(
            field(vm, "spec.instancetype.kind"),
            "VirtualMachineClusterInstancetype"
        );
        assert_eq!(field(vm, "spec.instancetype.name"), "u1.medium");
        assert_eq!(
            field(vm, "spec.preference.kind"),
            "VirtualMachineClusterPreference"
        );
        assert_eq!(field(vm, "spec.preference.name"), "ubuntu");
    }
    assert!(!m.to_yaml_stream().unwrap().contains("memory"));

    // A preference alone does not size the guest: the memory request stays.
    let preference_only = ManifestInput {
        preference: Some(TypeRef::cluster("ubuntu")),
        ..input()
    };
    let m = Manifests::generate(&preference_only).unwrap();
    assert_eq!(
        field(&m.vm, "spec.template.spec.domain.resources.requests.memory"),
        DEFAULT_MEMORY
    );
}

#[test]
fn instancetype_hints_become_cdi_default_labels() {
    let typed = ManifestInput {
        instancetype: Some(TypeRef {
            name: "lab".into(),
            scope: Scope::Namespace,
        }),
        preference: Some(TypeRef::cluster("ubuntu")),
        ..input()
    };
    let m = Manifests::generate(&typed).unwrap();
    let labels = &m.data_import_cron.metadata.labels;
    let get = |k: &str| labels.get(k).map(String::as_str);
    assert_eq!(
        get("instancetype.kubevirt.io/default-instancetype"),
        Some("lab")
    );
    assert_eq!(
        get("instancetype.kubevirt.io/default-instancetype-kind"),
        Some("VirtualMachineInstancetype")
    );
    assert_eq!(
        get("instancetype.kubevirt.io/default-preference"),
        Some("ubuntu")
    );
    // Cluster-wide is KubeVirt's default kind: no kind label.
    assert_eq!(
        get("instancetype.kubevirt.io/default-preference-kind"),
        None
    );
    assert_eq!(
        field(&m.vm, "spec.instancetype.kind"),
        "VirtualMachineInstancetype"
    );
    // The DataSource carries the same hints.
    for (k, v) in labels {
        assert_eq!(m.data_source.metadata.labels.get(k), Some(v));
    }
}

#[test]
fn the_cron_manages_the_data_source_the_persistent_vm_clones() {
    let m = Manifests::generate(&input()).unwrap();
    let cron = &m.data_import_cron;
    assert_eq!(cron.spec.managed_data_source, m.data_source.metadata.name);
    assert_eq!(
        m.data_source.metadata.labels.get(DATA_IMPORT_CRON_LABEL),
        Some(&cron.metadata.name)
    );
    assert_eq!(field(cron, "spec.schedule"), DEFAULT_SCHEDULE);
    assert_eq!(field(cron, "spec.garbageCollect"), "Outdated");
    assert_eq!(field(cron, "spec.importsToKeep"), 3);

    let vm = &m.persistent_vm;
    assert_eq!(vm.metadata.name, "demo-persistent");
    assert_eq!(field(vm, "spec.runStrategy"), "Halted");
    let dv = field(vm, "spec.dataVolumeTemplates.0");
    assert_eq!(dv["spec"]["sourceRef"]["kind"], "DataSource");
    assert_eq!(dv["spec"]["sourceRef"]["name"], "demo");
    // Without a namespace the reference defaults to the VM's own.
    assert!(dv["spec"]["sourceRef"]["namespace"].is_null());
    // The clone asks for what the import asked for, so it fits the source.
    assert_eq!(
        dv["spec"]["storage"],
        field(cron, "spec.template.spec.storage")
    );
    assert_eq!(
        field(vm, "spec.template.spec.volumes.0.dataVolume.name"),
        dv["metadata"]["name"]
    );
}

#[test]
fn a_namespace_and_storage_class_reach_every_object() {
    let placed = ManifestInput {
        namespace: Some("labs".into()),
        storage_class: Some("fast".into()),
        ..with_ttyd()
    };
    let m = Manifests::generate(&placed).unwrap();
    for doc in serde_yaml::Deserializer::from_str(&m.to_yaml_stream().unwrap()) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        assert_eq!(v["metadata"]["namespace"], "labs", "{v:?}");
    }
    assert_eq!(
        field(
            &m.persistent_vm,
            "spec.dataVolumeTemplates.0.spec.sourceRef.namespace"
        ),
        "labs"
    );
    assert_eq!(
        field(
            &m.data_import_cron,
            "spec.template.spec.storage.storageClassName"
        ),
        "fast"
    );
    let none = Manifests::generate(&input()).unwrap();
    let stream = none.to_yaml_stream().unwrap();
    assert!(!stream.contains("namespace:") && !stream.contains("storageClassName"));
}

#[test]
fn the_vm_yaml_has_a_stable_shape() {
    let m = Manifests::generate(&input()).unwrap();
    let expected = format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: demo
spec:
  runStrategy: Always
  template:
    metadata:
      labels:
        diskforge.io/vm: demo
    spec:
      domain:
        devices:
          disks:
          - name: rootdisk
            disk:
              bus: virtio
          interfaces:
          - name: default
            masquerade: {{}}
        resources:
          requests:
            memory: 2Gi
      networks:
      - name: default
        pod: {{}}
      volumes:
      - name: rootdisk
        containerDisk:
          image: registry.example.com/lab/demo@{DIGEST}
"
    );
    assert_eq!(m.documents().unwrap()[0], ("vm.yaml", expected));
}

#[test]
fn the_stream_is_deterministic_and_holds_every_object_once() {
    let a = Manifests::generate(&with_ttyd())
        .unwrap()
        .to_yaml_stream()
        .unwrap();
    let b = Manifests::generate(&with_ttyd())
        .unwrap()
        .to_yaml_stream()
        .unwrap();
    assert_eq!(a, b);
    let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&a)
        .map(|doc| {
            let v = serde_yaml::Value::deserialize(doc).unwrap();
            format!(
                "{}/{}",
                v["kind"].as_str().unwrap(),
                v["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "VirtualMachine/demo",
            "Service/demo-ttyd",
            "DataImportCron/demo",
            "DataSource/demo",
            "VirtualMachine/demo-persistent"
        ]
    );
}

#[test]
fn write_dir_writes_one_file_per_object_and_drops_a_stale_service() {
    let dir = tempfile::tempdir().unwrap();
    let with = Manifests::generate(&with_ttyd()).unwrap();
    let written = with.write_dir(dir.path()).unwrap();
    assert_eq!(written.len(), 5);
    for (file, yaml) in with.documents().unwrap() {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(file)).unwrap(),
            yaml
        );
    }
    let without = Manifests::generate(&input()).unwrap();
    let written = without.write_dir(dir.path()).unwrap();
    assert_eq!(written.len(), 4);
    assert!(!dir.path().join("service.yaml").exists());
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "dataimportcron.yaml",
            "datasource.yaml",
            "vm-persistent.yaml",
            "vm.yaml"
        ]
    );
}

#[test]
fn the_desktop_gets_its_own_service_beside_ttyds_and_a_stale_one_goes() {
    let both = ManifestInput {
        desktop_port: Some(6080),
        ..with_ttyd()
    };
    let m = Manifests::generate(&both).unwrap();
    let d = m.desktop_service.as_ref().unwrap();
    assert_eq!(d.metadata.name, "demo-desktop");
    assert_eq!(field(d, "spec.ports.0.name"), "desktop");
    assert_eq!(field(d, "spec.ports.0.port"), 6080);
    assert_eq!(field(d, "spec.ports.0.targetPort"), 6080);
    assert_eq!(&d.spec.selector, &m.vm.spec.template.metadata.labels);
    assert_eq!(m.service.as_ref().unwrap().metadata.name, "demo-ttyd");
    // A Service port name is an IANA service name: at most 15 characters, lower
    // case letters, digits and '-', at least one letter.
    let name = field(d, "spec.ports.0.name");
    let name = name.as_str().unwrap();
    assert!(
        name.len() <= 15
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    );
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(m.write_dir(dir.path()).unwrap().len(), 6);
    Manifests::generate(&with_ttyd())
        .unwrap()
        .write_dir(dir.path())
        .unwrap();
    assert!(!dir.path().join("service-desktop.yaml").exists());
    assert!(dir.path().join("service.yaml").exists());
    for bad in [Some(0), Some(7681)] {
        let i = ManifestInput {
            desktop_port: bad,
            ..with_ttyd()
        };
        assert!(Manifests::generate(&i).is_err(), "{bad:?}");
    }
}

#[test]
fn an_invalid_input_generates_nothing() {
    let bad = ManifestInput {
        digest: "sha256:nothex".into(),
        ..input()
    };
    let err = format!("{:#}", Manifests::generate(&bad).unwrap_err());
    assert!(
        err.contains("generating KubeVirt manifests") && err.contains("sha256:nothex"),
        "{err}"
    );
}

#[test]
fn an_architecture_and_a_pull_method_reach_the_registry_source_only_when_set() {
    let plain = Manifests::generate(&input()).unwrap();
    let source = "spec.template.spec.source.registry";
    let registry = field(&plain.data_import_cron, source);
    assert!(registry["platform"].is_null() && registry["pullMethod"].is_null());
    let arm = ManifestInput {
        architecture: Some("arm64".into()),
        pull_method: Some(PullMethod::Node),
        ..input()
    };
    let m = Manifests::generate(&arm).unwrap();
    assert_eq!(
        field(
            &m.data_import_cron,
            &format!("{source}.platform.architecture")
        ),
        serde_yaml::Value::from("arm64")
    );
    assert_eq!(
        field(&m.data_import_cron, &format!("{source}.pullMethod")),
        serde_yaml::Value::from("node")
    );
    let bad = ManifestInput {
        architecture: Some("ARM 64".into()),
        ..input()
    };
    assert!(format!("{:#}", Manifests::generate(&bad).unwrap_err()).contains("ARM 64"));
}
