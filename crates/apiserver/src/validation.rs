//! Checks on what clients send that no typed decoder does for us: fields the kind does
//! not have (for `fieldValidation`), and duplicate JSON fields.

use serde_json::Value;

/// Paths of fields present in `sent` but absent after the typed round trip, as upstream
/// writes them (`spec.containers[0].imagee`).
pub(crate) fn unknown_fields(sent: &Value, normalized: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(sent, normalized, String::new(), &mut out);
    out
}

fn walk(sent: &Value, kept: &Value, path: String, out: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match b.get(key) {
                    Some(k) => walk(value, k, child, out),
                    // Nulls are dropped by typed decoding without being unknown.
                    None if value.is_null() => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                walk(x, y, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The first object key that occurs twice in one JSON object of `body`, if any.
/// serde_json keeps the last value silently; upstream refuses such bodies in Strict mode
/// and we refuse them always, since the client's intent is unclear.
pub(crate) fn duplicate_field(body: &[u8]) -> Option<String> {
    use std::collections::HashSet;
    let text = std::str::from_utf8(body).ok()?;
    let mut stack: Vec<Option<HashSet<String>>> = Vec::new();
    let mut chars = text.char_indices().peekable();
    let mut expecting_key = false;
    while let Some((_, c)) = chars.next() {
        match c {
            '{' => {
                stack.push(Some(HashSet::new()));
                expecting_key = true;
            }
            '[' => {
                stack.push(None);
                expecting_key = false;
            }
            '}' | ']' => {
                stack.pop();
                expecting_key = false;
            }
            ',' => expecting_key = matches!(stack.last(), Some(Some(_))),
            '"' => {
                let mut s = String::new();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, e)) = chars.next() {
                                s.push('\\');
                                s.push(e);
                            }
                        }
                        '"' => break,
                        other => s.push(other),
                    }
                }
                if expecting_key {
                    if let Some(Some(keys)) = stack.last_mut() {
                        if !keys.insert(s.clone()) {
                            return Some(s);
                        }
                    }
                    expecting_key = false;
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_unknown_fields_with_paths() {
        let sent = json!({"spec": {"containers": [{"name": "a", "imagee": "x"}], "bogus": 1}, "metadata": {"name": "p"}});
        let kept = json!({"spec": {"containers": [{"name": "a"}]}, "metadata": {"name": "p"}});
        assert_eq!(
            unknown_fields(&sent, &kept),
            ["spec.bogus", "spec.containers[0].imagee"]
        );
    }

    #[test]
    fn finds_duplicate_keys_only_within_one_object() {
        assert_eq!(duplicate_field(br#"{"a":1,"b":{"a":2}}"#), None);
        assert_eq!(
            duplicate_field(br#"{"a":1,"b":2,"a":3}"#).as_deref(),
            Some("a")
        );
        assert_eq!(duplicate_field(br#"{"l":[{"x":1},{"x":2}]}"#), None);
        assert_eq!(
            duplicate_field(br#"{"s":"a\"b","s":1}"#).as_deref(),
            Some("s")
        );
        assert_eq!(duplicate_field(br#"{"v":"{\"k\":1,\"k\":2}"}"#), None);
    }
}
