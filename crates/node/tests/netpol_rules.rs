//! Network policy rules on real nftables in real network namespaces, without a cluster:
//! a throwaway "node" namespace with a bridge and three "pod" namespaces on veths,
//! listeners in the pods, and rendered models loaded into the node namespace. Runs as
//! root; every namespace is removed by a Drop guard (leftovers of a crashed run are
//! removed by the next one).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use korvet_node::netpol::{model, rules};
use korvet_node::nft;
use serde_json::{json, Value};

const NODE: &str = "n1";
const PREFIX: &str = "knp-";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes namespaces of earlier runs whose test process is gone.
fn remove_leftovers() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// A node namespace with bridge `br0` (10.66.N.1/24) and pods a, b, c at .11, .12, .13.
struct Lab {
    node: String,
    pods: Vec<String>,
    subnet: u8,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

static LABS: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    fn new() -> Lab {
        remove_leftovers();
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let base = format!("{PREFIX}{}-{n}", std::process::id());
        let mut lab = Lab {
            node: format!("{base}-node"),
            pods: Vec::new(),
            subnet: n as u8,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        ip(&["netns", "add", &lab.node]);
        let node = lab.node.clone();
        ip(&["-n", &node, "link", "set", "lo", "up"]);
        ip(&["-n", &node, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &node,
            "addr",
            "add",
            &format!("10.66.{n}.1/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &node, "link", "set", "br0", "up"]);
        // As the agent does in its machine: bridged traffic through the inet hooks.
        let out = Command::new("ip")
            .args(["netns", "exec", &node, "sh", "-c"])
            .arg("echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let pod = format!("{base}-{name}");
            ip(&["netns", "add", &pod]);
            lab.pods.push(pod.clone());
            let veth = format!("v{name}");
            ip(&[
                "-n", &node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &pod,
            ]);
            ip(&["-n", &node, "link", "set", &veth, "master", "br0", "up"]);
            ip(&["-n", &pod, "link", "set", "lo", "up"]);
            let address = format!("10.66.{n}.{}/24", 11 + i);
            ip(&["-n", &pod, "addr", "add", &address, "dev", "eth0"]);
            ip(&["-n", &pod, "link", "set", "eth0", "up"]);
            ip(&[
                "-n",
                &pod,
                "route",
                "add",
                "default",
                "via",
                &format!("10.66.{n}.1"),
            ]);
        }
        lab
    }

    fn addr(&self, pod: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 66, self.subnet, 11 + pod as u8)
    }

    fn pod_ns(&self, pod: usize) -> &str {
        &self.pods[pod]
    }

    /// A TCP server in `pod` that answers "ok" to every connection.
    fn tcp_listen(&mut self, pod: usize, port: u16) {
        let listener = in_netns(self.pod_ns(pod), move || {
            TcpListener::bind(("0.0.0.0", port)).unwrap()
        });
        listener.set_nonblocking(true).unwrap();
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(b"ok");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
    }

    /// A UDP server in `pod` that echoes every datagram.
    fn udp_echo(&mut self, pod: usize, port: u16) {
        let socket = in_netns(self.pod_ns(pod), move || {
            UdpSocket::bind(("0.0.0.0", port)).unwrap()
        });
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        }));
    }

    fn tcp(&self, from: usize, to: usize, port: u16) -> bool {
        let target = SocketAddr::from((self.addr(to), port));
        in_netns(self.pod_ns(from), move || {
            let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_millis(400)) else {
                return false;
            };
            s.set_read_timeout(Some(Duration::from_millis(400)))
                .unwrap();
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer == "ok"
        })
    }

    fn udp(&self, from: usize, to: usize, port: u16) -> bool {
        let target = SocketAddr::from((self.addr(to), port));
        in_netns(self.pod_ns(from), move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(400)))
                .unwrap();
            s.send_to(b"query", target).unwrap();
            let mut buf = [0u8; 16];
            matches!(s.recv_from(&mut buf), Ok((5, _)))
        })
    }

    /// Loads the rules of `policies` for pods a, b, c (as `pods()` describes them).
    fn enforce(&self, policies: &[Value], extra: &[Value]) -> model::Model {
        let policies: Vec<NetworkPolicy> = policies
            .iter()
            .map(|p| serde_json::from_value(p.clone()).unwrap())
            .collect();
        let pods: Vec<Pod> = self
            .pod_objects()
            .into_iter()
            .map(|p| serde_json::from_value(p).unwrap())
            .collect();
        let slices: Vec<EndpointSlice> = extra
            .iter()
            .map(|p| serde_json::from_value(p.clone()).unwrap())
            .collect();
        let namespaces: Vec<Namespace> = ["default", "kube-system"]
            .iter()
            .map(|n| {
                serde_json::from_value(json!({"metadata": {"name": n,
                    "labels": {"kubernetes.io/metadata.name": n}}}))
                .unwrap()
            })
            .collect();
        let mut endpoints = model::endpoints_of_pods(&pods);
        endpoints.extend(model::endpoints_of_dns(
            &slices,
            &[("k8s-app".to_string(), "kube-dns".to_string())].into(),
        ));
        let built = model::Model::build(&model::Inputs {
            node_name: NODE,
            policies: &policies,
            namespaces: &namespaces,
            endpoints: &endpoints,
        });
        let ruleset = rules::render(&built);
        nft::apply(Some(&self.node), &ruleset).unwrap_or_else(|e| panic!("{e}\n{ruleset}"));
        built
    }

    /// a: app=web with ports web=80 and metrics=9000; b: role=client; c: role=other.
    fn pod_objects(&self) -> Vec<Value> {
        let labels = [
            json!({"app": "web"}),
            json!({"role": "client"}),
            json!({"role": "other"}),
        ];
        (0..3)
            .map(|i| {
                json!({
                    "metadata": {"name": format!("p{i}"), "namespace": "default",
                        "labels": labels[i]},
                    "spec": {"nodeName": NODE, "containers": [{"name": "c", "ports": [
                        {"name": "web", "containerPort": 80},
                        {"name": "metrics", "containerPort": 9000}]}]},
                    "status": {"phase": "Running", "podIP": self.addr(i).to_string()},
                })
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for name in self.pods.iter().chain(std::iter::once(&self.node)) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Runs `f` on a thread inside network namespace `name` (sockets it makes stay there).
fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

#[test]
fn default_deny_blocks_and_a_pod_selector_reopens_for_the_selected_pods_only() {
    let mut lab = Lab::new();
    lab.tcp_listen(A, 80);
    lab.tcp_listen(B, 80);
    lab.enforce(&[], &[]);
    assert!(
        lab.tcp(B, A, 80) && lab.tcp(C, A, 80),
        "open before any policy"
    );

    let deny = policy(
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    lab.enforce(std::slice::from_ref(&deny), &[]);
    assert!(!lab.tcp(B, A, 80), "default deny blocks b → a");
    assert!(!lab.tcp(C, A, 80), "default deny blocks c → a");
    assert!(
        !lab.tcp(A, B, 80),
        "default deny selects every pod of the namespace"
    );

    let allow = policy(
        "allow-clients",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}),
    );
    let built = lab.enforce(&[deny.clone(), allow], &[]);
    assert_eq!(built.ingress.len(), 3, "{built:?}");
    assert!(lab.tcp(B, A, 80), "role=client reaches app=web");
    assert!(!lab.tcp(C, A, 80), "role=other still blocked");
    assert!(!lab.tcp(A, B, 80), "b is still isolated");

    // The node's own traffic (probes) is not filtered.
    let node_reaches = in_netns(&lab.node.clone(), {
        let target = SocketAddr::from((lab.addr(A), 80));
        move || TcpStream::connect_timeout(&target, Duration::from_millis(400)).is_ok()
    });
    assert!(node_reaches, "the node reaches its pods");

    lab.enforce(&[], &[]);
    assert!(lab.tcp(C, A, 80), "open again once the policies are gone");
}

#[test]
fn port_ranges_and_named_ports() {
    let mut lab = Lab::new();
    for port in [80, 8080, 8200, 9000] {
        lab.tcp_listen(A, port);
    }
    let p = policy(
        "ports",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"ports": [
                {"protocol": "TCP", "port": 8000, "endPort": 8100},
                {"port": "metrics"}]}]}),
    );
    lab.enforce(&[p], &[]);
    assert!(lab.tcp(B, A, 8080), "8080 is in 8000-8100");
    assert!(!lab.tcp(B, A, 8200), "8200 is not");
    assert!(!lab.tcp(B, A, 80), "80 is not named");
    assert!(lab.tcp(C, A, 9000), "named port metrics = 9000");
}

#[test]
fn ip_block_with_except() {
    let mut lab = Lab::new();
    lab.tcp_listen(A, 80);
    let p = policy(
        "block",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"ipBlock": {
                "cidr": format!("10.66.{}.0/24", lab.subnet),
                "except": [format!("{}/32", lab.addr(B))]}}]}]}),
    );
    lab.enforce(&[p], &[]);
    assert!(lab.tcp(C, A, 80), "c is in the block");
    assert!(!lab.tcp(B, A, 80), "b is excepted");
}

#[test]
fn egress_deny_blocks_dns_until_a_policy_allows_kube_dns() {
    let mut lab = Lab::new();
    lab.tcp_listen(A, 80);
    lab.udp_echo(C, 53);
    // Pod c stands in for the cluster DNS server: the kube-dns endpoint address.
    let slice = json!({
        "metadata": {"name": "kube-dns-x", "namespace": "kube-system",
            "labels": {"kubernetes.io/service-name": "kube-dns", "k8s-app": "kube-dns"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [lab.addr(C).to_string()]}],
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                  {"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
    });
    lab.enforce(&[], std::slice::from_ref(&slice));
    assert!(lab.udp(B, C, 53), "DNS open before any policy");

    let deny = policy(
        "deny-egress",
        json!({"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"]}),
    );
    lab.enforce(std::slice::from_ref(&deny), std::slice::from_ref(&slice));
    assert!(!lab.udp(B, C, 53), "egress deny blocks DNS");
    assert!(!lab.tcp(B, A, 80), "egress deny blocks b → a");
    assert!(lab.tcp(C, A, 80), "c is not selected");

    let dns = policy(
        "allow-dns",
        json!({"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {"matchLabels":
                    {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}),
    );
    lab.enforce(&[deny, dns], &[slice]);
    assert!(lab.udp(B, C, 53), "kube-dns allowed");
    assert!(!lab.tcp(B, A, 80), "nothing else");
}

#[test]
fn two_hundred_policies_over_a_thousand_pods() {
    let lab = Lab::new();
    let mut pods = Vec::new();
    let mut namespaces = Vec::new();
    for ns in 0..10 {
        namespaces.push(
            serde_json::from_value::<Namespace>(json!({"metadata": {"name": format!("ns{ns}"),
                "labels": {"team": format!("t{}", ns % 3)}}}))
            .unwrap(),
        );
    }
    for i in 0..1000u32 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("p{i}"), "namespace": format!("ns{}", i % 10),
                "labels": {"app": format!("app{}", i % 50), "role": format!("r{}", i % 7)}},
            // Half of them on this node.
            "spec": {"nodeName": if i % 2 == 0 { NODE } else { "n2" },
                "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running",
                "podIP": Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + i).to_string()},
        }))
        .unwrap();
        pods.push(pod);
    }
    let policies: Vec<NetworkPolicy> = (0..200)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("np{i}"), "namespace": format!("ns{}", i % 10)},
                "spec": {
                    "podSelector": {"matchLabels": {"app": format!("app{}", i % 50)}},
                    "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [
                        {"podSelector": {"matchLabels": {"role": format!("r{}", i % 7)}}},
                        {"namespaceSelector": {"matchLabels": {"team": format!("t{}", i % 3)}},
                         "podSelector": {"matchExpressions": [
                            {"key": "role", "operator": "In", "values": ["r1", "r2"]}]}},
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.0.0/16"]}}],
                        "ports": [{"port": "http"}, {"port": 9000, "endPort": 9100}]}],
                    "egress": [{"to": [{"namespaceSelector": {}}],
                        "ports": [{"port": "http"}, {"protocol": "UDP", "port": 53}]}],
                },
            }))
            .unwrap()
        })
        .collect();
    let started = Instant::now();
    let endpoints = model::endpoints_of_pods(&pods);
    let built = model::Model::build(&model::Inputs {
        node_name: NODE,
        policies: &policies,
        namespaces: &namespaces,
        endpoints: &endpoints,
    });
    let model_time = started.elapsed();
    let started = Instant::now();
    let ruleset = rules::render(&built);
    let render_time = started.elapsed();
    let started = Instant::now();
    nft::apply(Some(&lab.node), &ruleset).unwrap_or_else(|e| panic!("{e}"));
    let apply_time = started.elapsed();
    let started = Instant::now();
    nft::apply(Some(&lab.node), &ruleset).unwrap_or_else(|e| panic!("{e}"));
    let reapply_time = started.elapsed();
    println!(
        "200 policies x 1000 pods (500 local): model {model_time:?}, render {render_time:?} \
         ({} bytes, {} ingress-isolated, {} egress-isolated), nft load {apply_time:?}, \
         replace {reapply_time:?}",
        ruleset.len(),
        built.ingress.len(),
        built.egress.len()
    );
    assert!(!built.ingress.is_empty() && !built.egress.is_empty());
}
