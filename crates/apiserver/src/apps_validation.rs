//! Validation of Deployments and ReplicaSets as upstream's `apps/validation`: a
//! non-empty selector that selects the template's labels (and never changes), replicas
//! not negative, pods that restart `Always`, and a rolling update that can progress.

use korvet_apimachinery::selector;
use serde_json::Value;

use crate::error::Cause;
use crate::strategy::validate_pod;

fn selector_is_empty(selector: &Value) -> bool {
    selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.is_empty())
        && selector["matchExpressions"]
            .as_array()
            .is_none_or(|e| e.is_empty())
}

/// What Deployments and ReplicaSets share: selector, template and replicas.
fn validate_replicated(kind: &str, object: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = &object["spec"];
    let selector = &spec["selector"];
    if selector.is_null() {
        causes.push(Cause::required("spec.selector"));
    } else if selector_is_empty(selector) {
        causes.push(Cause::invalid(
            "spec.selector",
            selector,
            &format!("empty selector is invalid for {kind}"),
        ));
    } else {
        let labels = &spec["template"]["metadata"]["labels"];
        if !selector::matches_json(selector, labels) {
            causes.push(Cause::invalid(
                "spec.template.metadata.labels",
                labels,
                "`selector` does not match template `labels`",
            ));
        }
    }
    if let Some(old) = old {
        if !old["spec"]["selector"].is_null() && old["spec"]["selector"] != *selector {
            causes.push(Cause::invalid(
                "spec.selector",
                selector,
                "field is immutable",
            ));
        }
    }
    for field in ["replicas", "minReadySeconds"] {
        if spec[field].as_i64().is_some_and(|n| n < 0) {
            causes.push(Cause::invalid(
                format!("spec.{field}"),
                &spec[field],
                "must be greater than or equal to 0",
            ));
        }
    }
    let template = &spec["template"];
    if template.is_null() {
        causes.push(Cause::required("spec.template"));
        return causes;
    }
    causes.extend(validate_pod(template, None).into_iter().map(|mut c| {
        c.field = format!("spec.template.{}", c.field);
        c
    }));
    let restart = template["spec"]["restartPolicy"]
        .as_str()
        .unwrap_or("Always");
    if restart != "Always" {
        causes.push(Cause::new(
            "FieldValueNotSupported",
            "spec.template.spec.restartPolicy",
            format!("Unsupported value: {restart:?}: supported values: \"Always\""),
        ));
    }
    causes
}

/// `value` as a count or a percentage, with its percentage flag.
fn int_or_percent(value: &Value) -> Option<(i64, bool)> {
    match value {
        Value::Number(n) => n.as_i64().map(|n| (n, false)),
        Value::String(s) => s
            .strip_suffix('%')
            .and_then(|p| p.parse().ok())
            .map(|p| (p, true)),
        _ => None,
    }
}

pub(crate) fn validate_deployment(object: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = validate_replicated("deployment", object, old);
    let spec = &object["spec"];
    let strategy = &spec["strategy"];
    match strategy["type"].as_str().unwrap_or("RollingUpdate") {
        "Recreate" => {
            if !strategy["rollingUpdate"].is_null() {
                causes.push(Cause::new(
                    "FieldValueForbidden",
                    "spec.strategy.rollingUpdate",
                    "Forbidden: may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        "RollingUpdate" => {
            let rolling = &strategy["rollingUpdate"];
            let mut resolved = Vec::new();
            for field in ["maxSurge", "maxUnavailable"] {
                let value = &rolling[field];
                if value.is_null() {
                    resolved.push(None);
                    continue;
                }
                let path = format!("spec.strategy.rollingUpdate.{field}");
                match int_or_percent(value) {
                    None => causes.push(Cause::invalid(
                        path,
                        value,
                        "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                    )),
                    Some((n, _)) if n < 0 => causes.push(Cause::invalid(
                        path,
                        value,
                        "must be greater than or equal to 0",
                    )),
                    Some((n, true)) if n > 100 && field == "maxUnavailable" => {
                        causes.push(Cause::invalid(path, value, "must not be greater than 100%"))
                    }
                    Some((n, _)) => resolved.push(Some(n)),
                }
            }
            if let [Some(0), Some(0)] = resolved[..] {
                causes.push(Cause::invalid(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    &rolling["maxUnavailable"],
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
        }
        other => causes.push(Cause::new(
            "FieldValueNotSupported",
            "spec.strategy.type",
            format!(
                "Unsupported value: {other:?}: supported values: \"Recreate\", \"RollingUpdate\""
            ),
        )),
    }
    for field in ["revisionHistoryLimit", "progressDeadlineSeconds"] {
        if spec[field].as_i64().is_some_and(|n| n < 0) {
            causes.push(Cause::invalid(
                format!("spec.{field}"),
                &spec[field],
                "must be greater than or equal to 0",
            ));
        }
    }
    if let (Some(deadline), min_ready) = (
        spec["progressDeadlineSeconds"].as_i64(),
        spec["minReadySeconds"].as_i64().unwrap_or(0),
    ) {
        if deadline <= min_ready {
            causes.push(Cause::invalid(
                "spec.progressDeadlineSeconds",
                &spec["progressDeadlineSeconds"],
                "must be greater than minReadySeconds",
            ));
        }
    }
    causes
}

pub(crate) fn validate_replica_set(object: &Value, old: Option<&Value>) -> Vec<Cause> {
    validate_replicated("replicaset", object, old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(selector: Value, labels: Value) -> Value {
        json!({"spec": {
            "replicas": 1,
            "selector": selector,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "progressDeadlineSeconds": 600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            },
        }})
    }

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn selectors_must_select_the_template() {
        let ok = deployment(
            json!({"matchLabels": {"app": "a"}}),
            json!({"app": "a", "x": "y"}),
        );
        assert!(validate_deployment(&ok, None).is_empty());
        let bad = deployment(json!({"matchLabels": {"app": "a"}}), json!({"app": "b"}));
        assert_eq!(
            fields(&validate_deployment(&bad, None)),
            ["spec.template.metadata.labels"]
        );
        let empty = deployment(json!({}), json!({"app": "a"}));
        assert_eq!(
            fields(&validate_deployment(&empty, None)),
            ["spec.selector"]
        );
        let expr = deployment(
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]}),
            json!({"app": "b"}),
        );
        assert!(validate_deployment(&expr, None).is_empty());
    }

    #[test]
    fn selectors_are_immutable() {
        let old = deployment(json!({"matchLabels": {"app": "a"}}), json!({"app": "a"}));
        let new = deployment(json!({"matchLabels": {"app": "b"}}), json!({"app": "b"}));
        assert_eq!(
            fields(&validate_deployment(&new, Some(&old))),
            ["spec.selector"]
        );
    }

    #[test]
    fn rolling_updates_must_be_able_to_progress() {
        let mut d = deployment(json!({"matchLabels": {"app": "a"}}), json!({"app": "a"}));
        d["spec"]["strategy"]["rollingUpdate"] = json!({"maxSurge": 0, "maxUnavailable": "0%"});
        assert_eq!(
            fields(&validate_deployment(&d, None)),
            ["spec.strategy.rollingUpdate.maxUnavailable"]
        );
        d["spec"]["strategy"] = json!({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}});
        assert_eq!(
            fields(&validate_deployment(&d, None)),
            ["spec.strategy.rollingUpdate"]
        );
        d["spec"]["strategy"] = json!({"type": "Recreate"});
        d["spec"]["replicas"] = json!(-1);
        assert_eq!(fields(&validate_deployment(&d, None)), ["spec.replicas"]);
    }
}
