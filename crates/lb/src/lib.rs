//! Korvet's load balancer data plane.
//!
//! Pieces, each small so later protocols (PROXY protocol, TLS, HTTP) and active-standby
//! failover can be put in between: a [`pool::BackendPool`] that chooses backends, a health
//! checker that marks them up and down, a TCP proxy loop, and an admin HTTP listener for
//! `/healthz` and `/metrics`. [`TcpBalancer`] wires them together.

mod admin;
mod balancer;
mod health;
pub mod metrics;
pub mod pool;
mod proxy;

use std::net::SocketAddr;
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

/// Active TCP-connect health checks, counted the way HAProxy counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time between two checks of one backend.
    pub interval: Duration,
    /// How long a check may take; capped at `interval` so checks never pile up.
    pub timeout: Duration,
    /// Consecutive successful checks that bring a down backend up.
    pub rise: u32,
    /// Consecutive failed checks that take an up backend down.
    pub fall: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
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
