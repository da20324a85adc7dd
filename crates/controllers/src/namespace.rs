//! The namespace controller, as upstream's: a namespace being deleted (deletionTimestamp
//! set, `kubernetes` in `spec.finalizers`, both put there by the API server) is emptied
//! through the API. Every namespaced resource that discovery says can be deleted is
//! removed by `deletecollection` (or item by item where that verb is missing), which the
//! API server runs through its ordinary delete: objects with finalizers are marked and
//! waited for, bound pods get their grace period so that their node stops them. The
//! namespace carries upstream's status conditions saying what is left; once nothing is,
//! `kubernetes` is taken out through `namespaces/NAME/finalize`, and the API server
//! removes the namespace when no finalizer is left. The watch's initial list picks up
//! namespaces that were terminating when the controllers stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use korvet_apimachinery::events::EventRecorder;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{verbs, ApiCapabilities, Discovery, Scope};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::owned::{self, SyncError};

/// The finalizer of this controller in a namespace's `spec.finalizers`.
pub const FINALIZER: &str = "kubernetes";
/// Resource types emptied at once (each is a list, and a delete when not empty).
const PARALLEL_TYPES: usize = 8;
/// While content is left the namespace is looked at again, soon at first and then every
/// 2 s (upstream waits its estimate: the pods' grace period, 15 s for finalizers).
const FIRST_RECHECK: Duration = Duration::from_millis(100);
const LAST_RECHECK: Duration = Duration::from_secs(2);
/// Attempts of the finalize write against concurrent changes of the namespace.
const FINALIZE_ATTEMPTS: usize = 5;

/// The condition types this controller keeps, in upstream's order.
const CONDITION_TYPES: [&str; 5] = [
    "NamespaceDeletionDiscoveryFailure",
    "NamespaceDeletionGroupVersionParsingFailure",
    "NamespaceDeletionContentFailure",
    "NamespaceContentRemaining",
    "NamespaceFinalizersRemaining",
];

struct Ctx {
    client: kube::Client,
    events: EventRecorder,
}

/// Runs the namespace controller until its task is aborted.
pub async fn run(client: kube::Client) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        events: EventRecorder::new(client.clone(), "namespace-controller"),
    });
    Controller::new(Api::<Namespace>::all(client), watcher::Config::default())
        .run(reconcile, owned::retry_soon, ctx)
        .for_each(|_| async {})
        .await;
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, SyncError> {
    owned::timed("namespace", sync(&ns, &ctx)).await
}

async fn sync(ns: &Namespace, ctx: &Ctx) -> Result<Action, SyncError> {
    let Some(deleted_at) = &ns.metadata.deletion_timestamp else {
        return Ok(Action::await_change());
    };
    // Without the finalizer it is not this controller's to empty (upstream: finalized).
    if !has_finalizer(ns) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let content = delete_content(&ctx.client, &name).await;
    if let Err(e) = write_conditions(&ctx.client, ns, &content).await {
        // The next sync writes them again; a conflict means the namespace changed and a
        // new sync is coming anyway.
        tracing::debug!(namespace = %name, error = %e, "writing the namespace's conditions");
    }
    if let Some(failure) = content.failure() {
        ctx.events
            .warning(ns, "NamespaceDeletionFailed", failure.clone())
            .await;
        return Err(SyncError::Invalid(format!(
            "emptying namespace {name}: {failure}"
        )));
    }
    if !content.remaining.is_empty() {
        return Ok(Action::requeue(recheck_after(deleted_at, Timestamp::now())));
    }
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    finalize(&api, &name).await?;
    tracing::info!(namespace = %name, "namespace emptied and finalized");
    Ok(Action::await_change())
}

fn has_finalizer(ns: &Namespace) -> bool {
    ns.spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

/// How long to wait before looking again at a namespace deleted at `deleted_at` whose
/// content is still going: a quarter of the time it has been deleting, within bounds.
pub fn recheck_after(deleted_at: &Time, now: Timestamp) -> Duration {
    let elapsed = Duration::try_from(now.duration_since(deleted_at.0)).unwrap_or_default();
    (elapsed / 4).clamp(FIRST_RECHECK, LAST_RECHECK)
}

/// What one pass over a namespace's content found.
#[derive(Debug, Default)]
pub struct Content {
    /// `PLURAL.GROUP` → instances left.
    pub remaining: BTreeMap<String, usize>,
    /// Finalizer → instances left that carry it.
    pub finalizers: BTreeMap<String, usize>,
    pub discovery_error: Option<String>,
    /// Failures to delete, one per resource type.
    pub errors: Vec<String>,
}

impl Content {
    /// What keeps the namespace from being finalized other than content still going.
    fn failure(&self) -> Option<String> {
        if let Some(e) = &self.discovery_error {
            return Some(format!("discovering resources: {e}"));
        }
        (!self.errors.is_empty()).then(|| content_failure_message(&self.errors))
    }
}

/// Deletes everything in `namespace` that can be deleted, and says what is left.
async fn delete_content(client: &kube::Client, namespace: &str) -> Content {
    let mut content = Content::default();
    let resources = match discover(client).await {
        Ok(resources) => resources,
        Err(e) => {
            content.discovery_error = Some(describe(&e));
            return content;
        }
    };
    let passes = futures::stream::iter(resources)
        .map(|(ar, caps)| async move {
            let result = delete_resource(client, namespace, &ar, &caps).await;
            (ar, result)
        })
        .buffer_unordered(PARALLEL_TYPES)
        .collect::<Vec<_>>()
        .await;
    for (ar, result) in passes {
        match result {
            Ok(left) => {
                if left.items > 0 {
                    content
                        .remaining
                        .insert(format!("{}.{}", ar.plural, ar.group), left.items);
                }
                for (finalizer, n) in left.finalizers {
                    *content.finalizers.entry(finalizer).or_default() += n;
                }
            }
            Err(e) => content.errors.push(e),
        }
    }
    content
}

/// Every namespaced resource that can be listed and deleted, at its most stable version
/// (upstream's ServerPreferredNamespacedResources filtered by `delete`).
async fn discover(
    client: &kube::Client,
) -> Result<Vec<(ApiResource, ApiCapabilities)>, kube::Error> {
    // Aggregated discovery is two requests; a server without it gets the classic walk.
    let discovery = match Discovery::new(client.clone()).run_aggregated().await {
        Ok(discovery) => discovery,
        Err(_) => Discovery::new(client.clone()).run().await?,
    };
    let mut resources = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.resources_by_stability() {
            if caps.scope == Scope::Namespaced
                && caps.supports_operation(verbs::DELETE)
                && caps.supports_operation(verbs::LIST)
            {
                resources.push((ar, caps));
            }
        }
    }
    Ok(resources)
}

/// What is left of one resource type after deleting it.
#[derive(Debug, Default)]
struct Left {
    items: usize,
    finalizers: BTreeMap<String, usize>,
}

/// Deletes the objects of one resource type in `namespace` and counts what is left: a
/// failure to delete, or an object left that is not being deleted, is an error.
async fn delete_resource(
    client: &kube::Client,
    namespace: &str,
    ar: &ApiResource,
    caps: &ApiCapabilities,
) -> Result<Left, String> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, ar);
    let gvr = format!("{}/{}, Resource={}", ar.group, ar.version, ar.plural);
    let failed = |what: &str, e: &kube::Error| format!("{what} {gvr}: {}", describe(e));
    let all = ListParams::default();
    // Most types are empty: one list, and no delete, for those.
    let listed = api.list(&all).await.map_err(|e| failed("listing", &e))?;
    if listed.items.is_empty() {
        return Ok(Left::default());
    }
    // Background, as upstream: the garbage collector removes dependents elsewhere.
    let params = DeleteParams::background();
    if caps.supports_operation(verbs::DELETE_COLLECTION) {
        api.delete_collection(&params, &all)
            .await
            .map_err(|e| failed("deleting", &e))?;
    } else {
        for item in listed
            .items
            .iter()
            .filter(|i| i.metadata.deletion_timestamp.is_none())
        {
            match api.delete(&item.name_any(), &params).await {
                Ok(_) => {}
                Err(e) if owned::is_not_found(&e) => {}
                Err(e) => return Err(failed("deleting", &e)),
            }
        }
    }
    let left = api.list(&all).await.map_err(|e| failed("listing", &e))?;
    let mut counted = Left {
        items: left.items.len(),
        ..Left::default()
    };
    let mut unexpected = false;
    for item in &left.items {
        for finalizer in item.finalizers() {
            *counted.finalizers.entry(finalizer.clone()).or_default() += 1;
        }
        // Marked for deletion means waited for (finalizers, a pod's grace period).
        unexpected |= item.metadata.deletion_timestamp.is_none();
    }
    if unexpected {
        return Err(format!(
            "unexpected items still remain in namespace: {namespace} for gvr: {gvr}"
        ));
    }
    Ok(counted)
}

/// A kube error as its API message where there is one.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

fn content_failure_message(errors: &[String]) -> String {
    let mut sorted = errors.to_vec();
    sorted.sort();
    format!(
        "Failed to delete all resource types, {} remaining: {}",
        sorted.len(),
        sorted.join(", ")
    )
}

/// Upstream's conditions for one pass: the failing ones from what happened, the "ok"
/// variant of every other type.
pub fn conditions(content: &Content, now: &Time) -> Vec<NamespaceCondition> {
    let condition =
        |type_: &str, failing: bool, reason: &str, message: String| NamespaceCondition {
            type_: type_.to_string(),
            status: if failing { "True" } else { "False" }.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message),
            last_transition_time: Some(now.clone()),
        };
    let discovery = match &content.discovery_error {
        Some(e) => condition(CONDITION_TYPES[0], true, "DiscoveryFailed", e.clone()),
        None => condition(
            CONDITION_TYPES[0],
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered".into(),
        ),
    };
    // kube's discovery hands over parsed group-versions only: parsing cannot fail here.
    let parsing = condition(
        CONDITION_TYPES[1],
        false,
        "ParsedGroupVersions",
        "All legacy kube types successfully parsed".into(),
    );
    let deletion = if content.errors.is_empty() {
        condition(
            CONDITION_TYPES[2],
            false,
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".into(),
        )
    } else {
        condition(
            CONDITION_TYPES[2],
            true,
            "ContentDeletionFailed",
            content_failure_message(&content.errors),
        )
    };
    let remaining = if content.remaining.is_empty() {
        condition(
            CONDITION_TYPES[3],
            false,
            "ContentRemoved",
            "All content successfully removed".into(),
        )
    } else {
        let left = content
            .remaining
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect::<Vec<_>>()
            .join(", ");
        condition(
            CONDITION_TYPES[3],
            true,
            "SomeResourcesRemain",
            format!("Some resources are remaining: {left}"),
        )
    };
    let finalizers = if content.finalizers.is_empty() {
        condition(
            CONDITION_TYPES[4],
            false,
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished".into(),
        )
    } else {
        let held = content
            .finalizers
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect::<Vec<_>>()
            .join(", ");
        condition(
            CONDITION_TYPES[4],
            true,
            "SomeFinalizersRemain",
            format!("Some content in the namespace has finalizers remaining: {held}"),
        )
    };
    vec![discovery, parsing, deletion, remaining, finalizers]
}

/// Merges `fresh` into `existing` as upstream's updateConditions: a condition whose
/// status, reason and message did not change keeps its transition time. Returns whether
/// anything changed.
pub fn merge_conditions(
    existing: &mut Vec<NamespaceCondition>,
    fresh: Vec<NamespaceCondition>,
) -> bool {
    let mut changed = false;
    for new in fresh {
        match existing.iter_mut().find(|c| c.type_ == new.type_) {
            None => {
                existing.push(new);
                changed = true;
            }
            Some(old)
                if old.status != new.status
                    || old.reason != new.reason
                    || old.message != new.message =>
            {
                *old = new;
                changed = true;
            }
            Some(_) => {}
        }
    }
    changed
}

async fn write_conditions(
    client: &kube::Client,
    ns: &Namespace,
    content: &Content,
) -> Result<(), kube::Error> {
    let mut updated = ns.clone();
    let status = updated.status.get_or_insert_with(Default::default);
    let existing = status.conditions.get_or_insert_with(Vec::new);
    if !merge_conditions(existing, conditions(content, &Time(Timestamp::now()))) {
        return Ok(());
    }
    // Written against the resourceVersion read: a newer namespace gets its own sync.
    Api::<Namespace>::all(client.clone())
        .replace_status(&ns.name_any(), &PostParams::default(), &updated)
        .await?;
    Ok(())
}

/// Takes this controller's finalizer out of `spec.finalizers` through the `finalize`
/// subresource; a namespace already gone is fine.
async fn finalize(api: &Api<Namespace>, name: &str) -> Result<(), kube::Error> {
    let mut last = None;
    for _ in 0..FINALIZE_ATTEMPTS {
        let Some(mut ns) = api.get_opt(name).await? else {
            return Ok(());
        };
        if !has_finalizer(&ns) {
            return Ok(());
        }
        let spec = ns.spec.get_or_insert_with(Default::default);
        let mut others: Vec<String> = spec
            .finalizers
            .iter()
            .flatten()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        others.sort();
        others.dedup();
        spec.finalizers = Some(others);
        match api
            .replace_subresource("finalize", name, &PostParams::default(), &ns)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if owned::is_not_found(&e) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => last = Some(kube::Error::Api(s)),
            Err(e) => return Err(e),
        }
    }
    match last {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn rechecks_back_off_within_bounds() {
        let deleted = at("2026-01-01T00:00:00Z");
        let now = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(
            recheck_after(&deleted, now("2026-01-01T00:00:00Z")),
            FIRST_RECHECK
        );
        assert_eq!(
            recheck_after(&deleted, now("2026-01-01T00:00:04Z")),
            Duration::from_secs(1)
        );
        assert_eq!(
            recheck_after(&deleted, now("2026-01-01T00:01:00Z")),
            LAST_RECHECK
        );
    }

    #[test]
    fn conditions_say_what_is_left_with_upstream_messages() {
        let mut content = Content::default();
        content.remaining.insert("configmaps.".into(), 2);
        content.remaining.insert("pods.".into(), 1);
        content.finalizers.insert("example.com/hold".into(), 2);
        let now = at("2026-01-01T00:00:00Z");
        let c = conditions(&content, &now);
        let types: Vec<_> = c.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, CONDITION_TYPES);
        assert_eq!(c[2].status, "False");
        assert_eq!(
            c[3].message.as_deref(),
            Some("Some resources are remaining: configmaps. has 2 resource instances, pods. has 1 resource instances")
        );
        assert_eq!(
            c[4].message.as_deref(),
            Some("Some content in the namespace has finalizers remaining: example.com/hold in 2 resource instances")
        );

        content.errors = vec!["b failed".into(), "a failed".into()];
        let c = conditions(&content, &now);
        assert_eq!(c[2].status, "True");
        assert_eq!(
            c[2].message.as_deref(),
            Some("Failed to delete all resource types, 2 remaining: a failed, b failed")
        );
    }

    #[test]
    fn unchanged_conditions_keep_their_time() {
        let content = Content::default();
        let mut existing = conditions(&content, &at("2026-01-01T00:00:00Z"));
        let later = at("2026-01-01T00:05:00Z");
        assert!(!merge_conditions(
            &mut existing,
            conditions(&content, &later)
        ));
        assert_eq!(
            existing[0].last_transition_time,
            Some(at("2026-01-01T00:00:00Z"))
        );

        let mut left = Content::default();
        left.remaining.insert("pods.".into(), 1);
        assert!(merge_conditions(&mut existing, conditions(&left, &later)));
        assert_eq!(existing[3].status, "True");
        assert_eq!(existing[3].last_transition_time, Some(later));
        assert_eq!(existing.len(), 5);
    }
}
