//! The strict KubeVirt/CDI validator (tests/kubevirt/validate.py, checked against the
//! projects' published API definitions) and the Python that can run it.

use std::path::PathBuf;
use std::process::{Command, Output};

/// A python3 that can import PyYAML and jsonschema: the one on PATH, or Debian's (where
/// ci/setup-system.sh installs them) when PATH leads to another Python. None after a loud
/// message outside CI; a failure under CI=true.
pub fn validator_python() -> Option<&'static str> {
    if !super::require(&["python3"]) {
        return None;
    }
    let mut why = String::new();
    for python in ["python3", "/usr/bin/python3"] {
        match Command::new(python)
            .args(["-c", "import yaml, jsonschema"])
            .output()
        {
            Ok(out) if out.status.success() => return Some(python),
            Ok(out) => why = String::from_utf8_lossy(&out.stderr).into_owned(),
            Err(e) => why = format!("{python}: {e}"),
        }
    }
    if super::in_ci() {
        panic!("no python3 can import yaml and jsonschema under CI=true (run ci/setup-system.sh): {why}");
    }
    eprintln!(
        "\n*** SKIPPING: python3 lacks yaml/jsonschema (run ci/setup-system.sh): {why} ***\n"
    );
    None
}

pub fn validate(python: &str, files: &[PathBuf]) -> Output {
    Command::new(python)
        .arg(super::repo_root().join("tests/kubevirt/validate.py"))
        .args(files)
        .output()
        .expect("running validate.py")
}
