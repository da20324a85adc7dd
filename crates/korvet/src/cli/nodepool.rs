//! `korvet nodepool ...`: node pools as objects of their own.

use clap::Args;
use korvet_api::{NodePool, NodePoolSpec, PoolTemplate, Taint};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;

use super::output::{age, print};
use super::{explain, Global, NodePoolCommand};

#[derive(Args)]
pub struct AddArgs {
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

pub async fn run(
    client: kube::Client,
    global: &Global,
    command: NodePoolCommand,
) -> anyhow::Result<()> {
    let api: Api<NodePool> = Api::namespaced(client, &global.namespace);
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
            let pool = NodePool::new(
                &args.name,
                NodePoolSpec {
                    cluster: args.cluster,
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
        NodePoolCommand::Scale { name, replicas } => {
            let patch = serde_json::json!({"spec": {"replicas": replicas}});
            let pool = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(explain)?;
            print_pools(global, &[pool], true)?;
        }
        NodePoolCommand::Delete { name } => {
            api.delete(&name, &DeleteParams::default())
                .await
                .map_err(explain)?;
            eprintln!("deleting node pool {name} and its machines");
        }
    }
    Ok(())
}

fn print_pools(global: &Global, pools: &[NodePool], single: bool) -> anyhow::Result<()> {
    print(
        global.output,
        pools,
        single,
        &[
            "NAME", "CLUSTER", "FLAVOR", "ZONE", "DESIRED", "READY", "AGE",
        ],
        |p| {
            let status = p.status.clone().unwrap_or_default();
            vec![
                p.name_any(),
                p.spec.cluster.clone(),
                p.spec.template.flavor.clone(),
                p.spec.template.zone.clone(),
                p.spec.template.replicas.to_string(),
                status.ready_replicas.to_string(),
                age(p.metadata.creation_timestamp.as_ref()),
            ]
        },
    )
}
