//! The `korvet` binary: maps subcommands to library calls and owns process set-up.

mod bench;
mod control_plane;
mod node;
mod signals;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "korvet", version, about = "Kubernetes as a Service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks, each beside a reference implementation measured in the same run.
    Bench {
        #[command(subcommand)]
        which: bench::Bench,
    },
    /// Serve one cluster's Kubernetes API (HTTPS, client certificates, RBAC).
    ControlPlane(control_plane::ControlPlaneArgs),
    /// Run a node agent: join a cluster with a bootstrap token, register, heartbeat.
    Node(node::NodeArgs),
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KORVET_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    init_logging();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("korvet: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Bench { which } => bench::run(which).await,
            Command::ControlPlane(args) => control_plane::run(args).await,
            Command::Node(args) => node::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("korvet: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
