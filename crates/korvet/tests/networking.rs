//! Pod networking and images across nodes, for real: `korvet server` makes clusters
//! whose nodes pull from the platform's registry (trusting its CA), pods on different
//! nodes and zones reach each other by pod IP with their own source addresses, a
//! second cluster with the same pod CIDR stays apart, and deleting the clusters leaves
//! no rule, route table or forwarding sysctl behind. Runs as root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use korvet_test_support::platform::TestPlatform;
use korvet_test_support::Kubectl;
use serde_json::Value;

fn korvet_binary() -> PathBuf {
    korvet_test_support::platform::korvet_binary(env!("CARGO_BIN_EXE_korvet"))
}

fn pod(name: &str, node: &str, container: Value, restart_policy: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    })
}

fn apply(kubectl: &Kubectl, object: &Value) {
    kubectl.ok_with_input(&["apply", "-f", "-"], &object.to_string());
}

/// A demo-web pod from the platform's registry (pulled by the node's containerd).
fn web(registry: &str, name: &str, node: &str) -> Value {
    pod(
        name,
        node,
        serde_json::json!({"name": "web", "image": format!("{registry}/demo-web:latest")}),
        "Always",
    )
}

/// busybox httpd on 8081 whose CGI `/cgi-bin/ip` answers `peer=<client address>`.
fn whoami(name: &str, node: &str) -> Value {
    let script = "mkdir -p /tmp/w/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho peer=$REMOTE_ADDR\\n' > /tmp/w/cgi-bin/ip && chmod +x /tmp/w/cgi-bin/ip && exec httpd -f -p 8081 -h /tmp/w";
    pod(
        name,
        node,
        serde_json::json!({
            "name": "web",
            "image": "korvet.local/busybox:latest",
            "imagePullPolicy": "Never",
            "command": ["sh", "-c", script],
        }),
        "Always",
    )
}

/// A pod that fetches `url` once and exits with wget's status, or fails after 10 s
/// (`timeout`: busybox 1.35 wget crashes with its own `-T`; under a `sh` that stays
/// PID 1 — no exec of a last command — since PID 1 ignores timeout's SIGTERM).
fn client(name: &str, node: &str, url: &str) -> Value {
    pod(
        name,
        node,
        serde_json::json!({
            "name": "get",
            "image": "korvet.local/busybox:latest",
            "imagePullPolicy": "Never",
            "command": ["sh", "-c", format!("/bin/busybox timeout 10 /bin/wget -q -O - {url}; exit $?")],
        }),
        "Never",
    )
}

/// Polls pod `name` until `done` holds; panics after `seconds` with the pod and the
/// agent logs of every machine.
fn wait_pod(
    platform: &TestPlatform,
    kubectl: &Kubectl,
    name: &str,
    seconds: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let run = kubectl.run(&["get", "pod", name, "-o", "json"]);
        let pod: Value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
        if done(&pod) {
            return pod;
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} did not get there in {seconds} s; it is:\n{pod:#}\nagent logs:\n{}",
            platform.agent_log_tails()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn phase_of(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or_default()
}

fn running_ip(platform: &TestPlatform, kubectl: &Kubectl, name: &str) -> String {
    let pod = wait_pod(platform, kubectl, name, 180, |p| {
        phase_of(p) == "Running" && p["status"]["podIP"].is_string()
    });
    pod["status"]["podIP"].as_str().unwrap().to_string()
}

/// Runs a client pod on `node` against `url` and returns its phase (Succeeded or
/// Failed) and output.
fn fetch(
    platform: &TestPlatform,
    kubectl: &Kubectl,
    name: &str,
    node: &str,
    url: &str,
) -> (String, String) {
    apply(kubectl, &client(name, node, url));
    let done = wait_pod(platform, kubectl, name, 90, |p| {
        matches!(phase_of(p), "Succeeded" | "Failed")
    });
    let logs = kubectl.run(&["logs", name]);
    let state = &done["status"]["containerStatuses"][0]["state"];
    let routes: String = ip_out(&["route", "show", "table", "all"])
        .lines()
        .filter(|l| l.contains("10.244.") || l.contains("unreachable"))
        .map(|l| format!("  {l}\n"))
        .collect();
    let nodes = kubectl.run(&["get", "nodes", "-o", "wide"]).stdout;
    let nodes = format!("{nodes}{}", cidr_log(platform));
    (
        phase_of(&done).to_string(),
        format!(
            "{}{}\n(state {state})\nhost pod routes:\n{routes}nodes:\n{nodes}server log:\n{}",
            logs.stdout,
            logs.stderr,
            tail(&platform.server_log(), 30)
        ),
    )
}

/// Node name → (zone, InternalIP, podCIDR), once every node has a pod CIDR.
fn nodes(kubectl: &Kubectl, count: usize) -> Vec<(String, String, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = kubectl.json(&["get", "nodes"]);
        let found: Vec<_> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| {
                let ip = korvet_test_support::internal_ip(n)?;
                Some((
                    n["metadata"]["name"].as_str()?.to_string(),
                    n["metadata"]["labels"]["topology.kubernetes.io/zone"]
                        .as_str()?
                        .to_string(),
                    ip,
                    n["spec"]["podCIDR"].as_str()?.to_string(),
                ))
            })
            .collect();
        if found.len() == count {
            return found;
        }
        assert!(Instant::now() < deadline, "nodes without podCIDR: {list:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The network index of cluster `default/NAME` in the provider's records.
fn network_index(platform: &TestPlatform, name: &str) -> u32 {
    let path = platform
        .data_dir()
        .join(format!("provider/networks/default.{name}.json"));
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    record["network"]["index"].as_u64().unwrap() as u32
}

/// Pod CIDR assignments and uses, from the control planes' and agents' logs.
fn cidr_log(platform: &TestPlatform) -> String {
    fn walk(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for line in text.lines().filter(|l| {
                    l.contains("pod CIDR") || l.contains("pod_cidr") || l.contains("podCIDR")
                }) {
                    out.push_str(&format!("{}: {line}\n", path.display()));
                }
            }
        }
    }
    let mut out = String::new();
    walk(&platform.data_dir().join("clusters"), &mut out);
    walk(&platform.data_dir().join("provider/machines"), &mut out);
    out
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn ip_out(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Routing state Korvet made for network `n` that is still there.
fn routing_leftovers(n: u32) -> Vec<String> {
    let table = (1000 + n).to_string();
    let mut found = Vec::new();
    let rules = ip_out(&["rule", "show", "table", &table]);
    if !rules.trim().is_empty() {
        found.push(format!("rules {rules}"));
    }
    let routes = ip_out(&["route", "show", "table", &table]);
    if !routes.trim().is_empty() {
        found.push(format!("routes {routes}"));
    }
    for seg in ["cp", "za", "zb", "zc"] {
        let sysctl = format!("/proc/sys/net/ipv4/conf/korvet{n}-{seg}");
        if Path::new(&sysctl).exists() {
            found.push(sysctl);
        }
    }
    found
}

fn wait_cluster_nodes(platform: &TestPlatform, name: &str, nodes: &str) {
    platform.wait_cluster(name, 240, |c| {
        c["status"]["phase"] == "Running" && c["status"]["nodes"] == nodes
    });
}

#[test]
fn pods_reach_pods_on_other_nodes_and_zones_and_clusters_stay_apart() {
    let platform = TestPlatform::start(&korvet_binary());
    let registry = platform.registry_url();
    let registry = registry.trim_start_matches("https://");

    platform.ok(&[
        "cluster",
        "create",
        "net1",
        "--pool",
        "a:small:zone-a:2",
        "--wait",
    ]);
    // A pool added to the running cluster: its node's pod CIDR is routed too.
    platform.ok(&["nodepool", "add", "net1", "b", "--zone", "zone-b"]);
    wait_cluster_nodes(&platform, "net1", "3/3");
    let k1 = platform.cluster_kubectl("net1");
    let mut found = nodes(&k1, 3);
    found.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    let names: Vec<&str> = found.iter().map(|n| n.0.as_str()).collect();
    let zones: Vec<&str> = found.iter().map(|n| n.1.as_str()).collect();
    assert_eq!(zones, ["zone-a", "zone-a", "zone-b"], "{found:?}");
    let (a1, a2, b1) = (names[0], names[1], names[2]);

    // demo-web from the platform registry on every node.
    for (i, node) in names.iter().enumerate() {
        apply(&k1, &web(registry, &format!("web{i}"), node));
    }
    let ips: Vec<String> = (0..3)
        .map(|i| running_ip(&platform, &k1, &format!("web{i}")))
        .collect();
    for ((_, _, _, cidr), ip) in found.iter().zip(&ips) {
        let net: ipnet::Ipv4Net = cidr.parse().unwrap();
        assert!(
            net.contains(&ip.parse::<std::net::Ipv4Addr>().unwrap()),
            "{ip} in {cidr}: {found:?}\n{}",
            cidr_log(&platform)
        );
    }

    // Across zones both ways, and within a zone.
    for (client_name, from, to) in [
        ("a1-to-b1", a1, 2),
        ("b1-to-a1", b1, 0),
        ("a1-to-a2", a1, 1),
        ("a2-to-b1", a2, 2),
    ] {
        let (phase, body) = fetch(
            &platform,
            &k1,
            client_name,
            from,
            &format!("http://{}:8080/", ips[to]),
        );
        assert_eq!(phase, "Succeeded", "{client_name}: {body}");
        assert!(
            !body.trim().is_empty(),
            "{client_name}: demo-web answered nothing"
        );
    }

    // No NAT: a server on another node (in either zone) sees the client pod's address.
    for (i, node) in [(1, a2), (2, b1)] {
        apply(&k1, &whoami(&format!("whoami{i}"), node));
        let ip = running_ip(&platform, &k1, &format!("whoami{i}"));
        let client_name = format!("from-a1-to-whoami{i}");
        let url = format!("http://{ip}:8081/cgi-bin/ip");
        let (phase, body) = fetch(&platform, &k1, &client_name, a1, &url);
        assert_eq!(phase, "Succeeded", "{client_name}: {body}");
        let client_ip = k1.json(&["get", "pod", &client_name])["status"]["podIP"]
            .as_str()
            .unwrap()
            .to_string();
        // httpd listens on IPv6 too: IPv4 peers come as `[::ffff:A.B.C.D]`.
        let peer = body
            .lines()
            .find_map(|l| l.strip_prefix("peer="))
            .unwrap_or_default()
            .trim_start_matches("[::ffff:")
            .trim_end_matches(']');
        assert!(
            peer == client_ip,
            "{client_name}: the server should have seen {client_ip}: {body}"
        );
    }

    // A second cluster with the same pod CIDR works at the same time ...
    platform.ok(&[
        "cluster",
        "create",
        "net2",
        "--pool",
        "w:small:zone-b:1",
        "--wait",
    ]);
    let k2 = platform.cluster_kubectl("net2");
    let other = nodes(&k2, 1);
    let n2 = other[0].0.clone();
    apply(&k2, &web(registry, "web", &n2));
    let own_ip = running_ip(&platform, &k2, "web");
    let (phase, body) = fetch(
        &platform,
        &k2,
        "own",
        &n2,
        &format!("http://{own_ip}:8080/"),
    );
    assert_eq!(phase, "Succeeded", "{body}");
    // ... and cannot reach the first cluster's pods (not one that shares its pod CIDR,
    // nor one outside it).
    let foreign = ips
        .iter()
        .find(|ip| {
            let net: ipnet::Ipv4Net = other[0].3.parse().unwrap();
            !net.contains(&ip.parse::<std::net::Ipv4Addr>().unwrap())
        })
        .unwrap();
    let (phase, body) = fetch(
        &platform,
        &k2,
        "foreign",
        &n2,
        &format!("http://{foreign}:8080/"),
    );
    assert_eq!(phase, "Failed", "net2 reached net1's pod {foreign}: {body}");
    if !ips.contains(&own_ip) {
        let (phase, body) = fetch(
            &platform,
            &k1,
            "back",
            a1,
            &format!("http://{own_ip}:8080/"),
        );
        assert_eq!(phase, "Failed", "net1 reached net2's pod {own_ip}: {body}");
    }
    // Nor the other cluster's machines: net2's node metrics answer its own pods only.
    let metrics = format!("http://{}:10249/metrics", other[0].2);
    let (phase, body) = fetch(&platform, &k2, "own-node", &n2, &metrics);
    assert_eq!(phase, "Succeeded", "{body}");
    let (phase, _) = fetch(&platform, &k1, "other-node", b1, &metrics);
    assert_eq!(phase, "Failed", "net1 reached net2's node {metrics}");

    // Deleting the clusters removes their routing.
    let (i1, i2) = (
        network_index(&platform, "net1"),
        network_index(&platform, "net2"),
    );
    assert!(
        !routing_leftovers(i1).is_empty(),
        "net1 has routing while it runs"
    );
    for name in ["net1", "net2"] {
        platform.ok(&["cluster", "delete", name]);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left: Vec<String> = [i1, i2].into_iter().flat_map(routing_leftovers).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deleting the clusters left: {left:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    assert_eq!(forward.trim(), "0", "global forwarding stays off");
}

#[test]
fn private_repositories_pull_with_an_image_pull_secret_only() {
    let platform = TestPlatform::start(&korvet_binary());
    let registry = platform.registry_url();
    let registry = registry.trim_start_matches("https://").to_string();
    let (kubectl, node) = platform.one_node_cluster("pulls");

    // A private copy of demo-web: its repository directory with the private marker
    // (blobs are shared by digest).
    let repos = platform.data_dir().join("registry/repositories");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !repos.join("demo-web/_manifests/tags/latest").exists() {
        assert!(Instant::now() < deadline, "demo-web was never built");
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(repos.join("demo-web"))
        .arg(repos.join("private-web"))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(repos.join("private-web/_private"), "private\n").unwrap();

    // A management API token as the registry password.
    let admin = platform.kubectl();
    admin.ok(&["create", "serviceaccount", "puller"]);
    let token = admin.ok(&["create", "token", "puller"]).trim().to_string();
    kubectl.ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server={registry}"),
        "--docker-username=puller",
        &format!("--docker-password={token}"),
    ]);
    let image = format!("{registry}/private-web:latest");
    let mut with = pod(
        "with-secret",
        &node,
        serde_json::json!({"name": "web", "image": image}),
        "Always",
    );
    with["spec"]["imagePullSecrets"] = serde_json::json!([{"name": "regcred"}]);
    apply(&kubectl, &with);
    apply(
        &kubectl,
        &pod(
            "without-secret",
            &node,
            serde_json::json!({"name": "web", "image": image}),
            "Always",
        ),
    );
    apply(
        &kubectl,
        &pod(
            "never",
            &node,
            serde_json::json!({"name": "web", "image": format!("{registry}/demo-web:absent"), "imagePullPolicy": "Never"}),
            "Always",
        ),
    );

    let ip = running_ip(&platform, &kubectl, "with-secret");
    let (phase, body) = fetch(
        &platform,
        &kubectl,
        "get",
        &node,
        &format!("http://{ip}:8080/"),
    );
    assert_eq!(phase, "Succeeded", "{body}");

    // The registry's refusal reaches the pod's status (the back-off repeats it).
    let refused = wait_pod(&platform, &kubectl, "without-secret", 90, |p| {
        let reason = &p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
        reason == "ErrImagePull" || reason == "ImagePullBackOff"
    });
    let message = refused["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("401") || message.to_lowercase().contains("unauthorized"),
        "{refused:#}"
    );
    assert_ne!(phase_of(&refused), "Running");

    let never = wait_pod(&platform, &kubectl, "never", 60, |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImageNeverPull"
    });
    assert!(
        never["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("pull policy of Never"))
    );
}
