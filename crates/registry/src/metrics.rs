//! Prometheus metrics of the registry, served at `/metrics`.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry as PromRegistry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub status: String,
}

pub struct Metrics {
    registry: Mutex<PromRegistry>,
    pub requests: Family<RequestLabels, Counter>,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let requests = Family::<RequestLabels, Counter>::default();
        let bytes_in = Counter::default();
        let bytes_out = Counter::default();
        let mut registry = PromRegistry::default();
        registry.register(
            "registry_http_requests",
            "Requests by method and HTTP status",
            requests.clone(),
        );
        registry.register(
            "registry_received_bytes",
            "Blob and manifest bytes received",
            bytes_in.clone(),
        );
        registry.register(
            "registry_sent_bytes",
            "Blob and manifest bytes sent",
            bytes_out.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            bytes_in,
            bytes_out,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}
