//! `korvet lb`: the platform's load balancers (`list`, `get`), and the data planes the
//! platform runs: `serve` (one TCP listener in front of health-checked backends, the API
//! load balancer of a highly available control plane) and `edge` (a load-balancer
//! instance of a cluster, reloading its configuration on SIGHUP).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use korvet_lb::{Balance, HealthCheck, LbConfig, TcpBalancer};

use crate::cli;

#[derive(Subcommand)]
pub(crate) enum LbCommand {
    /// List the platform's load balancers.
    List {
        #[command(flatten)]
        global: cli::Global,
        /// Only the load balancers of this cluster.
        cluster: Option<String>,
    },
    /// Show one: `korvet lb get CLUSTER NAMESPACE/SERVICE`.
    Get {
        #[command(flatten)]
        global: cli::Global,
        name: String,
        service: Option<String>,
    },
    /// Run one TCP listener in front of health-checked backends, until interrupted.
    Serve(LbArgs),
    /// Run a load-balancer instance from its configuration file (SIGHUP reloads it).
    Edge(EdgeArgs),
}

#[derive(Args)]
pub(crate) struct EdgeArgs {
    /// The instance's configuration (JSON, as the platform writes it).
    #[arg(long)]
    config: PathBuf,
    /// Where to serve /healthz, /readyz and /metrics (overrides the configuration's).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
}

pub(crate) async fn run(command: LbCommand) -> anyhow::Result<()> {
    match command {
        LbCommand::List { global, cluster } => {
            cli::run_load_balancer(global, cli::LoadBalancerCommand::List { cluster }).await
        }
        LbCommand::Get {
            global,
            name,
            service,
        } => cli::run_load_balancer(global, cli::LoadBalancerCommand::Get { name, service }).await,
        LbCommand::Serve(args) => serve(args).await,
        LbCommand::Edge(args) => edge(args).await,
    }
}

async fn edge(args: EdgeArgs) -> anyhow::Result<()> {
    korvet_lb::edge::serve_file(
        &args.config,
        args.admin_listen,
        crate::signals::wait_for_shutdown(),
    )
    .await
    .context("running the load-balancer instance")?;
    eprintln!("shut down");
    Ok(())
}

#[derive(Args)]
pub(crate) struct LbArgs {
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

async fn serve(args: LbArgs) -> anyhow::Result<()> {
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
