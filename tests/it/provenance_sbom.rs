//! SBOMs of the captured package databases (a Debian minbase's dpkg status, Fedora's
//! `rpm -qa`, Alpine's apk database) validated by the SPDX project's own tool,
//! `pyspdxtools` (PyPI spdx-tools). Broken variants must be refused, so the validator is
//! known to look at what matters.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use diskforge::provenance::packages::{self, Distro, Package};
use diskforge::provenance::spdx::{self, Artifact, SbomInput};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(common::repo_root().join("tests/fixtures").join(name)).unwrap()
}

fn sbom(distro: &Distro, packages: &[Package]) -> Vec<u8> {
    sbom_on(
        distro,
        packages,
        "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
    )
}

/// An SBOM whose base came from `origin`: a URL, a local file or a base diskforge built.
fn sbom_on(distro: &Distro, packages: &[Package], origin: &str) -> Vec<u8> {
    let base = Artifact {
        name: "debian-12-genericcloud".into(),
        version: Some("20240717-1811".into()),
        digest: format!("sha256:{}", "b".repeat(64)),
        download: Some(origin.into()),
    };
    let recipe = Artifact {
        name: "recipes/demo.yaml".into(),
        version: None,
        digest: format!("sha256:{}", "c".repeat(64)),
        download: None,
    };
    spdx::document(&SbomInput {
        image: "127.0.0.1:5000/lab/demo",
        image_digest: &format!("sha256:{}", "a".repeat(64)),
        base: &base,
        recipe: &recipe,
        distro,
        packages,
        created: "2024-07-17T18:11:00Z",
    })
    .unwrap()
}

fn validate(dir: &Path, name: &str, doc: &[u8]) -> Output {
    let file = dir.join(format!("{name}.spdx.json"));
    std::fs::write(&file, doc).unwrap();
    Command::new("pyspdxtools")
        .arg("-i")
        .arg(&file)
        .output()
        .unwrap()
}

fn assert_valid(dir: &Path, name: &str, doc: &[u8]) {
    let out = validate(dir, name, doc);
    let text = common::text(&out);
    assert!(
        out.status.success(),
        "{name}: pyspdxtools refused it:\n{text}"
    );
    assert!(!text.to_lowercase().contains("invalid"), "{name}:\n{text}");
    eprintln!("{name}: valid SPDX 2.3");
}

fn pyspdxtools_accepts_sboms_of_debian_fedora_and_alpine_guests() {
    let dir = tempfile::tempdir().unwrap();
    let debian = Distro::from_os_release(&fixture("os-release-debian12")).unwrap();
    let mut debs = packages::parse_dpkg_status(&fixture("dpkg-status-bookworm-minbase")).unwrap();
    let tmux = debs.iter_mut().find(|p| p.name == "tmux").unwrap();
    tmux.licence = packages::dep5_licence(&fixture("copyright-tmux-dep5"));
    assert_valid(dir.path(), "debian", &sbom(&debian, &debs));
    // Bases that were not downloaded: one diskforge built, a local file.
    for (name, origin) in [
        ("built-base", "built: debian-12-minimal"),
        ("local-base", "/srv/images/base.qcow2"),
    ] {
        let doc = sbom_on(&debian, &debs, origin);
        assert_valid(dir.path(), name, &doc);
        assert!(String::from_utf8_lossy(&doc).contains(origin), "{name}");
    }

    let fedora = Distro::from_os_release("ID=fedora\nVERSION_ID=40\n").unwrap();
    let rpms = packages::parse_rpm_qa(&fixture("rpm-qa-fedora40.tsv")).unwrap();
    assert_valid(dir.path(), "fedora", &sbom(&fedora, &rpms));

    let alpine = Distro::from_os_release("ID=alpine\nVERSION_ID=3.20.1\n").unwrap();
    let apks = packages::parse_apk_installed(&fixture("apk-installed-alpine320")).unwrap();
    assert_valid(dir.path(), "alpine", &sbom(&alpine, &apks));
}

fn pyspdxtools_refuses_broken_variants() {
    let dir = tempfile::tempdir().unwrap();
    let fedora = Distro::from_os_release("ID=fedora\nVERSION_ID=40\n").unwrap();
    let rpms = packages::parse_rpm_qa(&fixture("rpm-qa-fedora40.tsv")).unwrap();
    let good: serde_json::Value = serde_json::from_slice(&sbom(&fedora, &rpms)).unwrap();

    // A LicenseRef used without being declared.
    let mut undeclared = good.clone();
    undeclared
        .as_object_mut()
        .unwrap()
        .remove("hasExtractedLicensingInfos");
    // A relationship to an element the document does not have.
    let mut dangling = good.clone();
    dangling["relationships"][0]["relatedSpdxElement"] = "SPDXRef-Nowhere".into();
    for (name, doc) in [("undeclared", undeclared), ("dangling", dangling)] {
        let out = validate(dir.path(), name, &serde_json::to_vec(&doc).unwrap());
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was accepted:\n{text}");
        eprintln!(
            "{name}: refused: {}",
            text.lines().last().unwrap_or_default()
        );
    }
}

crate::tests! {
    fn pyspdxtools_accepts_sboms_of_debian_fedora_and_alpine_guests [&["pyspdxtools"]];
    fn pyspdxtools_refuses_broken_variants [&["pyspdxtools"]];
}
