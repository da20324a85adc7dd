//! ResourceQuota admission: refuses creates over `hard` and charges the quota's
//! `status.used` with a conditional write, so that parallel creates cannot overshoot it.
//! What an object costs is `korvet_apimachinery::quota`, shared with the quota
//! controller.

use std::collections::{BTreeMap, BTreeSet};

use korvet_apimachinery::quota::{
    container_usage, containers_and_init_containers, format_quantity, hard, object_usage,
    scopes_match, to_json, used, Usage,
};
use serde_json::Value;

use crate::admission::{AdmissionRequest, Operation};
use crate::error::{ApiError, ApiResult};
use crate::server::ApiServer;

/// Quota on these makes every container name them (upstream's `validationSet`).
const VALIDATION_SET: [&str; 6] = [
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];
/// How often a charge is retried when another write changed the quota meanwhile.
const CHARGE_RETRIES: usize = 16;

fn pretty(usage: &Usage, keys: &BTreeSet<String>) -> String {
    keys.iter()
        .map(|k| {
            format!(
                "{k}={}",
                format_quantity(k, usage.get(k).copied().unwrap_or(0))
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Upstream's `must specify ...` when a quota tracks cpu or memory and a container does
/// not name them.
fn constraints(required: &BTreeSet<String>, pod: &Value) -> Option<String> {
    let required: BTreeSet<&str> = required
        .iter()
        .map(String::as_str)
        .filter(|r| VALIDATION_SET.contains(r))
        .collect();
    if required.is_empty() {
        return None;
    }
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let containers = containers_and_init_containers(pod);
    for c in containers {
        let has = container_usage(c);
        for r in &required {
            if !has.contains_key(*r) {
                missing
                    .entry(r)
                    .or_default()
                    .insert(c["name"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| {
            format!(
                "{r} for: {}",
                names.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    Some(format!("must specify {}", parts.join("; ")))
}

fn forbidden(request: &AdmissionRequest<'_>, message: String) -> ApiError {
    let what = if request.resource.group.is_empty() {
        request.resource.plural.clone()
    } else {
        format!("{}.{}", request.resource.plural, request.resource.group)
    };
    ApiError::new(
        403,
        "Forbidden",
        format!("{what} \"{}\" is forbidden: {message}", request.name),
    )
}

/// The admission check of one quota: `Ok(Some(new used))` to charge, `Ok(None)` if the
/// quota does not track the object, or the refusal.
fn evaluate(
    request: &AdmissionRequest<'_>,
    quota: &Value,
    usage: &Usage,
) -> Result<Option<Usage>, ApiError> {
    let (group, plural) = (&request.resource.group, &request.resource.plural);
    if !scopes_match(quota, group, plural, request.object) {
        return Ok(None);
    }
    let name = quota["metadata"]["name"].as_str().unwrap_or_default();
    let spec_hard = hard(quota, "spec");
    // What the quota tracks of this kind of object, whether or not this one uses it.
    let tracked: BTreeSet<String> = spec_hard
        .keys()
        .filter(|k| {
            usage.contains_key(*k)
                || (group.is_empty() && plural == "pods" && VALIDATION_SET.contains(&k.as_str()))
        })
        .cloned()
        .collect();
    if tracked.is_empty() {
        return Ok(None);
    }
    if group.is_empty() && plural == "pods" {
        if let Some(message) = constraints(&tracked, request.object) {
            return Err(forbidden(
                request,
                format!("failed quota: {name}: {message}"),
            ));
        }
    }
    let status_hard = hard(quota, "status");
    let unknown: Vec<&str> = tracked
        .iter()
        .filter(|k| !status_hard.contains_key(*k))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(forbidden(
            request,
            format!(
                "status unknown for quota: {name}, resources: {}",
                unknown.join(",")
            ),
        ));
    }
    let mut new_used = used(quota);
    let mut exceeded = BTreeSet::new();
    for key in &tracked {
        let Some(cost) = usage.get(key) else {
            continue;
        };
        let total = new_used.get(key).copied().unwrap_or(0) + cost;
        if total > status_hard[key] {
            exceeded.insert(key.clone());
        }
        new_used.insert(key.clone(), total);
    }
    if !exceeded.is_empty() {
        return Err(forbidden(
            request,
            format!(
                "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
                pretty(usage, &exceeded),
                pretty(&used(quota), &exceeded),
                pretty(&status_hard, &exceeded)
            ),
        ));
    }
    Ok(Some(new_used))
}

/// The ResourceQuota admission plugin: refuses a create over a quota of its namespace,
/// else charges every quota that tracks it (not on dry run).
pub(crate) async fn admit(server: &ApiServer, request: &AdmissionRequest<'_>) -> ApiResult<()> {
    let Some(namespace) = request.namespace else {
        return Ok(());
    };
    if request.operation != Operation::Create
        || request.subresource.is_some()
        || !request.resource.namespaced
    {
        return Ok(());
    }
    let Some(quotas) = server.registry.get("", "v1", "resourcequotas") else {
        return Ok(());
    };
    let usage = object_usage(
        &request.resource.group,
        &request.resource.plural,
        request.object,
    );
    for _ in 0..CHARGE_RETRIES {
        let page = server
            .objects
            .list(&quotas.list_prefix(Some(namespace)), 0, None, 0, &|_| true)
            .await?;
        if page.items.is_empty() {
            return Ok(());
        }
        let mut charges = Vec::new();
        for quota in &page.items {
            if let Some(new_used) = evaluate(request, quota, &usage)? {
                charges.push((quota, new_used));
            }
        }
        if request.dry_run || charges.is_empty() {
            return Ok(());
        }
        // Charge one quota after the other; a conflict starts over from a fresh read
        // (quotas charged before it keep their charge, as upstream's may: the quota
        // controller corrects over-charges on its next recount).
        let mut conflict = false;
        for (quota, new_used) in charges {
            let name = quota["metadata"]["name"].as_str().unwrap_or_default();
            let mut updated = quota.clone();
            updated["status"]["used"] = to_json(&new_used);
            let revision = crate::storage::listed_revision(quota);
            match server
                .objects
                .update(&quotas.key(Some(namespace), name), &updated, revision)
                .await?
            {
                crate::storage::Written::Ok(_) => {}
                _ => {
                    conflict = true;
                    break;
                }
            }
        }
        if !conflict {
            return Ok(());
        }
    }
    Err(ApiError::new(
        409,
        "Conflict",
        "Operation cannot be fulfilled on resourcequotas: too many concurrent changes, please retry",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn constraints_name_the_containers() {
        let required: BTreeSet<String> = ["limits.cpu", "pods", "requests.memory"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "1"}}},
            {"name": "b"},
        ]}});
        assert_eq!(
            constraints(&required, &pod).unwrap(),
            "must specify limits.cpu for: b; requests.memory for: a,b"
        );
    }
}
