//! Nodes registered without agents and pending pods, as kwok and kubemark make them: the
//! objects of the scheduler's tests and of `korvet bench scheduler`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodSpec, ResourceRequirements, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};

fn quantities(cpu: &str, memory: &str, pods: &str) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_string(), Quantity(cpu.into())),
        ("memory".to_string(), Quantity(memory.into())),
        ("ephemeral-storage".to_string(), Quantity("100Gi".into())),
        ("pods".to_string(), Quantity(pods.into())),
    ])
}

/// A Node as kwok registers one: labels (hostname, zone), optional taints; its status
/// (allocatable, Ready) is written separately with [`node_status`].
pub fn kwok_node(name: &str, zone: &str, taints: Vec<Taint>) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), name.to_string()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                (crate::plugins::ZONE_LABEL.to_string(), zone.to_string()),
                ("type".to_string(), "kwok".to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: (!taints.is_empty()).then_some(taints),
            ..Default::default()
        }),
        status: None,
    }
}

/// A Ready node status with the given allocatable cpu, memory and pod count.
pub fn node_status(cpu: &str, memory: &str, pods: &str) -> NodeStatus {
    NodeStatus {
        capacity: Some(quantities(cpu, memory, pods)),
        allocatable: Some(quantities(cpu, memory, pods)),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: Some("KubeletReady".into()),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// Creates a kwok-style node and writes its status.
pub async fn register_node(
    client: &kube::Client,
    node: Node,
    status: NodeStatus,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let name = node.metadata.name.clone().unwrap_or_default();
    nodes.create(&PostParams::default(), &node).await?;
    let patch = serde_json::json!({ "status": status });
    nodes
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// A pause pod with requests, optionally owned by a (fictional) ReplicaSet.
pub fn pending_pod(name: &str, cpu: &str, memory: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "pause".into(),
                image: Some("registry.k8s.io/pause:3.10".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([
                        ("cpu".to_string(), Quantity(cpu.into())),
                        ("memory".to_string(), Quantity(memory.into())),
                    ])),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}
