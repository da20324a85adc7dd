//! ResourceQuota: what an object costs (upstream's quota evaluators, over JSON, shared
//! with the quota controller in `korvet-controllers`) and the admission plugin that
//! refuses creates over `hard` and charges the quota's `status.used` with a conditional
//! write, so that parallel creates cannot overshoot it.
//!
//! Quantities are milli-units (`i128`); counts are 1000 per object.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::admission::{AdmissionRequest, Operation};
use crate::error::{ApiError, ApiResult};
use crate::server::ApiServer;

pub type Usage = BTreeMap<String, i128>;

const ONE: i128 = 1000;
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

/// `500m` → 500, `2` → 2000, `64Mi` → 67108864000, `123456n` → 124 (rounded up, as upstream's
/// MilliValue); signs and exponents (`1e3`) too.
pub fn parse_milli(text: &str) -> Option<i128> {
    let text = text.trim();
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    // (multiplier, power of ten) of the suffix.
    let (mult, exp10): (i128, i32) = match suffix {
        "" => (1, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        s if s.starts_with(['e', 'E']) => (1, s[1..].parse().ok()?),
        _ => return None,
    };
    let digits = format!("{int_part}{frac_part}");
    let value: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let scale = exp10 + 3 - i32::try_from(frac_part.len()).ok()?;
    let scaled = value.checked_mul(mult)?;
    let out = if scale >= 0 {
        scaled.checked_mul(10i128.checked_pow(u32::try_from(scale).ok()?)?)?
    } else {
        let div = 10i128.checked_pow(u32::try_from(-scale).ok()?)?;
        (scaled + div - 1) / div
    };
    Some(if negative { -out } else { out })
}

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

fn quantity(map: &Value, name: &str) -> Option<i128> {
    map[name].as_str().and_then(parse_milli).or_else(|| {
        map[name]
            .as_i64()
            .map(|n| i128::from(n) * ONE)
            .or_else(|| map[name].as_f64().map(|f| (f * 1000.0).ceil() as i128))
    })
}

/// What one container asks for: `cpu`/`requests.cpu`, `limits.cpu`, and memory alike.
fn container_usage(container: &Value) -> Usage {
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

fn best_effort(pod: &Value) -> bool {
    let all = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        );
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

fn used(quota: &Value) -> Usage {
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
    let containers = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        );
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

    #[test]
    fn quantities() {
        assert_eq!(parse_milli("1.5Gi"), Some(1610612736000));
        assert_eq!(format_quantity("pods", 2000), "2");
        assert_eq!(format_quantity("requests.cpu", 1500), "1500m");
        assert_eq!(format_quantity("requests.storage", (1 << 30) * 1000), "1Gi");
        assert_eq!(format_quantity("requests.memory", 1_000_000), "1000");
    }
}
