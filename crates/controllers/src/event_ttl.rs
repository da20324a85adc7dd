//! Event expiry, as upstream's `--event-ttl` (there a lease on each Event in etcd): an
//! Event not written for an hour is deleted. Sweeps once a minute; `events.k8s.io`
//! Events are the same objects, so one sweep covers both.

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use kube::ResourceExt;

/// Upstream's default `--event-ttl`.
pub const EVENT_TTL: Duration = Duration::from_secs(3600);
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Deletes expired Events once a minute until the task is aborted.
pub async fn run(client: kube::Client) {
    loop {
        let started = Instant::now();
        let result = sweep(&client, EVENT_TTL).await;
        crate::metrics::sync_done("event-ttl", started, result.is_ok());
        match result {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "expired Events deleted"),
            Err(e) => tracing::warn!(error = %e, "deleting expired Events"),
        }
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

/// When the Event was last written: the latest of its timestamps.
fn last_written(event: &Event) -> Option<Timestamp> {
    [
        event.last_timestamp.as_ref().map(|t| t.0),
        event.event_time.as_ref().map(|t| t.0),
        event
            .series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref())
            .map(|t| t.0),
        event.first_timestamp.as_ref().map(|t| t.0),
        event.metadata.creation_timestamp.as_ref().map(|t| t.0),
    ]
    .into_iter()
    .flatten()
    .max()
}

/// Deletes every Event last written more than `ttl` ago; returns how many.
pub async fn sweep(client: &kube::Client, ttl: Duration) -> Result<usize, kube::Error> {
    let api: Api<Event> = Api::all(client.clone());
    let ttl = SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX);
    let cutoff = Timestamp::now().checked_sub(ttl).unwrap_or(Timestamp::MIN);
    let mut deleted = 0;
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        for event in &page.items {
            if last_written(event).is_none_or(|t| t >= cutoff) {
                continue;
            }
            let ns = event.namespace().unwrap_or_default();
            let params = DeleteParams {
                // An Event written again since it was listed keeps living.
                preconditions: Some(Preconditions {
                    resource_version: event.resource_version(),
                    uid: None,
                }),
                ..Default::default()
            };
            match Api::<Event>::namespaced(client.clone(), &ns)
                .delete(&event.name_any(), &params)
                .await
            {
                Ok(_) => deleted += 1,
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(deleted),
        }
    }
}
