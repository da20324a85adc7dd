//! `korvet server`: the management plane — the management API (korvet.io resources with
//! admission), the platform controllers and the local infrastructure provider.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use korvet_platform::{ManagementPlane, DEFAULT_POOL};

#[derive(Args, Clone)]
pub(crate) struct ServerArgs {
    /// Directory for the management API's store and PKI, hosted control planes and machines.
    #[arg(long, default_value = "/var/lib/korvet")]
    pub data_dir: PathBuf,
    /// Address of the management API (HTTPS).
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// `embedded` (a file in the data directory) or `etcd://HOST:PORT[,HOST:PORT...]`.
    #[arg(long, default_value = "embedded")]
    pub store: String,
    /// The address pool of machines and cluster endpoints.
    #[arg(long, default_value = DEFAULT_POOL)]
    pub pool: String,
    /// Port of the image registry, served on the platform's own network address (which
    /// every machine reaches) with the management API's certificate.
    #[arg(long, default_value_t = 5443)]
    pub registry_port: u16,
}

impl ServerArgs {
    pub(crate) fn management_plane(&self) -> anyhow::Result<ManagementPlane> {
        let store = self.store.parse().context("--store")?;
        let pool = self.pool.parse().with_context(|| {
            format!(
                "--pool {:?}: expected an IPv4 network such as 10.200.0.0/13",
                self.pool
            )
        })?;
        Ok(ManagementPlane {
            data_dir: self.data_dir.clone(),
            listen: self.listen,
            store,
            pool,
            registry_port: self.registry_port,
            korvet_binary: std::env::current_exe().context("finding the korvet binary")?,
        })
    }
}

pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let server = args.management_plane()?.start().await?;
    println!("management API on {}", server.api.url());
    println!("admin kubeconfig: {}", server.api.kubeconfig.display());
    println!(
        "image registry: {} (CA: {})",
        server.registry_url,
        args.data_dir.join("pki/ca.crt").display()
    );
    println!(
        "try: KORVET_KUBECONFIG={} korvet cluster create demo --pool workers:small:zone-a:2 --wait",
        server.api.kubeconfig.display()
    );
    crate::signals::wait_for_shutdown().await;
    eprintln!("shutting down the management plane (clusters keep running)");
    drop(server);
    Ok(())
}
