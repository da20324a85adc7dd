//! Access to the clusters the platform hosts, with their admin identity: readiness of
//! nodes, bootstrap tokens for joining machines, removal of nodes.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, PostParams};

use crate::PlatformError;

/// What the platform keeps per hosted cluster once its API answers.
#[derive(Clone)]
pub(crate) struct Tenant {
    pub client: kube::Client,
    pub endpoint: String,
    pub ca_pem: String,
    /// Events on the cluster's objects, as upstream's cloud controller manager's
    /// service controller records them.
    pub service_events: korvet_apimachinery::events::EventRecorder,
}

#[derive(Default)]
pub(crate) struct Tenants {
    by_key: Mutex<HashMap<String, Tenant>>,
}

impl Tenants {
    pub(crate) fn get(&self, key: &str) -> Option<Tenant> {
        self.by_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    pub(crate) fn forget(&self, key: &str) {
        self.by_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// The client of a cluster, built from its admin kubeconfig on first use.
    pub(crate) async fn connect(
        &self,
        key: &str,
        kubeconfig: &str,
        endpoint: &str,
        ca_pem: &str,
    ) -> Result<Tenant, PlatformError> {
        if let Some(tenant) = self.get(key) {
            if tenant.endpoint == endpoint {
                return Ok(tenant);
            }
        }
        let client = korvet_apimachinery::client_from_kubeconfig_yaml(kubeconfig)
            .await
            .map_err(|e| PlatformError::Tenant(e.to_string()))?;
        let tenant = Tenant {
            service_events: korvet_apimachinery::events::EventRecorder::new(
                client.clone(),
                "service-controller",
            ),
            client,
            endpoint: endpoint.to_string(),
            ca_pem: ca_pem.to_string(),
        };
        self.by_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), tenant.clone());
        Ok(tenant)
    }
}

/// How long a bootstrap token may be used to join.
const BOOTSTRAP_TOKEN_TTL: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

fn random_chars(n: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; n];
    // The secret half of a token must be unpredictable.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        bytes = uuid::Uuid::new_v4().as_bytes().repeat(n / 16 + 1);
        bytes.truncate(n);
    }
    bytes
        .iter()
        .map(|b| CHARS[*b as usize % CHARS.len()] as char)
        .collect()
}

/// Creates a bootstrap token (`ID.SECRET`) in the cluster for one machine to join with.
pub(crate) async fn create_bootstrap_token(
    tenant: &Tenant,
    machine: &str,
) -> Result<String, PlatformError> {
    let id = random_chars(6);
    let secret = random_chars(16);
    let expiration = jiff::Timestamp::now()
        .checked_add(BOOTSTRAP_TOKEN_TTL)
        .map_err(|e| PlatformError::Tenant(e.to_string()))?;
    let data = [
        ("token-id", id.clone()),
        ("token-secret", secret.clone()),
        ("expiration", expiration.to_string()),
        ("usage-bootstrap-authentication", "true".to_string()),
        ("description", format!("joins machine {machine}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    let object = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("bootstrap-token-{id}")),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        type_: Some("bootstrap.kubernetes.io/token".into()),
        data: Some(data),
        ..Default::default()
    };
    let secrets: Api<Secret> = Api::namespaced(tenant.client.clone(), "kube-system");
    secrets.create(&PostParams::default(), &object).await?;
    Ok(format!("{id}.{secret}"))
}

/// Whether the cluster has a Node of that name reporting Ready.
pub(crate) async fn node_ready(tenant: &Tenant, name: &str) -> Result<bool, PlatformError> {
    let nodes: Api<Node> = Api::all(tenant.client.clone());
    let Some(node) = nodes.get_opt(name).await? else {
        return Ok(false);
    };
    Ok(node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Every Node's pod CIDR with the Node's InternalIP: the routes the cluster's network
/// needs so that pods reach pods on other nodes.
pub(crate) async fn pod_routes(
    tenant: &Tenant,
) -> Result<Vec<korvet_cloud::PodRoute>, PlatformError> {
    let nodes: Api<Node> = Api::all(tenant.client.clone());
    let mut routes = Vec::new();
    for node in nodes.list(&Default::default()).await?.items {
        let cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref());
        let address = korvet_apimachinery::nodes::internal_ip(&node);
        let (Some(cidr), Some(address)) = (cidr, address) else {
            continue;
        };
        match (cidr.parse(), address.parse()) {
            (Ok(pod_cidr), Ok(node)) => routes.push(korvet_cloud::PodRoute { pod_cidr, node }),
            _ => {
                tracing::warn!(node = ?node.metadata.name, cidr, address, "node with an unusable pod CIDR or address")
            }
        }
    }
    Ok(routes)
}

pub(crate) async fn delete_node(tenant: &Tenant, name: &str) -> Result<(), PlatformError> {
    let nodes: Api<Node> = Api::all(tenant.client.clone());
    crate::not_found_is_done(nodes.delete(name, &DeleteParams::default()).await)
}

/// Removes what a cluster keeps that the platform no longer needs: Nodes of the
/// platform's pools whose Machine is gone (deleted while the cluster was stopped), and
/// bootstrap tokens past their expiration (upstream's token cleaner).
pub(crate) async fn housekeeping(
    tenant: &Tenant,
    machines: &[String],
) -> Result<(), PlatformError> {
    let nodes: Api<Node> = Api::all(tenant.client.clone());
    let pooled = kube::api::ListParams::default().labels(korvet_api::labels::NODE_POOL);
    for node in nodes.list(&pooled).await?.items {
        let name = node.metadata.name.clone().unwrap_or_default();
        // A Node younger than a minute may belong to a machine made after `machines`
        // was listed.
        let settled = node
            .metadata
            .creation_timestamp
            .as_ref()
            .is_some_and(|t| jiff::Timestamp::now().duration_since(t.0).as_secs() > 60);
        if settled && !machines.contains(&name) && node.metadata.deletion_timestamp.is_none() {
            tracing::info!(node = %name, "removing the Node of a machine that no longer exists");
            delete_node(tenant, &name).await?;
        }
    }
    let secrets: Api<Secret> = Api::namespaced(tenant.client.clone(), "kube-system");
    let tokens = kube::api::ListParams::default().fields("type=bootstrap.kubernetes.io/token");
    let now = jiff::Timestamp::now();
    for secret in secrets.list(&tokens).await?.items {
        let expired = secret
            .data
            .as_ref()
            .and_then(|d| d.get("expiration"))
            .and_then(|e| {
                std::str::from_utf8(&e.0)
                    .ok()?
                    .parse::<jiff::Timestamp>()
                    .ok()
            })
            .is_some_and(|expiration| expiration < now);
        if expired {
            let name = secret.metadata.name.unwrap_or_default();
            crate::not_found_is_done(secrets.delete(&name, &DeleteParams::default()).await)?;
        }
    }
    Ok(())
}
