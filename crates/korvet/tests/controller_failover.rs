//! Three masters each run the controllers and the scheduler, and exactly one of each
//! acts: the holder of its Lease. Killing the master that leads hands both over within
//! 15 s, and nothing is done twice (a Deployment keeps exactly its replicas). Every
//! master also serves the cluster DNS: with the killed one gone, names still resolve.

use std::time::{Duration, Instant};

use korvet_test_support::platform::{control_plane_pid, kill9, korvet_binary, TestPlatform};
use korvet_test_support::Kubectl;
use serde_json::Value;

fn holder(kubectl: &Kubectl, lease: &str) -> Option<String> {
    let run = kubectl.run(&["get", "lease", "-n", "kube-system", lease, "-o", "json"]);
    if !run.ok {
        return None;
    }
    let lease: Value = serde_json::from_str(&run.stdout).ok()?;
    lease["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_string)
}

/// The pid in an identity made by `leader::default_identity` (`HOST_PPPPPPPPNNNNNNNN`,
/// the pid in hex).
fn pid_of(identity: &str) -> u32 {
    let suffix = identity.rsplit('_').next().unwrap_or_default();
    u32::from_str_radix(&suffix[..8.min(suffix.len())], 16).expect("pid in the identity")
}

fn wait<T>(seconds: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in {seconds} s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pods of the `app=web` Deployment that are not being deleted.
fn live_pods(kubectl: &Kubectl) -> Vec<Value> {
    kubectl.json(&["get", "pods", "-l", "app=web"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

#[test]
fn killing_the_leading_master_hands_controllers_and_scheduler_over() {
    let platform = TestPlatform::start(&korvet_binary(env!("CARGO_BIN_EXE_korvet")));
    platform.ok(&[
        "cluster",
        "create",
        "ha",
        "--masters",
        "3",
        "--pool",
        "w:small:zone-a:2",
        "--wait",
    ]);
    let kubectl = platform.cluster_kubectl("ha");
    let masters: Vec<u32> = (0..3)
        .map(|i| control_plane_pid(&platform, "ha", &format!("master-{i}")))
        .collect();
    let leader = wait(30, "a controller-manager leader", || {
        holder(&kubectl, "kube-controller-manager")
    });
    let leader_pid = pid_of(&leader);
    assert!(
        masters.contains(&leader_pid),
        "leader {leader} is none of the masters {masters:?}"
    );

    kubectl.ok(&[
        "create",
        "deployment",
        "web",
        "--image=korvet.local/busybox:latest",
        "--replicas=3",
        "--",
        "sleep",
        "3600",
    ]);
    kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    assert_eq!(live_pods(&kubectl).len(), 3);
    // Every master serves the cluster DNS: one kube-dns slice each.
    wait(30, "three kube-dns endpoint slices", || {
        (dns_slices(&kubectl) == 3).then_some(())
    });
    let client = live_pods(&kubectl)[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(resolves(&kubectl, &client), "names resolve with 3 masters");

    kill9(leader_pid);
    let killed = Instant::now();
    let (new_leader, took) = wait(30, "another controller-manager leader", || {
        holder(&kubectl, "kube-controller-manager")
            .filter(|h| *h != leader)
            .map(|h| (h, killed.elapsed()))
    });
    assert!(
        took <= Duration::from_secs(15),
        "the controllers were handed over after {took:?}"
    );
    assert_ne!(pid_of(&new_leader), leader_pid);

    // The new leader acts, once: scaling gives exactly the new count, and it stays so.
    kubectl.ok(&["scale", "deployment", "web", "--replicas=5"]);
    kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    std::thread::sleep(Duration::from_secs(3));
    let pods = live_pods(&kubectl);
    assert_eq!(pods.len(), 5, "{:#?}", pods);
    let replica_sets = kubectl.json(&["get", "replicasets", "-l", "app=web"]);
    assert_eq!(
        replica_sets["items"].as_array().map(Vec::len),
        Some(1),
        "one ReplicaSet, not a second one made by the new leader"
    );
    for pod in &pods {
        assert!(
            pod["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty()),
            "every pod is scheduled by the scheduler that took over: {pod:#}"
        );
    }

    // Names resolve through the kube-dns ClusterIP across the master's death (the
    // platform restarts it; its slice expires if it stays away 40 s).
    wait(60, "names resolving again after a master's death", || {
        (0..5).all(|_| resolves(&kubectl, &client)).then_some(())
    });
    assert!((2..=3).contains(&dns_slices(&kubectl)));
}

fn dns_slices(kubectl: &Kubectl) -> usize {
    kubectl.json(&[
        "get",
        "endpointslices",
        "-n",
        "kube-system",
        "-l",
        "kubernetes.io/service-name=kube-dns",
    ])["items"]
        .as_array()
        .map_or(0, Vec::len)
}

/// A pod looks the API's Service up through the kube-dns ClusterIP.
fn resolves(kubectl: &Kubectl, pod: &str) -> bool {
    let run = kubectl.run(&[
        "exec",
        pod,
        "--",
        "/bin/busybox",
        "nslookup",
        "kubernetes.default.svc.cluster.local",
        "10.96.0.10",
    ]);
    run.ok && run.stdout.contains("Address: 10.96.0.1")
}
