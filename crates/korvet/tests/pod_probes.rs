//! Probes, environment sources and basic volumes on a real node: `korvet server` makes
//! a cluster whose machine runs `korvet node` with its own containerd; the pods use the
//! built-in busybox image. Runs as root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use korvet_test_support::platform::TestPlatform;
use korvet_test_support::Kubectl;
use serde_json::{json, Value};

fn pod(name: &str, node: &str, container: Value, volumes: Value) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 2,
            "containers": [container],
            "volumes": volumes,
        },
    })
    .to_string()
}

fn busybox(command: &[&str]) -> Value {
    json!({
        "name": "main",
        "image": "korvet.local/busybox:latest",
        "imagePullPolicy": "Never",
        "command": command,
    })
}

fn with(mut container: Value, field: &str, value: Value) -> Value {
    container[field] = value;
    container
}

/// Everything the pod's containers wrote, from the CRI log files under the machine's
/// directory (`.../pods/NAMESPACE_NAME_UID/CONTAINER/N.log`).
fn pod_output(machine_dir: &Path, name: &str) -> String {
    fn walk(dir: &Path, prefix: &str, inside: bool, out: &mut String) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let here = inside
                || path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix));
            if path.is_dir() && !path.ends_with("rootfs") && !path.ends_with("containerd") {
                walk(&path, prefix, here, out);
            } else if here && path.extension().is_some_and(|e| e == "log") {
                out.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    let mut out = String::new();
    walk(machine_dir, &format!("default_{name}_"), false, &mut out);
    out
}

fn status(pod: &Value) -> &Value {
    &pod["status"]["containerStatuses"][0]
}

fn condition(pod: &Value, kind: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn running(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running" && status(pod)["state"]["running"].is_object()
}

#[test]
fn probes_env_sources_and_volumes() {
    let platform = TestPlatform::start(Path::new(env!("CARGO_BIN_EXE_korvet")));
    // The node's name comes from the wait for its podCIDR below.
    let (kubectl, _) = platform.one_node_cluster("probes");
    // Dropped before the platform, also on failure.
    let _pods_gone = PodsGone(&kubectl);
    let deadline = Instant::now() + Duration::from_secs(30);
    let node = loop {
        let nodes = kubectl.json(&["get", "nodes"]);
        let n = &nodes["items"][0];
        if n["spec"]["podCIDR"].is_string() {
            break n["metadata"]["name"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no node with a podCIDR: {nodes:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let apply = |manifest: String| kubectl.ok_with_input(&["apply", "-f", "-"], &manifest);
    kubectl.ok(&[
        "create",
        "configmap",
        "app-config",
        "--from-literal=color=blue",
        "--from-literal=size=xl",
    ]);
    kubectl.ok(&[
        "create",
        "secret",
        "generic",
        "app-secret",
        "--from-literal=password=s3cret",
    ]);

    // Readiness: the file appears after a few seconds, so Ready goes false → true.
    let ready_probe = json!({
        "exec": {"command": ["test", "-f", "/tmp/ready"]},
        "periodSeconds": 1,
        "failureThreshold": 1,
    });
    apply(pod(
        "late-ready",
        &node,
        with(
            busybox(&["sh", "-c", "sleep 6; touch /tmp/ready; sleep 3600"]),
            "readinessProbe",
            ready_probe,
        ),
        json!([]),
    ));
    // Liveness: passes while /tmp/alive exists, which the container removes.
    let live_probe = json!({
        "exec": {"command": ["test", "-f", "/tmp/alive"]},
        "periodSeconds": 1,
        "failureThreshold": 2,
    });
    apply(pod(
        "dies",
        &node,
        with(
            busybox(&[
                "sh",
                "-c",
                "touch /tmp/alive; sleep 4; rm /tmp/alive; sleep 3600",
            ]),
            "livenessProbe",
            live_probe,
        ),
        json!([]),
    ));
    // httpGet readiness and tcpSocket liveness against busybox httpd, with a startup
    // probe gating both.
    let web = with(
        with(
            with(
                busybox(&[
                    "sh",
                    "-c",
                    "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www",
                ]),
                "ports",
                json!([{"name": "http", "containerPort": 8080}]),
            ),
            "readinessProbe",
            json!({"httpGet": {"path": "/index.html", "port": "http",
                    "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                   "periodSeconds": 1}),
        ),
        "livenessProbe",
        json!({"tcpSocket": {"port": 8080}, "periodSeconds": 1}),
    );
    let web = with(
        web,
        "startupProbe",
        json!({"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 30}),
    );
    apply(pod("web", &node, web, json!([])));
    // A 404 keeps a container unready.
    apply(pod(
        "web-404",
        &node,
        with(
            busybox(&["sh", "-c", "mkdir -p /www && exec httpd -f -p 8080 -h /www"]),
            "readinessProbe",
            json!({"httpGet": {"path": "/missing", "port": 8080}, "periodSeconds": 1}),
        ),
        json!([]),
    ));
    // Environment from a ConfigMap, a Secret, the pod's fields and resources, and a
    // configMap volume plus an emptyDir.
    let env_container = with(
        with(
            with(
                busybox(&[
                    "sh",
                    "-c",
                    "echo \"A=$A B=$B POD=$POD NS=$NS APP=$APP IP=$IP MEM=$MEM CFG_size=$CFG_size\"; \
                     echo file=$(cat /etc/app/color); echo hi > /scratch/x; echo scratch=$(cat /scratch/x); \
                     sleep 3600",
                ]),
                "env",
                json!([
                    {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "color"}}},
                    {"name": "B", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "password"}}},
                    {"name": "O", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "x", "optional": true}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                ]),
            ),
            "envFrom",
            json!([{"prefix": "CFG_", "configMapRef": {"name": "app-config"}}]),
        ),
        "volumeMounts",
        json!([
            {"name": "cfg", "mountPath": "/etc/app"},
            {"name": "scratch", "mountPath": "/scratch"},
        ]),
    );
    let env_container = with(
        env_container,
        "resources",
        json!({"limits": {"memory": "64Mi"}}),
    );
    apply(pod(
        "env",
        &node,
        env_container,
        json!([
            {"name": "cfg", "configMap": {"name": "app-config"}},
            {"name": "scratch", "emptyDir": {}},
        ]),
    ));
    apply(pod(
        "no-config",
        &node,
        with(
            busybox(&["sleep", "3600"]),
            "env",
            json!([{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}]),
        ),
        json!([]),
    ));
    apply(pod(
        "no-volume",
        &node,
        with(
            busybox(&["sleep", "3600"]),
            "volumeMounts",
            json!([{"name": "cfg", "mountPath": "/etc/app"}]),
        ),
        json!([{"name": "cfg", "configMap": {"name": "absent"}}]),
    ));

    // downwardAPI, projected (service-account token, downward API, ConfigMap) and
    // hostPath volumes; the hostPath lives on the machine's own disk.
    kubectl.ok(&["create", "serviceaccount", "reader"]);
    let files = with(
        with(
            busybox(&[
                "sh",
                "-c",
                "echo labels=$(cat /etc/podinfo/labels | tr '\\n' ' '); \
                 echo ns=$(cat /var/run/api/namespace) color=$(cat /var/run/api/color); \
                 cp /var/run/api/token /host/token; echo host-written > /host/mark; sleep 3600",
            ]),
            "volumeMounts",
            json!([
                {"name": "podinfo", "mountPath": "/etc/podinfo"},
                {"name": "api", "mountPath": "/var/run/api"},
                {"name": "host", "mountPath": "/host"},
            ]),
        ),
        "lifecycle",
        json!({"preStop": {"exec": {"command": ["sh", "-c", "echo bye > /host/pre-stop"]}}}),
    );
    let mut files_pod: Value = serde_json::from_str(&pod(
        "files",
        &node,
        files,
        json!([
            {"name": "podinfo", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            ]}},
            {"name": "api", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                {"configMap": {"name": "app-config", "items": [{"key": "color", "path": "color"}]}},
            ]}},
            {"name": "host", "hostPath": {"path": "/var/lib/demo", "type": "DirectoryOrCreate"}},
        ]),
    ))
    .unwrap();
    files_pod["spec"]["serviceAccountName"] = json!("reader");
    apply(files_pod.to_string());

    // Readiness: first Running but not ready, then ready.
    let seen = platform.wait_pod(&kubectl, "late-ready", 120, running);
    assert_eq!(status(&seen)["ready"], false, "{seen:#}");
    assert_eq!(condition(&seen, "Ready"), "False", "{seen:#}");
    assert_eq!(condition(&seen, "ContainersReady"), "False");
    let seen = platform.wait_pod(&kubectl, "late-ready", 60, |p| {
        condition(p, "Ready") == "True"
    });
    assert_eq!(status(&seen)["ready"], true);
    assert_eq!(status(&seen)["restartCount"], 0);

    // Liveness: the container is killed and restarted.
    let seen = platform.wait_pod(&kubectl, "dies", 90, |p| {
        status(p)["restartCount"].as_i64().unwrap_or(0) >= 1
    });
    let last = &status(&seen)["lastState"]["terminated"];
    assert!(last.is_object(), "{seen:#}");
    assert_eq!(last["reason"], "Error", "{seen:#}");
    assert!(
        [137, 143].contains(&last["exitCode"].as_i64().unwrap_or(0)),
        "{seen:#}"
    );

    // httpGet / tcpSocket / startup against httpd.
    let seen = platform.wait_pod(&kubectl, "web", 90, |p| condition(p, "Ready") == "True");
    assert_eq!(status(&seen)["started"], true);
    assert_eq!(status(&seen)["restartCount"], 0);
    platform.wait_pod(&kubectl, "web-404", 60, running);
    std::thread::sleep(Duration::from_secs(3));
    let seen = kubectl.json(&["get", "pod", "web-404"]);
    assert_eq!(condition(&seen, "Ready"), "False", "{seen:#}");

    // Environment and volumes, in the container's own output.
    let seen = platform.wait_pod(&kubectl, "env", 90, running);
    let ip = seen["status"]["podIP"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let expected = format!("A=blue B=s3cret POD=env NS=default APP=env IP={ip} MEM=64 CFG_size=xl");
    loop {
        let out = pod_output(&platform.only_machine_dir(), "env");
        if out.contains(&expected) && out.contains("file=blue") && out.contains("scratch=hi") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "want {expected:?}, file=blue and scratch=hi in:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    platform.wait_pod(&kubectl, "files", 90, running);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = pod_output(&platform.only_machine_dir(), "files");
        if out.contains("labels=app=\"files\"") && out.contains("ns=default color=blue") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "downward and projected files in:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The hostPath directory is inside the machine's directory, not the host's /var/lib.
    let host_dir = platform.only_machine_dir().join("node/host/var/lib/demo");
    assert!(!Path::new("/var/lib/demo/mark").exists());
    let deadline = Instant::now() + Duration::from_secs(30);
    let token = loop {
        let token = std::fs::read_to_string(host_dir.join("token")).unwrap_or_default();
        if !token.is_empty() {
            break token;
        }
        assert!(
            Instant::now() < deadline,
            "no token written to the hostPath {host_dir:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    // The projected token authenticates as the pod's service account.
    let mut config = kubectl.json(&["config", "view", "--raw"]);
    config["users"][0]["user"] = json!({"token": token.trim()});
    let token_config = platform.dir().join("reader.kubeconfig");
    std::fs::write(&token_config, config.to_string()).unwrap();
    let reader = Kubectl::new(token_config, platform.dir().join("reader-cache"));
    let denied = reader.run(&["get", "secrets"]);
    assert!(
        !denied.ok
            && denied
                .stderr
                .contains("system:serviceaccount:default:reader"),
        "{}",
        denied.stderr
    );
    // Deleting the pod runs its preStop hook before the container is stopped.
    kubectl.ok(&["delete", "pod", "files", "--wait=false"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(host_dir.join("pre-stop")).unwrap_or_default() != "bye\n" {
        assert!(Instant::now() < deadline, "the preStop hook did not run");
        std::thread::sleep(Duration::from_millis(250));
    }

    let seen = platform.wait_pod(&kubectl, "no-config", 60, |p| {
        status(p)["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    });
    assert_eq!(
        status(&seen)["state"]["waiting"]["message"],
        "configmap \"absent\" not found"
    );
    // A missing ConfigMap for a volume: ContainerCreating, and it stays so.
    platform.wait_pod(&kubectl, "no-volume", 60, |p| {
        status(p)["state"]["waiting"]["reason"] == "ContainerCreating"
    });
    std::thread::sleep(Duration::from_secs(2));
    let seen = kubectl.json(&["get", "pod", "no-volume"]);
    assert_eq!(seen["status"]["phase"], "Pending", "{seen:#}");
    assert_eq!(
        status(&seen)["state"]["waiting"]["reason"],
        "ContainerCreating"
    );
    // Once the ConfigMap exists, it runs.
    kubectl.ok(&["create", "configmap", "absent", "--from-literal=k=v"]);
    platform.wait_pod(&kubectl, "no-volume", 60, running);

    // Deleting the env pod removes its volumes from the machine.
    let uid = seen_uid(&kubectl, "env");
    let volumes = find_dir(&platform.only_machine_dir(), &uid);
    assert!(volumes.is_some(), "the env pod's volume directory exists");
    kubectl.ok(&["delete", "pod", "env", "--wait=false"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while volumes.as_ref().is_some_and(|v| v.exists()) {
        assert!(Instant::now() < deadline, "{volumes:?} still there");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Deletes every pod while the node still runs, so that the agent stops their sandboxes
/// (and containerd removes their network namespaces) before the machine goes.
struct PodsGone<'a>(&'a Kubectl);

impl Drop for PodsGone<'_> {
    fn drop(&mut self) {
        self.0.run(&[
            "delete",
            "pods",
            "--all",
            "--wait=false",
            "--grace-period=1",
        ]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let left = self.0.run(&["get", "pods", "-o", "name"]);
            if left.ok && left.stdout.trim().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn seen_uid(kubectl: &Kubectl, name: &str) -> String {
    kubectl.json(&["get", "pod", name])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A directory named `name` under `volumes/` below `dir`.
fn find_dir(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if !path.is_dir() || path.ends_with("containerd") || path.ends_with("rootfs") {
            continue;
        }
        if path.file_name().is_some_and(|n| n == name)
            && path
                .parent()
                .is_some_and(|p| p.file_name().is_some_and(|n| n == "volumes"))
        {
            return Some(path);
        }
        if let Some(found) = find_dir(&path, name) {
            return Some(found);
        }
    }
    None
}
