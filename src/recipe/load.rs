//! Loading a recipe file: `extends:` chains, `${VAR}` substitution, a strict typed parse
//! of every file, deep merging, and semantic checks. Every error names the file, line,
//! column and key (`FILE:LINE:COL: KEY: message`), with a "did you mean" for near-miss
//! key names.
//!
//! Merge rules for `extends:`: maps merge deeply, lists append (parent first), scalars
//! of the child override the parent's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_yaml::Value;

use super::Recipe;

/// What the command line adds to a recipe file.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--set KEY=VALUE` pairs, as given.
    pub set: Vec<String>,
    /// `--catalog DIR`.
    pub catalog: Option<PathBuf>,
}

/// A recipe after loading: the merged, substituted recipe and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedRecipe {
    pub recipe: Recipe,
    /// The file given on the command line.
    pub path: PathBuf,
    /// Its directory: relative paths in the recipe are resolved against it.
    pub dir: PathBuf,
    /// `sha256:` of the canonical JSON of the resolved recipe (labels, up-to-date checks).
    pub digest: String,
    /// Every file read, child first.
    pub files: Vec<PathBuf>,
}

/// An invalid recipe: where, which key, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}:{line}:{column}: {key}: {message}", file.display())]
pub struct RecipeError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted key path (`customize.files[0].mode`), or `(document)`.
    pub key: String,
    pub message: String,
}

fn err(
    file: &Path,
    line: usize,
    column: usize,
    key: &str,
    message: impl Into<String>,
) -> anyhow::Error {
    RecipeError {
        file: file.to_path_buf(),
        line,
        column,
        key: if key.is_empty() {
            "(document)".into()
        } else {
            key.to_string()
        },
        message: message.into(),
    }
    .into()
}

/// One file of an `extends:` chain.
struct Source {
    path: PathBuf,
    text: String,
}

/// Reads and resolves a recipe file.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<LoadedRecipe> {
    let set = parse_set(&opts.set)?;
    // The chain, child first.
    let mut chain: Vec<Source> = Vec::new();
    let mut next = Some(path.to_path_buf());
    while let Some(p) = next.take() {
        let canon =
            std::fs::canonicalize(&p).with_context(|| format!("reading recipe {}", p.display()))?;
        if chain
            .iter()
            .any(|s| std::fs::canonicalize(&s.path).ok().as_ref() == Some(&canon))
        {
            let names: Vec<String> = chain
                .iter()
                .map(|s| s.path.display().to_string())
                .chain([p.display().to_string()])
                .collect();
            let last = chain.last().expect("a chain with a cycle has a file");
            let (l, c) = find_key(&last.text, &["extends"]).unwrap_or((1, 1));
            return Err(err(
                &last.path,
                l,
                c,
                "extends",
                format!("cyclic extends: {}", names.join(" -> ")),
            ));
        }
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("reading recipe {}", p.display()))?;
        let head: Value = serde_yaml::from_str(&text).map_err(|e| yaml_error(&p, &e, ""))?;
        if !matches!(head, Value::Mapping(_) | Value::Null) {
            return Err(err(&p, 1, 1, "", "a recipe must be a YAML mapping"));
        }
        if let Some(parent) = head.get("extends") {
            let Some(parent) = parent.as_str() else {
                let (l, c) = find_key(&text, &["extends"]).unwrap_or((1, 1));
                return Err(err(
                    &p,
                    l,
                    c,
                    "extends",
                    "extends must be a path to a parent recipe",
                ));
            };
            let dir = p.parent().unwrap_or(Path::new("."));
            let parent_path = dir.join(parent);
            if !parent_path.is_file() {
                let (l, c) = find_key(&text, &["extends"]).unwrap_or((1, 1));
                return Err(err(
                    &p,
                    l,
                    c,
                    "extends",
                    format!("parent recipe {} does not exist", parent_path.display()),
                ));
            }
            next = Some(parent_path);
        }
        chain.push(Source { path: p, text });
    }

    // Variables: parents' vars, then the child's (each file may use what is defined up
    // to it), then the environment (allowed names only), then --set.
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut allowed_env: Vec<String> = Vec::new();
    for s in chain.iter().rev() {
        let v: Value = serde_yaml::from_str(&s.text).map_err(|e| yaml_error(&s.path, &e, ""))?;
        if let Some(Value::Mapping(m)) = v.get("vars") {
            for (k, val) in m {
                let (Some(k), Some(val)) = (k.as_str(), scalar_string(val)) else {
                    let (l, c) = find_key(&s.text, &["vars"]).unwrap_or((1, 1));
                    return Err(err(&s.path, l, c, "vars", "vars must map names to strings"));
                };
                vars.insert(k.to_string(), val);
            }
        }
        if let Some(Value::Sequence(e)) = v.get("env") {
            allowed_env.extend(e.iter().filter_map(|x| x.as_str().map(str::to_string)));
        }
    }
    for name in &allowed_env {
        if let Ok(v) = std::env::var(name) {
            vars.insert(name.clone(), v);
        }
    }
    vars.extend(set);

    // Substitute, then parse each file strictly on its own (so errors point into it).
    let mut merged = Value::Null;
    for s in chain.iter().rev() {
        let text = substitute(&s.path, &s.text, &vars)?;
        let de = serde_yaml::Deserializer::from_str(&text);
        let typed: std::result::Result<Recipe, _> = serde_path_to_error::deserialize(de);
        if let Err(e) = typed {
            let key = path_string(e.path());
            let inner = e.into_inner();
            return Err(yaml_error(&s.path, &inner, &key));
        }
        let mut v: Value = serde_yaml::from_str(&text).map_err(|e| yaml_error(&s.path, &e, ""))?;
        if let Value::Mapping(m) = &mut v {
            m.remove("extends");
            // Only the recipe given decides whether it is a partial one.
            if !std::ptr::eq(s, &chain[0]) {
                m.remove("partial");
            }
        }
        merge(&mut merged, v);
    }
    let child = &chain[0];
    let recipe: Recipe = serde_yaml::from_value(merged).map_err(|e| {
        err(
            &child.path,
            1,
            1,
            "",
            format!("after merging the extends chain: {e}"),
        )
    })?;
    super::validate::check(&recipe, &child.path, &child.text)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let digest = recipe_digest(&recipe)?;
    Ok(LoadedRecipe {
        recipe,
        path: path.to_path_buf(),
        dir,
        digest,
        files: chain.into_iter().map(|s| s.path).collect(),
    })
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_set(set: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for s in set {
        let (k, v) = s
            .split_once('=')
            .with_context(|| format!("--set {s:?} is not KEY=VALUE"))?;
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            anyhow::bail!("--set {s:?}: variable names are letters, digits and `_`");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Replaces `${NAME}`; `$${` is a literal `${`. Undefined names are errors at their
/// position.
fn substitute(file: &Path, text: &str, vars: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut offset = 0;
    while let Some(i) = rest.find("${") {
        if i > 0 && rest.as_bytes()[i - 1] == b'$' {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            offset += i + 2;
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find('}');
        let (line, col) = line_col(text, offset + i);
        let Some(end) = end else {
            return Err(err(
                file,
                line,
                col,
                &key_at_line(text, line),
                "unterminated ${ (write $${ for a literal ${)",
            ));
        };
        let name = &after[..end];
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => {
                return Err(err(
                    file,
                    line,
                    col,
                    &key_at_line(text, line),
                    format!("undefined variable ${{{name}}}: define it under vars:, allow it from the environment under env:, or pass --set {name}=VALUE"),
                ))
            }
        }
        rest = &after[end + 1..];
        offset += i + 2 + end + 1;
    }
    out.push_str(rest);
    Ok(out)
}

fn line_col(text: &str, byte: usize) -> (usize, usize) {
    let before = &text[..byte.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// The key written on a line (`  size: ${X}` → `size`).
fn key_at_line(text: &str, line: usize) -> String {
    text.lines()
        .nth(line - 1)
        .and_then(|l| l.trim_start().trim_start_matches("- ").split_once(':'))
        .map(|(k, _)| k.trim().to_string())
        .unwrap_or_default()
}

/// Deep merge: maps merge, lists append, scalars override.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Sequence(b), Value::Sequence(o)) => b.extend(o),
        (b, o) => {
            if !o.is_null() {
                *b = o;
            }
        }
    }
}

fn path_string(p: &serde_path_to_error::Path) -> String {
    let s = p.to_string();
    if s == "." {
        String::new()
    } else {
        s
    }
}

/// A YAML/serde error as a located [`RecipeError`] with a "did you mean".
fn yaml_error(file: &Path, e: &serde_yaml::Error, key: &str) -> anyhow::Error {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    let mut msg = e.to_string();
    if let Some(i) = msg.find(" at line ") {
        msg.truncate(i);
    }
    // serde names the key in the message: "unknown field `pakages`, expected one of …".
    // The YAML library prefixes messages with the parent's path ("customize: …").
    if let Some((prefix, rest)) = msg.split_once(": ") {
        let is_path = !prefix.is_empty()
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-[]".contains(c))
            && (key.starts_with(prefix) || key.is_empty());
        if is_path {
            msg = rest.to_string();
        }
    }
    let mut key = key.to_string();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some((name, expected)) = rest.split_once('`') {
            let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            if key.is_empty() {
                key = name.to_string();
            } else if !key.ends_with(name) {
                key = format!("{key}.{name}");
            }
            let best = candidates
                .iter()
                .map(|c| (strsim::jaro_winkler(name, c), *c))
                .filter(|(s, _)| *s > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0));
            msg = match best {
                Some((_, c)) => format!("unknown key `{name}`: did you mean `{c}`?"),
                None => format!(
                    "unknown key `{name}` (known keys: {})",
                    candidates.join(", ")
                ),
            };
        }
    }
    if let Some(rest) = msg.strip_prefix(&format!("{key}: ")) {
        msg = rest.to_string();
    }
    err(file, line, column, &key, msg)
}

/// Line and column of a key path in YAML text (best effort: indentation-aware search
/// for each segment in turn).
pub fn find_key(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0;
    let mut min_indent = 0;
    let mut found = None;
    for seg in path {
        let mut hit = None;
        for (i, l) in lines.iter().enumerate().skip(start) {
            let trimmed = l.trim_start();
            let indent = l.len() - trimmed.len();
            let t = trimmed.trim_start_matches("- ");
            let indent = indent + (trimmed.len() - t.len());
            if trimmed.starts_with('#') || trimmed.is_empty() {
                continue;
            }
            if indent < min_indent && i > start {
                break;
            }
            if t.starts_with(&format!("{seg}:")) {
                hit = Some((i, indent));
                break;
            }
        }
        let (i, indent) = hit?;
        found = Some((i + 1, indent + 1));
        start = i + 1;
        min_indent = indent + 1;
    }
    found
}

/// `sha256:` of the canonical JSON of a recipe.
pub fn recipe_digest(recipe: &Recipe) -> Result<String> {
    let json = serde_json::to_value(recipe).context("serializing recipe")?;
    let bytes = crate::oci::image::canonical_json(&json)?;
    Ok(format!("sha256:{}", crate::cache::sha256_hex(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn extends_merges_maps_appends_lists_overrides_scalars() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "parent.yaml", "name: parent\nbase: {path: base.qcow2}\ncustomize:\n  packages: [a]\n  hostname: p\noutput: {labels: {x: '1', y: '2'}}\n");
        let child = write(t.path(), "child.yaml", "extends: parent.yaml\nname: child\ncustomize:\n  packages: [b]\noutput: {labels: {y: '3'}}\n");
        let r = load(&child, &LoadOptions::default()).unwrap().recipe;
        assert_eq!(r.name.as_deref(), Some("child"));
        assert_eq!(r.customize.packages, vec!["a", "b"]);
        assert_eq!(r.customize.hostname.as_deref(), Some("p"));
        assert_eq!(r.output.labels["x"], "1");
        assert_eq!(r.output.labels["y"], "3");
        assert_eq!(r.base.unwrap().path.as_deref(), Some("base.qcow2"));
    }

    #[test]
    fn variables_come_from_vars_env_and_set_in_that_order() {
        let t = tempfile::tempdir().unwrap();
        std::env::set_var("DISKFORGE_TEST_HOSTVAR", "from-env");
        let p = write(
            t.path(),
            "r.yaml",
            "vars: {size: 5G, host: from-vars}\nenv: [DISKFORGE_TEST_HOSTVAR]\nbase: {path: b.qcow2}\ndisk: {size: \"${size}\"}\ncustomize:\n  hostname: \"${DISKFORGE_TEST_HOSTVAR}\"\n  commands: [\"echo $${HOME} ${host}\"]\n",
        );
        let r = load(&p, &LoadOptions::default()).unwrap().recipe;
        assert_eq!(r.disk.size.unwrap().to_string(), "5G");
        assert_eq!(r.customize.hostname.as_deref(), Some("from-env"));
        assert_eq!(r.customize.commands[0], "echo ${HOME} from-vars");
        let opts = LoadOptions {
            set: vec!["host=from-set".into()],
            ..Default::default()
        };
        let r = load(&p, &opts).unwrap().recipe;
        assert_eq!(r.customize.commands[0], "echo ${HOME} from-set");
    }

    #[test]
    fn undefined_variable_is_located() {
        let t = tempfile::tempdir().unwrap();
        let p = write(
            t.path(),
            "r.yaml",
            "base: {path: b.qcow2}\ncustomize:\n  hostname: \"${NOPE}\"\n",
        );
        let e = load(&p, &LoadOptions::default()).unwrap_err();
        let re = e.downcast_ref::<RecipeError>().unwrap();
        assert_eq!((re.line, re.column, re.key.as_str()), (3, 14, "hostname"));
        assert!(re.message.contains("NOPE"));
    }

    #[test]
    fn unknown_keys_get_a_suggestion() {
        let t = tempfile::tempdir().unwrap();
        let p = write(
            t.path(),
            "r.yaml",
            "base: {path: b.qcow2}\ncustomize:\n  pakages: [a]\n",
        );
        let e = load(&p, &LoadOptions::default()).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains(
                "r.yaml:3:3: customize.pakages: unknown key `pakages`: did you mean `packages`?"
            ),
            "{s}"
        );
    }

    #[test]
    fn find_key_walks_nested_paths() {
        let text = "a:\n  b: 1\n  c:\n    d: 2\ne: 3\n";
        assert_eq!(find_key(text, &["a", "c", "d"]), Some((4, 5)));
        assert_eq!(find_key(text, &["e"]), Some((5, 1)));
        assert_eq!(find_key(text, &["a", "x"]), None);
    }
}
