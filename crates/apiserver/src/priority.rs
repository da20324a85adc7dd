//! Pod priority as upstream: the built-in PriorityClasses every cluster has, their
//! validation, and the `Priority` admission plugin that resolves a pod's
//! `priorityClassName` into `spec.priority` and `spec.preemptionPolicy`.

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult, Cause};
use crate::server::ApiServer;

/// Upstream's limit for classes users create; above it only the built-in ones.
pub(crate) const HIGHEST_USER_PRIORITY: i64 = 1_000_000_000;
const SYSTEM_CRITICAL: i64 = 2 * HIGHEST_USER_PRIORITY;

/// `system-node-critical` and `system-cluster-critical`, as upstream bootstraps them.
pub(crate) fn bootstrap_classes() -> Vec<Value> {
    [
        (
            "system-node-critical",
            SYSTEM_CRITICAL + 1000,
            "Used for system critical pods that must not be moved from their current node.",
        ),
        (
            "system-cluster-critical",
            SYSTEM_CRITICAL,
            "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
        ),
    ]
    .into_iter()
    .map(|(name, value, description)| {
        json!({
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": name},
            "value": value,
            "globalDefault": false,
            "description": description,
            "preemptionPolicy": "PreemptLowerPriority",
        })
    })
    .collect()
}

/// Upstream's PriorityClass validation: users' classes stay at or below 1e9 and may not
/// take the `system-` prefix; value and preemption policy never change.
pub(crate) fn validate(class: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = class["metadata"]["name"].as_str().unwrap_or_default();
    let value = class["value"].as_i64();
    let builtin = bootstrap_classes()
        .iter()
        .any(|b| b["metadata"]["name"] == name && b["value"].as_i64() == value);
    match value {
        None => causes.push(Cause::required("value")),
        Some(v) if v > HIGHEST_USER_PRIORITY && !builtin => causes.push(Cause::new(
            "FieldValueForbidden",
            "value",
            format!("Forbidden: maximum allowed value of a user defined priority is {HIGHEST_USER_PRIORITY}"),
        )),
        Some(_) => {}
    }
    if name.starts_with("system-") && !builtin {
        causes.push(Cause::new(
            "FieldValueForbidden",
            "metadata.name",
            "Forbidden: priority class names with 'system-' prefix are reserved",
        ));
    }
    if let Some(policy) = class["preemptionPolicy"].as_str() {
        if !matches!(policy, "PreemptLowerPriority" | "Never") {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                "preemptionPolicy",
                format!("Unsupported value: {policy:?}: supported values: \"Never\", \"PreemptLowerPriority\""),
            ));
        }
    }
    if let Some(old) = old {
        for field in ["value", "preemptionPolicy"] {
            if class[field] != old[field] {
                causes.push(Cause::new(
                    "FieldValueForbidden",
                    field,
                    "Forbidden: may not be changed in an update.",
                ));
            }
        }
    }
    causes
}

/// Defaults a new class's `preemptionPolicy`.
pub(crate) fn defaults(class: &mut Value) {
    if class["preemptionPolicy"].is_null() {
        class["preemptionPolicy"] = json!("PreemptLowerPriority");
    }
    if class["globalDefault"].is_null() {
        class["globalDefault"] = json!(false);
    }
}

/// The `Priority` admission plugin for a pod being created: `priorityClassName` (or the
/// global default class) gives `spec.priority` and `spec.preemptionPolicy`.
pub(crate) async fn admit_pod(server: &ApiServer, pod: &mut Value) -> ApiResult<()> {
    let pod_name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let named = pod["spec"]["priorityClassName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let class = match &named {
        Some(name) => Some(
            server
                .read_object("scheduling.k8s.io", "v1", "priorityclasses", None, name)
                .await?
                .ok_or_else(|| {
                    forbidden(
                        &pod_name,
                        &format!("no PriorityClass with name {name} was found"),
                    )
                })?,
        ),
        None => server
            .list_objects("scheduling.k8s.io", "v1", "priorityclasses", None)
            .await?
            .into_iter()
            .filter(|c| c["globalDefault"] == json!(true))
            // Of several defaults (a race upstream allows too) the lowest wins.
            .min_by_key(|c| c["value"].as_i64().unwrap_or(0)),
    };
    let (value, policy) = match &class {
        Some(c) => (
            c["value"].as_i64().unwrap_or(0),
            c["preemptionPolicy"]
                .as_str()
                .unwrap_or("PreemptLowerPriority")
                .to_string(),
        ),
        None => (0, "PreemptLowerPriority".to_string()),
    };
    if let Some(given) = pod["spec"]["priority"].as_i64() {
        if given != value {
            return Err(forbidden(
                &pod_name,
                &format!("the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"),
            ));
        }
    }
    pod["spec"]["priority"] = json!(value);
    if let Some(c) = &class {
        pod["spec"]["priorityClassName"] = c["metadata"]["name"].clone();
    }
    match pod["spec"]["preemptionPolicy"].as_str() {
        Some(given) if given != policy => {
            return Err(forbidden(
                &pod_name,
                &format!("the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"),
            ))
        }
        _ => pod["spec"]["preemptionPolicy"] = json!(policy),
    }
    Ok(())
}

fn forbidden(pod: &str, detail: &str) -> ApiError {
    ApiError::new(
        403,
        "Forbidden",
        format!("pods \"{pod}\" is forbidden: {detail}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, value: i64) -> Value {
        json!({"metadata": {"name": name}, "value": value})
    }

    #[test]
    fn user_classes_are_bounded_and_system_names_reserved() {
        assert!(validate(&class("high", 1_000_000), None).is_empty());
        let too_high = validate(&class("huge", 2_000_000_000), None);
        assert_eq!(too_high[0].field, "value");
        let reserved = validate(&class("system-mine", 5), None);
        assert_eq!(reserved[0].field, "metadata.name");
        for builtin in bootstrap_classes() {
            assert!(validate(&builtin, None).is_empty(), "{builtin}");
        }
    }

    #[test]
    fn value_is_immutable() {
        let causes = validate(&class("c", 2), Some(&class("c", 1)));
        assert_eq!(causes[0].field, "value");
    }
}
