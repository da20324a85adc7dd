//! Applies a PATCH body of any of the patch types to the stored object.

use serde_json::Value;

use crate::body;
use crate::error::{ApiError, ApiResult};
use crate::patch;
use crate::registry::ResourceType;

fn patch_error(err: patch::PatchError) -> ApiError {
    match err.http_status() {
        400 => ApiError::bad_request(err.to_string()),
        413 => ApiError::new(413, "RequestEntityTooLarge", err.to_string()),
        _ => ApiError::new(422, "Invalid", err.to_string()),
    }
}

/// Applies `patch` (of `content_type`) to `current`, using the kind's schema for
/// strategic merge patch.
pub(crate) fn apply_patch(
    resource: &ResourceType,
    content_type: &str,
    current: &Value,
    patch_body: &[u8],
) -> ApiResult<Value> {
    let schema = patch::schema::PatchSchema::builtin().for_kind(
        &resource.group,
        &resource.version,
        &resource.kind,
    );
    apply_with(content_type, current, patch_body, schema)
}

/// The same without a schema (strategic merge patch then merges like a merge patch).
pub(crate) fn apply_patch_untyped(
    content_type: &str,
    current: &Value,
    patch_body: &[u8],
) -> ApiResult<Value> {
    apply_with(content_type, current, patch_body, None)
}

fn apply_with(
    content_type: &str,
    current: &Value,
    patch_body: &[u8],
    schema: Option<patch::schema::SchemaNode<'_>>,
) -> ApiResult<Value> {
    let patch_value = body::decode_value(content_type, patch_body)?;
    match content_type {
        "application/json-patch+json" => {
            patch::json::apply(current, &patch_value).map_err(patch_error)
        }
        "application/merge-patch+json" => Ok(patch::merge::apply(current, &patch_value)),
        "application/strategic-merge-patch+json" => {
            patch::strategic::apply(current, &patch_value, schema).map_err(patch_error)
        }
        other => Err(ApiError::unsupported_media_type(other)),
    }
}
