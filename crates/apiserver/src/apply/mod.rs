//! Server-side apply (`application/apply-patch+yaml`).
//!
//! The applied configuration is created when the object does not exist. Otherwise the
//! manager's field ownership is worked out first (`fields`): fields it stopped applying
//! and nobody else owns are removed, fields another manager owns with a different value
//! are a conflict (409) unless `force` moves them; then the configuration is merged into
//! the live object with strategic-merge semantics and `managedFields` records who owns
//! what. Non-apply writes do not record ownership yet.

use serde_json::{json, Value};

use crate::body;
use crate::error::{ApiError, ApiResult, Cause};
use crate::handlers::{create_object, write_with_retry, Call, Part};
use crate::patch;

pub(crate) mod fields;

/// Completes the manager's `Apply` entry with the API version and the time.
fn stamp(call: &Call<'_>, managed: &mut Value, manager: &str) {
    for entry in managed.as_array_mut().into_iter().flatten() {
        if entry["manager"] == manager && entry["operation"] == "Apply" {
            entry["apiVersion"] = json!(call.resource.api_version());
            entry["time"] = json!(crate::strategy::now_rfc3339());
        }
    }
}

pub(crate) async fn server_side_apply(
    call: &Call<'_>,
    part: Part,
) -> ApiResult<crate::body::Reply> {
    let applied = body::decode_object(call.headers, &call.body)?;
    let manager = call
        .query
        .field_manager
        .clone()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                &call
                    .resource
                    .target(call.request.name.as_deref().unwrap_or_default()),
                vec![Cause::required("fieldManager").with_message("is required for apply patch")],
            )
        })?;
    let name = call.request.name.clone().unwrap_or_default();
    if let Some(body_name) = applied["metadata"]["name"].as_str() {
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
    }
    let key = call.resource.key(call.request.namespace.as_deref(), &name);
    let resource = &call.resource;
    let schema = patch::schema::PatchSchema::builtin().for_kind(
        &resource.group,
        &resource.version,
        &resource.kind,
    );
    if call.server.objects.get(&key).await?.is_none() && part == Part::Main {
        let mut object = applied.clone();
        object["metadata"]["name"] = json!(name);
        let (_, mut managed) =
            fields::apply_ownership(&json!({}), &applied, &manager, true, schema)
                .map_err(|conflicts| conflict(call, &conflicts))?;
        stamp(call, &mut managed, &manager);
        object["metadata"]["managedFields"] = managed;
        return create_object(call, object).await;
    }
    write_with_retry(call, part, None, |current| {
        let (pruned, mut managed) =
            fields::apply_ownership(current, &applied, &manager, call.query.force, schema)
                .map_err(|conflicts| conflict(call, &conflicts))?;
        let mut merged = patch::strategic::apply(&pruned, &applied, schema)
            .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
        stamp(call, &mut managed, &manager);
        merged["metadata"]["managedFields"] = managed;
        Ok(merged)
    })
    .await
}

fn conflict(call: &Call<'_>, conflicts: &[(String, String)]) -> ApiError {
    let causes = conflicts
        .iter()
        .map(|(manager, path)| {
            Cause::new(
                "FieldManagerConflict",
                path.clone(),
                format!("conflict with \"{manager}\""),
            )
        })
        .collect();
    let mut err = ApiError::new(
        409,
        "Conflict",
        fields::conflict_message(conflicts, &call.resource.api_version()),
    )
    .with_causes(causes);
    err.kind = Some(call.resource.plural.clone());
    err.name = call.request.name.clone();
    err
}
