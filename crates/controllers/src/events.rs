//! Kubernetes Events for what controllers do, as upstream's event recorder: failures to
//! record are logged, never fatal.
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
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Some(seen) = repeat {
            let count = seen.count + 1;
            let patch = serde_json::json!({"count": count, "lastTimestamp": Time(now)});
            match api
                .patch(&seen.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {
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
        let name = format!(
            "{}.{:x}",
            reference.name.clone().unwrap_or_default(),
            now.as_nanosecond()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                field_path: None,
                ..reference
            },
            reason: Some(reason.to_string()),
            message: Some(note),
            type_: Some(type_.to_string()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: None::<MicroTime>,
            source: Some(EventSource {
                component: Some(self.controller.clone()),
                host: None,
            }),
            reporting_component: Some(self.controller.clone()),
            reporting_instance: Some(self.controller.clone()),
            ..Default::default()
        };
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
