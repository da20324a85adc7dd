//! The local provider: one Linux host (root) as a small cloud.
//!
//! - Addresses come from one pool (default 10.200.0.0/13). Before anything is made, an
//!   `unreachable` route for the whole pool is installed in the host namespace, so no
//!   packet for a Korvet address can leave through the uplink. No NAT, no forwarding.
//! - A cluster network is index N, claimed host-wide in `/run/korvet/claims/net-N`
//!   (several providers with different state directories may share the host). It owns
//!   the /22 at `pool + 65536 + N*1024`: a control-plane /24 (bridge `korvetN-cp`, host
//!   address .1 and the API endpoint .10) and one /24 per zone (bridges `korvetN-za`,
//!   `-zb`, `-zc`, host address .1 = the machines' gateway).
//! - A machine is slot k of its cluster network: network namespace `korvet-nN-mk`,
//!   veth `korvetNmk` on its zone's bridge (`eth0` inside, address .10+k), cgroup
//!   `korvet/korvet-nN-mk` with the flavor's limits, directory
//!   `<state>/machines/<name>/` as its disk, its own containerd (socket under
//!   `/run/korvet/m/N-k/`), and the boot agent.
//! - Every object is recorded before it is made (JSON records written atomically), so
//!   delete, and a provider opened again after a crash, remove exactly what Korvet made.
//!
//! Links, namespaces, addresses and routes are made with the `ip` command (iproute2)
//! rather than rtnetlink: simpler, and easy to reproduce by hand. Each call is async, and
//! locks are per network and per machine, so slow steps of one never block another.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

mod balancer;
mod claims;
mod garp;

pub use balancer::ADMIN_PORT;

use crate::cgroup::{CgroupPath, Limits};
use crate::process::{read_json, spawn_detached, write_json_atomic, ProcessRecord, ProcessSpec};
use crate::{
    BootSpec, CloudError, MachineInfo, MachineSpec, MachineState, Network, PodRoute, Provider,
    Segment,
};

/// The default address pool, 10.200.0.0/13.
pub fn default_pool() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 200, 0, 0), 13).unwrap_or_default()
}
const ZONES: [(&str, &str); 3] = [("zone-a", "za"), ("zone-b", "zb"), ("zone-c", "zc")];
const SOCKETS_DIR: &str = "/run/korvet/m";
/// Machine addresses are .10+k in a /24.
const MAX_SLOTS: u32 = 240;
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);
const PIDS_MAX: u64 = 16_384;
/// Network N routes its forwarded traffic with policy routing table `ROUTE_TABLE_BASE + N`.
const ROUTE_TABLE_BASE: u32 = 1000;
/// Preference of the rules that send a cluster's traffic to its table (before `main`).
const ROUTE_RULE_PREF: u32 = 5000;

/// What is known of a cluster network: the network and which machine holds which slot.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct NetworkRecord {
    network: Network,
    /// slot -> machine name
    slots: BTreeMap<u32, String>,
    /// Pod routes last asked for; `None` until routing was first set up.
    #[serde(default)]
    routes: Option<Vec<PodRoute>>,
    /// The external network and the gateway (the cluster's load-balancer instances)
    /// through which replies to it return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    external_return: Option<(Ipv4Net, Ipv4Addr)>,
}

/// What is known of a machine; written before each of its objects is made.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct MachineRecord {
    spec: MachineSpec,
    net_index: u32,
    slot: u32,
    address: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
    bridge: String,
    netns: String,
    veth: String,
    cgroup: String,
    dir: PathBuf,
    socket_dir: PathBuf,
    containerd: Option<ProcessRecord>,
    agent: Option<ProcessRecord>,
}

impl MachineRecord {
    fn socket(&self) -> PathBuf {
        self.socket_dir.join("containerd.sock")
    }

    fn running(&self) -> bool {
        self.containerd.as_ref().is_some_and(|p| p.is_alive())
            && self.agent.as_ref().is_some_and(|p| p.is_alive())
    }

    fn info(&self) -> MachineInfo {
        MachineInfo {
            name: self.spec.name.clone(),
            cluster: self.spec.cluster.clone(),
            zone: self.spec.zone.clone(),
            provider_id: format!("korvet-local:///{}", self.spec.name),
            address: self.address,
            state: if self.running() {
                MachineState::Running
            } else {
                MachineState::Stopped
            },
            dir: self.dir.clone(),
        }
    }
}

type Slot<T> = Arc<Mutex<Option<T>>>;

struct Inner {
    state_dir: PathBuf,
    pool: Ipv4Net,
    ip: PathBuf,
    networks: StdMutex<HashMap<String, Slot<NetworkRecord>>>,
    /// Entries are never removed, so every task that looks a name up shares one lock.
    machines: StdMutex<HashMap<String, Slot<MachineRecord>>>,
    /// The last saved record of each machine, for reads that must not wait for a slow
    /// create or stop.
    snapshots: StdMutex<HashMap<String, MachineRecord>>,
    /// Networks whose kernel objects were checked since open.
    verified: StdMutex<std::collections::HashSet<String>>,
    /// Pod routes applied to the kernel since open, per network.
    routed: StdMutex<HashMap<String, Vec<PodRoute>>>,
    /// `ip netns add` mounts /run/netns on first use; concurrent first uses race.
    netns_lock: Mutex<()>,
    balancers: balancer::BalancerState,
}

/// The local provider; cheap to clone (shared state).
#[derive(Clone)]
pub struct LocalProvider {
    inner: Arc<Inner>,
}

impl LocalProvider {
    /// Opens the provider on `state_dir` (created if missing), loading its records, and
    /// installs the `unreachable` route for `pool`.
    pub fn open(state_dir: &Path, pool: Ipv4Net) -> Result<LocalProvider, CloudError> {
        // SAFETY: plain syscall without arguments.
        if unsafe { libc::geteuid() } != 0 {
            return Err(CloudError::NotRoot);
        }
        let pool = pool.trunc();
        if pool.prefix_len() > 15 {
            return Err(CloudError::InvalidPool {
                pool,
                reason: "it must be a /15 or larger (the first /16 is reserved, clusters get /22s after it)".into(),
            });
        }
        let ip = which("ip").ok_or_else(|| CloudError::MissingTool {
            program: "ip".into(),
            package: "iproute2".into(),
        })?;
        std::fs::create_dir_all(state_dir.join("networks"))
            .and_then(|()| std::fs::create_dir_all(state_dir.join("machines")))
            .map_err(CloudError::io(format!(
                "create state directory {}",
                state_dir.display()
            )))?;
        let state_dir = state_dir
            .canonicalize()
            .map_err(CloudError::io(format!("resolve {}", state_dir.display())))?;
        let provider = LocalProvider {
            inner: Arc::new(Inner {
                state_dir,
                pool,
                ip,
                networks: StdMutex::new(HashMap::new()),
                machines: StdMutex::new(HashMap::new()),
                snapshots: StdMutex::new(HashMap::new()),
                verified: StdMutex::new(Default::default()),
                routed: StdMutex::new(HashMap::new()),
                netns_lock: Mutex::new(()),
                balancers: Default::default(),
            }),
        };
        // Before anything else exists: no packet for a pool address may leave the host.
        let out = std::process::Command::new(&provider.inner.ip)
            .args(["route", "replace", "unreachable", &pool.to_string()])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(CloudError::io(format!(
                "run {}",
                provider.inner.ip.display()
            )))?;
        if !out.status.success() {
            return Err(CloudError::Command {
                command: format!("ip route replace unreachable {pool}"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        provider.load()?;
        Ok(provider)
    }

    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    pub fn pool(&self) -> Ipv4Net {
        self.inner.pool
    }

    fn load(&self) -> Result<(), CloudError> {
        let dir = self.inner.state_dir.join("networks");
        let entries =
            std::fs::read_dir(&dir).map_err(CloudError::io(format!("read {}", dir.display())))?;
        let mut networks = HashMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match read_json::<NetworkRecord>(&path) {
                Ok(Some(rec)) => {
                    networks.insert(rec.network.cluster.clone(), rec);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable network record")
                }
            }
        }
        let dir = self.inner.state_dir.join("machines");
        let entries =
            std::fs::read_dir(&dir).map_err(CloudError::io(format!("read {}", dir.display())))?;
        let mut machines = HashMap::new();
        for entry in entries.flatten() {
            let path = entry.path().join("machine.json");
            match read_json::<MachineRecord>(&path) {
                Ok(Some(rec)) => {
                    machines.insert(rec.spec.name.clone(), rec);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable machine record")
                }
            }
        }
        // A crash between a machine's removal and freeing its slot leaves the slot taken.
        for net in networks.values_mut() {
            let before = net.slots.len();
            net.slots.retain(|_, name| {
                machines
                    .get(name)
                    .is_some_and(|m| m.spec.cluster == net.network.cluster)
            });
            if net.slots.len() != before {
                let _ = write_json_atomic(&self.network_path(&net.network.cluster), net);
            }
        }
        let mut map = lock(&self.inner.networks);
        for (name, rec) in networks {
            map.insert(name, Arc::new(Mutex::new(Some(rec))));
        }
        drop(map);
        let mut map = lock(&self.inner.machines);
        let mut snapshots = lock(&self.inner.snapshots);
        for (name, rec) in machines {
            snapshots.insert(name.clone(), rec.clone());
            map.insert(name, Arc::new(Mutex::new(Some(rec))));
        }
        Ok(())
    }

    fn network_path(&self, cluster: &str) -> PathBuf {
        self.inner
            .state_dir
            .join("networks")
            .join(format!("{cluster}.json"))
    }

    fn machine_dir(&self, name: &str) -> PathBuf {
        self.inner.state_dir.join("machines").join(name)
    }

    fn network_slot(&self, cluster: &str) -> Slot<NetworkRecord> {
        lock(&self.inner.networks)
            .entry(cluster.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(None)))
            .clone()
    }

    fn machine_slot(&self, name: &str) -> Slot<MachineRecord> {
        lock(&self.inner.machines)
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(None)))
            .clone()
    }

    /// Deletes every balancer, machine and network this provider recorded (for tests'
    /// cleanup).
    pub async fn destroy_all(&self) -> Result<(), CloudError> {
        let names: Vec<String> = lock(&self.inner.machines).keys().cloned().collect();
        let mut first_error = None;
        if let Err(e) = self.destroy_balancers().await {
            tracing::warn!(error = %e, "destroy_all: delete balancers failed");
            first_error.get_or_insert(e);
        }
        for name in names {
            if let Err(e) = self.delete_machine(&name).await {
                tracing::warn!(machine = %name, error = %e, "destroy_all: delete machine failed");
                first_error.get_or_insert(e);
            }
        }
        let clusters: Vec<String> = lock(&self.inner.networks).keys().cloned().collect();
        for cluster in clusters {
            if let Err(e) = self.delete_network(&cluster).await {
                tracing::warn!(%cluster, error = %e, "destroy_all: delete network failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The network of `cluster` if it exists.
    pub async fn get_network(&self, cluster: &str) -> Option<Network> {
        let slot = lock(&self.inner.networks).get(cluster).cloned()?;
        let guard = slot.lock().await;
        guard.as_ref().map(|r| r.network.clone())
    }

    /// The containerd socket of a machine.
    pub fn containerd_socket(&self, name: &str) -> Option<PathBuf> {
        lock(&self.inner.snapshots).get(name).map(|r| r.socket())
    }

    /// Network namespace name and cgroup of a machine (for tests and diagnostics).
    pub fn machine_sandbox(&self, name: &str) -> Option<(String, CgroupPath)> {
        lock(&self.inner.snapshots)
            .get(name)
            .map(|r| (r.netns.clone(), CgroupPath::new(&r.cgroup)))
    }

    // ---- networks ----

    fn network_for(&self, cluster: &str, index: u32) -> Network {
        let base = u32::from(self.inner.pool.network()) + 65_536 + index * 1024;
        let segment = |i: u32, zone: &str, suffix: &str| {
            let net = Ipv4Addr::from(base + i * 256);
            Segment {
                zone: zone.to_string(),
                cidr: Ipv4Net::new(net, 24).unwrap_or_default(),
                gateway: Ipv4Addr::from(base + i * 256 + 1),
                bridge: format!("korvet{index}-{suffix}"),
            }
        };
        let mut segments = vec![segment(0, "", "cp")];
        for (i, (zone, suffix)) in ZONES.iter().enumerate() {
            segments.push(segment(i as u32 + 1, zone, suffix));
        }
        Network {
            cluster: cluster.to_string(),
            index,
            api_endpoint: Ipv4Addr::from(base + 10),
            segments,
        }
    }

    fn max_networks(&self) -> u32 {
        let size = 1u64 << (32 - self.inner.pool.prefix_len());
        ((size - 65_536) / 1024).min(u64::from(u32::MAX)) as u32
    }

    fn network_owner(&self, cluster: &str) -> claims::Owner {
        claims::Owner {
            state_dir: self.inner.state_dir.clone(),
            key: cluster.to_string(),
        }
    }

    /// Claims a free network index host-wide and records the network (see [`claims`]).
    async fn claim_network(&self, cluster: &str) -> Result<NetworkRecord, CloudError> {
        let this = self.clone();
        let cluster = cluster.to_string();
        tokio::task::spawn_blocking(move || -> Result<NetworkRecord, CloudError> {
            let owner = this.network_owner(&cluster);
            let candidates = (0..this.max_networks()).map(|i| (i, network_claim(i)));
            let mut made = None;
            let claimed = claims::claim_first(candidates, &owner, network_still_held, |&index| {
                let rec = NetworkRecord {
                    network: this.network_for(&cluster, index),
                    slots: BTreeMap::new(),
                    routes: None,
                    external_return: None,
                };
                write_json_atomic(&this.network_path(&cluster), &rec)?;
                made = Some(rec);
                Ok(())
            })
            .map_err(CloudError::io(format!(
                "claim a network index in {}",
                claims::CLAIMS_DIR
            )))?;
            match (claimed, made) {
                (Some(_), Some(rec)) => Ok(rec),
                _ => Err(CloudError::PoolExhausted {
                    pool: this.inner.pool,
                }),
            }
        })
        .await
        .map_err(|e| CloudError::io("claim network index")(io::Error::other(e)))?
    }

    async fn ensure_bridges(&self, network: &Network) -> Result<(), CloudError> {
        for seg in &network.segments {
            if !self.link_exists(&seg.bridge, None).await {
                self.run_ip_tolerate(
                    &["link", "add", &seg.bridge, "type", "bridge"],
                    "File exists",
                )
                .await?;
            }
            let addr = format!("{}/{}", seg.gateway, seg.cidr.prefix_len());
            self.run_ip(&["addr", "replace", &addr, "dev", &seg.bridge])
                .await?;
            if seg.zone.is_empty() {
                let api = format!("{}/32", network.api_endpoint);
                self.run_ip(&["addr", "replace", &api, "dev", &seg.bridge])
                    .await?;
                for addr in network.master_addresses() {
                    let addr = format!("{addr}/32");
                    self.run_ip(&["addr", "replace", &addr, "dev", &seg.bridge])
                        .await?;
                }
            }
            self.run_ip(&["link", "set", &seg.bridge, "up"]).await?;
        }
        Ok(())
    }

    // ---- machines ----

    async fn start_locked(&self, rec: &mut MachineRecord) -> Result<(), CloudError> {
        if rec.running() {
            return Ok(());
        }
        let containerd = which("containerd").ok_or_else(|| CloudError::MissingTool {
            program: "containerd".into(),
            package: "containerd".into(),
        })?;
        // Half-dead (one process gone): end the rest before booting again.
        self.end_processes(rec).await?;
        self.ensure_sandbox(rec).await?;
        let cgroup = CgroupPath::new(&rec.cgroup);

        write_boot_files(&rec.dir, &rec.spec.boot)?;
        let config = rec.dir.join("containerd/config.toml");
        let config_text = containerd_config(&rec.dir, &rec.socket_dir);
        std::fs::create_dir_all(rec.dir.join("containerd"))
            .and_then(|()| std::fs::write(&config, config_text))
            .map_err(CloudError::io(format!("write {}", config.display())))?;
        std::fs::create_dir_all(&rec.socket_dir).map_err(CloudError::io(format!(
            "create {}",
            rec.socket_dir.display()
        )))?;
        let socket = rec.socket();
        let _ = std::fs::remove_file(&socket);

        let containerd_log = rec.dir.join("containerd.log");
        let proc = spawn_detached(&ProcessSpec {
            program: containerd.clone(),
            args: vec!["--config".into(), config.display().to_string()],
            env: vec![],
            log_file: containerd_log.clone(),
            netns: Some(rec.netns.clone()),
            cgroup: Some(cgroup.clone()),
        })?;
        rec.containerd = Some(proc.clone());
        self.save_machine(rec)?;
        wait_for_socket(&socket, &proc, &containerd_log, CONTAINERD_TIMEOUT).await?;

        let dir = rec.dir.display().to_string();
        let address = rec.address.to_string();
        let subst = |s: &str| s.replace("{dir}", &dir).replace("{address}", &address);
        let mut env: Vec<(String, String)> = rec
            .spec
            .boot
            .env
            .iter()
            .map(|(k, v)| (k.clone(), subst(v)))
            .collect();
        env.push(("CONTAINERD_ADDRESS".into(), socket.display().to_string()));
        let agent = spawn_detached(&ProcessSpec {
            program: rec.spec.boot.program.clone(),
            args: rec.spec.boot.args.iter().map(|a| subst(a)).collect(),
            env,
            log_file: rec.dir.join("agent.log"),
            netns: Some(rec.netns.clone()),
            cgroup: Some(cgroup),
        })?;
        rec.agent = Some(agent);
        self.save_machine(rec)?;
        tracing::info!(machine = %rec.spec.name, address = %rec.address, "machine running");
        Ok(())
    }

    fn save_machine(&self, rec: &MachineRecord) -> Result<(), CloudError> {
        let path = rec.dir.join("machine.json");
        write_json_atomic(&path, rec)
            .map_err(CloudError::io(format!("write {}", path.display())))?;
        lock(&self.inner.snapshots).insert(rec.spec.name.clone(), rec.clone());
        Ok(())
    }

    /// Makes whatever of the sandbox is missing (after a host reboot, everything but the
    /// directory is): netns, veth with address and routes, cgroup with limits.
    async fn ensure_sandbox(&self, rec: &MachineRecord) -> Result<(), CloudError> {
        let ns = rec.netns.as_str();
        if !netns_exists(ns) {
            let _guard = self.inner.netns_lock.lock().await;
            self.run_ip_tolerate(&["netns", "add", ns], "File exists")
                .await?;
        }
        if !self.link_exists("eth0", Some(ns)).await {
            // A host end without its peer cannot be fixed: make the pair again.
            self.run_ip_tolerate(&["link", "del", &rec.veth], "Cannot find device")
                .await?;
            self.run_ip(&[
                "link", "add", &rec.veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])
            .await?;
        }
        self.run_ip(&["link", "set", &rec.veth, "master", &rec.bridge, "up"])
            .await?;
        let addr = format!("{}/{}", rec.address, rec.prefix_len);
        self.run_ip(&["-n", ns, "addr", "replace", &addr, "dev", "eth0"])
            .await?;
        self.run_ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
        self.run_ip(&["-n", ns, "link", "set", "eth0", "up"])
            .await?;
        self.run_ip(&[
            "-n",
            ns,
            "route",
            "replace",
            "default",
            "via",
            &rec.gateway.to_string(),
        ])
        .await?;

        let cgroup = CgroupPath::new(&rec.cgroup);
        cgroup
            .create()
            .and_then(|()| {
                cgroup.set_limits(&Limits {
                    cpu_millis: rec.spec.cpu_millis,
                    memory_bytes: rec.spec.memory_bytes,
                    pids_max: PIDS_MAX,
                })
            })
            .map_err(CloudError::io(format!("cgroup {}", rec.cgroup)))?;
        Ok(())
    }

    /// Ends agent, then containerd, then anything else left in the cgroup (shims,
    /// containers).
    async fn end_processes(&self, rec: &mut MachineRecord) -> Result<(), CloudError> {
        if let Some(agent) = &rec.agent {
            agent.terminate(STOP_GRACE).await?;
        }
        if let Some(containerd) = &rec.containerd {
            containerd.terminate(STOP_GRACE).await?;
        }
        let cgroup = CgroupPath::new(&rec.cgroup);
        if cgroup.exists() {
            cgroup
                .kill_all(STOP_GRACE)
                .await
                .map_err(CloudError::io(format!(
                    "end processes of {}",
                    rec.spec.name
                )))?;
        }
        if rec.agent.is_some() || rec.containerd.is_some() {
            rec.agent = None;
            rec.containerd = None;
            self.save_machine(rec)?;
        }
        let _ = std::fs::remove_dir_all(&rec.socket_dir);
        // With every process gone, the pods' network namespaces (bind mounts in the
        // machine's directory) hold nothing; the agent makes new sandboxes at start.
        unmount_below(&rec.dir);
        Ok(())
    }

    /// Removes the kernel objects of a machine (all tolerant of missing pieces).
    async fn remove_sandbox(&self, rec: &MachineRecord) -> Result<(), CloudError> {
        self.run_ip_tolerate(&["link", "del", &rec.veth], "Cannot find device")
            .await?;
        if netns_exists(&rec.netns) {
            let _guard = self.inner.netns_lock.lock().await;
            self.run_ip_tolerate(&["netns", "del", &rec.netns], "No such file")
                .await?;
        }
        CgroupPath::new(&rec.cgroup)
            .remove()
            .await
            .map_err(CloudError::io(format!("remove cgroup {}", rec.cgroup)))?;
        Ok(())
    }

    async fn free_slot(&self, cluster: &str, slot: u32, name: &str) -> Result<(), CloudError> {
        let net_slot = self.network_slot(cluster);
        let mut guard = net_slot.lock().await;
        if let Some(net) = guard.as_mut() {
            if net.slots.get(&slot).is_some_and(|n| n == name) {
                net.slots.remove(&slot);
                let path = self.network_path(cluster);
                write_json_atomic(&path, net)
                    .map_err(CloudError::io(format!("write {}", path.display())))?;
            }
        }
        Ok(())
    }

    // ---- pod routes ----

    /// Makes the kernel route what enters the cluster's bridges (and what the host
    /// sends from the cluster's addresses) through the cluster's own table: its
    /// segments, its pod CIDRs via their machines, and `unreachable` for everything
    /// else. Forwarding is enabled on the zone bridges only, never globally.
    async fn apply_routing(
        &self,
        network: &Network,
        routes: &[PodRoute],
        external_return: Option<(Ipv4Net, Ipv4Addr)>,
    ) -> Result<(), CloudError> {
        let table = (ROUTE_TABLE_BASE + network.index).to_string();
        let pref = ROUTE_RULE_PREF.to_string();
        let plan = routing_plan(network, routes, external_return);
        for (route, why) in &plan.skipped {
            tracing::warn!(cluster = %network.cluster, pod_cidr = %route.pod_cidr, node = %route.node, "no pod route: {why}");
        }
        for args in &plan.routes {
            let mut full: Vec<&str> = vec!["route", "replace"];
            full.extend(args.iter().map(String::as_str));
            full.extend(["table", &table]);
            self.run_ip(&full).await?;
        }
        // Whatever else is in the table (pod CIDRs of removed nodes, leftovers) goes.
        let existing = self
            .ip_json(&["-4", "route", "show", "table", &table])
            .await?;
        for entry in existing {
            let Some(dst) = entry["dst"].as_str() else {
                continue;
            };
            if plan.destinations.contains(&normalize_dst(dst)) {
                continue;
            }
            let mut args = vec!["route", "del"];
            if let Some(kind) = entry["type"].as_str() {
                args.push(kind);
            }
            args.extend([dst, "table", &table]);
            self.run_ip_tolerate(&args, "No such process").await?;
        }
        let existing = self
            .ip_json(&["-4", "rule", "show", "table", &table])
            .await?;
        let mut present = Vec::new();
        for entry in &existing {
            let selector = rule_selector(entry);
            let wanted = plan.rules.contains(&selector)
                && entry["priority"].as_u64() == Some(u64::from(ROUTE_RULE_PREF));
            if wanted {
                present.push(selector);
                continue;
            }
            let prio = entry["priority"].as_u64().unwrap_or_default().to_string();
            let mut args = vec!["rule", "del", "pref", &prio];
            args.extend(selector.iter().map(String::as_str));
            args.extend(["table", &table]);
            self.run_ip_tolerate(&args, "No such file").await?;
        }
        for selector in &plan.rules {
            if present.contains(selector) {
                continue;
            }
            let mut args = vec!["rule", "add"];
            args.extend(selector.iter().map(String::as_str));
            args.extend(["lookup", &table, "pref", &pref]);
            self.run_ip(&args).await?;
        }
        // Zone bridges forward pod traffic; the control-plane one only while load
        // balancers live there (their traffic to the nodes).
        for seg in &network.segments {
            let forward = !seg.zone.is_empty() || external_return.is_some();
            let path = format!("/proc/sys/net/ipv4/conf/{}/forwarding", seg.bridge);
            tokio::fs::write(&path, if forward { "1" } else { "0" })
                .await
                .map_err(CloudError::io(format!("write {path}")))?;
        }
        Ok(())
    }

    /// Removes the rules and routes of network `index`'s table (all tolerant of their
    /// absence).
    async fn remove_routing(&self, index: u32) -> Result<(), CloudError> {
        let table = (ROUTE_TABLE_BASE + index).to_string();
        let rules = self
            .ip_json(&["-4", "rule", "show", "table", &table])
            .await?;
        for _ in 0..rules.len() {
            self.run_ip_tolerate(&["rule", "del", "table", &table], "No such file")
                .await?;
        }
        self.run_ip_tolerate(&["route", "flush", "table", &table], "does not exist")
            .await
    }

    /// `ip -j ARGS` as JSON entries; a table that does not exist is empty.
    async fn ip_json(&self, args: &[&str]) -> Result<Vec<serde_json::Value>, CloudError> {
        let out = tokio::process::Command::new(&self.inner.ip)
            .arg("-j")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(CloudError::io(format!("run {}", self.inner.ip.display())))?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !out.status.success() {
            if stderr.contains("does not exist") {
                return Ok(Vec::new());
            }
            return Err(CloudError::Command {
                command: format!("ip -j {}", args.join(" ")),
                stderr,
            });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        serde_json::from_str(&text).map_err(|e| CloudError::Command {
            command: format!("ip -j {}", args.join(" ")),
            stderr: format!("unexpected output: {e}"),
        })
    }

    // ---- ip ----

    async fn run_ip(&self, args: &[&str]) -> Result<(), CloudError> {
        self.run_ip_tolerate(args, "\u{0}never").await
    }

    /// Runs `ip ARGS`; a failure whose stderr contains `tolerated` counts as success.
    async fn run_ip_tolerate(&self, args: &[&str], tolerated: &str) -> Result<(), CloudError> {
        let out = tokio::process::Command::new(&self.inner.ip)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(CloudError::io(format!("run {}", self.inner.ip.display())))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.contains(tolerated) {
            return Ok(());
        }
        Err(CloudError::Command {
            command: format!("ip {}", args.join(" ")),
            stderr,
        })
    }

    async fn link_exists(&self, name: &str, netns: Option<&str>) -> bool {
        let mut cmd = tokio::process::Command::new(&self.inner.ip);
        if let Some(ns) = netns {
            cmd.args(["-n", ns]);
        }
        cmd.args(["link", "show", "dev", name])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        matches!(cmd.status().await, Ok(s) if s.success())
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn zones(&self) -> Vec<String> {
        ZONES.iter().map(|(z, _)| z.to_string()).collect()
    }

    async fn ensure_network(&self, cluster: &str) -> Result<Network, CloudError> {
        validate_name(cluster)?;
        let slot = self.network_slot(cluster);
        let mut guard = slot.lock().await;
        if guard.is_none() {
            let rec = self.claim_network(cluster).await?;
            tracing::info!(%cluster, index = rec.network.index, "network claimed");
            // A crashed earlier holder of the index may have left its routing behind.
            self.remove_routing(rec.network.index).await?;
            *guard = Some(rec);
        }
        let Some(rec) = guard.as_ref() else {
            return Err(CloudError::NotFound(cluster.to_string()));
        };
        let network = rec.network.clone();
        if !lock(&self.inner.verified).contains(cluster) {
            claims::ensure(&network_claim(network.index), &self.network_owner(cluster))
                .map_err(CloudError::io(format!("claim network {}", network.index)))?;
            self.ensure_bridges(&network).await?;
            // Bridges made again lost their forwarding sysctls: routing is applied anew.
            lock(&self.inner.routed).remove(cluster);
            lock(&self.inner.verified).insert(cluster.to_string());
        }
        Ok(network)
    }

    async fn delete_network(&self, cluster: &str) -> Result<(), CloudError> {
        let slot = self.network_slot(cluster);
        let mut guard = slot.lock().await;
        let Some(rec) = guard.as_ref() else {
            return Ok(());
        };
        if !rec.slots.is_empty() {
            return Err(CloudError::InUse {
                what: format!("network of cluster {cluster}"),
                detail: format!(
                    "machines {:?} are on it: delete them first",
                    rec.slots.values().collect::<Vec<_>>()
                ),
            });
        }
        if self.balancer_path(cluster).exists() {
            return Err(CloudError::InUse {
                what: format!("network of cluster {cluster}"),
                detail: "its load-balancer instances are on it: delete the balancer first".into(),
            });
        }
        lock(&self.inner.verified).remove(cluster);
        lock(&self.inner.routed).remove(cluster);
        self.remove_routing(rec.network.index).await?;
        // The bridges' forwarding sysctls go with the bridges.
        for seg in &rec.network.segments {
            self.run_ip_tolerate(&["link", "del", &seg.bridge], "Cannot find device")
                .await?;
        }
        let path = self.network_path(cluster);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CloudError::io(format!("remove {}", path.display()))(e)),
        }
        claims::release(
            &network_claim(rec.network.index),
            &self.network_owner(cluster),
        );
        *guard = None;
        tracing::info!(%cluster, "network deleted");
        Ok(())
    }

    async fn create_machine(&self, spec: &MachineSpec) -> Result<MachineInfo, CloudError> {
        validate_name(&spec.name)?;
        let Some(zone_pos) = ZONES.iter().position(|(z, _)| *z == spec.zone) else {
            return Err(CloudError::UnknownZone {
                zone: spec.zone.clone(),
                zones: self.zones(),
            });
        };
        for (path, _, _) in &spec.boot.files {
            relative_path(path)?;
        }
        let network = self.ensure_network(&spec.cluster).await?;
        let slot = self.machine_slot(&spec.name);
        let mut guard = slot.lock().await;
        if let Some(rec) = guard.as_mut() {
            if rec.spec.cluster != spec.cluster || rec.spec.zone != spec.zone {
                return Err(CloudError::Conflict {
                    what: format!("machine {}", spec.name),
                    detail: format!(
                        "it is in cluster {} zone {}",
                        rec.spec.cluster, rec.spec.zone
                    ),
                });
            }
            self.start_locked(rec).await?;
            return Ok(rec.info());
        }

        // Take a slot in the cluster network, recorded before anything uses it.
        let k = {
            let net_slot = self.network_slot(&spec.cluster);
            let mut net_guard = net_slot.lock().await;
            let Some(net) = net_guard.as_mut() else {
                return Err(CloudError::InUse {
                    what: format!("network of cluster {}", spec.cluster),
                    detail: "it was deleted while the machine was being created: try again".into(),
                });
            };
            let Some(k) = (0..MAX_SLOTS).find(|k| !net.slots.contains_key(k)) else {
                return Err(CloudError::InUse {
                    what: format!("network of cluster {}", spec.cluster),
                    detail: format!("all {MAX_SLOTS} machine slots are taken"),
                });
            };
            net.slots.insert(k, spec.name.clone());
            let path = self.network_path(&spec.cluster);
            write_json_atomic(&path, net)
                .map_err(CloudError::io(format!("write {}", path.display())))?;
            k
        };
        let seg = &network.segments[zone_pos + 1];
        let n = network.index;
        let rec = MachineRecord {
            spec: spec.clone(),
            net_index: n,
            slot: k,
            address: Ipv4Addr::from(u32::from(seg.cidr.network()) + 10 + k),
            prefix_len: seg.cidr.prefix_len(),
            gateway: seg.gateway,
            bridge: seg.bridge.clone(),
            netns: format!("korvet-n{n}-m{k}"),
            veth: format!("korvet{n}m{k}"),
            cgroup: format!("korvet/korvet-n{n}-m{k}"),
            dir: self.machine_dir(&spec.name),
            socket_dir: Path::new(SOCKETS_DIR).join(format!("{n}-{k}")),
            containerd: None,
            agent: None,
        };
        // Leftovers of a crashed run that had this slot are not ours to keep.
        unmount_below(&rec.dir);
        let _ = std::fs::remove_dir_all(&rec.dir);
        self.save_machine(&rec)?;
        *guard = Some(rec);
        let Some(rec) = guard.as_mut() else {
            return Err(CloudError::NotFound(spec.name.clone()));
        };
        self.remove_sandbox(rec).await?;
        self.start_locked(rec).await?;
        Ok(rec.info())
    }

    async fn start_machine(&self, name: &str) -> Result<MachineInfo, CloudError> {
        let slot = self.machine_slot(name);
        let mut guard = slot.lock().await;
        let Some(rec) = guard.as_mut() else {
            return Err(CloudError::NotFound(name.to_string()));
        };
        let cluster = rec.spec.cluster.clone();
        // The network's bridges may be gone (host reboot); the network lock is separate.
        drop(guard);
        self.ensure_network(&cluster).await?;
        let mut guard = slot.lock().await;
        let Some(rec) = guard.as_mut() else {
            return Err(CloudError::NotFound(name.to_string()));
        };
        self.start_locked(rec).await?;
        Ok(rec.info())
    }

    async fn stop_machine(&self, name: &str) -> Result<(), CloudError> {
        let slot = self.machine_slot(name);
        let mut guard = slot.lock().await;
        let Some(rec) = guard.as_mut() else {
            return Err(CloudError::NotFound(name.to_string()));
        };
        self.end_processes(rec).await?;
        tracing::info!(machine = name, "machine stopped");
        Ok(())
    }

    async fn delete_machine(&self, name: &str) -> Result<(), CloudError> {
        let slot = self.machine_slot(name);
        let mut guard = slot.lock().await;
        let Some(rec) = guard.as_mut() else {
            return Ok(());
        };
        self.end_processes(rec).await?;
        self.remove_sandbox(rec).await?;
        unmount_below(&rec.dir);
        match std::fs::remove_dir_all(&rec.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CloudError::io(format!("remove {}", rec.dir.display()))(e)),
        }
        let (cluster, k) = (rec.spec.cluster.clone(), rec.slot);
        *guard = None;
        drop(guard);
        lock(&self.inner.snapshots).remove(name);
        self.free_slot(&cluster, k, name).await?;
        tracing::info!(machine = name, "machine deleted");
        Ok(())
    }

    async fn sync_routes(&self, cluster: &str, routes: &[PodRoute]) -> Result<(), CloudError> {
        let mut routes = routes.to_vec();
        routes.sort();
        routes.dedup();
        if lock(&self.inner.networks).get(cluster).is_none() {
            return Err(CloudError::NoNetwork(cluster.to_string()));
        }
        // Bridges missing after a host reboot are made again first.
        self.ensure_network(cluster).await?;
        if lock(&self.inner.routed).get(cluster) == Some(&routes) {
            return Ok(());
        }
        let slot = self.network_slot(cluster);
        let mut guard = slot.lock().await;
        let Some(rec) = guard.as_mut() else {
            return Err(CloudError::NoNetwork(cluster.to_string()));
        };
        if rec.routes.as_ref() != Some(&routes) {
            // Recorded first: delete and a restarted provider then know routing exists.
            rec.routes = Some(routes.clone());
            let path = self.network_path(cluster);
            write_json_atomic(&path, rec)
                .map_err(CloudError::io(format!("write {}", path.display())))?;
        }
        let (network, external_return) = (rec.network.clone(), rec.external_return);
        self.apply_routing(&network, &routes, external_return)
            .await?;
        lock(&self.inner.routed).insert(cluster.to_string(), routes);
        tracing::info!(%cluster, "pod routes synced");
        Ok(())
    }

    async fn get_machine(&self, name: &str) -> Result<Option<MachineInfo>, CloudError> {
        Ok(lock(&self.inner.snapshots).get(name).map(|r| r.info()))
    }

    async fn list_machines(&self, cluster: Option<&str>) -> Result<Vec<MachineInfo>, CloudError> {
        let mut out: Vec<MachineInfo> = lock(&self.inner.snapshots)
            .values()
            .filter(|r| cluster.is_none_or(|c| c == r.spec.cluster))
            .map(|r| r.info())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// What a cluster's routing table and rules should hold.
#[derive(Debug, Default)]
struct RoutingPlan {
    /// `ip route replace` arguments (without the table).
    routes: Vec<Vec<String>>,
    /// Every destination of `routes`.
    destinations: Vec<Ipv4Net>,
    /// Rule selectors (`iif BRIDGE`, `from NETWORK`).
    rules: Vec<Vec<String>>,
    skipped: Vec<(PodRoute, String)>,
}

fn routing_plan(
    network: &Network,
    routes: &[PodRoute],
    external_return: Option<(Ipv4Net, Ipv4Addr)>,
) -> RoutingPlan {
    let mut plan = RoutingPlan::default();
    let own = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    for seg in &network.segments {
        let cidr = seg.cidr.trunc();
        plan.routes.push(own(&[
            &cidr.to_string(),
            "dev",
            &seg.bridge,
            "scope",
            "link",
            "src",
            &seg.gateway.to_string(),
        ]));
        plan.destinations.push(cidr);
        plan.rules.push(own(&["iif", &seg.bridge]));
    }
    // Replies the host sends from the cluster's addresses (its gateways, the API
    // endpoint) to pod IPs follow the cluster's table too, never the uplink.
    if let Some(first) = network.segments.first() {
        let prefix = first.cidr.prefix_len().saturating_sub(2);
        if let Ok(all) = Ipv4Net::new(first.cidr.network(), prefix) {
            plan.rules.push(own(&["from", &all.trunc().to_string()]));
        }
    }
    for route in routes {
        let cidr = route.pod_cidr.trunc();
        let Some(seg) = network
            .segments
            .iter()
            .find(|s| !s.zone.is_empty() && s.cidr.contains(&route.node))
        else {
            plan.skipped.push((
                *route,
                "the node is not on a zone segment of the cluster".into(),
            ));
            continue;
        };
        if network
            .segments
            .iter()
            .any(|s| s.cidr.contains(&cidr) || cidr.contains(&s.cidr))
            || plan.destinations.contains(&cidr)
        {
            plan.skipped.push((
                *route,
                "the pod CIDR overlaps the cluster network or another pod CIDR".into(),
            ));
            continue;
        }
        plan.routes.push(own(&[
            &cidr.to_string(),
            "via",
            &route.node.to_string(),
            "dev",
            &seg.bridge,
        ]));
        plan.destinations.push(cidr);
    }
    if let (Some((external, gateway)), Some(cp)) = (external_return, network.segment("")) {
        plan.routes.push(own(&[
            &external.trunc().to_string(),
            "via",
            &gateway.to_string(),
            "dev",
            &cp.bridge,
        ]));
        plan.destinations.push(external.trunc());
    }
    plan.routes.push(own(&["unreachable", "default"]));
    plan.destinations.push(Ipv4Net::default());
    plan
}

/// A route's `dst` as `ip -j` prints it (`default`, `10.1.2.3`, `10.1.0.0/16`).
fn normalize_dst(dst: &str) -> Ipv4Net {
    if dst == "default" {
        return Ipv4Net::default();
    }
    dst.parse::<Ipv4Net>()
        .or_else(|_| dst.parse::<Ipv4Addr>().map(Ipv4Net::from))
        .unwrap_or_else(|_| Ipv4Net::new(Ipv4Addr::BROADCAST, 32).unwrap_or_default())
}

/// The selector of a rule as `ip -j rule show` prints it (`iif X` or `from NET`).
fn rule_selector(entry: &serde_json::Value) -> Vec<String> {
    let mut selector = Vec::new();
    if let Some(iif) = entry["iif"].as_str() {
        selector.extend(["iif".to_string(), iif.to_string()]);
    }
    if let Some(src) = entry["src"].as_str().filter(|s| *s != "all") {
        let len = entry["srclen"].as_u64().unwrap_or(32);
        selector.extend(["from".to_string(), format!("{src}/{len}")]);
    }
    selector
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these maps leaves them consistent (single inserts/removes).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where `program` is: on `PATH`, or in the system directories, since `ip` and others
/// live in the sbin directories that a user's `PATH` often lacks.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn validate_name(name: &str) -> Result<(), CloudError> {
    let bad = |reason: &str| {
        Err(CloudError::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() || name.len() > 63 {
        return bad("it must have 1 to 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return bad("use lowercase letters, digits, '-' and '.'");
    }
    if name.starts_with(['-', '.']) {
        return bad("it must start with a letter or digit");
    }
    Ok(())
}

fn relative_path(path: &str) -> Result<PathBuf, CloudError> {
    let p = Path::new(path);
    if p.components().all(|c| matches!(c, Component::Normal(_))) && !path.is_empty() {
        Ok(p.to_path_buf())
    } else {
        Err(CloudError::InvalidName {
            name: path.to_string(),
            reason: "boot files need a relative path without '..'".into(),
        })
    }
}

fn write_boot_files(dir: &Path, boot: &BootSpec) -> Result<(), CloudError> {
    for (path, content, mode) in &boot.files {
        let target = dir.join(relative_path(path)?);
        let write = || -> io::Result<()> {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&target, content)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode))
        };
        write().map_err(CloudError::io(format!(
            "write boot file {}",
            target.display()
        )))?;
    }
    Ok(())
}

/// Where a machine's containerd looks for registry host configuration, relative to the
/// machine directory (files a [`BootSpec`] may write).
pub const REGISTRY_HOSTS_DIR: &str = "containerd/certs.d";

/// Boot files that make a machine's containerd trust `ca_pem` for the registry at
/// `host` (`HOST:PORT`), as containerd's `hosts.toml` registry configuration.
pub fn registry_ca_files(host: &str, ca_pem: &[u8]) -> Vec<(String, Vec<u8>, u32)> {
    let dir = format!("{REGISTRY_HOSTS_DIR}/{host}");
    // A relative `ca` is resolved against the host's directory.
    let hosts = format!(
        "server = \"https://{host}\"\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"ca.crt\"\n"
    );
    vec![
        (format!("{dir}/hosts.toml"), hosts.into_bytes(), 0o644),
        (format!("{dir}/ca.crt"), ca_pem.to_vec(), 0o644),
    ]
}

/// containerd with everything it keeps under the machine directory, except its sockets
/// (unix socket paths are limited to 108 bytes).
fn containerd_config(dir: &Path, socket_dir: &Path) -> String {
    let c = dir.join("containerd");
    let q = |p: PathBuf| format!("{:?}", p.display().to_string());
    format!(
        r#"version = 2
root = {root}
state = {state}
# Plugins that need kernel or host features a machine sandbox does not have.
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = {sock}

[ttrpc]
  address = {ttrpc}

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

# The node agent imports this image (built from busybox) until a registry serves it.
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "korvet.local/pause:latest"
  # Without CAP_SYS_RESOURCE (a host that is itself a container) lowering a
  # container's oom_score_adj fails: keep it no lower than containerd's own.
  restrict_oom_score_adj = true
  # Pod network namespaces live in the machine's state directory, not in the host's
  # /run/netns, so that they go with the machine.
  netns_mounts_under_state_dir = true

# RuntimeClass handlers: `runc` (the default) and `crun`, both through the runc v2 shim.
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
    BinaryName = {crun}

# Registry hosts (CAs, mirrors) of the machine: `REGISTRY_HOSTS_DIR/HOST:PORT/hosts.toml`.
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = {hosts}

# Each machine has its own CNI configuration (written by its node agent).
[plugins."io.containerd.grpc.v1.cri".cni]
  conf_dir = {cni}
  bin_dir = "/usr/lib/cni"
"#,
        root = q(c.join("root")),
        state = q(c.join("state")),
        sock = q(socket_dir.join("containerd.sock")),
        ttrpc = q(socket_dir.join("containerd.sock.ttrpc")),
        opt = q(c.join("opt")),
        cni = q(dir.join("cni/net.d")),
        crun = q(which("crun").unwrap_or_else(|| PathBuf::from("/usr/bin/crun"))),
        hosts = q(dir.join(REGISTRY_HOSTS_DIR)),
    )
}

async fn wait_for_socket(
    socket: &Path,
    proc: &ProcessRecord,
    log: &Path,
    timeout: Duration,
) -> Result<(), CloudError> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Ok(());
        }
        if !proc.is_alive() {
            return Err(CloudError::Timeout {
                what: format!("containerd (exited; socket {})", socket.display()),
                waited: Duration::ZERO,
                log: log.to_path_buf(),
            });
        }
        if Instant::now() >= deadline {
            return Err(CloudError::Timeout {
                what: format!("containerd socket {}", socket.display()),
                waited: timeout,
                log: log.to_path_buf(),
            });
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn network_claim(index: u32) -> String {
    format!("net-{index}")
}

/// Whether `owner`'s state directory still records network `index` as its cluster's.
fn network_still_held(owner: &claims::Owner, index: &u32) -> bool {
    let record = owner
        .state_dir
        .join("networks")
        .join(format!("{}.json", owner.key));
    matches!(read_json::<NetworkRecord>(&record), Ok(Some(rec)) if rec.network.index == *index)
}

/// Detaches any mount below `dir` (container root filesystems of a machine that was
/// killed, the pods' network namespaces), deepest first, so the directory can be removed.
fn unmount_below(dir: &Path) {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut mounts: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: plain syscall on a valid C string.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            tracing::warn!(mount = %m.display(), error = %io::Error::last_os_error(), "cannot unmount");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert!(validate_name("c1-node.0").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("A").is_err());
        assert!(validate_name("../x").is_err());
        assert!(relative_path("etc/x.yaml").is_ok());
        assert!(relative_path("/etc/x").is_err());
        assert!(relative_path("a/../../x").is_err());
    }

    #[test]
    fn a_network_claim_is_held_only_with_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let owner = claims::Owner {
            state_dir: dir.path().join("state"),
            key: "c1".into(),
        };
        assert!(!network_still_held(&owner, &7), "owner has no record");
        let rec = NetworkRecord {
            network: Network {
                cluster: "c1".into(),
                index: 7,
                api_endpoint: Ipv4Addr::LOCALHOST,
                segments: vec![],
            },
            slots: BTreeMap::new(),
            routes: None,
            external_return: None,
        };
        write_json_atomic(&owner.state_dir.join("networks/c1.json"), &rec).unwrap();
        assert!(network_still_held(&owner, &7));
        assert!(
            !network_still_held(&owner, &8),
            "the record names another index"
        );
    }

    #[test]
    fn config_is_toml_with_quoted_paths() {
        let text = containerd_config(Path::new("/s/machines/m"), Path::new("/run/korvet/m/1-2"));
        assert!(
            text.contains(r#"sandbox_image = "korvet.local/pause:latest""#),
            "{text}"
        );
        assert!(
            text.contains(r#"address = "/run/korvet/m/1-2/containerd.sock""#),
            "{text}"
        );
        assert!(
            text.contains(r#"root = "/s/machines/m/containerd/root""#),
            "{text}"
        );
        // RuntimeClass handlers: runc by default, crun through the same shim.
        assert!(text.contains(r#"default_runtime_name = "runc""#), "{text}");
        assert!(
            text.contains(r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]"#),
            "{text}"
        );
        assert!(text.contains("BinaryName = \""), "{text}");
        assert!(
            text.contains(r#"config_path = "/s/machines/m/containerd/certs.d""#),
            "{text}"
        );
    }

    #[test]
    fn registry_files_name_the_host_and_its_ca() {
        let files = registry_ca_files("10.201.0.10:5443", b"PEM");
        assert_eq!(files[0].0, "containerd/certs.d/10.201.0.10:5443/hosts.toml");
        let hosts = String::from_utf8(files[0].1.clone()).unwrap();
        assert!(
            hosts.contains(r#"[host."https://10.201.0.10:5443"]"#),
            "{hosts}"
        );
        assert!(hosts.contains(r#"ca = "ca.crt""#), "{hosts}");
        assert_eq!(
            files[1],
            (
                "containerd/certs.d/10.201.0.10:5443/ca.crt".into(),
                b"PEM".to_vec(),
                0o644
            )
        );
        assert!(files.iter().all(|(p, _, _)| relative_path(p).is_ok()));
    }

    fn net() -> Network {
        LocalProviderForTest::network(3)
    }

    struct LocalProviderForTest;
    impl LocalProviderForTest {
        fn network(index: u32) -> Network {
            let base = u32::from(Ipv4Addr::new(10, 201, 0, 0)) + index * 1024;
            let segment = |i: u32, zone: &str, suffix: &str| Segment {
                zone: zone.into(),
                cidr: Ipv4Net::new(Ipv4Addr::from(base + i * 256), 24).unwrap(),
                gateway: Ipv4Addr::from(base + i * 256 + 1),
                bridge: format!("korvet{index}-{suffix}"),
            };
            Network {
                cluster: "c".into(),
                index,
                api_endpoint: Ipv4Addr::from(base + 10),
                segments: vec![
                    segment(0, "", "cp"),
                    segment(1, "zone-a", "za"),
                    segment(2, "zone-b", "zb"),
                ],
            }
        }
    }

    #[test]
    fn routing_plan_routes_pod_cidrs_via_nodes_and_refuses_the_rest() {
        let route = |cidr: &str, node: [u8; 4]| PodRoute {
            pod_cidr: cidr.parse().unwrap(),
            node: Ipv4Addr::from(node),
        };
        let plan = routing_plan(
            &net(),
            &[
                route("10.244.0.0/24", [10, 201, 13, 10]),
                route("10.244.1.0/24", [10, 201, 14, 11]),
                route("10.244.2.0/24", [10, 9, 9, 9]),
                route("10.201.12.0/23", [10, 201, 13, 10]),
                route("10.244.0.0/24", [10, 201, 14, 12]),
            ],
            None,
        );
        let lines: Vec<String> = plan.routes.iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "10.201.12.0/24 dev korvet3-cp scope link src 10.201.12.1",
                "10.201.13.0/24 dev korvet3-za scope link src 10.201.13.1",
                "10.201.14.0/24 dev korvet3-zb scope link src 10.201.14.1",
                "10.244.0.0/24 via 10.201.13.10 dev korvet3-za",
                "10.244.1.0/24 via 10.201.14.11 dev korvet3-zb",
                "unreachable default",
            ]
        );
        assert_eq!(plan.skipped.len(), 3, "{:?}", plan.skipped);
        let rules: Vec<String> = plan.rules.iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            rules,
            [
                "iif korvet3-cp",
                "iif korvet3-za",
                "iif korvet3-zb",
                "from 10.201.12.0/22"
            ]
        );
        assert_eq!(normalize_dst("default"), Ipv4Net::default());
        assert_eq!(normalize_dst("10.1.2.3"), "10.1.2.3/32".parse().unwrap());
        let rule = serde_json::json!({"priority": 5000, "src": "10.201.12.0", "srclen": 22, "table": "1003"});
        assert_eq!(rule_selector(&rule), ["from", "10.201.12.0/22"]);
        let rule = serde_json::json!({"priority": 5000, "src": "all", "iif": "korvet3-za", "table": "1003"});
        assert_eq!(rule_selector(&rule), ["iif", "korvet3-za"]);
        // With load balancers, replies to the external network go through them.
        let with_balancer = routing_plan(
            &net(),
            &[],
            Some((
                "10.200.0.0/16".parse().unwrap(),
                Ipv4Addr::new(10, 201, 12, 30),
            )),
        );
        let lines: Vec<String> = with_balancer.routes.iter().map(|r| r.join(" ")).collect();
        assert!(
            lines.contains(&"10.200.0.0/16 via 10.201.12.30 dev korvet3-cp".to_string()),
            "{lines:?}"
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some("unreachable default")
        );
    }
}
