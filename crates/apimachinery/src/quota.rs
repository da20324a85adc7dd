//! What an object costs against a ResourceQuota (upstream's quota evaluators), over
//! JSON: one implementation for the API server's admission and the quota controller.
//!
//! Quantities are milli-units (`i128`); counts are 1000 per object.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::quantity::parse_milli;

pub type Usage = BTreeMap<String, i128>;

const ONE: i128 = 1000;

/// A milli-value of resource `name` as upstream prints it: counts and CPU in decimal
/// (`2`, `500m`), memory and storage in binary units when exact (`64Mi`).
pub fn format_quantity(name: &str, milli: i128) -> String {
    if milli % ONE != 0 {
        return format!("{milli}m");
    }
    let n = milli / ONE;
    let binary = name.contains("memory") || name.contains("storage");
    if binary && n != 0 {
        for (shift, suffix) in [(40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
            if n % (1i128 << shift) == 0 {
                return format!("{}{suffix}", n >> shift);
            }
        }
    }
    n.to_string()
}

/// Quantity `name` of a JSON map, a string or (as some clients send) a number.
fn quantity(map: &Value, name: &str) -> Option<i128> {
    map[name].as_str().and_then(parse_milli).or_else(|| {
        map[name]
            .as_i64()
            .map(|n| i128::from(n) * ONE)
            .or_else(|| map[name].as_f64().map(|f| (f * 1000.0).ceil() as i128))
    })
}

/// What one container asks for: `cpu`/`requests.cpu`, `limits.cpu`, and memory alike.
pub fn container_usage(container: &Value) -> Usage {
    let mut usage = Usage::new();
    let requests = &container["resources"]["requests"];
    let limits = &container["resources"]["limits"];
    for resource in ["cpu", "memory", "ephemeral-storage"] {
        if let Some(q) = quantity(requests, resource) {
            usage.insert(resource.to_string(), q);
            usage.insert(format!("requests.{resource}"), q);
        }
        if let Some(q) = quantity(limits, resource) {
            usage.insert(format!("limits.{resource}"), q);
        }
    }
    usage
}

fn add(into: &mut Usage, from: &Usage) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

fn max_into(into: &mut Usage, from: &Usage) {
    for (k, v) in from {
        let e = into.entry(k.clone()).or_default();
        *e = (*e).max(*v);
    }
}

fn pod_terminal(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded") | Some("Failed")
    )
}

/// A pod's containers, then its init containers.
pub fn containers_and_init_containers(pod: &Value) -> impl Iterator<Item = &Value> {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
}

/// No container requests or limits anything (the BestEffort QoS class).
fn best_effort(pod: &Value) -> bool {
    let all = containers_and_init_containers(pod);
    let mut none = true;
    for c in all {
        let r = &c["resources"];
        let has = |m: &Value| m.as_object().is_some_and(|o| !o.is_empty());
        if has(&r["requests"]) || has(&r["limits"]) {
            none = false;
        }
    }
    none
}

/// The resources a pod counts against (upstream's `PodUsageFunc`): the sum over its
/// containers, at least the largest init container, nothing once it has terminated.
fn pod_usage(pod: &Value) -> Usage {
    let mut usage = Usage::new();
    if pod_terminal(pod) {
        return usage;
    }
    let mut sum = Usage::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        add(&mut sum, &container_usage(c));
    }
    for c in pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        max_into(&mut sum, &container_usage(c));
    }
    usage.insert("pods".to_string(), ONE);
    usage.extend(sum);
    usage
}

/// What `object` of `group`/`plural` costs, for every resource name a quota may track.
pub fn object_usage(group: &str, plural: &str, object: &Value) -> Usage {
    let mut usage = match (group, plural) {
        ("", "pods") => pod_usage(object),
        ("", "services") => {
            let kind = object["spec"]["type"].as_str().unwrap_or("ClusterIP");
            let ports = object["spec"]["ports"].as_array().map_or(0, |p| p.len()) as i128;
            let mut u = Usage::from([("services".to_string(), ONE)]);
            if kind == "NodePort" || kind == "LoadBalancer" {
                u.insert("services.nodeports".into(), ports * ONE);
            }
            if kind == "LoadBalancer" {
                u.insert("services.loadbalancers".into(), ONE);
            }
            u
        }
        ("", "persistentvolumeclaims") => {
            let mut u = Usage::from([("persistentvolumeclaims".to_string(), ONE)]);
            if let Some(q) = quantity(&object["spec"]["resources"]["requests"], "storage") {
                u.insert("requests.storage".into(), q);
            }
            u
        }
        ("", p @ ("secrets" | "configmaps" | "replicationcontrollers" | "resourcequotas")) => {
            Usage::from([(p.to_string(), ONE)])
        }
        _ => Usage::new(),
    };
    // A terminated pod is not charged, not even as a count.
    if !(plural == "pods" && group.is_empty() && pod_terminal(object)) {
        let count = if group.is_empty() {
            format!("count/{plural}")
        } else {
            format!("count/{plural}.{group}")
        };
        usage.insert(count, ONE);
    }
    usage
}

/// Whether a quota with these `scopes` counts `object` (scopes apply to pods only).
pub fn scopes_match(quota: &Value, group: &str, plural: &str, object: &Value) -> bool {
    let scopes: Vec<&str> = quota["spec"]["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if scopes.is_empty() {
        return true;
    }
    if !(group.is_empty() && plural == "pods") {
        return false;
    }
    let terminating = object["spec"]["activeDeadlineSeconds"]
        .as_i64()
        .is_some_and(|s| s >= 0);
    scopes.iter().all(|scope| match *scope {
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        "BestEffort" => best_effort(object),
        "NotBestEffort" => !best_effort(object),
        _ => false,
    })
}

/// `spec.hard` (or `status.hard`) as milli-values.
pub fn hard(quota: &Value, part: &str) -> Usage {
    quota[part]["hard"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| quantity(&quota[part]["hard"], k).map(|q| (k.clone(), q)))
        .collect()
}

/// `status.used` as milli-values.
pub fn used(quota: &Value) -> Usage {
    let used = &quota["status"]["used"];
    used.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| quantity(used, k).map(|q| (k.clone(), q)))
        .collect()
}

/// Usage as the quota status' `used` map.
pub fn to_json(usage: &Usage) -> Value {
    Value::Object(
        usage
            .iter()
            .map(|(k, v)| (k.clone(), json!(format_quantity(k, *v))))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_cost_their_containers() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m"}}},
        ], "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}]}});
        let u = object_usage("", "pods", &pod);
        assert_eq!(u["pods"], 1000);
        assert_eq!(u["count/pods"], 1000);
        assert_eq!(u["requests.cpu"], 2000);
        assert_eq!(u["limits.cpu"], 1000);
        assert_eq!(
            format_quantity("requests.memory", u["requests.memory"]),
            "64Mi"
        );
        let done = json!({"spec": {}, "status": {"phase": "Succeeded"}});
        assert!(object_usage("", "pods", &done).is_empty());
        let svc = json!({"spec": {"type": "NodePort", "ports": [{}, {}]}});
        assert_eq!(
            object_usage("", "services", &svc)["services.nodeports"],
            2000
        );
        assert_eq!(
            object_usage("apps", "deployments", &json!({})),
            Usage::from([("count/deployments.apps".to_string(), 1000)])
        );
    }

    #[test]
    fn scopes() {
        let q = json!({"spec": {"scopes": ["BestEffort", "NotTerminating"]}});
        let best = json!({"spec": {"containers": [{"name": "a"}]}});
        let burst = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}});
        assert!(scopes_match(&q, "", "pods", &best));
        assert!(!scopes_match(&q, "", "pods", &burst));
        assert!(!scopes_match(&q, "", "secrets", &best));
        let term = json!({"spec": {"activeDeadlineSeconds": 5, "containers": []}});
        assert!(!scopes_match(&q, "", "pods", &term));
    }

    #[test]
    fn quantities() {
        assert_eq!(format_quantity("pods", 2000), "2");
        assert_eq!(format_quantity("requests.cpu", 1500), "1500m");
        assert_eq!(format_quantity("requests.storage", (1 << 30) * 1000), "1Gi");
        assert_eq!(format_quantity("requests.memory", 1_000_000), "1000");
    }
}
