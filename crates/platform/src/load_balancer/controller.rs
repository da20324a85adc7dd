//! The LoadBalancer controller (management side): an address for each LoadBalancer,
//! the cluster's instances configured with every LoadBalancer of the cluster, and the
//! outcome written back: the LoadBalancer's status, the Service's
//! `status.loadBalancer`, Events on both.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use korvet_api::{
    labels, lb_condition, set_condition, Cluster, Condition, LoadBalancer,
    LoadBalancerInstanceStatus, LoadBalancerStatus,
};
use korvet_cloud::{AddressScope, BalancerInfo, BalancerSpec, CloudError};
use korvet_lb::edge::Tls;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::edge_config::{edge_config, Served};
use crate::layout::cluster_key;
use crate::{Context, PlatformError};

const RETRY: Duration = Duration::from_secs(10);
const STEADY: Duration = Duration::from_secs(60);

/// Where a LoadBalancer's address comes from.
fn scope(lb: &LoadBalancer, namespace: &str) -> AddressScope {
    if lb.spec.type_ == "internal" {
        AddressScope::Internal {
            cluster: cluster_key(namespace, &lb.spec.cluster),
        }
    } else {
        AddressScope::External
    }
}

fn other_scope(lb: &LoadBalancer, namespace: &str) -> AddressScope {
    if lb.spec.type_ == "internal" {
        AddressScope::External
    } else {
        AddressScope::Internal {
            cluster: cluster_key(namespace, &lb.spec.cluster),
        }
    }
}

pub(crate) async fn reconcile(
    lb: Arc<LoadBalancer>,
    ctx: Arc<Context>,
) -> Result<Action, PlatformError> {
    let Some(balancers) = ctx.load_balancers.clone() else {
        return Ok(Action::await_change());
    };
    let namespace = lb.namespace().unwrap_or_else(|| "default".into());
    let name = lb.name_any();
    let owner = format!("{namespace}/{name}");
    let api: Api<LoadBalancer> = Api::namespaced(ctx.client.clone(), &namespace);
    if lb.metadata.deletion_timestamp.is_some() {
        sync_cluster(&ctx, &namespace, &lb.spec.cluster, Some(&name)).await?;
        balancers
            .release_address(&scope(&lb, &namespace), &owner)
            .await?;
        balancers
            .release_address(&other_scope(&lb, &namespace), &owner)
            .await?;
        ctx.event(
            lb.as_ref(),
            false,
            "Deleted",
            "address released, listeners removed".into(),
        )
        .await;
        crate::remove_finalizer(&api, lb.as_ref()).await?;
        return Ok(Action::await_change());
    }
    crate::ensure_finalizer(&api, lb.as_ref()).await?;
    let wanted = match lb
        .spec
        .requested_address
        .as_deref()
        .map(str::parse::<Ipv4Addr>)
    {
        None => None,
        Some(Ok(address)) => Some(address),
        Some(Err(_)) => {
            let why = format!(
                "requested address {:?} is not an IPv4 address",
                lb.spec.requested_address
            );
            fail(
                &ctx,
                &lb,
                lb_condition::ADDRESS_ALLOCATED,
                "InvalidAddress",
                why,
            )
            .await?;
            return Ok(Action::await_change());
        }
    };
    // A type change leaves an address in the other scope behind.
    balancers
        .release_address(&other_scope(&lb, &namespace), &owner)
        .await?;
    let address = match balancers
        .allocate_address(&scope(&lb, &namespace), &owner, wanted)
        .await
    {
        Ok(address) => address,
        Err(
            e @ (CloudError::AddressTaken { .. }
            | CloudError::AddressOutside { .. }
            | CloudError::PoolExhausted { .. }
            | CloudError::NoNetwork(_)),
        ) => {
            let reason = match &e {
                CloudError::AddressTaken { .. } => "AddressTaken",
                CloudError::AddressOutside { .. } => "AddressOutsidePool",
                CloudError::PoolExhausted { .. } => "PoolExhausted",
                _ => "NoNetwork",
            };
            fail(
                &ctx,
                &lb,
                lb_condition::ADDRESS_ALLOCATED,
                reason,
                e.to_string(),
            )
            .await?;
            return Ok(Action::requeue(RETRY));
        }
        Err(e) => return Err(e.into()),
    };
    let mut status = lb.status.clone().unwrap_or_default();
    if status.address.as_deref() != Some(address.to_string().as_str()) {
        status.address = Some(address.to_string());
        set_condition(
            &mut status.conditions,
            Condition::new(
                lb_condition::ADDRESS_ALLOCATED,
                true,
                "Allocated",
                format!("{address} ({})", lb.spec.type_),
            ),
            &crate::now_rfc3339(),
        );
        crate::write_status(&api, lb.as_ref(), lb.status.as_ref(), &status).await?;
    }
    sync_cluster(&ctx, &namespace, &lb.spec.cluster, None).await?;
    Ok(Action::requeue(STEADY))
}

/// Records a failure on the LoadBalancer (condition, Event) and the Service (Event).
async fn fail(
    ctx: &Context,
    lb: &LoadBalancer,
    condition: &str,
    reason: &str,
    message: String,
) -> Result<(), PlatformError> {
    let namespace = lb.namespace().unwrap_or_else(|| "default".into());
    let api: Api<LoadBalancer> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut status = lb.status.clone().unwrap_or_default();
    let now = crate::now_rfc3339();
    set_condition(
        &mut status.conditions,
        Condition::new(condition, false, reason, message.clone()),
        &now,
    );
    set_condition(
        &mut status.conditions,
        Condition::new(lb_condition::READY, false, reason, message.clone()),
        &now,
    );
    let changed = lb.status.as_ref() != Some(&status);
    crate::write_status(&api, lb, lb.status.as_ref(), &status).await?;
    if changed {
        ctx.event(lb, true, reason, message.clone()).await;
        service_event(ctx, &namespace, lb, true, "SyncLoadBalancerFailed", message).await;
    }
    Ok(())
}

/// An Event on the LoadBalancer's Service, in its cluster.
pub(super) async fn service_event(
    ctx: &Context,
    namespace: &str,
    lb: &LoadBalancer,
    warning: bool,
    reason: &str,
    note: String,
) {
    let key = cluster_key(namespace, &lb.spec.cluster);
    let Some(tenant) = ctx.tenants.get(&key) else {
        return;
    };
    let Some((svc_namespace, svc_name)) = lb.spec.service.split_once('/') else {
        return;
    };
    let services: Api<Service> = Api::namespaced(tenant.client.clone(), svc_namespace);
    let Ok(Some(service)) = services.get_opt(svc_name).await else {
        return;
    };
    super::events::publish(&tenant, &service, warning, reason, note).await;
}

/// Configures the cluster's instances with every LoadBalancer of the cluster that has
/// an address (`excluding` one being deleted), and writes the outcome back. One at a
/// time per cluster, so that an older view never overwrites a newer one.
pub(super) async fn sync_cluster(
    ctx: &Context,
    namespace: &str,
    cluster: &str,
    excluding: Option<&str>,
) -> Result<(), PlatformError> {
    let Some(balancers) = ctx.load_balancers.clone() else {
        return Ok(());
    };
    let key = cluster_key(namespace, cluster);
    let lock = ctx.balancer_lock(&key);
    let _one_at_a_time = lock.lock().await;
    let api: Api<LoadBalancer> = Api::namespaced(ctx.client.clone(), namespace);
    let listed = api
        .list(&ListParams::default().labels(&format!("{}={cluster}", labels::CLUSTER)))
        .await?
        .items;
    let candidates: Vec<LoadBalancer> = listed
        .into_iter()
        .filter(|lb| lb.spec.cluster == cluster)
        .filter(|lb| lb.metadata.deletion_timestamp.is_none())
        .filter(|lb| excluding.is_none_or(|n| n != lb.name_any()))
        .filter(|lb| {
            lb.status
                .as_ref()
                .and_then(|s| s.address.as_ref())
                .is_some()
        })
        .collect();
    if candidates.is_empty() {
        ctx.keepers.stop(&key);
        balancers.delete_balancer(&key).await?;
        return Ok(());
    }
    let clusters: Api<Cluster> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(cluster_object) = clusters.get_opt(cluster).await? else {
        return Ok(());
    };
    if cluster_object.spec.stopped {
        // Machines off, instances off; addresses and configuration stay for the start.
        ctx.keepers.stop(&key);
        balancers.stop_balancer(&key).await?;
        return Ok(());
    }
    let tenant = ctx.tenants.get(&key);
    let tls_dir = crate::layout::cluster_dir(&ctx.data_dir, &key).join("load-balancers");
    let mut served = Vec::new();
    let mut refused = Vec::new();
    for lb in &candidates {
        let Some(address) = lb
            .status
            .as_ref()
            .and_then(|s| s.address.as_deref())
            .and_then(|a| a.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        match tls_files(tenant.as_ref(), lb, &tls_dir).await {
            Ok(tls) => served.push(Served {
                load_balancer: lb,
                address,
                tls,
            }),
            Err(why) => refused.push((lb, why)),
        }
    }
    let external = balancers.ensure_external_network().await?;
    let network = ctx.provider.ensure_network(&key).await?;
    let mut masquerade = vec![ipnet::Ipv4Net::from(external.gateway)];
    if let Some(first) = network.segments.first() {
        if let Ok(all) = ipnet::Ipv4Net::new(
            first.cidr.network(),
            first.cidr.prefix_len().saturating_sub(2),
        ) {
            masquerade.push(all.trunc());
        }
    }
    if let Ok(pods) = cluster_object.spec.network.pod_cidr.parse() {
        masquerade.push(pods);
    }
    let config = edge_config(masquerade, &served);
    let config = serde_json::to_vec_pretty(&config)
        .map_err(|e| PlatformError::Io(format!("encoding the load balancer configuration: {e}")))?;
    let mut zones: Vec<String> = cluster_object
        .spec
        .node_pools
        .iter()
        .map(|p| p.pool.zone.clone())
        .collect();
    zones.dedup();
    let address_of = |s: &Served<'_>| s.address;
    let spec = BalancerSpec {
        zones,
        program: ctx.binaries.korvet.clone(),
        args: ["lb", "edge", "--config", "{config}", "--admin-listen"]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("{{address}}:{}", korvet_cloud::BALANCER_ADMIN_PORT)])
            .collect(),
        config,
        external_addresses: served
            .iter()
            .filter(|s| s.load_balancer.spec.type_ != "internal")
            .map(address_of)
            .collect(),
        internal_addresses: served
            .iter()
            .filter(|s| s.load_balancer.spec.type_ == "internal")
            .map(address_of)
            .collect(),
        // Ingress routes to pods directly.
        reach: cluster_object
            .spec
            .network
            .pod_cidr
            .parse()
            .into_iter()
            .collect(),
    };
    let info = balancers.ensure_balancer(&key, &spec).await?;
    ctx.keepers
        .ensure(balancers.clone(), ctx.client.clone(), namespace, cluster);
    for s in &served {
        report_ready(ctx, namespace, s.load_balancer, s.address, &info).await?;
    }
    for (lb, why) in refused {
        fail(ctx, lb, lb_condition::READY, "TLSSecretMissing", why).await?;
    }
    Ok(())
}

/// Writes each TLS Secret a LoadBalancer's listeners name to files the instances read;
/// an error names the Secret that is missing or unusable.
async fn tls_files(
    tenant: Option<&crate::tenant::Tenant>,
    lb: &LoadBalancer,
    dir: &std::path::Path,
) -> Result<BTreeMap<String, Tls>, String> {
    let mut out = BTreeMap::new();
    let service_namespace = lb
        .spec
        .service
        .split_once('/')
        .map_or("default", |(ns, _)| ns);
    // (key in the map, namespace, name): a Service's Secrets by name, an Ingress
    // load balancer's as NAMESPACE/NAME.
    let mut wanted: Vec<(String, String, String)> = lb
        .spec
        .listeners
        .iter()
        .filter_map(|l| l.tls_secret.clone())
        .map(|name| (name.clone(), service_namespace.to_string(), name))
        .collect();
    let ingress = lb.spec.http.is_some();
    for t in lb.spec.http.iter().flat_map(|h| h.tls.iter()) {
        if let Some((namespace, name)) = t.secret.split_once('/') {
            wanted.push((t.secret.clone(), namespace.to_string(), name.to_string()));
        }
    }
    if wanted.is_empty() {
        return Ok(out);
    }
    let Some(tenant) = tenant else {
        return Err("the cluster's API is not reachable to read the TLS Secret".into());
    };
    for (key, namespace, name) in wanted {
        if out.contains_key(&key) {
            continue;
        }
        match tls_secret_files(tenant, &namespace, &name, dir).await {
            Ok(tls) => {
                out.insert(key, tls);
            }
            // An Ingress's missing certificate leaves its hosts without HTTPS, not the
            // whole cluster's Ingresses without a load balancer.
            Err(why) if ingress => tracing::warn!(secret = %key, "{why}"),
            Err(why) => return Err(why),
        }
    }
    Ok(out)
}

/// The files of one `kubernetes.io/tls` Secret of the cluster.
async fn tls_secret_files(
    tenant: &crate::tenant::Tenant,
    namespace: &str,
    name: &str,
    dir: &std::path::Path,
) -> Result<Tls, String> {
    let secrets: Api<Secret> = Api::namespaced(tenant.client.clone(), namespace);
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|e| format!("reading Secret {namespace}/{name}: {e}"))?
        .ok_or_else(|| {
            format!("TLS Secret {namespace}/{name} does not exist: create it (kubectl create secret tls {name} --cert ... --key ...)")
        })?;
    let data = secret.data.unwrap_or_default();
    let (Some(cert), Some(key)) = (data.get("tls.crt"), data.get("tls.key")) else {
        return Err(format!(
            "Secret {namespace}/{name} lacks tls.crt or tls.key (make it with kubectl create secret tls)"
        ));
    };
    let base = dir.join(format!("{namespace}.{name}"));
    let (cert_file, key_file) = (base.with_extension("crt"), base.with_extension("key"));
    write_private(&cert_file, &cert.0).map_err(|e| format!("{}: {e}", cert_file.display()))?;
    write_private(&key_file, &key.0).map_err(|e| format!("{}: {e}", key_file.display()))?;
    Ok(Tls {
        cert_file,
        key_file,
    })
}

/// Each Ingress served shows the address in `status.loadBalancer`.
async fn show_on_ingresses(
    tenant: &crate::tenant::Tenant,
    ingresses: &[String],
    address: Ipv4Addr,
) -> Result<(), PlatformError> {
    use k8s_openapi::api::networking::v1::Ingress;
    let shown = serde_json::json!([{"ip": address.to_string()}]);
    for entry in ingresses {
        let Some((namespace, name)) = entry.split_once('/') else {
            continue;
        };
        let api: Api<Ingress> = Api::namespaced(tenant.client.clone(), namespace);
        let Some(ingress) = api.get_opt(name).await? else {
            continue;
        };
        let current = ingress
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .map(|i| serde_json::to_value(i).unwrap_or_default());
        if current.as_ref() != Some(&shown) {
            let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": shown}}});
            crate::not_found_is_done(
                api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await,
            )?;
        }
    }
    Ok(())
}

/// Writes a file readable by its owner alone (key material).
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read(path).is_ok_and(|old| old == data) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    korvet_cloud::process::write_bytes_atomic(path, data)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// The instances as a LoadBalancer's status shows them.
pub(super) fn instance_statuses(info: &BalancerInfo) -> Vec<LoadBalancerInstanceStatus> {
    info.instances
        .iter()
        .enumerate()
        .map(|(i, instance)| LoadBalancerInstanceStatus {
            name: instance.name.clone(),
            zone: instance.zone.clone(),
            address: instance.external_address.to_string(),
            role: if info.active == Some(i) {
                "active"
            } else {
                "standby"
            }
            .into(),
            running: instance.running,
        })
        .collect()
}

/// A served LoadBalancer: its status, and the Service's `status.loadBalancer`.
async fn report_ready(
    ctx: &Context,
    namespace: &str,
    lb: &LoadBalancer,
    address: Ipv4Addr,
    info: &BalancerInfo,
) -> Result<(), PlatformError> {
    let api: Api<LoadBalancer> = Api::namespaced(ctx.client.clone(), namespace);
    let proxied = lb.spec.listeners.iter().any(|l| l.proxy_protocol.is_some());
    let ip_mode = if proxied { "Proxy" } else { "VIP" };
    let mut status: LoadBalancerStatus = lb.status.clone().unwrap_or_default();
    let was_ready = korvet_api::find_condition(&status.conditions, lb_condition::READY)
        .is_some_and(|c| c.is_true());
    status.address = Some(address.to_string());
    status.ip_mode = Some(ip_mode.into());
    status.instances = instance_statuses(info);
    status.active_instance = info
        .active
        .and_then(|i| info.instances.get(i))
        .map(|i| i.name.clone());
    status.observed_generation = lb.metadata.generation;
    let listeners: Vec<String> = lb
        .spec
        .listeners
        .iter()
        .map(|l| format!("{}/{}", l.port, l.protocol))
        .collect();
    let message = format!(
        "serving {} on {address} through {} backends",
        listeners.join(", "),
        lb.spec.backends.len()
    );
    set_condition(
        &mut status.conditions,
        Condition::new(lb_condition::READY, true, "Serving", message.clone()),
        &crate::now_rfc3339(),
    );
    crate::write_status(&api, lb, lb.status.as_ref(), &status).await?;
    let key = cluster_key(namespace, &lb.spec.cluster);
    if let (Some(tenant), Some(http)) = (ctx.tenants.get(&key), &lb.spec.http) {
        show_on_ingresses(&tenant, &http.ingresses, address).await?;
    }
    if let (Some(tenant), Some((svc_namespace, svc_name))) =
        (ctx.tenants.get(&key), lb.spec.service.split_once('/'))
    {
        let services: Api<Service> = Api::namespaced(tenant.client.clone(), svc_namespace);
        let ingress = serde_json::json!([{"ip": address.to_string(), "ipMode": ip_mode}]);
        let current = services.get_opt(svc_name).await?;
        let shown = current
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .map(|i| serde_json::to_value(i).unwrap_or_default());
        if current.is_some() && shown.as_ref() != Some(&ingress) {
            let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}});
            crate::not_found_is_done(
                services
                    .patch_status(svc_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await,
            )?;
        }
        if !was_ready {
            if let Some(service) = current {
                super::events::publish(
                    &tenant,
                    &service,
                    false,
                    "EnsuredLoadBalancer",
                    message.clone(),
                )
                .await;
            }
        }
    }
    if !was_ready {
        ctx.event(lb, false, "Serving", message).await;
    }
    Ok(())
}
