//! A Kubernetes-compatible API server over a [`korvet_store::Store`]: one generic set of
//! handlers for every resource, with per-resource strategies as data.

mod allocation;
mod apply;
pub mod auth;
pub mod bench;
mod body;
pub mod error;
mod handlers;
pub mod launch;
mod namespaces;
pub mod discovery;
pub mod openapi;
pub mod patch;
mod patching;
pub mod rbac;
pub mod pki;
pub mod query;
pub mod registry;
pub mod request;
mod reviews;
pub mod tokens;
pub mod selectors;
pub mod server;
pub mod storage;
pub mod strategy;
mod subresources;
pub mod table;
mod validation;
