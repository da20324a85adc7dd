//! `metrics.k8s.io/v1beta1`, the resource metrics API that upstream's metrics-server
//! serves through aggregation, served here by the API server itself: NodeMetrics and
//! PodMetrics read on demand from each node's `/stats/summary` (the kubelet client
//! certificate of `pods/log`), so `kubectl top` and the HPA need no extra component.
//!
//! CPU is the node's `usageNanoCores` (a rate against the node's previous sample, see
//! `crates/node/src/stats.rs`), memory the working set, as metrics-server reports them.
//! `window` is the time since this server last scraped the node (the node rates against
//! that scrape's sample), or the node's own 200 ms second sample when there was none.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use korvet_apimachinery::selector::LabelSelector;
use serde_json::{json, Value};

use crate::body::Reply;
use crate::error::{ApiError, ApiResult};
use crate::handlers::Call;
use crate::registry::{NameRule, ResourceType};
use crate::request::Verb;

pub(crate) const GROUP: &str = "metrics.k8s.io";
pub(crate) const VERSION: &str = "v1beta1";
/// How long one node may take to answer before its figures are left out.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// A summary larger than this is refused (a node with thousands of pods is ~1 MiB).
const MAX_SUMMARY: usize = 32 << 20;
/// The node's fallback window when nobody scraped it recently.
const FRESH_WINDOW: Duration = Duration::from_millis(200);
/// The node rates against a previous sample only when it is younger than this.
const MAX_WINDOW: Duration = Duration::from_secs(60);

/// NodeMetrics and PodMetrics, for the registry.
pub(crate) fn resources() -> Vec<ResourceType> {
    [
        ("NodeMetrics", "nodes", false),
        ("PodMetrics", "pods", true),
    ]
    .into_iter()
    .map(|(kind, plural, namespaced)| ResourceType {
        group: GROUP.to_string(),
        version: VERSION.to_string(),
        kind: kind.to_string(),
        list_kind: format!("{kind}List"),
        plural: plural.to_string(),
        singular: String::new(),
        namespaced,
        short_names: Vec::new(),
        categories: Vec::new(),
        subresources: Vec::new(),
        name_rule: NameRule::Subdomain,
        normalize: None,
        defaults: None,
        validate: None,
        on_create: None,
        columns: Vec::new(),
        selectable_fields: Vec::new(),
        field_value: None,
        virtual_create: false,
        schema_name: None,
        custom_schema: None,
        conversion: None,
        scale_paths: None,
        storage_prefix: None,
    })
    .collect()
}

pub(crate) fn is_metrics(resource: &ResourceType) -> bool {
    resource.group == GROUP
}

/// Upstream's metrics-server answers get and list (watch is refused).
pub(crate) const VERBS: [&str; 2] = ["get", "list"];

/// When this server last scraped each node, for `window`.
fn last_scrapes() -> &'static Mutex<HashMap<String, Instant>> {
    static LAST: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    LAST.get_or_init(|| Mutex::new(HashMap::new()))
}

/// CPU in nanocores as upstream's canonical quantity (`2`, `250m`, `1500u`, `123456n`).
pub(crate) fn cpu_quantity(nano_cores: u64) -> String {
    if nano_cores == 0 {
        return "0".to_string();
    }
    for (divisor, suffix) in [(1_000_000_000, ""), (1_000_000, "m"), (1_000, "u")] {
        if nano_cores.is_multiple_of(divisor) {
            return format!("{}{suffix}", nano_cores / divisor);
        }
    }
    format!("{nano_cores}n")
}

/// Bytes as upstream's canonical binary-SI quantity (`123Ki`, `5Mi`, `1000`).
pub(crate) fn memory_quantity(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_string();
    }
    for (shift, suffix) in [(50, "Pi"), (40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A Go `metav1.Duration` string (`15.2s`, `200ms`), as metrics-server prints `window`.
fn go_duration(d: Duration) -> String {
    let millis = d.as_millis();
    if millis < 1000 {
        format!("{millis}ms")
    } else if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

fn usage(stats: &Value) -> Option<Value> {
    let cpu = stats["cpu"]["usageNanoCores"].as_u64()?;
    let memory = stats["memory"]["workingSetBytes"].as_u64()?;
    Some(json!({"cpu": cpu_quantity(cpu), "memory": memory_quantity(memory)}))
}

/// One node's summary with the window it was measured over.
struct Scrape {
    summary: Value,
    window: Duration,
}

async fn scrape(call: &Call<'_>, node: &Value) -> ApiResult<Scrape> {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let (address, port) = crate::pod_logs::kubelet_endpoint(node)?;
    let tls = call.server.kubelet_client.get().cloned().ok_or_else(|| {
        ApiError::unavailable("this API server has no kubelet client certificate")
    })?;
    let fetch = async {
        let mut body = crate::pod_logs::fetch(tls, &address, port, "/stats/summary").await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_SUMMARY {
                return Err(ApiError::internal(format!(
                    "the summary of node {name:?} is too large"
                )));
            }
        }
        serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| ApiError::internal(format!("the summary of node {name:?}: {e}")))
    };
    let summary = tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
        .await
        .map_err(|_| ApiError::internal(format!("node {name:?} did not answer in time")))??;
    let now = Instant::now();
    let previous = last_scrapes()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_string(), now);
    let window = previous
        .map(|t| now.duration_since(t))
        .filter(|d| *d >= Duration::from_millis(100) && *d <= MAX_WINDOW)
        .unwrap_or(FRESH_WINDOW);
    Ok(Scrape { summary, window })
}

/// Scrapes the given nodes in parallel; nodes that fail are logged and left out, as
/// metrics-server leaves them out.
async fn scrape_all(call: &Call<'_>, nodes: &[Value]) -> HashMap<String, Scrape> {
    let scrapes = futures::future::join_all(nodes.iter().map(|n| async move {
        let name = n["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (name, scrape(call, n).await)
    }))
    .await;
    scrapes
        .into_iter()
        .filter_map(|(name, result)| match result {
            Ok(s) => Some((name, s)),
            Err(e) => {
                tracing::warn!(node = %name, error = %e.to_status()["message"], "no resource metrics from node");
                None
            }
        })
        .collect()
}

fn label_selector(call: &Call<'_>) -> ApiResult<Option<LabelSelector>> {
    match call
        .query
        .label_selector
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        Some(s) => Ok(Some(
            LabelSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?,
        )),
        None => Ok(None),
    }
}

async fn list_objects(
    call: &Call<'_>,
    plural: &str,
    namespace: Option<&str>,
    name: Option<&str>,
    selector: Option<&LabelSelector>,
) -> ApiResult<Vec<Value>> {
    let resource = call
        .server
        .registry
        .get("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("no {plural} resource")))?;
    let keep = |o: &Value| {
        name.is_none_or(|n| o["metadata"]["name"] == n)
            && selector.is_none_or(|s| s.matches_json_labels(&o["metadata"]["labels"]))
    };
    let prefix = match (namespace, name) {
        (ns, Some(n)) => resource.key(ns, n),
        (ns, None) => resource.list_prefix(ns),
    };
    Ok(call
        .server
        .objects
        .list(&prefix, 0, None, 0, &keep)
        .await?
        .items)
}

fn metadata(object: &Value, with_namespace: bool) -> Value {
    let meta = &object["metadata"];
    let mut m = json!({
        "name": meta["name"],
        "creationTimestamp": time_now(),
    });
    if with_namespace {
        m["namespace"] = meta["namespace"].clone();
    }
    if meta["labels"].is_object() {
        m["labels"] = meta["labels"].clone();
    }
    m
}

fn time_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The NodeMetrics of `node` from its summary.
fn node_metrics(node: &Value, scrape: &Scrape) -> Option<Value> {
    let stats = &scrape.summary["node"];
    Some(json!({
        "kind": "NodeMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": metadata(node, false),
        "timestamp": stats["cpu"]["time"],
        "window": go_duration(scrape.window),
        "usage": usage(stats)?,
    }))
}

/// The PodMetrics of `pod` from its node's summary; `None` while a container has no
/// figures yet (metrics-server leaves such pods out too).
fn pod_metrics(pod: &Value, scrape: &Scrape) -> Option<Value> {
    let uid = pod["metadata"]["uid"].as_str()?;
    let stats = scrape.summary["pods"]
        .as_array()?
        .iter()
        .find(|p| p["podRef"]["uid"] == uid)?;
    let containers: Vec<Value> = stats["containers"]
        .as_array()?
        .iter()
        .map(|c| Some(json!({"name": c["name"], "usage": usage(c)?})))
        .collect::<Option<_>>()?;
    if containers.is_empty() {
        return None;
    }
    let timestamp = stats["containers"][0]["cpu"]["time"].clone();
    Some(json!({
        "kind": "PodMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": metadata(pod, true),
        "timestamp": timestamp,
        "window": go_duration(scrape.window),
        "containers": containers,
    }))
}

async fn nodes(call: &Call<'_>, name: Option<&str>) -> ApiResult<Vec<Value>> {
    let selector = label_selector(call)?;
    let nodes = list_objects(call, "nodes", None, name, selector.as_ref()).await?;
    let scrapes = scrape_all(call, &nodes).await;
    Ok(nodes
        .iter()
        .filter_map(|n| {
            let scrape = scrapes.get(n["metadata"]["name"].as_str()?)?;
            node_metrics(n, scrape)
        })
        .collect())
}

async fn pods(
    call: &Call<'_>,
    namespace: Option<&str>,
    name: Option<&str>,
) -> ApiResult<Vec<Value>> {
    let selector = label_selector(call)?;
    let pods: Vec<Value> = list_objects(call, "pods", namespace, name, selector.as_ref())
        .await?
        .into_iter()
        .filter(|p| p["status"]["phase"] == "Running")
        .collect();
    let wanted: BTreeMap<&str, ()> = pods
        .iter()
        .filter_map(|p| p["spec"]["nodeName"].as_str())
        .map(|n| (n, ()))
        .collect();
    let mut nodes = Vec::new();
    for node in wanted.keys() {
        nodes.extend(list_objects(call, "nodes", None, Some(node), None).await?);
    }
    let scrapes = scrape_all(call, &nodes).await;
    Ok(pods
        .iter()
        .filter_map(|p| {
            let scrape = scrapes.get(p["spec"]["nodeName"].as_str()?)?;
            pod_metrics(p, scrape)
        })
        .collect())
}

fn list_reply(call: &Call<'_>, items: Vec<Value>) -> Reply {
    let list = json!({
        "kind": call.resource.list_kind,
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {},
        "items": items,
    });
    if crate::body::accepts_table(call.headers) {
        let columns = crate::table::default_columns();
        let include = call.query.include_object.as_deref().unwrap_or("Metadata");
        return Reply::json(
            http::StatusCode::OK,
            crate::table::build(&columns, &items_of(&list), "", None, include),
        );
    }
    Reply::json(http::StatusCode::OK, list)
}

fn items_of(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

/// Serves get and list of NodeMetrics and PodMetrics.
pub(crate) async fn serve(call: &Call<'_>) -> ApiResult<Reply> {
    let pod_kind = call.resource.namespaced;
    let namespace = call.request.namespace.clone();
    let name = call.request.name.clone();
    if call.request.subresource.is_some() {
        return Err(ApiError::no_route(&call.resource.plural));
    }
    let found = match call.request.verb {
        Verb::Get | Verb::List if pod_kind => {
            pods(call, namespace.as_deref(), name.as_deref()).await?
        }
        Verb::Get | Verb::List => nodes(call, name.as_deref()).await?,
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "{}.{GROUP} only supports get and list",
                call.resource.plural
            )))
        }
    };
    if call.request.verb == Verb::List {
        return Ok(list_reply(call, found));
    }
    let Some(object) = found.into_iter().next() else {
        let (what, shown) = if pod_kind {
            (
                "podmetrics",
                format!(
                    "{}/{}",
                    namespace.unwrap_or_default(),
                    name.unwrap_or_default()
                ),
            )
        } else {
            ("nodemetrics", name.unwrap_or_default())
        };
        return Err(ApiError::new(
            404,
            "NotFound",
            format!("{what}.{GROUP} \"{shown}\" not found"),
        ));
    };
    if crate::body::accepts_table(call.headers) {
        let columns = crate::table::default_columns();
        let include = call.query.include_object.as_deref().unwrap_or("Metadata");
        return Ok(Reply::json(
            http::StatusCode::OK,
            crate::table::build(&columns, &[object], "", None, include),
        ));
    }
    Ok(Reply::json(http::StatusCode::OK, object))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_canonical_as_upstream() {
        assert_eq!(cpu_quantity(0), "0");
        assert_eq!(cpu_quantity(2_000_000_000), "2");
        assert_eq!(cpu_quantity(250_000_000), "250m");
        assert_eq!(cpu_quantity(1_500_000), "1500u");
        assert_eq!(cpu_quantity(123_456), "123456n");
        assert_eq!(memory_quantity(1024 * 1024 * 5), "5Mi");
        assert_eq!(memory_quantity(1024 * 1000), "1000Ki");
        assert_eq!(memory_quantity(1000), "1000");
    }

    #[test]
    fn windows_print_as_go_durations() {
        assert_eq!(go_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(go_duration(Duration::from_secs(15)), "15s");
        assert_eq!(go_duration(Duration::from_millis(15250)), "15.25s");
    }

    #[test]
    fn pod_metrics_need_every_container() {
        let pod =
            json!({"metadata": {"name": "p", "namespace": "d", "uid": "u1", "labels": {"a": "b"}}});
        let full = |second: Value| Scrape {
            summary: json!({"pods": [{"podRef": {"uid": "u1"}, "containers": [
                {"name": "a", "cpu": {"time": "2026-01-01T00:00:00Z", "usageNanoCores": 5_000_000}, "memory": {"workingSetBytes": 2048}},
                second,
            ]}]}),
            window: Duration::from_secs(15),
        };
        let m = pod_metrics(
            &pod,
            &full(json!({"name": "b", "cpu": {"usageNanoCores": 1}, "memory": {"workingSetBytes": 1024}})),
        )
        .unwrap();
        assert_eq!(
            m["containers"][0]["usage"],
            json!({"cpu": "5m", "memory": "2Ki"})
        );
        assert_eq!(m["metadata"]["labels"]["a"], "b");
        assert_eq!(m["window"], "15s");
        assert_eq!(m["timestamp"], "2026-01-01T00:00:00Z");
        assert!(pod_metrics(&pod, &full(json!({"name": "b", "cpu": {}}))).is_none());
    }
}
