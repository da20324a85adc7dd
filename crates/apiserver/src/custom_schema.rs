//! Structural OpenAPI v3 schemas of custom resources: defaulting, pruning of unknown
//! fields, and validation, as upstream applies a CRD's `openAPIV3Schema`.

use serde_json::{json, Map, Value};

use crate::error::Cause;

/// Applies `schema` to a custom object: fills defaults, drops fields the schema does not
/// declare (unless `x-kubernetes-preserve-unknown-fields`), and returns the causes of
/// every violation. `apiVersion`, `kind` and `metadata` at the root are always kept.
pub(crate) fn apply(schema: &Value, object: &mut Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(map) = object.as_object_mut() else {
        causes.push(Cause::new(
            "FieldValueTypeInvalid",
            "",
            "Invalid value: must be an object",
        ));
        return causes;
    };
    let kept: Map<String, Value> = ["apiVersion", "kind", "metadata"]
        .iter()
        .filter_map(|k| map.remove(*k).map(|v| (k.to_string(), v)))
        .collect();
    let mut body = Value::Object(std::mem::take(map));
    walk(schema, &mut body, "", &mut causes);
    let mut result = body.as_object().cloned().unwrap_or_default();
    result.extend(kept);
    *object = Value::Object(result);
    causes
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(schema: &Value, value: &mut Value, path: &str, causes: &mut Vec<Cause>) {
    if value.is_null() {
        if schema["nullable"] != json!(true) && !path.is_empty() {
            causes.push(Cause::new(
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: \"null\": {path} in body must be of type {}",
                    schema["type"].as_str().unwrap_or("object")
                ),
            ));
        }
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"] == json!(true);
    if let Some(expected) = schema["type"].as_str() {
        let actual = type_name(value);
        let ok = actual == expected
            || (expected == "number" && actual == "integer")
            || (int_or_string && (actual == "integer" || actual == "string"));
        if !ok {
            causes.push(Cause::new(
                "FieldValueTypeInvalid",
                path,
                format!("Invalid value: \"{actual}\": {path} in body must be of type {expected}: \"{actual}\""),
            ));
            return;
        }
    }
    if let Some(options) = schema["enum"].as_array() {
        if !options.contains(value) {
            let listed: Vec<String> = options.iter().map(|o| o.to_string()).collect();
            causes.push(Cause::new(
                "FieldValueNotSupported",
                path,
                format!(
                    "Unsupported value: {value}: supported values: {}",
                    listed.join(", ")
                ),
            ));
        }
    }
    match value {
        Value::Object(map) => walk_object(schema, map, path, causes),
        Value::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64() {
                if items.len() as u64 > max {
                    causes.push(Cause::new(
                        "FieldValueTooMany",
                        path,
                        format!("Too many: {}: must have at most {max} items", items.len()),
                    ));
                }
            }
            if let Some(min) = schema["minItems"].as_u64() {
                if (items.len() as u64) < min {
                    causes.push(Cause::invalid(
                        path,
                        &json!(items.len()),
                        &format!("{path} in body should have at least {min} items"),
                    ));
                }
            }
            if schema["items"].is_object() {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(&schema["items"], item, &format!("{path}[{i}]"), causes);
                }
            }
        }
        Value::String(s) => {
            if let Some(max) = schema["maxLength"].as_u64() {
                if s.chars().count() as u64 > max {
                    causes.push(Cause::new(
                        "FieldValueTooLong",
                        path,
                        format!("Too long: may not be more than {max} bytes"),
                    ));
                }
            }
            if let Some(min) = schema["minLength"].as_u64() {
                if (s.chars().count() as u64) < min {
                    causes.push(Cause::invalid(
                        path,
                        value,
                        &format!("{path} in body should be at least {min} chars long"),
                    ));
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema["minimum"].as_f64() {
                if x < min {
                    causes.push(Cause::invalid(
                        path,
                        value,
                        &format!("{path} in body should be greater than or equal to {min}"),
                    ));
                }
            }
            if let Some(max) = schema["maximum"].as_f64() {
                if x > max {
                    causes.push(Cause::invalid(
                        path,
                        value,
                        &format!("{path} in body should be less than or equal to {max}"),
                    ));
                }
            }
        }
        _ => {}
    }
}

fn walk_object(schema: &Value, map: &mut Map<String, Value>, path: &str, causes: &mut Vec<Cause>) {
    let properties = schema["properties"].as_object();
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == json!(true);
    let additional = &schema["additionalProperties"];
    if let Some(props) = properties {
        for (name, prop) in props {
            if !map.contains_key(name) {
                if let Some(default) = prop.get("default") {
                    map.insert(name.clone(), default.clone());
                }
            }
        }
    }
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let field = child(path, &key);
        let sub = properties.and_then(|p| p.get(&key));
        match (sub, additional) {
            (Some(sub), _) => {
                if let Some(v) = map.get_mut(&key) {
                    walk(sub, v, &field, causes);
                }
            }
            (None, Value::Object(_)) => {
                if let Some(v) = map.get_mut(&key) {
                    walk(additional, v, &field, causes);
                }
            }
            (None, Value::Bool(true)) => {}
            (None, _) if preserve => {}
            // Undeclared fields are pruned (and reported by fieldValidation).
            (None, _) => {
                map.remove(&key);
            }
        }
    }
    if let Some(required) = schema["required"].as_array() {
        for name in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(name) {
                causes.push(Cause::new(
                    "FieldValueRequired",
                    child(path, name),
                    "Required value",
                ));
            }
        }
    }
}

/// Checks that a CRD's schema is structural enough to be applied (every level typed).
pub(crate) fn check_structural(schema: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let typed = schema["type"].is_string()
        || schema["x-kubernetes-int-or-string"] == json!(true)
        || schema["x-kubernetes-preserve-unknown-fields"] == json!(true);
    if !typed {
        causes.push(
            Cause::required(format!("{path}.type"))
                .with_message("must not be empty for specified object fields"),
        );
    }
    if let Some(props) = schema["properties"].as_object() {
        for (name, prop) in props {
            causes.extend(check_structural(
                prop,
                &format!("{path}.properties[{name}]"),
            ));
        }
    }
    if schema["items"].is_object() {
        causes.extend(check_structural(&schema["items"], &format!("{path}.items")));
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "minLength": 1},
                        "replicas": {"type": "integer", "minimum": 0, "default": 1},
                        "mode": {"type": "string", "enum": ["a", "b"]},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "ports": {"type": "array", "items": {"type": "integer"}}
                    }
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
            }
        })
    }

    #[test]
    fn defaults_prunes_and_keeps_root_metadata() {
        let mut obj = json!({
            "apiVersion": "x.io/v1", "kind": "Thing", "metadata": {"name": "t"},
            "spec": {"image": "busybox", "extra": 1, "labels": {"a": "b"}, "free": {"anything": {"goes": true}}},
            "unknownTop": true
        });
        let causes = apply(&schema(), &mut obj);
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(obj["spec"]["replicas"], 1);
        assert!(obj["spec"].get("extra").is_none());
        assert!(obj.get("unknownTop").is_none());
        assert_eq!(obj["spec"]["free"]["anything"]["goes"], true);
        assert_eq!(obj["metadata"]["name"], "t");
    }

    #[test]
    fn reports_type_enum_required_and_range_violations() {
        let mut obj =
            json!({"spec": {"replicas": -1, "mode": "c", "ports": [1, "x"], "labels": {"a": 1}}});
        let causes = apply(&schema(), &mut obj);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        for expected in [
            "spec.replicas",
            "spec.mode",
            "spec.ports[1]",
            "spec.labels.a",
            "spec.image",
        ] {
            assert!(fields.contains(&expected), "{expected} not in {fields:?}");
        }
    }

    #[test]
    fn structural_check_finds_untyped_levels() {
        let causes = check_structural(
            &json!({"type": "object", "properties": {"spec": {"properties": {}}}}),
            "spec.versions[0].schema.openAPIV3Schema",
        );
        assert_eq!(causes.len(), 1);
        assert!(causes[0].field.ends_with("properties[spec].type"));
    }
}
