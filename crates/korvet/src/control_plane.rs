//! `korvet control-plane`: serves one cluster's API until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use korvet_control_plane::{ControlPlane, DnsListen};
use korvet_store::StoreLocation;

#[derive(Args)]
pub(crate) struct ControlPlaneArgs {
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

pub(crate) async fn run(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let store: StoreLocation = args.store.parse().context("--store")?;
    let running = ControlPlane {
        data_dir: args.data_dir,
        listen: args.listen,
        store,
        advertise_hosts: args.advertise_hosts,
        token_auth_file: args.token_auth_file,
        cluster_name: args.cluster_name,
        pki_dir: args.pki_dir,
        service_cidr: Some(args.service_cluster_ip_range),
        cluster_cidr: Some(args.cluster_cidr),
        controllers: true,
        dns_listen: if args.dns_listen.is_empty() {
            DnsListen::ApiAddress
        } else {
            DnsListen::At(args.dns_listen)
        },
        cluster_domain: args.cluster_domain,
    }
    .start()
    .await?;
    if let Some(addresses) = running.components.dns_addresses() {
        println!("cluster DNS on {addresses:?}");
    }
    println!("serving the Kubernetes API on {}", running.api.url());
    println!("admin kubeconfig: {}", running.api.kubeconfig.display());
    println!(
        "try: kubectl --kubeconfig {} get namespaces",
        running.api.kubeconfig.display()
    );
    crate::signals::wait_for_shutdown().await;
    eprintln!("shutting down");
    running.shutdown().await;
    Ok(())
}
