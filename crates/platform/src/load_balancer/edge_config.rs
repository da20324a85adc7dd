//! The data-plane configuration of a cluster's load-balancer instances (pure): every
//! listener of every LoadBalancer of the cluster that has its address (and its TLS
//! material, where it terminates TLS).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;
use korvet_api::HttpSpec;
use korvet_api::LoadBalancer;
use korvet_lb::edge::{
    BackendCheck, EdgeConfig, HostCertificate, HttpBackend, HttpConfig, HttpRoute, Listener,
    PathType, Protocol, Tls,
};
use korvet_lb::proxy_protocol::Version;

/// One LoadBalancer ready to serve: its address, and the files of each TLS Secret its
/// listeners name (an Ingress load balancer's by `NAMESPACE/NAME`).
pub(crate) struct Served<'a> {
    pub load_balancer: &'a LoadBalancer,
    pub address: Ipv4Addr,
    pub tls: BTreeMap<String, Tls>,
}

/// The configuration of the instances; `masquerade` are the clients whose replies
/// would not come back through them (the host, the cluster's network and pods).
pub(crate) fn edge_config(masquerade: Vec<Ipv4Net>, served: &[Served<'_>]) -> EdgeConfig {
    let mut listeners = Vec::new();
    for s in served {
        let spec = &s.load_balancer.spec;
        let health = &spec.health_check;
        let check = BackendCheck {
            http_port: spec
                .health_check_node_port
                .and_then(|p| u16::try_from(p).ok()),
            path: "/healthz".into(),
            interval_ms: u64::from(health.interval_seconds.max(1) as u32) * 1000,
            timeout_ms: u64::from(health.timeout_seconds.max(1) as u32) * 1000,
            rise: health.healthy_threshold.max(1) as u32,
            fall: health.unhealthy_threshold.max(1) as u32,
        };
        let source_ranges: Vec<Ipv4Net> = spec
            .source_ranges
            .iter()
            .filter_map(|r| r.parse().ok())
            .collect();
        for l in &spec.listeners {
            let (Ok(port), Ok(node_port)) = (u16::try_from(l.port), u16::try_from(l.node_port))
            else {
                continue;
            };
            let protocol = if l.protocol == "UDP" {
                Protocol::Udp
            } else {
                Protocol::Tcp
            };
            let http = spec
                .http
                .as_ref()
                .map(|h| http_config(h, &s.tls, l.port == 443));
            let owner = if spec.http.is_some() {
                "ingress"
            } else {
                spec.service.as_str()
            };
            listeners.push(Listener {
                name: format!("{owner}:{}/{}", l.port, protocol.as_str()),
                address: s.address,
                port,
                protocol,
                proxy_protocol: l
                    .proxy_protocol
                    .as_deref()
                    .and_then(|v| v.parse::<Version>().ok()),
                tls: l
                    .tls_secret
                    .as_ref()
                    .and_then(|name| s.tls.get(name))
                    .cloned(),
                backends: spec
                    .backends
                    .iter()
                    .filter_map(|b| b.parse::<Ipv4Addr>().ok())
                    .map(|ip| SocketAddrV4::new(ip, node_port))
                    .collect(),
                health: check.clone(),
                source_ranges: source_ranges.clone(),
                http,
            });
        }
    }
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    EdgeConfig {
        // Given per instance on its command line.
        admin_listen: None,
        masquerade,
        listeners,
    }
}

fn http_backend(spec: &korvet_api::HttpBackendSpec) -> HttpBackend {
    HttpBackend {
        name: spec.service.clone(),
        endpoints: spec
            .endpoints
            .iter()
            .filter_map(|e| e.parse().ok())
            .collect(),
    }
}

/// The routing of an Ingress load balancer's listener; `https` ones get the
/// certificates whose files exist.
fn http_config(spec: &HttpSpec, files: &BTreeMap<String, Tls>, https: bool) -> HttpConfig {
    HttpConfig {
        routes: spec
            .routes
            .iter()
            .map(|r| HttpRoute {
                host: r.host.clone(),
                path: r.path.clone(),
                path_type: match r.path_type.as_str() {
                    "Exact" => PathType::Exact,
                    "Prefix" => PathType::Prefix,
                    _ => PathType::ImplementationSpecific,
                },
                backend: http_backend(&r.backend),
            })
            .collect(),
        default_backend: spec.default_backend.as_ref().map(http_backend),
        certificates: if https {
            spec.tls
                .iter()
                .filter_map(|t| {
                    let tls = files.get(&t.secret)?;
                    Some(HostCertificate {
                        hosts: t.hosts.clone(),
                        cert_file: tls.cert_file.clone(),
                        key_file: tls.key_file.clone(),
                    })
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use korvet_api::{LoadBalancerListener, LoadBalancerSpec};

    #[test]
    fn every_listener_on_every_backend() {
        let lb = LoadBalancer::new(
            "demo.shop.web",
            LoadBalancerSpec {
                cluster: "demo".into(),
                service: "shop/web".into(),
                type_: "external".into(),
                listeners: vec![
                    LoadBalancerListener {
                        name: "http".into(),
                        protocol: "TCP".into(),
                        port: 80,
                        node_port: 30080,
                        proxy_protocol: Some("v1".into()),
                        tls_secret: None,
                    },
                    LoadBalancerListener {
                        name: "https".into(),
                        protocol: "TCP".into(),
                        port: 443,
                        node_port: 30443,
                        proxy_protocol: None,
                        tls_secret: Some("web-tls".into()),
                    },
                ],
                backends: vec!["10.201.5.10".into(), "10.201.5.11".into()],
                health_check_node_port: Some(32000),
                ..Default::default()
            },
        );
        let tls = Tls {
            cert_file: "/tls/web.crt".into(),
            key_file: "/tls/web.key".into(),
        };
        let served = [Served {
            load_balancer: &lb,
            address: Ipv4Addr::new(10, 200, 128, 1),
            tls: BTreeMap::from([("web-tls".to_string(), tls.clone())]),
        }];
        let config = edge_config(vec!["10.200.0.1/32".parse().unwrap()], &served);
        config.validate().unwrap();
        assert_eq!(config.listeners.len(), 2);
        let http = &config.listeners[0];
        assert_eq!(http.name, "shop/web:443/tcp");
        assert_eq!(http.tls, Some(tls));
        let plain = &config.listeners[1];
        assert_eq!(plain.proxy_protocol, Some(Version::V1));
        assert_eq!(plain.backends[1], "10.201.5.11:30080".parse().unwrap());
        assert_eq!(plain.health.http_port, Some(32000));
        assert_eq!(plain.health.interval_ms, 2000);
    }
}
