//! Building a `kube::Client` from a kubeconfig: the one way every component (controllers,
//! scheduler, node agent, platform) connects to an API server.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading kubeconfig {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error("kubeconfig {origin} is not usable: {source}")]
    Config {
        origin: String,
        #[source]
        source: KubeconfigError,
    },
    #[error("building a client from kubeconfig {origin}: {source}")]
    Client {
        origin: String,
        #[source]
        source: kube::Error,
    },
}

/// A client for the current context of the kubeconfig at `path`.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, ClientError> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| ClientError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    client_for(kubeconfig, path.display().to_string()).await
}

/// A client for the current context of a kubeconfig held in memory (one the platform
/// made for a tenant cluster).
pub async fn client_from_kubeconfig_yaml(yaml: &str) -> Result<kube::Client, ClientError> {
    let origin = "(in memory)".to_string();
    let kubeconfig = Kubeconfig::from_yaml(yaml).map_err(|source| ClientError::Config {
        origin: origin.clone(),
        source,
    })?;
    client_for(kubeconfig, origin).await
}

async fn client_for(kubeconfig: Kubeconfig, origin: String) -> Result<kube::Client, ClientError> {
    let config =
        match kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await
        {
            Ok(config) => config,
            Err(source) => return Err(ClientError::Config { origin, source }),
        };
    kube::Client::try_from(config).map_err(|source| ClientError::Client { origin, source })
}
