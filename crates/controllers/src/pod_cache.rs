//! Pods from a reflector store, with expectations, for controllers that listed their
//! pods from the API at every sync (a LIST per sync costs the API server a read and a
//! serialisation of every pod the selector matches, and the controller a round trip).
//!
//! A watch cache lags behind this controller's own writes, so a quick second sync could
//! create a pod twice or count a pod twice. As upstream's "expectations": every pod write
//! is remembered until the store shows its effect; while one is outstanding for an owner,
//! [`PodCache::controlled`] says `None` and the caller lists afresh (a fresh list holds
//! every write acknowledged before it). Once the store has caught up, which the watch
//! brings within milliseconds, syncs read only the store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::WatchStreamExt;
use kube::ResourceExt;

use crate::workload::is_controlled_by;

/// A write the store never shows (e.g. the pod was deleted at once by someone else) is
/// forgotten after this long.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The effect of one pod write, as the store will show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// The pod of this name exists.
    Created(String),
    /// The pod of this uid is gone or terminating.
    Deleted(String),
    /// The pod of this uid is gone or no longer has this finalizer.
    Unfinalized(String, String),
}

impl Expect {
    fn met(&self, pods: &[std::sync::Arc<Pod>]) -> bool {
        let by_uid = |uid: &str| pods.iter().find(|p| p.uid().as_deref() == Some(uid));
        match self {
            Expect::Created(name) => pods.iter().any(|p| p.name_any() == *name),
            Expect::Deleted(uid) => {
                by_uid(uid).is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            }
            Expect::Unfinalized(uid, finalizer) => by_uid(uid).is_none_or(|p| {
                !p.metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == finalizer)
            }),
        }
    }
}

/// Writes not yet shown, with when each was made.
type Pending = Vec<(Expect, Instant)>;

/// The pods store of one controller, and its writes the store does not show yet, by
/// owner uid.
#[derive(Clone)]
pub(crate) struct PodCache {
    store: Option<Store<Pod>>,
    pending: std::sync::Arc<Mutex<HashMap<String, Pending>>>,
}

/// A cache of all pods and the stream of pod changes that feeds it, for a Controller's
/// `watches_stream` (the store is written before each change is passed on).
pub(crate) fn watch(
    client: &kube::Client,
) -> (
    PodCache,
    impl futures::Stream<Item = Result<Pod, kube::runtime::watcher::Error>> + Send + 'static,
) {
    let (store, writer) = kube::runtime::reflector::store();
    let events = kube::runtime::reflector::reflector(
        writer,
        kube::runtime::watcher(Api::<Pod>::all(client.clone()), Default::default()),
    )
    .default_backoff()
    .touched_objects();
    (PodCache::new(store), events)
}

/// The object of kind `K` that controls `pod`, for a Controller's `watches_stream`.
pub(crate) fn controller_of_pod<K>(pod: Pod) -> Option<ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()>,
{
    let owner = crate::workload::controller_of(&pod.metadata).filter(|o| o.kind == K::kind(&()))?;
    Some(ObjectRef::new(&owner.name).within(&pod.namespace()?))
}

impl PodCache {
    /// A cache over `store` (a reflector of all pods).
    pub(crate) fn new(store: Store<Pod>) -> Self {
        Self {
            store: Some(store),
            pending: Default::default(),
        }
    }

    /// No store: [`PodCache::controlled`] always says to list.
    pub(crate) fn none() -> Self {
        Self {
            store: None,
            pending: Default::default(),
        }
    }

    /// Remembers a write this controller made to a pod of `owner_uid`.
    pub(crate) fn expect(&self, owner_uid: &str, expect: Expect) {
        if self.store.is_none() {
            return;
        }
        if let Ok(mut pending) = self.pending.lock() {
            // Owners deleted meanwhile are never asked about again.
            let now = Instant::now();
            pending.retain(|_, list| {
                list.retain(|(_, at)| now.duration_since(*at) < EXPECTATION_TIMEOUT);
                !list.is_empty()
            });
            pending
                .entry(owner_uid.to_string())
                .or_default()
                .push((expect, Instant::now()));
        }
    }

    /// The pods of `namespace` that `owner_uid` controls and `selector` selects (all of
    /// the owner's when `None`), from the store, or `None` when the store is not ready or
    /// does not show every write made for this owner yet: then list afresh.
    pub(crate) async fn controlled(
        &self,
        namespace: &str,
        owner_uid: &str,
        selector: Option<&LabelSelector>,
    ) -> Option<Vec<Pod>> {
        let store = self.store.as_ref()?;
        // Ready once the first list arrived; before that a sync lists.
        store.wait_until_ready().now_or_never()?.ok()?;
        let pods: Vec<std::sync::Arc<Pod>> = store
            .state()
            .into_iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace))
            .filter(|p| is_controlled_by(&p.metadata, owner_uid))
            .collect();
        {
            let mut pending = self.pending.lock().ok()?;
            if let Some(list) = pending.get_mut(owner_uid) {
                let now = Instant::now();
                list.retain(|(e, at)| {
                    now.duration_since(*at) < EXPECTATION_TIMEOUT && !e.met(&pods)
                });
                if !list.is_empty() {
                    return None;
                }
                pending.remove(owner_uid);
            }
        }
        Some(
            pods.into_iter()
                .filter(|p| {
                    selector.is_none()
                        || korvet_apimachinery::selector::matches_unless_empty(
                            selector,
                            Some(p.labels()),
                        )
                })
                .map(|p| (*p).clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pod(name: &str, uid: &str, finalizers: &[&str], deleting: bool) -> Arc<Pod> {
        let mut value = serde_json::json!({"metadata": {"name": name, "uid": uid,
            "finalizers": finalizers}});
        if deleting {
            value["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        }
        Arc::new(serde_json::from_value(value).unwrap())
    }

    fn owned_pod(name: &str, uid: &str) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {
            "name": name, "namespace": "ns", "uid": uid,
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j",
                                 "uid": "owner", "controller": true}]}}))
        .unwrap()
    }

    #[tokio::test]
    async fn the_store_is_read_only_while_it_shows_every_write() {
        use kube::runtime::watcher::Event;
        let (store, mut writer) = kube::runtime::reflector::store::<Pod>();
        let cache = PodCache::new(store);
        assert!(
            cache.controlled("ns", "owner", None).await.is_none(),
            "not filled yet"
        );
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(owned_pod("a", "1")));
        writer.apply_watcher_event(&Event::InitDone);
        let names = |pods: Vec<Pod>| pods.iter().map(|p| p.name_any()).collect::<Vec<_>>();
        assert_eq!(
            names(cache.controlled("ns", "owner", None).await.unwrap()),
            ["a"]
        );

        // A creation the store does not show yet: list instead, until it does.
        cache.expect("owner", Expect::Created("b".into()));
        assert!(cache.controlled("ns", "owner", None).await.is_none());
        writer.apply_watcher_event(&Event::Apply(owned_pod("b", "2")));
        let mut seen = names(cache.controlled("ns", "owner", None).await.unwrap());
        seen.sort();
        assert_eq!(seen, ["a", "b"]);

        // The same for a deletion; other owners are not held up.
        cache.expect("owner", Expect::Deleted("1".into()));
        assert!(cache.controlled("ns", "owner", None).await.is_none());
        assert!(cache.controlled("ns", "other", None).await.is_some());
        writer.apply_watcher_event(&Event::Delete(owned_pod("a", "1")));
        assert_eq!(
            names(cache.controlled("ns", "owner", None).await.unwrap()),
            ["b"]
        );
    }

    #[test]
    fn expectations_are_met_by_what_the_store_shows() {
        let f = "batch.kubernetes.io/job-tracking";
        let pods = vec![pod("a", "1", &[f], false), pod("b", "2", &[], true)];
        assert!(Expect::Created("a".into()).met(&pods));
        assert!(!Expect::Created("c".into()).met(&pods));
        assert!(!Expect::Deleted("1".into()).met(&pods));
        assert!(Expect::Deleted("2".into()).met(&pods));
        assert!(Expect::Deleted("3".into()).met(&pods));
        assert!(!Expect::Unfinalized("1".into(), f.into()).met(&pods));
        assert!(Expect::Unfinalized("2".into(), f.into()).met(&pods));
    }
}
