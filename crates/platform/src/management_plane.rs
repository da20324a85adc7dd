//! The management plane as `korvet server` (and `korvet up`, and the benchmarks that need
//! a platform) runs it: the management API (korvet.io resources with admission), the
//! image registry, and the platform controllers over the local infrastructure provider.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use korvet_api::registry_info::RegistryInfo;
use korvet_apiserver::launch::{self, ApiServerConfig, LaunchError, RunningApiServer};
use korvet_cloud::{CloudError, LoadBalancers, LocalProvider, Provider};
use korvet_store::StoreLocation;

use crate::admission::KorvetAdmission;
use crate::{Binaries, PlatformConfig, PlatformError};

/// The provider network the platform's own services (the registry) listen on; its key
/// has no dot, so it never collides with a cluster's `NAMESPACE.NAME`.
const PLATFORM_NETWORK: &str = "korvet-platform";

/// The address pool of machines and cluster endpoints when none is given.
pub const DEFAULT_POOL: &str = "10.200.0.0/13";

/// A management plane to start.
pub struct ManagementPlane {
    /// The management API's store and PKI, hosted control planes and machines.
    pub data_dir: PathBuf,
    /// Address of the management API (HTTPS).
    pub listen: SocketAddr,
    pub store: StoreLocation,
    /// The address pool of machines and cluster endpoints.
    pub pool: ipnet::Ipv4Net,
    /// Port of the image registry on the platform's own network address (0: any).
    pub registry_port: u16,
    /// The `korvet` binary that hosted control planes and machines run.
    pub korvet_binary: PathBuf,
}

/// A running management plane; dropping it stops the API, the registry and the
/// controllers (hosted control planes and machines keep running).
pub struct RunningManagementPlane {
    pub api: RunningApiServer,
    pub provider: Arc<LocalProvider>,
    pub data_dir: PathBuf,
    /// `https://ADDRESS:PORT` of the image registry.
    pub registry_url: String,
    controllers: tokio::task::JoinHandle<()>,
    _registry: korvet_registry::ServeHandle,
}

impl Drop for RunningManagementPlane {
    fn drop(&mut self) {
        self.controllers.abort();
    }
}

impl RunningManagementPlane {
    /// Stops the management plane, then every machine and hosted control plane it runs,
    /// keeping all data, so that the next start brings them back.
    pub async fn stop_with_clusters(self) -> Result<(), PlatformError> {
        let provider = self.provider.clone();
        let data_dir = self.data_dir.clone();
        drop(self);
        crate::stop_everything(&data_dir, provider.as_ref()).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManagementPlaneError {
    #[error("missing prerequisites:\n  - {}", .0.join("\n  - "))]
    Prerequisites(Vec<String>),
    #[error("etcd not found: install etcd-server (scripts/setup.sh)")]
    EtcdNotFound,
    #[error("creating {path}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the local infrastructure provider")]
    Provider(#[source] CloudError),
    #[error("creating the platform's network")]
    PlatformNetwork(#[source] CloudError),
    #[error("encoding the korvet.io CRDs")]
    Crds(#[source] serde_json::Error),
    #[error(transparent)]
    Launch(Box<LaunchError>),
    #[error("reading {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(PlatformError),
    #[error("creating the default flavors and zones")]
    Seed(#[source] PlatformError),
    #[error("opening the image registry in {path}")]
    Registry {
        path: String,
        #[source]
        source: korvet_registry::StoreError,
    },
    #[error("the registry's TLS configuration")]
    RegistryTls(#[source] korvet_apiserver::pki::PkiError),
    #[error("the image registry cannot listen on {address} (is the port taken? choose another with --registry-port)")]
    RegistryListen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the image registry")]
    RegistryServe(#[source] std::io::Error),
    #[error("publishing the image registry's address")]
    PublishRegistry(#[source] PlatformError),
}

/// What the platform needs on the host, with what to do about each missing part.
pub fn preflight() -> Result<(), ManagementPlaneError> {
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
        if korvet_cloud::which(program).is_none() {
            missing.push(format!(
                "{program}: install the {package} package (scripts/setup.sh does)"
            ));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ManagementPlaneError::Prerequisites(missing))
    }
}

impl ManagementPlane {
    /// Checks the host, opens the provider and the platform's network, serves the
    /// management API and the registry, seeds flavors and zones, publishes the registry
    /// and starts the platform controllers.
    pub async fn start(self) -> Result<RunningManagementPlane, ManagementPlaneError> {
        preflight()?;
        std::fs::create_dir_all(&self.data_dir).map_err(|source| {
            ManagementPlaneError::DataDir {
                path: self.data_dir.display().to_string(),
                source,
            }
        })?;
        let provider = Arc::new(
            LocalProvider::open(&self.data_dir.join("provider"), self.pool)
                .map_err(ManagementPlaneError::Provider)?,
        );
        let zones = provider.zones();
        let platform_network = provider
            .ensure_network(PLATFORM_NETWORK)
            .await
            .map_err(ManagementPlaneError::PlatformNetwork)?;
        let registry_ip = platform_network.api_endpoint;
        // The "internet side" load balancers serve on; the host reaches it.
        provider
            .ensure_external_network()
            .await
            .map_err(ManagementPlaneError::PlatformNetwork)?;
        let crds = korvet_api::crds()
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ManagementPlaneError::Crds)?;
        let api = launch::start(ApiServerConfig {
            data_dir: self.data_dir.clone(),
            listen: self.listen,
            store: self.store,
            extra_hosts: vec![registry_ip.to_string()],
            token_auth_file: None,
            cluster_name: "korvet".into(),
            pki_dir: None,
            admission: vec![Arc::new(KorvetAdmission {
                zones: zones.clone(),
                pool: (self.pool.network(), self.pool.prefix_len()),
            })],
            crds,
            service_cidr: None,
        })
        .await
        .map_err(|e| ManagementPlaneError::Launch(Box::new(e)))?;
        let kubeconfig = std::fs::read_to_string(&api.kubeconfig).map_err(|source| {
            ManagementPlaneError::Kubeconfig {
                path: api.kubeconfig.display().to_string(),
                source,
            }
        })?;
        let client = korvet_apimachinery::client_from_kubeconfig_yaml(&kubeconfig)
            .await
            .map_err(|e| ManagementPlaneError::Client(PlatformError::Tenant(e.to_string())))?;
        crate::seed(&client, &zones)
            .await
            .map_err(ManagementPlaneError::Seed)?;
        let (registry, registry_url) = start_registry(
            &self.data_dir,
            &api,
            SocketAddr::from((registry_ip, self.registry_port)),
        )
        .await?;
        let registry_info = RegistryInfo {
            host: registry_url.trim_start_matches("https://").to_string(),
            ca_pem: api.pki.ca_cert_pem().to_string(),
        };
        crate::publish_registry(&client, &registry_info)
            .await
            .map_err(ManagementPlaneError::PublishRegistry)?;
        let etcd = korvet_cloud::which("etcd").ok_or(ManagementPlaneError::EtcdNotFound)?;
        let config = PlatformConfig {
            data_dir: self.data_dir.clone(),
            binaries: Binaries {
                korvet: self.korvet_binary,
                etcd,
            },
            provider: provider.clone(),
            load_balancers: Some(provider.clone()),
            registry: Some(registry_info),
        };
        let controllers = tokio::spawn(crate::run(client, config));
        Ok(RunningManagementPlane {
            api,
            provider,
            data_dir: self.data_dir,
            registry_url,
            controllers,
            _registry: registry,
        })
    }
}

/// Serves the image registry with the management API's certificate; pushes need a token
/// the management API accepts. The base images are built in the background.
async fn start_registry(
    data_dir: &Path,
    api: &RunningApiServer,
    listen: SocketAddr,
) -> Result<(korvet_registry::ServeHandle, String), ManagementPlaneError> {
    let dir = data_dir.join("registry");
    let registry = Arc::new(korvet_registry::Registry::open(&dir).map_err(|source| {
        ManagementPlaneError::Registry {
            path: dir.display().to_string(),
            source,
        }
    })?);
    // The management API's serving certificate names the registry's address too
    // (`extra_hosts`).
    let tls = api
        .pki
        .server_config()
        .map_err(ManagementPlaneError::RegistryTls)?;
    let server = api.server.clone();
    let auth = korvet_registry::TokenAuthenticator::from_fn(move |token: String| {
        let server = server.clone();
        async move {
            korvet_apiserver::tokens::authenticate_token(&server, &token, &[])
                .await
                .map(|(user, _)| korvet_registry::User { name: user.name })
        }
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ManagementPlaneError::RegistryListen {
            address: listen,
            source,
        })?;
    let handle = registry
        .clone()
        .serve(listener, Some(tls), Arc::new(auth))
        .map_err(ManagementPlaneError::RegistryServe)?;
    let url = format!("https://{}", handle.local_addr());
    tokio::spawn(async move {
        let busybox = Path::new(korvet_image::BUSYBOX);
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
