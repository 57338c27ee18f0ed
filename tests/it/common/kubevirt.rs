//! The strict KubeVirt/CDI validator (tests/kubevirt/validate.py, checked against the
//! projects' published API definitions) and the Python that can run it.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The need for a python3 that can import PyYAML and jsonschema.
pub fn validator_need() -> crate::harness::Need {
    super::python_need(&["yaml", "jsonschema"])
}

/// The python3 of [`validator_need`].
pub fn validator_python() -> &'static str {
    super::python(&["yaml", "jsonschema"])
}

pub fn validate(python: &str, files: &[PathBuf]) -> Output {
    Command::new(python)
        .arg(super::repo_root().join("tests/kubevirt/validate.py"))
        .args(files)
        .output()
        .expect("running validate.py")
}
