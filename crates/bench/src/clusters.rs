//! `korvet bench clusters`: how fast clusters come up, and what they cost.
//!
//! A management plane runs in this process on a temporary data directory. For each
//! shape it measures, from the create call, the time until the cluster's API answers
//! (`GET /version` with the admin kubeconfig the platform publishes) and until every node
//! is Ready; then many clusters created at once; then the resident memory of each hosted
//! control-plane process and of each machine (its containerd and node agent).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use korvet_api::{Cluster, ClusterSpec, ControlPlaneSpec, InlineNodePool, PoolTemplate};
use korvet_platform::{ManagementPlane, RunningManagementPlane};
use kube::api::{Api, DeleteParams, PostParams};
use serde::Serialize;

#[derive(Serialize, Clone, Debug)]
pub(crate) struct CreateFigures {
    pub masters: i32,
    pub nodes: i32,
    /// From the create call until the cluster's API answers.
    pub api_seconds: f64,
    /// From the create call until every node is Ready.
    pub ready_seconds: f64,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct ConcurrentFigures {
    pub clusters: usize,
    pub nodes_each: i32,
    pub all_ready_seconds: f64,
    pub slowest_api_seconds: f64,
    pub delete_all_seconds: f64,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct MemoryFigures {
    /// `korvet control-plane` (API server and its controllers), MB resident.
    pub control_plane_mb: f64,
    /// Per master of a 3-master cluster: API server, etcd member; and its balancer.
    pub ha_master_mb: f64,
    pub ha_etcd_member_mb: f64,
    pub ha_lb_mb: f64,
    /// One machine: its containerd plus `korvet node`.
    pub node_sandbox_mb: f64,
    pub node_containerd_mb: f64,
    pub node_agent_mb: f64,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct ClusterBench {
    pub single: CreateFigures,
    pub ha: CreateFigures,
    pub concurrent: ConcurrentFigures,
    pub memory: MemoryFigures,
}

fn cluster(name: &str, masters: i32, nodes: i32, flavor: &str) -> anyhow::Result<Cluster> {
    let spec = ClusterSpec {
        control_plane: ControlPlaneSpec { replicas: masters },
        node_pools: vec![InlineNodePool {
            name: "workers".into(),
            pool: PoolTemplate {
                flavor: flavor.into(),
                zone: "zone-a".into(),
                replicas: nodes,
                ..Default::default()
            },
        }],
        ..serde_json::from_value(serde_json::json!({}))?
    };
    Ok(Cluster::new(name, spec))
}

fn is_ready(cluster: &Cluster, nodes: i32) -> bool {
    cluster.status.as_ref().is_some_and(|s| {
        s.nodes == format!("{nodes}/{nodes}")
            && korvet_api::find_condition(&s.conditions, korvet_api::cluster_condition::READY)
                .is_some_and(|c| c.is_true())
    })
}

/// Creates a cluster of `small` nodes and waits for its API, then for its nodes.
async fn create_and_time(
    client: &kube::Client,
    name: &str,
    masters: i32,
    nodes: i32,
    timeout: Duration,
) -> anyhow::Result<CreateFigures> {
    create_and_time_as(client, name, masters, nodes, "small", timeout).await
}

pub(crate) async fn create_and_time_as(
    client: &kube::Client,
    name: &str,
    masters: i32,
    nodes: i32,
    flavor: &str,
    timeout: Duration,
) -> anyhow::Result<CreateFigures> {
    let api: Api<Cluster> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    api.create(
        &PostParams::default(),
        &cluster(name, masters, nodes, flavor)?,
    )
    .await
    .with_context(|| format!("creating cluster {name}"))?;
    let mut api_seconds = None;
    loop {
        anyhow::ensure!(
            started.elapsed() < timeout,
            "cluster {name} was not ready within {timeout:?}"
        );
        if api_seconds.is_none() {
            if let Ok(text) = korvet_platform::cluster_kubeconfig(client, "default", name).await {
                if let Ok(tenant) = korvet_apimachinery::client_from_kubeconfig_yaml(&text).await {
                    if tenant.apiserver_version().await.is_ok() {
                        api_seconds = Some(started.elapsed().as_secs_f64());
                    }
                }
            }
        }
        if let Some(api_seconds) = api_seconds {
            if is_ready(&api.get(name).await?, nodes) {
                return Ok(CreateFigures {
                    masters,
                    nodes,
                    api_seconds,
                    ready_seconds: started.elapsed().as_secs_f64(),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn delete_and_wait(
    client: &kube::Client,
    names: &[String],
) -> anyhow::Result<f64> {
    let api: Api<Cluster> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    for name in names {
        api.delete(name, &DeleteParams::default()).await?;
    }
    loop {
        let mut left = 0;
        for name in names {
            if api.get_opt(name).await?.is_some() {
                left += 1;
            }
        }
        if left == 0 {
            return Ok(started.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "{left} clusters were not deleted in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn recorded_rss(processes: &Path, name: &str) -> f64 {
    let record: Option<serde_json::Value> =
        std::fs::read_to_string(processes.join(format!("{name}.json")))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
    record
        .and_then(|r| r["process"]["pid"].as_u64())
        .map(|pid| rss_mb(pid as u32))
        .unwrap_or(0.0)
}

/// (containerd, agent) resident MB of one machine, found through its cgroup.
fn machine_rss(server: &RunningManagementPlane, machine: &str) -> (f64, f64) {
    let Some((_, cgroup)) = server.provider.machine_sandbox(machine) else {
        return (0.0, 0.0);
    };
    let mut containerd = 0.0;
    let mut agent = 0.0;
    for pid in cgroup.pids() {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe.file_name().is_some_and(|n| n == "containerd") {
            containerd += rss_mb(pid);
        } else {
            agent += rss_mb(pid);
        }
    }
    (containerd, agent)
}

/// Measures cluster creation and memory with a management plane in this process that
/// runs `korvet` (this binary) as its control planes and node agents.
pub async fn run(
    json: bool,
    korvet: &Path,
    concurrent: usize,
    nodes_each: i32,
) -> anyhow::Result<()> {
    let figures = with_platform(korvet, async |server| {
        measure(server, concurrent, nodes_each).await
    })
    .await?;
    crate::print_figures(json, "clusters", &figures, goals(&figures), print_table)
}

/// Runs `bench` against a management plane in this process on a temporary data
/// directory, then removes every machine, control plane and network it made, also when
/// `bench` failed.
pub(crate) async fn with_platform<T, F>(korvet: &Path, bench: F) -> anyhow::Result<T>
where
    F: AsyncFnOnce(&RunningManagementPlane) -> anyhow::Result<T>,
{
    let temp = tempfile::tempdir().context("creating a temporary directory")?;
    let server = ManagementPlane {
        data_dir: temp.path().join("data"),
        listen: "127.0.0.1:0".parse()?,
        store: korvet_store::StoreLocation::Embedded,
        pool: korvet_platform::DEFAULT_POOL.parse()?,
        registry_port: 0,
        korvet_binary: korvet.to_path_buf(),
    }
    .start()
    .await?;
    let result = bench(&server).await;
    let provider = server.provider.clone();
    server.stop_with_clusters().await?;
    use korvet_cloud::Provider as _;
    for machine in provider.list_machines(None).await? {
        provider.delete_machine(&machine.name).await?;
    }
    provider.destroy_all().await?;
    result
}

async fn measure(
    server: &RunningManagementPlane,
    concurrent: usize,
    nodes_each: i32,
) -> anyhow::Result<ClusterBench> {
    let kubeconfig = std::fs::read_to_string(&server.api.kubeconfig)?;
    let client = korvet_apimachinery::client_from_kubeconfig_yaml(&kubeconfig).await?;
    let minute = Duration::from_secs(60);

    eprintln!("bench clusters: 1 master + 2 nodes");
    let single = create_and_time(&client, "bench-single", 1, 2, minute).await?;
    eprintln!("bench clusters: 3 masters + 3 nodes");
    let ha = create_and_time(&client, "bench-ha", 3, 3, minute).await?;

    let data = &server.data_dir;
    let single_dir = data.join("clusters/default.bench-single/processes");
    let ha_dir = data.join("clusters/default.bench-ha/processes");
    let machines: Api<korvet_api::Machine> = Api::namespaced(client.clone(), "default");
    let mut node_figures = Vec::new();
    for machine in machines.list(&Default::default()).await?.items {
        if machine.spec.cluster == "bench-single" {
            let name = format!("default.{}", kube::ResourceExt::name_any(&machine));
            node_figures.push(machine_rss(server, &name));
        }
    }
    let count = node_figures.len().max(1) as f64;
    let containerd = node_figures.iter().map(|f| f.0).sum::<f64>() / count;
    let agent = node_figures.iter().map(|f| f.1).sum::<f64>() / count;
    let memory = MemoryFigures {
        control_plane_mb: recorded_rss(&single_dir, "master-0"),
        ha_master_mb: (0..3)
            .map(|i| recorded_rss(&ha_dir, &format!("master-{i}")))
            .sum::<f64>()
            / 3.0,
        ha_etcd_member_mb: (0..3)
            .map(|i| recorded_rss(&ha_dir, &format!("etcd-{i}")))
            .sum::<f64>()
            / 3.0,
        ha_lb_mb: recorded_rss(&ha_dir, "lb"),
        node_sandbox_mb: containerd + agent,
        node_containerd_mb: containerd,
        node_agent_mb: agent,
    };
    delete_and_wait(
        &client,
        &["bench-single".to_string(), "bench-ha".to_string()],
    )
    .await?;

    eprintln!("bench clusters: {concurrent} clusters of 1 master + {nodes_each} nodes at once");
    let names: Vec<String> = (0..concurrent).map(|i| format!("bench-many-{i}")).collect();
    let started = Instant::now();
    let results = futures::future::join_all(
        names
            .iter()
            .map(|name| create_and_time(&client, name, 1, nodes_each, Duration::from_secs(300))),
    )
    .await;
    let all_ready_seconds = started.elapsed().as_secs_f64();
    let figures = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let slowest_api_seconds = figures.iter().map(|f| f.api_seconds).fold(0.0, f64::max);
    eprintln!("bench clusters: deleting them at once");
    let delete_all_seconds = delete_and_wait(&client, &names).await?;
    Ok(ClusterBench {
        single,
        ha,
        concurrent: ConcurrentFigures {
            clusters: concurrent,
            nodes_each,
            all_ready_seconds,
            slowest_api_seconds,
            delete_all_seconds,
        },
        memory,
    })
}

fn goals(figures: &ClusterBench) -> serde_json::Value {
    serde_json::json!({
        "1 master + 2 nodes Ready under 10 s": figures.single.ready_seconds < 10.0,
        "3 masters + 3 nodes Ready under 20 s": figures.ha.ready_seconds < 20.0,
        "hosted control plane under 40 MB": figures.memory.control_plane_mb < 40.0,
    })
}

fn print_table(f: &ClusterBench) {
    println!("cluster creation (from the create call)");
    println!(
        "  {:<24} {:>10} {:>12}",
        "shape", "API (s)", "all Ready (s)"
    );
    for c in [&f.single, &f.ha] {
        println!(
            "  {:<24} {:>10.2} {:>12.2}",
            format!("{} master(s) + {} nodes", c.masters, c.nodes),
            c.api_seconds,
            c.ready_seconds
        );
    }
    println!(
        "  {} clusters of 1 master + {} nodes at once: all Ready in {:.2} s (slowest API {:.2} s); deleted in {:.2} s",
        f.concurrent.clusters,
        f.concurrent.nodes_each,
        f.concurrent.all_ready_seconds,
        f.concurrent.slowest_api_seconds,
        f.concurrent.delete_all_seconds
    );
    let m = &f.memory;
    println!("resident memory (MB)");
    println!(
        "  hosted control plane (korvet control-plane, 1 master): {:.1}",
        m.control_plane_mb
    );
    println!(
        "  3 masters, per master: API server {:.1}, etcd member {:.1}; API balancer {:.1}",
        m.ha_master_mb, m.ha_etcd_member_mb, m.ha_lb_mb
    );
    println!(
        "  node sandbox: {:.1} (containerd {:.1}, korvet node {:.1})",
        m.node_sandbox_mb, m.node_containerd_mb, m.node_agent_mb
    );
    println!("goals: {}", goals(f));
}
