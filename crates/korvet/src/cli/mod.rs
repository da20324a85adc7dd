//! The user CLI: a client of the management API (`cluster`, `nodepool`, `kubeconfig`).

mod cluster;
mod load_balancer;
mod nodepool;
mod output;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

pub(crate) use cluster::{kubeconfig as cluster_kubeconfig, wait_running};
pub(crate) use output::Format;

/// Options every CLI command takes.
#[derive(Args, Clone)]
pub(crate) struct Global {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,
    /// Namespace (project) of the clusters.
    #[arg(short = 'n', long, default_value = "default", global = true)]
    pub namespace: String,
}

#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
    /// Create a cluster.
    Create(cluster::CreateArgs),
    /// List clusters.
    List,
    /// Show one cluster.
    Get { name: String },
    /// Set the number of nodes of one of a cluster's pools.
    Scale(cluster::ScaleArgs),
    /// Stop every machine and the control plane; data is kept.
    Stop(cluster::NameWait),
    /// Start a stopped cluster again.
    Start(cluster::NameWait),
    /// Delete a cluster and everything Korvet made for it.
    Delete(cluster::NameWait),
}

/// Every node-pool command names a pool as `CLUSTER POOL`, whether the pool was made
/// with the cluster (`--pool`) or added later.
#[derive(Subcommand)]
pub(crate) enum NodePoolCommand {
    /// Add a node pool to a cluster.
    Add(nodepool::AddArgs),
    /// List node pools (of every cluster, or of one).
    List {
        /// Only the pools of this cluster.
        cluster: Option<String>,
    },
    /// Show one node pool.
    Get(nodepool::PoolRef),
    /// Set the number of nodes of a pool.
    Scale {
        #[command(flatten)]
        pool: nodepool::PoolRef,
        #[arg(long)]
        replicas: i32,
    },
    /// Delete a node pool and its machines.
    Delete(nodepool::PoolRef),
}

/// `korvet lb list|get`.
pub(crate) async fn run_load_balancer(
    global: Global,
    command: LoadBalancerCommand,
) -> anyhow::Result<()> {
    let client = client().await?;
    match command {
        LoadBalancerCommand::List { cluster } => {
            load_balancer::list(client, &global, cluster).await
        }
        LoadBalancerCommand::Get { name, service } => {
            load_balancer::get(client, &global, name, service).await
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum LoadBalancerCommand {
    /// List the load balancers (of every cluster, or of one).
    List {
        /// Only the load balancers of this cluster.
        cluster: Option<String>,
    },
    /// Show one load balancer: `korvet lb get CLUSTER NAMESPACE/SERVICE` (or its object
    /// name `CLUSTER.NAMESPACE.SERVICE`).
    Get {
        name: String,
        service: Option<String>,
    },
}

/// The management API's kubeconfig: `$KORVET_KUBECONFIG`, else `~/.korvet/admin.kubeconfig`.
pub(crate) fn kubeconfig_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("KORVET_KUBECONFIG") {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; set KORVET_KUBECONFIG")?;
    Ok(PathBuf::from(home).join(".korvet").join("admin.kubeconfig"))
}

pub(crate) async fn client() -> anyhow::Result<kube::Client> {
    let path = kubeconfig_path()?;
    let yaml = std::fs::read_to_string(&path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the management API's kubeconfig {}: {e}\n  start the platform with `korvet up` (writes ~/.korvet/admin.kubeconfig) or set KORVET_KUBECONFIG to the admin.kubeconfig of `korvet server`",
            path.display()
        )
    })?;
    korvet_apimachinery::client_from_kubeconfig_yaml(&yaml)
        .await
        .with_context(|| format!("using {}", path.display()))
}

/// A management-API error as a CLI message that says what to do.
pub(crate) fn explain(error: kube::Error) -> anyhow::Error {
    match error {
        kube::Error::Api(status) => anyhow::anyhow!("{}", status.message),
        kube::Error::HyperError(_) | kube::Error::Service(_) => anyhow::anyhow!(
            "cannot reach the management API ({error}): is `korvet server` or `korvet up` running?"
        ),
        other => anyhow::anyhow!("{other}"),
    }
}

pub(crate) async fn run_cluster(global: Global, command: ClusterCommand) -> anyhow::Result<()> {
    let client = client().await?;
    cluster::run(client, &global, command).await
}

pub(crate) async fn run_nodepool(global: Global, command: NodePoolCommand) -> anyhow::Result<()> {
    let client = client().await?;
    nodepool::run(client, &global, command).await
}

/// `korvet kubeconfig NAME`: the cluster's admin kubeconfig on stdout.
pub(crate) async fn kubeconfig(global: Global, name: String) -> anyhow::Result<()> {
    let client = client().await?;
    let text = cluster::kubeconfig(&client, &global.namespace, &name).await?;
    print!("{text}");
    Ok(())
}
