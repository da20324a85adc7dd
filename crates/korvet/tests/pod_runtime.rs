//! The runtime side of pods on a real node: RuntimeClass handlers (runc and crun),
//! the Events the kubelet records, OOMKilled, limits in the container cgroups, the
//! Summary API and the Node's pressure conditions. `korvet server` makes a cluster
//! whose machine runs `korvet node` with its own containerd. Runs as root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use korvet_test_support::platform::TestPlatform;
use korvet_test_support::Kubectl;
use serde_json::{json, Value};

const BUSYBOX: &str = "korvet.local/busybox:latest";

fn korvet() -> PathBuf {
    korvet_test_support::platform::korvet_binary(env!("CARGO_BIN_EXE_korvet"))
}

fn pod(name: &str, node: &str, containers: Value, extra: Value) -> String {
    let mut spec = json!({
        "nodeName": node,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 1,
        "containers": containers,
    });
    if let Some(map) = extra.as_object() {
        for (k, v) in map {
            spec[k] = v.clone();
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}).to_string()
}

fn busybox(command: &[&str]) -> Value {
    json!({"name": "main", "image": BUSYBOX, "imagePullPolicy": "Never", "command": command})
}

fn running(p: &Value) -> bool {
    p["status"]["containerStatuses"][0]["state"]["running"].is_object()
}

/// `kubectl describe pod` until its Events show every needle (panics after `seconds`).
fn wait_described(kubectl: &Kubectl, name: &str, needles: &[&str], seconds: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let run = kubectl.run(&["describe", "pod", name]);
        let text = run.stdout.clone();
        let events = text.split("Events:").nth(1).unwrap_or_default();
        if needles.iter().all(|n| events.contains(n)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "pod {name}: events lack one of {needles:?}:\n{text}{}",
            run.stderr
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn container_id(p: &Value) -> String {
    p["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .and_then(|id| id.strip_prefix("containerd://"))
        .expect("containerID")
        .to_string()
}

/// Which OCI runtime made a container: runc keeps `state.json` in its state directory
/// (the runc shim's root), crun a `status` file.
fn oci_runtime_of(id: &str) -> &'static str {
    let dir = Path::new("/run/containerd/runc/k8s.io").join(id);
    if dir.join("state.json").exists() {
        "runc"
    } else if dir.join("status").exists() {
        "crun"
    } else {
        let listing: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        panic!("no runtime state in {}: {listing:?}", dir.display())
    }
}

#[test]
fn runtime_classes_choose_runc_or_crun() {
    let platform = TestPlatform::start(&korvet());
    let (kubectl, node) = platform.one_node_cluster("rtclass");
    for (name, handler) in [("crun", "crun"), ("bogus", "nope")] {
        let class = json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": name}, "handler": handler});
        kubectl.ok_with_input(&["create", "-f", "-"], &class.to_string());
    }
    // Cluster-scoped, as upstream.
    let listed = kubectl.json(&["get", "runtimeclasses"]);
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(2),
        "{listed:#}"
    );
    assert!(listed["items"][0]["metadata"]["namespace"].is_null());

    let sleep = busybox(&["sleep", "3600"]);
    kubectl.ok_with_input(
        &["create", "-f", "-"],
        &pod(
            "on-crun",
            &node,
            json!([sleep]),
            json!({"runtimeClassName": "crun"}),
        ),
    );
    kubectl.ok_with_input(
        &["create", "-f", "-"],
        &pod("on-runc", &node, json!([sleep]), json!({})),
    );
    let on_crun = platform.wait_pod(&kubectl, "on-crun", 60, running);
    let on_runc = platform.wait_pod(&kubectl, "on-runc", 60, running);
    assert_eq!(oci_runtime_of(&container_id(&on_crun)), "crun");
    assert_eq!(oci_runtime_of(&container_id(&on_runc)), "runc");

    // The RuntimeClass admission plugin refuses a class that does not exist.
    let run = kubectl.run_with_input(
        &["create", "-f", "-"],
        &pod(
            "no-class",
            &node,
            json!([sleep]),
            json!({"runtimeClassName": "missing"}),
        ),
    );
    assert!(!run.ok, "{}", run.stdout);
    let refused = run.stderr;
    assert!(
        refused.contains(
            "pods \"no-class\" is forbidden: pod rejected: RuntimeClass \"missing\" not found"
        ),
        "{refused}"
    );

    // A handler the runtime does not have: the sandbox fails, the pod stays creating.
    kubectl.ok_with_input(
        &["create", "-f", "-"],
        &pod(
            "bad-handler",
            &node,
            json!([sleep]),
            json!({"runtimeClassName": "bogus"}),
        ),
    );
    let text = wait_described(
        &kubectl,
        "bad-handler",
        &[
            "FailedCreatePodSandBox",
            "Failed to create pod sandbox:",
            "nope",
        ],
        60,
    );
    assert!(text.contains("ContainerCreating"), "{text}");
    let p = kubectl.json(&["get", "pod", "bad-handler", "-o", "json"]);
    assert_eq!(p["status"]["phase"], "Pending", "{p:#}");

    // A RuntimeClass deleted after the pod was admitted: the kubelet's lookup fails.
    kubectl.ok_with_input(
        &["create", "-f", "-"],
        &json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "gone"}, "handler": "crun"}).to_string(),
    );
    let mut late = serde_json::from_str::<Value>(&pod(
        "late",
        &node,
        json!([sleep]),
        json!({"runtimeClassName": "gone"}),
    ))
    .unwrap();
    // Not bound yet, so that the class is gone before the node sees it.
    late["spec"].as_object_mut().unwrap().remove("nodeName");
    late["spec"]["nodeSelector"] = json!({"no-such-label": "x"});
    kubectl.ok_with_input(&["create", "-f", "-"], &late.to_string());
    kubectl.ok(&["delete", "runtimeclass", "gone"]);
    // Bind it by hand, as the scheduler would.
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "late"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    kubectl.ok(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/pods/late/binding",
        "-f",
        &write_temp(&binding),
    ]);
    wait_described(
        &kubectl,
        "late",
        &[
            "FailedCreatePodSandBox",
            "runtimeclass.node.k8s.io \"gone\" not found",
        ],
        60,
    );
}

fn write_temp(value: &Value) -> String {
    let dir = std::env::temp_dir().join(format!("korvet-pod-runtime-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("body.json");
    std::fs::write(&path, value.to_string()).unwrap();
    path.display().to_string()
}

#[test]
fn the_kubelet_records_pod_events() {
    let platform = TestPlatform::start(&korvet());
    let (kubectl, node) = platform.one_node_cluster("events");
    // A normal start.
    kubectl.ok_with_input(
        &["create", "-f", "-"],
        &pod(
            "normal",
            &node,
            json!([busybox(&["sleep", "3600"])]),
            json!({}),
        ),
    );
    // An image that cannot be pulled (nothing listens on that port).
    kubectl.ok_with_input(
        &["create", "-f", "-"],
        &pod(
            "no-image",
            &node,
            json!([{"name": "main", "image": "127.0.0.1:1/missing:v1"}]),
            json!({}),
        ),
    );
    // A ConfigMap volume whose ConfigMap does not exist.
    let mut mounts = busybox(&["sleep", "3600"]);
    mounts["volumeMounts"] = json!([{"name": "settings", "mountPath": "/etc/settings"}]);
    kubectl.ok_with_input(
        &["create", "-f", "-"],
        &pod(
            "no-config",
            &node,
            json!([mounts]),
            json!({"volumes": [{"name": "settings", "configMap": {"name": "absent"}}]}),
        ),
    );
    // A crash loop.
    kubectl.ok_with_input(
        &["create", "-f", "-"],
        &pod(
            "crashing",
            &node,
            json!([busybox(&["sh", "-c", "exit 3"])]),
            json!({}),
        ),
    );
    // A liveness probe that fails.
    let mut unhealthy = busybox(&["sleep", "3600"]);
    unhealthy["livenessProbe"] = json!({"exec": {"command": ["cat", "/no/such/file"]},
        "periodSeconds": 1, "failureThreshold": 2});
    kubectl.ok_with_input(
        &["create", "-f", "-"],
        &pod("unhealthy", &node, json!([unhealthy]), json!({})),
    );

    let text = wait_described(
        &kubectl,
        "normal",
        &[
            "Pulled",
            &format!("Container image \"{BUSYBOX}\" already present on machine"),
            "Created",
            "Created container: main",
            "Started",
            "Started container main",
            "kubelet",
        ],
        90,
    );
    assert!(!text.contains("Warning"), "{text}");
    // The Event objects themselves, as upstream's kubelet writes them.
    let events = kubectl.json(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=normal,reason=Started",
        "-o",
        "json",
    ]);
    let started = &events["items"][0];
    assert_eq!(started["source"]["component"], "kubelet", "{events:#}");
    assert_eq!(started["source"]["host"], node.as_str());
    assert_eq!(
        started["involvedObject"]["fieldPath"],
        "spec.containers{main}"
    );
    assert_eq!(started["involvedObject"]["kind"], "Pod");
    assert_eq!(started["type"], "Normal");
    assert_eq!(started["count"], 1);

    wait_described(
        &kubectl,
        "no-image",
        &[
            "Pulling image \"127.0.0.1:1/missing:v1\"",
            "Failed to pull image \"127.0.0.1:1/missing:v1\":",
            "Error: ErrImagePull",
            "Back-off pulling image \"127.0.0.1:1/missing:v1\"",
            "Error: ImagePullBackOff",
        ],
        90,
    );
    wait_described(
        &kubectl,
        "no-config",
        &[
            "FailedMount",
            "MountVolume.SetUp failed for volume \"settings\" : configmap \"absent\" not found",
        ],
        60,
    );
    wait_described(
        &kubectl,
        "crashing",
        &[
            "BackOff",
            "Back-off restarting failed container main in pod crashing_default(",
        ],
        60,
    );
    wait_described(
        &kubectl,
        "unhealthy",
        &[
            "Unhealthy",
            "Liveness probe failed:",
            "Killing",
            "Container main failed liveness probe, will be restarted",
        ],
        60,
    );

    // Repeats are one Event with a count, not many Events.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = kubectl.json(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=crashing,reason=BackOff",
            "-o",
            "json",
        ]);
        let items = events["items"].as_array().cloned().unwrap_or_default();
        assert_eq!(items.len(), 1, "{events:#}");
        if items[0]["count"].as_i64().unwrap_or(0) >= 2 {
            assert_ne!(items[0]["firstTimestamp"], items[0]["lastTimestamp"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "BackOff never counted up: {events:#}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // Deleting a running pod: Killing.
    kubectl.ok(&["delete", "pod", "normal", "--wait=false"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = kubectl.json(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=normal,reason=Killing",
            "-o",
            "json",
        ]);
        if events["items"][0]["message"] == "Stopping container main" {
            break;
        }
        assert!(Instant::now() < deadline, "no Killing event: {events:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The cgroup directory of a container of the only machine for `controller`.
fn container_cgroup(platform: &TestPlatform, pod: &Value, controller: &str) -> PathBuf {
    let machine = platform.only_machine();
    let relative = machine["cgroup"].as_str().expect("machine cgroup");
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let tail = format!(
        "{}/kubepods/pod{uid}/{}",
        relative.trim_matches('/'),
        container_id(pod)
    );
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        Path::new("/sys/fs/cgroup").join(tail)
    } else {
        Path::new("/sys/fs/cgroup").join(controller).join(tail)
    }
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

#[test]
fn limits_oom_kills_stats_and_node_conditions() {
    let platform = TestPlatform::start(&korvet());
    let (kubectl, node) = platform.one_node_cluster("limits");
    // dd's 64 MiB buffer, filled from /dev/zero, is more than the 20 MiB limit.
    let mut hog = busybox(&[
        "/bin/busybox",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ]);
    hog["resources"] = json!({"limits": {"memory": "20Mi"}});
    kubectl.ok_with_input(
        &["create", "-f", "-"],
        &pod("hog", &node, json!([hog]), json!({})),
    );
    let mut limited = busybox(&["sh", "-c", "while true; do :; done"]);
    limited["resources"] = json!({"limits": {"memory": "32Mi", "cpu": "250m"},
        "requests": {"memory": "16Mi", "cpu": "100m"}});
    kubectl.ok_with_input(
        &["create", "-f", "-"],
        &pod("limited", &node, json!([limited]), json!({})),
    );

    // Killed by the kernel's OOM killer, then restarted (after the back-off).
    let hog = platform.wait_pod(&kubectl, "hog", 90, |p| {
        let s = &p["status"]["containerStatuses"][0];
        s["lastState"]["terminated"]["reason"] == "OOMKilled"
            && s["restartCount"].as_i64().unwrap_or(0) >= 1
    });
    let last = &hog["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 137, "{hog:#}");
    assert!(
        hog["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1,
        "{hog:#}"
    );

    // The limits reach the container's cgroup.
    let limited = platform.wait_pod(&kubectl, "limited", 60, running);
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if v2 {
        let dir = container_cgroup(&platform, &limited, "");
        assert_eq!(
            read_trimmed(&dir.join("memory.max")),
            (32u64 << 20).to_string()
        );
        assert_eq!(read_trimmed(&dir.join("cpu.max")), "25000 100000");
    } else {
        let memory = container_cgroup(&platform, &limited, "memory");
        assert_eq!(
            read_trimmed(&memory.join("memory.limit_in_bytes")),
            (32u64 << 20).to_string()
        );
        let cpu = container_cgroup(&platform, &limited, "cpu");
        assert_eq!(read_trimmed(&cpu.join("cpu.cfs_quota_us")), "25000");
        assert_eq!(read_trimmed(&cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read_trimmed(&cpu.join("cpu.shares")), "102");
    }

    // The Summary API through the API server's node proxy.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (summary, pod_stats) = loop {
        let raw = kubectl.ok(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{node}/proxy/stats/summary"),
        ]);
        let summary: Value = serde_json::from_str(&raw).expect("summary JSON");
        let found = summary["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["podRef"]["name"] == "limited" && p["containers"][0]["memory"].is_object())
            .cloned();
        if let Some(p) = found {
            break (summary, p);
        }
        assert!(
            Instant::now() < deadline,
            "no stats of pod limited: {summary:#}"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let n = &summary["node"];
    assert_eq!(n["nodeName"], node.as_str());
    assert!(
        n["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0) > 0,
        "{n:#}"
    );
    assert!(n["cpu"]["usageNanoCores"].is_u64(), "{n:#}");
    assert!(
        n["memory"]["workingSetBytes"].as_u64().unwrap_or(0) > 0,
        "{n:#}"
    );
    assert!(n["memory"]["availableBytes"].is_u64(), "{n:#}");
    assert!(n["fs"]["capacityBytes"].as_u64().unwrap_or(0) > 0, "{n:#}");
    assert!(
        n["runtime"]["imageFs"]["capacityBytes"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{n:#}"
    );
    assert_eq!(pod_stats["podRef"]["namespace"], "default");
    let c = &pod_stats["containers"][0];
    assert_eq!(c["name"], "main");
    // A busy loop under a quarter-CPU quota: clearly using CPU, never much more than 250m.
    let cores = c["cpu"]["usageNanoCores"].as_u64().expect("usageNanoCores");
    assert!(cores > 20_000_000 && cores < 400_000_000, "{c:#}");
    assert!(
        c["memory"]["workingSetBytes"].as_u64().unwrap_or(0) > 0,
        "{c:#}"
    );
    assert!(pod_stats["memory"]["workingSetBytes"].as_u64().unwrap_or(0) > 0);

    // The pressure conditions, measured: a fresh machine has none.
    let n = kubectl.json(&["get", "node", &node, "-o", "json"]);
    let conditions = n["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let find = |t: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("no {t}: {n:#}"))
    };
    for (t, reason) in [
        ("MemoryPressure", "KubeletHasSufficientMemory"),
        ("PIDPressure", "KubeletHasSufficientPID"),
    ] {
        let c = find(t);
        assert_eq!(c["status"], "False", "{c:#}");
        assert_eq!(c["reason"], reason);
        assert!(c["lastHeartbeatTime"].is_string() && c["lastTransitionTime"].is_string());
    }
    // The machine's disk is the host's: whether it is under pressure is what df says
    // against the test machines' thresholds (1 GiB free; inodes: upstream's 5 %).
    let df = std::process::Command::new("df")
        .args(["-B1", "--output=size,avail,itotal,iavail"])
        .arg(platform.only_machine_dir())
        .output()
        .expect("df");
    let text = String::from_utf8_lossy(&df.stdout);
    let numbers: Vec<f64> = text
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let [_size, avail, inodes, inodes_free] = numbers[..] else {
        panic!("df printed {text}");
    };
    assert!(korvet_test_support::platform::EVICTION_HARD.contains("imagefs.available<1Gi"));
    let pressure = avail < (1u64 << 30) as f64 || (inodes > 0.0 && inodes_free < inodes * 0.05);
    let disk = find("DiskPressure");
    let (status, reason) = if pressure {
        ("True", "KubeletHasDiskPressure")
    } else {
        ("False", "KubeletHasNoDiskPressure")
    };
    assert_eq!(
        (disk["status"].as_str(), disk["reason"].as_str()),
        (Some(status), Some(reason)),
        "{disk:#}\n{text}"
    );
    assert_eq!(find("Ready")["status"], "True");
}
