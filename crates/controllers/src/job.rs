//! The Job controller, as upstream's (1.32): runs pods until `completions` succeed
//! (NonIndexed) or every index `0..completions` has succeeded (Indexed), at most
//! `parallelism` at a time; fails the Job after `backoffLimit` failed pods or
//! `activeDeadlineSeconds`.
//!
//! Pods carry the `batch.kubernetes.io/job-tracking` finalizer. A finished pod is first
//! recorded in `status.uncountedTerminatedPods`, then loses its finalizer, then moves into
//! the `succeeded`/`failed` counters: a crash at any step neither loses nor doubles a
//! count, and the counts survive the pods' deletion. Finishing is two-step as upstream:
//! `SuccessCriteriaMet`/`FailureTarget` first, `Complete`/`Failed` once no pod of the
//! Job is left running.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{
    Job, JobCondition, JobStatus, PodFailurePolicy, UncountedTerminatedPods,
};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use korvet_apimachinery::{names, selector};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::owned::{self, Ctx, SyncError};
use crate::pod_cache::{self, Expect};
use crate::workload;

pub(crate) const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub(crate) const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// Runs the Job controller until its task is aborted.
pub(crate) async fn run(client: kube::Client, pods: pod_cache::PodInformer) {
    let ctx = Ctx::with_pods(&client, "job-controller", pods.cache());
    let controller = Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default());
    let job_store = controller.store();
    let jobs = controller
        .watches_shared_stream(pods.subscribe(), pod_cache::controller_of_pod::<Job>)
        .run(reconcile, owned::retry_soon, ctx)
        .for_each(|_| async {});
    tokio::join!(jobs, release_orphans(client, job_store, pods.changes()));
}

/// Takes the tracking finalizer off pods whose Job is gone: a deleted Job is never
/// synced again, and its pods would otherwise stay terminating for ever.
/// `changes` are the shared pod watch's; a pod whose Job the controller's store shows is
/// passed over without asking the API (this shares the pod watch's pace with the other
/// controllers).
async fn release_orphans(
    client: kube::Client,
    job_store: Store<Job>,
    changes: impl futures::Stream<Item = pod_cache::PodChange>,
) {
    futures::pin_mut!(changes);
    while let Some(change) = changes.next().await {
        let pod_cache::PodChange::Applied(pod) = change else {
            continue;
        };
        if !pod
            .labels()
            .contains_key("batch.kubernetes.io/controller-uid")
            || !owned::has_finalizer(&pod.metadata, TRACKING_FINALIZER)
        {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let owner = workload::controller_of(&pod.metadata).cloned();
        let orphaned = match &owner {
            Some(owner)
                if owner.kind == "Job"
                    && job_store
                        .get(&ObjectRef::new(&owner.name).within(&ns))
                        .is_some_and(|job| job.uid().as_deref() == Some(owner.uid.as_str())) =>
            {
                false
            }
            Some(owner) if owner.kind == "Job" => {
                match Api::<Job>::namespaced(client.clone(), &ns)
                    .get_opt(&owner.name)
                    .await
                {
                    Ok(Some(job)) => job.uid().as_deref() != Some(owner.uid.as_str()),
                    Ok(None) => true,
                    Err(e) => {
                        tracing::debug!(error = %e, "looking up a pod's Job");
                        false
                    }
                }
            }
            _ => true,
        };
        if orphaned {
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            if let Err(e) = owned::remove_finalizer(&api, &pod, TRACKING_FINALIZER).await {
                tracing::debug!(pod = %pod.name_any(), error = %e, "releasing an orphaned job pod");
            }
        }
    }
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, SyncError> {
    owned::timed("job", sync(&job, &ctx)).await
}

/// Whether the Job has its terminal `Complete` or `Failed` condition.
pub(crate) fn is_finished(job: &Job) -> bool {
    finished_at(job).is_some()
}

/// When the Job reached `Complete` or `Failed`.
pub(crate) fn finished_at(job: &Job) -> Option<Timestamp> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map(|t| t.0)
                .unwrap_or_else(Timestamp::now)
        })
}

fn condition_true(status: &JobStatus, type_: &str) -> Option<JobCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == "True")
        .cloned()
}

/// Sets a condition; the transition time changes only when its status does.
fn set_condition(status: &mut JobStatus, type_: &str, value: bool, reason: &str, message: &str) {
    let now = Time(Timestamp::now());
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let value = if value { "True" } else { "False" };
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != value {
            c.last_transition_time = Some(now.clone());
        }
        c.status = value.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_probe_time = Some(now);
        return;
    }
    conditions.push(JobCondition {
        type_: type_.into(),
        status: value.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    });
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn pod_index(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(COMPLETION_INDEX)?
        .parse()
        .ok()
}

/// Indexes as upstream writes `completedIndexes`: `1,3-5,7`.
pub(crate) fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

pub(crate) fn parse_indexes(text: &str) -> BTreeSet<i32> {
    let mut set = BTreeSet::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    set.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    set.insert(i);
                }
            }
        }
    }
    set
}

/// What a matching `podFailurePolicy` rule says about a failed pod.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PolicyAction {
    /// Fail the Job, with upstream's message.
    FailJob(String),
    /// Replace the pod without counting the failure.
    Ignore,
    Count,
}

/// The first rule of `policy` matching failed `pod`, as upstream's `matchPodFailurePolicy`.
pub(crate) fn match_pod_failure_policy(
    policy: &PodFailurePolicy,
    pod: &Pod,
) -> Option<PolicyAction> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let status = pod.status.as_ref();
    let containers: Vec<(&str, i32)> = status
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .filter_map(|c| {
            let code = c.state.as_ref()?.terminated.as_ref()?.exit_code;
            Some((c.name.as_str(), code))
        })
        .collect();
    for (index, rule) in policy.rules.iter().enumerate() {
        let mut matched: Option<String> = None;
        if let Some(req) = &rule.on_exit_codes {
            matched = containers
                .iter()
                .filter(|(c, _)| req.container_name.as_deref().is_none_or(|n| n == *c))
                .find(|(_, code)| match req.operator.as_str() {
                    "In" => req.values.contains(code),
                    "NotIn" => *code != 0 && !req.values.contains(code),
                    _ => false,
                })
                .map(|(c, code)| {
                    format!(
                        "Container {c} for pod {ns}/{name} failed with exit code {code} matching {} rule at index {index}",
                        rule.action
                    )
                });
        }
        if let Some(patterns) = &rule.on_pod_conditions {
            let conditions = status.and_then(|s| s.conditions.as_ref());
            matched = patterns.iter().find_map(|p| {
                conditions?
                    .iter()
                    .find(|c| c.type_ == p.type_ && c.status == p.status)
                    .map(|c| {
                        format!(
                            "Pod {ns}/{name} has condition {} matching {} rule at index {index}",
                            c.type_, rule.action
                        )
                    })
            });
        }
        if let Some(message) = matched {
            return Some(match rule.action.as_str() {
                "FailJob" => PolicyAction::FailJob(message),
                "Ignore" => PolicyAction::Ignore,
                _ => PolicyAction::Count,
            });
        }
    }
    None
}

fn new_pod(job: &Job, index: Option<i32>) -> Result<Pod, SyncError> {
    let name = job.name_any();
    let spec = job
        .spec
        .as_ref()
        .ok_or_else(|| SyncError::Invalid("job without spec".into()))?;
    let owner = workload::controller_ref(job)
        .ok_or_else(|| SyncError::Invalid("job without uid".into()))?;
    let prefix = match index {
        Some(i) => names::generate_name_prefix(&format!("{name}-{i}")),
        None => names::generate_name_prefix(&name),
    };
    let mut pod = workload::pod_from_template(
        &spec.template,
        owner,
        &job.namespace().unwrap_or_default(),
        None,
        &prefix,
    );
    pod.metadata
        .finalizers
        .get_or_insert_with(Vec::new)
        .push(TRACKING_FINALIZER.into());
    if let Some(i) = index {
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.into(), i.to_string());
        pod.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.into(), i.to_string());
        if let Some(pod_spec) = pod.spec.as_mut() {
            if pod_spec.hostname.is_none() {
                pod_spec.hostname = Some(format!("{name}-{i}"));
            }
            let env = EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: Some("v1".into()),
                        field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                    }),
                    ..Default::default()
                }),
            };
            let containers = pod_spec
                .containers
                .iter_mut()
                .chain(pod_spec.init_containers.iter_mut().flatten());
            for c in containers {
                let vars = c.env.get_or_insert_with(Vec::new);
                if !vars.iter().any(|v| v.name == env.name) {
                    vars.push(env.clone());
                }
            }
        }
    }
    Ok(pod)
}

async fn sync(job: &Job, ctx: &Ctx) -> Result<Action, SyncError> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let Some(spec) = job.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Vec<Pod> = match ctx.pods.controlled(&ns, &uid, spec.selector.as_ref()).await {
        Some(pods) => pods,
        None => {
            let mut params = ListParams::default();
            if let Some(selector) = &spec.selector {
                params = params.labels(&selector::query_string(selector));
            }
            pods_api
                .list(&params)
                .await?
                .items
                .into_iter()
                .filter(|p| workload::is_controlled_by(&p.metadata, &uid))
                .collect()
        }
    };

    // A finished or deleted Job only lets its pods go.
    if is_finished(job) || job.metadata.deletion_timestamp.is_some() {
        for pod in pods
            .iter()
            .filter(|p| owned::has_finalizer(&p.metadata, TRACKING_FINALIZER))
        {
            release(ctx, &pods_api, &uid, pod).await?;
        }
        return Ok(Action::await_change());
    }

    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let suspended = spec.suspend == Some(true);
    let now = Timestamp::now();
    let mut current = job.clone();
    let mut status = job.status.clone().unwrap_or_default();

    // 1. Count finished pods: record them as uncounted, drop their finalizers, count.
    let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut unc_succeeded = uncounted.succeeded.unwrap_or_default();
    let mut unc_failed = uncounted.failed.unwrap_or_default();
    let mut completed = parse_indexes(status.completed_indexes.as_deref().unwrap_or(""));
    let mut releasing: Vec<&Pod> = Vec::new();
    let mut recorded = false;
    let mut policy_failure: Option<String> = None;
    for pod in &pods {
        if !owned::has_finalizer(&pod.metadata, TRACKING_FINALIZER) {
            continue;
        }
        let pod_uid = pod.uid().unwrap_or_default();
        if unc_succeeded.contains(&pod_uid) || unc_failed.contains(&pod_uid) {
            releasing.push(pod);
            continue;
        }
        if phase(pod) == "Succeeded" {
            if indexed {
                // A second success of one index counts once.
                match pod_index(pod) {
                    Some(i) if completions.is_some_and(|c| i < c) && completed.insert(i) => {
                        unc_succeeded.push(pod_uid);
                    }
                    _ => {}
                }
            } else {
                unc_succeeded.push(pod_uid);
            }
            releasing.push(pod);
            recorded = true;
        } else if phase(pod) == "Failed" {
            match spec
                .pod_failure_policy
                .as_ref()
                .and_then(|p| match_pod_failure_policy(p, pod))
            {
                Some(PolicyAction::Ignore) => {}
                Some(PolicyAction::FailJob(message)) => {
                    if condition_true(&status, "FailureTarget").is_none() {
                        set_condition(
                            &mut status,
                            "FailureTarget",
                            true,
                            "PodFailurePolicy",
                            &message,
                        );
                        policy_failure = Some(message);
                    }
                    unc_failed.push(pod_uid);
                }
                _ => unc_failed.push(pod_uid),
            }
            releasing.push(pod);
            recorded = true;
        } else if pod.metadata.deletion_timestamp.is_some() && spec.pod_failure_policy.is_none() {
            // With a pod failure policy a deleted pod counts once it has failed.
            unc_failed.push(pod_uid);
            releasing.push(pod);
            recorded = true;
        }
    }
    if recorded {
        status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: Some(unc_succeeded.clone()),
            failed: Some(unc_failed.clone()),
        });
        if indexed {
            status.completed_indexes = Some(format_indexes(&completed));
        }
        current.status = Some(status.clone());
        current = jobs
            .replace_status(&name, &PostParams::default(), &current)
            .await?;
    }
    for pod in &releasing {
        release(ctx, &pods_api, &uid, pod).await?;
    }
    let succeeded_before = status.succeeded.unwrap_or(0);
    status.succeeded = Some(if indexed {
        completed.len() as i32
    } else {
        succeeded_before + unc_succeeded.len() as i32
    });
    status.failed = Some(status.failed.unwrap_or(0) + unc_failed.len() as i32);
    status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
        succeeded: None,
        failed: None,
    });
    if indexed {
        status.completed_indexes = Some(format_indexes(&completed));
    }
    let succeeded = status.succeeded.unwrap_or(0);
    let failed = status.failed.unwrap_or(0);

    if let Some(message) = policy_failure {
        ctx.events.warning(job, "PodFailurePolicy", message).await;
    }
    let released: BTreeSet<String> = releasing.iter().filter_map(|p| p.uid()).collect();
    let active: Vec<&Pod> = pods.iter().filter(|p| workload::is_pod_active(p)).collect();
    let terminating = pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_some() && !matches!(phase(p), "Succeeded" | "Failed")
        })
        .count() as i32;
    let still_tracked = pods
        .iter()
        .filter(|p| {
            owned::has_finalizer(&p.metadata, TRACKING_FINALIZER)
                && !released.contains(&p.uid().unwrap_or_default())
        })
        .count();

    // 2. Success or failure.
    let mut requeue: Option<Duration> = None;
    let mut ending = condition_true(&status, "FailureTarget").is_some()
        || condition_true(&status, "SuccessCriteriaMet").is_some();
    if !ending {
        let restarts: i32 = if spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure")
        {
            active
                .iter()
                .flat_map(|p| {
                    p.status
                        .iter()
                        .flat_map(|s| s.container_statuses.iter().flatten())
                })
                .map(|c| c.restart_count)
                .sum()
        } else {
            0
        };
        let deadline = spec.active_deadline_seconds.and_then(|secs| {
            let start = status.start_time.as_ref()?.0;
            Some(start + SignedDuration::from_secs(secs))
        });
        let complete = if indexed {
            completions.is_some_and(|c| completed.len() as i32 >= c)
        } else {
            match completions {
                Some(c) => succeeded >= c,
                None => succeeded > 0 && active.is_empty(),
            }
        };
        let failure = if failed + restarts > backoff_limit {
            Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ))
        } else if !suspended && deadline.is_some_and(|d| d <= now) {
            Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ))
        } else {
            None
        };
        if complete {
            set_condition(
                &mut status,
                "SuccessCriteriaMet",
                true,
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            );
            ending = true;
        } else if let Some((reason, message)) = failure {
            set_condition(&mut status, "FailureTarget", true, reason, message);
            ctx.events.warning(job, reason, message.into()).await;
            ending = true;
        } else if let Some(d) = deadline {
            if !suspended {
                requeue = Some(Duration::from_millis(
                    d.duration_since(now).as_millis().max(0) as u64 + 50,
                ));
            }
        }
    }

    let mut active_count = active.len() as i32;
    if ending {
        // Nothing of the Job runs any more; it ends once its pods are gone.
        for pod in &active {
            delete_pod(ctx, &pods_api, job, pod).await?;
        }
        active_count = 0;
        if active.is_empty() && terminating == 0 && still_tracked == 0 {
            if let Some(c) = condition_true(&status, "FailureTarget") {
                let reason = c.reason.unwrap_or_default();
                let message = c.message.unwrap_or_default();
                set_condition(&mut status, "Failed", true, &reason, &message);
            } else if let Some(c) = condition_true(&status, "SuccessCriteriaMet") {
                let reason = c.reason.unwrap_or_default();
                let message = c.message.unwrap_or_default();
                set_condition(&mut status, "Complete", true, &reason, &message);
                status.completion_time = Some(Time(now));
                ctx.events
                    .normal(job, "Completed", "Job completed".into())
                    .await;
            }
        }
    } else if suspended {
        for pod in &active {
            delete_pod(ctx, &pods_api, job, pod).await?;
        }
        active_count = 0;
        if condition_true(&status, "Suspended").is_none() {
            set_condition(
                &mut status,
                "Suspended",
                true,
                "JobSuspended",
                "Job suspended",
            );
            ctx.events
                .normal(job, "Suspended", "Job suspended".into())
                .await;
        }
    } else {
        if condition_true(&status, "Suspended").is_some() {
            set_condition(&mut status, "Suspended", false, "JobResumed", "Job resumed");
            ctx.events
                .normal(job, "Resumed", "Job resumed".into())
                .await;
            status.start_time = Some(Time(now));
        }
        if status.start_time.is_none() {
            status.start_time = Some(Time(now));
            if let Some(secs) = spec.active_deadline_seconds {
                requeue = Some(Duration::from_secs(secs.max(0) as u64) + Duration::from_millis(50));
            }
        }
        // Only failed pods are replaced while others still terminate with policy Failed.
        let busy = if spec.pod_replacement_policy.as_deref() == Some("Failed") {
            active.len() as i32 + terminating
        } else {
            active.len() as i32
        };
        // Failed pods are replaced after upstream's back-off, not at once.
        let backoff = backoff_left(failed, last_failure(&pods), now);
        if let Some(wait) = backoff {
            requeue = Some(requeue.map_or(wait, |r| r.min(wait)) + Duration::from_millis(50));
        }
        let can_create = backoff.is_none();
        if indexed {
            let count = completions.unwrap_or(0);
            let mut held = BTreeSet::new();
            for pod in &active {
                match pod_index(pod) {
                    Some(i) if i < count && !completed.contains(&i) && held.insert(i) => {}
                    // Out of range, already done, or a duplicate.
                    _ => {
                        delete_pod(ctx, &pods_api, job, pod).await?;
                        active_count -= 1;
                    }
                }
            }
            if spec.pod_replacement_policy.as_deref() == Some("Failed") {
                held.extend(
                    pods.iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_some())
                        .filter_map(pod_index),
                );
            }
            let want = parallelism.min(count - completed.len() as i32);
            let room = (want - busy).max(0) as usize;
            let missing: Vec<i32> = (0..count)
                .filter(|i| !completed.contains(i) && !held.contains(i))
                .take(if can_create { room } else { 0 })
                .collect();
            for i in missing {
                create_pod(ctx, &pods_api, job, Some(i)).await?;
                active_count += 1;
            }
        } else {
            let want = match completions {
                Some(c) => parallelism.min((c - succeeded).max(0)),
                None if succeeded > 0 => active.len() as i32,
                None => parallelism,
            };
            if busy < want {
                for _ in 0..(if can_create { want - busy } else { 0 }) {
                    create_pod(ctx, &pods_api, job, None).await?;
                    active_count += 1;
                }
            } else if active.len() as i32 > want {
                // Remove the newest pods first, as upstream (least progress lost).
                let mut extra = active.clone();
                extra.sort_by_key(|p| {
                    (
                        workload::is_pod_ready(p),
                        std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0)),
                    )
                });
                for pod in extra.iter().take((active.len() as i32 - want) as usize) {
                    delete_pod(ctx, &pods_api, job, pod).await?;
                    active_count -= 1;
                }
            }
        }
    }

    status.active = Some(active_count.max(0));
    status.ready = Some(active.iter().filter(|p| workload::is_pod_ready(p)).count() as i32);
    status.terminating = Some(terminating);
    if !indexed {
        status.completed_indexes = None;
    }
    if current.status.as_ref() != Some(&status) {
        current.status = Some(status);
        jobs.replace_status(&name, &PostParams::default(), &current)
            .await?;
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Upstream's pod failure back-off: 10 s doubling with each failure, at most 10 min,
/// counted from the last failure; `None` when a pod may be made now.
pub(crate) fn backoff_left(
    failures: i32,
    last_failure: Option<Timestamp>,
    now: Timestamp,
) -> Option<Duration> {
    if failures <= 0 {
        return None;
    }
    let last = last_failure?;
    let delay = 10i64.saturating_mul(1 << (failures - 1).min(10)).min(600);
    let until = last + SignedDuration::from_secs(delay);
    (until > now).then(|| Duration::from_millis(until.duration_since(now).as_millis() as u64))
}

/// When the latest failed pod of the Job stopped.
fn last_failure(pods: &[Pod]) -> Option<Timestamp> {
    pods.iter()
        .filter(|p| phase(p) == "Failed" || p.metadata.deletion_timestamp.is_some())
        .filter_map(|p| {
            let finished = p
                .status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
                .map(|t| t.0)
                .max();
            finished.or_else(|| p.metadata.deletion_timestamp.as_ref().map(|t| t.0))
        })
        .max()
}

/// Takes the tracking finalizer off a pod of the Job `job_uid`.
async fn release(ctx: &Ctx, api: &Api<Pod>, job_uid: &str, pod: &Pod) -> Result<(), SyncError> {
    owned::remove_finalizer(api, pod, TRACKING_FINALIZER).await?;
    ctx.pods.expect(
        job_uid,
        Expect::Unfinalized(pod.uid().unwrap_or_default(), TRACKING_FINALIZER.into()),
    );
    Ok(())
}

async fn create_pod(
    ctx: &Ctx,
    api: &Api<Pod>,
    job: &Job,
    index: Option<i32>,
) -> Result<(), SyncError> {
    let pod = new_pod(job, index)?;
    match api.create(&PostParams::default(), &pod).await {
        Ok(created) => {
            ctx.pods.expect(
                &job.uid().unwrap_or_default(),
                Expect::Created(created.name_any()),
            );
            ctx.events
                .normal(
                    job,
                    "SuccessfulCreate",
                    format!("Created pod: {}", created.name_any()),
                )
                .await;
            Ok(())
        }
        Err(e) => {
            ctx.events
                .warning(job, "FailedCreate", format!("Error creating: {e}"))
                .await;
            Err(e.into())
        }
    }
}

async fn delete_pod(ctx: &Ctx, api: &Api<Pod>, job: &Job, pod: &Pod) -> Result<(), SyncError> {
    let name = pod.name_any();
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {
            ctx.pods.expect(
                &job.uid().unwrap_or_default(),
                Expect::Deleted(pod.uid().unwrap_or_default()),
            );
            ctx.events
                .normal(job, "SuccessfulDelete", format!("Deleted pod: {name}"))
                .await;
            Ok(())
        }
        Err(e) if owned::is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_pods_are_replaced_after_a_growing_back_off() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let at = |s: &str| Some(s.parse::<Timestamp>().unwrap());
        assert_eq!(backoff_left(0, at("2026-01-01T00:01:00Z"), now), None);
        assert_eq!(
            backoff_left(1, at("2026-01-01T00:00:55Z"), now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(backoff_left(1, at("2026-01-01T00:00:50Z"), now), None);
        assert_eq!(
            backoff_left(3, at("2026-01-01T00:00:50Z"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            backoff_left(30, at("2026-01-01T00:01:00Z"), now),
            Some(Duration::from_secs(600))
        );
    }

    #[test]
    fn pod_failure_policy_rules_match_in_order() {
        let policy: PodFailurePolicy = serde_json::from_value(serde_json::json!({"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1]}},
        ]}))
        .unwrap();
        let pod = |code: i32, disrupted: bool| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "ns"},
                "status": {"phase": "Failed",
                    "conditions": if disrupted {
                        serde_json::json!([{"type": "DisruptionTarget", "status": "True"}])
                    } else { serde_json::json!([]) },
                    "containerStatuses": [{"name": "main", "image": "i", "imageID": "", "ready": false,
                        "restartCount": 0, "state": {"terminated": {"exitCode": code}}}]}
            }))
            .unwrap()
        };
        assert_eq!(
            match_pod_failure_policy(&policy, &pod(42, false)),
            Some(PolicyAction::FailJob(
                "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1".into()
            ))
        );
        assert_eq!(
            match_pod_failure_policy(&policy, &pod(42, true)),
            Some(PolicyAction::Ignore)
        );
        assert_eq!(
            match_pod_failure_policy(&policy, &pod(3, false)),
            Some(PolicyAction::Count)
        );
        assert_eq!(match_pod_failure_policy(&policy, &pod(1, false)), None);
    }

    #[test]
    fn completed_indexes_round_trip() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), set);
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }
}
