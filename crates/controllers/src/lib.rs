//! Kube-style reconcilers for built-in resources. Each is an API client over the `kube`
//! crate (watch → reconcile), never a reader of the store, so it works against any
//! Kubernetes API server.
//!
//! They run as upstream's kube-controller-manager does: every replica campaigns for one
//! Lease (`kube-system/kube-controller-manager`), and only the holder runs the
//! controllers, so that of three masters exactly one acts.

mod cron;
mod cronjob;
mod csr;
pub mod daemonset;
mod deployment;
mod disruption;
mod endpoints;
pub mod event_ttl;
mod garbage_collector;
mod history;
mod horizontal;
mod job;
pub mod metrics;
pub mod namespace;
pub mod node_ipam;
mod node_lifecycle;
mod owned;
mod pod_cache;
mod replicaset;
mod resource_quota;
mod service_accounts;
mod statefulset;
mod ttl_after_finished;
mod work_queue;
mod workload;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use korvet_apimachinery::{client_from_kubeconfig, leader};

pub use csr::{run_csr_controller, CsrError, CsrSigner};

/// What the controllers of one term of leadership share: the client and the one watch
/// of all pods.
struct Shared {
    client: kube::Client,
    pods: pod_cache::PodInformer,
}

/// One controller's loop: runs until its task is aborted.
type ControllerLoop =
    Arc<dyn Fn(&Shared) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A named controller loop for [`controller_loops`].
fn controller<F, Fut>(name: &'static str, run: F) -> (&'static str, ControllerLoop)
where
    F: Fn(kube::Client) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    (
        name,
        Arc::new(move |shared| Box::pin(run(shared.client.clone()))),
    )
}

/// A named controller loop that reads pods from the shared pod watch.
fn pod_controller<F, Fut>(name: &'static str, run: F) -> (&'static str, ControllerLoop)
where
    F: Fn(kube::Client, pod_cache::PodInformer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    (
        name,
        Arc::new(move |shared| Box::pin(run(shared.client.clone(), shared.pods.clone()))),
    )
}

/// How the controllers of one control plane run.
#[derive(Clone, Debug)]
pub struct ControllersConfig {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    /// Nodes get their podCIDR from this network.
    pub cluster_cidr: Option<node_ipam::Cidr>,
    /// Campaign for the controller-manager Lease as this identity; `None` runs the
    /// controllers at once (a single replica, tests).
    pub leader_identity: Option<String>,
}

/// The controllers of one cluster, running as tasks; dropping this stops them.
pub struct RunningControllers {
    task: tokio::task::JoinHandle<()>,
    election: Option<leader::LeaderElection>,
}

impl RunningControllers {
    /// Stops the controllers and hands the Lease back, so another replica takes over at
    /// once.
    pub async fn shutdown(self) {
        self.task.abort();
        if let Some(election) = &self.election {
            election.release().await;
        }
    }
}

impl Drop for RunningControllers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts every controller against the API server of `kubeconfig` (an identity allowed
/// to approve and sign CSRs, e.g. the admin's), signing with the given CA.
pub async fn spawn_all(
    kubeconfig: &std::path::Path,
    config: ControllersConfig,
) -> Result<RunningControllers, CsrError> {
    let client = client_from_kubeconfig(kubeconfig)
        .await
        .map_err(|e| CsrError::Request(e.to_string()))?;
    // Fail now, not in the task, if the CA is unusable.
    CsrSigner::new(&config.ca_cert_pem, &config.ca_key_pem)?;
    let loops = controller_loops(&config);
    let (election, is_leader) = match &config.leader_identity {
        Some(identity) => {
            let election = leader::spawn(
                client.clone(),
                leader::LeaderConfig::new("kube-controller-manager", identity),
            );
            let rx = election.is_leader.clone();
            (Some(election), rx)
        }
        None => (None, tokio::sync::watch::channel(true).1),
    };
    let task = tokio::spawn(run_while_leading(client, loops, is_leader));
    Ok(RunningControllers { task, election })
}

/// Every controller this crate has, in start order.
fn controller_loops(config: &ControllersConfig) -> Vec<(&'static str, ControllerLoop)> {
    let mut loops = Vec::new();
    if let Some(cidr) = config.cluster_cidr {
        loops.push(controller("node-ipam", move |client| {
            node_ipam::run_node_ipam(client, cidr)
        }));
    }
    loops.push(controller("garbage-collector", garbage_collector::run));
    loops.push(controller("namespace", namespace::run));
    loops.push(pod_controller("endpoint", endpoints::run_endpoints));
    loops.push(pod_controller(
        "endpointslice",
        endpoints::run_endpoint_slices,
    ));
    loops.push(controller("event-ttl", event_ttl::run));
    loops.push(controller(
        "serviceaccount",
        service_accounts::run_service_accounts,
    ));
    let ca = config.ca_cert_pem.clone();
    loops.push(controller("root-ca-cert-publisher", move |client| {
        service_accounts::run_root_ca_publisher(client, ca.clone())
    }));
    loops.push(pod_controller("replicaset", replicaset::run));
    loops.push(pod_controller("deployment", deployment::run));
    let (cert, key) = (config.ca_cert_pem.clone(), config.ca_key_pem.clone());
    loops.push(controller("csr", move |client| {
        let (cert, key) = (cert.clone(), key.clone());
        async move {
            if let Err(e) = run_csr_controller(client, &cert, &key).await {
                tracing::error!(error = %e, "CSR controller stopped");
            }
        }
    }));
    loops.push(pod_controller("job", job::run));
    loops.push(controller("cronjob", cronjob::run));
    loops.push(controller("ttl-after-finished", ttl_after_finished::run));
    loops.push(pod_controller("statefulset", statefulset::run));
    loops.push(pod_controller("daemonset", daemonset::run));
    loops.push(controller("node-lifecycle", node_lifecycle::run));
    loops.push(pod_controller(
        "taint-eviction",
        node_lifecycle::taint_eviction::run,
    ));
    loops.push(controller("horizontal-pod-autoscaler", horizontal::run));
    loops.push(pod_controller("resourcequota", resource_quota::run));
    loops.push(pod_controller("disruption", disruption::run));
    loops
}

/// Runs the controllers whenever this replica leads, and stops them when it stops
/// leading (upstream exits instead; a restart here costs only the informers' relist).
async fn run_while_leading(
    client: kube::Client,
    loops: Vec<(&'static str, ControllerLoop)>,
    mut is_leader: tokio::sync::watch::Receiver<bool>,
) {
    let mut running = Running(Vec::new());
    loop {
        let leading = *is_leader.borrow_and_update();
        if leading && running.0.is_empty() {
            tracing::info!("leading: starting the controllers");
            let (pods, watch_pods) = pod_cache::PodInformer::new(&client);
            let shared = Shared {
                client: client.clone(),
                pods,
            };
            running.0 = loops
                .iter()
                .map(|(name, run)| {
                    tracing::debug!(controller = name, "starting");
                    tokio::spawn(run(&shared))
                })
                .collect();
            running.0.push(tokio::spawn(watch_pods));
        } else if !leading && !running.0.is_empty() {
            tracing::info!("no longer leading: stopping the controllers");
            running.abort_all();
        }
        if is_leader.changed().await.is_err() {
            // Nobody campaigns any more (a single replica): keep what runs.
            std::future::pending::<()>().await;
        }
    }
}

/// The controllers' tasks; aborted with the task that started them.
struct Running(Vec<tokio::task::JoinHandle<()>>);

impl Running {
    fn abort_all(&mut self) {
        for task in self.0.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.abort_all();
    }
}
