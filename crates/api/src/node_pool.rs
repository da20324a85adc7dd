//! `NodePool`: a group of machines of one size in one zone, scaled together.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Condition, PoolTemplate};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "korvet.io",
    version = "v1alpha1",
    kind = "NodePool",
    namespaced,
    status = "NodePoolStatus",
    shortname = "np",
    category = "korvet",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.cluster"}"#,
    printcolumn = r#"{"name":"Flavor","type":"string","jsonPath":".spec.flavor"}"#,
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".spec.zone"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolSpec {
    /// Name of the Cluster (same namespace) the pool belongs to.
    pub cluster: String,
    #[serde(flatten)]
    pub template: PoolTemplate,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolStatus {
    /// Machines that exist for the pool.
    #[serde(default)]
    pub replicas: i32,
    /// Of those, the ones whose node is Ready.
    #[serde(default)]
    pub ready_replicas: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The name of the NodePool object of pool `pool` of cluster `cluster`: `CLUSTER-POOL`,
/// for pools made with the cluster and pools added later alike (its machines, and so
/// its nodes, are named `CLUSTER-POOL-xxxxx`).
pub fn node_pool_name(cluster: &str, pool: &str) -> String {
    format!("{cluster}-{pool}")
}

/// The pool's own name within its cluster (`POOL` of `CLUSTER-POOL`).
pub fn pool_of(node_pool: &NodePool) -> &str {
    let name = node_pool.metadata.name.as_deref().unwrap_or_default();
    name.strip_prefix(node_pool.spec.cluster.as_str())
        .and_then(|rest| rest.strip_prefix('-'))
        .unwrap_or(name)
}
