//! `pods/eviction` (policy/v1 Eviction), as upstream's eviction REST: a pod selected by a
//! PodDisruptionBudget is deleted only while the budget allows a disruption; the budget's
//! `disruptionsAllowed` is decremented and the pod recorded in `disruptedPods` (a
//! conditional write, so two evictions cannot spend one allowance), and the disruption
//! controller recomputes the budget from the pods. Terminal, pending and terminating pods
//! are evicted freely, as are unhealthy pods when the budget is met or its
//! `unhealthyPodEvictionPolicy` is `AlwaysAllow`.

use std::collections::BTreeMap;

use http::StatusCode;
use korvet_apimachinery::selector::LabelSelector;
use serde_json::{json, Value};

use crate::body::{self, Reply};
use crate::error::{ApiError, ApiResult, Cause};
use crate::handlers::{load, Call};
use crate::storage::Written;

const EVICTION_MESSAGE: &str = "Cannot evict pod as it would violate the pod's disruption budget.";
/// Upstream's `MaxDisruptedPodSize`: evictions the controller has not yet seen.
const MAX_DISRUPTED_PODS: usize = 2000;
const RETRIES: usize = 8;

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Upstream's `canIgnorePDB`: a pod that is done, never ran or is already going.
fn can_ignore_budget(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed" | "Pending")
    ) || !pod["metadata"]["deletionTimestamp"].is_null()
}

fn too_many_requests(detail: String, retry_after: Option<u32>) -> ApiError {
    let mut err = ApiError::new(429, "TooManyRequests", EVICTION_MESSAGE)
        .with_causes(vec![Cause::new("DisruptionBudget", "", detail)]);
    err.retry_after_seconds = retry_after;
    err
}

fn status_i64(pdb: &Value, field: &str) -> i64 {
    pdb["status"][field].as_i64().unwrap_or(0)
}

/// Upstream's `checkAndDecrement`: the budget's status with one disruption spent on
/// `pod`, or why not.
pub(crate) fn spend_disruption(pdb: &Value, pod: &str, now: &str) -> ApiResult<Value> {
    let name = pdb["metadata"]["name"].as_str().unwrap_or_default();
    let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(0);
    if status_i64(pdb, "observedGeneration") < generation {
        return Err(too_many_requests(
            format!("The disruption budget {name} is still being processed by the server."),
            Some(10),
        ));
    }
    let allowed = status_i64(pdb, "disruptionsAllowed");
    if allowed < 0 {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!("poddisruptionbudgets.policy \"{name}\" is forbidden: pdb disruptions allowed is negative"),
        ));
    }
    let disrupted = pdb["status"]["disruptedPods"].as_object();
    if disrupted.is_some_and(|d| d.len() > MAX_DISRUPTED_PODS) {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!("poddisruptionbudgets.policy \"{name}\" is forbidden: DisruptedPods map too big - too many evictions not confirmed by PDB controller"),
        ));
    }
    if allowed == 0 {
        return Err(too_many_requests(
            format!(
                "The disruption budget {name} needs {} healthy pods and has {} currently",
                status_i64(pdb, "desiredHealthy"),
                status_i64(pdb, "currentHealthy")
            ),
            None,
        ));
    }
    let mut next = pdb.clone();
    next["status"]["disruptionsAllowed"] = json!(allowed - 1);
    if allowed - 1 == 0 {
        set_disruption_allowed(&mut next, false, now);
    }
    if !next["status"]["disruptedPods"].is_object() {
        next["status"]["disruptedPods"] = json!({});
    }
    next["status"]["disruptedPods"][pod] = json!(now);
    Ok(next)
}

/// The `DisruptionAllowed` condition, as upstream's `UpdateDisruptionAllowedCondition`.
fn set_disruption_allowed(pdb: &mut Value, allowed: bool, now: &str) {
    let (status, reason) = if allowed {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let observed = pdb["status"]["observedGeneration"].clone();
    if !pdb["status"]["conditions"].is_array() {
        pdb["status"]["conditions"] = json!([]);
    }
    let Some(conditions) = pdb["status"]["conditions"].as_array_mut() else {
        return;
    };
    match conditions
        .iter_mut()
        .find(|c| c["type"] == "DisruptionAllowed")
    {
        Some(c) => {
            if c["status"] != status {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!(status);
            c["reason"] = json!(reason);
            c["message"] = json!("");
            c["observedGeneration"] = observed;
        }
        None => conditions.push(json!({
            "type": "DisruptionAllowed",
            "status": status,
            "reason": reason,
            "message": "",
            "observedGeneration": observed,
            "lastTransitionTime": now,
        })),
    }
}

pub(crate) async fn evict_pod(call: &Call<'_>) -> ApiResult<Reply> {
    let eviction = if call.body.is_empty() {
        json!({})
    } else {
        body::decode_object(call.headers, &call.body)?
    };
    let name = call.request.name.clone().unwrap_or_default();
    if let Some(given) = eviction["metadata"]["name"].as_str() {
        if !given.is_empty() && given != name {
            return Err(ApiError::bad_request(format!(
                "name in URL does not match name in Eviction object: {name} != {given}"
            )));
        }
    }
    let dry_run = call.query.dry_run
        || eviction["deleteOptions"]["dryRun"]
            .as_array()
            .is_some_and(|d| !d.is_empty());
    let (pod, _) = load(call).await?;
    if !can_ignore_budget(&pod) {
        check_budget(call, &pod, &name, dry_run).await?;
    }
    if !dry_run {
        mark_disruption_target(call).await?;
        let options = match &eviction["deleteOptions"] {
            Value::Object(o) => Value::Object(o.clone()),
            _ => json!({}),
        };
        let delete = Call {
            server: call.server,
            user: call.user,
            resource: call.resource.clone(),
            request: call.request.clone(),
            query: call.query.clone(),
            headers: call.headers,
            body: serde_json::to_vec(&options)
                .map_err(|e| ApiError::internal(e.to_string()))?
                .into(),
        };
        crate::handlers::delete(&delete).await?;
    }
    Ok(Reply::json(
        StatusCode::CREATED,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// Finds the pod's budget and spends one disruption of it, or refuses the eviction.
async fn check_budget(call: &Call<'_>, pod: &Value, name: &str, dry_run: bool) -> ApiResult<()> {
    let Some(pdbs) = call
        .server
        .registry
        .get("policy", "v1", "poddisruptionbudgets")
    else {
        return Ok(());
    };
    let namespace = call.request.namespace.as_deref();
    let labels = labels_of(pod);
    for _ in 0..RETRIES {
        let page = call
            .server
            .objects
            .list(&pdbs.list_prefix(namespace), 0, None, 0, &|_| true)
            .await?;
        let matching: Vec<Value> = page
            .items
            .into_iter()
            .map(|o| pdbs.present(o))
            .filter(|pdb| {
                // A nil or empty selector matches nothing here, as upstream.
                let selector = &pdb["spec"]["selector"];
                let empty = selector.as_object().is_none_or(|s| {
                    s.values().all(|v| {
                        v.is_null()
                            || v.as_object().is_some_and(|m| m.is_empty())
                            || v.as_array().is_some_and(|a| a.is_empty())
                    })
                });
                !empty
                    && LabelSelector::from_label_selector_json(selector)
                        .is_ok_and(|s| s.matches(&labels))
            })
            .collect();
        if matching.len() > 1 {
            return Err(ApiError::internal(
                "Internal error occurred: This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        let Some(pdb) = matching.into_iter().next() else {
            return Ok(());
        };
        if !is_ready(pod) {
            if pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow" {
                return Ok(());
            }
            let (current, desired) = (
                status_i64(&pdb, "currentHealthy"),
                status_i64(&pdb, "desiredHealthy"),
            );
            if current >= desired && desired > 0 {
                return Ok(());
            }
        }
        let now = crate::strategy::now_rfc3339();
        let next = spend_disruption(&pdb, name, &now)?;
        if dry_run {
            return Ok(());
        }
        let pdb_name = pdb["metadata"]["name"].as_str().unwrap_or_default();
        let key = pdbs.key(namespace, pdb_name);
        let revision = crate::storage::listed_revision(&pdb);
        match call
            .server
            .objects
            .update(&key, &pdbs.stored(&next), revision)
            .await?
        {
            Written::Ok(_) => return Ok(()),
            Written::NotFound | Written::Conflict => continue,
        }
    }
    Err(ApiError::conflict(
        &call.resource.target(name),
        "the pod's disruption budget is being changed too often; try again",
    ))
}

/// Upstream's `addConditionAndDeletePod`: the pod says why it goes.
async fn mark_disruption_target(call: &Call<'_>) -> ApiResult<()> {
    let key = call.resource.key(
        call.request.namespace.as_deref(),
        call.request.name.as_deref().unwrap_or_default(),
    );
    for _ in 0..RETRIES {
        let Some((stored, revision)) = call.server.objects.get(&key).await? else {
            return Ok(());
        };
        let mut pod = call.resource.present(stored);
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            return Ok(());
        }
        if !pod["status"]["conditions"].is_array() {
            pod["status"]["conditions"] = json!([]);
        }
        if let Some(conditions) = pod["status"]["conditions"].as_array_mut() {
            conditions.retain(|c| c["type"] != "DisruptionTarget");
            conditions.push(json!({
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "EvictionByEvictionAPI",
                "message": "Eviction API: evicting",
                "lastTransitionTime": crate::strategy::now_rfc3339(),
            }));
        }
        match call
            .server
            .objects
            .update(&key, &call.resource.stored(&pod), revision)
            .await?
        {
            Written::Ok(_) | Written::NotFound => return Ok(()),
            Written::Conflict => continue,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdb(allowed: i64, generation: i64, observed: i64) -> Value {
        json!({
            "metadata": {"name": "web", "generation": generation},
            "status": {"disruptionsAllowed": allowed, "observedGeneration": observed,
                "currentHealthy": 2, "desiredHealthy": 2},
        })
    }

    #[test]
    fn budgets_are_spent_one_at_a_time() {
        let now = "2026-01-01T00:00:00Z";
        let next = spend_disruption(&pdb(1, 1, 1), "web-1", now).unwrap();
        assert_eq!(next["status"]["disruptionsAllowed"], 0);
        assert_eq!(next["status"]["disruptedPods"]["web-1"], now);
        assert_eq!(
            next["status"]["conditions"][0]["reason"],
            "InsufficientPods"
        );
        let err = spend_disruption(&next, "web-2", now).unwrap_err();
        assert_eq!((err.code, err.reason), (429, "TooManyRequests"));
        assert_eq!(err.message, EVICTION_MESSAGE);
        assert_eq!(err.causes[0].reason, "DisruptionBudget");
        assert_eq!(
            err.causes[0].message,
            "The disruption budget web needs 2 healthy pods and has 2 currently"
        );
        // A budget the controller has not seen since its last change refuses too.
        let err = spend_disruption(&pdb(3, 2, 1), "web-1", now).unwrap_err();
        assert_eq!((err.code, err.retry_after_seconds), (429, Some(10)));
        assert_eq!(
            spend_disruption(&pdb(-1, 1, 1), "p", now).unwrap_err().code,
            403
        );
    }
}
