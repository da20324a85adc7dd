//! Events on objects of a hosted cluster (its Services), recorded as upstream's cloud
//! controller manager records them (reporter `service-controller`).

use kube::Resource;

use crate::tenant::Tenant;

pub(super) async fn publish<K: Resource<DynamicType = ()>>(
    tenant: &Tenant,
    object: &K,
    warning: bool,
    reason: &str,
    note: String,
) {
    tracing::info!(
        object = %object.meta().name.as_deref().unwrap_or_default(),
        namespace = %object.meta().namespace.as_deref().unwrap_or_default(),
        reason,
        note,
        "cluster event"
    );
    if warning {
        tenant.service_events.warning(object, reason, note).await;
    } else {
        tenant.service_events.normal(object, reason, note).await;
    }
}
