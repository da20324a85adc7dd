//! The Deployment and ReplicaSet controllers against a real API server (embedded store)
//! driven by kubectl. No kubelet runs: a task plays one, marking each pod Running and
//! Ready soon after it is made, unless its image is `korvet.local/broken:1` (a pod that
//! never starts), as kwok does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use korvet_test_support::{wait_for, Kubectl, StoreKind, TestControlPlane};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;

const BROKEN: &str = "korvet.local/broken:1";

struct Setup {
    _cp: TestControlPlane,
    client: kube::Client,
    kubectl: Kubectl,
    kubelet: tokio::task::JoinHandle<()>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.kubelet.abort();
    }
}

async fn setup() -> Setup {
    let cp = TestControlPlane::start_with_controllers(StoreKind::Embedded).await;
    let client = cp.client().await;
    let kubelet = tokio::spawn(play_kubelet(client.clone()));
    Setup {
        kubectl: cp.kubectl(),
        _cp: cp,
        client,
        kubelet,
    }
}

/// Marks new pods Running and Ready after 100 ms (broken images never).
async fn play_kubelet(client: kube::Client) {
    let pods: Api<Pod> = Api::all(client.clone());
    let stream = watcher(pods, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    while let Some(Ok(pod)) = stream.next().await {
        let started = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let image = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        if started || image == BROKEN || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = jiff::Timestamp::now().to_string();
            let _ = api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {
                        "phase": "Running",
                        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
                    }})),
                )
                .await;
        });
    }
}

async fn replica_sets(client: &kube::Client) -> Vec<ReplicaSet> {
    let mut sets = Api::<ReplicaSet>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    sets.sort_by_key(|rs| rs.creation_timestamp().map(|t| t.0));
    sets
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn revision(rs: &ReplicaSet) -> &str {
    rs.annotations()
        .get("deployment.kubernetes.io/revision")
        .map(String::as_str)
        .unwrap_or("")
}

fn image_of(rs: &ReplicaSet) -> String {
    rs.spec
        .as_ref()
        .unwrap()
        .template
        .as_ref()
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap()
}

async fn condition(client: &kube::Client, name: &str, type_: &str) -> Option<(String, String)> {
    let d = Api::<Deployment>::namespaced(client.clone(), "default")
        .get(name)
        .await
        .ok()?;
    let c = d
        .status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status, c.reason.unwrap_or_default()))
}

/// Kubectl blocks; run it off the runtime's threads.
async fn kubectl(k: &Kubectl, args: &[&str]) -> String {
    tokio::task::block_in_place(|| k.ok(args))
}

/// Watches the ReplicaSets of `deployment` while it runs and records the most pods
/// ever asked for and the fewest available.
fn limits_watcher(
    client: kube::Client,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(i32, i32)> {
    tokio::spawn(async move {
        let (mut most, mut fewest) = (0, i32::MAX);
        while !stop.load(Ordering::Relaxed) {
            let sets = replica_sets(&client).await;
            let total: i32 = sets.iter().map(spec_replicas).sum();
            let avail: i32 = sets
                .iter()
                .map(|rs| {
                    rs.status
                        .as_ref()
                        .and_then(|s| s.available_replicas)
                        .unwrap_or(0)
                })
                .sum();
            most = most.max(total);
            fewest = fewest.min(avail);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (most, fewest)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_roll_out_roll_back_and_scale_through_kubectl() {
    let s = setup().await;
    let k = &s.kubectl;
    kubectl(
        k,
        &[
            "create",
            "deployment",
            "web",
            "--image=korvet.local/busybox:1",
            "--replicas=3",
        ],
    )
    .await;
    let out = kubectl(k, &["rollout", "status", "deployment/web", "--timeout=30s"]).await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let sets = replica_sets(&s.client).await;
    assert_eq!(sets.len(), 1);
    let first = &sets[0];
    let hash = first.labels()["pod-template-hash"].clone();
    assert_eq!(first.name_any(), format!("web-{hash}"));
    assert_eq!(revision(first), "1");
    assert_eq!(
        first.annotations()["deployment.kubernetes.io/desired-replicas"],
        "3"
    );
    assert_eq!(
        first.annotations()["deployment.kubernetes.io/max-replicas"],
        "4"
    );
    assert_eq!(
        first
            .spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref()
            .unwrap()["pod-template-hash"],
        hash
    );
    assert_eq!(
        condition(&s.client, "web", "Available").await,
        Some(("True".into(), "MinimumReplicasAvailable".into()))
    );
    assert_eq!(
        condition(&s.client, "web", "Progressing").await,
        Some(("True".into(), "NewReplicaSetAvailable".into()))
    );

    // A rolling update with maxSurge=1, maxUnavailable=0: never more than 4 pods asked
    // for, never fewer than 3 available.
    kubectl(
        k,
        &[
            "patch",
            "deployment",
            "web",
            "-p",
            r#"{"spec":{"strategy":{"rollingUpdate":{"maxSurge":1,"maxUnavailable":0}}}}"#,
        ],
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = limits_watcher(s.client.clone(), stop.clone());
    kubectl(
        k,
        &[
            "set",
            "image",
            "deployment/web",
            "busybox=korvet.local/busybox:2",
        ],
    )
    .await;
    let out = kubectl(k, &["rollout", "status", "deployment/web", "--timeout=30s"]).await;
    assert!(out.contains("successfully rolled out"), "{out}");
    stop.store(true, Ordering::Relaxed);
    let (most, fewest) = watcher.await.unwrap();
    assert!(most <= 4, "asked for {most} pods with maxSurge 1");
    assert!(fewest >= 3, "only {fewest} available with maxUnavailable 0");
    let sets = replica_sets(&s.client).await;
    assert_eq!(sets.len(), 2);
    assert_eq!((spec_replicas(&sets[0]), spec_replicas(&sets[1])), (0, 3));
    assert_eq!(revision(&sets[1]), "2");
    let d = Api::<Deployment>::namespaced(s.client.clone(), "default")
        .get("web")
        .await
        .unwrap();
    assert_eq!(d.annotations()["deployment.kubernetes.io/revision"], "2");

    let history = kubectl(k, &["rollout", "history", "deployment/web"]).await;
    assert!(
        history.contains("1 ") && history.contains("2 "),
        "{history}"
    );
    let rev1 = kubectl(k, &["rollout", "history", "deployment/web", "--revision=1"]).await;
    assert!(rev1.contains("korvet.local/busybox:1"), "{rev1}");

    // Undo goes back to the first ReplicaSet, which becomes revision 3.
    let out = kubectl(k, &["rollout", "undo", "deployment/web"]).await;
    assert!(out.contains("rolled back"), "{out}");
    kubectl(k, &["rollout", "status", "deployment/web", "--timeout=30s"]).await;
    let sets = replica_sets(&s.client).await;
    assert_eq!(sets.len(), 2, "undo re-uses the old ReplicaSet");
    assert_eq!(image_of(&sets[0]), "korvet.local/busybox:1");
    assert_eq!(spec_replicas(&sets[0]), 3);
    assert_eq!(revision(&sets[0]), "3");
    assert_eq!(
        sets[0].annotations()["deployment.kubernetes.io/revision-history"],
        "1"
    );

    // Scale through the scale subresource.
    kubectl(k, &["scale", "deployment/web", "--replicas=5"]).await;
    kubectl(k, &["rollout", "status", "deployment/web", "--timeout=30s"]).await;
    let sets = replica_sets(&s.client).await;
    assert_eq!(spec_replicas(&sets[0]), 5);
    assert_eq!(
        sets[0].annotations()["deployment.kubernetes.io/desired-replicas"],
        "5"
    );

    // Restart makes a new ReplicaSet (the template gains restartedAt).
    kubectl(k, &["rollout", "restart", "deployment/web"]).await;
    kubectl(k, &["rollout", "status", "deployment/web", "--timeout=30s"]).await;
    let sets = replica_sets(&s.client).await;
    assert_eq!(sets.len(), 3);
    assert_eq!(spec_replicas(&sets[2]), 5);
    assert_eq!(revision(&sets[2]), "4");

    // Paused: a template change makes no ReplicaSet until resumed.
    kubectl(k, &["rollout", "pause", "deployment/web"]).await;
    kubectl(
        k,
        &[
            "set",
            "image",
            "deployment/web",
            "busybox=korvet.local/busybox:3",
        ],
    )
    .await;
    wait_for(10, "DeploymentPaused", || async {
        (condition(&s.client, "web", "Progressing").await
            == Some(("Unknown".into(), "DeploymentPaused".into())))
        .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(replica_sets(&s.client).await.len(), 3);
    kubectl(k, &["rollout", "resume", "deployment/web"]).await;
    let out = kubectl(k, &["rollout", "status", "deployment/web", "--timeout=30s"]).await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let sets = replica_sets(&s.client).await;
    assert_eq!(sets.len(), 4);
    assert_eq!(image_of(&sets[3]), "korvet.local/busybox:3");

    let events: Vec<Event> = Api::<Event>::namespaced(s.client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let down = format!("Scaled down replica set web-{hash} to 2 from 3");
    assert!(
        events
            .iter()
            .any(|e| e.message.as_deref() == Some(down.as_str())),
        "no event {down:?} in {:#?}",
        events
            .iter()
            .map(|e| (&e.reason, &e.message, &e.count))
            .collect::<Vec<_>>()
    );
    let scaled = format!("Scaled up replica set web-{hash} to 3");
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("ScalingReplicaSet")
                && e.message.as_deref() == Some(scaled.as_str())),
        "no event {scaled:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_stops_old_pods_before_starting_new_ones() {
    let s = setup().await;
    let k = &s.kubectl;
    kubectl(
        k,
        &[
            "create",
            "deployment",
            "db",
            "--image=korvet.local/busybox:1",
            "--replicas=2",
        ],
    )
    .await;
    kubectl(
        k,
        &[
            "patch",
            "deployment",
            "db",
            "-p",
            r#"{"spec":{"strategy":{"type":"Recreate","rollingUpdate":null}}}"#,
        ],
    )
    .await;
    kubectl(k, &["rollout", "status", "deployment/db", "--timeout=30s"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let both = {
        let (client, stop) = (s.client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut overlap = false;
            while !stop.load(Ordering::Relaxed) {
                let sets = replica_sets(&client).await;
                overlap |= sets.iter().filter(|rs| spec_replicas(rs) > 0).count() > 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            overlap
        })
    };
    kubectl(
        k,
        &[
            "set",
            "image",
            "deployment/db",
            "busybox=korvet.local/busybox:2",
        ],
    )
    .await;
    let out = kubectl(k, &["rollout", "status", "deployment/db", "--timeout=30s"]).await;
    assert!(out.contains("successfully rolled out"), "{out}");
    stop.store(true, Ordering::Relaxed);
    assert!(
        !both.await.unwrap(),
        "old and new ReplicaSets had replicas at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_rollouts_exceed_their_progress_deadline() {
    let s = setup().await;
    let k = &s.kubectl;
    kubectl(
        k,
        &[
            "create",
            "deployment",
            "app",
            "--image=korvet.local/busybox:1",
            "--replicas=2",
        ],
    )
    .await;
    kubectl(
        k,
        &[
            "patch",
            "deployment",
            "app",
            "-p",
            r#"{"spec":{"progressDeadlineSeconds":2}}"#,
        ],
    )
    .await;
    kubectl(k, &["rollout", "status", "deployment/app", "--timeout=30s"]).await;
    kubectl(
        k,
        &[
            "set",
            "image",
            "deployment/app",
            &format!("busybox={BROKEN}"),
        ],
    )
    .await;
    wait_for(15, "ProgressDeadlineExceeded", || async {
        (condition(&s.client, "app", "Progressing").await
            == Some(("False".into(), "ProgressDeadlineExceeded".into())))
        .then_some(())
    })
    .await;
    let run = tokio::task::block_in_place(|| {
        k.run(&["rollout", "status", "deployment/app", "--timeout=10s"])
    });
    assert!(!run.ok);
    assert!(
        run.stderr.contains("exceeded its progress deadline"),
        "{}",
        run.stderr
    );
    // The old pods still serve: availability was kept.
    let sets = replica_sets(&s.client).await;
    assert_eq!(
        spec_replicas(&sets[0]),
        2,
        "old ReplicaSet kept at full size"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_replica_sets_beyond_the_history_limit_are_deleted() {
    let s = setup().await;
    let k = &s.kubectl;
    kubectl(
        k,
        &[
            "create",
            "deployment",
            "hist",
            "--image=korvet.local/busybox:1",
        ],
    )
    .await;
    kubectl(
        k,
        &[
            "patch",
            "deployment",
            "hist",
            "-p",
            r#"{"spec":{"revisionHistoryLimit":1}}"#,
        ],
    )
    .await;
    for tag in 2..=4 {
        kubectl(
            k,
            &[
                "set",
                "image",
                "deployment/hist",
                &format!("busybox=korvet.local/busybox:{tag}"),
            ],
        )
        .await;
        kubectl(
            k,
            &["rollout", "status", "deployment/hist", "--timeout=30s"],
        )
        .await;
    }
    let sets = wait_for(10, "old ReplicaSets cleaned up", || async {
        let sets = replica_sets(&s.client).await;
        (sets.len() == 2).then_some(sets)
    })
    .await;
    assert_eq!(image_of(&sets[1]), "korvet.local/busybox:4");
    assert_eq!(image_of(&sets[0]), "korvet.local/busybox:3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_deployments_are_refused_with_field_causes() {
    let s = setup().await;
    let manifest = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "bad"},
        "spec": {
            "selector": {"matchLabels": {"app": "one"}},
            "template": {
                "metadata": {"labels": {"app": "two"}},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            },
        },
    });
    let run = tokio::task::block_in_place(|| {
        s.kubectl
            .run_with_input(&["apply", "-f", "-"], &manifest.to_string())
    });
    assert!(!run.ok);
    assert!(
        run.stderr.contains("spec.template.metadata.labels"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("`selector` does not match template `labels`"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_mid_rollout_is_proportional() {
    let s = setup().await;
    let k = &s.kubectl;
    kubectl(
        k,
        &[
            "create",
            "deployment",
            "prop",
            "--image=korvet.local/busybox:1",
            "--replicas=10",
        ],
    )
    .await;
    kubectl(
        k,
        &["rollout", "status", "deployment/prop", "--timeout=30s"],
    )
    .await;
    // A stuck rollout with the default 25 % / 25 %: 13 pods at most, 8 available at
    // least, the 5 new ones never ready: old 8, new 5.
    kubectl(
        k,
        &[
            "set",
            "image",
            "deployment/prop",
            &format!("busybox={BROKEN}"),
        ],
    )
    .await;
    let sizes = || async {
        let sets = replica_sets(&s.client).await;
        (sets.len() == 2).then(|| (spec_replicas(&sets[0]), spec_replicas(&sets[1])))
    };
    wait_for(15, "old 8, new 5", || async {
        (sizes().await == Some((8, 5))).then_some(())
    })
    .await;
    // 20 replicas allow 25 pods: the 12 more go 7 to the old, 5 to the new ReplicaSet,
    // in proportion to their sizes.
    kubectl(k, &["scale", "deployment/prop", "--replicas=20"]).await;
    wait_for(15, "old 15, new 10", || async {
        (sizes().await == Some((15, 10))).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sizes().await, Some((15, 10)));
    let sets = replica_sets(&s.client).await;
    for rs in &sets {
        assert_eq!(
            rs.annotations()["deployment.kubernetes.io/desired-replicas"],
            "20"
        );
        assert_eq!(
            rs.annotations()["deployment.kubernetes.io/max-replicas"],
            "25"
        );
    }
}
