//! The node agent (`korvet node`): joins a cluster with a bootstrap token
//! ([`join`]), registers its Node ([`registration`]) and keeps it alive with a Lease and
//! status updates ([`heartbeat`]), and runs the pods bound to it through containerd's
//! CRI ([`pods`]), with built-in images ([`images`]) and its CNI configuration ([`cni`]);
//! its service proxy ([`proxy`]) keeps the node's nftables rules for Services, and
//! [`netpol`] enforces NetworkPolicies for its pods on nftables.

mod cgroups;
mod cni;
pub mod config;
pub mod cri;
pub mod dns;
mod events;
mod heartbeat;
pub mod images;
mod join;
mod logs;
mod metrics;
pub mod netpol;
/// The one nft runner (the service proxy, network policies, and their tests use it).
pub use korvet_nft as nft;
mod node_images;
mod pods;
pub mod pressure;
mod protocol;
pub mod proxy;
mod registration;
mod server;
mod stats;
mod streaming;
mod watch;

use std::sync::Arc;
use std::time::Duration;

pub use config::NodeConfig;

/// Longest restart delay of a crashing container, as upstream.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Join(#[from] join::JoinError),
    #[error(transparent)]
    Cri(#[from] cri::CriError),
    #[error("cannot serve metrics on {address}: {source} (choose another --metrics-listen)")]
    Metrics {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the node's HTTPS server; a port in use is retried rather than fatal, so that the
/// node still heartbeats and runs pods (only its logs are unreachable meanwhile).
async fn serve_node(config: server::ServerConfig, cri: cri::Cri) {
    let mut said = false;
    loop {
        match server::serve(config.clone(), cri.clone()).await {
            Ok(task) => {
                let _ = AbortOnDrop(task).wait().await;
                return;
            }
            Err(e) if !said => {
                tracing::warn!(error = %e, "node server not started; retrying every 5 s");
                said = true;
            }
            Err(e) => tracing::debug!(error = %e, "node server still not started"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Where the runtime keeps its images (CRI ImageFsInfo), if it says within a second.
async fn image_fs(cri: &cri::Cri) -> Option<std::path::PathBuf> {
    let mut images = cri.images.clone();
    let call = images.image_fs_info(k8s_cri::v1::ImageFsInfoRequest {});
    let reply = tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .ok()?
        .ok()?
        .into_inner();
    reply
        .image_filesystems
        .into_iter()
        .find_map(|fs| fs.fs_id)
        .map(|id| std::path::PathBuf::from(id.mountpoint))
        .filter(|p| p.exists())
}

/// Aborts the task when the future awaiting it is dropped (the agent stopping).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    async fn wait(mut self) -> Result<(), tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        let cri = cri::Cri::connect_lazy(&config.containerd_socket)?;
        // Ready must not wait for a slow runtime: fall back to asking the binary.
        let runtime_version =
            match tokio::time::timeout(Duration::from_secs(1), cri.runtime_version()).await {
                Ok(Ok(version)) => version,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "asking containerd for its version");
                    registration::container_runtime_version()
                }
                Err(_) => registration::container_runtime_version(),
            };
        let ca_pem = join::ca_of(&kubeconfig)?;
        let node_server = tokio::spawn(serve_node(
            server::ServerConfig {
                listen: std::net::SocketAddr::new(config.address, config.kubelet_port),
                node_name: config.node_name.clone(),
                log_root: config.data_dir.join("pods"),
                ca_pem,
            },
            cri.clone(),
        ));
        let pods = tokio::spawn(pods::run(
            client.clone(),
            cri.clone(),
            pods::PodsConfig {
                node_name: config.node_name.clone(),
                host_ip: config.address.to_string(),
                cni_conf_dir: config.cni_conf_dir.clone(),
                data_dir: config.data_dir.clone(),
                backoff_base: config.crash_backoff,
                backoff_max: MAX_BACKOFF,
                cluster_dns: config.cluster_dns.clone(),
            },
        ));
        if config.service_proxy || config.network_policy {
            cni::enable_bridge_netfilter();
        }
        let service_proxy = config.service_proxy.then(|| {
            tokio::spawn(proxy::run(
                client.clone(),
                config.node_name.clone(),
                metrics.clone(),
            ))
        });
        let images = tokio::spawn(node_images::run(
            client.clone(),
            cri.clone(),
            config.node_name.clone(),
        ));
        let netpol = config.network_policy.then(|| {
            tokio::spawn(netpol::run(
                client.clone(),
                config.node_name.clone(),
                metrics.clone(),
            ))
        });
        let imagefs = image_fs(&cri)
            .await
            .unwrap_or_else(|| config.data_dir.clone());
        let monitor = pressure::Monitor::new(
            config.data_dir.clone(),
            imagefs,
            config.eviction_hard.clone(),
        );
        heartbeat::run(
            client,
            &config,
            &metrics,
            runtime_version,
            monitor,
            shutdown,
        )
        .await;
        pods.abort();
        images.abort();
        if let Some(task) = netpol {
            task.abort();
        }
        node_server.abort();
        if let Some(task) = service_proxy {
            task.abort();
            let _ = task.await;
            match tokio::task::spawn_blocking(|| nft::delete_table(None, "ip", proxy::rules::TABLE))
                .await
            {
                Ok(Ok(())) => tracing::info!("service proxy rules removed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "removing the service proxy's nft table"),
                Err(e) => tracing::warn!(error = %e, "removing the service proxy's nft table"),
            }
        }
    }
    if let Some(server) = server {
        server.abort();
    }
    tracing::info!(node = %config.node_name, "node agent stopped (its Node stays registered)");
    Ok(())
}
