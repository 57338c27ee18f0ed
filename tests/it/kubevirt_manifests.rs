//! The KubeVirt and CDI objects diskforge generates are valid for the projects' own
//! published API definitions (tests/kubevirt/: strict, unknown fields are errors).

use crate::common;

use std::path::{Path, PathBuf};

use diskforge::kubevirt::{
    BootFirmware, ManifestInput, Manifests, PullMethod, Scope, ServiceType, TypeRef,
};

const DIGEST: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const GIB: u64 = 1 << 30;

use common::kubevirt::{validate, validator_need, validator_python};

fn base() -> ManifestInput {
    ManifestInput::new(
        "registry.example.com:5000/lab/demo",
        "latest",
        DIGEST,
        "demo",
        4 * GIB,
    )
}

/// Every combination the generator distinguishes, by name.
fn variants() -> Vec<(&'static str, ManifestInput)> {
    vec![
        ("plain", base()),
        (
            "ttyd-instancetype",
            ManifestInput {
                instancetype: Some(TypeRef::cluster("u1.medium")),
                preference: Some(TypeRef::cluster("ubuntu")),
                ttyd_port: Some(7681),
                ..base()
            },
        ),
        (
            "namespaced",
            ManifestInput {
                namespace: Some("labs".into()),
                instancetype: Some(TypeRef {
                    name: "lab-small".into(),
                    scope: Scope::Namespace,
                }),
                ttyd_port: Some(8080),
                service_type: ServiceType::NodePort,
                schedule: "30 1 * * 1".into(),
                storage_class: Some("local-path".into()),
                disk_virtual_size: 10 * GIB + 1,
                ..base()
            },
        ),
        (
            "preference-only",
            ManifestInput {
                namespace: Some("labs".into()),
                preference: Some(TypeRef {
                    name: "lab".into(),
                    scope: Scope::Namespace,
                }),
                memory: "512Mi".into(),
                ttyd_port: Some(7681),
                service_type: ServiceType::LoadBalancer,
                schedule: "@daily".into(),
                ..base()
            },
        ),
        (
            "arm64-node-pull",
            ManifestInput {
                name: "demo-arm64".into(),
                architecture: Some("arm64".into()),
                pull_method: Some(PullMethod::Node),
                ..base()
            },
        ),
        (
            "uefi",
            ManifestInput {
                boot: BootFirmware::Efi { secure_boot: false },
                ..base()
            },
        ),
        (
            "uefi-secure-boot",
            ManifestInput {
                boot: BootFirmware::Efi { secure_boot: true },
                preference: Some(TypeRef::cluster("fedora")),
                user_data_secret: Some("demo-userdata".into()),
                ..base()
            },
        ),
    ]
}

/// cloud-init user-data reaches both VMs through the Secret, never inline.
fn user_data_comes_from_a_secret() {
    let m = Manifests::generate(&ManifestInput {
        user_data_secret: Some("demo-userdata".into()),
        ..base()
    })
    .unwrap();
    let vms: Vec<serde_yaml::Value> = m
        .documents()
        .unwrap()
        .into_iter()
        .map(|(_, d)| serde_yaml::from_str::<serde_yaml::Value>(&d).unwrap())
        .filter(|v| v["kind"] == "VirtualMachine")
        .collect();
    assert_eq!(vms.len(), 2);
    for vm in &vms {
        let spec = &vm["spec"]["template"]["spec"];
        let volume = spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "cloudinitdisk")
            .unwrap_or_else(|| panic!("no cloud-init volume: {spec:?}"));
        // KubeVirt's UserDataSecretRef, whose JSON name is `secretRef`.
        assert_eq!(
            volume["cloudInitNoCloud"]["secretRef"]["name"],
            "demo-userdata"
        );
        assert!(volume["cloudInitNoCloud"].get("userData").is_none());
        assert!(spec["domain"]["devices"]["disks"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "cloudinitdisk"));
    }
}

/// The firmware reaches both VMs (the containerDisk one and the persistent one) as
/// KubeVirt reads it: `secureBoot` always written (KubeVirt defaults it to true), SMM
/// with Secure Boot only, nothing for BIOS.
fn the_firmware_is_written_as_kubevirt_reads_it() {
    let domains = |input: &ManifestInput| -> Vec<serde_yaml::Value> {
        Manifests::generate(input)
            .unwrap()
            .documents()
            .unwrap()
            .into_iter()
            .map(|(_, d)| serde_yaml::from_str::<serde_yaml::Value>(&d).unwrap())
            .filter(|v| v["kind"] == "VirtualMachine")
            .map(|v| v["spec"]["template"]["spec"]["domain"].clone())
            .collect()
    };
    let bios = domains(&base());
    assert_eq!(bios.len(), 2);
    for d in &bios {
        assert!(
            d.get("firmware").is_none() && d.get("features").is_none(),
            "{d:?}"
        );
    }
    for (secure_boot, smm) in [(false, false), (true, true)] {
        let ds = domains(&ManifestInput {
            boot: BootFirmware::Efi { secure_boot },
            ..base()
        });
        assert_eq!(ds.len(), 2);
        for d in &ds {
            assert_eq!(
                d["firmware"]["bootloader"]["efi"]["secureBoot"],
                serde_yaml::Value::Bool(secure_boot),
                "{d:?}"
            );
            assert_eq!(
                d["features"]["smm"]["enabled"].as_bool().unwrap_or(false),
                smm,
                "{d:?}"
            );
        }
    }
}

/// Writes a variant's files and its multi-document stream; returns every path and the
/// number of documents in them.
fn write_variant(dir: &Path, name: &str, input: &ManifestInput) -> (Vec<PathBuf>, usize) {
    let manifests = Manifests::generate(input).unwrap();
    let mut files = manifests.write_dir(&dir.join(name)).unwrap();
    let docs = files.len();
    let stream = dir.join(format!("{name}.yaml"));
    std::fs::write(&stream, manifests.to_yaml_stream().unwrap()).unwrap();
    files.push(stream);
    (files, 2 * docs)
}

fn every_variant_is_valid_for_kubevirt_and_cdi() {
    let python = validator_python();
    let dir = tempfile::tempdir().unwrap();
    for (name, input) in variants() {
        let (files, docs) = write_variant(dir.path(), name, &input);
        let out = validate(python, &files);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: the validator refused:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Every document was looked at, not only the first of each file.
        assert!(
            stdout.contains(&format!("{docs}/{docs} documents valid")),
            "{name}: {stdout}"
        );
    }
}

/// The validator is live: the same generated files with one field misspelled fail.
fn the_validator_rejects_a_misspelled_field() {
    let python = validator_python();
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = write_variant(dir.path(), "plain", &base());
    let typos = [
        ("vm.yaml", "containerDisk:", "containerDisks:"),
        (
            "dataimportcron.yaml",
            "managedDataSource:",
            "managedDatasource:",
        ),
        ("vm-persistent.yaml", "sourceRef:", "sourceReference:"),
    ];
    for (file, right, wrong) in typos {
        let good = files.iter().find(|p| p.ends_with(file)).unwrap();
        assert!(
            validate(python, std::slice::from_ref(good))
                .status
                .success(),
            "{file}"
        );
        let text = std::fs::read_to_string(good).unwrap();
        assert!(text.contains(right), "{file} has no {right}");
        let bad = dir.path().join(format!("typo-{file}"));
        std::fs::write(&bad, text.replace(right, wrong)).unwrap();
        let out = validate(python, &[bad]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{file} with {wrong} passed: {stdout}"
        );
        assert!(
            stdout.contains(wrong.trim_end_matches(':')),
            "{file}: the error does not name {wrong}: {stdout}"
        );
    }
}

crate::tests! {
    fn user_data_comes_from_a_secret;
    fn the_firmware_is_written_as_kubevirt_reads_it;
    fn every_variant_is_valid_for_kubevirt_and_cdi [validator_need()];
    fn the_validator_rejects_a_misspelled_field [validator_need()];
}
