//! `/healthz` and `/metrics` (Prometheus text) of the node agent.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub struct Metrics {
    registry: Registry,
    pub lease_renewals: Counter,
    pub status_updates: Counter,
    pub errors: Counter,
    /// 1 once the Node is registered and reporting Ready.
    pub ready: Gauge,
    /// Time to build and load the network policy rules.
    pub netpol_sync_duration: Histogram,
    pub netpol_policies: Gauge,
    pub netpol_sync_errors: Counter,
    /// Service proxy: time to render and apply one nft transaction.
    pub proxy_sync_duration: Histogram,
    /// Service ports with rules (ClusterIP, NodePort, external IPs).
    pub proxy_rules_services: Gauge,
    pub proxy_rules_endpoints: Gauge,
    pub proxy_sync_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("korvet_node");
        let lease_renewals = Counter::default();
        let status_updates = Counter::default();
        let errors = Counter::default();
        let ready = Gauge::default();
        registry.register(
            "lease_renewals",
            "Node lease renewals that succeeded",
            lease_renewals.clone(),
        );
        registry.register(
            "status_updates",
            "Node status updates that succeeded",
            status_updates.clone(),
        );
        registry.register(
            "api_errors",
            "Requests to the API server that failed (they are retried)",
            errors.clone(),
        );
        registry.register("ready", "Whether the node reports Ready", ready.clone());
        let netpol_sync_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let netpol_policies = Gauge::default();
        let netpol_sync_errors = Counter::default();
        registry.register(
            "netpol_sync_duration_seconds",
            "Time to compute and load the network policy rules",
            netpol_sync_duration.clone(),
        );
        registry.register(
            "netpol_policies",
            "NetworkPolicies in the cluster",
            netpol_policies.clone(),
        );
        registry.register(
            "netpol_sync_errors",
            "Network policy rule loads that failed (they are retried)",
            netpol_sync_errors.clone(),
        );
        let proxy_sync_duration = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        let proxy_rules_services = Gauge::default();
        let proxy_rules_endpoints = Gauge::default();
        let proxy_sync_errors = Counter::default();
        registry.register(
            "proxy_sync_duration_seconds",
            "Time the service proxy took to render and apply its nft rules",
            proxy_sync_duration.clone(),
        );
        registry.register(
            "proxy_rules_services",
            "Service ports the service proxy has rules for",
            proxy_rules_services.clone(),
        );
        registry.register(
            "proxy_rules_endpoints",
            "Endpoints the service proxy's rules send traffic to",
            proxy_rules_endpoints.clone(),
        );
        registry.register(
            "proxy_sync_errors",
            "nft transactions of the service proxy that failed (retried in full)",
            proxy_sync_errors.clone(),
        );
        Self {
            registry,
            lease_renewals,
            status_updates,
            errors,
            ready,
            netpol_sync_duration,
            netpol_policies,
            netpol_sync_errors,
            proxy_sync_duration,
            proxy_rules_services,
            proxy_rules_endpoints,
            proxy_sync_errors,
        }
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        text
    }
}

fn reply(metrics: &Metrics, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/healthz" | "/readyz" | "/livez" => (StatusCode::OK, "text/plain", "ok".to_string()),
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

/// Binds `address` now (so a bad address is an error at start), then serves in a task.
pub(crate) async fn serve(
    address: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(address).await?;
    tracing::info!(address = %listener.local_addr()?, "serving /healthz and /metrics");
    Ok(tokio::spawn(korvet_serving::serve_http1(
        listener,
        "metrics server",
        move |request| reply(&metrics, request.uri().path()),
    )))
}
