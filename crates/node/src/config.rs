//! What a node agent is told on its command line, parsed and checked.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Taint;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub bootstrap_kubeconfig: PathBuf,
    pub node_name: String,
    pub address: IpAddr,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// Reported as both capacity and allocatable.
    pub capacity: BTreeMap<String, Quantity>,
    pub provider_id: Option<String>,
    pub metrics_listen: Option<SocketAddr>,
    /// How long to wait for the cluster to issue the node's certificate.
    pub join_timeout: Duration,
    /// containerd's socket (CRI and images).
    pub containerd_socket: PathBuf,
    /// Where containerd's CRI plugin reads CNI configuration.
    pub cni_conf_dir: PathBuf,
    /// First restart delay of crashing containers and failed pulls (doubling to 5 min).
    pub crash_backoff: Duration,
    /// Port of the node's HTTPS server (logs), on `address`; reported in the Node's
    /// `status.daemonEndpoints`.
    pub kubelet_port: u16,
    /// The cluster DNS servers and domain written into pods' resolv.conf.
    pub cluster_dns: crate::dns::ClusterDns,
    /// Hard eviction thresholds behind the pressure conditions.
    pub eviction_hard: crate::pressure::Thresholds,
    /// Run the service proxy (nftables rules for Services in this network namespace).
    pub service_proxy: bool,
    /// Enforce NetworkPolicies (nftables rules in this network namespace).
    pub network_policy: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// `key=value`.
pub fn parse_label(text: &str) -> Result<(String, String), ParseError> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(ParseError(format!(
            "label {text:?} must be key=value (for example --label zone=a)"
        ))),
    }
}

/// `key[=value]:Effect`, Effect one of NoSchedule, PreferNoSchedule, NoExecute.
pub fn parse_taint(text: &str) -> Result<Taint, ParseError> {
    let bad = || {
        ParseError(format!(
            "taint {text:?} must be key[=value]:Effect with Effect NoSchedule, PreferNoSchedule or NoExecute"
        ))
    };
    let (head, effect) = text.rsplit_once(':').ok_or_else(bad)?;
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        return Err(bad());
    }
    let (key, value) = match head.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (head, None),
    };
    if key.is_empty() {
        return Err(bad());
    }
    Ok(Taint {
        key: key.to_string(),
        value,
        effect: effect.to_string(),
        time_added: None,
    })
}

/// `cpu=2,memory=4Gi,pods=110,ephemeral-storage=20Gi`.
pub fn parse_capacity(text: &str) -> Result<BTreeMap<String, Quantity>, ParseError> {
    let mut capacity = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, quantity) = item.split_once('=').ok_or_else(|| {
            ParseError(format!(
                "capacity {item:?} must be name=quantity (for example memory=4Gi)"
            ))
        })?;
        if name.is_empty() || !valid_quantity(quantity) {
            return Err(ParseError(format!(
                "capacity {item:?}: {quantity:?} is not a Kubernetes quantity (for example 2, 500m, 4Gi)"
            )));
        }
        capacity.insert(name.to_string(), Quantity(quantity.to_string()));
    }
    Ok(capacity)
}

/// A plain decimal number with an optional upstream suffix (not full exponent syntax).
fn valid_quantity(text: &str) -> bool {
    const SUFFIXES: [&str; 14] = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    !number.is_empty() && number.parse::<f64>().is_ok() && SUFFIXES.contains(&suffix)
}

/// What the agent reports when `--capacity` leaves a resource out.
pub fn default_capacity() -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut capacity = BTreeMap::new();
    capacity.insert("cpu".to_string(), Quantity(cpus.to_string()));
    capacity.insert("pods".to_string(), Quantity("110".into()));
    if let Some(kib) = mem_total_kib() {
        capacity.insert("memory".to_string(), Quantity(format!("{kib}Ki")));
    }
    capacity
}

fn mem_total_kib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_taints_and_capacity() {
        assert_eq!(parse_label("zone=a").unwrap(), ("zone".into(), "a".into()));
        assert!(parse_label("zone").is_err());
        let t = parse_taint("dedicated=gpu:NoSchedule").unwrap();
        assert_eq!(
            (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
            ("dedicated", Some("gpu"), "NoSchedule")
        );
        assert_eq!(parse_taint("spot:NoExecute").unwrap().value, None);
        assert!(parse_taint("x=y:Sometimes").is_err());
        assert!(parse_taint("x=y").is_err());
        let c = parse_capacity("cpu=2,memory=4Gi,pods=110,ephemeral-storage=20Gi").unwrap();
        assert_eq!(c["memory"].0, "4Gi");
        assert_eq!(c.len(), 4);
        assert!(parse_capacity("cpu=two").is_err());
        assert!(parse_capacity("memory=4GiB").is_err());
        assert!(parse_capacity("cpu").is_err());
    }
}
