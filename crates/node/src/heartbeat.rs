//! Node heartbeats, as upstream's kubelet: a Lease in `kube-node-lease` renewed every
//! 10 s, and the Node's status (conditions' lastHeartbeatTime) posted every 60 s, or at
//! once when a pressure condition changes (measured every 10 s). API outages are retried
//! with backoff; a transient error never ends the agent.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::pressure::Monitor;
use crate::registration;

pub(crate) const LEASE_NAMESPACE: &str = "kube-node-lease";
pub(crate) const LEASE_DURATION_SECONDS: i32 = 40;
pub(crate) const RENEW_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const STATUS_INTERVAL: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The Lease this agent holds, owned by its Node so it goes with it.
pub(crate) fn lease(node: &Node, name: &str) -> Lease {
    let owner = node.metadata.uid.clone().map(|uid| OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: name.into(),
        uid,
        ..Default::default()
    });
    Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(LEASE_NAMESPACE.into()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.into()),
            lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        }),
    }
}

/// Creates the Lease or renews it (an optimistic-concurrency replace of what was read).
pub(crate) async fn renew_lease(
    api: &Api<Lease>,
    node: &Node,
    name: &str,
) -> Result<Lease, kube::Error> {
    match api.get_opt(name).await? {
        None => api.create(&PostParams::default(), &lease(node, name)).await,
        Some(mut current) => {
            let fresh = lease(node, name);
            let spec = current.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some(name.into());
            spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            if current.metadata.owner_references.is_none() {
                current.metadata.owner_references = fresh.metadata.owner_references;
            }
            api.replace(name, &PostParams::default(), &current).await
        }
    }
}

fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(Duration::from_millis(500), MAX_BACKOFF)
}

/// Registers the Node (retrying until it works), then keeps the Lease and status fresh
/// until `shutdown` resolves. The Node is left in place on shutdown.
pub(crate) async fn run(
    client: kube::Client,
    config: &NodeConfig,
    metrics: &Metrics,
    runtime_version: String,
    mut monitor: Monitor,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, LEASE_NAMESPACE);
    let name = config.node_name.as_str();
    tokio::pin!(shutdown);

    let mut backoff = Duration::ZERO;
    let mut node = loop {
        match registration::register(&nodes, config, &runtime_version, monitor.pressure()).await {
            Ok(node) => break node,
            Err(e) => {
                backoff = next_backoff(backoff);
                tracing::warn!(error = %e, retry_in = ?backoff, "registering the Node failed");
                metrics.errors.inc();
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    };
    metrics.ready.set(1);
    let mut last_status = Instant::now();
    let mut posted = monitor.pressure();
    let mut wait = Duration::ZERO;
    backoff = Duration::ZERO;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let mut failed = false;
        match renew_lease(&leases, &node, name).await {
            Ok(_) => {
                metrics.lease_renewals.inc();
            }
            Err(e) => {
                failed = true;
                metrics.errors.inc();
                tracing::warn!(error = %e, "renewing the node lease failed");
            }
        }
        let pressure = monitor.pressure();
        if pressure != posted {
            tracing::info!(?pressure, "node pressure changed");
        }
        if last_status.elapsed() >= STATUS_INTERVAL || pressure != posted {
            let result = match registration::post_status(
                &nodes,
                config,
                &runtime_version,
                pressure,
                node.status.as_ref(),
            )
            .await
            {
                // Someone deleted the Node: register it again, as the kubelet does.
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    tracing::warn!("the Node was deleted; registering again");
                    registration::register(&nodes, config, &runtime_version, pressure).await
                }
                other => other,
            };
            match result {
                Ok(updated) => {
                    node = updated;
                    posted = pressure;
                    last_status = Instant::now();
                    metrics.status_updates.inc();
                }
                Err(e) => {
                    failed = true;
                    metrics.errors.inc();
                    tracing::warn!(error = %e, "posting the node status failed");
                }
            }
        }
        if failed {
            backoff = next_backoff(backoff);
            wait = backoff;
        } else {
            backoff = Duration::ZERO;
            wait = RENEW_INTERVAL;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_is_owned_by_the_node_and_lasts_forty_seconds() {
        let node = Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                uid: Some("u-1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let l = lease(&node, "n1");
        let spec = l.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("n1"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        let owner = &l.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Node", "u-1"));
    }

    #[test]
    fn backoff_doubles_up_to_ten_seconds() {
        let mut b = Duration::ZERO;
        let mut seen = vec![];
        for _ in 0..7 {
            b = next_backoff(b);
            seen.push(b.as_millis());
        }
        assert_eq!(seen, [500, 1000, 2000, 4000, 8000, 10000, 10000]);
    }
}
