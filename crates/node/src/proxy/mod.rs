//! The service proxy (Korvet's kube-proxy): watches Services and EndpointSlices and
//! keeps one nftables table, `ip korvet-proxy`, in the node's network namespace in step
//! with them ([`model`] → [`rules`] → [`nft`]); serves the health-check node ports of
//! Services with `externalTrafficPolicy: Local` ([`health`]).

pub mod health;
pub mod model;
pub mod rules;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use model::Model;

/// Whether this process runs in a network namespace of its own, as a Korvet machine's
/// agent does: one other than PID 1's, or a named one (`/run/netns/NAME`, what the local
/// provider makes; PID 1's may be unreadable in a container). Unknown counts as no, so
/// that the proxy never NATs in a host's namespace by accident.
pub fn in_own_netns() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(own) = std::fs::metadata("/proc/thread-self/ns/net") else {
        return false;
    };
    if let Ok(init) = std::fs::metadata("/proc/1/ns/net") {
        if (init.dev(), init.ino()) != (own.dev(), own.ino()) {
            return true;
        }
    }
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::metadata(entry.path()).ok())
        .any(|named| (named.dev(), named.ino()) == (own.dev(), own.ino()))
}

/// Runs until aborted; the caller removes the table afterwards ([`crate::nft::delete_table`] of [`rules::TABLE`]).
pub async fn run(client: Client, node_name: String, metrics: Arc<Metrics>) {
    let changed = Arc::new(Notify::new());
    let (services, watch_services) = crate::watch::reflect(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
        "Services for the service proxy",
    );
    let (slices, watch_slices) = crate::watch::reflect(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
        changed.clone(),
        "EndpointSlices for the service proxy",
    );
    let _watches = (
        crate::AbortOnDrop(watch_services),
        crate::AbortOnDrop(watch_slices),
    );
    let _ = services.wait_until_ready().await;
    let _ = slices.wait_until_ready().await;
    tracing::info!(node = %node_name, "service proxy started");

    let mut applied: Option<Model> = None;
    let mut health = health::HealthServers::default();
    loop {
        let started = Instant::now();
        let current = {
            let services = services.state();
            let slices = slices.state();
            let services: Vec<&Service> = services.iter().map(Arc::as_ref).collect();
            let slices: Vec<&EndpointSlice> = slices.iter().map(Arc::as_ref).collect();
            Model::build(&services, &slices, &node_name)
        };
        health.update(&current.health_checks);
        let script = match &applied {
            Some(old) => rules::render_diff(old, &current),
            None => rules::render_full(&current),
        };
        let full = applied.is_none();
        match crate::nft::apply_blocking(None, script).await {
            Ok(()) => {
                let took = started.elapsed();
                metrics.proxy_sync_duration.observe(took.as_secs_f64());
                metrics
                    .proxy_rules_services
                    .set(i64::try_from(current.ports.len()).unwrap_or(i64::MAX));
                metrics
                    .proxy_rules_endpoints
                    .set(i64::try_from(current.endpoint_count()).unwrap_or(i64::MAX));
                tracing::debug!(
                    full,
                    ports = current.ports.len(),
                    took_ms = took.as_secs_f64() * 1e3,
                    "service rules applied"
                );
                applied = Some(current);
            }
            Err(e) => {
                metrics.proxy_sync_errors.inc();
                tracing::warn!(error = %e, full, "applying service rules failed; replacing the whole table in 1 s");
                applied = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        changed.notified().await;
        // Let a burst of watch events (a rollout) land before the next sync.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
