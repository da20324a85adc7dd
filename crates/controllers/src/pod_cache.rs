//! The controller manager's one watch of all pods ([`PodInformer`]: a reflector store
//! whose changes are passed on to every controller that subscribes), and per controller
//! a [`PodCache`] over that store with expectations, so that syncs need no LIST of pods
//! (a LIST per sync costs the API server a read and a serialisation of every pod the
//! selector matches, and the controller a round trip).
//!
//! A watch cache lags behind this controller's own writes, so a quick second sync could
//! create a pod twice or count a pod twice. As upstream's "expectations": every pod write
//! is remembered ([`Expect`]) until the store shows its effect. While one is outstanding
//! for an owner, either [`PodCache::controlled`] says `None` and the caller lists afresh
//! (a fresh list holds every write acknowledged before it), or the caller counts what
//! [`PodCache::unmet`] returns as done (the ReplicaSet controller, as upstream's). Once
//! the store has caught up, which the watch brings within milliseconds, syncs read only
//! the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::runtime::WatchStreamExt as _;
use kube::ResourceExt;
use tokio::sync::{mpsc, watch};

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
    fn met(&self, pods: &[Arc<Pod>]) -> bool {
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
    /// Whether the store has been filled ([`PodInformer::wait_until_ready`]).
    ready: watch::Receiver<bool>,
    pending: Arc<Mutex<HashMap<String, Pending>>>,
}

/// How many pod changes a subscriber may have waiting; the watch waits for one that is
/// this far behind (as kube's shared streams do), so no change is ever lost.
const SUBSCRIBER_BUFFER: usize = 1024;

/// The one watch of all pods that the controllers of a manager share: a reflector store
/// and, for each subscriber, the stream of pods the watch touched (applied, relisted or
/// deleted), each passed on only after the store holds it, so a sync it wakes never
/// reads a store older than the change. (kube's own shared streams pass on no
/// deletions.)
///
/// Readiness is a watch channel of its own: kube's `Store::wait_until_ready` wakes only
/// the last of several tasks waiting at once (one oneshot receiver behind a mutex), which
/// a store shared by many controllers' concurrent syncs would hit.
#[derive(Clone)]
pub(crate) struct PodInformer {
    store: Store<Pod>,
    ready: watch::Receiver<bool>,
    subscribers: Arc<Mutex<Vec<mpsc::Sender<PodChange>>>>,
}

/// A pod the shared watch touched, as a subscriber gets it.
#[derive(Clone, Debug)]
pub(crate) enum PodChange {
    /// Created or changed, or listed (when the watch (re)starts).
    Applied(Arc<Pod>),
    /// Deleted (its last state).
    Deleted(Arc<Pod>),
}

impl PodChange {
    pub(crate) fn pod(self) -> Arc<Pod> {
        match self {
            PodChange::Applied(pod) | PodChange::Deleted(pod) => pod,
        }
    }
}

impl PodInformer {
    /// An informer over all pods `client` sees, and the future that runs its watch (for
    /// as long as its subscribers run). A subscriber that comes after the first changes
    /// misses them, which costs it nothing: its Controller's initial list syncs every
    /// object, and the store is read only once filled.
    pub(crate) fn new(
        client: &kube::Client,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        Self::over(
            kube::runtime::watcher(Api::<Pod>::all(client.clone()), Default::default())
                .default_backoff(),
        )
    }

    /// An informer over a stream of watch events.
    fn over(
        watch: impl futures::Stream<Item = Result<Event<Pod>, kube::runtime::watcher::Error>>
            + Send
            + 'static,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (store, writer) = kube::runtime::reflector::store();
        let (ready_tx, ready) = watch::channel(false);
        let informer = Self {
            store,
            ready,
            subscribers: Default::default(),
        };
        let subscribers = informer.subscribers.clone();
        let events = kube::runtime::reflector::reflector(writer, watch);
        let run = async move {
            let mut events = std::pin::pin!(events);
            // A (re)list's pods, passed on once the store holds them all (at InitDone).
            let mut listed: Vec<PodChange> = Vec::new();
            while let Some(event) = events.next().await {
                let touched = match event {
                    Ok(Event::Apply(pod)) => vec![PodChange::Applied(Arc::new(pod))],
                    Ok(Event::Delete(pod)) => vec![PodChange::Deleted(Arc::new(pod))],
                    Ok(Event::Init) => {
                        listed.clear();
                        continue;
                    }
                    Ok(Event::InitApply(pod)) => {
                        listed.push(PodChange::Applied(Arc::new(pod)));
                        continue;
                    }
                    Ok(Event::InitDone) => {
                        ready_tx.send_replace(true);
                        std::mem::take(&mut listed)
                    }
                    Err(error) => {
                        tracing::debug!(%error, "watching pods; retrying");
                        continue;
                    }
                };
                let senders: Vec<_> = match subscribers.lock() {
                    Ok(list) => list.clone(),
                    Err(_) => return,
                };
                let mut closed = false;
                for change in touched {
                    for sender in &senders {
                        closed |= sender.send(change.clone()).await.is_err();
                    }
                }
                if closed {
                    if let Ok(mut list) = subscribers.lock() {
                        list.retain(|s| !s.is_closed());
                    }
                }
            }
        };
        (informer, run)
    }

    /// The pods the watch touches from now on, for a Controller's
    /// `watches_shared_stream`.
    pub(crate) fn subscribe(&self) -> impl futures::Stream<Item = Arc<Pod>> + Send + 'static {
        self.changes().map(PodChange::pod)
    }

    /// As [`PodInformer::subscribe`], saying which pods were deleted.
    pub(crate) fn changes(&self) -> impl futures::Stream<Item = PodChange> + Send + 'static {
        let (sender, receiver) = mpsc::channel(SUBSCRIBER_BUFFER);
        if let Ok(mut list) = self.subscribers.lock() {
            list.push(sender);
        }
        futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|change| (change, receiver))
        })
    }

    /// The shared store of all pods (read only); wait for it with
    /// [`PodInformer::wait_until_ready`], not the store's own.
    pub(crate) fn store(&self) -> Store<Pod> {
        self.store.clone()
    }

    /// Waits until the store has been filled by the first list.
    pub(crate) async fn wait_until_ready(&self) -> Result<(), String> {
        wait_until_ready(&self.ready).await
    }

    /// A cache over the shared store with expectations of its own, for one controller.
    pub(crate) fn cache(&self) -> PodCache {
        PodCache::new(self.store.clone(), self.ready.clone())
    }
}

async fn wait_until_ready(ready: &watch::Receiver<bool>) -> Result<(), String> {
    ready
        .clone()
        .wait_for(|ready| *ready)
        .await
        .map(|_| ())
        .map_err(|_| "the pod watch stopped before the pod store was filled".to_string())
}

/// The object of kind `K` that controls `pod`, for a Controller's `watches_stream`.
pub(crate) fn controller_of_pod<K>(pod: Arc<Pod>) -> Option<ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()>,
{
    let owner = crate::workload::controller_of(&pod.metadata).filter(|o| o.kind == K::kind(&()))?;
    Some(ObjectRef::new(&owner.name).within(&pod.namespace()?))
}

impl PodCache {
    /// A cache over `store` (a reflector of all pods), filled once `ready` says so.
    fn new(store: Store<Pod>, ready: watch::Receiver<bool>) -> Self {
        Self {
            store: Some(store),
            ready,
            pending: Default::default(),
        }
    }

    /// No store: [`PodCache::controlled`] always says to list.
    pub(crate) fn none() -> Self {
        Self {
            store: None,
            ready: watch::channel(false).1,
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
        if !*self.ready.borrow() {
            return None;
        }
        let pods: Vec<Arc<Pod>> = store
            .state()
            .into_iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace))
            .filter(|p| is_controlled_by(&p.metadata, owner_uid))
            .collect();
        if !self.unmet(owner_uid, &pods).ok()?.is_empty() {
            return None;
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

    /// Every pod of `namespace` in the store, once the store has been filled (waiting
    /// for that), for a controller that counts its writes the store does not show yet
    /// itself ([`PodCache::unmet`]) instead of listing.
    pub(crate) async fn in_namespace(&self, namespace: &str) -> Result<Vec<Arc<Pod>>, String> {
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| "no pod store".to_string())?;
        wait_until_ready(&self.ready).await?;
        Ok(store
            .state()
            .into_iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace))
            .collect())
    }

    /// The writes made for `owner_uid` that `pods` (read from the store; they must hold
    /// the owner's pods) do not show yet. Writes they show, and writes older than the
    /// timeout, are forgotten.
    pub(crate) fn unmet(&self, owner_uid: &str, pods: &[Arc<Pod>]) -> Result<Vec<Expect>, String> {
        let mut pending = self
            .pending
            .lock()
            .map_err(|_| "pod expectations lock poisoned".to_string())?;
        let Some(list) = pending.get_mut(owner_uid) else {
            return Ok(Vec::new());
        };
        let now = Instant::now();
        list.retain(|(e, at)| now.duration_since(*at) < EXPECTATION_TIMEOUT && !e.met(pods));
        let unmet: Vec<Expect> = list.iter().map(|(e, _)| e.clone()).collect();
        if unmet.is_empty() {
            pending.remove(owner_uid);
        }
        Ok(unmet)
    }

    /// Whether a write made for `owner_uid` was not yet seen in the store, as of the last
    /// look ([`PodCache::unmet`], [`PodCache::controlled`]) and within the timeout.
    pub(crate) fn awaits(&self, owner_uid: &str) -> bool {
        let now = Instant::now();
        self.pending.lock().is_ok_and(|pending| {
            pending.get(owner_uid).is_some_and(|list| {
                list.iter()
                    .any(|(_, at)| now.duration_since(*at) < EXPECTATION_TIMEOUT)
            })
        })
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

    /// The writer of a cache's store, ready at InitDone as the informer's.
    struct FakeWatch {
        writer: kube::runtime::reflector::store::Writer<Pod>,
        ready: watch::Sender<bool>,
    }

    impl FakeWatch {
        fn apply_watcher_event(&mut self, event: &Event<Pod>) {
            self.writer.apply_watcher_event(event);
            if matches!(event, Event::InitDone) {
                self.ready.send_replace(true);
            }
        }
    }

    fn fake() -> (PodCache, FakeWatch) {
        let (store, writer) = kube::runtime::reflector::store::<Pod>();
        let (ready, ready_rx) = watch::channel(false);
        (PodCache::new(store, ready_rx), FakeWatch { writer, ready })
    }

    fn owned_pod(name: &str, uid: &str) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {
            "name": name, "namespace": "ns", "uid": uid,
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j",
                                 "uid": "owner", "controller": true}]}}))
        .unwrap()
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_touched_pod_once_the_store_has_it() {
        let (events, watch) = mpsc::unbounded_channel();
        let watch = futures::stream::unfold(watch, |mut watch| async move {
            watch.recv().await.map(|event| (Ok(event), watch))
        });
        let (informer, run) = PodInformer::over(watch);
        let (mut first, second) = (Box::pin(informer.subscribe()), informer.subscribe());
        let third = informer.changes();
        drop(informer.subscribe()); // gone: the watch does not wait for it
        let run = tokio::spawn(run);
        let store = informer.store();
        let has = |name: &str| store.state().iter().any(|p| p.name_any() == name);
        // Every task waiting for the store at once is woken (kube's wait wakes one).
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let informer = informer.clone();
                tokio::spawn(async move { informer.wait_until_ready().await })
            })
            .collect();
        tokio::task::yield_now().await;

        for event in [
            Event::Init,
            Event::InitApply(owned_pod("a", "1")),
            Event::InitDone,
        ] {
            events.send(event).unwrap();
        }
        assert_eq!(first.next().await.unwrap().name_any(), "a");
        assert!(
            has("a"),
            "a listed pod is passed on once the store holds the list"
        );
        for waiter in waiting {
            waiter.await.unwrap().unwrap();
        }
        events.send(Event::Apply(owned_pod("b", "2"))).unwrap();
        assert_eq!(first.next().await.unwrap().name_any(), "b");
        assert!(has("b"));
        // Deletions are passed on too (kube's shared streams drop them).
        events.send(Event::Delete(owned_pod("a", "1"))).unwrap();
        assert_eq!(first.next().await.unwrap().name_any(), "a");
        assert!(!has("a"));

        let names: Vec<String> = second.take(3).map(|p| p.name_any()).collect().await;
        assert_eq!(names, ["a", "b", "a"]);
        let deleted: Vec<bool> = third
            .take(3)
            .map(|c| matches!(c, PodChange::Deleted(_)))
            .collect()
            .await;
        assert_eq!(deleted, [false, false, true]);
        let cache = informer.cache();
        assert_eq!(cache.in_namespace("ns").await.unwrap().len(), 1);
        drop(events);
        run.await.unwrap();
    }

    #[tokio::test]
    async fn unmet_writes_count_until_the_store_shows_them() {
        let (cache, mut writer) = fake();
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(owned_pod("a", "1")));
        writer.apply_watcher_event(&Event::InitDone);
        assert!(!cache.awaits("owner"));
        cache.expect("owner", Expect::Created("web-x7k2p".into()));
        cache.expect("owner", Expect::Deleted("1".into()));
        assert!(cache.awaits("owner"));
        let pods = cache.in_namespace("ns").await.unwrap();
        assert_eq!(
            cache.unmet("owner", &pods).unwrap(),
            [
                Expect::Created("web-x7k2p".into()),
                Expect::Deleted("1".into())
            ]
        );
        writer.apply_watcher_event(&Event::Apply(owned_pod("web-x7k2p", "2")));
        let pods = cache.in_namespace("ns").await.unwrap();
        assert_eq!(
            cache.unmet("owner", &pods).unwrap(),
            [Expect::Deleted("1".into())]
        );
        writer.apply_watcher_event(&Event::Delete(owned_pod("a", "1")));
        let pods = cache.in_namespace("ns").await.unwrap();
        assert!(cache.unmet("owner", &pods).unwrap().is_empty());
        assert!(!cache.awaits("owner"), "met writes are forgotten");
    }

    #[tokio::test]
    async fn the_store_is_read_only_while_it_shows_every_write() {
        let (cache, mut writer) = fake();
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
