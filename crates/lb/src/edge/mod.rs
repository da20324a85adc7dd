//! A load-balancer instance: the data plane of a cloud load balancer ("amphora"), run
//! in its own network namespace by the platform. It serves every listener of its
//! configuration on the listener's address, whether or not that address is on one of its
//! interfaces right now: the platform gives the addresses to the active instance of a
//! pair and takes them from the other, so both serve alike and a failover only moves
//! addresses.
//!
//! A listener is forwarded by the kernel (nftables DNAT; the client's address reaches
//! the backend) unless it sends a PROXY protocol header or terminates TLS, which a proxy
//! in user space does. Backends are health-checked either way; the rules follow the
//! backends that are up. A listener with `http` routes requests by host and path
//! instead (an Ingress; see [`crate::http`]).

pub mod config;
pub mod rules;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::http::{HttpListener, Site};
use crate::metrics::LbMetrics;
use crate::pool::BackendPool;
use crate::{admin, health, Balance, LbConfig, LbError, TcpBalancer};
pub use config::{
    BackendCheck, ConfigError, EdgeConfig, HostCertificate, HttpBackend, HttpConfig, HttpRoute,
    Listener, PathType, Protocol, Tls,
};

/// Waits this long after a change before loading rules, so that a burst of health
/// transitions becomes one load.
const RULES_DEBOUNCE: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Listen(#[from] LbError),
    #[error("listener {listener}: TLS: {reason}")]
    Tls { listener: String, reason: String },
    #[error("loading the rules: {0}")]
    Rules(String),
    #[error("listening for SIGHUP: {0}")]
    Signal(#[source] std::io::Error),
}

enum Running {
    /// Kernel-forwarded: the health checker and the task that wakes the rules.
    Forwarded {
        listener: Listener,
        pool: Arc<BackendPool>,
        tasks: Vec<JoinHandle<()>>,
    },
    Proxied {
        listener: Listener,
        balancer: TcpBalancer,
    },
    /// Routed by host and path; its routes and certificates change in place.
    Http {
        listener: Listener,
        server: HttpListener,
    },
}

impl Running {
    fn listener(&self) -> &Listener {
        match self {
            Running::Forwarded { listener, .. }
            | Running::Proxied { listener, .. }
            | Running::Http { listener, .. } => listener,
        }
    }

    async fn stop(self) {
        match self {
            Running::Forwarded { pool, tasks, .. } => {
                for task in tasks {
                    task.abort();
                }
                pool.forget_metrics();
            }
            Running::Proxied { balancer, .. } => {
                let pool = Arc::clone(balancer.pool());
                balancer.shutdown().await;
                pool.forget_metrics();
            }
            Running::Http { server, .. } => server.shutdown().await,
        }
    }
}

/// What the rules are made from, shared with the task that loads them.
#[derive(Default)]
struct Snapshot {
    config: EdgeConfig,
    pools: HashMap<String, Arc<BackendPool>>,
    /// The last load's error, if it failed (the instance is then not ready).
    error: Option<String>,
    /// The script last loaded.
    loaded: String,
}

pub struct Edge {
    metrics: Arc<LbMetrics>,
    listeners: Vec<Running>,
    snapshot: Arc<Mutex<Snapshot>>,
    wake_rules: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
    admin_addr: Option<SocketAddr>,
}

impl Edge {
    /// Starts serving `config`; the rules are loaded before this returns.
    pub async fn start(config: EdgeConfig) -> Result<Edge, EdgeError> {
        config.validate()?;
        let metrics = Arc::new(LbMetrics::new());
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let wake_rules = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let mut admin_addr = None;
        if let Some(listen) = config.admin_listen {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|source| LbError::Listen {
                    addr: listen,
                    source,
                })?;
            admin_addr = listener.local_addr().ok();
            let state = Arc::clone(&snapshot);
            let ready: admin::Readiness = Arc::new(move || match &lock(&state).error {
                None => Ok(()),
                Some(e) => Err(format!("the rules are not loaded: {e}")),
            });
            tasks.push(tokio::spawn(admin::serve(
                listener,
                ready,
                Arc::clone(&metrics),
            )));
        }
        let mut edge = Edge {
            metrics,
            listeners: Vec::new(),
            snapshot,
            wake_rules,
            tasks,
            admin_addr,
        };
        edge.apply(config).await?;
        edge.load_rules().await?;
        let (snapshot, metrics, wake) = (
            Arc::clone(&edge.snapshot),
            Arc::clone(&edge.metrics),
            Arc::clone(&edge.wake_rules),
        );
        edge.tasks.push(tokio::spawn(async move {
            loop {
                wake.notified().await;
                tokio::time::sleep(RULES_DEBOUNCE).await;
                sync_rules(&snapshot, &metrics).await;
            }
        }));
        Ok(edge)
    }

    /// Where `/healthz` and `/metrics` are served, if they are.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Serves `config` from now on. A listener whose backends alone changed (or, routing
    /// HTTP, its routes, endpoints and certificates) keeps its socket, its open
    /// connections and its backends' health; one that changed otherwise is restarted;
    /// one that is gone stops. Certificates that cannot be read refuse the whole
    /// configuration before anything changes.
    pub async fn reload(&mut self, config: EdgeConfig) -> Result<(), EdgeError> {
        config.validate()?;
        self.apply(config).await?;
        self.load_rules().await
    }

    /// Loads the rules now, so that what returns has taken effect.
    async fn load_rules(&self) -> Result<(), EdgeError> {
        sync_rules(&self.snapshot, &self.metrics).await;
        match lock(&self.snapshot).error.clone() {
            Some(error) => Err(EdgeError::Rules(error)),
            None => Ok(()),
        }
    }

    async fn apply(&mut self, config: EdgeConfig) -> Result<(), EdgeError> {
        let mut prepared = Prepared::read(&config)?;
        let mut kept = Vec::new();
        for running in std::mem::take(&mut self.listeners) {
            let same = config
                .listeners
                .iter()
                .find(|l| l.name == running.listener().name)
                .filter(|l| l.same_front(running.listener()));
            match (same, running) {
                (Some(wanted), Running::Forwarded { pool, tasks, .. }) => {
                    pool.set_backends(&addresses(wanted));
                    kept.push(Running::Forwarded {
                        listener: wanted.clone(),
                        pool,
                        tasks,
                    });
                }
                (Some(wanted), Running::Proxied { balancer, .. }) => {
                    balancer.set_backends(&addresses(wanted));
                    kept.push(Running::Proxied {
                        listener: wanted.clone(),
                        balancer,
                    });
                }
                (Some(wanted), Running::Http { server, .. }) => {
                    if let Some(site) = prepared.site(wanted)? {
                        server.replace_site(site);
                    }
                    kept.push(Running::Http {
                        listener: wanted.clone(),
                        server,
                    });
                }
                (None, running) => running.stop().await,
            }
        }
        for wanted in &config.listeners {
            if kept.iter().any(|r| r.listener().name == wanted.name) {
                continue;
            }
            kept.push(self.start_listener(wanted, &mut prepared).await?);
        }
        let pools = kept
            .iter()
            .filter_map(|r| match r {
                Running::Forwarded { listener, pool, .. } => {
                    Some((listener.name.clone(), Arc::clone(pool)))
                }
                Running::Proxied { listener, balancer } => {
                    Some((listener.name.clone(), Arc::clone(balancer.pool())))
                }
                Running::Http { .. } => None,
            })
            .collect();
        self.listeners = kept;
        let mut snapshot = lock(&self.snapshot);
        snapshot.config = config;
        snapshot.pools = pools;
        Ok(())
    }

    async fn start_listener(
        &self,
        listener: &Listener,
        prepared: &mut Prepared,
    ) -> Result<Running, EdgeError> {
        if let Some(site) = prepared.site(listener)? {
            let server = HttpListener::start(listener, site, Arc::clone(&self.metrics)).await?;
            tracing::info!(listener = %listener.name, address = %listener.address, port = listener.port, "routing HTTP");
            return Ok(Running::Http {
                listener: listener.clone(),
                server,
            });
        }
        let backends = addresses(listener);
        if listener.forwarded() {
            let pool = Arc::new(BackendPool::new(
                &listener.name,
                &backends,
                Balance::RoundRobin,
                Arc::clone(&self.metrics),
            ));
            let mut tasks = Vec::new();
            // UDP has nothing to connect to: without an HTTP check its backends stay up.
            if listener.protocol == Protocol::Tcp || listener.health.http_port.is_some() {
                tasks.push(tokio::spawn(health::run(
                    Arc::clone(&pool),
                    listener.health.health_check(),
                )));
            }
            let (watched, wake) = (Arc::clone(&pool), Arc::clone(&self.wake_rules));
            tasks.push(tokio::spawn(async move {
                loop {
                    watched.changed.notified().await;
                    wake.notify_one();
                }
            }));
            tracing::info!(listener = %listener.name, address = %listener.address, port = listener.port, protocol = listener.protocol.as_str(), backends = backends.len(), "forwarding");
            return Ok(Running::Forwarded {
                listener: listener.clone(),
                pool,
                tasks,
            });
        }
        let mut config = LbConfig::new(
            SocketAddr::from((listener.address, listener.port)),
            backends,
        );
        config.name = Some(listener.name.clone());
        config.health = listener.health.health_check();
        config.proxy_protocol = listener.proxy_protocol;
        config.tls = prepared.tls(listener)?;
        let balancer = TcpBalancer::start_with_metrics(config, Arc::clone(&self.metrics)).await?;
        tracing::info!(listener = %listener.name, address = %listener.address, port = listener.port, proxy_protocol = ?listener.proxy_protocol, tls = listener.tls.is_some(), "proxying");
        Ok(Running::Proxied {
            listener: listener.clone(),
            balancer,
        })
    }

    /// Stops every listener and removes the rules.
    pub async fn shutdown(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        for running in std::mem::take(&mut self.listeners) {
            running.stop().await;
        }
        let removed =
            tokio::task::spawn_blocking(|| korvet_nft::delete_table(None, "ip", rules::TABLE))
                .await;
        if let Ok(Err(e)) = removed {
            tracing::warn!("removing the load balancer's rules: {e}");
        }
    }

    /// The metrics in Prometheus text format.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}

/// Runs the instance that the configuration file at `path` describes until `shutdown`
/// resolves, reading the file again on every SIGHUP (a configuration that cannot be
/// read or served is refused, and the instance serves on as it was). `admin_listen`
/// overrides the file's admin address (each instance of a pair has its own).
pub async fn serve_file(
    path: &std::path::Path,
    admin_listen: Option<SocketAddr>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), EdgeError> {
    let load = || -> Result<EdgeConfig, EdgeError> {
        let mut config = EdgeConfig::load(path)?;
        if admin_listen.is_some() {
            config.admin_listen = admin_listen;
        }
        Ok(config)
    };
    let mut edge = Edge::start(load()?).await?;
    if let Some(admin) = edge.admin_addr() {
        tracing::info!(%admin, "serving /healthz and /metrics");
    }
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(EdgeError::Signal)?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = hangups.recv() => {
                let reloaded = match load() {
                    Ok(config) => edge.reload(config).await,
                    Err(e) => Err(e),
                };
                match reloaded {
                    Ok(()) => tracing::info!(config = %path.display(), "configuration reloaded"),
                    Err(e) => tracing::error!(error = %e, "the new configuration is refused; serving on as before"),
                }
            }
            _ = &mut shutdown => break,
        }
    }
    edge.shutdown().await;
    Ok(())
}

impl Drop for Edge {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the listeners of a configuration need that can fail to load (certificates and
/// keys), read before anything running changes: a configuration that cannot be served
/// leaves the old one serving.
struct Prepared {
    sites: HashMap<String, Site>,
    tls: HashMap<String, Arc<rustls::ServerConfig>>,
}

impl Prepared {
    fn read(config: &EdgeConfig) -> Result<Prepared, EdgeError> {
        let mut prepared = Prepared {
            sites: HashMap::new(),
            tls: HashMap::new(),
        };
        for listener in &config.listeners {
            if let Some(http) = &listener.http {
                let site = load_site(&listener.name, http)?;
                prepared.sites.insert(listener.name.clone(), site);
            }
            if let Some(tls) = &listener.tls {
                let tls = Arc::new(tls_config(&listener.name, tls)?);
                prepared.tls.insert(listener.name.clone(), tls);
            }
        }
        Ok(prepared)
    }

    /// The site of an HTTP listener (`None` for the others).
    fn site(&mut self, listener: &Listener) -> Result<Option<Site>, EdgeError> {
        let Some(http) = &listener.http else {
            return Ok(None);
        };
        match self.sites.remove(&listener.name) {
            Some(site) => Ok(Some(site)),
            None => load_site(&listener.name, http).map(Some),
        }
    }

    /// The TLS configuration of a TLS-terminating TCP listener (`None` for the others).
    fn tls(&mut self, listener: &Listener) -> Result<Option<Arc<rustls::ServerConfig>>, EdgeError> {
        let Some(tls) = &listener.tls else {
            return Ok(None);
        };
        match self.tls.remove(&listener.name) {
            Some(config) => Ok(Some(config)),
            None => Ok(Some(Arc::new(tls_config(&listener.name, tls)?))),
        }
    }
}

fn load_site(listener: &str, http: &HttpConfig) -> Result<Site, EdgeError> {
    Site::load(http).map_err(|reason| EdgeError::Tls {
        listener: listener.to_string(),
        reason,
    })
}

fn addresses(listener: &Listener) -> Vec<SocketAddr> {
    listener
        .backends
        .iter()
        .map(|b| SocketAddr::V4(*b))
        .collect()
}

fn lock(state: &Mutex<Snapshot>) -> std::sync::MutexGuard<'_, Snapshot> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// One load at a time: two could otherwise finish out of order, an older rule set last.
static LOADING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Loads the rules the snapshot asks for, unless they are loaded already.
async fn sync_rules(snapshot: &Mutex<Snapshot>, metrics: &LbMetrics) {
    let _one_at_a_time = LOADING.lock().await;
    let script = {
        let state = lock(snapshot);
        let up = state
            .pools
            .iter()
            .map(|(name, pool)| (name.clone(), pool.up_addresses()))
            .collect();
        let script = rules::render(&state.config, &up);
        if script == state.loaded {
            return;
        }
        script
    };
    let outcome = korvet_nft::apply_blocking(None, script.clone()).await;
    let mut state = lock(snapshot);
    match outcome {
        Ok(()) => {
            metrics
                .rule_loads
                .get_or_create(&crate::metrics::OutcomeLabels { outcome: "ok" })
                .inc();
            state.error = None;
            state.loaded = script;
        }
        Err(e) => {
            metrics
                .rule_loads
                .get_or_create(&crate::metrics::OutcomeLabels { outcome: "error" })
                .inc();
            tracing::error!("loading the load balancer's rules failed: {e}");
            state.error = Some(e.to_string());
        }
    }
}

/// The rustls configuration of a TLS-terminating listener.
fn tls_config(listener: &str, tls: &Tls) -> Result<rustls::ServerConfig, EdgeError> {
    let bad = |reason: String| EdgeError::Tls {
        listener: listener.to_string(),
        reason,
    };
    let (certs, key) = crate::tls::read_key_pair(&tls.cert_file, &tls.key_file).map_err(bad)?;
    // No ALPN: the bytes inside are the backend's protocol, which this proxy does not know.
    rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(format!("the certificate and key do not go together: {e}")))
}
