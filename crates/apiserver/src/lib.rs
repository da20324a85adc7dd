//! A Kubernetes-compatible API server over a [`korvet_store::Store`]: one generic set of
//! handlers for every resource, with per-resource strategies as data.

pub mod discovery;
pub mod error;
pub mod openapi;
pub mod registry;
pub mod request;
pub mod strategy;
pub mod table;
