//! The balancer: a listener, a backend pool, its health checker and, optionally, the
//! admin listener, running as tasks that end when the balancer is shut down or dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::metrics::LbMetrics;
use crate::pool::{BackendPool, BackendStatus};
use crate::{admin, health, proxy, LbConfig, LbError};

pub struct TcpBalancer {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    pool: Arc<BackendPool>,
    metrics: Arc<LbMetrics>,
    tasks: Vec<JoinHandle<()>>,
}

impl TcpBalancer {
    /// Binds the listeners and starts serving; returns once both accept connections.
    pub async fn start(config: LbConfig) -> Result<Self, LbError> {
        if config.health.interval.is_zero() {
            return Err(LbError::Config(
                "the health check interval must be above zero".into(),
            ));
        }
        let listener = bind(config.listen).await?;
        let local_addr = listener.local_addr().map_err(|source| LbError::Listen {
            addr: config.listen,
            source,
        })?;
        let admin_listener = match config.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let metrics = Arc::new(LbMetrics::new());
        let pool = Arc::new(BackendPool::new(
            &config.backends,
            config.balance,
            Arc::clone(&metrics),
        ));
        let mut tasks = vec![
            tokio::spawn(health::run(Arc::clone(&pool), config.health)),
            tokio::spawn(accept_loop(
                listener,
                Arc::clone(&pool),
                Arc::clone(&metrics),
                config.connect_timeout,
            )),
        ];
        let mut admin_addr = None;
        if let Some(admin_listener) = admin_listener {
            admin_addr = admin_listener.local_addr().ok();
            tasks.push(tokio::spawn(admin::serve(
                admin_listener,
                Arc::clone(&pool),
                Arc::clone(&metrics),
            )));
        }
        tracing::info!(listen = %local_addr, backends = config.backends.len(), "load balancer serving");
        Ok(Self {
            local_addr,
            admin_addr,
            pool,
            metrics,
            tasks,
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/healthz` and `/metrics` are served, if they are.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Replaces the backends; see [`BackendPool::set_backends`].
    pub fn set_backends(&self, backends: &[SocketAddr]) {
        self.pool.set_backends(backends);
    }

    pub fn backends(&self) -> Vec<BackendStatus> {
        self.pool.status()
    }

    pub fn pool(&self) -> &Arc<BackendPool> {
        &self.pool
    }

    /// The metrics in Prometheus text format (what `/metrics` serves).
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    /// Stops accepting, drops open connections, and waits until every task has ended.
    pub async fn shutdown(mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        tracing::info!(listen = %self.local_addr, "load balancer stopped");
    }
}

impl Drop for TcpBalancer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, LbError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| LbError::Listen { addr, source })
}

async fn accept_loop(
    listener: TcpListener,
    pool: Arc<BackendPool>,
    metrics: Arc<LbMetrics>,
    connect_timeout: Duration,
) {
    korvet_serving::accept_loop(listener, "load balancer", move |client, peer| {
        metrics.accepted.inc();
        let served = proxy::serve(
            client,
            peer,
            Arc::clone(&pool),
            Arc::clone(&metrics),
            connect_timeout,
        );
        async move {
            served.await;
            Ok(())
        }
    })
    .await
}
