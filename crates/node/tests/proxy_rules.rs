//! The service proxy's nft rules in real network namespaces, without a cluster: a
//! "node" namespace with a bridge (as a machine's `cni0`), "pods" in namespaces of
//! their own behind veths, tiny TCP/UDP servers in them that answer with their name,
//! and real connections to ClusterIPs and NodePorts. Runs as root.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use korvet_node::nft;
use korvet_node::proxy::model::{Endpoint, Model, PortKey, Protocol, ServicePort};
use korvet_node::proxy::rules;

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted on drop (also when the test fails).
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        // A crashed earlier run may have left it.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.0];
        all.extend_from_slice(args);
        run(&all);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Runs `f` on a thread that has entered the namespace (only that thread moves).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .unwrap()
}

/// TCP and UDP servers inside a namespace that answer with `name`; stopped on drop.
struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str, name: &str, tcp_port: u16, udp_port: u16) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let (tcp, udp) = in_netns(ns, move || {
            let tcp = TcpListener::bind(("0.0.0.0", tcp_port)).unwrap();
            let udp = UdpSocket::bind(("0.0.0.0", udp_port)).unwrap();
            (tcp, udp)
        });
        tcp.set_nonblocking(true).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut threads = Vec::new();
        let (s, n) = (stop.clone(), name.to_string());
        threads.push(std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.write_all(format!("{n} {}\n", peer.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        }));
        let (s, n) = (stop.clone(), name.to_string());
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(n.as_bytes(), peer);
                }
            }
        }));
        Server { stop, threads }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A node namespace with bridge `br0` at 10.77.<net>.1/24 and pods .2, .11, .12, ...
struct Lab {
    node: Netns,
    pods: Vec<Netns>,
    net: u8,
}

impl Lab {
    fn new(tag: &str, net: u8, pods: usize) -> Lab {
        let pid = std::process::id();
        let node = Netns::new(format!("kpx-{pid}-{tag}-n"));
        let n = node.0.clone();
        node.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
        node.exec(&[
            "ip",
            "addr",
            "add",
            &format!("10.77.{net}.1/24"),
            "dev",
            "br0",
        ]);
        node.exec(&["ip", "link", "set", "br0", "up"]);
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        node.exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
        let mut out = Vec::new();
        for i in 0..pods {
            let pod = Netns::new(format!("kpx-{pid}-{tag}-p{i}"));
            let veth = format!("v{i}");
            run(&[
                "ip", "-n", &n, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                "netns", &pod.0,
            ]);
            node.exec(&["ip", "link", "set", &veth, "master", "br0", "up"]);
            // As the CNI bridge plugin's hairpinMode.
            node.exec(&["bridge", "link", "set", "dev", &veth, "hairpin", "on"]);
            let address = format!("{}/24", Lab::pod_ip_of(net, i));
            pod.exec(&["ip", "addr", "add", &address, "dev", "eth0"]);
            pod.exec(&["ip", "link", "set", "eth0", "up"]);
            pod.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.77.{net}.1"),
            ]);
            out.push(pod);
        }
        Lab {
            node,
            pods: out,
            net,
        }
    }

    fn pod_ip_of(net: u8, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, net, 10 + i as u8)
    }

    fn pod_ip(&self, i: usize) -> Ipv4Addr {
        Lab::pod_ip_of(self.net, i)
    }

    fn apply(&self, script: &str) {
        let started = Instant::now();
        nft::apply(Some(&self.node.0), script).unwrap_or_else(|e| panic!("{e}\n{script}"));
        eprintln!(
            "applied {} lines in {:?}",
            script.lines().count(),
            started.elapsed()
        );
    }
}

/// The first line a TCP connection from pod `from` to `address` reads.
fn fetch(lab: &Lab, from: usize, address: SocketAddr) -> Result<String, ErrorKind> {
    in_netns(&lab.pods[from].0.clone(), move || {
        let mut conn =
            TcpStream::connect_timeout(&address, Duration::from_secs(2)).map_err(|e| e.kind())?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).map_err(|e| e.kind())?;
        Ok(text.trim().to_string())
    })
}

fn ask_udp(lab: &Lab, from: usize, address: SocketAddr) -> Option<String> {
    in_netns(&lab.pods[from].0.clone(), move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        socket.send_to(b"?", address).unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

fn key(name: &str, port_name: &str, protocol: Protocol) -> PortKey {
    PortKey {
        namespace: "default".into(),
        name: name.into(),
        port_name: port_name.into(),
        protocol,
    }
}

fn port(cluster_ip: [u8; 4], port: u16, endpoints: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        cluster_ip: Ipv4Addr::from(cluster_ip),
        port,
        node_port: None,
        external_ips: vec![],
        external_endpoints: endpoints.clone(),
        endpoints,
        external_local: false,
        affinity_timeout: None,
    }
}

fn names(answers: &[String]) -> std::collections::BTreeSet<String> {
    answers
        .iter()
        .map(|a| a.split(' ').next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn cluster_ips_node_ports_affinity_hairpin_and_updates() {
    // Pod 0 is the client; pods 1..=3 serve.
    let lab = Lab::new("a", 1, 4);
    let _servers: Vec<Server> = (1..=3)
        .map(|i| Server::start(&lab.pods[i].0, &format!("pod{i}"), 8080, 5353))
        .collect();
    let ep = |i: usize, port: u16| Endpoint {
        ip: lab.pod_ip(i),
        port,
    };
    let web_ip = SocketAddr::from(([10, 96, 77, 10], 80));
    let mut model = Model::default();
    let mut web = port([10, 96, 77, 10], 80, vec![ep(1, 8080), ep(2, 8080)]);
    web.node_port = Some(30080);
    model.ports.insert(key("web", "http", Protocol::Tcp), web);
    model.ports.insert(
        key("web", "dns", Protocol::Udp),
        port([10, 96, 77, 10], 53, vec![ep(3, 5353)]),
    );
    model.ports.insert(
        key("empty", "", Protocol::Tcp),
        port([10, 96, 77, 11], 80, vec![]),
    );
    model.ports.insert(
        key("self", "", Protocol::Tcp),
        port([10, 96, 77, 12], 80, vec![ep(1, 8080)]),
    );
    // A leftover table of a crashed run is replaced as a whole.
    lab.apply(&rules::render_full(&model));
    lab.apply(&rules::render_full(&model));

    let answers: Vec<String> = (0..40).map(|_| fetch(&lab, 0, web_ip).unwrap()).collect();
    assert_eq!(
        names(&answers),
        ["pod1", "pod2"].map(String::from).into(),
        "{answers:?}"
    );
    // Same-node pods keep their address (no masquerade).
    assert!(
        answers[0].ends_with(&lab.pod_ip(0).to_string()),
        "{answers:?}"
    );
    assert_eq!(
        ask_udp(&lab, 0, SocketAddr::from(([10, 96, 77, 10], 53))).as_deref(),
        Some("pod3")
    );
    assert_eq!(
        fetch(&lab, 0, SocketAddr::from(([10, 96, 77, 11], 80))),
        Err(ErrorKind::ConnectionRefused)
    );
    // Hairpin: pod1 reaches itself through its Service.
    let hairpin = fetch(&lab, 1, SocketAddr::from(([10, 96, 77, 12], 80))).unwrap();
    assert!(hairpin.starts_with("pod1 "), "{hairpin}");
    // NodePort on the node's address, masqueraded to the node.
    let node_port = fetch(&lab, 0, SocketAddr::from(([10, 77, 1, 1], 30080))).unwrap();
    assert!(node_port.ends_with(" 10.77.1.1"), "{node_port}");

    // Incremental: web moves to pod3, empty gets pod2, self goes away.
    let mut next = model.clone();
    let web_key = key("web", "http", Protocol::Tcp);
    next.ports.get_mut(&web_key).unwrap().endpoints = vec![ep(3, 8080)];
    next.ports.get_mut(&web_key).unwrap().external_endpoints = vec![ep(3, 8080)];
    next.ports
        .get_mut(&key("empty", "", Protocol::Tcp))
        .unwrap()
        .endpoints = vec![ep(2, 8080)];
    next.ports.remove(&key("self", "", Protocol::Tcp));
    lab.apply(&rules::render_diff(&model, &next));
    let answers: Vec<String> = (0..10).map(|_| fetch(&lab, 0, web_ip).unwrap()).collect();
    assert_eq!(
        names(&answers),
        ["pod3"].map(String::from).into(),
        "{answers:?}"
    );
    assert!(fetch(&lab, 0, SocketAddr::from(([10, 96, 77, 11], 80)))
        .unwrap()
        .starts_with("pod2 "));
    assert!(fetch(&lab, 1, SocketAddr::from(([10, 96, 77, 12], 80))).is_err());

    // Session affinity: every connection of one client lands on one endpoint.
    let mut sticky = next.clone();
    let web = sticky.ports.get_mut(&web_key).unwrap();
    web.endpoints = vec![ep(1, 8080), ep(2, 8080), ep(3, 8080)];
    web.external_endpoints = web.endpoints.clone();
    web.affinity_timeout = Some(60);
    lab.apply(&rules::render_diff(&next, &sticky));
    let answers: Vec<String> = (0..20).map(|_| fetch(&lab, 0, web_ip).unwrap()).collect();
    assert_eq!(names(&answers).len(), 1, "{answers:?}");

    // The whole table is what a fresh render of the last model gives.
    let listed = nft::list(
        Some(&lab.node.0),
        &["list", "map", "ip", rules::TABLE, "service-ips"],
    )
    .unwrap();
    assert_eq!(listed.matches(": goto").count(), 3, "{listed}");
    nft::delete_table(Some(&lab.node.0), "ip", rules::TABLE).unwrap();
    assert!(nft::list(Some(&lab.node.0), &["list", "table", "ip", rules::TABLE]).is_err());
}

fn big_model(services: usize, endpoints: usize, shift: u8) -> Model {
    let mut model = Model::default();
    for s in 0..services {
        let eps = (0..endpoints)
            .map(|e| Endpoint {
                ip: Ipv4Addr::new(
                    10,
                    200 + (s / 250) as u8,
                    (s % 250) as u8,
                    e as u8 + 1 + shift,
                ),
                port: 8080,
            })
            .collect();
        let mut p = port([10, 96, (s / 250) as u8, (s % 250) as u8 + 1], 80, eps);
        p.node_port = Some(30000 + s as u16);
        model
            .ports
            .insert(key(&format!("svc-{s}"), "http", Protocol::Tcp), p);
    }
    model
}

#[test]
fn thousand_services_apply_in_full_and_incrementally() {
    let pid = std::process::id();
    let node = Netns::new(format!("kpx-{pid}-scale"));
    let model = big_model(1000, 5, 0);
    let started = Instant::now();
    let script = rules::render_full(&model);
    let rendered = started.elapsed();
    nft::apply(Some(&node.0), &script).unwrap();
    eprintln!(
        "full: 1000 services x 5 endpoints: render {rendered:?}, render+apply {:?} ({} lines)",
        started.elapsed(),
        script.lines().count()
    );
    let listed = nft::list(
        Some(&node.0),
        &["list", "map", "ip", rules::TABLE, "service-ips"],
    )
    .unwrap();
    assert_eq!(listed.matches(": goto").count(), 1000);
    let chains = nft::list(Some(&node.0), &["list", "table", "ip", rules::TABLE]).unwrap();
    assert!(
        chains.matches("chain ep-").count() == 5000,
        "{}",
        chains.len()
    );

    // One Service's endpoints change.
    let mut next = model.clone();
    let one = next
        .ports
        .get_mut(&key("svc-500", "http", Protocol::Tcp))
        .unwrap();
    one.endpoints[0].ip = Ipv4Addr::new(10, 222, 0, 1);
    one.external_endpoints = one.endpoints.clone();
    let started = Instant::now();
    let diff = rules::render_diff(&model, &next);
    let rendered = started.elapsed();
    nft::apply(Some(&node.0), &diff).unwrap();
    eprintln!(
        "incremental: one service of 1000: render {rendered:?}, render+apply {:?} ({} lines)",
        started.elapsed(),
        diff.lines().count()
    );
    // All endpoints of 100 Services change at once.
    let moved = big_model(1000, 5, 100);
    let mut partly = next.clone();
    for (k, v) in moved.ports.iter().take(100) {
        partly.ports.insert(k.clone(), v.clone());
    }
    let started = Instant::now();
    let diff = rules::render_diff(&next, &partly);
    nft::apply(Some(&node.0), &diff).unwrap();
    eprintln!(
        "incremental: 100 services of 1000: render+apply {:?} ({} lines)",
        started.elapsed(),
        diff.lines().count()
    );
    let chain = nft::list(
        Some(&node.0),
        &[
            "list",
            "chain",
            "ip",
            rules::TABLE,
            "svc-default/svc-500/tcp/http",
        ],
    )
    .unwrap();
    assert!(
        chain.contains("ep-default/svc-500/tcp/http__10.222.0.1/8080"),
        "{chain}"
    );
    let chains = nft::list(Some(&node.0), &["list", "table", "ip", rules::TABLE]).unwrap();
    assert_eq!(chains.matches("chain ep-").count(), 5000);
}

#[test]
fn the_proxy_runs_by_default_only_in_a_namespace_of_its_own() {
    assert!(!korvet_node::proxy::in_own_netns());
    let pid = std::process::id();
    let ns = Netns::new(format!("kpx-{pid}-own"));
    assert!(in_netns(&ns.0, korvet_node::proxy::in_own_netns));
}
