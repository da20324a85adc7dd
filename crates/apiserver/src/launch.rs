//! Starting an API server from its configuration: PKI, store, bootstrap objects, admin
//! kubeconfig, HTTPS listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use korvet_store::{Store, StoreLocation};
use tokio::net::TcpListener;

use crate::pki::{self, ClusterPki};
use crate::server::{self, ApiServer};
use crate::storage::Objects;

#[derive(Clone)]
pub struct ApiServerConfig {
    pub data_dir: PathBuf,
    /// Port 0 picks a free port; the kubeconfig names the one chosen.
    pub listen: SocketAddr,
    pub store: StoreLocation,
    /// Extra names and addresses the serving certificate must cover.
    pub extra_hosts: Vec<String>,
    pub token_auth_file: Option<PathBuf>,
    /// Name of the cluster in the kubeconfig.
    pub cluster_name: String,
    /// Directory of the PKI when it is shared by several replicas (default `DATA_DIR/pki`).
    pub pki_dir: Option<PathBuf>,
    /// Validating admission plugins beyond the built-in checks.
    pub admission: crate::admission::Plugins,
    /// Where ClusterIPs come from (default 10.96.0.0/12).
    pub service_cidr: Option<(std::net::Ipv4Addr, u8)>,
    /// CustomResourceDefinitions that must exist before the server serves (created when
    /// missing, replaced when different).
    pub crds: Vec<serde_json::Value>,
}

impl std::fmt::Debug for ApiServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServerConfig")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("store", &self.store)
            .field("cluster_name", &self.cluster_name)
            .finish_non_exhaustive()
    }
}

/// A running API server; dropping it stops serving (the store closes with it).
pub struct RunningApiServer {
    pub address: SocketAddr,
    pub kubeconfig: PathBuf,
    pub server: Arc<ApiServer>,
    /// The PKI the server was started with (CA, serving and admin certificates).
    pub pki: Arc<ClusterPki>,
    task: tokio::task::JoinHandle<()>,
    crd_sync: tokio::task::JoinHandle<()>,
}

impl RunningApiServer {
    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }
}

impl Drop for RunningApiServer {
    fn drop(&mut self) {
        self.task.abort();
        self.crd_sync.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("setting up the cluster's certificates in {dir}: {source}")]
    Pki {
        dir: String,
        #[source]
        source: pki::PkiError,
    },
    #[error("opening the store: {0}")]
    Store(#[from] korvet_store::StoreError),
    #[error("cannot listen on {address}: {source} (is another process using the port? choose another with --listen)")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the cluster's initial objects: {0}")]
    Bootstrap(crate::error::ApiError),
    #[error("{0}")]
    Tokens(String),
}

fn pki_err(dir: &Path) -> impl FnOnce(pki::PkiError) -> LaunchError + '_ {
    move |source| LaunchError::Pki {
        dir: dir.display().to_string(),
        source,
    }
}

pub async fn start(config: ApiServerConfig) -> Result<RunningApiServer, LaunchError> {
    let pki_dir = config
        .pki_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("pki"));
    let mut hosts = config.extra_hosts.clone();
    hosts.push(config.listen.ip().to_string());
    let pki = ClusterPki::load_or_create(&pki_dir, &hosts).map_err(pki_err(&pki_dir))?;
    let tls = pki.server_config().map_err(pki_err(&pki_dir))?;
    let store: Arc<dyn Store> =
        korvet_store::open(&config.store, &config.data_dir.join("store")).await?;
    let tokens = match &config.token_auth_file {
        Some(path) => crate::tokens::load_token_file(path).map_err(LaunchError::Tokens)?,
        None => Vec::new(),
    };
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| LaunchError::Listen {
                address: config.listen,
                source,
            })?;
    let address = listener
        .local_addr()
        .map_err(|source| LaunchError::Listen {
            address: config.listen,
            source,
        })?;
    let signer =
        crate::sa_tokens::TokenSigner::from_pki(&pki).map_err(|reason| LaunchError::Pki {
            dir: pki_dir.display().to_string(),
            source: pki::PkiError::Invalid {
                path: pki_dir.join(pki::SA_KEY_FILE),
                reason,
            },
        })?;
    let server = ApiServer::new(
        Objects::new(store),
        address.to_string(),
        tokens,
        Some(Arc::new(signer)),
    );
    server.bootstrap().await.map_err(LaunchError::Bootstrap)?;
    crate::crd::install(&server, &config.crds)
        .await
        .map_err(LaunchError::Bootstrap)?;
    server.set_admission(config.admission.clone());
    let kubelet_client = crate::pod_logs::kubelet_client_config(&pki).map_err(pki_err(&pki_dir))?;
    let _ = server.kubelet_client.set(Arc::new(kubelet_client));
    if let Some(cidr) = config.service_cidr {
        let _ = server.service_cidr_setting.set(cidr);
    }
    let crd_sync = crate::crd::sync(server.clone())
        .await
        .map_err(LaunchError::Bootstrap)?;
    let kubeconfig = config.data_dir.join("admin.kubeconfig");
    let spec = pki.admin_kubeconfig(&config.cluster_name, &format!("https://{address}"));
    pki::write_kubeconfig(&kubeconfig, &spec).map_err(pki_err(&pki_dir))?;
    let task = tokio::spawn(server::serve(server.clone(), listener, tls));
    tracing::info!(%address, kubeconfig = %kubeconfig.display(), "API server serving");
    Ok(RunningApiServer {
        address,
        kubeconfig,
        server,
        pki: Arc::new(pki),
        task,
        crd_sync,
    })
}
