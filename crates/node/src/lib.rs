//! The node agent (`korvet node`): joins a cluster with a bootstrap token
//! ([`join`]), registers its Node ([`registration`]) and keeps it alive with a Lease and
//! status updates ([`heartbeat`]). Later it becomes the full kubelet over CRI.

pub mod config;
pub mod heartbeat;
pub mod join;
pub mod metrics;
pub mod registration;

use std::sync::Arc;

pub use config::NodeConfig;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Join(#[from] join::JoinError),
    #[error("cannot serve metrics on {address}: {source} (choose another --metrics-listen)")]
    Metrics {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the agent until `shutdown` resolves. Only joining can fail; once the node has
/// its identity every API error is retried. The Node object stays when the agent stops.
pub async fn run(
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let metrics = Arc::new(metrics::Metrics::new());
    let server = match config.metrics_listen {
        Some(address) => Some(
            metrics::serve(address, metrics.clone())
                .await
                .map_err(|source| NodeError::Metrics { address, source })?,
        ),
        None => None,
    };
    tokio::pin!(shutdown);
    let joined = tokio::select! {
        _ = &mut shutdown => None,
        joined = join::ensure_identity(
            &config.data_dir,
            &config.bootstrap_kubeconfig,
            &config.node_name,
            config.join_timeout,
        ) => Some(joined?),
    };
    if let Some(kubeconfig) = joined {
        // From here on only the node's own identity is used.
        let client = join::client_for(&kubeconfig).await?;
        heartbeat::run(client, &config, &metrics, shutdown).await;
    }
    if let Some(server) = server {
        server.abort();
    }
    tracing::info!(node = %config.node_name, "node agent stopped (its Node stays registered)");
    Ok(())
}
