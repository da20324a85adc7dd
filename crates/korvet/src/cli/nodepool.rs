//! `korvet nodepool ...`: node pools as objects of their own.

use clap::Args;
use korvet_api::{node_pool_name, pool_of, Cluster, NodePool, NodePoolSpec, PoolTemplate, Taint};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;

use super::output::{age, print};
use super::{explain, Global, NodePoolCommand};

/// A pool as `CLUSTER POOL`.
#[derive(Args)]
pub(crate) struct PoolRef {
    /// The cluster the pool belongs to.
    pub cluster: String,
    /// The pool's name in the cluster.
    pub pool: String,
}

#[derive(Args)]
pub(crate) struct AddArgs {
    /// The cluster the pool belongs to.
    pub cluster: String,
    /// Name of the pool.
    pub name: String,
    #[arg(long, default_value = "small")]
    pub flavor: String,
    #[arg(long, default_value = "zone-a")]
    pub zone: String,
    #[arg(long, default_value_t = 1)]
    pub replicas: i32,
    /// A node label KEY=VALUE (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// A node taint KEY[=VALUE]:EFFECT (repeatable).
    #[arg(long = "taint")]
    pub taints: Vec<String>,
    /// Autoscaling bounds MIN:MAX, kept for the cluster autoscaler.
    #[arg(long)]
    pub autoscale: Option<String>,
}

fn parse_taint(text: &str) -> anyhow::Result<Taint> {
    let (kv, effect) = text
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("--taint {text:?}: expected KEY[=VALUE]:EFFECT"))?;
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    Ok(Taint {
        key: key.into(),
        value: value.into(),
        effect: effect.into(),
    })
}

pub(super) async fn run(
    client: kube::Client,
    global: &Global,
    command: NodePoolCommand,
) -> anyhow::Result<()> {
    let api: Api<NodePool> = Api::namespaced(client.clone(), &global.namespace);
    match command {
        NodePoolCommand::Add(args) => {
            let labels = args
                .labels
                .iter()
                .map(|l| {
                    l.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| anyhow::anyhow!("--label {l:?}: expected KEY=VALUE"))
                })
                .collect::<anyhow::Result<_>>()?;
            let taints = args
                .taints
                .iter()
                .map(|t| parse_taint(t))
                .collect::<anyhow::Result<_>>()?;
            let autoscaling = args
                .autoscale
                .as_deref()
                .map(|text| {
                    let (min, max) = text
                        .split_once(':')
                        .ok_or_else(|| anyhow::anyhow!("--autoscale {text:?}: expected MIN:MAX"))?;
                    Ok::<_, anyhow::Error>(korvet_api::Autoscaling {
                        min_replicas: min.parse()?,
                        max_replicas: max.parse()?,
                    })
                })
                .transpose()?;
            let mut pool = NodePool::new(
                &node_pool_name(&args.cluster, &args.name),
                NodePoolSpec {
                    cluster: args.cluster.clone(),
                    template: PoolTemplate {
                        flavor: args.flavor,
                        zone: args.zone,
                        replicas: args.replicas,
                        labels,
                        taints,
                        autoscaling,
                    },
                },
            );
            pool.metadata.labels =
                Some([(korvet_api::labels::CLUSTER.to_string(), args.cluster)].into());
            let created = api
                .create(&PostParams::default(), &pool)
                .await
                .map_err(explain)?;
            print_pools(global, &[created], true)?;
        }
        NodePoolCommand::List { cluster } => {
            let list = api.list(&Default::default()).await.map_err(explain)?;
            let pools: Vec<NodePool> = list
                .items
                .into_iter()
                .filter(|p| cluster.as_ref().is_none_or(|c| &p.spec.cluster == c))
                .collect();
            print_pools(global, &pools, false)?;
        }
        NodePoolCommand::Get(pool) => {
            let found = find_pool(&client, &global.namespace, &pool).await?;
            print_pools(global, &[found], true)?;
        }
        NodePoolCommand::Scale { pool, replicas } => {
            scale_pool(&client, &global.namespace, &pool, replicas).await?;
            let scaled = find_pool(&client, &global.namespace, &pool).await?;
            print_pools(global, &[scaled], true)?;
        }
        NodePoolCommand::Delete(pool) => {
            delete_pool(&client, &global.namespace, &pool).await?;
            eprintln!(
                "deleting node pool {} of cluster {} and its machines",
                pool.pool, pool.cluster
            );
        }
    }
    Ok(())
}

/// The NodePool object of a pool, with an error that lists the cluster's pools.
async fn find_pool(
    client: &kube::Client,
    namespace: &str,
    pool: &PoolRef,
) -> anyhow::Result<NodePool> {
    let api: Api<NodePool> = Api::namespaced(client.clone(), namespace);
    let name = node_pool_name(&pool.cluster, &pool.pool);
    if let Some(found) = api.get_opt(&name).await.map_err(explain)? {
        if found.spec.cluster == pool.cluster {
            return Ok(found);
        }
    }
    Err(no_such_pool(client, namespace, pool).await)
}

async fn no_such_pool(client: &kube::Client, namespace: &str, pool: &PoolRef) -> anyhow::Error {
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), namespace);
    match clusters.get_opt(&pool.cluster).await {
        Ok(None) => {
            return anyhow::anyhow!(
                "no cluster {:?} in namespace {namespace}; list them with `korvet cluster list`",
                pool.cluster
            )
        }
        Err(e) => return explain(e),
        Ok(Some(_)) => {}
    }
    let api: Api<NodePool> = Api::namespaced(client.clone(), namespace);
    let known: Vec<String> = match api.list(&Default::default()).await {
        Ok(list) => list
            .items
            .iter()
            .filter(|p| p.spec.cluster == pool.cluster)
            .map(|p| pool_of(p).to_string())
            .collect(),
        Err(e) => return explain(e),
    };
    anyhow::anyhow!(
        "cluster {} has no pool {:?} (its pools: {}); list them with `korvet nodepool list {}`",
        pool.cluster,
        pool.pool,
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        },
        pool.cluster
    )
}

/// Sets a pool's node count: in the Cluster's spec for a pool made with the cluster (the
/// platform keeps its NodePool in step with it), on the NodePool for one added later.
pub(super) async fn scale_pool(
    client: &kube::Client,
    namespace: &str,
    pool: &PoolRef,
    replicas: i32,
) -> anyhow::Result<()> {
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), namespace);
    let cluster = clusters.get(&pool.cluster).await.map_err(explain)?;
    if let Some(index) = cluster
        .spec
        .node_pools
        .iter()
        .position(|p| p.name == pool.pool)
    {
        let mut pools = cluster.spec.node_pools.clone();
        pools[index].pool.replicas = replicas;
        set_inline_pools(&clusters, &cluster, &pools).await?;
    } else {
        let found = find_pool(client, namespace, pool).await?;
        let api: Api<NodePool> = Api::namespaced(client.clone(), namespace);
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        api.patch(
            &found.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(explain)?;
    }
    Ok(())
}

/// Writes a Cluster's inline pools, refused if the Cluster changed since it was read.
async fn set_inline_pools(
    clusters: &Api<Cluster>,
    cluster: &Cluster,
    pools: &[korvet_api::InlineNodePool],
) -> anyhow::Result<()> {
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": cluster.resource_version()},
        "spec": {"nodePools": pools},
    });
    clusters
        .patch(
            &cluster.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(explain)?;
    Ok(())
}

/// Deletes a pool: from the Cluster's spec for a pool made with the cluster, else the
/// NodePool itself.
async fn delete_pool(client: &kube::Client, namespace: &str, pool: &PoolRef) -> anyhow::Result<()> {
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), namespace);
    let cluster = clusters.get(&pool.cluster).await.map_err(explain)?;
    if cluster.spec.node_pools.iter().any(|p| p.name == pool.pool) {
        let pools: Vec<_> = cluster
            .spec
            .node_pools
            .iter()
            .filter(|p| p.name != pool.pool)
            .cloned()
            .collect();
        return set_inline_pools(&clusters, &cluster, &pools).await;
    }
    let found = find_pool(client, namespace, pool).await?;
    let api: Api<NodePool> = Api::namespaced(client.clone(), namespace);
    api.delete(&found.name_any(), &DeleteParams::default())
        .await
        .map_err(explain)?;
    Ok(())
}

fn print_pools(global: &Global, pools: &[NodePool], single: bool) -> anyhow::Result<()> {
    print(
        global.output,
        pools,
        single,
        &[
            "CLUSTER", "POOL", "FLAVOR", "ZONE", "DESIRED", "READY", "AGE",
        ],
        |p| {
            let status = p.status.clone().unwrap_or_default();
            vec![
                p.spec.cluster.clone(),
                pool_of(p).to_string(),
                p.spec.template.flavor.clone(),
                p.spec.template.zone.clone(),
                p.spec.template.replicas.to_string(),
                status.ready_replicas.to_string(),
                age(p.metadata.creation_timestamp.as_ref()),
            ]
        },
    )
}
