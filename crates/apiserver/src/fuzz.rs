//! Fuzz entry points for the API server's parsers of request bodies (protobuf, strategic
//! merge patch, JSON patch and merge patch), driven by `crates/fuzz`. Each takes
//! arbitrary bytes, must never panic, and asserts the properties the code promises, so a
//! panic here is a defect of the server, never of the input.

use serde_json::{json, Value};

use crate::patch::{self, PatchSchema};
use crate::protobuf;

/// A protobuf request body, as the server receives one: with the envelope's own type,
/// and with the type a URL would give when the envelope names none. Bytes without the
/// magic are tried behind it too, so that mutations reach the envelope parser.
pub fn fuzz_protobuf(data: &[u8]) {
    decode_body(data);
    if !data.starts_with(protobuf::MAGIC) {
        let mut body = protobuf::MAGIC.to_vec();
        body.extend_from_slice(data);
        decode_body(&body);
    }
}

fn decode_body(body: &[u8]) {
    for (group, version, kind) in [
        ("", "", ""),
        ("", "v1", "Pod"),
        ("apps", "v1", "Deployment"),
    ] {
        if let Ok(Value::Object(object)) = protobuf::decode(body, group, version, kind) {
            // The rest of the server reads the type of a body from these two fields.
            assert!(
                object.get("apiVersion").is_some_and(Value::is_string)
                    && object.get("kind").is_some_and(Value::is_string),
                "a decoded object without apiVersion and kind: {}",
                Value::Object(object)
            );
        }
    }
}

/// The parts of a patch input: `KIND\0ORIGINAL\0PATCH`, where KIND is `v1/Pod`,
/// `apps/v1/Deployment` or empty (no schema, as for custom resources) and the other two
/// are JSON documents.
fn patch_parts(data: &[u8]) -> Option<(&[u8], Value, Value)> {
    let mut parts = data.splitn(3, |&b| b == 0);
    let kind = parts.next()?;
    let original = serde_json::from_slice(parts.next()?).ok()?;
    let patch = serde_json::from_slice(parts.next()?).ok()?;
    Some((kind, original, patch))
}

fn schema_for(kind: &[u8]) -> Option<patch::SchemaNode<'static>> {
    let kind = std::str::from_utf8(kind).ok()?;
    let (group, version, kind) = match kind.split('/').collect::<Vec<_>>()[..] {
        [version, kind] => ("", version, kind),
        [group, version, kind] => (group, version, kind),
        _ => return None,
    };
    PatchSchema::builtin().for_kind(group, version, kind)
}

/// Strategic merge patch (`KIND\0ORIGINAL\0PATCH`): a result is always an object; an empty
/// patch changes nothing; and without a schema or directives it is a JSON merge patch.
pub fn fuzz_strategic_merge_patch(data: &[u8]) {
    let Some((kind, original, patch_value)) = patch_parts(data) else {
        return;
    };
    let schema = schema_for(kind);
    if let Ok(result) = patch::strategic::apply(&original, &patch_value, schema) {
        assert!(result.is_object(), "a strategic merge patch made {result}");
    }
    if original.is_object() {
        assert_eq!(
            patch::strategic::apply(&original, &json!({}), schema).as_ref(),
            Ok(&original),
            "an empty strategic merge patch changed {original}"
        );
    }
    if patch_value.is_object()
        && !has_directive(&patch_value)
        && !has_null_in_list(&patch_value, false)
    {
        // Documented difference: added values are cleaned of `null`s even inside lists,
        // which RFC 7396 copies verbatim; inputs with those are left out above.
        assert_eq!(
            patch::strategic::apply(&original, &patch_value, None),
            Ok(patch::merge::apply(&original, &patch_value)),
            "without a schema, {patch_value} on {original} is not a JSON merge patch"
        );
    }
}

/// Whether a key that strategic merge patch reads as a directive occurs anywhere.
fn has_directive(value: &Value) -> bool {
    match value {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.starts_with('$') || has_directive(v)),
        Value::Array(items) => items.iter().any(has_directive),
        _ => false,
    }
}

/// Whether an object inside a list has a `null` field, at any depth.
fn has_null_in_list(value: &Value, in_list: bool) -> bool {
    match value {
        Value::Object(map) => map
            .values()
            .any(|v| (in_list && v.is_null()) || has_null_in_list(v, in_list)),
        Value::Array(items) => items.iter().any(|v| has_null_in_list(v, true)),
        _ => false,
    }
}

/// JSON patch and JSON merge patch (`ORIGINAL\0OPERATIONS`, the kind part of a
/// strategic input is accepted and ignored): no operations change nothing, and the
/// result of a successful patch passes a `test` against itself.
pub fn fuzz_json_patch(data: &[u8]) {
    let mut parts: Vec<&[u8]> = data.splitn(3, |&b| b == 0).collect();
    if parts.len() == 3 {
        parts.remove(0);
    }
    let [original, ops] = parts[..] else {
        return;
    };
    let (Ok(original), Ok(ops)) = (
        serde_json::from_slice::<Value>(original),
        serde_json::from_slice::<Value>(ops),
    ) else {
        return;
    };
    let _ = patch::merge::apply(&original, &ops);
    assert_eq!(
        patch::json::apply(&original, &json!([])).as_ref(),
        Ok(&original)
    );
    if let Ok(result) = patch::json::apply(&original, &ops) {
        let test = json!([{"op": "test", "path": "", "value": result}]);
        assert_eq!(
            patch::json::apply(&result, &test).as_ref(),
            Ok(&result),
            "{ops} on {original} gave {result}, which fails a test against itself"
        );
    }
}
