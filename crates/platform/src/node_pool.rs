//! The node-pool controller: as many Machines as the pool asks for, removing the least
//! useful first (not ready, then newest) when scaling down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use korvet_api::{labels, Cluster, Machine, MachineSpec, NodePool, NodePoolStatus};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::{Context, PlatformError};

/// The pools of a cluster, as reconcile triggers when the cluster changes (stopped,
/// started).
pub(crate) fn of_cluster(store: &Store<NodePool>, cluster: &Cluster) -> Vec<ObjectRef<NodePool>> {
    let namespace = cluster.namespace();
    store
        .state()
        .iter()
        .filter(|p| p.namespace() == namespace && p.spec.cluster == cluster.name_any())
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

pub(crate) async fn reconcile(
    pool: Arc<NodePool>,
    ctx: Arc<Context>,
) -> Result<Action, PlatformError> {
    let namespace = pool.namespace().unwrap_or_else(|| "default".into());
    let name = pool.name_any();
    let api: Api<NodePool> = Api::namespaced(ctx.client.clone(), &namespace);
    let machines_api: Api<Machine> = Api::namespaced(ctx.client.clone(), &namespace);
    let machines = machines_api
        .list(&ListParams::default().labels(&format!("{}={name}", labels::NODE_POOL)))
        .await?
        .items;
    if pool.metadata.deletion_timestamp.is_some() {
        for machine in machines
            .iter()
            .filter(|m| m.metadata.deletion_timestamp.is_none())
        {
            crate::delete_object(&machines_api, &machine.name_any()).await?;
        }
        if !machines.is_empty() {
            return Ok(Action::requeue(Duration::from_millis(500)));
        }
        crate::remove_finalizer(&api, pool.as_ref()).await?;
        return Ok(Action::await_change());
    }
    crate::ensure_finalizer(&api, pool.as_ref()).await?;
    let clusters: Api<Cluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(cluster) = clusters.get_opt(&pool.spec.cluster).await? else {
        return Ok(Action::requeue(Duration::from_secs(5)));
    };
    let live: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .collect();
    let want = pool.spec.template.replicas.max(0) as usize;
    let scalable = cluster.metadata.deletion_timestamp.is_none() && !cluster.spec.stopped;
    if scalable && live.len() < want {
        for _ in live.len()..want {
            create_machine(&machines_api, &pool, &name).await?;
        }
        ctx.event(
            pool.as_ref(),
            false,
            "ScalingUp",
            format!("creating {} machine(s) to reach {want}", want - live.len()),
        )
        .await;
    } else if scalable && live.len() > want {
        let mut victims = live.clone();
        // Not-ready machines go first, then the newest.
        victims.sort_by_key(|m| {
            (
                m.status.as_ref().is_some_and(|s| s.ready),
                std::cmp::Reverse(m.metadata.creation_timestamp.clone()),
            )
        });
        for machine in victims.iter().take(live.len() - want) {
            crate::delete_object(&machines_api, &machine.name_any()).await?;
        }
        ctx.event(
            pool.as_ref(),
            false,
            "ScalingDown",
            format!("removing {} machine(s) to reach {want}", live.len() - want),
        )
        .await;
    }
    let ready = live
        .iter()
        .filter(|m| m.status.as_ref().is_some_and(|s| s.ready))
        .count() as i32;
    let status = NodePoolStatus {
        replicas: live.len() as i32,
        ready_replicas: ready,
        conditions: Vec::new(),
        observed_generation: pool.metadata.generation,
    };
    crate::write_status(&api, pool.as_ref(), pool.status.as_ref(), &status).await?;
    let converged = live.len() == want && ready as usize == want;
    Ok(Action::requeue(if converged {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(1)
    }))
}

async fn create_machine(
    api: &Api<Machine>,
    pool: &NodePool,
    pool_name: &str,
) -> Result<(), PlatformError> {
    let name = format!(
        "{pool_name}-{}",
        korvet_apimachinery::names::random_suffix()
    );
    let mut machine = Machine::new(
        &name,
        MachineSpec {
            cluster: pool.spec.cluster.clone(),
            node_pool: pool_name.to_string(),
            flavor: pool.spec.template.flavor.clone(),
            zone: pool.spec.template.zone.clone(),
        },
    );
    machine.metadata.labels = Some(BTreeMap::from([
        (labels::CLUSTER.to_string(), pool.spec.cluster.clone()),
        (labels::NODE_POOL.to_string(), pool_name.to_string()),
    ]));
    machine.metadata.owner_references = pool.controller_owner_ref(&()).map(|o| vec![o]);
    machine.metadata.finalizers = Some(vec![crate::FINALIZER.to_string()]);
    api.create(&PostParams::default(), &machine).await?;
    Ok(())
}
