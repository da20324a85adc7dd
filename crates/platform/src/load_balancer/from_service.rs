//! What load balancer a Service asks for (pure): its type, ports and node ports, traffic
//! policy, source ranges and `loadbalancer.korvet.io/` annotations, checked, over the
//! cluster's nodes. A Service whose annotations make no sense gets no load balancer (and
//! its old one is left as it was), with every problem named.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Node, Service};
use korvet_api::{annotations, HealthCheckSpec, LoadBalancerListener, LoadBalancerSpec};

/// The annotation upstream clouds read source ranges from when the field is empty.
const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// Whether the platform serves this Service: `type: LoadBalancer`, and no other
/// implementation's `loadBalancerClass`.
pub(crate) fn wants_load_balancer(service: &Service) -> bool {
    let Some(spec) = &service.spec else {
        return false;
    };
    spec.type_.as_deref() == Some("LoadBalancer")
        && spec
            .load_balancer_class
            .as_deref()
            .is_none_or(|class| class == "korvet.io/load-balancer")
}

/// The addresses of the nodes that may carry traffic: Ready, schedulable or not (as
/// upstream's service controller since 1.19 keeps cordoned nodes), not being deleted,
/// without `node.kubernetes.io/exclude-from-external-load-balancers`.
pub(crate) fn backend_addresses(nodes: &[Node]) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter(|n| {
            !n.metadata.labels.as_ref().is_some_and(|l| {
                l.contains_key("node.kubernetes.io/exclude-from-external-load-balancers")
            })
        })
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|n| korvet_apimachinery::nodes::internal_ip(n).map(str::to_owned))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The load balancer `service` of `cluster` asks for over `backends`, or what is wrong
/// with it.
pub(crate) fn desired(
    cluster: &str,
    service: &Service,
    backends: Vec<String>,
) -> Result<LoadBalancerSpec, Vec<String>> {
    let mut problems = Vec::new();
    let spec = service.spec.clone().unwrap_or_default();
    let empty = BTreeMap::new();
    let notes = service.metadata.annotations.as_ref().unwrap_or(&empty);
    for key in notes.keys() {
        if key.starts_with(annotations::PREFIX) && !annotations::ALL.contains(&key.as_str()) {
            problems.push(format!(
                "unknown annotation {key}: the load balancer annotations are {}",
                annotations::ALL.join(", ")
            ));
        }
    }
    let proxy_protocol = match notes.get(annotations::PROXY_PROTOCOL).map(String::as_str) {
        None | Some("") => None,
        Some(v @ ("v1" | "v2")) => Some(v.to_string()),
        Some(other) => {
            problems.push(format!(
                "{}: unknown PROXY protocol version {other:?}: use v1 or v2",
                annotations::PROXY_PROTOCOL
            ));
            None
        }
    };
    let internal = match notes.get(annotations::INTERNAL).map(String::as_str) {
        None | Some("false") | Some("") => false,
        Some("true") => true,
        Some(other) => {
            problems.push(format!(
                "{}: {other:?} is not \"true\" or \"false\"",
                annotations::INTERNAL
            ));
            false
        }
    };
    let requested = notes
        .get(annotations::ADDRESS)
        .cloned()
        .or_else(|| spec.load_balancer_ip.clone())
        .filter(|a| !a.is_empty());
    if let Some(address) = &requested {
        if address.parse::<Ipv4Addr>().is_err() {
            problems.push(format!(
                "requested address {address:?} is not an IPv4 address"
            ));
        }
    }
    let tls_secret = notes
        .get(annotations::TLS_SECRET)
        .filter(|s| !s.is_empty())
        .cloned();
    let tls_ports: Option<Vec<i32>> = match notes.get(annotations::TLS_PORTS) {
        None => None,
        Some(text) => {
            let parsed: Result<Vec<i32>, _> = text
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::parse::<i32>)
                .collect();
            match parsed {
                Ok(ports) => Some(ports),
                Err(_) => {
                    problems.push(format!(
                        "{}: {text:?} is not a comma-separated list of ports",
                        annotations::TLS_PORTS
                    ));
                    None
                }
            }
        }
    };
    if tls_ports.is_some() && tls_secret.is_none() {
        problems.push(format!(
            "{} names ports but {} names no Secret",
            annotations::TLS_PORTS,
            annotations::TLS_SECRET
        ));
    }
    let mut health = HealthCheckSpec::default();
    for (key, field, least) in [
        (
            annotations::HEALTH_INTERVAL,
            &mut health.interval_seconds,
            1,
        ),
        (annotations::HEALTH_TIMEOUT, &mut health.timeout_seconds, 1),
        (
            annotations::HEALTHY_THRESHOLD,
            &mut health.healthy_threshold,
            1,
        ),
        (
            annotations::UNHEALTHY_THRESHOLD,
            &mut health.unhealthy_threshold,
            1,
        ),
    ] {
        if let Some(text) = notes.get(key) {
            match text.parse::<i32>() {
                Ok(n) if (least..=300).contains(&n) => *field = n,
                _ => problems.push(format!(
                    "{key}: {text:?} is not a whole number from {least} to 300"
                )),
            }
        }
    }
    let ranges: Vec<String> = match &spec.load_balancer_source_ranges {
        Some(ranges) if !ranges.is_empty() => ranges.clone(),
        _ => notes
            .get(SOURCE_RANGES_ANNOTATION)
            .map(|t| {
                t.split(',')
                    .map(|r| r.trim().to_string())
                    .filter(|r| !r.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    };
    for range in &ranges {
        if range.parse::<ipnet::Ipv4Net>().is_err() {
            problems.push(format!(
                "source range {range:?} is not an IPv4 network such as 203.0.113.0/24"
            ));
        }
    }
    let mut listeners = Vec::new();
    for port in spec.ports.unwrap_or_default() {
        let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
        if protocol != "TCP" && protocol != "UDP" {
            problems.push(format!(
                "port {}: protocol {protocol} is not served (TCP and UDP are)",
                port.port
            ));
            continue;
        }
        let Some(node_port) = port.node_port.filter(|p| *p > 0) else {
            problems.push(format!(
                "port {} has no node port yet (allocateLoadBalancerNodePorts: false is not supported)",
                port.port
            ));
            continue;
        };
        let tcp = protocol == "TCP";
        let tls = tls_secret.clone().filter(|_| {
            tcp && tls_ports
                .as_ref()
                .is_none_or(|ports| ports.contains(&port.port))
        });
        listeners.push(LoadBalancerListener {
            name: port
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| format!("{}-{}", port.port, protocol.to_lowercase())),
            proxy_protocol: proxy_protocol.clone().filter(|_| tcp),
            tls_secret: tls,
            protocol,
            port: port.port,
            node_port,
        });
    }
    if listeners.is_empty() && problems.is_empty() {
        problems.push("the Service has no port to serve".into());
    }
    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    let health_check_node_port = spec.health_check_node_port.filter(|_| local);
    if local && health_check_node_port.is_none() {
        problems
            .push("externalTrafficPolicy: Local, but no healthCheckNodePort was allocated".into());
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let namespace = service
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = service.metadata.name.clone().unwrap_or_default();
    Ok(LoadBalancerSpec {
        cluster: cluster.to_string(),
        service: format!("{namespace}/{name}"),
        type_: if internal { "internal" } else { "external" }.into(),
        requested_address: requested,
        listeners,
        backends,
        health_check_node_port,
        source_ranges: ranges,
        health_check: health,
        http: None,
    })
}

/// The LoadBalancer object's name for a Service: `CLUSTER.NAMESPACE.NAME` (dots cannot
/// appear in any of the three, so no two Services share one).
pub(crate) fn object_name(cluster: &str, namespace: &str, name: &str) -> String {
    format!("{cluster}.{namespace}.{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(json: serde_json::Value) -> Service {
        serde_json::from_value(json).unwrap()
    }

    fn node(name: &str, ip: &str, ready: bool) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {
                "addresses": [{"type": "InternalIP", "address": ip}],
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}],
            }
        }))
        .unwrap()
    }

    #[test]
    fn ports_policy_and_annotations_make_the_spec() {
        let s = service(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "annotations": {
                "loadbalancer.korvet.io/proxy-protocol": "v2",
                "loadbalancer.korvet.io/tls-secret": "web-tls",
                "loadbalancer.korvet.io/tls-ports": "443",
                "loadbalancer.korvet.io/healthcheck-interval-seconds": "5",
            }},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                "loadBalancerSourceRanges": ["10.200.0.0/24"],
                "ports": [
                    {"name": "http", "port": 80, "nodePort": 30080},
                    {"name": "https", "port": 443, "nodePort": 30443},
                    {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
                ]}
        }));
        assert!(wants_load_balancer(&s));
        let nodes = [
            node("a", "10.201.5.10", true),
            node("b", "10.201.5.11", false),
        ];
        let spec = desired("demo", &s, backend_addresses(&nodes)).unwrap();
        assert_eq!(spec.service, "shop/web");
        assert_eq!(spec.type_, "external");
        assert_eq!(spec.backends, ["10.201.5.10"]);
        assert_eq!(spec.health_check_node_port, Some(32000));
        assert_eq!(spec.health_check.interval_seconds, 5);
        assert_eq!(spec.source_ranges, ["10.200.0.0/24"]);
        let by_name: BTreeMap<&str, &LoadBalancerListener> = spec
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l))
            .collect();
        assert_eq!(by_name["http"].proxy_protocol.as_deref(), Some("v2"));
        assert_eq!(by_name["http"].tls_secret, None);
        assert_eq!(by_name["https"].tls_secret.as_deref(), Some("web-tls"));
        assert_eq!(by_name["dns"].proxy_protocol, None, "PROXY is TCP only");
        assert_eq!(object_name("demo", "shop", "web"), "demo.shop.web");
    }

    #[test]
    fn nonsense_is_refused_with_every_problem_named() {
        let s = service(serde_json::json!({
            "metadata": {"name": "web", "annotations": {
                "loadbalancer.korvet.io/proxy-protocol": "v3",
                "loadbalancer.korvet.io/internl": "true",
            }},
            "spec": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/33"],
                "ports": [{"port": 80, "nodePort": 30080}]}
        }));
        let problems = desired("demo", &s, vec![]).unwrap_err();
        let text = problems.join("\n");
        assert!(
            text.contains("unknown PROXY protocol version \"v3\""),
            "{text}"
        );
        assert!(
            text.contains("unknown annotation loadbalancer.korvet.io/internl"),
            "{text}"
        );
        assert!(text.contains("source range \"10.0.0.0/33\""), "{text}");
        let other = service(
            serde_json::json!({"spec": {"type": "LoadBalancer", "loadBalancerClass": "example.com/lb"}}),
        );
        assert!(!wants_load_balancer(&other));
        let cluster_ip = service(serde_json::json!({"spec": {"type": "ClusterIP"}}));
        assert!(!wants_load_balancer(&cluster_ip));
    }
}
