//! Content-addressed storage on disk.
//!
//! ```text
//! blobs/sha256/ab/abcdef...                  blob content (manifests too), immutable
//! uploads/<uuid>/{data,repo}                 upload sessions in progress
//! repositories/<name>/_layers/sha256/<hex>   the repository may serve this blob
//! repositories/<name>/_manifests/revisions/sha256/<hex>   its manifests (content: media type)
//! repositories/<name>/_manifests/tags/<tag>  content: the tagged digest
//! repositories/<name>/_private               pulls need an authenticated user
//! ```
//!
//! Every file other than an upload's data is written to a temporary name beside it,
//! fsynced and renamed into place, so that a crash never leaves anything half-written
//! visible; a crash mid-upload leaves only the upload directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{io_at, ApiError, StoreError};
use korvet_image::{Digest, Hasher};

pub(crate) use korvet_image::media::{OCI_INDEX, OCI_MANIFEST};
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Manifests are small; anything larger is refused rather than buffered.
pub(crate) const MAX_MANIFEST_BYTES: usize = 4 << 20;

pub struct Storage {
    root: PathBuf,
    /// Hash state of uploads in progress, so that finishing one need not re-read it.
    /// Lost on restart: then the upload is re-hashed from disk when it finishes.
    sessions: Mutex<HashMap<uuid::Uuid, Arc<tokio::sync::Mutex<Session>>>>,
}

struct Session {
    hasher: Option<Hasher>,
    size: u64,
}

/// Where a manifest reference points.
pub struct ManifestEntry {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

impl Storage {
    pub fn open(root: &Path) -> Result<Storage, StoreError> {
        for sub in ["blobs/sha256", "uploads", "repositories"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        }
        Ok(Storage {
            root: root.to_path_buf(),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    fn repo_dir(&self, name: &str) -> PathBuf {
        self.root.join("repositories").join(name)
    }

    fn layer_link(&self, name: &str, digest: &Digest) -> PathBuf {
        self.repo_dir(name)
            .join("_layers/sha256")
            .join(digest.hex())
    }

    fn revision_link(&self, name: &str, digest: &Digest) -> PathBuf {
        self.repo_dir(name)
            .join("_manifests/revisions/sha256")
            .join(digest.hex())
    }

    fn tag_link(&self, name: &str, tag: &str) -> PathBuf {
        self.repo_dir(name).join("_manifests/tags").join(tag)
    }

    /// The size of a stored blob, `None` when absent.
    pub async fn blob_size(&self, digest: &Digest) -> Option<u64> {
        tokio::fs::metadata(self.blob_path(digest))
            .await
            .ok()
            .map(|m| m.len())
    }

    /// The size of a blob that repository `name` may serve.
    pub async fn layer_size(&self, name: &str, digest: &Digest) -> Option<u64> {
        if tokio::fs::metadata(self.layer_link(name, digest))
            .await
            .is_err()
        {
            return None;
        }
        self.blob_size(digest).await
    }

    pub async fn link_layer(&self, name: &str, digest: &Digest) -> Result<(), StoreError> {
        write_atomic(
            &self.layer_link(name, digest),
            digest.to_string().as_bytes(),
        )
        .await
    }

    /// Removes the repository's link; the content stays for other repositories.
    pub async fn unlink_layer(&self, name: &str, digest: &Digest) -> Result<bool, StoreError> {
        remove_if_exists(&self.layer_link(name, digest)).await
    }

    pub async fn repository_exists(&self, name: &str) -> bool {
        let dir = self.repo_dir(name);
        tokio::fs::metadata(dir.join("_manifests")).await.is_ok()
            || tokio::fs::metadata(dir.join("_layers")).await.is_ok()
    }

    pub async fn is_private(&self, name: &str) -> bool {
        tokio::fs::metadata(self.repo_dir(name).join("_private"))
            .await
            .is_ok()
    }

    pub async fn set_private(&self, name: &str, private: bool) -> Result<(), StoreError> {
        let path = self.repo_dir(name).join("_private");
        if private {
            write_atomic(&path, b"private\n").await
        } else {
            remove_if_exists(&path).await.map(|_| ())
        }
    }

    /// Stores small content (manifests, configs) as a blob and returns its digest.
    pub async fn put_blob_bytes(&self, data: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(data);
        let path = self.blob_path(&digest);
        if tokio::fs::metadata(&path).await.is_err() {
            write_atomic(&path, data).await?;
        }
        Ok(digest)
    }

    pub async fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        tokio::fs::read(&path).await.map_err(io_at(&path))
    }

    // ---- uploads ----

    fn upload_dir(&self, id: &uuid::Uuid) -> PathBuf {
        self.root.join("uploads").join(id.to_string())
    }

    pub async fn start_upload(&self, name: &str) -> Result<uuid::Uuid, StoreError> {
        let id = uuid::Uuid::new_v4();
        let dir = self.upload_dir(&id);
        tokio::fs::create_dir_all(&dir).await.map_err(io_at(&dir))?;
        let repo = dir.join("repo");
        tokio::fs::write(&repo, name).await.map_err(io_at(&repo))?;
        let data = dir.join("data");
        tokio::fs::File::create(&data).await.map_err(io_at(&data))?;
        self.lock_sessions().insert(
            id,
            Arc::new(tokio::sync::Mutex::new(Session {
                hasher: Some(Hasher::new()),
                size: 0,
            })),
        );
        Ok(id)
    }

    fn lock_sessions(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<uuid::Uuid, Arc<tokio::sync::Mutex<Session>>>> {
        // A panic elsewhere cannot leave the map inconsistent: every change is one call.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session of upload `id` of repository `name`, also one started before a restart.
    async fn session(
        &self,
        name: &str,
        id: &str,
    ) -> Result<(uuid::Uuid, Arc<tokio::sync::Mutex<Session>>), ApiError> {
        let id = uuid::Uuid::parse_str(id).map_err(|_| ApiError::upload_unknown())?;
        let dir = self.upload_dir(&id);
        let owner = tokio::fs::read_to_string(dir.join("repo"))
            .await
            .map_err(|_| ApiError::upload_unknown())?;
        if owner != name {
            return Err(ApiError::upload_unknown());
        }
        if let Some(session) = self.lock_sessions().get(&id) {
            return Ok((id, session.clone()));
        }
        let size = tokio::fs::metadata(dir.join("data"))
            .await
            .map_err(|_| ApiError::upload_unknown())?
            .len();
        let session = Arc::new(tokio::sync::Mutex::new(Session { hasher: None, size }));
        let session = self.lock_sessions().entry(id).or_insert(session).clone();
        Ok((id, session))
    }

    pub async fn upload_size(&self, name: &str, id: &str) -> Result<u64, ApiError> {
        let (_, session) = self.session(name, id).await?;
        let size = session.lock().await.size;
        Ok(size)
    }

    /// Appends `body` to upload `id`. With `start` (from Content-Range) it must equal
    /// the bytes received so far, else 416. Returns the new size.
    pub async fn append<B>(
        &self,
        name: &str,
        id: &str,
        start: Option<u64>,
        body: B,
    ) -> Result<u64, ApiError>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let (uuid, session) = self.session(name, id).await?;
        let mut session = session.lock().await;
        if let Some(start) = start {
            if start != session.size {
                return Err(ApiError::range_invalid(format!(
                    "chunk starts at {start} but the upload has {} bytes: send the next chunk from there",
                    session.size
                )));
            }
        }
        let path = self.upload_dir(&uuid).join("data");
        let mut file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .await
            .map_err(|e| ApiError::from(io_at(&path)(e)))?;
        let result = copy_body(body, &mut file, session.hasher.as_mut()).await;
        match result {
            Ok(n) => {
                session.size += n;
                Ok(session.size)
            }
            Err(e) => {
                // A broken chunk must not leave partial bytes behind the recorded size.
                let _ = file.set_len(session.size).await;
                session.hasher = None;
                Err(e)
            }
        }
    }

    /// Verifies upload `id` against `digest` and moves it into the blob store, linked to
    /// repository `name`. The session ends either way unless the digest is malformed.
    pub async fn finish(&self, name: &str, id: &str, digest: &Digest) -> Result<u64, ApiError> {
        let (uuid, session) = self.session(name, id).await?;
        let mut session = session.lock().await;
        let dir = self.upload_dir(&uuid);
        let data = dir.join("data");
        let actual = match session.hasher.take() {
            Some(h) => h.finish(),
            None => hash_file(&data).await?,
        };
        let size = session.size;
        drop(session);
        if &actual != digest {
            self.cancel(name, &uuid.to_string()).await?;
            return Err(ApiError::digest_invalid(format!(
                "the uploaded content has digest {actual}, not {digest}"
            ))
            .with_detail(
                serde_json::json!({"expected": digest.to_string(), "actual": actual.to_string()}),
            ));
        }
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&data)
            .await
            .map_err(|e| ApiError::from(io_at(&data)(e)))?;
        file.sync_all()
            .await
            .map_err(|e| ApiError::from(io_at(&data)(e)))?;
        drop(file);
        let target = self.blob_path(digest);
        if tokio::fs::metadata(&target).await.is_err() {
            let parent = target.parent().unwrap_or(&self.root);
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| ApiError::from(io_at(parent)(e)))?;
            tokio::fs::rename(&data, &target)
                .await
                .map_err(|e| ApiError::from(io_at(&target)(e)))?;
        }
        self.link_layer(name, digest).await?;
        self.cancel(name, &uuid.to_string()).await?;
        Ok(size)
    }

    pub async fn cancel(&self, name: &str, id: &str) -> Result<(), ApiError> {
        let (uuid, _) = self.session(name, id).await?;
        self.lock_sessions().remove(&uuid);
        let dir = self.upload_dir(&uuid);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_at(&dir)(e).into()),
        }
    }

    // ---- manifests and tags ----

    pub async fn resolve(&self, name: &str, reference: &str) -> Option<ManifestEntry> {
        let digest = match reference.parse::<Digest>() {
            Ok(d) => d,
            Err(_) => tokio::fs::read_to_string(self.tag_link(name, reference))
                .await
                .ok()?
                .trim()
                .parse()
                .ok()?,
        };
        let media_type = tokio::fs::read_to_string(self.revision_link(name, &digest))
            .await
            .ok()?;
        let size = self.blob_size(&digest).await?;
        Some(ManifestEntry {
            digest,
            media_type: media_type.trim().to_string(),
            size,
        })
    }

    /// Stores a manifest after checking that everything it references is in the
    /// repository. `tag` is set when the reference was a tag.
    pub async fn put_manifest(
        &self,
        name: &str,
        tag: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Digest, ApiError> {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::manifest_invalid(format!("manifest is not JSON: {e}")))?;
        let declared = value.get("mediaType").and_then(|v| v.as_str());
        let media_type = match (content_type, declared) {
            (Some(ct), Some(d)) if ct != d && is_manifest_type(ct) => {
                return Err(ApiError::manifest_invalid(format!(
                    "Content-Type {ct} differs from the manifest's mediaType {d}"
                )))
            }
            (Some(ct), _) if !ct.is_empty() => ct.to_string(),
            (_, Some(d)) => d.to_string(),
            _ if value.get("manifests").is_some() => OCI_INDEX.to_string(),
            _ => OCI_MANIFEST.to_string(),
        };
        let schema = value.get("schemaVersion").and_then(|v| v.as_u64());
        if schema != Some(2) {
            return Err(ApiError::manifest_invalid("schemaVersion must be 2"));
        }
        if let Some(list) = value.get("manifests") {
            let list = list
                .as_array()
                .ok_or_else(|| ApiError::manifest_invalid("manifests must be an array"))?;
            for m in list {
                let digest = descriptor_digest(m)?;
                if tokio::fs::metadata(self.revision_link(name, &digest))
                    .await
                    .is_err()
                {
                    return Err(ApiError::manifest_blob_unknown(&digest.to_string()));
                }
            }
        } else {
            let mut descriptors: Vec<&serde_json::Value> = Vec::new();
            match value.get("config") {
                Some(c) => descriptors.push(c),
                None => {
                    return Err(ApiError::manifest_invalid(
                        "an image manifest needs a config",
                    ))
                }
            }
            if let Some(layers) = value.get("layers") {
                let layers = layers
                    .as_array()
                    .ok_or_else(|| ApiError::manifest_invalid("layers must be an array"))?;
                descriptors.extend(layers.iter().filter(|l| {
                    // Foreign layers live elsewhere and are fetched from their URLs.
                    l.get("urls")
                        .and_then(|u| u.as_array())
                        .is_none_or(|u| u.is_empty())
                }));
            }
            for d in descriptors {
                let digest = descriptor_digest(d)?;
                if self.layer_size(name, &digest).await.is_none() {
                    return Err(ApiError::manifest_blob_unknown(&digest.to_string()));
                }
            }
        }
        let digest = self.put_blob_bytes(body).await?;
        write_atomic(&self.revision_link(name, &digest), media_type.as_bytes()).await?;
        if let Some(tag) = tag {
            write_atomic(&self.tag_link(name, tag), digest.to_string().as_bytes()).await?;
        }
        Ok(digest)
    }

    /// Deletes a tag, or a manifest by digest with every tag pointing to it.
    pub async fn delete_manifest(&self, name: &str, reference: &str) -> Result<bool, StoreError> {
        match reference.parse::<Digest>() {
            Err(_) => remove_if_exists(&self.tag_link(name, reference)).await,
            Ok(digest) => {
                let found = remove_if_exists(&self.revision_link(name, &digest)).await?;
                let wanted = digest.to_string();
                for tag in self.tags(name).await.unwrap_or_default() {
                    let link = self.tag_link(name, &tag);
                    if let Ok(content) = tokio::fs::read_to_string(&link).await {
                        if content.trim() == wanted {
                            remove_if_exists(&link).await?;
                        }
                    }
                }
                Ok(found)
            }
        }
    }

    /// The repository's tags, sorted; `None` when the repository does not exist.
    pub async fn tags(&self, name: &str) -> Option<Vec<String>> {
        if !self.repository_exists(name).await {
            return None;
        }
        let mut tags = Vec::new();
        if let Ok(mut dir) = tokio::fs::read_dir(self.repo_dir(name).join("_manifests/tags")).await
        {
            while let Ok(Some(entry)) = dir.next_entry().await {
                let tag = entry.file_name().to_string_lossy().into_owned();
                if !tag.starts_with(".tmp-") {
                    tags.push(tag);
                }
            }
        }
        tags.sort();
        Some(tags)
    }

    /// Every repository, sorted.
    pub async fn repositories(&self) -> Result<Vec<String>, StoreError> {
        let root = self.root.join("repositories");
        let found = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            walk_repositories(&root, "", &mut found);
            found
        })
        .await
        .map_err(|e| StoreError::Invalid(format!("catalog walk failed: {e}")))?;
        let mut found = found;
        found.sort();
        Ok(found)
    }
}

fn walk_repositories(dir: &Path, prefix: &str, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut is_repo = false;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "_manifests" || name == "_layers" {
            is_repo = true;
        } else if !name.starts_with('_')
            && !name.starts_with('.')
            && entry.file_type().map(|t| t.is_dir()).unwrap_or(false)
        {
            let child = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            walk_repositories(&entry.path(), &child, found);
        }
    }
    if is_repo && !prefix.is_empty() {
        found.push(prefix.to_string());
    }
}

pub(crate) fn is_manifest_type(t: &str) -> bool {
    matches!(t, OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_LIST)
}

fn descriptor_digest(d: &serde_json::Value) -> Result<Digest, ApiError> {
    let raw = d
        .get("digest")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ApiError::manifest_invalid("a descriptor has no digest"))?;
    raw.parse()
        .map_err(|e: korvet_image::InvalidDigest| ApiError::manifest_invalid(e.to_string()))
}

async fn copy_body<B>(
    mut body: B,
    file: &mut tokio::fs::File,
    mut hasher: Option<&mut Hasher>,
) -> Result<u64, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::upload_invalid(format!("reading the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if let Some(h) = hasher.as_deref_mut() {
                h.update(&data);
            }
            file.write_all(&data)
                .await
                .map_err(|e| ApiError::internal(format!("writing the upload: {e}")))?;
            n += data.len() as u64;
        }
    }
    file.flush()
        .await
        .map_err(|e| ApiError::internal(format!("writing the upload: {e}")))?;
    Ok(n)
}

async fn hash_file(path: &Path) -> Result<Digest, StoreError> {
    let mut file = tokio::fs::File::open(path).await.map_err(io_at(path))?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).await.map_err(io_at(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

/// Writes `data` to `path` through a fsynced temporary file and a rename.
pub(crate) async fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let parent = path
        .parent()
        .ok_or_else(|| StoreError::Invalid(format!("{} has no parent", path.display())))?;
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(io_at(parent))?;
    let tmp = parent.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    let result = async {
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io_at(&tmp))?;
        file.write_all(data).await.map_err(io_at(&tmp))?;
        file.sync_all().await.map_err(io_at(&tmp))?;
        tokio::fs::rename(&tmp, path).await.map_err(io_at(path))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

async fn remove_if_exists(path: &Path) -> Result<bool, StoreError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_at(path)(e)),
    }
}
