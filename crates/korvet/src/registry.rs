//! `korvet registry`: the OCI image registry on its own, until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use korvet_registry::{Authenticator, NoAuth, Registry, StaticTokens, TokenAuthenticator};

#[derive(Args)]
pub(crate) struct RegistryArgs {
    /// Where blobs, manifests and uploads are stored.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to serve on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// Serve HTTPS with the CA in this directory (created if missing, as for a control
    /// plane); without it the registry serves plain HTTP.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Extra DNS names or IPs for the serving certificate.
    #[arg(long = "tls-host")]
    tls_hosts: Vec<String>,
    /// Tokens allowed to push, one `token,user` per line; without it nobody can push.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Build busybox, pause and demo-web into the registry when they are missing.
    #[arg(long)]
    base_images: bool,
}

pub(crate) async fn run(args: RegistryArgs) -> anyhow::Result<()> {
    let registry = Arc::new(
        Registry::open(&args.data_dir)
            .with_context(|| format!("opening the registry in {}", args.data_dir.display()))?,
    );
    if args.base_images {
        let added = korvet_registry::build::ensure_base_images(
            &registry,
            std::path::Path::new(korvet_image::BUSYBOX),
        )
        .await
        .context("building the base images")?;
        for repo in added {
            eprintln!("built base image {repo}:latest");
        }
    }
    let tls = match &args.tls_dir {
        Some(dir) => {
            let pki = korvet_apiserver::pki::ClusterPki::load_or_create(dir, &args.tls_hosts)
                .with_context(|| format!("loading the TLS material in {}", dir.display()))?;
            Some(pki.server_config().context("TLS configuration")?)
        }
        None => None,
    };
    let auth: Arc<dyn Authenticator> = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let tokens = StaticTokens::parse(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Arc::new(TokenAuthenticator::new(Arc::new(tokens)))
        }
        None => Arc::new(NoAuth),
    };
    let https = tls.is_some();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let handle = registry
        .serve(listener, tls, auth)
        .context("starting the registry")?;
    let scheme = if https { "https" } else { "http" };
    // Printed so that callers that asked for port 0 learn the port.
    println!("registry on {scheme}://{}", handle.local_addr());
    crate::signals::wait_for_shutdown().await;
    eprintln!("shutting down");
    drop(handle);
    Ok(())
}
