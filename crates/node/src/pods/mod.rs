//! The kubelet core: runs the pods bound to this node through CRI and reports their
//! status, as upstream's kubelet does.
//!
//! Level-triggered: a watch (field selector `spec.nodeName=ME`) feeds a local cache, and
//! each pod has a worker that compares the pod with what the runtime shows (found by
//! the pod-UID label, so a restarted agent adopts what is already running) and acts,
//! once on every change and at least every second, so container exits are noticed.

pub(crate) mod env;
pub(crate) mod probe;
pub(crate) mod pull_secrets;
pub(crate) mod runtime;
pub(crate) mod status;
pub(crate) mod volumes;
mod worker;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::Notify;

use crate::cri::Cri;

/// How often each pod is looked at even when nothing in the API changed.
pub(crate) const RESYNC: Duration = Duration::from_secs(1);

/// How often every pod of the store is checked for a worker, and the runtime for
/// sandboxes of pods this node no longer has.
const ORPHAN_SCAN: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub(crate) struct PodsConfig {
    pub node_name: String,
    /// The node's InternalIP, reported as each pod's hostIP.
    pub host_ip: String,
    /// Where containerd's CRI plugin reads CNI configuration.
    pub cni_conf_dir: PathBuf,
    /// The agent's own state: pod logs, image tarballs, IPAM claims.
    pub data_dir: PathBuf,
    /// First restart delay of a crashing container, doubled up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// What pods' resolv.conf points at.
    pub cluster_dns: crate::dns::ClusterDns,
}

impl PodsConfig {
    fn log_root(&self) -> PathBuf {
        self.data_dir.join("pods")
    }

    /// The machine's own root for hostPath volumes (kept across pods).
    fn host_path_root(&self) -> PathBuf {
        self.data_dir.join("host")
    }

    /// Pods' volumes, one directory per pod UID, removed with the pod.
    fn volume_root(&self) -> PathBuf {
        self.data_dir.join("volumes")
    }
}

/// Runs pods until the task is aborted. Pods wait until the node has a podCIDR (its
/// CNI configuration) and the built-in images are imported; the caller's heartbeat does
/// not.
pub(crate) async fn run(client: kube::Client, cri: Cri, config: PodsConfig) {
    let images = tokio::spawn(import_builtins(cri.clone(), config.data_dir.join("images")));
    wait_for_pod_cidr(&client, &config).await;
    if let Err(e) = images.await {
        tracing::warn!(error = %e, "importing the built-in images stopped");
    }
    let cgroup_root = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| runtime::own_cgroup(&text))
        .unwrap_or_else(|| "/".into());
    let shared = Arc::new(worker::Shared {
        client: client.clone(),
        cri,
        config: config.clone(),
        cgroup_root,
        events: crate::events::Recorder::start(client.clone(), &config.node_name),
    });

    let pods: Api<Pod> = Api::all(client);
    let (reader, writer) = reflector::store();
    // The UIDs of pods the watch touched: only their workers are woken, so a burst of
    // pod events costs work per event, not per event and pod.
    let (touched, mut touched_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let selector = format!("spec.nodeName={}", config.node_name);
    let stream = reflector::reflector(
        writer,
        watcher(pods, watcher::Config::default().fields(&selector)),
    )
    .default_backoff()
    .touched_objects();
    let watch = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(pod) => {
                    if let Some(uid) = pod.metadata.uid {
                        let _ = touched.send(uid);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watching this node's pods"),
            }
        }
    });
    let _watch = AbortOnDrop(watch);
    reader.wait_until_ready().await.ok();

    let mut workers: HashMap<String, (tokio::task::JoinHandle<()>, Arc<Notify>)> = HashMap::new();
    let mut scan = tokio::time::interval(ORPHAN_SCAN);
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut pending = HashSet::new();
        let full = tokio::select! {
            uid = touched_rx.recv() => {
                let Some(uid) = uid else { return };
                pending.insert(uid);
                while let Ok(uid) = touched_rx.try_recv() {
                    pending.insert(uid);
                }
                false
            }
            _ = scan.tick() => true,
        };
        workers.retain(|_, (task, _)| !task.is_finished());
        let current = reader.state();
        for pod in &current {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            if !full && !pending.contains(&uid) {
                continue;
            }
            match workers.get(&uid) {
                Some((_, wake)) => wake.notify_one(),
                None => {
                    let wake = Arc::new(Notify::new());
                    let task = tokio::spawn(worker::run(
                        shared.clone(),
                        reader.clone(),
                        ObjectRef::from_obj(pod.as_ref()),
                        uid.clone(),
                        wake.clone(),
                    ));
                    workers.insert(uid, (task, wake));
                }
            }
        }
        // Pods gone from the store: their workers tear them down when woken.
        for uid in &pending {
            if let Some((_, wake)) = workers.get(uid) {
                wake.notify_one();
            }
        }
        if !full {
            continue;
        }
        let uids: HashSet<String> = current
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        // Sandboxes of pods this node no longer has (deleted while the agent was down).
        match worker::sandbox_uids(&shared.cri).await {
            Ok(found) => {
                for uid in found {
                    if !uids.contains(&uid) && !workers.contains_key(&uid) {
                        let shared = shared.clone();
                        let gone = uid.clone();
                        let task = tokio::spawn(async move {
                            worker::teardown(&shared, &gone, 2).await;
                        });
                        workers.insert(uid, (task, Arc::new(Notify::new())));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing pod sandboxes"),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn import_builtins(cri: Cri, dir: PathBuf) {
    let mut wait = Duration::from_millis(200);
    loop {
        match crate::images::ensure_builtins(&cri, &dir).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, retry_in = ?wait, "importing the built-in images"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

/// Waits until the control plane gives the Node a podCIDR, then writes the CNI
/// configuration for it.
async fn wait_for_pod_cidr(client: &kube::Client, config: &PodsConfig) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut said = false;
    loop {
        let cidr = match nodes.get_opt(&config.node_name).await {
            Ok(node) => node.and_then(|n| n.spec?.pod_cidr),
            Err(e) => {
                tracing::debug!(error = %e, "reading the Node for its podCIDR");
                None
            }
        };
        if let Some(text) = cidr {
            match text.parse() {
                Ok(cidr) => {
                    let ipam = config.data_dir.join("ipam");
                    match crate::cni::write(&config.cni_conf_dir, cidr, &ipam) {
                        Ok(_) => {
                            tracing::info!(pod_cidr = %cidr, "pod network configured");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, dir = %config.cni_conf_dir.display(), "writing the CNI configuration")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, pod_cidr = %text, "the Node's podCIDR is not an IPv4 network")
                }
            }
        } else if !said {
            tracing::info!("waiting for the control plane to assign this node a podCIDR");
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
