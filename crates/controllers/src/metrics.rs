//! Counters every controller shares, by controller name (upstream's workqueue metrics in
//! spirit): syncs done, syncs failed, and how long a sync took.

use std::sync::OnceLock;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: &'static str,
}

struct Metrics {
    syncs: Family<ControllerLabel, Counter>,
    errors: Family<ControllerLabel, Counter>,
    seconds: Family<ControllerLabel, Histogram>,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics {
        syncs: Family::default(),
        errors: Family::default(),
        seconds: Family::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        }),
    })
}

/// Records one sync of `controller` that began at `started`.
pub fn sync_done(controller: &'static str, started: Instant, ok: bool) {
    let label = ControllerLabel { controller };
    let m = metrics();
    m.syncs.get_or_create(&label).inc();
    if !ok {
        m.errors.get_or_create(&label).inc();
    }
    m.seconds
        .get_or_create(&label)
        .observe(started.elapsed().as_secs_f64());
}

/// Adds the controllers' metrics to a `/metrics` registry.
pub fn register(registry: &mut Registry) {
    let m = metrics();
    registry.register(
        "controller_syncs",
        "Reconciliations done, by controller",
        m.syncs.clone(),
    );
    registry.register(
        "controller_sync_errors",
        "Reconciliations that failed and will be retried, by controller",
        m.errors.clone(),
    );
    registry.register(
        "controller_sync_duration_seconds",
        "Time one reconciliation took, by controller",
        m.seconds.clone(),
    );
}
