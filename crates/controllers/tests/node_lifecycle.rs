//! The node lifecycle controller against a real API server: a Node registered as a plain
//! object (no agent, as kwok does) is tainted from its spec and conditions.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use korvet_test_support::{StoreKind, TestControlPlane};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

async fn taints(nodes: &Api<Node>, name: &str) -> Vec<String> {
    let node = nodes.get(name).await.unwrap();
    node.spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .iter()
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect()
}

async fn wait_taints(nodes: &Api<Node>, name: &str, wanted: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let have = taints(nodes, name).await;
        if have == wanted {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "taints {have:?}, wanted {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn cordon_and_pressure_taint_the_node() {
    let cp = TestControlPlane::start_with_controllers(StoreKind::Embedded).await;
    let client = cp.client().await;
    let nodes: Api<Node> = Api::all(client);
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "kwok-1"},
        "spec": {"taints": [{"key": "example.com/gpu", "effect": "NoSchedule"}]},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let now = jiff::Timestamp::now().to_string();
    let status = json!({"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now},
        {"type": "DiskPressure", "status": "True", "reason": "KubeletHasDiskPressure", "lastHeartbeatTime": now},
    ]}});
    nodes
        .patch_status("kwok-1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    wait_taints(
        &nodes,
        "kwok-1",
        &[
            "example.com/gpu:NoSchedule",
            "node.kubernetes.io/disk-pressure:NoSchedule",
        ],
    )
    .await;
    let cordon = json!({"spec": {"unschedulable": true}});
    nodes
        .patch("kwok-1", &PatchParams::default(), &Patch::Merge(&cordon))
        .await
        .unwrap();
    wait_taints(
        &nodes,
        "kwok-1",
        &[
            "example.com/gpu:NoSchedule",
            "node.kubernetes.io/disk-pressure:NoSchedule",
            "node.kubernetes.io/unschedulable:NoSchedule",
        ],
    )
    .await;
    let uncordon = json!({"spec": {"unschedulable": false}});
    nodes
        .patch("kwok-1", &PatchParams::default(), &Patch::Merge(&uncordon))
        .await
        .unwrap();
    wait_taints(
        &nodes,
        "kwok-1",
        &[
            "example.com/gpu:NoSchedule",
            "node.kubernetes.io/disk-pressure:NoSchedule",
        ],
    )
    .await;
}

#[tokio::test]
async fn pods_not_tolerating_a_no_execute_taint_are_evicted() {
    use k8s_openapi::api::core::v1::Pod;
    let cp = TestControlPlane::start_with_controllers(StoreKind::Embedded).await;
    let client = cp.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "kwok-2"},
        "spec": {"taints": [{"key": "example.com/drain", "effect": "NoExecute"}]},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    for (name, tolerations) in [
        ("intolerant", json!([])),
        (
            "tolerant",
            json!([{"key": "example.com/drain", "operator": "Exists", "effect": "NoExecute"}]),
        ),
    ] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": "kwok-2", "tolerations": tolerations,
                     "containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    // Bound pods get their grace period: evicted means gone or terminating.
    korvet_test_support::wait_for(10, "the intolerant pod evicted", || async {
        let pod = pods.get_opt("intolerant").await.unwrap();
        pod.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    let tolerant = pods.get("tolerant").await.unwrap();
    assert!(tolerant.metadata.deletion_timestamp.is_none());
}
