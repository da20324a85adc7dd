//! A load-balancer instance in real network namespaces, without a cluster: the instance
//! in one namespace (an external side towards a client namespace, one link to each of
//! two "node" namespaces), tiny servers in the nodes that say who they are and whom they
//! see, and real connections to the listeners' address. Runs as root.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use korvet_lb::edge::{BackendCheck, Edge, EdgeConfig, Listener, Protocol, Tls};
use korvet_lb::proxy_protocol::{self, Version};
use korvet_test_support::netns::Netns;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 100);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
/// A second client address, in the masquerade set (as the host is).
const MASQUERADED: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 3);

struct Lab {
    lb: Netns,
    client: Netns,
    nodes: [Netns; 2],
}

fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, 1 + i as u8, 2)
}

impl Lab {
    fn new() -> Lab {
        let pid = std::process::id();
        let lb = Netns::new(&format!("klb-{pid}-lb"));
        let client = Netns::new(&format!("klb-{pid}-c"));
        let nodes = [
            Netns::new(&format!("klb-{pid}-n0")),
            Netns::new(&format!("klb-{pid}-n1")),
        ];
        lb.link("ext", "10.78.0.1/24", &client, "eth0", "10.78.0.2/24");
        client.exec(&["ip", "addr", "add", "10.78.0.3/24", "dev", "eth0"]);
        for (i, node) in nodes.iter().enumerate() {
            lb.link(
                &format!("int{i}"),
                &format!("10.78.{}.1/24", i + 1),
                node,
                "eth0",
                &format!("{}/24", node_ip(i)),
            );
            // Replies go back through the instance, as the host routes them there.
            node.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.78.{}.1", i + 1),
            ]);
        }
        for sysctl in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.ip_nonlocal_bind=1",
            "net.ipv4.conf.all.arp_ignore=1",
        ] {
            lb.exec(&["sysctl", "-qw", sysctl]);
        }
        lb.exec(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "ext"]);
        Lab { lb, client, nodes }
    }
}

/// Servers in a node namespace: 8080 says `NAME PEER`, 8081 reads a PROXY header and
/// says `NAME SOURCE`, UDP 5353 says `NAME PEER`, 10256 answers health checks with
/// `health` (200 or 503). Stopped on drop.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Servers {
    fn start(node: &Netns, name: &'static str, health: u16) -> Servers {
        let (who, proxied, health_listener, udp) = node.enter(|| {
            (
                TcpListener::bind("0.0.0.0:8080").unwrap(),
                TcpListener::bind("0.0.0.0:8081").unwrap(),
                TcpListener::bind("0.0.0.0:10256").unwrap(),
                UdpSocket::bind("0.0.0.0:5353").unwrap(),
            )
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let serve = |listener: TcpListener,
                     stop: Arc<AtomicBool>,
                     answer: Box<dyn Fn(TcpStream, SocketAddr) + Send>| {
            listener.set_nonblocking(true).unwrap();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, peer)) => {
                            conn.set_nonblocking(false).unwrap();
                            conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                            answer(conn, peer)
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        threads.push(serve(
            who,
            stop.clone(),
            Box::new(move |mut conn, peer| {
                let _ = conn.write_all(format!("{name} {}\n", peer.ip()).as_bytes());
            }),
        ));
        threads.push(serve(
            proxied,
            stop.clone(),
            Box::new(move |mut conn, _| {
                let mut data = Vec::new();
                let mut buf = [0u8; 256];
                let answer = loop {
                    match proxy_protocol::parse(&data) {
                        Ok((header, _)) => {
                            let source = header.addresses.map(|(s, _)| s.ip().to_string());
                            break format!(
                                "{name} {:?} {}\n",
                                header.version,
                                source.unwrap_or_default()
                            );
                        }
                        Err(proxy_protocol::ParseError::Incomplete) => match conn.read(&mut buf) {
                            Ok(n) if n > 0 => data.extend_from_slice(&buf[..n]),
                            _ => break format!("{name} no-header\n"),
                        },
                        Err(e) => break format!("{name} bad-header {e}\n"),
                    }
                };
                let _ = conn.write_all(answer.as_bytes());
            }),
        ));
        threads.push(serve(
            health_listener,
            stop.clone(),
            Box::new(move |mut conn, _| {
                let mut buf = [0u8; 512];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(
                    format!("HTTP/1.0 {health} X\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                );
            }),
        ));
        udp.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let s = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(format!("{name} {}", peer.ip()).as_bytes(), peer);
                }
            }
        }));
        Servers { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

enum Command {
    Reload(Box<EdgeConfig>, mpsc::Sender<Result<(), String>>),
    Metrics(mpsc::Sender<String>),
}

/// The instance, on a thread inside the lb namespace (so that its sockets and the nft it
/// runs are there); stopped, rules removed, when dropped.
struct RunningEdge {
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningEdge {
    fn start(lab: &Lab, config: EdgeConfig) -> RunningEdge {
        let (commands, inbox) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let path = format!("/run/netns/{}", lab.lb.name());
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: moves only this thread, which runs only the instance.
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut edge = match Edge::start(config).await {
                    Ok(edge) => edge,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                loop {
                    match inbox.try_recv() {
                        Ok(Command::Reload(config, done)) => {
                            let _ =
                                done.send(edge.reload(*config).await.map_err(|e| e.to_string()));
                        }
                        Ok(Command::Metrics(reply)) => {
                            let _ = reply.send(edge.render_metrics());
                        }
                        Err(mpsc::TryRecvError::Empty) => {
                            tokio::time::sleep(Duration::from_millis(5)).await
                        }
                        Err(mpsc::TryRecvError::Disconnected) => break,
                    }
                }
                edge.shutdown().await;
            });
        });
        ready_rx.recv().unwrap().unwrap();
        RunningEdge {
            commands: Some(commands),
            thread: Some(thread),
        }
    }

    fn reload(&self, config: EdgeConfig) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .as_ref()
            .unwrap()
            .send(Command::Reload(Box::new(config), tx))
            .unwrap();
        rx.recv().unwrap()
    }

    fn metrics(&self) -> String {
        let (tx, rx) = mpsc::channel();
        self.commands
            .as_ref()
            .unwrap()
            .send(Command::Metrics(tx))
            .unwrap();
        rx.recv().unwrap()
    }
}

impl Drop for RunningEdge {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a TCP connection from the client namespace (from `source`) to `port` of the VIP
/// reads, or why it read nothing.
fn fetch(lab: &Lab, source: Ipv4Addr, port: u16) -> Result<String, String> {
    lab.client.enter(move || {
        let socket = socket2_connect(source, SocketAddr::from((VIP, port)))?;
        let mut conn = socket;
        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).map_err(|e| e.to_string())?;
        Ok(text.trim().to_string())
    })
}

/// A TCP connection from a chosen source address (std cannot bind before connecting).
fn socket2_connect(source: Ipv4Addr, to: SocketAddr) -> Result<TcpStream, String> {
    use std::os::fd::FromRawFd;
    // SAFETY: a fresh socket we own, handed to TcpStream below or closed on error.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a socket we just made and nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let sockaddr = |addr: SocketAddr| -> libc::sockaddr_in {
        let SocketAddr::V4(v4) = addr else {
            unreachable!()
        };
        libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        }
    };
    let local = sockaddr(SocketAddr::from((source, 0)));
    let remote = sockaddr(to);
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: valid sockaddr_in values of the given length.
    if unsafe { libc::bind(fd, std::ptr::addr_of!(local).cast(), len) } != 0 {
        return Err(format!("bind: {}", std::io::Error::last_os_error()));
    }
    // A short send timeout bounds the connect of a dropped SYN.
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: setting SO_SNDTIMEO, which also bounds connect(), on our socket.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            std::ptr::addr_of!(tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    // SAFETY: as above.
    if unsafe { libc::connect(fd, std::ptr::addr_of!(remote).cast(), len) } != 0 {
        return Err(format!("connect: {}", std::io::Error::last_os_error()));
    }
    Ok(stream)
}

fn udp_ask(lab: &Lab, port: u16) -> Result<String, String> {
    lab.client.enter(move || {
        let socket = UdpSocket::bind((CLIENT, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        socket
            .send_to(b"hi", (VIP, port))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 256];
        let (n, _) = socket.recv_from(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

fn listener(name: &str, port: u16, backend_port: u16, nodes: &[usize]) -> Listener {
    Listener {
        name: name.into(),
        address: VIP,
        port,
        protocol: Protocol::Tcp,
        proxy_protocol: None,
        tls: None,
        backends: nodes
            .iter()
            .map(|&i| std::net::SocketAddrV4::new(node_ip(i), backend_port))
            .collect(),
        health: BackendCheck {
            interval_ms: 100,
            timeout_ms: 100,
            rise: 1,
            fall: 1,
            ..Default::default()
        },
        source_ranges: Vec::new(),
        http: None,
    }
}

fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Which nodes answered `tries` connections to `port`, and whom they saw.
fn answers(lab: &Lab, source: Ipv4Addr, port: u16, tries: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..tries {
        let answer = fetch(lab, source, port).unwrap_or_else(|e| format!("error {e}"));
        *seen.entry(answer).or_insert(0) += 1;
    }
    seen
}

#[test]
fn an_instance_forwards_proxies_and_follows_its_backends() {
    let lab = Lab::new();
    let _n0 = Servers::start(&lab.nodes[0], "n0", 200);
    let n1 = Servers::start(&lab.nodes[1], "n1", 503);

    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec![VIP.to_string()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();

    let forwarded = listener("web", 80, 8080, &[0, 1]);
    let mut v2 = listener("pp2", 81, 8081, &[0]);
    v2.proxy_protocol = Some(Version::V2);
    let mut v1 = listener("pp1", 82, 8081, &[0]);
    v1.proxy_protocol = Some(Version::V1);
    let mut udp = listener("dns", 53, 5353, &[0, 1]);
    udp.protocol = Protocol::Udp;
    let mut restricted = listener("restricted", 83, 8080, &[0]);
    restricted.source_ranges = vec!["10.78.0.3/32".parse().unwrap()];
    // externalTrafficPolicy: Local: only the node whose health port says 200.
    let mut local = listener("local", 84, 8080, &[0, 1]);
    local.health.http_port = Some(10256);
    let mut tls = listener("tls", 443, 8080, &[1]);
    tls.tls = Some(Tls {
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
    });
    let config = EdgeConfig {
        admin_listen: Some("10.78.0.1:8404".parse().unwrap()),
        masquerade: vec![format!("{MASQUERADED}/32").parse().unwrap()],
        listeners: vec![forwarded.clone(), v2, v1, udp, restricted, local, tls],
    };
    let edge = RunningEdge::start(&lab, config.clone());

    // Kernel-forwarded: both nodes answer, and they see the client's own address.
    let seen = answers(&lab, CLIENT, 80, 24);
    let mut nodes: Vec<&String> = seen.keys().collect();
    nodes.sort();
    assert_eq!(nodes, ["n0 10.78.0.2", "n1 10.78.0.2"], "{seen:?}");
    // A masqueraded client: the node sees the instance's address instead.
    let masked = fetch(&lab, MASQUERADED, 80).unwrap();
    assert!(
        masked.ends_with("10.78.1.1") || masked.ends_with("10.78.2.1"),
        "{masked}"
    );

    // PROXY protocol in both versions carries the client's address.
    assert_eq!(fetch(&lab, CLIENT, 81).unwrap(), "n0 V2 10.78.0.2");
    assert_eq!(fetch(&lab, CLIENT, 82).unwrap(), "n0 V1 10.78.0.2");
    // UDP.
    let udp_answer = udp_ask(&lab, 53).unwrap();
    assert!(udp_answer.ends_with(" 10.78.0.2"), "{udp_answer}");
    // Source ranges: the listed client gets in, the other is dropped.
    assert!(fetch(&lab, MASQUERADED, 83).is_ok());
    assert!(fetch(&lab, CLIENT, 83).is_err());
    // Local traffic policy: only n0's health port says 200.
    eventually("only n0 serves the local listener", || {
        let seen = answers(&lab, CLIENT, 84, 10);
        match seen.len() == 1 && seen.contains_key("n0 10.78.0.2") {
            true => Ok(()),
            false => Err(format!("{seen:?}")),
        }
    });
    // TLS terminated at the instance.
    let tls_answer = lab.client.enter(move || tls_fetch(&cert_file));
    assert!(tls_answer.starts_with("n1 "), "{tls_answer}");

    // A node that stops answering leaves the forwarded listener's rules.
    drop(n1);
    eventually("n1 leaves the rules", || {
        let seen = answers(&lab, CLIENT, 80, 10);
        match seen.len() == 1 && seen.contains_key("n0 10.78.0.2") {
            true => Ok(()),
            false => Err(format!("{seen:?}")),
        }
    });
    let metrics = edge.metrics();
    assert!(
        metrics.contains("korvet_lb_backend_up{listener=\"web\",backend=\"10.78.2.2:8080\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("korvet_lb_rule_loads_total{outcome=\"ok\"}"),
        "{metrics}"
    );
    let admin = lab.client.enter(|| {
        let mut conn = TcpStream::connect("10.78.0.1:8404").unwrap();
        conn.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        let _ = conn.read_to_string(&mut text);
        text
    });
    assert!(
        admin.starts_with("HTTP/1.0 200") || admin.starts_with("HTTP/1.1 200"),
        "{admin}"
    );

    // Reload: only the backends of "web" change; a listener goes; a bad one is refused.
    let mut reloaded = config.clone();
    reloaded.listeners.retain(|l| l.name != "dns");
    reloaded.listeners[0].backends = vec![std::net::SocketAddrV4::new(node_ip(0), 8080)];
    edge.reload(reloaded.clone()).unwrap();
    assert!(udp_ask(&lab, 53).is_err());
    assert_eq!(answers(&lab, CLIENT, 80, 5).len(), 1);
    let mut bad = reloaded;
    bad.listeners.push(bad.listeners[0].clone());
    let refused = edge.reload(bad).unwrap_err();
    assert!(refused.contains("repeated"), "{refused}");
    drop(edge);
    // Stopped: the rules are gone.
    let rules = std::process::Command::new("ip")
        .args(["netns", "exec", lab.lb.name(), "nft", "list", "tables"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&rules.stdout).contains("korvet-lb"));
}

/// One TLS exchange with the VIP's port 443, trusting `cert`.
fn tls_fetch(cert: &std::path::Path) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(cert).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::IpAddress(VIP.into());
    let mut session = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = TcpStream::connect((VIP, 443)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut stream = rustls::Stream::new(&mut session, &mut tcp);
    let mut text = String::new();
    match stream.read_to_string(&mut text) {
        Ok(_) => {}
        // The backend closes without close_notify through the proxy's half-close.
        Err(e) if !text.is_empty() => eprintln!("after the answer: {e}"),
        Err(e) => panic!("TLS read: {e}"),
    }
    text.trim().to_string()
}
