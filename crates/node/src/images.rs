//! The built-in images, for nodes that run without the platform's registry: the base
//! images of `korvet_image` (the same builder the registry's images come from), made
//! from the host's static busybox and imported into the machine's containerd as OCI
//! archives when it lacks them. The same busybox always gives the same digests, so
//! importing again is a no-op.

use std::path::{Path, PathBuf};

use crate::cri::{Cri, CriError};

/// Images under this name are built in (no registry serves them).
pub const BUILTIN_PREFIX: &str = "korvet.local/";
pub const BUSYBOX_IMAGE: &str = "korvet.local/busybox:latest";
pub const PAUSE_IMAGE: &str = "korvet.local/pause:latest";

/// The built-in images: `(reference, base image repository)`.
const BUILTINS: [(&str, &str); 2] = [(BUSYBOX_IMAGE, "busybox"), (PAUSE_IMAGE, "pause")];

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("building the built-in images: {0}")]
    Build(#[from] korvet_image::ImageError),
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ctr images import {}: {reason}", path.display())]
    Import { path: PathBuf, reason: String },
    #[error(transparent)]
    Cri(#[from] CriError),
}

/// Whether the runtime already has `reference`.
pub async fn present(cri: &Cri, reference: &str) -> Result<bool, CriError> {
    let reply = cri
        .images
        .clone()
        .image_status(k8s_cri::v1::ImageStatusRequest {
            image: Some(k8s_cri::v1::ImageSpec {
                image: reference.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .map_err(CriError::call("ImageStatus"))?
        .into_inner();
    Ok(reply.image.is_some())
}

/// Imports every built-in image the runtime lacks; `work_dir` holds the archives.
pub async fn ensure_builtins(cri: &Cri, work_dir: &Path) -> Result<(), ImageError> {
    let mut missing = Vec::new();
    for (reference, repository) in BUILTINS {
        if !present(cri, reference).await? {
            missing.push((reference, repository));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let images =
        tokio::task::spawn_blocking(|| korvet_image::base_images(Path::new(korvet_image::BUSYBOX)))
            .await
            .map_err(|e| ImageError::Import {
                path: work_dir.into(),
                reason: format!("the image build stopped: {e}"),
            })??;
    tokio::fs::create_dir_all(work_dir)
        .await
        .map_err(|source| ImageError::Write {
            path: work_dir.into(),
            source,
        })?;
    for (reference, repository) in missing {
        let Some(base) = images.iter().find(|b| b.repository == repository) else {
            continue;
        };
        let path = work_dir.join(format!("{repository}.tar"));
        let archive = base.image.oci_archive(reference)?;
        tokio::fs::write(&path, archive)
            .await
            .map_err(|source| ImageError::Write {
                path: path.clone(),
                source,
            })?;
        import(&cri.socket, &path).await?;
        tracing::info!(image = reference, digest = %base.image.digest(), "imported a built-in image");
    }
    Ok(())
}

async fn import(socket: &Path, path: &Path) -> Result<(), ImageError> {
    let output = tokio::process::Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["-n", "k8s.io", "images", "import"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| ImageError::Import {
            path: path.into(),
            reason: format!("{e} (is containerd's ctr installed?)"),
        })?;
    if !output.status.success() {
        return Err(ImageError::Import {
            path: path.into(),
            reason: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}
