//! The OCI Distribution Spec v1.1 API over hyper 1, plain or TLS.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite};
use tokio::net::TcpListener;

use crate::auth::{Authenticator, User};
use crate::error::{ApiError, StoreError};
use crate::metrics::{Metrics, RequestLabels};
use crate::storage::{Storage, MAX_MANIFEST_BYTES};
use korvet_image::Digest;
use korvet_image::{valid_repository, valid_tag};

pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

const API_VERSION: &str = "registry/2.0";
const CHALLENGE: &str = "Basic realm=\"korvet\"";

/// An OCI registry over a storage directory.
pub struct Registry {
    storage: Storage,
    metrics: Metrics,
}

/// Serving in the background; dropping it stops accepting and ends every connection.
pub struct ServeHandle {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ServeHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Reply = Result<Response<Body>, ApiError>;

/// What a request's body may be: hyper's `Incoming` when served, a buffer in tests.
pub trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: std::fmt::Display + Send> + Unpin + Send
{
}

impl<B> RequestBody for B where
    B: hyper::body::Body<Data = Bytes, Error: std::fmt::Display + Send> + Unpin + Send
{
}

impl Registry {
    /// Opens (creating if needed) the registry stored under `root`.
    pub fn open(root: &Path) -> Result<Registry, StoreError> {
        Ok(Registry {
            storage: Storage::open(root)?,
            metrics: Metrics::new(),
        })
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Marks repository `name` private (pulls need a user) or public.
    pub async fn set_private(&self, name: &str, private: bool) -> Result<(), StoreError> {
        if !valid_repository(name) {
            return Err(StoreError::Invalid(format!(
                "invalid repository name {name:?}"
            )));
        }
        self.storage.set_private(name, private).await
    }

    /// Serves the API on `listener` (HTTPS when `tls` is given; HTTP/1.1 and HTTP/2)
    /// until the returned handle is dropped. Must be called inside a tokio runtime.
    pub fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<rustls::ServerConfig>,
        auth: Arc<dyn Authenticator>,
    ) -> std::io::Result<ServeHandle> {
        let addr = listener.local_addr()?;
        let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(Arc::new(t)));
        let task = tokio::spawn(korvet_serving::accept_loop(
            listener,
            "registry",
            move |tcp, _peer| {
                let registry = self.clone();
                let auth = auth.clone();
                let acceptor = acceptor.clone();
                async move {
                    match acceptor {
                        Some(acceptor) => {
                            serve_io(registry, auth, acceptor.accept(tcp).await?).await
                        }
                        None => serve_io(registry, auth, tcp).await,
                    }
                }
            },
        ));
        Ok(ServeHandle { addr, task })
    }

    /// Answers one request. Any body type will do, so that a request can be answered
    /// without a connection (the fuzz target of the upload handling does so).
    pub async fn handle<B: RequestBody>(
        self: &Arc<Self>,
        req: Request<B>,
        auth: &dyn Authenticator,
    ) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let head = method == Method::HEAD;
        let (user, reply) = match auth.authenticate(req.headers()).await {
            Ok(user) => (user.clone(), self.route(req, user).await),
            Err(e) => (
                None,
                Err(ApiError::unauthorized().with_detail(serde_json::json!({"reason": e.0}))),
            ),
        };
        let mut response = match reply {
            Ok(r) => r,
            Err(e) => error_response(&e, head),
        };
        if response.status() == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(CHALLENGE),
            );
        }
        response.headers_mut().insert(
            "Docker-Distribution-API-Version",
            HeaderValue::from_static(API_VERSION),
        );
        let status = response.status().as_u16();
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                method: method.as_str().to_string(),
                status: status.to_string(),
            })
            .inc();
        if !head {
            if let Some(n) = content_length(response.headers()) {
                self.metrics.bytes_out.inc_by(n);
            }
        }
        tracing::debug!(%method, %path, status, user = user.as_ref().map(|u| u.name.as_str()), "registry request");
        response
    }

    async fn route<B: RequestBody>(self: &Arc<Self>, req: Request<B>, user: Option<User>) -> Reply {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        match path.as_str() {
            "/healthz" | "/readyz" => return Ok(text(StatusCode::OK, "ok")),
            "/metrics" => return Ok(text(StatusCode::OK, &self.metrics.encode())),
            "/v2" | "/v2/" => {
                let mut r = json(StatusCode::OK, &serde_json::json!({}));
                if user.is_none() {
                    // Container clients send credentials only after seeing a challenge here.
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static(CHALLENGE),
                    );
                }
                return Ok(r);
            }
            "/v2/_catalog" => {
                return self.catalog(query(&req), user.as_ref()).await;
            }
            _ => {}
        }
        let rest = path.strip_prefix("/v2/").ok_or_else(ApiError::not_found)?;
        let segments: Vec<&str> = rest.split('/').collect();
        let n = segments.len();
        let (name, endpoint) = if n >= 3 && segments[n - 2] == "tags" && segments[n - 1] == "list" {
            (segments[..n - 2].join("/"), Endpoint::Tags)
        } else if n >= 3 && segments[n - 2] == "manifests" {
            (
                segments[..n - 2].join("/"),
                Endpoint::Manifest(segments[n - 1].to_string()),
            )
        } else if n >= 4 && segments[n - 3] == "blobs" && segments[n - 2] == "uploads" {
            (
                segments[..n - 3].join("/"),
                Endpoint::Upload(segments[n - 1].to_string()),
            )
        } else if n >= 3 && segments[n - 2] == "blobs" && segments[n - 1] == "uploads" {
            (segments[..n - 2].join("/"), Endpoint::Upload(String::new()))
        } else if n >= 3 && segments[n - 2] == "blobs" {
            (
                segments[..n - 2].join("/"),
                Endpoint::Blob(segments[n - 1].to_string()),
            )
        } else {
            return Err(ApiError::not_found());
        };
        if !valid_repository(&name) {
            return Err(ApiError::name_invalid(&name));
        }
        let push = !matches!(method, Method::GET | Method::HEAD);
        if push && user.is_none() {
            return Err(ApiError::unauthorized());
        }
        if !push && user.is_none() && self.storage.is_private(&name).await {
            return Err(ApiError::unauthorized());
        }
        match (endpoint, method) {
            (Endpoint::Tags, Method::GET) => self.tags(&name, query(&req)).await,
            (Endpoint::Manifest(r), Method::GET) => self.get_manifest(&name, &r, false).await,
            (Endpoint::Manifest(r), Method::HEAD) => self.get_manifest(&name, &r, true).await,
            (Endpoint::Manifest(r), Method::PUT) => self.put_manifest(&name, &r, req).await,
            (Endpoint::Manifest(r), Method::DELETE) => self.delete_manifest(&name, &r).await,
            (Endpoint::Blob(d), Method::GET) => {
                self.get_blob(&name, &d, req.headers(), false).await
            }
            (Endpoint::Blob(d), Method::HEAD) => {
                self.get_blob(&name, &d, req.headers(), true).await
            }
            (Endpoint::Blob(d), Method::DELETE) => {
                let digest = parse_digest(&d)?;
                if self.storage.unlink_layer(&name, &digest).await? {
                    Ok(empty(StatusCode::ACCEPTED))
                } else {
                    Err(ApiError::blob_unknown(&d))
                }
            }
            (Endpoint::Upload(id), Method::POST) if id.is_empty() => {
                self.start_upload(&name, req, user.as_ref()).await
            }
            (Endpoint::Upload(id), Method::PATCH) if !id.is_empty() => {
                self.patch_upload(&name, &id, req).await
            }
            (Endpoint::Upload(id), Method::PUT) if !id.is_empty() => {
                self.put_upload(&name, &id, req).await
            }
            (Endpoint::Upload(id), Method::GET) if !id.is_empty() => {
                let size = self.storage.upload_size(&name, &id).await?;
                Ok(upload_response(StatusCode::NO_CONTENT, &name, &id, size))
            }
            (Endpoint::Upload(id), Method::DELETE) if !id.is_empty() => {
                self.storage.cancel(&name, &id).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            (_, method) => Err(ApiError::unsupported(format!(
                "{method} is not supported on {path}"
            ))),
        }
    }

    async fn catalog(&self, q: Query, user: Option<&User>) -> Reply {
        let mut repos = Vec::new();
        for name in self.storage.repositories().await? {
            // Anonymous callers do not learn the names of private repositories.
            if user.is_some() || !self.storage.is_private(&name).await {
                repos.push(name);
            }
        }
        let (page, next) = paginate(repos, &q)?;
        let mut r = json(StatusCode::OK, &serde_json::json!({ "repositories": page }));
        if let Some(link) =
            next.map(|(n, last)| format!("</v2/_catalog?n={n}&last={last}>; rel=\"next\""))
        {
            if let Ok(v) = HeaderValue::from_str(&link) {
                r.headers_mut().insert(header::LINK, v);
            }
        }
        Ok(r)
    }

    async fn tags(&self, name: &str, q: Query) -> Reply {
        let tags = self
            .storage
            .tags(name)
            .await
            .ok_or_else(|| ApiError::name_unknown(name))?;
        let (page, next) = paginate(tags, &q)?;
        let mut r = json(
            StatusCode::OK,
            &serde_json::json!({ "name": name, "tags": page }),
        );
        if let Some((n, last)) = next {
            let link = format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\"");
            if let Ok(v) = HeaderValue::from_str(&link) {
                r.headers_mut().insert(header::LINK, v);
            }
        }
        Ok(r)
    }

    async fn get_manifest(&self, name: &str, reference: &str, head: bool) -> Reply {
        let entry = self
            .storage
            .resolve(name, reference)
            .await
            .ok_or_else(|| ApiError::manifest_unknown(reference))?;
        let builder = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, &entry.media_type)
            .header(header::CONTENT_LENGTH, entry.size)
            .header("Docker-Content-Digest", entry.digest.to_string())
            .header(header::ETAG, format!("\"{}\"", entry.digest));
        let body = if head {
            empty_body()
        } else {
            full(self.storage.read_blob(&entry.digest).await?)
        };
        builder
            .body(body)
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    async fn put_manifest<B: RequestBody>(
        &self,
        name: &str,
        reference: &str,
        req: Request<B>,
    ) -> Reply {
        let by_digest = reference.parse::<Digest>().ok();
        if by_digest.is_none() && !valid_tag(reference) {
            return Err(ApiError::tag_invalid(reference));
        }
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let body = read_limited(req.into_body(), MAX_MANIFEST_BYTES).await?;
        self.metrics.bytes_in.inc_by(body.len() as u64);
        if let Some(expected) = &by_digest {
            let actual = Digest::of(&body);
            if &actual != expected {
                return Err(ApiError::digest_invalid(format!(
                    "the manifest has digest {actual}, not {expected}"
                )));
            }
        }
        let tag = by_digest.is_none().then_some(reference);
        let digest = self
            .storage
            .put_manifest(name, tag, content_type.as_deref(), &body)
            .await?;
        let mut r = Response::builder()
            .status(StatusCode::CREATED)
            .header(header::LOCATION, format!("/v2/{name}/manifests/{digest}"))
            .header("Docker-Content-Digest", digest.to_string())
            .header(header::CONTENT_LENGTH, 0);
        if let Some(subject) = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.pointer("/subject/digest")?.as_str().map(str::to_string))
        {
            r = r.header("OCI-Subject", subject);
        }
        r.body(empty_body())
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    async fn delete_manifest(&self, name: &str, reference: &str) -> Reply {
        if self.storage.delete_manifest(name, reference).await? {
            Ok(empty(StatusCode::ACCEPTED))
        } else {
            Err(ApiError::manifest_unknown(reference))
        }
    }

    async fn get_blob(&self, name: &str, raw: &str, headers: &HeaderMap, head: bool) -> Reply {
        let digest = parse_digest(raw)?;
        let size = self
            .storage
            .layer_size(name, &digest)
            .await
            .ok_or_else(|| ApiError::blob_unknown(raw))?;
        let range = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_range(v, size));
        let (status, start, len) = match range {
            Some(Ok((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
            Some(Err(())) => {
                return Response::builder()
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                    .body(empty_body())
                    .map_err(|e| ApiError::internal(e.to_string()))
            }
            None => (StatusCode::OK, 0, size),
        };
        let mut builder = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, len)
            .header(header::ACCEPT_RANGES, "bytes")
            .header("Docker-Content-Digest", digest.to_string())
            .header(header::ETAG, format!("\"{digest}\""));
        if status == StatusCode::PARTIAL_CONTENT {
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", start + len - 1),
            );
        }
        let body = if head {
            empty_body()
        } else {
            let path = self.storage.blob_path(&digest);
            let mut file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| ApiError::from(crate::error::io_at(&path)(e)))?;
            if start > 0 {
                file.seek(std::io::SeekFrom::Start(start))
                    .await
                    .map_err(|e| ApiError::internal(e.to_string()))?;
            }
            file_body(file, len)
        };
        builder
            .body(body)
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    async fn start_upload<B: RequestBody>(
        &self,
        name: &str,
        req: Request<B>,
        user: Option<&User>,
    ) -> Reply {
        let q = query(&req);
        if let (Some(mount), Some(from)) = (q.get("mount"), q.get("from")) {
            let digest = parse_digest(mount)?;
            // Mounting from a private repository needs the right to pull from it.
            let readable =
                valid_repository(from) && (user.is_some() || !self.storage.is_private(from).await);
            if readable && self.storage.layer_size(from, &digest).await.is_some() {
                self.storage.link_layer(name, &digest).await?;
                return blob_created(name, &digest);
            }
            // Not mountable: the spec says to fall back to an ordinary upload session.
        }
        if let Some(raw) = q.get("digest") {
            let digest = parse_digest(raw)?;
            let id = self.storage.start_upload(name).await?.to_string();
            let body = req.into_body();
            let n = match self.storage.append(name, &id, None, body).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = self.storage.cancel(name, &id).await;
                    return Err(e);
                }
            };
            self.metrics.bytes_in.inc_by(n);
            self.storage.finish(name, &id, &digest).await?;
            return blob_created(name, &digest);
        }
        let id = self.storage.start_upload(name).await?.to_string();
        Ok(upload_response(StatusCode::ACCEPTED, name, &id, 0))
    }

    async fn patch_upload<B: RequestBody>(&self, name: &str, id: &str, req: Request<B>) -> Reply {
        let start =
            match req.headers().get(header::CONTENT_RANGE) {
                None => None,
                Some(v) => Some(v.to_str().ok().and_then(parse_content_range).ok_or_else(
                    || ApiError::range_invalid("Content-Range must be <start>-<end>"),
                )?),
            };
        let before = self.storage.upload_size(name, id).await?;
        let size = self
            .storage
            .append(name, id, start.map(|(s, _)| s), req.into_body())
            .await?;
        self.metrics.bytes_in.inc_by(size - before);
        if let Some((s, e)) = start {
            if e.checked_add(1) != Some(size) || s > e {
                tracing::debug!(
                    start = s,
                    end = e,
                    size,
                    "chunk size differs from its Content-Range"
                );
            }
        }
        Ok(upload_response(StatusCode::ACCEPTED, name, id, size))
    }

    async fn put_upload<B: RequestBody>(&self, name: &str, id: &str, req: Request<B>) -> Reply {
        let q = query(&req);
        let Some(raw) = q.get("digest") else {
            return Err(ApiError::digest_invalid(
                "finishing an upload needs ?digest=",
            ));
        };
        let digest = parse_digest(raw)?;
        let before = self.storage.upload_size(name, id).await?;
        let size = self.storage.append(name, id, None, req.into_body()).await?;
        self.metrics.bytes_in.inc_by(size - before);
        self.storage.finish(name, id, &digest).await?;
        blob_created(name, &digest)
    }
}

enum Endpoint {
    Tags,
    Manifest(String),
    Blob(String),
    Upload(String),
}

async fn serve_io<I>(
    registry: Arc<Registry>,
    auth: Arc<dyn Authenticator>,
    io: I,
) -> korvet_serving::ConnectionResult
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let registry = registry.clone();
        let auth = auth.clone();
        async move { Ok::<_, std::convert::Infallible>(registry.handle(req, auth.as_ref()).await) }
    });
    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await
}

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn query<B>(req: &Request<B>) -> Query {
    Query(
        req.uri()
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default(),
    )
}

/// Applies `n` and `last` to a sorted list; returns the page and, when more follow,
/// `(n, last item)` for the `Link` header.
#[allow(clippy::type_complexity)]
fn paginate(
    items: Vec<String>,
    q: &Query,
) -> Result<(Vec<String>, Option<(usize, String)>), ApiError> {
    let n = match q.get("n") {
        None => None,
        Some(raw) => Some(raw.parse::<usize>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "PAGINATION_NUMBER_INVALID",
                "n must be a number",
            )
        })?),
    };
    let mut items: Vec<String> = match q.get("last") {
        Some(last) => items.into_iter().filter(|t| t.as_str() > last).collect(),
        None => items,
    };
    match n {
        Some(n) if items.len() > n => {
            items.truncate(n);
            let next = items.last().cloned().map(|last| (n, last));
            Ok((items, next))
        }
        _ => Ok((items, None)),
    }
}

fn parse_digest(raw: &str) -> Result<Digest, ApiError> {
    raw.parse()
        .map_err(|e: korvet_image::InvalidDigest| ApiError::digest_invalid(e.to_string()))
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` → inclusive range; `Err` when unsatisfiable,
/// `None` when not understood (the whole blob is sent).
fn parse_range(v: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return Some(Err(()));
        }
        (size.saturating_sub(n), size.checked_sub(1)?)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<u64>().ok()?.min(size.saturating_sub(1))
        };
        (start, end)
    };
    if start >= size || end < start {
        return Some(Err(()));
    }
    Some(Ok((start, end)))
}

/// `Content-Range: <start>-<end>` (also with a `bytes ` prefix or `/size` suffix).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let v = v.trim();
    let v = v.strip_prefix("bytes ").unwrap_or(v);
    let v = v.split('/').next()?;
    let (a, b) = v.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

async fn read_limited<B: RequestBody>(mut body: B, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::manifest_invalid(format!("reading the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(ApiError::size_invalid(format!(
                    "manifest larger than {limit} bytes"
                )));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn empty_body() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn file_body(file: tokio::fs::File, len: u64) -> Body {
    let stream = futures::stream::unfold((file, len), |(mut file, remaining)| async move {
        if remaining == 0 {
            return None;
        }
        let mut buf = vec![0u8; remaining.min(256 * 1024) as usize];
        match file.read(&mut buf).await {
            Ok(0) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "blob shorter than its size",
                )),
                (file, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((
                    Ok(Frame::data(Bytes::from(buf))),
                    (file, remaining - n as u64),
                ))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    });
    StreamBody::new(stream).boxed_unsync()
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(empty_body());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let data = value.to_string();
    let len = data.len();
    let mut r = Response::new(full(data));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

fn error_response(e: &ApiError, head: bool) -> Response<Body> {
    if head {
        return empty(e.status);
    }
    json(e.status, &e.body())
}

fn blob_created(name: &str, digest: &Digest) -> Reply {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{name}/blobs/{digest}"))
        .header("Docker-Content-Digest", digest.to_string())
        .header(header::CONTENT_LENGTH, 0)
        .body(empty_body())
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn upload_response(status: StatusCode, name: &str, id: &str, size: u64) -> Response<Body> {
    let mut r = empty(status);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/v2/{name}/blobs/uploads/{id}")) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("Docker-Upload-UUID", v);
    }
    // The spec's Range is inclusive; an empty upload says 0-0, as distribution does.
    if let Ok(v) = HeaderValue::from_str(&format!("0-{}", size.saturating_sub(1))) {
        h.insert(header::RANGE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_content_range("0-1023"), Some((0, 1023)));
        assert_eq!(parse_content_range("bytes 5-9/10"), Some((5, 9)));
    }
}
