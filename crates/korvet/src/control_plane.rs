//! `korvet control-plane`: serves one cluster's API until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use korvet_apiserver::launch::{self, ApiServerConfig};
use korvet_store::StoreLocation;

#[derive(Args)]
pub struct ControlPlaneArgs {
    /// Directory for the cluster's certificates, store and admin kubeconfig.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to serve HTTPS on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// `embedded` (a file in the data directory) or `etcd://HOST:PORT[,HOST:PORT...]`.
    #[arg(long, default_value = "embedded")]
    store: String,
    /// More host names or addresses for the serving certificate (repeatable).
    #[arg(long = "advertise-host")]
    advertise_hosts: Vec<String>,
    /// Static bearer tokens: lines of `token,user,uid[,"group1,group2"]`.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Cluster name written into the admin kubeconfig.
    #[arg(long, default_value = "korvet")]
    cluster_name: String,
    /// Directory of the cluster's PKI when replicas share it (default DATA_DIR/pki).
    #[arg(long)]
    pki_dir: Option<PathBuf>,
    /// Where Services' ClusterIPs come from.
    #[arg(long, default_value = "10.96.0.0/12", value_parser = parse_cidr)]
    service_cluster_ip_range: (std::net::Ipv4Addr, u8),
    /// Pods' addresses: each Node gets a /24 of it as its podCIDR.
    #[arg(long, default_value = "10.244.0.0/16", value_parser = parse_cidr)]
    cluster_cidr: (std::net::Ipv4Addr, u8),
    /// Where the cluster DNS serves (UDP and TCP, repeatable or comma-separated).
    /// Default: the address of --listen, port 53. Each control plane on a host needs
    /// its own address (the platform gives each master one on its cluster's network).
    #[arg(long, value_delimiter = ',')]
    dns_listen: Vec<SocketAddr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = korvet_dns::DEFAULT_DOMAIN)]
    cluster_domain: String,
}

fn parse_cidr(text: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let net: ipnet::Ipv4Net = text
        .parse()
        .map_err(|e| format!("{e}: expected an IPv4 network such as 10.96.0.0/12"))?;
    if net.network() != net.addr() {
        return Err(format!(
            "{text} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok((net.network(), net.prefix_len()))
}

pub async fn run(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let store: StoreLocation = args.store.parse().context("--store")?;
    let running = launch::start(ApiServerConfig {
        data_dir: args.data_dir.clone(),
        listen: args.listen,
        store,
        extra_hosts: args.advertise_hosts.clone(),
        token_auth_file: args.token_auth_file.clone(),
        cluster_name: args.cluster_name.clone(),
        pki_dir: args.pki_dir.clone(),
        admission: Vec::new(),
        crds: Vec::new(),
        service_cidr: Some(args.service_cluster_ip_range),
    })
    .await?;
    // The admin identity may approve and sign CSRs; the CA signs node certificates.
    let pki = running.pki.clone();
    // The controllers and the scheduler each campaign for their Lease, so that of
    // several replicas one acts.
    let identity = korvet_apimachinery::leader::default_identity();
    let controllers = korvet_controllers::spawn_all(
        &running.kubeconfig,
        korvet_controllers::ControllersConfig {
            ca_cert_pem: pki.ca_cert_pem().to_string(),
            ca_key_pem: pki.ca_key_pem(),
            cluster_cidr: Some(args.cluster_cidr),
            leader_identity: Some(identity.clone()),
        },
    )
    .await
    .context("starting the controllers")?;
    let scheduler_client = korvet_apimachinery::client_from_kubeconfig(&running.kubeconfig)
        .await
        .context("starting the scheduler")?;
    let scheduler = korvet_scheduler::spawn(
        scheduler_client,
        korvet_scheduler::SchedulerConfig::new(&identity),
    );
    let dns = start_dns(&args, running.address, &running.kubeconfig).await?;
    running.server.metrics.register_with(|registry| {
        scheduler.metrics.register(registry);
        if let Some((dns, _)) = &dns {
            dns.metrics.register(registry);
        }
        korvet_controllers::metrics::register(registry);
    });
    println!("serving the Kubernetes API on {}", running.url());
    println!("admin kubeconfig: {}", running.kubeconfig.display());
    println!(
        "try: kubectl --kubeconfig {} get namespaces",
        running.kubeconfig.display()
    );
    crate::signals::wait_for_shutdown().await;
    eprintln!("shutting down");
    if let Some((dns, keeper)) = dns {
        keeper.abort();
        dns.shutdown().await;
    }
    scheduler.shutdown().await;
    controllers.shutdown().await;
    drop(running);
    Ok(())
}

/// The cluster DNS of this replica, and the task keeping the `kubernetes` and
/// `kube-dns` Services with this replica's endpoints. A default address that cannot
/// be bound (another DNS server on the host) only costs the DNS, with a warning; an
/// address given with --dns-listen must work.
async fn start_dns(
    args: &ControlPlaneArgs,
    api: SocketAddr,
    kubeconfig: &std::path::Path,
) -> anyhow::Result<Option<(korvet_dns::RunningDns, tokio::task::JoinHandle<()>)>> {
    let explicit = !args.dns_listen.is_empty();
    let listen = if explicit {
        args.dns_listen.clone()
    } else {
        vec![SocketAddr::new(api.ip(), 53)]
    };
    let client = korvet_apimachinery::client_from_kubeconfig(kubeconfig)
        .await
        .context("starting the cluster DNS")?;
    let mut config = korvet_dns::DnsConfig::new(listen.clone());
    config.domain = args.cluster_domain.clone();
    let dns = match korvet_dns::spawn(client.clone(), config).await {
        Ok(dns) => dns,
        Err(e) if !explicit => {
            tracing::warn!(error = %e, "no cluster DNS; give it an address with --dns-listen");
            return Ok(None);
        }
        Err(e) => return Err(e).context("starting the cluster DNS"),
    };
    // Clients reach the API at the first advertised address (the cluster's endpoint).
    let api_ip = args
        .advertise_hosts
        .iter()
        .find_map(|h| h.parse::<std::net::IpAddr>().ok())
        .unwrap_or(api.ip());
    let keeper = korvet_dns::bootstrap::spawn_keeper(
        client,
        korvet_dns::bootstrap::ClusterServices {
            service_cidr: args.service_cluster_ip_range,
            api_endpoint: SocketAddr::new(api_ip, api.port()),
            dns_addresses: dns.local_addrs().iter().map(|a| a.ip()).collect(),
        },
    );
    println!("cluster DNS on {:?}", dns.local_addrs());
    Ok(Some((dns, keeper)))
}
