//! `korvet lb`: a TCP load balancer in front of health-checked backends, until interrupted.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use korvet_lb::{Balance, HealthCheck, LbConfig, TcpBalancer};

#[derive(Args)]
pub struct LbArgs {
    /// Address clients connect to (port 0 picks a free port).
    #[arg(long)]
    listen: SocketAddr,
    /// A backend address (repeatable).
    #[arg(long = "backend", required = true)]
    backends: Vec<SocketAddr>,
    /// How a new connection chooses a healthy backend.
    #[arg(long, value_enum, default_value_t = BalanceArg::RoundRobin)]
    balance: BalanceArg,
    /// Time between two TCP-connect health checks of a backend.
    #[arg(long, default_value_t = 1000)]
    check_interval_ms: u64,
    /// Consecutive successful checks that bring a down backend up.
    #[arg(long, default_value_t = 2)]
    rise: u32,
    /// Consecutive failed checks that take an up backend down.
    #[arg(long, default_value_t = 2)]
    fall: u32,
    /// Where to serve /healthz, /readyz and /metrics over HTTP.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
}

#[derive(Clone, Copy, ValueEnum)]
enum BalanceArg {
    RoundRobin,
    LeastConn,
}

pub async fn run(args: LbArgs) -> anyhow::Result<()> {
    if args.check_interval_ms == 0 || args.rise == 0 || args.fall == 0 {
        anyhow::bail!("--check-interval-ms, --rise and --fall must be at least 1");
    }
    let mut config = LbConfig::new(args.listen, args.backends);
    config.balance = match args.balance {
        BalanceArg::RoundRobin => Balance::RoundRobin,
        BalanceArg::LeastConn => Balance::LeastConnections,
    };
    let interval = Duration::from_millis(args.check_interval_ms);
    config.health = HealthCheck {
        interval,
        timeout: interval.min(Duration::from_secs(1)),
        rise: args.rise,
        fall: args.fall,
        http: None,
    };
    config.admin_listen = args.admin_listen;
    let balancer = TcpBalancer::start(config)
        .await
        .context("starting the load balancer")?;
    // Printed so that callers that asked for port 0 learn the ports.
    println!("load balancing on {}", balancer.local_addr());
    if let Some(admin) = balancer.admin_addr() {
        println!("admin (/healthz, /metrics) on http://{admin}");
    }
    crate::signals::wait_for_shutdown().await;
    eprintln!("shutting down");
    balancer.shutdown().await;
    Ok(())
}
