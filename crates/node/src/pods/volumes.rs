//! Basic pod volumes: `emptyDir` (a directory in the pod's own directory on the
//! machine's disk, removed with the pod), `configMap` and `secret` (files written
//! from the object's data), bind-mounted into containers through CRI.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Pod, Secret, Volume};

/// The object data a container's volumes need; `None` when the API has none.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub config_maps: BTreeMap<String, Option<ConfigMap>>,
    pub secrets: BTreeMap<String, Option<Secret>>,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {0:?} is not defined in the pod")]
    Undefined(String),
    #[error("volume {0:?}: only emptyDir, configMap and secret volumes are supported")]
    Unsupported(String),
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in {kind} {name}")]
    Key {
        kind: &'static str,
        key: String,
        name: String,
    },
    /// Upstream's `FailedMount` message for volume `volume`.
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : {source}")]
    SetUp {
        volume: String,
        #[source]
        source: Box<VolumeError>,
    },
    #[error("invalid path {0:?}")]
    Path(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where pod `uid`'s volumes live on the machine.
pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join(uid)
}

/// Removes pod `uid`'s volumes (nothing there is fine).
pub fn remove(root: &Path, uid: &str) {
    let dir = pod_dir(root, uid);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "removing a pod's volumes");
        }
    }
}

/// The ConfigMaps and Secrets the volumes container `c` mounts come from.
pub fn referenced(pod: &Pod, c: &Container) -> (Vec<String>, Vec<String>) {
    let (mut maps, mut secrets) = (Vec::new(), Vec::new());
    for v in mounted(pod, c) {
        if let Some(cm) = &v.config_map {
            maps.push(cm.name.clone());
        }
        if let Some(s) = &v.secret {
            secrets.extend(s.secret_name.clone());
        }
    }
    (maps, secrets)
}

fn mounted<'a>(pod: &'a Pod, c: &'a Container) -> impl Iterator<Item = &'a Volume> + 'a {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    volumes
        .iter()
        .filter(move |v| c.volume_mounts.iter().flatten().any(|m| m.name == v.name))
}

/// A relative path without `..`: what keys, item paths and subPaths must be.
fn relative(text: &str) -> Result<&Path, VolumeError> {
    let path = Path::new(text);
    let ok = !text.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    ok.then_some(path)
        .ok_or_else(|| VolumeError::Path(text.into()))
}

/// Writes `data` as files into `dir` (replacing what was there): every key, or only
/// `items`, with `default_mode` or the item's own mode.
fn project(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    kind: &'static str,
    name: &str,
    optional: bool,
) -> Result<(), VolumeError> {
    let staging = dir.with_extension("new");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let default_mode = default_mode.unwrap_or(0o644) as u32;
    let files: Vec<(String, String, Option<i32>)> = match items {
        Some(items) => items
            .iter()
            .map(|i| (i.key.clone(), i.path.clone(), i.mode))
            .collect(),
        None => data.keys().map(|k| (k.clone(), k.clone(), None)).collect(),
    };
    for (key, path, mode) in files {
        let Some(bytes) = data.get(&key) else {
            if optional {
                continue;
            }
            return Err(VolumeError::Key {
                kind,
                key,
                name: name.into(),
            });
        };
        let target = staging.join(relative(&path)?);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&target, bytes).map_err(io(&target))?;
        let mode = mode.map_or(default_mode, |m| m as u32);
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
            .map_err(io(&target))?;
    }
    // Swapped in whole, so a container never sees half the files.
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staging, dir).map_err(io(dir))
}

/// Makes the volumes container `c` of pod `uid` mounts under `root` and returns the
/// CRI mounts for them.
pub fn prepare(
    root: &Path,
    pod: &Pod,
    c: &Container,
    objects: &Objects,
) -> Result<Vec<cri::Mount>, VolumeError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let base = pod_dir(root, uid);
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .ok_or_else(|| VolumeError::Undefined(m.name.clone()))?;
        let dir = base.join(relative(&v.name)?);
        if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            // World-writable as upstream, so containers of any user can use it.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(io(&dir))?;
        } else if let Some(src) = &v.config_map {
            let optional = src.optional == Some(true);
            let data = match objects.config_maps.get(&src.name).cloned().flatten() {
                Some(cm) => {
                    let mut data: BTreeMap<String, Vec<u8>> = cm
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    for (k, v) in cm.binary_data.unwrap_or_default() {
                        data.insert(k, v.0);
                    }
                    data
                }
                None if optional => BTreeMap::new(),
                None => {
                    return Err(VolumeError::SetUp {
                        volume: v.name.clone(),
                        source: Box::new(VolumeError::ConfigMapNotFound(src.name.clone())),
                    })
                }
            };
            let items = src.items.as_deref().filter(|_| !data.is_empty());
            project(
                &dir,
                &data,
                items,
                src.default_mode,
                "ConfigMap",
                &src.name,
                optional,
            )?;
        } else if let Some(src) = &v.secret {
            let name = src.secret_name.clone().unwrap_or_default();
            let optional = src.optional == Some(true);
            let data = match objects.secrets.get(&name).cloned().flatten() {
                Some(s) => {
                    let mut data: BTreeMap<String, Vec<u8>> = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    for (k, v) in s.string_data.unwrap_or_default() {
                        data.insert(k, v.into_bytes());
                    }
                    data
                }
                None if optional => BTreeMap::new(),
                None => {
                    return Err(VolumeError::SetUp {
                        volume: v.name.clone(),
                        source: Box::new(VolumeError::SecretNotFound(name)),
                    })
                }
            };
            let items = src.items.as_deref().filter(|_| !data.is_empty());
            project(
                &dir,
                &data,
                items,
                src.default_mode,
                "Secret",
                &name,
                optional,
            )?;
        } else {
            return Err(VolumeError::Unsupported(v.name.clone()));
        }
        let mut host = dir.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            host = host.join(relative(sub)?);
            if v.empty_dir.is_some() && !host.exists() {
                std::fs::create_dir_all(&host).map_err(io(&host))?;
            }
        }
        mounts.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: m.read_only == Some(true) || v.empty_dir.is_none(),
            ..Default::default()
        });
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapVolumeSource, EmptyDirVolumeSource, PodSpec, SecretVolumeSource, VolumeMount,
    };
    use k8s_openapi::ByteString;

    fn mount(name: &str, path: &str, sub: Option<&str>) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            sub_path: sub.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn empty_dirs_config_maps_and_secrets_on_disk() {
        let root = tempfile::tempdir().unwrap();
        let mut pod = Pod::default();
        pod.metadata.uid = Some("u1".into());
        pod.spec = Some(PodSpec {
            volumes: Some(vec![
                Volume {
                    name: "scratch".into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                },
                Volume {
                    name: "cfg".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: "app".into(),
                        items: Some(vec![KeyToPath {
                            key: "color".into(),
                            path: "conf/color.txt".into(),
                            mode: Some(0o600),
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "creds".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some("s".into()),
                        default_mode: Some(0o400),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        });
        let c = Container {
            name: "app".into(),
            volume_mounts: Some(vec![
                mount("scratch", "/data", Some("sub")),
                mount("cfg", "/etc/app", None),
                mount("creds", "/secret", None),
            ]),
            ..Default::default()
        };
        let mut objects = Objects::default();
        let (maps, secrets) = referenced(&pod, &c);
        assert_eq!((maps, secrets), (vec!["app".into()], vec!["s".into()]));
        objects.config_maps.insert("app".into(), None);
        let err = prepare(root.path(), &pod, &c, &objects).unwrap_err();
        assert_eq!(
            err.to_string(),
            "MountVolume.SetUp failed for volume \"cfg\" : configmap \"app\" not found"
        );

        objects.config_maps.insert(
            "app".into(),
            Some(ConfigMap {
                data: Some(BTreeMap::from([("color".into(), "blue".into())])),
                ..Default::default()
            }),
        );
        objects.secrets.insert(
            "s".into(),
            Some(Secret {
                data: Some(BTreeMap::from([("pw".into(), ByteString(b"x".to_vec()))])),
                ..Default::default()
            }),
        );
        let mounts = prepare(root.path(), &pod, &c, &objects).unwrap();
        let base = root.path().join("u1");
        assert_eq!(
            mounts[0].host_path,
            base.join("scratch/sub").display().to_string()
        );
        assert!(!mounts[0].readonly);
        assert!(base.join("scratch/sub").is_dir());
        let color = base.join("cfg/conf/color.txt");
        assert_eq!(std::fs::read_to_string(&color).unwrap(), "blue");
        let mode = std::fs::metadata(&color).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(mounts[1].readonly);
        let pw = base.join("creds/pw");
        assert_eq!(std::fs::read(&pw).unwrap(), b"x");
        assert_eq!(
            std::fs::metadata(&pw).unwrap().permissions().mode() & 0o777,
            0o400
        );
        remove(root.path(), "u1");
        assert!(!base.exists());
        assert!(relative("../x").is_err());
        assert!(relative("/abs").is_err());
    }
}
