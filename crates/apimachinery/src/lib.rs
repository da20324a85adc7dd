//! The one implementation of each Kubernetes concept that several Korvet components
//! need: label and field selectors, quantities and what objects cost against a quota,
//! taints and tolerations, node affinity and addresses, object names. Pure functions over k8s-openapi types and JSON,
//! so that the API server, the controllers, the scheduler and the node agree.
//!
//! With the `client` feature: a `kube::Client` from a kubeconfig, the event recorder
//! and leader election, for the components that talk to an API server.

#[doc(hidden)]
pub mod fuzz;
pub mod names;
pub mod node_affinity;
pub mod nodes;
pub mod quantity;
pub mod quota;
pub mod selector;
pub mod taints;

#[cfg(feature = "client")]
mod client;
#[cfg(feature = "client")]
pub mod events;
#[cfg(feature = "client")]
pub mod leader;

#[cfg(feature = "client")]
pub use client::{client_from_kubeconfig, client_from_kubeconfig_yaml, ClientError};
