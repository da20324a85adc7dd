//! Endpoints and EndpointSlices against a real API server (embedded store) with the
//! controllers running. Nodes and pod statuses are written by the test, as kwok does: the
//! controllers only read them.

use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use korvet_test_support::{wait_for, StoreKind, TestControlPlane};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

async fn setup() -> (TestControlPlane, kube::Client) {
    let cp = TestControlPlane::start_with_controllers(StoreKind::Embedded).await;
    let client = cp.client().await;
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
    }))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    (cp, client)
}

/// A pod on n1 with IP `ip`, its port 8080 named `http`, ready or not.
async fn pod(client: &kube::Client, name: &str, app: &str, ip: &str, ready: bool) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "nodeName": "n1",
            "containers": [{"name": "c", "image": "busybox",
                            "ports": [{"name": "http", "containerPort": 8080}]}],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    set_ready(client, name, ip, ready).await;
}

async fn set_ready(client: &kube::Client, name: &str, ip: &str, ready: bool) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let status = if ready { "True" } else { "False" };
    let patch = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": status,
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn service(client: &kube::Client, body: serde_json::Value) {
    let svc: Service = serde_json::from_value(body).unwrap();
    Api::<Service>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
}

async fn slices_of(client: &kube::Client, svc: &str) -> Vec<EndpointSlice> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={svc}"));
    api.list(&lp).await.unwrap().items
}

/// (ip, ready, serving, terminating) of every endpoint of the service's slices.
async fn slice_state(client: &kube::Client, svc: &str) -> Vec<(String, bool, bool, bool)> {
    let mut state: Vec<_> = slices_of(client, svc)
        .await
        .into_iter()
        .flat_map(|s| s.endpoints)
        .map(|e| {
            let c = e.conditions.unwrap();
            (
                e.addresses[0].clone(),
                c.ready.unwrap(),
                c.serving.unwrap(),
                c.terminating.unwrap(),
            )
        })
        .collect();
    state.sort();
    state
}

fn ips(addresses: Option<&Vec<k8s_openapi::api::core::v1::EndpointAddress>>) -> Vec<String> {
    addresses
        .map(|a| a.iter().map(|a| a.ip.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn endpoints_and_slices_follow_pod_readiness() {
    let (_cp, client) = setup().await;
    pod(&client, "p1", "web", "10.244.0.5", true).await;
    pod(&client, "p2", "web", "10.244.0.6", false).await;
    pod(&client, "p3", "other", "10.244.0.7", true).await;
    service(
        &client,
        json!({
            "metadata": {"name": "web", "labels": {"tier": "front"}},
            "spec": {"selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }),
    )
    .await;
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let ep = wait_for(20, "Endpoints web with both pods", || async {
        let ep = endpoints.get_opt("web").await.unwrap()?;
        let subset = ep.subsets.as_ref()?.first()?.clone();
        (ips(subset.addresses.as_ref()) == ["10.244.0.5"]
            && ips(subset.not_ready_addresses.as_ref()) == ["10.244.0.6"])
        .then_some(ep)
    })
    .await;
    let subset = &ep.subsets.as_ref().unwrap()[0];
    let port = &subset.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port, port.protocol.as_deref()),
        (Some("http"), 8080, Some("TCP"))
    );
    let address = &subset.addresses.as_ref().unwrap()[0];
    assert_eq!(address.node_name.as_deref(), Some("n1"));
    assert_eq!(
        address.target_ref.as_ref().unwrap().name.as_deref(),
        Some("p1")
    );
    assert_eq!(ep.metadata.labels.as_ref().unwrap()["tier"], "front");
    assert!(ep
        .metadata
        .annotations
        .as_ref()
        .unwrap()
        .contains_key("endpoints.kubernetes.io/last-change-trigger-time"));

    let want = vec![
        ("10.244.0.5".to_string(), true, true, false),
        ("10.244.0.6".to_string(), false, false, false),
    ];
    wait_for(20, "the slice with both pods", || async {
        (slice_state(&client, "web").await == want).then_some(())
    })
    .await;
    let slices = slices_of(&client, "web").await;
    assert_eq!(slices.len(), 1);
    let slice = &slices[0];
    assert!(slice.metadata.name.as_ref().unwrap().starts_with("web-"));
    assert_eq!(slice.address_type, "IPv4");
    let labels = slice.metadata.labels.as_ref().unwrap();
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(labels["tier"], "front");
    let owner = &slice.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Service", "web")
    );
    assert_eq!(owner.controller, Some(true));
    let port = &slice.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port, port.protocol.as_deref()),
        (Some("http"), Some(8080), Some("TCP"))
    );
    let first = slice
        .endpoints
        .iter()
        .find(|e| e.addresses[0] == "10.244.0.5")
        .unwrap();
    assert_eq!(first.zone.as_deref(), Some("zone-a"));
    assert_eq!(first.node_name.as_deref(), Some("n1"));

    // p2 becomes ready; p1 starts terminating (a finalizer holds it).
    set_ready(&client, "p2", "10.244.0.6", true).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
    )
    .await
    .unwrap();
    pods.delete("p1", &DeleteParams::default()).await.unwrap();
    let want = vec![
        ("10.244.0.5".to_string(), false, true, true),
        ("10.244.0.6".to_string(), true, true, false),
    ];
    wait_for(20, "the slice to show p1 terminating, p2 ready", || async {
        (slice_state(&client, "web").await == want).then_some(())
    })
    .await;
    wait_for(20, "Endpoints without the terminating pod", || async {
        let ep = endpoints.get("web").await.unwrap();
        let subset = ep.subsets.as_ref()?.first()?.clone();
        (ips(subset.addresses.as_ref()) == ["10.244.0.6"] && subset.not_ready_addresses.is_none())
            .then_some(())
    })
    .await;
    pods.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();

    // Deleting the Service removes both.
    Api::<Service>::namespaced(client.clone(), "default")
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        20,
        "Endpoints and slices to go with the Service",
        || async {
            let none = endpoints.get_opt("web").await.unwrap().is_none()
                && slices_of(&client, "web").await.is_empty();
            none.then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn services_without_selector_are_left_alone_and_big_ones_are_sliced() {
    let (_cp, client) = setup().await;
    service(
        &client,
        json!({
            "metadata": {"name": "manual"},
            "spec": {"ports": [{"port": 80}]},
        }),
    )
    .await;
    // Hostnames are published for pods of the headless Service named as their subdomain.
    service(
        &client,
        json!({
            "metadata": {"name": "many"},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": true,
                     "selector": {"app": "many"}, "ports": [{"port": 9, "targetPort": 8080}]},
        }),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..130 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("m{i}"), "labels": {"app": "many"}},
            "spec": {"nodeName": "n1", "hostname": format!("m{i}"), "subdomain": "many",
                     "containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let ip = format!("10.244.{}.{}", 1 + i / 200, 1 + i % 200);
        let patch = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
        pods.patch_status(
            &format!("m{i}"),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    }
    let slices = wait_for(30, "130 endpoints in slices", || async {
        let slices = slices_of(&client, "many").await;
        let total: usize = slices.iter().map(|s| s.endpoints.len()).sum();
        (total == 130).then_some(slices)
    })
    .await;
    let mut sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
    sizes.sort();
    assert_eq!(sizes, [30, 100]);
    let endpoint = &slices[0].endpoints[0];
    // publishNotReadyAddresses: ready although the pods have no Ready condition.
    assert_eq!(endpoint.conditions.as_ref().unwrap().ready, Some(true));
    assert!(endpoint.hostname.as_deref().unwrap().starts_with('m'));
    let labels = slices[0].metadata.labels.as_ref().unwrap();
    assert_eq!(labels["service.kubernetes.io/headless"], "");

    // Nothing is made for the Service without a selector.
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    assert!(endpoints.get_opt("manual").await.unwrap().is_none());
    assert!(slices_of(&client, "manual").await.is_empty());
}
