//! A pod's resolv.conf as upstream's kubelet makes it (`pkg/kubelet/network/dns`):
//! from its dnsPolicy, the cluster DNS servers, the node's own resolv.conf and the
//! pod's dnsConfig. containerd writes the file from the sandbox's `DNSConfig`.

use std::net::IpAddr;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;

/// Upstream's limits on what a resolver reads.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// Where pods find the cluster's DNS (`--cluster-dns`, `--cluster-domain`).
#[derive(Clone, Debug, Default)]
pub struct ClusterDns {
    pub servers: Vec<IpAddr>,
    pub domain: String,
}

/// nameserver, search and options lines of a resolv.conf.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolv {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

pub fn parse_resolv_conf(text: &str) -> Resolv {
    let mut resolv = Resolv::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => resolv.servers.extend(words.next().map(String::from)),
            // The last search line wins, as in the resolver.
            Some("search") => resolv.searches = words.map(String::from).collect(),
            Some("options") => resolv.options.extend(words.map(String::from)),
            _ => {}
        }
    }
    resolv
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// Options by name (`ndots:5` is named `ndots`); the pod's replace the base's.
fn merge_options(base: &mut Vec<String>, pod: &[k8s_openapi::api::core::v1::PodDNSConfigOption]) {
    for option in pod {
        let Some(name) = option.name.clone() else {
            continue;
        };
        let text = match &option.value {
            Some(value) => format!("{name}:{value}"),
            None => name.clone(),
        };
        base.retain(|o| o.split(':').next() != Some(name.as_str()));
        base.push(text);
    }
}

/// The pod's resolver configuration; `host` is the node's own resolv.conf.
pub fn pod_resolv(pod: &Pod, cluster: &ClusterDns, host: &Resolv) -> Resolv {
    let spec = pod.spec.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host_network = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let use_cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut resolv = if policy == "None" {
        Resolv::default()
    } else if use_cluster && !cluster.servers.is_empty() {
        let domain = cluster.domain.trim_end_matches('.');
        let mut searches = vec![
            format!("{namespace}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.to_string(),
        ];
        push_unique(&mut searches, host.searches.iter().cloned());
        Resolv {
            servers: cluster.servers.iter().map(IpAddr::to_string).collect(),
            searches,
            options: vec!["ndots:5".to_string()],
        }
    } else {
        // Default, or ClusterFirst without a cluster DNS (upstream falls back the same).
        host.clone()
    };
    if let Some(config) = &spec.dns_config {
        push_unique(
            &mut resolv.servers,
            config.nameservers.clone().unwrap_or_default(),
        );
        push_unique(
            &mut resolv.searches,
            config.searches.clone().unwrap_or_default(),
        );
        merge_options(
            &mut resolv.options,
            config.options.as_deref().unwrap_or_default(),
        );
    }
    resolv.servers.truncate(MAX_NAMESERVERS);
    resolv.searches.truncate(MAX_SEARCHES);
    resolv
}

/// The sandbox's DNS configuration, read against the node's `/etc/resolv.conf`.
pub fn sandbox_dns_config(pod: &Pod, cluster: &ClusterDns) -> Option<cri::DnsConfig> {
    let host = std::fs::read_to_string("/etc/resolv.conf")
        .map(|text| parse_resolv_conf(&text))
        .unwrap_or_default();
    let resolv = pod_resolv(pod, cluster, &host);
    Some(cri::DnsConfig {
        servers: resolv.servers,
        searches: resolv.searches,
        options: resolv.options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "shop", "name": "p"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn cluster() -> ClusterDns {
        ClusterDns {
            servers: vec!["10.96.0.10".parse().unwrap()],
            domain: "cluster.local".into(),
        }
    }

    fn host() -> Resolv {
        parse_resolv_conf("search corp.example\nnameserver 192.0.2.53\noptions edns0\n")
    }

    #[test]
    fn cluster_first_is_the_default() {
        let resolv = pod_resolv(
            &pod(serde_json::json!({"containers": []})),
            &cluster(),
            &host(),
        );
        assert_eq!(resolv.servers, ["10.96.0.10"]);
        assert_eq!(
            resolv.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example"
            ]
        );
        assert_eq!(resolv.options, ["ndots:5"]);
    }

    #[test]
    fn host_network_pods_use_the_node_unless_asked() {
        let plain = pod(serde_json::json!({"containers": [], "hostNetwork": true}));
        assert_eq!(pod_resolv(&plain, &cluster(), &host()), host());
        let with = pod(serde_json::json!({"containers": [], "hostNetwork": true,
            "dnsPolicy": "ClusterFirstWithHostNet"}));
        assert_eq!(
            pod_resolv(&with, &cluster(), &host()).servers,
            ["10.96.0.10"]
        );
        let default = pod(serde_json::json!({"containers": [], "dnsPolicy": "Default"}));
        assert_eq!(pod_resolv(&default, &cluster(), &host()), host());
        // No cluster DNS configured: the node's, as upstream falls back.
        let none = ClusterDns::default();
        let plain = pod(serde_json::json!({"containers": []}));
        assert_eq!(pod_resolv(&plain, &none, &host()), host());
    }

    #[test]
    fn dns_config_merges_and_none_uses_it_alone() {
        let merged = pod(serde_json::json!({"containers": [], "dnsConfig": {
            "nameservers": ["10.96.0.10", "192.0.2.1"],
            "searches": ["extra.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "single-request"}]}}));
        let resolv = pod_resolv(&merged, &cluster(), &host());
        assert_eq!(resolv.servers, ["10.96.0.10", "192.0.2.1"]);
        assert_eq!(
            resolv.searches.last().map(String::as_str),
            Some("extra.example")
        );
        assert_eq!(resolv.options, ["ndots:2", "single-request"]);
        let none = pod(serde_json::json!({"containers": [], "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["1.2.3.4"]}}));
        let resolv = pod_resolv(&none, &cluster(), &host());
        assert_eq!(resolv.servers, ["1.2.3.4"]);
        assert!(resolv.searches.is_empty() && resolv.options.is_empty());
    }
}
