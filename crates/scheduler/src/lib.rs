//! The scheduler: binds pods without a node to the best node that fits them, as
//! upstream's `default-scheduler` does, as a client of the API (watches of Nodes and
//! Pods, `pods/binding`, Events, the pods' `PodScheduled` condition).
//!
//! One task owns the caches and the queue, and schedules one pod at a time; a pod it
//! places is *assumed* on its node at once (so the next pod sees those resources taken)
//! while the binding is written in the background. Only the holder of the Lease
//! `kube-system/korvet-scheduler` schedules; the others keep their caches warm.

pub mod kwok;
mod plugins;
mod preemption;
mod volumes;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use korvet_apimachinery::events;
use korvet_apimachinery::leader::{self, LeaderConfig, LeaderElection};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use plugins::{NodeInfo, PodContext, Reason};

pub const DEFAULT_SCHEDULER: &str = "default-scheduler";
pub const LEASE_NAME: &str = "korvet-scheduler";
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// An unschedulable pod is retried this often even when nothing in the cluster changed
/// (upstream: 5 minutes; shorter here since the cluster autoscaler reacts to retries).
const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(60);
/// An assumed pod whose binding never showed up in the watch is forgotten after this.
const ASSUME_TTL: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Pods whose `spec.schedulerName` is this (or empty) are ours.
    pub scheduler_name: String,
    /// This replica's identity in the Lease and in Events' `reportingInstance`.
    pub identity: String,
    /// Campaign for the Lease before scheduling; without it the scheduler always acts.
    pub leader_election: Option<LeaderConfig>,
    /// Bindings (and their Events) written at once.
    pub max_in_flight: usize,
}

impl SchedulerConfig {
    /// The default scheduler with leader election on `kube-system/korvet-scheduler`.
    pub fn new(identity: &str) -> Self {
        Self {
            scheduler_name: DEFAULT_SCHEDULER.into(),
            identity: identity.into(),
            leader_election: Some(LeaderConfig::new(LEASE_NAME, identity)),
            max_in_flight: 32,
        }
    }
}

/// Counters of one scheduler (upstream-like names), for a `/metrics` registry.
#[derive(Clone)]
pub struct Metrics {
    pub scheduled: Counter,
    pub unschedulable: Counter,
    pub binding_errors: Counter,
    pub binding_seconds: Histogram,
    pub preemption_victims: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            scheduled: Counter::default(),
            unschedulable: Counter::default(),
            binding_errors: Counter::default(),
            binding_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            preemption_victims: Counter::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "scheduler_pods_scheduled",
            "Pods bound to a node",
            self.scheduled.clone(),
        );
        registry.register(
            "scheduler_unschedulable_attempts",
            "Scheduling attempts that found no node",
            self.unschedulable.clone(),
        );
        registry.register(
            "scheduler_binding_errors",
            "Bindings the API server refused or that failed",
            self.binding_errors.clone(),
        );
        registry.register(
            "scheduler_binding_duration_seconds",
            "Time to write a binding",
            self.binding_seconds.clone(),
        );
        registry.register(
            "scheduler_preemption_victims",
            "Pods deleted to make room for higher-priority pods",
            self.preemption_victims.clone(),
        );
    }

    /// The counters alone, in the text exposition format.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A running scheduler; dropping it stops it (and its campaign for the Lease).
pub struct RunningScheduler {
    pub metrics: Arc<Metrics>,
    slots: Arc<Semaphore>,
    max_in_flight: u32,
    task: tokio::task::JoinHandle<()>,
    _election: Option<LeaderElection>,
    /// Without leader election: keeps the "leading" signal alive and true.
    _always_leader: Option<watch::Sender<bool>>,
}

impl RunningScheduler {
    /// Stops scheduling, lets the writes in flight finish, and hands the Lease back so
    /// that another replica (or this one restarted) takes over at once.
    pub async fn shutdown(self) {
        self.task.abort();
        self.wait_idle().await;
        if let Some(election) = &self._election {
            election.release().await;
        }
    }

    /// Waits until no binding, status patch or Event write is in flight.
    pub async fn wait_idle(&self) {
        let _all = self.slots.acquire_many(self.max_in_flight).await;
    }

    /// Whether this replica currently leads (always true without leader election).
    pub fn is_leader(&self) -> bool {
        self._election
            .as_ref()
            .is_none_or(|e| *e.is_leader.borrow())
    }
}

impl Drop for RunningScheduler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn spawn(client: kube::Client, config: SchedulerConfig) -> RunningScheduler {
    let metrics = Arc::new(Metrics::default());
    let mut always_leader = None;
    let (election, is_leader) = match config.leader_election.clone() {
        Some(lc) => {
            let e = leader::spawn(client.clone(), lc);
            let rx = e.is_leader.clone();
            (Some(e), rx)
        }
        None => {
            let (tx, rx) = watch::channel(true);
            always_leader = Some(tx);
            (None, rx)
        }
    };
    let max_in_flight = u32::try_from(config.max_in_flight.max(1)).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(max_in_flight as usize));
    let task = tokio::spawn(run(
        client,
        config,
        metrics.clone(),
        is_leader,
        slots.clone(),
    ));
    RunningScheduler {
        metrics,
        slots,
        max_in_flight,
        task,
        _election: election,
        _always_leader: always_leader,
    }
}

fn key_of(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Priority-ordered queue of pods to schedule (higher priority first, then FIFO).
#[derive(Default)]
struct Queue {
    order: BTreeSet<(Reverse<i32>, u64, String)>,
    members: HashMap<String, (i32, u64)>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, key: String, priority: i32) {
        if self.members.contains_key(&key) {
            return;
        }
        self.seq += 1;
        self.order
            .insert((Reverse(priority), self.seq, key.clone()));
        self.members.insert(key, (priority, self.seq));
    }
    fn remove(&mut self, key: &str) {
        if let Some((p, s)) = self.members.remove(key) {
            self.order.remove(&(Reverse(p), s, key.to_string()));
        }
    }
    fn pop(&mut self) -> Option<String> {
        let (_, _, key) = self.order.pop_first()?;
        self.members.remove(&key);
        Some(key)
    }
    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// A pod that did not fit (or whose binding failed), waiting to be retried.
struct Failure {
    attempts: u32,
    at: Instant,
    backoff_until: Instant,
    /// The cluster generation at the failure: a later change may make room.
    generation: u64,
    message: String,
    /// The FailedScheduling Event written for this message, and its count.
    event: Option<(String, i32)>,
    /// Back in the queue, waiting for its next attempt.
    queued: bool,
}

impl Failure {
    fn due(&self, generation: u64) -> Instant {
        if generation > self.generation {
            self.backoff_until
        } else {
            self.backoff_until.max(self.at + UNSCHEDULABLE_RETRY)
        }
    }
}

struct BindResult {
    key: String,
    node: String,
    outcome: Result<Duration, kube::Error>,
}

/// Tasks that end with the scheduler's loop.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

struct State {
    client: kube::Client,
    volumes: volumes::VolumeCaches,
    config: SchedulerConfig,
    metrics: Arc<Metrics>,
    nodes: BTreeMap<String, Arc<Node>>,
    pods: HashMap<String, Arc<Pod>>,
    assumed: HashMap<String, (String, Instant)>,
    queue: Queue,
    failures: HashMap<String, Failure>,
    /// Bumped when nodes or assigned pods change (room may have appeared).
    generation: u64,
    snapshot: Option<(Vec<NodeInfo>, HashMap<String, usize>)>,
    relist_pods: Option<HashSet<String>>,
    relist_nodes: Option<HashSet<String>>,
    rng: u64,
    bind_slots: Arc<Semaphore>,
    results: mpsc::UnboundedSender<BindResult>,
}

async fn run(
    client: kube::Client,
    config: SchedulerConfig,
    metrics: Arc<Metrics>,
    mut is_leader: watch::Receiver<bool>,
    bind_slots: Arc<Semaphore>,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let pod_events = watcher(pods, watcher::Config::default()).default_backoff();
    let node_events = watcher(nodes, watcher::Config::default()).default_backoff();
    futures::pin_mut!(pod_events);
    futures::pin_mut!(node_events);
    let (tx, mut results) = mpsc::unbounded_channel();
    let (volumes_changed, mut volume_changes) = mpsc::unbounded_channel();
    let (volumes, _volume_tasks) = volumes::VolumeCaches::spawn(&client, volumes_changed);
    let _volume_tasks = AbortOnDrop(_volume_tasks);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let mut state = State {
        client,
        bind_slots,
        config,
        metrics,
        nodes: BTreeMap::new(),
        pods: HashMap::new(),
        assumed: HashMap::new(),
        queue: Queue::default(),
        failures: HashMap::new(),
        generation: 0,
        snapshot: None,
        relist_pods: None,
        relist_nodes: None,
        volumes,
        rng: seed | 1,
        results: tx,
    };
    let mut synced = (false, false);
    let mut leader_alive = true;
    loop {
        let leading = *is_leader.borrow();
        let ready = leading && synced.0 && synced.1 && !state.queue.is_empty();
        let wake = state.next_wake();
        tokio::select! {
            biased;
            Some(ev) = pod_events.next() => {
                if state.on_pod_event(ev) { synced.0 = true; }
            }
            Some(ev) = node_events.next() => {
                if state.on_node_event(ev) { synced.1 = true; }
            }
            Some(res) = results.recv() => state.on_bind_result(res),
            // A claim bound or a volume appeared: pods waiting on one may fit now.
            Some(()) = volume_changes.recv() => state.generation += 1,
            changed = is_leader.changed(), if leader_alive => {
                if changed.is_err() { leader_alive = false; }
            }
            _ = tokio::time::sleep_until(wake) => state.requeue_due(),
            _ = std::future::ready(()), if ready => state.schedule_next(),
        }
    }
}

impl State {
    fn ours(&self, pod: &Pod) -> bool {
        let name = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or_default();
        name.is_empty() || name == self.config.scheduler_name
    }

    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + Duration::from_secs(5);
        for f in self.failures.values().filter(|f| !f.queued) {
            wake = wake.min(f.due(self.generation));
        }
        wake
    }

    fn invalidate(&mut self) {
        self.snapshot = None;
        self.generation += 1;
    }

    /// Returns true once the initial list is complete.
    fn on_pod_event(&mut self, ev: Result<watcher::Event<Pod>, watcher::Error>) -> bool {
        match ev {
            Err(e) => {
                tracing::warn!(error = %e, "watching Pods");
                false
            }
            Ok(watcher::Event::Init) => {
                self.relist_pods = Some(HashSet::new());
                false
            }
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(seen) = self.relist_pods.as_mut() {
                    seen.insert(key_of(&pod));
                }
                self.upsert_pod(pod);
                false
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = self.relist_pods.take() {
                    let gone: Vec<String> = self
                        .pods
                        .keys()
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect();
                    for key in gone {
                        self.remove_pod(&key);
                    }
                }
                true
            }
            Ok(watcher::Event::Apply(pod)) => {
                self.upsert_pod(pod);
                false
            }
            Ok(watcher::Event::Delete(pod)) => {
                self.remove_pod(&key_of(&pod));
                false
            }
        }
    }

    fn upsert_pod(&mut self, pod: Pod) {
        let key = key_of(&pod);
        let old_node = self
            .pods
            .get(&key)
            .and_then(|p| node_name(p).map(str::to_string));
        let new_node = node_name(&pod).map(str::to_string);
        let was_assumed = self.assumed.remove(&key).map(|(n, _)| n);
        if let Some(node) = &new_node {
            self.queue.remove(&key);
            self.failures.remove(&key);
            // The pod is where the snapshot already has it, with the same labels (that
            // affinity and spreading read): no rebuild needed.
            let known = was_assumed.as_deref() == Some(node) || old_node.as_deref() == Some(node);
            let same_labels = self
                .pods
                .get(&key)
                .is_some_and(|old| old.metadata.labels == pod.metadata.labels);
            if !known
                || !same_labels
                || is_terminal(&pod)
                || pod.metadata.deletion_timestamp.is_some()
            {
                self.invalidate();
            }
        } else {
            if let Some(n) = was_assumed {
                // Binding not visible yet: keep it assumed.
                self.assumed.insert(key.clone(), (n, Instant::now()));
            }
            if old_node.is_some() {
                self.invalidate();
            }
            let wants = self.ours(&pod)
                && pod.metadata.deletion_timestamp.is_none()
                && !is_terminal(&pod)
                && !self.assumed.contains_key(&key);
            if !wants {
                self.queue.remove(&key);
                self.failures.remove(&key);
            } else if !self.failures.contains_key(&key) {
                let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
                self.queue.push(key.clone(), priority);
            }
        }
        self.pods.insert(key, Arc::new(pod));
    }

    fn remove_pod(&mut self, key: &str) {
        self.queue.remove(key);
        self.failures.remove(key);
        let assumed = self.assumed.remove(key).is_some();
        if let Some(pod) = self.pods.remove(key) {
            if assumed || node_name(&pod).is_some() {
                self.invalidate();
            }
        }
    }

    fn on_node_event(&mut self, ev: Result<watcher::Event<Node>, watcher::Error>) -> bool {
        let mut done = false;
        match ev {
            Err(e) => tracing::warn!(error = %e, "watching Nodes"),
            Ok(watcher::Event::Init) => self.relist_nodes = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(node)) | Ok(watcher::Event::Apply(node)) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                if let Some(seen) = self.relist_nodes.as_mut() {
                    seen.insert(name.clone());
                }
                self.nodes.insert(name, Arc::new(node));
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = self.relist_nodes.take() {
                    self.nodes.retain(|n, _| seen.contains(n));
                }
                done = true;
            }
            Ok(watcher::Event::Delete(node)) => {
                self.nodes
                    .remove(node.metadata.name.as_deref().unwrap_or_default());
            }
        }
        self.invalidate();
        done
    }

    /// Moves pods whose back-off is over back into the queue; forgets stale assumptions.
    fn requeue_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .failures
            .iter()
            .filter(|(_, f)| !f.queued && f.due(self.generation) <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if let Some(f) = self.failures.get_mut(&key) {
                f.queued = true;
            }
            if let Some(pod) = self.pods.get(&key) {
                let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
                self.queue.push(key, priority);
            }
        }
        let before = self.assumed.len();
        self.assumed.retain(|_, (_, at)| at.elapsed() < ASSUME_TTL);
        if self.assumed.len() != before {
            self.invalidate();
        }
    }

    fn snapshot(&mut self) -> &mut (Vec<NodeInfo>, HashMap<String, usize>) {
        if self.snapshot.is_none() {
            let mut infos: Vec<NodeInfo> = self
                .nodes
                .values()
                .map(|n| NodeInfo::new(n.clone()))
                .collect();
            let index: HashMap<String, usize> = infos
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name().to_string(), i))
                .collect();
            for (key, pod) in &self.pods {
                if is_terminal(pod) {
                    continue;
                }
                let node = match node_name(pod) {
                    Some(n) => Some(n),
                    None => self.assumed.get(key).map(|(n, _)| n.as_str()),
                };
                if let Some(i) = node.and_then(|n| index.get(n)) {
                    infos[*i].add_pod(pod.clone());
                }
            }
            self.snapshot = Some((infos, index));
        }
        self.snapshot.get_or_insert_with(Default::default)
    }

    fn random(&mut self) -> u64 {
        // xorshift64: tie-breaking needs no more.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn schedule_next(&mut self) {
        let Some(key) = self.queue.pop() else {
            return;
        };
        let Some(pod) = self.pods.get(&key).cloned() else {
            return;
        };
        if node_name(&pod).is_some() || self.assumed.contains_key(&key) {
            return;
        }
        let pod_volumes = self.volumes.for_pod(&pod);
        let decision = {
            let (infos, _) = self.snapshot();
            let ctx = PodContext::new(&pod, infos).with_volumes(pod_volumes);
            let mut feasible = Vec::new();
            let mut failed: Vec<(usize, Vec<Reason>)> = Vec::new();
            for (i, node) in infos.iter().enumerate() {
                match ctx.filter(node) {
                    Ok(()) => feasible.push(node),
                    Err(reasons) => failed.push((i, reasons)),
                }
            }
            if feasible.is_empty() {
                Err(Self::post_filter(&ctx, infos, &failed))
            } else {
                let scores = ctx.score(&feasible);
                let best = scores.iter().copied().max().unwrap_or(0);
                let ties: Vec<&str> = feasible
                    .iter()
                    .zip(&scores)
                    .filter(|(_, s)| **s == best)
                    .map(|(n, _)| n.name())
                    .collect();
                Ok(ties.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            }
        };
        match decision {
            Ok(ties) => {
                let pick = (self.random() % ties.len().max(1) as u64) as usize;
                let Some(node) = ties.get(pick).cloned() else {
                    return;
                };
                self.assume_and_bind(key, pod, node);
            }
            Err((message, candidate)) => {
                if let Some(candidate) = candidate {
                    self.preempt(&pod, candidate);
                }
                self.unschedulable(key, pod, message)
            }
        }
    }

    /// After every filter failed: the message for the pod, and the victims to evict
    /// when preemption can make room (upstream's PostFilter).
    fn post_filter(
        ctx: &PodContext,
        infos: &[NodeInfo],
        failed: &[(usize, Vec<Reason>)],
    ) -> (String, Option<preemption::Candidate>) {
        let reasons: Vec<Vec<Reason>> = failed.iter().map(|(_, r)| r.clone()).collect();
        if infos.is_empty() {
            return (plugins::unschedulable_message(0, &reasons), None);
        }
        if let Err(why) = preemption::eligible(ctx.pod, infos) {
            let message = format!(
                "{} preemption: {why}",
                plugins::filter_message(infos.len(), &reasons)
            );
            return (message, None);
        }
        match preemption::select_candidate(ctx, infos, failed) {
            Some(candidate) => (
                plugins::filter_message(infos.len(), &reasons),
                Some(candidate),
            ),
            None => (plugins::unschedulable_message(infos.len(), &reasons), None),
        }
    }

    /// Deletes the victims and nominates their node for `pod`; the pod is retried when
    /// the victims' deletions show in the watch.
    fn preempt(&mut self, pod: &Arc<Pod>, candidate: preemption::Candidate) {
        let preemptor = pod.metadata.name.clone().unwrap_or_default();
        let preemptor_ns = pod.metadata.namespace.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        tracing::info!(
            pod = %format!("{preemptor_ns}/{preemptor}"),
            node = %candidate.node,
            victims = candidate.victims.len(),
            "preempting"
        );
        self.metrics
            .preemption_victims
            .inc_by(candidate.victims.len() as u64);
        let client = self.client.clone();
        let identity = self.config.identity.clone();
        let scheduler = self.config.scheduler_name.clone();
        tokio::spawn(async move {
            for victim in &candidate.victims {
                let ns = victim.metadata.namespace.clone().unwrap_or_default();
                let name = victim.metadata.name.clone().unwrap_or_default();
                let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
                // As upstream: the victim learns why before it goes.
                let condition = json!({"status": {"conditions": [{
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "PreemptionByScheduler",
                    "message": format!("{scheduler}: preempting to accommodate a higher priority pod"),
                    "lastTransitionTime": Time(jiff::Timestamp::now()),
                }]}});
                if let Err(e) = pods
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Strategic(&condition),
                    )
                    .await
                {
                    tracing::debug!(pod = %name, error = %e, "marking a preemption victim");
                }
                match pods.delete(&name, &Default::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => continue,
                    Err(e) => {
                        tracing::warn!(pod = %name, error = %e, "deleting a preemption victim");
                        continue;
                    }
                }
                let message = format!("Preempted by pod {uid} on node {}", candidate.node);
                let event = new_event(
                    victim,
                    "Normal",
                    "Preempted",
                    "Preempting",
                    &message,
                    &scheduler,
                    &identity,
                );
                if let Err(e) = Api::<Event>::namespaced(client.clone(), &ns)
                    .create(&PostParams::default(), &event)
                    .await
                {
                    tracing::debug!(pod = %name, error = %e, "writing the Preempted event");
                }
            }
            let nominate = json!({"status": {"nominatedNodeName": candidate.node}});
            if let Err(e) = Api::<Pod>::namespaced(client, &preemptor_ns)
                .patch_status(
                    &preemptor,
                    &PatchParams::default(),
                    &Patch::Merge(&nominate),
                )
                .await
            {
                tracing::debug!(pod = %preemptor, error = %e, "nominating a node");
            }
        });
    }

    fn assume_and_bind(&mut self, key: String, pod: Arc<Pod>, node: String) {
        self.assumed
            .insert(key.clone(), (node.clone(), Instant::now()));
        if let Some((infos, index)) = self.snapshot.as_mut() {
            if let Some(i) = index.get(&node) {
                infos[*i].add_pod(pod.clone());
            }
        }
        let client = self.client.clone();
        let slots = self.bind_slots.clone();
        let results = self.results.clone();
        let identity = self.config.identity.clone();
        let scheduler = self.config.scheduler_name.clone();
        tokio::spawn(async move {
            let _permit = slots.acquire_owned().await;
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let binding = json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            let started = std::time::Instant::now();
            let outcome = pods
                .create_subresource::<_, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await
                .map(|_| started.elapsed());
            let ok = outcome.is_ok();
            let _ = results.send(BindResult {
                key,
                node: node.clone(),
                outcome,
            });
            if ok {
                let message = format!("Successfully assigned {ns}/{name} to {node}");
                let event = new_event(
                    &pod,
                    "Normal",
                    "Scheduled",
                    "Binding",
                    &message,
                    &scheduler,
                    &identity,
                );
                if let Err(e) = Api::<Event>::namespaced(client, &ns)
                    .create(&PostParams::default(), &event)
                    .await
                {
                    tracing::debug!(pod = %name, error = %e, "writing the Scheduled event");
                }
            }
        });
    }

    fn on_bind_result(&mut self, res: BindResult) {
        match res.outcome {
            Ok(elapsed) => {
                self.metrics.scheduled.inc();
                self.metrics.binding_seconds.observe(elapsed.as_secs_f64());
                tracing::debug!(pod = %res.key, node = %res.node, "bound");
            }
            Err(e) => {
                self.metrics.binding_errors.inc();
                self.assumed.remove(&res.key);
                self.invalidate();
                let gone_or_bound =
                    matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409);
                tracing::warn!(pod = %res.key, node = %res.node, error = %e, "binding failed");
                if !gone_or_bound && self.pods.contains_key(&res.key) {
                    let message = format!("Binding rejected: {e}");
                    self.record_failure(&res.key, message);
                }
            }
        }
    }

    fn record_failure(&mut self, key: &str, message: String) -> (bool, Option<(String, i32)>) {
        let now = Instant::now();
        let generation = self.generation;
        let entry = self.failures.entry(key.to_string()).or_insert(Failure {
            attempts: 0,
            at: now,
            backoff_until: now,
            generation,
            message: String::new(),
            event: None,
            queued: false,
        });
        entry.queued = false;
        entry.attempts += 1;
        let backoff = INITIAL_BACKOFF
            .saturating_mul(1 << entry.attempts.saturating_sub(1).min(10))
            .min(MAX_BACKOFF);
        entry.at = now;
        entry.backoff_until = now + backoff;
        entry.generation = generation;
        let changed = entry.message != message;
        entry.message = message;
        if changed {
            entry.event = None;
        }
        (changed, entry.event.clone())
    }

    fn unschedulable(&mut self, key: String, pod: Arc<Pod>, message: String) {
        self.metrics.unschedulable.inc();
        tracing::info!(pod = %key, %message, "unschedulable");
        let (_, previous_event) = self.record_failure(&key, message.clone());
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        // The event this attempt writes: a new one, or the same one counted again.
        let (event_name, count) = match previous_event {
            Some((event_name, count)) => (event_name, count + 1),
            None => (event_name_for(&name), 1),
        };
        if let Some(f) = self.failures.get_mut(&key) {
            f.event = Some((event_name.clone(), count));
        }
        let condition_current = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
                    && c.message.as_deref() == Some(message.as_str())
            });
        let client = self.client.clone();
        let slots = self.bind_slots.clone();
        let identity = self.config.identity.clone();
        let scheduler = self.config.scheduler_name.clone();
        tokio::spawn(async move {
            let _permit = slots.acquire_owned().await;
            if !condition_current {
                let patch = json!({"status": {"conditions": [{
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastProbeTime": null,
                    "lastTransitionTime": Time(jiff::Timestamp::now()),
                }]}});
                if let Err(e) = Api::<Pod>::namespaced(client.clone(), &ns)
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await
                {
                    tracing::debug!(pod = %name, error = %e, "setting PodScheduled=False");
                }
            }
            let result = if count == 1 {
                let mut event = new_event(
                    &pod,
                    "Warning",
                    "FailedScheduling",
                    "Scheduling",
                    &message,
                    &scheduler,
                    &identity,
                );
                event.metadata.name = Some(event_name);
                Api::<Event>::namespaced(client, &ns)
                    .create(&PostParams::default(), &event)
                    .await
                    .map(|_| ())
            } else {
                events::count_repeat(&client, &ns, &event_name, count).await
            };
            if let Err(e) = result {
                tracing::debug!(pod = %name, error = %e, "writing the FailedScheduling event");
            }
        });
    }
}

fn event_name_for(pod: &str) -> String {
    events::event_name(pod, jiff::Timestamp::now())
}

/// An Event about `pod` as this scheduler records it, with upstream's `action`.
fn new_event(
    pod: &Pod,
    type_: &str,
    reason: &str,
    action: &str,
    message: &str,
    scheduler: &str,
    identity: &str,
) -> Event {
    let source = events::Source {
        component: scheduler,
        instance: identity,
        host: None,
    };
    let reference = ObjectReference {
        field_path: None,
        ..pod.object_ref(&())
    };
    let mut event = events::new_event(
        source,
        reference,
        type_,
        reason,
        message.to_string(),
        jiff::Timestamp::now(),
    );
    event.action = Some(action.into());
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_pops_higher_priority_first_then_in_order() {
        let mut q = Queue::default();
        q.push("a".into(), 0);
        q.push("b".into(), 10);
        q.push("c".into(), 0);
        q.push("a".into(), 0);
        q.push("d".into(), 10);
        q.remove("c");
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, ["b", "d", "a"]);
        assert!(q.is_empty());
    }

    #[test]
    fn failures_wait_for_a_change_or_the_long_retry() {
        let now = Instant::now();
        let f = Failure {
            attempts: 1,
            at: now,
            backoff_until: now + INITIAL_BACKOFF,
            generation: 4,
            message: String::new(),
            event: None,
            queued: false,
        };
        assert_eq!(f.due(4), now + UNSCHEDULABLE_RETRY);
        assert_eq!(f.due(5), now + INITIAL_BACKOFF);
    }
}
