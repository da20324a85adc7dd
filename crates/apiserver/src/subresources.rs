//! Subresources with their own shape: `scale`, `pods/binding`, `serviceaccounts/token`
//! (`pods/eviction` is `eviction.rs`).

use http::StatusCode;
use korvet_apimachinery::selector::LabelSelector;
use serde_json::{json, Value};

use crate::body::{self, Reply};
use crate::error::{ApiError, ApiResult};
use crate::handlers::{load, write_with_retry, Call, Part};

/// The Scale's `status.selector`: the kind's label selector as a `labelSelector` query,
/// matchExpressions included (upstream's `LabelSelectorAsSelector(...).String()`). A
/// ReplicationController's selector is a bare map of labels.
fn selector_string(object: &Value) -> String {
    let selector = &object["spec"]["selector"];
    let typed = selector.get("matchLabels").is_some() || selector.get("matchExpressions").is_some();
    let selector = if typed || !selector.is_object() {
        selector.clone()
    } else {
        json!({ "matchLabels": selector })
    };
    // An invalid selector cannot have been stored; say nothing rather than fail the read.
    LabelSelector::from_label_selector_json(&selector)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

fn at<'v>(object: &'v Value, path: &[String]) -> &'v Value {
    path.iter().fold(object, |v, key| &v[key.as_str()])
}

fn set_at(object: &mut Value, path: &[String], value: Value) {
    let mut at = object;
    for key in path {
        if !at.is_object() {
            *at = json!({});
        }
        at = &mut at[key.as_str()];
    }
    *at = value;
}

fn scale_of(call: &Call<'_>, object: &Value) -> Value {
    let Some(paths) = &call.resource.scale_paths else {
        return builtin_scale(object);
    };
    let mut scale = builtin_scale(object);
    scale["spec"]["replicas"] = json!(at(object, &paths.spec_replicas).as_i64().unwrap_or(0));
    scale["status"]["replicas"] = json!(at(object, &paths.status_replicas).as_i64().unwrap_or(0));
    scale["status"]["selector"] = match &paths.label_selector {
        Some(path) => json!(at(object, path).as_str().unwrap_or_default()),
        None => json!(""),
    };
    scale
}

fn builtin_scale(object: &Value) -> Value {
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

pub(crate) async fn get_scale(call: &Call<'_>) -> ApiResult<Reply> {
    let (object, _) = load(call).await?;
    Ok(Reply::json(StatusCode::OK, scale_of(call, &object)))
}

pub(crate) async fn update_scale(call: &Call<'_>) -> ApiResult<Reply> {
    let content_type = body::content_type(call.headers).to_string();
    let request = call.body.clone();
    let reply = write_with_retry(call, Part::Main, None, |current| {
        let scale = scale_of(call, current);
        let wanted = if content_type == "application/json" || content_type == "application/yaml" {
            body::decode_object(call.headers, &request)?
        } else {
            crate::patching::apply_patch_untyped(&content_type, &scale, &request)?
        };
        // Go clients omit `replicas: 0` (omitempty): a spec without it means zero.
        let replicas = match &wanted["spec"] {
            Value::Object(spec) => spec.get("replicas").map_or(Some(0), Value::as_i64),
            _ => None,
        }
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
        match &call.resource.scale_paths {
            Some(paths) => set_at(&mut next, &paths.spec_replicas, json!(replicas)),
            None => next["spec"]["replicas"] = json!(replicas),
        }
        Ok(next)
    })
    .await?;
    let (object, _) = load(call).await?;
    Ok(Reply {
        status: reply.status,
        headers: reply.headers,
        body: body::ReplyBody::Json(scale_of(call, &object)),
    })
}

/// Sets the pod's `PodScheduled` condition to `True` (keeping its transition time when
/// it already was).
fn mark_scheduled(pod: &mut Value) {
    if !pod["status"]["conditions"].is_array() {
        pod["status"]["conditions"] = json!([]);
    }
    let Some(conditions) = pod["status"]["conditions"].as_array_mut() else {
        return;
    };
    let scheduled = json!({
        "type": "PodScheduled",
        "status": "True",
        "lastProbeTime": null,
        "lastTransitionTime": crate::strategy::now_rfc3339(),
    });
    match conditions.iter_mut().find(|c| c["type"] == "PodScheduled") {
        Some(c) if c["status"] == "True" => {}
        Some(c) => *c = scheduled,
        None => conditions.push(scheduled),
    }
}

/// `pods/binding`: assigns a node to a pod that has none (what the scheduler does).
pub(crate) async fn bind_pod(call: &Call<'_>) -> ApiResult<Reply> {
    let binding = body::decode_object(call.headers, &call.body)?;
    let node = binding["target"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("the Binding must name a target node in target.name"))?
        .to_string();
    let name = call.request.name.clone().unwrap_or_default();
    write_with_retry(call, Part::Binding, None, |current| {
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
        // As upstream's binding storage: the Binding's annotations go to the pod, and the
        // pod is marked scheduled in the same write.
        if let Some(annotations) = binding["metadata"]["annotations"].as_object() {
            for (key, value) in annotations {
                next["metadata"]["annotations"][key] = value.clone();
            }
        }
        mark_scheduled(&mut next);
        Ok(next)
    })
    .await?;
    Ok(Reply::json(
        StatusCode::CREATED,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// Upstream's validation bounds of `TokenRequest.spec.expirationSeconds`.
pub(crate) const MIN_TOKEN_EXPIRATION_SECONDS: i64 = 600;
const MAX_VALID_TOKEN_EXPIRATION_SECONDS: i64 = 1 << 32;
pub(crate) const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// Longer requests are shortened to this, with a warning (upstream's
/// `--service-account-max-token-expiration`).
pub(crate) const MAX_TOKEN_EXPIRATION_SECONDS: i64 = 48 * 3600;

const TOKEN_REQUEST_TARGET: crate::error::Target<'static> = crate::error::Target {
    group: "authentication.k8s.io",
    plural: "tokenrequests",
    kind: "TokenRequest",
    name: "",
};

/// `serviceaccounts/token`: issues a bound ServiceAccount token (upstream's TokenRequest).
pub(crate) async fn create_token(call: &Call<'_>) -> ApiResult<Reply> {
    let signer = call
        .server
        .sa_token_signer
        .clone()
        .ok_or_else(|| ApiError::no_route("serviceaccounts/token"))?;
    let name = call.request.name.clone().unwrap_or_default();
    let namespace = call.request.namespace.clone().unwrap_or_default();
    let (sa, _) = load(call).await?;
    let mut request = body::decode_object(call.headers, &call.body)?;
    let target = crate::error::Target {
        name: &name,
        ..TOKEN_REQUEST_TARGET
    };
    if let Some(kind) = request["kind"]
        .as_str()
        .filter(|k| !k.is_empty() && *k != "TokenRequest")
    {
        return Err(ApiError::bad_request(format!(
            "expected a TokenRequest, got {kind}"
        )));
    }
    let mut causes = Vec::new();
    for (field, expected) in [("name", &name), ("namespace", &namespace)] {
        let given = &request["metadata"][field];
        if given
            .as_str()
            .is_some_and(|g| !g.is_empty() && g != expected)
        {
            causes.push(crate::error::Cause::invalid(
                format!("metadata.{field}"),
                given,
                &format!("must match the service account {field} if specified"),
            ));
        }
    }
    let spec = &request["spec"];
    let audiences: Vec<String> = match &spec["audiences"] {
        Value::Null => Vec::new(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect(),
        other => {
            return Err(ApiError::bad_request(format!(
                "spec.audiences must be a list of strings, got {other}"
            )))
        }
    };
    let requested = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_TOKEN_EXPIRATION_SECONDS,
        value => value.as_i64().ok_or_else(|| {
            ApiError::bad_request(format!(
                "spec.expirationSeconds must be an integer, got {value}"
            ))
        })?,
    };
    if requested < MIN_TOKEN_EXPIRATION_SECONDS {
        causes.push(crate::error::Cause::invalid(
            "spec.expirationSeconds",
            &json!(requested),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if requested > MAX_VALID_TOKEN_EXPIRATION_SECONDS {
        causes.push(crate::error::Cause::invalid(
            "spec.expirationSeconds",
            &json!(requested),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(&target, causes));
    }
    let mut warnings = Vec::new();
    let expiration = if requested > MAX_TOKEN_EXPIRATION_SECONDS {
        warnings.push(format!(
            "requested expiration of {requested} seconds shortened to {MAX_TOKEN_EXPIRATION_SECONDS} seconds"
        ));
        MAX_TOKEN_EXPIRATION_SECONDS
    } else {
        requested
    };
    let (bound, pod_node) = match spec["boundObjectRef"].as_object() {
        Some(_) => bound_object(call, &name, &namespace, &spec["boundObjectRef"]).await?,
        None => (None, None),
    };
    let token_spec = crate::sa_tokens::TokenSpec {
        namespace: namespace.clone(),
        service_account: name.clone(),
        service_account_uid: sa["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        audiences: audiences.clone(),
        expiration_seconds: expiration,
        bound,
        pod_node,
    };
    let now = crate::sa_tokens::unix_now();
    let token = signer
        .issue(&token_spec, now)
        .map_err(|e| ApiError::internal(format!("failed to generate token: {e}")))?;
    let audiences = if audiences.is_empty() {
        signer.api_audiences().to_vec()
    } else {
        audiences
    };
    request["apiVersion"] = json!("authentication.k8s.io/v1");
    request["kind"] = json!("TokenRequest");
    if !request["metadata"].is_object() {
        request["metadata"] = json!({});
    }
    request["metadata"]["name"] = json!(name);
    request["metadata"]["namespace"] = json!(namespace);
    if request["metadata"].get("creationTimestamp").is_none() {
        request["metadata"]["creationTimestamp"] = Value::Null;
    }
    request["spec"]["audiences"] = json!(audiences);
    request["spec"]["expirationSeconds"] = json!(expiration);
    request["status"] = json!({
        "token": token,
        "expirationTimestamp": jiff::Timestamp::from_second(now.saturating_add(expiration))
            .map(|t| t.to_string())
            .unwrap_or_default(),
    });
    Ok(Reply::json(StatusCode::CREATED, request).with_warnings(warnings))
}

type BoundAndNode = (
    Option<crate::sa_tokens::BoundObject>,
    Option<(String, String)>,
);

/// Resolves `spec.boundObjectRef` as upstream: a Pod (running as this ServiceAccount),
/// Secret or Node in the core group, whose uid matches the reference if it gives one.
async fn bound_object(
    call: &Call<'_>,
    sa_name: &str,
    namespace: &str,
    reference: &Value,
) -> ApiResult<BoundAndNode> {
    use crate::sa_tokens::{BoundKind, BoundObject};
    let api_version = reference["apiVersion"].as_str().unwrap_or_default();
    let kind_name = reference["kind"].as_str().unwrap_or_default();
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let kind = BoundKind::from_kind(kind_name)
        .filter(|_| group.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "cannot bind token to object of type {}",
                if group.is_empty() {
                    kind_name.to_string()
                } else {
                    format!("{kind_name}.{group}")
                }
            ))
        })?;
    let object_name = reference["name"].as_str().unwrap_or_default().to_string();
    let plural = kind.plural();
    let resource = call
        .server
        .registry
        .get("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("no {plural} resource")))?;
    let object_namespace = kind.namespaced().then_some(namespace);
    let (object, _) = call
        .server
        .objects
        .get(&resource.key(object_namespace, &object_name))
        .await?
        .ok_or_else(|| ApiError::not_found(&resource.target(&object_name)))?;
    let uid = object["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Some(wanted) = reference["uid"].as_str().filter(|u| !u.is_empty()) {
        if wanted != uid {
            return Err(ApiError::conflict(
                &crate::error::Target { group: "", plural: kind_name, kind: kind_name, name: &object_name },
                &format!("the UID in the bound object reference ({wanted}) does not match the UID in record. The object might have been deleted and then recreated"),
            ));
        }
    }
    let mut pod_node = None;
    if kind == BoundKind::Pod {
        let account = object["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or_default();
        if account != sa_name {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {sa_name:?} to pod running with different serviceaccount name."
            )));
        }
        // The pod's node is informational; a missing node is no error.
        if let Some(node_name) = object["spec"]["nodeName"]
            .as_str()
            .filter(|n| !n.is_empty())
        {
            let node_uid = match call.server.registry.get("", "v1", "nodes") {
                Some(nodes) => call
                    .server
                    .objects
                    .get(&nodes.key(None, node_name))
                    .await?
                    .and_then(|(node, _)| node["metadata"]["uid"].as_str().map(str::to_string))
                    .unwrap_or_default(),
                None => String::new(),
            };
            pod_node = Some((node_name.to_string(), node_uid));
        }
    }
    Ok((
        Some(BoundObject {
            kind,
            name: object_name,
            uid,
        }),
        pod_node,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_selectors_keep_match_expressions() {
        let deployment = json!({"spec": {"selector": {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["b", "a"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ],
        }}});
        assert_eq!(
            selector_string(&deployment),
            "app=web,!canary,tier in (a,b)"
        );
        let expressions_only = json!({"spec": {"selector": {
            "matchExpressions": [{"key": "app", "operator": "Exists"}],
        }}});
        assert_eq!(selector_string(&expressions_only), "app");
        let controller = json!({"spec": {"selector": {"app": "web", "tier": "db"}}});
        assert_eq!(selector_string(&controller), "app=web,tier=db");
        assert_eq!(selector_string(&json!({"spec": {}})), "");
    }
}
