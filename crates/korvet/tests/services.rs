//! Services through the node agents' service proxy on a real two-zone cluster: a
//! Deployment of the demo web app behind a ClusterIP answers by name from a pod on the
//! other node, spread over every ready replica (and never from a pod failing readiness), scaling changes
//! which pods answer, a NodePort answers on every node's address from the host, a pod
//! reaches itself through its own Service, the cluster DNS answers on its ClusterIP,
//! and externalTrafficPolicy: Local has its health-check node port. Runs as root.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use korvet_test_support::platform::{korvet_binary, TestPlatform};
use korvet_test_support::Kubectl;
use serde_json::{json, Value};

/// busybox httpd on 8080 answering its hostname at `/cgi-bin/hostname`, as demo-web does.
const SERVE: &str = "mkdir -p /tmp/w/cgi-bin && hostname > /tmp/w/index.html && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nhostname\\n' > /tmp/w/cgi-bin/hostname && chmod +x /tmp/w/cgi-bin/hostname && exec httpd -f -p 8080 -h /tmp/w";
/// Which replica answers.
const HOSTNAME: &str = "/cgi-bin/hostname";

fn container(probe: Value) -> Value {
    json!({
        "name": "web", "image": "korvet.local/busybox:latest", "imagePullPolicy": "Never",
        "command": ["sh", "-c", SERVE],
        "readinessProbe": probe,
    })
}

/// The demo web app from the platform's registry.
fn demo_web(registry_url: &str, probe: Value) -> Value {
    let registry = registry_url.trim_start_matches("https://");
    json!({
        "name": "web", "image": format!("{registry}/demo-web:latest"),
        "readinessProbe": probe,
    })
}

fn apply(kubectl: &Kubectl, object: &Value) {
    kubectl.ok_with_input(&["apply", "-f", "-"], &object.to_string());
}

/// `(name, zone, InternalIP)` of each node, sorted by zone.
fn nodes(kubectl: &Kubectl) -> Vec<(String, String, String)> {
    let list = kubectl.json(&["get", "nodes"]);
    let mut found: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let ip = korvet_test_support::internal_ip(n).expect("InternalIP");
            (
                n["metadata"]["name"].as_str().unwrap().to_string(),
                n["metadata"]["labels"]["topology.kubernetes.io/zone"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                ip,
            )
        })
        .collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

/// Names of the pods of `selector` that are Ready.
fn ready_pods(kubectl: &Kubectl, selector: &str) -> BTreeSet<String> {
    let pods = kubectl.json(&["get", "pods", "-l", selector]);
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn wait_until(what: &str, seconds: u64, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(seconds),
            "{what}: not within {seconds} s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

/// Runs `wget` `count` times inside pod `from`; one answer (or `ERR`) per line.
fn fetch_in(kubectl: &Kubectl, from: &str, url: &str, count: usize) -> Vec<String> {
    let script = format!(
        "for i in $(seq {count}); do /bin/busybox timeout 5 /bin/wget -q -O - {url} || echo ERR; done"
    );
    let run = kubectl.run(&["exec", from, "--", "sh", "-c", &script]);
    run.stdout.lines().map(|l| l.trim().to_string()).collect()
}

/// One HTTP GET from the test's (host) namespace; the body, or the error.
fn http_get(address: &str, path: &str) -> Result<(u16, String), String> {
    let mut conn = TcpStream::connect_timeout(
        &address.parse().map_err(|e| format!("{address}: {e}"))?,
        Duration::from_secs(3),
    )
    .map_err(|e| format!("{address}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    conn.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // A CGI's own header lines (busybox httpd passes them on) end with bare newlines.
    let body = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .map_or("", |(_, body)| body)
        .trim()
        .to_string();
    Ok((status, body))
}

/// The proxy tables of this platform's machines (every `korvet-*` netns; a test runs
/// alone on its platform) and the agents' proxy log lines, for failure messages.
fn agent_logs(platform: &TestPlatform) -> String {
    let mut out = String::new();
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let ns = line.split(' ').next().unwrap_or_default();
        if !ns.starts_with("korvet-") {
            continue;
        }
        let table = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "nft",
                "list",
                "table",
                "ip",
                "korvet-proxy",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&table.stdout).into_owned()
            + &String::from_utf8_lossy(&table.stderr);
        out.push_str(&format!(
            "--- nft in {ns}\n{}\n",
            &text[..text.len().min(6000)]
        ));
    }
    out + &agent_log_lines(platform)
}

fn agent_log_lines(platform: &TestPlatform) -> String {
    let machines = platform.data_dir().join("provider/machines");
    let mut out = String::new();
    for entry in std::fs::read_dir(machines).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path().join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("proxy") || l.contains("WARN") || l.contains("rules"))
            .collect();
        let lines = if lines.is_empty() {
            text.lines().collect()
        } else {
            lines
        };
        out.push_str(&format!(
            "--- {}\n{}\n",
            entry.file_name().to_string_lossy(),
            lines[lines.len().saturating_sub(15)..].join("\n")
        ));
    }
    out
}

#[test]
fn services_spread_over_ready_pods_on_every_node() {
    let platform = TestPlatform::start(&korvet_binary(env!("CARGO_BIN_EXE_korvet")));
    platform.ok(&[
        "cluster",
        "create",
        "svc",
        "--pool",
        "w:small:zone-a:1",
        "--pool",
        "v:small:zone-b:1",
        "--wait",
    ]);
    let kubectl = platform.cluster_kubectl("svc");
    let found = nodes(&kubectl);
    assert_eq!(found.len(), 2, "{found:?}");
    let (a, a_ip) = (found[0].0.clone(), found[0].2.clone());
    let (b, b_ip) = (found[1].0.clone(), found[1].2.clone());

    // Three replicas on node a, a pod failing readiness with the same labels, and a
    // client on node b.
    let ready_probe = json!({"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1});
    apply(
        &kubectl,
        &json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"nodeName": a, "terminationGracePeriodSeconds": 1,
                        "containers": [demo_web(&platform.registry_url(), ready_probe.clone())]}}},
        }),
    );
    apply(
        &kubectl,
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "unready", "labels": {"app": "web"}},
            "spec": {"nodeName": a, "terminationGracePeriodSeconds": 1,
                "containers": [container(json!({"exec": {"command": ["false"]}, "periodSeconds": 1}))]},
        }),
    );
    apply(
        &kubectl,
        &json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        }),
    );
    // The hairpin case: a pod alone behind its own Service.
    apply(
        &kubectl,
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "solo", "labels": {"app": "solo"}},
            "spec": {"nodeName": b, "terminationGracePeriodSeconds": 1,
                "containers": [container(ready_probe)]},
        }),
    );
    apply(
        &kubectl,
        &json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "solo"},
            "spec": {"selector": {"app": "solo"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }),
    );
    apply(
        &kubectl,
        &json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "nobody"},
            "spec": {"selector": {"app": "nobody"}, "ports": [{"port": 80}]},
        }),
    );
    apply(
        &kubectl,
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "client"},
            "spec": {"nodeName": b, "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "sh", "image": "korvet.local/busybox:latest",
                    "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]},
        }),
    );
    platform.wait_pod(&kubectl, "client", 90, |p| {
        p["status"]["phase"] == "Running"
    });
    let mut replicas = BTreeSet::new();
    wait_until("3 ready replicas and solo", 90, || {
        replicas = ready_pods(&kubectl, "app=web");
        replicas.len() == 3 && ready_pods(&kubectl, "app=solo").len() == 1
    });
    assert!(!replicas.contains("unready"), "{replicas:?}");

    // Through the cluster DNS (on its ClusterIP 10.96.0.10) and the web ClusterIP.
    let url = "http://web.default.svc.cluster.local/cgi-bin/hostname";
    let mut answers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        answers.extend(fetch_in(&kubectl, "client", url, 30));
        let seen: BTreeSet<String> = answers.iter().cloned().collect();
        if seen.is_superset(&replicas) {
            break;
        }
        let resolv = kubectl.run(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
        let wget = kubectl.run(&["exec", "client", "--", "wget", "-O", "-", url]);
        assert!(
            Instant::now() < deadline,
            "not every replica of {replicas:?} answers: {answers:?}\n{}\n{}{}\n{}",
            resolv.stdout,
            wget.stdout,
            wget.stderr,
            agent_logs(&platform)
        );
    }
    let seen: BTreeSet<String> = answers.iter().cloned().collect();
    assert!(
        seen.is_subset(
            &replicas
                .iter()
                .cloned()
                .chain(["ERR".to_string()])
                .collect()
        ),
        "only ready replicas answer: {answers:?}\n{}",
        agent_logs(&platform)
    );
    let tail: Vec<String> = fetch_in(&kubectl, "client", url, 15);
    assert!(
        tail.iter().all(|a| replicas.contains(a)),
        "{tail:?}\n{}",
        agent_logs(&platform)
    );
    let dns = kubectl.run(&[
        "exec",
        "client",
        "--",
        "/bin/busybox",
        "nslookup",
        "kubernetes.default.svc.cluster.local",
        "10.96.0.10",
    ]);
    assert!(
        dns.stdout.contains("Address: 10.96.0.1"),
        "{}{}",
        dns.stdout,
        dns.stderr
    );

    // Hairpin: solo reaches itself through its Service.
    let hairpin = fetch_in(
        &kubectl,
        "solo",
        "http://solo.default.svc.cluster.local/cgi-bin/hostname",
        3,
    );
    assert_eq!(
        hairpin,
        ["solo", "solo", "solo"],
        "{}",
        agent_logs(&platform)
    );
    // A Service that selects nothing refuses at once.
    let refused = kubectl.run(&[
        "exec", "client", "--", "sh", "-c",
        "/bin/busybox timeout 5 /bin/wget -q -O - http://nobody.default.svc.cluster.local/; echo rc=$?",
    ]);
    assert!(
        refused.stdout.contains("rc=1") && !refused.stderr.contains("timed out"),
        "{}{}",
        refused.stdout,
        refused.stderr
    );

    // NodePort on every node's address, from the host (masqueraded, so b's address
    // works for pods on a).
    let service = kubectl.json(&["get", "service", "web"]);
    let node_port = service["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    for ip in [&a_ip, &b_ip] {
        let mut seen = BTreeSet::new();
        for _ in 0..20 {
            let (status, body) = http_get(&format!("{ip}:{node_port}"), HOSTNAME)
                .unwrap_or_else(|e| panic!("NodePort on {ip}: {e}\n{}", agent_logs(&platform)));
            assert_eq!(status, 200, "{body}");
            seen.insert(body);
        }
        assert!(seen.is_subset(&replicas), "{seen:?} of {replicas:?}");
        assert!(seen.len() > 1, "NodePort on {ip} spreads: {seen:?}");
    }

    // externalTrafficPolicy: Local: a health-check node port on each node, 200 where the
    // Service has local endpoints.
    apply(
        &kubectl,
        &json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web-local"},
            "spec": {"type": "NodePort", "externalTrafficPolicy": "Local",
                "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }),
    );
    let local = kubectl.json(&["get", "service", "web-local"]);
    let health_port = local["spec"]["healthCheckNodePort"]
        .as_u64()
        .unwrap_or_else(|| panic!("no healthCheckNodePort: {local:#}"));
    let mut on_a = Err(String::new());
    wait_until("health check on node a", 10, || {
        on_a = http_get(&format!("{a_ip}:{health_port}"), "/healthz");
        on_a.as_ref().is_ok_and(|(s, _)| *s == 200)
    });
    let (_, body) = on_a.unwrap();
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["localEndpoints"], 3, "{body}");
    assert_eq!(body["service"]["name"], "web-local", "{body}");
    wait_until("health check 503 on node b", 10, || {
        http_get(&format!("{b_ip}:{health_port}"), "/healthz").is_ok_and(|(s, _)| s == 503)
    });

    scale_to_a_thousand_services(&kubectl, &[&a_ip, &b_ip], &replicas);

    // Scaling to one: only the survivor answers, soon after the API says so.
    kubectl.ok(&["scale", "deployment", "web", "--replicas", "1"]);
    let mut survivor = BTreeSet::new();
    wait_until("one replica left", 30, || {
        survivor = ready_pods(&kubectl, "app=web");
        survivor.len() == 1
    });
    let address = format!("{b_ip}:{node_port}");
    let took = wait_until("only the survivor answers", 10, || {
        (0..10)
            .all(|_| http_get(&address, HOSTNAME).is_ok_and(|(_, body)| survivor.contains(&body)))
    });
    eprintln!(
        "after scaling down, only the survivor answered within {took:?} of the API saying so"
    );
    let answers = fetch_in(&kubectl, "client", url, 10);
    assert!(
        answers.iter().all(|a| survivor.contains(a)),
        "{answers:?} vs {survivor:?}"
    );
}

/// A gauge of the agent's `/metrics` on `ip`.
fn agent_metric(ip: &str, name: &str) -> Option<f64> {
    let (_, body) = http_get(&format!("{ip}:10249"), "/metrics").ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?
        .trim()
        .parse()
        .ok()
}

fn proxy_counts(ip: &str) -> (f64, f64) {
    let get = |name| agent_metric(ip, name).unwrap_or(-1.0);
    (
        get("korvet_node_proxy_rules_services"),
        get("korvet_node_proxy_rules_endpoints"),
    )
}

/// 1,000 Services with 5,000 endpoints (EndpointSlices written as a controller would,
/// pointing at the five httpd pods): every node's proxy takes them all, the last and
/// the first route, and deleting them takes them out again.
fn scale_to_a_thousand_services(kubectl: &Kubectl, node_ips: &[&str], replicas: &BTreeSet<String>) {
    const SERVICES: usize = 1000;
    let pods = kubectl.json(&["get", "pods"]);
    let servers: BTreeSet<String> = replicas
        .iter()
        .cloned()
        .chain(["solo".to_string(), "unready".to_string()])
        .collect();
    let ips: Vec<String> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| servers.contains(p["metadata"]["name"].as_str().unwrap_or_default()))
        .filter_map(|p| p["status"]["podIP"].as_str().map(String::from))
        .collect();
    assert_eq!(ips.len(), 5, "{servers:?}: {ips:?}");
    let before: Vec<(f64, f64)> = node_ips.iter().map(|ip| proxy_counts(ip)).collect();
    assert!(
        before.iter().all(|&(s, e)| s >= 0.0 && e >= 0.0),
        "{before:?}"
    );

    let mut items =
        vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "scale"}})];
    for i in 0..SERVICES {
        let name = format!("svc-{i}");
        items.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "scale"},
            "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        }));
        items.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": "scale",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        }));
    }
    let started = Instant::now();
    kubectl.ok_with_input(
        &["create", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    );
    let created = started.elapsed();
    let expected: Vec<(f64, f64)> = before
        .iter()
        .map(|&(s, e)| (s + SERVICES as f64, e + 5.0 * SERVICES as f64))
        .collect();
    let mut now = Vec::new();
    let took = wait_until("every node's proxy has the 1,000 services", 120, || {
        now = node_ips.iter().map(|ip| proxy_counts(ip)).collect();
        now == expected
    });
    eprintln!(
        "1,000 services x 5 endpoints: created through kubectl in {created:?}, in every node's rules {took:?} later"
    );
    for url in [
        "http://svc-999.scale.svc.cluster.local/cgi-bin/hostname",
        "http://svc-0.scale.svc.cluster.local/cgi-bin/hostname",
    ] {
        let answers = fetch_in(kubectl, "client", url, 10);
        assert!(
            answers.len() == 10 && answers.iter().all(|a| servers.contains(a)),
            "{url}: {answers:?} of {servers:?}"
        );
    }
    kubectl.ok(&["delete", "namespace", "scale", "--timeout=120s"]);
    wait_until("the 1,000 services leave the rules", 120, || {
        now = node_ips.iter().map(|ip| proxy_counts(ip)).collect();
        now == before
    });
}
