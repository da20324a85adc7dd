//! The garbage collector, as upstream's: a graph of ownerReferences over every resource
//! type the API serves (built-in and custom, discovered and kept current), fed by one
//! watch per type, and workers that
//! - delete an object whose owners are all gone (an owner reference counts as gone when
//!   no object of that kind and name exists, or one with another uid does), with the
//!   propagation its own finalizers ask for (else Background);
//! - for an owner being deleted in the foreground (`foregroundDeletion` finalizer), delete
//!   its dependents (those with dependents of their own in the foreground too) and drop
//!   the finalizer once no dependent with `blockOwnerDeletion: true` is left;
//! - for an owner being deleted with the `orphan` finalizer, remove its references from
//!   its dependents, then the finalizer.
//!
//! Whether an owner exists is always asked of the API server, never of the graph, so a
//! graph that lags behind (or has not synced a type yet) never gets something deleted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::discovery::{verbs, Discovery, Scope};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;
use tokio::task::JoinSet;

use crate::work_queue::WorkQueue;

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";
const WORKERS: usize = 4;
/// Upstream rediscovers every 30 s; CRD changes trigger it here at once.
const REDISCOVERY: Duration = Duration::from_secs(30);

/// A resource type the collector watches.
#[derive(Debug)]
struct Kind {
    ar: ApiResource,
    namespaced: bool,
}

impl Kind {
    fn key(&self) -> (String, String) {
        (self.ar.group.clone(), self.ar.plural.clone())
    }

    fn api(&self, client: &kube::Client, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &self.ar),
            None => Api::all_with(client.clone(), &self.ar),
        }
    }
}

/// One object in the graph.
#[derive(Clone, Debug)]
struct Node {
    kind: Arc<Kind>,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Node {
    fn deleting_dependents(&self) -> bool {
        self.deleting && self.finalizers.iter().any(|f| f == FOREGROUND)
    }

    fn orphaning(&self) -> bool {
        self.deleting && self.finalizers.iter().any(|f| f == ORPHAN)
    }
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    /// Owner uid → uids of objects that name it as an owner.
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn unlink(&mut self, uid: &str, owners: &[OwnerReference]) {
        for owner in owners {
            if let Some(set) = self.dependents.get_mut(&owner.uid) {
                set.remove(uid);
                if set.is_empty() {
                    self.dependents.remove(&owner.uid);
                }
            }
        }
    }

    fn dependents_of(&self, uid: &str) -> Vec<(String, Node)> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| Some((d.clone(), self.nodes.get(d)?.clone())))
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Work {
    /// Delete the object if its owners are gone; for an owner deleting in the
    /// foreground, see whether its dependents are.
    Delete(String),
    /// Orphan the dependents of an owner with the `orphan` finalizer.
    Orphan(String),
}

struct Collector {
    client: kube::Client,
    graph: Mutex<Graph>,
    /// (group, kind) → type, for looking owners up.
    kinds: Mutex<HashMap<(String, String), Arc<Kind>>>,
    queue: WorkQueue<Work>,
}

#[derive(Debug, thiserror::Error)]
enum GcError {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("owner kind {0} is not served by the API")]
    UnknownKind(String),
}

/// Runs the garbage collector until its task is aborted.
pub(crate) async fn run(client: kube::Client) {
    let gc = Arc::new(Collector {
        client,
        graph: Mutex::default(),
        kinds: Mutex::default(),
        queue: WorkQueue::default(),
    });
    // Dropping the set (when this task is aborted) aborts workers and watches.
    let mut tasks = JoinSet::new();
    for _ in 0..WORKERS {
        let gc = gc.clone();
        tasks.spawn(async move { gc.work().await });
    }
    let (crd_tx, mut crd_rx) = tokio::sync::mpsc::channel::<()>(1);
    let crds: Api<CustomResourceDefinition> = Api::all(gc.client.clone());
    tasks.spawn(async move {
        let stream = watcher(crds, watcher::Config::default())
            .default_backoff()
            .touched_objects();
        futures::pin_mut!(stream);
        while stream.next().await.is_some() {
            let _ = crd_tx.try_send(());
        }
    });
    let mut watches: HashMap<(String, String), tokio::task::AbortHandle> = HashMap::new();
    loop {
        match discover(&gc.client).await {
            Ok(kinds) => gc.watch_kinds(kinds, &mut watches, &mut tasks),
            Err(e) => tracing::warn!(error = %e, "garbage collector: discovering resources"),
        }
        tokio::select! {
            _ = tokio::time::sleep(REDISCOVERY) => {}
            Some(()) = crd_rx.recv() => {
                // A new CRD serves its resource once Established, a moment later.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Every type that can be listed, watched and deleted, at its most stable version.
/// Events are left out, as upstream does.
async fn discover(client: &kube::Client) -> Result<Vec<Kind>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut kinds = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.resources_by_stability() {
            let needed = [verbs::LIST, verbs::WATCH, verbs::DELETE];
            if !needed.iter().all(|v| caps.supports_operation(v)) || ar.kind == "Event" {
                continue;
            }
            kinds.push(Kind {
                namespaced: caps.scope == Scope::Namespaced,
                ar,
            });
        }
    }
    Ok(kinds)
}

impl Collector {
    fn watch_kinds(
        self: &Arc<Self>,
        kinds: Vec<Kind>,
        watches: &mut HashMap<(String, String), tokio::task::AbortHandle>,
        tasks: &mut JoinSet<()>,
    ) {
        let kinds: Vec<Arc<Kind>> = kinds.into_iter().map(Arc::new).collect();
        let current: HashSet<_> = kinds.iter().map(|k| k.key()).collect();
        watches.retain(|key, handle| {
            let keep = current.contains(key);
            if !keep {
                tracing::debug!(group = %key.0, resource = %key.1, "no longer watching");
                handle.abort();
            }
            keep
        });
        {
            let mut map = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
            map.clear();
            for kind in &kinds {
                map.insert((kind.ar.group.clone(), kind.ar.kind.clone()), kind.clone());
            }
        }
        for kind in kinds {
            if watches.contains_key(&kind.key()) {
                continue;
            }
            tracing::debug!(group = %kind.ar.group, resource = %kind.ar.plural, "watching for garbage collection");
            let gc = self.clone();
            let key = kind.key();
            let handle = tasks.spawn(async move { gc.watch(kind).await });
            watches.insert(key, handle);
        }
    }

    async fn watch(self: Arc<Self>, kind: Arc<Kind>) {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &kind.ar);
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        // What a relist saw, so that objects gone while the watch was down are dropped.
        let mut listed: Option<HashSet<String>> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => listed = Some(HashSet::new()),
                Ok(watcher::Event::InitApply(obj)) => {
                    if let (Some(seen), Some(uid)) = (listed.as_mut(), obj.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    self.observe(&kind, obj);
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(seen) = listed.take() {
                        self.forget_unlisted(&kind, &seen);
                    }
                }
                Ok(watcher::Event::Apply(obj)) => self.observe(&kind, obj),
                Ok(watcher::Event::Delete(obj)) => {
                    if let Some(uid) = obj.metadata.uid {
                        self.remove(&uid);
                    }
                }
                Err(e) => {
                    tracing::debug!(resource = %kind.ar.plural, error = %e, "garbage collector watch")
                }
            }
        }
    }

    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget_unlisted(&self, kind: &Arc<Kind>, seen: &HashSet<String>) {
        let gone: Vec<String> = self
            .graph()
            .nodes
            .iter()
            .filter(|(uid, n)| n.kind.key() == kind.key() && !seen.contains(*uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.remove(&uid);
        }
    }

    /// Adds or updates an object in the graph and queues what its change concerns.
    fn observe(&self, kind: &Arc<Kind>, obj: DynamicObject) {
        let meta = obj.metadata;
        let (Some(uid), Some(name)) = (meta.uid, meta.name) else {
            return;
        };
        let node = Node {
            kind: kind.clone(),
            namespace: meta.namespace,
            name,
            owners: meta.owner_references.unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            finalizers: meta.finalizers.unwrap_or_default(),
        };
        let mut work = Vec::new();
        let mut graph = self.graph();
        let old = graph.nodes.insert(uid.clone(), node.clone());
        if let Some(old) = &old {
            graph.unlink(&uid, &old.owners);
        }
        for owner in &node.owners {
            graph
                .dependents
                .entry(owner.uid.clone())
                .or_default()
                .insert(uid.clone());
        }
        let owners_changed = old.as_ref().is_none_or(|o| o.owners != node.owners);
        // An owner not (or no longer) in the graph, or deleting in the foreground: the
        // worker asks the API server about it.
        let check_owners = owners_changed
            && node.owners.iter().any(|o| {
                graph
                    .nodes
                    .get(&o.uid)
                    .is_none_or(Node::deleting_dependents)
            });
        if check_owners {
            work.push(Work::Delete(uid.clone()));
        }
        if node.deleting_dependents() {
            work.push(Work::Delete(uid.clone()));
            if old.as_ref().is_none_or(|o| !o.deleting_dependents()) {
                for (dep, _) in graph.dependents_of(&uid) {
                    work.push(Work::Delete(dep));
                }
            }
        }
        if node.orphaning() {
            work.push(Work::Orphan(uid.clone()));
        }
        // Owners deleting in the foreground wait for this one: tell them it changed.
        let previous = old.map(|o| o.owners).unwrap_or_default();
        for owner in previous.iter().chain(&node.owners) {
            if graph
                .nodes
                .get(&owner.uid)
                .is_some_and(Node::deleting_dependents)
            {
                work.push(Work::Delete(owner.uid.clone()));
            }
        }
        drop(graph);
        for item in work {
            self.queue.add(item);
        }
    }

    fn remove(&self, uid: &str) {
        let mut work = Vec::new();
        let mut graph = self.graph();
        let Some(node) = graph.nodes.remove(uid) else {
            return;
        };
        graph.unlink(uid, &node.owners);
        for (dep, _) in graph.dependents_of(uid) {
            work.push(Work::Delete(dep));
        }
        for owner in &node.owners {
            if graph.nodes.contains_key(&owner.uid) {
                work.push(Work::Delete(owner.uid.clone()));
            }
        }
        drop(graph);
        for item in work {
            self.queue.add(item);
        }
    }

    async fn work(self: Arc<Self>) {
        loop {
            let item = self.queue.get().await;
            let started = Instant::now();
            let result = match &item {
                Work::Delete(uid) => self.attempt_to_delete(uid).await,
                Work::Orphan(uid) => self.orphan_dependents(uid).await,
            };
            crate::metrics::sync_done("garbage-collector", started, result.is_ok());
            match result {
                Ok(()) => self.queue.forget(&item),
                Err(e) => {
                    tracing::debug!(?item, error = %e, "garbage collection; retrying");
                    let delay = self.queue.backoff(&item);
                    let gc: Weak<Self> = Arc::downgrade(&self);
                    let again = item.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        if let Some(gc) = gc.upgrade() {
                            gc.queue.add(again);
                        }
                    });
                }
            }
            self.queue.done(&item);
        }
    }

    fn node(&self, uid: &str) -> Option<Node> {
        self.graph().nodes.get(uid).cloned()
    }

    /// The object as the API server has it now, if it is still the one with `uid`.
    async fn latest(&self, uid: &str, node: &Node) -> Result<Option<DynamicObject>, GcError> {
        let api = node.kind.api(&self.client, node.namespace.as_deref());
        let latest = api.get_opt(&node.name).await?;
        Ok(latest.filter(|o| o.metadata.uid.as_deref() == Some(uid)))
    }

    /// Upstream's `attemptToDeleteItem`.
    async fn attempt_to_delete(&self, uid: &str) -> Result<(), GcError> {
        let Some(node) = self.node(uid) else {
            return Ok(());
        };
        let Some(latest) = self.latest(uid, &node).await? else {
            return Ok(());
        };
        let finalizers = latest.metadata.finalizers.clone().unwrap_or_default();
        if latest.metadata.deletion_timestamp.is_some() {
            if finalizers.iter().any(|f| f == FOREGROUND) {
                return self.process_deleting_dependents(uid, &latest).await;
            }
            return Ok(());
        }
        let owners = latest.metadata.owner_references.clone().unwrap_or_default();
        if owners.is_empty() {
            return Ok(());
        }
        let (mut solid, mut dangling, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
        for owner in &owners {
            match self.owner_state(node.namespace.as_deref(), owner).await? {
                OwnerState::Solid => solid.push(owner),
                OwnerState::Dangling => dangling.push(owner),
                OwnerState::DeletingDependents => waiting.push(owner),
            }
        }
        let api = node.kind.api(&self.client, node.namespace.as_deref());
        if !solid.is_empty() {
            if dangling.is_empty() && waiting.is_empty() {
                return Ok(());
            }
            // Still owned: drop the references to gone owners and stop blocking the
            // owners that wait for their dependents.
            let kept: Vec<OwnerReference> = owners
                .iter()
                .filter(|o| !dangling.iter().any(|d| d.uid == o.uid))
                .map(|o| {
                    let mut o = o.clone();
                    if waiting.iter().any(|w| w.uid == o.uid) {
                        o.block_owner_deletion = Some(false);
                    }
                    o
                })
                .collect();
            let patch = json!({"metadata": {
                "resourceVersion": latest.metadata.resource_version,
                "ownerReferences": kept,
            }});
            api.patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            tracing::debug!(name = %node.name, "removed references to gone owners");
            return Ok(());
        }
        let has_dependents = self
            .graph()
            .dependents
            .get(uid)
            .is_some_and(|d| !d.is_empty());
        let policy = if !waiting.is_empty() && has_dependents {
            PropagationPolicy::Foreground
        } else if finalizers.iter().any(|f| f == ORPHAN) {
            PropagationPolicy::Orphan
        } else if finalizers.iter().any(|f| f == FOREGROUND) {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        tracing::debug!(kind = %node.kind.ar.kind, name = %node.name, ?policy, "deleting an object whose owners are gone");
        delete(&api, &node.name, uid, policy).await
    }

    async fn owner_state(
        &self,
        namespace: Option<&str>,
        owner: &OwnerReference,
    ) -> Result<OwnerState, GcError> {
        let group = owner
            .api_version
            .split_once('/')
            .map_or("", |(g, _)| g)
            .to_string();
        let kind = self
            .kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(group, owner.kind.clone()))
            .cloned();
        let Some(kind) = kind else {
            return Err(GcError::UnknownKind(format!(
                "{}/{}",
                owner.api_version, owner.kind
            )));
        };
        // A namespaced owner of a cluster-scoped object cannot exist.
        if kind.namespaced && namespace.is_none() {
            return Ok(OwnerState::Dangling);
        }
        let found = kind
            .api(&self.client, namespace)
            .get_opt(&owner.name)
            .await?;
        Ok(match found {
            Some(o) if o.metadata.uid.as_deref() == Some(owner.uid.as_str()) => {
                let fins = o.metadata.finalizers.unwrap_or_default();
                if o.metadata.deletion_timestamp.is_some() && fins.iter().any(|f| f == FOREGROUND) {
                    OwnerState::DeletingDependents
                } else {
                    OwnerState::Solid
                }
            }
            _ => OwnerState::Dangling,
        })
    }

    /// An owner deleting in the foreground: its dependents go first; the finalizer goes
    /// when none that blocks it is left.
    async fn process_deleting_dependents(
        &self,
        uid: &str,
        latest: &DynamicObject,
    ) -> Result<(), GcError> {
        let blocking: Vec<(String, Node)> = self
            .graph()
            .dependents_of(uid)
            .into_iter()
            .filter(|(_, dep)| {
                dep.owners
                    .iter()
                    .any(|o| o.uid == uid && o.block_owner_deletion == Some(true))
            })
            .collect();
        if blocking.is_empty() {
            let Some(node) = self.node(uid) else {
                return Ok(());
            };
            let api = node.kind.api(&self.client, node.namespace.as_deref());
            tracing::debug!(name = %node.name, "dependents gone: removing the foregroundDeletion finalizer");
            return remove_finalizer(&api, latest, FOREGROUND).await;
        }
        for (dep_uid, dep) in blocking {
            if !dep.deleting_dependents() {
                self.queue.add(Work::Delete(dep_uid));
            }
        }
        Ok(())
    }

    /// Upstream's `attemptToOrphan`.
    async fn orphan_dependents(&self, uid: &str) -> Result<(), GcError> {
        let Some(node) = self.node(uid) else {
            return Ok(());
        };
        let Some(latest) = self.latest(uid, &node).await? else {
            return Ok(());
        };
        let orphaning = latest.metadata.deletion_timestamp.is_some()
            && latest
                .metadata
                .finalizers
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|f| f == ORPHAN);
        if !orphaning {
            return Ok(());
        }
        let dependents = self.graph().dependents_of(uid);
        for (_, dep) in dependents {
            let api = dep.kind.api(&self.client, dep.namespace.as_deref());
            let Some(current) = api.get_opt(&dep.name).await? else {
                continue;
            };
            let owners = current
                .metadata
                .owner_references
                .clone()
                .unwrap_or_default();
            if !owners.iter().any(|o| o.uid == uid) {
                continue;
            }
            let kept: Vec<&OwnerReference> = owners.iter().filter(|o| o.uid != uid).collect();
            let patch = json!({"metadata": {
                "resourceVersion": current.metadata.resource_version,
                "ownerReferences": if kept.is_empty() { serde_json::Value::Null } else { json!(kept) },
            }});
            api.patch(&dep.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        let api = node.kind.api(&self.client, node.namespace.as_deref());
        tracing::debug!(name = %node.name, "dependents orphaned: removing the orphan finalizer");
        remove_finalizer(&api, &latest, ORPHAN).await
    }
}

enum OwnerState {
    Solid,
    Dangling,
    DeletingDependents,
}

async fn delete(
    api: &Api<DynamicObject>,
    name: &str,
    uid: &str,
    policy: PropagationPolicy,
) -> Result<(), GcError> {
    let params = DeleteParams {
        propagation_policy: Some(policy),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        // Gone already, or a new object of that name: nothing of ours to delete.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn remove_finalizer(
    api: &Api<DynamicObject>,
    latest: &DynamicObject,
    finalizer: &str,
) -> Result<(), GcError> {
    let Some(name) = latest.metadata.name.as_deref() else {
        return Ok(());
    };
    let finalizers = latest.metadata.finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let rest: Vec<&String> = finalizers.iter().filter(|f| *f != finalizer).collect();
    let patch = json!({"metadata": {
        "resourceVersion": latest.metadata.resource_version,
        "finalizers": rest,
    }});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
