//! `korvet cluster ...` and `korvet kubeconfig`.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use korvet_api::{
    cluster_condition, find_condition, phase, Cluster, ClusterSpec, ControlPlaneSpec,
    InlineNodePool, PoolTemplate,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;

use super::output::{age, print};
use super::{explain, ClusterCommand, Global};

#[derive(Args)]
pub(crate) struct CreateArgs {
    pub name: String,
    /// Kubernetes version (MAJOR.MINOR).
    #[arg(long)]
    pub version: Option<String>,
    /// Control-plane replicas: 1, or 3 for high availability.
    #[arg(long, default_value_t = 1)]
    pub masters: i32,
    /// A node pool as NAME:FLAVOR:ZONE:COUNT (repeatable), e.g. workers:small:zone-a:2.
    #[arg(long = "pool")]
    pub pools: Vec<String>,
    /// Network of the pods (default 10.244.0.0/16).
    #[arg(long)]
    pub pod_cidr: Option<String>,
    /// Network of the Services' ClusterIPs (default 10.96.0.0/12).
    #[arg(long)]
    pub service_cidr: Option<String>,
    /// Wait until the cluster is Running, showing its progress.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Args)]
pub(crate) struct ScaleArgs {
    pub name: String,
    /// The pool to scale (its name in the cluster).
    #[arg(long)]
    pub pool: String,
    #[arg(long)]
    pub replicas: i32,
}

#[derive(Args)]
pub(crate) struct NameWait {
    pub name: String,
    /// Wait until the operation has finished.
    #[arg(long)]
    pub wait: bool,
}

fn parse_pool(text: &str) -> anyhow::Result<InlineNodePool> {
    let parts: Vec<&str> = text.split(':').collect();
    let [name, flavor, zone, count] = parts[..] else {
        anyhow::bail!(
            "--pool {text:?}: expected NAME:FLAVOR:ZONE:COUNT, e.g. workers:small:zone-a:2"
        );
    };
    let replicas = count
        .parse()
        .map_err(|_| anyhow::anyhow!("--pool {text:?}: COUNT must be a number of nodes"))?;
    Ok(InlineNodePool {
        name: name.to_string(),
        pool: PoolTemplate {
            flavor: flavor.to_string(),
            zone: zone.to_string(),
            replicas,
            ..Default::default()
        },
    })
}

pub(super) async fn run(
    client: kube::Client,
    global: &Global,
    command: ClusterCommand,
) -> anyhow::Result<()> {
    let api: Api<Cluster> = Api::namespaced(client.clone(), &global.namespace);
    match command {
        ClusterCommand::Create(args) => {
            let pools = args
                .pools
                .iter()
                .map(|p| parse_pool(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut spec = ClusterSpec {
                control_plane: ControlPlaneSpec {
                    replicas: args.masters,
                },
                node_pools: pools,
                ..serde_json::from_value(serde_json::json!({}))?
            };
            if let Some(version) = args.version {
                spec.version = version;
            }
            if let Some(cidr) = args.pod_cidr {
                spec.network.pod_cidr = cidr;
            }
            if let Some(cidr) = args.service_cidr {
                spec.network.service_cidr = cidr;
            }
            let cluster = Cluster::new(&args.name, spec);
            let created = api
                .create(&PostParams::default(), &cluster)
                .await
                .map_err(explain)?;
            eprintln!("cluster {} created", created.name_any());
            if args.wait {
                let done = wait_running(&api, &args.name).await?;
                print_clusters(global, &[done], true)?;
                eprintln!("next: korvet kubeconfig {} > {}.kubeconfig && kubectl --kubeconfig {}.kubeconfig get nodes", args.name, args.name, args.name);
            } else {
                print_clusters(global, &[created], true)?;
            }
        }
        ClusterCommand::List => {
            let list = api.list(&Default::default()).await.map_err(explain)?;
            print_clusters(global, &list.items, false)?;
        }
        ClusterCommand::Get { name } => {
            let cluster = api.get(&name).await.map_err(explain)?;
            print_clusters(global, &[cluster], true)?;
        }
        ClusterCommand::Scale(args) => scale(&client, global, args).await?,
        ClusterCommand::Stop(args) => {
            set_stopped(&api, &args.name, true).await?;
            eprintln!("stopping cluster {}", args.name);
            if args.wait {
                let done =
                    wait_for(&api, &args.name, |c| c.map(|c| c.phase() == phase::STOPPED)).await?;
                print_clusters(global, &[done], true)?;
            }
        }
        ClusterCommand::Start(args) => {
            set_stopped(&api, &args.name, false).await?;
            eprintln!("starting cluster {}", args.name);
            if args.wait {
                let done = wait_running(&api, &args.name).await?;
                print_clusters(global, &[done], true)?;
            }
        }
        ClusterCommand::Delete(args) => {
            api.delete(&args.name, &DeleteParams::default())
                .await
                .map_err(explain)?;
            eprintln!("deleting cluster {}", args.name);
            if args.wait {
                let api = api.clone();
                wait_gone(&api, &args.name).await?;
                eprintln!("cluster {} deleted", args.name);
            }
        }
    }
    Ok(())
}

/// Waits (with progress) until the cluster is Running and Ready.
pub(crate) async fn wait_running(api: &Api<Cluster>, name: &str) -> anyhow::Result<Cluster> {
    wait_for(api, name, |c| {
        c.map(|c| c.phase() == phase::RUNNING && ready(c))
    })
    .await
}

fn ready(cluster: &Cluster) -> bool {
    cluster
        .status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, cluster_condition::READY))
        .is_some_and(|c| c.is_true())
}

async fn set_stopped(api: &Api<Cluster>, name: &str, stopped: bool) -> anyhow::Result<()> {
    let patch = serde_json::json!({"spec": {"stopped": stopped}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(explain)?;
    Ok(())
}

async fn scale(client: &kube::Client, global: &Global, args: ScaleArgs) -> anyhow::Result<()> {
    let pool = super::nodepool::PoolRef {
        cluster: args.name,
        pool: args.pool,
    };
    super::nodepool::scale_pool(client, &global.namespace, &pool, args.replicas).await?;
    eprintln!(
        "pool {} of cluster {} scaled to {}",
        pool.pool, pool.cluster, args.replicas
    );
    Ok(())
}

/// Polls the cluster until `done` says so, drawing its phase and node count.
async fn wait_for(
    api: &Api<Cluster>,
    name: &str,
    done: impl Fn(Option<&Cluster>) -> Option<bool>,
) -> anyhow::Result<Cluster> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    let started = Instant::now();
    loop {
        let cluster = api.get_opt(name).await.map_err(explain)?;
        if let Some(cluster) = &cluster {
            let status = cluster.status.clone().unwrap_or_default();
            bar.set_message(format!(
                "{name}: {} · masters {}/{} · nodes {} · {:.0}s",
                if status.phase.is_empty() {
                    "Pending"
                } else {
                    &status.phase
                },
                status.ready_control_plane_replicas.unwrap_or(0),
                cluster.spec.control_plane.replicas,
                if status.nodes.is_empty() {
                    "-"
                } else {
                    &status.nodes
                },
                started.elapsed().as_secs_f64()
            ));
            if status.phase == phase::FAILED {
                bar.finish_and_clear();
                let reason = find_condition(&status.conditions, cluster_condition::READY)
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                anyhow::bail!("cluster {name} failed: {reason}; see `kubectl --kubeconfig $KORVET_KUBECONFIG get events`");
            }
        }
        match done(cluster.as_ref()) {
            Some(true) => {
                bar.finish_and_clear();
                return cluster.context("the cluster disappeared");
            }
            None => {
                bar.finish_and_clear();
                anyhow::bail!("cluster {name} does not exist (any more)");
            }
            Some(false) => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_gone(api: &Api<Cluster>, name: &str) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    loop {
        match api.get_opt(name).await.map_err(explain)? {
            None => {
                bar.finish_and_clear();
                return Ok(());
            }
            Some(cluster) => bar.set_message(format!("{name}: {}", cluster.phase())),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_clusters(global: &Global, clusters: &[Cluster], single: bool) -> anyhow::Result<()> {
    print(
        global.output,
        clusters,
        single,
        &[
            "NAME", "VERSION", "MASTERS", "PHASE", "NODES", "ENDPOINT", "AGE",
        ],
        |c| {
            let status = c.status.clone().unwrap_or_default();
            vec![
                c.name_any(),
                c.spec.version.clone(),
                c.spec.control_plane.replicas.to_string(),
                status.phase,
                status.nodes,
                status.endpoint,
                age(c.metadata.creation_timestamp.as_ref()),
            ]
        },
    )
}

/// The admin kubeconfig of a cluster, from the Secret the platform keeps.
pub(crate) async fn kubeconfig(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<String> {
    korvet_platform::cluster_kubeconfig(client, namespace, name)
        .await
        .map_err(|e| match e {
            korvet_platform::KubeconfigError::Api(e) => explain(e),
            other => other.into(),
        })
}
