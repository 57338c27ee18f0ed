//! Recipe validation: every file of the malformed corpus fails with file:line:column and
//! the key it names in its `# expect:` header; the shipped recipes and catalog validate;
//! the checked-in JSON Schema matches the types.

use crate::common;
use common::Run;

use std::path::{Path, PathBuf};

/// `dir/r.yaml` holding `yaml`.
fn recipe_in(dir: &Path, yaml: &str) -> PathBuf {
    let r = dir.join("r.yaml");
    std::fs::write(&r, yaml).unwrap();
    r
}

fn validate(paths: &[&Path]) -> std::process::Output {
    common::diskforge()
        .arg("validate")
        .args(paths)
        .env_remove("DISKFORGE_LAB_PASSWORD")
        .output()
        .unwrap()
}

fn every_malformed_recipe_fails_at_the_expected_place() {
    let dir = common::repo_root().join("tests/recipes/malformed");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 35,
        "the corpus has only {} recipes",
        files.len()
    );
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect: LINE:COL KEY` header", f.display()));
        let (pos, key) = expect.split_once(' ').unwrap();
        let want_msg = text.lines().find_map(|l| l.strip_prefix("# expect-msg: "));
        let out = validate(&[f.as_path()]);
        let err = String::from_utf8_lossy(&out.stderr);
        let name = f.file_name().unwrap().to_string_lossy();
        let located = format!(":{pos}: {key}: ");
        if out.status.code() != Some(2) {
            failures.push(format!(
                "{name}: exit {:?}, want 2: {err}",
                out.status.code()
            ));
        } else if !err.contains(&located) || !err.contains(&*name.replace(".yaml", "")) {
            failures.push(format!("{name}: want `FILE{located}…`, got: {err}"));
        } else if let Some(m) = want_msg {
            if !err.contains(m) {
                failures.push(format!("{name}: message should contain {m:?}: {err}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn shipped_recipes_and_catalog_validate() {
    let root = common::repo_root();
    let mut files = Vec::new();
    for d in ["recipes", "base-images"] {
        for e in std::fs::read_dir(root.join(d)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 15, "{files:?}");
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let out = validate(&refs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("OK")).count(),
        files.len()
    );
}

fn checked_in_schema_matches_the_types() {
    let out = common::diskforge().arg("schema").output().unwrap();
    assert!(out.status.success());
    let checked_in =
        std::fs::read_to_string(common::repo_root().join("docs/recipe.schema.json")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        checked_in,
        "docs/recipe.schema.json is stale: run `diskforge schema > docs/recipe.schema.json`"
    );
    let v: serde_json::Value = serde_json::from_str(&checked_in).unwrap();
    assert!(v["properties"]["customize"].is_object());
    assert!(v["properties"]["ttyd"].is_object());
}

fn plan_shows_commands_in_order_and_never_a_secret() {
    let t = tempfile::tempdir().unwrap();
    let secret = "pw-Plan-Secret-9Z";
    std::fs::write(t.path().join("pw"), format!("{secret}\n")).unwrap();
    let r = recipe_in(t.path(), "name: p\nbase: {url: \"https://example.com/img.qcow2\", checksum: \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"}\ndisk: {size: 10G}\ncustomize:\n  packages: [tmux]\n  users: [{name: lab, password: {file: pw}}]\n  commands: [\"echo hi\"]\nttyd: {enabled: true, credential: {user: a, password: {env: DISKFORGE_PLAN_SECRET}}}\n");
    for json in [false, true] {
        let mut c = common::diskforge();
        c.arg("plan").arg(&r).env("DISKFORGE_PLAN_SECRET", secret);
        if json {
            c.arg("--json");
        }
        let all = common::text(&c.succeeds());
        assert!(!all.contains(secret), "secret in plan output: {all}");
        let a = all.find("qemu-img create").expect("overlay step");
        let b = all.find("qemu-img resize").expect("resize step");
        let c2 = all.find("guestfish").expect("guest step");
        let d = all.find("qemu-img convert").expect("finalize step");
        assert!(a < b && b < c2 && c2 < d, "steps out of order: {all}");
        assert!(
            all.contains("install packages: tmux") || all.contains("install_packages tmux"),
            "{all}"
        );
    }
}

/// Secrets that reach a recipe through `${VAR}` (variables named like secrets, or marked
/// `secret: true`) are masked in `plan`, `--json` plans and errors, while ordinary
/// variables are shown.
fn substituted_secrets_never_appear_in_plans_or_errors() {
    let t = tempfile::tempdir().unwrap();
    let (token, key, plain) = (
        "tok-Subst-Secret-41",
        "key-Marked-Secret-77",
        "visible-value-3",
    );
    std::fs::write(t.path().join("pw"), "x\n").unwrap();
    let r = recipe_in(t.path(), "name: s\nenv: [API_TOKEN, {name: SITE_KEY, secret: true}, SITE_NAME]\nbase: {url: \"https://example.com/img.qcow2\", checksum: \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"}\ncustomize:\n  commands:\n    - \"curl -H 'Authorization: Bearer ${API_TOKEN}' https://example.com/\"\n    - \"echo ${SITE_NAME} 012345678901234567890123456789012 ${API_TOKEN}\"\n  files: [{path: /etc/site.key, content: \"${SITE_KEY}\", mode: \"0600\"}]\n");
    for json in [false, true] {
        let mut c = common::diskforge();
        c.arg("plan")
            .arg(&r)
            .env("API_TOKEN", token)
            .env("SITE_KEY", key)
            .env("SITE_NAME", plain);
        if json {
            c.arg("--json");
        }
        let all = common::text(&c.succeeds());
        assert!(!all.contains(token), "substituted token in plan: {all}");
        // Shortened step titles are cut after masking: no piece of a secret is left.
        assert!(!all.contains(&token[..4]), "part of a token in plan: {all}");
        assert!(!all.contains(key), "marked secret in plan: {all}");
        assert!(
            all.contains(plain),
            "an ordinary variable was hidden: {all}"
        );
        assert!(all.contains("Authorization: Bearer"), "{all}");
    }
    // The step keys, the build key and the recipe digest are published (a label, the
    // provenance): they must not depend on a secret's value, or anyone could test
    // guesses at it. An ordinary variable does change them.
    let plan_json = |token: &str, key: &str, plain: &str| -> serde_json::Value {
        let out = common::diskforge()
            .args(["plan", "--json"])
            .arg(&r)
            .env("API_TOKEN", token)
            .env("SITE_KEY", key)
            .env("SITE_NAME", plain)
            .succeeds();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let keys = |p: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = p["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].as_str().unwrap().to_string())
            .collect();
        k.push(p["build_key"].as_str().unwrap().to_string());
        k.push(p["recipe_digest"].as_str().unwrap().to_string());
        k
    };
    let first = keys(&plan_json(token, key, plain));
    assert_eq!(
        first,
        keys(&plan_json("another-Token-9999", "another-Key-8888", plain)),
        "a key or digest changed with a secret's value"
    );
    let other = keys(&plan_json(token, key, "another-visible-value"));
    assert_ne!(
        first.last(),
        other.last(),
        "the recipe digest ignores variables"
    );
    assert_ne!(first[first.len() - 2], other[other.len() - 2]);
    // An error that quotes the value does not quote the secret either.
    let err = common::refused_by_validate(
        &r,
        "name: s\nenv: [API_TOKEN]\nbase: {url: \"https://example.com/img.qcow2\", checksum: \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"}\ncustomize:\n  files: [{path: \"relative/${API_TOKEN}\", content: x}]\n",
        &[("API_TOKEN", token)],
    );
    assert!(err.contains("customize.files[0].path"), "{err}");
    assert!(!err.contains(token), "secret in an error: {err}");
}

crate::tests! {
    fn every_malformed_recipe_fails_at_the_expected_place;
    fn shipped_recipes_and_catalog_validate;
    fn checked_in_schema_matches_the_types;
    fn plan_shows_commands_in_order_and_never_a_secret;
    fn substituted_secrets_never_appear_in_plans_or_errors;
}
