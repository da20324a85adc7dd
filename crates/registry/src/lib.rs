//! Korvet's OCI image registry (the OCI Distribution Spec v1.1 over HTTPS, on
//! content-addressed storage), a small client for it, and the image builder.
//!
//! Embedding: open a [`Registry`] on a directory, then [`Registry::serve`] it with the
//! platform's TLS configuration and an [`Authenticator`]; [`build::ensure_base_images`]
//! fills it with the base images when they are missing.

mod auth;
pub mod build;
pub mod client;
mod error;
#[doc(hidden)]
pub mod fuzz;
mod metrics;
pub mod server;
mod storage;

pub use auth::{Authenticator, NoAuth, StaticTokens, TokenAuthenticator, TokenVerifier, User};
pub use error::{ApiError, StoreError};
pub use korvet_image::Digest;
pub use server::{Registry, ServeHandle};
