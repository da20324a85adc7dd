//! The scheduler against a real API server (embedded store), with Nodes registered as
//! plain objects (no agents, as kwok does).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod, Taint};
use korvet_apimachinery::leader::LeaderConfig;
use korvet_scheduler::kwok::{kwok_node, node_status, pending_pod, register_node};
use korvet_scheduler::{spawn, SchedulerConfig};
use korvet_test_support::{wait_for, StoreKind, TestControlPlane};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

async fn setup() -> (TestControlPlane, kube::Client) {
    let cp = TestControlPlane::start(StoreKind::Embedded).await;
    let client = cp.client().await;
    (cp, client)
}

fn no_election(identity: &str) -> SchedulerConfig {
    SchedulerConfig {
        leader_election: None,
        ..SchedulerConfig::new(identity)
    }
}

async fn node(client: &kube::Client, name: &str, zone: &str, cpu: &str, taints: Vec<Taint>) {
    register_node(
        client,
        kwok_node(name, zone, taints),
        node_status(cpu, "8Gi", "110"),
    )
    .await
    .unwrap();
}

fn taint(key: &str, value: &str, effect: &str) -> Taint {
    Taint {
        key: key.into(),
        value: (!value.is_empty()).then(|| value.into()),
        effect: effect.into(),
        time_added: None,
    }
}

async fn create(client: &kube::Client, pod: Pod) {
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

fn with(pod: Pod, spec: serde_json::Value) -> Pod {
    let mut value = serde_json::to_value(pod).unwrap();
    for (k, v) in spec.as_object().unwrap() {
        value["spec"][k] = v.clone();
    }
    serde_json::from_value(value).unwrap()
}

async fn bound_node(client: &kube::Client, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    wait_for(20, &format!("pod {name} to be bound"), || {
        let pods = pods.clone();
        async move {
            let pod = pods.get(name).await.ok()?;
            pod.spec?.node_name.filter(|n| !n.is_empty())
        }
    })
    .await
}

/// The pod's events of `reason`, once there is one (panics after `seconds`).
async fn events_eventually(
    client: &kube::Client,
    pod: &str,
    reason: &str,
    seconds: u64,
) -> Vec<Event> {
    let what = format!("a {reason} event for {pod}");
    wait_for(seconds, &what, || {
        let client = client.clone();
        async move {
            let e = events_for(&client, pod, reason).await;
            (!e.is_empty()).then_some(e)
        }
    })
    .await
}

async fn events_for(client: &kube::Client, pod: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(pod) && e.reason.as_deref() == Some(reason)
        })
        .collect()
}

/// A control-plane node with 8 CPUs that only tolerating pods may use.
async fn master_node(client: &kube::Client) {
    let no_schedule = taint("node-role.kubernetes.io/control-plane", "", "NoSchedule");
    node(client, "master", "z1", "8", vec![no_schedule]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_is_bound_to_the_only_node_that_fits() {
    let (_cp, client) = setup().await;
    node(&client, "small", "z1", "1", Vec::new()).await;
    node(&client, "big", "z1", "4", Vec::new()).await;
    master_node(&client).await;
    let _scheduler = spawn(client.clone(), no_election("test"));
    create(&client, pending_pod("web", "2", "1Gi", &[("app", "web")])).await;
    assert_eq!(bound_node(&client, "web").await, "big");
    // The binding marks the pod scheduled in the same write, as upstream's.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let bound = pods.get("web").await.unwrap();
    let scheduled = bound
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .expect("a PodScheduled condition");
    assert_eq!(scheduled.status, "True");
    let events = events_eventually(&client, "web", "Scheduled", 10).await;
    assert_eq!(
        events[0].message.as_deref(),
        Some("Successfully assigned default/web to big")
    );
    assert_eq!(events[0].type_.as_deref(), Some("Normal"));
    assert_eq!(
        events[0]
            .source
            .as_ref()
            .and_then(|s| s.component.as_deref()),
        Some("default-scheduler")
    );
    // The next pod sees the first one's 2 cpus taken: 2 more still fit on big, 3 do not.
    create(&client, pending_pod("second", "2", "1Gi", &[])).await;
    assert_eq!(bound_node(&client, "second").await, "big");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_that_fits_nowhere_is_unschedulable_until_a_node_fits() {
    let (_cp, client) = setup().await;
    master_node(&client).await;
    node(&client, "n1", "z1", "1", Vec::new()).await;
    node(&client, "n2", "z2", "1", Vec::new()).await;
    let scheduler = spawn(client.clone(), no_election("test"));
    create(&client, pending_pod("huge", "2", "1Gi", &[])).await;
    let expected = "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu. \
                    preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod.";
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let condition = wait_for(20, "PodScheduled=False", || {
        let pods = pods.clone();
        async move {
            let pod = pods.get("huge").await.ok()?;
            pod.status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        }
    })
    .await;
    assert_eq!(condition.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(condition.message.as_deref(), Some(expected));
    let events = events_eventually(&client, "huge", "FailedScheduling", 10).await;
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    assert_eq!(events[0].message.as_deref(), Some(expected));
    assert_eq!(
        events[0]
            .source
            .as_ref()
            .and_then(|s| s.component.as_deref()),
        Some("default-scheduler")
    );
    assert!(scheduler.metrics.unschedulable.get() >= 1);
    // A node with room appears: the pod is retried and bound.
    node(&client, "n3", "z3", "4", Vec::new()).await;
    assert_eq!(bound_node(&client, "huge").await, "n3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taints_keep_pods_out_unless_tolerated() {
    let (_cp, client) = setup().await;
    node(
        &client,
        "gpu",
        "z1",
        "4",
        vec![taint("dedicated", "gpu", "NoSchedule")],
    )
    .await;
    node(&client, "plain", "z1", "4", Vec::new()).await;
    let _scheduler = spawn(client.clone(), no_election("test"));
    let to_gpu = json!({"nodeSelector": {"kubernetes.io/hostname": "gpu"}});
    create(
        &client,
        with(
            pending_pod("intolerant", "100m", "10Mi", &[]),
            to_gpu.clone(),
        ),
    )
    .await;
    let mut tolerant = to_gpu.clone();
    tolerant["tolerations"] =
        json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]);
    create(
        &client,
        with(pending_pod("tolerant", "100m", "10Mi", &[]), tolerant),
    )
    .await;
    create(&client, pending_pod("anywhere", "100m", "10Mi", &[])).await;
    assert_eq!(bound_node(&client, "tolerant").await, "gpu");
    assert_eq!(bound_node(&client, "anywhere").await, "plain");
    let events = events_eventually(&client, "intolerant", "FailedScheduling", 20).await;
    assert_eq!(
        events[0].message.as_deref(),
        Some("0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: gpu}. \
              preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_pods_spread_over_three_zones() {
    let (_cp, client) = setup().await;
    for zone in ["z1", "z2", "z3"] {
        for i in 0..2 {
            node(&client, &format!("{zone}-{i}"), zone, "8", Vec::new()).await;
        }
    }
    // Zone z1 also has a much emptier-looking node to tempt least-allocated scoring.
    let _scheduler = spawn(client.clone(), no_election("test"));
    let spread = json!({"topologySpreadConstraints": [{
        "maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "spread"}},
    }]});
    for i in 0..6 {
        create(
            &client,
            with(
                pending_pod(&format!("s{i}"), "100m", "10Mi", &[("app", "spread")]),
                spread.clone(),
            ),
        )
        .await;
    }
    let mut per_zone: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..6 {
        let node = bound_node(&client, &format!("s{i}")).await;
        let zone = node.split('-').next().unwrap().to_string();
        *per_zone.entry(zone).or_default() += 1;
    }
    assert_eq!(
        per_zone,
        BTreeMap::from([("z1".into(), 2), ("z2".into(), 2), ("z3".into(), 2)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_binds_and_another_takes_over() {
    let (_cp, client) = setup().await;
    node(&client, "n1", "z1", "8", Vec::new()).await;
    let config = |id: &str| SchedulerConfig {
        leader_election: Some(LeaderConfig {
            lease_duration: Duration::from_secs(3),
            renew_every: Duration::from_millis(500),
            ..LeaderConfig::new("korvet-scheduler", id)
        }),
        ..SchedulerConfig::new(id)
    };
    let a = spawn(client.clone(), config("replica-a"));
    let b = spawn(client.clone(), config("replica-b"));
    wait_for(10, "a leader", || {
        let leading = a.is_leader() || b.is_leader();
        async move { leading.then_some(()) }
    })
    .await;
    assert!(!(a.is_leader() && b.is_leader()), "two leaders at once");
    for i in 0..5 {
        create(&client, pending_pod(&format!("p{i}"), "100m", "10Mi", &[])).await;
    }
    for i in 0..5 {
        bound_node(&client, &format!("p{i}")).await;
    }
    let (leader, follower) = if a.is_leader() { (a, b) } else { (b, a) };
    assert_eq!(leader.metrics.scheduled.get(), 5);
    assert_eq!(follower.metrics.scheduled.get(), 0);
    let lease: k8s_openapi::api::coordination::v1::Lease =
        Api::namespaced(client.clone(), "kube-system")
            .get("korvet-scheduler")
            .await
            .unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    // The leader stops (as a killed replica): the other takes over after the lease runs out.
    drop(leader);
    create(&client, pending_pod("after", "100m", "10Mi", &[])).await;
    bound_node(&client, "after").await;
    assert!(follower.is_leader());
    assert_eq!(follower.metrics.scheduled.get(), 1);
    let lease: k8s_openapi::api::coordination::v1::Lease =
        Api::namespaced(client.clone(), "kube-system")
            .get("korvet-scheduler")
            .await
            .unwrap();
    let spec = lease.spec.unwrap();
    assert_ne!(spec.holder_identity.unwrap(), holder);
    assert_eq!(spec.lease_transitions, Some(1));
    // A graceful stop hands the Lease back: a new replica leads at once.
    follower.shutdown().await;
    let lease: k8s_openapi::api::coordination::v1::Lease =
        Api::namespaced(client.clone(), "kube-system")
            .get("korvet-scheduler")
            .await
            .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity, None);
    let c = spawn(client.clone(), config("replica-c"));
    wait_for(5, "replica-c to lead", || {
        let leading = c.is_leader();
        async move { leading.then_some(()) }
    })
    .await;
}

async fn priority_class(client: &kube::Client, name: &str, value: i64, policy: &str) {
    let class: k8s_openapi::api::scheduling::v1::PriorityClass = serde_json::from_value(json!({
        "metadata": {"name": name}, "value": value, "preemptionPolicy": policy,
    }))
    .unwrap();
    Api::all(client.clone())
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_pod_preempts_the_fewest_lower_ones() {
    let (_cp, client) = setup().await;
    node(&client, "only", "z1", "3", Vec::new()).await;
    master_node(&client).await;
    priority_class(&client, "low", 10, "PreemptLowerPriority").await;
    priority_class(&client, "high", 1000, "PreemptLowerPriority").await;
    priority_class(&client, "polite", 1000, "Never").await;
    let _scheduler = spawn(client.clone(), no_election("test"));
    // Victims go at once when deleted: nothing runs them on these agentless nodes.
    let class = |name: &str| json!({"priorityClassName": name, "terminationGracePeriodSeconds": 0});
    for name in ["low-a", "low-b", "low-c"] {
        create(
            &client,
            with(pending_pod(name, "1", "1Gi", &[]), class("low")),
        )
        .await;
        assert_eq!(bound_node(&client, name).await, "only");
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let low = pods.get("low-a").await.unwrap();
    assert_eq!(
        low.spec.as_ref().unwrap().priority,
        Some(10),
        "resolved by admission"
    );

    // preemptionPolicy Never waits instead, and says so.
    create(
        &client,
        with(pending_pod("polite", "1", "1Gi", &[]), class("polite")),
    )
    .await;
    let events = events_eventually(&client, "polite", "FailedScheduling", 10).await;
    let message = events[0].message.clone().unwrap_or_default();
    assert!(
        message.ends_with("preemption: not eligible due to preemptionPolicy=Never."),
        "{message}"
    );
    pods.delete("polite", &Default::default()).await.unwrap();

    // Two cpus are needed: two low pods go, the third stays.
    create(
        &client,
        with(pending_pod("vip", "2", "1Gi", &[]), class("high")),
    )
    .await;
    assert_eq!(bound_node(&client, "vip").await, "only");
    let left: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .filter(|n| n.starts_with("low-"))
        .collect();
    assert_eq!(left.len(), 1, "one low pod is left: {left:?}");
    let preempted: Vec<Event> = Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Preempted"))
        .collect();
    assert_eq!(preempted.len(), 2, "{preempted:?}");
    assert!(preempted[0]
        .message
        .as_deref()
        .unwrap_or_default()
        .ends_with("on node only"));

    // A pod naming a class that does not exist is refused, as upstream.
    let missing = Api::<Pod>::namespaced(client.clone(), "default")
        .create(
            &PostParams::default(),
            &with(
                pending_pod("lost", "1", "1Gi", &[]),
                json!({"priorityClassName": "nope"}),
            ),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&missing, kube::Error::Api(s) if s.code == 403 && s.message.contains("no PriorityClass with name nope was found")),
        "{missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_must_exist_be_bound_and_their_volume_zone_admit_the_node() {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let (_cp, client) = setup().await;
    node(&client, "in-a", "zone-a", "4", Vec::new()).await;
    node(&client, "in-b", "zone-b", "4", Vec::new()).await;
    master_node(&client).await;
    let _scheduler = spawn(client.clone(), no_election("test"));
    let claim_volume =
        json!({"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]});
    create(
        &client,
        with(pending_pod("db", "1", "1Gi", &[]), claim_volume),
    )
    .await;
    let events = events_eventually(&client, "db", "FailedScheduling", 10).await;
    let message = events[0].message.clone().unwrap_or_default();
    assert!(
        message.contains("persistentvolumeclaim \"data\" not found"),
        "{message}"
    );

    // A volume in zone-b, and the claim bound to it: only the zone-b node will do.
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": "pv-b", "labels": {"topology.kubernetes.io/zone": "zone-b"}},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "hostPath": {"path": "/tmp/pv-b"}},
    }))
    .unwrap();
    Api::<PersistentVolume>::all(client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .unwrap();
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv-b", "storageClassName": "",
                 "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &claim)
        .await
        .unwrap();
    assert_eq!(bound_node(&client, "db").await, "in-b");

    // A claim nobody binds (no class waiting for a consumer) keeps its pod pending.
    let unbound: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "scratch"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &unbound)
        .await
        .unwrap();
    let scratch =
        json!({"volumes": [{"name": "s", "persistentVolumeClaim": {"claimName": "scratch"}}]});
    create(
        &client,
        with(pending_pod("worker", "1", "1Gi", &[]), scratch),
    )
    .await;
    let events = events_eventually(&client, "worker", "FailedScheduling", 10).await;
    let message = events[0].message.clone().unwrap_or_default();
    assert!(
        message.contains("pod has unbound immediate PersistentVolumeClaims"),
        "{message}"
    );
}
