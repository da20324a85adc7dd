//! Load balancers of the local provider.
//!
//! - The external network is the first /16 of the pool (default 10.200.0.0/16): bridge
//!   `korvet-ext`, host address .0.1, instances' own addresses from the first /20 and
//!   load-balancer addresses from the upper half (10.200.128.0/17), each claimed
//!   host-wide. The host does not forward between it and anything else.
//! - A cluster's balancer is two instances, `korvet-nN-lb0` and `-lb1`: a network
//!   namespace each with `ext` on the external bridge and `int` on the cluster's
//!   control-plane segment (.20 and .21), forwarding inside the namespace only. The
//!   active instance also holds the cluster's load-balancer addresses (external ones on
//!   `ext`, internal ones from .100-.199 of the control-plane segment on `int`) and the
//!   gateway .30, through which the host routes replies to the external network (a
//!   route in the cluster's table), so that the client's address can reach the backend
//!   and the answer still leaves through the instance.
//! - Both instances run the same data plane with the same configuration; moving the
//!   addresses is all a failover does: first away from the old holder (fencing), then
//!   to the new one, announced with gratuitous ARP.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{claims, garp, lock, netns_exists, LocalProvider, NetworkRecord};
use crate::process::{read_json, spawn_detached, write_json_atomic, ProcessRecord, ProcessSpec};
use crate::{
    AddressScope, BalancerInfo, BalancerInstance, BalancerSpec, CloudError, ExternalNetwork,
    InstanceHealth, LoadBalancers,
};

pub(super) const EXTERNAL_BRIDGE: &str = "korvet-ext";
/// Where instances serve `/healthz` and `/metrics`, on their external address.
pub const ADMIN_PORT: u16 = 8404;
/// Offsets in the control-plane /24: the instances, their shared gateway, internal
/// load-balancer addresses.
const INSTANCE_HOST: u32 = 20;
const GATEWAY_HOST: u32 = 30;
const INTERNAL_FIRST: u32 = 100;
const INTERNAL_LAST: u32 = 199;
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Gratuitous ARPs sent per address at each move.
const ANNOUNCEMENTS: usize = 2;

/// What is known of a cluster's balancer (`<state>/balancers/<cluster>.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct BalancerRecord {
    cluster: String,
    net_index: u32,
    gateway: Ipv4Addr,
    cp_prefix: u8,
    cp_gateway: Ipv4Addr,
    cp_bridge: String,
    /// The cluster's whole network (routes of the instances towards the nodes).
    cluster_cidr: Ipv4Net,
    instances: Vec<InstanceRecord>,
    active: Option<usize>,
    spec: BalancerSpec,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct InstanceRecord {
    name: String,
    zone: String,
    netns: String,
    ext_veth: String,
    int_veth: String,
    external_address: Ipv4Addr,
    internal_address: Ipv4Addr,
    dir: PathBuf,
    process: Option<ProcessRecord>,
}

impl InstanceRecord {
    fn running(&self) -> bool {
        self.process.as_ref().is_some_and(|p| p.is_alive())
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("edge.json")
    }
}

impl BalancerRecord {
    fn info(&self) -> BalancerInfo {
        BalancerInfo {
            instances: self
                .instances
                .iter()
                .map(|i| BalancerInstance {
                    name: i.name.clone(),
                    zone: i.zone.clone(),
                    external_address: i.external_address,
                    internal_address: i.internal_address,
                    running: i.running(),
                    netns: i.netns.clone(),
                    external_link: i.ext_veth.clone(),
                })
                .collect(),
            active: self.active,
            gateway: self.gateway,
            admin_port: ADMIN_PORT,
        }
    }
}

/// Every address the provider handed out (`<state>/addresses.json`): scope -> owner ->
/// address.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct AddressBook {
    scopes: BTreeMap<String, BTreeMap<String, Ipv4Addr>>,
}

fn scope_key(scope: &AddressScope) -> String {
    match scope {
        AddressScope::External => "external".into(),
        AddressScope::Internal { cluster } => format!("internal/{cluster}"),
    }
}

fn external_claim(address: Ipv4Addr) -> String {
    format!("ext-{address}")
}

/// The owner key of an instance's own external address.
fn instance_owner(cluster: &str, index: usize) -> String {
    format!("balancer/{cluster}/{index}")
}

/// State the provider keeps in memory for balancers.
#[derive(Default)]
pub(super) struct BalancerState {
    records: std::sync::Mutex<HashMap<String, Arc<Mutex<Option<BalancerRecord>>>>>,
    addresses: std::sync::Mutex<Option<AddressBook>>,
    /// Serializes address allocation in this provider (claims serialize across them).
    allocating: Mutex<()>,
}

impl LocalProvider {
    /// The external segment: the first /16 of the pool.
    fn external(&self) -> ExternalNetwork {
        let base = u32::from(self.inner.pool.network());
        ExternalNetwork {
            cidr: Ipv4Net::new(Ipv4Addr::from(base), 16).unwrap_or_default(),
            gateway: Ipv4Addr::from(base + 1),
            bridge: EXTERNAL_BRIDGE.into(),
            pool: Ipv4Net::new(Ipv4Addr::from(base + 0x8000), 17).unwrap_or_default(),
        }
    }

    /// Addresses for instances (and test clients): the first /20 after the host's.
    fn infrastructure_range(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.inner.pool.network());
        (base + 2..base + 0x1000 - 1).map(Ipv4Addr::from)
    }

    pub(super) fn balancer_path(&self, cluster: &str) -> PathBuf {
        self.inner
            .state_dir
            .join("balancers")
            .join(format!("{cluster}.json"))
    }

    fn addresses_path(&self) -> PathBuf {
        self.inner.state_dir.join("addresses.json")
    }

    fn balancer_slot(&self, cluster: &str) -> Arc<Mutex<Option<BalancerRecord>>> {
        let mut records = lock(&self.inner.balancers.records);
        if let Some(slot) = records.get(cluster) {
            return slot.clone();
        }
        let loaded = match read_json::<BalancerRecord>(&self.balancer_path(cluster)) {
            Ok(rec) => rec,
            Err(e) => {
                tracing::warn!(%cluster, error = %e, "ignoring an unreadable balancer record");
                None
            }
        };
        let slot = Arc::new(Mutex::new(loaded));
        records.insert(cluster.to_string(), slot.clone());
        slot
    }

    fn save_balancer(&self, rec: &BalancerRecord) -> Result<(), CloudError> {
        let path = self.balancer_path(&rec.cluster);
        write_json_atomic(&path, rec).map_err(CloudError::io(format!("write {}", path.display())))
    }

    fn address_book(&self) -> AddressBook {
        let mut book = lock(&self.inner.balancers.addresses);
        if book.is_none() {
            *book = Some(
                read_json::<AddressBook>(&self.addresses_path())
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
            );
        }
        book.clone().unwrap_or_default()
    }

    fn save_address_book(&self, book: &AddressBook) -> std::io::Result<()> {
        write_json_atomic(&self.addresses_path(), book)?;
        *lock(&self.inner.balancers.addresses) = Some(book.clone());
        Ok(())
    }

    /// Allocates `owner` an address of `candidates` in `scope`; external ones are
    /// claimed host-wide, internal ones belong to the cluster's network, which this
    /// provider alone holds.
    async fn allocate_from(
        &self,
        scope: &AddressScope,
        owner: &str,
        candidates: Vec<Ipv4Addr>,
        range: Ipv4Net,
        wanted: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, CloudError> {
        let _one_at_a_time = self.inner.balancers.allocating.lock().await;
        let key = scope_key(scope);
        let mut book = self.address_book();
        let held = book.scopes.get(&key).and_then(|s| s.get(owner)).copied();
        if let Some(address) = held {
            if wanted.is_none_or(|w| w == address) {
                if *scope == AddressScope::External {
                    claims::ensure(&external_claim(address), &self.address_owner(owner))
                        .map_err(CloudError::io("claim an external address"))?;
                }
                return Ok(address);
            }
        }
        if let Some(w) = wanted {
            if !range.contains(&w) || !candidates.contains(&w) {
                return Err(CloudError::AddressOutside {
                    address: w,
                    pool: range,
                });
            }
        }
        let in_use: Vec<Ipv4Addr> = book
            .scopes
            .get(&key)
            .map(|s| s.values().copied().collect())
            .unwrap_or_default();
        let choices: Vec<Ipv4Addr> = match wanted {
            Some(w) => vec![w],
            None => candidates
                .into_iter()
                .filter(|a| !in_use.contains(a))
                .collect(),
        };
        if let Some(w) = wanted {
            if let Some((holder, _)) = book
                .scopes
                .get(&key)
                .and_then(|s| s.iter().find(|(o, a)| **a == w && o.as_str() != owner))
            {
                return Err(CloudError::AddressTaken {
                    address: w,
                    holder: holder.clone(),
                });
            }
        }
        let chosen = match scope {
            AddressScope::Internal { .. } => choices.first().copied(),
            AddressScope::External => {
                let this = self.clone();
                let owner_name = owner.to_string();
                let key = key.clone();
                let mut book_copy = book.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let claim_owner = this.address_owner(&owner_name);
                    let named = choices.into_iter().map(|a| (a, external_claim(a)));
                    let claimed =
                        claims::claim_first(named, &claim_owner, external_still_held, |address| {
                            book_copy
                                .scopes
                                .entry(key.clone())
                                .or_default()
                                .insert(owner_name.clone(), *address);
                            this.save_address_book(&book_copy)
                        });
                    (claimed, book_copy)
                })
                .await
                .map_err(|e| {
                    CloudError::io("claim an external address")(std::io::Error::other(e))
                })?;
                let (claimed, updated) = result;
                book = updated;
                claimed.map_err(CloudError::io("claim an external address"))?
            }
        };
        let Some(address) = chosen else {
            return Err(match wanted {
                Some(w) => CloudError::AddressTaken {
                    address: w,
                    holder: "another provider on this host".into(),
                },
                None => CloudError::PoolExhausted { pool: range },
            });
        };
        if let AddressScope::Internal { .. } = scope {
            book.scopes
                .entry(key)
                .or_default()
                .insert(owner.to_string(), address);
            self.save_address_book(&book)
                .map_err(CloudError::io("write the address book"))?;
        }
        tracing::info!(%address, owner, scope = %scope_key(scope), "address allocated");
        Ok(address)
    }

    fn address_owner(&self, owner: &str) -> claims::Owner {
        claims::Owner {
            state_dir: self.inner.state_dir.clone(),
            key: owner.to_string(),
        }
    }

    fn release_from(&self, scope: &AddressScope, owner: &str) -> Result<(), CloudError> {
        let key = scope_key(scope);
        let mut book = self.address_book();
        let Some(address) = book.scopes.get_mut(&key).and_then(|s| s.remove(owner)) else {
            return Ok(());
        };
        if *scope == AddressScope::External {
            claims::release(&external_claim(address), &self.address_owner(owner));
        }
        self.save_address_book(&book)
            .map_err(CloudError::io("write the address book"))?;
        tracing::info!(%address, owner, scope = %key, "address released");
        Ok(())
    }

    /// The cluster's network record, required.
    async fn network_record(&self, cluster: &str) -> Result<NetworkRecord, CloudError> {
        let slot = lock(&self.inner.networks)
            .get(cluster)
            .cloned()
            .ok_or_else(|| CloudError::NoNetwork(cluster.to_string()))?;
        let guard = slot.lock().await;
        guard
            .clone()
            .ok_or_else(|| CloudError::NoNetwork(cluster.to_string()))
    }

    /// Records (or clears) the route of replies to the external network through the
    /// balancer's gateway in the cluster's table, and applies the cluster's routing.
    async fn set_external_return(
        &self,
        cluster: &str,
        via: Option<Ipv4Addr>,
    ) -> Result<(), CloudError> {
        let wanted = via.map(|gateway| (self.external().cidr, gateway));
        let slot = self.network_slot(cluster);
        let mut guard = slot.lock().await;
        let Some(rec) = guard.as_mut() else {
            return Err(CloudError::NoNetwork(cluster.to_string()));
        };
        if rec.external_return != wanted {
            rec.external_return = wanted;
            let path = self.network_path(cluster);
            write_json_atomic(&path, rec)
                .map_err(CloudError::io(format!("write {}", path.display())))?;
            lock(&self.inner.routed).remove(cluster);
        }
        if lock(&self.inner.routed).contains_key(cluster) {
            return Ok(());
        }
        let (network, routes, external_return) = (
            rec.network.clone(),
            rec.routes.clone().unwrap_or_default(),
            rec.external_return,
        );
        drop(guard);
        self.apply_routing(&network, &routes, external_return)
            .await?;
        lock(&self.inner.routed).insert(cluster.to_string(), routes);
        Ok(())
    }

    async fn ensure_external_bridge(&self) -> Result<ExternalNetwork, CloudError> {
        let ext = self.external();
        if !self.link_exists(&ext.bridge, None).await {
            self.run_ip_tolerate(
                &["link", "add", &ext.bridge, "type", "bridge"],
                "File exists",
            )
            .await?;
        }
        let addr = format!("{}/{}", ext.gateway, ext.cidr.prefix_len());
        self.run_ip(&["addr", "replace", &addr, "dev", &ext.bridge])
            .await?;
        self.run_ip(&["link", "set", &ext.bridge, "up"]).await?;
        // The external side must never be routed anywhere by the host.
        let path = format!("/proc/sys/net/ipv4/conf/{}/forwarding", ext.bridge);
        tokio::fs::write(&path, "0")
            .await
            .map_err(CloudError::io(format!("write {path}")))?;
        Ok(ext)
    }

    /// Makes whatever of an instance's sandbox is missing.
    async fn ensure_instance_sandbox(
        &self,
        rec: &BalancerRecord,
        instance: &InstanceRecord,
    ) -> Result<(), CloudError> {
        let ns = instance.netns.as_str();
        if !netns_exists(ns) {
            let _guard = self.inner.netns_lock.lock().await;
            self.run_ip_tolerate(&["netns", "add", ns], "File exists")
                .await?;
        }
        let ext = self.external();
        for (host_end, inside, bridge, address, prefix) in [
            (
                &instance.ext_veth,
                "ext",
                ext.bridge.as_str(),
                instance.external_address,
                ext.cidr.prefix_len(),
            ),
            (
                &instance.int_veth,
                "int",
                rec.cp_bridge.as_str(),
                instance.internal_address,
                rec.cp_prefix,
            ),
        ] {
            if !self.link_exists(inside, Some(ns)).await {
                self.run_ip_tolerate(&["link", "del", host_end], "Cannot find device")
                    .await?;
                self.run_ip(&[
                    "link", "add", host_end, "type", "veth", "peer", "name", inside, "netns", ns,
                ])
                .await?;
            }
            self.run_ip(&["link", "set", host_end, "master", bridge, "up"])
                .await?;
            let addr = format!("{address}/{prefix}");
            self.run_ip(&["-n", ns, "addr", "replace", &addr, "dev", inside])
                .await?;
            self.run_ip(&["-n", ns, "link", "set", inside, "up"])
                .await?;
        }
        self.run_ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
        // The cluster's machines, and the networks beyond them it asks for (its pods).
        let via = rec.cp_gateway.to_string();
        for network in std::iter::once(rec.cluster_cidr).chain(rec.spec.reach.iter().copied()) {
            let network = network.trunc().to_string();
            self.run_ip(&[
                "-n", ns, "route", "replace", &network, "via", &via, "dev", "int",
            ])
            .await?;
        }
        // Forwarding for the kernel-forwarded listeners; listening on addresses it does
        // not hold yet (the standby); answering ARP only for addresses of the asking
        // interface, so that only the holder of an address answers for it.
        for (key, value) in [
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv4/ip_nonlocal_bind", "1"),
            ("net/ipv4/conf/all/arp_ignore", "1"),
            ("net/ipv4/conf/all/arp_announce", "2"),
        ] {
            self.netns_sysctl(ns, key, value).await?;
        }
        Ok(())
    }

    /// Writes a sysctl of a network namespace (a thread that entered it writes /proc).
    async fn netns_sysctl(&self, netns: &str, key: &str, value: &str) -> Result<(), CloudError> {
        let out = tokio::process::Command::new(&self.inner.ip)
            .args([
                "netns",
                "exec",
                netns,
                "sysctl",
                "-qw",
                &format!("{}={value}", key.replace('/', ".")),
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(CloudError::io("run sysctl"))?;
        if !out.status.success() {
            return Err(CloudError::Command {
                command: format!("sysctl {key}={value} in {netns}"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    async fn start_instance(
        &self,
        rec: &BalancerRecord,
        index: usize,
    ) -> Result<ProcessRecord, CloudError> {
        let instance = &rec.instances[index];
        let config = instance.config_path().display().to_string();
        let address = instance.external_address.to_string();
        let args = rec
            .spec
            .args
            .iter()
            .map(|a| {
                a.replace("{config}", &config)
                    .replace("{address}", &address)
            })
            .collect();
        let process = spawn_detached(&ProcessSpec {
            program: rec.spec.program.clone(),
            args,
            env: vec![],
            log_file: instance.dir.join("edge.log"),
            netns: Some(instance.netns.clone()),
            cgroup: None,
        })?;
        tracing::info!(cluster = %rec.cluster, instance = %instance.name, pid = process.pid, "load-balancer instance started");
        Ok(process)
    }

    /// Addresses instance `index` should hold: (on `ext`, on `int`).
    fn held_by(rec: &BalancerRecord, index: usize) -> (Vec<Ipv4Addr>, Vec<Ipv4Addr>) {
        if rec.active != Some(index) {
            return (Vec::new(), Vec::new());
        }
        let mut internal = rec.spec.internal_addresses.clone();
        internal.push(rec.gateway);
        (rec.spec.external_addresses.clone(), internal)
    }

    /// Makes instance `index`'s /32 addresses on `ext` and `int` exactly what it should
    /// hold; announces what it gained.
    async fn place_addresses(&self, rec: &BalancerRecord, index: usize) -> Result<(), CloudError> {
        let instance = &rec.instances[index];
        let (ext_wanted, int_wanted) = Self::held_by(rec, index);
        for (iface, wanted, own) in [
            ("ext", ext_wanted, instance.external_address),
            ("int", int_wanted, instance.internal_address),
        ] {
            let present = self.host_addresses(&instance.netns, iface).await?;
            for gone in present.iter().filter(|a| **a != own && !wanted.contains(a)) {
                let addr = format!("{gone}/32");
                self.run_ip_tolerate(
                    &["-n", &instance.netns, "addr", "del", &addr, "dev", iface],
                    "Cannot assign",
                )
                .await?;
            }
            let gained: Vec<Ipv4Addr> = wanted
                .iter()
                .filter(|a| !present.contains(a))
                .copied()
                .collect();
            for address in &gained {
                let addr = format!("{address}/32");
                self.run_ip(&[
                    "-n",
                    &instance.netns,
                    "addr",
                    "replace",
                    &addr,
                    "dev",
                    iface,
                ])
                .await?;
            }
            if !gained.is_empty() {
                if let Err(e) = garp::announce(&instance.netns, iface, &gained, ANNOUNCEMENTS).await
                {
                    tracing::warn!(instance = %instance.name, error = %e, "gratuitous ARP failed; neighbours learn the move when their entries go stale");
                }
            }
        }
        Ok(())
    }

    /// The IPv4 addresses on `iface` of `netns`.
    async fn host_addresses(&self, netns: &str, iface: &str) -> Result<Vec<Ipv4Addr>, CloudError> {
        let entries = self
            .ip_json(&["-n", netns, "-4", "addr", "show", "dev", iface])
            .await
            .or_else(|e| match e {
                CloudError::Command { ref stderr, .. } if stderr.contains("does not exist") => {
                    Ok(Vec::new())
                }
                other => Err(other),
            })?;
        Ok(entries
            .iter()
            .flat_map(|e| e["addr_info"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
            .collect())
    }

    async fn remove_instance(&self, instance: &InstanceRecord) -> Result<(), CloudError> {
        if let Some(process) = &instance.process {
            process.terminate(STOP_GRACE).await?;
        }
        for veth in [&instance.ext_veth, &instance.int_veth] {
            self.run_ip_tolerate(&["link", "del", veth], "Cannot find device")
                .await?;
        }
        if netns_exists(&instance.netns) {
            let _guard = self.inner.netns_lock.lock().await;
            self.run_ip_tolerate(&["netns", "del", &instance.netns], "No such file")
                .await?;
        }
        let _ = std::fs::remove_dir_all(&instance.dir);
        Ok(())
    }

    /// A new record for the cluster's balancer, with its instances' addresses claimed.
    async fn new_balancer(
        &self,
        cluster: &str,
        spec: &BalancerSpec,
    ) -> Result<BalancerRecord, CloudError> {
        let net = self.network_record(cluster).await?;
        let network = &net.network;
        let cp = network
            .segment("")
            .ok_or_else(|| CloudError::NoNetwork(cluster.to_string()))?;
        let n = network.index;
        let cp_base = u32::from(cp.cidr.network());
        let zones: Vec<String> = if spec.zones.is_empty() {
            vec!["zone-a".into()]
        } else {
            spec.zones.clone()
        };
        let mut instances = Vec::new();
        for i in 0..2usize {
            let external_address = self
                .allocate_from(
                    &AddressScope::External,
                    &instance_owner(cluster, i),
                    self.infrastructure_range().collect(),
                    self.external().cidr,
                    None,
                )
                .await?;
            instances.push(InstanceRecord {
                name: format!("korvet-n{n}-lb{i}"),
                zone: zones[i % zones.len()].clone(),
                netns: format!("korvet-n{n}-lb{i}"),
                ext_veth: format!("korvet{n}x{i}"),
                int_veth: format!("korvet{n}l{i}"),
                external_address,
                internal_address: Ipv4Addr::from(cp_base + INSTANCE_HOST + i as u32),
                dir: self
                    .inner
                    .state_dir
                    .join("balancers")
                    .join(cluster)
                    .join(i.to_string()),
                process: None,
            });
        }
        let first = network.segments.first().map(|s| s.cidr).unwrap_or(cp.cidr);
        Ok(BalancerRecord {
            cluster: cluster.to_string(),
            net_index: n,
            gateway: Ipv4Addr::from(cp_base + GATEWAY_HOST),
            cp_prefix: cp.cidr.prefix_len(),
            cp_gateway: cp.gateway,
            cp_bridge: cp.bridge.clone(),
            cluster_cidr: Ipv4Net::new(first.network(), first.prefix_len().saturating_sub(2))
                .map(|n| n.trunc())
                .unwrap_or(first),
            instances,
            active: None,
            spec: BalancerSpec::default(),
        })
    }

    /// Deletes every balancer this provider recorded (for `destroy_all`).
    pub(super) async fn destroy_balancers(&self) -> Result<(), CloudError> {
        let dir = self.inner.state_dir.join("balancers");
        let clusters: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".json").map(str::to_string)
            })
            .collect();
        for cluster in clusters {
            self.delete_balancer(&cluster).await?;
        }
        let book = self.address_book();
        for (scope, owners) in book.scopes {
            let scope = match scope.strip_prefix("internal/") {
                Some(cluster) => AddressScope::Internal {
                    cluster: cluster.to_string(),
                },
                None => AddressScope::External,
            };
            for owner in owners.keys() {
                self.release_from(&scope, owner)?;
            }
        }
        Ok(())
    }
}

/// Whether `owner`'s state directory still records `address` as one of its external
/// addresses.
fn external_still_held(owner: &claims::Owner, address: &Ipv4Addr) -> bool {
    let path = owner.state_dir.join("addresses.json");
    matches!(
        read_json::<AddressBook>(&path),
        Ok(Some(book)) if book.scopes.get("external").and_then(|s| s.get(&owner.key)) == Some(address)
    )
}

/// Whether `GET /healthz` on `address:port` answers 200 within `limit`.
async fn answers_health(address: Ipv4Addr, port: u16, limit: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect((address, port)).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: balancer\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<bool, std::io::Error>(head.starts_with(b"HTTP/1.") && &head[8..12] == b" 200")
    };
    matches!(tokio::time::timeout(limit, attempt).await, Ok(Ok(true)))
}

#[async_trait]
impl LoadBalancers for LocalProvider {
    async fn ensure_external_network(&self) -> Result<ExternalNetwork, CloudError> {
        self.ensure_external_bridge().await
    }

    async fn allocate_address(
        &self,
        scope: &AddressScope,
        owner: &str,
        wanted: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, CloudError> {
        match scope {
            AddressScope::External => {
                let pool = self.external().pool;
                let candidates = pool.hosts().collect();
                self.allocate_from(scope, owner, candidates, pool, wanted)
                    .await
            }
            AddressScope::Internal { cluster } => {
                let net = self.network_record(cluster).await?;
                let cp = net
                    .network
                    .segment("")
                    .ok_or_else(|| CloudError::NoNetwork(cluster.clone()))?;
                let base = u32::from(cp.cidr.network());
                let candidates = (base + INTERNAL_FIRST..=base + INTERNAL_LAST)
                    .map(Ipv4Addr::from)
                    .collect();
                self.allocate_from(scope, owner, candidates, cp.cidr, wanted)
                    .await
            }
        }
    }

    async fn release_address(&self, scope: &AddressScope, owner: &str) -> Result<(), CloudError> {
        let _one_at_a_time = self.inner.balancers.allocating.lock().await;
        self.release_from(scope, owner)
    }

    async fn ensure_balancer(
        &self,
        cluster: &str,
        spec: &BalancerSpec,
    ) -> Result<BalancerInfo, CloudError> {
        self.ensure_external_bridge().await?;
        let slot = self.balancer_slot(cluster);
        let mut guard = slot.lock().await;
        if guard.is_none() {
            let rec = self.new_balancer(cluster, spec).await?;
            // Recorded before anything is made, so delete finds it all.
            self.save_balancer(&rec)?;
            *guard = Some(rec);
        }
        let Some(rec) = guard.as_mut() else {
            return Err(CloudError::NotFound(format!("balancer of {cluster}")));
        };
        let config_changed = rec.spec.config != spec.config;
        rec.spec = spec.clone();
        if rec.active.is_none() {
            rec.active = Some(0);
        }
        self.save_balancer(rec)?;
        self.set_external_return(cluster, Some(rec.gateway)).await?;
        for index in 0..rec.instances.len() {
            let snapshot = rec.clone();
            self.ensure_instance_sandbox(&snapshot, &snapshot.instances[index])
                .await?;
            let instance = &rec.instances[index];
            std::fs::create_dir_all(&instance.dir)
                .map_err(CloudError::io(format!("create {}", instance.dir.display())))?;
            let path = instance.config_path();
            let on_disk = std::fs::read(&path).ok();
            if on_disk.as_deref() != Some(spec.config.as_slice()) {
                crate::process::write_bytes_atomic(&path, &spec.config)
                    .map_err(CloudError::io(format!("write {}", path.display())))?;
            }
            if instance.running() {
                if config_changed || on_disk.as_deref() != Some(spec.config.as_slice()) {
                    if let Some(process) = &instance.process {
                        process.hang_up()?;
                    }
                }
            } else {
                let process = self.start_instance(&snapshot, index).await?;
                rec.instances[index].process = Some(process);
                self.save_balancer(rec)?;
            }
        }
        // The standby first: at no moment do two instances hold an address.
        let active = rec.active.unwrap_or(0);
        for index in (0..rec.instances.len()).filter(|i| *i != active) {
            self.place_addresses(rec, index).await?;
        }
        self.place_addresses(rec, active).await?;
        Ok(rec.info())
    }

    async fn activate_instance(&self, cluster: &str, index: usize) -> Result<(), CloudError> {
        let slot = self.balancer_slot(cluster);
        let mut guard = slot.lock().await;
        let Some(rec) = guard.as_mut() else {
            return Err(CloudError::NotFound(format!("balancer of {cluster}")));
        };
        if index >= rec.instances.len() {
            return Err(CloudError::NotFound(format!(
                "instance {index} of {cluster}"
            )));
        }
        if rec.active == Some(index) {
            return self.place_addresses(rec, index).await;
        }
        let previous = rec.active;
        rec.active = Some(index);
        // Fence: the others lose every address before the new holder gets one.
        for other in (0..rec.instances.len()).filter(|i| *i != index) {
            self.place_addresses(rec, other).await?;
        }
        self.place_addresses(rec, index).await?;
        self.save_balancer(rec)?;
        tracing::info!(%cluster, from = ?previous, to = index, "load-balancer addresses moved");
        Ok(())
    }

    async fn probe_instance(&self, cluster: &str, index: usize) -> InstanceHealth {
        let slot = self.balancer_slot(cluster);
        let guard = slot.lock().await;
        let Some(instance) = guard.as_ref().and_then(|r| r.instances.get(index)).cloned() else {
            return InstanceHealth::Unknown;
        };
        drop(guard);
        if !instance.running() {
            return InstanceHealth::Dead;
        }
        // The provider sees its own links: one that is down needs no probe to time out.
        let state = format!("/sys/class/net/{}/operstate", instance.ext_veth);
        if std::fs::read_to_string(&state).is_ok_and(|s| s.trim() == "down") {
            return InstanceHealth::Unreachable;
        }
        if answers_health(
            instance.external_address,
            ADMIN_PORT,
            Duration::from_millis(200),
        )
        .await
        {
            InstanceHealth::Healthy
        } else {
            InstanceHealth::Unresponsive
        }
    }

    async fn restart_instance(&self, cluster: &str, index: usize) -> Result<(), CloudError> {
        let slot = self.balancer_slot(cluster);
        let mut guard = slot.lock().await;
        let Some(rec) = guard.as_mut() else {
            return Err(CloudError::NotFound(format!("balancer of {cluster}")));
        };
        if index >= rec.instances.len() || rec.instances[index].running() {
            return Ok(());
        }
        let snapshot = rec.clone();
        self.ensure_instance_sandbox(&snapshot, &snapshot.instances[index])
            .await?;
        let process = self.start_instance(&snapshot, index).await?;
        rec.instances[index].process = Some(process);
        self.save_balancer(rec)?;
        // Back as standby unless it is the active one.
        self.place_addresses(rec, index).await
    }

    async fn get_balancer(&self, cluster: &str) -> Result<Option<BalancerInfo>, CloudError> {
        let slot = self.balancer_slot(cluster);
        let guard = slot.lock().await;
        Ok(guard.as_ref().map(|r| r.info()))
    }

    async fn stop_balancer(&self, cluster: &str) -> Result<(), CloudError> {
        let slot = self.balancer_slot(cluster);
        let mut guard = slot.lock().await;
        let Some(rec) = guard.as_mut() else {
            return Ok(());
        };
        for index in 0..rec.instances.len() {
            if let Some(process) = rec.instances[index].process.take() {
                process.terminate(STOP_GRACE).await?;
            }
        }
        self.save_balancer(rec)?;
        tracing::info!(%cluster, "load-balancer instances stopped");
        Ok(())
    }

    async fn delete_balancer(&self, cluster: &str) -> Result<(), CloudError> {
        let slot = self.balancer_slot(cluster);
        let mut guard = slot.lock().await;
        let Some(rec) = guard.as_ref() else {
            return Ok(());
        };
        for instance in &rec.instances {
            self.remove_instance(instance).await?;
        }
        for index in 0..rec.instances.len() {
            let _one_at_a_time = self.inner.balancers.allocating.lock().await;
            self.release_from(&AddressScope::External, &instance_owner(cluster, index))?;
        }
        if lock(&self.inner.networks).contains_key(cluster) {
            match self.set_external_return(cluster, None).await {
                Ok(()) | Err(CloudError::NoNetwork(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let path = self.balancer_path(cluster);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CloudError::io(format!("remove {}", path.display()))(e)),
        }
        let _ = std::fs::remove_dir(self.inner.state_dir.join("balancers").join(cluster));
        *guard = None;
        tracing::info!(%cluster, "load balancer deleted");
        Ok(())
    }
}
