//! The user's way in (issue 24): what a new user's first command lines hit. Bases kept
//! where the user keeps them (`--allow-path`, `DISKFORGE_ALLOW_PATH`, `file://`,
//! `--base`) and nothing more reachable through symbolic links. Fast: small disks made
//! with qemu-img; nothing is built.

use crate::common;
use common::disk::qcow2;
use common::Run;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// [`common::diskforge_in`] `t`, without allowed paths or a catalog from the
/// environment.
fn df(t: &Path) -> Command {
    let mut c = common::diskforge_in(t);
    c.env_remove("DISKFORGE_ALLOW_PATH")
        .env_remove("DISKFORGE_CATALOG");
    c
}

use common::text;

fn write(p: &Path, s: &str) -> PathBuf {
    std::fs::write(p, s).unwrap();
    p.to_path_buf()
}

/// `~/labs/lab.yaml` next to `/srv/images/ubuntu.qcow2`, a directory the user did not
/// allow, and symbolic links between them.
struct Site {
    t: tempfile::TempDir,
    recipes: PathBuf,
    images: PathBuf,
    private: PathBuf,
}

fn site() -> Site {
    let t = tempfile::tempdir().unwrap();
    let [recipes, images, private] =
        ["labs", "images", "private"].map(|d| std::fs::canonicalize(t.path()).unwrap().join(d));
    for d in [&recipes, &images, &private] {
        std::fs::create_dir(d).unwrap();
    }
    qcow2(&images, "ubuntu.qcow2", "64M");
    qcow2(&private, "other.qcow2", "64M");
    write(&images.join("motd"), "hello\n");
    write(&private.join("key"), "not for recipes\n");
    Site {
        t,
        recipes,
        images,
        private,
    }
}

fn validate(s: &Site, recipe: &Path, extra: &[&str]) -> Output {
    df(s.t.path())
        .arg("validate")
        .arg(recipe)
        .args(extra)
        .output()
        .unwrap()
}

fn assert_refused_at(out: &Output, place: &str, hint: &str) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains(place), "want {place:?}: {all}");
    assert!(all.contains(hint), "want the hint {hint:?}: {all}");
}

fn a_base_outside_the_recipe_needs_the_command_lines_permission() {
    let s = site();
    let base = s.images.join("ubuntu.qcow2");
    let recipe = write(
        &s.recipes.join("lab.yaml"),
        &format!("name: lab\nbase:\n  path: {}\n", base.display()),
    );
    // Refused, located, and the error says how to allow it.
    let out = validate(&s, &recipe, &[]);
    assert_refused_at(&out, "lab.yaml:3:3: base.path: ", "--allow-path DIR");
    common::assert_says(&out, "--base PATH");
    // Allowed on the command line, or through the environment (colon-separated).
    let images = s.images.to_str().unwrap();
    let out = validate(&s, &recipe, &["--allow-path", images]);
    assert!(out.status.success(), "{}", text(&out));
    df(s.t.path())
        .arg("validate")
        .arg(&recipe)
        .env(
            "DISKFORGE_ALLOW_PATH",
            format!("{}:{images}", s.recipes.display()),
        )
        .succeeds();
    // Another allowed directory does not open this one.
    let out = validate(&s, &recipe, &["--allow-path", s.private.to_str().unwrap()]);
    assert_refused_at(&out, "lab.yaml:3:3: base.path: ", "--allow-path DIR");
    // plan reads the base where it lies.
    let out = df(s.t.path())
        .args(["plan", "--json", "--allow-path", images])
        .arg(&recipe)
        .succeeds();
    common::assert_says(&out, &base.to_string_lossy());
    // A directory that does not exist is wrong usage.
    let out = validate(&s, &recipe, &["--allow-path", "/nonexistent/images"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--allow-path /nonexistent/images"));

    // A file:// URL is the same file, under the same rule.
    let url = write(
        &s.recipes.join("url.yaml"),
        &format!("name: url\nbase:\n  url: file://{}\n", base.display()),
    );
    let out = validate(&s, &url, &[]);
    assert_refused_at(&out, "url.yaml:3:3: base.url: ", "--allow-path DIR");
    let out = validate(&s, &url, &["--allow-path", images]);
    assert!(out.status.success(), "{}", text(&out));
    let out = df(s.t.path())
        .args(["plan", "--allow-path", images])
        .arg(&url)
        .succeeds();
    common::assert_says(&out, &base.to_string_lossy());
}

fn symbolic_links_cannot_lead_out_of_the_allowed_directories() {
    let s = site();
    let images = s.images.to_str().unwrap();
    // A link in the allowed directory to a file outside it.
    std::os::unix::fs::symlink(s.private.join("other.qcow2"), s.images.join("link.qcow2")).unwrap();
    let through = write(
        &s.recipes.join("through.yaml"),
        &format!(
            "name: through\nbase: {{path: {}}}\n",
            s.images.join("link.qcow2").display()
        ),
    );
    let out = validate(&s, &through, &["--allow-path", images]);
    assert_refused_at(&out, "through.yaml:2:8: base.path: ", "private/other.qcow2");
    // A `..` path that leaves the allowed directory again.
    let dots = write(
        &s.recipes.join("dots.yaml"),
        &format!(
            "name: dots\nbase: {{path: {}/../private/other.qcow2}}\n",
            s.images.display()
        ),
    );
    let out = validate(&s, &dots, &["--allow-path", images]);
    assert_refused_at(&out, "dots.yaml:2:8: base.path: ", "refused");
    // A link next to the recipe into an allowed directory: fine once allowed (the real
    // path decides), refused otherwise.
    std::os::unix::fs::symlink(s.images.join("ubuntu.qcow2"), s.recipes.join("base.qcow2"))
        .unwrap();
    let near = write(
        &s.recipes.join("near.yaml"),
        "name: near\nbase: {path: base.qcow2}\n",
    );
    let out = validate(&s, &near, &[]);
    assert_refused_at(&out, "near.yaml:2:8: base.path: ", "symbolic link");
    let out = validate(&s, &near, &["--allow-path", images]);
    assert!(out.status.success(), "{}", text(&out));
    // An allowed directory given through a link is judged by its real path too.
    let alias = s.t.path().join("alias");
    std::os::unix::fs::symlink(&s.images, &alias).unwrap();
    let out = validate(&s, &near, &["--allow-path", alias.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
}

fn copied_files_stay_confined_unless_allowed_the_same_way() {
    let s = site();
    let recipe_dir_base = s.recipes.join("b.qcow2");
    std::fs::write(&recipe_dir_base, b"").unwrap();
    let motd = s.images.join("motd");
    let recipe = write(
        &s.recipes.join("files.yaml"),
        &format!(
            "name: files\nbase: {{path: b.qcow2}}\ncustomize:\n  files:\n    - path: /etc/motd\n      source: {}\n",
            motd.display()
        ),
    );
    let out = validate(&s, &recipe, &[]);
    assert_refused_at(
        &out,
        "files.yaml:6:7: customize.files[0].source: ",
        "--allow-path DIR",
    );
    let out = validate(&s, &recipe, &["--allow-path", s.images.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    // The --base file is a base, not a directory: it opens nothing for copied files.
    let out = validate(
        &s,
        &recipe,
        &["--base", s.images.join("ubuntu.qcow2").to_str().unwrap()],
    );
    assert_refused_at(
        &out,
        "files.yaml:6:7: customize.files[0].source: ",
        "--allow-path DIR",
    );
    // Secrets stay in the recipe's directory whatever is allowed.
    let secret = write(
        &s.recipes.join("secret.yaml"),
        &format!(
            "name: secret\nbase: {{path: b.qcow2}}\ncustomize:\n  root-password: {{file: {}}}\n",
            s.private.join("key").display()
        ),
    );
    let out = validate(&s, &secret, &["--allow-path", s.private.to_str().unwrap()]);
    assert_refused_at(
        &out,
        "secret.yaml:4:3: customize.root-password: ",
        "{env: NAME}",
    );
}

fn build_base_names_a_file_anywhere_and_replaces_the_recipes_base() {
    let s = site();
    let base = s.images.join("ubuntu.qcow2");
    // A recipe whose base is a catalog entry that would have to be downloaded.
    let recipe = write(
        &s.recipes.join("lab.yaml"),
        "name: lab\nbase: {catalog: ubuntu-24.04}\ndisk: {size: 1G}\n",
    );
    let out = df(s.t.path())
        .args(["--offline", "plan", "--json", "--base"])
        .arg(&base)
        .arg(&recipe)
        .succeeds();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let all = plan.to_string();
    assert!(all.contains(&*base.to_string_lossy()), "{all}");
    assert!(!all.contains("cloud-images.ubuntu.com"), "{all}");
    // The base really is the file named: growing it to 1G is planned from its size.
    let commands = common::planned_commands(&out.stdout);
    assert!(
        commands
            .iter()
            .any(|(_, c)| c.contains("qemu-img create") && c.contains(&*base.to_string_lossy())),
        "{commands:#?}"
    );
    // The same option on build: refused usage when the file is missing, before any work.
    let out = df(s.t.path())
        .args(["build", "--base", "/nonexistent/base.qcow2"])
        .arg(&recipe)
        .exits(2);
    common::assert_says(&out, "--base /nonexistent/base.qcow2");
    assert!(!s.t.path().join("work").exists());
}

/// A recipe whose base is downloaded from a host that does not resolve.
fn unresolvable(t: &Path, checksum: &str) -> PathBuf {
    write(
        &t.join("dns.yaml"),
        &format!("name: dns\nbase:\n  url: https://images.diskforge-test.invalid/u.qcow2\n  checksum: {checksum}\n"),
    )
}

fn plan_fails_at_once_when_a_host_name_does_not_resolve() {
    let t = tempfile::tempdir().unwrap();
    let recipe = unresolvable(
        t.path(),
        "{url: https://images.diskforge-test.invalid/SHA256SUMS}",
    );
    let started = std::time::Instant::now();
    let out = df(t.path()).args(["plan"]).arg(&recipe).output().unwrap();
    let took = started.elapsed();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("cannot resolve the host name images.diskforge-test.invalid"),
        "{all}"
    );
    // The retry policy would wait 1+2+4+8+16 s between six attempts.
    assert!(!all.contains("retrying"), "{all}");
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
}

fn plan_works_offline_and_marks_what_it_cannot_know() {
    let t = tempfile::tempdir().unwrap();
    // A catalog entry with a checksum file, nothing cached, --offline.
    let catalog = write(
        &t.path().join("cat.yaml"),
        "name: cat\nbase: {catalog: ubuntu-24.04}\ndisk: {size: 10G}\n",
    );
    // `checksum: none`, at a host that does not even resolve: nothing is fetched.
    let none = unresolvable(t.path(), "none");
    for (recipe, offline, says) in [
        (&catalog, true, "against its checksum file https://"),
        (&none, false, "NOT verified (`checksum: none`"),
    ] {
        let mut c = df(t.path());
        if offline {
            c.arg("--offline");
        }
        let out = c.arg("plan").arg(recipe).output().unwrap();
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        assert!(all.contains(says), "{all}");
        assert!(!all.contains("has no checksum"), "{all}");
        assert!(
            all.contains("build key unknown until the base is downloaded"),
            "{all}"
        );
        let mut c = df(t.path());
        if offline {
            c.arg("--offline");
        }
        let out = c.args(["plan", "--json"]).arg(recipe).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(plan["build_key"].is_null(), "{plan}");
        assert!(
            plan["steps"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["key"].is_null()),
            "{plan}"
        );
        // The steps themselves are all there.
        let commands = common::planned_commands(&out.stdout);
        assert!(
            commands.iter().any(|(_, c)| c.contains("qemu-img convert")),
            "{commands:#?}"
        );
    }
    // A build needs the digest: it says why it cannot start.
    let out = df(t.path())
        .args(["--offline", "build"])
        .arg(&catalog)
        .output()
        .unwrap();
    let all = text(&out);
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("is not read with --offline"), "{all}");
}

fn plan_shows_users_sudo_groups_and_whether_ttyd_has_a_credential() {
    let t = tempfile::tempdir().unwrap();
    let secret = "ttyd-Cred-Secret-5521";
    let pw = "user-Pw-Secret-8812";
    let recipe = write(
        &t.path().join("users.yaml"),
        "name: users\nbase: {url: \"https://example.com/img.qcow2\", checksum: \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"}\ncustomize:\n  users:\n    - {name: lab, groups: [wheel, docker], sudo: true, password: {env: DF_USER_PW}}\n    - {name: guest}\nttyd: {enabled: true, credential: {user: admin, password: {env: DF_TTYD_PW}}}\n",
    );
    let out = df(t.path())
        .arg("plan")
        .arg(&recipe)
        .env("DF_TTYD_PW", secret)
        .env("DF_USER_PW", pw)
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("user lab (groups wheel,docker; sudo without password; password set)"),
        "{all}"
    );
    assert!(
        all.contains("user guest (no extra groups; no sudo; no password)"),
        "{all}"
    );
    assert!(all.contains("HTTP credential set for user admin"), "{all}");
    assert!(!all.contains(secret) && !all.contains(pw), "{all}");
    // Without a credential the plan says the terminal is open.
    let open = write(
        &t.path().join("open.yaml"),
        "name: open\nbase: {url: \"https://example.com/img.qcow2\", checksum: \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"}\nttyd: {enabled: true}\n",
    );
    let out = df(t.path()).arg("plan").arg(&open).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    common::assert_says(&out, "no HTTP credential");
}

/// The repositories a loopback registry holds, read from its storage directory.
fn stored_repositories(reg: &common::registry::Registry) -> Vec<String> {
    let root = reg.dir.path().join("data/docker/registry/v2/repositories");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.join("_manifests").is_dir() {
                out.push(p.strip_prefix(&root).unwrap().display().to_string());
            } else if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

fn a_layer_over_the_limit_is_refused_before_any_upload() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path(), "lab.qcow2", "64M");
    let reg = common::registry::Registry::start(None);
    let dest = format!("docker://{}/lab/big:1", reg.addr);
    let out = df(t.path())
        .arg("pack")
        .arg(&disk)
        .args(["-o", &dest, "--tls-verify=false", "--max-layer-size", "100"])
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("--max-layer-size: 100 bytes): not pushed"),
        "{all}"
    );
    assert!(all.contains("--compression zstd"), "{all}");
    assert!(all.contains("hygiene.sparsify"), "{all}");
    // Nothing reached the registry: no blob upload was even started.
    assert_eq!(
        reg.count(&["POST", "/v2/lab/big/blobs/uploads"]),
        0,
        "{}",
        reg.log_text()
    );
    assert!(
        stored_repositories(&reg).is_empty(),
        "{:?}",
        stored_repositories(&reg)
    );

    // Under the limit but near it: pushed, with a warning and the remedies.
    let layout = t.path().join("layout");
    df(t.path())
        .arg("pack")
        .arg(&disk)
        .arg("-o")
        .arg(format!("oci:{}:1", layout.display()))
        .succeeds();
    let manifest_digest = common::first_manifest_digest(&layout);
    let blob = |d: &str| common::json_blob(&layout, d);
    let manifest = blob(&manifest_digest);
    let size = manifest["layers"][0]["size"].as_u64().unwrap();
    let out = df(t.path())
        .arg("push")
        .arg(format!("{}:1", layout.display()))
        .arg(&dest)
        .args(["--tls-verify=false", "--max-layer-size"])
        .arg(format!("{}", size + size / 10))
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("close to what"), "{all}");
    assert!(all.contains("--compression zstd"), "{all}");
    assert_eq!(stored_repositories(&reg), vec!["lab/big".to_string()]);
    // Just under it is refused by push too, before uploading.
    let out = df(t.path())
        .arg("push")
        .arg(format!("{}:1", layout.display()))
        .arg(format!("docker://{}/lab/other:1", reg.addr))
        .args(["--tls-verify=false", "--max-layer-size"])
        .arg(format!("{}", size - 1))
        .exits(1);
    common::assert_says(&out, "not pushed");
    assert_eq!(stored_repositories(&reg), vec!["lab/big".to_string()]);
    // A size that is not one is wrong usage.
    df(t.path())
        .arg("push")
        .arg(format!("{}:1", layout.display()))
        .arg(&dest)
        .args(["--max-layer-size", "+1G"])
        .exits(2);

    // The config names the placeholder entrypoint kubevirt/containerdisks uses.
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["no-entrypoint"]),
        "{config}"
    );
}

fn every_error_of_a_recipe_comes_in_one_pass_sorted_by_position() {
    let t = tempfile::tempdir().unwrap();
    let recipe = write(
        &t.path().join("many.yaml"),
        "name: many\nbase: {catalog: ubuntu-2404}\nbogus: 1\ndisk:\n  size: 10X\ncustomize:\n  pakages: [a]\n  hostname: \"${NOPE}\"\n  users:\n    - name: Bad User\n      sudo: maybe\n  files:\n    - path: /etc/motd\n      source: missing.txt\nttyd:\n  port: 0\n  enabled: true\noutput:\n  compression: lz4\n",
    );
    // A file with a close name: the typo gets a suggestion.
    std::fs::write(t.path().join("missing.text"), "x").unwrap();
    let out = df(t.path()).arg("validate").arg(&recipe).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    let located: Vec<String> = err
        .lines()
        .filter_map(|l| l.split("many.yaml:").nth(1))
        .map(|l| l.split(": ").take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        located,
        vec![
            "2:8 base.catalog",
            "3:1 bogus",
            "5:3 disk.size",
            "7:3 customize.pakages",
            "8:3 customize.hostname",
            "10:7 customize.users[0].name",
            "11:7 customize.users[0].sudo",
            "14:7 customize.files[0].source",
            "16:3 ttyd.port",
            "19:3 output.compression",
        ],
        "{err}"
    );
    for hint in [
        "did you mean `ubuntu-24.04`?",
        "did you mean `packages`?",
        "undefined variable ${NOPE}",
        "\"Bad User\" is not a valid user name",
        "`missing.txt` does not exist",
        "did you mean `missing.text`?",
        "expected one of gzip, zstd, none",
    ] {
        assert!(err.contains(hint), "want {hint:?}: {err}");
    }
}

fn a_duplicate_key_is_reported_at_its_second_occurrence() {
    let t = tempfile::tempdir().unwrap();
    let recipe = write(
        &t.path().join("dup.yaml"),
        "name: dup\nbase: {path: b.qcow2}\ncustomize:\n  packages: [a]\n  hostname: x\n  packages: [b]\n",
    );
    let out = df(t.path()).arg("validate").arg(&recipe).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "dup.yaml:6:3: customize.packages: duplicate key `packages` (first given at line 4)"
        ),
        "{err}"
    );
    let top = write(
        &t.path().join("top.yaml"),
        "name: top\nbase: {path: b.qcow2}\n\nname: again\n",
    );
    let out = df(t.path()).arg("validate").arg(&top).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("top.yaml:4:1: name: duplicate key `name`"),
        "{err}"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    diskforge::io::hash::sha256_hex(bytes)
}

fn inspect_and_verify_answer_scripts_in_one_typed_shape() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path(), "lab.qcow2", "64M");
    let layout = t.path().join("layout");
    let image = format!("oci:{}:1", layout.display());
    df(t.path())
        .arg("pack")
        .arg(&disk)
        .args(["-o", &image])
        .succeeds();
    let digest = common::first_manifest_digest(&layout);
    let inspect = |extra: &[&str], image: &str| -> Output {
        df(t.path())
            .arg("inspect")
            .args(extra)
            .arg(image)
            .output()
            .unwrap()
    };
    // Fields by name, one line.
    let out = inspect(
        &[
            "--format",
            "{{.Digest}} {{.DiskFormat}} {{.DiskVirtualSize}} {{.Architecture}}",
        ],
        &image,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{digest} qcow2 67108864 amd64\n")
    );
    // A misspelt field is wrong usage, with the field it meant; never a silent "-".
    let out = inspect(&["--format", "{{.Digset}}"], &image);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    common::assert_says(&out, "did you mean `{{.Digest}}`");
    assert!(out.stdout.is_empty());
    // --format json is --json: the documented fields.
    let a: serde_json::Value =
        serde_json::from_slice(&inspect(&["--json"], &image).stdout).unwrap();
    let b: serde_json::Value =
        serde_json::from_slice(&inspect(&["--format", "json"], &image).stdout).unwrap();
    assert_eq!(a, b);
    for field in [
        "image",
        "digest",
        "architecture",
        "os",
        "created",
        "labels",
        "env",
        "layers",
        "disk",
        "attached",
    ] {
        assert!(a.get(field).is_some(), "no {field}: {a}");
    }
    assert_eq!(a["digest"], digest.as_str());
    assert_eq!(a["disk"]["virtual_size"], 67108864);
    // --raw: the manifest byte for byte; --config: the config.
    let raw = inspect(&["--raw"], &image);
    assert!(raw.status.success(), "{}", text(&raw));
    assert_eq!(format!("sha256:{}", sha256_hex(&raw.stdout)), digest);
    let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let config = inspect(&["--config"], &image);
    assert!(config.status.success(), "{}", text(&config));
    assert_eq!(
        format!("sha256:{}", sha256_hex(&config.stdout)),
        manifest["config"]["digest"].as_str().unwrap()
    );
    // The same from a registry.
    let reg = common::registry::Registry::start(None);
    let remote = format!("docker://{}/lab/inspect:1", reg.addr);
    df(t.path())
        .arg("push")
        .arg(format!("{}:1", layout.display()))
        .arg(&remote)
        .arg("--tls-verify=false")
        .succeeds();
    let raw = inspect(&["--raw", "--tls-verify=false"], &remote);
    assert!(raw.status.success(), "{}", text(&raw));
    assert_eq!(format!("sha256:{}", sha256_hex(&raw.stdout)), digest);
    let out = inspect(
        &["--format", "{{.Digest}} {{.Layer}}", "--tls-verify=false"],
        &remote,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{digest} {}\n",
            manifest["layers"][0]["digest"].as_str().unwrap()
        )
    );

    // verify --json: one document, passing or failing (exit 4).
    let out = df(t.path())
        .args(["verify", "--json"])
        .arg(&image)
        .succeeds();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["satisfied"], true, "{v}");
    assert_eq!(v["digest"], digest.as_str());
    assert!(v["failed"].as_array().unwrap().is_empty(), "{v}");
    assert!(!v["passed"].as_array().unwrap().is_empty(), "{v}");
    let out = df(t.path())
        .args(["verify", "--json", "--size", "1G"])
        .arg(&image)
        .exits(4);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["satisfied"], false, "{v}");
    assert!(
        v["failed"][0].as_str().unwrap().contains("virtual size"),
        "{v}"
    );
}

fn inspect_of_an_index_lists_every_platform() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path(), "lab.qcow2", "64M");
    let layout = t.path().join("multi");
    let mut digests = Vec::new();
    for arch in ["amd64", "arm64"] {
        df(t.path())
            .arg("pack")
            .arg(&disk)
            .args(["--arch", arch, "-o"])
            .arg(format!("oci:{}:{arch}", layout.display()))
            .succeeds();
        let d = df(t.path())
            .args(["inspect", "--format", "{{.Digest}}"])
            .arg(format!("oci:{}:{arch}", layout.display()))
            .output()
            .unwrap();
        digests.push(String::from_utf8_lossy(&d.stdout).trim().to_string());
    }
    df(t.path())
        .arg("index")
        .arg(format!("oci:{}:multi", layout.display()))
        .args(["amd64", "arm64"])
        .succeeds();
    let multi = format!("oci:{}:multi", layout.display());
    let out = df(t.path())
        .args(["inspect", "--json"])
        .arg(&multi)
        .succeeds();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let platforms: Vec<(String, String)> = v["platforms"]
        .as_array()
        .unwrap_or_else(|| panic!("no platforms: {v}"))
        .iter()
        .map(|p| {
            (
                p["architecture"].as_str().unwrap().to_string(),
                p["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        platforms,
        vec![
            ("amd64".to_string(), digests[0].clone()),
            ("arm64".to_string(), digests[1].clone())
        ]
    );
    let out = df(t.path()).arg("inspect").arg(&multi).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains(&format!("linux/arm64  {}", digests[1])), "{s}");
    // A single image has no platform list.
    let out = df(t.path())
        .args(["inspect", "--json"])
        .arg(format!("oci:{}:amd64", layout.display()))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.get("platforms").is_none(), "{v}");
}

fn init_writes_a_starter_recipe_that_validates_and_plans() {
    let t = tempfile::tempdir().unwrap();
    for base in ["debian-12", "ubuntu-24.04", "fedora-43"] {
        let recipe = t.path().join(format!("{base}-lab.yaml"));
        df(t.path())
            .args(["init", "--base", base])
            .arg(&recipe)
            .succeeds();
        let written = std::fs::read_to_string(&recipe).unwrap();
        assert!(written.contains(&format!("catalog: {base}")), "{written}");
        assert!(
            written
                .lines()
                .filter(|l| l.trim_start().starts_with('#'))
                .count()
                > 5
        );
        let out = df(t.path()).arg("validate").arg(&recipe).output().unwrap();
        assert!(out.status.success(), "{base}: {}", text(&out));
        let out = df(t.path())
            .args(["--offline", "plan"])
            .arg(&recipe)
            .output()
            .unwrap();
        assert!(out.status.success(), "{base}: {}", text(&out));
    }
    // Never over an existing file; an unknown base is wrong usage with a suggestion.
    let existing = t.path().join("debian-12-lab.yaml");
    std::fs::write(&existing, "mine\n").unwrap();
    let out = df(t.path()).arg("init").arg(&existing).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "mine\n");
    let out = df(t.path())
        .args(["init", "--base", "ubunt-24.04"])
        .arg(t.path().join("new.yaml"))
        .exits(2);
    common::assert_says(&out, "did you mean `ubuntu-24.04`?");
    assert!(!t.path().join("new.yaml").exists());
}

fn pack_reports_packing_done_before_the_push() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path(), "lab.qcow2", "64M");
    let reg = common::registry::Registry::start(None);
    let out = df(t.path())
        .arg("pack")
        .arg(&disk)
        .arg("-o")
        .arg(format!("docker://{}/lab/order:1", reg.addr))
        .arg("--tls-verify=false")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let pack_done = err.find("pack done").expect("pack done");
    let push_start = err.find("==> push").expect("push stage");
    let push_done = err.find("push done").expect("push done");
    assert!(pack_done < push_start && push_start < push_done, "{err}");
}

fn pack_help_does_not_speak_of_a_recipe() {
    let out = common::diskforge()
        .args(["pack", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(help.contains("--compression"), "{help}");
    assert!(!help.to_lowercase().contains("recipe"), "{help}");
}

fn a_bare_tls_verify_means_true() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path(), "lab.qcow2", "64M");
    let reg = common::registry::Registry::start(None);
    let image = format!("docker://{}/lab/tls:1", reg.addr);
    // A bare flag before a positional argument is accepted, and verifies: the plain
    // HTTP registry is refused with the hint.
    let out = df(t.path())
        .args(["pack", "--tls-verify"])
        .arg(&disk)
        .args(["-o", &image])
        .exits(1);
    common::assert_says(&out, "--tls-verify=false");
    df(t.path())
        .args(["pack", "--tls-verify=false"])
        .arg(&disk)
        .args(["-o", &image])
        .succeeds();
}

/// registries.conf, as podman and skopeo read it: `insecure = true` lets a plain-HTTP
/// registry be used without `--tls-verify=false` (from `--registries-conf` or
/// `CONTAINERS_REGISTRIES_CONF`), `blocked = true` keeps diskforge from contacting a
/// registry at all, what diskforge does not apply (short names) is named in a
/// warning, and a broken file is wrong usage naming its line.
fn registries_conf_marks_registries_insecure_or_blocked() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path(), "lab.qcow2", "64M");
    let reg = common::registry::Registry::start(None);
    let conf = |name: &str, text: String| -> PathBuf {
        let p = t.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let empty = conf("empty.conf", "# nothing here\n".into());
    let insecure = conf(
        "insecure.conf",
        format!(
            "unqualified-search-registries = [\"docker.io\"]\n\n[[registry]]\nlocation = \"{}\"\ninsecure = true\n\n[[registry]]\nprefix = \"quay.io/team\"\nlocation = \"mirror.internal/team\"\n",
            reg.addr
        ),
    );
    let pack = |dest: &str| {
        let mut c = df(t.path());
        c.arg("pack")
            .arg(&disk)
            .args(["-o", &format!("docker://{}/lab/{dest}:1", reg.addr)])
            .env("CONTAINERS_REGISTRIES_CONF", &empty);
        c
    };
    // Without the file's word the plain-HTTP registry is refused with the usual hint.
    let out = pack("plain").exits(1);
    common::assert_says(&out, "--tls-verify=false");
    let out = pack("flag")
        .arg("--registries-conf")
        .arg(&insecure)
        .succeeds();
    common::assert_says(
        &out,
        "insecure.conf: short names (unqualified-search-registries, aliases) are not resolved",
    );
    pack("env")
        .env("CONTAINERS_REGISTRIES_CONF", &insecure)
        .succeeds();
    // Blocked: refused before any request reaches the registry.
    let blocked = conf(
        "blocked.conf",
        format!(
            "[[registry]]\nlocation = \"{}\"\ninsecure = true\nblocked = true\n",
            reg.addr
        ),
    );
    let out = pack("blocked")
        .arg("--registries-conf")
        .arg(&blocked)
        .exits(1);
    common::assert_says(&out, "is blocked");
    assert_eq!(reg.count(&["/v2/lab/blocked"]), 0, "{}", reg.log_text());
    // A broken file: wrong usage, with the file and the line.
    let broken = conf("broken.conf", "[[registry]]\nlocation = 5000\n".into());
    let out = pack("broken")
        .arg("--registries-conf")
        .arg(&broken)
        .exits(2);
    assert!(
        text(&out).contains("broken.conf is not a valid registries.conf")
            && text(&out).contains("line 2"),
        "{}",
        text(&out)
    );
}

/// A port on loopback where nothing listens.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// registries.conf's location rewrites and mirrors, with real registries on loopback:
/// an inspect of `lab.example.invalid/team/x:1` reaches the location while a push of it
/// is not rewritten; reads go to a mirror that has the image while the location is down, fall through a mirror
/// that lacks it, skip a `mirror-by-digest-only` mirror for a tag and use it for a
/// digest; when every source fails the error names each with its reason.
fn registries_conf_rewrites_locations_and_pulls_from_mirrors() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path(), "lab.qcow2", "64M");
    let other = qcow2(t.path(), "other.qcow2", "96M");
    let primary = common::registry::Registry::start(None);
    let mirror = common::registry::Registry::start(None);
    let down = format!("127.0.0.1:{}", closed_port());
    let conf = |name: &str, text: String| -> PathBuf {
        let p = t.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let run = |conf: &Path, args: &[&str]| -> Output {
        df(t.path())
            .args(args)
            .arg("--registries-conf")
            .arg(conf)
            .output()
            .unwrap()
    };
    let digest_of = |conf: &Path, image: &str| -> String {
        let out = run(conf, &["inspect", "--format", "{{.Digest}}", image]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let name = "docker://lab.example.invalid/team/x:1";

    // The rewrite: a read of the name reaches the location. A write goes to the name as
    // given, as podman and skopeo write ("redirection and mirrors are processed only
    // when reading images"), so the image is pushed to the location by its own name.
    let rewrite = conf(
        "rewrite.conf",
        format!(
            "[[registry]]\nprefix = \"lab.example.invalid/team\"\nlocation = \"{}/team\"\ninsecure = true\n",
            primary.addr
        ),
    );
    let located = format!("docker://{}/team/x:1", primary.addr);
    let out = run(
        &rewrite,
        &[
            "pack",
            "--tls-verify=false",
            disk.to_str().unwrap(),
            "-o",
            &located,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let put = "PUT /v2/team/x/manifests/1";
    assert_eq!(primary.count(&[put]), 1, "{}", primary.log_text());
    let d1 = digest_of(&rewrite, name);
    assert!(d1.starts_with("sha256:"), "{d1}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{}/team/x@{d1}", primary.addr)),
        "{}",
        text(&out)
    );
    // A write of the name is not rewritten: it goes to lab.example.invalid, which does
    // not resolve, and the location receives nothing.
    let out = run(&rewrite, &["pack", other.to_str().unwrap(), "-o", name]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("lab.example.invalid"), "{}", text(&out));
    assert_eq!(primary.count(&[put]), 1, "{}", primary.log_text());

    // The location down, a mirror holding the image: inspect and verify's pull are
    // served by the mirror (here the registry that holds it), and say so.
    let via_mirror = conf(
        "mirror.conf",
        format!(
            "[[registry]]\nprefix = \"lab.example.invalid/team\"\nlocation = \"{down}/team\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{}/team\"\ninsecure = true\n",
            primary.addr
        ),
    );
    let out = run(&via_mirror, &["inspect", "--format", "{{.Digest}}", name]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), d1);
    assert!(
        text(&out).contains(&format!("pulling from mirror {}/team/x:1", primary.addr)),
        "{}",
        text(&out)
    );
    let out = run(&via_mirror, &["verify", name]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&via_mirror, &["--json-events", "inspect", name]);
    assert!(out.status.success(), "{}", text(&out));
    common::events::check(&out.stderr);
    let event: serde_json::Value = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "pull_source")
        .unwrap_or_else(|| panic!("no pull_source event: {}", text(&out)));
    assert_eq!(event["mirror"], true, "{event}");
    assert_eq!(
        event["source"],
        format!("{}/team/x:1", primary.addr).as_str(),
        "{event}"
    );
    // A promotion's source is read the same way.
    let promoted = format!("docker://{}/promoted/x:1", mirror.addr);
    let out = run(
        &via_mirror,
        &["push", "--tls-verify=false", name, &promoted],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = run(
        &via_mirror,
        &[
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &promoted,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), d1);
    // A push never goes to a mirror (nor to the location): it goes to the name, which
    // does not resolve, and the registry behind the mirror receives no manifest.
    let out = run(&via_mirror, &["pack", disk.to_str().unwrap(), "-o", name]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("lab.example.invalid"), "{}", text(&out));
    assert_eq!(primary.count(&[put]), 1, "{}", primary.log_text());

    // A mirror without the image: the location serves it.
    let empty_mirror = conf(
        "empty-mirror.conf",
        format!(
            "[[registry]]\nprefix = \"lab.example.invalid/team\"\nlocation = \"{}/team\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{}/empty\"\ninsecure = true\n",
            primary.addr, mirror.addr
        ),
    );
    assert_eq!(digest_of(&empty_mirror, name), d1);
    assert_eq!(
        mirror.count(&["\"GET /v2/empty/x/manifests/1 HTTP/1.1\" 404"]),
        1,
        "{}",
        mirror.log_text()
    );

    // Every source failing: each is named with its reason.
    let nowhere = conf(
        "nowhere.conf",
        format!(
            "[[registry]]\nprefix = \"lab.example.invalid/team\"\nlocation = \"{down}/team\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{}/empty\"\ninsecure = true\n",
            mirror.addr
        ),
    );
    let out = run(&nowhere, &["inspect", name]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains(&format!(
            "mirror {}/empty/x:1: manifest unknown",
            mirror.addr
        )) && all.contains(&format!("location {down}/team/x:1:"))
            && all.contains("nothing listens"),
        "{all}"
    );

    // The mirror holds another image under the same tag.
    df(t.path())
        .args(["pack", "--tls-verify=false"])
        .arg(&other)
        .args(["-o", &format!("docker://{}/team/x:1", mirror.addr)])
        .succeeds();
    let both = |digest_only: bool| {
        conf(
            "both.conf",
            format!(
                "[[registry]]\nprefix = \"lab.example.invalid/team\"\nlocation = \"{}/team\"\ninsecure = true\nmirror-by-digest-only = {digest_only}\n[[registry.mirror]]\nlocation = \"{}/team\"\ninsecure = true\n",
                primary.addr, mirror.addr
            ),
        )
    };
    // Mirrors for every reference: the tag is read from the mirror.
    let d2 = digest_of(&both(false), name);
    assert_ne!(d2, d1);
    // mirror-by-digest-only: the tag skips the mirror (no request reaches it)…
    let asked = mirror.count(&["/v2/team/x/manifests/1"]);
    assert_eq!(digest_of(&both(true), name), d1);
    assert_eq!(
        mirror.count(&["/v2/team/x/manifests/1"]),
        asked,
        "{}",
        mirror.log_text()
    );
    // …and a digest the location does not have is served by the mirror.
    let pinned = format!("docker://lab.example.invalid/team/x@{d2}");
    assert_eq!(digest_of(&both(true), &pinned), d2);
    let out = run(&rewrite, &["inspect", &pinned]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

/// Credentials go only to the host they belong to: with an auth file (or `--creds`)
/// for the location only, the request to a mirror that wants credentials carries none
/// (its log shows no authentication attempt), its 401 passes it over, and the location
/// serves the image with its own credentials; a rewritten name is read with the
/// credential of the host it is rewritten to.
fn registries_conf_mirrors_never_get_the_locations_credentials() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path(), "lab.qcow2", "64M");
    let password = "Mirror-Pa55word-19";
    let primary = common::registry::Registry::start(Some(("ci", password)));
    // The same user name with another password: a credential sent here would show up
    // as a failed login for `ci`.
    let mirror = common::registry::Registry::start(Some(("ci", "Other-Pa55word-23")));
    let image = format!("docker://{}/team/x:1", primary.addr);
    df(t.path())
        .args(["pack", "--tls-verify=false", "--creds"])
        .arg(format!("ci:{password}"))
        .arg(&disk)
        .args(["-o", &image])
        .succeeds();
    let conf = t.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = \"{p}/team\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{m}/team\"\ninsecure = true\n\n[[registry]]\nprefix = \"lab.example.invalid/sec\"\nlocation = \"{p}/team\"\ninsecure = true\n",
            p = primary.addr,
            m = mirror.addr
        ),
    )
    .unwrap();
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("ci:{password}"),
    );
    let authfile = t.path().join("auth.json");
    std::fs::write(
        &authfile,
        format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"{auth}\"}}}}}}",
            primary.addr
        ),
    )
    .unwrap();
    let inspect = |image: &str, extra: &[&str]| -> Output {
        df(t.path())
            .args(["inspect", image, "--registries-conf"])
            .arg(&conf)
            .args(extra)
            .env("HOME", t.path())
            .env("XDG_RUNTIME_DIR", t.path().join("run"))
            .env("XDG_CONFIG_HOME", t.path().join("config"))
            .env_remove("DISKFORGE_CREDS")
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE")
            .output()
            .unwrap()
    };
    let creds = format!("ci:{password}");
    for extra in [
        &["--authfile", authfile.to_str().unwrap()][..],
        &["--creds", &creds][..],
    ] {
        let out = inspect(&image, extra);
        common::ok_without(&out, "inspect through a mirror", &[password]);
        let all = text(&out);
        assert!(
            all.contains(&format!("mirror {}/team/x:1", mirror.addr))
                && all.contains("authentication required"),
            "{all}"
        );
    }
    // A rewritten name: the credential looked up is the location's, which the auth
    // file has, not the name's, which it does not.
    let out = inspect(
        "docker://lab.example.invalid/sec/x:1",
        &["--authfile", authfile.to_str().unwrap()],
    );
    common::ok_without(&out, "inspect of a rewritten name", &[password]);
    let log = mirror.log_text();
    assert!(mirror.count(&["/v2/team/x/manifests/1"]) >= 2, "{log}");
    assert!(
        !log.contains("\"ci\"") && !log.contains("authentication failure"),
        "the mirror saw a credential: {log}"
    );
}

fn registry_errors_tell_missing_from_wrong_credentials_and_vv_traces_http() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path(), "lab.qcow2", "64M");
    let password = "Trace-Pa55word-71";
    let reg = common::registry::Registry::start(Some(("ci", password)));
    let dest = format!("docker://{}/lab/auth:1", reg.addr);
    let pack = |creds: Option<&str>, extra: &[&str]| -> Output {
        let mut c = df(t.path());
        c.args(extra)
            .arg("pack")
            .arg(&disk)
            .args(["-o", &dest, "--tls-verify=false"])
            .env("HOME", t.path())
            .env("XDG_RUNTIME_DIR", t.path().join("run"))
            .env("XDG_CONFIG_HOME", t.path().join("config"))
            .env_remove("DISKFORGE_CREDS")
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE");
        if let Some(c2) = creds {
            c.env("DISKFORGE_CREDS", c2);
        }
        c.output().unwrap()
    };
    let out = pack(None, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    common::assert_says(&out, "no credentials for it were found");
    let out = pack(Some("ci:Wrong-Pa55-0"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("authentication failed for")
            && text(&out).contains("with the credentials found for it"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("Wrong-Pa55-0"), "{}", text(&out));
    // -vv: methods, URLs and statuses; never a header or the password.
    let out = pack(Some(&format!("ci:{password}")), &["-vv"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains(&format!(
            "PUT http://{}/v2/lab/auth/manifests/1 -> 201",
            reg.addr
        )),
        "{all}"
    );
    assert!(all.contains("-> 401") || all.contains("-> 202"), "{all}");
    assert!(!all.contains(password), "{all}");
    assert!(!all.to_lowercase().contains("authorization:"), "{all}");
}

fn push_reads_the_oci_archive_pack_writes_and_keeps_its_digest() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path(), "lab.qcow2", "64M");
    let archive = format!("oci-archive:{}:1", t.path().join("lab.tar").display());
    df(t.path())
        .arg("pack")
        .arg(&disk)
        .args(["-o", &archive])
        .succeeds();
    let out = df(t.path())
        .args(["inspect", "--format", "{{.Digest}}", &archive])
        .succeeds();
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    let reg = common::registry::Registry::start(None);
    let out = df(t.path())
        .args(["push", &archive])
        .arg(format!("docker://{}/lab/archive:1", reg.addr))
        .arg("--tls-verify=false")
        .succeeds();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}/lab/archive@{digest}", reg.addr)
    );
    // The registry serves the same bytes.
    let out = df(t.path())
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/lab/archive:1", reg.addr))
        .succeeds();
    assert_eq!(format!("sha256:{}", sha256_hex(&out.stdout)), digest);
}

fn completions_cover_the_new_ways_in() {
    for shell in ["bash", "zsh", "fish"] {
        let out = common::diskforge()
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["init", "allow-path", "max-layer-size", "format"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
}

/// `skopeo` with its image store (containers-storage) inside `t`, on the vfs driver.
fn storage_conf(t: &Path) -> PathBuf {
    let conf = t.join("storage.conf");
    std::fs::write(
        &conf,
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            t.join("storage/root").display(),
            t.join("storage/run").display()
        ),
    )
    .unwrap();
    conf
}

fn skopeo(conf: &Path, args: &[&str]) -> Output {
    let out = Command::new("skopeo")
        .env("CONTAINERS_STORAGE_CONF", conf)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo {args:?}: {}", text(&out));
    out
}

/// `push` hands an image to docker/podman (`docker-archive:`) and to the local image store
/// podman and CRI-O read (`containers-storage:`); skopeo, which reads both the way podman
/// does, finds the same config (image ID), the same manifest in the store, and layer
/// bytes that are the config's diff ID.
fn push_writes_docker_archives_and_containers_storage_that_skopeo_reads_back() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path(), "lab.qcow2", "64M");
    let layout = t.path().join("lay");
    let src = format!("oci:{}:v1", layout.display());
    df(t.path())
        .arg("pack")
        .arg(&disk)
        .args(["--compression", "zstd", "-o", &src])
        .succeeds();
    let manifest_digest = String::from_utf8_lossy(
        &df(t.path())
            .args(["inspect", "--format", "{{.Digest}}", &src])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_string();
    let config = df(t.path())
        .args(["inspect", "--config", &src])
        .output()
        .unwrap()
        .stdout;
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let config_json: serde_json::Value = serde_json::from_slice(&config).unwrap();
    let diff_id = config_json["rootfs"]["diff_ids"][0]
        .as_str()
        .unwrap()
        .to_string();
    let conf = storage_conf(t.path());

    let archive = t.path().join("out/lab.tar");
    let dest_archive = format!("docker-archive:{}:lab/demo:v1", archive.display());
    let out = df(t.path())
        .env("CONTAINERS_STORAGE_CONF", &conf)
        .args([
            "push",
            &src,
            &dest_archive,
            "containers-storage:localhost/lab/demo:v1",
        ])
        .succeeds();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{dest_archive} {config_digest}\ncontainers-storage:localhost/lab/demo:v1 {config_digest}\n")
    );

    // The archive: named as asked, the same config, a layer whose bytes are its diff ID.
    let in_archive = format!("docker-archive:{}", archive.display());
    let listed = tar_member(&archive, "manifest.json");
    let listed: serde_json::Value = serde_json::from_slice(&listed).unwrap();
    assert_eq!(listed[0]["RepoTags"], serde_json::json!(["lab/demo:v1"]));
    let raw = skopeo(&conf, &["inspect", "--config", "--raw", &in_archive]).stdout;
    assert_eq!(format!("sha256:{}", sha256_hex(&raw)), config_digest);
    let back = t.path().join("back");
    skopeo(
        &conf,
        &[
            "copy",
            "-q",
            &in_archive,
            &format!("dir:{}", back.display()),
        ],
    );
    // `dir:` keeps each blob as it was read, named by its digest.
    let hex = diff_id.strip_prefix("sha256:").unwrap();
    let layer = std::fs::read(back.join(hex)).unwrap();
    assert_eq!(
        sha256_hex(&layer),
        hex,
        "the archive's layer is the uncompressed layer"
    );

    // The store: the manifest diskforge wrote, byte for byte, and its config.
    let stored = "containers-storage:localhost/lab/demo:v1";
    let raw = skopeo(&conf, &["inspect", "--raw", stored]).stdout;
    assert_eq!(format!("sha256:{}", sha256_hex(&raw)), manifest_digest);
    let raw = skopeo(&conf, &["inspect", "--config", "--raw", stored]).stdout;
    assert_eq!(format!("sha256:{}", sha256_hex(&raw)), config_digest);

    // podman, the client users load these with: the store holds the image by its
    // name and ID, and `podman load` of the archive gives the same image ID.
    let podman = |args: &[&str]| {
        let out = Command::new("podman")
            .env("CONTAINERS_STORAGE_CONF", &conf)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "podman {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let stored = || {
        podman(&[
            "images",
            "--no-trunc",
            "--format",
            "{{.Repository}}:{{.Tag}} {{.ID}}",
        ])
    };
    // Removed from the store, then loaded back from `archive`: the same name and ID.
    let reload = |archive: &Path, name: &str, id: &str| {
        podman(&["rmi", name]);
        let loaded = podman(&["load", "-q", "-i", &archive.display().to_string()]);
        assert!(loaded.contains(name), "{loaded}");
        let images = stored();
        assert!(
            images.lines().any(|l| l == format!("{name} {id}")),
            "{images}"
        );
    };
    assert_eq!(stored(), format!("localhost/lab/demo:v1 {config_digest}"));
    reload(&archive, "localhost/lab/demo:v1", &config_digest);

    // `pack` (and `build`) write both kinds directly: the same image ID as the layout
    // written beside them, loaded by podman under the names given.
    let beside = t.path().join("beside");
    let packed = t.path().join("packed.tar");
    let out = df(t.path())
        .env("CONTAINERS_STORAGE_CONF", &conf)
        .arg("pack")
        .arg(&disk)
        .args(["--compression", "zstd", "-o"])
        .arg(format!("oci:{}:2", beside.display()))
        .arg("-o")
        .arg(format!("docker-archive:{}:lab/packed:2", packed.display()))
        .args(["-o", "containers-storage:localhost/lab/packed:2"])
        .succeeds();
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listed.contains("docker-archive:")
            && listed.contains("containers-storage:localhost/lab/packed:2"),
        "{listed}"
    );
    let packed_config = df(t.path())
        .args(["inspect", "--config"])
        .arg(format!("oci:{}:2", beside.display()))
        .succeeds()
        .stdout;
    let packed_id = format!("sha256:{}", sha256_hex(&packed_config));
    let images = stored();
    assert!(
        images
            .lines()
            .any(|l| l == format!("localhost/lab/packed:2 {packed_id}")),
        "{images}"
    );
    reload(&packed, "localhost/lab/packed:2", &packed_id);
    // Neither is read back: inspecting one is refused, not misread.
    let out = df(t.path())
        .args(["inspect", "containers-storage:localhost/lab/packed:2"])
        .exits(1);
    common::assert_says(&out, "does not read it");

    // Wrong names are wrong usage, found before anything is written.
    for bad in [
        format!(
            "docker-archive:{}:Bad Name",
            t.path().join("bad.tar").display()
        ),
        "containers-storage:".to_string(),
        "containers-storage:lab/demo@sha256:00".to_string(),
        format!("docker-arch:{}", t.path().join("bad.tar").display()),
    ] {
        let out = df(t.path()).args(["push", &src, &bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
    }
    assert!(!t.path().join("bad.tar").exists());
    // A failed write leaves no file: a source tag that does not exist.
    df(t.path())
        .args(["push", &format!("oci:{}:nope", layout.display())])
        .arg(format!(
            "docker-archive:{}",
            t.path().join("late.tar").display()
        ))
        .exits(1);
    let left: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !left.iter().any(|n| n.to_string_lossy().contains("late")),
        "{left:?}"
    );
}

/// One member of a tar file.
fn tar_member(file: &Path, name: &str) -> Vec<u8> {
    let mut a = tar::Archive::new(std::fs::File::open(file).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == name {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            return v;
        }
    }
    panic!("{name} is not in {}", file.display())
}

/// `c` with libguestfs set up for machines without a working KVM.
fn tcg(mut c: Command) -> Command {
    common::guestfs_env(&mut c);
    c
}

/// `pack --firmware` records the firmware for `run`, `verify` and the VM manifest, after
/// checking the disk has what it needs: a disk with an EFI system partition and a loader
/// packs as `uefi`, and its VM manifest boots EFI without Secure Boot; a disk without
/// one is refused (exit 4) with nothing written.
fn pack_records_a_firmware_the_disk_can_boot_with() {
    let t = tempfile::tempdir().unwrap();
    let reg = common::registry::Registry::start(None);
    let blank = qcow2(t.path(), "blank.qcow2", "64M");
    let esp = qcow2(t.path(), "esp.qcow2", "64M");
    common::guest::fish(
        &["-a", esp.to_str().unwrap()],
        "run\npart-init /dev/sda gpt\npart-add /dev/sda p 2048 -2048\npart-set-gpt-type /dev/sda 1 C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nmkfs vfat /dev/sda1\nmount /dev/sda1 /\nmkdir-p /EFI/BOOT\nwrite /EFI/BOOT/BOOTX64.EFI MZ-not-a-real-loader\numount-all\n",
    );
    let refused = t.path().join("refused");
    let out = tcg(df(t.path()))
        .arg("pack")
        .arg(&blank)
        .args(["--firmware", "uefi", "--accel", "tcg", "-o"])
        .arg(format!("oci:{}", refused.display()))
        .exits(4);
    common::assert_says(&out, "cannot boot with uefi: no EFI system partition");
    assert!(
        !refused.exists(),
        "a refused pack wrote {}",
        refused.display()
    );

    let layout = t.path().join("uefi");
    let out = tcg(df(t.path()))
        .arg("pack")
        .arg(&esp)
        .args([
            "--firmware",
            "uefi",
            "--accel",
            "tcg",
            "--print-vm-manifest",
            "-o",
        ])
        .arg(format!("oci:{}:1", layout.display()))
        .arg("-o")
        .arg(format!("docker://{}/lab/uefi:1", reg.addr))
        .arg("--tls-verify=false")
        .succeeds();
    let vm: serde_json::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let domain = &vm["spec"]["template"]["spec"]["domain"];
    assert_eq!(
        domain["firmware"]["bootloader"]["efi"]["secureBoot"],
        serde_json::json!(false),
        "{vm}"
    );
    let config = df(t.path())
        .args(["inspect", "--config"])
        .arg(format!("oci:{}:1", layout.display()))
        .output()
        .unwrap();
    let config: serde_json::Value = serde_json::from_slice(&config.stdout).unwrap();
    assert_eq!(
        config["config"]["Labels"]["io.diskforge.firmware"], "uefi",
        "{config}"
    );
    // Secure Boot needs a shim, which this disk lacks.
    let out = tcg(df(t.path()))
        .arg("pack")
        .arg(&esp)
        .args(["--firmware", "uefi-secure-boot", "--accel", "tcg", "-o"])
        .arg(format!("oci:{}", refused.display()))
        .exits(4);
    common::assert_says(&out, "no shim");
    assert!(!refused.exists());
}

/// registries.conf.d drop-ins, as containers-registries.conf.d(5) has them: with the
/// user's own registries.conf, the `*.conf` files of the user's registries.conf.d are
/// read after it in alphanumerical order, a `[[registry]]` with the same prefix replacing
/// the earlier one; other files there are not read; a file named with
/// `--registries-conf` gets them too, as in containers/image.
fn registries_conf_drop_ins_replace_registries_by_prefix() {
    let t = tempfile::tempdir().unwrap();
    let disk = qcow2(t.path(), "lab.qcow2", "64M");
    let primary = common::registry::Registry::start(None);
    let down = format!("127.0.0.1:{}", closed_port());
    let home = t.path().join("home");
    let dir = home.join(".config/containers");
    std::fs::create_dir_all(dir.join("registries.conf.d")).unwrap();
    let entry = |location: &str| {
        format!(
            "[[registry]]\nprefix = \"lab.example.invalid/team\"\nlocation = \"{location}/team\"\ninsecure = true\n"
        )
    };
    write(&dir.join("registries.conf"), &entry(&down));
    write(&dir.join("registries.conf.d/10-down.conf"), &entry(&down));
    write(
        &dir.join("registries.conf.d/50-lab.conf"),
        &entry(&primary.addr),
    );
    // Not a .conf file: never read (it would not parse).
    write(&dir.join("registries.conf.d/README"), "not = [toml\n");
    let run = |args: &[&str]| -> Output {
        df(t.path())
            .env("HOME", &home)
            .env_remove("CONTAINERS_REGISTRIES_CONF")
            .args(args)
            .output()
            .unwrap()
    };
    let located = format!("docker://{}/team/x:1", primary.addr);
    let out = run(&[
        "pack",
        "--tls-verify=false",
        disk.to_str().unwrap(),
        "-o",
        &located,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let name = "docker://lab.example.invalid/team/x:1";
    // The last drop-in's entry for the prefix is the one that applies.
    let read = "GET /v2/team/x/manifests/1";
    let before = primary.count(&[read]);
    let out = run(&["inspect", "--format", "{{.Digest}}", name]);
    assert!(
        out.status.success(),
        "the drop-in was not applied: {}",
        text(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .trim()
        .starts_with("sha256:"));
    assert!(primary.count(&[read]) > before, "{}", primary.log_text());
    // Named explicitly, a main file still gets the drop-ins, as podman and skopeo read
    // them (containers/image); here it names the closed port, which the drop-in replaces.
    let elsewhere = write(&t.path().join("named.conf"), &entry(&down));
    let out = run(&[
        "inspect",
        "--registries-conf",
        elsewhere.to_str().unwrap(),
        "--format",
        "{{.Digest}}",
        name,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // Without the drop-in, the main file's entry applies: the closed port is reached.
    std::fs::remove_file(dir.join("registries.conf.d/50-lab.conf")).unwrap();
    let out = run(&["inspect", "--format", "{{.Digest}}", name]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&down), "{}", text(&out));
    // A drop-in that does not parse is an error naming it.
    write(
        &dir.join("registries.conf.d/60-broken.conf"),
        "[[registry]]\nprefix = \n",
    );
    let out = run(&["inspect", name]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("60-broken.conf"), "{}", text(&out));
}

crate::tests! {
    fn registries_conf_drop_ins_replace_registries_by_prefix [&["qemu-img", "docker-registry"]];
    fn a_base_outside_the_recipe_needs_the_command_lines_permission [&["qemu-img"]];
    fn symbolic_links_cannot_lead_out_of_the_allowed_directories [&["qemu-img"]];
    fn copied_files_stay_confined_unless_allowed_the_same_way;
    fn build_base_names_a_file_anywhere_and_replaces_the_recipes_base [&["qemu-img"]];
    fn plan_fails_at_once_when_a_host_name_does_not_resolve;
    fn plan_works_offline_and_marks_what_it_cannot_know;
    fn plan_shows_users_sudo_groups_and_whether_ttyd_has_a_credential;
    fn a_layer_over_the_limit_is_refused_before_any_upload [&["qemu-img", "docker-registry"]];
    fn every_error_of_a_recipe_comes_in_one_pass_sorted_by_position;
    fn a_duplicate_key_is_reported_at_its_second_occurrence;
    fn inspect_and_verify_answer_scripts_in_one_typed_shape [&["qemu-img", "docker-registry"]];
    fn inspect_of_an_index_lists_every_platform [&["qemu-img"]];
    fn init_writes_a_starter_recipe_that_validates_and_plans;
    fn pack_reports_packing_done_before_the_push [&["qemu-img", "docker-registry"]];
    fn pack_help_does_not_speak_of_a_recipe;
    fn a_bare_tls_verify_means_true [&["qemu-img", "docker-registry"]];
    fn registry_errors_tell_missing_from_wrong_credentials_and_vv_traces_http [&["qemu-img", "docker-registry", "htpasswd"]];
    fn push_reads_the_oci_archive_pack_writes_and_keeps_its_digest [&["qemu-img", "docker-registry"]];
    fn completions_cover_the_new_ways_in;
    fn push_writes_docker_archives_and_containers_storage_that_skopeo_reads_back [&["qemu-img", "skopeo", "podman"]];
    fn pack_records_a_firmware_the_disk_can_boot_with [&["qemu-img", "guestfish", "docker-registry"]];
    fn registries_conf_marks_registries_insecure_or_blocked [&["qemu-img", "docker-registry"]];
    fn registries_conf_rewrites_locations_and_pulls_from_mirrors [&["qemu-img", "docker-registry"]];
    fn registries_conf_mirrors_never_get_the_locations_credentials [&["qemu-img", "docker-registry", "htpasswd"]];
}
