//! An image: one gzip layer, its config and manifest, and the ways out of the builder
//! (an OCI image layout directory, an OCI archive for `ctr images import`).

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::json;

use crate::digest::Digest;
use crate::layer::{file_name, tar_binary, tar_dir, tar_files};
use crate::media::{OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST};
use crate::{io_at, ImageError};

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The tag of a manifest in an OCI layout's `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The full name containerd's importer gives a manifest of an archive.
const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
const EPOCH: &str = "1970-01-01T00:00:00Z";

/// What goes into the image's one layer.
#[derive(Clone, Debug)]
pub enum Source {
    /// The directory's contents become the root filesystem.
    Dir(PathBuf),
    /// The file becomes `/<its name>`, mode 0755.
    Binary(PathBuf),
}

/// The runtime configuration of the image.
#[derive(Clone, Debug, Default)]
pub struct ImageConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `K=V`; `PATH` defaults to the usual search path.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
}

/// A blob with its descriptor data.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub digest: Digest,
    pub data: Bytes,
}

impl Blob {
    fn new(media_type: &str, data: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.to_string(),
            digest: Digest::of(&data),
            data: Bytes::from(data),
        }
    }

    fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest.to_string(), "size": self.data.len()})
    }
}

/// A built image: its manifest, config and layers.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

/// Builds the image of `source` with `config`.
pub fn build(source: &Source, config: &ImageConfig) -> Result<Image, ImageError> {
    let tar = match source {
        Source::Dir(dir) => tar_dir(dir)?,
        Source::Binary(file) => tar_binary(file)?,
    };
    let entrypoint = match (&config.entrypoint, source) {
        (Some(e), _) => Some(e.clone()),
        (None, Source::Binary(file)) if config.cmd.is_none() => {
            Some(vec![format!("/{}", file_name(file)?)])
        }
        _ => None,
    };
    from_layer(
        &tar,
        &ImageConfig {
            entrypoint,
            ..config.clone()
        },
    )
}

/// The image of one uncompressed layer tarball.
pub(crate) fn from_layer(tar: &[u8], config: &ImageConfig) -> Result<Image, ImageError> {
    let diff_id = Digest::of(tar);
    let gzip_at = Path::new("<gzip>");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(tar).map_err(io_at(gzip_at))?;
    let layer = Blob::new(OCI_LAYER_GZIP, gz.finish().map_err(io_at(gzip_at))?);

    let mut env = config.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let mut runtime =
        json!({"Env": env, "WorkingDir": config.working_dir.clone().unwrap_or_else(|| "/".into())});
    if let Some(e) = &config.entrypoint {
        runtime["Entrypoint"] = json!(e);
    }
    if let Some(c) = &config.cmd {
        runtime["Cmd"] = json!(c);
    }
    let config_json = json!({
        "created": EPOCH,
        "architecture": crate::go_arch(),
        "os": "linux",
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        "history": [{"created": EPOCH, "created_by": "korvet image build"}],
    });
    let config_blob = Blob::new(OCI_CONFIG, to_vec(&config_json)?);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [layer.descriptor()],
    });
    Ok(Image {
        manifest: Blob::new(OCI_MANIFEST, to_vec(&manifest)?),
        config: config_blob,
        layers: vec![layer],
    })
}

fn to_vec(v: &serde_json::Value) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(v).map_err(|e| ImageError::Invalid(format!("encoding JSON: {e}")))
}

impl Image {
    pub fn digest(&self) -> &Digest {
        &self.manifest.digest
    }

    /// Layers and config, then the manifest: the order a registry wants them pushed.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        self.layers.iter().chain([&self.config, &self.manifest])
    }

    /// Writes (or adds to) an OCI image layout at `dir`, the image named `tag` in
    /// `index.json` (what `skopeo`'s `oci:DIR:TAG` reads).
    pub fn write_oci_layout(&self, dir: &Path, tag: &str) -> Result<(), ImageError> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
        for blob in self.blobs() {
            let path = blobs.join(blob.digest.hex());
            std::fs::write(&path, &blob.data).map_err(io_at(&path))?;
        }
        let layout = dir.join("oci-layout");
        std::fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_at(&layout))?;
        let index_path = dir.join("index.json");
        let mut manifests: Vec<serde_json::Value> = match std::fs::read(&index_path) {
            Ok(data) => serde_json::from_slice::<serde_json::Value>(&data)
                .map_err(|e| ImageError::Invalid(format!("{}: {e}", index_path.display())))?
                ["manifests"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        manifests.retain(|m| m["annotations"][REF_NAME].as_str() != Some(tag));
        let mut descriptor = self.manifest.descriptor();
        descriptor["annotations"] = json!({ REF_NAME: tag });
        manifests.push(descriptor);
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        std::fs::write(&index_path, to_vec(&index)?).map_err(io_at(&index_path))
    }

    /// The image as an OCI archive (an image layout in a tarball) that
    /// `ctr images import` names `name` (`HOST/REPOSITORY:TAG`).
    pub fn oci_archive(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
        let mut descriptor = self.manifest.descriptor();
        descriptor["annotations"] = json!({ REF_NAME: tag, CONTAINERD_IMAGE_NAME: name });
        let index = to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]}),
        )?;
        let mut entries: Vec<(String, &[u8])> = vec![
            ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json".into(), &index),
        ];
        for blob in self.blobs() {
            entries.push((format!("blobs/sha256/{}", blob.digest.hex()), &blob.data));
        }
        tar_files(&entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_input_same_digest() {
        let a = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(a.path().join("x/y")).unwrap();
        std::fs::write(a.path().join("x/y/f"), "hello").unwrap();
        std::os::unix::fs::symlink("y/f", a.path().join("x/link")).unwrap();
        let config = ImageConfig {
            cmd: Some(vec!["/x/y/f".into()]),
            ..Default::default()
        };
        let first = build(&Source::Dir(a.path().into()), &config).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Same content made later in another directory: other mtimes, same image.
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(b.path().join("x/y")).unwrap();
        std::fs::write(b.path().join("x/y/f"), "hello").unwrap();
        std::os::unix::fs::symlink("y/f", b.path().join("x/link")).unwrap();
        let second = build(&Source::Dir(b.path().into()), &config).unwrap();
        assert_eq!(first.digest(), second.digest());
        assert_eq!(first.layers[0].digest, second.layers[0].digest);
    }

    #[test]
    fn a_binary_is_its_own_entrypoint() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tool");
        std::fs::write(&file, b"#!/bin/true\n").unwrap();
        let image = build(&Source::Binary(file), &ImageConfig::default()).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&image.config.data).unwrap();
        assert_eq!(config["config"]["Entrypoint"], json!(["/tool"]));
        assert_eq!(config["config"]["Env"][0], DEFAULT_PATH);
        assert_eq!(config["architecture"], crate::go_arch());
    }

    #[test]
    fn archives_name_the_image_and_hold_every_blob() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let image = build(&Source::Dir(dir.path().into()), &ImageConfig::default()).unwrap();
        let archive = image.oci_archive("korvet.local/pause:latest").unwrap();
        assert_eq!(
            archive,
            image.oci_archive("korvet.local/pause:latest").unwrap()
        );
        let mut files = std::collections::BTreeMap::new();
        for entry in tar::Archive::new(archive.as_slice()).entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            files.insert(path, bytes);
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let annotations = &index["manifests"][0]["annotations"];
        assert_eq!(
            annotations[CONTAINERD_IMAGE_NAME],
            "korvet.local/pause:latest"
        );
        assert_eq!(annotations[REF_NAME], "latest");
        for blob in image.blobs() {
            let path = format!("blobs/sha256/{}", blob.digest.hex());
            assert_eq!(files[&path], blob.data.as_ref(), "{path}");
        }
    }
}
