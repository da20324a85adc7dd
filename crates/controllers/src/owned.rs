//! What the Job, CronJob, StatefulSet and DaemonSet controllers share: label selectors
//! as query strings, the sync error, finalizer removal, and upstream's name hash.
//!
//! The Job controller reads its pods from a reflector store ([`crate::pod_cache`]) and
//! lists them afresh only while the store does not show its own writes yet; the others
//! list what they own afresh from the API at each sync (the watch only says when to
//! look): a fresh list already holds this controller's own writes, so a quick second
//! sync cannot create a pod twice.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
}

/// What each of these controllers' syncs gets: the client and its Event recorder.
pub(crate) struct Ctx {
    pub client: kube::Client,
    pub events: korvet_apimachinery::events::EventRecorder,
    /// The controller's pods, where it keeps a store of them.
    pub pods: crate::pod_cache::PodCache,
}

impl Ctx {
    /// A context recording Events as `reporter` (e.g. `job-controller`).
    pub(crate) fn new(client: &kube::Client, reporter: &str) -> Arc<Self> {
        Self::with_pods(client, reporter, crate::pod_cache::PodCache::none())
    }

    /// A context whose syncs read pods from `pods`.
    pub(crate) fn with_pods(
        client: &kube::Client,
        reporter: &str,
        pods: crate::pod_cache::PodCache,
    ) -> Arc<Self> {
        Arc::new(Self {
            client: client.clone(),
            events: korvet_apimachinery::events::EventRecorder::new(client.clone(), reporter),
            pods,
        })
    }
}

/// Runs one sync and records it in the controllers' metrics as `controller`.
pub(crate) async fn timed(
    controller: &'static str,
    sync: impl std::future::Future<Output = Result<Action, SyncError>>,
) -> Result<Action, SyncError> {
    let started = std::time::Instant::now();
    let result = sync.await;
    crate::metrics::sync_done(controller, started, result.is_ok());
    result
}

/// Retries a failed sync soon (upstream's rate-limited requeue, simplified).
pub(crate) fn retry_soon<K, C>(_object: Arc<K>, error: &SyncError, _ctx: Arc<C>) -> Action {
    tracing::debug!(%error, "sync failed; retrying");
    Action::requeue(Duration::from_millis(500))
}

pub(crate) fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

pub(crate) fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_already_exists())
}

pub(crate) fn has_finalizer(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    f: &str,
) -> bool {
    meta.finalizers.iter().flatten().any(|x| x == f)
}

/// Takes `finalizer` off `pod`; a pod already gone is fine.
pub(crate) async fn remove_finalizer(
    api: &Api<Pod>,
    pod: &Pod,
    finalizer: &str,
) -> Result<(), kube::Error> {
    let rest: Vec<&String> = pod
        .metadata
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .collect();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let patch = json!({"metadata": {"finalizers": rest}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// FNV-1a, 32 bits: upstream's hash for revision and template names.
pub(crate) fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_as_upstream() {
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
    }
}
