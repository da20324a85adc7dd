//! `kubectl logs` for real: the API server's `pods/log` proxies to the node agent's
//! HTTPS server, which reads containerd's CRI log files. Runs as root.

use std::path::Path;
use std::time::{Duration, Instant};

use korvet_test_support::platform::TestPlatform;
use korvet_test_support::Kubectl;
use serde_json::{json, Value};

fn busybox(name: &str, script: &str) -> Value {
    json!({
        "name": name,
        "image": "korvet.local/busybox:latest",
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", script],
    })
}

fn pod(name: &str, node: &str, containers: Vec<Value>, restart_policy: &str) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 1,
            "containers": containers,
        },
    })
    .to_string()
}

fn running(pod: &Value) -> bool {
    pod["status"]["containerStatuses"]
        .as_array()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|c| c["state"]["running"].is_object()))
}

/// Polls `kubectl logs ARGS` until its output satisfies `done`.
fn wait_logs(kubectl: &Kubectl, args: &[&str], done: impl Fn(&str) -> bool) -> String {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = kubectl.run(&all);
        if run.ok && done(&run.stdout) {
            return run.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl {} printed:\n{}{}",
            all.join(" "),
            run.stdout,
            run.stderr
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn kubectl_logs_reads_container_logs_through_the_node() {
    let platform = TestPlatform::start(Path::new(env!("CARGO_BIN_EXE_korvet")));
    let (kubectl, node) = platform.one_node_cluster("logs");
    let apply = |manifest: String| kubectl.ok_with_input(&["apply", "-f", "-"], &manifest);
    apply(pod(
        "echo",
        &node,
        vec![busybox("main", "echo one; echo two; sleep 3600")],
        "Always",
    ));
    apply(pod(
        "two",
        &node,
        vec![
            busybox("a", "echo from-a; sleep 3600"),
            busybox("b", "echo from-b; sleep 3600"),
        ],
        "Always",
    ));
    apply(pod(
        "later",
        &node,
        vec![busybox("main", "echo a; sleep 2; echo b; sleep 3600")],
        "Always",
    ));
    apply(pod(
        "crash",
        &node,
        vec![busybox("main", "echo run; exit 1")],
        "Always",
    ));

    // A pod that has not started has no log yet, with the kubelet's message.
    platform.wait_pod(&kubectl, "echo", 120, running);
    let out = wait_logs(&kubectl, &["echo"], |o| o.contains("two"));
    assert_eq!(out, "one\ntwo\n");
    assert_eq!(kubectl.ok(&["logs", "echo", "--tail=1"]), "two\n");
    let stamped = kubectl.ok(&["logs", "echo", "--timestamps"]);
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 2, "{stamped}");
    let (time, text) = lines[0].split_once(' ').unwrap();
    assert_eq!(text, "one");
    assert!(
        time.len() == 30 && time.ends_with('Z') && time.contains('T'),
        "RFC 3339 with nanoseconds: {time}"
    );
    assert_eq!(kubectl.ok(&["logs", "echo", "--limit-bytes=3"]), "one");
    let err = kubectl.fails(&["logs", "echo", "-c", "nope"]);
    assert!(
        err.contains("container nope is not valid for pod echo"),
        "{err}"
    );

    // Two containers: -c picks one; the API without `container` says which exist.
    platform.wait_pod(&kubectl, "two", 60, running);
    let b = wait_logs(&kubectl, &["two", "-c", "b"], |o| !o.is_empty());
    assert_eq!(b, "from-b\n");
    let raw = kubectl.run(&["get", "--raw", "/api/v1/namespaces/default/pods/two/log"]);
    assert!(!raw.ok);
    assert!(
        raw.stderr
            .contains("a container name must be specified for pod two, choose one of: [a b]"),
        "{}",
        raw.stderr
    );

    // -f keeps streaming: a line printed later arrives.
    platform.wait_pod(&kubectl, "later", 60, running);
    let follow = kubectl.watch(&["logs", "-f", "later"]);
    follow.wait_for("a\n", 30);
    follow.wait_for("b\n", 30);
    drop(follow);

    // --previous after a restart shows the earlier run's output.
    platform.wait_pod(&kubectl, "crash", 120, |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    });
    let previous = wait_logs(&kubectl, &["crash", "--previous"], |o| !o.is_empty());
    assert_eq!(previous, "run\n");

    // A container that cannot start has no log, with the kubelet's message.
    apply(pod(
        "missing",
        &node,
        vec![
            json!({"name": "main", "image": "korvet.local/missing:1", "imagePullPolicy": "IfNotPresent"}),
        ],
        "Always",
    ));
    platform.wait_pod(&kubectl, "missing", 90, |p| {
        let reason = &p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
        reason == "ErrImagePull" || reason == "ImagePullBackOff"
    });
    let err = kubectl.fails(&["logs", "missing"]);
    assert!(
        err.contains("container \"main\" in pod \"missing\" is waiting to start"),
        "{err}"
    );

    check_node_server(&kubectl, &platform.data_dir());
}

/// The node's server answers /healthz to anyone and refuses a caller without the API
/// server's client certificate (401).
fn check_node_server(kubectl: &Kubectl, data_dir: &Path) {
    let nodes = kubectl.json(&["get", "nodes"]);
    let node = &nodes["items"][0];
    let ip = korvet_test_support::internal_ip(node).expect("the node's InternalIP");
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .unwrap();
    assert_eq!(port, 10250);
    let url = |path: &str| format!("https://{ip}:{port}{path}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = curl(&["-k", &url("/healthz")]);
        if out == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "healthz: {out}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let code = curl(&[
        "-k",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url("/containerLogs/default/x/y"),
    ]);
    assert_eq!(code, "401");

    // The node's own identity is signed by the cluster CA but may not read logs.
    let kubeconfig = find(data_dir, "kubelet.kubeconfig").expect("the node's kubeconfig");
    let key = kubeconfig.with_file_name("kubelet.key");
    let config: Value = serde_json::from_str(
        &Kubectl::new(kubeconfig.clone(), data_dir.join("kubectl-cache"))
            .ok(&["config", "view", "--raw", "-o", "json"]),
    )
    .unwrap();
    let cert_b64 = config["users"][0]["user"]["client-certificate-data"]
        .as_str()
        .unwrap();
    let cert = data_dir.join("node-client.crt");
    use base64::Engine as _;
    std::fs::write(
        &cert,
        base64::engine::general_purpose::STANDARD
            .decode(cert_b64)
            .unwrap(),
    )
    .unwrap();
    let code = curl(&[
        "-k",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url("/containerLogs/default/x/y"),
    ]);
    assert_eq!(code, "403");
}

fn find(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
        if path.is_dir() && !path.is_symlink() {
            if let Some(found) = find(&path, name) {
                return Some(found);
            }
        }
    }
    None
}

fn curl(args: &[&str]) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
