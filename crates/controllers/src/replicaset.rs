//! The ReplicaSet controller, as upstream's: keeps `spec.replicas` active pods matching
//! the selector, adopting orphans and releasing pods that stop matching, creating in
//! slow-start batches and deleting the least valuable pods first, and reports status
//! (replicas, fullyLabeledReplicas, readyReplicas, availableReplicas, the
//! ReplicaFailure condition) and Events.
//!
//! Pods are read from the manager's shared pod store ([`crate::pod_cache`]). Creations
//! and deletions are remembered there ([`Expect`]) until the store shows them, and
//! counted as done meanwhile, so a reconcile that runs before the watch catches up does
//! not act twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use korvet_apimachinery::events::EventRecorder;
use korvet_apimachinery::{names, selector};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use crate::pod_cache::{Expect, PodCache, PodInformer};
use crate::workload::{
    controller_of, controller_ref, is_controlled_by, is_pod_active, is_pod_available, is_pod_ready,
    labels_match, pod_from_template, ready_since,
};

/// At most this many pods are created or deleted in one sync (upstream's `burstReplicas`).
const BURST_REPLICAS: usize = 500;
/// The first batch of creations; each successful batch doubles the next.
const SLOW_START_INITIAL_BATCH: usize = 1;
/// While a creation or deletion is not yet in the store, look again after this long
/// (the store forgets it after as long, see [`crate::pod_cache`]).
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplicaSetError {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Manage(String),
}

struct Context {
    client: kube::Client,
    /// The shared pod store, with this controller's writes it does not show yet.
    pods: PodCache,
    replica_sets: Store<ReplicaSet>,
    recorder: EventRecorder,
}

/// Runs the ReplicaSet controller until its task is aborted.
pub(crate) async fn run(client: kube::Client, pods: PodInformer) {
    let pod_events = pods.subscribe();
    let controller = Controller::new(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let replica_sets = controller.store();
    let ctx = Arc::new(Context {
        recorder: EventRecorder::new(client.clone(), "replicaset-controller"),
        client,
        pods: pods.cache(),
        replica_sets: replica_sets.clone(),
    });
    controller
        .watches_shared_stream(pod_events, move |pod| owners_of_pod(&replica_sets, &pod))
        .run(reconcile, error_policy, ctx)
        .for_each(|_| std::future::ready(()))
        .await;
}

/// The ReplicaSets a pod event concerns: its controller, or for an orphan every
/// ReplicaSet of its namespace that selects it (one may adopt it).
fn owners_of_pod(replica_sets: &Store<ReplicaSet>, pod: &Pod) -> Vec<ObjectRef<ReplicaSet>> {
    let namespace = pod.namespace().unwrap_or_default();
    if let Some(owner) = controller_of(&pod.metadata) {
        if owner.kind == "ReplicaSet" {
            return vec![ObjectRef::new(&owner.name).within(&namespace)];
        }
        return Vec::new();
    }
    let labels = pod.labels();
    replica_sets
        .state()
        .iter()
        .filter(|rs| rs.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|rs| {
            selector::matches_unless_empty(rs.spec.as_ref().map(|s| &s.selector), Some(labels))
        })
        .map(|rs| ObjectRef::from_obj(rs.as_ref()))
        .collect()
}

fn error_policy(rs: Arc<ReplicaSet>, error: &ReplicaSetError, _ctx: Arc<Context>) -> Action {
    tracing::debug!(replicaset = %rs.name_any(), %error, "syncing a ReplicaSet failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, ReplicaSetError> {
    let started = Instant::now();
    let result = sync(&rs, &ctx).await;
    crate::metrics::sync_done("replicaset", started, result.is_ok());
    result
}

async fn sync(rs: &ReplicaSet, ctx: &Context) -> Result<Action, ReplicaSetError> {
    let namespace = rs.namespace().unwrap_or_default();
    let uid = rs.uid().unwrap_or_default();
    let spec = rs.spec.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);

    // Claim: active pods this ReplicaSet controls and still selects, plus orphans it
    // selects (adopted); release controlled pods it no longer selects.
    let mut owned: Vec<Arc<Pod>> = Vec::new();
    let all: Vec<Arc<Pod>> = ctx
        .pods
        .in_namespace(&namespace)
        .await
        .map_err(ReplicaSetError::Manage)?;
    for pod in all.iter().filter(|p| is_pod_active(p)) {
        let matches = selector::matches_unless_empty(Some(&spec.selector), Some(pod.labels()));
        if is_controlled_by(&pod.metadata, &uid) {
            if matches {
                owned.push(pod.clone());
            } else if let Err(e) = release(&pods_api, pod, &uid).await {
                tracing::debug!(pod = %pod.name_any(), error = %e, "releasing a pod");
            }
        } else if matches
            && controller_of(&pod.metadata).is_none()
            && rs.metadata.deletion_timestamp.is_none()
        {
            match adopt(&pods_api, rs, pod).await {
                Ok(adopted) => owned.push(Arc::new(adopted)),
                Err(e) => tracing::debug!(pod = %pod.name_any(), error = %e, "adopting a pod"),
            }
        }
    }

    let manage_result = if rs.metadata.deletion_timestamp.is_some() {
        Ok(())
    } else {
        manage_replicas(rs, ctx, &pods_api, &owned, &all).await
    };

    let status = calculate_status(rs, &owned, manage_result.as_ref().err());
    if status_changed(rs.status.as_ref(), &status) {
        let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &namespace);
        rs_api
            .patch_status(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(status_patch(&status)),
            )
            .await?;
    }
    manage_result?;

    // Pods ready but not yet available become so after minReadySeconds: look again then.
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    if min_ready > 0 && status.ready_replicas.unwrap_or(0) > status.available_replicas.unwrap_or(0)
    {
        return Ok(Action::requeue(Duration::from_secs(min_ready as u64)));
    }
    if ctx.pods.awaits(&uid) {
        return Ok(Action::requeue(EXPECTATION_TIMEOUT));
    }
    Ok(Action::await_change())
}

/// Creates or deletes pods so that the active pods (as the watch shows them, corrected
/// by what this controller did and the watch does not show yet) match `spec.replicas`.
async fn manage_replicas(
    rs: &ReplicaSet,
    ctx: &Context,
    pods_api: &Api<Pod>,
    owned: &[Arc<Pod>],
    all: &[Arc<Pod>],
) -> Result<(), ReplicaSetError> {
    let uid = rs.uid().unwrap_or_default();
    let spec = rs.spec.clone().unwrap_or_default();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    // What this controller did that the store does not show yet counts as done.
    let unmet = ctx.pods.unmet(&uid, all).map_err(ReplicaSetError::Manage)?;
    let pending_creates = unmet
        .iter()
        .filter(|e| matches!(e, Expect::Created(_)))
        .count();
    let deleting: Vec<&str> = unmet
        .iter()
        .filter_map(|e| match e {
            Expect::Deleted(pod_uid) => Some(pod_uid.as_str()),
            _ => None,
        })
        .collect();
    let live: Vec<&Arc<Pod>> = owned
        .iter()
        .filter(|p| {
            !deleting
                .iter()
                .any(|d| p.metadata.uid.as_deref() == Some(*d))
        })
        .collect();
    let have = live.len() + pending_creates;

    if have < want {
        let Some(owner) = controller_ref(rs) else {
            return Err(ReplicaSetError::Manage("ReplicaSet has no uid".into()));
        };
        let Some(template) = spec.template.as_ref() else {
            return Err(ReplicaSetError::Manage("ReplicaSet has no template".into()));
        };
        let namespace = rs.namespace().unwrap_or_default();
        let prefix = names::generate_name_prefix(&rs.name_any());
        let mut remaining = (want - have).min(BURST_REPLICAS);
        let mut batch = SLOW_START_INITIAL_BATCH.min(remaining);
        while batch > 0 {
            let creations = (0..batch).map(|_| {
                let pod = pod_from_template(template, owner.clone(), &namespace, None, &prefix);
                async move { pods_api.create(&PostParams::default(), &pod).await }
            });
            let results = futures::future::join_all(creations).await;
            let mut failure = None;
            for result in results {
                match result {
                    Ok(pod) => {
                        // The name is known only now (generateName).
                        let name = pod.name_any();
                        ctx.pods.expect(&uid, Expect::Created(name.clone()));
                        ctx.recorder
                            .normal(rs, "SuccessfulCreate", format!("Created pod: {name}"))
                            .await;
                    }
                    Err(e) => {
                        ctx.recorder
                            .warning(
                                rs,
                                "FailedCreate",
                                format!("Error creating: {}", api_message(&e)),
                            )
                            .await;
                        failure = Some(e);
                    }
                }
            }
            if let Some(e) = failure {
                return Err(ReplicaSetError::Manage(api_message(&e)));
            }
            remaining -= batch;
            batch = (batch * 2).min(remaining);
        }
    } else if have > want {
        let surplus = (have - want).min(BURST_REPLICAS).min(live.len());
        let related = related_pods(rs, ctx, all);
        let victims = pods_to_delete(&live, &related, surplus, jiff::Timestamp::now());
        for pod in victims {
            let (name, pod_uid) = (pod.name_any(), pod.uid().unwrap_or_default());
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(pod_uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match pods_api.delete(&name, &params).await {
                Ok(_) => {
                    ctx.pods.expect(&uid, Expect::Deleted(pod_uid));
                    ctx.recorder
                        .normal(rs, "SuccessfulDelete", format!("Deleted pod: {name}"))
                        .await;
                }
                // Gone already: met as soon as the store shows it.
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    ctx.pods.expect(&uid, Expect::Deleted(pod_uid));
                }
                Err(e) => {
                    ctx.recorder
                        .warning(
                            rs,
                            "FailedDelete",
                            format!("Error deleting: {}", api_message(&e)),
                        )
                        .await;
                    return Err(ReplicaSetError::Manage(api_message(&e)));
                }
            }
        }
    }
    Ok(())
}

/// The API's message of an error (a quota refusal reads as upstream's), else the error.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// Pods of every ReplicaSet with the same controller as `rs` (its Deployment's), or of
/// `rs` alone: spreading is judged over these.
fn related_pods(rs: &ReplicaSet, ctx: &Context, all: &[Arc<Pod>]) -> Vec<Arc<Pod>> {
    let mut uids = vec![rs.uid().unwrap_or_default()];
    if let Some(owner) = controller_of(&rs.metadata) {
        uids.extend(
            ctx.replica_sets
                .state()
                .iter()
                .filter(|other| controller_of(&other.metadata).is_some_and(|o| o.uid == owner.uid))
                .filter_map(|other| other.uid()),
        );
    }
    all.iter()
        .filter(|p| is_pod_active(p))
        .filter(|p| uids.iter().any(|u| is_controlled_by(&p.metadata, u)))
        .cloned()
        .collect()
}

/// The `count` pods to delete first, as upstream's `ActivePodsWithRanks`: unassigned
/// before assigned, Pending before Unknown before Running, not ready before ready, pods
/// doubled up on a node (with related pods) first, ready more recently first, more
/// restarts first, created more recently (by logarithmic bucket) first.
pub(crate) fn pods_to_delete<'a>(
    pods: &[&'a Arc<Pod>],
    related: &[Arc<Pod>],
    count: usize,
    now: jiff::Timestamp,
) -> Vec<&'a Arc<Pod>> {
    let mut on_node: HashMap<&str, usize> = HashMap::new();
    for p in related {
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            *on_node.entry(node).or_default() += 1;
        }
    }
    let rank = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .and_then(|n| on_node.get(n).copied())
            .unwrap_or(0)
    };
    let mut sorted: Vec<&'a Arc<Pod>> = pods.to_vec();
    sorted.sort_by(|a, b| delete_order(a, b, rank(a), rank(b), now));
    sorted.truncate(count);
    sorted
}

fn node_name(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

fn phase_ordinal(p: &Pod) -> u8 {
    match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 3,
    }
}

fn max_restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().map(|c| c.restart_count).max())
        .unwrap_or(0)
}

/// Upstream's logarithmic bucket of how long ago `t` was (seconds, log2).
fn log_bucket(t: jiff::Timestamp, now: jiff::Timestamp) -> i64 {
    let seconds = (now - t).get_seconds().max(0);
    if seconds == 0 {
        0
    } else {
        i64::from(63 - (seconds as u64).leading_zeros())
    }
}

fn delete_order(
    a: &Pod,
    b: &Pod,
    rank_a: usize,
    rank_b: usize,
    now: jiff::Timestamp,
) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (na, nb) = (node_name(a), node_name(b));
    if na.is_empty() != nb.is_empty() {
        return if na.is_empty() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    let by_phase = phase_ordinal(a).cmp(&phase_ordinal(b));
    if by_phase != Ordering::Equal {
        return by_phase;
    }
    let by_ready = is_pod_ready(a).cmp(&is_pod_ready(b));
    if by_ready != Ordering::Equal {
        return by_ready;
    }
    if rank_a != rank_b {
        return rank_b.cmp(&rank_a);
    }
    if let (Some(ra), Some(rb)) = (ready_since(a), ready_since(b)) {
        if ra != rb {
            return rb.cmp(&ra);
        }
    }
    let by_restarts = max_restarts(b).cmp(&max_restarts(a));
    if by_restarts != Ordering::Equal {
        return by_restarts;
    }
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    match (created(a), created(b)) {
        (None, Some(_)) => return Ordering::Less,
        (Some(_), None) => return Ordering::Greater,
        (Some(ca), Some(cb)) if ca != cb => {
            let by_bucket = log_bucket(ca, now).cmp(&log_bucket(cb, now));
            if by_bucket != Ordering::Equal {
                return by_bucket;
            }
        }
        _ => {}
    }
    a.metadata.uid.cmp(&b.metadata.uid)
}

async fn release(pods_api: &Api<Pod>, pod: &Pod, uid: &str) -> Result<(), kube::Error> {
    let remaining: Vec<_> = pod
        .owner_references()
        .iter()
        .filter(|r| r.uid != uid)
        .cloned()
        .collect();
    let patch = json!({"metadata": {
        "ownerReferences": remaining,
        "resourceVersion": pod.resource_version(),
    }});
    match pods_api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn adopt(pods_api: &Api<Pod>, rs: &ReplicaSet, pod: &Pod) -> Result<Pod, kube::Error> {
    let mut refs = pod.owner_references().to_vec();
    if let Some(owner) = controller_ref(rs) {
        refs.push(owner);
    }
    // The resourceVersion makes this a compare-and-swap: a pod changed meanwhile (e.g.
    // adopted by another controller) is left alone.
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "resourceVersion": pod.resource_version(),
    }});
    pods_api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
}

fn calculate_status(
    rs: &ReplicaSet,
    pods: &[Arc<Pod>],
    manage_error: Option<&ReplicaSetError>,
) -> ReplicaSetStatus {
    let spec = rs.spec.clone().unwrap_or_default();
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = jiff::Timestamp::now();
    let count = |f: &dyn Fn(&Pod) -> bool| pods.iter().filter(|p| f(p)).count() as i32;
    let fully_labeled = count(&|p| labels_match(&template_labels, Some(p.labels())));
    let ready = count(&|p| is_pod_ready(p));
    let available = count(&|p| is_pod_available(p, min_ready, now));

    let mut conditions: Vec<ReplicaSetCondition> = rs
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let failure = conditions.iter().any(|c| c.type_ == "ReplicaFailure");
    match manage_error {
        Some(e) if !failure => {
            let want = spec.replicas.unwrap_or(1);
            let reason = if (pods.len() as i32) < want {
                "FailedCreate"
            } else {
                "FailedDelete"
            };
            conditions.push(ReplicaSetCondition {
                type_: "ReplicaFailure".into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some(e.to_string()),
                last_transition_time: Some(Time(now)),
            });
        }
        None if failure => conditions.retain(|c| c.type_ != "ReplicaFailure"),
        _ => {}
    }
    ReplicaSetStatus {
        replicas: pods.len() as i32,
        fully_labeled_replicas: Some(fully_labeled),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: None,
    }
}

fn status_changed(old: Option<&ReplicaSetStatus>, new: &ReplicaSetStatus) -> bool {
    let old = old.cloned().unwrap_or_default();
    let zero = |v: Option<i32>| v.unwrap_or(0);
    old.replicas != new.replicas
        || zero(old.fully_labeled_replicas) != zero(new.fully_labeled_replicas)
        || zero(old.ready_replicas) != zero(new.ready_replicas)
        || zero(old.available_replicas) != zero(new.available_replicas)
        || old.observed_generation != new.observed_generation
        || old.conditions.unwrap_or_default() != new.conditions.clone().unwrap_or_default()
}

/// A merge patch setting every status field; zero counts are removed (`null`), as
/// upstream leaves them out.
fn status_patch(status: &ReplicaSetStatus) -> serde_json::Value {
    let count = |v: Option<i32>| match v {
        Some(n) if n != 0 => json!(n),
        _ => serde_json::Value::Null,
    };
    json!({"status": {
        "replicas": status.replicas,
        "fullyLabeledReplicas": count(status.fully_labeled_replicas),
        "readyReplicas": count(status.ready_replicas),
        "availableReplicas": count(status.available_replicas),
        "observedGeneration": status.observed_generation,
        "conditions": status.conditions,
    }})
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(
        name: &str,
        node: &str,
        phase: &str,
        ready_ago: Option<i64>,
        created_ago: i64,
    ) -> Arc<Pod> {
        let now = jiff::Timestamp::now();
        let ago = |s: i64| Time(now - jiff::SignedDuration::from_secs(s));
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(name.into()),
                creation_timestamp: Some(ago(created_ago)),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: (!node.is_empty()).then(|| node.to_string()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_ago.map(|s| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(ago(s)),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        })
    }

    fn names(pods: Vec<&Arc<Pod>>) -> Vec<String> {
        pods.into_iter().map(|p| p.name_any()).collect()
    }

    #[test]
    fn deletes_unassigned_then_pending_then_not_ready_first() {
        let ready = pod("ready", "n1", "Running", Some(100), 200);
        let not_ready = pod("not-ready", "n2", "Running", None, 200);
        let pending = pod("pending", "n3", "Pending", None, 200);
        let unassigned = pod("unassigned", "", "Pending", None, 200);
        let all = [
            ready.clone(),
            not_ready.clone(),
            pending.clone(),
            unassigned.clone(),
        ];
        let refs: Vec<&Arc<Pod>> = all.iter().collect();
        let order = pods_to_delete(&refs, &all, 4, jiff::Timestamp::now());
        assert_eq!(
            names(order),
            ["unassigned", "pending", "not-ready", "ready"]
        );
    }

    #[test]
    fn deletes_doubled_up_and_newer_pods_first() {
        let a = pod("a", "n1", "Running", Some(1000), 2000);
        let b = pod("b", "n1", "Running", Some(1000), 2000);
        let c = pod("c", "n2", "Running", Some(1000), 2000);
        let all = [a.clone(), b.clone(), c.clone()];
        let refs: Vec<&Arc<Pod>> = all.iter().collect();
        let first = names(pods_to_delete(&refs, &all, 1, jiff::Timestamp::now()));
        assert_ne!(first, ["c"], "a pod alone on its node goes last");

        let old = pod("old", "n1", "Running", Some(5000), 10_000);
        let young = pod("young", "n2", "Running", Some(10), 20);
        let all = [old.clone(), young.clone()];
        let refs: Vec<&Arc<Pod>> = all.iter().collect();
        let first = names(pods_to_delete(&refs, &all, 1, jiff::Timestamp::now()));
        assert_eq!(first, ["young"]);
    }

    #[test]
    fn failed_creations_set_and_successes_clear_replica_failure() {
        let mut rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 2},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}},
        }))
        .unwrap();
        let error = ReplicaSetError::Manage("exceeded quota: pods".into());
        let status = calculate_status(&rs, &[], Some(&error));
        let failure = &status.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (failure.type_.as_str(), failure.status.as_str()),
            ("ReplicaFailure", "True")
        );
        assert_eq!(failure.reason.as_deref(), Some("FailedCreate"));
        assert_eq!(failure.message.as_deref(), Some("exceeded quota: pods"));
        assert_eq!(status.observed_generation, Some(2));
        rs.status = Some(status);
        let status = calculate_status(&rs, &[], None);
        assert!(status.conditions.is_none());
    }
}
