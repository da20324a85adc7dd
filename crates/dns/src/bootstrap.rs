//! The Services every cluster has — `default/kubernetes` (the API, the service CIDR's
//! first address) and `kube-system/kube-dns` (the 10th) — and their EndpointSlices,
//! kept by the control plane's replicas themselves.
//!
//! Neither Service has a selector: each replica writes its own EndpointSlice for
//! kube-dns (its DNS addresses), renews it every [`RENEW`], and deletes slices of
//! replicas that stopped renewing for [`EXPIRE`] — as upstream's API servers keep the
//! `kubernetes` endpoints through leases. The `kubernetes` slice lists the cluster's
//! API endpoint, the same for every replica.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

pub const RENEW: Duration = Duration::from_secs(10);
pub const EXPIRE: Duration = Duration::from_secs(40);
const MANAGER: &str = "korvet-control-plane";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const SERVICE_NAME: &str = "kubernetes.io/service-name";
const RENEWED: &str = "korvet.io/renewed-at";

/// The `n`th address of the service CIDR (1: `kubernetes`, 10: cluster DNS).
pub fn service_ip(cidr: (Ipv4Addr, u8), n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.0).wrapping_add(n))
}

#[derive(Clone, Debug)]
pub struct ClusterServices {
    pub service_cidr: (Ipv4Addr, u8),
    /// Where clients reach the API (the `kubernetes` endpoints).
    pub api_endpoint: SocketAddr,
    /// This replica's DNS addresses (port 53 expected).
    pub dns_addresses: Vec<IpAddr>,
}

async fn ensure_service(api: &Api<Service>, service: serde_json::Value) -> Result<(), kube::Error> {
    let service: Service = serde_json::from_value(service).map_err(kube::Error::SerdeError)?;
    // Look first: creating it again fails on its taken ClusterIP (422), not with 409.
    if api
        .get_opt(service.metadata.name.as_deref().unwrap_or_default())
        .await?
        .is_some()
    {
        return Ok(());
    }
    match api.create(&PostParams::default(), &service).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn apply_slice(
    api: &Api<EndpointSlice>,
    slice: serde_json::Value,
) -> Result<(), kube::Error> {
    let name = slice["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(slice),
    )
    .await
    .map(|_| ())
}

fn address_type(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// Creates both Services (left alone when they exist) and writes this replica's slices.
pub async fn ensure(client: &kube::Client, config: &ClusterServices) -> Result<(), kube::Error> {
    let default: Api<Service> = Api::namespaced(client.clone(), "default");
    ensure_service(
        &default,
        json!({
            "metadata": {"name": "kubernetes", "labels": {
                "component": "apiserver", "provider": "kubernetes"}},
            "spec": {
                "clusterIP": service_ip(config.service_cidr, 1).to_string(),
                "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                    "targetPort": config.api_endpoint.port()}],
                "sessionAffinity": "None",
                "type": "ClusterIP",
            },
        }),
    )
    .await?;
    let kube_system: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    ensure_service(
        &kube_system,
        json!({
            "metadata": {"name": "kube-dns", "labels": {
                "k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                "kubernetes.io/name": "CoreDNS"}},
            "spec": {
                "clusterIP": service_ip(config.service_cidr, 10).to_string(),
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}],
                "type": "ClusterIP",
            },
        }),
    )
    .await?;
    let api_ip = config.api_endpoint.ip();
    apply_slice(
        &Api::namespaced(client.clone(), "default"),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "labels": {
                SERVICE_NAME: "kubernetes", MANAGED_BY: MANAGER}},
            "addressType": address_type(&api_ip),
            "endpoints": [{"addresses": [api_ip.to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": config.api_endpoint.port(), "protocol": "TCP"}],
        }),
    )
    .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "kube-system");
    let mut by_type: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ip in &config.dns_addresses {
        by_type
            .entry(address_type(ip))
            .or_default()
            .push(ip.to_string());
    }
    for (kind, addresses) in by_type {
        let Some(first) = addresses.first() else {
            continue;
        };
        let name = format!(
            "kube-dns-{}",
            first.replace(['.', ':'], "-").trim_matches('-')
        );
        let endpoints: Vec<serde_json::Value> = addresses
            .iter()
            .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
            .collect();
        apply_slice(
            &slices,
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "labels": {
                    SERVICE_NAME: "kube-dns", MANAGED_BY: MANAGER},
                    "annotations": {RENEWED: now().to_string()}},
                "addressType": kind,
                "endpoints": endpoints,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                    {"name": "metrics", "port": 9153, "protocol": "TCP"}],
            }),
        )
        .await?;
    }
    expire(&slices).await
}

/// Deletes kube-dns slices of replicas that stopped renewing them.
async fn expire(slices: &Api<EndpointSlice>) -> Result<(), kube::Error> {
    let list = slices
        .list(
            &ListParams::default()
                .labels(&format!("{SERVICE_NAME}=kube-dns,{MANAGED_BY}={MANAGER}")),
        )
        .await?;
    let now = now();
    for slice in list.items {
        let renewed = slice
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RENEWED))
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        let stale =
            renewed.is_none_or(|t| now.duration_since(t).as_secs() > EXPIRE.as_secs() as i64);
        if let (true, Some(name)) = (stale, slice.metadata.name.as_deref()) {
            tracing::info!(
                slice = name,
                "removing the DNS endpoints of a replica that stopped renewing them"
            );
            match slices.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Keeps the Services and this replica's slices current until the task is aborted.
pub fn spawn_keeper(client: kube::Client, config: ClusterServices) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let delay = match ensure(&client, &config).await {
                Ok(()) => RENEW,
                Err(e) => {
                    tracing::warn!(error = %e, "keeping the kubernetes and kube-dns Services");
                    Duration::from_secs(1)
                }
            };
            tokio::time::sleep(delay).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventional_addresses() {
        let cidr = (Ipv4Addr::new(10, 96, 0, 0), 12);
        assert_eq!(service_ip(cidr, 1), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(service_ip(cidr, 10), Ipv4Addr::new(10, 96, 0, 10));
    }
}
