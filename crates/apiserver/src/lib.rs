//! A Kubernetes-compatible API server over a [`korvet_store::Store`]: one generic set of
//! handlers for every resource, with per-resource strategies as data.

mod allocation;
mod apply;
pub mod auth;
mod body;
pub mod error;
mod handlers;
mod namespaces;
mod patching;
pub mod rbac;
pub mod pki;
pub mod query;
pub mod registry;
pub mod request;
mod reviews;
pub mod selectors;
pub mod server;
pub mod storage;
pub mod strategy;
mod subresources;
pub mod table;
mod validation;
