//! A Kubernetes-compatible API server over a [`korvet_store::Store`]: one generic set of
//! handlers for every resource, with per-resource strategies as data.

pub mod patch;
