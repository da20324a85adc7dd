//! Server-side apply (`application/apply-patch+yaml`).
//!
//! The applied configuration is created when the object does not exist, and otherwise
//! merged into the live object with strategic-merge semantics, recording the field
//! manager in `managedFields`. Ownership tracking (removing fields a manager stopped
//! applying, conflicts between managers) is not implemented yet.

use serde_json::{json, Value};

use crate::body;
use crate::error::{ApiError, ApiResult, Cause};
use crate::handlers::{create_object, write_with_retry, Call, Part};
use crate::patch;

// Not wired into the apply handler yet.
#[allow(dead_code)]
pub mod fields;

fn managed_entry(call: &Call<'_>, manager: &str) -> Value {
    json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": call.resource.api_version(),
        "time": crate::strategy::now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": {},
    })
}

fn record_manager(object: &mut Value, entry: Value) {
    let manager = entry["manager"].clone();
    let mut fields: Vec<Value> = object["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| !(f["manager"] == manager && f["operation"] == "Apply"))
        .collect();
    fields.push(entry);
    object["metadata"]["managedFields"] = json!(fields);
}

pub async fn server_side_apply(call: &Call<'_>, part: Part) -> ApiResult<crate::body::Reply> {
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
    if call.server.objects.get(&key).await?.is_none() && part == Part::Main {
        let mut object = applied.clone();
        object["metadata"]["name"] = json!(name);
        record_manager(&mut object, managed_entry(call, &manager));
        return create_object(call, object).await;
    }
    let schema_kind = (
        call.resource.group.clone(),
        call.resource.version.clone(),
        call.resource.kind.clone(),
    );
    write_with_retry(call, part, None, |current| {
        let schema = patch::schema::PatchSchema::builtin().for_kind(
            &schema_kind.0,
            &schema_kind.1,
            &schema_kind.2,
        );
        let mut merged = patch::strategic::apply(current, &applied, schema)
            .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
        record_manager(&mut merged, managed_entry(call, &manager));
        Ok(merged)
    })
    .await
}
