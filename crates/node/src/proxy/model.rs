//! What the proxy must do, computed from Services and EndpointSlices alone (no API
//! server, no nft), so that the rules and a benchmark can be driven from plain objects.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub use crate::protocol::Protocol;

/// One port of one Service: the unit the proxy renders rules for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub namespace: String,
    pub name: String,
    /// The port's name; empty for a Service's single unnamed port.
    pub port_name: String,
    pub protocol: Protocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    /// spec.externalIPs and load-balancer ingress addresses: external traffic.
    pub external_ips: Vec<Ipv4Addr>,
    /// Where traffic to the ClusterIP goes (internalTrafficPolicy applied).
    pub endpoints: Vec<Endpoint>,
    /// Where NodePort and external-IP traffic goes (externalTrafficPolicy applied).
    pub external_endpoints: Vec<Endpoint>,
    /// externalTrafficPolicy: Local keeps the client's address (no masquerade).
    pub external_local: bool,
    /// sessionAffinity: ClientIP, in seconds.
    pub affinity_timeout: Option<u32>,
}

/// The health-check node port of a Service with externalTrafficPolicy: Local.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    /// Ready endpoints of the Service on this node.
    pub local_endpoints: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub ports: BTreeMap<PortKey, ServicePort>,
    /// By spec.healthCheckNodePort.
    pub health_checks: BTreeMap<u16, HealthCheck>,
}

/// An endpoint address as a slice states it, for one port.
struct Candidate {
    endpoint: Endpoint,
    ready: bool,
    serving_terminating: bool,
    local: bool,
}

/// Ready endpoints if there are any, else serving-and-terminating ones (upstream's
/// fallback, so connections drain rather than fail during a rollout).
fn usable(candidates: &[Candidate], local_only: bool) -> Vec<Endpoint> {
    let of = |want: &dyn Fn(&Candidate) -> bool| -> Vec<Endpoint> {
        let set: BTreeSet<Endpoint> = candidates
            .iter()
            .filter(|c| (!local_only || c.local) && want(c))
            .map(|c| c.endpoint)
            .collect();
        set.into_iter().collect()
    };
    let ready = of(&|c| c.ready);
    if ready.is_empty() {
        of(&|c| c.serving_terminating)
    } else {
        ready
    }
}

fn ipv4(text: &str) -> Option<Ipv4Addr> {
    text.parse().ok()
}

impl Model {
    /// The model for the node named `node_name` (its endpoints are the "local" ones).
    pub fn build(services: &[&Service], slices: &[&EndpointSlice], node_name: &str) -> Model {
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            if slice.address_type != "IPv4" {
                continue;
            }
            let (Some(namespace), Some(service)) = (
                slice.metadata.namespace.as_deref(),
                slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ) else {
                continue;
            };
            by_service
                .entry((namespace, service.as_str()))
                .or_default()
                .push(slice);
        }
        let mut model = Model::default();
        // A key a broken object claims twice would fail the whole nft transaction.
        let mut taken_ips: HashSet<(Ipv4Addr, Protocol, u16)> = HashSet::new();
        let mut taken_node_ports: HashSet<(Protocol, u16)> = HashSet::new();
        let mut services: Vec<&Service> = services.to_vec();
        services.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        for service in services {
            let (Some(namespace), Some(name), Some(spec)) = (
                service.metadata.namespace.as_deref(),
                service.metadata.name.as_deref(),
                service.spec.as_ref(),
            ) else {
                continue;
            };
            let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
            if kind == "ExternalName" {
                continue;
            }
            // Headless Services have no virtual IP: DNS hands out the pods.
            let Some(cluster_ip) = spec.cluster_ip.as_deref().and_then(ipv4) else {
                continue;
            };
            let with_node_ports = kind == "NodePort" || kind == "LoadBalancer";
            let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
            let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
            let affinity_timeout =
                (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
                    spec.session_affinity_config
                        .as_ref()
                        .and_then(|c| c.client_ip.as_ref())
                        .and_then(|c| c.timeout_seconds)
                        .and_then(|t| u32::try_from(t).ok())
                        .filter(|t| *t > 0)
                        .unwrap_or(10_800)
                });
            let mut external_ips: Vec<Ipv4Addr> = spec
                .external_ips
                .iter()
                .flatten()
                .filter_map(|ip| ipv4(ip))
                .collect();
            if kind == "LoadBalancer" {
                external_ips.extend(
                    service
                        .status
                        .as_ref()
                        .and_then(|s| s.load_balancer.as_ref())
                        .and_then(|lb| lb.ingress.as_ref())
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i.ip.as_deref().and_then(ipv4)),
                );
            }
            external_ips.sort();
            external_ips.dedup();
            let slices = by_service
                .get(&(namespace, name))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let mut local_ready: BTreeSet<Ipv4Addr> = BTreeSet::new();
            for port in spec.ports.iter().flatten() {
                let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else {
                    continue;
                };
                let Ok(number) = u16::try_from(port.port) else {
                    continue;
                };
                let port_name = port.name.clone().unwrap_or_default();
                let candidates = candidates(slices, &port_name, protocol, node_name);
                local_ready.extend(
                    candidates
                        .iter()
                        .filter(|c| c.local && c.ready)
                        .map(|c| c.endpoint.ip),
                );
                let node_port = port
                    .node_port
                    .filter(|_| with_node_ports)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0);
                let mut ip_keys = vec![(cluster_ip, protocol, number)];
                ip_keys.extend(external_ips.iter().map(|ip| (*ip, protocol, number)));
                if ip_keys.iter().any(|k| taken_ips.contains(k))
                    || node_port.is_some_and(|p| taken_node_ports.contains(&(protocol, p)))
                {
                    tracing::warn!(
                        namespace,
                        name,
                        port = number,
                        "Service port clashes with another Service's; skipped"
                    );
                    continue;
                }
                taken_ips.extend(ip_keys);
                if let Some(p) = node_port {
                    taken_node_ports.insert((protocol, p));
                }
                let key = PortKey {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    port_name,
                    protocol,
                };
                model.ports.insert(
                    key,
                    ServicePort {
                        cluster_ip,
                        port: number,
                        node_port,
                        external_ips: external_ips.clone(),
                        endpoints: usable(&candidates, internal_local),
                        external_endpoints: usable(&candidates, external_local),
                        external_local,
                        affinity_timeout,
                    },
                );
            }
            if let Some(port) = spec
                .health_check_node_port
                .filter(|_| with_node_ports && external_local)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
            {
                model.health_checks.insert(
                    port,
                    HealthCheck {
                        namespace: namespace.to_string(),
                        name: name.to_string(),
                        local_endpoints: local_ready.len(),
                    },
                );
            }
        }
        model
    }

    /// Distinct endpoint addresses over all Service ports (for metrics).
    pub fn endpoint_count(&self) -> usize {
        self.ports
            .values()
            .map(|p| p.endpoints.len().max(p.external_endpoints.len()))
            .sum()
    }
}

fn candidates(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    node_name: &str,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for slice in slices {
        let Some(port) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
        }) else {
            continue;
        };
        let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            // As upstream: only an endpoint's first address is used.
            let Some(ip) = endpoint.addresses.first().and_then(|a| ipv4(a)) else {
                continue;
            };
            let conditions = endpoint.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            out.push(Candidate {
                endpoint: Endpoint { ip, port: number },
                ready,
                serving_terminating: serving && terminating,
                local: endpoint.node_name.as_deref() == Some(node_name),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).unwrap()
    }

    fn web_slice() -> EndpointSlice {
        slice(json!({
            "metadata": {"name": "web-1", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.244.1.2"], "conditions": {"ready": true}, "nodeName": "n1"},
                {"addresses": ["10.244.2.2"], "conditions": {"ready": true}, "nodeName": "n2"},
                {"addresses": ["10.244.2.3"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "n2"},
                {"addresses": ["10.244.2.4"], "conditions": {"ready": false}, "nodeName": "n2"},
            ],
        }))
    }

    #[test]
    fn named_ports_ready_endpoints_and_policies() {
        let svc = service(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.20",
                "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000,
                "sessionAffinity": "ClientIP",
                "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                          {"name": "dns", "port": 53, "protocol": "UDP"}]},
        }));
        let s = web_slice();
        let model = Model::build(&[&svc], &[&s], "n1");
        assert_eq!(model.ports.len(), 2);
        let http = model
            .ports
            .iter()
            .find(|(k, _)| k.port_name == "http")
            .unwrap()
            .1;
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(http.affinity_timeout, Some(10_800));
        let ips: Vec<_> = http.endpoints.iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(ips, ["10.244.1.2", "10.244.2.2"]);
        assert_eq!(http.endpoints[0].port, 8080);
        // externalTrafficPolicy: Local → only n1's endpoint.
        assert_eq!(http.external_endpoints.len(), 1);
        assert_eq!(model.health_checks[&31000].local_endpoints, 1);
        let dns = model
            .ports
            .iter()
            .find(|(k, _)| k.protocol == Protocol::Udp)
            .unwrap()
            .1;
        assert_eq!(dns.endpoints[0].port, 5353);
        assert_eq!(dns.node_port, None);
        // A node without local ready endpoints reports none.
        let on_n3 = Model::build(&[&svc], &[&s], "n3");
        assert_eq!(on_n3.health_checks[&31000].local_endpoints, 0);
    }

    #[test]
    fn terminating_endpoints_only_without_ready_ones() {
        let svc = service(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20", "internalTrafficPolicy": "Local",
                "ports": [{"name": "http", "port": 80}]},
        }));
        let s = web_slice();
        // n2's only ready endpoint is 10.244.2.2.
        let model = Model::build(&[&svc], &[&s], "n2");
        let port = model.ports.values().next().unwrap();
        assert_eq!(port.endpoints.len(), 1);
        let mut draining = web_slice();
        for e in &mut draining.endpoints {
            if e.addresses[0] == "10.244.2.2" {
                e.conditions.as_mut().unwrap().ready = Some(false);
            }
        }
        let model = Model::build(&[&svc], &[&draining], "n2");
        let port = model.ports.values().next().unwrap();
        assert_eq!(port.endpoints[0].ip.to_string(), "10.244.2.3");
    }

    #[test]
    fn headless_and_external_name_have_no_rules() {
        let headless = service(json!({
            "metadata": {"name": "h", "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]},
        }));
        let external = service(json!({
            "metadata": {"name": "e", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.org"},
        }));
        let empty = service(json!({
            "metadata": {"name": "none", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.30", "ports": [{"port": 80}]},
        }));
        let model = Model::build(&[&headless, &external, &empty], &[], "n1");
        assert_eq!(model.ports.len(), 1);
        assert!(model.ports.values().next().unwrap().endpoints.is_empty());
    }
}
