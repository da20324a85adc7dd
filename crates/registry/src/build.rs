//! Deterministic OCI images from a root filesystem directory or a static binary, written
//! as an OCI image layout, pushed to a registry, or imported into a local [`Registry`].
//!
//! Determinism: entries are sorted, owned by 0:0 with mtime 0, and the gzip header
//! carries no time, so the same input gives the same digests on every build. Layers are
//! built in memory: the images built here are base images of a few megabytes.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::json;

use crate::client::{Client, ClientError};
use crate::digest::Digest;
use crate::error::{ApiError, StoreError};
use crate::server::Registry;
use crate::storage::OCI_MANIFEST;

pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where Debian's `busybox-static` installs it.
pub const BUSYBOX: &str = "/bin/busybox";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the registry refused the image: {} {}", .0.code, .0.message)]
    Refused(ApiError),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

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

/// An image reference `[HOST[:PORT]/]REPOSITORY[:TAG]` (the tag defaults to `latest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub registry: Option<String>,
    pub repository: String,
    pub tag: String,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, BuildError> {
        let bad = |why: &str| BuildError::Invalid(format!("image reference {s:?}: {why}"));
        let (registry, rest) = match s.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (Some(first.to_string()), rest)
            }
            _ => (None, s),
        };
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, tag),
            _ => (rest, "latest"),
        };
        if !crate::names::valid_repository(repository) {
            return Err(bad(
                "the repository must be lower-case path components like library/busybox",
            ));
        }
        if !crate::names::valid_tag(tag) {
            return Err(bad("invalid tag"));
        }
        Ok(Reference {
            registry,
            repository: repository.to_string(),
            tag: tag.to_string(),
        })
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

/// Builds the image of `source` with `config`.
pub fn build(source: &Source, config: &ImageConfig) -> Result<Image, BuildError> {
    let tar = match source {
        Source::Dir(dir) => tar_dir(dir)?,
        Source::Binary(file) => tar_binary(file)?,
    };
    let diff_id = Digest::of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).map_err(io_at(Path::new("<gzip>")))?;
    let layer = Blob::new(
        OCI_LAYER_GZIP,
        gz.finish().map_err(io_at(Path::new("<gzip>")))?,
    );

    let entrypoint = match (&config.entrypoint, source) {
        (Some(e), _) => Some(e.clone()),
        (None, Source::Binary(file)) if config.cmd.is_none() => {
            Some(vec![format!("/{}", file_name(file)?)])
        }
        _ => None,
    };
    let mut env = config.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let mut runtime =
        json!({"Env": env, "WorkingDir": config.working_dir.clone().unwrap_or_else(|| "/".into())});
    if let Some(e) = entrypoint {
        runtime["Entrypoint"] = json!(e);
    }
    if let Some(c) = &config.cmd {
        runtime["Cmd"] = json!(c);
    }
    let epoch = "1970-01-01T00:00:00Z";
    let config_json = json!({
        "created": epoch,
        "architecture": "amd64",
        "os": "linux",
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        "history": [{"created": epoch, "created_by": "korvet image build"}],
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

fn to_vec(v: &serde_json::Value) -> Result<Vec<u8>, BuildError> {
    serde_json::to_vec(v).map_err(|e| BuildError::Invalid(format!("encoding JSON: {e}")))
}

fn file_name(path: &Path) -> Result<String, BuildError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| BuildError::Invalid(format!("{} has no file name", path.display())))
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn tar_binary(file: &Path) -> Result<Vec<u8>, BuildError> {
    let data = std::fs::read(file).map_err(io_at(file))?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Regular, 0o755, data.len() as u64);
    builder
        .append_data(&mut h, file_name(file)?, data.as_slice())
        .map_err(io_at(file))?;
    builder.into_inner().map_err(io_at(file))
}

fn tar_dir(root: &Path) -> Result<Vec<u8>, BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(root).map_err(io_at(root))?;
    if !meta.is_dir() {
        return Err(BuildError::Invalid(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    let mut builder = tar::Builder::new(Vec::new());
    let mut stack = vec![PathBuf::new()];
    // Depth-first with sorted children, so the entry order never depends on readdir.
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io_at(&dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_at(&dir))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let rel_path = rel.join(&name);
            let path = root.join(&rel_path);
            let meta = std::fs::symlink_metadata(&path).map_err(io_at(&path))?;
            let mode = meta.permissions().mode() & 0o7777;
            let ft = meta.file_type();
            if ft.is_dir() {
                let mut h = header(tar::EntryType::Directory, mode, 0);
                builder
                    .append_data(&mut h, format!("{}/", rel_path.display()), std::io::empty())
                    .map_err(io_at(&path))?;
                subdirs.push(rel_path);
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(io_at(&path))?;
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                builder
                    .append_link(&mut h, &rel_path, &target)
                    .map_err(io_at(&path))?;
            } else if ft.is_file() {
                let file = std::fs::File::open(&path).map_err(io_at(&path))?;
                let mut h = header(tar::EntryType::Regular, mode, meta.len());
                builder
                    .append_data(&mut h, &rel_path, file)
                    .map_err(io_at(&path))?;
            } else {
                tracing::warn!(path = %path.display(), "skipping a special file: images hold files, directories and symlinks");
            }
        }
        // Reversed onto the stack so they come off in sorted order.
        stack.extend(subdirs.into_iter().rev());
    }
    builder.into_inner().map_err(io_at(root))
}

impl Image {
    pub fn digest(&self) -> &Digest {
        &self.manifest.digest
    }

    fn blobs(&self) -> impl Iterator<Item = &Blob> {
        self.layers.iter().chain([&self.config, &self.manifest])
    }

    /// Writes (or adds to) an OCI image layout at `dir`, the image named `tag` in
    /// `index.json` (what `skopeo`'s `oci:DIR:TAG` reads).
    pub fn write_oci_layout(&self, dir: &Path, tag: &str) -> Result<(), BuildError> {
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
                .map_err(|e| BuildError::Invalid(format!("{}: {e}", index_path.display())))?
                ["manifests"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        const REF_NAME: &str = "org.opencontainers.image.ref.name";
        manifests.retain(|m| m["annotations"][REF_NAME].as_str() != Some(tag));
        let mut descriptor = self.manifest.descriptor();
        descriptor["annotations"] = json!({ REF_NAME: tag });
        manifests.push(descriptor);
        let index = json!({"schemaVersion": 2, "mediaType": crate::storage::OCI_INDEX, "manifests": manifests});
        std::fs::write(&index_path, to_vec(&index)?).map_err(io_at(&index_path))
    }

    /// Pushes the image to a registry as `repo:tag`.
    pub async fn push(&self, client: &Client, repo: &str, tag: &str) -> Result<(), BuildError> {
        for blob in self.layers.iter().chain([&self.config]) {
            client
                .push_blob(repo, &blob.digest, blob.data.clone())
                .await?;
        }
        client
            .put_manifest(
                repo,
                tag,
                &self.manifest.media_type,
                self.manifest.data.clone(),
            )
            .await?;
        Ok(())
    }

    /// Stores the image directly in a local registry as `repo:tag`.
    pub async fn import(
        &self,
        registry: &Registry,
        repo: &str,
        tag: &str,
    ) -> Result<(), BuildError> {
        let storage = registry.storage();
        for blob in self.layers.iter().chain([&self.config]) {
            let digest = storage.put_blob_bytes(&blob.data).await?;
            storage.link_layer(repo, &digest).await?;
        }
        storage
            .put_manifest(
                repo,
                Some(tag),
                Some(&self.manifest.media_type),
                &self.manifest.data,
            )
            .await
            .map_err(BuildError::Refused)?;
        Ok(())
    }
}

/// Applets linked into the busybox image's `/bin`.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ash", "ls", "cat", "sleep", "echo", "wget", "nc", "env", "ps", "mkdir", "rm", "cp",
    "mv", "ln", "true", "false", "hostname", "id", "ip", "ping", "printf", "test", "head", "tail",
    "grep", "sed", "awk", "vi", "date", "uname", "httpd", "mount", "umount", "df", "du", "find",
    "xargs", "wc", "sort", "tee", "touch", "chmod", "kill", "top", "nslookup", "pwd", "which",
    "whoami", "dd", "tr", "cut", "uniq", "seq", "timeout", "nproc", "free", "netstat",
];

/// Lays out a busybox root filesystem in `dir`: `/bin/busybox` (copied from `busybox`,
/// a static binary), its applet symlinks, and the usual empty directories.
pub fn busybox_rootfs(dir: &Path, busybox: &Path) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    for sub in [
        "bin", "etc", "tmp", "proc", "sys", "dev", "root", "var", "www",
    ] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(io_at(&d))?;
        let mode = if sub == "tmp" { 0o1777 } else { 0o755 };
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).map_err(io_at(&d))?;
    }
    let target = dir.join("bin/busybox");
    std::fs::copy(busybox, &target).map_err(io_at(busybox))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
        .map_err(io_at(&target))?;
    for applet in BUSYBOX_APPLETS {
        let link = dir.join("bin").join(applet);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("busybox", &link).map_err(io_at(&link))?;
    }
    let files: [(&str, &str); 4] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnobody:x:65534:\n"),
        ("etc/hosts", "127.0.0.1 localhost\n"),
        (
            "www/index.html",
            "<!doctype html><title>Korvet</title><h1>Hello from Korvet</h1>\n",
        ),
    ];
    // demo-web's CGI: which replica answered (a pod's hostname is its name).
    let cgi = dir.join("www/cgi-bin");
    std::fs::create_dir_all(&cgi).map_err(io_at(&cgi))?;
    let hostname = (
        "www/cgi-bin/hostname",
        "#!/bin/sh\necho Content-Type: text/plain\necho\nhostname\n",
        0o755,
    );
    for (name, content, mode) in files
        .map(|(n, c)| (n, c, 0o644))
        .into_iter()
        .chain([hostname])
    {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(io_at(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io_at(&path))?;
    }
    Ok(())
}

/// The base images, as `(repository, tag, image)`: `busybox` (a shell), `pause` (the pod
/// sandbox: busybox sleeping for ever, since no tiny static pause binary is packaged),
/// and `demo-web` (busybox httpd serving a page on port 8080, and the pod's hostname at
/// `/cgi-bin/hostname`, so that one sees which replica of a Service answered).
pub fn base_images(busybox: &Path) -> Result<Vec<(&'static str, &'static str, Image)>, BuildError> {
    let rootfs = tempfile::tempdir().map_err(io_at(Path::new("<tempdir>")))?;
    busybox_rootfs(rootfs.path(), busybox)?;
    let source = Source::Dir(rootfs.path().to_path_buf());
    let command = |args: &[&str]| Some(args.iter().map(|s| s.to_string()).collect());
    let shell = build(
        &source,
        &ImageConfig {
            cmd: command(&["/bin/sh"]),
            ..Default::default()
        },
    )?;
    let pause = build(
        &source,
        &ImageConfig {
            entrypoint: command(&["/bin/sleep", "2147483647"]),
            ..Default::default()
        },
    )?;
    let web = build(
        &source,
        &ImageConfig {
            entrypoint: command(&["/bin/httpd", "-f", "-v", "-p", "8080", "-h", "/www"]),
            ..Default::default()
        },
    )?;
    Ok(vec![
        ("busybox", "latest", shell),
        ("pause", "latest", pause),
        ("demo-web", "latest", web),
    ])
}

/// Builds the base images into `registry` where `repo:latest` is missing; returns the
/// repositories it added. Call it once after [`Registry::open`], e.g. from
/// `korvet server`: `ensure_base_images(&registry, Path::new(BUSYBOX)).await?`.
pub async fn ensure_base_images(
    registry: &Registry,
    busybox: &Path,
) -> Result<Vec<String>, BuildError> {
    let mut missing = Vec::new();
    for repo in ["busybox", "pause", "demo-web"] {
        if registry.storage().resolve(repo, "latest").await.is_none() {
            missing.push(repo);
        }
    }
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    if std::fs::metadata(busybox).is_err() {
        return Err(BuildError::Invalid(format!(
            "{} is missing: install Debian's busybox-static (scripts/setup.sh does)",
            busybox.display()
        )));
    }
    let busybox = busybox.to_path_buf();
    let images = tokio::task::spawn_blocking(move || base_images(&busybox))
        .await
        .map_err(|e| BuildError::Invalid(format!("building base images: {e}")))??;
    let mut added = Vec::new();
    for (repo, tag, image) in images {
        if missing.contains(&repo) {
            image.import(registry, repo, tag).await?;
            tracing::info!(image = %format!("{repo}:{tag}"), digest = %image.digest(), "built base image");
            added.push(repo.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("127.0.0.1:5000/library/busybox:v1").unwrap();
        assert_eq!(r.registry.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag, "v1");
        let r = Reference::parse("busybox").unwrap();
        assert_eq!((r.registry, r.tag.as_str()), (None, "latest"));
        assert!(Reference::parse("Bad/Name").is_err());
    }

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
}
