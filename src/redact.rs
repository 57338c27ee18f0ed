//! Secrets known to the whole process (resolved passwords and credentials, secret recipe
//! variables): every message diskforge writes — logs, events, errors, plans — passes
//! through [`apply`], which replaces them by `***`.

use std::sync::Mutex;

/// The text shown in place of a secret.
pub const REDACTED: &str = "***";

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Adds a value that must never be shown, anywhere. Values shorter than 4 characters
/// are not searched for (they would blank out ordinary words); diskforge never writes
/// them itself either.
pub fn register(value: &str) {
    if value.len() >= 4 {
        let mut s = SECRETS.lock().expect("secret list lock");
        if !s.iter().any(|x| x == value) {
            s.push(value.to_string());
        }
    }
}

/// Replaces every occurrence of each secret (`extra` and the registered ones) by `***`,
/// longest first so a secret containing another is replaced whole.
pub fn apply(text: &str, extra: &[String]) -> String {
    let global = SECRETS.lock().expect("secret list lock").clone();
    let mut all: Vec<&String> = extra
        .iter()
        .chain(global.iter())
        .filter(|s| !s.is_empty())
        .collect();
    if all.is_empty() {
        return text.to_string();
    }
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for s in all {
        out = out.replace(s.as_str(), REDACTED);
    }
    out
}

/// Replaces every occurrence of each of `secrets` in the strings of `v` (object keys
/// too) by `***`, longest first. Digests and keys that are published (the recipe digest,
/// the build key) are computed from values masked this way, so that no published hash
/// depends on a secret's value: otherwise anyone could test guesses at a weak one.
pub fn mask_json(v: &mut serde_json::Value, secrets: &[String]) {
    let mut all: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    if all.is_empty() {
        return;
    }
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    fn walk(v: &mut serde_json::Value, all: &[&String]) {
        let mask = |text: &str| {
            let mut out = text.to_string();
            for s in all {
                out = out.replace(s.as_str(), REDACTED);
            }
            out
        };
        match v {
            serde_json::Value::String(s) => *s = mask(s),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, all)),
            serde_json::Value::Object(m) => {
                let old = std::mem::take(m);
                for (k, mut x) in old {
                    walk(&mut x, all);
                    m.insert(mask(&k), x);
                }
            }
            _ => {}
        }
    }
    walk(v, &all);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_are_masked_in_strings_and_keys() {
        let mut v = serde_json::json!({
            "cmd": ["echo s3cret-long and s3cret", 7],
            "env": {"s3cret": "x"},
        });
        mask_json(
            &mut v,
            &["s3cret".into(), "s3cret-long".into(), String::new()],
        );
        assert_eq!(
            v,
            serde_json::json!({"cmd": ["echo *** and ***", 7], "env": {"***": "x"}})
        );
    }

    #[test]
    fn registered_and_given_secrets_are_replaced_longest_first() {
        register("hunter2-registered");
        assert_eq!(
            apply(
                "a hunter2-registered b pw c pw-long",
                &["pw".into(), "pw-long".into()]
            ),
            "a *** b *** c ***"
        );
        register("abc");
        assert_eq!(apply("abc", &[]), "abc", "too short to be searched for");
    }
}
