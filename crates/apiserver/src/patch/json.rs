//! JSON patch (RFC 6902, `application/json-patch+json`).

use json_patch::PatchOperation;
use serde::Deserialize;
use serde_json::Value;

use super::error::{json_type, PatchError};

/// The most operations one patch may carry; the Kubernetes API server has the same limit
/// so that a request cannot make it spend unbounded time.
pub(crate) const MAX_OPERATIONS: usize = 10_000;

/// Applies a JSON patch given as its JSON document (an array of operations). Either every
/// operation applies or the original is returned unchanged through the error.
pub(crate) fn apply(original: &Value, patch_ops: &Value) -> Result<Value, PatchError> {
    let ops = parse(patch_ops)?;
    let mut doc = original.clone();
    // Not `json_patch::patch`: on a failed operation it undoes the ones before, and its
    // undo panics on some patches (a `copy` then a `move` to an invalid path, found by
    // the fuzz target `json_patch`). The copy is thrown away on failure anyway.
    json_patch::patch_unsafe(&mut doc, &ops).map_err(|err| PatchError::JsonPatchFailed {
        index: err.operation,
        op: ops.get(err.operation).map_or("?", op_name),
        path: err.path.as_str().to_owned(),
        reason: err.kind.to_string(),
    })?;
    Ok(doc)
}

/// Decodes the operations one by one so that an error can name the bad one.
pub(crate) fn parse(patch_ops: &Value) -> Result<Vec<PatchOperation>, PatchError> {
    let Value::Array(items) = patch_ops else {
        return Err(PatchError::Malformed {
            path: "<root>".to_owned(),
            message: format!(
                "a JSON patch must be an array of operations, got {}",
                json_type(patch_ops)
            ),
        });
    };
    if items.len() > MAX_OPERATIONS {
        return Err(PatchError::TooManyOperations {
            count: items.len(),
            limit: MAX_OPERATIONS,
        });
    }
    items
        .iter()
        .enumerate()
        .map(|(i, op)| {
            PatchOperation::deserialize(op).map_err(|err| PatchError::Malformed {
                path: format!("operation {i}"),
                message: err.to_string(),
            })
        })
        .collect()
}

fn op_name(op: &PatchOperation) -> &'static str {
    match op {
        PatchOperation::Add(_) => "add",
        PatchOperation::Remove(_) => "remove",
        PatchOperation::Replace(_) => "replace",
        PatchOperation::Move(_) => "move",
        PatchOperation::Copy(_) => "copy",
        PatchOperation::Test(_) => "test",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment() -> Value {
        json!({
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "web", "image": "nginx:1.25"},
                {"name": "log", "image": "fluentd"}
            ]}}}
        })
    }

    #[test]
    fn applies_all_operation_kinds() {
        let patch = json!([
            {"op": "test", "path": "/spec/replicas", "value": 1},
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "add", "path": "/metadata/labels/tier", "value": "front"},
            {"op": "remove", "path": "/spec/template/spec/containers/1"},
            {"op": "copy", "from": "/metadata/labels/app", "path": "/metadata/labels/copy"},
            {"op": "move", "from": "/metadata/labels/copy", "path": "/metadata/labels/moved"},
            {"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "side"}},
            {"op": "add", "path": "/metadata/annotations~1x", "value": "escaped"}
        ]);
        let out = apply(&deployment(), &patch).expect("patch applies");
        assert_eq!(out["spec"]["replicas"], json!(3));
        assert_eq!(
            out["metadata"]["labels"],
            json!({"app": "web", "tier": "front", "moved": "web"})
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "web", "image": "nginx:1.25"}, {"name": "side"}])
        );
        assert_eq!(out["metadata"]["annotations/x"], json!("escaped"));
    }

    #[test]
    fn failure_names_the_operation_and_leaves_nothing_half_done() {
        let patch = json!([
            {"op": "replace", "path": "/spec/replicas", "value": 5},
            {"op": "test", "path": "/metadata/name", "value": "other"}
        ]);
        let err = apply(&deployment(), &patch).expect_err("test op fails");
        assert!(
            matches!(
                err,
                PatchError::JsonPatchFailed {
                    index: 1,
                    op: "test",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.http_status(), 422);
        assert!(
            err.to_string()
                .contains("operation 1 (test /metadata/name)"),
            "{err}"
        );

        let err = apply(
            &deployment(),
            &json!([{"op": "remove", "path": "/spec/nothing"}]),
        )
        .expect_err("missing path");
        assert!(
            err.to_string()
                .contains("operation 0 (remove /spec/nothing)"),
            "{err}"
        );
    }

    #[test]
    fn malformed_patches_are_bad_requests() {
        let err = apply(&deployment(), &json!({"op": "add"})).expect_err("not an array");
        assert_eq!(err.http_status(), 400);
        let err = apply(
            &deployment(),
            &json!([{"op": "add", "path": "/a", "value": 1}, {"op": "frobnicate", "path": "/a"}]),
        )
        .expect_err("unknown op");
        assert!(
            matches!(&err, PatchError::Malformed { path, .. } if path == "operation 1"),
            "{err:?}"
        );
        let err = apply(
            &deployment(),
            &json!([{"op": "add", "path": "no-slash", "value": 1}]),
        )
        .expect_err("bad pointer");
        assert_eq!(err.http_status(), 400, "{err}");
    }

    /// Found by the fuzz target `json_patch`: json-patch's undo of the `copy` panicked
    /// once the `move` failed.
    #[test]
    fn a_failure_after_a_copy_is_an_error_not_a_panic() {
        let patch = json!([
            {"op": "copy", "from": "/metadata/labels", "path": "/metadata/labels/copy"},
            {"op": "move", "from": "/metadata/labels/copy", "path": "/]/"}
        ]);
        let err = apply(&deployment(), &patch).expect_err("the move has nowhere to go");
        assert!(
            matches!(
                err,
                PatchError::JsonPatchFailed {
                    index: 1,
                    op: "move",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn operation_count_is_limited() {
        let ops: Vec<Value> = (0..=MAX_OPERATIONS)
            .map(|_| json!({"op": "test", "path": "/metadata/name", "value": "web"}))
            .collect();
        let err = apply(&deployment(), &Value::Array(ops)).expect_err("too many");
        assert_eq!(err.http_status(), 413);
    }
}
