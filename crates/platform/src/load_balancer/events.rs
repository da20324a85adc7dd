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
    tenant
        .service_events
        .logged(object, warning, reason, note)
        .await;
}
