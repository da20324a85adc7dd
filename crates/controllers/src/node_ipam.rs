//! Node IPAM, as upstream's range allocator: each Node gets a `spec.podCIDR`, a /24
//! (or the cluster CIDR itself when that is smaller) out of the cluster's pod CIDR,
//! the lowest one no other Node holds. A podCIDR once set is never changed.
//!
//! It runs in the Lease holder's controller manager only, so that of three replicas
//! only one allocates and no range goes to two Nodes.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;

/// Prefix length of each node's range, as upstream's default `--node-cidr-mask-size`.
pub const NODE_MASK: u8 = 24;

/// An IPv4 network as (address, prefix length).
pub type Cidr = (Ipv4Addr, u8);

pub fn parse_cidr(text: &str) -> Option<Cidr> {
    let (addr, len) = text.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((addr, len))
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

/// The `index`th node range of `cluster`, if there is one.
pub fn node_range(cluster: Cidr, index: u32) -> Option<Cidr> {
    let (base, len) = cluster;
    let node_len = NODE_MASK.max(len);
    let count = 1u64 << (node_len - len);
    if u64::from(index) >= count {
        return None;
    }
    let network = u32::from(base) & mask(len);
    let size = 1u64 << (32 - node_len);
    let start = u64::from(network) + u64::from(index) * size;
    Some((Ipv4Addr::from(start as u32), node_len))
}

/// The lowest node range of `cluster` not in `taken` (CIDR strings as on Nodes).
pub fn next_free(cluster: Cidr, taken: &BTreeSet<String>) -> Option<String> {
    (0..)
        .map_while(|i| node_range(cluster, i))
        .find_map(|(addr, len)| {
            let text = format!("{addr}/{len}");
            (!taken.contains(&text)).then_some(text)
        })
}

/// Gives every Node without a podCIDR one, until the task is aborted.
pub async fn run_node_ipam(client: kube::Client, cluster: Cidr) {
    let nodes: Api<Node> = Api::all(client);
    // The watch only says when to look; what is taken is listed afresh each time.
    let stream = watcher(nodes.clone(), watcher::Config::default())
        .default_backoff()
        .touched_objects();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        if let Err(e) = event {
            tracing::warn!(error = %e, "watching Nodes for IPAM");
            continue;
        }
        // Assign in a loop: each patch changes what is taken. What is taken comes from a
        // fresh list, not the watch cache: a cache that lags behind the patches made
        // here would hand one range to two Nodes.
        loop {
            let all = match nodes.list(&Default::default()).await {
                Ok(list) => list.items,
                Err(e) => {
                    tracing::warn!(error = %e, "listing Nodes for IPAM");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            };
            let taken: BTreeSet<String> = all
                .iter()
                .filter_map(|n| n.spec.as_ref()?.pod_cidr.clone())
                .collect();
            let Some(node) = all
                .iter()
                .filter(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_none())
                .min_by_key(|n| n.metadata.name.clone())
            else {
                break;
            };
            let name = node.metadata.name.clone().unwrap_or_default();
            let Some(cidr) = next_free(cluster, &taken) else {
                tracing::warn!(node = %name, "the cluster's pod CIDR has no free node range left");
                break;
            };
            let patch = json!({
                "metadata": {"resourceVersion": node.metadata.resource_version},
                "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            });
            match nodes
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::info!(node = %name, pod_cidr = %cidr, "assigned a pod CIDR"),
                Err(e) => {
                    // A conflict or outage: the next event (or resync) tries again.
                    tracing::debug!(node = %name, error = %e, "assigning a pod CIDR");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_slash_24s_in_order() {
        let cluster = parse_cidr("10.244.0.0/16").unwrap();
        assert_eq!(
            node_range(cluster, 0),
            Some(("10.244.0.0".parse().unwrap(), 24))
        );
        assert_eq!(
            node_range(cluster, 3),
            Some(("10.244.3.0".parse().unwrap(), 24))
        );
        assert_eq!(
            node_range(cluster, 255),
            Some(("10.244.255.0".parse().unwrap(), 24))
        );
        assert_eq!(node_range(cluster, 256), None);
        let taken = BTreeSet::from(["10.244.0.0/24".to_string(), "10.244.2.0/24".to_string()]);
        assert_eq!(next_free(cluster, &taken).as_deref(), Some("10.244.1.0/24"));
        // A cluster range smaller than a node range is the one node range.
        let small = parse_cidr("10.1.2.0/26").unwrap();
        assert_eq!(
            next_free(small, &BTreeSet::new()).as_deref(),
            Some("10.1.2.0/26")
        );
        assert_eq!(
            next_free(small, &BTreeSet::from(["10.1.2.0/26".to_string()])),
            None
        );
        assert!(parse_cidr("10.0.0.0/33").is_none());
    }
}
