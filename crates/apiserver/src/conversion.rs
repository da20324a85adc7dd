//! Conversions between versions of one stored kind, as upstream's conversion functions:
//! `autoscaling/v1` HorizontalPodAutoscalers are stored as `autoscaling/v2`. What v1 cannot
//! express (other metrics, behavior, conditions) travels in annotations, upstream's way,
//! so a v1 client's read-modify-write loses nothing.

use serde_json::{json, Map, Value};

const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";

fn is_cpu_utilization(metric: &Value) -> bool {
    metric["type"] == "Resource"
        && metric["resource"]["name"] == "cpu"
        && metric["resource"]["target"]["type"] == "Utilization"
}

fn annotations(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"]["annotations"].is_object() {
        object["metadata"]["annotations"] = json!({});
    }
    match object["metadata"]["annotations"].as_object_mut() {
        Some(map) => map,
        None => unreachable!("just made an object"),
    }
}

fn stash(object: &mut Value, key: &str, value: &Value) {
    let empty = value.is_null() || value.as_array().is_some_and(Vec::is_empty);
    if !empty {
        annotations(object).insert(key.into(), json!(value.to_string()));
    }
}

fn unstash(object: &mut Value, key: &str) -> Option<Value> {
    // `get_mut`, not indexing: indexing would insert the missing maps as nulls.
    let raw = object
        .get_mut("metadata")?
        .get_mut("annotations")?
        .as_object_mut()?
        .remove(key)?;
    serde_json::from_str(raw.as_str()?).ok()
}

fn drop_empty_annotations(object: &mut Value) {
    if object["metadata"]["annotations"]
        .as_object()
        .is_some_and(Map::is_empty)
    {
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("annotations");
        }
    }
}

pub(crate) fn hpa_v2_to_v1(stored: Value) -> Value {
    let mut v1 = stored.clone();
    v1["apiVersion"] = json!("autoscaling/v1");
    let metrics = stored["spec"]["metrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let (cpu, others): (Vec<Value>, Vec<Value>) = metrics.into_iter().partition(is_cpu_utilization);
    let spec = json!({
        "scaleTargetRef": stored["spec"]["scaleTargetRef"],
        "minReplicas": stored["spec"]["minReplicas"],
        "maxReplicas": stored["spec"]["maxReplicas"],
        "targetCPUUtilizationPercentage": cpu.first().map(|m| m["resource"]["target"]["averageUtilization"].clone()).unwrap_or(Value::Null),
    });
    v1["spec"] = strip_nulls(spec);
    stash(&mut v1, METRICS, &json!(others));
    stash(&mut v1, BEHAVIOR, &stored["spec"]["behavior"]);
    let status = &stored["status"];
    if status.is_object() {
        let current = status["currentMetrics"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let cpu_now = current
            .iter()
            .find(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu")
            .map(|m| m["resource"]["current"]["averageUtilization"].clone())
            .unwrap_or(Value::Null);
        v1["status"] = strip_nulls(json!({
            "observedGeneration": status["observedGeneration"],
            "lastScaleTime": status["lastScaleTime"],
            "currentReplicas": status["currentReplicas"].as_i64().unwrap_or(0),
            "desiredReplicas": status["desiredReplicas"].as_i64().unwrap_or(0),
            "currentCPUUtilizationPercentage": cpu_now,
        }));
        stash(&mut v1, CURRENT_METRICS, &status["currentMetrics"]);
        stash(&mut v1, CONDITIONS, &status["conditions"]);
    }
    v1
}

pub(crate) fn hpa_v1_to_v2(served: Value) -> Value {
    let mut v1 = served;
    let others = unstash(&mut v1, METRICS);
    let behavior = unstash(&mut v1, BEHAVIOR);
    let current_metrics = unstash(&mut v1, CURRENT_METRICS);
    let conditions = unstash(&mut v1, CONDITIONS);
    drop_empty_annotations(&mut v1);
    let mut metrics: Vec<Value> = Vec::new();
    if let Some(target) = v1["spec"]["targetCPUUtilizationPercentage"].as_i64() {
        metrics.push(json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}}}));
    }
    metrics.extend(
        others
            .and_then(|o| o.as_array().cloned())
            .unwrap_or_default(),
    );
    let mut v2 = v1.clone();
    v2["apiVersion"] = json!("autoscaling/v2");
    v2["spec"] = strip_nulls(json!({
        "scaleTargetRef": v1["spec"]["scaleTargetRef"],
        "minReplicas": v1["spec"]["minReplicas"],
        "maxReplicas": v1["spec"]["maxReplicas"],
        "metrics": if metrics.is_empty() { Value::Null } else { json!(metrics) },
        "behavior": behavior.unwrap_or(Value::Null),
    }));
    if v1["status"].is_object() {
        v2["status"] = strip_nulls(json!({
            "observedGeneration": v1["status"]["observedGeneration"],
            "lastScaleTime": v1["status"]["lastScaleTime"],
            "currentReplicas": v1["status"]["currentReplicas"],
            "desiredReplicas": v1["status"]["desiredReplicas"],
            "currentMetrics": current_metrics.unwrap_or(Value::Null),
            "conditions": conditions.unwrap_or(Value::Null),
        }));
    }
    v2
}

/// `events.k8s.io/v1` names for `core/v1` Event fields (the rest are the same).
const EVENT_FIELDS: [(&str, &str); 8] = [
    ("note", "message"),
    ("regarding", "involvedObject"),
    ("reportingController", "reportingComponent"),
    ("reportingInstance", "reportingInstance"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// Events are stored as `core/v1` Events, upstream's storage version.
pub(crate) fn event_to_core(served: Value) -> Value {
    rename_fields(served, "v1", |(new, old)| (new, old))
}

pub(crate) fn event_from_core(stored: Value) -> Value {
    rename_fields(stored, "events.k8s.io/v1", |(new, old)| (old, new))
}

fn rename_fields(
    object: Value,
    api_version: &str,
    direction: impl Fn((&'static str, &'static str)) -> (&'static str, &'static str),
) -> Value {
    let Value::Object(mut map) = object else {
        return object;
    };
    for pair in EVENT_FIELDS {
        let (from, to) = direction(pair);
        if let Some(value) = map.remove(from) {
            map.insert(to.to_string(), value);
        }
    }
    map.insert("apiVersion".into(), json!(api_version));
    Value::Object(map)
}

fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Value {
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}}
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 30}}
            }
        })
    }

    #[test]
    fn v1_sees_the_cpu_target_and_keeps_the_rest_in_annotations() {
        let v1 = hpa_v2_to_v1(v2());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 70);
        assert!(v1["spec"].get("metrics").is_none());
        assert!(v1["metadata"]["annotations"][METRICS]
            .as_str()
            .unwrap()
            .contains("memory"));
        let back = hpa_v1_to_v2(v1);
        assert_eq!(back, v2(), "a v1 round trip loses nothing");
    }

    #[test]
    fn events_round_trip_through_core() {
        let event = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"},
            "regarding": {"kind": "Pod", "name": "web"}, "note": "pulled", "reason": "Pulled",
            "type": "Normal", "reportingController": "kubelet", "eventTime": "2026-01-01T00:00:00.000000Z"
        });
        let core = event_to_core(event.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "web");
        assert_eq!(core["message"], "pulled");
        assert_eq!(core["reportingComponent"], "kubelet");
        assert_eq!(event_from_core(core), event);
    }

    #[test]
    fn a_v1_object_becomes_a_cpu_metric() {
        let v1 = json!({
            "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50}
        });
        let v2 = hpa_v1_to_v2(v1);
        assert_eq!(
            v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            50
        );
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert!(v2["metadata"].get("annotations").is_none());
    }
}
