//! `Cluster`: one Kubernetes cluster a user asked for.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Condition, Taint};

pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";

/// Phases of a cluster, in `status.phase`.
pub mod phase {
    pub const PROVISIONING: &str = "Provisioning";
    pub const RUNNING: &str = "Running";
    pub const STOPPING: &str = "Stopping";
    pub const STOPPED: &str = "Stopped";
    pub const STARTING: &str = "Starting";
    pub const UPGRADING: &str = "Upgrading";
    pub const DELETING: &str = "Deleting";
    pub const FAILED: &str = "Failed";
}

/// Condition types of a cluster.
pub mod cluster_condition {
    /// Every API server answers `/readyz` (and, with 3 masters, the etcd members and the
    /// API load balancer run).
    pub const CONTROL_PLANE_READY: &str = "ControlPlaneReady";
    /// Every node the pools ask for is registered and Ready.
    pub const NODES_READY: &str = "NodesReady";
    /// The cluster is what its spec asks for.
    pub const READY: &str = "Ready";
}

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "korvet.io",
    version = "v1alpha1",
    kind = "Cluster",
    namespaced,
    status = "ClusterStatus",
    shortname = "kcl",
    category = "korvet",
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Masters","type":"integer","jsonPath":".spec.controlPlane.replicas"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Nodes","type":"string","jsonPath":".status.nodes"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// Kubernetes version (`MAJOR.MINOR`), one of the supported versions.
    #[serde(default = "default_version")]
    pub version: String,
    #[serde(default)]
    pub control_plane: ControlPlaneSpec,
    #[serde(default)]
    pub network: ClusterNetwork,
    /// Node pools defined with the cluster; the platform keeps a NodePool object for
    /// each. Pools may also be created as NodePool objects of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_pools: Vec<InlineNodePool>,
    /// True stops every machine and control-plane process; data and disks stay.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
}

fn default_version() -> String {
    crate::SUPPORTED_VERSIONS[0].to_string()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneSpec {
    /// 1, or 3 for a highly available control plane on a 3-member etcd cluster.
    #[serde(default = "one")]
    pub replicas: i32,
}

fn one() -> i32 {
    1
}

impl Default for ControlPlaneSpec {
    fn default() -> Self {
        ControlPlaneSpec { replicas: 1 }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetwork {
    #[serde(default = "default_pod_cidr", rename = "podCIDR")]
    pub pod_cidr: String,
    #[serde(default = "default_service_cidr", rename = "serviceCIDR")]
    pub service_cidr: String,
}

fn default_pod_cidr() -> String {
    DEFAULT_POD_CIDR.to_string()
}

fn default_service_cidr() -> String {
    DEFAULT_SERVICE_CIDR.to_string()
}

impl Default for ClusterNetwork {
    fn default() -> Self {
        ClusterNetwork {
            pod_cidr: default_pod_cidr(),
            service_cidr: default_service_cidr(),
        }
    }
}

/// A node pool written inside a Cluster's spec.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InlineNodePool {
    pub name: String,
    #[serde(flatten)]
    pub pool: PoolTemplate,
}

/// What a node pool's machines look like, shared by inline pools and NodePool objects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolTemplate {
    /// Name of a Flavor (machine size).
    pub flavor: String,
    /// Name of a Zone.
    pub zone: String,
    #[serde(default)]
    pub replicas: i32,
    /// Labels put on every node of the pool.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// Bounds for the cluster autoscaler; absent means the pool is not autoscaled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    pub min_replicas: i32,
    pub max_replicas: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// `https://ADDRESS:PORT` of the cluster's API.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// Secret (same namespace) whose `value` is the cluster's admin kubeconfig.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kubeconfig_secret: String,
    /// Ready nodes / nodes asked for, e.g. `2/2`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nodes: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_control_plane_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Cluster {
    pub fn phase(&self) -> &str {
        self.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("")
    }
}
