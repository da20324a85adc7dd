//! The ReplicaSet controller against a real API server (embedded store). No kubelet
//! runs: the test plays one by patching pod status to Running and Ready, as kwok does.

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event, Pod};
use korvet_test_support::{wait_for, StoreKind, TestControlPlane};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;

async fn setup() -> (TestControlPlane, kube::Client) {
    let cp = TestControlPlane::start_with_controllers(StoreKind::Embedded).await;
    let client = cp.client().await;
    (cp, client)
}

fn replica_set(name: &str, replicas: i32, app: &str) -> ReplicaSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {"containers": [{"name": "main", "image": "korvet.local/busybox:latest"}]},
            },
        },
    }))
    .unwrap()
}

/// Active pods (not being deleted) controlled by the ReplicaSet with `uid`.
async fn owned_pods(client: &kube::Client, uid: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|r| r.uid == uid && r.controller == Some(true))
        })
        .collect()
}

async fn wait_owned(client: &kube::Client, uid: &str, count: usize) -> Vec<Pod> {
    wait_for(20, &format!("{count} pods"), || async {
        let pods = owned_pods(client, uid).await;
        (pods.len() == count).then_some(pods)
    })
    .await
}

/// Plays the kubelet: the pod runs and is ready.
async fn make_ready(client: &kube::Client, pod: &str) {
    let now = jiff::Timestamp::now().to_string();
    Api::<Pod>::namespaced(client.clone(), "default")
        .patch_status(
            pod,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
            }})),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_sets_create_adopt_release_and_delete_pods() {
    let (_cp, client) = setup().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");

    // An orphan with matching labels is adopted, so only two pods are made.
    let orphan: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "orphan", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "main", "image": "korvet.local/busybox:latest"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &orphan).await.unwrap();
    let rs = sets
        .create(&PostParams::default(), &replica_set("web", 3, "web"))
        .await
        .unwrap();
    let uid = rs.uid().unwrap();
    let owned = wait_owned(&client, &uid, 3).await;
    assert!(
        owned.iter().any(|p| p.name_any() == "orphan"),
        "orphan adopted"
    );
    for p in &owned {
        assert!(
            p.name_any() == "orphan" || p.name_any().starts_with("web-"),
            "{}",
            p.name_any()
        );
    }
    // Nothing more is created later (expectations hold across fast re-syncs).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(owned_pods(&client, &uid).await.len(), 3);

    // Status follows readiness.
    for p in &owned {
        make_ready(&client, &p.name_any()).await;
    }
    wait_for(10, "status with 3 ready", || async {
        let s = sets.get("web").await.unwrap().status?;
        (s.replicas == 3
            && s.ready_replicas == Some(3)
            && s.available_replicas == Some(3)
            && s.fully_labeled_replicas == Some(3)
            && s.observed_generation == Some(1))
        .then_some(())
    })
    .await;

    // A pod relabelled away is released and replaced.
    let created = owned
        .iter()
        .find(|p| p.name_any() != "orphan")
        .unwrap()
        .name_any();
    pods.patch(
        &created,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    wait_for(10, "release", || async {
        let p = pods.get(&created).await.unwrap();
        p.owner_references().is_empty().then_some(())
    })
    .await;
    let owned = wait_owned(&client, &uid, 3).await;
    assert!(owned.iter().all(|p| p.name_any() != created));

    // Scale down through the scale subresource: the not-ready new pod goes first.
    sets.patch_scale(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await
    .unwrap();
    let remaining = wait_owned(&client, &uid, 2).await;
    assert!(
        remaining
            .iter()
            .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")),
        "the pending pod was deleted first"
    );

    // The events are written after the writes they report: wait for them.
    let event_api = Api::<Event>::namespaced(client.clone(), "default");
    wait_for(
        10,
        "one create event per pod and a delete event",
        || async {
            let events: Vec<Event> = event_api
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|e| e.involved_object.name.as_deref() == Some("web"))
                .collect();
            let message_starts = |reason: &str, prefix: &str| {
                events.iter().any(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.message.as_deref().is_some_and(|m| m.starts_with(prefix))
                })
            };
            let created: i32 = events
                .iter()
                .filter(|e| e.reason.as_deref() == Some("SuccessfulCreate"))
                .map(|e| e.count.unwrap_or(1))
                .sum();
            (created >= 3
                && message_starts("SuccessfulCreate", "Created pod: web-")
                && message_starts("SuccessfulDelete", "Deleted pod: web-"))
            .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_sets_report_available_after_min_ready_seconds() {
    let (_cp, client) = setup().await;
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let mut rs = replica_set("slow", 1, "slow");
    rs.spec.as_mut().unwrap().min_ready_seconds = Some(2);
    let rs = sets.create(&PostParams::default(), &rs).await.unwrap();
    let pod = wait_owned(&client, &rs.uid().unwrap(), 1).await.remove(0);
    make_ready(&client, &pod.name_any()).await;
    wait_for(10, "ready, not available", || async {
        let s = sets.get("slow").await.unwrap().status?;
        (s.ready_replicas == Some(1)).then_some(())
    })
    .await;
    let s = sets.get("slow").await.unwrap().status.unwrap();
    assert_eq!(s.available_replicas.unwrap_or(0), 0, "{s:?}");
    wait_for(10, "available", || async {
        let s = sets.get("slow").await.unwrap().status?;
        (s.available_replicas == Some(1)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_sets_with_many_replicas_create_exactly_that_many() {
    let (_cp, client) = setup().await;
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let rs = sets
        .create(&PostParams::default(), &replica_set("many", 40, "many"))
        .await
        .unwrap();
    let uid = rs.uid().unwrap();
    wait_owned(&client, &uid, 40).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(owned_pods(&client, &uid).await.len(), 40);
    sets.patch_scale(
        "many",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .unwrap();
    wait_owned(&client, &uid, 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(owned_pods(&client, &uid).await.len(), 5);
}
