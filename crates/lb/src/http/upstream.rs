//! HTTP/1.1 connections to backends' endpoints (pods speak it), kept open between
//! requests. Our own small pool rather than hyper-util's client, which hides the request
//! when a connect fails: here a refused endpoint gives the request back, untouched, for
//! the next endpoint of the backend.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

type Connection = hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Incoming>;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::routes::Backend;

/// How long an endpoint may take to accept before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle connections kept per endpoint; more are closed when their request ends. At
/// least as many as clients send at once, or every burst closes connections and opens
/// new ones (with 32 here, a quarter of the requests at 64 clients paid a connect).
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused (hyper-util's
/// client's default), before the backend's own idle timeout is likely to race a request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug)]
pub(crate) enum Failure {
    /// The backend has no ready endpoint.
    NoEndpoints,
    /// Every endpoint refused or did not answer the connect.
    Unreachable,
    /// The exchange broke after the request went out.
    Exchange(hyper::Error),
}

struct Idle {
    sender: SendRequest<Incoming>,
    since: Instant,
}

#[derive(Default)]
pub(crate) struct Upstreams {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
}

impl Upstreams {
    /// Sends `request` to an endpoint of `backend`, trying them in turn while they
    /// refuse (each refusal counted by `connect_failed`). Returns the endpoint that
    /// answered and its response head; the body streams from it.
    pub(crate) async fn send(
        self: &Arc<Self>,
        backend: &Backend,
        mut request: Request<Incoming>,
        connect_failed: impl Fn(),
    ) -> Result<(SocketAddr, Response<UpstreamBody>), Failure> {
        if !backend.has_endpoints() {
            return Err(Failure::NoEndpoints);
        }
        // An upgraded connection belongs to its two ends and never returns to the pool.
        let upgrade = request.headers().contains_key(http::header::UPGRADE);
        for endpoint in backend.endpoints_in_turn() {
            loop {
                let (mut sender, connection) = match self.take_idle(endpoint) {
                    Some(sender) => (sender, None),
                    None => match connect(endpoint).await {
                        Ok((sender, connection)) => (sender, Some(connection)),
                        Err(why) => {
                            tracing::debug!(backend = %backend.name, %endpoint, "connect failed: {why}");
                            connect_failed();
                            break;
                        }
                    },
                };
                let fresh = connection.is_some();
                // A switch of protocols needs the connection's own upgrade handling from
                // the first byte of the answer on.
                let connection = match connection {
                    Some(connection) if upgrade => {
                        tokio::spawn(drive(connection, endpoint));
                        None
                    }
                    connection => connection,
                };
                // No deadline on the answer: a backend may rightly read a long upload
                // whole before it answers; the client decides how long to wait.
                let (connection, sent) =
                    exchange(sender.try_send_request(request), connection, endpoint).await;
                match sent {
                    Ok(response) => {
                        let closing = !upgrade && closes_after(&response);
                        let connection = match connection {
                            // A backend that closes after this answer (busybox httpd,
                            // CGI servers): its connection is driven by the response
                            // body in the client's task, with no task or pool of its own.
                            Some(connection) if closing => Some(connection),
                            Some(connection) => {
                                tokio::spawn(drive(connection, endpoint));
                                None
                            }
                            None => None,
                        };
                        if !upgrade && !closing {
                            self.keep_when_done(endpoint, sender);
                        }
                        let response = response.map(|body| UpstreamBody { body, connection });
                        return Ok((endpoint, response));
                    }
                    Err(mut error) => match error.take_message() {
                        // Closed before the request went out: nothing was sent, so it
                        // may go on another connection.
                        Some(unsent) => {
                            request = unsent;
                            if fresh {
                                tracing::debug!(backend = %backend.name, %endpoint, "a new connection closed at once");
                                connect_failed();
                                break;
                            }
                        }
                        None => return Err(Failure::Exchange(error.into_error())),
                    },
                }
            }
        }
        Err(Failure::Unreachable)
    }

    /// Closes the idle connections to endpoints that no backend has any more.
    pub(crate) fn keep_only(&self, endpoints: &HashSet<SocketAddr>) {
        lock(&self.idle).retain(|endpoint, _| endpoints.contains(endpoint));
    }

    fn take_idle(&self, endpoint: SocketAddr) -> Option<SendRequest<Incoming>> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(&endpoint)?;
        // The most recently used first: the least likely to have been closed.
        while let Some(Idle { sender, since }) = list.pop() {
            if sender.is_ready() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    /// Returns the connection to the pool once its exchange has ended (the response
    /// body read to its end); a connection that broke is dropped instead.
    fn keep_when_done(self: &Arc<Self>, endpoint: SocketAddr, mut sender: SendRequest<Incoming>) {
        // Weak: a stopped listener's pool must not live on in these tasks.
        let pool: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let Some(pool) = pool.upgrade() else {
                return;
            };
            let mut idle = lock(&pool.idle);
            let list = idle.entry(endpoint).or_default();
            list.retain(|i| !i.sender.is_closed() && i.since.elapsed() < IDLE_TIMEOUT);
            if list.len() < MAX_IDLE {
                list.push(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
        });
    }
}

async fn connect(endpoint: SocketAddr) -> Result<(SendRequest<Incoming>, Connection), String> {
    let stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    };
    let _ = stream.set_nodelay(true);
    hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())
}

/// Waits for the answer to a request sent on a connection, driving a fresh `connection`
/// (one no task drives yet) meanwhile. Gives the connection back unless it ended.
async fn exchange<F, T>(
    sent: F,
    mut connection: Option<Connection>,
    endpoint: SocketAddr,
) -> (Option<Connection>, T)
where
    F: Future<Output = T>,
{
    let mut sent = std::pin::pin!(sent);
    loop {
        let Some(driven) = connection.as_mut() else {
            return (None, sent.await);
        };
        tokio::select! {
            biased;
            answer = &mut sent => return (connection, answer),
            ended = driven => {
                if let Err(e) = ended {
                    tracing::debug!(%endpoint, "backend connection ended: {e}");
                }
                connection = None;
            }
        }
    }
}

/// Drives a backend connection in a task of its own (a pooled one, or one that switched
/// protocols: a WebSocket's 101 hands the connection over).
async fn drive(connection: Connection, endpoint: SocketAddr) {
    if let Err(e) = connection.with_upgrades().await {
        tracing::debug!(%endpoint, "backend connection ended: {e}");
    }
}

/// Whether the backend closes the connection after this answer (RFC 9112 section 9.6).
fn closes_after<B>(response: &Response<B>) -> bool {
    let says = |token: &str| {
        response
            .headers()
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if response.version() == http::Version::HTTP_10 {
        !says("keep-alive")
    } else {
        says("close")
    }
}

/// A backend's answer body; when the backend closes after it, it also drives the
/// connection it comes on, from the client's task.
pub(crate) struct UpstreamBody {
    body: Incoming,
    connection: Option<Connection>,
}

impl hyper::body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(connection) = this.connection.as_mut() {
            if let Poll::Ready(ended) = Pin::new(connection).poll(cx) {
                if let Err(e) = ended {
                    tracing::debug!("backend connection ended: {e}");
                }
                this.connection = None;
            }
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
