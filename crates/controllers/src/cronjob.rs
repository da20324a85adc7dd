//! The CronJob controller, as upstream's (1.32): at each scheduled time it creates the
//! Job `NAME-<scheduled time in unix minutes>` (so a time is never run twice), honours
//! `suspend`, `concurrencyPolicy` and `startingDeadlineSeconds`, keeps
//! `status.active`/`lastScheduleTime`/`lastSuccessfulTime`, and deletes finished Jobs
//! beyond the history limits. It sleeps until the next scheduled time (no polling).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::cron::Schedule;
use crate::owned::{self, Ctx, SyncError};
use crate::workload;

pub(crate) const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// Runs the CronJob controller until its task is aborted.
pub(crate) async fn run(client: kube::Client) {
    let ctx = Ctx::new(&client, "cronjob-controller");
    Controller::new(
        Api::<CronJob>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client), watcher::Config::default())
    .run(reconcile, owned::retry_soon, ctx)
    .for_each(|_| async {})
    .await;
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, SyncError> {
    owned::timed("cronjob", sync(&cj, &ctx)).await
}

fn job_condition(job: &Job) -> Option<&'static str> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .filter(|c| c.status == "True")
        .find_map(|c| match c.type_.as_str() {
            "Complete" => Some("Complete"),
            "Failed" => Some("Failed"),
            _ => None,
        })
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The Job for the run scheduled at `at`, as upstream's `getJobFromTemplate2`.
fn job_for(cj: &CronJob, at: Timestamp) -> Result<Job, SyncError> {
    let spec = cj
        .spec
        .as_ref()
        .ok_or_else(|| SyncError::Invalid("cronjob without spec".into()))?;
    let template = &spec.job_template;
    let source = template.metadata.clone().unwrap_or_default();
    let owner = workload::controller_ref(cj)
        .ok_or_else(|| SyncError::Invalid("cronjob without uid".into()))?;
    let mut annotations = source.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), at.to_string());
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(format!("{}-{}", cj.name_any(), at.as_second() / 60)),
            namespace: cj.namespace(),
            labels: source.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    })
}

async fn delete_job(ctx: &Ctx, api: &Api<Job>, cj: &CronJob, name: &str) -> Result<(), SyncError> {
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {
            ctx.events
                .normal(cj, "SuccessfulDelete", format!("Deleted job {name}"))
                .await;
            Ok(())
        }
        Err(e) if owned::is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn start_of(job: &Job) -> Option<Timestamp> {
    job.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(job.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

async fn sync(cj: &CronJob, ctx: &Ctx) -> Result<Action, SyncError> {
    let ns = cj.namespace().unwrap_or_default();
    let name = cj.name_any();
    let uid = cj.uid().unwrap_or_default();
    let Some(spec) = cj.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let cronjobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    let children: Vec<Job> = jobs
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|j| workload::is_controlled_by(&j.metadata, &uid))
        .collect();
    let mut status = cj.status.clone().unwrap_or_default();
    let mut active = status.active.clone().unwrap_or_default();

    // Reconcile `active` with the Jobs there are.
    for child in &children {
        let child_uid = child.uid();
        let listed = active.iter().any(|r| r.uid == child_uid);
        match job_condition(child) {
            None if !listed => active.push(job_ref(child)),
            Some(condition) if listed => {
                active.retain(|r| r.uid != child_uid);
                ctx.events
                    .normal(
                        cj,
                        "SawCompletedJob",
                        format!(
                            "Saw completed job: {}, condition: {condition}",
                            child.name_any()
                        ),
                    )
                    .await;
            }
            _ => {}
        }
        if job_condition(child) == Some("Complete") {
            let done = child
                .status
                .as_ref()
                .and_then(|s| s.completion_time.clone());
            if done.as_ref().map(|t| t.0) > status.last_successful_time.as_ref().map(|t| t.0) {
                status.last_successful_time = done;
            }
        }
    }
    let mut missing = Vec::new();
    active.retain(|r| {
        let found = children.iter().any(|c| c.uid() == r.uid);
        if !found {
            missing.push(r.name.clone().unwrap_or_default());
        }
        found
    });
    for gone in missing {
        ctx.events
            .normal(cj, "MissingJob", format!("Active job went missing: {gone}"))
            .await;
    }

    // History limits: the oldest finished Jobs go first.
    for (condition, limit) in [
        ("Complete", spec.successful_jobs_history_limit),
        ("Failed", spec.failed_jobs_history_limit),
    ] {
        let Some(limit) = limit else { continue };
        let mut finished: Vec<&Job> = children
            .iter()
            .filter(|j| job_condition(j) == Some(condition))
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .collect();
        finished.sort_by_key(|j| start_of(j));
        let extra = finished.len().saturating_sub(limit.max(0) as usize);
        for old in finished.iter().take(extra) {
            delete_job(ctx, &jobs, cj, &old.name_any()).await?;
        }
    }

    let mut requeue = None;
    if cj.metadata.deletion_timestamp.is_none() && spec.suspend != Some(true) {
        requeue = schedule(cj, ctx, &jobs, &children, &mut active, &mut status).await?;
    }

    status.active = (!active.is_empty()).then_some(active);
    if cj.status.clone().unwrap_or_default() != status {
        let mut updated = cj.clone();
        updated.status = Some(status);
        cronjobs
            .replace_status(&name, &PostParams::default(), &updated)
            .await?;
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Starts the run that is due, if any; returns how long until the next one.
async fn schedule(
    cj: &CronJob,
    ctx: &Ctx,
    jobs: &Api<Job>,
    children: &[Job],
    active: &mut Vec<ObjectReference>,
    status: &mut k8s_openapi::api::batch::v1::CronJobStatus,
) -> Result<Option<Duration>, SyncError> {
    let Some(spec) = cj.spec.as_ref() else {
        return Ok(None);
    };
    let tz = match spec.time_zone.as_deref() {
        None => TimeZone::UTC,
        Some(name) => match TimeZone::get(name) {
            Ok(tz) => tz,
            Err(e) => {
                ctx.events
                    .warning(
                        cj,
                        "UnknownTimeZone",
                        format!("invalid timeZone: {name:?}: {e}"),
                    )
                    .await;
                return Ok(None);
            }
        },
    };
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            ctx.events
                .warning(
                    cj,
                    "UnparseableSchedule",
                    format!("unparseable schedule: {:?} : {e}", spec.schedule),
                )
                .await;
            return Ok(None);
        }
    };
    let now = Timestamp::now();
    let mut earliest = status
        .last_schedule_time
        .as_ref()
        .or(cj.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
        .unwrap_or(now);
    if let Some(deadline) = spec.starting_deadline_seconds {
        earliest = earliest.max(now - SignedDuration::from_secs(deadline));
    }
    let (due, missed) = schedule.most_recent(earliest, now, &tz);
    let until_next = schedule.next(now, &tz).map(|next| {
        Duration::from_millis(next.duration_since(now).as_millis().max(0) as u64 + 100)
    });
    let Some(due) = due else {
        return Ok(until_next);
    };
    if missed > 100 {
        ctx.events
            .warning(
                cj,
                "TooManyMissedTimes",
                "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
            )
            .await;
    }
    let job = job_for(cj, due)?;
    let job_name = job.metadata.name.clone().unwrap_or_default();
    if children.iter().any(|c| c.name_any() == job_name) {
        status.last_schedule_time = Some(Time(due));
        return Ok(until_next);
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            // Tried again when the running Job finishes or at the next time.
            tracing::debug!(cronjob = %cj.name_any(), "not starting a job: the previous run is still active");
            return Ok(until_next);
        }
        Some("Replace") => {
            for old in active.drain(..) {
                if let Some(old) = old.name {
                    delete_job(ctx, jobs, cj, &old).await?;
                }
            }
        }
        _ => {}
    }
    match jobs.create(&PostParams::default(), &job).await {
        Ok(created) => {
            ctx.events
                .normal(cj, "SuccessfulCreate", format!("Created job {job_name}"))
                .await;
            active.push(job_ref(&created));
        }
        Err(e) if owned::is_already_exists(&e) => {}
        Err(e) => {
            ctx.events
                .warning(cj, "FailedCreate", format!("Error creating job: {e}"))
                .await;
            return Err(e.into());
        }
    }
    status.last_schedule_time = Some(Time(due));
    Ok(until_next)
}
