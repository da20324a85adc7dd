//! ResourceQuota against a real API server with the controllers running: the controller
//! counts `status.used`, admission refuses creates over `hard` with upstream's messages
//! and charges the quota so that parallel creates cannot overshoot it.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, ResourceQuota, Secret};
use korvet_test_support::{StoreKind, TestControlPlane};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

async fn setup(namespace: &str) -> (TestControlPlane, kube::Client) {
    let cp = TestControlPlane::start_with_controllers(StoreKind::Embedded).await;
    let client = cp.client().await;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    (cp, client)
}

async fn create_quota(client: &kube::Client, namespace: &str, name: &str, spec: serde_json::Value) {
    let quota: ResourceQuota =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    Api::<ResourceQuota>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &quota)
        .await
        .unwrap();
}

/// Waits until the quota's `status.used` has `resource` = `value`.
async fn wait_used(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    resource: &str,
    value: &str,
) {
    let api = Api::<ResourceQuota>::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let quota = api.get(name).await.unwrap();
        let used = quota
            .status
            .as_ref()
            .and_then(|s| s.used.as_ref())
            .and_then(|u| u.get(resource))
            .map(|q| q.0.clone());
        if used.as_deref() == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "quota {name}: {resource} used is {used:?}, not {value}: {:?}",
            quota.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pod(name: &str, resources: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "busybox", "resources": resources}]},
    }))
    .unwrap()
}

fn forbidden(result: Result<impl std::fmt::Debug, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            status.message
        }
        other => panic!("expected 403, got {other:?}"),
    }
}

#[tokio::test]
async fn quota_counts_usage_and_refuses_creates_over_hard() {
    let ns = "team";
    let (_cp, client) = setup(ns).await;
    create_quota(
        &client,
        ns,
        "compute",
        json!({"hard": {"pods": "2", "requests.cpu": "500m", "limits.cpu": "1"}}),
    )
    .await;
    wait_used(&client, ns, "compute", "pods", "0").await;
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let pp = PostParams::default();

    let message = forbidden(
        pods.create(&pp, &pod("nolimit", json!({"requests": {"cpu": "100m"}})))
            .await,
    );
    assert_eq!(
        message,
        "pods \"nolimit\" is forbidden: failed quota: compute: must specify limits.cpu for: main"
    );

    let sized = json!({"requests": {"cpu": "100m"}, "limits": {"cpu": "200m"}});
    pods.create(&pp, &pod("p1", sized.clone())).await.unwrap();
    pods.create(&pp, &pod("p2", sized.clone())).await.unwrap();
    // Admission charged the quota already, before any recount.
    let quota = Api::<ResourceQuota>::namespaced(client.clone(), ns)
        .get("compute")
        .await
        .unwrap();
    let used = quota.status.unwrap().used.unwrap();
    assert_eq!(used["pods"].0, "2");
    assert_eq!(used["requests.cpu"].0, "200m");

    let message = forbidden(pods.create(&pp, &pod("p3", sized.clone())).await);
    assert_eq!(
        message,
        "pods \"p3\" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"
    );
    // A dry run is checked but charges nothing.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    forbidden(pods.create(&dry, &pod("p3", sized.clone())).await);

    // Deleting a pod gives its share back (the controller recounts).
    pods.delete("p1", &DeleteParams::default()).await.unwrap();
    wait_used(&client, ns, "compute", "pods", "1").await;
    wait_used(&client, ns, "compute", "limits.cpu", "200m").await;
    pods.create(&pp, &pod("p3", sized.clone())).await.unwrap();
    let big = json!({"requests": {"cpu": "450m"}, "limits": {"cpu": "450m"}});
    pods.delete("p2", &DeleteParams::default()).await.unwrap();
    wait_used(&client, ns, "compute", "pods", "1").await;
    let message = forbidden(pods.create(&pp, &pod("big", big)).await);
    assert_eq!(
        message,
        "pods \"big\" is forbidden: exceeded quota: compute, requested: requests.cpu=450m, used: requests.cpu=100m, limited: requests.cpu=500m"
    );
}

#[tokio::test]
async fn parallel_creates_cannot_overshoot_a_quota() {
    let ns = "busy";
    let (_cp, client) = setup(ns).await;
    create_quota(&client, ns, "objects", json!({"hard": {"secrets": "5"}})).await;
    wait_used(&client, ns, "objects", "secrets", "0").await;
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let creates = (0..20).map(|i| {
        let secrets = secrets.clone();
        async move {
            let secret: Secret =
                serde_json::from_value(json!({"metadata": {"name": format!("s{i}")}})).unwrap();
            secrets.create(&PostParams::default(), &secret).await
        }
    });
    let results = futures::future::join_all(creates).await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 5, "{results:?}");
    for r in results.into_iter().filter(|r| r.is_err()) {
        let message = forbidden(r);
        assert!(
            message.contains("exceeded quota: objects, requested: secrets=1, used: secrets=5, limited: secrets=5"),
            "{message}"
        );
    }
    wait_used(&client, ns, "objects", "secrets", "5").await;
}

#[tokio::test]
async fn scopes_select_what_a_quota_counts() {
    let ns = "scoped";
    let (_cp, client) = setup(ns).await;
    create_quota(
        &client,
        ns,
        "best-effort",
        json!({"hard": {"pods": "1"}, "scopes": ["BestEffort"]}),
    )
    .await;
    wait_used(&client, ns, "best-effort", "pods", "0").await;
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let pp = PostParams::default();
    pods.create(&pp, &pod("free1", json!({}))).await.unwrap();
    // Not best-effort: not counted.
    pods.create(&pp, &pod("sized", json!({"requests": {"cpu": "10m"}})))
        .await
        .unwrap();
    let message = forbidden(pods.create(&pp, &pod("free2", json!({}))).await);
    assert!(
        message.ends_with(
            "exceeded quota: best-effort, requested: pods=1, used: pods=1, limited: pods=1"
        ),
        "{message}"
    );
    wait_used(&client, ns, "best-effort", "pods", "1").await;
}
