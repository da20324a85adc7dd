//! The HTTP (layer 7) data plane of a load-balancer instance: a listener that routes
//! requests by host and path to backends (a cluster's Ingresses), as a reverse proxy.
//!
//! Clients speak HTTP/1.1 or HTTP/2 (by ALPN over TLS, by prior knowledge in plain);
//! backends get HTTP/1.1 over pooled connections. What a listener serves, its [`Site`]
//! (routes and certificates), sits behind one lock as an `Arc` that each request and
//! TLS handshake reads afresh: a reload swaps it, and the socket, open connections and
//! requests in flight carry on.

mod forward;
pub(crate) mod routes;
mod sni;
mod upgrade;
mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::edge::config::{HttpConfig, Listener};
use crate::metrics::{HttpMetrics, LbMetrics};
use crate::LbError;
use routes::Routes;
use sni::Certificates;
use upstream::Upstreams;

/// What an HTTP listener serves: built (certificates read) before it replaces the
/// running one, so a configuration that cannot be served changes nothing.
#[derive(Debug)]
pub(crate) struct Site {
    routes: Routes,
    /// None: plain HTTP.
    certificates: Option<Certificates>,
}

impl Site {
    /// Reads the certificates; the error says which file and why.
    pub(crate) fn load(config: &HttpConfig) -> Result<Site, String> {
        Ok(Site {
            routes: Routes::new(config),
            certificates: Certificates::load(&config.certificates)?,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// What every connection of a listener shares.
pub(crate) struct Shared {
    name: String,
    site: Arc<RwLock<Arc<Site>>>,
    upstream: Arc<Upstreams>,
    metrics: HttpMetrics,
    tls: tokio_rustls::TlsAcceptor,
    /// Turns true when the listener stops: upgraded connections, which no longer belong
    /// to a task of the accept loop, end then too.
    closing: watch::Receiver<bool>,
}

impl Shared {
    fn site(&self) -> Arc<Site> {
        Arc::clone(&self.site.read().unwrap_or_else(|e| e.into_inner()))
    }
}

pub(crate) struct HttpListener {
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
    closing: watch::Sender<bool>,
}

impl HttpListener {
    /// Binds the listener's address and serves `site` on it.
    pub(crate) async fn start(
        listener: &Listener,
        site: Site,
        metrics: Arc<LbMetrics>,
    ) -> Result<HttpListener, LbError> {
        let address = SocketAddr::from((listener.address, listener.port));
        let socket = crate::balancer::bind(address).await?;
        let site = Arc::new(RwLock::new(Arc::new(site)));
        let tls = sni::server_config(Arc::clone(&site)).map_err(LbError::Config)?;
        let (closing, closing_rx) = watch::channel(false);
        let accepted = metrics.listener(&listener.name).accepted;
        let shared = Arc::new(Shared {
            name: listener.name.clone(),
            site,
            upstream: Arc::default(),
            metrics: HttpMetrics::new(metrics, &listener.name),
            tls: tokio_rustls::TlsAcceptor::from(tls),
            closing: closing_rx,
        });
        let serving = Arc::clone(&shared);
        let accept = tokio::spawn(crate::balancer::accept_loop(
            socket,
            accepted,
            move |stream, peer| serve_connection(Arc::clone(&serving), stream, peer),
        ));
        Ok(HttpListener {
            shared,
            accept,
            closing,
        })
    }

    /// Serves `site` from the next request (and TLS handshake) on.
    pub(crate) fn replace_site(&self, site: Site) {
        self.shared.upstream.keep_only(&site.routes.endpoints());
        *self.shared.site.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(site);
    }

    /// Stops accepting and ends every open connection.
    pub(crate) async fn shutdown(mut self) {
        let _ = self.closing.send(true);
        self.accept.abort();
        let _ = (&mut self.accept).await;
        self.shared.metrics.forget();
    }
}

impl Drop for HttpListener {
    fn drop(&mut self) {
        let _ = self.closing.send(true);
        self.accept.abort();
    }
}

/// One client connection: TLS if the site has certificates now, then HTTP/1.1 or
/// HTTP/2 until the client leaves.
async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The timer arms hyper's default limit on reading a request head (slow clients).
    builder.http1().timer(TokioTimer::new());
    if shared.site().certificates.is_none() {
        // The auto builder reads the first bytes: HTTP/2 by prior knowledge, or 1.1.
        serve(builder, stream, shared, peer, Scheme::Http).await;
        return;
    }
    let Some(stream) = crate::tls::accept(&shared.tls, stream, peer).await else {
        return;
    };
    let builder = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => builder.http2_only(),
        _ => builder.http1_only(),
    };
    serve(builder, stream, shared, peer, Scheme::Https).await;
}

async fn serve<S>(
    builder: auto::Builder<TokioExecutor>,
    stream: S,
    shared: Arc<Shared>,
    peer: SocketAddr,
    scheme: Scheme,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(forward::handle(&shared, request, peer, scheme).await) }
    });
    let served = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, "HTTP connection ended: {e}");
    }
}
