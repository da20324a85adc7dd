//! A Kubernetes-compatible API server over a [`korvet_store::Store`]: one generic set of
//! handlers for every resource, with per-resource strategies as data.

// `ApiError` carries a full Status (message, causes) and is built once per failed
// request; boxing it would only add an allocation to every error path.
#![allow(clippy::result_large_err)]

pub mod admission;
mod allocation;
mod apply;
mod apps_validation;
mod auth;
mod body;
mod bootstrap_tokens;
mod certificates;
mod conversion;
mod crd;
mod custom_schema;
mod discovery;
pub mod error;
mod eviction;
#[doc(hidden)]
pub mod fuzz;
mod handlers;
pub mod launch;
mod metrics;
mod network_policy;
mod openapi;
mod openapi_proto;
mod patch;
mod patching;
pub mod pki;
mod pod_logs;
mod pod_streams;
mod priority;
pub mod protobuf;
mod query;
mod quota;
mod rbac;
mod registry;
mod request;
mod resource_metrics;
mod reviews;
mod runtime_class;
mod sa_tokens;
pub mod server;
mod service_account_admission;
mod service_validation;
mod storage;
mod strategy;
mod subresources;
mod table;
pub mod tokens;
mod validation;
