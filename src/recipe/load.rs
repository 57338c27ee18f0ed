//! Loading a recipe file: the `extends:` chain, variables substituted into parsed values
//! (never into YAML text, so a value cannot inject structure), a deep merge, a strict
//! typed parse section by section, and the semantic checks — every error of a file at
//! once, each naming the file, line, column and key, with a "did you mean" for
//! near-miss key names.
//!
//! Merge rules for `extends:`: maps merge deeply, lists append (parent first), scalars
//! of the child override the parent's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_yaml::Value;

use super::diag::{self, did_you_mean, humanize, RecipeError, RecipeErrors, Seg};
use super::Recipe;

/// Checks of what a recipe refers to beyond itself (a catalog entry's name): they run in
/// the same pass as the recipe's own checks, so their errors come with the others. Given
/// the parsed recipe and its directory, they return the problems found at their keys.
/// A check of references: the problems found, at their keys.
pub type ReferenceCheck = dyn Fn(&Recipe, &Path) -> super::validate::Issues + Send + Sync;

#[derive(Clone)]
pub struct References(pub std::sync::Arc<ReferenceCheck>);

impl std::fmt::Debug for References {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("References(..)")
    }
}

/// What the command line adds to a recipe file.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--set KEY=VALUE` pairs, as given.
    pub set: Vec<String>,
    /// Host files the command line allows beyond the recipe's directory, and the
    /// `--base` file that replaces the recipe's base.
    pub host: super::HostAccess,
    /// Checks of names the recipe refers to (the catalog), run with the others.
    pub references: Option<References>,
}

/// One file of an `extends:` chain.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// A recipe after loading: the merged, substituted recipe and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedRecipe {
    pub recipe: Recipe,
    /// The file given on the command line.
    pub path: PathBuf,
    /// Its directory: relative paths in the recipe are resolved against it.
    pub dir: PathBuf,
    /// `sha256:` of the canonical JSON of the resolved recipe (labels, keys).
    pub digest: String,
    /// Every file of the chain, child first.
    pub chain: Vec<Source>,
    /// Values of variables that hold secrets (kept out of plans, logs and errors).
    pub secret_values: Vec<String>,
}

impl LoadedRecipe {
    /// An error located at `path` in the file of the chain that sets it (the child
    /// first), for checks made after loading (catalog names, base sizes).
    pub fn error_at(&self, path: &[Seg], message: impl Into<String>) -> RecipeErrors {
        RecipeErrors(vec![locate_in_chain(&self.chain, path, message.into())])
    }

    /// Digests of every file of the chain, child first.
    pub fn chain_digests(&self) -> Vec<(PathBuf, String)> {
        self.chain
            .iter()
            .map(|s| {
                (
                    s.path.clone(),
                    crate::io::hash::sha256_digest(s.text.as_bytes()),
                )
            })
            .collect()
    }
}

fn locate_in_chain(chain: &[Source], path: &[Seg], message: String) -> RecipeError {
    // The deepest match in the file that names the most of the path wins.
    let mut best: Option<(usize, &Source)> = None;
    for s in chain {
        for n in (1..=path.len()).rev() {
            if diag::locate(&s.text, &path[..n]).is_some() {
                if best.is_none_or(|(m, _)| n > m) {
                    best = Some((n, s));
                }
                break;
            }
        }
    }
    let s = best.map(|(_, s)| s).unwrap_or(&chain[0]);
    diag::at(&s.path, &s.text, path, message)
}

/// Variable names that hold secrets unless the recipe says otherwise.
const SECRET_NAMES: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "TOKEN",
    "CREDENTIAL",
    "PRIVATE",
    "APIKEY",
    "API_KEY",
];

fn secret_name(name: &str) -> bool {
    let up = name.to_ascii_uppercase();
    SECRET_NAMES.iter().any(|s| up.contains(s))
}

/// Reads and resolves a recipe file.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<LoadedRecipe> {
    let set = parse_set(&opts.set)?;
    let chain = read_chain(path)?;
    // Parse every file first: syntax errors are located by the YAML parser.
    let mut values = Vec::new();
    for s in &chain {
        let v = parse_yaml(&s.path, &s.text)?;
        if !matches!(v, Value::Mapping(_) | Value::Null) {
            return Err(RecipeErrors(vec![RecipeError {
                file: s.path.clone(),
                line: 1,
                column: 1,
                key: "(document)".into(),
                message: "a recipe must be a YAML mapping".into(),
            }])
            .into());
        }
        values.push(v);
    }
    let (vars, secret_values) = variables(&chain, &values, set)?;
    // Every error of the file in one pass: undefined variables, unknown keys and types,
    // then the semantic checks of the sections that parsed, then references.
    let mut errors = Vec::new();
    let mut merged = Value::Null;
    for (s, mut v) in chain.iter().zip(values).rev() {
        let mut unresolved = Vec::new();
        substitute_tree(&mut v, &vars, &mut Vec::new(), &mut |path, msg| {
            errors.push(diag::at(&s.path, &s.text, path, msg));
            unresolved.push(path.to_vec());
        });
        // A value with an undefined variable is reported once, not again as a bad value.
        for path in &unresolved {
            remove_at(&mut v, path);
        }
        if let Value::Mapping(m) = &mut v {
            m.remove("extends");
            // Only the recipe given decides whether it is a partial one.
            if !std::ptr::eq(s, &chain[0]) {
                m.remove("partial");
            }
        }
        merge(&mut merged, v);
    }
    if let Some(base) = opts.host.base() {
        override_base(&mut merged, base);
    }
    let (recipe, bad_sections, removed) = parse_sections(&merged, &chain, &mut errors)?;
    let mut issues = Vec::new();
    super::validate::check(&recipe, &mut issues);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    super::validate::check_files(&recipe, &dir, &opts.host, &mut issues);
    if let Some(refs) = &opts.references {
        if !bad_sections.contains("base") && !recipe.partial {
            issues.extend((refs.0)(&recipe, &dir));
        }
    }
    // A value in error (or a section that did not parse) is checked as absent: say
    // nothing more about it.
    issues.retain(|(p, _)| {
        let in_bad_section =
            matches!(p.first(), Some(Seg::Key(k)) if bad_sections.contains(k.as_str()));
        !in_bad_section && !removed.iter().any(|r| p.starts_with(r))
    });
    errors.extend(
        issues
            .into_iter()
            .map(|(p, m)| locate_in_chain(&chain, &p, m)),
    );
    if !errors.is_empty() {
        errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        errors.dedup();
        return Err(RecipeErrors(errors).into());
    }
    let digest = recipe_digest(&recipe, &secret_values)?;
    Ok(LoadedRecipe {
        recipe,
        path: path.to_path_buf(),
        dir,
        digest,
        chain,
        secret_values,
    })
}

/// The recipe and its parents, child first; a cycle or a missing parent is an error at
/// the `extends` key.
fn read_chain(path: &Path) -> Result<Vec<Source>> {
    let mut chain: Vec<Source> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut next = Some(path.to_path_buf());
    while let Some(p) = next.take() {
        let canon =
            std::fs::canonicalize(&p).with_context(|| format!("reading recipe {}", p.display()))?;
        if !seen.insert(canon) {
            let names: Vec<String> = chain
                .iter()
                .map(|s| s.path.display().to_string())
                .chain([p.display().to_string()])
                .collect();
            let last = chain.last().expect("a chain with a cycle has a file");
            return Err(RecipeErrors(vec![diag::at(
                &last.path,
                &last.text,
                &[Seg::key("extends")],
                format!("cyclic extends: {}", names.join(" -> ")),
            )])
            .into());
        }
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("reading recipe {}", p.display()))?;
        let head = parse_yaml(&p, &text)?;
        if let Some(parent) = head.get("extends") {
            let err = |msg: String| -> anyhow::Error {
                RecipeErrors(vec![diag::at(&p, &text, &[Seg::key("extends")], msg)]).into()
            };
            let Some(parent) = parent.as_str() else {
                return Err(err("extends must be a path to a parent recipe".into()));
            };
            let parent_path = p.parent().unwrap_or(Path::new(".")).join(parent);
            if !parent_path.is_file() {
                return Err(err(format!(
                    "parent recipe {} does not exist",
                    parent_path.display()
                )));
            }
            next = Some(parent_path);
        }
        chain.push(Source { path: p, text });
    }
    Ok(chain)
}

/// Variables: parents' `vars`, then the child's, then the environment (allowed names
/// only), then `--set`. Also returns the values that are secrets (from variables named
/// like secrets or listed as `{name: X, secret: true}` under `env`).
fn variables(
    chain: &[Source],
    values: &[Value],
    set: BTreeMap<String, String>,
) -> Result<(BTreeMap<String, String>, Vec<String>)> {
    let mut vars = BTreeMap::new();
    let mut allowed: Vec<(String, bool)> = Vec::new();
    for (s, v) in chain.iter().zip(values).rev() {
        if let Some(m) = v.get("vars") {
            let Value::Mapping(m) = m else {
                return Err(RecipeErrors(vec![diag::at(
                    &s.path,
                    &s.text,
                    &[Seg::key("vars")],
                    "vars must map names to values",
                )])
                .into());
            };
            for (k, val) in m {
                match (k.as_str(), scalar_string(val)) {
                    (Some(k), Some(val)) => {
                        vars.insert(k.to_string(), val);
                    }
                    _ => {
                        return Err(RecipeErrors(vec![diag::at(
                            &s.path,
                            &s.text,
                            &[Seg::key("vars")],
                            "vars must map names to plain values (text, numbers, true/false)",
                        )])
                        .into())
                    }
                }
            }
        }
        if let Some(Value::Sequence(e)) = v.get("env") {
            for item in e {
                match item {
                    Value::String(n) => allowed.push((n.clone(), secret_name(n))),
                    Value::Mapping(m) => {
                        if let Some(n) = m.get("name").and_then(Value::as_str) {
                            let secret = m.get("secret").and_then(Value::as_bool).unwrap_or(false);
                            allowed.push((n.to_string(), secret || secret_name(n)));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let mut secret_values = Vec::new();
    for (name, secret) in &allowed {
        if let Ok(v) = std::env::var(name) {
            if *secret && !v.is_empty() {
                secret_values.push(v.clone());
            }
            vars.insert(name.clone(), v);
        }
    }
    for (k, v) in set {
        if secret_name(&k) && !v.is_empty() {
            secret_values.push(v.clone());
        }
        vars.insert(k, v);
    }
    for v in &secret_values {
        crate::sys::exec::register_secret(v);
    }
    Ok((vars, secret_values))
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

/// Substitutes `${NAME}` in every string value of `v` (`$${` is a literal `${`). A
/// value that is exactly one reference takes the variable's scalar type (so
/// `port: ${PORT}` is a number); a variable can never become a list or a mapping.
fn substitute_tree(
    v: &mut Value,
    vars: &BTreeMap<String, String>,
    path: &mut Vec<Seg>,
    report: &mut dyn FnMut(&[Seg], String),
) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m.iter_mut() {
                // `vars` themselves are not substituted.
                if path.is_empty() && k.as_str() == Some("vars") {
                    continue;
                }
                path.push(Seg::Key(k.as_str().unwrap_or("?").to_string()));
                substitute_tree(child, vars, path, report);
                path.pop();
            }
        }
        Value::Sequence(s) => {
            for (i, child) in s.iter_mut().enumerate() {
                path.push(Seg::Index(i));
                substitute_tree(child, vars, path, report);
                path.pop();
            }
        }
        Value::String(s) if s.contains("${") => match substitute(s, vars) {
            Ok((out, whole)) => {
                *v = if whole {
                    let parsed = match crate::io::limits::yaml_too_deep(&out) {
                        None => serde_yaml::from_str::<Value>(&out).ok(),
                        Some(_) => None,
                    };
                    match parsed {
                        Some(x @ (Value::Number(_) | Value::Bool(_))) => x,
                        _ => Value::String(out),
                    }
                } else {
                    Value::String(out)
                };
            }
            Err(msg) => report(path, msg),
        },
        _ => {}
    }
}

/// `${NAME}` substitution in one string; also says whether the string was exactly one
/// reference.
fn substitute(
    text: &str,
    vars: &BTreeMap<String, String>,
) -> std::result::Result<(String, bool), String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut refs = 0;
    while let Some(i) = rest.find("${") {
        if i > 0 && rest.as_bytes()[i - 1] == b'$' {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err("unterminated ${ (write $${ for a literal ${)".into());
        };
        let name = &after[..end];
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => {
                return Err(format!(
                    "undefined variable ${{{name}}}: define it under vars:, allow it from the environment under env:, or pass --set {name}=VALUE"
                ))
            }
        }
        refs += 1;
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    let whole = refs == 1 && text.starts_with("${") && text.ends_with('}');
    Ok((out, whole))
}

/// `--base PATH`: the base becomes that local file; the recipe's `format` and `arch`
/// still describe it, its source and checksum are dropped.
fn override_base(merged: &mut Value, path: &Path) {
    let Value::Mapping(m) = merged else { return };
    let mut base = serde_yaml::Mapping::new();
    if let Some(Value::Mapping(old)) = m.get("base") {
        for key in ["format", "arch"] {
            if let Some(v) = old.get(key) {
                base.insert(key.into(), v.clone());
            }
        }
    }
    base.insert(
        "path".into(),
        Value::String(path.to_string_lossy().into_owned()),
    );
    m.insert("base".into(), Value::Mapping(base));
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

/// Parses the merged recipe one top-level section at a time, so one bad section does
/// not hide the errors of the others; each error is located in the chain and added to
/// `errors`. Returns the recipe made of what parsed (values in error taken out, sections
/// that still did not parse left at their defaults), the names of those sections and the
/// paths of the values taken out.
fn parse_sections(
    merged: &Value,
    chain: &[Source],
    errors: &mut Vec<RecipeError>,
) -> Result<(Recipe, BTreeSet<String>, Vec<Vec<Seg>>)> {
    let empty = serde_yaml::Mapping::new();
    let map = merged.as_mapping().unwrap_or(&empty);
    let known = super::types::TOP_LEVEL_KEYS;
    let mut clean = serde_yaml::Mapping::new();
    let mut bad = BTreeSet::new();
    let mut removed = Vec::new();
    for (k, v) in map {
        let name = k.as_str().unwrap_or("?");
        if !known.contains(&name) {
            let msg = match did_you_mean(name, known) {
                Some(c) => format!("unknown key `{name}`: did you mean `{c}`?"),
                None => format!("unknown key `{name}` (known keys: {})", known.join(", ")),
            };
            errors.push(locate_in_chain(chain, &[Seg::key(name)], msg));
            continue;
        }
        let section = section_errors(k, v, chain, errors);
        match section.parsed {
            Some(rest) => {
                clean.insert(k.clone(), rest);
            }
            None => {
                bad.insert(name.to_string());
            }
        }
        removed.extend(section.removed);
    }
    let recipe = serde_yaml::from_value(Value::Mapping(clean))
        .map_err(|e| RecipeErrors(vec![locate_in_chain(chain, &[], humanize(&e.to_string()))]))?;
    Ok((recipe, bad, removed))
}

/// At most this many errors are reported for one section of a recipe.
const MAX_SECTION_ERRORS: usize = 32;

/// Parses one top-level section on its own and adds every error in it to `errors`, not
/// only the first: after each error the value at its key is taken out and the section
/// parsed again, until it parses or an error repeats (a required key that was taken out
/// reports itself missing: that is not the user's error and ends the search).
fn section_errors(
    key: &Value,
    value: &Value,
    chain: &[Source],
    errors: &mut Vec<RecipeError>,
) -> Section {
    let mut one = serde_yaml::Mapping::new();
    one.insert(key.clone(), value.clone());
    let mut one = Value::Mapping(one);
    let mut removed: Vec<Vec<Seg>> = Vec::new();
    let mut parsed = false;
    for _ in 0..MAX_SECTION_ERRORS {
        let r: std::result::Result<Recipe, _> = serde_path_to_error::deserialize(one.clone());
        let Err(e) = r else {
            parsed = true;
            break;
        };
        let missing = e.inner().to_string().contains("missing field");
        let (err, path) = serde_error(chain, e);
        let repeated = removed.iter().any(|p| {
            *p == path || (missing && p.len() > path.len() && p[..path.len()] == path[..])
        });
        if repeated {
            break;
        }
        errors.push(err);
        if path.is_empty() || !remove_at(&mut one, &path) {
            break;
        }
        removed.push(path);
    }
    Section {
        parsed: if parsed { one.get(key).cloned() } else { None },
        removed,
    }
}

/// What is left of a section after its errors were taken out.
struct Section {
    /// The section without the values in error, when that parses.
    parsed: Option<Value>,
    /// The key paths of the values in error.
    removed: Vec<Vec<Seg>>,
}

/// Takes the value at `path` out of `v` (a mapping entry is removed; a list item is
/// replaced by null, so the indexes after it still name the same items).
fn remove_at(v: &mut Value, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = v;
    for seg in parents {
        let next = match (seg, cur) {
            (Seg::Key(k), Value::Mapping(m)) => m.get_mut(k.as_str()),
            (Seg::Index(i), Value::Sequence(s)) => s.get_mut(*i),
            _ => None,
        };
        let Some(next) = next else { return false };
        cur = next;
    }
    match (last, cur) {
        (Seg::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (Seg::Index(i), Value::Sequence(s)) if *i < s.len() => {
            s[*i] = Value::Null;
            true
        }
        _ => false,
    }
}

/// A typed-parse error located at its key (an unknown key: at that key, with a
/// suggestion), and that key's path.
fn serde_error(
    chain: &[Source],
    e: serde_path_to_error::Error<serde_yaml::Error>,
) -> (RecipeError, Vec<Seg>) {
    let mut path = diag::parse_path(&e.path().to_string());
    let msg = e.inner().to_string();
    let mut msg = msg
        .split_once(": ")
        .filter(|(prefix, _)| {
            !prefix.contains(' ')
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-[]".contains(c))
        })
        .map(|(_, rest)| rest.to_string())
        .unwrap_or(msg);
    if let Some(i) = msg.find(" at line ") {
        msg.truncate(i);
    }
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some((name, expected)) = rest.split_once('`') {
            let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            if path.last() != Some(&Seg::key(name)) {
                path.push(Seg::key(name));
            }
            msg = match did_you_mean(name, &candidates) {
                Some(c) => format!("unknown key `{name}`: did you mean `{c}`?"),
                None => format!(
                    "unknown key `{name}` (known keys: {})",
                    candidates.join(", ")
                ),
            };
        }
    }
    (locate_in_chain(chain, &path, humanize(&msg)), path)
}

/// Parses a recipe file's text, after refusing flow collections nested too deep for
/// the parser to handle in reasonable time.
fn parse_yaml(file: &Path, text: &str) -> Result<Value> {
    if let Some((line, column)) = crate::io::limits::yaml_too_deep(text) {
        return Err(RecipeErrors(vec![RecipeError {
            file: file.to_path_buf(),
            line,
            column,
            key: "(document)".into(),
            message: format!(
                "flow collections ([…] or {{…}}) nested more than {} deep: refused before parsing",
                crate::io::limits::MAX_YAML_NESTING
            ),
        }])
        .into());
    }
    serde_yaml::from_str(text).map_err(|e| yaml_error(file, text, &e))
}

/// A YAML syntax error as a located [`RecipeErrors`]. A duplicate key is reported at
/// its second occurrence (the parser points at the mapping that holds it).
fn yaml_error(file: &Path, text: &str, e: &serde_yaml::Error) -> anyhow::Error {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    let message = humanize(&e.to_string());
    let error = duplicate_key(file, text, line, column, &message).unwrap_or(RecipeError {
        file: file.to_path_buf(),
        line,
        column,
        key: "(document)".into(),
        message,
    });
    RecipeErrors(vec![error]).into()
}

/// `PATH: duplicate entry with key "K"` from the parser, whose mapping starts at
/// `line`:`column`: the error at the second `K:` of that mapping.
fn duplicate_key(
    file: &Path,
    text: &str,
    line: usize,
    column: usize,
    message: &str,
) -> Option<RecipeError> {
    let (prefix, rest) = match message.split_once(": duplicate entry with key \"") {
        Some((p, r)) => (Some(p), r),
        None => (None, message.strip_prefix("duplicate entry with key \"")?),
    };
    let key = rest.strip_suffix('"')?;
    let indent = column.saturating_sub(1);
    let mut seen = 0;
    for (i, l) in text.lines().enumerate().skip(line.saturating_sub(1)) {
        let trimmed = l.trim_start();
        let at = l.len() - trimmed.len();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if at < indent && i + 1 > line {
            break;
        }
        let unquoted = trimmed.trim_start_matches(['"', '\'']);
        if at == indent
            && unquoted.starts_with(key)
            && unquoted[key.len()..]
                .trim_start_matches(['"', '\''])
                .trim_start()
                .starts_with(':')
        {
            seen += 1;
            if seen == 2 {
                let path = match prefix {
                    Some(p) => format!("{p}.{key}"),
                    None => key.to_string(),
                };
                return Some(RecipeError {
                    file: file.to_path_buf(),
                    line: i + 1,
                    column: at + 1,
                    key: path,
                    message: format!(
                        "duplicate key `{key}` (first given at line {})",
                        first_line(text, line, indent, key)
                    ),
                });
            }
        }
    }
    None
}

fn first_line(text: &str, from: usize, indent: usize, key: &str) -> usize {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, l)| {
            l.len() - l.trim_start().len() == indent
                && l.trim_start()
                    .trim_start_matches(['"', '\''])
                    .starts_with(key)
        })
        .map(|(i, _)| i + 1)
        .unwrap_or(from)
}

/// The digest of a resolved recipe, with the values of secret variables masked: it is
/// published (a label, the provenance), and must not let anyone test guesses at them.
pub fn recipe_digest(recipe: &Recipe, secret_values: &[String]) -> Result<String> {
    let mut v = serde_json::to_value(recipe).context("serializing the recipe")?;
    crate::redact::mask_json(&mut v, secret_values);
    Ok(crate::io::hash::sha256_digest(
        &crate::io::hash::canonical_json(&v)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn errors(e: anyhow::Error) -> Vec<RecipeError> {
        e.downcast::<RecipeErrors>().expect("a recipe error").0
    }

    #[test]
    fn extends_merges_maps_appends_lists_overrides_scalars() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("base.qcow2"), b"").unwrap();
        write(t.path(), "parent.yaml", "name: parent\nbase: {path: base.qcow2}\ncustomize:\n  packages: [a]\n  hostname: p\noutput: {labels: {x: '1', y: '2'}}\n");
        let child = write(t.path(), "child.yaml", "extends: parent.yaml\nname: child\ncustomize:\n  packages: [b]\noutput: {labels: {y: '3'}}\n");
        let l = load(&child, &LoadOptions::default()).unwrap();
        let r = l.recipe;
        assert_eq!(r.name.as_deref(), Some("child"));
        assert_eq!(r.customize.packages, vec!["a", "b"]);
        assert_eq!(r.customize.hostname.as_deref(), Some("p"));
        assert_eq!(r.output.labels["x"], "1");
        assert_eq!(r.output.labels["y"], "3");
        assert_eq!(l.chain.len(), 2);
    }

    #[test]
    fn variables_are_values_and_never_structure() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("b.qcow2"), b"").unwrap();
        std::env::set_var("DISKFORGE_TEST_HOSTVAR", "from-env");
        let p = write(
            t.path(),
            "r.yaml",
            "vars: {size: 5G, host: from-vars, port: 8080}\nenv: [DISKFORGE_TEST_HOSTVAR]\nbase: {path: b.qcow2}\ndisk: {size: \"${size}\"}\ncustomize:\n  hostname: \"${DISKFORGE_TEST_HOSTVAR}\"\n  commands: [\"echo $${HOME} ${host}\"]\nttyd: {port: \"${port}\"}\n",
        );
        let r = load(&p, &LoadOptions::default()).unwrap().recipe;
        assert_eq!(r.disk.size.unwrap().to_string(), "5G");
        assert_eq!(r.customize.hostname.as_deref(), Some("from-env"));
        assert_eq!(r.customize.commands[0], "echo ${HOME} from-vars");
        assert_eq!(r.ttyd.port, 8080);
        let opts = LoadOptions {
            set: vec!["host=from-set".into(), "size=\"}\nextra: [injected]".into()],
            ..Default::default()
        };
        let e = load(&p, &opts).unwrap_err();
        // The value stays one string: a bad size, not a new key.
        let errs = errors(e);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "disk.size");
    }

    #[test]
    fn undefined_variable_is_located_at_its_key() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("b.qcow2"), b"").unwrap();
        let p = write(
            t.path(),
            "r.yaml",
            "base: {path: b.qcow2}\ncustomize:\n  hostname: \"${NOPE}\"\n",
        );
        let errs = errors(load(&p, &LoadOptions::default()).unwrap_err());
        assert_eq!(
            (errs[0].line, errs[0].column, errs[0].key.as_str()),
            (3, 3, "customize.hostname")
        );
        assert!(errs[0].message.contains("NOPE"));
    }

    #[test]
    fn every_error_of_a_file_is_reported_with_its_location() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("b.qcow2"), b"").unwrap();
        let p = write(
            t.path(),
            "r.yaml",
            "base: {path: b.qcow2}\ncustomize:\n  pakages: [a]\ndisk:\n  size: 10\nttyd:\n  port: 70000\n",
        );
        let errs = errors(load(&p, &LoadOptions::default()).unwrap_err());
        let got: Vec<String> = errs
            .iter()
            .map(|e| format!("{}:{} {}", e.line, e.column, e.key))
            .collect();
        assert_eq!(
            got,
            vec!["3:3 customize.pakages", "5:3 disk.size", "7:3 ttyd.port"],
            "{errs:?}"
        );
        assert!(errs[0].message.contains("did you mean `packages`?"));
        assert!(!errs.iter().any(|e| e.message.contains("u16")), "{errs:?}");
    }

    #[test]
    fn secret_variables_are_recorded() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("b.qcow2"), b"").unwrap();
        std::env::set_var("DISKFORGE_TEST_LAB_PASSWORD", "s3cr3t-v4lue");
        std::env::set_var("DISKFORGE_TEST_PLAIN", "plain-value");
        let p = write(
            t.path(),
            "r.yaml",
            "env: [DISKFORGE_TEST_LAB_PASSWORD, {name: DISKFORGE_TEST_PLAIN, secret: true}]\nbase: {path: b.qcow2}\ncustomize:\n  commands: [\"echo ${DISKFORGE_TEST_LAB_PASSWORD} ${DISKFORGE_TEST_PLAIN}\"]\n",
        );
        let l = load(&p, &LoadOptions::default()).unwrap();
        assert_eq!(l.secret_values, vec!["s3cr3t-v4lue", "plain-value"]);
    }
}
