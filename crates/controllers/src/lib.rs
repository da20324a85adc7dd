//! Kube-style reconcilers for built-in resources. Each is an API client over the `kube`
//! crate (watch → reconcile), never a reader of the store, so it works against any
//! Kubernetes API server.

pub mod client;
pub mod csr;

pub use client::{client_from_kubeconfig, ClientError};
pub use csr::{run_csr_controller, CsrError, CsrSigner};
