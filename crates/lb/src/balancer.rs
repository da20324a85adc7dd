//! The balancer: a listener, a backend pool, its health checker and, optionally, the
//! admin listener, running as tasks that end when the balancer is shut down or dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::metrics::LbMetrics;
use crate::pool::{BackendPool, BackendStatus};
use crate::proxy_protocol::{self, Version};
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
        Self::start_with_metrics(config, Arc::new(LbMetrics::new())).await
    }

    /// [`TcpBalancer::start`], counting into `metrics` (shared by the listeners of one
    /// process).
    pub async fn start_with_metrics(
        config: LbConfig,
        metrics: Arc<LbMetrics>,
    ) -> Result<Self, LbError> {
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
        let name = config
            .name
            .clone()
            .unwrap_or_else(|| local_addr.to_string());
        let pool = Arc::new(BackendPool::new(
            &name,
            &config.backends,
            config.balance,
            Arc::clone(&metrics),
        ));
        let accept = Accept {
            pool: Arc::clone(&pool),
            connect_timeout: config.connect_timeout,
            proxy_protocol: config.proxy_protocol,
            tls: config.tls.clone().map(tokio_rustls::TlsAcceptor::from),
        };
        let mut tasks = vec![
            tokio::spawn(health::run(Arc::clone(&pool), config.health.clone())),
            tokio::spawn(accept_loop(
                listener,
                pool.listener_metrics.accepted.clone(),
                move |client, peer| accept.clone().serve(client, peer),
            )),
        ];
        let mut admin_addr = None;
        if let Some(admin_listener) = admin_listener {
            admin_addr = admin_listener.local_addr().ok();
            let ready_pool = Arc::clone(&pool);
            let ready: admin::Readiness = Arc::new(move || {
                if ready_pool.any_up() {
                    Ok(())
                } else {
                    Err("no backend is up".into())
                }
            });
            tasks.push(tokio::spawn(admin::serve(
                admin_listener,
                ready,
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

pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, LbError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| LbError::Listen { addr, source })
}

/// What a listener does with each accepted client.
#[derive(Clone)]
struct Accept {
    pool: Arc<BackendPool>,
    connect_timeout: Duration,
    proxy_protocol: Option<Version>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Accept {
    async fn serve(self, client: TcpStream, peer: SocketAddr) {
        let _ = client.set_nodelay(true);
        // The address the client asked for (a VIP), as the PROXY header names it.
        let local = client.local_addr().ok();
        let header = match (self.proxy_protocol, local) {
            (Some(version), Some(local)) => Some(proxy_protocol::encode(version, peer, local)),
            _ => None,
        };
        match &self.tls {
            None => {
                proxy::serve(client, peer, header, self.pool, self.connect_timeout).await;
            }
            Some(acceptor) => {
                if let Some(tls) = crate::tls::accept(acceptor, client, peer).await {
                    proxy::serve(tls, peer, header, self.pool, self.connect_timeout).await
                }
            }
        }
    }
}

/// Accepts clients until the task is aborted, serving each with `serve` on a task of its
/// own, and counting them in `accepted`.
pub(crate) async fn accept_loop<F, Fut>(listener: TcpListener, accepted: Counter, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    korvet_serving::accept_loop(listener, "load balancer", move |client, peer| {
        accepted.inc();
        let served = serve(client, peer);
        async move {
            served.await;
            Ok(())
        }
    })
    .await
}
