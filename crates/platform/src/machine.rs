//! The machine controller: one provider machine per Machine, running `korvet node`,
//! which joins the cluster with a short-lived bootstrap token; stopped and started with
//! its cluster; its Node removed from the cluster when it is deleted.

use std::sync::Arc;
use std::time::Duration;

use korvet_api::{labels, machine_phase, Cluster, Flavor, Machine, MachineStatus, NodePool};
use korvet_apimachinery::quantity;
use korvet_apiserver::pki::{token_kubeconfig_yaml, TokenKubeconfigSpec};
use korvet_cloud::{BootSpec, MachineInfo, MachineSpec, MachineState};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;

use crate::layout::cluster_key;
use crate::tenant::{self, Tenant};
use crate::{Context, PlatformError};

const WAITING: Duration = Duration::from_millis(500);
const STEADY: Duration = Duration::from_secs(10);
/// Pods per node, as upstream's default.
const MAX_PODS: u32 = 110;
const BOOTSTRAP_KUBECONFIG: &str = "bootstrap.kubeconfig";

/// The machines of a cluster, as reconcile triggers when the cluster changes.
pub(crate) fn of_cluster(store: &Store<Machine>, cluster: &Cluster) -> Vec<ObjectRef<Machine>> {
    let namespace = cluster.namespace();
    store
        .state()
        .iter()
        .filter(|m| m.namespace() == namespace && m.spec.cluster == cluster.name_any())
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect()
}

pub(crate) async fn reconcile(
    machine: Arc<Machine>,
    ctx: Arc<Context>,
) -> Result<Action, PlatformError> {
    let namespace = machine.namespace().unwrap_or_else(|| "default".into());
    let name = machine.name_any();
    let provider_name = cluster_key(&namespace, &name);
    let cluster_key = cluster_key(&namespace, &machine.spec.cluster);
    let api: Api<Machine> = Api::namespaced(ctx.client.clone(), &namespace);
    let clusters: Api<Cluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let cluster = clusters.get_opt(&machine.spec.cluster).await?;
    let old = machine.status.clone();
    let mut status = old.clone().unwrap_or_default();

    if machine.metadata.deletion_timestamp.is_some() {
        if status.phase != machine_phase::DELETING {
            status.phase = machine_phase::DELETING.into();
            crate::write_status(&api, machine.as_ref(), old.as_ref(), &status).await?;
        }
        let cluster_live = cluster
            .as_ref()
            .is_some_and(|c| c.metadata.deletion_timestamp.is_none() && !c.spec.stopped);
        if let (true, Some(tenant)) = (cluster_live, ctx.tenants.get(&cluster_key)) {
            tenant::delete_node(&tenant, &name).await?;
        }
        ctx.provider.delete_machine(&provider_name).await?;
        ctx.event(
            machine.as_ref(),
            false,
            "Deleted",
            format!("machine {name} and its node removed"),
        )
        .await;
        crate::remove_finalizer(&api, machine.as_ref()).await?;
        return Ok(Action::await_change());
    }
    crate::ensure_finalizer(&api, machine.as_ref()).await?;
    let Some(cluster) = cluster else {
        return Ok(Action::requeue(Duration::from_secs(5)));
    };
    let info = ctx.provider.get_machine(&provider_name).await?;

    let requeue = if cluster.spec.stopped {
        if info
            .as_ref()
            .is_some_and(|i| i.state == MachineState::Running)
        {
            ctx.provider.stop_machine(&provider_name).await?;
            ctx.event(
                machine.as_ref(),
                false,
                "Stopped",
                "machine stopped with its cluster; its disk is kept".into(),
            )
            .await;
        }
        status.phase = machine_phase::STOPPED.into();
        status.ready = false;
        STEADY
    } else {
        let Some(tenant) = ctx.tenants.get(&cluster_key) else {
            // The cluster's API does not answer yet: nothing can join.
            if status.phase.is_empty() {
                status.phase = machine_phase::PENDING.into();
            }
            crate::write_status(&api, machine.as_ref(), old.as_ref(), &status).await?;
            return Ok(Action::requeue(WAITING));
        };
        let info = match info {
            None => {
                let spec = machine_spec(
                    &ctx,
                    &machine,
                    &namespace,
                    &provider_name,
                    &cluster_key,
                    &tenant,
                    Some(&cluster),
                )
                .await?;
                let info = ctx.provider.create_machine(&spec).await?;
                ctx.event(
                    machine.as_ref(),
                    false,
                    "Created",
                    format!("machine created at {} in {}", info.address, info.zone),
                )
                .await;
                info
            }
            Some(info) if info.state == MachineState::Stopped => {
                let info = ctx.provider.start_machine(&provider_name).await?;
                ctx.event(machine.as_ref(), false, "Started", "machine started".into())
                    .await;
                info
            }
            Some(info) => info,
        };
        record(&mut status, &info, &name);
        status.ready = tenant::node_ready(&tenant, &name).await.unwrap_or(false);
        status.phase = if status.ready {
            machine_phase::RUNNING
        } else {
            machine_phase::PROVISIONING
        }
        .into();
        if status.ready {
            STEADY
        } else {
            WAITING
        }
    };
    if status.ready && !old.as_ref().is_some_and(|s| s.ready) {
        ctx.event(
            machine.as_ref(),
            false,
            "NodeReady",
            format!("node {name} is Ready"),
        )
        .await;
    }
    crate::write_status(&api, machine.as_ref(), old.as_ref(), &status).await?;
    Ok(Action::requeue(requeue))
}

fn cluster_dns_ip(service_cidr: &str) -> Option<std::net::Ipv4Addr> {
    let net: ipnet::Ipv4Net = service_cidr.parse().ok()?;
    Some(std::net::Ipv4Addr::from(u32::from(net.network()) + 10))
}

fn record(status: &mut MachineStatus, info: &MachineInfo, name: &str) {
    status.provider_id = info.provider_id.clone();
    status.address = info.address.to_string();
    status.node_name = name.to_string();
}

/// The provider machine for a Machine: the flavor's size, and `korvet node` with a
/// bootstrap kubeconfig as what it boots.
async fn machine_spec(
    ctx: &Context,
    machine: &Machine,
    namespace: &str,
    provider_name: &str,
    cluster_key: &str,
    tenant: &Tenant,
    cluster: Option<&Cluster>,
) -> Result<MachineSpec, PlatformError> {
    let flavors: Api<Flavor> = Api::all(ctx.client.clone());
    let flavor = flavors.get(&machine.spec.flavor).await?;
    let cpu = quantity::as_f64(&flavor.spec.cpu).unwrap_or(1.0);
    let memory = quantity::as_f64(&flavor.spec.memory).unwrap_or(2.0 * 1024.0 * 1024.0 * 1024.0);
    let disk = quantity::as_f64(&flavor.spec.disk).unwrap_or(20.0 * 1024.0 * 1024.0 * 1024.0);
    let pools: Api<NodePool> = Api::namespaced(ctx.client.clone(), namespace);
    let pool = pools.get_opt(&machine.spec.node_pool).await?;
    let name = machine.name_any();
    let token = tenant::create_bootstrap_token(tenant, &name).await?;
    let bootstrap = token_kubeconfig_yaml(&TokenKubeconfigSpec {
        cluster_name: machine.spec.cluster.clone(),
        server_url: tenant.endpoint.clone(),
        ca_pem: tenant.ca_pem.clone(),
        user: format!("bootstrap-{name}"),
        token,
    })
    .map_err(|e| PlatformError::Tenant(format!("bootstrap kubeconfig: {e}")))?;
    let mut args = vec![
        "node".to_string(),
        "--data-dir={dir}/node".to_string(),
        format!("--bootstrap-kubeconfig={{dir}}/{BOOTSTRAP_KUBECONFIG}"),
        format!("--node-name={name}"),
        "--address={address}".to_string(),
        // Where the machine's containerd (configured by the provider) reads CNI config.
        "--cni-conf-dir={dir}/cni/net.d".to_string(),
        format!("--provider-id=korvet-local:///{provider_name}"),
        format!(
            "--capacity=cpu={},memory={},pods={MAX_PODS},ephemeral-storage={}",
            flavor.spec.cpu, flavor.spec.memory, flavor.spec.disk
        ),
        "--metrics-listen={address}:10249".to_string(),
        format!("--label={}={}", labels::ZONE, machine.spec.zone),
        format!("--label={}={}", labels::INSTANCE_TYPE, machine.spec.flavor),
        format!("--label={}={}", labels::NODE_POOL, machine.spec.node_pool),
    ];
    // The cluster DNS Service's address, the 10th of the service CIDR by convention.
    if let Some(dns) = cluster.and_then(|c| cluster_dns_ip(&c.spec.network.service_cidr)) {
        args.push(format!("--cluster-dns={dns}"));
    }
    if let Some(pool) = &pool {
        for (key, value) in &pool.spec.template.labels {
            args.push(format!("--label={key}={value}"));
        }
        for taint in &pool.spec.template.taints {
            args.push(format!(
                "--taint={}={}:{}",
                taint.key, taint.value, taint.effect
            ));
        }
    }
    let mut files = vec![(
        BOOTSTRAP_KUBECONFIG.to_string(),
        bootstrap.into_bytes(),
        0o600,
    )];
    if let Some(registry) = &ctx.registry {
        files.extend(korvet_cloud::local::registry_ca_files(
            &registry.host,
            registry.ca_pem.as_bytes(),
        ));
    }
    Ok(MachineSpec {
        name: provider_name.to_string(),
        cluster: cluster_key.to_string(),
        zone: machine.spec.zone.clone(),
        cpu_millis: (cpu * 1000.0).round() as u32,
        memory_bytes: memory as u64,
        disk_bytes: disk as u64,
        boot: BootSpec {
            files,
            program: ctx.binaries.korvet.clone(),
            args,
            env: vec![("KORVET_LOG".into(), "info".into())],
        },
    })
}
