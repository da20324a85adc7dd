//! `korvet bench lb`: the platform's load balancers on a real cluster (1 master,
//! 2 nodes), each figure beside its reference measured in the same run:
//!
//! - a `type: LoadBalancer` Service created → its external address answers (the time
//!   from the API call to the first answer through the address);
//! - failover while a client on the external network sends 100 requests/s (each a new
//!   connection) and keeps one connection echoing: `kill -9` of the active instance, and
//!   separately its external link cut; the longest time without an answer, the failed
//!   requests, whether the open connection survived, and failures while the failed
//!   instance comes back. The same for Octavia's amphora pair (haproxy + keepalived with
//!   Octavia's default timers, `lb_reference.rs`);
//! - a bulk transfer and sequential requests through the load balancer against the
//!   same node port directly;
//! - Ingress: requests/s and latency at 64 keep-alive connections against nginx
//!   proxying to the same pods from the standby instance's namespace (the same path).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use korvet_cloud::{AddressScope, LoadBalancers};
use korvet_platform::RunningManagementPlane;
use kube::api::{Api, DeleteParams, PostParams};
use serde::Serialize;

use crate::clusters::{create_and_time_as, with_platform};
use crate::lb_reference::{Lab, Nginx};
use crate::traffic::{self, Failover, Load, Stream};
use crate::workloads::{latency, Latency};

const CLUSTER: &str = "bench-lb";
const NAMESPACE: &str = "default";

pub struct LbBenchConfig {
    /// Services created and timed.
    pub creates: usize,
    /// Sequential requests per path for the latency.
    pub requests: usize,
    /// Size of the bulk transfer, MiB.
    pub transfer_mib: u64,
    /// Keep-alive connections of the Ingress load.
    pub connections: usize,
    /// Seconds of Ingress load per proxy.
    pub load_seconds: u64,
}

#[derive(Serialize, Clone, Debug)]
pub struct FailoverFigures {
    pub korvet_kill: Failover,
    pub korvet_link_down: Failover,
    pub reference_kill: Failover,
    pub reference_link_down: Failover,
}

#[derive(Serialize, Clone, Debug)]
pub struct LbFigures {
    /// Service created → external address answers, ms.
    pub create: Latency,
    pub failover: FailoverFigures,
    pub transfer_mib: u64,
    pub load_balancer_mib_per_second: f64,
    pub node_port_mib_per_second: f64,
    /// Through the load balancer over directly (1.0: it costs nothing).
    pub throughput_ratio: f64,
    pub load_balancer_request: Latency,
    pub node_port_request: Latency,
    pub ingress: Load,
    pub nginx: Load,
}

pub async fn run(json: bool, korvet: &Path, config: LbBenchConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.creates > 0 && config.requests > 0 && config.connections > 0,
        "--creates, --requests and --connections must be at least 1"
    );
    let figures = with_platform(korvet, async |server| measure(server, &config).await).await?;
    crate::print_figures(json, "figures", &figures, goals(&figures), print_table)
}

fn goals(f: &LbFigures) -> serde_json::Value {
    serde_json::json!({
        "create_under_2s": {"goal": "p50 < 2000 ms", "value": f.create.p50_ms, "met": f.create.p50_ms < 2000.0},
        "failover_under_1s": {"goal": "longest gap < 1000 ms after kill -9", "value": f.failover.korvet_kill.longest_gap_ms,
            "met": f.failover.korvet_kill.longest_gap_ms < 1000.0},
        "no_failure_when_back": {"goal": "0", "value": f.failover.korvet_kill.failed_when_back + f.failover.korvet_link_down.failed_when_back,
            "met": f.failover.korvet_kill.failed_when_back + f.failover.korvet_link_down.failed_when_back == 0},
        "throughput_ratio": {"goal": ">= 0.9", "value": f.throughput_ratio, "met": f.throughput_ratio >= 0.9},
        "ingress_vs_nginx": {"goal": "rps >= nginx's at no worse p99",
            "value": [f.ingress.requests_per_second, f.nginx.requests_per_second, f.ingress.p99_ms, f.nginx.p99_ms],
            "met": f.ingress.requests_per_second >= f.nginx.requests_per_second && f.ingress.p99_ms <= f.nginx.p99_ms},
    })
}

fn print_table(f: &LbFigures) {
    println!(
        "Service created -> external address answers: p50 {:.0} ms, max {:.0} ms ({} samples)",
        f.create.p50_ms, f.create.max_ms, f.create.samples
    );
    println!("failover at 100 requests/s     longest gap   failed  established survived  failed when back  address holders");
    for (name, x) in [
        ("korvet, kill -9", &f.failover.korvet_kill),
        ("korvet, link down", &f.failover.korvet_link_down),
        ("haproxy+keepalived, kill -9", &f.failover.reference_kill),
        (
            "haproxy+keepalived, link down",
            &f.failover.reference_link_down,
        ),
    ] {
        println!(
            "  {name:<28} {:>8.0} ms {:>8}/{:<5} {:>12} {:>14} {:>14}",
            x.longest_gap_ms,
            x.failed,
            x.requests,
            if x.established_survived { "yes" } else { "no" },
            x.failed_when_back,
            x.address_holders
        );
    }
    println!(
        "bulk {} MiB: load balancer {:.0} MiB/s, node port {:.0} MiB/s, ratio {:.3}",
        f.transfer_mib,
        f.load_balancer_mib_per_second,
        f.node_port_mib_per_second,
        f.throughput_ratio
    );
    println!(
        "request (new connection): load balancer p50 {:.2} ms p99 {:.2} ms; node port p50 {:.2} ms p99 {:.2} ms",
        f.load_balancer_request.p50_ms, f.load_balancer_request.p99_ms, f.node_port_request.p50_ms, f.node_port_request.p99_ms
    );
    println!(
        "Ingress: {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms ({} errors); nginx: {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms ({} errors)",
        f.ingress.requests_per_second, f.ingress.p50_ms, f.ingress.p99_ms, f.ingress.errors,
        f.nginx.requests_per_second, f.nginx.p50_ms, f.nginx.p99_ms, f.nginx.errors
    );
    println!("goals: {}", goals(f));
}

/// busybox httpd with a small page and a large file, and an echo server.
fn server_deployment(
    image: &str,
    transfer_mib: u64,
) -> anyhow::Result<k8s_openapi::api::apps::v1::Deployment> {
    let script = format!(
        "mkdir -p /w && echo hello > /w/hello && dd if=/dev/zero of=/w/big bs=1048576 count={transfer_mib} 2>/dev/null; nc -ll -p 9000 -e cat & exec httpd -f -p 8080 -h /w"
    );
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    // One per node, so that either node serves.
                    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}],
                    "containers": [{"name": "web", "image": image, "command": ["sh", "-c", script],
                        "readinessProbe": {"httpGet": {"path": "/hello", "port": 8080}, "periodSeconds": 1}}],
                },
            },
        },
    }))?)
}

fn load_balancer_service(name: &str) -> anyhow::Result<Service> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "echo", "port": 9000, "targetPort": 9000},
        ]},
    }))?)
}

async fn address_of(
    services: &Api<Service>,
    name: &str,
    limit: Duration,
) -> anyhow::Result<Ipv4Addr> {
    let started = Instant::now();
    loop {
        let service = services.get(name).await?;
        if let Some(ip) = service
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .and_then(|i| i.first().and_then(|i| i.ip.clone()))
        {
            return Ok(ip.parse()?);
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "Service {name} got no address within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `GET /hello` through `address` until it answers.
async fn until_answers(address: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let ok = tokio::task::spawn_blocking(move || {
            traffic::get(address, "bench", "/hello", Duration::from_millis(200))
                .is_ok_and(|(s, _)| s == 200)
        })
        .await?;
        if ok {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "{address} did not answer within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A namespace of the benchmark's own on the external network, with a claimed address.
struct ExternalClient {
    netns: String,
    provider: std::sync::Arc<korvet_cloud::LocalProvider>,
}

impl ExternalClient {
    async fn new(server: &RunningManagementPlane) -> anyhow::Result<ExternalClient> {
        let provider = server.provider.clone();
        let external = provider.ensure_external_network().await?;
        let address = provider
            .allocate_address(&AddressScope::External, "bench-client", None)
            .await?;
        let netns = format!("kbc{}", std::process::id());
        let host_end = format!("kbc{}h", std::process::id() % 100_000);
        let sh = traffic::ip;
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &netns])
            .output();
        sh(&["netns", "add", &netns])?;
        sh(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])?;
        sh(&["link", "set", &host_end, "master", &external.bridge, "up"])?;
        sh(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{address}/{}", external.cidr.prefix_len()),
            "dev",
            "eth0",
        ])?;
        sh(&["-n", &netns, "link", "set", "eth0", "up"])?;
        sh(&["-n", &netns, "link", "set", "lo", "up"])?;
        Ok(ExternalClient { netns, provider })
    }
}

impl Drop for ExternalClient {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let provider = self.provider.clone();
        // The address goes back to the pool (best effort; the provider's destroy_all
        // after the benchmark releases it too).
        tokio::spawn(async move {
            let _ = provider
                .release_address(&AddressScope::External, "bench-client")
                .await;
        });
    }
}

async fn measure(
    server: &RunningManagementPlane,
    config: &LbBenchConfig,
) -> anyhow::Result<LbFigures> {
    let kubeconfig = std::fs::read_to_string(&server.api.kubeconfig)?;
    let client = korvet_apimachinery::client_from_kubeconfig_yaml(&kubeconfig).await?;
    eprintln!("bench lb: creating cluster {CLUSTER} (1 master + 2 medium nodes)");
    create_and_time_as(&client, CLUSTER, 1, 2, "medium", Duration::from_secs(180)).await?;
    let tenant_config = korvet_platform::cluster_kubeconfig(&client, NAMESPACE, CLUSTER).await?;
    let tenant = korvet_apimachinery::client_from_kubeconfig_yaml(&tenant_config).await?;
    let registry = server.registry_url.trim_start_matches("https://");
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(tenant.clone(), NAMESPACE);
    deployments
        .create(
            &PostParams::default(),
            &server_deployment(&format!("{registry}/busybox:latest"), config.transfer_mib)?,
        )
        .await?;
    let services: Api<Service> = Api::namespaced(tenant.clone(), NAMESPACE);
    services
        .create(&PostParams::default(), &load_balancer_service("web")?)
        .await?;
    let vip = address_of(&services, "web", Duration::from_secs(120)).await?;
    let web = SocketAddr::from((vip, 80));
    until_answers(web, Duration::from_secs(180)).await?;
    // Both pods ready, so that either node's node port serves.
    let slices: Api<EndpointSlice> = Api::namespaced(tenant.clone(), NAMESPACE);
    let started = Instant::now();
    let endpoints = loop {
        let ready: Vec<SocketAddr> = slices
            .list(&kube::api::ListParams::default().labels("kubernetes.io/service-name=web"))
            .await?
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
            .flat_map(|e| e.addresses.iter())
            .filter_map(|a| a.parse::<Ipv4Addr>().ok())
            .map(|ip| SocketAddr::from((ip, 8080)))
            .collect();
        if ready.len() >= 2 {
            break ready;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(180),
            "the pods never became ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    eprintln!("bench lb: {} Services created and timed", config.creates);
    let mut creates = Vec::new();
    for i in 0..config.creates {
        let name = format!("probe-{i}");
        let started = Instant::now();
        services
            .create(&PostParams::default(), &load_balancer_service(&name)?)
            .await?;
        let address = address_of(&services, &name, Duration::from_secs(60)).await?;
        until_answers(SocketAddr::from((address, 80)), Duration::from_secs(60)).await?;
        creates.push(started.elapsed().as_secs_f64() * 1000.0);
        services.delete(&name, &DeleteParams::default()).await?;
    }

    eprintln!("bench lb: throughput and latency against the node port");
    let service = services.get("web").await?;
    let node_port = service
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p.iter().find(|p| p.port == 80).and_then(|p| p.node_port))
        .context("no node port")?;
    let nodes: Api<Node> = Api::all(tenant.clone());
    let node_ip: Ipv4Addr = nodes
        .list(&Default::default())
        .await?
        .items
        .iter()
        .find_map(korvet_apimachinery::nodes::internal_ip)
        .context("no node address")?
        .parse()?;
    let direct = SocketAddr::from((node_ip, u16::try_from(node_port)?));
    let requests = config.requests;
    let (lb_mib, np_mib, lb_times, np_times) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let (mut lb, mut np) = (0f64, 0f64);
            for _ in 0..3 {
                lb = lb.max(traffic::transfer(web, "/big")?);
                np = np.max(traffic::transfer(direct, "/big")?);
            }
            Ok((
                lb,
                np,
                traffic::request_times(web, "/hello", requests)?,
                traffic::request_times(direct, "/hello", requests)?,
            ))
        })
        .await??;

    eprintln!("bench lb: failover (kill -9, then link down), each beside haproxy + keepalived");
    let external = ExternalClient::new(server).await?;
    let key = format!("{NAMESPACE}.{CLUSTER}");
    let stream = Stream {
        web,
        echo: SocketAddr::from((vip, 9000)),
        duration: Duration::from_secs(10),
        at: Duration::from_secs(2),
        // The keeper has restarted a killed instance by then; failures after it count
        // as failures while it came back.
        back_at: Duration::from_secs(4),
    };
    let mut korvet_kill = {
        let info = balancer(server, &key).await?;
        let active = info.active.context("no active instance")?;
        let netns = info.instances[active].netns.clone();
        let stream_netns = external.netns.clone();
        let stream = stream.clone();
        tokio::task::spawn_blocking(move || {
            stream.run(
                Some(&stream_netns),
                move || kill_netns(&netns),
                // The keeper starts the instance again on its own.
                || {},
            )
        })
        .await??
    };
    wait_both_running(server, &key).await?;
    korvet_kill.address_holders = holders(server, &key, vip).await?;
    let mut korvet_link_down = {
        let info = balancer(server, &key).await?;
        let active = info.active.context("no active instance")?;
        let link = info.instances[active].external_link.clone();
        let up = link.clone();
        let stream_netns = external.netns.clone();
        let stream = stream.clone();
        tokio::task::spawn_blocking(move || {
            stream.run(
                Some(&stream_netns),
                move || set_link(&link, "down"),
                move || set_link(&up, "up"),
            )
        })
        .await??
    };
    korvet_link_down.address_holders = holders(server, &key, vip).await?;
    let (reference_kill, reference_link_down) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut lab = Lab::start()?;
            let reference_stream = Stream {
                web: lab.web(),
                echo: lab.echo(),
                duration: Duration::from_secs(14),
                at: Duration::from_secs(2),
                back_at: Duration::from_secs(10),
            };
            let kill = lab.failover_kill(&reference_stream)?;
            std::thread::sleep(Duration::from_secs(3));
            let link = lab.failover_link(&reference_stream)?;
            Ok((kill, link))
        })
        .await??;

    eprintln!(
        "bench lb: Ingress against nginx, {} connections",
        config.connections
    );
    let ingresses: Api<Ingress> = Api::namespaced(tenant.clone(), NAMESPACE);
    ingresses
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "bench"},
                "spec": {"rules": [{"host": "bench.example", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]},
            }))?,
        )
        .await?;
    let started = Instant::now();
    let ingress_ip: Ipv4Addr = loop {
        let ingress = ingresses.get("bench").await?;
        if let Some(ip) = ingress
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .and_then(|i| i.first().and_then(|i| i.ip.clone()))
        {
            break ip.parse()?;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the Ingress got no address"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ingress_address = SocketAddr::from((ingress_ip, 80));
    let probe = ingress_address;
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if traffic::get(probe, "bench.example", "/hello", Duration::from_secs(1))
                .is_ok_and(|(s, _)| s == 200)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("the Ingress never answered")
    })
    .await??;
    let info = balancer(server, &key).await?;
    let standby = 1 - info.active.unwrap_or(0).min(1);
    let standby_instance = info.instances[standby].clone();
    let nginx_address = SocketAddr::from((standby_instance.external_address, 8080));
    let _nginx = Nginx::start(&standby_instance.netns, nginx_address, &endpoints)?;
    let (netns, connections, seconds) = (
        external.netns.clone(),
        config.connections,
        Duration::from_secs(config.load_seconds),
    );
    let (ingress, nginx) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        // nginx takes a moment to start.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !traffic::in_netns(Some(&netns), move || {
            traffic::get(
                nginx_address,
                "bench.example",
                "/hello",
                Duration::from_secs(1),
            )
            .is_ok_and(|(s, _)| s == 200)
        })? {
            anyhow::ensure!(Instant::now() < deadline, "nginx never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        let ingress = traffic::load(
            Some(&netns),
            ingress_address,
            "bench.example",
            "/hello",
            connections,
            seconds,
        )?;
        let nginx = traffic::load(
            Some(&netns),
            nginx_address,
            "bench.example",
            "/hello",
            connections,
            seconds,
        )?;
        Ok((ingress, nginx))
    })
    .await??;
    drop(external);

    Ok(LbFigures {
        create: latency(creates),
        failover: FailoverFigures {
            korvet_kill,
            korvet_link_down,
            reference_kill,
            reference_link_down,
        },
        transfer_mib: config.transfer_mib,
        load_balancer_mib_per_second: lb_mib,
        node_port_mib_per_second: np_mib,
        throughput_ratio: if np_mib > 0.0 { lb_mib / np_mib } else { 0.0 },
        load_balancer_request: latency(lb_times),
        node_port_request: latency(np_times),
        ingress,
        nginx,
    })
}

/// `kill -9` of every process of an instance's namespace (its data plane).
fn kill_netns(netns: &str) {
    let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: plain syscall on the PIDs of the platform's instance this benchmark
        // started (the namespace is the platform's own).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn set_link(link: &str, state: &str) {
    let _ = std::process::Command::new("ip")
        .args(["link", "set", link, state])
        .status();
}

/// How many of the cluster's instances hold `address` (1: no split brain).
async fn holders(
    server: &RunningManagementPlane,
    key: &str,
    address: Ipv4Addr,
) -> anyhow::Result<usize> {
    let info = balancer(server, key).await?;
    Ok(info
        .instances
        .iter()
        .filter(|i| traffic::holds_address(&i.netns, "ext", address))
        .count())
}

/// The cluster's load balancer as the provider has it.
async fn balancer(
    server: &RunningManagementPlane,
    key: &str,
) -> anyhow::Result<korvet_cloud::BalancerInfo> {
    server
        .provider
        .get_balancer(key)
        .await?
        .context("no balancer")
}

/// Waits until both instances run again (the keeper restarts a dead one).
async fn wait_both_running(server: &RunningManagementPlane, key: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let info = balancer(server, key).await?;
        if info.instances.iter().all(|i| i.running) {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "an instance did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
