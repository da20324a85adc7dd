//! PodDisruptionBudget status, as upstream's disruption controller: from the pods a
//! budget selects, `currentHealthy` (ready, not being deleted, not just evicted),
//! `desiredHealthy` and `expectedPods` (from `minAvailable`/`maxUnavailable`; a percent
//! or `maxUnavailable` counts the replicas of the pods' controllers through their `scale`
//! subresource), `disruptionsAllowed`, `disruptedPods` (evictions the pods' watch has not
//! yet shown, kept for two minutes), `observedGeneration` and the `DisruptionAllowed`
//! condition (`SufficientPods`/`InsufficientPods`, `SyncFailed`).
//!
//! One loop over caches of budgets and pods: any change looks at every budget and writes
//! only those whose status changed (a conditional write, as the Eviction API's).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use korvet_apimachinery::events::EventRecorder;
use korvet_apimachinery::selector;
use kube::api::{Api, PostParams};
use kube::runtime::reflector;
use kube::runtime::{watcher, WatchStreamExt};

use crate::workload::{controller_of, is_pod_ready};

/// How long an eviction may wait for its pod to show as deleted (upstream's
/// `DeletionTimeout`).
const DELETION_TIMEOUT: jiff::SignedDuration = jiff::SignedDuration::from_secs(120);

/// Upstream's `GetScaledValueFromIntOrPercent`, rounding up.
pub(crate) fn scaled_value(value: &IntOrString, total: i32) -> Result<i32, String> {
    match value {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let percent: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            Ok(((percent * i64::from(total) + 99) / 100) as i32)
        }
    }
}

fn is_percent(value: &IntOrString) -> bool {
    matches!(value, IntOrString::String(_))
}

/// What a budget's status is computed from.
pub(crate) struct Counts {
    pub expected: i32,
    pub desired_healthy: i32,
    pub current_healthy: i32,
    pub disrupted: BTreeMap<String, Time>,
}

/// Upstream's `updatePdbStatus`: the status for `counts`, keeping conditions' times.
pub(crate) fn status_for(
    pdb: &PodDisruptionBudget,
    counts: Counts,
    now: jiff::Timestamp,
) -> PodDisruptionBudgetStatus {
    let mut allowed = counts.current_healthy - counts.desired_healthy;
    if counts.expected <= 0 || allowed <= 0 {
        allowed = 0;
    }
    let previous = pdb.status.clone().unwrap_or_default();
    let generation = pdb.metadata.generation;
    let mut status = PodDisruptionBudgetStatus {
        current_healthy: counts.current_healthy,
        desired_healthy: counts.desired_healthy,
        expected_pods: counts.expected,
        disruptions_allowed: allowed,
        disrupted_pods: (!counts.disrupted.is_empty()).then_some(counts.disrupted),
        observed_generation: generation,
        conditions: previous.conditions,
    };
    let (value, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    set_condition(&mut status, value, reason, "", now);
    status
}

fn set_condition(
    status: &mut PodDisruptionBudgetStatus,
    value: &str,
    reason: &str,
    message: &str,
    now: jiff::Timestamp,
) {
    let observed = status.observed_generation;
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let transition = conditions
        .iter()
        .find(|c| c.type_ == "DisruptionAllowed")
        .filter(|c| c.status == value)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conditions.retain(|c| c.type_ != "DisruptionAllowed");
    conditions.push(Condition {
        type_: "DisruptionAllowed".into(),
        status: value.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: observed,
        last_transition_time: transition,
    });
}

/// Upstream's `buildDisruptedPodMap`: evictions not yet seen, and the earliest time one
/// of them times out. Expired ones are returned apart, for a warning.
fn disrupted_pods(
    pdb: &PodDisruptionBudget,
    pods: &[&Pod],
    now: jiff::Timestamp,
) -> (BTreeMap<String, Time>, Option<jiff::Timestamp>, Vec<String>) {
    let recorded = pdb
        .status
        .as_ref()
        .and_then(|s| s.disrupted_pods.clone())
        .unwrap_or_default();
    let mut kept = BTreeMap::new();
    let mut recheck: Option<jiff::Timestamp> = None;
    let mut expired = Vec::new();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(name) = pod.metadata.name.as_ref() else {
            continue;
        };
        let Some(at) = recorded.get(name) else {
            continue;
        };
        let deadline = at.0 + DELETION_TIMEOUT;
        if deadline < now {
            expired.push(name.clone());
        } else {
            recheck = Some(recheck.map_or(deadline, |r| r.min(deadline)));
            kept.insert(name.clone(), at.clone());
        }
    }
    (kept, recheck, expired)
}

/// The number of replicas the controllers of `pods` want, through their scale
/// subresource; also the pods without a controller.
async fn expected_scale(
    client: &kube::Client,
    namespace: &str,
    pods: &[&Pod],
) -> Result<(i32, Vec<String>), String> {
    // Owner uid → the uid of what is scaled (a Deployment for its ReplicaSets), and
    // that one's replicas: two ReplicaSets of one Deployment count once.
    let mut by_owner: HashMap<String, String> = HashMap::new();
    let mut scales: HashMap<String, i32> = HashMap::new();
    let mut unmanaged = Vec::new();
    for pod in pods {
        let Some(owner) = controller_of(&pod.metadata) else {
            unmanaged.push(pod.metadata.name.clone().unwrap_or_default());
            continue;
        };
        if by_owner.contains_key(&owner.uid) {
            continue;
        }
        let group = owner.api_version.split('/').next().unwrap_or_default();
        let scale = |e: kube::Error| e.to_string();
        let found: Option<(String, i32)> = match (group, owner.kind.as_str()) {
            ("apps", "ReplicaSet") => {
                let rs: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
                match rs.get_opt(&owner.name).await.map_err(scale)? {
                    Some(set) if set.metadata.uid.as_deref() == Some(&owner.uid) => {
                        // A Deployment's ReplicaSets are scaled by the Deployment.
                        match controller_of(&set.metadata).filter(|o| {
                            o.kind == "Deployment" && o.api_version.starts_with("apps/")
                        }) {
                            Some(dep) => {
                                let deployments: Api<Deployment> =
                                    Api::namespaced(client.clone(), namespace);
                                let s = deployments.get_scale(&dep.name).await.map_err(scale)?;
                                Some((
                                    dep.uid.clone(),
                                    s.spec.and_then(|s| s.replicas).unwrap_or(0),
                                ))
                            }
                            None => {
                                let s = rs.get_scale(&owner.name).await.map_err(scale)?;
                                Some((
                                    owner.uid.clone(),
                                    s.spec.and_then(|s| s.replicas).unwrap_or(0),
                                ))
                            }
                        }
                    }
                    _ => None,
                }
            }
            ("apps", "StatefulSet") => {
                let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
                match api.get_scale(&owner.name).await {
                    Ok(s) => Some((
                        owner.uid.clone(),
                        s.spec.and_then(|s| s.replicas).unwrap_or(0),
                    )),
                    Err(kube::Error::Api(e)) if e.code == 404 => None,
                    Err(e) => return Err(e.to_string()),
                }
            }
            ("v1", "ReplicationController") => {
                let api: Api<ReplicationController> = Api::namespaced(client.clone(), namespace);
                match api.get_scale(&owner.name).await {
                    Ok(s) => Some((
                        owner.uid.clone(),
                        s.spec.and_then(|s| s.replicas).unwrap_or(0),
                    )),
                    Err(kube::Error::Api(e)) if e.code == 404 => None,
                    Err(e) => return Err(e.to_string()),
                }
            }
            _ => None,
        };
        let Some((uid, replicas)) = found else {
            return Err(format!(
                "found no controllers for pod {:?}",
                pod.metadata.name.as_deref().unwrap_or_default()
            ));
        };
        by_owner.insert(owner.uid.clone(), uid.clone());
        scales.insert(uid, replicas);
    }
    let total = scales.values().sum();
    Ok((total, unmanaged))
}

/// Upstream's `getExpectedPodCount`: (expected pods, desired healthy, unmanaged pods).
async fn expected_counts(
    client: &kube::Client,
    pdb: &PodDisruptionBudget,
    namespace: &str,
    pods: &[&Pod],
) -> Result<(i32, i32, Vec<String>), String> {
    let spec = pdb.spec.clone().unwrap_or_default();
    if let Some(max) = &spec.max_unavailable {
        let (expected, unmanaged) = expected_scale(client, namespace, pods).await?;
        let max = scaled_value(max, expected)?;
        return Ok((expected, (expected - max).max(0), unmanaged));
    }
    if let Some(min) = &spec.min_available {
        if !is_percent(min) {
            return Ok((pods.len() as i32, scaled_value(min, 0)?, Vec::new()));
        }
        let (expected, unmanaged) = expected_scale(client, namespace, pods).await?;
        return Ok((expected, scaled_value(min, expected)?, unmanaged));
    }
    Ok((0, 0, Vec::new()))
}

pub(crate) async fn run(client: kube::Client, pods: crate::pod_cache::PodInformer) {
    let pdbs: Api<PodDisruptionBudget> = Api::all(client.clone());
    let (pdb_store, pdb_writer) = reflector::store();
    let pod_store = pods.store();
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut driven = crate::node_lifecycle::Driven::new();
    driven.drive(
        reflector::reflector(pdb_writer, watcher(pdbs, watcher::Config::default()))
            .default_backoff()
            .touched_objects(),
        &wake,
    );
    // The manager's shared pod watch.
    driven.drive(pods.subscribe(), &wake);
    // A controller's scale changes what is expected before any pod changes.
    driven.drive(trigger::<ReplicaSet>(&client), &wake);
    driven.drive(trigger::<Deployment>(&client), &wake);
    driven.drive(trigger::<StatefulSet>(&client), &wake);
    let recorder = EventRecorder::new(client.clone(), "controllermanager");
    // Warnings said once per budget and cause, not on every pass.
    let mut warned: HashSet<(String, String)> = HashSet::new();
    if pdb_store.wait_until_ready().await.is_err() || pods.wait_until_ready().await.is_err() {
        return;
    }
    let mut wake_at: Option<jiff::Timestamp> = None;
    loop {
        let sleep = crate::workload::sleep_until(wake_at);
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
        wake_at = None;
        let all_pods = pod_store.state();
        for pdb in pdb_store.state() {
            let started = Instant::now();
            let now = jiff::Timestamp::now();
            let namespace = pdb.metadata.namespace.clone().unwrap_or_default();
            let name = pdb.metadata.name.clone().unwrap_or_default();
            let selector = pdb.spec.as_ref().and_then(|s| s.selector.as_ref());
            let selected: Vec<&Pod> = all_pods
                .iter()
                .map(|p| &**p)
                .filter(|p| p.metadata.namespace.as_deref() == Some(&namespace))
                .filter(|p| selector::matches_unless_empty(selector, p.metadata.labels.as_ref()))
                .collect();
            let status = match expected_counts(&client, &pdb, &namespace, &selected).await {
                Ok((expected, desired_healthy, unmanaged)) => {
                    if !unmanaged.is_empty()
                        && warned.insert((name.clone(), "UnmanagedPods".into()))
                    {
                        recorder.warning(&*pdb, "UnmanagedPods", format!(
                            "Pods selected by this PodDisruptionBudget (selector: {}) were found to be unmanaged. As a result, the status of the PDB cannot be calculated correctly, which may result in undefined behavior. To account for these pods please set \".spec.minAvailable\" field of the PDB to an integer value.",
                            selector_text(selector)
                        )).await;
                    }
                    let (disrupted, recheck, expired) = disrupted_pods(&pdb, &selected, now);
                    for pod in expired {
                        if warned.insert((name.clone(), format!("NotDeleted/{pod}"))) {
                            recorder.warning(&*pdb, "NotDeleted", format!(
                                "Pod was expected by PDB {namespace}/{name} to be deleted but it wasn't"
                            )).await;
                        }
                    }
                    if let Some(at) = recheck {
                        wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
                    }
                    let current_healthy = selected
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .filter(|p| {
                            p.metadata
                                .name
                                .as_ref()
                                .is_none_or(|n| !disrupted.contains_key(n))
                        })
                        .filter(|p| is_pod_ready(p))
                        .count() as i32;
                    status_for(
                        &pdb,
                        Counts {
                            expected,
                            desired_healthy,
                            current_healthy,
                            disrupted,
                        },
                        now,
                    )
                }
                Err(e) => {
                    if warned.insert((name.clone(), format!("Failed/{e}"))) {
                        recorder
                            .warning(
                                &*pdb,
                                "CalculateExpectedPodCountFailed",
                                format!("Failed to calculate the number of expected pods: {e}"),
                            )
                            .await;
                    }
                    // Upstream's failSafe: no disruption until the budget can be judged.
                    let mut status = pdb.status.clone().unwrap_or_default();
                    status.disruptions_allowed = 0;
                    status.observed_generation = pdb.metadata.generation;
                    set_condition(&mut status, "False", "SyncFailed", &e, now);
                    let retry = now + jiff::SignedDuration::from_secs(5);
                    wake_at = Some(wake_at.map_or(retry, |w| w.min(retry)));
                    status
                }
            };
            let ok = write_status(&client, &pdb, status).await;
            crate::metrics::sync_done("disruption", started, ok);
        }
        let names: HashSet<String> = pdb_store
            .state()
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        warned.retain(|(n, _)| names.contains(n));
    }
}

/// A stream that yields whenever an object of `K` changes.
fn trigger<K>(client: &kube::Client) -> futures::stream::BoxStream<'static, ()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    watcher(api, watcher::Config::default())
        .default_backoff()
        .touched_objects()
        .map(|_| ())
        .boxed()
}

fn selector_text(selector: Option<&LabelSelector>) -> String {
    serde_json::to_string(&selector).unwrap_or_default()
}

/// Writes `status` if it differs; a conflict means the budget changed (an eviction or an
/// edit), and the watch brings the next pass.
async fn write_status(
    client: &kube::Client,
    pdb: &PodDisruptionBudget,
    status: PodDisruptionBudgetStatus,
) -> bool {
    if pdb.status.as_ref() == Some(&status) {
        return true;
    }
    let (Some(name), Some(namespace)) = (&pdb.metadata.name, &pdb.metadata.namespace) else {
        return true;
    };
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), namespace);
    let mut next = pdb.clone();
    next.status = Some(status);
    match api
        .replace_status(name, &PostParams::default(), &next)
        .await
    {
        Ok(_) => true,
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => true,
        Err(e) => {
            tracing::warn!(pdb = %name, error = %e, "updating a PodDisruptionBudget status");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percents_round_up() {
        assert_eq!(scaled_value(&IntOrString::String("50%".into()), 3), Ok(2));
        assert_eq!(scaled_value(&IntOrString::String("10%".into()), 10), Ok(1));
        assert_eq!(scaled_value(&IntOrString::String("0%".into()), 10), Ok(0));
        assert_eq!(scaled_value(&IntOrString::Int(4), 10), Ok(4));
        assert!(scaled_value(&IntOrString::String("x".into()), 10).is_err());
    }

    #[test]
    fn allowed_disruptions_never_go_negative() {
        let pdb = PodDisruptionBudget {
            metadata: kube::api::ObjectMeta {
                generation: Some(3),
                ..Default::default()
            },
            ..Default::default()
        };
        let now = jiff::Timestamp::now();
        let counts = |current, desired, expected| Counts {
            expected,
            desired_healthy: desired,
            current_healthy: current,
            disrupted: BTreeMap::new(),
        };
        let status = status_for(&pdb, counts(3, 2, 3), now);
        assert_eq!(status.disruptions_allowed, 1);
        assert_eq!(status.observed_generation, Some(3));
        let condition = &status.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", "SufficientPods")
        );
        let status = status_for(&pdb, counts(1, 2, 3), now);
        assert_eq!(status.disruptions_allowed, 0);
        assert_eq!(
            status.conditions.as_ref().unwrap()[0].reason,
            "InsufficientPods"
        );
        assert_eq!(
            status_for(&pdb, counts(3, 0, 0), now).disruptions_allowed,
            0
        );
    }
}
