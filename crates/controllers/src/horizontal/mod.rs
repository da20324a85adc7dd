//! The HorizontalPodAutoscaler controller (autoscaling/v2), as upstream's
//! `pkg/controller/podautoscaler`: every 15 s per HPA (upstream's
//! `--horizontal-pod-autoscaler-sync-period`), and at once when its spec changes, it reads
//! the target's `scale` subresource, the selected pods and their metrics from
//! `metrics.k8s.io`, computes a replica count per metric ([`replicas`]), takes the
//! largest, normalises it ([`behavior`]) and writes the target's scale and the HPA's
//! status, with upstream's conditions, reasons and Events.
//!
//! Only resource metrics (CPU and memory, Utilization and AverageValue) are computed;
//! Pods/Object/External metrics need a custom metrics API that is not served, and make
//! ScalingActive False as upstream does when that API fails.

pub(crate) mod behavior;
pub(crate) mod replicas;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
    MetricSpec, MetricStatus, MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use korvet_apimachinery::events::EventRecorder;
use korvet_apimachinery::quantity;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::{json, Value};

use behavior::{Behavior, History, Normalized};
use replicas::{PodInfo, PodMetric};

const NAME: &str = "horizontal-pod-autoscaler";
/// Upstream's `--horizontal-pod-autoscaler-sync-period`.
pub(crate) const SYNC_PERIOD: Duration = Duration::from_secs(15);

struct Ctx {
    client: kube::Client,
    recorder: EventRecorder,
    histories: Mutex<HashMap<String, History>>,
    /// When each HPA was last synced, at which generation.
    last_sync: Mutex<HashMap<String, (Instant, Option<i64>)>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SyncError(String);

/// Runs the HPA controller until its task is aborted.
pub(crate) async fn run(client: kube::Client) {
    let api: Api<HorizontalPodAutoscaler> = Api::all(client.clone());
    let ctx = Arc::new(Ctx {
        recorder: EventRecorder::new(client.clone(), NAME),
        client,
        histories: Mutex::new(HashMap::new()),
        last_sync: Mutex::new(HashMap::new()),
    });
    Controller::new(api, watcher::Config::default())
        .run(reconcile, |_, _, _| Action::requeue(SYNC_PERIOD), ctx)
        .for_each(|_| async {})
        .await;
}

/// How long to wait before syncing `hpa` again: its own status writes wake the watch,
/// and only a spec change (a new generation) or the period may start a sync, as
/// upstream's rate-limited queue allows.
fn wait_before_sync(ctx: &Ctx, key: &str, generation: Option<i64>) -> Option<Duration> {
    let mut last = ctx.last_sync.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, seen)) = last.get(key) {
        let elapsed = at.elapsed();
        // A little slack so that the periodic requeue is never turned away.
        if *seen == generation && elapsed + Duration::from_millis(500) < SYNC_PERIOD {
            return Some(SYNC_PERIOD - elapsed);
        }
    }
    last.insert(key.to_string(), (Instant::now(), generation));
    None
}

async fn reconcile(hpa: Arc<HorizontalPodAutoscaler>, ctx: Arc<Ctx>) -> Result<Action, SyncError> {
    let key = format!("{}/{}", hpa.namespace().unwrap_or_default(), hpa.name_any());
    if let Some(wait) = wait_before_sync(&ctx, &key, hpa.metadata.generation) {
        return Ok(Action::requeue(wait));
    }
    let started = Instant::now();
    let result = sync(&hpa, &ctx).await;
    crate::metrics::sync_done(NAME, started, result.is_ok());
    if let Err(e) = &result {
        tracing::debug!(hpa = %key, error = %e, "HPA sync");
    }
    Ok(Action::requeue(SYNC_PERIOD))
}

/// The API resource of a scale target (the workload kinds without a discovery call).
async fn target_resource(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
) -> Result<ApiResource, String> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = match (group, kind) {
        ("apps", "Deployment") => Some("deployments"),
        ("apps", "ReplicaSet") => Some("replicasets"),
        ("apps", "StatefulSet") => Some("statefulsets"),
        ("", "ReplicationController") => Some("replicationcontrollers"),
        _ => None,
    };
    match plural {
        Some(p) => Ok(ApiResource::from_gvk_with_plural(&gvk, p)),
        None => kube::discovery::pinned_kind(client, &gvk)
            .await
            .map(|(ar, _)| ar)
            .map_err(|e| format!("unable to determine resource for scale target reference: {e}")),
    }
}

fn set_condition(
    status: &mut HorizontalPodAutoscalerStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    now: Timestamp,
) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let value = if ok { "True" } else { "False" };
    let transition = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == value)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    let condition = HorizontalPodAutoscalerCondition {
        type_: type_.to_string(),
        status: value.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_transition_time: Some(transition),
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
}

/// One pod's usage of `resource` from metrics.k8s.io, in milli-units.
async fn pod_metrics(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
    resource: &str,
) -> Result<BTreeMap<String, PodMetric>, String> {
    let query = form_query(selector);
    let path = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods?{query}");
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let list: Value = client.request(request).await.map_err(|e| e.to_string())?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return Err("no metrics returned from resource metrics API".to_string());
    }
    let mut out = BTreeMap::new();
    for item in items {
        let Some(name) = item["metadata"]["name"].as_str() else {
            continue;
        };
        let mut sum = 0i128;
        let mut missing = false;
        for c in item["containers"].as_array().into_iter().flatten() {
            match c["usage"][resource]
                .as_str()
                .and_then(quantity::parse_milli)
            {
                Some(v) => sum += v,
                None => missing = true,
            }
        }
        let timestamp = item["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<Timestamp>().ok());
        let window = item["window"]
            .as_str()
            .and_then(parse_go_duration)
            .unwrap_or(SignedDuration::ZERO);
        if let (false, Some(timestamp)) = (missing, timestamp) {
            out.insert(
                name.to_string(),
                PodMetric {
                    value: sum,
                    timestamp,
                    window,
                },
            );
        }
    }
    Ok(out)
}

fn form_query(selector: &str) -> String {
    let mut encoded = String::from("labelSelector=");
    for b in selector.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    encoded
}

/// `15s`, `200ms`, `1m0s`, `15.25s` (Go's duration strings).
fn parse_go_duration(text: &str) -> Option<SignedDuration> {
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(split);
        let number: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        total += number
            * match unit {
                "h" => 3600.0,
                "m" => 60.0,
                "s" => 1.0,
                "ms" => 1e-3,
                "us" | "µs" => 1e-6,
                "ns" => 1e-9,
                _ => return None,
            };
        rest = tail;
    }
    SignedDuration::try_from_secs_f64(total).ok()
}

fn pod_info(pod: &Pod, resource: &str) -> PodInfo {
    let name = pod.name_any();
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| {
            (
                c.status == "True",
                c.last_transition_time
                    .as_ref()
                    .map(|t| t.0)
                    .unwrap_or(Timestamp::UNIX_EPOCH),
            )
        });
    let mut request = Ok(0i128);
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        let value = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .and_then(|q| quantity::parse_milli(&q.0));
        match (value, &mut request) {
            (Some(v), Ok(sum)) => *sum += v,
            (None, Ok(_)) => {
                request = Err(format!(
                    "missing request for {resource} in container {} of Pod {name}",
                    c.name
                ))
            }
            _ => {}
        }
    }
    PodInfo {
        phase: status
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Pending".to_string()),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        ready,
        start_time: status.and_then(|s| s.start_time.as_ref()).map(|t| t.0),
        request,
        name,
    }
}

/// One metric's proposal: replicas, its name for messages, and its status.
struct Proposal {
    replicas: i32,
    name: String,
    status: MetricStatus,
}

/// Why a metric could not be computed: the ScalingActive reason and the error.
struct MetricError {
    reason: String,
    error: String,
}

async fn resource_proposal(
    ctx: &Ctx,
    namespace: &str,
    selector: &str,
    current: i32,
    spec: &MetricSpec,
    now: Timestamp,
) -> Result<Proposal, MetricError> {
    let Some(source) = &spec.resource else {
        return Err(MetricError {
            reason: format!("FailedGet{}Metric", spec.type_),
            error: format!(
                "unable to get metric of type {}: no custom or external metrics API is served",
                spec.type_
            ),
        });
    };
    let resource = source.name.as_str();
    let fail = |error: String| MetricError {
        reason: "FailedGetResourceMetric".to_string(),
        error,
    };
    let target = &source.target;
    let cpu = resource == "cpu";
    let what = if target.average_value.is_some() {
        "usage"
    } else {
        "utilization"
    };
    let metrics = pod_metrics(&ctx.client, namespace, selector, resource)
        .await
        .map_err(|e| {
            fail(format!(
                "failed to get {resource} {what}: unable to get metrics for resource {resource}: {e}"
            ))
        })?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let pods = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| fail(format!("failed to get {resource} {what}: unable to get pods while calculating replica count: {e}")))?;
    let infos: Vec<PodInfo> = pods.items.iter().map(|p| pod_info(p, resource)).collect();
    if let Some(value) = &target.average_value {
        let target_milli = quantity::parse_milli(&value.0).unwrap_or(0);
        let (replicas, usage) =
            replicas::average_value_replicas(current, target_milli, &infos, metrics, cpu, now)
                .map_err(|e| fail(format!("failed to get {resource} usage: {e}")))?;
        return Ok(Proposal {
            replicas,
            name: format!("{resource} resource"),
            status: resource_status(resource, None, usage),
        });
    }
    let Some(utilization) = target.average_utilization else {
        return Err(fail("invalid resource metric source: neither an average utilization target nor an average value (usage) target was set".to_string()));
    };
    let (replicas, current_utilization, raw) =
        replicas::utilization_replicas(current, utilization, &infos, metrics, cpu, now)
            .map_err(|e| fail(format!("failed to get {resource} utilization: {e}")))?;
    Ok(Proposal {
        replicas,
        name: format!("{resource} resource utilization (percentage of request)"),
        status: resource_status(resource, Some(current_utilization), raw),
    })
}

fn resource_status(resource: &str, utilization: Option<i32>, average_milli: i128) -> MetricStatus {
    MetricStatus {
        type_: "Resource".to_string(),
        resource: Some(ResourceMetricStatus {
            name: resource.to_string(),
            current: MetricValueStatus {
                average_utilization: utilization,
                average_value: Some(Quantity(quantity::format_decimal(average_milli))),
                value: None,
            },
        }),
        ..Default::default()
    }
}

/// The default metric of an HPA without metrics: 80 % CPU (autoscaling/v2 defaulting).
fn metric_specs(hpa: &HorizontalPodAutoscaler) -> Vec<MetricSpec> {
    let specs = hpa
        .spec
        .as_ref()
        .and_then(|s| s.metrics.clone())
        .unwrap_or_default();
    if !specs.is_empty() {
        return specs;
    }
    serde_json::from_value(json!([{
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
    }]))
    .unwrap_or_default()
}

async fn sync(hpa: &HorizontalPodAutoscaler, ctx: &Ctx) -> Result<(), SyncError> {
    let namespace = hpa.namespace().unwrap_or_default();
    let name = hpa.name_any();
    let key = format!("{namespace}/{name}");
    let Some(spec) = hpa.spec.clone() else {
        return Ok(());
    };
    let now = Timestamp::now();
    let original = hpa.status.clone().unwrap_or_default();
    let mut status = original.clone();
    let target = &spec.scale_target_ref;
    let reference = format!("{}/{}/{}", target.kind, namespace, target.name);
    let api_version = target.api_version.clone().unwrap_or_default();

    let scale_api = match target_resource(&ctx.client, &api_version, &target.kind).await {
        Ok(ar) => Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &namespace, &ar),
        Err(e) => {
            return fail_get_scale(hpa, ctx, status, &original, e, now).await;
        }
    };
    let scale: Scale = match scale_api.get_scale(&target.name).await {
        Ok(s) => s,
        Err(e) => {
            let e = error_text(&e);
            return fail_get_scale(hpa, ctx, status, &original, e, now).await;
        }
    };
    set_condition(
        &mut status,
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale".to_string(),
        now,
    );
    let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let mut metric_statuses = Vec::new();
    let mut rescale_reason = String::new();
    let desired;
    let behavior = Behavior::from_spec(spec.behavior.as_ref());
    if current == 0 && min != 0 {
        desired = 0;
        set_condition(
            &mut status,
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero".to_string(),
            now,
        );
    } else if current > max {
        rescale_reason = "Current number of replicas above Spec.MaxReplicas".to_string();
        desired = max;
    } else if current < min {
        rescale_reason = "Current number of replicas below Spec.MinReplicas".to_string();
        desired = min;
    } else {
        let selector = scale
            .status
            .as_ref()
            .and_then(|s| s.selector.clone())
            .filter(|s| !s.is_empty());
        let Some(selector) = selector else {
            let message = "selector is required".to_string();
            ctx.recorder.warning(hpa, "SelectorRequired", message).await;
            set_condition(
                &mut status,
                "ScalingActive",
                false,
                "InvalidSelector",
                "the HPA target's scale is missing a selector".to_string(),
                now,
            );
            fill_status(&mut status, hpa, current, None, Vec::new(), false, now);
            write_status(ctx, hpa, &original, status).await?;
            return Err(SyncError(format!("{reference}: selector is required")));
        };
        let specs = metric_specs(hpa);
        let mut best: Option<Proposal> = None;
        let mut invalid = 0;
        let mut first_error = None;
        for metric in &specs {
            match resource_proposal(ctx, &namespace, &selector, current, metric, now).await {
                Ok(p) => {
                    metric_statuses.push(p.status.clone());
                    if best
                        .as_ref()
                        .is_none_or(|b| b.replicas == 0 || p.replicas > b.replicas)
                    {
                        best = Some(p);
                    }
                }
                Err(e) => {
                    invalid += 1;
                    ctx.recorder.warning(hpa, &e.reason, e.error.clone()).await;
                    first_error.get_or_insert(e);
                }
            }
        }
        let proposed = best.as_ref().map(|b| b.replicas).unwrap_or(0);
        if invalid >= specs.len() || (invalid > 0 && proposed < current) {
            let e = first_error.unwrap_or(MetricError {
                reason: "InvalidMetricSourceType".into(),
                error: "no metrics".into(),
            });
            set_condition(
                &mut status,
                "ScalingActive",
                false,
                &e.reason,
                format!(
                    "the HPA was unable to compute the replica count: {}",
                    e.error
                ),
                now,
            );
            let error = format!(
                "invalid metrics ({invalid} invalid out of {}), first error is: {}",
                specs.len(),
                e.error
            );
            fill_status(&mut status, hpa, current, None, metric_statuses, false, now);
            write_status(ctx, hpa, &original, status).await?;
            ctx.recorder
                .warning(hpa, "FailedComputeMetricsReplicas", error.clone())
                .await;
            return Err(SyncError(format!(
                "failed to compute desired number of replicas based on listed metrics for {reference}: {error}"
            )));
        }
        let Some(best) = best else {
            return Ok(());
        };
        set_condition(
            &mut status,
            "ScalingActive",
            true,
            "ValidMetricFound",
            format!(
                "the HPA was able to successfully calculate a replica count from {}",
                best.name
            ),
            now,
        );
        if best.replicas > current {
            rescale_reason = format!("{} above target", best.name);
        } else if best.replicas < current {
            rescale_reason = "All metrics below target".to_string();
        }
        let normalized: Normalized = {
            let mut histories = ctx.histories.lock().unwrap_or_else(|e| e.into_inner());
            let history = histories.entry(key.clone()).or_default();
            match &behavior {
                Some(b) => {
                    history.normalize_with_behavior(b, current, best.replicas, min, max, now)
                }
                None => history.normalize_plain(current, best.replicas, min, max, now),
            }
        };
        set_condition(
            &mut status,
            "AbleToScale",
            true,
            normalized.able_to_scale.reason,
            normalized.able_to_scale.message.to_string(),
            now,
        );
        let (limited, why) = &normalized.limited;
        set_condition(
            &mut status,
            "ScalingLimited",
            *limited,
            why.reason,
            why.message.to_string(),
            now,
        );
        desired = normalized.replicas;
    }
    let rescale = desired != current;
    if rescale {
        let patch = Patch::Merge(json!({"spec": {"replicas": desired}}));
        if let Err(e) = scale_api
            .patch_scale(&target.name, &PatchParams::default(), &patch)
            .await
        {
            let e = error_text(&e);
            ctx.recorder
                .warning(
                    hpa,
                    "FailedRescale",
                    format!("New size: {desired}; reason: {rescale_reason}; error: {e}"),
                )
                .await;
            set_condition(
                &mut status,
                "AbleToScale",
                false,
                "FailedUpdateScale",
                format!("the HPA controller was unable to update the target scale: {e}"),
                now,
            );
            fill_status(&mut status, hpa, current, None, metric_statuses, false, now);
            write_status(ctx, hpa, &original, status).await?;
            return Err(SyncError(e));
        }
        set_condition(
            &mut status,
            "AbleToScale",
            true,
            "SucceededRescale",
            format!("the HPA controller was able to update the target scale to {desired}"),
            now,
        );
        ctx.recorder
            .normal(
                hpa,
                "SuccessfulRescale",
                format!("New size: {desired}; reason: {rescale_reason}"),
            )
            .await;
        let mut histories = ctx.histories.lock().unwrap_or_else(|e| e.into_inner());
        histories
            .entry(key)
            .or_default()
            .record_scale(behavior.as_ref(), current, desired, now);
        tracing::info!(hpa = %reference, from = current, to = desired, reason = %rescale_reason, "rescaled");
    }
    fill_status(
        &mut status,
        hpa,
        current,
        Some(desired),
        metric_statuses,
        rescale,
        now,
    );
    write_status(ctx, hpa, &original, status).await
}

fn error_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        e => e.to_string(),
    }
}

async fn fail_get_scale(
    hpa: &HorizontalPodAutoscaler,
    ctx: &Ctx,
    mut status: HorizontalPodAutoscalerStatus,
    original: &HorizontalPodAutoscalerStatus,
    error: String,
    now: Timestamp,
) -> Result<(), SyncError> {
    ctx.recorder
        .warning(hpa, "FailedGetScale", error.clone())
        .await;
    set_condition(
        &mut status,
        "AbleToScale",
        false,
        "FailedGetScale",
        format!("the HPA controller was unable to get the target's current scale: {error}"),
        now,
    );
    write_status(ctx, hpa, original, status).await?;
    Err(SyncError(error))
}

fn fill_status(
    status: &mut HorizontalPodAutoscalerStatus,
    hpa: &HorizontalPodAutoscaler,
    current: i32,
    desired: Option<i32>,
    metrics: Vec<MetricStatus>,
    rescaled: bool,
    now: Timestamp,
) {
    status.current_replicas = Some(current);
    status.desired_replicas = desired.unwrap_or(status.desired_replicas);
    status.current_metrics = (!metrics.is_empty()).then_some(metrics);
    status.observed_generation = hpa.metadata.generation;
    if rescaled {
        status.last_scale_time = Some(Time(now));
    }
}

async fn write_status(
    ctx: &Ctx,
    hpa: &HorizontalPodAutoscaler,
    original: &HorizontalPodAutoscalerStatus,
    status: HorizontalPodAutoscalerStatus,
) -> Result<(), SyncError> {
    if &status == original {
        return Ok(());
    }
    let api: Api<HorizontalPodAutoscaler> =
        Api::namespaced(ctx.client.clone(), &hpa.namespace().unwrap_or_default());
    let mut status = json!(status);
    // A merge patch removes a field only by naming it as null.
    if status.get("currentMetrics").is_none() {
        status["currentMetrics"] = Value::Null;
    }
    let patch = Patch::Merge(json!({ "status": status }));
    api.patch_status(&hpa.name_any(), &PatchParams::default(), &patch)
        .await
        .map(|_| ())
        .map_err(|e| SyncError(format!("updating the status: {}", error_text(&e))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(
            parse_go_duration("15s"),
            Some(SignedDuration::from_secs(15))
        );
        assert_eq!(
            parse_go_duration("200ms"),
            Some(SignedDuration::from_millis(200))
        );
        assert_eq!(
            parse_go_duration("1m0.5s"),
            Some(SignedDuration::from_millis(60_500))
        );
        assert_eq!(parse_go_duration("x"), None);
    }

    #[test]
    fn selectors_are_query_encoded() {
        assert_eq!(
            form_query("app=web,tier in (a)"),
            "labelSelector=app%3Dweb%2Ctier%20in%20%28a%29"
        );
    }
}
