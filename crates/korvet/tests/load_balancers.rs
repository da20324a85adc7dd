//! `type: LoadBalancer` Services on a real two-zone cluster: an external address
//! answers from the host and from a client on the external network, with the client's
//! own address kept (`externalTrafficPolicy: Local`), PROXY protocol v1 and v2 reach a
//! backend that prints what it got, TLS is terminated at the load balancer, the standby
//! instance takes over after `kill -9` of the active one, bad requests get a clear Event
//! and no load balancer, and deleting the Service and the cluster leaves nothing behind.
//! Runs as root.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use korvet_test_support::netns::ExternalClient;
use korvet_test_support::platform::TestPlatform;
use korvet_test_support::{eventually, Kubectl};
use serde_json::{json, Value};

fn apply(kubectl: &Kubectl, object: &Value) {
    kubectl.ok_with_input(&["apply", "-f", "-"], &object.to_string());
}

fn deployment(name: &str, image: &str, command: Option<&str>, replicas: u32) -> Value {
    let mut container = json!({"name": "main", "image": image, "imagePullPolicy": "IfNotPresent"});
    if let Some(command) = command {
        container["command"] = json!(["sh", "-c", command]);
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]},
            },
        },
    })
}

fn load_balancer(name: &str, app: &str, port: u16, target: u16, extra: Value) -> Value {
    let mut service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": app},
            "ports": [{"name": "main", "port": port, "targetPort": target}],
        },
    });
    merge(&mut service, extra);
    service
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, value) => *slot = value,
    }
}

/// The external address of a Service, once the platform has given it one.
fn ingress_ip(kubectl: &Kubectl, service: &str, seconds: u64) -> Ipv4Addr {
    eventually(seconds, || {
        let svc = kubectl.json(&["get", "service", service]);
        match svc["status"]["loadBalancer"]["ingress"][0]["ip"].as_str() {
            Some(ip) => ip.parse::<Ipv4Addr>().map_err(|e| e.to_string()),
            None => Err(format!("no ingress yet: {}", svc["status"])),
        }
    })
}

/// What one TCP exchange with `address` read: send `request`, read to the end.
fn exchange(address: SocketAddr, request: &[u8]) -> Result<Vec<u8>, String> {
    let mut conn = TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map_err(|e| format!("{address}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    conn.write_all(request).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    conn.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn http_get(address: SocketAddr, path: &str) -> Result<String, String> {
    http_get_host(address, "x", path)
}

fn http_get_host(address: SocketAddr, host: &str, path: &str) -> Result<String, String> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    let reply = exchange(address, request.as_bytes())?;
    let text = String::from_utf8_lossy(&reply).replace("\r\n", "\n");
    // busybox httpd ends a CGI's own header lines with a bare newline.
    match text.split_once("\n\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.trim().to_string())
        }
        _ => Err(format!("unexpected answer: {text}")),
    }
}

/// `http_get` from the external client's namespace.
fn client_get(
    client: &ExternalClient,
    address: SocketAddr,
    path: &'static str,
) -> Result<String, String> {
    client.netns.enter(move || http_get(address, path))
}

fn events_of(kubectl: &Kubectl, service: &str) -> String {
    kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={service}"),
    ])
}

#[test]
fn load_balancers_serve_fail_over_and_clean_up() {
    let platform = TestPlatform::start(Path::new(env!("CARGO_BIN_EXE_korvet")));
    platform.ok(&[
        "cluster",
        "create",
        "lbs",
        "--pool",
        "a:small:zone-a:1",
        "--pool",
        "b:small:zone-b:1",
        "--wait",
    ]);
    let kubectl = platform.cluster_kubectl("lbs");
    let registry = platform.registry_url();
    let registry = registry.trim_start_matches("https://");
    let web_image = format!("{registry}/demo-web:latest");
    let busybox = format!("{registry}/busybox:latest");
    apply(&kubectl, &deployment("web", &web_image, None, 2));
    // Prints the first line it gets (a PROXY v1 header), or the first 28 bytes (v2 over
    // IPv4), back to the client.
    apply(
        &kubectl,
        &deployment(
            "echo",
            &busybox,
            Some("nc -ll -p 9001 -e head -n 1 & exec nc -ll -p 9002 -e head -c 28"),
            1,
        ),
    );
    let started = Instant::now();
    apply(&kubectl, &load_balancer("web", "web", 80, 8080, json!({})));
    let vip = ingress_ip(&kubectl, "web", 90);
    eprintln!("web: external address {vip} after {:?}", started.elapsed());

    // From the host.
    let web = SocketAddr::from((vip, 80));
    let pod = eventually(60, || http_get(web, "/cgi-bin/hostname"));
    assert!(pod.starts_with("web-"), "{pod}");
    // From a client on the external network.
    let client = ExternalClient::new("a");
    let seen = eventually(30, || client_get(&client, web, "/cgi-bin/hostname"));
    assert!(seen.starts_with("web-"), "{seen}");

    // The platform's view: korvet lb and the LoadBalancer object.
    let listed = platform.ok(&["lb", "list", "lbs"]);
    assert!(
        listed.contains("default/web") && listed.contains(&vip.to_string()),
        "{listed}"
    );
    let lb: Value =
        serde_json::from_str(&platform.ok(&["lb", "get", "lbs", "default/web", "-o", "json"]))
            .unwrap();
    assert_eq!(lb["status"]["ipMode"], "VIP");
    assert_eq!(lb["status"]["instances"].as_array().map(Vec::len), Some(2));
    let zones: Vec<&str> = lb["status"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["zone"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(zones, ["zone-a", "zone-b"], "one instance per zone");
    let service = kubectl.json(&["get", "service", "web"]);
    assert!(
        service["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("service.kubernetes.io/load-balancer-cleanup"))),
        "{service}"
    );
    assert!(events_of(&kubectl, "web").contains("EnsuredLoadBalancer"));

    // externalTrafficPolicy: Local keeps the client's address and skips the node
    // without an endpoint (one replica: one node has it).
    apply(&kubectl, &deployment("solo", &web_image, None, 1));
    apply(
        &kubectl,
        &load_balancer(
            "solo",
            "solo",
            80,
            8080,
            json!({"spec": {"externalTrafficPolicy": "Local"}}),
        ),
    );
    let solo = SocketAddr::from((ingress_ip(&kubectl, "solo", 90), 80));
    // httpd listens dual-stack: it shows the address IPv4-mapped.
    let expected = [
        format!("client={} ", client.address),
        format!("client=[::ffff:{}] ", client.address),
    ];
    eventually(60, || {
        let answers: Vec<Result<String, String>> = (0..8)
            .map(|_| client_get(&client, solo, "/cgi-bin/client"))
            .collect();
        let kept = |t: &String| expected.iter().any(|e| t.starts_with(e.as_str()));
        match answers.iter().all(|a| a.as_ref().is_ok_and(kept)) {
            true => Ok(()),
            false => Err(format!("{answers:?}")),
        }
    });

    // PROXY protocol v1 and v2 to a backend that prints what it received.
    for (name, version, target) in [("pp1", "v1", 9001), ("pp2", "v2", 9002)] {
        apply(
            &kubectl,
            &load_balancer(
                name,
                "echo",
                7000,
                target,
                json!({"metadata": {"annotations": {"loadbalancer.korvet.io/proxy-protocol": version}}}),
            ),
        );
        let address = SocketAddr::from((ingress_ip(&kubectl, name, 90), 7000));
        let header = eventually(60, || {
            let got = client.netns.enter(move || exchange(address, b""))?;
            korvet_lb::proxy_protocol::parse(&got)
                .map(|(h, _)| h)
                .map_err(|e| format!("{e}: {got:?}"))
        });
        let (source, destination) = header.addresses.expect("addresses in the header");
        assert_eq!(source.ip(), client.address, "{version}");
        assert_eq!(destination, address, "{version}");
        let lb: Value = serde_json::from_str(&platform.ok(&[
            "lb",
            "get",
            "lbs",
            &format!("default/{name}"),
            "-o",
            "json",
        ]))
        .unwrap();
        assert_eq!(lb["status"]["ipMode"], "Proxy");
        let svc = kubectl.json(&["get", "service", name]);
        assert_eq!(
            svc["status"]["loadBalancer"]["ingress"][0]["ipMode"],
            "Proxy"
        );
    }

    // TLS terminated at the load balancer with a Secret of the cluster.
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["web.example".into()]).unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    apply(
        &kubectl,
        &load_balancer(
            "secure",
            "web",
            443,
            8080,
            json!({"metadata": {"annotations": {"loadbalancer.korvet.io/tls-secret": "web-tls"}}}),
        ),
    );
    // Without the Secret: no address, and the Service says why.
    eventually(60, || {
        let events = events_of(&kubectl, "secure");
        match events.contains("TLS Secret default/web-tls does not exist") {
            true => Ok(()),
            false => Err(events),
        }
    });
    let pending = kubectl.json(&["get", "service", "secure"]);
    assert!(
        pending["status"]["loadBalancer"]["ingress"].is_null(),
        "{pending}"
    );
    kubectl.ok(&[
        "create",
        "secret",
        "tls",
        "web-tls",
        &format!("--cert={}", crt.display()),
        &format!("--key={}", key.display()),
    ]);
    // The controller retries on its own.
    let secure = SocketAddr::from((ingress_ip(&kubectl, "secure", 90), 443));
    let answer = eventually(60, || tls_get(secure, &crt));
    assert!(answer.contains("web-"), "{answer}");

    // Ingress: class korvet is the default; two hosts on one address, TLS for one of
    // them by SNI, the client's address in X-Forwarded-For.
    let class = kubectl.json(&["get", "ingressclass", "korvet"]);
    assert_eq!(
        class["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"],
        "true"
    );
    apply(
        &kubectl,
        &json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "sites"},
            "spec": {
                "tls": [{"hosts": ["web.example"], "secretName": "web-tls"}],
                "rules": [
                    {"host": "web.example", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}},
                    {"host": "solo.example", "http": {"paths": [
                        {"path": "/cgi-bin", "pathType": "Prefix", "backend": {"service": {"name": "solo", "port": {"number": 80}}}}]}},
                ],
            },
        }),
    );
    let ingress_address = eventually(90, || {
        let ingress = kubectl.json(&["get", "ingress", "sites"]);
        match ingress["status"]["loadBalancer"]["ingress"][0]["ip"].as_str() {
            Some(ip) => ip.parse::<Ipv4Addr>().map_err(|e| e.to_string()),
            None => {
                let log = platform.server_log();
                let warnings: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .collect();
                let ingress_lines: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("ngress") || l.contains("service controller"))
                    .collect();
                Err(format!(
                    "no address yet: {}\nplatform warnings:\n{}\n{}\n{}",
                    ingress["status"],
                    warnings[warnings.len().saturating_sub(15)..].join("\n"),
                    ingress_lines.join("\n"),
                    platform.kubectl().ok(&[
                        "get",
                        "loadbalancers.korvet.io",
                        "lbs.ingress",
                        "-o",
                        "yaml"
                    ])
                ))
            }
        }
    });
    let plain = SocketAddr::from((ingress_address, 80));
    let by_host = eventually(60, || {
        http_get_host(plain, "web.example", "/cgi-bin/hostname")
    });
    assert!(by_host.starts_with("web-"), "{by_host}");
    let other_host = eventually(60, || {
        http_get_host(plain, "solo.example", "/cgi-bin/hostname")
    });
    assert!(other_host.starts_with("solo-"), "{other_host}");
    let unknown = http_get_host(plain, "nobody.example", "/").unwrap_err();
    assert!(unknown.contains(" 404 "), "{unknown}");
    let forwarded = client
        .netns
        .enter(move || http_get_host(plain, "web.example", "/cgi-bin/client"))
        .unwrap();
    assert!(
        forwarded.contains(&format!("forwarded={}", client.address)),
        "{forwarded}"
    );
    let tls_by_sni = eventually(60, || {
        tls_get(SocketAddr::from((ingress_address, 443)), &crt)
    });
    assert!(tls_by_sni.contains("web-"), "{tls_by_sni}");
    let ingress_lb = platform.ok(&["lb", "list", "lbs"]);
    assert!(ingress_lb.contains("(ingress)"), "{ingress_lb}");

    // Bad requests: refused by the API, or an Event and no load balancer.
    let range = kubectl.run_with_input(
        &["apply", "-f", "-"],
        &load_balancer(
            "ranged",
            "web",
            80,
            8080,
            json!({"spec": {"loadBalancerSourceRanges": ["10.0.0.0/33"]}}),
        )
        .to_string(),
    );
    assert!(
        !range.ok && range.stderr.contains("spec.LoadBalancerSourceRanges[0]"),
        "{}",
        range.stderr
    );
    apply(
        &kubectl,
        &load_balancer(
            "badproxy",
            "web",
            80,
            8080,
            json!({"metadata": {"annotations": {"loadbalancer.korvet.io/proxy-protocol": "v3"}}}),
        ),
    );
    eventually(60, || {
        let events = events_of(&kubectl, "badproxy");
        match events.contains("unknown PROXY protocol version") {
            true => Ok(()),
            false => Err(events),
        }
    });
    let none = platform.cli(&["lb", "get", "lbs", "default/badproxy"]);
    assert!(
        !none.ok,
        "no load balancer for a Service with a bad annotation"
    );
    apply(
        &kubectl,
        &load_balancer(
            "copycat",
            "web",
            80,
            8080,
            json!({"metadata": {"annotations": {"loadbalancer.korvet.io/address": vip.to_string()}}}),
        ),
    );
    eventually(60, || {
        let events = events_of(&kubectl, "copycat");
        match events.contains("is taken") {
            true => Ok(()),
            false => Err(events),
        }
    });

    // Failover: kill -9 the active instance while a client keeps asking.
    let lb: Value =
        serde_json::from_str(&platform.ok(&["lb", "get", "lbs", "default/web", "-o", "json"]))
            .unwrap();
    let active = lb["status"]["activeInstance"].as_str().unwrap().to_string();
    let pids = String::from_utf8(
        Command::new("ip")
            .args(["netns", "pids", &active])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!pids.trim().is_empty(), "no process in {active}");
    for pid in pids.split_whitespace() {
        Command::new("kill").args(["-9", pid]).status().unwrap();
    }
    let killed = Instant::now();
    let answered = eventually(30, || client_get(&client, web, "/cgi-bin/hostname"));
    eprintln!(
        "answers again {:?} after kill -9: {answered}",
        killed.elapsed()
    );
    let after = eventually(30, || {
        let lb: Value =
            serde_json::from_str(&platform.ok(&["lb", "get", "lbs", "default/web", "-o", "json"]))
                .unwrap();
        match lb["status"]["activeInstance"].as_str() {
            Some(now) if now != active => Ok(lb),
            other => Err(format!("still {other:?}")),
        }
    });
    assert!(after["status"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["running"] == true || i["name"] == json!(active)));
    let lb_events = platform.kubectl().ok(&["get", "events"]);
    assert!(lb_events.contains("FailedOver"), "{lb_events}");
    // The killed instance comes back as standby: the address stays where it is.
    eventually(30, || {
        let lb: Value =
            serde_json::from_str(&platform.ok(&["lb", "get", "lbs", "default/web", "-o", "json"]))
                .unwrap();
        let back = lb["status"]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == json!(active) && i["role"] == "standby" && i["running"] == true);
        match back && lb["status"]["activeInstance"] != json!(active) {
            true => Ok(()),
            false => Err(format!("{}", lb["status"])),
        }
    });
    for _ in 0..5 {
        client_get(&client, web, "/cgi-bin/hostname").unwrap();
    }

    // A stopped cluster's instances stop too; starting it brings the same address back.
    platform.ok(&["cluster", "stop", "lbs", "--wait"]);
    for instance in after["status"]["instances"].as_array().unwrap() {
        let name = instance["name"].as_str().unwrap();
        let pids = Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .unwrap();
        assert!(
            pids.stdout.is_empty(),
            "{name} still runs after the cluster stopped"
        );
    }
    platform.ok(&["cluster", "start", "lbs", "--wait"]);
    let again = eventually(120, || client_get(&client, web, "/cgi-bin/hostname"));
    assert!(again.starts_with("web-"), "{again}");
    assert_eq!(ingress_ip(&kubectl, "web", 10), vip);

    // Deleting a Service frees its address; deleting the cluster leaves nothing.
    kubectl.ok(&["delete", "service", "pp1", "--wait=true", "--timeout=60s"]);
    eventually(30, || {
        let run = platform.cli(&["lb", "get", "lbs", "default/pp1"]);
        match run.ok {
            false => Ok(()),
            true => Err("the load balancer of pp1 is still there".into()),
        }
    });
    let instances: Vec<String> = after["status"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    let claims_before: Vec<String> = std::fs::read_dir("/run/korvet/claims")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(claims_before.iter().any(|c| c == &format!("ext-{vip}")));
    platform.ok(&["cluster", "delete", "lbs", "--wait"]);
    let namespaces = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for instance in &instances {
        assert!(
            !namespaces.contains(instance.as_str()),
            "{instance} left: {namespaces}"
        );
    }
    assert!(
        !Path::new(&format!("/run/korvet/claims/ext-{vip}")).exists(),
        "the address is still claimed"
    );
    let remaining = platform.kubectl().json(&["get", "loadbalancers.korvet.io"]);
    assert_eq!(
        remaining["items"].as_array().map(Vec::len),
        Some(0),
        "{remaining}"
    );
}

/// One HTTPS GET of `/cgi-bin/hostname` through `address`, trusting `cert`.
fn tls_get(address: SocketAddr, cert: &Path) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(cert).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("web.example").map_err(|e| e.to_string())?;
    let mut session =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut tcp =
        TcpStream::connect_timeout(&address, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut stream = rustls::Stream::new(&mut session, &mut tcp);
    stream
        .write_all(b"GET /cgi-bin/hostname HTTP/1.0\r\nHost: web.example\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    match stream.read_to_string(&mut text) {
        Ok(_) => Ok(text),
        Err(_) if text.contains(" 200 ") => Ok(text),
        Err(e) => Err(format!("{e}: {text}")),
    }
}
