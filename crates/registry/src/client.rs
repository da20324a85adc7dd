//! A small registry client (HTTP/1.1, one connection per request): pushes of
//! `korvet image build`, `korvet image list`, and the tests.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use korvet_image::Digest;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid registry URL {0:?}: expected https://HOST:PORT or http://HOST:PORT")]
    Url(String),
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("cannot reach the registry at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("{method} {path}: the registry answered {status}: {body}")]
    Status {
        method: Method,
        path: String,
        status: StatusCode,
        body: String,
    },
}

/// One response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Clone)]
pub struct Client {
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
    authorization: Option<String>,
}

impl Client {
    /// `base_url` is `https://HOST:PORT` (trusting `ca_pem`, else the system's CAs) or
    /// `http://HOST:PORT`; `token` is sent as a bearer token.
    pub fn new(
        base_url: &str,
        ca_pem: Option<&str>,
        token: Option<&str>,
    ) -> Result<Client, ClientError> {
        let bad = || ClientError::Url(base_url.to_string());
        let uri: http::Uri = base_url.trim_end_matches('/').parse().map_err(|_| bad())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let host = uri
            .host()
            .ok_or_else(bad)?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let pem = match ca_pem {
                Some(pem) => pem.to_string(),
                None => std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt")
                    .map_err(|e| ClientError::Tls(format!("no CA given and no system CAs: {e}")))?,
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| ClientError::Tls(format!("CA PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Tls(format!("CA certificate: {e}")))?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| ClientError::Tls(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Client {
            host,
            port,
            tls,
            authorization: token.map(|t| format!("Bearer {t}")),
        })
    }

    /// The same registry with other credentials (a full `Authorization` value, or none).
    pub fn with_authorization(&self, authorization: Option<String>) -> Client {
        Client {
            authorization,
            ..self.clone()
        }
    }

    /// `host:port`, as image references name the registry.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Sends one request and reads the whole answer, whatever its status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, ClientError> {
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, self.authority());
        if let Some(auth) = &self.authorization {
            builder = builder.header(header::AUTHORIZATION, auth);
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder
            .body(Full::new(body.into()))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let response = match &self.tls {
            Some(connector) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| ClientError::Tls(format!("server name {}: {e}", self.host)))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|source| ClientError::Connect { addr, source })?;
                exchange(TokioIo::new(tls), req).await?
            }
            None => exchange(TokioIo::new(tcp), req).await?,
        };
        Ok(response)
    }

    /// Like [`Client::send`] but an answer outside 2xx is an error.
    pub async fn send_ok(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, ClientError> {
        let reply = self.send(method.clone(), path, headers, body).await?;
        if !reply.status.is_success() {
            return Err(ClientError::Status {
                method,
                path: path.to_string(),
                status: reply.status,
                body: String::from_utf8_lossy(&reply.body).into_owned(),
            });
        }
        Ok(reply)
    }

    pub async fn blob_exists(&self, repo: &str, digest: &Digest) -> Result<bool, ClientError> {
        let r = self
            .send(
                Method::HEAD,
                &format!("/v2/{repo}/blobs/{digest}"),
                &[],
                Bytes::new(),
            )
            .await?;
        Ok(r.status == StatusCode::OK)
    }

    /// Uploads a blob in one request unless the repository has it already.
    pub async fn push_blob(
        &self,
        repo: &str,
        digest: &Digest,
        data: Bytes,
    ) -> Result<(), ClientError> {
        if self.blob_exists(repo, digest).await? {
            return Ok(());
        }
        self.send_ok(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            &[("content-type", "application/octet-stream")],
            data,
        )
        .await?;
        Ok(())
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        data: Bytes,
    ) -> Result<(), ClientError> {
        self.send_ok(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", media_type)],
            data,
        )
        .await?;
        Ok(())
    }

    /// The digest `reference` resolves to, `None` when there is no such manifest.
    pub async fn manifest_digest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<Digest>, ClientError> {
        let accept = [
            crate::storage::OCI_MANIFEST,
            crate::storage::OCI_INDEX,
            crate::storage::DOCKER_MANIFEST,
            crate::storage::DOCKER_LIST,
        ]
        .join(", ");
        let r = self
            .send(
                Method::HEAD,
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("accept", &accept)],
                Bytes::new(),
            )
            .await?;
        if r.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status.is_success() {
            return Err(ClientError::Status {
                method: Method::HEAD,
                path: format!("/v2/{repo}/manifests/{reference}"),
                status: r.status,
                body: String::new(),
            });
        }
        Ok(r.header("docker-content-digest")
            .and_then(|d| d.parse().ok()))
    }

    /// Every repository, following the catalog's pagination.
    pub async fn catalog(&self) -> Result<Vec<String>, ClientError> {
        self.paged("/v2/_catalog?n=100", "repositories").await
    }

    pub async fn tags(&self, repo: &str) -> Result<Vec<String>, ClientError> {
        self.paged(&format!("/v2/{repo}/tags/list?n=100"), "tags")
            .await
    }

    async fn paged(&self, first: &str, field: &str) -> Result<Vec<String>, ClientError> {
        let mut out = Vec::new();
        let mut next = Some(first.to_string());
        while let Some(path) = next.take() {
            let r = self.send_ok(Method::GET, &path, &[], Bytes::new()).await?;
            if let Some(items) = r.json()[field].as_array() {
                out.extend(items.iter().filter_map(|v| v.as_str().map(str::to_string)));
            }
            next = r
                .header("link")
                .and_then(|l| l.split_once('<'))
                .and_then(|(_, rest)| rest.split_once('>'))
                .map(|(url, _)| url.to_string());
        }
        Ok(out)
    }
}

async fn exchange<I>(io: I, req: Request<Full<Bytes>>) -> Result<Reply, ClientError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
    .await;
    driver.abort();
    result
}
