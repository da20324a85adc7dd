//! NetworkPolicies on a real platform cluster, with kubectl and busybox pods: traffic is
//! open before any policy, a default-deny policy blocks, an allow rule re-opens exactly
//! what it names, and an egress deny blocks DNS until a policy allows kube-dns. Two
//! nodes: the allowed client sits on the other node than the server (pod CIDRs routed
//! between machines, source addresses kept), the refused one on the same node (bridged
//! traffic). Runs as root.

use std::time::{Duration, Instant};

use korvet_test_support::platform::{korvet_binary, TestPlatform};
use korvet_test_support::Kubectl;
use serde_json::{json, Value};

fn busybox(name: &str, node: &str, labels: Value, script: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "korvet.local/busybox:latest",
                "imagePullPolicy": "Never", "command": ["sh", "-c", script]}]},
    })
}

fn apply(kubectl: &Kubectl, object: &Value) {
    kubectl.ok_with_input(&["apply", "-f", "-"], &object.to_string());
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name}, "spec": spec})
}

/// Whether `command` (a shell line) succeeds inside pod `from` (3 s at most: busybox's
/// own `timeout`, since its wget crashes with `-T`).
fn succeeds(kubectl: &Kubectl, from: &str, command: &str) -> bool {
    let line = format!("/bin/busybox timeout 3 {command} >/dev/null 2>&1 && echo YES || echo NO");
    kubectl
        .run(&["exec", from, "--", "sh", "-c", &line])
        .stdout
        .contains("YES")
}

fn wait_running(platform: &TestPlatform, kubectl: &Kubectl, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let run = kubectl.run(&["get", "pod", name, "-o", "json"]);
        let pod: Value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
        if pod["status"]["phase"] == "Running" && pod["status"]["podIP"].is_string() {
            return pod;
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} is not running: {pod:#}\n{}",
            platform.agent_log_tails()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until `command` in `from` succeeds (`want`) or fails; rules load asynchronously.
fn eventually(platform: &TestPlatform, kubectl: &Kubectl, from: &str, command: &str, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while succeeds(kubectl, from, command) != want {
        assert!(
            Instant::now() < deadline,
            "`{command}` in {from} should {}succeed; agent log:\n{}",
            if want { "" } else { "not " },
            platform.agent_log_tails()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn default_deny_blocks_and_allow_rules_reopen_exactly_what_they_name() {
    let platform = TestPlatform::start(&korvet_binary(env!("CARGO_BIN_EXE_korvet")));
    platform.ok(&[
        "cluster",
        "create",
        "netpol",
        "--pool",
        "w:small:zone-a:2",
        "--wait",
    ]);
    platform.wait_cluster("netpol", 240, |c| {
        c["status"]["phase"] == "Running" && c["status"]["nodes"] == "2/2"
    });
    let kubectl = platform.cluster_kubectl("netpol");
    let nodes = kubectl.json(&["get", "nodes"]);
    let node_names: Vec<String> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let (near, far) = (&node_names[0], &node_names[1]);
    let cluster: Value =
        serde_json::from_str(&platform.ok(&["cluster", "get", "netpol", "-o", "json"])).unwrap();
    // https://ADDRESS:6443 → the master serves DNS on ADDRESS:53.
    let dns_ip = cluster["status"]["endpoint"]
        .as_str()
        .unwrap()
        .trim_start_matches("https://")
        .rsplit_once(':')
        .unwrap()
        .0
        .to_string();

    apply(
        &kubectl,
        &busybox(
            "server",
            near,
            json!({"app": "web"}),
            "mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p 8080 -h /www",
        ),
    );
    apply(
        &kubectl,
        &busybox("client", far, json!({"role": "client"}), "exec sleep 3600"),
    );
    apply(
        &kubectl,
        &busybox("other", near, json!({"role": "other"}), "exec sleep 3600"),
    );
    let mut server_ip = String::new();
    for name in ["server", "client", "other"] {
        let pod = wait_running(&platform, &kubectl, name);
        if name == "server" {
            server_ip = pod["status"]["podIP"].as_str().unwrap().to_string();
        }
    }
    let web = format!("wget -q -O - http://{server_ip}:8080/");
    let dns = format!("nslookup kubernetes.default.svc.cluster.local {dns_ip}");

    // Bad input is refused with field causes; good input gets upstream's defaults.
    let bad = policy(
        "bad",
        json!({"podSelector": {}, "ingress": [{"from": [{}],
            "ports": [{"port": "http", "endPort": 90}]}]}),
    );
    let run = kubectl.run_with_input(&["apply", "-f", "-"], &bad.to_string());
    assert!(!run.ok, "a bad policy was accepted: {}", run.stdout);
    let refused = run.stderr;
    assert!(
        refused.contains("spec.ingress[0].ports[0].endPort"),
        "{refused}"
    );
    assert!(refused.contains("spec.ingress[0].from[0]"), "{refused}");

    // No policy: everything open.
    eventually(&platform, &kubectl, "client", &web, true);
    eventually(&platform, &kubectl, "other", &web, true);
    eventually(&platform, &kubectl, "client", &dns, true);

    // Default deny of ingress in the namespace.
    apply(
        &kubectl,
        &policy(
            "default-deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
    );
    eventually(&platform, &kubectl, "client", &web, false);
    assert!(!succeeds(&kubectl, "other", &web), "other blocked too");

    // Allow from role=client to app=web on 8080: client only.
    apply(
        &kubectl,
        &policy(
            "allow-clients",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                    "ports": [{"protocol": "TCP", "port": 8080}]}]}),
        ),
    );
    eventually(&platform, &kubectl, "client", &web, true);
    assert!(!succeeds(&kubectl, "other", &web), "other still blocked");
    // Stored with upstream's default policyTypes.
    let stored = kubectl.json(&["get", "networkpolicy", "allow-clients"]);
    assert_eq!(
        stored["spec"]["policyTypes"],
        json!(["Ingress"]),
        "{stored:#}"
    );

    // Egress deny for the client blocks DNS (and the web server) ...
    apply(
        &kubectl,
        &policy(
            "client-egress",
            json!({"podSelector": {"matchLabels": {"role": "client"}},
                "policyTypes": ["Egress"]}),
        ),
    );
    eventually(&platform, &kubectl, "client", &dns, false);
    assert!(
        !succeeds(&kubectl, "client", &web),
        "egress deny blocks the web too"
    );

    // ... until a policy allows kube-dns; the web stays blocked.
    apply(
        &kubectl,
        &policy(
            "allow-dns",
            json!({"podSelector": {"matchLabels": {"role": "client"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"namespaceSelector": {"matchLabels":
                        {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}),
        ),
    );
    eventually(&platform, &kubectl, "client", &dns, true);
    assert!(!succeeds(&kubectl, "client", &web), "only DNS re-opened");

    // The agent's metrics count the policies (fetched from a pod: the node's own
    // address is not behind the forward hook).
    let host_ip = kubectl.json(&["get", "pod", "other"])["status"]["hostIP"]
        .as_str()
        .unwrap()
        .to_string();
    let line = format!("/bin/busybox timeout 3 wget -q -O - http://{host_ip}:10249/metrics");
    let metrics = kubectl.ok(&["exec", "other", "--", "sh", "-c", &line]);
    assert!(
        metrics.contains("korvet_node_netpol_policies 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("korvet_node_netpol_sync_duration_seconds_count"),
        "{metrics}"
    );

    // Deleting the policies opens everything again.
    kubectl.ok(&["delete", "networkpolicy", "--all"]);
    eventually(&platform, &kubectl, "client", &web, true);
    eventually(&platform, &kubectl, "other", &web, true);
}
