//! docs/events.md as a contract: every `--json-events` line a test sees is checked
//! against the event reference, field by field and type by type.

use std::collections::BTreeMap;

/// What docs/events.md says a field holds.
#[derive(Debug, Clone)]
pub struct FieldDoc {
    /// The JSON types it may have (`string`, `integer`, `number`, `boolean`, `null`,
    /// `array`).
    pub types: Vec<String>,
}

/// docs/events.md read as event name → field → its documented types, with the fields
/// of every event included in each. `Fields as in \`other\`` inherits other's fields.
pub fn documented() -> BTreeMap<String, BTreeMap<String, FieldDoc>> {
    let doc = std::fs::read_to_string(super::repo_root().join("docs/events.md")).unwrap();
    let mut common: BTreeMap<String, FieldDoc> = BTreeMap::new();
    let mut events: BTreeMap<String, BTreeMap<String, FieldDoc>> = BTreeMap::new();
    let mut inherits: Vec<(String, String)> = Vec::new();
    // None: outside any field table section; Some(""): the fields of every event.
    let mut section: Option<String> = None;
    for line in doc.lines() {
        if let Some(name) = line.strip_prefix("### `").and_then(|l| l.strip_suffix('`')) {
            section = Some(name.to_string());
            events.entry(name.to_string()).or_default();
            continue;
        }
        if line.starts_with("## ") {
            section = (line == "## Fields of every event").then(String::new);
            continue;
        }
        let Some(sec) = &section else { continue };
        if let Some(i) = line.find("Fields as in `") {
            let other = line[i + "Fields as in `".len()..]
                .split('`')
                .next()
                .unwrap();
            inherits.push((sec.clone(), other.to_string()));
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let name = cells[1].trim_matches('`').to_string();
        let types = cells[2]
            .split(" or ")
            .map(|t| t.trim().to_string())
            .collect::<Vec<_>>();
        for t in &types {
            assert!(
                ["string", "integer", "number", "boolean", "null", "array"].contains(&t.as_str()),
                "docs/events.md: field {name} of {sec:?} has the unknown type {t:?}"
            );
        }
        let field = FieldDoc { types };
        if sec.is_empty() {
            common.insert(name, field);
        } else {
            events.get_mut(sec).unwrap().insert(name, field);
        }
    }
    for (event, other) in inherits {
        let fields = events[&other].clone();
        events.get_mut(&event).unwrap().extend(fields);
    }
    assert!(common.contains_key("event") && common.contains_key("v"));
    for fields in events.values_mut() {
        fields.extend(common.clone());
    }
    events
}

fn type_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(n) if n.is_f64() => "number",
        serde_json::Value::Number(_) => "integer",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Checks every event line (a line starting with `{`) of `stderr` against
/// docs/events.md: version 1, a documented event, only documented fields, each of a
/// documented type (an integer is also a `number`). Returns how many lines it checked.
pub fn check(stderr: &[u8]) -> usize {
    let doc = documented();
    let mut checked = 0;
    for line in String::from_utf8_lossy(stderr).lines() {
        if !line.starts_with('{') {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let name = v["event"]
            .as_str()
            .unwrap_or_else(|| panic!("no event: {line}"));
        assert_eq!(v["v"], 1, "{line}");
        let fields = doc
            .get(name)
            .unwrap_or_else(|| panic!("event {name} is not in docs/events.md: {line}"));
        for (key, value) in v.as_object().unwrap() {
            let f = fields.get(key).unwrap_or_else(|| {
                panic!("field {key} of event {name} is not in docs/events.md: {line}")
            });
            let t = type_of(value);
            let ok = f
                .types
                .iter()
                .any(|d| d == t || (d == "number" && t == "integer"));
            assert!(
                ok,
                "field {key} of event {name} is {t}, docs/events.md says {:?}: {line}",
                f.types
            );
        }
        checked += 1;
    }
    checked
}

/// How many `blob` events of `stderr` have `"action":"ACTION"` (`uploaded`, `mounted`,
/// `skipped`).
pub fn blob_actions(stderr: &[u8], action: &str) -> usize {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.contains("\"blob\"") && l.contains(&format!("\"action\":\"{action}\"")))
        .count()
}

/// The blobs of a push to another repository of the same registry were all mounted
/// (`mounted` of them), none uploaded.
pub fn assert_mounted_not_uploaded(stderr: &[u8], mounted: usize) {
    assert_eq!(
        blob_actions(stderr, "mounted"),
        mounted,
        "{}",
        String::from_utf8_lossy(stderr)
    );
    assert_eq!(blob_actions(stderr, "uploaded"), 0);
}

/// The numeric `field` of every `event` event of `stderr`, in order.
pub fn numbers(stderr: &str, event: &str, field: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .filter_map(|v| v[field].as_u64())
        .collect()
}

/// Every `event` event of `stderr`, in order.
pub fn named(stderr: &[u8], event: &str) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}
