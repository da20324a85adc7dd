//! Deployments on a real 3-node cluster through kubectl, as a user drives them: create,
//! scale, set image (a rolling update whose surge and unavailability limits a watcher
//! checks on the ReplicaSets and pods), rollout status/history/undo/restart/pause/resume,
//! Recreate, and a broken image running into the progress deadline. Runs as root.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use korvet_test_support::platform::TestPlatform;
use korvet_test_support::Kubectl;
use serde_json::Value;

const CLUSTER: &str = "deploy";
const BUSYBOX: &str = "korvet.local/busybox:latest";
const PAUSE: &str = "korvet.local/pause:latest";

fn deployment(name: &str, replicas: i32, strategy: Value) -> String {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "main",
                        "image": BUSYBOX,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["sleep", "3600"],
                    }],
                },
            },
        },
    })
    .to_string()
}

fn rollout_status(k: &Kubectl, name: &str) -> String {
    let out = k.ok(&[
        "rollout",
        "status",
        &format!("deployment/{name}"),
        "--timeout=90s",
    ]);
    assert!(out.contains("successfully rolled out"), "{out}");
    out
}

/// The ReplicaSets of app `name`, oldest first.
fn replica_sets(k: &Kubectl, name: &str) -> Vec<Value> {
    let list = k.json(&["get", "rs", "-l", &format!("app={name}")]);
    let mut sets = list["items"].as_array().cloned().unwrap_or_default();
    sets.sort_by_key(|rs| {
        rs["metadata"]["creationTimestamp"]
            .as_str()
            .map(String::from)
    });
    sets
}

fn spec_replicas(rs: &Value) -> i64 {
    rs["spec"]["replicas"].as_i64().unwrap_or(0)
}

fn image(rs: &Value) -> &str {
    rs["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or("")
}

fn revision(rs: &Value) -> &str {
    rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        .as_str()
        .unwrap_or("")
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// What a watcher saw during a rollout.
#[derive(Debug, Default)]
struct Seen {
    /// Most replicas asked for over all ReplicaSets.
    most_asked: i64,
    /// Most pods not being deleted.
    most_pods: usize,
    /// Fewest ready pods not being deleted.
    fewest_ready: usize,
    /// Whether pods of two ReplicaSets ran at once.
    overlap: bool,
}

/// Polls ReplicaSets and pods of app `name` until stopped.
fn watch_rollout(k: Kubectl, name: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Seen> {
    let selector = format!("app={name}");
    std::thread::spawn(move || {
        let mut seen = Seen {
            fewest_ready: usize::MAX,
            ..Default::default()
        };
        while !stop.load(Ordering::Relaxed) {
            let sets = k.json(&["get", "rs", "-l", &selector]);
            let asked: i64 = sets["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(spec_replicas)
                .sum();
            seen.most_asked = seen.most_asked.max(asked);
            let pods = k.json(&["get", "pods", "-l", &selector]);
            let live: Vec<&Value> = pods["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .collect();
            seen.most_pods = seen.most_pods.max(live.len());
            seen.fewest_ready = seen
                .fewest_ready
                .min(live.iter().filter(|p| is_ready(p)).count());
            let mut hashes: Vec<&str> = pods["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["status"]["phase"] == "Running")
                .filter_map(|p| p["metadata"]["labels"]["pod-template-hash"].as_str())
                .collect();
            hashes.sort();
            hashes.dedup();
            seen.overlap |= hashes.len() > 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    })
}

fn eventually(seconds: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn deployments_roll_out_scale_and_roll_back_on_real_nodes() {
    let korvet = korvet_test_support::platform::korvet_binary(env!("CARGO_BIN_EXE_korvet"));
    let platform = TestPlatform::start(&korvet);
    platform.ok(&[
        "cluster",
        "create",
        CLUSTER,
        "--pool",
        "w:small:zone-a:3",
        "--wait",
    ]);
    let k = platform.cluster_kubectl(CLUSTER);
    let strategy = serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    k.ok_with_input(&["apply", "-f", "-"], &deployment("web", 3, strategy));
    rollout_status(&k, "web");
    let sets = replica_sets(&k, "web");
    assert_eq!(sets.len(), 1);
    let hash = sets[0]["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(sets[0]["metadata"]["name"], format!("web-{hash}"));
    let pods = k.json(&["get", "pods", "-l", "app=web"]);
    let nodes: std::collections::BTreeSet<&str> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["spec"]["nodeName"].as_str())
        .collect();
    assert_eq!(nodes.len(), 3, "spread over the 3 nodes: {nodes:?}");

    // Scale up and down.
    k.ok(&["scale", "deployment/web", "--replicas=5"]);
    rollout_status(&k, "web");
    k.ok(&["scale", "deployment/web", "--replicas=3"]);
    rollout_status(&k, "web");
    eventually(30, "3 pods", || {
        let pods = k.json(&["get", "pods", "-l", "app=web"]);
        pods["items"].as_array().map(Vec::len) == Some(3)
    });

    // A rolling update within maxSurge 1 and maxUnavailable 0.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_rollout(platform.cluster_kubectl(CLUSTER), "web", stop.clone());
    k.ok(&["set", "image", "deployment/web", &format!("main={PAUSE}")]);
    rollout_status(&k, "web");
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    assert!(seen.most_asked <= 4, "surge exceeded: {seen:?}");
    assert!(seen.most_pods <= 4, "surge exceeded: {seen:?}");
    assert!(seen.fewest_ready >= 3, "availability dropped: {seen:?}");
    let sets = replica_sets(&k, "web");
    assert_eq!(sets.len(), 2);
    assert_eq!((spec_replicas(&sets[0]), spec_replicas(&sets[1])), (0, 3));
    assert_eq!((revision(&sets[0]), revision(&sets[1])), ("1", "2"));
    let describe = k.ok(&["describe", "deployment", "web"]);
    assert!(
        describe.contains(&format!("Scaled up replica set web-{hash} to 3")),
        "{describe}"
    );

    let history = k.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains("REVISION"), "{history}");
    let rev1 = k.ok(&["rollout", "history", "deployment/web", "--revision=1"]);
    assert!(rev1.contains(BUSYBOX), "{rev1}");

    // Undo brings the first ReplicaSet back as revision 3.
    let out = k.ok(&["rollout", "undo", "deployment/web"]);
    assert!(out.contains("rolled back"), "{out}");
    rollout_status(&k, "web");
    let sets = replica_sets(&k, "web");
    assert_eq!(sets.len(), 2);
    assert_eq!(image(&sets[0]), BUSYBOX);
    assert_eq!((spec_replicas(&sets[0]), revision(&sets[0])), (3, "3"));

    // Restart rolls every pod.
    k.ok(&["rollout", "restart", "deployment/web"]);
    rollout_status(&k, "web");
    assert_eq!(replica_sets(&k, "web").len(), 3);

    // Paused: no rollout until resumed.
    k.ok(&["rollout", "pause", "deployment/web"]);
    k.ok(&["set", "image", "deployment/web", &format!("main={PAUSE}")]);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        replica_sets(&k, "web").len(),
        3,
        "a paused rollout made a ReplicaSet"
    );
    k.ok(&["rollout", "resume", "deployment/web"]);
    rollout_status(&k, "web");

    // Recreate: old pods gone before new ones run.
    k.ok_with_input(
        &["apply", "-f", "-"],
        &deployment("db", 2, serde_json::json!({"type": "Recreate"})),
    );
    rollout_status(&k, "db");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_rollout(platform.cluster_kubectl(CLUSTER), "db", stop.clone());
    k.ok(&["set", "image", "deployment/db", &format!("main={PAUSE}")]);
    rollout_status(&k, "db");
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    assert!(!seen.overlap, "old and new pods ran at once: {seen:?}");

    // A broken image: the rollout stalls, the old pods keep serving, and the deadline
    // passes.
    k.ok(&[
        "patch",
        "deployment",
        "web",
        "-p",
        r#"{"spec":{"progressDeadlineSeconds":5}}"#,
    ]);
    k.ok(&[
        "set",
        "image",
        "deployment/web",
        "main=korvet.local/missing:1",
    ]);
    let run = k.run(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(!run.ok, "{}", run.stdout);
    assert!(
        run.stderr.contains("exceeded its progress deadline"),
        "{}",
        run.stderr
    );
    let d = k.json(&["get", "deployment", "web"]);
    let progressing = d["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .cloned()
        .unwrap();
    assert_eq!(progressing["reason"], "ProgressDeadlineExceeded", "{d:#}");
    assert_eq!(d["status"]["availableReplicas"], 3, "{d:#}");
}
