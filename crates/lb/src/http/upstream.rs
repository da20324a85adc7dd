//! HTTP/1.1 connections to backends' endpoints (pods speak it), kept open between
//! requests. Our own small pool rather than hyper-util's client, which hides the request
//! when a connect fails: here a refused endpoint gives the request back, untouched, for
//! the next endpoint of the backend.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
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
    ) -> Result<(SocketAddr, Response<Incoming>), Failure> {
        if !backend.has_endpoints() {
            return Err(Failure::NoEndpoints);
        }
        // An upgraded connection belongs to its two ends and never returns to the pool.
        let reusable = !request.headers().contains_key(http::header::UPGRADE);
        for endpoint in backend.endpoints_in_turn() {
            loop {
                let (mut sender, fresh) = match self.take_idle(endpoint) {
                    Some(sender) => (sender, false),
                    None => match connect(endpoint).await {
                        Ok(sender) => (sender, true),
                        Err(why) => {
                            tracing::debug!(backend = %backend.name, %endpoint, "connect failed: {why}");
                            connect_failed();
                            break;
                        }
                    },
                };
                // No deadline on the answer: a backend may rightly read a long upload
                // whole before it answers; the client decides how long to wait.
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        if reusable {
                            self.keep_when_done(endpoint, sender);
                        }
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

async fn connect(endpoint: SocketAddr) -> Result<SendRequest<Incoming>, String> {
    let stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        // Upgrades allowed: a WebSocket's 101 hands the connection over.
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(%endpoint, "backend connection ended: {e}");
        }
    });
    Ok(sender)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
