//! The benchmark run: an API server on the embedded store in this process, Nodes
//! registered without agents, pending pods, and the scheduler binding them.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use korvet_apiserver::launch::{self, ApiServerConfig};
use korvet_scheduler::kwok::{kwok_node, node_status, pending_pod, register_node};
use korvet_scheduler::SchedulerConfig;
use kube::api::{Api, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde::Serialize;

#[derive(Clone, Debug)]
pub(crate) struct BenchConfig {
    pub pods: usize,
    pub nodes: usize,
    /// Directory for the API server's files (default: a temporary directory).
    pub work_dir: Option<PathBuf>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            pods: 1000,
            nodes: 100,
            work_dir: None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct BenchFigures {
    pub pods: usize,
    pub nodes: usize,
    /// Creating the pending pods (32 requests in flight), before the scheduler starts.
    pub create_seconds: f64,
    /// From the scheduler's start (incl. its initial list) to the last pod bound.
    pub schedule_seconds: f64,
    /// Until the last `Scheduled` Event was written too.
    pub with_events_seconds: f64,
    pub pods_per_second: f64,
    /// The most pods any node got, and the fewest (spreading).
    pub max_pods_per_node: usize,
    pub min_pods_per_node: usize,
    pub binding_errors: u64,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    #[error("starting the API server: {0}")]
    Launch(#[from] korvet_apiserver::launch::LaunchError),
    #[error("creating a temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error("building a client: {0}")]
    Client(#[from] korvet_apimachinery::ClientError),
    #[error("API request failed: {0}")]
    Api(#[from] kube::Error),
    #[error("only {bound} of {pods} pods were bound after {seconds} s")]
    Timeout {
        bound: usize,
        pods: usize,
        seconds: u64,
    },
}

/// Measures and prints scheduler throughput: `pods` pending pods over `nodes` nodes.
pub async fn run(json: bool, pods: usize, nodes: usize) -> anyhow::Result<()> {
    let figures = measure(BenchConfig {
        pods,
        nodes,
        work_dir: None,
    })
    .await
    .context("scheduler benchmark failed")?;
    let goals = serde_json::json!({
        "pods_per_second": {"goal": 500, "met": figures.pods_per_second >= 500.0},
    });
    crate::print_figures(json, "figures", &figures, goals, print_table)
}

fn print_table(figures: &BenchFigures) {
    println!(
        "scheduler: {} pods over {} kwok nodes",
        figures.pods, figures.nodes
    );
    println!(
        "  created pending pods in   {:>8.2} s",
        figures.create_seconds
    );
    println!(
        "  scheduled and bound all in {:>7.2} s",
        figures.schedule_seconds
    );
    println!(
        "  ... and their Events in   {:>8.2} s",
        figures.with_events_seconds
    );
    println!(
        "  throughput                {:>8.0} pods/s (goal >= 500)",
        figures.pods_per_second
    );
    println!(
        "  pods per node             {} to {}; binding errors {}",
        figures.min_pods_per_node, figures.max_pods_per_node, figures.binding_errors
    );
}

pub(crate) async fn measure(config: BenchConfig) -> Result<BenchFigures, BenchError> {
    let temp = match &config.work_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().map_err(BenchError::TempDir)?),
    };
    let dir = match (&config.work_dir, &temp) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => PathBuf::from("."),
    };
    let server = launch::start(ApiServerConfig {
        data_dir: dir.join("control-plane"),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        store: korvet_store::StoreLocation::Embedded,
        extra_hosts: Vec::new(),
        token_auth_file: None,
        cluster_name: "bench".into(),
        pki_dir: None,
        admission: Vec::new(),
        crds: Vec::new(),
        service_cidr: None,
    })
    .await?;
    let client = korvet_apimachinery::client_from_kubeconfig(&server.kubeconfig).await?;

    futures::stream::iter(0..config.nodes)
        .map(|i| {
            let client = client.clone();
            async move {
                let node = kwok_node(
                    &format!("kwok-{i:04}"),
                    &format!("zone-{}", i % 3),
                    Vec::new(),
                );
                register_node(&client, node, node_status("32", "128Gi", "110")).await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let created = Instant::now();
    let owner = OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: "bench".into(),
        uid: "0b7c2d7e-0000-4000-8000-000000000001".into(),
        controller: Some(true),
        block_owner_deletion: None,
    };
    futures::stream::iter(0..config.pods)
        .map(|i| {
            let pods = pods.clone();
            let owner = owner.clone();
            async move {
                let mut pod = pending_pod(
                    &format!("bench-{i:05}"),
                    "100m",
                    "128Mi",
                    &[("app", "bench")],
                );
                pod.metadata.owner_references = Some(vec![owner]);
                pods.create(&PostParams::default(), &pod).await.map(|_| ())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;
    let create_seconds = created.elapsed().as_secs_f64();

    // Count bindings from a watch started before the scheduler.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let counter = tokio::spawn({
        let pods = pods.clone();
        async move {
            let stream = watcher(pods, watcher::Config::default())
                .default_backoff()
                .applied_objects();
            futures::pin_mut!(stream);
            while let Some(Ok(pod)) = stream.next().await {
                let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
                if let Some(node) = node.filter(|n| !n.is_empty()) {
                    let _ = tx.send((
                        pod.metadata.name.clone().unwrap_or_default(),
                        node.to_string(),
                    ));
                }
            }
        }
    });
    let started = Instant::now();
    let scheduler = korvet_scheduler::spawn(
        client.clone(),
        SchedulerConfig {
            leader_election: None,
            ..SchedulerConfig::new("bench")
        },
    );
    let mut bound: HashSet<String> = HashSet::new();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let limit = Duration::from_secs(300);
    while bound.len() < config.pods {
        match tokio::time::timeout_at((started + limit).into(), rx.recv()).await {
            Ok(Some((pod, node))) => {
                if bound.insert(pod) {
                    *per_node.entry(node).or_default() += 1;
                }
            }
            _ => {
                counter.abort();
                return Err(BenchError::Timeout {
                    bound: bound.len(),
                    pods: config.pods,
                    seconds: limit.as_secs(),
                });
            }
        }
    }
    let schedule_seconds = started.elapsed().as_secs_f64();
    counter.abort();
    scheduler.wait_idle().await;
    let with_events_seconds = started.elapsed().as_secs_f64();
    let binding_errors = scheduler.metrics.binding_errors.get();
    drop(scheduler);
    drop(server);
    Ok(BenchFigures {
        pods: config.pods,
        nodes: config.nodes,
        create_seconds,
        schedule_seconds,
        with_events_seconds,
        pods_per_second: config.pods as f64 / schedule_seconds.max(1e-9),
        max_pods_per_node: per_node.values().copied().max().unwrap_or(0),
        min_pods_per_node: if per_node.len() < config.nodes {
            0
        } else {
            per_node.values().copied().min().unwrap_or(0)
        },
        binding_errors,
    })
}
