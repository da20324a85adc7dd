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
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::cgroup::{CgroupPath, Limits};
use crate::process::{read_json, spawn_detached, write_json_atomic, ProcessRecord, ProcessSpec};
use crate::{
    BootSpec, CloudError, MachineInfo, MachineSpec, MachineState, Network, Provider, Segment,
};

/// The default address pool, 10.200.0.0/13.
pub fn default_pool() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 200, 0, 0), 13).unwrap_or_default()
}
const ZONES: [(&str, &str); 3] = [("zone-a", "za"), ("zone-b", "zb"), ("zone-c", "zc")];
const CLAIMS_DIR: &str = "/run/korvet/claims";
const SOCKETS_DIR: &str = "/run/korvet/m";
/// Machine addresses are .10+k in a /24.
const MAX_SLOTS: u32 = 240;
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);
const PIDS_MAX: u64 = 16_384;

/// What is known of a cluster network: the network and which machine holds which slot.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct NetworkRecord {
    network: Network,
    /// slot -> machine name
    slots: BTreeMap<u32, String>,
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
    /// `ip netns add` mounts /run/netns on first use; concurrent first uses race.
    netns_lock: Mutex<()>,
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
                netns_lock: Mutex::new(()),
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

    /// Deletes every machine and network this provider recorded (for tests' cleanup).
    pub async fn destroy_all(&self) -> Result<(), CloudError> {
        let names: Vec<String> = lock(&self.inner.machines).keys().cloned().collect();
        let mut first_error = None;
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

    /// Claims a free network index host-wide and records the network, both under an
    /// flock: a claim counts as stale when its owner has no record of it, so the record
    /// must exist before another provider can look.
    async fn claim_network(&self, cluster: &str) -> Result<NetworkRecord, CloudError> {
        let this = self.clone();
        let cluster = cluster.to_string();
        tokio::task::spawn_blocking(move || -> Result<NetworkRecord, CloudError> {
            std::fs::create_dir_all(CLAIMS_DIR).map_err(CloudError::io(format!("create {CLAIMS_DIR}")))?;
            let lock_file = File::create(Path::new(CLAIMS_DIR).join(".lock"))
                .map_err(CloudError::io(format!("open {CLAIMS_DIR}/.lock")))?;
            let _flock = Flock::lock(&lock_file).map_err(CloudError::io(format!("lock {CLAIMS_DIR}/.lock")))?;
            let owner = format!("{}\n{}\n", this.inner.state_dir.display(), cluster);
            for index in 0..this.max_networks() {
                let path = Path::new(CLAIMS_DIR).join(format!("net-{index}"));
                let free = match OpenOptions::new().write(true).create_new(true).open(&path) {
                    Ok(_) => true,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let stale = claim_is_stale(&path, index);
                        if stale {
                            tracing::info!(claim = %path.display(), "taking over stale network claim");
                        }
                        stale
                    }
                    Err(e) => return Err(CloudError::io(format!("create {}", path.display()))(e)),
                };
                if !free {
                    continue;
                }
                write_file_synced(&path, owner.as_bytes())
                    .map_err(CloudError::io(format!("write {}", path.display())))?;
                let rec = NetworkRecord {
                    network: this.network_for(&cluster, index),
                    slots: BTreeMap::new(),
                };
                let rec_path = this.network_path(&cluster);
                write_json_atomic(&rec_path, &rec).map_err(CloudError::io(format!("write {}", rec_path.display())))?;
                return Ok(rec);
            }
            Err(CloudError::PoolExhausted { pool: this.inner.pool })
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
            *guard = Some(rec);
        }
        let Some(rec) = guard.as_ref() else {
            return Err(CloudError::NotFound(cluster.to_string()));
        };
        let network = rec.network.clone();
        if !lock(&self.inner.verified).contains(cluster) {
            ensure_claim(&self.inner.state_dir, cluster, network.index)?;
            self.ensure_bridges(&network).await?;
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
        lock(&self.inner.verified).remove(cluster);
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
        release_claim(&self.inner.state_dir, cluster, rec.network.index);
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

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these maps leaves them consistent (single inserts/removes).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn which(program: &str) -> Option<PathBuf> {
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

/// A claim is stale when the state directory it names no longer records that network.
fn claim_is_stale(path: &Path, index: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let mut lines = text.lines();
    let (Some(state_dir), Some(cluster)) = (lines.next(), lines.next()) else {
        // Being written right now by a claimer that does not hold the lock: never.
        return text.is_empty();
    };
    let record = Path::new(state_dir)
        .join("networks")
        .join(format!("{cluster}.json"));
    !matches!(read_json::<NetworkRecord>(&record), Ok(Some(rec)) if rec.network.index == index)
}

/// After a host reboot /run is empty again: put our claim back.
fn ensure_claim(state_dir: &Path, cluster: &str, index: u32) -> Result<(), CloudError> {
    let path = Path::new(CLAIMS_DIR).join(format!("net-{index}"));
    let owner = format!("{}\n{}\n", state_dir.display(), cluster);
    match std::fs::read_to_string(&path) {
        Ok(text) if text == owner => Ok(()),
        Ok(text) => {
            tracing::warn!(claim = %path.display(), holder = %text.trim(), "network index claimed by another provider too");
            Ok(())
        }
        Err(_) => std::fs::create_dir_all(CLAIMS_DIR)
            .and_then(|()| std::fs::write(&path, owner))
            .map_err(CloudError::io(format!("write {}", path.display()))),
    }
}

fn release_claim(state_dir: &Path, cluster: &str, index: u32) {
    let path = Path::new(CLAIMS_DIR).join(format!("net-{index}"));
    let owner = format!("{}\n{}\n", state_dir.display(), cluster);
    if std::fs::read_to_string(&path).is_ok_and(|t| t == owner) {
        let _ = std::fs::remove_file(&path);
    }
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

fn write_file_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// An exclusive flock held until drop.
struct Flock<'a>(&'a File);

impl<'a> Flock<'a> {
    fn lock(file: &'a File) -> io::Result<Flock<'a>> {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on an open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Flock(file))
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on an open descriptor.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
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
    fn claim_is_stale_only_without_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let claim = dir.path().join("net-7");
        std::fs::write(&claim, format!("{}\nc1\n", state.display())).unwrap();
        assert!(claim_is_stale(&claim, 7), "owner has no record");
        let rec = NetworkRecord {
            network: Network {
                cluster: "c1".into(),
                index: 7,
                api_endpoint: Ipv4Addr::LOCALHOST,
                segments: vec![],
            },
            slots: BTreeMap::new(),
        };
        write_json_atomic(&state.join("networks/c1.json"), &rec).unwrap();
        assert!(!claim_is_stale(&claim, 7));
        assert!(claim_is_stale(&claim, 8), "the record names another index");
        std::fs::write(&claim, "").unwrap();
        assert!(claim_is_stale(&claim, 7), "torn claim of a crashed claimer");
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
    }
}
