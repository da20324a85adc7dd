//! The Job, StatefulSet and DaemonSet controllers against a real API server (embedded
//! store) with no node agents: pod phases and readiness are written by the test, as a
//! kubelet would, so each step of the controllers' logic can be checked in order.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use korvet_test_support::{wait_for, StoreKind, TestControlPlane};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};

async fn setup() -> (TestControlPlane, kube::Client) {
    let cp = TestControlPlane::start_with_controllers(StoreKind::Embedded).await;
    let client = cp.client().await;
    (cp, client)
}

fn template(labels: Value) -> Value {
    json!({"metadata": {"labels": labels},
           "spec": {"restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "busybox"}]}})
}

async fn create<K>(api: &Api<K>, object: Value) -> K
where
    K: kube::Resource
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + k8s_openapi::serde::Serialize
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object).await.unwrap()
}

async fn pods(api: &Api<Pod>, selector: &str) -> Vec<Pod> {
    let mut pods = api
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items;
    pods.sort_by_key(|p| p.name_any());
    pods
}

async fn set_phase(api: &Api<Pod>, name: &str, phase: &str, ready: bool) {
    let now = jiff::Timestamp::now().to_string();
    let status = json!({"status": {"phase": phase, "conditions": [
        {"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

fn condition(job: &Job, type_: &str) -> Option<(String, String)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_counts_finished_pods_through_the_tracking_finalizer() {
    let (_cp, client) = setup().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    create(
        &jobs,
        json!({"metadata": {"name": "count"},
               "spec": {"completions": 2, "parallelism": 1, "template": template(json!({}))}}),
    )
    .await;
    let selector = "batch.kubernetes.io/job-name=count";
    let first = wait_for(10, "the first pod", || async {
        pods(&pod_api, selector).await.into_iter().next()
    })
    .await;
    assert!(first
        .finalizers()
        .contains(&"batch.kubernetes.io/job-tracking".to_string()));
    assert_eq!(pods(&pod_api, selector).await.len(), 1, "parallelism 1");
    set_phase(&pod_api, &first.name_any(), "Succeeded", false).await;

    let second = wait_for(10, "a second pod after the first succeeded", || async {
        pods(&pod_api, selector)
            .await
            .into_iter()
            .find(|p| p.name_any() != first.name_any())
    })
    .await;
    wait_for(10, "the first pod counted and released", || async {
        let job = jobs.get("count").await.unwrap();
        let released = pod_api
            .get(&first.name_any())
            .await
            .unwrap()
            .finalizers()
            .is_empty();
        (released && job.status?.succeeded == Some(1)).then_some(())
    })
    .await;
    set_phase(&pod_api, &second.name_any(), "Succeeded", false).await;
    let job = wait_for(10, "the job completes", || async {
        let job = jobs.get("count").await.unwrap();
        (condition(&job, "Complete").map(|c| c.0).as_deref() == Some("True")).then_some(job)
    })
    .await;
    assert_eq!(
        condition(&job, "SuccessCriteriaMet"),
        Some(("True".into(), "CompletionsReached".into()))
    );
    let status = job.status.unwrap();
    assert_eq!(status.succeeded, Some(2));
    assert_eq!(status.active, Some(0));
    assert!(status.completion_time.is_some());
    // Counts survive the pods.
    for pod in [&first, &second] {
        pod_api
            .delete(&pod.name_any(), &DeleteParams::default())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        jobs.get("count").await.unwrap().status.unwrap().succeeded,
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_job_waits_then_runs_until_its_deadline() {
    let (_cp, client) = setup().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    create(
        &jobs,
        json!({"metadata": {"name": "later"},
               "spec": {"suspend": true, "parallelism": 2, "completions": 4,
                        "activeDeadlineSeconds": 2, "template": template(json!({}))}}),
    )
    .await;
    wait_for(10, "the Suspended condition", || async {
        let job = jobs.get("later").await.unwrap();
        (condition(&job, "Suspended") == Some(("True".into(), "JobSuspended".into()))).then_some(())
    })
    .await;
    let selector = "batch.kubernetes.io/job-name=later";
    assert!(pods(&pod_api, selector).await.is_empty());

    let resume = json!({"spec": {"suspend": false}});
    jobs.patch("later", &PatchParams::default(), &Patch::Merge(&resume))
        .await
        .unwrap();
    wait_for(10, "two pods after resuming", || async {
        (pods(&pod_api, selector).await.len() == 2).then_some(())
    })
    .await;
    let job = wait_for(15, "the job fails at its deadline", || async {
        let job = jobs.get("later").await.unwrap();
        (condition(&job, "Failed").map(|c| c.0).as_deref() == Some("True")).then_some(job)
    })
    .await;
    assert_eq!(
        condition(&job, "Suspended"),
        Some(("False".into(), "JobResumed".into()))
    );
    assert_eq!(
        condition(&job, "Failed"),
        Some(("True".into(), "DeadlineExceeded".into()))
    );
    assert_eq!(
        condition(&job, "FailureTarget"),
        Some(("True".into(), "DeadlineExceeded".into()))
    );
    assert!(
        pods(&pod_api, selector).await.is_empty(),
        "its pods are removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_job_pods_carry_their_index() {
    let (_cp, client) = setup().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    create(
        &jobs,
        json!({"metadata": {"name": "idx"},
               "spec": {"completions": 3, "parallelism": 2, "completionMode": "Indexed",
                        "template": template(json!({}))}}),
    )
    .await;
    let selector = "batch.kubernetes.io/job-name=idx";
    let running = wait_for(10, "two indexed pods", || async {
        let p = pods(&pod_api, selector).await;
        (p.len() == 2).then_some(p)
    })
    .await;
    let index = |p: &Pod| p.annotations()["batch.kubernetes.io/job-completion-index"].clone();
    let mut indexes: Vec<String> = running.iter().map(index).collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1"]);
    for pod in &running {
        let i = index(pod);
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some(format!("idx-{i}").as_str()));
        assert!(pod.name_any().starts_with(&format!("idx-{i}-")));
        let env = spec.containers[0].env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX"));
    }
    let one = running.iter().find(|p| index(p) == "1").unwrap();
    set_phase(&pod_api, &one.name_any(), "Succeeded", false).await;
    let third = wait_for(10, "index 2 after index 1 succeeded", || async {
        pods(&pod_api, selector)
            .await
            .into_iter()
            .find(|p| index(p) == "2")
    })
    .await;
    set_phase(&pod_api, &third.name_any(), "Succeeded", false).await;
    wait_for(10, "completedIndexes 1-2", || async {
        let job = jobs.get("idx").await.unwrap();
        (job.status?.completed_indexes.as_deref() == Some("1-2")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_makes_each_pod_after_the_previous_is_ready() {
    let (_cp, client) = setup().await;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    create(
        &sets,
        json!({"metadata": {"name": "web"},
               "spec": {"replicas": 3, "serviceName": "web",
                        "selector": {"matchLabels": {"app": "web"}},
                        "template": template(json!({"app": "web"}))}}),
    )
    .await;
    for i in 0..3 {
        let name = format!("web-{i}");
        wait_for(10, &format!("{name} is made"), || async {
            pod_api.get_opt(&name).await.unwrap()
        })
        .await;
        // Nothing further until this one is Running and Ready.
        let names: Vec<String> = pods(&pod_api, "app=web")
            .await
            .iter()
            .map(|p| p.name_any())
            .collect();
        let expected: Vec<String> = (0..=i).map(|j| format!("web-{j}")).collect();
        assert_eq!(names, expected);
        set_phase(&pod_api, &name, "Running", true).await;
    }
    let sts = wait_for(10, "three ready replicas", || async {
        let sts = sets.get("web").await.unwrap();
        (sts.status.as_ref()?.ready_replicas == Some(3)).then_some(sts)
    })
    .await;
    let status = sts.status.unwrap();
    let revision = status.update_revision.clone().unwrap();
    assert!(revision.starts_with("web-"));
    assert_eq!(status.current_revision, Some(revision));
    assert_eq!(status.updated_replicas, Some(3));
    assert_eq!(status.observed_generation, Some(1));

    // A rolling update with partition 2 replaces only web-2.
    let update = json!({"spec": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
                                 "template": {"metadata": {"annotations": {"v": "2"}}}}});
    sets.patch("web", &PatchParams::default(), &Patch::Merge(&update))
        .await
        .unwrap();
    let revision_of = |p: &Pod| p.labels()["controller-revision-hash"].clone();
    let old_revision = status.current_revision.clone().unwrap();
    let new_pod = wait_for(10, "web-2 remade at the new revision", || async {
        let pod = pod_api.get_opt("web-2").await.unwrap()?;
        (revision_of(&pod) != old_revision && pod.metadata.deletion_timestamp.is_none())
            .then_some(pod)
    })
    .await;
    set_phase(&pod_api, &new_pod.name_any(), "Running", true).await;
    let sts = wait_for(10, "one updated replica", || async {
        let sts = sets.get("web").await.unwrap();
        let s = sts.status.as_ref()?;
        (s.updated_replicas == Some(1) && s.ready_replicas == Some(3)).then_some(sts)
    })
    .await;
    let status = sts.status.unwrap();
    assert_eq!(status.current_revision, Some(old_revision.clone()));
    assert_ne!(status.update_revision, Some(old_revision.clone()));
    for name in ["web-0", "web-1"] {
        assert_eq!(revision_of(&pod_api.get(name).await.unwrap()), old_revision);
    }

    create(
        &sets,
        json!({"metadata": {"name": "par"},
               "spec": {"replicas": 3, "podManagementPolicy": "Parallel",
                        "selector": {"matchLabels": {"app": "par"}},
                        "template": template(json!({"app": "par"}))}}),
    )
    .await;
    wait_for(10, "all Parallel pods at once", || async {
        (pods(&pod_api, "app=par").await.len() == 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_covers_eligible_nodes_including_new_ones() {
    let (_cp, client) = setup().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let node = |name: &str, taint: Option<&str>| {
        let taints: Vec<Value> = taint
            .map(|k| json!({"key": k, "effect": "NoSchedule"}))
            .into_iter()
            .collect();
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
               "spec": {"taints": taints}})
    };
    create(&nodes, node("ds-a", None)).await;
    create(&nodes, node("ds-b", Some("dedicated"))).await;
    // Cordoned nodes still get daemons (upstream's default tolerations).
    create(
        &nodes,
        node("ds-c", Some("node.kubernetes.io/unschedulable")),
    )
    .await;
    create(
        &sets,
        json!({"metadata": {"name": "agent"},
               "spec": {"selector": {"matchLabels": {"app": "agent"}},
                        "template": template(json!({"app": "agent"}))}}),
    )
    .await;
    let placed = || async {
        let mut on: Vec<String> = pods(&pod_api, "app=agent")
            .await
            .iter()
            .filter_map(korvet_controllers::daemonset::node_of)
            .collect();
        on.sort();
        on
    };
    wait_for(10, "daemons on ds-a and ds-c", || async {
        (placed().await == ["ds-a", "ds-c"]).then_some(())
    })
    .await;
    // A rolling update with maxUnavailable 1: the second old pod goes only once the
    // first new one is ready.
    for pod in pods(&pod_api, "app=agent").await {
        set_phase(&pod_api, &pod.name_any(), "Running", true).await;
    }
    let old: Vec<String> = pods(&pod_api, "app=agent")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    let update = json!({"spec": {"template": {"metadata": {"annotations": {"v": "2"}}}}});
    sets.patch("agent", &PatchParams::default(), &Patch::Merge(&update))
        .await
        .unwrap();
    let first = wait_for(10, "a new daemon pod", || async {
        pods(&pod_api, "app=agent")
            .await
            .into_iter()
            .find(|p| !old.contains(&p.name_any()))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let remaining: Vec<String> = pods(&pod_api, "app=agent")
        .await
        .iter()
        .filter(|p| old.contains(&p.name_any()) && p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .collect();
    assert_eq!(
        remaining.len(),
        1,
        "one old pod waits for the new one: {remaining:?}"
    );
    set_phase(&pod_api, &first.name_any(), "Running", true).await;
    wait_for(10, "the second old pod replaced", || async {
        let now = pods(&pod_api, "app=agent").await;
        (now.len() == 2 && now.iter().all(|p| !old.contains(&p.name_any()))).then_some(())
    })
    .await;

    create(&nodes, node("ds-d", None)).await;
    wait_for(10, "a daemon on the new node", || async {
        (placed().await == ["ds-a", "ds-c", "ds-d"]).then_some(())
    })
    .await;
    // A node that gains an untolerated taint loses its daemon.
    let taint = json!({"spec": {"taints": [{"key": "dedicated", "effect": "NoSchedule"}]}});
    nodes
        .patch("ds-d", &PatchParams::default(), &Patch::Merge(&taint))
        .await
        .unwrap();
    wait_for(10, "no daemon left on ds-d", || async {
        let live: Vec<String> = pods(&pod_api, "app=agent")
            .await
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(korvet_controllers::daemonset::node_of)
            .collect();
        (!live.contains(&"ds-d".to_string())).then_some(())
    })
    .await;
    let ds = wait_for(10, "status counts", || async {
        let ds = sets.get("agent").await.unwrap();
        (ds.status.as_ref()?.desired_number_scheduled == 2).then_some(ds)
    })
    .await;
    assert_eq!(ds.status.unwrap().observed_generation, Some(2));
    for name in ["ds-a", "ds-b", "ds-c", "ds-d"] {
        let _ = nodes.delete(name, &DeleteParams::default()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_failure_policy_fails_the_job_on_a_matching_exit_code() {
    let (_cp, client) = setup().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    create(
        &jobs,
        json!({"metadata": {"name": "policy"},
               "spec": {"backoffLimit": 6, "template": template(json!({})),
                        "podFailurePolicy": {"rules": [
                            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}]}}}),
    )
    .await;
    let selector = "batch.kubernetes.io/job-name=policy";
    let pod = wait_for(10, "a pod", || async {
        pods(&pod_api, selector).await.into_iter().next()
    })
    .await;
    let failed = json!({"status": {"phase": "Failed", "containerStatuses": [
        {"name": "main", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
         "state": {"terminated": {"exitCode": 42}}}]}});
    pod_api
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&failed),
        )
        .await
        .unwrap();
    let job = wait_for(10, "the job fails by its policy", || async {
        let job = jobs.get("policy").await.unwrap();
        (condition(&job, "Failed").map(|c| c.0).as_deref() == Some("True")).then_some(job)
    })
    .await;
    assert_eq!(
        condition(&job, "Failed"),
        Some(("True".into(), "PodFailurePolicy".into()))
    );
    assert_eq!(
        job.spec.unwrap().pod_replacement_policy.as_deref(),
        Some("Failed")
    );
    assert_eq!(job.status.unwrap().failed, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_claims_follow_the_retention_policy() {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let (_cp, client) = setup().await;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let sts = create(
        &sets,
        json!({"metadata": {"name": "vol"},
               "spec": {"replicas": 2, "podManagementPolicy": "Parallel",
                        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Delete"},
                        "selector": {"matchLabels": {"app": "vol"}},
                        "template": template(json!({"app": "vol"})),
                        "volumeClaimTemplates": [{"metadata": {"name": "data"},
                            "spec": {"accessModes": ["ReadWriteOnce"],
                                     "resources": {"requests": {"storage": "1Gi"}}}}]}}),
    )
    .await;
    let pods = wait_for(10, "two pods", || async {
        let p = pods(&pod_api, "app=vol").await;
        (p.len() == 2).then_some(p)
    })
    .await;
    for (i, pod) in pods.iter().enumerate() {
        let claim = claims.get(&format!("data-vol-{i}")).await.unwrap();
        let owners = claim.metadata.owner_references.unwrap_or_default();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            Some(owners[0].uid.clone()),
            sts.uid(),
            "the set owns its claims"
        );
        let volume = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        assert!(volume.iter().any(|v| v
            .persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.claim_name == format!("data-vol-{i}"))));
    }
    let scale = json!({"spec": {"replicas": 1}});
    sets.patch("vol", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .unwrap();
    let condemned = pods[1].uid().unwrap();
    // whenScaled: Delete hands the claim to the condemned pod, whose deletion lets the
    // garbage collector remove it; a fast collector may do so before a poll sees the
    // hand-over, so the claim is either owned by that pod or already gone.
    wait_for(
        20,
        "the condemned pod owns its claim, or it is gone",
        || async {
            let Some(claim) = claims.get_opt("data-vol-1").await.ok()? else {
                return Some(());
            };
            claim
                .metadata
                .owner_references?
                .iter()
                .any(|o| o.kind == "Pod" && o.uid == condemned)
                .then_some(())
        },
    )
    .await;
    wait_for(20, "the condemned pod's claim is deleted", || async {
        claims
            .get_opt("data-vol-1")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let kept = claims.get("data-vol-0").await.unwrap();
    assert_eq!(
        kept.metadata.owner_references.unwrap_or_default()[0].uid,
        sts.uid().unwrap(),
        "the remaining pod's claim stays with the set"
    );
}

/// Many pods finishing at once wake the Job controller many times in a row while its
/// own writes (creations, finalizer removals) are in flight: it still creates each pod
/// once and counts each success once. (The race is rare on a local API server; the pod
/// cache's unit tests check the expectations that guard it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_creates_and_counts_each_pod_once_under_a_burst() {
    let (_cp, client) = setup().await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    create(
        &jobs,
        json!({"metadata": {"name": "burst"},
               "spec": {"completions": 20, "parallelism": 10, "template": template(json!({}))}}),
    )
    .await;
    let selector = "batch.kubernetes.io/job-name=burst";
    let mut finished = std::collections::BTreeSet::new();
    for round in 0..2 {
        let running = wait_for(20, "ten running pods", || async {
            let p: Vec<Pod> = pods(&pod_api, selector)
                .await
                .into_iter()
                .filter(|p| !finished.contains(&p.name_any()))
                .collect();
            (p.len() >= 10).then_some(p)
        })
        .await;
        assert_eq!(running.len(), 10, "round {round}: parallelism 10");
        let marks = running.iter().map(|p| {
            set_phase(
                &pod_api,
                p.metadata.name.as_deref().unwrap(),
                "Succeeded",
                false,
            )
        });
        futures::future::join_all(marks).await;
        finished.extend(running.iter().map(|p| p.name_any()));
    }
    let job = wait_for(20, "the Job complete", || async {
        let job = jobs.get("burst").await.unwrap();
        (condition(&job, "Complete").map(|c| c.0) == Some("True".into())).then_some(job)
    })
    .await;
    let status = job.status.unwrap();
    assert_eq!(status.succeeded, Some(20), "each success counted once");
    assert_eq!(status.failed.unwrap_or(0), 0);
    let all = pods(&pod_api, selector).await;
    assert_eq!(
        all.len(),
        20,
        "each pod created once: {:?}",
        all.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    assert!(
        all.iter().all(|p| p.finalizers().is_empty()),
        "every pod released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_a_gone_job_lose_the_tracking_finalizer() {
    let (_cp, client) = setup().await;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let finalizer = "batch.kubernetes.io/job-tracking";
    // A Job pod whose Job no longer exists (its uid is no Job's): no sync of a Job ever
    // sees it, the Job controller's watch of pods must let it go.
    let pod = create(
        &pod_api,
        json!({"metadata": {"name": "left-behind", "finalizers": [finalizer],
                            "labels": {"batch.kubernetes.io/controller-uid": "0000",
                                       "batch.kubernetes.io/job-name": "gone"},
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                                 "name": "gone", "uid": "0000",
                                                 "controller": true}]},
               "spec": {"containers": [{"name": "main", "image": "busybox"}]}}),
    )
    .await;
    wait_for(10, "the left-behind pod without the finalizer", || async {
        let pod = pod_api.get_opt(&pod.name_any()).await.unwrap();
        pod.is_none_or(|p| !p.finalizers().iter().any(|f| f == finalizer))
            .then_some(())
    })
    .await;
}
