//! The Deployment controller, as upstream's: ReplicaSets named `NAME-HASH` (the
//! `pod-template-hash` of the template), rolled over by RollingUpdate (maxSurge,
//! maxUnavailable) or Recreate, scaled proportionally mid-rollout, paused, with revision
//! annotations for `kubectl rollout history|undo`, old ReplicaSets cleaned up past
//! `revisionHistoryLimit`, and status with the Available and Progressing conditions.
//!
//! Writes to ReplicaSets carry the cached resourceVersion, so a decision made on a
//! stale cache fails with a conflict and is retried on fresh data instead of acting
//! twice (upstream gets the same from its updates).

pub(crate) mod progress;
mod recreate;
pub(crate) mod revisions;
pub(crate) mod rolling;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use korvet_apimachinery::events::EventRecorder;
use korvet_apimachinery::selector;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;

use crate::workload::{controller_of, controller_ref, is_controlled_by};
use revisions::{compute_hash, equal_ignore_hash, HASH_LABEL};
use rolling::{is_rolling_update, max_surge};

#[derive(Debug, thiserror::Error)]
pub(crate) enum DeploymentError {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

/// When to look again without a change (the progress deadline).
type Requeue = Option<Duration>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scaled {
    Yes,
    No,
}

pub(crate) struct Context {
    client: kube::Client,
    replica_sets: Store<ReplicaSet>,
    /// The manager's shared pod watch (read only).
    pods: crate::pod_cache::PodInformer,
    recorder: EventRecorder,
}

pub(crate) fn d_replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

pub(crate) fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

pub(crate) fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

pub(crate) fn sum_replicas(sets: &[&ReplicaSet]) -> i32 {
    sets.iter().map(|rs| rs_replicas(rs)).sum()
}

/// Oldest first; ties by name, as upstream's `ReplicaSetsByCreationTimestamp`.
pub(crate) fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> std::cmp::Ordering {
    let t = |rs: &ReplicaSet| rs.metadata.creation_timestamp.as_ref().map(|t| t.0);
    t(a).cmp(&t(b))
        .then_with(|| a.name_any().cmp(&b.name_any()))
}

/// Runs the Deployment controller until its task is aborted.
pub(crate) async fn run(client: kube::Client, shared_pods: crate::pod_cache::PodInformer) {
    let (replica_sets, rs_writer) = reflector::store();
    let rs_events = reflector::reflector(
        rs_writer,
        watcher(
            Api::<ReplicaSet>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let pod_events = shared_pods.subscribe();
    let controller = Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    );
    let deployments = controller.store();
    let ctx = Arc::new(Context {
        recorder: EventRecorder::new(client.clone(), "deployment-controller"),
        client,
        replica_sets: replica_sets.clone(),
        pods: shared_pods,
    });
    let for_sets = deployments.clone();
    controller
        .watches_stream(rs_events, move |rs| deployments_of_rs(&for_sets, &rs))
        .watches_shared_stream(pod_events, move |pod| {
            recreate_deployment_of_pod(&deployments, &replica_sets, &pod)
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| std::future::ready(()))
        .await;
}

/// The Deployment that controls `rs`, or for an orphan those that select it.
fn deployments_of_rs(
    deployments: &Store<Deployment>,
    rs: &ReplicaSet,
) -> Vec<ObjectRef<Deployment>> {
    let namespace = rs.namespace().unwrap_or_default();
    if let Some(owner) = controller_of(&rs.metadata) {
        if owner.kind == "Deployment" {
            return vec![ObjectRef::new(&owner.name).within(&namespace)];
        }
        return Vec::new();
    }
    deployments
        .state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|d| {
            selector::matches_unless_empty(d.spec.as_ref().map(|s| &s.selector), Some(rs.labels()))
        })
        .map(|d| ObjectRef::from_obj(d.as_ref()))
        .collect()
}

/// Pods matter to a Recreate Deployment only (it waits for old pods to be gone).
fn recreate_deployment_of_pod(
    deployments: &Store<Deployment>,
    replica_sets: &Store<ReplicaSet>,
    pod: &Pod,
) -> Option<ObjectRef<Deployment>> {
    let namespace = pod.namespace()?;
    let owner = controller_of(&pod.metadata).filter(|o| o.kind == "ReplicaSet")?;
    let rs = replica_sets.get(&ObjectRef::new(&owner.name).within(&namespace))?;
    let d_owner = controller_of(&rs.metadata).filter(|o| o.kind == "Deployment")?;
    let key = ObjectRef::new(&d_owner.name).within(&namespace);
    let d = deployments.get(&key)?;
    (!is_rolling_update(&d)).then_some(key)
}

fn error_policy(d: Arc<Deployment>, error: &DeploymentError, _ctx: Arc<Context>) -> Action {
    tracing::debug!(deployment = %d.name_any(), %error, "syncing a Deployment failed; retrying");
    // A conflict means the cache was stale: the watch brings the news at once.
    match error {
        DeploymentError::Api(kube::Error::Api(s)) if s.code == 409 => {
            Action::requeue(Duration::from_millis(50))
        }
        _ => Action::requeue(Duration::from_secs(1)),
    }
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, DeploymentError> {
    let started = Instant::now();
    let result = sync(&d, &ctx).await;
    crate::metrics::sync_done("deployment", started, result.is_ok());
    Ok(match result? {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

async fn sync(d: &Deployment, ctx: &Context) -> Result<Requeue, DeploymentError> {
    // kube's `wait_until_ready` wakes only the last of several syncs waiting at once (the
    // others would hang for good): look, and come back shortly while the ReplicaSet
    // store is not filled yet.
    match ctx.replica_sets.wait_until_ready().now_or_never() {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(DeploymentError::Other(e.to_string())),
        None => return Ok(Some(Duration::from_millis(100))),
    }
    ctx.pods
        .wait_until_ready()
        .await
        .map_err(DeploymentError::Other)?;
    let mut d = d.clone();
    let spec = d.spec.clone().unwrap_or_default();
    let selects_nothing = spec
        .selector
        .match_labels
        .as_ref()
        .is_none_or(|l| l.is_empty())
        && spec
            .selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    if selects_nothing {
        ctx.recorder
            .warning(
                &d,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.".into(),
            )
            .await;
        return Ok(None);
    }
    let sets = claim_replica_sets(ctx, &d).await?;
    if d.metadata.deletion_timestamp.is_some() {
        let (new_rs, old) = new_and_old(ctx, &mut d, &sets, false).await?;
        sync_status(ctx, &d, new_rs.as_ref(), &old).await?;
        return Ok(None);
    }
    check_paused_conditions(ctx, &mut d).await?;
    if spec.paused == Some(true) || is_scaling_event(&d, &sets) {
        return scale_sync(ctx, &mut d, &sets).await;
    }
    if is_rolling_update(&d) {
        let (new_rs, old) = new_and_old(ctx, &mut d, &sets, true).await?;
        match new_rs {
            Some(new_rs) => rolling::rollout(ctx, &d, new_rs, old).await,
            None => Ok(None),
        }
    } else {
        let (new_rs, old) = new_and_old(ctx, &mut d, &sets, false).await?;
        recreate::rollout(ctx, &mut d, &sets, new_rs, old).await
    }
}

/// ReplicaSets this Deployment controls and selects, adopting orphans it selects and
/// releasing those it no longer selects.
async fn claim_replica_sets(
    ctx: &Context,
    d: &Deployment,
) -> Result<Vec<ReplicaSet>, DeploymentError> {
    let namespace = d.namespace().unwrap_or_default();
    let uid = d.uid().unwrap_or_default();
    let selector = d.spec.as_ref().map(|s| &s.selector);
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut claimed = Vec::new();
    for rs in ctx.replica_sets.state() {
        if rs.namespace().as_deref() != Some(namespace.as_str()) {
            continue;
        }
        let matches = selector::matches_unless_empty(selector, Some(rs.labels()));
        if is_controlled_by(&rs.metadata, &uid) {
            if matches {
                claimed.push((*rs).clone());
            } else {
                let refs: Vec<_> = rs
                    .owner_references()
                    .iter()
                    .filter(|r| r.uid != uid)
                    .cloned()
                    .collect();
                let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": rs.resource_version()}});
                if let Err(e) = api
                    .patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                {
                    tracing::debug!(replicaset = %rs.name_any(), error = %e, "releasing a ReplicaSet");
                }
            }
        } else if matches
            && controller_of(&rs.metadata).is_none()
            && d.metadata.deletion_timestamp.is_none()
        {
            let mut refs = rs.owner_references().to_vec();
            refs.extend(controller_ref(d));
            let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": rs.resource_version()}});
            match api
                .patch(
                    &rs.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
            {
                Ok(adopted) => claimed.push(adopted),
                Err(e) => {
                    tracing::debug!(replicaset = %rs.name_any(), error = %e, "adopting a ReplicaSet")
                }
            }
        }
    }
    Ok(claimed)
}

/// The new ReplicaSet (the oldest whose template is the Deployment's) and the old
/// ones, with the revision annotations synced; creates the new one when asked.
pub(crate) async fn new_and_old(
    ctx: &Context,
    d: &mut Deployment,
    sets: &[ReplicaSet],
    create: bool,
) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), DeploymentError> {
    let spec = d.spec.clone().unwrap_or_default();
    let mut matching: Vec<&ReplicaSet> = sets
        .iter()
        .filter(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| equal_ignore_hash(t, &spec.template))
        })
        .collect();
    matching.sort_by(|a, b| by_creation(a, b));
    let new_uid = matching.first().and_then(|rs| rs.uid());
    let old: Vec<ReplicaSet> = sets
        .iter()
        .filter(|rs| rs.uid() != new_uid || new_uid.is_none())
        .cloned()
        .collect();
    let new_revision = revisions::max_revision(&old) + 1;
    let namespace = d.namespace().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let (desired, max) = (d_replicas(d), d_replicas(d) + max_surge(d));

    if let Some(existing) = matching.first() {
        let mut rs = (*existing).clone();
        let mut copy = rs.clone();
        let annotations_changed =
            revisions::set_new_rs_annotations(d, &mut copy, new_revision, true, desired, max);
        let min_ready_changed = rs
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
            != spec.min_ready_seconds.unwrap_or(0);
        if annotations_changed || min_ready_changed {
            let patch = json!({
                "metadata": {"annotations": copy.metadata.annotations, "resourceVersion": rs.resource_version()},
                "spec": {"minReadySeconds": spec.min_ready_seconds.unwrap_or(0)},
            });
            rs = api
                .patch(
                    &rs.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await?;
        }
        set_deployment_revision(ctx, d, &rs).await?;
        if progress::has_progress_deadline(d) {
            let mut status = d.status.clone().unwrap_or_default();
            if progress::get(&status, progress::PROGRESSING).is_none() {
                progress::set(
                    &mut status,
                    progress::condition(
                        progress::PROGRESSING,
                        "True",
                        "FoundNewReplicaSet",
                        format!("Found new replica set \"{}\"", rs.name_any()),
                    ),
                );
                write_status(ctx, d, status).await?;
            }
        }
        return Ok((Some(rs), old));
    }
    if !create {
        return Ok((None, old));
    }

    let collision_count = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = compute_hash(&spec.template, collision_count);
    let mut template = spec.template.clone();
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.clone());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.clone());
    let name = format!("{}-{}", d.name_any(), hash);
    let mut rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            owner_references: controller_ref(d).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(0),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    };
    revisions::set_new_rs_annotations(d, &mut rs, new_revision, false, desired, max);
    let all: Vec<&ReplicaSet> = old.iter().chain(Some(&rs)).collect();
    let replicas = rolling::new_rs_new_replicas(d, &all, &rs);
    if let Some(s) = rs.spec.as_mut() {
        s.replicas = Some(replicas);
    }
    let created = match api.create(&PostParams::default(), &rs).await {
        Ok(created) => {
            if replicas > 0 {
                ctx.recorder
                    .normal(
                        d,
                        "ScalingReplicaSet",
                        format!("Scaled up replica set {name} to {replicas}"),
                    )
                    .await;
            }
            if progress::has_progress_deadline(d) {
                let mut status = d.status.clone().unwrap_or_default();
                progress::set(
                    &mut status,
                    progress::condition(
                        progress::PROGRESSING,
                        "True",
                        "NewReplicaSetCreated",
                        format!("Created new replica set \"{name}\""),
                    ),
                );
                write_status(ctx, d, status).await?;
            }
            created
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // The name is taken: by our own ReplicaSet the cache has not shown yet, or by
            // another template (a hash collision: step the count and try again).
            let existing = api.get(&name).await?;
            let ours = is_controlled_by(&existing.metadata, &d.uid().unwrap_or_default())
                && existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignore_hash(t, &spec.template));
            if !ours {
                let mut status = d.status.clone().unwrap_or_default();
                status.collision_count = Some(collision_count.unwrap_or(0) + 1);
                write_status(ctx, d, status).await?;
                return Err(DeploymentError::Other(format!(
                    "hash collision on replica set {name}"
                )));
            }
            existing
        }
        Err(e) => {
            let message = format!(
                "Failed to create new replica set \"{name}\": {}",
                api_message(&e)
            );
            ctx.recorder
                .warning(d, "ReplicaSetCreateError", message.clone())
                .await;
            if progress::has_progress_deadline(d) {
                let mut status = d.status.clone().unwrap_or_default();
                progress::set(
                    &mut status,
                    progress::condition(
                        progress::PROGRESSING,
                        "False",
                        "ReplicaSetCreateError",
                        message,
                    ),
                );
                write_status(ctx, d, status).await?;
            }
            return Err(e.into());
        }
    };
    set_deployment_revision(ctx, d, &created).await?;
    Ok((Some(created), old))
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// The Deployment's `revision` annotation follows its new ReplicaSet's.
async fn set_deployment_revision(
    ctx: &Context,
    d: &mut Deployment,
    rs: &ReplicaSet,
) -> Result<(), DeploymentError> {
    let Some(revision) = rs.annotations().get(revisions::REVISION).cloned() else {
        return Ok(());
    };
    if d.annotations().get(revisions::REVISION) == Some(&revision) {
        return Ok(());
    }
    let api: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"annotations": {revisions::REVISION: revision}}});
    let updated = api
        .patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    d.metadata.annotations = updated.metadata.annotations;
    Ok(())
}

async fn write_status(
    ctx: &Context,
    d: &mut Deployment,
    status: DeploymentStatus,
) -> Result<(), DeploymentError> {
    let api: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
    api.patch_status(
        &d.name_any(),
        &PatchParams::default(),
        &Patch::Merge(progress::patch(&status)),
    )
    .await?;
    d.status = Some(status);
    Ok(())
}

/// Scales `rs` to `to` with the replica annotations of the Deployment's current size,
/// and records `ScalingReplicaSet` when the size changed.
pub(crate) async fn scale_and_record(
    ctx: &Context,
    d: &Deployment,
    rs: &mut ReplicaSet,
    to: i32,
    operation: Option<&str>,
) -> Result<Scaled, DeploymentError> {
    let from = rs_replicas(rs);
    let mut annotations = rs.metadata.annotations.clone().unwrap_or_default();
    let annotations_changed = revisions::set_replicas_annotations(
        &mut annotations,
        d_replicas(d),
        d_replicas(d) + max_surge(d),
    );
    if from == to && !annotations_changed {
        return Ok(Scaled::No);
    }
    let api: Api<ReplicaSet> =
        Api::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default());
    let patch = json!({
        "metadata": {
            "resourceVersion": rs.resource_version(),
            "annotations": {
                revisions::DESIRED_REPLICAS: annotations.get(revisions::DESIRED_REPLICAS),
                revisions::MAX_REPLICAS: annotations.get(revisions::MAX_REPLICAS),
            },
        },
        "spec": {"replicas": to},
    });
    *rs = api
        .patch(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    if from == to {
        return Ok(Scaled::No);
    }
    let operation = operation.unwrap_or(if to > from { "up" } else { "down" });
    ctx.recorder
        .normal(
            d,
            "ScalingReplicaSet",
            format!(
                "Scaled {operation} replica set {} to {to} from {from}",
                rs.name_any()
            ),
        )
        .await;
    Ok(Scaled::Yes)
}

/// Status and the Progressing condition after a rollout step; when to look again for
/// the progress deadline.
pub(crate) async fn sync_rollout_status(
    ctx: &Context,
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
    old: &[ReplicaSet],
) -> Result<Requeue, DeploymentError> {
    let all: Vec<&ReplicaSet> = old.iter().chain(new_rs).collect();
    let status = progress::rollout_status(d, new_rs, &all);
    if progress::differs(d.status.as_ref(), &status) {
        let mut d = d.clone();
        write_status(ctx, &mut d, status.clone()).await?;
    }
    Ok(progress::deadline_left(d, &status).map(|left| {
        if left < Duration::from_secs(1) {
            Duration::from_millis(200)
        } else {
            left + Duration::from_secs(1)
        }
    }))
}

/// Status without touching the Progressing condition (scaling, paused).
async fn sync_status(
    ctx: &Context,
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
    old: &[ReplicaSet],
) -> Result<(), DeploymentError> {
    let all: Vec<&ReplicaSet> = old.iter().chain(new_rs).collect();
    let status = progress::calculate(d, new_rs, &all);
    if progress::differs(d.status.as_ref(), &status) {
        let mut d = d.clone();
        write_status(ctx, &mut d, status).await?;
    }
    Ok(())
}

/// Paused and resumed Deployments say so in Progressing (Unknown).
async fn check_paused_conditions(ctx: &Context, d: &mut Deployment) -> Result<(), DeploymentError> {
    if !progress::has_progress_deadline(d) {
        return Ok(());
    }
    let mut status = d.status.clone().unwrap_or_default();
    let reason = progress::get(&status, progress::PROGRESSING).and_then(|c| c.reason.clone());
    if reason.as_deref() == Some(progress::TIMED_OUT) {
        return Ok(());
    }
    let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
    let condition = if paused && reason.as_deref() != Some(progress::PAUSED) {
        progress::condition(
            progress::PROGRESSING,
            "Unknown",
            progress::PAUSED,
            "Deployment is paused".into(),
        )
    } else if !paused && reason.as_deref() == Some(progress::PAUSED) {
        progress::condition(
            progress::PROGRESSING,
            "Unknown",
            progress::RESUMED,
            "Deployment is resumed".into(),
        )
    } else {
        return Ok(());
    };
    progress::set(&mut status, condition);
    write_status(ctx, d, status).await
}

/// A ReplicaSet with replicas that was sized for another Deployment size.
fn is_scaling_event(d: &Deployment, sets: &[ReplicaSet]) -> bool {
    sets.iter()
        .filter(|rs| rs_replicas(rs) > 0)
        .filter_map(|rs| revisions::annotation_i32(rs, revisions::DESIRED_REPLICAS))
        .any(|desired| desired != d_replicas(d))
}

/// Upstream's `sync`: scaling (proportional mid-rollout) and paused Deployments.
async fn scale_sync(
    ctx: &Context,
    d: &mut Deployment,
    sets: &[ReplicaSet],
) -> Result<Requeue, DeploymentError> {
    let (mut new_rs, mut old) = new_and_old(ctx, d, sets, false).await?;
    scale(ctx, d, new_rs.as_mut(), &mut old).await?;
    if d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
        cleanup(ctx, d, &old).await?;
    }
    sync_status(ctx, d, new_rs.as_ref(), &old).await?;
    Ok(None)
}

/// The share of `to_add` replicas that `rs` gets (upstream's `GetProportion`).
pub(crate) fn proportion(
    rs_size: i32,
    max_replicas_annotation: Option<i32>,
    d_size: i32,
    d_status_replicas: i32,
    surge: i32,
    to_add: i32,
    added: i32,
) -> i32 {
    if rs_size == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = if d_size == 0 {
        -rs_size
    } else {
        let deployment_replicas = d_size + surge;
        let annotated = max_replicas_annotation.unwrap_or(d_status_replicas);
        if annotated == 0 {
            0
        } else {
            let share = f64::from(rs_size) * f64::from(deployment_replicas) / f64::from(annotated);
            share.round() as i32 - rs_size
        }
    };
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

async fn scale(
    ctx: &Context,
    d: &Deployment,
    new_rs: Option<&mut ReplicaSet>,
    old: &mut [ReplicaSet],
) -> Result<(), DeploymentError> {
    let desired = d_replicas(d);
    let new_uid = new_rs.as_ref().and_then(|rs| rs.uid());
    let mut all: Vec<&mut ReplicaSet> = old.iter_mut().chain(new_rs).collect();
    let active: Vec<usize> = (0..all.len())
        .filter(|i| rs_replicas(all[*i]) > 0)
        .collect();
    // One active ReplicaSet (or none: the newest) takes the whole size.
    if active.len() <= 1 {
        let target = match active.first() {
            Some(i) => Some(*i),
            None => {
                let newest = (0..all.len()).find(|i| all[*i].uid() == new_uid && new_uid.is_some());
                newest.or_else(|| (0..all.len()).max_by(|a, b| by_creation(all[*a], all[*b])))
            }
        };
        if let Some(i) = target {
            if rs_replicas(all[i]) != desired {
                scale_and_record(ctx, d, all[i], desired, None).await?;
            }
        }
        return Ok(());
    }
    // The new ReplicaSet is saturated: the old ones go.
    if let Some(i) = (0..all.len()).find(|i| new_uid.is_some() && all[*i].uid() == new_uid) {
        let rs = &all[i];
        let saturated = rs_replicas(rs) == desired
            && revisions::annotation_i32(rs, revisions::DESIRED_REPLICAS) == Some(desired)
            && available(rs) == desired;
        if saturated {
            for j in active.iter().copied().filter(|j| *j != i) {
                scale_and_record(ctx, d, all[j], 0, None).await?;
            }
            return Ok(());
        }
    }
    if !is_rolling_update(d) {
        return Ok(());
    }
    let surge = max_surge(d);
    let current: i32 = active.iter().map(|i| rs_replicas(all[*i])).sum();
    let allowed = if desired > 0 { desired + surge } else { 0 };
    let to_add = allowed - current;
    let mut order = active.clone();
    // Adding: larger first, newer first on a tie; removing: larger first, older first.
    order.sort_by(|a, b| {
        let by_size = rs_replicas(all[*b]).cmp(&rs_replicas(all[*a]));
        let by_age = by_creation(all[*a], all[*b]);
        by_size.then(if to_add > 0 { by_age.reverse() } else { by_age })
    });
    let status_replicas = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let mut sizes: BTreeMap<usize, i32> = BTreeMap::new();
    let mut added = 0;
    for i in &order {
        let size = rs_replicas(all[*i]);
        let share = if to_add != 0 {
            proportion(
                size,
                revisions::annotation_i32(all[*i], revisions::MAX_REPLICAS),
                desired,
                status_replicas,
                surge,
                to_add,
                added,
            )
        } else {
            0
        };
        added += share;
        sizes.insert(*i, size + share);
    }
    if let Some(first) = order.first() {
        if to_add != 0 {
            let leftover = to_add - added;
            let s = sizes.entry(*first).or_default();
            *s = (*s + leftover).max(0);
        }
    }
    let operation = if to_add > 0 { "up" } else { "down" };
    for (i, size) in sizes {
        scale_and_record(ctx, d, all[i], size, Some(operation)).await?;
    }
    Ok(())
}

/// Deletes the oldest ReplicaSets beyond `revisionHistoryLimit` that have no pods.
pub(crate) async fn cleanup(
    ctx: &Context,
    d: &Deployment,
    old: &[ReplicaSet],
) -> Result<(), DeploymentError> {
    let Some(limit) = d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
        return Ok(());
    };
    let mut cleanable: Vec<&ReplicaSet> = old
        .iter()
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .collect();
    let surplus = cleanable.len() as i64 - i64::from(limit.max(0));
    if surplus <= 0 {
        return Ok(());
    }
    cleanable.sort_by_key(|rs| {
        (
            revisions::revision(rs),
            rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
        )
    });
    for rs in cleanable.into_iter().take(surplus as usize) {
        let observed = rs
            .status
            .as_ref()
            .and_then(|s| s.observed_generation)
            .unwrap_or(0);
        let busy = rs.status.as_ref().is_some_and(|s| s.replicas != 0)
            || rs_replicas(rs) != 0
            || rs.metadata.generation.unwrap_or(0) > observed;
        if busy {
            continue;
        }
        let api: Api<ReplicaSet> =
            Api::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default());
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: rs.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&rs.name_any(), &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
