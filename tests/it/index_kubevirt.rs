//! `index --kubevirt-manifests`: for a multi-architecture index in a real registry
//! (Debian's docker-registry on loopback), one set of cluster objects per architecture,
//! each DataImportCron importing its architecture from the index's tag, valid for
//! CDI's and KubeVirt's published API definitions.

use crate::common;
use common::Run;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::kubevirt::{validate, validator_need, validator_python};
use common::registry::Registry;

fn qcow2(dir: &Path, name: &str, mib: u64) -> PathBuf {
    common::disk::qcow2(dir, &format!("{name}.qcow2"), &format!("{mib}M"))
}

fn diskforge(work: &Path, args: &[&str]) -> Output {
    let out = common::diskforge()
        .args(args)
        .arg("--tls-verify=false")
        .env("XDG_CACHE_HOME", work.join("xdg"))
        .succeeds();
    out
}

fn yaml(path: &Path) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn an_index_gets_one_data_import_cron_per_architecture() {
    let python = validator_python();
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let reg = Registry::start(None);
    let repo = format!("{}/lab/fleet-vm", reg.addr);
    let mut digests = Vec::new();
    for (arch, mib) in [("amd64", 64), ("arm64", 1200)] {
        let out = diskforge(
            w,
            &[
                "pack",
                qcow2(w, arch, mib).to_str().unwrap(),
                "--arch",
                arch,
                "--output",
                &format!("docker://{repo}:{arch}"),
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        digests.push(stdout.split_whitespace().nth(1).unwrap().to_string());
    }
    let dir = w.join("manifests");
    diskforge(
        w,
        &[
            "index",
            &format!("docker://{repo}:nightly"),
            &format!("docker://{repo}:amd64"),
            &format!("docker://{repo}:arm64"),
            "--kubevirt-manifests",
            dir.to_str().unwrap(),
            "--pull-method",
            "node",
        ],
    );
    let mut files = Vec::new();
    for ((arch, mib), digest) in [("amd64", 64u64), ("arm64", 1200)].iter().zip(&digests) {
        let sub = dir.join(arch);
        let cron = yaml(&sub.join("dataimportcron.yaml"));
        assert_eq!(
            cron["metadata"]["name"],
            format!("fleet-vm-{arch}").as_str()
        );
        let source = &cron["spec"]["template"]["spec"]["source"]["registry"];
        assert_eq!(source["url"], format!("docker://{repo}:nightly").as_str());
        assert_eq!(source["platform"]["architecture"], *arch);
        assert_eq!(source["pullMethod"], "node");
        assert_eq!(
            cron["spec"]["managedDataSource"],
            format!("fleet-vm-{arch}").as_str()
        );
        // The volume is sized from that architecture's own disk.
        let gi = (mib << 20) * 11 / 10;
        let want = format!("{}Gi", gi.div_ceil(1 << 30).max(1));
        assert_eq!(
            cron["spec"]["template"]["spec"]["storage"]["resources"]["requests"]["storage"],
            want.as_str()
        );
        let vm = yaml(&sub.join("vm.yaml"));
        assert_eq!(
            vm["spec"]["template"]["spec"]["volumes"][0]["containerDisk"]["image"],
            format!("{repo}@{digest}").as_str()
        );
        for f in std::fs::read_dir(&sub).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    let out = validate(python, &files);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

crate::tests! {
    fn an_index_gets_one_data_import_cron_per_architecture [&["qemu-img", "docker-registry"], validator_need()];
}
