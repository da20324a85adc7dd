//! The node's HTTPS endpoint (upstream's kubelet server on port 10250): `/healthz`,
//! `GET /containerLogs/{ns}/{pod}/{container}`, which the API server's `pods/log` proxies,
//! `GET /stats/summary` (the Summary API, [`crate::stats`]), and the upgrade requests of
//! `pods/exec`, `pods/attach` and `pods/portforward` (`/exec/..`, `/attach/..`,
//! `/portForward/{ns}/{pod}`, see [`crate::streaming`]).
//!
//! The serving certificate is self-signed, made at each start: upstream's API server does
//! not verify the kubelet's certificate unless `--kubelet-certificate-authority` is set,
//! and ours does not either. Callers are authenticated by a client certificate of the
//! cluster CA; only the API server's kubelet client (or `system:masters`) may read logs.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_cri::v1 as cri;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::FromDer;

use crate::cri::Cri;
use crate::logs::{self, Joiner, LogOptions};
use crate::pods::runtime::{CONTAINER_NAME, POD_NAME, POD_NAMESPACE};
use crate::streaming;

/// The user of the API server's client certificate for kubelets.
pub(crate) const APISERVER_KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";
const MASTERS_GROUP: &str = "system:masters";
/// How often a followed log is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

type Body = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ServerError {
    #[error("making the node's serving certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration of the node's server: {0}")]
    Tls(String),
    #[error("cannot listen on {address}: {source} (is another kubelet using the port? choose another with --kubelet-port)")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone)]
pub(crate) struct ServerConfig {
    pub listen: SocketAddr,
    pub node_name: String,
    /// Where the pods' log directories are (`NS_NAME_UID/CONTAINER/ATTEMPT.log`).
    pub log_root: PathBuf,
    /// The cluster CA that client certificates must chain to.
    pub ca_pem: String,
}

struct State {
    log_root: PathBuf,
    cri: Cri,
    stats: crate::stats::Stats,
}

/// Binds the listener and serves until the returned task is aborted.
pub(crate) async fn serve(
    config: ServerConfig,
    cri: Cri,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    let tls = tls_config(&config)?;
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Listen {
                address: config.listen,
                source,
            })?;
    tracing::info!(address = %config.listen, "node server listening");
    // The log directory is on the node's disk: its filesystem is the summary's `fs`.
    let stats = crate::stats::Stats::new(
        config.node_name.clone(),
        config.log_root.clone(),
        cri.clone(),
    );
    let state = Arc::new(State {
        log_root: config.log_root,
        cri,
        stats,
    });
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    Ok(tokio::spawn(korvet_serving::accept_loop(
        listener,
        "node server",
        move |tcp, _| serve_connection(state.clone(), acceptor.clone(), tcp),
    )))
}

fn tls_config(config: &ServerConfig) -> Result<rustls::ServerConfig, ServerError> {
    let tls = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let mut params = rcgen::CertificateParams::new(vec![config.node_name.clone()])?;
    let ip = config.listen.ip();
    if !ip.is_unspecified() {
        params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
    }
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{}@kubelet", config.node_name),
    );
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls::pki_types::pem::PemObject::pem_slice_iter(config.ca_pem.as_bytes()) {
        let ca: CertificateDer<'static> = ca.map_err(|e| tls(&e))?;
        roots.add(ca).map_err(|e| tls(&e))?;
    }
    // Anonymous clients pass the handshake and are refused (401) per request, as upstream.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| tls(&e))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(|e| tls(&e))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(server)
}

/// The CN and Os of a verified client certificate.
fn identity(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some((name, groups))
}

async fn serve_connection(
    state: Arc<State>,
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
) -> korvet_serving::ConnectionResult {
    let tls = acceptor.accept(tcp).await?;
    let user = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| identity(leaf));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        let user = user.clone();
        async move { Ok::<_, Infallible>(handle(&state, req, user.as_ref()).await) }
    });
    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .await?;
    Ok(())
}

fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message.into())).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn handle(
    state: &State,
    req: Request<Incoming>,
    user: Option<&(String, Vec<String>)>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    let Some((name, groups)) = user else {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    if name != APISERVER_KUBELET_CLIENT && !groups.iter().any(|g| g == MASTERS_GROUP) {
        return text(
            StatusCode::FORBIDDEN,
            format!("Forbidden (user={name}, verb=get, resource=nodes, subresource=proxy)"),
        );
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), parts.as_slice()) {
        (&http::Method::GET, ["containerLogs", ns, pod, container]) => {
            match LogOptions::parse(req.uri().query()) {
                Ok(options) => container_logs(state, ns, pod, container, options).await,
                Err(message) => text(StatusCode::BAD_REQUEST, message),
            }
        }
        (&http::Method::GET | &http::Method::POST, ["exec" | "attach", ns, pod, container]) => {
            let kind = if parts[0] == "exec" {
                streaming::Kind::Exec
            } else {
                streaming::Kind::Attach
            };
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            streaming::serve(&state.cri, kind, req, &ns, &pod, Some(&container)).await
        }
        (&http::Method::GET | &http::Method::POST, ["portForward", ns, pod]) => {
            let (ns, pod) = (ns.to_string(), pod.to_string());
            streaming::serve(
                &state.cri,
                streaming::Kind::PortForward,
                req,
                &ns,
                &pod,
                None,
            )
            .await
        }
        (&http::Method::GET, ["stats", "summary"]) => stats_summary(state).await,
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

async fn stats_summary(state: &State) -> Response<Body> {
    match state.stats.summary().await {
        Ok(summary) => {
            let body = serde_json::to_vec_pretty(&summary).unwrap_or_default();
            let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(status) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to get node stats: {}", status.message()),
        ),
    }
}

async fn container_logs(
    state: &State,
    namespace: &str,
    pod: &str,
    container: &str,
    options: LogOptions,
) -> Response<Body> {
    let Some(pod_dir) = logs::pod_dir(&state.log_root, namespace, pod) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} not found on this node"),
        );
    };
    let attempts = logs::attempts(&pod_dir, container);
    let chosen = if options.previous {
        attempts.get(1)
    } else {
        attempts.first()
    };
    let Some((attempt, path)) = chosen.cloned() else {
        let message = if options.previous {
            format!("previous terminated container {container:?} in pod {pod:?} not found")
        } else {
            format!("container {container:?} in pod {pod:?} is waiting to start - no logs yet")
        };
        return text(StatusCode::BAD_REQUEST, message);
    };
    let follow = options.follow && !options.previous;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let target = Target {
        cri: state.cri.clone(),
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        container: container.to_string(),
        attempt,
        pod_dir,
    };
    tokio::spawn(async move {
        if let Err(e) = stream_log(path.clone(), options, follow, target, tx).await {
            tracing::debug!(path = %path.display(), error = %e, "streaming a log ended");
        }
    });
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    response
}

/// The container run whose log is followed, to know when it has ended.
struct Target {
    cri: Cri,
    namespace: String,
    pod: String,
    container: String,
    attempt: u32,
    pod_dir: PathBuf,
}

impl Target {
    /// Ended: exited, gone, or a newer run has started.
    async fn ended(&self) -> bool {
        if logs::attempts(&self.pod_dir, &self.container)
            .first()
            .is_some_and(|(a, _)| *a > self.attempt)
        {
            return true;
        }
        let filter = cri::ContainerFilter {
            label_selector: [
                (POD_NAMESPACE.to_string(), self.namespace.clone()),
                (POD_NAME.to_string(), self.pod.clone()),
                (CONTAINER_NAME.to_string(), self.container.clone()),
            ]
            .into(),
            ..Default::default()
        };
        let listed = self
            .cri
            .runtime
            .clone()
            .list_containers(cri::ListContainersRequest {
                filter: Some(filter),
            })
            .await;
        match listed {
            Ok(reply) => !reply.into_inner().containers.iter().any(|c| {
                c.metadata.as_ref().map_or(0, |m| m.attempt) == self.attempt
                    && c.state != cri::ContainerState::ContainerExited as i32
            }),
            // Keep following while the runtime cannot be asked.
            Err(_) => false,
        }
    }
}

/// Sends the selected lines, then (following) new ones until the client goes away, the
/// byte limit is reached or the container has ended.
async fn stream_log(
    path: PathBuf,
    options: LogOptions,
    follow: bool,
    target: Target,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) -> std::io::Result<()> {
    let mut file = tokio::fs::File::open(&path).await?;
    let mut data = Vec::new();
    file.read_to_end(&mut data).await?;
    let mut joiner = Joiner::default();
    let (lines, consumed) = logs::parse_lines(&mut joiner, &data);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let lines = logs::select(lines, &options, now);
    let mut left = options.limit_bytes.unwrap_or(usize::MAX);
    let send = |lines: Vec<logs::LogLine>, left: &mut usize| {
        let mut out = Vec::new();
        for line in lines {
            out.extend_from_slice(&line.render(options.timestamps));
        }
        out.truncate(*left);
        *left -= out.len();
        out
    };
    let chunk = send(lines, &mut left);
    if !chunk.is_empty() && tx.send(Bytes::from(chunk)).await.is_err() {
        return Ok(());
    }
    if !follow || left == 0 {
        return Ok(());
    }
    let mut offset = consumed as u64;
    let mut pending: Vec<u8> = data.split_off(consumed);
    let mut ended_checks = 0u32;
    loop {
        let mut fresh = Vec::new();
        file.seek(std::io::SeekFrom::Start(offset + pending.len() as u64))
            .await?;
        file.read_to_end(&mut fresh).await?;
        if fresh.is_empty() {
            // Ended and nothing more written: done. Asked every second, not every poll.
            ended_checks += 1;
            if ended_checks.is_multiple_of(5) && target.ended().await {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = tx.closed() => return Ok(()),
            }
            continue;
        }
        pending.extend_from_slice(&fresh);
        let (lines, used) = logs::parse_lines(&mut joiner, &pending);
        offset += used as u64;
        pending.drain(..used);
        let chunk = send(lines, &mut left);
        if !chunk.is_empty() && tx.send(Bytes::from(chunk)).await.is_err() {
            return Ok(());
        }
        if left == 0 {
            return Ok(());
        }
    }
}
