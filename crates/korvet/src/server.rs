//! `korvet server`: the management plane — the management API (korvet.io resources with
//! admission), the platform controllers and the local infrastructure provider.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use korvet_api::registry_info::RegistryInfo;
use korvet_apiserver::launch::{self, ApiServerConfig, RunningApiServer};
use korvet_cloud::{LoadBalancers, LocalProvider, Provider};
use korvet_platform::admission::KorvetAdmission;
use korvet_platform::{Binaries, PlatformConfig};
use korvet_store::StoreLocation;

#[derive(Args, Clone)]
pub struct ServerArgs {
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
    #[arg(long, default_value = "10.200.0.0/13")]
    pub pool: String,
    /// Port of the image registry, served on the platform's own network address (which
    /// every machine reaches) with the management API's certificate.
    #[arg(long, default_value_t = 5443)]
    pub registry_port: u16,
}

/// The provider network the platform's own services (the registry) listen on; its key
/// has no dot, so it never collides with a cluster's `NAMESPACE.NAME`.
const PLATFORM_NETWORK: &str = "korvet-platform";

/// A running management plane; dropping it stops the API and the controllers (hosted
/// control planes and machines keep running).
pub struct RunningServer {
    pub api: RunningApiServer,
    pub provider: Arc<LocalProvider>,
    pub data_dir: PathBuf,
    /// `https://ADDRESS:PORT` of the image registry.
    pub registry_url: String,
    controllers: tokio::task::JoinHandle<()>,
    _registry: korvet_registry::server::ServeHandle,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.controllers.abort();
    }
}

/// What the platform needs on the host, with what to do about each missing part.
pub fn preflight() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root: the local provider creates network namespaces, bridges and cgroups; run with sudo".to_string());
    }
    for (program, package) in [
        ("ip", "iproute2"),
        ("containerd", "containerd"),
        ("etcd", "etcd-server"),
    ] {
        if which(program).is_none() {
            missing.push(format!(
                "{program}: install the {package} package (scripts/setup.sh does)"
            ));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("missing prerequisites:\n  - {}", missing.join("\n  - "))
    }
}

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

pub async fn start(args: &ServerArgs) -> anyhow::Result<RunningServer> {
    preflight()?;
    let store: StoreLocation = args.store.parse().context("--store")?;
    let pool: ipnet::Ipv4Net = args.pool.parse().with_context(|| {
        format!(
            "--pool {:?}: expected an IPv4 network such as 10.200.0.0/13",
            args.pool
        )
    })?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let provider = Arc::new(
        LocalProvider::open(&args.data_dir.join("provider"), pool)
            .context("opening the local infrastructure provider")?,
    );
    let zones = provider.zones();
    let platform_network = provider
        .ensure_network(PLATFORM_NETWORK)
        .await
        .context("creating the platform's network")?;
    let registry_ip = platform_network.api_endpoint;
    // The "internet side" load balancers serve on; the host reaches it.
    provider
        .ensure_external_network()
        .await
        .context("creating the external network")?;
    let crds = korvet_api::crds()
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .context("encoding the korvet.io CRDs")?;
    let api = launch::start(ApiServerConfig {
        data_dir: args.data_dir.clone(),
        listen: args.listen,
        store,
        extra_hosts: vec![registry_ip.to_string()],
        token_auth_file: None,
        cluster_name: "korvet".into(),
        pki_dir: None,
        admission: vec![Arc::new(KorvetAdmission {
            zones: zones.clone(),
            pool: (pool.network(), pool.prefix_len()),
        })],
        crds,
        service_cidr: None,
    })
    .await?;
    let kubeconfig = std::fs::read_to_string(&api.kubeconfig)
        .with_context(|| format!("reading {}", api.kubeconfig.display()))?;
    let client = korvet_apimachinery::client_from_kubeconfig_yaml(&kubeconfig).await?;
    korvet_platform::seed(&client, &zones)
        .await
        .context("creating the default flavors and zones")?;
    let (registry, registry_url) = start_registry(
        args,
        &api,
        std::net::SocketAddr::from((registry_ip, args.registry_port)),
    )
    .await?;
    let registry_info = RegistryInfo {
        host: registry_url.trim_start_matches("https://").to_string(),
        ca_pem: api.pki.ca_cert_pem().to_string(),
    };
    korvet_platform::publish_registry(&client, &registry_info)
        .await
        .context("publishing the image registry's address")?;
    let config = PlatformConfig {
        data_dir: args.data_dir.clone(),
        binaries: binaries()?,
        provider: provider.clone(),
        load_balancers: Some(provider.clone()),
        registry: Some(registry_info.clone()),
    };
    let controllers = tokio::spawn(korvet_platform::run(client, config));
    Ok(RunningServer {
        api,
        provider,
        data_dir: args.data_dir.clone(),
        registry_url,
        controllers,
        _registry: registry,
    })
}

/// Serves the image registry with the management API's certificate; pushes need a token
/// the management API accepts. The base images are built in the background.
async fn start_registry(
    args: &ServerArgs,
    api: &RunningApiServer,
    listen: std::net::SocketAddr,
) -> anyhow::Result<(korvet_registry::server::ServeHandle, String)> {
    let dir = args.data_dir.join("registry");
    let registry = Arc::new(
        korvet_registry::Registry::open(&dir)
            .with_context(|| format!("opening the image registry in {}", dir.display()))?,
    );
    // The management API's serving certificate names the registry's address too
    // (`extra_hosts`).
    let tls = api
        .pki
        .server_config()
        .context("the registry's TLS configuration")?;
    let server = api.server.clone();
    let auth = korvet_registry::TokenAuthenticator::from_fn(move |token: String| {
        let server = server.clone();
        async move {
            korvet_apiserver::tokens::authenticate_token(&server, &token, &[])
                .await
                .map(|(user, _)| korvet_registry::User { name: user.name })
        }
    });
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
        format!("the image registry cannot listen on {listen} (is the port taken? choose another with --registry-port)")
    })?;
    let handle = registry
        .clone()
        .serve(listener, Some(tls), Arc::new(auth))
        .context("starting the image registry")?;
    let url = format!("https://{}", handle.local_addr());
    tokio::spawn(async move {
        let busybox = std::path::Path::new(korvet_image::BUSYBOX);
        match korvet_registry::build::ensure_base_images(&registry, busybox).await {
            Ok(added) if !added.is_empty() => {
                tracing::info!(images = ?added, "built the base images into the registry")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not build the base images (is busybox-static installed?)")
            }
        }
    });
    Ok((handle, url))
}

fn binaries() -> anyhow::Result<Binaries> {
    let korvet = std::env::current_exe().context("finding the korvet binary")?;
    let etcd = which("etcd").context("etcd not found: install etcd-server (scripts/setup.sh)")?;
    Ok(Binaries { korvet, etcd })
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let server = start(&args).await?;
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
