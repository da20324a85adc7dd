//! What the workload controllers share: pods made from templates, controller
//! references, and pod readiness and availability as upstream's `podutil` judges them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

/// The owner reference a controller puts on what it creates: `controller: true` and
/// `blockOwnerDeletion: true`, as upstream's `NewControllerRef`.
pub(crate) fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    // kube's `controller_owner_ref` leaves blockOwnerDeletion unset, so foreground
    // deletion of the owner would not wait for the dependent.
    Some(OwnerReference {
        block_owner_deletion: Some(true),
        ..owner.controller_owner_ref(&())?
    })
}

/// The reference among `meta`'s owners that has `controller: true`.
pub(crate) fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_deref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Whether `meta` is controlled by the object with `uid`.
pub(crate) fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == uid)
}

/// A new pod from `template`, owned by `owner`, named `name` or (when `None`) generated
/// from `generate_name` by the API server.
pub(crate) fn pod_from_template(
    template: &PodTemplateSpec,
    owner: OwnerReference,
    namespace: &str,
    name: Option<String>,
    generate_name: &str,
) -> Pod {
    let source = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: name.clone(),
            generate_name: name.is_none().then(|| generate_name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: source.labels,
            annotations: source.annotations,
            finalizers: source.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Neither finished nor being deleted: a pod that counts towards replicas.
pub(crate) fn is_pod_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none()
}

/// The pod's `Ready` condition is `True`.
pub(crate) fn is_pod_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// When the pod last became ready, if it is.
pub(crate) fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        condition
            .last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(jiff::Timestamp::now),
    )
}

/// Ready for at least `min_ready_seconds` at `now` (upstream's `IsPodAvailable`).
pub(crate) fn is_pod_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    let Some(since) = ready_since(pod) else {
        return false;
    };
    if min_ready_seconds <= 0 {
        return true;
    }
    since + jiff::SignedDuration::from_secs(i64::from(min_ready_seconds)) <= now
}

/// How long to sleep until `at` (10 ms past it, so the time has surely come), or an hour
/// when nothing is due.
pub(crate) fn sleep_until(at: Option<jiff::Timestamp>) -> std::time::Duration {
    at.map(|at| {
        let ms = (at - jiff::Timestamp::now())
            .total(jiff::Unit::Millisecond)
            .unwrap_or(0.0);
        std::time::Duration::from_millis(ms.max(0.0) as u64 + 10)
    })
    .unwrap_or(std::time::Duration::from_secs(3600))
}

/// Whether every `key: value` of `selector` (matchLabels form) is among `labels`.
pub(crate) fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ready_pod(seconds_ago: i64) -> Pod {
        let at = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(seconds_ago);
        Pod {
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(at)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let now = jiff::Timestamp::now();
        assert!(is_pod_available(&ready_pod(5), 0, now));
        assert!(is_pod_available(&ready_pod(5), 3, now));
        assert!(!is_pod_available(&ready_pod(5), 10, now));
        assert!(!is_pod_available(&Pod::default(), 0, now));
    }
}
