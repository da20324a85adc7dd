//! Pod volumes, bind-mounted into containers through CRI: `emptyDir` (a directory in
//! the pod's own directory on the machine's disk, removed with the pod); `configMap`,
//! `secret`, `downwardAPI` and `projected` (files written from objects, pod fields and
//! service-account tokens, swapped in whole); `hostPath`, resolved inside the machine's
//! own disk (`host_root`), because machines share the platform host's filesystem and a
//! pod must not reach the host's files.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};

use super::env::{self as podenv, Sources};

/// The object data a container's volumes need; `None` when the API has none.
#[derive(Clone, Debug, Default)]
pub(crate) struct Objects {
    pub config_maps: BTreeMap<String, Option<ConfigMap>>,
    pub secrets: BTreeMap<String, Option<Secret>>,
    /// Service-account tokens of projected volumes, by [`token_key`].
    pub tokens: BTreeMap<String, String>,
    /// Pod fields of downwardAPI files (pod and host IP, node allocatable).
    pub fields: Sources,
}

/// A projected service-account token the pod's volumes need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TokenNeed {
    pub key: String,
    pub audience: Option<String>,
    pub expiration_seconds: i64,
}

/// Identifies a projected token: the volume and the file path within it.
pub(crate) fn token_key(volume: &str, path: &str) -> String {
    format!("{volume}/{path}")
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum VolumeError {
    #[error("volume {0:?} is not defined in the pod")]
    Undefined(String),
    #[error("volume {0:?}: only emptyDir, configMap, secret, downwardAPI, projected and hostPath volumes are supported")]
    Unsupported(String),
    #[error("hostPath type check failed: {path} is not a {kind}")]
    HostPathType { path: String, kind: &'static str },
    #[error("{0}")]
    Field(String),
    #[error("no service account token for {0}")]
    NoToken(String),
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
pub(crate) fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join(uid)
}

/// Removes pod `uid`'s volumes (nothing there is fine).
pub(crate) fn remove(root: &Path, uid: &str) {
    let dir = pod_dir(root, uid);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "removing a pod's volumes");
        }
    }
}

/// The ConfigMaps and Secrets the volumes container `c` mounts come from.
pub(crate) fn referenced(pod: &Pod, c: &Container) -> (Vec<String>, Vec<String>) {
    let (mut maps, mut secrets) = (Vec::new(), Vec::new());
    for v in mounted(pod, c) {
        if let Some(cm) = &v.config_map {
            maps.push(cm.name.clone());
        }
        if let Some(s) = &v.secret {
            secrets.extend(s.secret_name.clone());
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &source.config_map {
                maps.push(cm.name.clone());
            }
            if let Some(s) = &source.secret {
                secrets.push(s.name.clone());
            }
        }
    }
    (maps, secrets)
}

/// The service-account tokens the projected volumes container `c` mounts need.
pub(crate) fn tokens_needed(pod: &Pod, c: &Container) -> Vec<TokenNeed> {
    let mut out = Vec::new();
    for v in mounted(pod, c) {
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(t) = &source.service_account_token {
                out.push(TokenNeed {
                    key: token_key(&v.name, &t.path),
                    audience: t.audience.clone().filter(|a| !a.is_empty()),
                    // Upstream's default, and its minimum of ten minutes.
                    expiration_seconds: t.expiration_seconds.unwrap_or(3600).max(600),
                });
            }
        }
    }
    out
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

/// A file of a volume: path within it, content, mode.
type File = (PathBuf, Vec<u8>, u32);

/// The files of `data`: every key, or only `items`, with `default_mode` or the item's
/// own mode.
fn files_of(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    kind: &'static str,
    name: &str,
    optional: bool,
) -> Result<Vec<File>, VolumeError> {
    let default_mode = default_mode.unwrap_or(0o644) as u32;
    let wanted: Vec<(String, String, Option<i32>)> = match items {
        Some(items) => items
            .iter()
            .map(|i| (i.key.clone(), i.path.clone(), i.mode))
            .collect(),
        None => data.keys().map(|k| (k.clone(), k.clone(), None)).collect(),
    };
    let mut files = Vec::new();
    for (key, path, mode) in wanted {
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
        let mode = mode.map_or(default_mode, |m| m as u32);
        files.push((relative(&path)?.to_path_buf(), bytes.clone(), mode));
    }
    Ok(files)
}

/// Writes `files` into `dir`, replacing what was there.
fn write_files(dir: &Path, files: &[File]) -> Result<(), VolumeError> {
    let staging = dir.with_extension("new");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    for (path, bytes, mode) in files {
        let target = staging.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&target, bytes).map_err(io(&target))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode))
            .map_err(io(&target))?;
    }
    // Swapped in whole, so a container never sees half the files.
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staging, dir).map_err(io(dir))
}

fn config_map_bytes(cm: ConfigMap) -> BTreeMap<String, Vec<u8>> {
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

fn secret_bytes(s: Secret) -> BTreeMap<String, Vec<u8>> {
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

/// `key="value"` lines, sorted, as upstream writes whole label and annotation maps.
fn map_lines(map: &Option<BTreeMap<String, String>>) -> String {
    map.iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}\n"))
        .collect()
}

/// The files of a downwardAPI volume or projection.
fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    fields: &Sources,
) -> Result<Vec<File>, VolumeError> {
    let default_mode = default_mode.unwrap_or(0o644) as u32;
    let mut files = Vec::new();
    for item in items {
        let text = if let Some(f) = &item.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" => map_lines(&pod.metadata.labels),
                "metadata.annotations" => map_lines(&pod.metadata.annotations),
                path => podenv::field(pod, path, fields)
                    .map_err(|e| VolumeError::Field(e.to_string()))?,
            }
        } else if let Some(r) = &item.resource_field_ref {
            let containers = pod.spec.as_ref().map(|s| s.containers.as_slice());
            let name = r.container_name.as_deref().unwrap_or_default();
            let target = containers
                .and_then(|cs| cs.iter().find(|c| c.name == name))
                .ok_or_else(|| {
                    VolumeError::Field(format!("container {name:?} not found in the pod"))
                })?;
            let divisor = r.divisor.as_ref().map(|d| d.0.as_str());
            podenv::resource(target, &r.resource, divisor, fields)
                .map_err(|e| VolumeError::Field(e.to_string()))?
        } else {
            continue;
        };
        let mode = item.mode.map_or(default_mode, |m| m as u32);
        files.push((relative(&item.path)?.to_path_buf(), text.into_bytes(), mode));
    }
    Ok(files)
}

/// Checks or creates `path` as hostPath `kind` asks (upstream's types).
fn host_path(path: &Path, kind: &str) -> Result<(), VolumeError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).ok();
    let fail = |kind: &'static str| VolumeError::HostPathType {
        path: path.display().to_string(),
        kind,
    };
    match kind {
        "" | "DirectoryOrCreate" if meta.is_none() => {
            std::fs::create_dir_all(path).map_err(io(path))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io(path))
        }
        "FileOrCreate" if meta.is_none() => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::write(path, b"").map_err(io(path))
        }
        "" => Ok(()),
        "Directory" | "DirectoryOrCreate" if meta.as_ref().is_some_and(|m| m.is_dir()) => Ok(()),
        "Directory" | "DirectoryOrCreate" => Err(fail("directory")),
        "File" | "FileOrCreate" if meta.as_ref().is_some_and(|m| m.is_file()) => Ok(()),
        "File" | "FileOrCreate" => Err(fail("file")),
        "Socket" if meta.as_ref().is_some_and(|m| m.file_type().is_socket()) => Ok(()),
        "Socket" => Err(fail("socket")),
        "CharDevice"
            if meta
                .as_ref()
                .is_some_and(|m| m.file_type().is_char_device()) =>
        {
            Ok(())
        }
        "CharDevice" => Err(fail("character device")),
        "BlockDevice"
            if meta
                .as_ref()
                .is_some_and(|m| m.file_type().is_block_device()) =>
        {
            Ok(())
        }
        "BlockDevice" => Err(fail("block device")),
        _ => Err(VolumeError::Path(format!("unknown hostPath type {kind:?}"))),
    }
}

/// Where hostPath `path` of the pod is on the platform host: under `host_root`.
fn in_host_root(host_root: &Path, path: &str) -> Result<PathBuf, VolumeError> {
    let inner = Path::new(path)
        .strip_prefix("/")
        .map_err(|_| VolumeError::Path(path.into()))?;
    let clean = inner
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !clean {
        return Err(VolumeError::Path(path.into()));
    }
    Ok(host_root.join(inner))
}

/// Makes the volumes container `c` of pod `uid` mounts under `root` and returns the
/// CRI mounts for them.
pub(crate) fn prepare(
    root: &Path,
    host_root: &Path,
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
        let mut dir = base.join(relative(&v.name)?);
        let set_up = |source: VolumeError| VolumeError::SetUp {
            volume: v.name.clone(),
            source: Box::new(source),
        };
        if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            // World-writable as upstream, so containers of any user can use it.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(io(&dir))?;
        } else if let Some(src) = &v.host_path {
            dir = in_host_root(host_root, &src.path).map_err(set_up)?;
            host_path(&dir, src.type_.as_deref().unwrap_or_default()).map_err(set_up)?;
        } else if let Some(src) = &v.config_map {
            let optional = src.optional == Some(true);
            let data = match objects.config_maps.get(&src.name).cloned().flatten() {
                Some(cm) => config_map_bytes(cm),
                None if optional => BTreeMap::new(),
                None => return Err(set_up(VolumeError::ConfigMapNotFound(src.name.clone()))),
            };
            let items = src.items.as_deref().filter(|_| !data.is_empty());
            let files = files_of(
                &data,
                items,
                src.default_mode,
                "ConfigMap",
                &src.name,
                optional,
            )?;
            write_files(&dir, &files)?;
        } else if let Some(src) = &v.secret {
            let name = src.secret_name.clone().unwrap_or_default();
            let optional = src.optional == Some(true);
            let data = match objects.secrets.get(&name).cloned().flatten() {
                Some(s) => secret_bytes(s),
                None if optional => BTreeMap::new(),
                None => return Err(set_up(VolumeError::SecretNotFound(name))),
            };
            let items = src.items.as_deref().filter(|_| !data.is_empty());
            let files = files_of(&data, items, src.default_mode, "Secret", &name, optional)?;
            write_files(&dir, &files)?;
        } else if let Some(src) = &v.downward_api {
            let items = src.items.as_deref().unwrap_or_default();
            let files =
                downward_files(pod, items, src.default_mode, &objects.fields).map_err(set_up)?;
            write_files(&dir, &files)?;
        } else if let Some(src) = &v.projected {
            let mut files = Vec::new();
            for source in src.sources.iter().flatten() {
                if let Some(cm) = &source.config_map {
                    let optional = cm.optional == Some(true);
                    let data = match objects.config_maps.get(&cm.name).cloned().flatten() {
                        Some(found) => config_map_bytes(found),
                        None if optional => continue,
                        None => {
                            return Err(set_up(VolumeError::ConfigMapNotFound(cm.name.clone())))
                        }
                    };
                    let items = cm.items.as_deref();
                    files.extend(files_of(
                        &data,
                        items,
                        src.default_mode,
                        "ConfigMap",
                        &cm.name,
                        optional,
                    )?);
                }
                if let Some(s) = &source.secret {
                    let optional = s.optional == Some(true);
                    let data = match objects.secrets.get(&s.name).cloned().flatten() {
                        Some(found) => secret_bytes(found),
                        None if optional => continue,
                        None => return Err(set_up(VolumeError::SecretNotFound(s.name.clone()))),
                    };
                    let items = s.items.as_deref();
                    files.extend(files_of(
                        &data,
                        items,
                        src.default_mode,
                        "Secret",
                        &s.name,
                        optional,
                    )?);
                }
                if let Some(d) = &source.downward_api {
                    let items = d.items.as_deref().unwrap_or_default();
                    files.extend(
                        downward_files(pod, items, src.default_mode, &objects.fields)
                            .map_err(set_up)?,
                    );
                }
                if let Some(t) = &source.service_account_token {
                    let key = token_key(&v.name, &t.path);
                    let token = objects
                        .tokens
                        .get(&key)
                        .ok_or_else(|| set_up(VolumeError::NoToken(key.clone())))?;
                    // Tokens are private to the pod's user, as upstream's 0600 default.
                    let mode = src.default_mode.map_or(0o600, |m| m as u32);
                    files.push((
                        relative(&t.path)?.to_path_buf(),
                        token.clone().into_bytes(),
                        mode,
                    ));
                }
            }
            write_files(&dir, &files)?;
        } else {
            return Err(VolumeError::Unsupported(v.name.clone()));
        }
        let mut host = dir.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            host = host.join(relative(sub)?);
            if (v.empty_dir.is_some() || v.host_path.is_some()) && !host.exists() {
                std::fs::create_dir_all(&host).map_err(io(&host))?;
            }
        }
        mounts.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: m.read_only == Some(true) || (v.empty_dir.is_none() && v.host_path.is_none()),
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
        let err = prepare(root.path(), &root.path().join("host"), &pod, &c, &objects).unwrap_err();
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
        let mounts = prepare(root.path(), &root.path().join("host"), &pod, &c, &objects).unwrap();
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

    fn pod_with(volumes: Vec<Volume>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.uid = Some("u2".into());
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.labels = Some(BTreeMap::from([
            ("app".into(), "web".into()),
            ("tier".into(), "a\"b".into()),
        ]));
        pod.spec = Some(PodSpec {
            volumes: Some(volumes),
            ..Default::default()
        });
        pod
    }

    fn mounting(names: &[&str]) -> Container {
        Container {
            name: "app".into(),
            volume_mounts: Some(
                names
                    .iter()
                    .map(|n| mount(n, &format!("/{n}"), None))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn host_paths_stay_inside_the_machine_and_check_their_type() {
        use k8s_openapi::api::core::v1::HostPathVolumeSource;
        let root = tempfile::tempdir().unwrap();
        let host_root = root.path().join("host");
        let volume = |name: &str, path: &str, kind: Option<&str>| Volume {
            name: name.into(),
            host_path: Some(HostPathVolumeSource {
                path: path.into(),
                type_: kind.map(str::to_string),
            }),
            ..Default::default()
        };
        let pod = pod_with(vec![
            volume("data", "/var/lib/app", Some("DirectoryOrCreate")),
            volume("sock", "/run/missing.sock", Some("Socket")),
            volume("up", "/../etc", None),
        ]);
        let mounts = prepare(
            root.path(),
            &host_root,
            &pod,
            &mounting(&["data"]),
            &Objects::default(),
        )
        .unwrap();
        assert_eq!(
            mounts[0].host_path,
            host_root.join("var/lib/app").display().to_string()
        );
        assert!(host_root.join("var/lib/app").is_dir());
        assert!(!mounts[0].readonly);
        let err = prepare(
            root.path(),
            &host_root,
            &pod,
            &mounting(&["sock"]),
            &Objects::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().ends_with(&format!(
                "hostPath type check failed: {} is not a socket",
                host_root.join("run/missing.sock").display()
            )),
            "{err}"
        );
        assert!(prepare(
            root.path(),
            &host_root,
            &pod,
            &mounting(&["up"]),
            &Objects::default()
        )
        .is_err());
    }

    #[test]
    fn downward_api_and_projected_volumes() {
        use k8s_openapi::api::core::v1::{
            ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeSource,
            ObjectFieldSelector, ProjectedVolumeSource, ServiceAccountTokenProjection,
            VolumeProjection,
        };
        let root = tempfile::tempdir().unwrap();
        let field = |path: &str, field: &str| DownwardAPIVolumeFile {
            path: path.into(),
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = pod_with(vec![
            Volume {
                name: "info".into(),
                downward_api: Some(DownwardAPIVolumeSource {
                    items: Some(vec![
                        field("labels", "metadata.labels"),
                        field("name", "metadata.name"),
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "api".into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![
                        VolumeProjection {
                            service_account_token: Some(ServiceAccountTokenProjection {
                                path: "token".into(),
                                audience: Some("vault".into()),
                                expiration_seconds: Some(60),
                            }),
                            ..Default::default()
                        },
                        VolumeProjection {
                            config_map: Some(ConfigMapProjection {
                                name: "kube-root-ca.crt".into(),
                                items: Some(vec![KeyToPath {
                                    key: "ca.crt".into(),
                                    path: "ca.crt".into(),
                                    mode: None,
                                }]),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        VolumeProjection {
                            downward_api: Some(DownwardAPIProjection {
                                items: Some(vec![field("namespace", "metadata.namespace")]),
                            }),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]);
        let c = mounting(&["info", "api"]);
        assert_eq!(
            tokens_needed(&pod, &c),
            vec![TokenNeed {
                key: "api/token".into(),
                audience: Some("vault".into()),
                expiration_seconds: 600,
            }]
        );
        assert_eq!(referenced(&pod, &c).0, vec!["kube-root-ca.crt".to_string()]);
        let mut objects = Objects::default();
        objects.config_maps.insert(
            "kube-root-ca.crt".into(),
            Some(ConfigMap {
                data: Some(BTreeMap::from([("ca.crt".into(), "PEM".into())])),
                ..Default::default()
            }),
        );
        let host = root.path().join("host");
        let err = prepare(root.path(), &host, &pod, &c, &objects).unwrap_err();
        assert!(
            err.to_string()
                .contains("no service account token for api/token"),
            "{err}"
        );
        objects.tokens.insert("api/token".into(), "jwt".into());
        prepare(root.path(), &host, &pod, &c, &objects).unwrap();
        let base = root.path().join("u2");
        let read = |p: &str| std::fs::read_to_string(base.join(p)).unwrap();
        assert_eq!(read("info/labels"), "app=\"web\"\ntier=\"a\\\"b\"\n");
        assert_eq!(read("info/name"), "p");
        assert_eq!(read("api/token"), "jwt");
        assert_eq!(read("api/ca.crt"), "PEM");
        assert_eq!(read("api/namespace"), "ns");
        let mode = std::fs::metadata(base.join("api/token"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
