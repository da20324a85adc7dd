//! `korvet bench services`: the service proxy at work.
//!
//! - nftables update time: many Services with their endpoints rendered by the node
//!   agent's proxy and applied into a throwaway network namespace, then single-Service
//!   changes applied one by one (the proxy's incremental transactions);
//! - on a real cluster (1 master, 2 nodes): the time from an EndpointSlice change (the
//!   API call returning) to new connections through the ClusterIP reaching the new
//!   endpoint, seen by a client in node 1's network namespace (as a hostNetwork pod)
//!   whose server pods run on node 2;
//! - a bulk TCP transfer (an HTTP GET of a file) from that client through the ClusterIP
//!   and directly to the pod's IP, alternating, best of several rounds each: the ratio
//!   is what the proxy costs.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use korvet_platform::RunningManagementPlane;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::Serialize;

use crate::clusters::{create_and_time_as, delete_and_wait, with_platform};
use crate::workloads::{latency, Latency};

const CLUSTER: &str = "bench-services";
const NAMESPACE: &str = "default";
const SERVICE: &str = "bench-flip";
const SERVER_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;

pub struct ServiceBenchConfig {
    /// EndpointSlice changes timed on the cluster.
    pub samples: usize,
    /// Services (and endpoints each) for the nftables update time.
    pub services: usize,
    pub endpoints_per_service: usize,
    /// Single-Service changes applied after the full table.
    pub updates: usize,
    /// Size of the bulk transfer, MiB.
    pub transfer_mib: u64,
    /// Rounds of the bulk transfer per path.
    pub rounds: usize,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct NftFigures {
    pub services: usize,
    pub endpoints: usize,
    /// The whole table in one transaction.
    pub full_apply_ms: f64,
    /// One Service's endpoints changed, as the agent applies it.
    pub update: Latency,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct ServiceFigures {
    pub nft: NftFigures,
    /// EndpointSlice written → new connections reach the new endpoint.
    pub endpoint_change: Latency,
    pub transfer_mib: u64,
    pub cluster_ip_mib_per_second: f64,
    pub direct_mib_per_second: f64,
    /// ClusterIP over direct (1.0: the proxy costs nothing).
    pub ratio: f64,
}

pub async fn run(json: bool, korvet: &Path, config: ServiceBenchConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.samples > 0 && config.services > 0 && config.rounds > 0 && config.transfer_mib > 0,
        "--samples, --services, --rounds and --transfer-mib must be at least 1"
    );
    eprintln!(
        "bench services: nftables, {} services x {} endpoints",
        config.services, config.endpoints_per_service
    );
    let nft = crate::services_nft::measure(
        config.services,
        config.endpoints_per_service,
        config.updates,
    )
    .context("nftables update benchmark failed")?;
    let figures = with_platform(korvet, async |server| {
        on_cluster(server, nft, &config).await
    })
    .await?;
    crate::print_figures(json, "services", &figures, goals(&figures), print_table)
}

fn goals(f: &ServiceFigures) -> serde_json::Value {
    serde_json::json!({
        "EndpointSlice change in effect p99 under 100 ms": f.endpoint_change.p99_ms < 100.0,
        "ClusterIP throughput at least 0.95 of direct": f.ratio >= 0.95,
    })
}

fn print_table(f: &ServiceFigures) {
    println!(
        "nftables: {} services, {} endpoints: whole table {:.1} ms; one service changed: p50 {:.2} ms, p99 {:.2} ms ({} samples)",
        f.nft.services,
        f.nft.endpoints,
        f.nft.full_apply_ms,
        f.nft.update.p50_ms,
        f.nft.update.p99_ms,
        f.nft.update.samples
    );
    println!(
        "EndpointSlice change -> traffic follows: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        f.endpoint_change.p50_ms,
        f.endpoint_change.p99_ms,
        f.endpoint_change.max_ms,
        f.endpoint_change.samples
    );
    println!(
        "bulk transfer of {} MiB: ClusterIP {:.0} MiB/s, direct {:.0} MiB/s, ratio {:.3}",
        f.transfer_mib, f.cluster_ip_mib_per_second, f.direct_mib_per_second, f.ratio
    );
    println!("goals: {}", goals(f));
}

async fn on_cluster(
    server: &RunningManagementPlane,
    nft: NftFigures,
    config: &ServiceBenchConfig,
) -> anyhow::Result<ServiceFigures> {
    let kubeconfig = std::fs::read_to_string(&server.api.kubeconfig)?;
    let client = korvet_apimachinery::client_from_kubeconfig_yaml(&kubeconfig).await?;
    eprintln!("bench services: creating cluster {CLUSTER} (1 master + 2 medium nodes)");
    create_and_time_as(&client, CLUSTER, 1, 2, "medium", Duration::from_secs(120)).await?;
    let result = async {
        let tenant_config =
            korvet_platform::cluster_kubeconfig(&client, "default", CLUSTER).await?;
        let tenant = korvet_apimachinery::client_from_kubeconfig_yaml(&tenant_config).await?;
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(tenant.clone());
        // (node name, provider's machine name from `korvet-local:///NAME`)
        let mut names: Vec<(String, String)> = nodes
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter_map(|n| {
                let machine = n.spec?.provider_id?.rsplit('/').next()?.to_string();
                Some((n.metadata.name?, machine))
            })
            .collect();
        names.sort();
        let [(client_node, client_machine), (server_node, _)] = &names[..] else {
            anyhow::bail!("expected 2 nodes with provider IDs, found {names:?}");
        };
        let (netns, _) = server
            .provider
            .machine_sandbox(client_machine)
            .with_context(|| format!("no machine record for node {client_node}"))?;

        let pods: Api<Pod> = Api::namespaced(tenant.clone(), NAMESPACE);
        for (name, big) in [("bench-a", config.transfer_mib), ("bench-b", 0)] {
            pods.create(&PostParams::default(), &server_pod(name, server_node, big)?)
                .await?;
        }
        let a = pod_ip(&pods, "bench-a").await?;
        let b = pod_ip(&pods, "bench-b").await?;
        let services: Api<Service> = Api::namespaced(tenant.clone(), NAMESPACE);
        let service = services
            .create(&PostParams::default(), &flip_service()?)
            .await?;
        let cluster_ip: Ipv4Addr = service
            .spec
            .and_then(|s| s.cluster_ip)
            .context("the Service got no ClusterIP")?
            .parse()?;
        let slices: Api<EndpointSlice> = Api::namespaced(tenant.clone(), NAMESPACE);
        slices
            .create(&PostParams::default(), &flip_slice(a, server_node)?)
            .await?;

        let probe = Prober::start(&netns, SocketAddr::from((cluster_ip, SERVICE_PORT)))?;
        // The servers answer and the proxy has the first endpoint.
        for (ip, name) in [(a, "a"), (b, "b")] {
            probe.direct(SocketAddr::from((ip, SERVER_PORT)), name)?;
        }
        probe.expect("a", Duration::from_secs(60))?;

        eprintln!("bench services: {} EndpointSlice changes", config.samples);
        let mut changes = Vec::with_capacity(config.samples);
        for i in 0..config.samples {
            let (ip, name) = if i % 2 == 0 { (b, "b") } else { (a, "a") };
            let mut slice = slices.get(SERVICE).await?;
            slice.endpoints = flip_slice(ip, server_node)?.endpoints;
            probe.arm(name)?;
            let started = Instant::now();
            slices
                .replace(SERVICE, &PostParams::default(), &slice)
                .await?;
            let seen = probe.wait(Duration::from_secs(10))?;
            changes.push(seen.saturating_duration_since(started).as_secs_f64() * 1000.0);
        }
        // The bulk transfers go to pod a, the one with the file.
        if changes.len() % 2 == 1 {
            let patch = serde_json::json!({"endpoints": flip_slice(a, server_node)?.endpoints});
            slices
                .patch(SERVICE, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
            probe.expect("a", Duration::from_secs(10))?;
        }

        eprintln!(
            "bench services: {} rounds of {} MiB through the ClusterIP and directly",
            config.rounds, config.transfer_mib
        );
        let (mut via_service, mut direct) = (0f64, 0f64);
        for _ in 0..config.rounds {
            via_service = via_service.max(probe.transfer(
                SocketAddr::from((cluster_ip, SERVICE_PORT)),
                config.transfer_mib,
            )?);
            direct = direct
                .max(probe.transfer(SocketAddr::from((a, SERVER_PORT)), config.transfer_mib)?);
        }
        anyhow::Ok(ServiceFigures {
            nft,
            endpoint_change: latency(changes),
            transfer_mib: config.transfer_mib,
            cluster_ip_mib_per_second: via_service,
            direct_mib_per_second: direct,
            ratio: if direct > 0.0 {
                via_service / direct
            } else {
                0.0
            },
        })
    }
    .await;
    eprintln!("bench services: deleting the cluster");
    delete_and_wait(&client, &[CLUSTER.to_string()]).await?;
    result
}

/// busybox httpd answering its own name at `/`, and a file of `big_mib` at `/big`.
fn server_pod(name: &str, node: &str, big_mib: u64) -> anyhow::Result<Pod> {
    let short = name.trim_start_matches("bench-");
    let script = format!(
        "mkdir -p /www && echo {short} > /www/index.html && \
         dd if=/dev/zero of=/www/big bs=1048576 count={big_mib} 2>/dev/null; \
         exec httpd -f -p {SERVER_PORT} -h /www"
    );
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench-services"}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "httpd", "image": "korvet.local/busybox:latest",
                            "command": ["sh", "-c", script],
                            "ports": [{"containerPort": SERVER_PORT}]}],
        },
    }))?)
}

/// A Service without selector: the bench writes its EndpointSlice itself.
fn flip_service() -> anyhow::Result<Service> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SERVICE},
        "spec": {"ports": [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP"}]},
    }))?)
}

fn flip_slice(ip: Ipv4Addr, node: &str) -> anyhow::Result<EndpointSlice> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": SERVICE, "labels": {"kubernetes.io/service-name": SERVICE}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": SERVER_PORT, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip.to_string()], "nodeName": node,
                       "conditions": {"ready": true, "serving": true, "terminating": false}}],
    }))?)
}

async fn pod_ip(pods: &Api<Pod>, name: &str) -> anyhow::Result<Ipv4Addr> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pod = pods.get(name).await?;
        let status = pod.status.unwrap_or_default();
        if status.phase.as_deref() == Some("Running") {
            if let Some(ip) = status.pod_ip {
                return Ok(ip.parse()?);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "pod {name} not running in 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

enum Ask {
    /// Connect to this address until it answers with this name.
    Direct(SocketAddr, String, mpsc::Sender<anyhow::Result<()>>),
    /// Probe the Service until it answers with this name; report when it first did.
    Expect(String, Duration, mpsc::Sender<anyhow::Result<Instant>>),
    /// GET `/big` of this many MiB: MiB per second.
    Transfer(SocketAddr, u64, mpsc::Sender<anyhow::Result<f64>>),
}

/// A thread in a machine's network namespace that makes the bench's connections.
struct Prober {
    asks: mpsc::Sender<Ask>,
    armed: std::cell::RefCell<Option<mpsc::Receiver<anyhow::Result<Instant>>>>,
}

impl Prober {
    fn start(netns: &str, service: SocketAddr) -> anyhow::Result<Prober> {
        let file = std::fs::File::open(format!("/run/netns/{netns}"))
            .with_context(|| format!("opening network namespace {netns}"))?;
        let (asks, receiver) = mpsc::channel::<Ask>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("bench-prober".into())
            .spawn(move || {
                use std::os::fd::AsRawFd;
                // SAFETY: setns on a descriptor we own; it changes only this thread.
                let joined = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == 0;
                let _ =
                    ready_tx.send(joined.then_some(()).ok_or_else(|| {
                        anyhow::anyhow!("setns: {}", std::io::Error::last_os_error())
                    }));
                if joined {
                    serve(receiver, service);
                }
            })?;
        ready_rx.recv().context("prober thread")??;
        Ok(Prober {
            asks,
            armed: Default::default(),
        })
    }

    fn ask<T>(
        &self,
        make: impl FnOnce(mpsc::Sender<T>) -> Ask,
    ) -> anyhow::Result<mpsc::Receiver<T>> {
        let (tx, rx) = mpsc::channel();
        self.asks
            .send(make(tx))
            .map_err(|_| anyhow::anyhow!("the prober thread stopped"))?;
        Ok(rx)
    }

    fn direct(&self, to: SocketAddr, name: &str) -> anyhow::Result<()> {
        self.ask(|tx| Ask::Direct(to, name.to_string(), tx))?
            .recv()
            .context("prober")?
    }

    /// Starts probing the Service for `name` (before the change, so no time is lost).
    fn arm(&self, name: &str) -> anyhow::Result<()> {
        let rx = self.ask(|tx| Ask::Expect(name.to_string(), Duration::from_secs(10), tx))?;
        *self.armed.borrow_mut() = Some(rx);
        Ok(())
    }

    /// When the armed probe first saw its name.
    fn wait(&self, limit: Duration) -> anyhow::Result<Instant> {
        let rx = self.armed.borrow_mut().take().context("wait without arm")?;
        rx.recv_timeout(limit + Duration::from_secs(1))
            .context("prober")?
    }

    fn expect(&self, name: &str, limit: Duration) -> anyhow::Result<()> {
        let rx = self.ask(|tx| Ask::Expect(name.to_string(), limit, tx))?;
        rx.recv().context("prober")?.map(|_| ())
    }

    fn transfer(&self, to: SocketAddr, mib: u64) -> anyhow::Result<f64> {
        self.ask(|tx| Ask::Transfer(to, mib, tx))?
            .recv()
            .context("prober")?
    }
}

fn serve(asks: mpsc::Receiver<Ask>, service: SocketAddr) {
    for ask in asks {
        match ask {
            Ask::Direct(to, name, reply) => {
                let _ = reply.send(until_answer(to, &name, Duration::from_secs(60)).map(|_| ()));
            }
            Ask::Expect(name, limit, reply) => {
                let _ = reply.send(until_answer(service, &name, limit));
            }
            Ask::Transfer(to, mib, reply) => {
                let _ = reply.send(transfer(to, mib));
            }
        }
    }
}

/// New connections to `to` until one answers `name`: when it did.
fn until_answer(to: SocketAddr, name: &str, limit: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match get(to, "/", Duration::from_millis(500)) {
            Ok(body) if String::from_utf8_lossy(&body).trim() == name => return Ok(Instant::now()),
            Ok(body) => format!("answered {:?}", String::from_utf8_lossy(&body).trim()),
            Err(e) => e.to_string(),
        };
        anyhow::ensure!(
            Instant::now() < deadline,
            "{to} did not answer {name:?} within {limit:?}; last: {last}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn transfer(to: SocketAddr, mib: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut stream = request(to, "/big", Duration::from_secs(120))?;
    let mut buffer = vec![0u8; 1 << 20];
    let (mut total, mut header_end) = (0usize, None);
    let mut head = Vec::new();
    loop {
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        if header_end.is_none() {
            head.extend_from_slice(&buffer[..n]);
            if let Some(end) = body_start(&head) {
                check_status(to, "/big", &head[..end])?;
                total = head.len() - end;
                header_end = Some(end);
                head = Vec::new();
            }
        } else {
            total += n;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(header_end.is_some(), "{to}/big: no HTTP header end");
    anyhow::ensure!(
        total as u64 == mib << 20,
        "{to}/big gave {total} bytes, not {mib} MiB"
    );
    Ok(mib as f64 / seconds)
}

fn request(to: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&to, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").as_bytes())?;
    Ok(stream)
}

fn body_start(response: &[u8]) -> Option<usize> {
    response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
}

fn check_status(to: SocketAddr, path: &str, head: &[u8]) -> anyhow::Result<()> {
    anyhow::ensure!(
        head.starts_with(b"HTTP/1.") && head.get(9..12) == Some(b"200"),
        "{to}{path}: {}",
        String::from_utf8_lossy(head).trim()
    );
    Ok(())
}

/// HTTP/1.0 GET of a small page: the body.
fn get(to: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<Vec<u8>> {
    let mut response = Vec::new();
    request(to, path, timeout)?.read_to_end(&mut response)?;
    let start = body_start(&response).context("no HTTP header end")?;
    check_status(to, path, &response[..start])?;
    Ok(response.split_off(start))
}
