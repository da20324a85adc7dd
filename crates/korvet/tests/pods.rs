//! Pods run for real: `korvet server` makes a cluster whose machine runs `korvet node`
//! with its own containerd; pods bound to that node run through CRI with the built-in
//! busybox image, and report status as upstream's kubelet does. Runs as root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use korvet_test_support::platform::TestPlatform;
use serde_json::Value;

fn pod(name: &str, node: &str, container: Value, restart_policy: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 2,
            "containers": [container],
        },
    })
    .to_string()
}

fn busybox(command: &[&str]) -> Value {
    serde_json::json!({
        "name": "main",
        "image": "korvet.local/busybox:latest",
        "imagePullPolicy": "Never",
        "command": command,
    })
}

fn container_status(pod: &Value) -> &Value {
    &pod["status"]["containerStatuses"][0]
}

/// The containerd socket of the platform's only machine.
fn containerd_socket(platform: &TestPlatform) -> PathBuf {
    let record = platform.only_machine();
    PathBuf::from(record["socket_dir"].as_str().unwrap()).join("containerd.sock")
}

fn ctr_container_ids(socket: &Path) -> String {
    let out = std::process::Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["-n", "k8s.io", "containers", "ls", "-q"])
        .output()
        .expect("ctr");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let net: ipnet::Ipv4Net = cidr.parse().unwrap();
    ip.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| net.contains(&ip))
}

#[test]
fn pods_run_through_containerd_and_report_status() {
    let platform = TestPlatform::start(Path::new(env!("CARGO_BIN_EXE_korvet")));
    let (kubectl, node) = platform.one_node_cluster("pods");
    let deadline = Instant::now() + Duration::from_secs(30);
    let pod_cidr = loop {
        let n = kubectl.json(&["get", "node", &node]);
        if let Some(cidr) = n["spec"]["podCIDR"].as_str() {
            break cidr.to_string();
        }
        assert!(Instant::now() < deadline, "no podCIDR: {n:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        in_cidr(pod_cidr.split('/').next().unwrap(), "10.244.0.0/16"),
        "{pod_cidr}"
    );
    let node_info = kubectl.json(&["get", "node", &node]);
    assert!(
        node_info["status"]["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("containerd://")),
        "{node_info:#}"
    );

    let apply = |manifest: String| kubectl.ok_with_input(&["apply", "-f", "-"], &manifest);
    apply(pod("sleeper", &node, busybox(&["sleep", "3600"]), "Always"));
    apply(pod(
        "done",
        &node,
        busybox(&["sh", "-c", "echo hi; exit 0"]),
        "Never",
    ));
    apply(pod(
        "missing",
        &node,
        serde_json::json!({"name": "main", "image": "korvet.local/missing:1", "imagePullPolicy": "IfNotPresent"}),
        "Always",
    ));
    apply(pod(
        "nocmd",
        &node,
        busybox(&["/no/such/command"]),
        "Always",
    ));

    let sleeper = platform.wait_pod(&kubectl, "sleeper", 120, |p| {
        p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string()
    });
    let ip = sleeper["status"]["podIP"].as_str().unwrap();
    assert!(in_cidr(ip, &pod_cidr), "pod IP {ip} in {pod_cidr}");
    assert!(sleeper["status"]["hostIP"].is_string());
    assert!(sleeper["status"]["startTime"].is_string());
    let ready = sleeper["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    assert!(ready, "{sleeper:#}");
    assert_eq!(container_status(&sleeper)["restartCount"], 0);

    // The Node lists the images the runtime holds, largest first.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = kubectl.json(&["get", "node", &node]);
        let images = seen["status"]["images"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let has_busybox = images.iter().any(|i| {
            i["names"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n == "korvet.local/busybox:latest"))
                && i["sizeBytes"].as_i64().unwrap_or(0) > 0
        });
        if has_busybox {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no busybox in the Node's images: {images:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let done = platform.wait_pod(&kubectl, "done", 60, |p| {
        p["status"]["phase"] == "Succeeded"
    });
    assert_eq!(
        container_status(&done)["state"]["terminated"]["reason"],
        "Completed"
    );

    platform.wait_pod(&kubectl, "missing", 90, |p| {
        let reason = &container_status(p)["state"]["waiting"]["reason"];
        reason == "ErrImagePull" || reason == "ImagePullBackOff"
    });

    let nocmd = platform.wait_pod(&kubectl, "nocmd", 90, |p| {
        container_status(p)["restartCount"].as_i64().unwrap_or(0) >= 1
    });
    let status = container_status(&nocmd);
    let text = status.to_string();
    assert!(
        text.contains("/no/such/command"),
        "the runtime's message: {status:#}"
    );

    // Deleting a pod stops and removes its containers, then the Pod object.
    let socket = containerd_socket(&platform);
    let id = container_status(&sleeper)["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("containerd://")
        .to_string();
    assert!(ctr_container_ids(&socket).contains(&id));
    kubectl.ok(&["delete", "pod", "sleeper", "--wait=false"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let gone = !kubectl.run(&["get", "pod", "sleeper"]).ok;
        if gone && !ctr_container_ids(&socket).contains(&id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sleeper still there (gone from the API: {gone})"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
