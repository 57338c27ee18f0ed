//! Diagnostics for recipe files: errors that name the file, line, column and key, all of
//! a file's errors at once, and messages in the recipe's language (sizes, modes, lists)
//! rather than in the parser's (u16, sequence, struct).

use std::fmt;
use std::path::{Path, PathBuf};

/// One invalid value or key: where, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {key}: {message}", file.display())]
pub struct RecipeError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted key path (`customize.files[0].mode`), or `(document)`.
    pub key: String,
    pub message: String,
}

/// Every error found in a recipe (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeErrors(pub Vec<RecipeError>);

impl fmt::Display for RecipeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for RecipeErrors {}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl Seg {
    pub fn key(k: &str) -> Seg {
        Seg::Key(k.to_string())
    }
}

/// `customize.files[0].mode`.
pub fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    if s.is_empty() {
        "(document)".into()
    } else {
        s
    }
}

/// Splits `a.b[2].c` into segments.
pub fn parse_path(s: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in s.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            if i > 0 {
                out.push(Seg::key(&rest[..i]));
            }
            rest = &rest[i..];
            while let Some(r) = rest.strip_prefix('[') {
                let Some((n, after)) = r.split_once(']') else {
                    break;
                };
                if let Ok(n) = n.parse() {
                    out.push(Seg::Index(n));
                }
                rest = after;
            }
        } else {
            out.push(Seg::key(rest));
        }
    }
    out
}

/// A line of YAML: its indentation with list dashes counted as indentation, the text
/// after it, and where the list dash was when the line starts an item.
struct Line<'a> {
    indent: usize,
    text: &'a str,
    dash: Option<usize>,
}

fn lines(text: &str) -> Vec<Option<Line<'_>>> {
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            if t.is_empty() || t.starts_with('#') {
                return None;
            }
            let mut indent = l.len() - t.len();
            let mut rest = t;
            let mut dash = None;
            while let Some(r) =
                rest.strip_prefix("- ")
                    .or(if rest == "-" { Some("") } else { None })
            {
                dash.get_or_insert(indent);
                let r2 = r.trim_start();
                indent += 2 + (r.len() - r2.len());
                rest = r2;
                if rest.is_empty() {
                    break;
                }
            }
            Some(Line {
                indent,
                text: rest,
                dash,
            })
        })
        .collect()
}

fn starts_with_key(text: &str, key: &str) -> bool {
    [key.to_string(), format!("\"{key}\""), format!("'{key}'")]
        .iter()
        .any(|k| {
            text.strip_prefix(k.as_str())
                .is_some_and(|r| r.trim_start().starts_with(':'))
        })
}

/// Line and column (1-based) of the key at `path` in YAML `text`: an indentation-aware
/// walk for block style, a search within the line for flow style (`{a: 1, b: [x]}`).
/// Falls back to the deepest part of the path that was found.
pub fn locate(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    let ls = lines(text);
    let mut start = 0usize;
    let mut end = ls.len();
    let mut parent: Option<usize> = None;
    let mut found: Option<(usize, usize)> = None;
    // Set once the walk enters a flow collection on one line.
    let mut flow_line: Option<usize> = None;
    for seg in path {
        if let Some(li) = flow_line {
            if let Seg::Key(k) = seg {
                let raw = text.lines().nth(li)?;
                let from = found.map(|(_, c)| c).unwrap_or(0);
                if let Some(pos) = raw[from.min(raw.len())..].find(&format!("{k}:")) {
                    found = Some((li + 1, from + pos + 1));
                }
            }
            continue;
        }
        match seg {
            Seg::Key(k) => {
                let block = (start..end)
                    .filter_map(|i| ls[i].as_ref().map(|l| (i, l)))
                    .find(|(_, l)| parent.is_none_or(|p| l.indent > p))
                    .map(|(_, l)| l.indent);
                let Some(block) = block else { break };
                let hit = (start..end).find_map(|i| {
                    let l = ls[i].as_ref()?;
                    (l.indent == block && starts_with_key(l.text, k)).then_some((i, l))
                });
                let Some((i, l)) = hit else { break };
                found = Some((i + 1, l.indent + 1));
                let after = l.text.split_once(':').map(|(_, v)| v.trim()).unwrap_or("");
                if after.starts_with('{') || after.starts_with('[') {
                    flow_line = Some(i);
                    continue;
                }
                let key_indent = l.indent;
                let child_end = (i + 1..end)
                    .find(|j| {
                        ls[*j].as_ref().is_some_and(|c| {
                            c.indent <= key_indent && c.dash.is_none_or(|d| d < key_indent)
                        })
                    })
                    .unwrap_or(end);
                start = i + 1;
                end = child_end;
                parent = Some(key_indent);
            }
            Seg::Index(n) => {
                let items: Vec<usize> = (start..end)
                    .filter(|i| ls[*i].as_ref().is_some_and(|l| l.dash.is_some()))
                    .collect();
                let first_dash = items.first().and_then(|i| ls[*i].as_ref()?.dash);
                let items: Vec<usize> = items
                    .into_iter()
                    .filter(|i| ls[*i].as_ref().and_then(|l| l.dash) == first_dash)
                    .collect();
                let Some(&i) = items.get(*n) else { break };
                let l = ls[i].as_ref()?;
                found = Some((i + 1, l.indent + 1));
                end = items.get(n + 1).copied().unwrap_or(end);
                start = i;
                parent = first_dash;
            }
        }
    }
    found
}

/// Turns serde's and the YAML parser's wording into the recipe's: no Rust type names.
pub fn humanize(msg: &str) -> String {
    let mut m = msg.to_string();
    if let Some(i) = m.find(" at line ") {
        m.truncate(i);
    }
    let expected_words = [
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number"),
        ("u64", "a whole number"),
        ("i64", "a whole number"),
        ("a sequence", "a list"),
        ("a map", "a mapping of keys to values"),
        ("a boolean", "true or false"),
        ("a string", "text"),
        ("a borrowed string", "text"),
    ];
    if let Some(rest) = m.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            let expected = expected_words
                .iter()
                .find(|(w, _)| *w == expected)
                .map(|(_, h)| h.to_string())
                .or_else(|| {
                    expected
                        .strip_prefix("struct ")
                        .map(|_| "a mapping of keys to values".to_string())
                })
                .unwrap_or_else(|| expected.to_string());
            let found = found
                .replace("integer ", "the number ")
                .replace("floating point ", "the number ")
                .replace("string ", "the text ")
                .replace("sequence", "a list")
                .replace("map", "a mapping")
                .replace("boolean ", "");
            return format!("expected {expected}, found {found}");
        }
    }
    if let Some(rest) = m.strip_prefix("invalid value: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            if let Some((_, h)) = expected_words.iter().find(|(w, _)| *w == expected) {
                let n = found.trim_start_matches("integer ").replace('`', "");
                return format!("{n} is out of range: expected {h}");
            }
        }
    }
    if let Some(rest) = m.strip_prefix("unknown variant `") {
        if let Some((name, expected)) = rest.split_once("`, expected ") {
            let choices: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            let choices = if choices.is_empty() {
                vec![expected]
            } else {
                choices
            };
            return match did_you_mean(name, &choices) {
                Some(c) => format!(
                    "unknown value `{name}`: did you mean `{c}`? (one of {})",
                    choices.join(", ")
                ),
                None => format!(
                    "unknown value `{name}`: expected one of {}",
                    choices.join(", ")
                ),
            };
        }
    }
    m
}

/// The closest candidate, when one is close enough to be a typo.
pub fn did_you_mean<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(name, c), *c))
        .filter(|(s, _)| *s > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// A located error in `file` (whose text is `text`) at `path`.
pub fn at(file: &Path, text: &str, path: &[Seg], message: impl Into<String>) -> RecipeError {
    let (line, column) = locate(text, path).unwrap_or((1, 1));
    RecipeError {
        file: file.to_path_buf(),
        line,
        column,
        key: path_string(path),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# a recipe\nbase: {path: b.qcow2, arch: mips}\ncustomize:\n  packages: [a]\n  files:\n    - path: /etc/motd\n      mode: \"999\"\n    - path: /etc/x\n      source: x\n  users:\n    -\n      name: lab\nttyd:\n  port: 70000\n";

    fn at_path(p: &str) -> Option<(usize, usize)> {
        locate(DOC, &parse_path(p))
    }

    #[test]
    fn keys_are_located_in_block_and_flow_style() {
        assert_eq!(at_path("base"), Some((2, 1)));
        assert_eq!(at_path("base.arch"), Some((2, 23)));
        assert_eq!(at_path("customize.packages"), Some((4, 3)));
        assert_eq!(at_path("customize.files[0].mode"), Some((7, 7)));
        assert_eq!(at_path("customize.files[1].source"), Some((9, 7)));
        assert_eq!(at_path("customize.files[1]"), Some((8, 7)));
        assert_eq!(at_path("customize.users[0].name"), Some((12, 7)));
        assert_eq!(at_path("ttyd.port"), Some((14, 3)));
        // Missing keys fall back to the deepest part found.
        assert_eq!(at_path("ttyd.nope"), Some((13, 1)));
        assert_eq!(at_path("nothing"), None);
    }

    #[test]
    fn paths_round_trip() {
        let p = parse_path("customize.files[0].mode");
        assert_eq!(
            p,
            vec![
                Seg::key("customize"),
                Seg::key("files"),
                Seg::Index(0),
                Seg::key("mode")
            ]
        );
        assert_eq!(path_string(&p), "customize.files[0].mode");
        assert_eq!(path_string(&[]), "(document)");
    }

    #[test]
    fn messages_speak_the_recipe_language() {
        assert_eq!(
            humanize("invalid type: string \"seventy\", expected u16"),
            "expected a whole number from 0 to 65535, found the text \"seventy\""
        );
        assert_eq!(
            humanize("invalid value: integer `70000`, expected u16"),
            "70000 is out of range: expected a whole number from 0 to 65535"
        );
        assert_eq!(
            humanize("invalid type: string \"tmux\", expected a sequence"),
            "expected a list, found the text \"tmux\""
        );
        assert_eq!(
            humanize("unknown variant `lz4`, expected one of `gzip`, `zstd`, `none`"),
            "unknown value `lz4`: expected one of gzip, zstd, none"
        );
        assert!(
            humanize("unknown variant `gzp`, expected one of `gzip`, `zstd`, `none`")
                .contains("did you mean `gzip`")
        );
    }
}
