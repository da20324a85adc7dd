//! `korvet bench pods`: how fast pods start on real nodes, and how fast the registry
//! moves an image compared with Debian's `docker-registry` in the same run.
//!
//! Pod start latency is measured as upstream's pod-startup SLI: from the create call to
//! the moment a watch sees the pod Running, with the image already on the node. Pods are
//! created at a steady rate (as upstream's density tests do), then all at once, which
//! shows how many pod starts per second the nodes sustain.
//!
//! Registry throughput: one image of a single incompressible layer is pushed (POST, then
//! PUT of the whole layer, config and manifest) and pulled (manifest, config, layer) over
//! plain HTTP on loopback, by the same client, alternately against both registries; the
//! median of the rounds is reported.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http::{Method, StatusCode};
use k8s_openapi::api::core::v1::{Node, Pod};
use korvet_image::Digest;
use korvet_platform::RunningManagementPlane;
use korvet_registry::client::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use serde::Serialize;

use crate::clusters::{create_and_time_as, delete_and_wait, with_platform};

const CLUSTER: &str = "bench-pods";
const LABEL: &str = "korvet-bench";
const BENCH_TOKEN: &str = "bench-token";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Serialize, Clone, Debug)]
pub(crate) struct PodStartFigures {
    pub pods: usize,
    pub nodes: usize,
    /// Pods created per second; 0 means all at once.
    pub rate_per_second: f64,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
    /// Pods divided by the time from the first create call to the last pod Running.
    pub starts_per_second: f64,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct Throughput {
    pub push_mb_per_second: f64,
    pub pull_mb_per_second: f64,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct RegistryFigures {
    pub image_mb: usize,
    pub rounds: usize,
    pub korvet: Throughput,
    /// Debian's `docker-registry` (the CNCF Distribution registry).
    pub docker_registry: Throughput,
    /// Korvet divided by docker-registry.
    pub push_ratio: f64,
    pub pull_ratio: f64,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct PodBench {
    /// The steady series first, then all at once.
    pub pod_start: Vec<PodStartFigures>,
    pub registry: RegistryFigures,
}

pub struct PodBenchConfig {
    pub pods: usize,
    pub rate: f64,
    pub image_mb: usize,
    pub rounds: usize,
}

pub async fn run(json: bool, korvet: &Path, config: PodBenchConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.pods > 0 && config.image_mb > 0 && config.rounds > 0,
        "--pods, --image-mb and --rounds must be at least 1"
    );
    anyhow::ensure!(
        config.rate >= 0.0 && config.rate.is_finite(),
        "--rate must be 0 (all at once) or a positive number of pods per second"
    );
    eprintln!(
        "bench pods: registry, {} MB image, {} rounds",
        config.image_mb, config.rounds
    );
    let registry = registry_throughput(config.image_mb, config.rounds).await?;
    let pod_start = with_platform(korvet, async |server| {
        pod_start(server, config.pods, config.rate).await
    })
    .await?;
    let figures = PodBench {
        pod_start,
        registry,
    };
    crate::print_figures(json, "pods", &figures, goals(&figures), print_table)
}

fn goals(f: &PodBench) -> serde_json::Value {
    serde_json::json!({
        "pod start p99 under 1 s (steady series)": f.pod_start.first().is_some_and(|p| p.p99_seconds < 1.0),
        "registry push at least docker-registry's": f.registry.push_ratio >= 1.0,
        "registry pull at least docker-registry's": f.registry.pull_ratio >= 1.0,
    })
}

fn print_table(f: &PodBench) {
    println!("pod start (create -> Running seen by a watch, image on the node)");
    for p in &f.pod_start {
        let how = if p.rate_per_second > 0.0 {
            format!("{} per second", p.rate_per_second)
        } else {
            "all at once".to_string()
        };
        println!(
            "  {} pods on {} nodes, {how}: p50 {:.3} s   p99 {:.3} s   max {:.3} s   ({:.1} pods started per second)",
            p.pods, p.nodes, p.p50_seconds, p.p99_seconds, p.max_seconds, p.starts_per_second
        );
    }
    let r = &f.registry;
    println!(
        "registry, {} MB image, median of {} rounds (MB/s)",
        r.image_mb, r.rounds
    );
    println!("  {:<16} {:>10} {:>10}", "", "push", "pull");
    println!(
        "  {:<16} {:>10.1} {:>10.1}",
        "korvet", r.korvet.push_mb_per_second, r.korvet.pull_mb_per_second
    );
    println!(
        "  {:<16} {:>10.1} {:>10.1}",
        "docker-registry",
        r.docker_registry.push_mb_per_second,
        r.docker_registry.pull_mb_per_second
    );
    println!(
        "  {:<16} {:>10.2} {:>10.2}",
        "ratio", r.push_ratio, r.pull_ratio
    );
    println!("goals: {}", goals(f));
}

fn bench_pod(name: &str, node: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {LABEL: "start"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "sleep",
                "image": korvet_node::images::BUSYBOX_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"],
            }],
        },
    }))?)
}

fn running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Running")
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Waits until every pod in `names` satisfies `ok` and no other bench pod except the
/// warm-up ones exists (so an empty `names` waits for the series' pods to be gone).
async fn wait_pods(
    api: &Api<Pod>,
    names: &[String],
    timeout: Duration,
    ok: fn(&Pod) -> bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let pods = api.list(&ListParams::default().labels(LABEL)).await?;
        let mut done = 0;
        let mut others = 0;
        for pod in &pods.items {
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            if names.iter().any(|n| n == name) {
                done += usize::from(ok(pod));
            } else if !name.starts_with("warm-") {
                others += 1;
            }
        }
        if done == names.len() && others == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "after {timeout:?}: {done} of {} pods ready, {others} others left",
            names.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn pod_start(
    server: &RunningManagementPlane,
    pods: usize,
    rate: f64,
) -> anyhow::Result<Vec<PodStartFigures>> {
    let kubeconfig = std::fs::read_to_string(&server.api.kubeconfig)?;
    let client = korvet_apimachinery::client_from_kubeconfig_yaml(&kubeconfig).await?;
    eprintln!("bench pods: creating cluster {CLUSTER} (1 master + 2 medium nodes)");
    create_and_time_as(&client, CLUSTER, 1, 2, "medium", Duration::from_secs(120)).await?;
    let result = async {
        let tenant_config =
            korvet_platform::cluster_kubeconfig(&client, "default", CLUSTER).await?;
        let tenant = korvet_apimachinery::client_from_kubeconfig_yaml(&tenant_config).await?;
        let nodes: Vec<String> = Api::<Node>::all(tenant.clone())
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        anyhow::ensure!(!nodes.is_empty(), "the cluster has no nodes");
        let api: Api<Pod> = Api::namespaced(tenant.clone(), "default");

        // One pod per node first, so that images, CNI configuration and containerd's
        // caches are warm as the SLI assumes.
        let warm: Vec<String> = nodes.iter().map(|n| format!("warm-{n}")).collect();
        for (name, node) in warm.iter().zip(&nodes) {
            api.create(&PostParams::default(), &bench_pod(name, node)?)
                .await?;
        }
        wait_pods(&api, &warm, Duration::from_secs(120), running).await?;

        let mut series = Vec::new();
        let mut rates = vec![rate];
        if rate > 0.0 {
            rates.push(0.0);
        }
        for rate in rates {
            series.push(start_series(&api, &nodes, pods, rate).await?);
        }
        anyhow::Ok(series)
    }
    .await;
    eprintln!("bench pods: deleting the cluster");
    delete_and_wait(&client, &[CLUSTER.to_string()]).await?;
    result
}

/// Starts `pods` pods spread over `nodes` at `rate` per second (0: all at once), and
/// removes them again.
async fn start_series(
    api: &Api<Pod>,
    nodes: &[String],
    pods: usize,
    rate: f64,
) -> anyhow::Result<PodStartFigures> {
    let list = api.list(&ListParams::default().labels(LABEL)).await?;
    let version = list.metadata.resource_version.unwrap_or_default();
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = {
        let seen = seen.clone();
        let mut stream = api
            .watch(&WatchParams::default().labels(LABEL), &version)
            .await?
            .boxed();
        tokio::spawn(async move {
            while let Ok(Some(event)) = stream.try_next().await {
                if let WatchEvent::Added(pod) | WatchEvent::Modified(pod) = event {
                    if running(&pod) {
                        if let Some(name) = pod.metadata.name {
                            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                            seen.entry(name).or_insert_with(Instant::now);
                        }
                    }
                }
            }
        })
    };
    let watch = AbortOnDrop(watch);

    let how = if rate > 0.0 {
        format!("{rate} per second")
    } else {
        "all at once".to_string()
    };
    eprintln!("bench pods: {pods} pods on {} nodes, {how}", nodes.len());
    let prefix = if rate > 0.0 { "steady" } else { "burst" };
    let names: Vec<String> = (0..pods).map(|i| format!("{prefix}-{i}")).collect();
    let mut created = HashMap::new();
    let begin = Instant::now();
    for (i, name) in names.iter().enumerate() {
        if rate > 0.0 {
            let due = begin + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let pod = bench_pod(name, &nodes[i % nodes.len()])?;
        created.insert(name.clone(), Instant::now());
        api.create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {name}"))?;
    }
    let outcome = wait_pods(api, &names, Duration::from_secs(300), running).await;
    // The watch may trail the list by a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(watch);
    let (mut latencies, last_running): (Vec<f64>, Option<Instant>) = {
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        let latencies = names
            .iter()
            .filter_map(|n| Some(seen.get(n)?.duration_since(*created.get(n)?).as_secs_f64()))
            .collect();
        (latencies, seen.values().max().copied())
    };
    latencies.sort_by(f64::total_cmp);

    for name in &names {
        api.delete(name, &DeleteParams::default()).await?;
    }
    wait_pods(api, &[], Duration::from_secs(300), |_| false).await?;
    outcome?;
    anyhow::ensure!(
        latencies.len() == pods,
        "the watch saw {} of {pods} pods Running",
        latencies.len()
    );
    Ok(PodStartFigures {
        pods,
        nodes: nodes.len(),
        rate_per_second: rate,
        p50_seconds: percentile(&latencies, 50.0),
        p99_seconds: percentile(&latencies, 99.0),
        max_seconds: latencies.last().copied().unwrap_or(0.0),
        starts_per_second: last_running
            .map(|last| pods as f64 / last.duration_since(begin).as_secs_f64())
            .unwrap_or(0.0),
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Incompressible bytes, different for every `seed` (xorshift64*).
fn noise(len: usize, seed: u64) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

struct TestImage {
    layer: Bytes,
    layer_digest: Digest,
    config: Bytes,
    config_digest: Digest,
    manifest: Bytes,
}

fn test_image(mb: usize, seed: u64) -> anyhow::Result<TestImage> {
    let layer = noise(mb * 1024 * 1024, seed);
    let layer_digest = Digest::of(&layer);
    let config = Bytes::from(serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest.to_string()]},
        "config": {"Labels": {"seed": seed.to_string()}},
    }))?);
    let config_digest = Digest::of(&config);
    let manifest = Bytes::from(serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest.to_string(),
            "size": layer.len(),
        }],
    }))?);
    Ok(TestImage {
        layer,
        layer_digest,
        config,
        config_digest,
        manifest,
    })
}

/// Pushes a blob as most clients do: POST for an upload, then one PUT with the data.
async fn push_blob(
    client: &Client,
    repo: &str,
    digest: &Digest,
    data: Bytes,
) -> anyhow::Result<()> {
    let start = client
        .send_ok(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            Bytes::new(),
        )
        .await?;
    let location = start
        .header("location")
        .context("the registry gave no upload location")?;
    // Distribution answers with an absolute URL, Korvet with a path.
    let path = match location.find("://") {
        Some(scheme) => {
            let rest = &location[scheme + 3..];
            &rest[rest.find('/').unwrap_or(rest.len())..]
        }
        None => location,
    };
    let separator = if path.contains('?') { '&' } else { '?' };
    client
        .send_ok(
            Method::PUT,
            &format!("{path}{separator}digest={digest}"),
            &[("content-type", "application/octet-stream")],
            data,
        )
        .await?;
    Ok(())
}

async fn get_ok(client: &Client, path: &str, accept: &str) -> anyhow::Result<Bytes> {
    let reply = client
        .send(Method::GET, path, &[("accept", accept)], Bytes::new())
        .await?;
    anyhow::ensure!(
        reply.status == StatusCode::OK,
        "GET {path}: {}",
        reply.status
    );
    Ok(reply.body)
}

/// Seconds to push and to pull `image` as `repo:tag`; checks what comes back.
async fn push_pull(client: &Client, image: &TestImage, tag: &str) -> anyhow::Result<(f64, f64)> {
    let repo = "bench/image";
    let started = Instant::now();
    push_blob(client, repo, &image.layer_digest, image.layer.clone()).await?;
    push_blob(client, repo, &image.config_digest, image.config.clone()).await?;
    client
        .put_manifest(repo, tag, OCI_MANIFEST, image.manifest.clone())
        .await?;
    let push = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let manifest = get_ok(client, &format!("/v2/{repo}/manifests/{tag}"), OCI_MANIFEST).await?;
    let config = get_ok(
        client,
        &format!("/v2/{repo}/blobs/{}", image.config_digest),
        "*/*",
    )
    .await?;
    let layer = get_ok(
        client,
        &format!("/v2/{repo}/blobs/{}", image.layer_digest),
        "*/*",
    )
    .await?;
    let pull = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        manifest == image.manifest && config == image.config && layer == image.layer,
        "the pulled image differs from the pushed one"
    );
    Ok((push, pull))
}

/// Debian's registry, on a loopback port, storing under `dir`; ended when dropped.
struct DockerRegistry {
    child: tokio::process::Child,
    url: String,
}

impl DockerRegistry {
    async fn start(dir: &Path) -> anyhow::Result<DockerRegistry> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  cache:\n    blobdescriptor: inmemory\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.join("data").display()
            ),
        )?;
        let child = tokio::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting docker-registry (Debian package docker-registry; scripts/setup.sh installs it)")?;
        let registry = DockerRegistry {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let client = Client::new(&registry.url, None, None)?;
        let started = Instant::now();
        loop {
            if let Ok(reply) = client.send(Method::GET, "/v2/", &[], Bytes::new()).await {
                if reply.status == StatusCode::OK {
                    return Ok(registry);
                }
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(20),
                "docker-registry did not answer on {} within 20 s",
                registry.url
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 50.0)
}

async fn registry_throughput(image_mb: usize, rounds: usize) -> anyhow::Result<RegistryFigures> {
    let temp = tempfile::tempdir().context("creating a temporary directory")?;
    let ours = Arc::new(korvet_registry::server::Registry::open(
        &temp.path().join("korvet"),
    )?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    // Pushes to Korvet's registry need a user, as on the platform; docker-registry runs
    // without authentication, as Debian configures it.
    let tokens = korvet_registry::StaticTokens::new().with(BENCH_TOKEN, "bench");
    let auth = Arc::new(korvet_registry::TokenAuthenticator::new(Arc::new(tokens)));
    let handle = ours.serve(listener, None, auth)?;
    let korvet = Client::new(
        &format!("http://{}", handle.local_addr()),
        None,
        Some(BENCH_TOKEN),
    )?;
    let reference_dir = temp.path().join("docker-registry");
    std::fs::create_dir_all(&reference_dir)?;
    let reference = DockerRegistry::start(&reference_dir).await?;
    let docker = Client::new(&reference.url, None, None)?;

    let result = async {
        let mut times: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            // A new image each round, so no registry can answer from what it already has.
            let image = test_image(image_mb, round as u64 + 1)?;
            let tag = format!("round-{round}");
            for (which, client) in [&korvet, &docker].into_iter().enumerate() {
                times[which].push(push_pull(client, &image, &tag).await?);
            }
        }
        let throughput = |t: &[(f64, f64)]| Throughput {
            push_mb_per_second: image_mb as f64 / median(t.iter().map(|x| x.0).collect()),
            pull_mb_per_second: image_mb as f64 / median(t.iter().map(|x| x.1).collect()),
        };
        let korvet = throughput(&times[0]);
        let docker_registry = throughput(&times[1]);
        anyhow::Ok(RegistryFigures {
            image_mb,
            rounds,
            push_ratio: korvet.push_mb_per_second / docker_registry.push_mb_per_second,
            pull_ratio: korvet.pull_mb_per_second / docker_registry.pull_mb_per_second,
            korvet,
            docker_registry,
        })
    }
    .await;
    reference.stop().await;
    drop(handle);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&values, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn noise_differs_per_seed_and_has_the_length_asked() {
        let a = noise(1000, 1);
        assert_eq!(a.len(), 1000);
        assert_ne!(a, noise(1000, 2));
        assert_eq!(a, noise(1000, 1));
    }
}
