//! The korvet.io resources of the management API, as typed Rust values.
//!
//! The server installs them as CustomResourceDefinitions (see [`crds`]); the platform
//! controllers, the CLI, the console and the Terraform provider read and write them with
//! the `kube` client. Field names follow Kubernetes conventions (camelCase, `spec` is the
//! wish, `status` what is).

mod cluster;
mod flavor;
mod load_balancer;
mod machine;
mod node_pool;
pub mod registry_info;

pub use cluster::*;
pub use flavor::*;
pub use load_balancer::*;
pub use machine::*;
pub use node_pool::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "korvet.io";
pub const VERSION: &str = "v1alpha1";

/// Kubernetes versions a cluster may ask for (`spec.version`); the first is the default.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.33"];

/// Labels and annotations Korvet puts on what it makes.
pub mod labels {
    pub const CLUSTER: &str = "korvet.io/cluster";
    pub const NODE_POOL: &str = "korvet.io/nodepool";
    /// On NodePools the platform keeps in step with a Cluster's inline `spec.nodePools`.
    pub const INLINE_POOL: &str = "korvet.io/inline";
    pub const ZONE: &str = "topology.kubernetes.io/zone";
    pub const INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
    /// On LoadBalancers: the Service's namespace and name in the cluster.
    pub const SERVICE_NAMESPACE: &str = "korvet.io/service-namespace";
    pub const SERVICE_NAME: &str = "korvet.io/service-name";
}

/// A condition in the Kubernetes style (`type`, `status`, `reason`, `message`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    pub fn new(type_: &str, status: bool, reason: &str, message: impl Into<String>) -> Self {
        Condition {
            type_: type_.to_string(),
            status: if status { "True" } else { "False" }.to_string(),
            reason: reason.to_string(),
            message: message.into(),
            last_transition_time: None,
            observed_generation: None,
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Sets `condition` in `conditions`, keeping its transition time when the status is
/// unchanged; `now` is an RFC 3339 timestamp.
pub fn set_condition(conditions: &mut Vec<Condition>, mut condition: Condition, now: &str) {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            condition.last_transition_time = if existing.status == condition.status {
                existing.last_transition_time.clone()
            } else {
                Some(now.to_string())
            };
            *existing = condition;
        }
        None => {
            condition.last_transition_time = Some(now.to_string());
            conditions.push(condition);
        }
    }
}

pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// A taint for the nodes of a pool, as in a Node's `spec.taints`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// Every korvet.io CustomResourceDefinition, in the order they should be installed.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Flavor::crd(),
        Zone::crd(),
        Cluster::crd(),
        NodePool::crd(),
        Machine::crd(),
        LoadBalancer::crd(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_are_structural_and_named_as_expected() {
        let crds = crds();
        let names: Vec<_> = crds
            .iter()
            .map(|c| c.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                "flavors.korvet.io",
                "zones.korvet.io",
                "clusters.korvet.io",
                "nodepools.korvet.io",
                "machines.korvet.io",
                "loadbalancers.korvet.io"
            ]
        );
        for crd in &crds {
            let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
            assert_eq!(schema["openAPIV3Schema"]["type"], "object", "{names:?}");
        }
    }

    #[test]
    fn set_condition_keeps_transition_time_while_status_holds() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            Condition::new("Ready", false, "Waiting", ""),
            "t1",
        );
        set_condition(
            &mut conditions,
            Condition::new("Ready", false, "StillWaiting", ""),
            "t2",
        );
        assert_eq!(conditions[0].last_transition_time.as_deref(), Some("t1"));
        set_condition(
            &mut conditions,
            Condition::new("Ready", true, "Up", ""),
            "t3",
        );
        assert_eq!(conditions[0].last_transition_time.as_deref(), Some("t3"));
        assert_eq!(conditions.len(), 1);
    }
}
