//! Active health checks: a TCP connect to every backend, or an HTTP GET to a port of its
//! host, every interval.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{timeout, MissedTickBehavior};

use crate::pool::{Backend, BackendPool, Transition};
use crate::{HealthCheck, HttpCheck};

/// Checks the pool's backends until the task is aborted. The pool is read on every
/// round, so backends set at runtime are checked from the next round on.
pub(crate) async fn run(pool: Arc<BackendPool>, check: HealthCheck) {
    let interval = check.interval.max(std::time::Duration::from_millis(1));
    let check_timeout = check.timeout.min(interval);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut checks = JoinSet::new();
        for backend in pool.backends().iter() {
            let backend = Arc::clone(backend);
            let http = check.http.clone();
            checks.spawn(async move {
                let ok = match &http {
                    None => matches!(
                        timeout(check_timeout, TcpStream::connect(backend.addr)).await,
                        Ok(Ok(_))
                    ),
                    Some(http) => http_ok(backend.addr, http, check_timeout).await,
                };
                (backend, ok)
            });
        }
        let mut changed = false;
        while let Some(result) = checks.join_next().await {
            if let Ok((backend, ok)) = result {
                changed |= apply(&backend, ok, &check);
            }
        }
        if changed {
            pool.changed.notify_one();
        }
    }
}

/// Whether `GET http://HOST:port/path` answers 200 within `limit` (HOST: the backend's).
async fn http_ok(backend: SocketAddr, check: &HttpCheck, limit: Duration) -> bool {
    let target = SocketAddr::new(backend.ip(), check.port);
    let attempt = async {
        let mut stream = TcpStream::connect(target).await?;
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: korvet-lb\r\n\r\n",
            check.path, target
        );
        stream.write_all(request.as_bytes()).await?;
        // The status line is all that counts: "HTTP/1.x 200 ...".
        let mut head = [0u8; 12];
        let mut read = 0;
        while read < head.len() {
            let n = stream.read(&mut head[read..]).await?;
            if n == 0 {
                break;
            }
            read += n;
        }
        Ok::<bool, std::io::Error>(
            read == head.len() && head.starts_with(b"HTTP/1.") && &head[8..12] == b" 200",
        )
    };
    matches!(timeout(limit, attempt).await, Ok(Ok(true)))
}

/// Counts one result; whether the backend went up or down.
fn apply(backend: &Backend, ok: bool, check: &HealthCheck) -> bool {
    match backend.record_check(ok, check.rise.max(1), check.fall.max(1)) {
        Transition::Up => {
            tracing::info!(backend = %backend.addr, "backend is up");
            true
        }
        Transition::Down => {
            tracing::warn!(
                backend = %backend.addr,
                "backend is down: its health check failed"
            );
            true
        }
        Transition::None => false,
    }
}
