//! Clusters as a service, end to end: `korvet server` as a real process, the CLI,
//! hosted control planes (korvet control-plane, etcd, korvet lb), machines of the local
//! provider running `korvet node`, and kubectl against the clusters. Runs as root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use korvet_test_support::eventually;
use korvet_test_support::platform::{control_plane_pid, kill9, TestPlatform};
use serde_json::Value;

fn platform() -> TestPlatform {
    TestPlatform::start(Path::new(env!("CARGO_BIN_EXE_korvet")))
}

fn phase(cluster: &Value) -> &str {
    cluster["status"]["phase"].as_str().unwrap_or_default()
}

fn ready(cluster: &Value) -> bool {
    cluster["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn running_with(nodes: &str) -> impl Fn(&Value) -> bool + '_ {
    move |c| phase(c) == "Running" && ready(c) && c["status"]["nodes"] == nodes
}

/// The provider's network index of a cluster, from its endpoint (10.201.0.0 + N*1024 + 10).
fn network_index(cluster: &Value) -> u32 {
    let endpoint = cluster["status"]["endpoint"].as_str().expect("endpoint");
    let host = endpoint
        .trim_start_matches("https://")
        .split(':')
        .next()
        .expect("host");
    let ip: std::net::Ipv4Addr = host.parse().expect("endpoint address");
    (u32::from(ip) - u32::from(std::net::Ipv4Addr::new(10, 201, 0, 0))) / 1024
}

fn ready_nodes(kubectl: &korvet_test_support::Kubectl) -> Vec<Value> {
    let nodes = kubectl.json(&["get", "nodes"]);
    nodes["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .collect()
}

fn names(nodes: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = nodes
        .iter()
        .map(|n| {
            n["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    names.sort();
    names
}

/// PIDs of live processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
    {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !zombie
            && String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(needle)
        {
            pids.push(pid);
        }
    }
    pids
}

/// The ConfigMaps in `default` besides the root-CA publisher's `kube-root-ca.crt`.
fn made_config_maps(kubectl: &korvet_test_support::Kubectl) -> usize {
    kubectl.json(&["get", "configmaps"])["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["metadata"]["name"] != "kube-root-ca.crt")
        .count()
}

/// Everything Korvet made for network `n` (or a cluster directory) that still exists.
fn leftovers(n: u32, cluster_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let links = std::process::Command::new("ip")
        .args(["-br", "link"])
        .output()
        .expect("ip link");
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let name = name.split('@').next().unwrap_or_default();
        if name.starts_with(&format!("korvet{n}-")) || name.starts_with(&format!("korvet{n}m")) {
            found.push(format!("link {name}"));
        }
    }
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    for line in String::from_utf8_lossy(&netns.stdout).lines() {
        if line.starts_with(&format!("korvet-n{n}-")) {
            found.push(format!("netns {line}"));
        }
    }
    for hierarchy in ["memory", "cpu", "pids", "unified"] {
        let dir = PathBuf::from("/sys/fs/cgroup")
            .join(hierarchy)
            .join("korvet");
        for entry in std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(&format!("korvet-n{n}-")) {
                found.push(format!("cgroup {}", entry.path().display()));
            }
        }
    }
    if Path::new(&format!("/run/korvet/claims/net-{n}")).exists() {
        found.push(format!("claim net-{n}"));
    }
    if cluster_dir.exists() {
        found.push(format!("directory {}", cluster_dir.display()));
    }
    let processes = processes_with(&cluster_dir.display().to_string());
    if !processes.is_empty() {
        found.push(format!("processes {processes:?}"));
    }
    found
}

/// Waits until nothing Korvet made for network `n` and `cluster_dir` is left.
fn assert_nothing_left(n: u32, cluster_dir: &Path) {
    eventually(30, || {
        let left = leftovers(n, cluster_dir);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("deleting the cluster left: {left:#?}"))
        }
    });
}

#[test]
fn one_master_cluster_is_created_scaled_stopped_started_and_deleted() {
    let platform = platform();
    platform.ok(&[
        "cluster",
        "create",
        "life",
        "--pool",
        "workers:small:zone-a:2",
        "--service-cidr",
        "10.100.0.0/16",
        "--wait",
    ]);
    let kubectl = platform.cluster_kubectl("life");
    kubectl.ok(&["create", "service", "clusterip", "web", "--tcp=80"]);
    let service = kubectl.json(&["get", "service", "web"]);
    let ip = service["spec"]["clusterIP"].as_str().unwrap_or_default();
    assert!(
        ip.starts_with("10.100."),
        "ClusterIP {ip} from the cluster's service CIDR"
    );
    let nodes = ready_nodes(&kubectl);
    assert_eq!(nodes.len(), 2, "{nodes:#?}");
    for node in &nodes {
        let labels = &node["metadata"]["labels"];
        assert_eq!(labels["topology.kubernetes.io/zone"], "zone-a");
        assert_eq!(labels["node.kubernetes.io/instance-type"], "small");
        assert_eq!(labels["korvet.io/nodepool"], "life-workers");
        assert_eq!(node["status"]["capacity"]["cpu"], "1");
        assert_eq!(node["status"]["capacity"]["memory"], "2Gi");
        assert!(node["spec"]["providerID"]
            .as_str()
            .is_some_and(|p| p.starts_with("korvet-local:///")));
    }
    let cluster = platform.wait_cluster("life", 5, |c| phase(c) == "Running");
    let n = network_index(&cluster);
    let cluster_dir = platform.data_dir().join("clusters").join("default.life");

    platform.ok(&[
        "cluster",
        "scale",
        "life",
        "--pool",
        "workers",
        "--replicas",
        "3",
    ]);
    platform.wait_cluster("life", 60, running_with("3/3"));
    assert_eq!(ready_nodes(&kubectl).len(), 3);
    // Nodes are named CLUSTER-POOL-xxxxx, and `-o wide` shows upstream's columns.
    let wide = kubectl.ok(&["get", "nodes", "-o", "wide"]);
    let header = wide.lines().next().unwrap_or_default();
    for column in [
        "INTERNAL-IP",
        "EXTERNAL-IP",
        "OS-IMAGE",
        "KERNEL-VERSION",
        "CONTAINER-RUNTIME",
    ] {
        assert!(header.contains(column), "{column} in {header}");
    }
    for node in ready_nodes(&kubectl) {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        assert!(name.starts_with("life-workers-"), "{name}");
        let ip = korvet_test_support::internal_ip(&node).unwrap_or_default();
        assert!(
            wide.lines()
                .any(|l| l.starts_with(name) && l.contains(&ip) && l.contains("containerd://")),
            "{name} {ip}:\n{wide}"
        );
    }
    // One form for every node-pool command: CLUSTER POOL, for inline and added pools.
    let inline = platform.ok(&["nodepool", "get", "life", "workers", "-o", "json"]);
    assert!(inline.contains("\"name\": \"life-workers\""), "{inline}");
    platform.ok(&["nodepool", "add", "life", "spare", "--replicas", "0"]);
    let listed = platform.ok(&["nodepool", "list", "life"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("life") && l.contains("spare"))
            && listed
                .lines()
                .any(|l| l.starts_with("life") && l.contains("workers")),
        "{listed}"
    );
    let spare = platform.ok(&[
        "nodepool",
        "scale",
        "life",
        "spare",
        "--replicas",
        "0",
        "-o",
        "json",
    ]);
    assert!(spare.contains("\"name\": \"life-spare\""), "{spare}");
    let missing = platform.fails(&["nodepool", "delete", "life", "nosuch"]);
    assert!(
        missing.contains("no pool \"nosuch\"")
            && missing.contains("spare")
            && missing.contains("workers"),
        "{missing}"
    );
    platform.ok(&["nodepool", "delete", "life", "spare"]);
    eventually(30, || {
        let run = platform.cli(&["nodepool", "get", "life", "spare"]);
        match run.ok {
            false => Ok(()),
            true => Err(format!("pool spare still there: {}", run.stdout)),
        }
    });
    // A NodePool made by hand must follow the naming rule too.
    let misnamed = platform.kubectl().run_with_input(
        &["apply", "-f", "-"],
        "apiVersion: korvet.io/v1alpha1\nkind: NodePool\nmetadata: {name: other}\nspec: {cluster: life, flavor: small, zone: zone-a, replicas: 0}\n",
    );
    assert!(
        !misnamed.ok && misnamed.stderr.contains("life-POOL"),
        "{}",
        misnamed.stderr
    );

    platform.ok(&[
        "cluster",
        "scale",
        "life",
        "--pool",
        "workers",
        "--replicas",
        "1",
    ]);
    platform.wait_cluster("life", 60, running_with("1/1"));
    eventually(30, || {
        let nodes = kubectl.json(&["get", "nodes"]);
        match nodes["items"].as_array().map(Vec::len) {
            Some(1) => Ok(()),
            _ => Err(format!(
                "removed machines' Nodes were not deleted: {nodes:#}"
            )),
        }
    });
    let before_stop = names(&ready_nodes(&kubectl));

    platform.ok(&["cluster", "stop", "life", "--wait"]);
    assert!(
        processes_with(&cluster_dir.display().to_string()).is_empty(),
        "control-plane processes still run after stop"
    );
    assert!(
        processes_with("--node-name=life-workers").is_empty(),
        "node agents still run after stop"
    );
    assert!(!kubectl.run(&["get", "nodes", "--request-timeout=2s"]).ok);
    let scale = platform.fails(&[
        "cluster",
        "scale",
        "life",
        "--pool",
        "workers",
        "--replicas",
        "2",
    ]);
    assert!(scale.contains("stopped"), "{scale}");

    platform.ok(&["cluster", "start", "life", "--wait"]);
    platform.wait_cluster("life", 60, running_with("1/1"));
    assert_eq!(
        names(&ready_nodes(&kubectl)),
        before_stop,
        "the same nodes come back"
    );

    platform.ok(&["cluster", "delete", "life", "--wait"]);
    assert_nothing_left(n, &cluster_dir);
    let machines = platform.kubectl().json(&["get", "machines.korvet.io"]);
    assert_eq!(machines["items"].as_array().map(Vec::len), Some(0));
    assert!(!platform
        .data_dir()
        .join("provider/machines")
        .read_dir()
        .into_iter()
        .flatten()
        .any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("default.life"))));
}

#[test]
fn three_master_cluster_survives_losing_a_master_and_an_etcd_member() {
    let platform = platform();
    platform.ok(&[
        "cluster",
        "create",
        "ha",
        "--masters",
        "3",
        "--pool",
        "workers:medium:zone-b:1",
        "--wait",
    ]);
    let kubectl = platform.cluster_kubectl("ha");
    assert_eq!(ready_nodes(&kubectl).len(), 1);
    kill9(control_plane_pid(&platform, "ha", "master-0"));
    kill9(control_plane_pid(&platform, "ha", "etcd-1"));
    for i in 0..10 {
        let name = format!("after-kill-{i}");
        kubectl.ok(&["create", "configmap", &name, "--from-literal=k=v"]);
        kubectl.ok(&["get", "configmap", &name]);
    }
    assert_eq!(ready_nodes(&kubectl).len(), 1);
    // The platform restarts both, and says so.
    eventually(30, || {
        let events = platform.kubectl().ok(&["get", "events"]);
        match events.contains("ControlPlaneRestarted") {
            true if events.contains("etcd-1") && events.contains("master-0") => Ok(()),
            _ => Err(format!(
                "no restart of etcd-1 and master-0 reported:\n{events}"
            )),
        }
    });
    platform.wait_cluster("ha", 60, |c| {
        c["status"]["readyControlPlaneReplicas"] == 3
            && c["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "ControlPlaneReady" && c["status"] == "True")
    });
    assert_eq!(made_config_maps(&kubectl), 10);
    // Stopped and started, the etcd cluster forms again from its members' data.
    let cluster = platform.wait_cluster("ha", 5, |c| phase(c) == "Running");
    let n = network_index(&cluster);
    let cluster_dir = platform.data_dir().join("clusters/default.ha");
    platform.ok(&["cluster", "stop", "ha", "--wait"]);
    assert!(processes_with(&cluster_dir.display().to_string()).is_empty());
    platform.ok(&["cluster", "start", "ha", "--wait"]);
    platform.wait_cluster("ha", 60, running_with("1/1"));
    assert_eq!(made_config_maps(&kubectl), 10);
    platform.ok(&[
        "cluster",
        "scale",
        "ha",
        "--pool",
        "workers",
        "--replicas",
        "2",
    ]);
    platform.wait_cluster("ha", 60, running_with("2/2"));
    assert_eq!(ready_nodes(&kubectl).len(), 2);
    platform.ok(&["cluster", "delete", "ha", "--wait"]);
    assert_nothing_left(n, &cluster_dir);
}

#[test]
fn server_killed_mid_create_converges_without_duplicates() {
    let mut platform = platform();
    platform.ok(&[
        "cluster",
        "create",
        "crash",
        "--pool",
        "workers:small:zone-c:2",
    ]);
    // Kill the server while it is making machines.
    eventually(30, || {
        let machines = platform
            .kubectl()
            .ok(&["get", "machines.korvet.io", "-o", "name"]);
        match machines.contains("machine") {
            true => Ok(()),
            false => Err("no machine was created".into()),
        }
    });
    platform.kill_server();
    platform.restart_server();
    let cluster = platform.wait_cluster("crash", 60, running_with("2/2"));
    assert_eq!(cluster["spec"]["nodePools"][0]["replicas"], 2);
    let machines = platform.kubectl().json(&["get", "machines.korvet.io"]);
    assert_eq!(
        machines["items"].as_array().map(Vec::len),
        Some(2),
        "{machines:#}"
    );
    let cluster_dir = platform.data_dir().join("clusters/default.crash");
    let masters = processes_with(&format!("--data-dir={}/master-0", cluster_dir.display()));
    assert_eq!(masters.len(), 1, "one API server process, not {masters:?}");
    assert_eq!(processes_with("--node-name=crash-workers").len(), 2);
    assert_eq!(ready_nodes(&platform.cluster_kubectl("crash")).len(), 2);
    let n = network_index(&cluster);
    platform.ok(&["cluster", "delete", "crash", "--wait"]);
    assert_nothing_left(n, &cluster_dir);
}

#[test]
fn bad_requests_are_refused_with_clear_messages() {
    let platform = platform();
    let masters = platform.fails(&["cluster", "create", "two", "--masters", "2"]);
    assert!(
        masters.contains("spec.controlPlane.replicas") && masters.contains("1 master, or 3"),
        "{masters}"
    );
    let flavor = platform.fails(&["cluster", "create", "f", "--pool", "w:huge:zone-a:1"]);
    assert!(
        flavor.contains("no such flavor") && flavor.contains("small"),
        "{flavor}"
    );
    let zone = platform.fails(&["cluster", "create", "z", "--pool", "w:small:zone-q:1"]);
    assert!(
        zone.contains("zone-q") && zone.contains("zone-a, zone-b, zone-c"),
        "{zone}"
    );
    let name = platform.fails(&["cluster", "create", "Bad_Name"]);
    assert!(name.contains("metadata.name"), "{name}");
    let version = platform.fails(&["cluster", "create", "v", "--version", "1.20"]);
    assert!(
        version.contains("spec.version") && version.contains("1.33"),
        "{version}"
    );
    let pool = platform.fails(&["cluster", "create", "p", "--pool", "workers"]);
    assert!(pool.contains("NAME:FLAVOR:ZONE:COUNT"), "{pool}");
    let orphan = platform.fails(&["nodepool", "add", "nowhere", "extra"]);
    assert!(orphan.contains("no such cluster"), "{orphan}");
    let missing = platform.fails(&["kubeconfig", "nothing"]);
    assert!(missing.contains("not found"), "{missing}");
    // Bad CIDRs are refused by the management API itself (what kubectl users see).
    let kubectl = platform.kubectl();
    let cidr = kubectl.run_with_input(
        &["apply", "-f", "-"],
        "apiVersion: korvet.io/v1alpha1\nkind: Cluster\nmetadata: {name: net}\nspec:\n  network: {podCIDR: 10.200.0.0/16}\n",
    );
    assert!(
        !cidr.ok && cidr.stderr.contains("spec.network.podCIDR"),
        "{}",
        cidr.stderr
    );
    // Without a management API kubeconfig, the CLI says where to get one.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_korvet"))
        .args(["cluster", "list"])
        .env("KORVET_KUBECONFIG", "/nonexistent/admin.kubeconfig")
        .output()
        .expect("run korvet");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("korvet up"),
        "{stderr}"
    );
    // Scaling a stopped cluster's pool is refused.
    platform.ok(&[
        "cluster",
        "create",
        "idle",
        "--pool",
        "w:small:zone-a:0",
        "--wait",
    ]);
    platform.ok(&["cluster", "stop", "idle", "--wait"]);
    let stopped = platform.fails(&["cluster", "scale", "idle", "--pool", "w", "--replicas", "1"]);
    assert!(
        stopped.contains("stopped") && stopped.contains("korvet cluster start"),
        "{stopped}"
    );
    platform.ok(&["cluster", "delete", "idle", "--wait"]);
}

/// Ends `korvet up` by PID and removes what it made, also when the test fails.
struct Up {
    child: std::process::Child,
    home: tempfile::TempDir,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        korvet_test_support::platform::remove_everything(&self.home.path().join("data"));
    }
}

#[test]
fn korvet_up_brings_up_the_demo_cluster_and_ctrl_c_stops_it() {
    use std::io::BufRead;
    let home = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_korvet"))
        .args(["up", "--home"])
        .arg(home.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start korvet up");
    let stdout = child.stdout.take().expect("stdout");
    let mut up = Up { child, home };
    let (lines, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let mut kubeconfig = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        match printed.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                if let Some(path) = line.trim().strip_prefix("kubeconfig:") {
                    kubeconfig = Some(PathBuf::from(path.trim()));
                }
                if line.contains("press Ctrl-C") {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => panic!("korvet up ended early"),
        }
    }
    let kubeconfig = kubeconfig.expect("korvet up printed the kubeconfig path");
    let kubectl =
        korvet_test_support::Kubectl::new(kubeconfig, up.home.path().join("kubectl-cache"));
    let nodes = ready_nodes(&kubectl);
    assert_eq!(nodes.len(), 2, "{nodes:#?}");
    assert!(nodes
        .iter()
        .all(
            |n| n["metadata"]["labels"]["topology.kubernetes.io/zone"] == "zone-a"
                && n["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "small"
        ));
    // Ctrl-C: the platform, the control plane and the machines stop; data stays.
    let status = std::process::Command::new("kill")
        .args(["-INT", &up.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while up.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "korvet up did not end on Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    }
    let home = up.home.path().display().to_string();
    assert!(
        processes_with(&home).is_empty(),
        "processes of the platform remain: {:?}",
        processes_with(&home)
    );
    assert!(up
        .home
        .path()
        .join("data/clusters/default.demo/master-0/store")
        .exists());
}

#[test]
fn the_platform_registry_serves_the_base_images() {
    let platform = platform();
    let url = platform.registry_url();
    let ca = platform.data_dir().join("pki/ca.crt");
    let ca = ca.display().to_string();
    // Only the management kubeconfig: the CLI finds the registry and its CA there.
    eventually(60, || {
        let run = platform.cli(&["image", "list"]);
        let listed = run.stdout;
        let host = url.trim_start_matches("https://");
        match ["busybox", "pause", "demo-web"]
            .iter()
            .all(|image| listed.contains(&format!("{host}/{image}:latest")))
        {
            true => Ok(()),
            false => Err(format!("base images not listed:\n{listed}{}", run.stderr)),
        }
    });
    // Pushing needs a token the management API accepts: without one the CLI asks the
    // management API for a short-lived one.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("hello"), "hi").expect("file");
    let source = dir.path().display().to_string();
    let host = url.trim_start_matches("https://");
    let pushed = platform.ok(&[
        "image",
        "build",
        "--from-dir",
        &source,
        "--tag",
        &format!("{host}/mine/hello:v1"),
        "--push",
    ]);
    assert!(
        pushed.starts_with(&format!("{host}/mine/hello:v1@sha256:")),
        "{pushed}"
    );
    let listed = platform.ok(&["image", "list", "--registry", &url, "--ca", &ca]);
    assert!(
        listed.contains(&format!("{host}/mine/hello:v1")),
        "{listed}"
    );
    let push = platform.fails(&[
        "image",
        "build",
        "--from-dir",
        &source,
        "--tag",
        &format!("{}/mine/hello:v1", url.trim_start_matches("https://")),
        "--push",
        "--registry",
        &url,
        "--ca",
        &ca,
        "--token",
        "not-a-token",
    ]);
    assert!(
        push.contains("401") || push.to_lowercase().contains("unauthorized"),
        "{push}"
    );
}
