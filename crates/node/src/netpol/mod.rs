//! NetworkPolicy enforcement for this node's pods on nftables.
//!
//! Reflectors keep NetworkPolicies, Pods and Namespaces of the whole cluster and the
//! kube-dns EndpointSlices; any change wakes one debounced sync that builds the
//! [`model::Model`], renders the table with [`rules::render`] and loads it with
//! [`crate::nft::apply`] in one transaction. Only packets that cross the node's FORWARD hook
//! are filtered (pod to pod, also on the same bridge through br_netfilter, and pod to
//! the outside); the node's own traffic to its pods (probes) is not, as upstream CNIs.

pub mod model;
pub mod rules;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::nft;

/// Quiet time before a sync, so that a burst of changes costs one ruleset load.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Longest a sync waits for a burst to end.
const MAX_DELAY: Duration = Duration::from_millis(500);
const RETRY: Duration = Duration::from_secs(2);

/// The labels the DNS pseudo-pods carry: the Service's labels as the EndpointSlice
/// controller copies them, and `k8s-app: kube-dns` in any case.
fn dns_labels(slices: &[EndpointSlice]) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = slices
        .iter()
        .flat_map(|s| s.metadata.labels.iter().flatten())
        .filter(|(k, _)| {
            k.as_str() != "kubernetes.io/service-name"
                && k.as_str() != "endpointslice.kubernetes.io/managed-by"
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels
        .entry("k8s-app".into())
        .or_insert_with(|| model::DNS_SERVICE.into());
    labels
}

fn cloned<K>(store: &Store<K>) -> Vec<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.state().iter().map(|o| o.as_ref().clone()).collect()
}

/// Enforces the cluster's NetworkPolicies for `node_name`'s pods until aborted. The
/// table stays when the agent stops, so that its pods stay isolated meanwhile.
pub async fn run(client: Client, node_name: String, metrics: Arc<Metrics>) {
    let changed = Arc::new(Notify::new());
    let (policies, t1) = crate::watch::reflect(
        Api::<NetworkPolicy>::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
        "NetworkPolicies for network policies",
    );
    let (pods, t2) = crate::watch::reflect(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
        "Pods for network policies",
    );
    let (namespaces, t3) = crate::watch::reflect(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
        "Namespaces for network policies",
    );
    let (slices, t4) = crate::watch::reflect(
        Api::<EndpointSlice>::namespaced(client, model::DNS_NAMESPACE),
        watcher::Config::default().labels(&format!(
            "kubernetes.io/service-name={}",
            model::DNS_SERVICE
        )),
        changed.clone(),
        "kube-dns EndpointSlices for network policies",
    );
    let _tasks = [t1, t2, t3, t4].map(crate::AbortOnDrop);
    // A partial view would isolate pods without their allowed peers.
    let _ = policies.wait_until_ready().await;
    let _ = pods.wait_until_ready().await;
    let _ = namespaces.wait_until_ready().await;
    let _ = slices.wait_until_ready().await;
    tracing::info!(node = %node_name, "enforcing network policies");

    let mut applied: Option<String> = None;
    loop {
        let started = Instant::now();
        let policy_list = cloned(&policies);
        let slice_list = cloned(&slices);
        let mut endpoints = model::endpoints_of_pods(&cloned(&pods));
        endpoints.extend(model::endpoints_of_dns(
            &slice_list,
            &dns_labels(&slice_list),
        ));
        let namespace_list = cloned(&namespaces);
        let built = model::Model::build(&model::Inputs {
            node_name: &node_name,
            policies: &policy_list,
            namespaces: &namespace_list,
            endpoints: &endpoints,
        });
        metrics.netpol_policies.set(built.policies as i64);
        let ruleset = rules::render(&built);
        let mut retry = false;
        if applied.as_deref() != Some(ruleset.as_str()) {
            match nft::apply_blocking(None, ruleset.clone()).await {
                Ok(()) => {
                    tracing::debug!(
                        isolated_ingress = built.ingress.len(),
                        isolated_egress = built.egress.len(),
                        policies = built.policies,
                        "network policy rules loaded"
                    );
                    applied = Some(ruleset);
                    metrics
                        .netpol_sync_duration
                        .observe(started.elapsed().as_secs_f64());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "loading network policy rules; retrying");
                    metrics.netpol_sync_errors.inc();
                    retry = true;
                }
            }
        }
        if retry {
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep(RETRY) => {}
            }
        } else {
            changed.notified().await;
        }
        // Debounce: wait for a quiet moment, but not for ever.
        let deadline = tokio::time::Instant::now() + MAX_DELAY;
        loop {
            let quiet = tokio::time::sleep(DEBOUNCE);
            tokio::select! {
                _ = changed.notified() => {
                    if tokio::time::Instant::now() >= deadline { break; }
                }
                _ = quiet => break,
            }
        }
    }
}
