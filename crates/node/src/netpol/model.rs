//! What the NetworkPolicies of a cluster mean for this node's pods: for each local pod
//! that a policy isolates, the list of rules that may let a packet through. Pure: built
//! from the API objects, rendered by [`super::rules`].
//!
//! Semantics as upstream: a pod is isolated for a direction once any policy selecting
//! it lists that direction in `policyTypes`; traffic is then allowed only if some rule
//! of some such policy allows it. An empty `podSelector` selects every pod of the
//! namespace, an empty `namespaceSelector` every namespace, both in one peer is their
//! AND; missing `from`/`to` means every peer, missing `ports` every port.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use korvet_apimachinery::selector;

/// The namespace and labels the cluster DNS endpoints stand for: they are not pods here
/// (the masters serve DNS), so each endpoint address counts as a pod of kube-system with
/// the kube-dns Service's labels, and the usual "allow DNS" policy works unchanged.
pub const DNS_NAMESPACE: &str = "kube-system";
pub const DNS_SERVICE: &str = "kube-dns";

pub use crate::protocol::Protocol;

/// Allowed destination ports of one protocol: `None` is every port of it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ports {
    pub protocol: Protocol,
    /// Inclusive ranges, sorted and merged.
    pub ranges: Option<Vec<(u16, u16)>>,
}

/// A set of IPv4 addresses as sorted, merged, inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddressSet(pub Vec<(u32, u32)>);

impl AddressSet {
    pub fn from_ranges(mut ranges: Vec<(u32, u32)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        Self(merged)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        self.0.iter().any(|&(a, b)| a <= ip && ip <= b)
    }

    /// `self` without `other` (both merged).
    pub fn minus(&self, other: &AddressSet) -> AddressSet {
        let mut out = Vec::new();
        for &(a, b) in &self.0 {
            let mut start = a as u64;
            let end = b as u64;
            for &(x, y) in &other.0 {
                let (x, y) = (x as u64, y as u64);
                if y < start || x > end {
                    continue;
                }
                if x > start {
                    out.push((start as u32, (x - 1) as u32));
                }
                start = y + 1;
                if start > end {
                    break;
                }
            }
            if start <= end {
                out.push((start as u32, end as u32));
            }
        }
        AddressSet::from_ranges(out)
    }
}

fn net_range(net: &Ipv4Net) -> (u32, u32) {
    (u32::from(net.network()), u32::from(net.broadcast()))
}

/// One way through: from/to `peers` (`None`: anywhere) on `ports` (`None`: any port
/// of any protocol).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub peers: Option<AddressSet>,
    pub ports: Option<Vec<Ports>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    /// Local pods isolated for ingress → the rules that allow traffic to them.
    pub ingress: BTreeMap<Ipv4Addr, Vec<Rule>>,
    /// Local pods isolated for egress → the rules that allow traffic from them.
    pub egress: BTreeMap<Ipv4Addr, Vec<Rule>>,
    /// Policies seen (for the metrics).
    pub policies: usize,
}

/// A pod as policies see it (real pods and the DNS pseudo-pods).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    pub node: Option<String>,
    /// (name, protocol, number) of its container ports.
    pub ports: Vec<(String, Protocol, u16)>,
}

/// The pods that policies can select or name as peers: running pods with an IPv4
/// address, not on the host network.
pub fn endpoints_of_pods(pods: &[Pod]) -> Vec<Endpoint> {
    pods.iter()
        .filter_map(|pod| {
            let spec = pod.spec.as_ref()?;
            if spec.host_network == Some(true) {
                return None;
            }
            let status = pod.status.as_ref()?;
            if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
                return None;
            }
            let ip: Ipv4Addr = status.pod_ip.as_deref()?.parse().ok()?;
            let ports = spec
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .filter_map(|p| {
                    let name = p.name.clone()?;
                    let protocol = Protocol::parse(p.protocol.as_deref())?;
                    Some((name, protocol, u16::try_from(p.container_port).ok()?))
                })
                .collect();
            Some(Endpoint {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                labels: pod.metadata.labels.clone().unwrap_or_default(),
                ip,
                node: spec.node_name.clone(),
                ports,
            })
        })
        .collect()
}

/// The cluster DNS endpoints as pseudo-pods of kube-system labelled like the Service.
pub fn endpoints_of_dns(
    slices: &[EndpointSlice],
    service_labels: &BTreeMap<String, String>,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for slice in slices {
        let labels = slice.metadata.labels.as_ref();
        let service = labels.and_then(|l| l.get("kubernetes.io/service-name"));
        if slice.metadata.namespace.as_deref() != Some(DNS_NAMESPACE)
            || service.map(String::as_str) != Some(DNS_SERVICE)
        {
            continue;
        }
        let ports: Vec<_> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.name.clone()?,
                    Protocol::parse(p.protocol.as_deref())?,
                    u16::try_from(p.port?).ok()?,
                ))
            })
            .collect();
        for endpoint in &slice.endpoints {
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse() {
                    out.push(Endpoint {
                        namespace: DNS_NAMESPACE.into(),
                        labels: service_labels.clone(),
                        ip,
                        node: None,
                        ports: ports.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Upstream's defaulting of `policyTypes`: Ingress always, Egress when egress rules exist.
pub fn policy_types(spec: &NetworkPolicySpec) -> (bool, bool) {
    match &spec.policy_types {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

/// Everything the model is built from.
pub struct Inputs<'a> {
    pub node_name: &'a str,
    pub policies: &'a [NetworkPolicy],
    pub namespaces: &'a [Namespace],
    /// Pods and DNS pseudo-pods of every node.
    pub endpoints: &'a [Endpoint],
}

struct Index<'a> {
    namespace_labels: HashMap<&'a str, BTreeMap<String, String>>,
    endpoints: &'a [Endpoint],
}

impl<'a> Index<'a> {
    fn namespace_labels(&self, name: &str) -> BTreeMap<String, String> {
        // Namespaces always carry their name label upstream; add it in case a reflector
        // has not seen the namespace yet.
        let mut labels = self.namespace_labels.get(name).cloned().unwrap_or_default();
        labels
            .entry("kubernetes.io/metadata.name".into())
            .or_insert_with(|| name.into());
        labels
    }

    /// The endpoints a peer selects (not its ipBlock), from a policy in `namespace`.
    fn peer_endpoints(&self, peer: &NetworkPolicyPeer, namespace: &str) -> Vec<&'a Endpoint> {
        if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
            return Vec::new();
        }
        let mut ns_cache: HashMap<&str, bool> = HashMap::new();
        self.endpoints
            .iter()
            .filter(|e| {
                let ns_ok = match &peer.namespace_selector {
                    None => e.namespace == namespace,
                    Some(sel) => *ns_cache.entry(e.namespace.as_str()).or_insert_with(|| {
                        selector::matches(sel, Some(&self.namespace_labels(&e.namespace)))
                    }),
                };
                ns_ok
                    && peer
                        .pod_selector
                        .as_ref()
                        .is_none_or(|sel| selector::matches(sel, Some(&e.labels)))
            })
            .collect()
    }
}

/// The addresses of an ipBlock, `except` removed; `None` if it does not parse.
fn ip_block(cidr: &str, except: &[String]) -> Option<AddressSet> {
    let net: Ipv4Net = cidr.parse().ok()?;
    let all = AddressSet::from_ranges(vec![net_range(&net.trunc())]);
    let holes = AddressSet::from_ranges(
        except
            .iter()
            .filter_map(|e| e.parse::<Ipv4Net>().ok())
            .map(|n| net_range(&n.trunc()))
            .collect(),
    );
    Some(all.minus(&holes))
}

fn merge_ports(mut ports: Vec<Ports>) -> Vec<Ports> {
    ports.sort();
    let mut by_protocol: BTreeMap<Protocol, Option<Vec<(u16, u16)>>> = BTreeMap::new();
    for p in ports {
        let slot = by_protocol
            .entry(p.protocol)
            .or_insert_with(|| Some(Vec::new()));
        match (slot.as_mut(), p.ranges) {
            (Some(list), Some(ranges)) => list.extend(ranges),
            _ => *slot = None,
        }
    }
    by_protocol
        .into_iter()
        .map(|(protocol, ranges)| Ports {
            protocol,
            ranges: ranges.map(|mut r| {
                r.sort_unstable();
                let mut merged: Vec<(u16, u16)> = Vec::new();
                for (a, b) in r {
                    match merged.last_mut() {
                        Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                        _ => merged.push((a, b)),
                    }
                }
                merged
            }),
        })
        .collect()
}

/// Numeric ports of a rule; named ones are resolved by `resolve` (name, protocol →
/// port), and one that resolves to nothing allows nothing.
fn numeric_ports(
    ports: &[NetworkPolicyPort],
    resolve: impl Fn(&str, Protocol) -> Option<u16>,
) -> Vec<Ports> {
    let mut out = Vec::new();
    for port in ports {
        let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else {
            continue;
        };
        let ranges = match &port.port {
            None => None,
            Some(IntOrString::Int(n)) => {
                let Ok(start) = u16::try_from(*n) else {
                    continue;
                };
                let end = port
                    .end_port
                    .and_then(|e| u16::try_from(e).ok())
                    .filter(|&e| e >= start)
                    .unwrap_or(start);
                Some(vec![(start, end)])
            }
            Some(IntOrString::String(name)) => match name.parse::<u16>() {
                Ok(n) => Some(vec![(n, n)]),
                Err(_) => match resolve(name, protocol) {
                    Some(n) => Some(vec![(n, n)]),
                    None => continue,
                },
            },
        };
        out.push(Ports { protocol, ranges });
    }
    merge_ports(out)
}

fn named(port: &NetworkPolicyPort) -> Option<&str> {
    match &port.port {
        Some(IntOrString::String(name)) if name.parse::<u16>().is_err() => Some(name),
        _ => None,
    }
}

fn addresses(endpoints: &[&Endpoint]) -> AddressSet {
    AddressSet::from_ranges(
        endpoints
            .iter()
            .map(|e| (u32::from(e.ip), u32::from(e.ip)))
            .collect(),
    )
}

impl Model {
    pub fn build(inputs: &Inputs<'_>) -> Model {
        let index = Index {
            namespace_labels: inputs
                .namespaces
                .iter()
                .filter_map(|n| {
                    Some((
                        n.metadata.name.as_deref()?,
                        n.metadata.labels.clone().unwrap_or_default(),
                    ))
                })
                .collect(),
            endpoints: inputs.endpoints,
        };
        let local: Vec<&Endpoint> = inputs
            .endpoints
            .iter()
            .filter(|e| e.node.as_deref() == Some(inputs.node_name))
            .collect();
        let mut ingress: BTreeMap<Ipv4Addr, BTreeSet<Rule>> = BTreeMap::new();
        let mut egress: BTreeMap<Ipv4Addr, BTreeSet<Rule>> = BTreeMap::new();
        for policy in inputs.policies {
            let (Some(namespace), Some(spec)) = (&policy.metadata.namespace, &policy.spec) else {
                continue;
            };
            let selected: Vec<&Endpoint> = local
                .iter()
                .copied()
                .filter(|e| {
                    &e.namespace == namespace
                        && spec
                            .pod_selector
                            .as_ref()
                            .is_none_or(|sel| selector::matches(sel, Some(&e.labels)))
                })
                .collect();
            if selected.is_empty() {
                continue;
            }
            let (is_ingress, is_egress) = policy_types(spec);
            if is_ingress {
                // Peers do not depend on the selected pod; ports may (named ports).
                let rules: Vec<_> = spec
                    .ingress
                    .iter()
                    .flatten()
                    .map(|r| {
                        (
                            peers_of(&index, r.from.as_deref(), namespace)
                                .map(|p| p.map(|(set, _)| set)),
                            r.ports.as_deref(),
                        )
                    })
                    .collect();
                for pod in &selected {
                    let allowed = ingress.entry(pod.ip).or_default();
                    for (peers, ports) in &rules {
                        let Some(peers) = peers else { continue };
                        let ports = match ports {
                            None | Some([]) => None,
                            Some(ports) => {
                                let p = numeric_ports(ports, |name, protocol| {
                                    pod.ports
                                        .iter()
                                        .find(|(n, pr, _)| n == name && *pr == protocol)
                                        .map(|p| p.2)
                                });
                                if p.is_empty() {
                                    continue;
                                }
                                Some(p)
                            }
                        };
                        allowed.insert(Rule {
                            peers: peers.clone(),
                            ports,
                        });
                    }
                }
            }
            if is_egress {
                let mut rules = BTreeSet::new();
                for r in spec.egress.iter().flatten() {
                    let Some(peers) = peers_of(&index, r.to.as_deref(), namespace) else {
                        continue;
                    };
                    let ports = r.ports.as_deref().unwrap_or_default();
                    if ports.is_empty() {
                        rules.insert(Rule {
                            peers: peers.map(|(set, _)| set),
                            ports: None,
                        });
                        continue;
                    }
                    // Numeric ports towards every peer...
                    let plain = numeric_ports(ports, |_, _| None);
                    if !plain.is_empty() {
                        rules.insert(Rule {
                            peers: peers.clone().map(|(set, _)| set),
                            ports: Some(plain),
                        });
                    }
                    // ...named ones towards each peer pod that has a port of that name.
                    let candidates: Vec<&Endpoint> = match &peers {
                        None => inputs.endpoints.iter().collect(),
                        Some((_, pods)) => pods.clone(),
                    };
                    let mut by_port: BTreeMap<(Protocol, u16), Vec<&Endpoint>> = BTreeMap::new();
                    for port in ports.iter().filter(|p| named(p).is_some()) {
                        let (Some(name), Some(protocol)) =
                            (named(port), Protocol::parse(port.protocol.as_deref()))
                        else {
                            continue;
                        };
                        for e in &candidates {
                            if let Some(p) = e
                                .ports
                                .iter()
                                .find(|(n, pr, _)| n == name && *pr == protocol)
                            {
                                by_port.entry((protocol, p.2)).or_default().push(e);
                            }
                        }
                    }
                    for ((protocol, number), pods) in by_port {
                        rules.insert(Rule {
                            peers: Some(addresses(&pods)),
                            ports: Some(vec![Ports {
                                protocol,
                                ranges: Some(vec![(number, number)]),
                            }]),
                        });
                    }
                }
                for pod in &selected {
                    egress
                        .entry(pod.ip)
                        .or_default()
                        .extend(rules.iter().cloned());
                }
            }
        }
        Model {
            ingress: ingress
                .into_iter()
                .map(|(ip, rules)| (ip, rules.into_iter().collect()))
                .collect(),
            egress: egress
                .into_iter()
                .map(|(ip, rules)| (ip, rules.into_iter().collect()))
                .collect(),
            policies: inputs.policies.len(),
        }
    }
}

/// The peers of a rule: `Some(None)` for everywhere (no peers listed), `Some(Some((set,
/// pods)))` for the addresses and the selected pods, `None` when it can match nothing.
#[allow(clippy::type_complexity)]
fn peers_of<'a>(
    index: &Index<'a>,
    peers: Option<&[NetworkPolicyPeer]>,
    namespace: &str,
) -> Option<Option<(AddressSet, Vec<&'a Endpoint>)>> {
    let peers = match peers {
        None | Some([]) => return Some(None),
        Some(peers) => peers,
    };
    let mut ranges = Vec::new();
    let mut pods = Vec::new();
    for peer in peers {
        if let Some(block) = &peer.ip_block {
            if let Some(set) = ip_block(&block.cidr, block.except.as_deref().unwrap_or_default()) {
                ranges.extend(set.0);
            }
            continue;
        }
        let selected = index.peer_endpoints(peer, namespace);
        ranges.extend(selected.iter().map(|e| (u32::from(e.ip), u32::from(e.ip))));
        pods.extend(selected);
    }
    let set = AddressSet::from_ranges(ranges);
    if set.is_empty() {
        return None;
    }
    Some(Some((set, pods)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ns: &str, labels: serde_json::Value, ip: &str, node: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c",
                "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip},
        }))
        .unwrap()
    }

    fn ns(name: &str, labels: serde_json::Value) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn np(ns: &str, spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": ns}, "spec": spec}))
            .unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn set(ips: &[&str]) -> Option<AddressSet> {
        Some(AddressSet::from_ranges(
            ips.iter()
                .map(|s| (u32::from(ip(s)), u32::from(ip(s))))
                .collect(),
        ))
    }

    /// web (local, ns a), x in ns a, y in ns b (team=blue), z in ns c, w in ns b on n2.
    fn world() -> (Vec<Endpoint>, Vec<Namespace>) {
        let pods = vec![
            pod("web", "a", json!({"app": "web"}), "10.0.0.1", "n1"),
            pod("x", "a", json!({"role": "client"}), "10.0.0.2", "n1"),
            pod("y", "b", json!({"role": "client"}), "10.0.0.3", "n1"),
            pod("z", "c", json!({"role": "other"}), "10.0.0.4", "n1"),
            pod("w", "b", json!({"role": "other"}), "10.0.1.5", "n2"),
        ];
        let namespaces = vec![
            ns("a", json!({})),
            ns("b", json!({"team": "blue"})),
            ns("c", json!({})),
        ];
        (endpoints_of_pods(&pods), namespaces)
    }

    fn build(policies: &[NetworkPolicy]) -> Model {
        let (endpoints, namespaces) = world();
        Model::build(&Inputs {
            node_name: "n1",
            policies,
            namespaces: &namespaces,
            endpoints: &endpoints,
        })
    }

    fn ingress_peers(model: &Model, pod: &str) -> Vec<Option<AddressSet>> {
        model.ingress[&ip(pod)]
            .iter()
            .map(|r| r.peers.clone())
            .collect()
    }

    #[test]
    fn empty_pod_selector_selects_every_pod_of_the_namespace_and_isolates_for_ingress() {
        let m = build(&[np("a", json!({"podSelector": {}}))]);
        assert_eq!(
            m.ingress.keys().copied().collect::<Vec<_>>(),
            [ip("10.0.0.1"), ip("10.0.0.2")]
        );
        assert!(
            m.ingress.values().all(|r| r.is_empty()),
            "no rules: deny all"
        );
        assert!(m.egress.is_empty(), "policyTypes defaults to Ingress only");
    }

    #[test]
    fn policy_types_default_adds_egress_when_egress_rules_exist() {
        let m = build(&[np(
            "a",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "egress": [{}]}),
        )]);
        assert!(m.ingress.contains_key(&ip("10.0.0.1")));
        assert_eq!(
            m.egress[&ip("10.0.0.1")],
            [Rule {
                peers: None,
                ports: None
            }]
        );
    }

    #[test]
    fn pod_selector_peer_stays_in_the_policy_namespace() {
        let m = build(&[np(
            "a",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}),
        )]);
        assert_eq!(ingress_peers(&m, "10.0.0.1"), [set(&["10.0.0.2"])]);
    }

    #[test]
    fn empty_namespace_selector_means_every_namespace_and_combines_with_pod_selector() {
        let m = build(&[np(
            "a",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"namespaceSelector": {},
                "podSelector": {"matchLabels": {"role": "client"}}}]}]}),
        )]);
        assert_eq!(
            ingress_peers(&m, "10.0.0.1"),
            [set(&["10.0.0.2", "10.0.0.3"])]
        );
        let m = build(&[np(
            "a",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]}),
        )]);
        assert_eq!(
            ingress_peers(&m, "10.0.0.1"),
            [set(&["10.0.0.3", "10.0.1.5"])]
        );
        // AND, not OR: team=blue and role=client is only y.
        let m = build(&[np(
            "a",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}},
                "podSelector": {"matchLabels": {"role": "client"}}}]}]}),
        )]);
        assert_eq!(ingress_peers(&m, "10.0.0.1"), [set(&["10.0.0.3"])]);
        // Selecting by the automatic name label.
        let m = build(&[np(
            "a",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels":
                {"kubernetes.io/metadata.name": "c"}}}]}]}),
        )]);
        assert_eq!(ingress_peers(&m, "10.0.0.1"), [set(&["10.0.0.4"])]);
    }

    #[test]
    fn a_rule_whose_peers_select_nothing_allows_nothing() {
        let m = build(&[np(
            "a",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "none"}}}]}]}),
        )]);
        assert!(m.ingress[&ip("10.0.0.1")].is_empty());
    }

    #[test]
    fn ip_blocks_subtract_their_exceptions() {
        let m = build(&[np(
            "a",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.1.0.0/16",
                "except": ["10.1.2.0/24", "10.1.255.255/32"]}}]}]}),
        )]);
        let peers = ingress_peers(&m, "10.0.0.1")[0].clone().unwrap();
        let r = |a: &str, b: &str| (u32::from(ip(a)), u32::from(ip(b)));
        assert_eq!(
            peers.0,
            [r("10.1.0.0", "10.1.1.255"), r("10.1.3.0", "10.1.255.254")]
        );
    }

    #[test]
    fn ports_ranges_and_named_ports_resolve_per_pod() {
        let m = build(&[np(
            "a",
            json!({"podSelector": {},
            "ingress": [{"ports": [{"port": 80, "endPort": 90}, {"port": 85},
                {"port": "http"}, {"protocol": "UDP", "port": "http"}]}]}),
        )]);
        let tcp = |r: Vec<(u16, u16)>| Ports {
            protocol: Protocol::Tcp,
            ranges: Some(r),
        };
        assert_eq!(
            m.ingress[&ip("10.0.0.1")],
            [Rule {
                peers: None,
                ports: Some(vec![tcp(vec![(80, 90), (8080, 8080)])])
            }],
            "UDP http does not resolve, 85 merges into 80-90"
        );
    }

    #[test]
    fn egress_named_ports_resolve_against_each_peer() {
        let m = build(&[np(
            "a",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}],
                "ports": [{"port": "http"}]}]}),
        )]);
        assert!(m.ingress.is_empty());
        let rules = &m.egress[&ip("10.0.0.1")];
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].peers, set(&["10.0.0.3", "10.0.1.5"]));
    }

    #[test]
    fn dns_endpoints_are_kube_system_pods_labelled_like_the_service() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "kube-dns-1", "namespace": "kube-system",
                "labels": {"kubernetes.io/service-name": "kube-dns"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.200.0.2"]}],
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}],
        }))
        .unwrap();
        let labels = [("k8s-app".to_string(), "kube-dns".to_string())].into();
        let dns = endpoints_of_dns(&[slice], &labels);
        assert_eq!(dns.len(), 1);
        assert_eq!(dns[0].namespace, "kube-system");
        assert_eq!(dns[0].ip, ip("10.200.0.2"));
        assert_eq!(dns[0].ports, [("dns".to_string(), Protocol::Udp, 53)]);
    }

    #[test]
    fn address_set_minus() {
        let s = AddressSet::from_ranges(vec![(0, 10), (20, 30)]);
        let holes = AddressSet::from_ranges(vec![(5, 22), (30, 40)]);
        assert_eq!(s.minus(&holes).0, [(0, 4), (23, 29)]);
        assert!(AddressSet::from_ranges(vec![(0, u32::MAX)])
            .minus(&AddressSet::from_ranges(vec![(0, u32::MAX)]))
            .is_empty());
    }
}
