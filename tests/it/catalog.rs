//! The base image catalog as users meet it: every signed entry has a pinned key that is
//! the distribution's own (checked against Debian's key packages with gpg), a misspelt
//! entry is refused before any work with a suggestion, and the whole catalog is built
//! into the binary.

use crate::common;
use common::Run;

use std::collections::BTreeSet;
use std::path::Path;

/// The Debian package files that carry each pinned key (`ubuntu-keyring` and
/// `distribution-gpg-keys`, installed by ci/setup-system.sh).
const PACKAGED: &[(&str, &str)] = &[
    (
        "keys/ubuntu-cloudimage-keyring.asc",
        "/usr/share/keyrings/ubuntu-cloudimage-keyring.gpg",
    ),
    (
        "keys/fedora-43.asc",
        "/usr/share/distribution-gpg-keys/fedora/RPM-GPG-KEY-fedora-43-primary",
    ),
];

/// Primary key fingerprints as gpg reads them.
fn gpg_fingerprints(file: &Path) -> BTreeSet<String> {
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("gpg")
        .arg("--homedir")
        .arg(home.path())
        .args(["--batch", "--with-colons", "--show-keys"])
        .arg(file)
        .succeeds();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut fprs = BTreeSet::new();
    let mut after_pub = false;
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        match f[0] {
            "pub" => after_pub = true,
            "fpr" if after_pub => {
                fprs.insert(f[9].to_string());
                after_pub = false;
            }
            "sub" => after_pub = false,
            _ => {}
        }
    }
    fprs
}

fn every_signed_entry_pins_the_distributions_own_key() {
    let root = common::repo_root().join("base-images");
    let mut checked = BTreeSet::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = doc["name"].as_str().unwrap().to_string();
        // Entries built by diskforge itself (`build:`) have no downloads to sign.
        let Some(images) = doc["images"].as_mapping() else {
            continue;
        };
        for (arch, image) in images {
            let c = &image["checksum"];
            let signed = c.get("signature-url").is_some() || c.get("signing-key").is_some();
            if !signed {
                continue;
            }
            let key = c["signing-key"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} {arch:?}: a signature without a key"));
            let pinned: BTreeSet<String> = c["signing-key-fingerprints"]
                .as_sequence()
                .unwrap_or_else(|| panic!("{name}: {key} has no pinned fingerprints"))
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            let key_file = root.join(key);
            // The pinned fingerprints are exactly the key file's, as gpg and diskforge
            // read them.
            assert_eq!(gpg_fingerprints(&key_file), pinned, "{name}: {key}");
            let ours: BTreeSet<String> =
                diskforge::base::signature::fingerprints(&std::fs::read(&key_file).unwrap())
                    .unwrap()
                    .into_iter()
                    .collect();
            assert_eq!(ours, pinned, "{name}: diskforge reads {key} differently");
            // ... and each is in the distribution's key package.
            let (_, packaged) = PACKAGED
                .iter()
                .find(|(k, _)| *k == key)
                .unwrap_or_else(|| panic!("{key} is not mapped to a Debian key package"));
            let packaged = Path::new(packaged);
            if !packaged.exists() {
                assert!(
                    !common::in_ci(),
                    "{} is missing (run ci/setup-system.sh)",
                    packaged.display()
                );
                eprintln!("*** SKIPPING {}: not installed ***", packaged.display());
                continue;
            }
            let shipped = gpg_fingerprints(packaged);
            assert!(
                pinned.is_subset(&shipped),
                "{name}: {key} pins {pinned:?}, {} has {shipped:?}",
                packaged.display()
            );
            checked.insert(name.clone());
        }
    }
    if common::in_ci() {
        let want: BTreeSet<String> = ["fedora-43", "ubuntu-22.04", "ubuntu-24.04"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(want.is_subset(&checked), "checked only {checked:?}");
    }
}

/// `diskforge --cache-dir <cache> <cmd> <recipe>` run in `dir`, refused as a usage
/// error (exit 2); its stderr.
fn refused(dir: &Path, cache: &Path, cmd: &str, recipe: &Path) -> String {
    let out = common::diskforge()
        .current_dir(dir)
        .arg("--cache-dir")
        .arg(cache)
        .arg(cmd)
        .arg(recipe)
        .exits(2);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn a_misspelt_catalog_entry_is_refused_before_any_work() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path().join("lab.yaml");
    std::fs::write(&r, "name: lab\nbase:\n  catalog: debain-12\n").unwrap();
    let cache = t.path().join("cache");
    for cmd in ["validate", "plan"] {
        if cmd == "plan" {
            assert!(!cache.exists(), "validate created the cache");
        }
        let err = refused(t.path(), &cache, cmd, &r);
        assert!(err.contains("lab.yaml:3:3: base.catalog"), "{cmd}: {err}");
        assert!(err.contains("did you mean `debian-12`"), "{cmd}: {err}");
    }
    // validate has no side effects; plan may set up the cache but puts nothing in it.
    let files: Vec<_> = walk(&cache);
    assert!(
        files.is_empty(),
        "a refused recipe left {files:?} in the cache"
    );
}

/// A disk smaller than the size the catalog records for its base is refused by
/// `validate`, `plan` and `build` at the recipe's `disk.size` (exit 2), before any
/// download: the catalog's URLs are unreachable here, so a network attempt would fail
/// with exit 1 and another message.
fn a_shrinking_disk_is_refused_before_any_download() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path().join("lab.yaml");
    std::fs::write(
        &r,
        "name: lab\nbase:\n  catalog: ubuntu-24.04\ndisk:\n  size: 2G\n",
    )
    .unwrap();
    for cmd in ["validate", "plan", "build"] {
        let err = refused(t.path(), &t.path().join("cache"), cmd, &r);
        assert!(err.contains("lab.yaml:5:3: disk.size"), "{cmd}: {err}");
        assert!(err.contains("the disk cannot shrink"), "{cmd}: {err}");
        assert!(err.contains("3.5 GiB"), "{cmd}: {err}");
    }
}

/// A catalog entry with a signature URL and no key is refused by `validate` (exit 2, at
/// the key); a catalog directory given with `--catalog` wins over the built-in entry of
/// the same name.
fn catalog_files_are_checked_and_a_given_catalog_wins() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("my-catalog");
    std::fs::create_dir(&dir).unwrap();
    let entry = dir.join("ubuntu-24.04.yaml");
    let err = common::refused_by_validate(
        &entry,
        "name: ubuntu-24.04\ndescription: a mirror\nos: ubuntu\nrelease: \"24.04\"\nformat: qcow2\nimages:\n  amd64:\n    url: http://mirror.example/ubuntu.img\n    checksum:\n      url: http://mirror.example/SHA256SUMS\n      signature-url: http://mirror.example/SHA256SUMS.gpg\n",
        &[],
    );
    assert!(
        err.contains("ubuntu-24.04.yaml:11:7: images.amd64.checksum.signature-url"),
        "{err}"
    );
    assert!(err.contains("signature without a signing-key"), "{err}");

    // Without the signature, the given directory's entry is the one a plan uses.
    std::fs::write(
        &entry,
        "name: ubuntu-24.04\ndescription: a mirror\nos: ubuntu\nrelease: \"24.04\"\nformat: qcow2\nimages:\n  amd64:\n    url: http://mirror.example/ubuntu.img\n    checksum: sha256:1111111111111111111111111111111111111111111111111111111111111111\n",
    )
    .unwrap();
    let r = t.path().join("lab.yaml");
    std::fs::write(&r, "name: lab\nbase:\n  catalog: ubuntu-24.04\n").unwrap();
    let plan = |catalog: Option<&Path>| -> String {
        let mut c = common::diskforge();
        c.arg("--offline")
            .arg("--cache-dir")
            .arg(t.path().join("cache"))
            .arg("plan");
        if let Some(d) = catalog {
            c.arg("--catalog").arg(d);
        }
        let out = c.arg("--json").arg(&r).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let given = plan(Some(&dir));
    assert!(given.contains("mirror.example/ubuntu.img"), "{given}");
    // Beside the recipe, a base-images/ directory wins too.
    std::fs::create_dir(t.path().join("base-images")).unwrap();
    std::fs::copy(&entry, t.path().join("base-images/ubuntu-24.04.yaml")).unwrap();
    let beside = plan(None);
    assert!(beside.contains("mirror.example/ubuntu.img"), "{beside}");
    std::fs::remove_dir_all(t.path().join("base-images")).unwrap();
    // Otherwise the built-in entry: Ubuntu's own URL.
    let builtin = plan(None);
    assert!(!builtin.contains("mirror.example"), "{builtin}");
    assert!(builtin.contains("cloud-images.ubuntu.com"), "{builtin}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn the_whole_catalog_is_known_outside_the_repository() {
    let t = tempfile::tempdir().unwrap();
    let out = common::diskforge()
        .current_dir(t.path())
        .env_remove("DISKFORGE_CATALOG")
        .args(["base", "list"])
        .succeeds();
    let text = String::from_utf8_lossy(&out.stdout);
    let files: Vec<String> = std::fs::read_dir(common::repo_root().join("base-images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(files.len() >= 11);
    for f in &files {
        assert!(
            text.lines().any(|l| l.split_whitespace().next() == Some(f)),
            "{f} missing from `base list` outside the repository:\n{text}"
        );
    }
    // A recipe outside the repository validates against an embedded entry, and the
    // Ubuntu entries say their checksum files are signed with the pinned key.
    let r = t.path().join("u.yaml");
    std::fs::write(
        &r,
        "name: u\nbase: {catalog: ubuntu-24.04}\ndisk: {size: 8G}\n",
    )
    .unwrap();
    common::diskforge()
        .current_dir(t.path())
        .env_remove("DISKFORGE_CATALOG")
        .arg("validate")
        .arg(&r)
        .succeeds();
    for name in ["ubuntu-22.04", "ubuntu-24.04"] {
        let entry: String = text
            .lines()
            .skip_while(|l| l.split_whitespace().next() != Some(name))
            .skip(1)
            .take_while(|l| l.starts_with(' '))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            entry.contains("(signed; key keys/ubuntu-cloudimage-keyring.asc, pinned D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81"),
            "{name}:\n{entry}"
        );
        assert!(!entry.contains("not signed"), "{name}:\n{entry}");
    }
}

/// `diskforge base list | head -1`: a reader that stops early ends diskforge quietly
/// with the status of a closed pipe, not a panic message.
fn a_closed_stdout_stops_quietly() {
    let out = common::with_closed_stdout(common::diskforge().args(["base", "list"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.trim().is_empty(), "{err}");
}

crate::tests! {
    fn every_signed_entry_pins_the_distributions_own_key [&["gpg"]];
    fn a_misspelt_catalog_entry_is_refused_before_any_work;
    fn a_shrinking_disk_is_refused_before_any_download;
    fn catalog_files_are_checked_and_a_given_catalog_wins;
    fn the_whole_catalog_is_known_outside_the_repository;
    fn a_closed_stdout_stops_quietly;
}
