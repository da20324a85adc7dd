//! The ResourceQuota controller, as upstream's: recounts `status.used` of each quota (for
//! every resource in `spec.hard`) and copies `spec.hard` to `status.hard` when `hard`
//! changes, when a pod, service, secret, config map, claim or replication controller is
//! deleted or a pod terminates (upstream's replenishment), and every [`RESYNC`]. What an
//! object costs is the quota evaluator (`korvet_apimachinery::quota`), the same
//! that admission charges creates with.
//!
//! The status is written with the quota's resourceVersion as a precondition, so a
//! recount never overwrites a charge admission made meanwhile: it is redone instead.
//! A recount racing a create that admission charged but has not stored yet can still
//! undercount it until the next recount, as upstream's can.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ReplicationController, ResourceQuota, Secret, Service,
};
use korvet_apimachinery::quantity::parse_milli;
use korvet_apimachinery::quota::{self, Usage};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};

use crate::pod_cache::{PodChange, PodInformer};

const NAME: &str = "resourcequota";
/// Recount period for what no watch replenishes (upstream: 5 min; shorter here so
/// `count/...` of other kinds does not lag that long).
pub(crate) const RESYNC: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct QuotaError(String);

struct Ctx {
    client: kube::Client,
    /// Bumped on every replenishment (a counted object deleted, a pod terminated).
    epoch: AtomicU64,
    /// Per quota: the epoch and time of its last recount.
    last: Mutex<HashMap<String, (u64, Instant)>>,
}

/// Runs the ResourceQuota controller until its task is aborted.
pub(crate) async fn run(client: kube::Client, pods: PodInformer) {
    let quotas: Api<ResourceQuota> = Api::all(client.clone());
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        epoch: AtomicU64::new(0),
        last: Mutex::new(HashMap::new()),
    });
    let pod_done = |pod: &Pod| {
        matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
    };
    // Pods from the manager's shared pod watch.
    let pods_freed = {
        let ctx = ctx.clone();
        pods.changes()
            .filter_map(move |change| {
                let freed = match change {
                    PodChange::Deleted(_) => true,
                    PodChange::Applied(pod) => pod_done(&pod),
                };
                std::future::ready(freed.then(|| ctx.epoch.fetch_add(1, Ordering::SeqCst)))
            })
            .map(|_| ())
            .boxed()
    };
    let triggers = futures::stream::select_all([
        pods_freed,
        replenish(Api::<Service>::all(client.clone()), |_| false, ctx.clone()),
        replenish(Api::<Secret>::all(client.clone()), |_| false, ctx.clone()),
        replenish(
            Api::<ConfigMap>::all(client.clone()),
            |_| false,
            ctx.clone(),
        ),
        replenish(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            |_| false,
            ctx.clone(),
        ),
        replenish(
            Api::<ReplicationController>::all(client.clone()),
            |_| false,
            ctx.clone(),
        ),
    ]);
    Controller::new(quotas, watcher::Config::default())
        .reconcile_all_on(triggers)
        .run(
            reconcile,
            |_, _, _| Action::requeue(Duration::from_millis(200)),
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

/// Upstream's replenishment: a deleted object (or a pod that terminated) frees quota, so
/// every quota is recounted. Creations are not watched: admission charged them already,
/// and a recount racing a create (charged, not yet stored) would undercount it.
fn replenish<K>(
    api: Api<K>,
    done: fn(&K) -> bool,
    ctx: Arc<Ctx>,
) -> futures::stream::BoxStream<'static, ()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, watcher::Config::default())
        .filter_map(move |event| {
            let freed = match event {
                Ok(watcher::Event::Delete(_)) => true,
                Ok(watcher::Event::Apply(object)) => done(&object),
                _ => false,
            };
            if freed {
                ctx.epoch.fetch_add(1, Ordering::SeqCst);
            }
            std::future::ready(freed.then_some(()))
        })
        .boxed()
}

/// The group, version and plural behind a quota resource name, and whether the name
/// needs it listed.
fn source_of(resource: &str) -> Option<(String, String)> {
    if let Some(count) = resource.strip_prefix("count/") {
        return Some(match count.split_once('.') {
            Some((plural, group)) => (group.to_string(), plural.to_string()),
            None => (String::new(), count.to_string()),
        });
    }
    let plural = match resource {
        "pods" | "cpu" | "memory" | "ephemeral-storage" => "pods",
        r if r.starts_with("requests.") && r != "requests.storage" => "pods",
        r if r.starts_with("limits.") => "pods",
        "services" | "services.nodeports" | "services.loadbalancers" => "services",
        "persistentvolumeclaims" | "requests.storage" => "persistentvolumeclaims",
        "secrets" | "configmaps" | "replicationcontrollers" | "resourcequotas" => resource,
        _ => return None,
    };
    Some((String::new(), plural.to_string()))
}

async fn api_resource(
    client: &kube::Client,
    group: &str,
    plural: &str,
) -> Result<ApiResource, String> {
    let version = match group {
        ""
        | "apps"
        | "batch"
        | "networking.k8s.io"
        | "policy"
        | "rbac.authorization.k8s.io"
        | "storage.k8s.io"
        | "discovery.k8s.io"
        | "coordination.k8s.io" => Some("v1"),
        "autoscaling" => Some("v2"),
        _ => None,
    };
    if let Some(version) = version {
        let gvk = GroupVersionKind::gvk(group, version, "");
        return Ok(ApiResource::from_gvk_with_plural(&gvk, plural));
    }
    let api_group = kube::discovery::group(client, group)
        .await
        .map_err(|e| e.to_string())?;
    api_group
        .recommended_resources()
        .into_iter()
        .find(|(ar, _)| ar.plural == plural)
        .map(|(ar, _)| ar)
        .ok_or_else(|| format!("no resource {plural} in group {group}"))
}

async fn reconcile(quota: Arc<ResourceQuota>, ctx: Arc<Ctx>) -> Result<Action, QuotaError> {
    let key = format!(
        "{}/{}",
        quota.namespace().unwrap_or_default(),
        quota.name_any()
    );
    let epoch = ctx.epoch.load(Ordering::SeqCst);
    let hard_synced = quota.status.as_ref().and_then(|s| s.hard.as_ref())
        == quota.spec.as_ref().and_then(|s| s.hard.as_ref());
    {
        // Its own status writes (admission's charges among them) wake the watch; as
        // upstream, only a change of `hard`, a replenishment or the resync recounts.
        let last = ctx.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, at)) = last.get(&key) {
            if hard_synced && *seen == epoch && at.elapsed() < RESYNC {
                return Ok(Action::requeue(RESYNC - at.elapsed()));
            }
        }
    }
    let started = Instant::now();
    let result = sync(&quota, &ctx.client).await;
    crate::metrics::sync_done(NAME, started, result.is_ok());
    if result.is_ok() {
        let mut last = ctx.last.lock().unwrap_or_else(|e| e.into_inner());
        last.insert(key, (epoch, Instant::now()));
    }
    result.map(|_| Action::requeue(RESYNC))
}

async fn sync(quota: &ResourceQuota, client: &kube::Client) -> Result<(), QuotaError> {
    let namespace = quota.namespace().unwrap_or_default();
    let name = quota.name_any();
    let value = serde_json::to_value(quota).map_err(|e| QuotaError(e.to_string()))?;
    let hard = value["spec"]["hard"].clone();
    let hard_names: Vec<String> = hard
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let mut sources: Vec<(String, String)> =
        hard_names.iter().filter_map(|r| source_of(r)).collect();
    sources.sort();
    sources.dedup();
    let mut total = Usage::new();
    for (group, plural) in sources {
        let ar = match api_resource(client, &group, &plural).await {
            Ok(ar) => ar,
            Err(e) => {
                tracing::debug!(quota = %name, group, plural, error = %e, "cannot count");
                continue;
            }
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &ar);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| QuotaError(format!("listing {plural}: {e}")))?;
        for object in list.items {
            let object = serde_json::to_value(&object).map_err(|e| QuotaError(e.to_string()))?;
            if !quota::scopes_match(&value, &group, &plural, &object) {
                continue;
            }
            for (k, v) in quota::object_usage(&group, &plural, &object) {
                *total.entry(k).or_default() += v;
            }
        }
    }
    let used: Usage = hard_names
        .iter()
        .map(|k| (k.clone(), total.get(k).copied().unwrap_or(0)))
        .collect();
    let used = quota::to_json(&used);
    if value["status"]["hard"] == hard && same_usage(&value["status"]["used"], &used) {
        return Ok(());
    }
    let api: Api<ResourceQuota> = Api::namespaced(client.clone(), &namespace);
    // The resourceVersion makes this a conditional write: a charge admission made since
    // the quota was read makes it fail, and the recount runs again.
    let patch = json!({
        "metadata": {"resourceVersion": quota.resource_version()},
        "status": {"hard": hard, "used": used},
    });
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| {
            QuotaError(format!(
                "updating the status of quota {namespace}/{name}: {e}"
            ))
        })?;
    Ok(())
}

/// Whether two `used` maps mean the same amounts (`1Gi` and `1073741824` alike).
fn same_usage(a: &Value, b: &Value) -> bool {
    let parse = |v: &Value| -> Option<Usage> {
        v.as_object()?
            .iter()
            .map(|(k, q)| Some((k.clone(), parse_milli(q.as_str()?)?)))
            .collect()
    };
    parse(a).is_some() && parse(a) == parse(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_names_map_to_what_is_counted() {
        assert_eq!(
            source_of("requests.cpu"),
            Some((String::new(), "pods".into()))
        );
        assert_eq!(
            source_of("requests.storage"),
            Some((String::new(), "persistentvolumeclaims".into()))
        );
        assert_eq!(
            source_of("count/deployments.apps"),
            Some(("apps".into(), "deployments".into()))
        );
        assert_eq!(
            source_of("count/secrets"),
            Some((String::new(), "secrets".into()))
        );
        assert_eq!(
            source_of("services.nodeports"),
            Some((String::new(), "services".into()))
        );
        assert_eq!(source_of("nvidia.com/gpu"), None);
    }

    #[test]
    fn usage_compares_by_amount() {
        assert!(same_usage(
            &json!({"memory": "1Gi"}),
            &json!({"memory": "1073741824"})
        ));
        assert!(!same_usage(&json!({"pods": "1"}), &json!({"pods": "2"})));
    }
}
