//! What a load-balancer instance serves: its listeners, each an address and port with
//! backends, as the platform writes it (JSON) into the instance's directory.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::proxy_protocol::Version;
use crate::{HealthCheck, HttpCheck};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeConfig {
    /// Where `/healthz`, `/readyz` and `/metrics` are served (port 0: none).
    pub admin_listen: Option<SocketAddr>,
    /// Clients whose replies would not come back through this instance (the host, the
    /// cluster's own machines and pods): their kernel-forwarded connections leave with
    /// the instance's own address. Everyone else keeps their address.
    #[serde(default)]
    pub masquerade: Vec<Ipv4Net>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Terminate TLS with this certificate chain and key (PEM files).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// How backends are checked; upstream cloud providers' defaults where they have one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendCheck {
    /// `GET /healthz` on this port of each backend's host (a Service's
    /// `healthCheckNodePort`) instead of a connect to the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_threshold")]
    pub rise: u32,
    #[serde(default = "default_threshold")]
    pub fall: u32,
}

fn default_path() -> String {
    "/healthz".into()
}
fn default_interval_ms() -> u64 {
    2000
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_threshold() -> u32 {
    2
}

impl Default for BackendCheck {
    fn default() -> Self {
        BackendCheck {
            http_port: None,
            path: default_path(),
            interval_ms: default_interval_ms(),
            timeout_ms: default_timeout_ms(),
            rise: default_threshold(),
            fall: default_threshold(),
        }
    }
}

impl BackendCheck {
    pub(crate) fn health_check(&self) -> HealthCheck {
        HealthCheck {
            interval: Duration::from_millis(self.interval_ms),
            timeout: Duration::from_millis(self.timeout_ms),
            rise: self.rise,
            fall: self.fall,
            http: self.http_port.map(|port| HttpCheck {
                port,
                path: self.path.clone(),
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Unique in the instance; names its metrics.
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// Send each backend a PROXY protocol header (TCP; proxied in user space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<Version>,
    /// Terminate TLS here (TCP; proxied in user space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    pub backends: Vec<SocketAddrV4>,
    #[serde(default)]
    pub health: BackendCheck,
    /// Only these clients may connect; empty lets everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<Ipv4Net>,
    /// Route HTTP requests by host and path (an Ingress) instead of passing bytes on;
    /// `backends` and `health` are then unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpConfig>,
}

/// Layer-7 routing of a listener (what the Ingresses of a cluster ask for).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpConfig {
    /// Every rule of every Ingress; the data plane orders them by precedence (exact
    /// host before wildcard, exact path before prefix, longer before shorter).
    #[serde(default)]
    pub routes: Vec<HttpRoute>,
    /// Where requests no route matches go (else 404).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<HttpBackend>,
    /// Serve HTTPS with these certificates, chosen by SNI; none: plain HTTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<HostCertificate>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// `example.com`, `*.example.com` (one label), or none for every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub path: String,
    pub path_type: PathType,
    pub backend: HttpBackend,
}

/// Upstream's `pathType`: `Exact`, `Prefix` (whole path elements), and
/// `ImplementationSpecific`, which this implementation treats as `Prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PathType {
    Exact,
    Prefix,
    ImplementationSpecific,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpBackend {
    /// `NAMESPACE/SERVICE:PORT`, for logs and metrics.
    pub name: String,
    /// The ready endpoints (pod addresses) of the Service port.
    pub endpoints: Vec<SocketAddrV4>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostCertificate {
    /// The hosts it serves (`*.example.com` allowed); the first certificate also serves
    /// clients that name no host it knows.
    pub hosts: Vec<String>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Listener {
    /// Whether the kernel forwards the listener's packets (the client's address reaches
    /// the backend) rather than a proxy in user space (PROXY header, TLS, HTTP routing).
    pub fn forwarded(&self) -> bool {
        self.proxy_protocol.is_none() && self.tls.is_none() && self.http.is_none()
    }

    /// Checks that only what a running listener takes in place changed from `other`: its
    /// backends, or the routes and certificates of an HTTP listener.
    pub(crate) fn same_front(&self, other: &Listener) -> bool {
        let front = |l: &Listener| Listener {
            backends: Vec::new(),
            http: l.http.as_ref().map(|_| HttpConfig::default()),
            ..l.clone()
        };
        front(self) == front(other)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("invalid load-balancer configuration: {0}")]
    Invalid(String),
}

impl EdgeConfig {
    pub fn load(path: &Path) -> Result<EdgeConfig, ConfigError> {
        let data = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: EdgeConfig = serde_json::from_slice(&data).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// What the types cannot say.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why: String| Err(ConfigError::Invalid(why));
        let mut seen = std::collections::HashSet::new();
        let mut fronts = std::collections::HashSet::new();
        for l in &self.listeners {
            if l.name.is_empty() || !seen.insert(l.name.as_str()) {
                return bad(format!("listener name {:?} is empty or repeated", l.name));
            }
            if !fronts.insert((l.address, l.port, l.protocol)) {
                return bad(format!(
                    "two listeners on {}:{}/{}",
                    l.address,
                    l.port,
                    l.protocol.as_str()
                ));
            }
            if l.port == 0 {
                return bad(format!("listener {}: port 0", l.name));
            }
            if !l.forwarded() && l.protocol == Protocol::Udp {
                return bad(format!(
                    "listener {}: PROXY protocol, TLS and HTTP routing apply to TCP only",
                    l.name
                ));
            }
            if l.http.is_some() && (l.tls.is_some() || l.proxy_protocol.is_some()) {
                return bad(format!(
                    "listener {}: an HTTP listener takes its certificates in `http` and sends no PROXY header",
                    l.name
                ));
            }
            if l.health.interval_ms == 0 || l.health.rise == 0 || l.health.fall == 0 {
                return bad(format!(
                    "listener {}: health check interval, rise and fall must be at least 1",
                    l.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(name: &str, port: u16) -> Listener {
        Listener {
            name: name.into(),
            address: Ipv4Addr::new(10, 200, 16, 1),
            port,
            protocol: Protocol::Tcp,
            proxy_protocol: None,
            tls: None,
            backends: vec!["10.201.4.11:30080".parse().unwrap()],
            health: BackendCheck::default(),
            source_ranges: Vec::new(),
            http: None,
        }
    }

    #[test]
    fn reads_what_the_platform_writes_with_defaults() {
        let json = r#"{"adminListen": "10.200.0.2:8404", "listeners": [
            {"name": "default/web:80", "address": "10.200.16.1", "port": 80,
             "backends": ["10.201.4.11:30080"], "proxyProtocol": "v2"}]}"#;
        let config: EdgeConfig = serde_json::from_str(json).unwrap();
        config.validate().unwrap();
        let l = &config.listeners[0];
        assert_eq!(l.protocol, Protocol::Tcp);
        assert_eq!(l.proxy_protocol, Some(Version::V2));
        assert!(!l.forwarded());
        assert_eq!(l.health, BackendCheck::default());
        let back: EdgeConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn refuses_what_cannot_be_served() {
        let twice = EdgeConfig {
            listeners: vec![listener("a", 80), listener("b", 80)],
            ..Default::default()
        };
        assert!(twice
            .validate()
            .unwrap_err()
            .to_string()
            .contains("two listeners"));
        let mut udp = listener("u", 53);
        udp.protocol = Protocol::Udp;
        udp.proxy_protocol = Some(Version::V1);
        let config = EdgeConfig {
            listeners: vec![udp],
            ..Default::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("TCP only"));
    }

    #[test]
    fn a_backend_change_keeps_the_front() {
        let a = listener("a", 80);
        let mut b = a.clone();
        b.backends.push("10.201.4.12:30080".parse().unwrap());
        assert!(a.same_front(&b));
        b.port = 81;
        assert!(!a.same_front(&b));
        // Routing HTTP: routes and certificates change in place; HTTP itself does not.
        let mut routed = a.clone();
        routed.http = Some(HttpConfig::default());
        let mut rerouted = routed.clone();
        rerouted.http = Some(HttpConfig {
            default_backend: Some(HttpBackend {
                name: "default/web:80".into(),
                endpoints: vec!["10.202.0.5:8080".parse().unwrap()],
            }),
            ..Default::default()
        });
        assert!(routed.same_front(&rerouted));
        assert!(!routed.same_front(&a));
    }
}
