//! Subresources with their own shape: `scale`, `pods/binding`, `pods/eviction`.

use http::StatusCode;
use serde_json::{json, Value};

use crate::body::{self, Reply};
use crate::error::{ApiError, ApiResult};
use crate::handlers::{load, write_with_retry, Call, Part};

/// Where a kind keeps its label selector for the Scale's `status.selector`.
fn selector_string(object: &Value) -> String {
    let selector = &object["spec"]["selector"];
    let labels = selector["matchLabels"].as_object().or(selector.as_object());
    labels
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn scale_of(object: &Value) -> Value {
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": object["metadata"]["name"],
            "namespace": object["metadata"]["namespace"],
            "uid": object["metadata"]["uid"],
            "resourceVersion": object["metadata"]["resourceVersion"],
            "creationTimestamp": object["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": object["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {
            "replicas": object["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector_string(object),
        },
    })
}

pub async fn get_scale(call: &Call<'_>) -> ApiResult<Reply> {
    let (object, _) = load(call).await?;
    Ok(Reply::json(StatusCode::OK, scale_of(&object)))
}

pub async fn update_scale(call: &Call<'_>) -> ApiResult<Reply> {
    let content_type = body::content_type(call.headers).to_string();
    let request = call.body.clone();
    let reply = write_with_retry(call, Part::Main, None, |current| {
        let scale = scale_of(current);
        let wanted = if content_type == "application/json" || content_type == "application/yaml" {
            body::decode_object(call.headers, &request)?
        } else {
            crate::patching::apply_patch_untyped(&content_type, &scale, &request)?
        };
        let replicas = wanted["spec"]["replicas"]
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("the Scale must have spec.replicas"))?;
        if replicas < 0 {
            return Err(ApiError::invalid(
                &call
                    .resource
                    .target(call.request.name.as_deref().unwrap_or_default()),
                vec![crate::error::Cause::invalid(
                    "spec.replicas",
                    &json!(replicas),
                    "must be greater than or equal to 0",
                )],
            ));
        }
        let mut next = current.clone();
        next["spec"]["replicas"] = json!(replicas);
        Ok(next)
    })
    .await?;
    let (object, _) = load(call).await?;
    Ok(Reply {
        status: reply.status,
        headers: reply.headers,
        body: body::ReplyBody::Json(scale_of(&object)),
    })
}

/// `pods/binding`: assigns a node to a pod that has none (what the scheduler does).
pub async fn bind_pod(call: &Call<'_>) -> ApiResult<Reply> {
    let binding = body::decode_object(call.headers, &call.body)?;
    let node = binding["target"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("the Binding must name a target node in target.name"))?
        .to_string();
    let name = call.request.name.clone().unwrap_or_default();
    write_with_retry(call, Part::Main, None, |current| {
        if current["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
        {
            return Err(ApiError::conflict(
                &call.resource.target(&name),
                &format!(
                    "pod {name} is already assigned to node {:?}",
                    current["spec"]["nodeName"].as_str().unwrap_or_default()
                ),
            ));
        }
        let mut next = current.clone();
        next["spec"]["nodeName"] = json!(node);
        Ok(next)
    })
    .await?;
    Ok(Reply::json(
        StatusCode::CREATED,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// `pods/eviction`: deletes the pod. Disruption budgets are checked by the eviction
/// logic of the controllers issue; until then every eviction is allowed.
pub async fn evict_pod(call: &Call<'_>) -> ApiResult<Reply> {
    let (_, revision) = load(call).await?;
    let key = call.resource.key(
        call.request.namespace.as_deref(),
        call.request.name.as_deref().unwrap_or_default(),
    );
    if !call.query.dry_run {
        let _ = call.server.objects.delete(&key, revision).await?;
    }
    Ok(Reply::json(
        StatusCode::CREATED,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}
