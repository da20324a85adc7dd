//! Taint-based eviction, as upstream's taint eviction controller: a pod on a Node with
//! `NoExecute` taints it does not tolerate is deleted at once; one tolerating them all
//! for a limited time (`tolerationSeconds`, the smallest of the tolerations used) is
//! deleted when that time has passed since the taint was added. Before deleting, the pod
//! gets the `DisruptionTarget` condition (`DeletionByTaintManager`), and an Event
//! `TaintManagerEviction` "Marking for deletion Pod ns/name" is recorded.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use korvet_apimachinery::events::EventRecorder;
use korvet_apimachinery::taints::tolerates;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;

/// What the NoExecute `taints` mean for a pod with `tolerations`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No NoExecute taint, or all tolerated forever.
    Stay,
    /// Delete now.
    Evict,
    /// Delete at this time.
    EvictAt(jiff::Timestamp),
}

pub(crate) fn verdict(
    tolerations: &[Toleration],
    taints: &[Taint],
    now: jiff::Timestamp,
) -> Verdict {
    let no_execute: Vec<&Taint> = taints.iter().filter(|t| t.effect == "NoExecute").collect();
    let mut deadline: Option<jiff::Timestamp> = None;
    for taint in no_execute {
        let used: Vec<&Toleration> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if used.is_empty() {
            return Verdict::Evict;
        }
        // Any toleration without a limit tolerates this taint forever.
        if used.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let seconds = used
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .min()
            .unwrap_or(0)
            .max(0);
        let since = taint.time_added.as_ref().map_or(now, |t| t.0);
        let at = since + jiff::SignedDuration::from_secs(seconds);
        deadline = Some(deadline.map_or(at, |d| d.min(at)));
    }
    match deadline {
        None => Verdict::Stay,
        Some(at) if at <= now => Verdict::Evict,
        Some(at) => Verdict::EvictAt(at),
    }
}

pub(crate) async fn run(client: kube::Client, pods: crate::pod_cache::PodInformer) {
    let nodes: Api<Node> = Api::all(client.clone());
    let (node_store, node_writer) = reflector::store();
    let pod_store = pods.store();
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut driven = super::Driven::new();
    driven.drive(
        reflector::reflector(node_writer, watcher(nodes, watcher::Config::default()))
            .default_backoff()
            .touched_objects(),
        &wake,
    );
    // The manager's shared pod watch.
    driven.drive(pods.subscribe(), &wake);
    let recorder = EventRecorder::new(client.clone(), "taint-eviction-controller");
    // Pods this controller deleted, until the watch shows them gone or terminating
    // (upstream's expectations: a lagging cache must not delete twice).
    let mut evicted: HashSet<String> = HashSet::new();
    // Pods waiting for their toleration to run out, to say when that is cancelled.
    let mut scheduled: HashMap<String, jiff::Timestamp> = HashMap::new();
    if node_store.wait_until_ready().await.is_err() || pods.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        let started = Instant::now();
        let now = jiff::Timestamp::now();
        let mut ok = true;
        let mut next_wake: Option<jiff::Timestamp> = None;
        let all = pod_store.state();
        evicted.retain(|uid| {
            all.iter().any(|p| {
                p.metadata.uid.as_deref() == Some(uid) && p.metadata.deletion_timestamp.is_none()
            })
        });
        let mut still_scheduled = HashMap::new();
        for pod in all.iter() {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() || evicted.contains(&uid) {
                continue;
            }
            let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
                continue;
            };
            let taints = node_store
                .get(&ObjectRef::new(node_name))
                .and_then(|n| n.spec.as_ref()?.taints.clone())
                .unwrap_or_default();
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.clone())
                .unwrap_or_default();
            match verdict(&tolerations, &taints, now) {
                Verdict::Stay => {
                    if scheduled.contains_key(&uid) {
                        recorder
                            .normal(
                                &**pod,
                                "TaintManagerEviction",
                                format!("Cancelling deletion of Pod {}", pod_key(pod)),
                            )
                            .await;
                    }
                }
                Verdict::EvictAt(at) => {
                    still_scheduled.insert(uid, at);
                    next_wake = Some(next_wake.map_or(at, |w: jiff::Timestamp| w.min(at)));
                }
                Verdict::Evict => match evict(&client, &recorder, pod).await {
                    Ok(()) => {
                        evicted.insert(uid);
                    }
                    Err(e) => {
                        ok = false;
                        tracing::warn!(pod = %pod_key(pod), error = %e, "taint eviction failed");
                        // Try again soon.
                        let retry = now + jiff::SignedDuration::from_secs(1);
                        next_wake = Some(next_wake.map_or(retry, |w| w.min(retry)));
                    }
                },
            }
        }
        scheduled = still_scheduled;
        crate::metrics::sync_done("taint-eviction", started, ok);
        let sleep = crate::workload::sleep_until(next_wake);
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Upstream's `addConditionAndDeletePod`: the DisruptionTarget condition, then a delete
/// with the pod's own grace period.
async fn evict(
    client: &kube::Client,
    recorder: &EventRecorder,
    pod: &Pod,
) -> Result<(), kube::Error> {
    let (Some(name), Some(namespace)) = (&pod.metadata.name, &pod.metadata.namespace) else {
        return Ok(());
    };
    recorder
        .normal(
            pod,
            "TaintManagerEviction",
            format!("Marking for deletion Pod {}", pod_key(pod)),
        )
        .await;
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    conditions.retain(|c| c.type_ != "DisruptionTarget");
    conditions.push(PodCondition {
        type_: "DisruptionTarget".into(),
        status: "True".into(),
        reason: Some("DeletionByTaintManager".into()),
        message: Some("Taint manager: deleting due to NoExecute taint".into()),
        last_transition_time: Some(Time(jiff::Timestamp::now())),
        ..Default::default()
    });
    let patch = json!({"status": {"conditions": conditions}});
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) | Err(kube::Error::Api(_)) => {}
        Err(e) => return Err(e),
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!(pod = %pod_key(pod), "evicted by NoExecute taint");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toleration(key: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: seconds,
            ..Default::default()
        }
    }

    fn taint(key: &str, effect: &str, added: jiff::Timestamp) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            time_added: Some(Time(added)),
            ..Default::default()
        }
    }

    #[test]
    fn verdicts_follow_tolerations() {
        let now = jiff::Timestamp::now();
        let added = now - jiff::SignedDuration::from_secs(3);
        let unreachable = [taint(
            crate::node_lifecycle::TAINT_UNREACHABLE,
            "NoExecute",
            added,
        )];
        assert_eq!(verdict(&[], &unreachable, now), Verdict::Evict);
        let five = [toleration(
            crate::node_lifecycle::TAINT_UNREACHABLE,
            Some(5),
        )];
        assert_eq!(
            verdict(&five, &unreachable, now),
            Verdict::EvictAt(added + jiff::SignedDuration::from_secs(5))
        );
        let two = [toleration(
            crate::node_lifecycle::TAINT_UNREACHABLE,
            Some(2),
        )];
        assert_eq!(verdict(&two, &unreachable, now), Verdict::Evict);
        let forever = [toleration(crate::node_lifecycle::TAINT_UNREACHABLE, None)];
        assert_eq!(verdict(&forever, &unreachable, now), Verdict::Stay);
        // NoSchedule taints never evict; an empty key with Exists tolerates everything.
        let no_schedule = [taint("x", "NoSchedule", added)];
        assert_eq!(verdict(&[], &no_schedule, now), Verdict::Stay);
        let all = [Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        }];
        assert_eq!(verdict(&all, &unreachable, now), Verdict::Stay);
        let other = [toleration(crate::node_lifecycle::TAINT_NOT_READY, None)];
        assert_eq!(verdict(&other, &unreachable, now), Verdict::Evict);
    }
}
