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

pub fn hpa_v2_to_v1(stored: Value) -> Value {
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

pub fn hpa_v1_to_v2(served: Value) -> Value {
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
