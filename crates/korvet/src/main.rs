//! The `korvet` binary: maps subcommands to library calls and owns process set-up.

mod bench;
mod cli;
mod control_plane;
mod image;
mod lb;
mod node;
mod registry;
mod server;
mod signals;
mod up;

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
    /// Load balancers: list and show them, or run a data plane (`serve`, `edge`).
    Lb {
        #[command(subcommand)]
        command: lb::LbCommand,
    },
    /// The management plane: management API, platform controllers, local provider.
    Server(server::ServerArgs),
    /// Quick start: the platform on this machine with a demo cluster (Ctrl-C stops it).
    Up(up::UpArgs),
    /// Create, list, scale, stop, start and delete clusters.
    Cluster {
        #[command(flatten)]
        global: cli::Global,
        #[command(subcommand)]
        command: cli::ClusterCommand,
    },
    /// Add, list, scale and delete node pools.
    Nodepool {
        #[command(flatten)]
        global: cli::Global,
        #[command(subcommand)]
        command: cli::NodePoolCommand,
    },
    /// Print a cluster's admin kubeconfig.
    Kubeconfig {
        #[command(flatten)]
        global: cli::Global,
        /// The cluster.
        name: String,
    },
    /// Run a node agent: join a cluster with a bootstrap token, register, heartbeat.
    Node(node::NodeArgs),
    /// Serve the OCI image registry on its own (the platform serves it in `korvet server`).
    Registry(registry::RegistryArgs),
    /// Build images (root filesystem or static binary) and list a registry's images.
    Image {
        #[command(subcommand)]
        command: image::ImageCommand,
    },
}

/// Long-running components log what they do; the CLI and benchmarks only warnings, so
/// that their own output stays readable. `KORVET_LOG` overrides both.
fn init_logging(command: &Command) {
    let default = match command {
        Command::Bench { .. }
        | Command::Cluster { .. }
        | Command::Nodepool { .. }
        | Command::Kubeconfig { .. }
        | Command::Image { .. }
        | Command::Lb {
            command: lb::LbCommand::List { .. } | lb::LbCommand::Get { .. },
        }
        | Command::Up(_) => "warn",
        _ => "info",
    };
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KORVET_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.command);
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
            Command::Lb { command } => lb::run(command).await,
            Command::Server(args) => server::run(args).await,
            Command::Up(args) => up::run(args).await,
            Command::Cluster { global, command } => cli::run_cluster(global, command).await,
            Command::Nodepool { global, command } => cli::run_nodepool(global, command).await,
            Command::Kubeconfig { global, name } => cli::kubeconfig(global, name).await,
            Command::Node(args) => node::run(args).await,
            Command::Registry(args) => registry::run(args).await,
            Command::Image { command } => image::run(command).await,
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
