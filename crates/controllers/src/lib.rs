//! Kube-style reconcilers for built-in resources. Each is an API client over the `kube`
//! crate (watch → reconcile), never a reader of the store, so it works against any
//! Kubernetes API server.

pub mod client;
pub mod csr;
pub mod leader;
pub mod node_ipam;

pub use client::{client_from_kubeconfig, ClientError};
pub use csr::{run_csr_controller, CsrError, CsrSigner};

/// The controllers of one cluster, running as tasks; dropping this stops them.
pub struct RunningControllers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RunningControllers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts every controller against the API server of `kubeconfig` (an identity allowed
/// to approve and sign CSRs, e.g. the admin's), signing with the given CA; with
/// `cluster_cidr`, Nodes get their podCIDR from it.
pub async fn spawn_all(
    kubeconfig: &std::path::Path,
    ca_cert_pem: String,
    ca_key_pem: String,
    cluster_cidr: Option<node_ipam::Cidr>,
) -> Result<RunningControllers, CsrError> {
    let client = client_from_kubeconfig(kubeconfig)
        .await
        .map_err(|e| CsrError::Request(e.to_string()))?;
    // Fail now, not in the task, if the CA is unusable.
    CsrSigner::new(&ca_cert_pem, &ca_key_pem)?;
    let mut tasks = Vec::new();
    if let Some(cidr) = cluster_cidr {
        tasks.push(tokio::spawn(node_ipam::run_node_ipam(client.clone(), cidr)));
    }
    tasks.push(tokio::spawn(async move {
        if let Err(e) = run_csr_controller(client, &ca_cert_pem, &ca_key_pem).await {
            tracing::error!(error = %e, "CSR controller stopped");
        }
    }));
    Ok(RunningControllers { tasks })
}
