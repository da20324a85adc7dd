//! The local provider against the real kernel: namespaces, veths, bridges, cgroups,
//! containerd. Runs as root. Every test cleans up through a Drop guard that opens a
//! provider on the test's state directory and destroys all it recorded.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::Cleanup;
use korvet_cloud::local::default_pool;
use korvet_cloud::{
    BootSpec, CloudError, LocalProvider, MachineSpec, MachineState, PodRoute, Provider,
};

/// A unique cluster name per test and run.
fn cluster(tag: &str) -> String {
    format!("t{}-{tag}", std::process::id())
}

/// The agent writes its addresses and containerd socket into its directory and stays.
fn spec(name: &str, cluster: &str, zone: &str) -> MachineSpec {
    MachineSpec {
        name: name.to_string(),
        cluster: cluster.to_string(),
        zone: zone.to_string(),
        cpu_millis: 500,
        memory_bytes: 256 << 20,
        disk_bytes: 1 << 30,
        boot: BootSpec {
            files: vec![("etc/hello.txt".into(), b"hi".to_vec(), 0o600)],
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "ip -4 addr > {dir}/addr.tmp && mv {dir}/addr.tmp {dir}/addr.txt; echo \"$CONTAINERD_ADDRESS {address}\" > {dir}/env.txt; exec sleep 1000".into(),
            ],
            env: vec![],
        },
    }
}

async fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.is_empty() {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `f` on a thread that joined network namespace `ns` (None: the host's).
/// Sockets keep the namespace they were made in.
fn in_netns<T: Send + 'static>(ns: Option<&str>, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.map(|n| PathBuf::from("/run/netns").join(n));
    std::thread::spawn(move || {
        if let Some(ns) = ns {
            let file = std::fs::File::open(&ns).unwrap();
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns {}",
                ns.display()
            );
        }
        f()
    })
    .join()
    .unwrap()
}

/// A TCP handshake from namespace `from` to a listener on `addr` in namespace `to`.
fn tcp_reaches(from: Option<&str>, to: Option<&str>, addr: Ipv4Addr) -> bool {
    let listener = in_netns(to, move || {
        TcpListener::bind(SocketAddr::from((addr, 0))).unwrap()
    });
    let target = listener.local_addr().unwrap();
    in_netns(from, move || {
        TcpStream::connect_timeout(&target, Duration::from_secs(2)).is_ok()
    })
}

fn netns_list() -> String {
    String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

fn links() -> String {
    String::from_utf8(
        Command::new("ip")
            .args(["-br", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

fn has_link(name: &str) -> bool {
    links().lines().any(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|n| n == name || n.starts_with(&format!("{name}@")))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_have_addresses_limits_containerd_and_reach_each_other_and_the_host() {
    let cleanup = Cleanup::new();
    let p = LocalProvider::open(cleanup.path(), default_pool()).unwrap();
    let c = cluster("net");
    let net = p.ensure_network(&c).await.unwrap();
    assert_eq!(p.ensure_network(&c).await.unwrap(), net, "idempotent");
    assert_eq!(net.segments.len(), 4);
    for seg in &net.segments {
        assert!(seg.bridge.starts_with("korvet") && seg.bridge.len() <= 15);
        assert!(has_link(&seg.bridge), "bridge {} exists", seg.bridge);
    }

    let (a1, a2, b1) = (format!("{c}-a1"), format!("{c}-a2"), format!("{c}-b1"));
    let m1 = p.create_machine(&spec(&a1, &c, "zone-a")).await.unwrap();
    let m2 = p.create_machine(&spec(&a2, &c, "zone-a")).await.unwrap();
    let m3 = p.create_machine(&spec(&b1, &c, "zone-b")).await.unwrap();
    assert_eq!(m1.state, MachineState::Running);
    assert_eq!(m1.provider_id, format!("korvet-local:///{a1}"));
    let za = net.segment("zone-a").unwrap();
    assert!(za.cidr.contains(&m1.address) && za.cidr.contains(&m2.address));
    assert!(net.segment("zone-b").unwrap().cidr.contains(&m3.address));
    assert_ne!(m1.address, m2.address);
    // Idempotent by name.
    assert_eq!(
        p.create_machine(&spec(&a1, &c, "zone-a")).await.unwrap(),
        m1
    );

    // The agent ran inside the sandbox: it sees its address, and got its socket.
    let addr = wait_for_file(&m1.dir.join("addr.txt")).await;
    assert!(addr.contains(&format!("inet {}/24", m1.address)), "{addr}");
    assert!(addr.contains("eth0"), "{addr}");
    let env = wait_for_file(&m1.dir.join("env.txt")).await;
    let socket = p.containerd_socket(&a1).unwrap();
    assert_eq!(env.trim(), format!("{} {}", socket.display(), m1.address));
    assert_eq!(std::fs::read(m1.dir.join("etc/hello.txt")).unwrap(), b"hi");

    // containerd answers on its socket.
    let out = Command::new("ctr")
        .arg("--address")
        .arg(&socket)
        .arg("version")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr version: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Server"));

    // The flavor's limits.
    let (ns1, cgroup) = p.machine_sandbox(&a1).unwrap();
    let mem = std::fs::read_to_string(cgroup.memory_limit_file().unwrap()).unwrap();
    assert_eq!(mem.trim(), (256u64 << 20).to_string());
    if !cgroup.v2 {
        let quota = std::fs::read_to_string(cgroup.dirs[0].join("cpu.cfs_quota_us")).unwrap();
        assert_eq!(quota.trim(), "50000");
    }
    assert!(
        !cgroup.pids().is_empty(),
        "containerd and agent are in the machine's cgroup"
    );

    // Same zone: machine to machine; any machine: to its gateway and the API endpoint.
    let (ns2, _) = p.machine_sandbox(&a2).unwrap();
    let (ns3, _) = p.machine_sandbox(&b1).unwrap();
    assert!(tcp_reaches(Some(&ns1), Some(&ns2), m2.address), "a1 -> a2");
    assert!(tcp_reaches(Some(&ns2), Some(&ns1), m1.address), "a2 -> a1");
    assert!(tcp_reaches(Some(&ns1), None, za.gateway), "a1 -> gateway");
    assert!(
        tcp_reaches(Some(&ns1), None, net.api_endpoint),
        "a1 -> api endpoint"
    );
    assert!(
        tcp_reaches(Some(&ns3), None, net.api_endpoint),
        "b1 -> api endpoint"
    );
    assert!(tcp_reaches(None, Some(&ns3), m3.address), "host -> b1");

    let listed = p.list_machines(Some(&c)).await.unwrap();
    assert_eq!(
        listed.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        [&a1, &a2, &b1]
    );
    assert!(p
        .list_machines(Some("no-such-cluster"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_keeps_disk_and_address_start_brings_them_back() {
    let cleanup = Cleanup::new();
    let p = LocalProvider::open(cleanup.path(), default_pool()).unwrap();
    let c = cluster("stop");
    let name = format!("{c}-m");
    let m = p.create_machine(&spec(&name, &c, "zone-c")).await.unwrap();
    wait_for_file(&m.dir.join("addr.txt")).await;
    let (_, cgroup) = p.machine_sandbox(&name).unwrap();
    let pids = cgroup.pids();
    assert!(pids.len() >= 2, "containerd and agent: {pids:?}");

    p.stop_machine(&name).await.unwrap();
    p.stop_machine(&name).await.unwrap();
    let stopped = p.get_machine(&name).await.unwrap().unwrap();
    assert_eq!(stopped.state, MachineState::Stopped);
    assert_eq!(stopped.address, m.address);
    assert!(m.dir.join("addr.txt").exists(), "disk kept");
    for pid in &pids {
        assert!(ends_soon(*pid), "pid {pid} still runs");
    }
    assert!(cgroup.pids().is_empty());

    std::fs::remove_file(m.dir.join("addr.txt")).unwrap();
    let started = p.start_machine(&name).await.unwrap();
    assert_eq!(started.state, MachineState::Running);
    assert_eq!(started.address, m.address);
    let addr = wait_for_file(&m.dir.join("addr.txt")).await;
    assert!(addr.contains(&format!("inet {}/24", m.address)), "{addr}");
    assert_eq!(p.start_machine(&name).await.unwrap(), started, "idempotent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_leaves_nothing_behind() {
    let cleanup = Cleanup::new();
    let p = LocalProvider::open(cleanup.path(), default_pool()).unwrap();
    let c = cluster("del");
    let name = format!("{c}-m");
    let m = p.create_machine(&spec(&name, &c, "zone-a")).await.unwrap();
    let net = p.get_network(&c).await.unwrap();
    let (ns, cgroup) = p.machine_sandbox(&name).unwrap();
    let veth = format!("korvet{}m{}", net.index, ns.rsplit('m').next().unwrap());
    let socket = p.containerd_socket(&name).unwrap();
    let pids = cgroup.pids();
    let claim = PathBuf::from(format!("/run/korvet/claims/net-{}", net.index));
    assert!(netns_list().contains(&ns));
    assert!(has_link(&veth), "{veth} in {}", links());
    assert!(cgroup.exists());
    assert!(claim.exists());

    let err = p.delete_network(&c).await.unwrap_err();
    assert!(matches!(err, CloudError::InUse { .. }), "{err}");

    p.delete_machine(&name).await.unwrap();
    p.delete_machine(&name).await.unwrap();
    assert!(p.get_machine(&name).await.unwrap().is_none());
    assert!(!netns_list().contains(&ns));
    assert!(!has_link(&veth));
    assert!(cgroup.dirs.iter().all(|d| !d.exists()), "cgroup removed");
    assert!(!m.dir.exists());
    assert!(!socket.exists());
    for pid in &pids {
        assert!(ends_soon(*pid), "pid {pid} still runs");
    }

    p.delete_network(&c).await.unwrap();
    p.delete_network(&c).await.unwrap();
    for seg in &net.segments {
        assert!(!has_link(&seg.bridge), "bridge {} removed", seg.bridge);
    }
    // Another test may have claimed the index since: only ours must be gone.
    let holder = std::fs::read_to_string(&claim).unwrap_or_default();
    assert!(
        !holder.contains(&format!("\n{c}\n")),
        "claim released: {holder}"
    );
    assert!(p.get_network(&c).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopened_provider_adopts_machines_and_deletes_them() {
    let cleanup = Cleanup::new();
    let c = cluster("crash");
    let name = format!("{c}-m");
    let (m, net) = {
        let p = LocalProvider::open(cleanup.path(), default_pool()).unwrap();
        let m = p.create_machine(&spec(&name, &c, "zone-b")).await.unwrap();
        (m, p.get_network(&c).await.unwrap())
        // Dropped without any cleanup, like a server killed with SIGKILL.
    };
    let p = LocalProvider::open(cleanup.path(), default_pool()).unwrap();
    let again = p.get_machine(&name).await.unwrap().unwrap();
    assert_eq!(
        again, m,
        "same machine, still running (its processes are detached)"
    );
    assert_eq!(p.ensure_network(&c).await.unwrap(), net);
    // Creating it again adopts instead of duplicating.
    let (_, cgroup) = p.machine_sandbox(&name).unwrap();
    let pids = cgroup.pids();
    assert_eq!(
        p.create_machine(&spec(&name, &c, "zone-b")).await.unwrap(),
        m
    );
    assert_eq!(cgroup.pids(), pids);

    p.destroy_all().await.unwrap();
    assert!(p.list_machines(None).await.unwrap().is_empty());
    let (ns, _) = (format!("korvet-n{}-m0", net.index), ());
    assert!(!netns_list().contains(&ns));
    assert!(!has_link(&net.segments[0].bridge));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_whose_processes_died_is_stopped_and_starts_again() {
    let cleanup = Cleanup::new();
    let p = LocalProvider::open(cleanup.path(), default_pool()).unwrap();
    let c = cluster("died");
    let name = format!("{c}-m");
    let m = p.create_machine(&spec(&name, &c, "zone-a")).await.unwrap();
    let (ns, cgroup) = p.machine_sandbox(&name).unwrap();
    for pid in cgroup.pids() {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.get_machine(&name).await.unwrap().unwrap().state != MachineState::Stopped {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A host reboot also loses the namespace: start makes it again.
    assert!(Command::new("ip")
        .args(["netns", "del", &ns])
        .status()
        .unwrap()
        .success());
    let started = p.start_machine(&name).await.unwrap();
    assert_eq!(started.state, MachineState::Running);
    assert_eq!(started.address, m.address);
    assert!(netns_list().contains(&ns));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_machines_at_once_and_clear_errors() {
    let cleanup = Cleanup::new();
    let p = LocalProvider::open(cleanup.path(), default_pool()).unwrap();
    // KORVET_CLOUD_CLUSTERS=20 for the load the platform puts on it (20 clusters x 2).
    let clusters: usize = std::env::var("KORVET_CLOUD_CLUSTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut tasks = Vec::new();
    for i in 0..clusters {
        for zone in ["zone-a", "zone-b"] {
            let p = p.clone();
            let c = cluster(&format!("par{i}"));
            let name = format!("{c}-{zone}");
            tasks.push(tokio::spawn(async move {
                p.create_machine(&spec(&name, &c, zone)).await
            }));
        }
    }
    let mut addresses = Vec::new();
    for t in tasks {
        let m = t.await.unwrap().unwrap();
        assert_eq!(m.state, MachineState::Running);
        addresses.push(m.address);
    }
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 2 * clusters, "distinct addresses");
    let mut indexes = Vec::new();
    for i in 0..clusters {
        indexes.push(
            p.get_network(&cluster(&format!("par{i}")))
                .await
                .unwrap()
                .index,
        );
    }
    indexes.sort();
    indexes.dedup();
    assert_eq!(indexes.len(), clusters, "distinct networks");

    let c = cluster("par0");
    let err = p
        .create_machine(&spec(&format!("{c}-x"), &c, "zone-q"))
        .await
        .unwrap_err();
    assert!(matches!(err, CloudError::UnknownZone { .. }), "{err}");
    let err = p
        .create_machine(&spec(&format!("{c}-zone-a"), &c, "zone-c"))
        .await
        .unwrap_err();
    assert!(matches!(err, CloudError::Conflict { .. }), "{err}");
    let err = p
        .create_machine(&spec("Bad/Name", &c, "zone-a"))
        .await
        .unwrap_err();
    assert!(matches!(err, CloudError::InvalidName { .. }), "{err}");
    assert!(matches!(
        p.start_machine("nope").await,
        Err(CloudError::NotFound(_))
    ));

    p.destroy_all().await.unwrap();
    assert!(p.list_machines(None).await.unwrap().is_empty());
}

/// A TCP connection from `source` in namespace `from` to a listener on `addr` in `to`:
/// the peer address the listener saw, `None` when the handshake failed.
fn tcp_peer(from: &str, source: Ipv4Addr, to: Option<&str>, addr: Ipv4Addr) -> Option<Ipv4Addr> {
    let listener = in_netns(to, move || {
        TcpListener::bind(SocketAddr::from((addr, 0))).unwrap()
    });
    let target = listener.local_addr().unwrap();
    let connected = in_netns(Some(from), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::from((source, 0))).unwrap();
            let connect = socket.connect(target);
            matches!(
                tokio::time::timeout(Duration::from_secs(2), connect).await,
                Ok(Ok(_))
            )
        })
    });
    if !connected {
        return None;
    }
    listener.set_nonblocking(true).unwrap();
    match listener.accept().unwrap().1 {
        SocketAddr::V4(peer) => Some(*peer.ip()),
        SocketAddr::V6(_) => None,
    }
}

fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A "pod network" on a machine: the pod CIDR's first address on its loopback.
fn add_pod_range(ns: &str, cidr: &str) -> Ipv4Addr {
    let net: ipnet::Ipv4Net = cidr.parse().unwrap();
    let first = Ipv4Addr::from(u32::from(net.network()) + 1);
    let status = Command::new("ip")
        .args([
            "-n",
            ns,
            "addr",
            "add",
            &format!("{first}/{}", net.prefix_len()),
            "dev",
            "lo",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    first
}

fn route(cidr: &str, node: Ipv4Addr) -> PodRoute {
    PodRoute {
        pod_cidr: cidr.parse().unwrap(),
        node,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_routes_forward_within_a_cluster_only_and_are_removed_with_its_network() {
    let cleanup = Cleanup::new();
    let p = LocalProvider::open(cleanup.path(), default_pool()).unwrap();
    let (c1, c2) = (cluster("routes1"), cluster("routes2"));
    let (a, b, c, d) = (
        format!("{c1}-a"),
        format!("{c1}-b"),
        format!("{c1}-c"),
        format!("{c2}-d"),
    );
    let ma = p.create_machine(&spec(&a, &c1, "zone-a")).await.unwrap();
    let mb = p.create_machine(&spec(&b, &c1, "zone-b")).await.unwrap();
    let mc = p.create_machine(&spec(&c, &c1, "zone-a")).await.unwrap();
    let md = p.create_machine(&spec(&d, &c2, "zone-b")).await.unwrap();
    let ns = |name: &str| p.machine_sandbox(name).unwrap().0;
    let (nsa, nsb, nsc, nsd) = (ns(&a), ns(&b), ns(&c), ns(&d));
    let pa = add_pod_range(&nsa, "10.244.1.0/24");
    let pb = add_pod_range(&nsb, "10.244.2.0/24");
    let pc = add_pod_range(&nsc, "10.244.3.0/24");
    // The second cluster uses the same pod CIDR as the first.
    let pd = add_pod_range(&nsd, "10.244.1.0/24");

    assert!(
        matches!(
            p.sync_routes("no-such-cluster", &[]).await,
            Err(CloudError::NoNetwork(_))
        ),
        "a cluster without network"
    );
    assert_eq!(tcp_peer(&nsa, pa, Some(&nsb), pb), None, "no routes yet");

    let routes1 = [
        route("10.244.1.0/24", ma.address),
        route("10.244.2.0/24", mb.address),
        route("10.244.3.0/24", mc.address),
    ];
    p.sync_routes(&c1, &routes1).await.unwrap();
    p.sync_routes(&c2, &[route("10.244.1.0/24", md.address)])
        .await
        .unwrap();
    let n1 = p.get_network(&c1).await.unwrap().index;
    let n2 = p.get_network(&c2).await.unwrap().index;
    let (t1, t2) = ((1000 + n1).to_string(), (1000 + n2).to_string());

    // Across zones and within one, both ways, with the pods' own source addresses.
    assert_eq!(tcp_peer(&nsa, pa, Some(&nsb), pb), Some(pa), "a -> b");
    assert_eq!(tcp_peer(&nsb, pb, Some(&nsa), pa), Some(pb), "b -> a");
    assert_eq!(
        tcp_peer(&nsa, pa, Some(&nsc), pc),
        Some(pa),
        "a -> c (same zone)"
    );
    assert_eq!(tcp_peer(&nsc, pc, Some(&nsb), pb), Some(pc), "c -> b");
    // The host's replies from the cluster's addresses to pod IPs use the cluster's table.
    let za = p.get_network(&c1).await.unwrap();
    let gateway = za.segment("zone-b").unwrap().gateway;
    assert_eq!(
        tcp_peer(&nsb, pb, None, gateway),
        Some(pb),
        "b's pod -> host"
    );
    assert_eq!(
        tcp_peer(&nsb, pb, None, za.api_endpoint),
        Some(pb),
        "b's pod -> API endpoint"
    );
    // The other cluster, same pod CIDR: its own pods only; no way into the first.
    assert_eq!(
        tcp_peer(&nsd, pd, Some(&nsb), pb),
        None,
        "d -> b (other cluster)"
    );
    assert_eq!(
        tcp_peer(&nsd, md.address, Some(&nsa), ma.address),
        None,
        "d -> a's machine"
    );
    assert_eq!(
        tcp_peer(&nsb, mb.address, Some(&nsd), md.address),
        None,
        "b -> d's machine"
    );
    assert_eq!(
        tcp_peer(&nsb, pb, Some(&nsd), pd),
        None,
        "b -> d's pod IP is a's"
    );

    // Forwarding is per bridge, never global.
    let global = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    assert_eq!(global.trim(), "0");
    let zb = &za.segment("zone-b").unwrap().bridge;
    let fwd = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{zb}/forwarding")).unwrap();
    assert_eq!(fwd.trim(), "1");

    // Idempotent: the same routes change nothing.
    let (rules, table) = (
        ip_out(&["rule", "show", "table", &t1]),
        ip_out(&["route", "show", "table", &t1]),
    );
    assert_eq!(rules.lines().count(), 5, "{rules}");
    p.sync_routes(&c1, &routes1).await.unwrap();
    let reopened = LocalProvider::open(cleanup.path(), default_pool()).unwrap();
    reopened.sync_routes(&c1, &routes1).await.unwrap();
    assert_eq!(ip_out(&["rule", "show", "table", &t1]), rules);
    assert_eq!(ip_out(&["route", "show", "table", &t1]), table);

    // A node gone: its route goes.
    p.sync_routes(&c1, &routes1[..2]).await.unwrap();
    assert_eq!(
        tcp_peer(&nsa, pa, Some(&nsc), pc),
        None,
        "a -> c after its route went"
    );
    assert_eq!(tcp_peer(&nsa, pa, Some(&nsb), pb), Some(pa));
    assert!(!ip_out(&["route", "show", "table", &t1]).contains("10.244.3.0/24"));

    // Deleting the networks removes rules and tables.
    for name in [&a, &b, &c, &d] {
        p.delete_machine(name).await.unwrap();
    }
    p.delete_network(&c1).await.unwrap();
    p.delete_network(&c2).await.unwrap();
    for t in [&t1, &t2] {
        assert_eq!(
            ip_out(&["rule", "show", "table", t]),
            "",
            "rules of table {t}"
        );
        assert_eq!(
            ip_out(&["route", "show", "table", t]),
            "",
            "routes of table {t}"
        );
    }
}

/// Whether process `pid` is gone (or only a zombie left for its parent to reap) within
/// five seconds: a killed process takes a moment to exit.
fn ends_soon(pid: u32) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next());
        if stat.is_empty() || state == Some("Z") {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
