//! Many recipes at once and the scheduler gate, on loopback only: a base image (a Debian
//! tree on a small GPT/ext4 disk) and its SHA256SUMS served by a local HTTP server that
//! counts requests, and a real registry.
//!
//! - `build --jobs 2` of a partial parent and three recipes: one fails once it has the
//!   base (its disk would have to shrink), one is up to date, one is new; the report,
//!   the table, the exit status, the registry and the base downloads are checked.
//! - `outdated`: current, recipe changed, image missing, base changed upstream (the
//!   checksum file rewritten), each with its reason and exit status 5, without a work
//!   directory or a base download.
//! - `--fail-fast` starts nothing after the first failure (bases that are not there,
//!   so no appliance is launched); one `--output` for several recipes without `{name}`
//!   is refused (exit 2).
//!
//! Two appliance launches in all (the up-to-date image's first build and the new one),
//! plus one the first time a checkout makes the base image.

use crate::common;
use common::Run;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::http::TestServer;
use common::registry::Registry;
use serde_json::Value;

/// Beside [`common::GUEST_TOOLS`].
const TOOLS: &[&str] = &["docker-registry", "skopeo"];
const BASE: &str = "images/base.qcow2";
const SUMS: &str = "images/SHA256SUMS";

fn diskforge(cache: &Path) -> Command {
    let mut c = common::diskforge();
    common::guestfs_env(&mut c);
    c.args(["--accel", "tcg", "--cache-dir"])
        .arg(cache)
        .env_remove("DISKFORGE_CREDS")
        .env_remove("DOCKER_CONFIG")
        .env_remove("REGISTRY_AUTH_FILE");
    c
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn gets(server: &TestServer, path: &str) -> usize {
    server
        .requests(path)
        .iter()
        .filter(|r| r.method == "GET")
        .count()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// The manifest digest of `reference` as skopeo reads it, or `None` when it is not there.
fn skopeo_digest(reference: &str) -> Option<String> {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(reference)
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(v["Digest"].as_str().unwrap().to_string())
}

/// The entry for recipe `name` in a `build --report` or an `outdated --json` document.
fn entry<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["recipes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {doc:#}"))
}

/// Writes the shared parent and three recipes that extend it: `broken` (asks for a disk
/// smaller than the 700 MiB base: refused once the base is there, before any appliance
/// launch), `current` and `fresh`, each pushed to `REG/fleet/NAME:1-{arch}`.
fn write_recipes(dir: &Path, server: &TestServer, registry: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("common.yaml"),
        format!(
            r#"# The shared parent: not an image of its own.
partial: true
base:
  url: {base}
  checksum: {{url: {sums}}}
customize:
  files:
    - {{path: /etc/motd, content: "fleet\n"}}
output:
  tags: ["1-{{arch}}"]
  compression-level: 1
  insecure-registries: ["{registry}"]
"#,
            base = server.url(BASE),
            sums = server.url(SUMS),
        ),
    )
    .unwrap();
    for (name, extra) in [
        ("broken", "disk: {size: 512M}\n"),
        ("current", ""),
        ("fresh", ""),
    ] {
        std::fs::write(
            dir.join(format!("{name}.yaml")),
            format!(
                "extends: common.yaml\noutput:\n  repository: {registry}/fleet/{name}\n{extra}"
            ),
        )
        .unwrap();
    }
}

fn recipe_paths(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| dir.join(format!("{n}.yaml")))
        .collect()
}

/// Runs `outdated --json`; returns the exit code and the document.
fn outdated(cache: &Path, recipes: &[PathBuf]) -> (i32, Value, Output) {
    let out = diskforge(cache)
        .args(["outdated", "--json"])
        .args(recipes)
        .output()
        .unwrap();
    let doc = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("outdated printed no JSON ({e}): {}", text(&out)));
    (out.status.code().unwrap_or(-1), doc, out)
}

fn reasons(row: &Value) -> Vec<String> {
    row["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

fn three_recipes_in_two_jobs_then_the_gate() {
    let base = std::fs::read(common::guest::base_qcow2()).unwrap();
    let t = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    server.serve(BASE, base.clone());
    server.serve(
        SUMS,
        format!("{}  base.qcow2\n", sha256_hex(&base)).into_bytes(),
    );
    let reg = Registry::start(None);
    let dir = t.path().join("recipes");
    write_recipes(&dir, &server, &reg.addr);
    let image = |name: &str| format!("docker://{}/fleet/{name}:1-amd64", reg.addr);

    // 1. `current` is built and published first, with a cache of its own.
    let out = diskforge(&t.path().join("cache-first"))
        .arg("build")
        .arg(dir.join("current.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "first build: {}", text(&out));
    let current_digest = skopeo_digest(&image("current")).expect("current was not pushed");
    assert_eq!(gets(&server, BASE), 1);

    // 2. Everything at once, two at a time, on an empty cache: the partial parent is
    //    skipped, `current` is up to date, `broken` fetches the base and fails, `fresh`
    //    is built on the same base.
    let report_file = t.path().join("report.json");
    let fleet_cache = t.path().join("cache-fleet");
    let mut recipes = recipe_paths(&dir, &["broken", "common", "current", "fresh"]);
    let out = diskforge(&fleet_cache)
        .args(["build", "--jobs", "2", "--report"])
        .arg(&report_file)
        .args(&recipes)
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "fleet build: {all}");
    let report: Value = serde_json::from_slice(&std::fs::read(&report_file).unwrap()).unwrap();
    let names: Vec<&str> = report["recipes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["broken", "common", "current", "fresh"],
        "{report:#}"
    );
    let broken = entry(&report, "broken");
    assert_eq!(broken["status"], "failed", "{report:#}");
    // Started first on an empty cache, `broken` had to fetch the base to learn its size.
    assert!(
        broken["error"]
            .as_str()
            .unwrap()
            .contains("the disk cannot shrink"),
        "{report:#}"
    );
    assert!(broken.get("digest").is_none());
    let common_entry = entry(&report, "common");
    assert_eq!(common_entry["status"], "skipped");
    assert!(common_entry["reason"]
        .as_str()
        .unwrap()
        .contains("partial recipe"));
    let current = entry(&report, "current");
    assert_eq!(current["status"], "up-to-date", "{report:#}");
    assert!(current.get("digest").is_none());
    let fresh = entry(&report, "fresh");
    assert_eq!(fresh["status"], "built", "{report:#}");
    assert!(fresh["layer_size"].as_u64().unwrap() > 1 << 20);
    assert!(fresh["duration_seconds"].as_f64().unwrap() > 0.0);
    let fresh_digest = fresh["digest"].as_str().unwrap().to_string();
    assert_eq!(
        fresh["destinations"][0],
        image("fresh"),
        "{{arch}} in the tag"
    );
    // `broken` and `fresh` both needed the base: one download.
    assert_eq!(
        gets(&server, BASE),
        2,
        "the base was not fetched exactly once by the fleet build"
    );
    // Published: the new image, and the up-to-date one untouched; nothing for `broken`.
    assert_eq!(
        skopeo_digest(&image("fresh")).as_deref(),
        Some(fresh_digest.as_str())
    );
    assert_eq!(
        skopeo_digest(&image("current")).as_deref(),
        Some(current_digest.as_str())
    );
    assert_eq!(skopeo_digest(&image("broken")), None);
    // The table names every recipe with its status.
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (name, status) in [
        ("broken", "failed"),
        ("common", "skipped"),
        ("current", "up-to-date"),
        ("fresh", "built"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([name, status])),
            "no `{name} {status}` row in the table:\n{stdout}"
        );
    }
    assert!(stdout.contains(&fresh_digest), "{stdout}");

    // 3. The gate, with a cache of its own: it may read the checksum file and the
    //    registry, nothing else.
    let gate_cache = t.path().join("cache-gate");
    let base_gets = gets(&server, BASE);
    let sums_gets = gets(&server, SUMS);
    recipes.retain(|p| !p.ends_with("broken.yaml"));
    let (code, doc, out) = outdated(&gate_cache, &recipes);
    assert_eq!(code, 0, "everything current: {}", text(&out));
    for name in ["current", "fresh"] {
        assert_eq!(entry(&doc, name)["status"], "current", "{doc:#}");
    }
    assert_eq!(entry(&doc, "common")["status"], "skipped", "{doc:#}");
    assert_eq!(
        gets(&server, SUMS),
        sums_gets + 2,
        "the checksum file is read per recipe"
    );

    // The recipe changed.
    std::fs::write(
        dir.join("fresh.yaml"),
        std::fs::read_to_string(dir.join("fresh.yaml")).unwrap() + "  labels: {tier: nightly}\n",
    )
    .unwrap();
    let (code, doc, out) = outdated(&gate_cache, &recipe_paths(&dir, &["fresh"]));
    assert_eq!(code, 5, "{}", text(&out));
    let fresh_row = entry(&doc, "fresh");
    assert_eq!(fresh_row["status"], "stale");
    assert_eq!(reasons(fresh_row), ["recipe changed"], "{doc:#}");
    // The table spells it out too.
    let out = diskforge(&gate_cache)
        .arg("outdated")
        .arg(dir.join("fresh.yaml"))
        .exits(5);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("recipe changed"),
        "{}",
        text(&out)
    );

    // The image is missing.
    let (code, doc, out) = outdated(&gate_cache, &recipe_paths(&dir, &["broken"]));
    assert_eq!(code, 5, "{}", text(&out));
    assert_eq!(reasons(entry(&doc, "broken")), ["image missing"], "{doc:#}");

    // Upstream published another base: only its checksum file is read to see it.
    server.serve(
        SUMS,
        format!("{}  base.qcow2\n", sha256_hex(b"tomorrow's base")).into_bytes(),
    );
    let (code, doc, out) = outdated(&gate_cache, &recipe_paths(&dir, &["current"]));
    assert_eq!(code, 5, "{}", text(&out));
    assert_eq!(
        reasons(entry(&doc, "current")),
        ["base changed upstream"],
        "{doc:#}"
    );

    assert_eq!(
        gets(&server, BASE),
        base_gets,
        "outdated downloaded the base"
    );
    assert!(
        !gate_cache.join("work").exists(),
        "outdated made a work directory"
    );
    assert!(
        common::temp_files(&gate_cache).is_empty(),
        "outdated left temporary files"
    );
}

fn fail_fast_starts_nothing_after_a_failure() {
    let t = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    // Checksum files that name images the server does not have: each build fails when
    // it fetches its base, before any appliance.
    let dir = t.path().join("recipes");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["first", "second"] {
        server.serve(
            &format!("{name}/SHA256SUMS"),
            format!("{}  base.qcow2\n", sha256_hex(name.as_bytes())).into_bytes(),
        );
        std::fs::write(
            dir.join(format!("{name}.yaml")),
            format!(
                "base:\n  url: {}\n  checksum: {{url: {}}}\n",
                server.url(&format!("{name}/base.qcow2")),
                server.url(&format!("{name}/SHA256SUMS"))
            ),
        )
        .unwrap();
    }
    let recipes = recipe_paths(&dir, &["first", "second"]);
    let build = |extra: &[&str], report: &Path| {
        diskforge(&t.path().join("cache"))
            .args(["build", "--jobs", "1", "--report"])
            .arg(report)
            .arg("--output")
            .arg(format!("oci:{}/{{name}}:1", t.path().join("out").display()))
            .args(extra)
            .args(&recipes)
            .output()
            .unwrap()
    };
    let read = |p: &Path| -> Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };

    // Without --fail-fast both are tried, in the order given.
    let report = t.path().join("all.json");
    let out = build(&[], &report);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let doc = read(&report);
    for name in ["first", "second"] {
        assert_eq!(entry(&doc, name)["status"], "failed", "{doc:#}");
        assert_eq!(gets(&server, &format!("{name}/base.qcow2")), 1);
    }

    // With it, the second is never started: not even its checksum file is read.
    let sums = gets(&server, "second/SHA256SUMS");
    let report = t.path().join("fail-fast.json");
    let out = build(&["--fail-fast"], &report);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let doc = read(&report);
    assert_eq!(entry(&doc, "first")["status"], "failed", "{doc:#}");
    let second = entry(&doc, "second");
    assert_eq!(second["status"], "skipped", "{doc:#}");
    assert!(second["reason"].as_str().unwrap().contains("--fail-fast"));
    assert_eq!(gets(&server, "second/SHA256SUMS"), sums);
    assert_eq!(gets(&server, "second/base.qcow2"), 1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["second", "skipped"])),
        "{stdout}"
    );

    // One --output for several recipes must tell them apart.
    let out = diskforge(&t.path().join("cache"))
        .arg("build")
        .args(&recipes)
        .arg("--output")
        .arg(format!("oci:{}:1", t.path().join("out").display()))
        .exits(2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("{name}"));
}

crate::tests! {
    fn three_recipes_in_two_jobs_then_the_gate [common::GUEST_TOOLS, TOOLS];
    fn fail_fast_starts_nothing_after_a_failure [&["qemu-img"]];
}
