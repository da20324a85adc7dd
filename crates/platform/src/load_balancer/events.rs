//! Events on objects of a hosted cluster (its Services), recorded as the cloud
//! controller manager upstream records them: reporter `service-controller`.

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Resource;

pub(super) async fn publish<K: Resource<DynamicType = ()>>(
    client: &kube::Client,
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
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "service-controller".into(),
            instance: None,
        },
    );
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(note),
        action: reason.to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(error = %e, "could not record an event in the cluster");
    }
}
