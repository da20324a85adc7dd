//! Images from `korvet_image` into a registry: pushed over the distribution API, or
//! imported straight into a local [`Registry`] (the base images of `korvet server`).

use std::path::Path;

use korvet_image::{Image, ImageError};

use crate::client::{Client, ClientError};
use crate::error::{ApiError, StoreError};
use crate::server::Registry;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the registry refused the image: {} {}", .0.code, .0.message)]
    Refused(ApiError),
}

/// Pushes `image` to a registry as `repo:tag`.
pub async fn push(image: &Image, client: &Client, repo: &str, tag: &str) -> Result<(), BuildError> {
    for blob in image.layers.iter().chain([&image.config]) {
        client
            .push_blob(repo, &blob.digest, blob.data.clone())
            .await?;
    }
    client
        .put_manifest(
            repo,
            tag,
            &image.manifest.media_type,
            image.manifest.data.clone(),
        )
        .await?;
    Ok(())
}

/// Stores `image` directly in a local registry as `repo:tag`.
pub async fn import(
    image: &Image,
    registry: &Registry,
    repo: &str,
    tag: &str,
) -> Result<(), BuildError> {
    let storage = registry.storage();
    for blob in image.layers.iter().chain([&image.config]) {
        let digest = storage.put_blob_bytes(&blob.data).await?;
        storage.link_layer(repo, &digest).await?;
    }
    storage
        .put_manifest(
            repo,
            Some(tag),
            Some(&image.manifest.media_type),
            &image.manifest.data,
        )
        .await
        .map_err(BuildError::Refused)?;
    Ok(())
}

/// Builds the base images into `registry` where `repo:latest` is missing; returns the
/// repositories it added. Call it once after [`Registry::open`], e.g. from
/// `korvet server`: `ensure_base_images(&registry, Path::new(korvet_image::BUSYBOX))`.
pub async fn ensure_base_images(
    registry: &Registry,
    busybox: &Path,
) -> Result<Vec<String>, BuildError> {
    const TAG: &str = "latest";
    let mut missing = Vec::new();
    for repo in ["busybox", "pause", "demo-web"] {
        if registry.storage().resolve(repo, TAG).await.is_none() {
            missing.push(repo);
        }
    }
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let busybox = busybox.to_path_buf();
    let images = tokio::task::spawn_blocking(move || korvet_image::base_images(&busybox))
        .await
        .map_err(|e| BuildError::Invalid(format!("building base images: {e}")))??;
    let mut added = Vec::new();
    for base in images {
        if missing.contains(&base.repository) {
            import(&base.image, registry, base.repository, TAG).await?;
            tracing::info!(image = %format!("{}:{TAG}", base.repository), digest = %base.image.digest(), "built base image");
            added.push(base.repository.to_string());
        }
    }
    Ok(added)
}

/// The full reference (`HOST:PORT/REPO:TAG`) of every tagged image in the registry.
pub async fn list_images(client: &Client) -> Result<Vec<String>, BuildError> {
    let mut out = Vec::new();
    for repo in client.catalog().await? {
        for tag in client.tags(&repo).await? {
            out.push(format!("{}/{repo}:{tag}", client.authority()));
        }
    }
    Ok(out)
}
