//! The infrastructure provider: networks and machines for Korvet clusters, behind the
//! [`Provider`] trait, and [`local::LocalProvider`], which turns one Linux host into a
//! small cloud (a machine is a network namespace + cgroup + directory + its own
//! containerd + a boot agent).
//!
//! [`process`] supervises detached processes (control planes, containerd, agents) so
//! that they survive a crash of `korvet server` and are adopted by the next one.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

mod cgroup;
pub mod local;
pub mod process;

pub use cgroup::{CgroupPath, Limits};
pub use local::ADMIN_PORT as BALANCER_ADMIN_PORT;
pub use local::{which, LocalProvider};
pub use process::{
    read_json, spawn_detached, write_json_atomic, ProcessError, ProcessRecord, ProcessSpec,
};

/// A cloud to run clusters' machines on.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Availability zones, in order.
    fn zones(&self) -> Vec<String>;
    /// The private network of a cluster (idempotent).
    async fn ensure_network(&self, cluster: &str) -> Result<Network, CloudError>;
    /// Removes the cluster's network (idempotent); [`CloudError::InUse`] while
    /// machines of that cluster exist.
    async fn delete_network(&self, cluster: &str) -> Result<(), CloudError>;
    /// Creates the machine and leaves it running (idempotent by `spec.name`).
    async fn create_machine(&self, spec: &MachineSpec) -> Result<MachineInfo, CloudError>;
    /// Boots a stopped machine (idempotent).
    async fn start_machine(&self, name: &str) -> Result<MachineInfo, CloudError>;
    /// Ends its processes; its disk and address are kept (idempotent).
    async fn stop_machine(&self, name: &str) -> Result<(), CloudError>;
    /// Removes everything of the machine (idempotent).
    async fn delete_machine(&self, name: &str) -> Result<(), CloudError>;
    async fn get_machine(&self, name: &str) -> Result<Option<MachineInfo>, CloudError>;
    async fn list_machines(&self, cluster: Option<&str>) -> Result<Vec<MachineInfo>, CloudError>;
    /// Makes the cluster's network forward pod traffic between its machines: `routes`
    /// is the whole set of pod CIDRs with the machine that holds each (as a cloud's
    /// route controller keeps VPC routes); routes not in it are removed (idempotent).
    /// Traffic of the cluster never reaches another cluster's machines or the uplink.
    async fn sync_routes(&self, cluster: &str, routes: &[PodRoute]) -> Result<(), CloudError>;
}

/// The load balancers of clusters (what Octavia's amphorae are to an OpenStack cloud):
/// for each cluster a pair of instances, each in a sandbox of its own with one leg on
/// the external network and one on the cluster's private network, of which one, the
/// active one, holds the addresses the cluster's load balancers serve; and the
/// addresses themselves, external (the "internet side") or internal (the cluster's
/// network).
#[async_trait]
pub trait LoadBalancers: Send + Sync {
    /// The external network (idempotent): its segment and the pool addresses come from.
    async fn ensure_external_network(&self) -> Result<ExternalNetwork, CloudError>;
    /// Reserves an address for `owner` (idempotent by owner): `wanted` if it is free
    /// ([`CloudError::AddressTaken`] if not), else the next free one
    /// ([`CloudError::PoolExhausted`] when there is none).
    async fn allocate_address(
        &self,
        scope: &AddressScope,
        owner: &str,
        wanted: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, CloudError>;
    /// Frees what `owner` holds in `scope` (idempotent).
    async fn release_address(&self, scope: &AddressScope, owner: &str) -> Result<(), CloudError>;
    /// Makes the cluster's pair of instances exist and run `spec` (idempotent): new
    /// configuration is handed to running instances, which reload it in place; the
    /// active instance (if one was chosen) holds exactly `spec`'s addresses.
    async fn ensure_balancer(
        &self,
        cluster: &str,
        spec: &BalancerSpec,
    ) -> Result<BalancerInfo, CloudError>;
    /// Makes instance `index` the active one: the other is fenced first (its addresses
    /// taken away, so that at no moment two instances answer for one), then the
    /// addresses move, announced with gratuitous ARP (idempotent).
    async fn activate_instance(&self, cluster: &str, index: usize) -> Result<(), CloudError>;
    /// Whether instance `index` runs and answers its health check.
    async fn probe_instance(&self, cluster: &str, index: usize) -> InstanceHealth;
    /// Starts instance `index` again if its process is gone (as standby).
    async fn restart_instance(&self, cluster: &str, index: usize) -> Result<(), CloudError>;
    async fn get_balancer(&self, cluster: &str) -> Result<Option<BalancerInfo>, CloudError>;
    /// Ends the instances' processes, keeping everything else (the cluster stops);
    /// [`LoadBalancers::ensure_balancer`] starts them again.
    async fn stop_balancer(&self, cluster: &str) -> Result<(), CloudError>;
    /// Removes the cluster's instances and everything they hold (idempotent).
    async fn delete_balancer(&self, cluster: &str) -> Result<(), CloudError>;
}

/// Where an address comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AddressScope {
    /// The external pool, shared by every cluster.
    External,
    /// The private network of a cluster (internal load balancers).
    Internal { cluster: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalNetwork {
    /// The whole external segment (the host holds its first address).
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    /// Where load-balancer addresses come from.
    pub pool: Ipv4Net,
}

/// What a cluster's load-balancer instances run and serve.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancerSpec {
    /// Zones to place the two instances in (as the cluster has them; one zone serves
    /// both).
    pub zones: Vec<String>,
    /// The data plane: `{config}` in args is replaced by its configuration file;
    /// `{address}` by the instance's external address.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The data plane's configuration (written as the file, then SIGHUP to reload).
    pub config: Vec<u8>,
    pub external_addresses: Vec<Ipv4Addr>,
    pub internal_addresses: Vec<Ipv4Addr>,
    /// Networks of the cluster beyond its machines' (its pods') that the instances
    /// reach through the host (Ingress sends to pods directly).
    #[serde(default)]
    pub reach: Vec<Ipv4Net>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancerInfo {
    pub instances: Vec<BalancerInstance>,
    pub active: Option<usize>,
    /// The instances' shared address on the cluster's network, through which replies to
    /// external clients return.
    pub gateway: Ipv4Addr,
    /// Where the instances serve `/healthz` and `/metrics` (port on their external
    /// address).
    pub admin_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancerInstance {
    pub name: String,
    pub zone: String,
    pub external_address: Ipv4Addr,
    pub internal_address: Ipv4Addr,
    pub running: bool,
    /// Its network namespace, and the host end of its external link (diagnostics,
    /// and the benchmark that cuts an instance off).
    #[serde(default)]
    pub netns: String,
    #[serde(default)]
    pub external_link: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceHealth {
    Healthy,
    /// The process is gone.
    Dead,
    /// It runs but does not answer (hung, or its network lost).
    Unresponsive,
    /// Its link to the external network is down: it cannot be serving.
    Unreachable,
    Unknown,
}

/// A pod network route: `pod_cidr` is reached through the machine at `node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodRoute {
    pub pod_cidr: Ipv4Net,
    pub node: Ipv4Addr,
}

/// A cluster's private network: a control-plane segment holding the API endpoint and
/// one segment per zone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub cluster: String,
    pub index: u32,
    /// Where the platform binds the cluster's API endpoint (on the host side).
    pub api_endpoint: Ipv4Addr,
    /// The control-plane segment first (zone `""`), then one per zone.
    pub segments: Vec<Segment>,
}

impl Network {
    /// Host-side addresses of the masters' own services (cluster DNS), one per master
    /// of up to three, beside the API endpoint on the control-plane segment: the
    /// endpoint is shared behind the API load balancer, a DNS server cannot be.
    pub fn master_addresses(&self) -> [Ipv4Addr; 3] {
        let endpoint = u32::from(self.api_endpoint);
        [1, 2, 3].map(|i| Ipv4Addr::from(endpoint.wrapping_add(i)))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Empty for the control-plane segment.
    pub zone: String,
    pub cidr: Ipv4Net,
    /// The host's address on the segment; machines' default route.
    pub gateway: Ipv4Addr,
    /// Host-side bridge of the segment.
    pub bridge: String,
}

impl Network {
    /// The segment of `zone` (`""` for the control-plane one).
    pub fn segment(&self, zone: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.zone == zone)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSpec {
    pub name: String,
    pub cluster: String,
    pub zone: String,
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub boot: BootSpec,
}

/// What the machine runs once up (like cloud-init user data): files written into the
/// machine directory, then the agent started inside the sandbox. `{dir}` and
/// `{address}` in `args` and env values are replaced by the machine directory and its
/// IP at every start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSpec {
    /// (path relative to the machine directory, content, mode)
    pub files: Vec<(String, Vec<u8>, u32)>,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    pub name: String,
    pub cluster: String,
    pub zone: String,
    /// `korvet-local:///<name>`
    pub provider_id: String,
    pub address: Ipv4Addr,
    pub state: MachineState,
    /// The machine's disk.
    pub dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MachineState {
    Running,
    Stopped,
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("run as root: the local provider creates network namespaces and cgroups")]
    NotRoot,
    #[error("{program} not found: install {package}: run scripts/setup.sh")]
    MissingTool { program: String, package: String },
    #[error("unknown zone {zone:?}: the zones are {zones:?}")]
    UnknownZone { zone: String, zones: Vec<String> },
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("{what} is in use: {detail}")]
    InUse { what: String, detail: String },
    #[error("{what} already exists with a different spec: {detail}")]
    Conflict { what: String, detail: String },
    #[error("machine {0} does not exist")]
    NotFound(String),
    #[error("cluster {0} has no network: create it (or one of its machines) first")]
    NoNetwork(String),
    #[error("address pool {pool} is exhausted: delete clusters or configure a larger pool")]
    PoolExhausted { pool: Ipv4Net },
    #[error("address {address} is taken (by {holder}): ask for another or none")]
    AddressTaken { address: Ipv4Addr, holder: String },
    #[error("address {address} is not in {pool}: ask for one inside it")]
    AddressOutside { address: Ipv4Addr, pool: Ipv4Net },
    #[error("invalid address pool {pool}: {reason}")]
    InvalidPool { pool: Ipv4Net, reason: String },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{what} did not come up in {waited:?}: see {log}")]
    Timeout {
        what: String,
        waited: std::time::Duration,
        log: PathBuf,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Process(#[from] ProcessError),
}

impl CloudError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CloudError {
        let context = context.into();
        move |source| CloudError::Io { context, source }
    }
}
