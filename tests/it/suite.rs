//! The suite's runner itself: a test whose tool is missing is ignored, or failed under
//! CI=true, and never reported as passed.

use std::process::{Command, Output};

use crate::common::text;

/// A test that needs qemu-img and guestfish and nothing else.
const GATED: &str = "firmware::disks_without_what_uefi_needs_are_refused_before_qemu_starts";

/// This binary run on `filter` with a PATH that holds no tools at all.
fn without_tools(filter: &str, ci: Option<&str>, extra: &[&str]) -> Output {
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg(filter)
        .args(extra)
        .env("PATH", empty.path())
        .env_remove("CI");
    if let Some(ci) = ci {
        cmd.env("CI", ci);
    }
    cmd.output().unwrap()
}

fn a_missing_tool_ignores_the_test_and_ci_fails_it() {
    let out = without_tools(GATED, None, &["--exact"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("test result: ok. 0 passed; 0 failed; 1 ignored"),
        "{said}"
    );
    assert!(
        said.contains("[needs qemu-img guestfish] firmware::disks_without_what"),
        "the reason is not shown: {said}"
    );
    assert!(
        said.contains("qemu-img (run ci/setup-system.sh), needed by 1")
            && said.contains("guestfish (run ci/setup-system.sh), needed by 1"),
        "the summary does not name the tools and their setup: {said}"
    );

    for ci in ["true", "1"] {
        let out = without_tools(GATED, Some(ci), &["--exact"]);
        let said = text(&out);
        assert!(!out.status.success(), "CI={ci}: {said}");
        assert!(
            said.contains("0 passed; 1 failed; 0 ignored"),
            "CI={ci}: {said}"
        );
        assert!(
            said.contains("missing under CI=true: qemu-img (run ci/setup-system.sh)"),
            "CI={ci}: {said}"
        );
    }

    // Asked to run ignored tests anyway, they fail: nothing ran, so nothing passed.
    let out = without_tools(GATED, None, &["--exact", "--include-ignored"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("0 passed; 1 failed"), "{said}");
    assert!(said.contains("not run, missing: qemu-img"), "{said}");
}

fn a_test_that_needs_nothing_is_never_ignored() {
    let out = without_tools("recipe_validate::", Some("true"), &["--list"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let listed: Vec<&str> = said.lines().filter(|l| l.ends_with(": test")).collect();
    assert!(!listed.is_empty(), "{said}");
    assert!(
        listed.iter().all(|l| l.starts_with("recipe_validate::")),
        "{said}"
    );
}

fn a_slow_test_runs_only_when_asked() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["registry_push::", "--list", "--ignored"])
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.lines()
            .any(|l| l.ends_with("registry_push::a_300_mb_push_at_0_8_mb_per_s_completes_and_a_refused_chunk_resumes: test")),
        "{said}"
    );
}

/// Every `.rs` file under `dir`.
fn sources(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// This binary has no libtest: a `#[test]` function in it (one merged from a branch
/// that still had tests/X.rs) would be compiled out and never run. Tests are registered
/// with `crate::tests!` instead.
fn no_test_is_left_to_the_compiler() {
    let dir = crate::common::repo_root().join("tests/it");
    let mut left = Vec::new();
    for file in sources(&dir) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let l = line.trim();
            if l == "#[test]" || l.starts_with("#[tokio::test") {
                left.push(format!("{}:{}", file.display(), n + 1));
            }
        }
    }
    assert!(
        left.is_empty(),
        "register these with crate::tests! instead: {left:?}"
    );
}

crate::tests! {
    fn a_missing_tool_ignores_the_test_and_ci_fails_it;
    fn a_test_that_needs_nothing_is_never_ignored;
    fn a_slow_test_runs_only_when_asked;
    fn no_test_is_left_to_the_compiler;
}
