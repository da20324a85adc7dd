//! The TTL-after-finished controller, as upstream's: a Job with
//! `ttlSecondsAfterFinished` is deleted (propagation Background, so the garbage
//! collector removes its pods) that many seconds after it reached `Complete` or `Failed`.
//! It waits on a timer for each such Job, never polls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::owned::{self, SyncError};

struct Ctx {
    client: kube::Client,
}

/// Runs the TTL-after-finished controller until its task is aborted.
pub(crate) async fn run(client: kube::Client) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
    });
    Controller::new(Api::<Job>::all(client), watcher::Config::default())
        .run(reconcile, owned::retry_soon, ctx)
        .for_each(|_| async {})
        .await;
}

/// When a Job finished at `finished` with `ttl` expires, measured from `now`: `None`
/// when it is due.
pub(crate) fn time_left(finished: Timestamp, ttl: i32, now: Timestamp) -> Option<Duration> {
    let expires = finished + SignedDuration::from_secs(i64::from(ttl.max(0)));
    (expires > now).then(|| Duration::from_millis(expires.duration_since(now).as_millis() as u64))
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, SyncError> {
    let started = Instant::now();
    let result = sync(&job, &ctx).await;
    crate::metrics::sync_done("ttl-after-finished", started, result.is_ok());
    result
}

async fn sync(job: &Job, ctx: &Ctx) -> Result<Action, SyncError> {
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(Action::await_change());
    };
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(finished) = crate::job::finished_at(job) else {
        return Ok(Action::await_change());
    };
    if let Some(left) = time_left(finished, ttl, Timestamp::now()) {
        return Ok(Action::requeue(left + Duration::from_millis(50)));
    }
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    // The uid precondition keeps a new Job of the same name safe.
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: Some(kube::api::Preconditions {
            uid: job.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&job.name_any(), &params).await {
        Ok(_) => {
            tracing::info!(job = %job.name_any(), "deleted a finished Job whose TTL expired");
            Ok(Action::await_change())
        }
        Err(e) if owned::is_not_found(&e) => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let finished: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(time_left(finished, 100, now), Some(Duration::from_secs(40)));
        assert_eq!(time_left(finished, 60, now), None);
        assert_eq!(time_left(finished, 0, now), None);
    }
}
