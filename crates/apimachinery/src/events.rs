//! Kubernetes Events for what controllers do, as upstream's event recorder: failures to
//! record are logged, never fatal. Every controller (built-in, CSR, platform) records
//! through [`EventRecorder`]; the node agent queues its pod events in front of the same
//! [`new_event`] and [`count_repeat`], because a pod worker must never wait on the API.
//!
//! Events are core/v1 Events written directly, one per distinct message, with a repeat
//! of the same reason and message on the same object counted on the first (as
//! client-go's correlator does). kube's `Recorder` is not used: it keys its series
//! without the note, so "Created pod: a" and "Created pod: b" would collapse into one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Resource;

/// Repeats of one event are counted on it for this long (client-go: 10 minutes).
const REPEAT_WINDOW: jiff::SignedDuration = jiff::SignedDuration::from_secs(600);
/// Remembered events, at most (then the oldest half is forgotten).
const MAX_REMEMBERED: usize = 4096;

/// Records Events as `controller` (e.g. `deployment-controller`).
#[derive(Clone)]
pub struct EventRecorder {
    client: kube::Client,
    controller: String,
    seen: Arc<Mutex<HashMap<EventKey, Seen>>>,
}

/// (object uid, type, reason, message).
type EventKey = (String, String, String, String);

/// An event written, to count its repeats on.
#[derive(Clone)]
struct Seen {
    name: String,
    count: i32,
    first: jiff::Timestamp,
}

impl EventRecorder {
    pub fn new(client: kube::Client, controller: &str) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            seen: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A `Normal` event about `object`, e.g. `("ScalingReplicaSet", "Scaled up replica set web-5d7 to 3")`.
    pub async fn normal<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        reason: &str,
        note: String,
    ) {
        self.publish(object, "Normal", reason, note).await;
    }

    /// A `Warning` event about `object`.
    pub async fn warning<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        reason: &str,
        note: String,
    ) {
        self.publish(object, "Warning", reason, note).await;
    }

    /// A `Warning` or `Normal` event about `object`, also written to the log (what the
    /// platform's controllers do with every event).
    pub async fn logged<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        tracing::info!(
            object = %object.meta().name.as_deref().unwrap_or_default(),
            namespace = %object.meta().namespace.as_deref().unwrap_or_default(),
            kind = %K::kind(&()),
            reason,
            note,
            "event"
        );
        let type_ = if warning { "Warning" } else { "Normal" };
        self.publish(object, type_, reason, note).await;
    }

    async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: &str,
        reason: &str,
        note: String,
    ) {
        let reference = object.object_ref(&());
        // Cluster-scoped objects' events go to `default`, as upstream's.
        let namespace = reference
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let key = (
            reference.uid.clone().unwrap_or_default(),
            type_.to_string(),
            reason.to_string(),
            note.clone(),
        );
        let now = jiff::Timestamp::now();
        let repeat = self.seen.lock().ok().and_then(|seen| {
            seen.get(&key)
                .filter(|s| s.first + REPEAT_WINDOW > now)
                .cloned()
        });
        if let Some(seen) = repeat {
            let count = seen.count + 1;
            match count_repeat(&self.client, &namespace, &seen.name, count).await {
                Ok(()) => {
                    if let Ok(mut all) = self.seen.lock() {
                        if let Some(s) = all.get_mut(&key) {
                            s.count = count;
                        }
                    }
                    return;
                }
                Err(e) => tracing::debug!(reason, error = %e, "counting a repeated event"),
            }
        }
        let reference = ObjectReference {
            field_path: None,
            ..reference
        };
        let source = Source {
            component: &self.controller,
            instance: &self.controller,
            host: None,
        };
        let event = new_event(source, reference, type_, reason, note, now);
        let name = event.metadata.name.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                if let Ok(mut seen) = self.seen.lock() {
                    if seen.len() >= MAX_REMEMBERED {
                        let mut by_age: Vec<_> =
                            seen.iter().map(|(k, v)| (v.first, k.clone())).collect();
                        by_age.sort();
                        for (_, k) in by_age.into_iter().take(MAX_REMEMBERED / 2) {
                            seen.remove(&k);
                        }
                    }
                    seen.insert(
                        key,
                        Seen {
                            name,
                            count: 1,
                            first: now,
                        },
                    );
                }
            }
            Err(e) => tracing::debug!(reason, error = %e, "recording an event"),
        }
    }
}

/// Who writes an Event: `source.component` and `reportingComponent`, the
/// `reportingInstance` (a controller's name, a scheduler's identity, a node's name) and,
/// for a node agent, `source.host`.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    pub component: &'a str,
    pub instance: &'a str,
    pub host: Option<&'a str>,
}

/// Upstream's Event name: the object's name and the time in hex nanoseconds.
pub fn event_name(object: &str, now: jiff::Timestamp) -> String {
    format!("{object}.{:x}", now.as_nanosecond())
}

/// A new Event (count 1) about `reference`, as `source` records it. An event of a
/// cluster-scoped object goes to `default`, as upstream's recorder puts it.
pub fn new_event(
    source: Source<'_>,
    reference: ObjectReference,
    type_: &str,
    reason: &str,
    message: String,
    now: jiff::Timestamp,
) -> Event {
    let namespace = reference
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    Event {
        metadata: ObjectMeta {
            name: Some(event_name(
                reference.name.as_deref().unwrap_or_default(),
                now,
            )),
            namespace: Some(namespace),
            ..Default::default()
        },
        involved_object: reference,
        reason: Some(reason.to_string()),
        message: Some(message),
        type_: Some(type_.to_string()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: None::<MicroTime>,
        source: Some(EventSource {
            component: Some(source.component.to_string()),
            host: source.host.map(str::to_string),
        }),
        reporting_component: Some(source.component.to_string()),
        reporting_instance: Some(source.instance.to_string()),
        ..Default::default()
    }
}

/// Counts a repeat on the Event first written (`count` and `lastTimestamp`), as
/// client-go's correlator does instead of writing a new Event.
pub async fn count_repeat(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    count: i32,
) -> Result<(), kube::Error> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"count": count, "lastTimestamp": Time(jiff::Timestamp::now())});
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_their_object_and_source() {
        let now = jiff::Timestamp::from_second(1).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let pod = ObjectReference {
            kind: Some("Pod".into()),
            name: Some("web".into()),
            namespace: Some("apps".into()),
            field_path: Some("spec.containers{main}".into()),
            ..Default::default()
        };
        let kubelet = Source {
            component: "kubelet",
            instance: "n1",
            host: Some("n1"),
        };
        let e = new_event(kubelet, pod, "Normal", "Pulled", "done".into(), now);
        assert_eq!(e.metadata.name.as_deref(), Some("web.3b9aca00"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("apps"));
        assert_eq!(
            e.involved_object.field_path.as_deref(),
            Some("spec.containers{main}")
        );
        assert_eq!(e.reporting_instance.as_deref(), Some("n1"));
        let source = e.source.unwrap_or_default();
        assert_eq!(source.host.as_deref(), Some("n1"));
        let node = ObjectReference {
            kind: Some("Node".into()),
            name: Some("n1".into()),
            ..Default::default()
        };
        let controller = Source {
            component: "node-controller",
            instance: "node-controller",
            host: None,
        };
        let e = new_event(controller, node, "Warning", "NotReady", "x".into(), now);
        assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(e.reporting_instance.as_deref(), Some("node-controller"));
        assert_eq!(e.count, Some(1));
    }
}
