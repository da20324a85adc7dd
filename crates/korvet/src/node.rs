//! `korvet node`: the node agent — joins the cluster, registers its Node, heartbeats and
//! runs its pods until SIGTERM/SIGINT (the Node and its containers stay).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use korvet_node::config::{self, NodeConfig};

#[derive(Args)]
pub(crate) struct NodeArgs {
    /// Directory for the node's key and kubeconfig (kubelet.key, kubelet.kubeconfig).
    #[arg(long)]
    data_dir: PathBuf,
    /// Kubeconfig with a bootstrap token, used only until the node has its certificate.
    #[arg(long)]
    bootstrap_kubeconfig: PathBuf,
    /// The Node's name.
    #[arg(long)]
    node_name: String,
    /// The node's InternalIP.
    #[arg(long)]
    address: IpAddr,
    /// Node label key=value (repeatable).
    #[arg(long = "label", value_parser = config::parse_label)]
    labels: Vec<(String, String)>,
    /// Node taint key[=value]:Effect (repeatable).
    #[arg(long = "taint", value_parser = config::parse_taint)]
    taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// Capacity, e.g. cpu=2,memory=4Gi,pods=110,ephemeral-storage=20Gi (others: this host's).
    #[arg(long)]
    capacity: Option<String>,
    /// spec.providerID of the Node.
    #[arg(long)]
    provider_id: Option<String>,
    /// Serve /healthz and /metrics on this address.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Seconds to wait for the cluster to issue the node's certificate.
    #[arg(long, default_value_t = 120)]
    join_timeout_seconds: u64,
    /// containerd's socket.
    #[arg(long, env = "CONTAINERD_ADDRESS", default_value = korvet_node::cri::DEFAULT_SOCKET)]
    containerd_address: PathBuf,
    /// Directory of the CNI configuration containerd's CRI plugin reads.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// First restart delay (seconds) of crashing containers and failed pulls; doubles up to 5 minutes.
    #[arg(long, env = "KORVET_CRASH_BACKOFF_SECONDS", default_value_t = 10.0)]
    crash_backoff_seconds: f64,
    /// Port of the node's HTTPS server (container logs for the API server), on --address.
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// Cluster DNS server address written into pods' resolv.conf (repeatable); without
    /// one, ClusterFirst pods get the node's resolv.conf, as upstream.
    #[arg(long = "cluster-dns", value_delimiter = ',')]
    cluster_dns: Vec<IpAddr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Hard eviction thresholds behind the pressure conditions, as upstream's kubelet:
    /// e.g. memory.available<100Mi,nodefs.available<10%,imagefs.available<1Gi; signals
    /// left out keep upstream's defaults.
    #[arg(long, env = "KORVET_EVICTION_HARD", default_value = "")]
    eviction_hard: String,
    /// The service proxy (nftables rules for Services): `auto` runs it only inside a
    /// network namespace of its own (a machine's), never in the host's.
    #[arg(long, value_enum, default_value = "auto")]
    service_proxy: InOwnNetns,
    /// NetworkPolicy enforcement (nftables rules filtering pod traffic): `auto` runs it
    /// only inside a network namespace of its own (a machine's), never in the host's.
    #[arg(long, value_enum, default_value = "auto")]
    network_policy: InOwnNetns,
}

/// Whether a part that writes nftables rules into the agent's network namespace runs.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum InOwnNetns {
    Auto,
    Always,
    Never,
}

impl InOwnNetns {
    fn enabled(self) -> bool {
        match self {
            InOwnNetns::Auto => korvet_node::proxy::in_own_netns(),
            InOwnNetns::Always => true,
            InOwnNetns::Never => false,
        }
    }
}

pub(crate) async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let mut capacity = config::default_capacity();
    if let Some(text) = &args.capacity {
        capacity.extend(config::parse_capacity(text).context("--capacity")?);
    }
    let config = NodeConfig {
        data_dir: args.data_dir,
        bootstrap_kubeconfig: args.bootstrap_kubeconfig,
        node_name: args.node_name,
        address: args.address,
        labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
        taints: args.taints,
        capacity,
        provider_id: args.provider_id,
        metrics_listen: args.metrics_listen,
        join_timeout: Duration::from_secs(args.join_timeout_seconds),
        containerd_socket: args.containerd_address,
        cni_conf_dir: args.cni_conf_dir,
        crash_backoff: Duration::try_from_secs_f64(args.crash_backoff_seconds)
            .context("--crash-backoff-seconds")?,
        kubelet_port: args.kubelet_port,
        cluster_dns: korvet_node::dns::ClusterDns {
            servers: args.cluster_dns,
            domain: args.cluster_domain,
        },
        eviction_hard: korvet_node::pressure::Thresholds::parse(&args.eviction_hard)
            .context("--eviction-hard")?,
        service_proxy: args.service_proxy.enabled(),
        network_policy: args.network_policy.enabled(),
    };
    korvet_node::run(config, crate::signals::wait_for_shutdown()).await?;
    Ok(())
}
