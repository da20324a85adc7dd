//! Korvet's load balancer data plane.
//!
//! Small pieces: a [`pool::BackendPool`] that chooses backends, a health checker that
//! marks them up and down (TCP connect or HTTP), a TCP proxy loop (with the PROXY
//! protocol and TLS termination), and an admin HTTP listener for `/healthz` and
//! `/metrics`. [`TcpBalancer`] wires them into one listener (the API load balancer of a
//! highly available control plane); [`edge::Edge`] into a load-balancer instance with
//! many listeners, kernel-forwarded or proxied (a cloud load balancer's data plane), or
//! routing HTTP requests by host and path (a cluster's Ingresses; the `http` module).

mod admin;
mod balancer;
pub mod edge;
#[doc(hidden)]
pub mod fuzz;
mod health;
mod http;
mod metrics;
mod pool;
mod proxy;
pub mod proxy_protocol;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use balancer::TcpBalancer;
pub use pool::{Backend, BackendStatus};

/// How a new connection chooses among the healthy backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    #[default]
    RoundRobin,
    /// The backend with the fewest open connections; ties go round robin.
    LeastConnections,
}

/// Active health checks, counted the way HAProxy counts them: a TCP connect to the
/// backend, or an HTTP GET on another port of the backend's host (how a cloud's load
/// balancer asks a node's service proxy whether it has local endpoints).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time between two checks of one backend.
    pub interval: Duration,
    /// How long a check may take; capped at `interval` so checks never pile up.
    pub timeout: Duration,
    /// Consecutive successful checks that bring a down backend up.
    pub rise: u32,
    /// Consecutive failed checks that take an up backend down.
    pub fall: u32,
    /// Check with `GET http://BACKEND-HOST:port/path` (200 is healthy) instead of a
    /// TCP connect to the backend.
    pub http: Option<HttpCheck>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    pub port: u16,
    pub path: String,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
            http: None,
        }
    }
}

/// What a [`TcpBalancer`] serves.
#[derive(Clone, Debug)]
pub struct LbConfig {
    /// Where clients connect (port 0 picks a free port).
    pub listen: SocketAddr,
    pub backends: Vec<SocketAddr>,
    pub balance: Balance,
    pub health: HealthCheck,
    /// How long to wait for a backend to accept before trying the next one.
    pub connect_timeout: Duration,
    /// Where to serve `/healthz`, `/readyz` and `/metrics`, if anywhere.
    pub admin_listen: Option<SocketAddr>,
    /// The listener's name in metrics (default: its address).
    pub name: Option<String>,
    /// Tell each backend who the client is with a PROXY protocol header.
    pub proxy_protocol: Option<proxy_protocol::Version>,
    /// Terminate TLS with this configuration; backends get the plain bytes.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl LbConfig {
    /// Defaults for everything but the two addresses.
    pub fn new(listen: SocketAddr, backends: Vec<SocketAddr>) -> Self {
        Self {
            listen,
            backends,
            balance: Balance::default(),
            health: HealthCheck::default(),
            connect_timeout: Duration::from_secs(1),
            admin_listen: None,
            name: None,
            proxy_protocol: None,
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("cannot listen on {addr}: {source} (is the address in use, or not on this host?)")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}
