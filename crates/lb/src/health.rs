//! Active health checks: a TCP connect to every backend every interval.

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{timeout, MissedTickBehavior};

use crate::pool::{Backend, BackendPool, Transition};
use crate::HealthCheck;

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
            checks.spawn(async move {
                let ok = matches!(
                    timeout(check_timeout, TcpStream::connect(backend.addr)).await,
                    Ok(Ok(_))
                );
                (backend, ok)
            });
        }
        while let Some(result) = checks.join_next().await {
            if let Ok((backend, ok)) = result {
                apply(&backend, ok, &check);
            }
        }
    }
}

fn apply(backend: &Backend, ok: bool, check: &HealthCheck) {
    match backend.record_check(ok, check.rise.max(1), check.fall.max(1)) {
        Transition::Up => tracing::info!(backend = %backend.addr, "backend is up"),
        Transition::Down => tracing::warn!(
            backend = %backend.addr,
            "backend is down: health check connect failed"
        ),
        Transition::None => {}
    }
}
