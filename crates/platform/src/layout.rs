//! Where a cluster's hosted control plane lives: directories under the server's data
//! directory and the addresses its processes listen on.
//!
//! The cluster's API endpoint is the address the infrastructure provider gives its
//! network (reachable from the host and from the cluster's machines). Everything else —
//! etcd members, and the API servers behind the load balancer of a 3-master control
//! plane — listens on loopback addresses derived from the network's index, which the
//! machines cannot reach.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

pub(crate) const API_PORT: u16 = 6443;
const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
const LB_ADMIN_PORT: u16 = 8404;
const DNS_PORT: u16 = 53;

#[derive(Clone, Debug)]
pub(crate) struct ClusterLayout {
    /// `NAMESPACE.NAME`: the cluster's key with the provider and on disk.
    pub key: String,
    pub dir: PathBuf,
    pub index: u32,
    pub endpoint: Ipv4Addr,
    pub masters: u8,
}

/// The provider's key of a cluster (namespaces and cluster names are DNS labels, so the
/// dot cannot be ambiguous).
pub(crate) fn cluster_key(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}")
}

impl ClusterLayout {
    pub(crate) fn new(
        data_dir: &Path,
        key: &str,
        index: u32,
        endpoint: Ipv4Addr,
        masters: u8,
    ) -> Self {
        ClusterLayout {
            key: key.to_string(),
            dir: cluster_dir(data_dir, key),
            index,
            endpoint,
            masters,
        }
    }

    fn loopback(&self, first: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, first, (self.index >> 8) as u8, self.index as u8)
    }

    pub(crate) fn pki_dir(&self) -> PathBuf {
        self.dir.join("pki")
    }

    pub(crate) fn process_dir(&self) -> PathBuf {
        self.dir.join("processes")
    }

    pub(crate) fn master_dir(&self, i: u8) -> PathBuf {
        self.dir.join(format!("master-{i}"))
    }

    pub(crate) fn etcd_dir(&self, i: u8) -> PathBuf {
        self.dir.join(format!("etcd-{i}"))
    }

    pub(crate) fn etcd_client_url(&self, i: u8) -> String {
        format!("http://{}:{ETCD_CLIENT_PORT}", self.loopback(20 + i))
    }

    pub(crate) fn etcd_peer_url(&self, i: u8) -> String {
        format!("http://{}:{ETCD_PEER_PORT}", self.loopback(20 + i))
    }

    /// Where master `i` serves: the endpoint itself with one master, else a loopback
    /// address behind the load balancer.
    pub(crate) fn master_listen(&self, i: u8) -> SocketAddr {
        if self.masters == 1 {
            SocketAddr::from((self.endpoint, API_PORT))
        } else {
            SocketAddr::from((self.loopback(30 + i), API_PORT))
        }
    }

    /// Where master `i`'s cluster DNS serves: the endpoint with one master, else the
    /// provider's per-master address beside it (`endpoint + 1 + i`), reachable from
    /// the machines and distinct per cluster, so that control planes never share :53.
    pub(crate) fn master_dns(&self, i: u8) -> SocketAddr {
        let ip = if self.masters == 1 {
            self.endpoint
        } else {
            Ipv4Addr::from(u32::from(self.endpoint).wrapping_add(1 + u32::from(i)))
        };
        SocketAddr::from((ip, DNS_PORT))
    }

    pub(crate) fn lb_admin(&self) -> SocketAddr {
        SocketAddr::from((self.loopback(40), LB_ADMIN_PORT))
    }

    pub(crate) fn endpoint_url(&self) -> String {
        format!("https://{}:{API_PORT}", self.endpoint)
    }

    /// Every address the serving certificate must name.
    pub(crate) fn serving_hosts(&self) -> Vec<String> {
        let mut hosts = vec![self.endpoint.to_string()];
        hosts.extend((0..self.masters).map(|i| self.master_listen(i).ip().to_string()));
        hosts
    }
}

pub(crate) fn cluster_dir(data_dir: &Path, key: &str) -> PathBuf {
    data_dir.join("clusters").join(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_per_cluster_and_member() {
        let a = ClusterLayout::new(
            Path::new("/d"),
            "default.a",
            1,
            Ipv4Addr::new(10, 201, 4, 10),
            3,
        );
        let b = ClusterLayout::new(
            Path::new("/d"),
            "default.b",
            258,
            Ipv4Addr::new(10, 201, 8, 10),
            3,
        );
        assert_eq!(a.etcd_client_url(0), "http://127.20.0.1:2379");
        assert_eq!(b.etcd_client_url(2), "http://127.22.1.2:2379");
        assert_eq!(a.master_listen(1).to_string(), "127.31.0.1:6443");
        let single = ClusterLayout::new(
            Path::new("/d"),
            "default.c",
            2,
            Ipv4Addr::new(10, 201, 8, 10),
            1,
        );
        assert_eq!(single.master_listen(0).to_string(), "10.201.8.10:6443");
        assert_eq!(single.master_dns(0).to_string(), "10.201.8.10:53");
        assert_eq!(a.master_dns(2).to_string(), "10.201.4.13:53");
        assert_eq!(a.serving_hosts().len(), 4);
        assert_eq!(a.dir, Path::new("/d/clusters/default.a"));
    }
}
