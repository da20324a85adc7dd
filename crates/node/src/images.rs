//! The built-in images, until the platform's registry serves them: minimal image
//! tarballs made in-process from the host's static busybox and imported into the
//! machine's containerd when it lacks them.
//!
//! The tarballs are `docker-archive`s (what `ctr images import` reads) with one
//! uncompressed layer. Every timestamp is zero so that the same busybox always gives
//! the same digests, and importing again is a no-op.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::cri::{Cri, CriError};

/// Images under this name are built in (no registry serves them yet).
pub const BUILTIN_PREFIX: &str = "korvet.local/";
pub const BUSYBOX_IMAGE: &str = "korvet.local/busybox:latest";
pub const PAUSE_IMAGE: &str = "korvet.local/pause:latest";
/// Debian's `busybox-static`: one binary with no shared libraries.
pub const BUSYBOX_BINARY: &str = "/bin/busybox";
/// `tar` is what `kubectl cp` runs in the container.
const APPLETS: [&str; 16] = [
    "sh", "sleep", "echo", "cat", "ls", "wget", "nc", "httpd", "test", "false", "true", "touch",
    "env", "mkdir", "rm", "tar",
];
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}: {source} (install Debian's busybox-static)", path.display())]
    Busybox {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

/// One built-in image: its reference and how its container starts.
pub struct Builtin {
    pub reference: &'static str,
    pub entrypoint: Vec<&'static str>,
    pub cmd: Vec<&'static str>,
}

pub fn builtins() -> [Builtin; 2] {
    [
        Builtin {
            reference: BUSYBOX_IMAGE,
            entrypoint: vec![],
            cmd: vec!["sh"],
        },
        Builtin {
            reference: PAUSE_IMAGE,
            // The sandbox's only job is to hold the pod's namespaces open.
            entrypoint: vec!["/bin/sleep", "2147483647"],
            cmd: vec![],
        },
    ]
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn header(kind: tar::EntryType, path: &str, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    // Paths here are short ASCII, so set_path cannot fail on length or encoding.
    let _ = h.set_path(path);
    h.set_cksum();
    h
}

/// The rootfs layer: /bin/busybox, its applet links, and the usual empty directories.
pub fn rootfs_layer(busybox: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin/", 0o755),
        ("dev/", 0o755),
        ("etc/", 0o755),
        ("proc/", 0o555),
        ("root/", 0o700),
        ("sys/", 0o555),
        ("tmp/", 0o1777),
        ("var/", 0o755),
    ] {
        b.append(
            &header(tar::EntryType::Directory, dir, mode, 0),
            std::io::empty(),
        )?;
    }
    b.append(
        &header(
            tar::EntryType::Regular,
            "bin/busybox",
            0o755,
            busybox.len() as u64,
        ),
        busybox,
    )?;
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, &format!("bin/{applet}"), 0o777, 0);
        h.set_link_name("busybox")?;
        h.set_cksum();
        b.append(&h, std::io::empty())?;
    }
    b.into_inner()
}

/// A `docker-archive` tarball of `image` over `layer`.
pub fn docker_archive(image: &Builtin, layer: &[u8]) -> std::io::Result<Vec<u8>> {
    let layer_hex = sha256_hex(layer);
    let config = json!({
        "architecture": crate::registration::go_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": [PATH_ENV],
            "Entrypoint": (!image.entrypoint.is_empty()).then_some(&image.entrypoint),
            "Cmd": (!image.cmd.is_empty()).then_some(&image.cmd),
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_hex}")]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "korvet node (busybox-static)"}],
    });
    let config = serde_json::to_vec(&config).map_err(std::io::Error::other)?;
    let config_name = format!("{}.json", sha256_hex(&config));
    let layer_name = format!("{layer_hex}/layer.tar");
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": [image.reference],
        "Layers": [layer_name],
    }]))
    .map_err(std::io::Error::other)?;

    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &header(
            tar::EntryType::Directory,
            &format!("{layer_hex}/"),
            0o755,
            0,
        ),
        std::io::empty(),
    )?;
    for (name, bytes) in [
        (layer_name.as_str(), layer),
        (config_name.as_str(), config.as_slice()),
        ("manifest.json", manifest.as_slice()),
    ] {
        b.append(
            &header(tar::EntryType::Regular, name, 0o644, bytes.len() as u64),
            bytes,
        )?;
    }
    b.into_inner()
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

/// Imports every built-in image the runtime lacks; `work_dir` holds the tarballs.
pub async fn ensure_builtins(cri: &Cri, work_dir: &Path) -> Result<(), ImageError> {
    let mut layer = None;
    for image in builtins() {
        if present(cri, image.reference).await? {
            continue;
        }
        let layer = match &layer {
            Some(l) => l,
            None => {
                let busybox = tokio::fs::read(BUSYBOX_BINARY).await.map_err(|source| {
                    ImageError::Busybox {
                        path: BUSYBOX_BINARY.into(),
                        source,
                    }
                })?;
                let built = rootfs_layer(&busybox).map_err(|source| ImageError::Write {
                    path: work_dir.into(),
                    source,
                })?;
                layer.insert(built)
            }
        };
        let file_name = image
            .reference
            .rsplit('/')
            .next()
            .unwrap_or(image.reference)
            .replace(':', "_");
        let path = work_dir.join(format!("{file_name}.tar"));
        let write_err = |source| ImageError::Write {
            path: path.clone(),
            source,
        };
        let archive = docker_archive(&image, layer).map_err(write_err)?;
        tokio::fs::create_dir_all(work_dir)
            .await
            .map_err(write_err)?;
        tokio::fs::write(&path, archive).await.map_err(write_err)?;
        import(&cri.socket, &path).await?;
        tracing::info!(image = image.reference, "imported a built-in image");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tarball: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut archive = tar::Archive::new(tarball);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().display().to_string();
                let mut bytes = vec![];
                std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
                (path, bytes)
            })
            .collect()
    }

    #[test]
    fn archives_are_reproducible_and_name_their_layer() {
        let layer = rootfs_layer(b"not really busybox").unwrap();
        assert_eq!(layer, rootfs_layer(b"not really busybox").unwrap());
        let names: Vec<_> = entries(&layer).into_iter().map(|(p, _)| p).collect();
        assert!(names.contains(&"bin/busybox".to_string()));
        assert!(names.contains(&"bin/sh".to_string()));

        let [busybox, pause] = builtins();
        let archive = docker_archive(&pause, &layer).unwrap();
        assert_eq!(archive, docker_archive(&pause, &layer).unwrap());
        assert_ne!(archive, docker_archive(&busybox, &layer).unwrap());
        let files = entries(&archive);
        let manifest = &files.iter().find(|(p, _)| p == "manifest.json").unwrap().1;
        let manifest: serde_json::Value = serde_json::from_slice(manifest).unwrap();
        assert_eq!(manifest[0]["RepoTags"][0], PAUSE_IMAGE);
        let layer_path = manifest[0]["Layers"][0].as_str().unwrap();
        assert_eq!(
            files.iter().find(|(p, _)| p == layer_path).unwrap().1,
            layer
        );
        let config_path = manifest[0]["Config"].as_str().unwrap();
        let config = &files.iter().find(|(p, _)| p == config_path).unwrap().1;
        let config: serde_json::Value = serde_json::from_slice(config).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", sha256_hex(&layer))
        );
        assert_eq!(config["config"]["Entrypoint"][0], "/bin/sleep");
    }
}
