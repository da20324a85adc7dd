//! PodDisruptionBudgets against a real API server with the controllers running: the
//! disruption controller's status arithmetic and the Eviction API honouring it. Pods are
//! plain objects whose status the test writes (no node agent, as kwok does).

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use korvet_test_support::{wait_for, StoreKind, TestControlPlane};
use kube::api::{Api, EvictParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

async fn setup() -> (TestControlPlane, kube::Client) {
    let cp = TestControlPlane::start_with_controllers(StoreKind::Embedded).await;
    // Without kube's retries of 429s: a refused eviction is what the test looks at.
    let kubeconfig = kube::config::Kubeconfig::read_from(cp.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.default_retry = false;
    (cp, kube::Client::try_from(config).unwrap())
}

/// A running pod labelled `app=web` (ready or not), optionally owned by `owner`.
async fn pod(client: &kube::Client, name: &str, ready: bool, owner: Option<&ReplicaSet>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut object = json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        // Bound to a node nobody runs, so the scheduler leaves the status alone.
        "spec": {"nodeName": "kwok-absent",
            "containers": [{"name": "main", "image": "korvet.local/busybox:latest"}]},
    });
    if let Some(rs) = owner {
        object["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "controller": true,
            "name": rs.metadata.name, "uid": rs.metadata.uid,
        }]);
    }
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(object).unwrap(),
    )
    .await
    .unwrap();
    set_ready(client, name, ready).await;
}

async fn set_ready(client: &kube::Client, name: &str, ready: bool) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let status = if ready { "True" } else { "False" };
    let patch = json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": status, "lastTransitionTime": "2026-01-01T00:00:00Z"},
    ]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn pdb(client: &kube::Client, name: &str, spec: Value) {
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    let object = json!({"metadata": {"name": name}, "spec": spec});
    api.create(
        &PostParams::default(),
        &serde_json::from_value(object).unwrap(),
    )
    .await
    .unwrap();
}

/// The budget's status once it has (expectedPods, desiredHealthy, currentHealthy,
/// disruptionsAllowed) as wanted; expectedPods -1 is any (a terminating pod counts as
/// expected until it is gone, and when that is depends on graceful deletion).
async fn status_becomes(client: &kube::Client, name: &str, wanted: (i32, i32, i32, i32)) -> Value {
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    let mut last = None;
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let pdb = api.get(name).await.unwrap();
            let s = pdb.status.clone().unwrap_or_default();
            let have = (
                s.expected_pods,
                s.desired_healthy,
                s.current_healthy,
                s.disruptions_allowed,
            );
            let expected_ok = wanted.0 < 0 || have.0 == wanted.0;
            if expected_ok
                && (have.1, have.2, have.3) == (wanted.1, wanted.2, wanted.3)
                && s.observed_generation == pdb.metadata.generation
            {
                return serde_json::to_value(&s).unwrap();
            }
            last = Some(have);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("PDB {name}: wanted {wanted:?}, last {last:?}"))
}

fn condition(status: &Value) -> (String, String) {
    let c = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "DisruptionAllowed")
        .unwrap();
    (
        c["status"].as_str().unwrap().to_string(),
        c["reason"].as_str().unwrap().to_string(),
    )
}

async fn evict(client: &kube::Client, name: &str) -> Result<(), kube::core::Status> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    match pods.evict(name, &EvictParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(*status),
        Err(e) => panic!("evicting {name}: {e}"),
    }
}

async fn gone(client: &kube::Client, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    wait_for(10, &format!("pod {name} to be deleted"), || {
        let pods = pods.clone();
        async move {
            match pods.get_opt(name).await.unwrap() {
                None => Some(()),
                Some(p) => p.metadata.deletion_timestamp.map(|_| ()),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn evictions_spend_the_budget_and_are_refused_when_it_is_spent() {
    let (_cp, client) = setup().await;
    for name in ["web-1", "web-2", "web-3"] {
        pod(&client, name, true, None).await;
    }
    pdb(
        &client,
        "web",
        json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}),
    )
    .await;
    let status = status_becomes(&client, "web", (3, 2, 3, 1)).await;
    assert_eq!(condition(&status), ("True".into(), "SufficientPods".into()));

    // A dry run spends nothing.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.evict(
        "web-1",
        &EvictParams {
            delete_options: None,
            post_options: PostParams {
                dry_run: true,
                ..Default::default()
            },
        },
    )
    .await
    .unwrap();
    assert!(pods.get_opt("web-1").await.unwrap().is_some());

    evict(&client, "web-1").await.unwrap();
    gone(&client, "web-1").await;
    let status = status_becomes(&client, "web", (-1, 2, 2, 0)).await;
    assert_eq!(
        condition(&status),
        ("False".into(), "InsufficientPods".into())
    );

    let refused = evict(&client, "web-2").await.unwrap_err();
    assert_eq!(refused.code, 429, "{refused:?}");
    assert_eq!(refused.reason, "TooManyRequests");
    assert_eq!(
        refused.message,
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    assert!(pods.get_opt("web-2").await.unwrap().is_some());

    // An unhealthy pod is protected while the budget is not met (IfHealthyBudget)...
    set_ready(&client, "web-2", false).await;
    status_becomes(&client, "web", (-1, 2, 1, 0)).await;
    assert_eq!(evict(&client, "web-2").await.unwrap_err().code, 429);
    // ... and goes at once with AlwaysAllow.
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"unhealthyPodEvictionPolicy": "AlwaysAllow"}})),
    )
    .await
    .unwrap();
    status_becomes(&client, "web", (-1, 2, 1, 0)).await;
    evict(&client, "web-2").await.unwrap();
    gone(&client, "web-2").await;

    // A new ready pod makes room again.
    pod(&client, "web-4", true, None).await;
    status_becomes(&client, "web", (-1, 2, 2, 0)).await;
    pod(&client, "web-5", true, None).await;
    status_becomes(&client, "web", (-1, 2, 3, 1)).await;

    // Two budgets over one pod: upstream refuses with an internal error.
    pdb(
        &client,
        "web-too",
        json!({"maxUnavailable": 0, "selector": {"matchLabels": {"app": "web"}}}),
    )
    .await;
    let refused = evict(&client, "web-3").await.unwrap_err();
    assert_eq!(refused.code, 500, "{refused:?}");
    assert!(refused
        .message
        .contains("more than one PodDisruptionBudget"));
}

#[tokio::test]
async fn percents_and_max_unavailable_count_the_controllers_scale() {
    let (_cp, client) = setup().await;
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": "korvet.local/busybox:latest"}]},
            },
        },
    }))
    .unwrap();
    let rs = sets.create(&PostParams::default(), &rs).await.unwrap();
    for name in ["web-a", "web-b", "web-c"] {
        pod(&client, name, true, Some(&rs)).await;
    }
    pdb(
        &client,
        "max",
        json!({"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}),
    )
    .await;
    // Four wanted, three ready: one unavailable already, none more allowed.
    status_becomes(&client, "max", (4, 3, 3, 0)).await;
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    api.patch(
        "max",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"maxUnavailable": null, "minAvailable": "50%"}})),
    )
    .await
    .unwrap();
    // 50 % of four, rounded up, is two.
    status_becomes(&client, "max", (4, 2, 3, 1)).await;
    sets.patch_scale(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    // 50 % of three, rounded up, is two.
    status_becomes(&client, "max", (3, 2, 3, 1)).await;
}
