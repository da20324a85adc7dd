//! `korvet bench workloads`: the workload controllers and the scheduler at work.
//!
//! - scheduler throughput: pods bound per second over kwok-style nodes (the scheduler
//!   benchmark of `korvet bench scheduler`);
//! - on a real cluster (1 master, 2 nodes): how fast the controllers react, as seen by
//!   one watching client: Deployment created → its ReplicaSet created, ReplicaSet
//!   created → its first pod created, Job created → its pod created (p50/p99 over 200
//!   samples each by default; the goal is 100 ms). The samples' pods stay Pending (no
//!   scheduler takes them), so the figures are the controllers' and the API's, not those
//!   of nodes busy starting hundreds of containers on the same cores;
//! - how long a 100-replica Deployment takes to become fully available, and a rolling
//!   update of it (default 25 % surge and unavailability) to complete.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use korvet_platform::RunningManagementPlane;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde::Serialize;

use crate::clusters::{create_and_time_as, delete_and_wait, with_platform};

const CLUSTER: &str = "bench-workloads";
const NAMESPACE: &str = "default";
const LABEL: &str = "korvet-bench-workloads";

pub struct WorkloadBenchConfig {
    /// Deployments created one by one for the reaction times.
    pub samples: usize,
    /// Replicas of the big Deployment.
    pub replicas: i32,
    pub scheduler_pods: usize,
    pub scheduler_nodes: usize,
}

#[derive(Serialize, Clone, Debug)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct WorkloadFigures {
    pub scheduler: crate::scheduler::BenchFigures,
    pub deployment_to_replica_set: Latency,
    pub replica_set_to_first_pod: Latency,
    pub job_to_first_pod: Latency,
    pub replicas: i32,
    /// Create call to every replica available.
    pub deployment_available_seconds: f64,
    /// `set image` to every replica updated and available, no old pod left.
    pub rolling_update_seconds: f64,
}

pub async fn run(json: bool, korvet: &Path, config: WorkloadBenchConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.samples > 0 && config.replicas > 0,
        "--samples and --replicas must be at least 1"
    );
    eprintln!(
        "bench workloads: scheduler, {} pods over {} kwok nodes",
        config.scheduler_pods, config.scheduler_nodes
    );
    let scheduler = crate::scheduler::measure(crate::scheduler::BenchConfig {
        pods: config.scheduler_pods,
        nodes: config.scheduler_nodes,
        work_dir: None,
    })
    .await
    .context("scheduler benchmark failed")?;
    let figures = with_platform(korvet, async |server| {
        on_cluster(server, scheduler, &config).await
    })
    .await?;
    crate::print_figures(json, "workloads", &figures, goals(&figures), print_table)
}

fn goals(f: &WorkloadFigures) -> serde_json::Value {
    serde_json::json!({
        "scheduler at least 500 pods/s": f.scheduler.pods_per_second >= 500.0,
        "Deployment -> ReplicaSet p99 under 100 ms": f.deployment_to_replica_set.p99_ms < 100.0,
        "ReplicaSet -> first pod p99 under 100 ms": f.replica_set_to_first_pod.p99_ms < 100.0,
        "Job -> first pod p99 under 100 ms": f.job_to_first_pod.p99_ms < 100.0,
    })
}

fn print_table(f: &WorkloadFigures) {
    println!(
        "scheduler: {} pods over {} kwok nodes: {:.0} pods bound per second",
        f.scheduler.pods, f.scheduler.nodes, f.scheduler.pods_per_second
    );
    println!("controller reactions (seen by one watching client; goal 100 ms)");
    for (what, l) in [
        (
            "Deployment created -> ReplicaSet created",
            &f.deployment_to_replica_set,
        ),
        (
            "ReplicaSet created -> first pod created",
            &f.replica_set_to_first_pod,
        ),
        ("Job created -> first pod created", &f.job_to_first_pod),
    ] {
        println!(
            "  {what:<42} p50 {:>7.1} ms   p99 {:>7.1} ms   max {:>7.1} ms   ({} samples)",
            l.p50_ms, l.p99_ms, l.max_ms, l.samples
        );
    }
    println!(
        "{}-replica Deployment on 2 real nodes: fully available in {:.2} s",
        f.replicas, f.deployment_available_seconds
    );
    println!(
        "  rolling update (25% surge, 25% unavailable): {:.2} s",
        f.rolling_update_seconds
    );
    println!("goals: {}", goals(f));
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn latency(mut values: Vec<f64>) -> Latency {
    values.sort_by(f64::total_cmp);
    Latency {
        samples: values.len(),
        p50_ms: percentile(&values, 50.0),
        p99_ms: percentile(&values, 99.0),
        max_ms: values.last().copied().unwrap_or(0.0),
    }
}

/// Pods of the reaction samples name a scheduler that does not exist, so they stay
/// Pending: the samples measure the controllers, not 200 containers starting on the
/// same cores (which is what the 100-replica Deployment measures).
const NO_SCHEDULER: &str = "korvet-bench-none";

fn deployment(name: &str, replicas: i32, image: &str) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {LABEL: "true"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, LABEL: "true"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "main",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["sleep", "3600"],
                    }],
                },
            },
        },
    }))?)
}

/// A Job of one pod that stays Pending (see [`NO_SCHEDULER`]).
fn job(name: &str) -> anyhow::Result<Job> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {LABEL: "true"}},
        "spec": {"template": {
            "metadata": {"labels": {LABEL: "true"}},
            "spec": {
                "restartPolicy": "Never",
                "schedulerName": NO_SCHEDULER,
                "containers": [{"name": "main", "image": korvet_node_busybox(),
                                "command": ["true"]}],
            },
        }},
    }))?)
}

/// When the bench's watches first saw each object, by name.
#[derive(Default)]
struct Seen {
    replica_sets: HashMap<String, (Instant, String)>,
    pods: HashMap<String, Instant>,
}

/// Records when ReplicaSets (by owner Deployment) and first pods (by owner ReplicaSet
/// or Job) of the bench appear.
fn watch_creations(tenant: kube::Client, seen: Arc<Mutex<Seen>>) -> tokio::task::JoinHandle<()> {
    let config = watcher::Config::default().labels(LABEL);
    let sets = watcher(
        Api::<ReplicaSet>::namespaced(tenant.clone(), NAMESPACE),
        config.clone(),
    )
    .default_backoff()
    .applied_objects()
    .map(|rs| rs.map(Created::Set));
    let pods = watcher(Api::<Pod>::namespaced(tenant, NAMESPACE), config)
        .default_backoff()
        .applied_objects()
        .map(|p| p.map(Created::Pod));
    tokio::spawn(async move {
        let both = futures::stream::select(sets, pods);
        futures::pin_mut!(both);
        while let Some(event) = both.next().await {
            let now = Instant::now();
            let Ok(event) = event else { continue };
            let Ok(mut seen) = seen.lock() else { return };
            match event {
                Created::Set(rs) => {
                    if let Some(owner) = rs.owner_references().first() {
                        seen.replica_sets
                            .entry(owner.name.clone())
                            .or_insert((now, rs.name_any()));
                    }
                }
                Created::Pod(pod) => {
                    if let Some(owner) = pod.owner_references().first() {
                        seen.pods.entry(owner.name.clone()).or_insert(now);
                    }
                }
            }
        }
    })
}

enum Created {
    Set(ReplicaSet),
    Pod(Pod),
}

async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    while !check().await? {
        anyhow::ensure!(
            started.elapsed() < timeout,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Every replica of `name` updated and available, and nothing else left.
async fn rolled_out(api: &Api<Deployment>, name: &str, replicas: i32) -> anyhow::Result<bool> {
    let d = api.get(name).await?;
    let Some(s) = d.status.as_ref() else {
        return Ok(false);
    };
    Ok(s.observed_generation >= d.metadata.generation
        && s.updated_replicas == Some(replicas)
        && s.available_replicas == Some(replicas)
        && s.replicas == Some(replicas))
}

async fn on_cluster(
    server: &RunningManagementPlane,
    scheduler: crate::scheduler::BenchFigures,
    config: &WorkloadBenchConfig,
) -> anyhow::Result<WorkloadFigures> {
    let kubeconfig = std::fs::read_to_string(&server.api.kubeconfig)?;
    let client = korvet_apimachinery::client_from_kubeconfig_yaml(&kubeconfig).await?;
    eprintln!("bench workloads: creating cluster {CLUSTER} (1 master + 2 medium nodes)");
    create_and_time_as(&client, CLUSTER, 1, 2, "medium", Duration::from_secs(120)).await?;
    let result = async {
        let tenant_config =
            korvet_platform::cluster_kubeconfig(&client, "default", CLUSTER).await?;
        let tenant = korvet_apimachinery::client_from_kubeconfig_yaml(&tenant_config).await?;
        let deployments: Api<Deployment> = Api::namespaced(tenant.clone(), NAMESPACE);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let watch = watch_creations(tenant.clone(), seen.clone());
        let _stop_watch = AbortOnDrop(watch);
        // Let the watches start before the first sample.
        tokio::time::sleep(Duration::from_millis(500)).await;

        eprintln!("bench workloads: {} Deployments one by one", config.samples);
        let samples_started = Instant::now();
        let (mut to_rs, mut to_pod) = (Vec::new(), Vec::new());
        for i in 0..config.samples {
            let name = format!("react-{i}");
            let started = Instant::now();
            let mut sample = deployment(&name, 1, korvet_node_busybox())?;
            if let Some(pod) = sample.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
                pod.scheduler_name = Some(NO_SCHEDULER.into());
            }
            deployments.create(&PostParams::default(), &sample).await?;
            let deadline = started + Duration::from_secs(30);
            let (rs_at, pod_at) = loop {
                let found = {
                    let seen = seen
                        .lock()
                        .map_err(|_| anyhow::anyhow!("watch state poisoned"))?;
                    seen.replica_sets
                        .get(&name)
                        .and_then(|(rs_at, rs)| Some((*rs_at, *seen.pods.get(rs)?)))
                };
                if let Some(found) = found {
                    break found;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{name}: no ReplicaSet with a pod within 30 s"
                );
                // Polling the watch's record: at most 1 ms on top of each figure.
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            to_rs.push(rs_at.duration_since(started).as_secs_f64() * 1000.0);
            to_pod.push(pod_at.duration_since(rs_at).as_secs_f64() * 1000.0);
        }

        eprintln!("bench workloads: {} Jobs one by one", config.samples);
        let jobs: Api<Job> = Api::namespaced(tenant.clone(), NAMESPACE);
        let mut job_to_pod = Vec::new();
        for i in 0..config.samples {
            let name = format!("react-job-{i}");
            let started = Instant::now();
            jobs.create(&PostParams::default(), &job(&name)?).await?;
            let deadline = started + Duration::from_secs(30);
            let pod_at = loop {
                let found = {
                    let seen = seen
                        .lock()
                        .map_err(|_| anyhow::anyhow!("watch state poisoned"))?;
                    seen.pods.get(&name).copied()
                };
                if let Some(found) = found {
                    break found;
                }
                anyhow::ensure!(Instant::now() < deadline, "{name}: no pod within 30 s");
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            job_to_pod.push(pod_at.duration_since(started).as_secs_f64() * 1000.0);
        }
        eprintln!(
            "bench workloads: samples took {:.1} s",
            samples_started.elapsed().as_secs_f64()
        );
        for i in 0..config.samples {
            jobs.delete(&format!("react-job-{i}"), &DeleteParams::background())
                .await?;
        }
        for i in 0..config.samples {
            deployments
                .delete(&format!("react-{i}"), &DeleteParams::foreground())
                .await?;
        }

        let replicas = config.replicas;
        eprintln!("bench workloads: a {replicas}-replica Deployment");
        let started = Instant::now();
        deployments
            .create(
                &PostParams::default(),
                &deployment("big", replicas, korvet_node_busybox())?,
            )
            .await?;
        wait_until(
            Duration::from_secs(600),
            "the big Deployment available",
            || rolled_out(&deployments, "big", replicas),
        )
        .await?;
        let available = started.elapsed().as_secs_f64();

        eprintln!("bench workloads: rolling update of {replicas} replicas");
        let started = Instant::now();
        let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [
            {"name": "main", "image": "korvet.local/pause:latest"}
        ]}}}});
        deployments
            .patch("big", &PatchParams::default(), &Patch::Strategic(patch))
            .await?;
        wait_until(Duration::from_secs(600), "the rolling update", || {
            rolled_out(&deployments, "big", replicas)
        })
        .await?;
        let rolling = started.elapsed().as_secs_f64();
        deployments
            .delete("big", &DeleteParams::background())
            .await?;
        anyhow::Ok(WorkloadFigures {
            scheduler,
            deployment_to_replica_set: latency(to_rs),
            replica_set_to_first_pod: latency(to_pod),
            job_to_first_pod: latency(job_to_pod),
            replicas,
            deployment_available_seconds: available,
            rolling_update_seconds: rolling,
        })
    }
    .await;
    eprintln!("bench workloads: deleting the cluster");
    delete_and_wait(&client, &[CLUSTER.to_string()]).await?;
    result
}

fn korvet_node_busybox() -> &'static str {
    "korvet.local/busybox:latest"
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let l = latency(vec![5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(
            (l.p50_ms, l.p99_ms, l.max_ms, l.samples),
            (3.0, 5.0, 5.0, 5)
        );
    }
}
