//! Prometheus metrics of a balancer process, per listener and backend where it makes
//! sense (a `korvet lb serve` has one listener, a load-balancer instance many).

use std::collections::HashSet;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BackendLabels {
    pub listener: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerLabels {
    pub listener: String,
}

/// One HTTP request's series: the route's backend (empty when no route took the
/// request) and the status class (`2xx`, `5xx`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpRequestLabels {
    pub listener: String,
    pub backend: String,
    pub code: &'static str,
}

/// The handles of one listener's own series.
#[derive(Clone, Debug, Default)]
pub struct ListenerMetrics {
    /// Every connection accepted from a client.
    pub accepted: Counter,
    /// Accepted connections closed because no backend could take them.
    pub unserved: Counter,
}

/// The handles of one backend's series; clones share the same values.
#[derive(Clone, Debug, Default)]
pub struct BackendMetrics {
    pub connections: Counter,
    pub active: Gauge<i64, AtomicI64>,
    pub up: Gauge<i64, AtomicI64>,
    /// Bytes from clients to the backend.
    pub bytes_in: Counter,
    /// Bytes from the backend to clients.
    pub bytes_out: Counter,
    pub connect_failures: Counter,
}

pub struct LbMetrics {
    registry: Mutex<Registry>,
    connections: Family<BackendLabels, Counter>,
    active: Family<BackendLabels, Gauge<i64, AtomicI64>>,
    up: Family<BackendLabels, Gauge<i64, AtomicI64>>,
    bytes_in: Family<BackendLabels, Counter>,
    bytes_out: Family<BackendLabels, Counter>,
    connect_failures: Family<BackendLabels, Counter>,
    accepted: Family<ListenerLabels, Counter>,
    unserved: Family<ListenerLabels, Counter>,
    /// Rule sets loaded into the kernel (load-balancer instances), by outcome.
    pub rule_loads: Family<OutcomeLabels, Counter>,
    http_requests: Family<HttpRequestLabels, Counter>,
    /// Per HTTP backend (a Service port), not per endpoint: endpoints are pods that come
    /// and go, and their addresses would grow the series without bound.
    http_connect_failures: Family<BackendLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

impl LbMetrics {
    pub fn new() -> Self {
        let connections = Family::<BackendLabels, Counter>::default();
        let active = Family::<BackendLabels, Gauge<i64, AtomicI64>>::default();
        let up = Family::<BackendLabels, Gauge<i64, AtomicI64>>::default();
        let bytes_in = Family::<BackendLabels, Counter>::default();
        let bytes_out = Family::<BackendLabels, Counter>::default();
        let connect_failures = Family::<BackendLabels, Counter>::default();
        let accepted = Family::<ListenerLabels, Counter>::default();
        let unserved = Family::<ListenerLabels, Counter>::default();
        let rule_loads = Family::<OutcomeLabels, Counter>::default();
        let http_requests = Family::<HttpRequestLabels, Counter>::default();
        let http_connect_failures = Family::<BackendLabels, Counter>::default();
        let mut registry = Registry::with_prefix("korvet_lb");
        registry.register(
            "backend_connections",
            "Client connections proxied to the backend",
            connections.clone(),
        );
        registry.register(
            "backend_active_connections",
            "Connections open to the backend now",
            active.clone(),
        );
        registry.register(
            "backend_up",
            "1 if the backend passes its health checks, else 0",
            up.clone(),
        );
        registry.register(
            "backend_bytes_in",
            "Bytes sent from clients to the backend",
            bytes_in.clone(),
        );
        registry.register(
            "backend_bytes_out",
            "Bytes sent from the backend to clients",
            bytes_out.clone(),
        );
        registry.register(
            "backend_connect_failures",
            "Attempts to connect to the backend for a client that failed",
            connect_failures.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted",
            accepted.clone(),
        );
        registry.register(
            "unserved_connections",
            "Client connections closed because no backend could take them",
            unserved.clone(),
        );
        registry.register(
            "rule_loads",
            "nftables rule sets of kernel-forwarded listeners loaded, by outcome",
            rule_loads.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by the backend of their route and status class",
            http_requests.clone(),
        );
        registry.register(
            "http_backend_connect_failures",
            "Connections to an endpoint of the HTTP backend that failed (the next was tried)",
            http_connect_failures.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            connections,
            active,
            up,
            bytes_in,
            bytes_out,
            connect_failures,
            accepted,
            unserved,
            rule_loads,
            http_requests,
            http_connect_failures,
        }
    }

    /// The series of `listener` itself, created when first asked for.
    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        ListenerMetrics {
            accepted: self.accepted.get_or_create_owned(&labels),
            unserved: self.unserved.get_or_create_owned(&labels),
        }
    }

    /// The series of `backend` of `listener`, created when first asked for.
    pub fn backend(&self, listener: &str, backend: &str) -> BackendMetrics {
        let labels = BackendLabels {
            listener: listener.to_owned(),
            backend: backend.to_owned(),
        };
        BackendMetrics {
            connections: self.connections.get_or_create_owned(&labels),
            active: self.active.get_or_create_owned(&labels),
            up: self.up.get_or_create_owned(&labels),
            bytes_in: self.bytes_in.get_or_create_owned(&labels),
            bytes_out: self.bytes_out.get_or_create_owned(&labels),
            connect_failures: self.connect_failures.get_or_create_owned(&labels),
        }
    }

    /// Stops exporting a listener that was removed.
    pub fn remove_listener(&self, listener: &str) {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        self.accepted.remove(&labels);
        self.unserved.remove(&labels);
    }

    /// Stops exporting a backend that left its pool.
    pub fn remove_backend(&self, listener: &str, backend: &str) {
        let labels = BackendLabels {
            listener: listener.to_owned(),
            backend: backend.to_owned(),
        };
        self.connections.remove(&labels);
        self.active.remove(&labels);
        self.up.remove(&labels);
        self.bytes_in.remove(&labels);
        self.bytes_out.remove(&labels);
        self.connect_failures.remove(&labels);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let registry = lock(&self.registry);
        let mut out = String::new();
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The HTTP series of one listener; remembers which it made so that [`HttpMetrics::forget`]
/// can remove them (a family cannot be searched by label).
pub(crate) struct HttpMetrics {
    metrics: Arc<LbMetrics>,
    listener: String,
    requests: Mutex<HashSet<(String, &'static str)>>,
    connect_failures: Mutex<HashSet<String>>,
}

impl HttpMetrics {
    pub(crate) fn new(metrics: Arc<LbMetrics>, listener: &str) -> Self {
        Self {
            metrics,
            listener: listener.to_owned(),
            requests: Mutex::default(),
            connect_failures: Mutex::default(),
        }
    }

    /// Counts a request answered with `status`; `backend` is empty when no route took it.
    pub(crate) fn request(&self, backend: &str, status: http::StatusCode) {
        let code = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let labels = HttpRequestLabels {
            listener: self.listener.clone(),
            backend: backend.to_owned(),
            code,
        };
        self.metrics.http_requests.get_or_create(&labels).inc();
        lock(&self.requests).insert((labels.backend, code));
    }

    pub(crate) fn connect_failure(&self, backend: &str) {
        let labels = BackendLabels {
            listener: self.listener.clone(),
            backend: backend.to_owned(),
        };
        self.metrics
            .http_connect_failures
            .get_or_create(&labels)
            .inc();
        lock(&self.connect_failures).insert(labels.backend);
    }

    /// Stops exporting the listener's series (it was removed).
    pub(crate) fn forget(&self) {
        self.metrics.remove_listener(&self.listener);
        for (backend, code) in lock(&self.requests).drain() {
            self.metrics.http_requests.remove(&HttpRequestLabels {
                listener: self.listener.clone(),
                backend,
                code,
            });
        }
        for backend in lock(&self.connect_failures).drain() {
            self.metrics.http_connect_failures.remove(&BackendLabels {
                listener: self.listener.clone(),
                backend,
            });
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for LbMetrics {
    fn default() -> Self {
        Self::new()
    }
}
