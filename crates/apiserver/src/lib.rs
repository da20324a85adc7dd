//! A Kubernetes-compatible API server over a [`korvet_store::Store`]: one generic set of
//! handlers for every resource, with per-resource strategies as data.

// `ApiError` carries a full Status (message, causes) and is built once per failed
// request; boxing it would only add an allocation to every error path.
#![allow(clippy::result_large_err)]

pub mod admission;
mod allocation;
pub mod apply;
pub mod apps_validation;
pub mod auth;
mod body;
pub mod bootstrap_tokens;
pub mod certificates;
mod conversion;
mod crd;
mod custom_schema;
pub mod discovery;
pub mod error;
mod eviction;
#[doc(hidden)]
pub mod fuzz;
mod handlers;
pub mod launch;
pub mod metrics;
pub mod network_policy;
pub mod openapi;
pub mod openapi_proto;
pub mod patch;
mod patching;
pub mod pki;
pub mod pod_logs;
pub mod pod_streams;
pub mod priority;
pub mod protobuf;
pub mod query;
pub mod quota;
pub mod rbac;
pub mod registry;
pub mod request;
pub mod resource_metrics;
mod reviews;
pub mod runtime_class;
pub mod sa_tokens;
pub mod server;
pub mod service_account_admission;
mod service_validation;
pub mod storage;
pub mod strategy;
mod subresources;
pub mod table;
pub mod tokens;
mod validation;
