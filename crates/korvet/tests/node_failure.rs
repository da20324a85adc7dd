//! Node failure and maintenance on a real platform cluster, through kubectl: a node whose
//! agent stops goes `Unknown` and is tainted, and its pods are evicted after their
//! toleration (a Deployment's replaced on another node); cordon, uncordon, and a drain that waits on a PodDisruptionBudget. Runs as
//! root.
//!
//! The agent is frozen (SIGSTOP, by the PID in its machine record) rather than killed: the
//! platform's machine controller restarts a dead agent within seconds, as a cloud's
//! auto-repair would, while a frozen one looks to the cluster exactly like a dead one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use korvet_test_support::platform::TestPlatform;
use korvet_test_support::Kubectl;
use serde_json::{json, Value};

/// Every machine record of the platform.
fn machine_records(platform: &TestPlatform) -> Vec<Value> {
    fn find(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == "machine.json") {
                found.push(path);
            } else if path.is_dir() && !path.ends_with("containerd") {
                find(&path, found);
            }
        }
    }
    let mut found = Vec::new();
    find(&platform.data_dir().join("provider"), &mut found);
    found
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// The PID of the agent that runs `node`.
fn agent_pid(platform: &TestPlatform, node: &str) -> u32 {
    let records = machine_records(platform);
    let record = records
        .iter()
        .find(|r| {
            r["spec"]["boot"]["args"].as_array().is_some_and(|args| {
                args.iter()
                    .any(|a| a.as_str() == Some(&format!("--node-name={node}")))
            })
        })
        .unwrap_or_else(|| panic!("no machine runs node {node}: {records:#?}"));
    record["agent"]["pid"].as_u64().expect("the agent's pid") as u32
}

/// Freezes a process; thaws it when dropped (also when the test fails), so that the
/// platform's clean-up can end it.
struct Frozen(u32);

impl Frozen {
    fn new(pid: u32) -> Self {
        signal("-STOP", pid);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(which: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {which} {pid}");
}

/// The tail of the first control plane's log, for failure messages.
fn control_plane_log(platform: &TestPlatform) -> String {
    fn find(dir: &Path) -> Option<PathBuf> {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == "control-plane.log") {
                return Some(path);
            }
            if path.is_dir() {
                if let Some(found) = find(&path) {
                    return Some(found);
                }
            }
        }
        None
    }
    let text = find(&platform.data_dir())
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// A child process ended (by its PID) when dropped, also when the test fails.
struct Ended(std::process::Child);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for<T>(seconds: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn busybox_pod(name: &str, labels: Value, spec: Value) -> String {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": "korvet.local/busybox:latest",
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
            }],
        },
    });
    for (k, v) in spec.as_object().unwrap() {
        pod["spec"][k] = v.clone();
    }
    pod.to_string()
}

fn running(kubectl: &Kubectl, name: &str) -> Value {
    let mut last = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = kubectl.run(&["get", "pod", name, "-o", "json"]);
        last = serde_json::from_str(&run.stdout).unwrap_or(last);
        if last["status"]["phase"] == "Running" {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} is not running: {last:#}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn taint_keys(node: &Value) -> Vec<String> {
    node["spec"]["taints"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| {
                    format!(
                        "{}:{}",
                        t["key"].as_str().unwrap(),
                        t["effect"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn ready_condition(node: &Value) -> Value {
    node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or(Value::Null)
}

#[test]
fn a_silent_node_goes_unknown_and_its_pods_are_evicted() {
    let platform = TestPlatform::start(Path::new(env!("CARGO_BIN_EXE_korvet")));
    platform.ok(&[
        "cluster",
        "create",
        "nf",
        "--pool",
        "w:small:zone-a:2",
        "--wait",
    ]);
    let kubectl = platform.cluster_kubectl("nf");
    let nodes = kubectl.json(&["get", "nodes"]);
    let names: Vec<String> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2, "{nodes:#}");
    let victim = &names[0];
    // One pod tolerating the unreachable node for 5 s, one for the default 300 s.
    let toleration = json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
        "effect": "NoExecute", "tolerationSeconds": 5}]);
    kubectl.ok_with_input(
        &["apply", "-f", "-"],
        &busybox_pod(
            "brief",
            json!({}),
            json!({"nodeName": victim, "tolerations": toleration}),
        ),
    );
    kubectl.ok_with_input(
        &["apply", "-f", "-"],
        &busybox_pod("patient", json!({}), json!({"nodeName": victim})),
    );
    // A Deployment's pod on that node, tolerating it for 5 s too, pinned there only by
    // a preference, so its replacement may go elsewhere.
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "tolerations": toleration,
                    "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "preference": {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [victim]}]},
                    }]}},
                    "containers": [{"name": "main", "image": "korvet.local/busybox:latest",
                        "imagePullPolicy": "Never", "command": ["sleep", "3600"]}],
                },
            },
        },
    });
    kubectl.ok_with_input(&["apply", "-f", "-"], &deployment.to_string());
    kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let web_pods = kubectl.json(&["get", "pods", "-l", "app=web"]);
    assert_eq!(
        web_pods["items"][0]["spec"]["nodeName"].as_str(),
        Some(victim.as_str()),
        "{web_pods:#}"
    );
    running(&kubectl, "brief");
    running(&kubectl, "patient");
    // DefaultTolerationSeconds added not-ready (the pod had only unreachable) for 300 s.
    let brief = kubectl.json(&["get", "pod", "brief"]);
    assert!(
        brief["spec"]["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/not-ready" && t["tolerationSeconds"] == 300),
        "{brief:#}"
    );

    let frozen = Frozen::new(agent_pid(&platform, victim));
    let stopped = Instant::now();
    let node = wait_for(
        40,
        "the node to go Unknown with the unreachable taints",
        || {
            let node = kubectl.json(&["get", "node", victim]);
            let taints = taint_keys(&node);
            (ready_condition(&node)["status"] == "Unknown"
                && taints.contains(&"node.kubernetes.io/unreachable:NoExecute".to_string())
                && taints.contains(&"node.kubernetes.io/unreachable:NoSchedule".to_string()))
            .then_some(node)
        },
    );
    let unknown_after = stopped.elapsed();
    let ready = ready_condition(&node);
    assert_eq!(ready["reason"], "NodeStatusUnknown", "{node:#}");
    assert_eq!(ready["message"], "Kubelet stopped posting node status.");
    assert!(kubectl.ok(&["get", "node", victim]).contains("NotReady"));

    // The pod tolerating 5 s goes after about that; the other stays, not ready.
    let pod = wait_for(20, "the brief pod to be evicted", || {
        let run = kubectl.run(&["get", "pod", "brief", "-o", "json"]);
        let pod: Value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
        (pod.is_null() || !pod["metadata"]["deletionTimestamp"].is_null()).then_some(pod)
    });
    let evicted_after = stopped.elapsed();
    assert!(
        evicted_after >= unknown_after + Duration::from_secs(4),
        "evicted {evicted_after:?} after the freeze, Unknown after {unknown_after:?}"
    );
    if !pod.is_null() {
        let target = pod["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "DisruptionTarget").cloned());
        assert_eq!(
            target.unwrap()["reason"],
            "DeletionByTaintManager",
            "{pod:#}"
        );
    }
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=brief",
    ]);
    assert!(
        events.contains("TaintManagerEviction")
            && events.contains("Marking for deletion Pod default/brief"),
        "{events}"
    );
    // The Deployment's pod is evicted too and replaced, running, on the other node.
    let other = names[1].clone();
    wait_for(
        60,
        "the Deployment's replacement to run on the other node",
        || {
            let pods = kubectl.json(&["get", "pods", "-l", "app=web"]);
            pods["items"]
                .as_array()?
                .iter()
                .any(|p| {
                    p["spec"]["nodeName"].as_str() == Some(other.as_str())
                        && p["status"]["phase"] == "Running"
                        && p["metadata"]["deletionTimestamp"].is_null()
                })
                .then_some(())
        },
    );
    let patient = kubectl.json(&["get", "pod", "patient"]);
    assert!(
        patient["metadata"]["deletionTimestamp"].is_null(),
        "{patient:#}"
    );
    let ready = patient["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap();
    assert_eq!(ready["status"], "False", "{patient:#}");

    drop(frozen);
}

#[test]
fn cordon_and_a_drain_that_waits_on_a_disruption_budget() {
    let platform = TestPlatform::start(Path::new(env!("CARGO_BIN_EXE_korvet")));
    let (kubectl, node) = platform.one_node_cluster("drain");
    kubectl.ok(&["cordon", &node]);
    let cordoned = wait_for(
        10,
        &format!(
            "the unschedulable taint; control plane log:\n{}",
            control_plane_log(&platform)
        ),
        || {
            let n = kubectl.json(&["get", "node", &node]);
            taint_keys(&n)
                .contains(&"node.kubernetes.io/unschedulable:NoSchedule".to_string())
                .then_some(n)
        },
    );
    assert_eq!(cordoned["spec"]["unschedulable"], true);
    assert!(kubectl
        .ok(&["get", "node", &node])
        .contains("SchedulingDisabled"));
    kubectl.ok(&["uncordon", &node]);
    wait_for(10, "the unschedulable taint to go", || {
        let n = kubectl.json(&["get", "node", &node]);
        (!taint_keys(&n).iter().any(|t| t.contains("unschedulable"))).then_some(())
    });

    for name in ["web-1", "web-2"] {
        kubectl.ok_with_input(
            &["apply", "-f", "-"],
            &busybox_pod(name, json!({"app": "web"}), json!({"nodeName": node})),
        );
    }
    running(&kubectl, "web-1");
    running(&kubectl, "web-2");
    kubectl.ok_with_input(
        &["apply", "-f", "-"],
        &json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "web"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}})
        .to_string(),
    );
    wait_for(20, "the budget's status", || {
        let pdb = kubectl.json(&["get", "pdb", "web"]);
        (pdb["status"]["currentHealthy"] == 2 && pdb["status"]["disruptionsAllowed"] == 0)
            .then_some(())
    });
    // Bare pods need --force; the budget blocks the drain until its timeout.
    let drain = [
        "drain",
        &node,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--force",
    ];
    let mut blocked: Vec<&str> = drain.to_vec();
    blocked.push("--timeout=8s");
    let run = kubectl.run(&blocked);
    let output = format!("{}{}", run.stdout, run.stderr);
    assert!(
        output.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{output}"
    );
    let node_now = kubectl.json(&["get", "node", &node]);
    assert_eq!(
        node_now["spec"]["unschedulable"], true,
        "drain cordons first"
    );
    for name in ["web-1", "web-2"] {
        let pod = kubectl.json(&["get", "pod", name]);
        assert!(pod["metadata"]["deletionTimestamp"].is_null(), "{pod:#}");
    }

    // Started again, the drain waits; once the budget allows, it finishes.
    let mut waiting: Vec<&str> = drain.to_vec();
    waiting.push("--timeout=60s");
    let mut child = Ended(kubectl.command(&waiting).spawn().expect("kubectl drain"));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "drain should still wait"
    );
    kubectl.ok(&[
        "patch",
        "pdb",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"minAvailable":0}}"#,
    ]);
    let finished = wait_for(60, "the drain to finish", || child.0.try_wait().unwrap());
    assert!(
        finished.success(),
        "drain failed after the budget allowed it"
    );
    for name in ["web-1", "web-2"] {
        let run = kubectl.run(&["get", "pod", name, "-o", "json"]);
        let pod: Value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
        assert!(
            pod.is_null() || !pod["metadata"]["deletionTimestamp"].is_null(),
            "{pod:#}"
        );
    }
}
