//! The StatefulSet controller, as upstream's (1.32): pods `NAME-0..NAME-(N-1)` with
//! stable names, hostnames and claims (`TEMPLATE-NAME-ORDINAL`, made before the pod and
//! kept after it); `OrderedReady` creates one pod at a time in ordinal order, each once
//! the one before is Running and Ready, and removes the highest first; `Parallel` does
//! both at once. `RollingUpdate` replaces pods from the highest ordinal down to
//! `partition`, one at a time; `OnDelete` only recreates what the user deletes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use korvet_apimachinery::selector;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::owned::{self, Ctx, SyncError};
use crate::pod_cache::{self, Expect};
use crate::{history, workload};

pub(crate) const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub(crate) const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
pub(crate) const REVISION_LABEL: &str = "controller-revision-hash";

/// Runs the StatefulSet controller until its task is aborted.
pub(crate) async fn run(client: kube::Client, pods: pod_cache::PodInformer) {
    let ctx = Ctx::with_pods(&client, "statefulset-controller", pods.cache());
    Controller::new(
        Api::<StatefulSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches_shared_stream(
        pods.subscribe(),
        pod_cache::controller_of_pod::<StatefulSet>,
    )
    .run(reconcile, owned::retry_soon, ctx)
    .for_each(|_| async {})
    .await;
}

async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, SyncError> {
    owned::timed("statefulset", sync(&sts, &ctx)).await
}

/// The ordinal of pod `pod_name` of set `set`, if it is one of its names.
pub(crate) fn ordinal_of(set: &str, pod_name: &str) -> Option<i32> {
    let rest = pod_name.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok().filter(|i: &i32| *i >= 0)
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && workload::is_pod_ready(pod)
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(REVISION_LABEL)
        .map(String::as_str)
}

/// What one sync should do next, given the pods by ordinal: upstream's ordering rules.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Create(i32),
    /// Delete a failed or succeeded pod so that it is made again.
    Recreate(i32),
    /// Remove a pod beyond `replicas`.
    Condemn(i32),
    /// Replace a pod of an old revision.
    Update(i32),
}

/// A pod's state as the ordering needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodState {
    pub finished: bool,
    pub terminating: bool,
    pub healthy: bool,
    pub updated: bool,
}

/// The steps of one sync, in order, stopping where `OrderedReady` has to wait.
/// Ordinals run from `start` (`spec.ordinals.start`) for `replicas`; the partition
/// counts from `start`.
pub(crate) fn plan(
    pods: &BTreeMap<i32, PodState>,
    start: i32,
    replicas: i32,
    ordered: bool,
    rolling_partition: Option<i32>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let end = start + replicas;
    for i in start..end {
        match pods.get(&i) {
            None => {
                steps.push(Step::Create(i));
                if ordered {
                    return steps;
                }
            }
            Some(p) if p.finished && !p.terminating => {
                steps.push(Step::Recreate(i));
                if ordered {
                    return steps;
                }
            }
            Some(p) if !p.healthy || p.terminating => {
                if ordered {
                    return steps;
                }
            }
            Some(_) => {}
        }
    }
    let outside = pods.iter().filter(|(&i, _)| i < start || i >= end).rev();
    for (&i, p) in outside {
        if p.terminating {
            if ordered {
                return steps;
            }
            continue;
        }
        steps.push(Step::Condemn(i));
        if ordered {
            return steps;
        }
    }
    if let Some(partition) = rolling_partition {
        if !steps.is_empty() {
            return steps;
        }
        for i in ((start + partition.max(0))..end).rev() {
            let Some(p) = pods.get(&i) else { return steps };
            if !p.updated && !p.terminating {
                steps.push(Step::Update(i));
                return steps;
            }
            if !p.healthy || p.terminating {
                return steps;
            }
        }
    }
    steps
}

fn new_pod(
    sts: &StatefulSet,
    template: &PodTemplateSpec,
    revision: &str,
    ordinal: i32,
) -> Result<Pod, SyncError> {
    let set = sts.name_any();
    let spec = sts
        .spec
        .as_ref()
        .ok_or_else(|| SyncError::Invalid("statefulset without spec".into()))?;
    let owner = workload::controller_ref(sts)
        .ok_or_else(|| SyncError::Invalid("statefulset without uid".into()))?;
    let name = format!("{set}-{ordinal}");
    let mut pod = workload::pod_from_template(
        template,
        owner,
        &sts.namespace().unwrap_or_default(),
        Some(name.clone()),
        "",
    );
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_LABEL.into(), revision.to_string());
    if let Some(pod_spec) = pod.spec.as_mut() {
        pod_spec.hostname = Some(name.clone());
        if !spec.service_name.as_deref().unwrap_or("").is_empty() {
            pod_spec.subdomain = spec.service_name.clone();
        }
        for claim in spec.volume_claim_templates.iter().flatten() {
            let claim_name = claim.metadata.name.clone().unwrap_or_default();
            let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
            volumes.retain(|v| v.name != claim_name);
            volumes.push(Volume {
                name: claim_name.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: format!("{claim_name}-{name}"),
                    read_only: None,
                }),
                ..Default::default()
            });
        }
    }
    Ok(pod)
}

/// `persistentVolumeClaimRetentionPolicy` as (whenDeleted, whenScaled), `Retain` unless
/// set.
fn retention(sts: &StatefulSet) -> (&str, &str) {
    let policy = sts
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    (
        policy
            .and_then(|p| p.when_deleted.as_deref())
            .unwrap_or("Retain"),
        policy
            .and_then(|p| p.when_scaled.as_deref())
            .unwrap_or("Retain"),
    )
}

/// With `whenScaled: Delete`, the claims of a pod removed by scaling down are given to
/// that pod alone, so that they go with it (upstream's claim owner update before
/// condemning). The set's reference goes: with it left in, the garbage collector would
/// only drop the deleted pod's reference and keep the claim.
async fn hand_claims_to_pod(ctx: &Ctx, sts: &StatefulSet, pod: &Pod) -> Result<(), SyncError> {
    let Some(spec) = sts.spec.as_ref() else {
        return Ok(());
    };
    let (Some(uid), Some(name)) = (pod.uid(), pod.metadata.name.clone()) else {
        return Ok(());
    };
    let set_uid = sts.uid().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &sts.namespace().unwrap_or_default());
    let owner = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: name.clone(),
        uid: uid.clone(),
        controller: None,
        block_owner_deletion: None,
    };
    for template in spec.volume_claim_templates.iter().flatten() {
        let claim = format!(
            "{}-{name}",
            template.metadata.name.as_deref().unwrap_or_default()
        );
        let Some(pvc) = api.get_opt(&claim).await? else {
            continue;
        };
        let mut owners = pvc.metadata.owner_references.clone().unwrap_or_default();
        if owners.iter().any(|o| o.uid == uid) && !owners.iter().any(|o| o.uid == set_uid) {
            continue;
        }
        owners.retain(|o| o.uid != set_uid && o.uid != uid);
        owners.push(owner.clone());
        let patch = serde_json::json!({"metadata": {"ownerReferences": owners,
                                                    "resourceVersion": pvc.metadata.resource_version}});
        api.patch(
            &claim,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    }
    Ok(())
}

/// Makes the claims of pod `ordinal` that do not exist yet.
async fn ensure_claims(ctx: &Ctx, sts: &StatefulSet, ordinal: i32) -> Result<(), SyncError> {
    let Some(spec) = sts.spec.as_ref() else {
        return Ok(());
    };
    let set = sts.name_any();
    let pod_name = format!("{set}-{ordinal}");
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &sts.namespace().unwrap_or_default());
    for template in spec.volume_claim_templates.iter().flatten() {
        let claim = format!(
            "{}-{pod_name}",
            template.metadata.name.as_deref().unwrap_or_default()
        );
        if api.get_opt(&claim).await?.is_some() {
            continue;
        }
        let mut labels = template.metadata.labels.clone().unwrap_or_default();
        labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
        // `whenDeleted: Delete` makes the set own its claims, so that they go with it.
        let owners = (retention(sts).0 == "Delete")
            .then(|| workload::controller_ref(sts))
            .flatten()
            .map(|r| vec![r]);
        let pvc = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(claim.clone()),
                namespace: sts.namespace(),
                labels: Some(labels),
                annotations: template.metadata.annotations.clone(),
                owner_references: owners,
                ..Default::default()
            },
            spec: template.spec.clone(),
            status: None,
        };
        match api.create(&PostParams::default(), &pvc).await {
            Ok(_) => {
                ctx.events
                    .normal(
                        sts,
                        "SuccessfulCreate",
                        format!("create Claim {claim} Pod {pod_name} in StatefulSet {set} success"),
                    )
                    .await
            }
            Err(e) if owned::is_already_exists(&e) => {}
            Err(e) => {
                ctx.events
                    .warning(
                        sts,
                        "FailedCreate",
                        format!("create Claim {claim} for Pod {pod_name} in StatefulSet {set} failed error: {e}"),
                    )
                    .await;
                return Err(e.into());
            }
        }
    }
    Ok(())
}

async fn sync(sts: &StatefulSet, ctx: &Ctx) -> Result<Action, SyncError> {
    let Some(spec) = sts.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    if sts.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = sts.namespace().unwrap_or_default();
    let set = sts.name_any();
    let uid = sts.uid().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let revisions_api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let owner = workload::controller_ref(sts)
        .ok_or_else(|| SyncError::Invalid("statefulset without uid".into()))?;

    let pods = match ctx.pods.controlled(&ns, &uid, Some(&spec.selector)).await {
        Some(pods) => pods,
        None => {
            let params = ListParams::default().labels(&selector::query_string(&spec.selector));
            pods_api.list(&params).await?.items
        }
    };
    let mut by_ordinal: BTreeMap<i32, Pod> = BTreeMap::new();
    for pod in pods {
        if !workload::is_controlled_by(&pod.metadata, &uid) {
            continue;
        }
        if let Some(i) = ordinal_of(&set, &pod.name_any()) {
            by_ordinal.insert(i, pod);
        }
    }

    let mut revisions = history::list(&revisions_api, &spec.selector, &uid).await?;
    let status = sts.status.clone().unwrap_or_default();
    let collision_count = status.collision_count.unwrap_or(0);
    let update = history::ensure(
        &revisions_api,
        &mut revisions,
        owner,
        &set,
        &ns,
        &spec.template,
        collision_count,
    )
    .await?;
    let update_name = update.name_any();
    let current = status
        .current_revision
        .as_ref()
        .and_then(|name| revisions.iter().find(|r| r.name_any() == *name))
        .cloned()
        .unwrap_or_else(|| update.clone());
    let current_name = current.name_any();
    let current_template = history::template_of(&current).unwrap_or_else(|| spec.template.clone());

    let replicas = spec.replicas.unwrap_or(1).max(0);
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");
    let strategy = spec.update_strategy.as_ref();
    let rolling = strategy.and_then(|s| s.type_.as_deref()) != Some("OnDelete");
    let partition = strategy
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);

    let states: BTreeMap<i32, PodState> = by_ordinal
        .iter()
        .map(|(&i, p)| {
            (
                i,
                PodState {
                    finished: matches!(phase(p), "Failed" | "Succeeded"),
                    terminating: p.metadata.deletion_timestamp.is_some(),
                    healthy: running_and_ready(p),
                    updated: revision_of(p) == Some(update_name.as_str()),
                },
            )
        })
        .collect();
    let steps = plan(
        &states,
        start,
        replicas,
        ordered,
        rolling.then_some(partition),
    );
    for step in steps {
        match step {
            Step::Create(i) => {
                // Below the partition a rolling update keeps the current revision.
                let (template, revision) = if rolling && i - start < partition {
                    (&current_template, current_name.as_str())
                } else {
                    (&spec.template, update_name.as_str())
                };
                ensure_claims(ctx, sts, i).await?;
                let pod = new_pod(sts, template, revision, i)?;
                let name = pod.name_any();
                let created = pods_api.create(&PostParams::default(), &pod).await;
                if created.as_ref().is_ok() || created.as_ref().is_err_and(owned::is_already_exists)
                {
                    ctx.pods.expect(&uid, Expect::Created(name.clone()));
                }
                match created {
                    Ok(_) => {
                        ctx.events
                            .normal(
                                sts,
                                "SuccessfulCreate",
                                format!("create Pod {name} in StatefulSet {set} successful"),
                            )
                            .await
                    }
                    Err(e) if owned::is_already_exists(&e) => {}
                    Err(e) => {
                        ctx.events
                            .warning(
                                sts,
                                "FailedCreate",
                                format!("create Pod {name} in StatefulSet {set} failed error: {e}"),
                            )
                            .await;
                        return Err(e.into());
                    }
                }
            }
            Step::Recreate(i) | Step::Condemn(i) | Step::Update(i) => {
                let name = format!("{set}-{i}");
                if matches!(step, Step::Condemn(_)) && retention(sts).1 == "Delete" {
                    if let Some(pod) = by_ordinal.get(&i) {
                        hand_claims_to_pod(ctx, sts, pod).await?;
                    }
                }
                match pods_api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {
                        if let Some(pod_uid) = by_ordinal.get(&i).and_then(|p| p.uid()) {
                            ctx.pods.expect(&uid, Expect::Deleted(pod_uid));
                        }
                        ctx.events
                            .normal(
                                sts,
                                "SuccessfulDelete",
                                format!("delete Pod {name} in StatefulSet {set} successful"),
                            )
                            .await
                    }
                    Err(e) if owned::is_not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    // Status as the pods were seen; their changes bring the next sync.
    let now = jiff::Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut next = StatefulSetStatus {
        observed_generation: sts.metadata.generation,
        collision_count: Some(collision_count),
        current_revision: Some(current_name.clone()),
        update_revision: Some(update_name.clone()),
        ..Default::default()
    };
    let (mut count, mut ready, mut available, mut current_n, mut updated) = (0, 0, 0, 0, 0);
    for pod in by_ordinal.values() {
        if !phase(pod).is_empty() {
            count += 1;
        }
        if running_and_ready(pod) {
            ready += 1;
            if workload::is_pod_available(pod, min_ready, now) {
                available += 1;
            }
        }
        if !phase(pod).is_empty() && pod.metadata.deletion_timestamp.is_none() {
            if revision_of(pod) == Some(current_name.as_str()) {
                current_n += 1;
            }
            if revision_of(pod) == Some(update_name.as_str()) {
                updated += 1;
            }
        }
    }
    // A finished rolling update makes the update revision current.
    if rolling && updated == count && ready == count && count == replicas {
        next.current_revision = Some(update_name.clone());
        current_n = updated;
    }
    next.replicas = count;
    next.ready_replicas = Some(ready);
    next.available_replicas = Some(available);
    next.current_replicas = Some(current_n);
    next.updated_replicas = Some(updated);
    next.conditions = status.conditions.clone();

    let mut live: BTreeSet<String> = by_ordinal
        .values()
        .filter_map(|p| revision_of(p).map(str::to_string))
        .collect();
    live.insert(update_name);
    live.extend(next.current_revision.clone());
    history::prune(
        &revisions_api,
        &revisions,
        &live,
        spec.revision_history_limit.unwrap_or(10),
    )
    .await?;

    if sts.status.as_ref() != Some(&next) {
        let mut updated_set = sts.clone();
        updated_set.status = Some(next);
        sets.replace_status(&set, &PostParams::default(), &updated_set)
            .await?;
    }
    // Availability after minReadySeconds is only seen by looking again.
    if min_ready > 0 && ready > available {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(updated: bool) -> PodState {
        PodState {
            finished: false,
            terminating: false,
            healthy: true,
            updated,
        }
    }

    fn pending() -> PodState {
        PodState {
            healthy: false,
            ..healthy(true)
        }
    }

    #[test]
    fn ordinals() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "webx-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_after_the_previous_is_ready() {
        let mut pods = BTreeMap::new();
        assert_eq!(plan(&pods, 0, 3, true, Some(0)), [Step::Create(0)]);
        pods.insert(0, pending());
        assert_eq!(plan(&pods, 0, 3, true, Some(0)), []);
        pods.insert(0, healthy(true));
        assert_eq!(plan(&pods, 0, 3, true, Some(0)), [Step::Create(1)]);
    }

    #[test]
    fn parallel_creates_all_at_once() {
        let pods = BTreeMap::from([(1, pending())]);
        assert_eq!(
            plan(&pods, 0, 3, false, None),
            [Step::Create(0), Step::Create(2)]
        );
    }

    #[test]
    fn scale_down_removes_the_highest_first_one_at_a_time() {
        let pods: BTreeMap<i32, PodState> = (0..4).map(|i| (i, healthy(true))).collect();
        assert_eq!(plan(&pods, 0, 2, true, Some(0)), [Step::Condemn(3)]);
        assert_eq!(
            plan(&pods, 0, 2, false, Some(0)),
            [Step::Condemn(3), Step::Condemn(2)]
        );
        let mut pods = pods;
        pods.insert(
            3,
            PodState {
                terminating: true,
                ..healthy(true)
            },
        );
        assert_eq!(plan(&pods, 0, 2, true, Some(0)), []);
    }

    #[test]
    fn rolling_update_goes_down_from_the_highest_ordinal_to_the_partition() {
        let mut pods: BTreeMap<i32, PodState> = (0..3).map(|i| (i, healthy(false))).collect();
        assert_eq!(plan(&pods, 0, 3, true, Some(0)), [Step::Update(2)]);
        pods.insert(2, pending());
        assert_eq!(plan(&pods, 0, 3, true, Some(0)), []);
        pods.insert(2, healthy(true));
        assert_eq!(plan(&pods, 0, 3, true, Some(0)), [Step::Update(1)]);
        assert_eq!(plan(&pods, 0, 3, true, Some(2)), []);
        // OnDelete never replaces.
        assert_eq!(plan(&pods, 0, 3, true, None), []);
    }

    #[test]
    fn ordinals_can_start_above_zero() {
        let pods = BTreeMap::from([(0, healthy(true)), (5, healthy(true))]);
        assert_eq!(
            plan(&pods, 5, 2, false, Some(0)),
            [Step::Create(6), Step::Condemn(0)]
        );
    }

    #[test]
    fn failed_pods_are_recreated() {
        let pods = BTreeMap::from([(
            0,
            PodState {
                finished: true,
                ..pending()
            },
        )]);
        assert_eq!(plan(&pods, 0, 1, true, Some(0)), [Step::Recreate(0)]);
    }
}
