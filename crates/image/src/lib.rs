//! Deterministic OCI images: one builder for every image Korvet makes itself — what
//! `korvet image build` pushes, the base images the platform's registry serves, and the
//! built-in images a node imports into its containerd.
//!
//! Determinism: entries are sorted, owned by 0:0 with mtime 0, and the gzip header
//! carries no time, so the same input gives the same digests on every build. Layers are
//! built in memory: the images built here are base images of a few megabytes.

mod base;
mod digest;
mod image;
mod layer;
mod reference;

use std::path::{Path, PathBuf};

pub use base::{base_images, busybox_applets, busybox_rootfs, BaseImage, BUSYBOX};
pub use digest::{Digest, Hasher, InvalidDigest};
pub use image::{build, Blob, Image, ImageConfig, Source, DEFAULT_PATH};
pub use reference::{valid_repository, valid_tag, Reference};

/// Media types of what the builder writes.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `amd64`, `arm64`, ... as Go (and so OCI image configs and Kubernetes) name
/// architectures.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}
