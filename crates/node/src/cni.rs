//! The node's CNI configuration: pods on a `cni0` bridge with addresses from the
//! Node's `spec.podCIDR` (host-local IPAM), plus port mappings and loopback.
//!
//! The bridge holds the CIDR's first address and is the pods' default gateway, so the
//! node itself reaches its pods (probes, kubelet-style checks) and pods reach other
//! nodes' pods through the machine's own default route (the provider routes pod CIDRs
//! between the cluster's machines). No masquerading: pods keep their addresses.

use std::path::Path;

use ipnet::Ipv4Net;
use serde_json::json;

pub(crate) const CONFLIST_FILE: &str = "10-korvet.conflist";
pub(crate) const BRIDGE: &str = "cni0";

/// The conflist for `pod_cidr`; `ipam_dir` keeps host-local's address claims.
pub(crate) fn conflist(pod_cidr: Ipv4Net, ipam_dir: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "0.4.0",
        "name": "korvet",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "isDefaultGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam_dir.display().to_string(),
                    "ranges": [[{"subnet": pod_cidr.trunc().to_string()}]],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"},
        ],
    })
}

/// Makes traffic between pods on the bridge pass the IP netfilter hooks (br_netfilter),
/// as the service proxy (conntrack, DNAT replies on the same bridge, hairpin) and the
/// network policies (the FORWARD filter) need; a new network namespace may have it off.
pub(crate) fn enable_bridge_netfilter() {
    let path = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if let Err(e) = std::fs::write(path, "1") {
        tracing::warn!(
            error = %e,
            "cannot set {path}: Services and network policies miss traffic between pods of \
             this node (load the br_netfilter module on the host)"
        );
    }
}

/// Writes the conflist into `conf_dir` (atomically: containerd watches the directory).
pub(crate) fn write(conf_dir: &Path, pod_cidr: Ipv4Net, ipam_dir: &Path) -> std::io::Result<bool> {
    let text =
        serde_json::to_vec_pretty(&conflist(pod_cidr, ipam_dir)).map_err(std::io::Error::other)?;
    let path = conf_dir.join(CONFLIST_FILE);
    if std::fs::read(&path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    std::fs::create_dir_all(conf_dir)?;
    let tmp = conf_dir.join(format!(".{CONFLIST_FILE}.tmp"));
    std::fs::write(&tmp, &text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_uses_the_pod_cidr_without_masquerade() {
        let c = conflist("10.244.3.0/24".parse().unwrap(), Path::new("/m/ipam"));
        assert_eq!(
            c["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.3.0/24"
        );
        assert_eq!(c["plugins"][0]["ipMasq"], false);
        assert_eq!(c["plugins"][0]["isGateway"], true);
        assert_eq!(c["plugins"][0]["isDefaultGateway"], true);
        assert_eq!(c["plugins"][2]["type"], "loopback");
        let dir = tempfile::tempdir().unwrap();
        let cidr = "10.244.3.0/24".parse().unwrap();
        assert!(write(dir.path(), cidr, Path::new("/m/ipam")).unwrap());
        assert!(!write(dir.path(), cidr, Path::new("/m/ipam")).unwrap());
    }
}
