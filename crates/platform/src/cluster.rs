//! The cluster controller: network, PKI and control plane of each Cluster; its inline
//! node pools; stop and start; deletion; phase, conditions and Events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::ByteString;
use korvet_api::{
    cluster_condition, labels, machine_phase, phase, set_condition, Cluster, ClusterStatus,
    Condition, LoadBalancer, Machine, NodePool, NodePoolSpec,
};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::control_plane::Credentials;
use crate::layout::{cluster_dir, cluster_key, ClusterLayout};
use crate::{control_plane, Context, PlatformError};

const CONVERGING: Duration = Duration::from_millis(500);
const STEADY: Duration = Duration::from_secs(5);

/// The Cluster an object names in its spec, as a reconcile trigger.
pub(crate) fn of_object<K: Resource>(
    store: &Store<Cluster>,
    object: &K,
    cluster: &str,
) -> Option<ObjectRef<Cluster>> {
    let namespace = object.meta().namespace.as_deref()?;
    let reference = ObjectRef::new(cluster).within(namespace);
    store.get(&reference).map(|_| reference)
}

pub(crate) fn owner_reference(cluster: &Cluster) -> Option<OwnerReference> {
    cluster.controller_owner_ref(&())
}

pub(crate) async fn reconcile(
    cluster: Arc<Cluster>,
    ctx: Arc<Context>,
) -> Result<Action, PlatformError> {
    let namespace = cluster.namespace().unwrap_or_else(|| "default".into());
    let name = cluster.name_any();
    let key = cluster_key(&namespace, &name);
    let api: Api<Cluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let machines = machines_of(&ctx, &namespace, &name).await?;
    if cluster.metadata.deletion_timestamp.is_some() {
        return delete(&cluster, &ctx, &api, &key, &namespace, &machines).await;
    }
    crate::ensure_finalizer(&api, cluster.as_ref()).await?;
    let network = ctx.provider.ensure_network(&key).await?;
    let masters = cluster.spec.control_plane.replicas.clamp(1, 3) as u8;
    let layout = ClusterLayout::new(
        &ctx.data_dir,
        &key,
        network.index,
        network.api_endpoint,
        masters,
    );
    let credentials = ctx.credentials(&key, &layout).await?;
    let old = cluster.status.clone();
    let mut status = old.clone().unwrap_or_default();
    let now = crate::now_rfc3339();
    status.endpoint = layout.endpoint_url();
    status.observed_generation = cluster.metadata.generation;
    let previous = status.phase.clone();
    let desired_nodes = desired_nodes(&ctx, &namespace, &cluster).await?;
    let ready_nodes = machines.iter().filter(|m| machine_ready(m)).count() as i32;
    status.nodes = format!("{ready_nodes}/{desired_nodes}");

    let seen = Seen {
        key: &key,
        namespace: &namespace,
        name: &name,
        previous: &previous,
        now: &now,
        machines: &machines,
        ready_nodes,
        desired_nodes,
    };
    let converged = if cluster.spec.stopped {
        stop(&ctx, &layout, &seen, &mut status).await?
    } else {
        run(&ctx, &cluster, &layout, &credentials, &seen, &mut status).await?
    };
    if status.phase != previous {
        let note = match status.phase.as_str() {
            phase::RUNNING => format!(
                "cluster is running: API at {}, {ready_nodes} nodes ready",
                status.endpoint
            ),
            phase::PROVISIONING => "creating the control plane and machines".into(),
            phase::STOPPING => "stopping machines and control plane".into(),
            phase::STOPPED => "all machines and control-plane processes stopped; data kept".into(),
            phase::STARTING => "starting the control plane and machines".into(),
            phase::FAILED => "the cluster's API stopped answering".into(),
            other => other.to_string(),
        };
        ctx.event(
            cluster.as_ref(),
            status.phase == phase::FAILED,
            &status.phase,
            note,
        )
        .await;
    }
    crate::write_status(&api, cluster.as_ref(), old.as_ref(), &status).await?;
    Ok(Action::requeue(if converged { STEADY } else { CONVERGING }))
}

/// What one reconcile of a cluster found, for the stopped and the running path.
#[derive(Clone, Copy)]
struct Seen<'a> {
    key: &'a str,
    namespace: &'a str,
    name: &'a str,
    previous: &'a str,
    now: &'a str,
    machines: &'a [Machine],
    ready_nodes: i32,
    desired_nodes: i32,
}

/// A stopped cluster: machines stop first (their controller does that), then the
/// control plane. Returns whether it is all stopped.
async fn stop(
    ctx: &Context,
    layout: &ClusterLayout,
    seen: &Seen<'_>,
    status: &mut ClusterStatus,
) -> Result<bool, PlatformError> {
    let Seen {
        key, now, machines, ..
    } = *seen;
    let running = machines
        .iter()
        .filter(|m| {
            m.status
                .as_ref()
                .is_none_or(|s| s.phase != machine_phase::STOPPED)
        })
        .count();
    let converged = if running > 0 {
        status.phase = phase::STOPPING.into();
        false
    } else {
        control_plane::stop(&ctx.supervisor, layout).await?;
        ctx.service_controllers.stop_cluster(ctx, key).await;
        ctx.tenants.forget(key);
        status.phase = phase::STOPPED.into();
        status.ready_control_plane_replicas = Some(0);
        true
    };
    let message = "the cluster is stopped; korvet cluster start brings it back";
    set_condition(
        &mut status.conditions,
        Condition::new(
            cluster_condition::CONTROL_PLANE_READY,
            false,
            "Stopped",
            message,
        ),
        now,
    );
    set_condition(
        &mut status.conditions,
        Condition::new(cluster_condition::READY, false, "Stopped", message),
        now,
    );
    Ok(converged)
}

/// A running cluster: control-plane processes, readiness, kubeconfig, tenant client,
/// inline pools and housekeeping. Returns whether everything is as the spec asks.
async fn run(
    ctx: &Arc<Context>,
    cluster: &Cluster,
    layout: &ClusterLayout,
    credentials: &Credentials,
    seen: &Seen<'_>,
    status: &mut ClusterStatus,
) -> Result<bool, PlatformError> {
    let Seen {
        key,
        namespace,
        name,
        previous,
        now,
        machines,
        ready_nodes,
        desired_nodes,
    } = *seen;
    let masters = layout.masters;
    let health = control_plane::ensure(
        &ctx.supervisor,
        layout,
        &ctx.binaries,
        name,
        &cluster.spec.network.service_cidr,
        &cluster.spec.network.pod_cidr,
    )
    .await?;
    for (process, restarts) in &health.crashing {
        ctx.event(
            cluster,
            true,
            "ControlPlaneCrashing",
            format!(
                "{process} keeps exiting ({restarts} restarts); see its log under {}",
                layout.dir.display()
            ),
        )
        .await;
    }
    if !health.started.is_empty() && !previous.is_empty() && previous != phase::STOPPED {
        ctx.event(
            cluster,
            true,
            "ControlPlaneRestarted",
            format!("started again: {}", health.started.join(", ")),
        )
        .await;
    }
    let (ready_masters, endpoint_ready) =
        control_plane::readiness(&credentials.admin_tls, layout).await;
    status.ready_control_plane_replicas = Some(ready_masters);
    let all_masters = ready_masters == masters as i32;
    set_condition(
        &mut status.conditions,
        if all_masters {
            Condition::new(
                cluster_condition::CONTROL_PLANE_READY,
                true,
                "AllReady",
                format!("{ready_masters} of {masters} API servers ready"),
            )
        } else {
            Condition::new(
                cluster_condition::CONTROL_PLANE_READY,
                false,
                if endpoint_ready {
                    "Degraded"
                } else {
                    "NotReady"
                },
                format!("{ready_masters} of {masters} API servers ready"),
            )
        },
        now,
    );
    if endpoint_ready {
        let kubeconfig = control_plane::admin_kubeconfig(&credentials.pki, layout, name)?;
        let secret_name = ensure_kubeconfig_secret(ctx, cluster, namespace, &kubeconfig).await?;
        status.kubeconfig_secret = secret_name;
        ctx.tenants
            .connect(
                key,
                &kubeconfig,
                &layout.endpoint_url(),
                credentials.pki.ca_cert_pem(),
            )
            .await?;
        sync_inline_pools(ctx, cluster, namespace).await?;
        if let Some(tenant) = ctx.tenants.get(key) {
            ctx.service_controllers
                .ensure(ctx, namespace, name, &tenant);
            // Listed again: a machine made since the start of this reconcile may
            // already have registered its Node.
            let live: Vec<String> = machines_of(ctx, namespace, name)
                .await?
                .iter()
                .filter(|m| m.metadata.deletion_timestamp.is_none())
                .map(|m| m.name_any())
                .collect();
            if let Err(e) = crate::tenant::housekeeping(&tenant, &live).await {
                tracing::warn!(cluster = %key, error = %e, "cluster housekeeping failed");
            }
            // The route controller: pods reach pods on other nodes through the network.
            match crate::tenant::pod_routes(&tenant).await {
                Ok(routes) => {
                    if let Err(e) = ctx.provider.sync_routes(key, &routes).await {
                        tracing::warn!(cluster = %key, error = %e, "syncing pod routes failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(cluster = %key, error = %e, "listing nodes for pod routes failed")
                }
            }
        }
    }
    let nodes_ready = ready_nodes >= desired_nodes && machines.len() as i32 == desired_nodes;
    set_condition(
        &mut status.conditions,
        Condition::new(
            cluster_condition::NODES_READY,
            nodes_ready,
            if nodes_ready { "AllReady" } else { "Waiting" },
            format!("{ready_nodes} of {desired_nodes} nodes ready"),
        ),
        now,
    );
    let ready = endpoint_ready && nodes_ready;
    set_condition(
        &mut status.conditions,
        Condition::new(
            cluster_condition::READY,
            ready,
            if ready { "Ready" } else { "Converging" },
            if ready {
                "the cluster is what its spec asks for".to_string()
            } else {
                format!(
                    "API {}; nodes {ready_nodes}/{desired_nodes} ready",
                    if endpoint_ready {
                        "answers"
                    } else {
                        "not answering yet"
                    }
                )
            },
        ),
        now,
    );
    status.phase = if ready || (previous == phase::RUNNING && endpoint_ready) {
        phase::RUNNING
    } else if [phase::STOPPED, phase::STOPPING, phase::STARTING].contains(&previous) {
        phase::STARTING
    } else if previous == phase::RUNNING {
        phase::FAILED
    } else {
        phase::PROVISIONING
    }
    .into();
    Ok(ready && all_masters && health.crashing.is_empty())
}

fn machine_ready(machine: &Machine) -> bool {
    machine.status.as_ref().is_some_and(|s| s.ready)
}

async fn machines_of(
    ctx: &Context,
    namespace: &str,
    cluster: &str,
) -> Result<Vec<Machine>, PlatformError> {
    let api: Api<Machine> = Api::namespaced(ctx.client.clone(), namespace);
    let list = api
        .list(&kube::api::ListParams::default().labels(&format!("{}={cluster}", labels::CLUSTER)))
        .await?;
    Ok(list.items)
}

/// Node pools of a cluster: NodePool objects naming it, and inline pools not yet made
/// into objects.
pub(crate) async fn pools_of(
    ctx: &Context,
    namespace: &str,
    cluster: &str,
) -> Result<Vec<NodePool>, PlatformError> {
    let api: Api<NodePool> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.spec.cluster == cluster)
        .collect())
}

async fn desired_nodes(
    ctx: &Context,
    namespace: &str,
    cluster: &Cluster,
) -> Result<i32, PlatformError> {
    let name = cluster.name_any();
    let pools = pools_of(ctx, namespace, &name).await?;
    let mut total: i32 = pools
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.spec.template.replicas)
        .sum();
    for inline in &cluster.spec.node_pools {
        let object = korvet_api::node_pool_name(&name, &inline.name);
        if !pools.iter().any(|p| p.name_any() == object) {
            total += inline.pool.replicas;
        }
    }
    Ok(total)
}

/// Keeps a NodePool object for each inline pool, as the Cluster's spec says, and removes
/// those whose inline pool is gone.
async fn sync_inline_pools(
    ctx: &Context,
    cluster: &Cluster,
    namespace: &str,
) -> Result<(), PlatformError> {
    let name = cluster.name_any();
    let api: Api<NodePool> = Api::namespaced(ctx.client.clone(), namespace);
    let existing = pools_of(ctx, namespace, &name).await?;
    for inline in &cluster.spec.node_pools {
        let pool_name = korvet_api::node_pool_name(&name, &inline.name);
        let spec = NodePoolSpec {
            cluster: name.clone(),
            template: inline.pool.clone(),
        };
        match existing.iter().find(|p| p.name_any() == pool_name) {
            Some(pool) if pool.spec == spec => {}
            Some(_) => {
                let patch = serde_json::json!({"spec": spec});
                api.patch(&pool_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
            None => {
                let mut pool = NodePool::new(&pool_name, spec);
                pool.metadata.labels = Some(BTreeMap::from([
                    (labels::CLUSTER.to_string(), name.clone()),
                    (labels::INLINE_POOL.to_string(), "true".to_string()),
                ]));
                pool.metadata.owner_references = owner_reference(cluster).map(|o| vec![o]);
                crate::create_if_missing(&api, &pool).await?;
            }
        }
    }
    for pool in existing.iter().filter(|p| {
        p.labels()
            .get(labels::INLINE_POOL)
            .is_some_and(|v| v == "true")
            && p.metadata.deletion_timestamp.is_none()
            && !cluster
                .spec
                .node_pools
                .iter()
                .any(|i| korvet_api::node_pool_name(&name, &i.name) == p.name_any())
    }) {
        crate::delete_object(&api, &pool.name_any()).await?;
    }
    Ok(())
}

async fn ensure_kubeconfig_secret(
    ctx: &Context,
    cluster: &Cluster,
    namespace: &str,
    kubeconfig: &str,
) -> Result<String, PlatformError> {
    let name = format!("{}-kubeconfig", cluster.name_any());
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let data = BTreeMap::from([(
        "value".to_string(),
        ByteString(kubeconfig.as_bytes().to_vec()),
    )]);
    match api.get_opt(&name).await? {
        Some(existing) if existing.data.as_ref() == Some(&data) => {}
        Some(_) => {
            let patch =
                serde_json::json!({"data": {"value": ByteString(kubeconfig.as_bytes().to_vec())}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        None => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(BTreeMap::from([(
                        labels::CLUSTER.to_string(),
                        cluster.name_any(),
                    )])),
                    owner_references: owner_reference(cluster).map(|o| vec![o]),
                    ..Default::default()
                },
                type_: Some("korvet.io/kubeconfig".into()),
                data: Some(data),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(name)
}

async fn delete(
    cluster: &Cluster,
    ctx: &Context,
    api: &Api<Cluster>,
    key: &str,
    namespace: &str,
    machines: &[Machine],
) -> Result<Action, PlatformError> {
    let name = cluster.name_any();
    if cluster.phase() != phase::DELETING {
        ctx.event(
            cluster,
            false,
            phase::DELETING,
            "deleting machines, control plane and network".into(),
        )
        .await;
        let mut status: ClusterStatus = cluster.status.clone().unwrap_or_default();
        status.phase = phase::DELETING.into();
        crate::write_status(api, cluster, cluster.status.as_ref(), &status).await?;
    }
    let pools_api: Api<NodePool> = Api::namespaced(ctx.client.clone(), namespace);
    for pool in pools_of(ctx, namespace, &name).await? {
        if pool.metadata.deletion_timestamp.is_none() {
            crate::delete_object(&pools_api, &pool.name_any()).await?;
        }
    }
    if !machines.is_empty() {
        return Ok(Action::requeue(CONVERGING));
    }
    if !pools_of(ctx, namespace, &name).await?.is_empty() {
        return Ok(Action::requeue(CONVERGING));
    }
    // Load balancers release their addresses before the network goes.
    ctx.service_controllers.stop(key);
    let lbs: Api<LoadBalancer> = Api::namespaced(ctx.client.clone(), namespace);
    let own = kube::api::ListParams::default().labels(&format!("{}={name}", labels::CLUSTER));
    let remaining: Vec<LoadBalancer> = lbs
        .list(&own)
        .await?
        .items
        .into_iter()
        .filter(|lb| lb.spec.cluster == name)
        .collect();
    for lb in remaining
        .iter()
        .filter(|lb| lb.metadata.deletion_timestamp.is_none())
    {
        crate::delete_object(&lbs, &lb.name_any()).await?;
    }
    if !remaining.is_empty() {
        return Ok(Action::requeue(CONVERGING));
    }
    ctx.keepers.stop(key);
    if let Some(balancers) = &ctx.load_balancers {
        balancers.delete_balancer(key).await?;
    }
    ctx.tenants.forget(key);
    ctx.forget_credentials(key);
    let processes = cluster_dir(&ctx.data_dir, key).join("processes");
    control_plane::stop_processes(&ctx.supervisor, &processes).await?;
    ctx.provider.delete_network(key).await?;
    let dir = cluster_dir(&ctx.data_dir, key);
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PlatformError::Io(format!("{}: {e}", dir.display()))),
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    crate::delete_object(&secrets, &format!("{name}-kubeconfig")).await?;
    crate::remove_finalizer(api, cluster).await?;
    tracing::info!(cluster = %key, "cluster deleted");
    Ok(Action::await_change())
}
