//! Pod Events as upstream's kubelet records them: source component `kubelet` on this
//! host, the pod (and `spec.containers{NAME}`) as involved object. A repeat of the same
//! event (same object, reason and message) updates the first one's `count` and
//! `lastTimestamp` instead of making a new Event, as upstream's event correlator does.
//!
//! Recording never blocks a pod worker: events go through a channel to one task that
//! writes them in order; when the API is slow and the channel is full, events are
//! dropped (as upstream drops them when its queue is full). That queue, and holding
//! repeats for [`REPEAT_INTERVAL`] so that a crash-looping container does not write
//! once a second, are why the node keeps this layer over the shared recorder's
//! [`new_event`] and [`count_repeat`] instead of awaiting `EventRecorder` in a worker.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use korvet_apimachinery::events::{count_repeat, new_event, Source};
use kube::api::{Api, PostParams};
use tokio::sync::mpsc;

pub(crate) const NORMAL: &str = "Normal";
pub(crate) const WARNING: &str = "Warning";
const COMPONENT: &str = "kubelet";
const QUEUE: usize = 1000;
/// A repeat sooner than this after the last write of the same event is counted
/// locally and written with the next repeat (the worker looks every second; upstream's
/// pod sync every ten).
const REPEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Correlation entries older than this are forgotten (upstream: a 10-minute window).
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// One event to record.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Record {
    pub object: ObjectReference,
    pub type_: &'static str,
    pub reason: String,
    pub message: String,
}

/// Sends events to the recording task; cheap to clone.
#[derive(Clone)]
pub(crate) struct Recorder {
    tx: mpsc::Sender<Record>,
}

/// The reference to `pod`, or to its container `container` (`spec.containers{NAME}`,
/// `spec.initContainers{NAME}` for an init container).
pub(crate) fn reference(pod: &Pod, container: Option<&str>) -> ObjectReference {
    let field_path = container.map(|name| {
        let init = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|list| list.iter().any(|c| c.name == name));
        if init {
            format!("spec.initContainers{{{name}}}")
        } else {
            format!("spec.containers{{{name}}}")
        }
    });
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path,
    }
}

impl Recorder {
    /// Starts the recording task for node `node`; it ends when every `Recorder` is gone.
    pub(crate) fn start(client: kube::Client, node: &str) -> Recorder {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_events(client, node.to_string(), rx));
        Recorder { tx }
    }

    pub(crate) fn record(
        &self,
        object: ObjectReference,
        type_: &'static str,
        reason: &str,
        message: impl Into<String>,
    ) {
        let record = Record {
            object,
            type_,
            reason: reason.into(),
            message: message.into(),
        };
        if let Err(mpsc::error::TrySendError::Full(r)) = self.tx.try_send(record) {
            tracing::debug!(reason = %r.reason, "event queue full; dropping an event");
        }
    }

    /// An event about the pod itself.
    pub(crate) fn pod(
        &self,
        pod: &Pod,
        type_: &'static str,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.record(reference(pod, None), type_, reason, message);
    }

    /// An event about container `container` of `pod`.
    pub(crate) fn container(
        &self,
        pod: &Pod,
        container: &str,
        type_: &'static str,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.record(reference(pod, Some(container)), type_, reason, message);
    }
}

/// What identifies repeats of one event.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    kind: String,
    namespace: String,
    name: String,
    uid: String,
    field_path: String,
    type_: &'static str,
    reason: String,
    message: String,
}

impl Key {
    fn of(r: &Record) -> Key {
        let o = &r.object;
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        Key {
            kind: s(&o.kind),
            namespace: s(&o.namespace),
            name: s(&o.name),
            uid: s(&o.uid),
            field_path: s(&o.field_path),
            type_: r.type_,
            reason: r.reason.clone(),
            message: r.message.clone(),
        }
    }
}

/// The Event written for a key, and repeats not yet written.
struct Seen {
    name: String,
    count: i32,
    written_count: i32,
    written_at: Instant,
}

/// What to do with a record, given what was seen of it.
#[derive(Debug, PartialEq)]
enum Action {
    Create,
    Update { name: String, count: i32 },
    Hold,
}

#[derive(Default)]
struct Correlator {
    seen: HashMap<Key, Seen>,
}

impl Correlator {
    fn observe(&mut self, key: &Key, now: Instant) -> Action {
        self.seen
            .retain(|_, s| now.duration_since(s.written_at) < FORGET_AFTER);
        match self.seen.get_mut(key) {
            None => Action::Create,
            Some(s) => {
                s.count += 1;
                if now.duration_since(s.written_at) < REPEAT_INTERVAL {
                    Action::Hold
                } else {
                    Action::Update {
                        name: s.name.clone(),
                        count: s.count,
                    }
                }
            }
        }
    }

    fn written(&mut self, key: Key, name: String, count: i32, now: Instant) {
        let s = self.seen.entry(key).or_insert(Seen {
            name: name.clone(),
            count,
            written_count: count,
            written_at: now,
        });
        s.name = name;
        s.count = s.count.max(count);
        s.written_count = count;
        s.written_at = now;
    }

    /// Entries with repeats not yet written whose interval has passed.
    fn due(&self, now: Instant) -> Vec<(Key, String, i32)> {
        self.seen
            .iter()
            .filter(|(_, s)| {
                s.count > s.written_count && now.duration_since(s.written_at) >= REPEAT_INTERVAL
            })
            .map(|(k, s)| (k.clone(), s.name.clone(), s.count))
            .collect()
    }
}

/// The Event first written for `r`, as the shared recorder builds it, with this node as
/// the source host.
pub(crate) fn event(node: &str, r: &Record) -> Event {
    let source = Source {
        component: COMPONENT,
        instance: node,
        host: Some(node),
    };
    new_event(
        source,
        r.object.clone(),
        r.type_,
        &r.reason,
        r.message.clone(),
        Timestamp::now(),
    )
}

async fn write_events(client: kube::Client, node: String, mut rx: mpsc::Receiver<Record>) {
    let mut correlator = Correlator::default();
    let mut records: HashMap<Key, Record> = HashMap::new();
    let mut tick = tokio::time::interval(REPEAT_INTERVAL);
    loop {
        let record = tokio::select! {
            r = rx.recv() => match r {
                Some(r) => Some(r),
                None => return,
            },
            _ = tick.tick() => None,
        };
        let now = Instant::now();
        if let Some(record) = record {
            let key = Key::of(&record);
            match correlator.observe(&key, now) {
                Action::Hold => {}
                Action::Create => {
                    let ev = event(&node, &record);
                    let name = ev.metadata.name.clone().unwrap_or_default();
                    let namespace = record.object.namespace.clone().unwrap_or_default();
                    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
                    match api.create(&PostParams::default(), &ev).await {
                        Ok(_) => correlator.written(key.clone(), name, 1, now),
                        Err(e) => {
                            tracing::debug!(reason = %record.reason, error = %e, "writing an event")
                        }
                    }
                    records.insert(key, record);
                }
                Action::Update { name, count } => {
                    update(&client, &record, &name, count).await;
                    correlator.written(key.clone(), name, count, now);
                    records.insert(key, record);
                }
            }
        }
        for (key, name, count) in correlator.due(now) {
            if let Some(record) = records.get(&key) {
                update(&client, record, &name, count).await;
            }
            correlator.written(key, name, count, now);
        }
        records.retain(|k, _| correlator.seen.contains_key(k));
    }
}

/// Counts repeats on the Event first written; a failure only reaches the debug log.
async fn update(client: &kube::Client, record: &Record, name: &str, count: i32) {
    let namespace = record.object.namespace.clone().unwrap_or_default();
    if let Err(e) = count_repeat(client, &namespace, name, count).await {
        tracing::debug!(event = %name, error = %e, "updating an event's count");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn pod() -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.namespace = Some("default".into());
        pod.metadata.uid = Some("u1".into());
        pod.spec = Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                ..Default::default()
            }],
            init_containers: Some(vec![Container {
                name: "setup".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        pod
    }

    #[test]
    fn references_name_the_container_field() {
        let p = pod();
        assert_eq!(
            reference(&p, Some("main")).field_path.as_deref(),
            Some("spec.containers{main}")
        );
        assert_eq!(
            reference(&p, Some("setup")).field_path.as_deref(),
            Some("spec.initContainers{setup}")
        );
        assert_eq!(reference(&p, None).field_path, None);
    }

    #[test]
    fn events_carry_the_kubelet_source() {
        let r = Record {
            object: reference(&pod(), Some("main")),
            type_: NORMAL,
            reason: "Started".into(),
            message: "Started container main".into(),
        };
        let e = event("n1", &r);
        assert!(e.metadata.name.unwrap().starts_with("web."));
        assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
        let source = e.source.unwrap();
        assert_eq!(source.component.as_deref(), Some("kubelet"));
        assert_eq!(source.host.as_deref(), Some("n1"));
        assert_eq!(e.count, Some(1));
        assert_eq!(e.type_.as_deref(), Some("Normal"));
    }

    #[test]
    fn repeats_update_the_first_event_at_most_every_interval() {
        let r = Record {
            object: reference(&pod(), Some("main")),
            type_: WARNING,
            reason: "BackOff".into(),
            message: "Back-off".into(),
        };
        let key = Key::of(&r);
        let mut c = Correlator::default();
        let t0 = Instant::now();
        assert_eq!(c.observe(&key, t0), Action::Create);
        c.written(key.clone(), "web.1".into(), 1, t0);
        assert_eq!(c.observe(&key, t0 + Duration::from_secs(1)), Action::Hold);
        assert_eq!(c.observe(&key, t0 + Duration::from_secs(2)), Action::Hold);
        assert!(c.due(t0 + Duration::from_secs(3)).is_empty());
        assert_eq!(
            c.due(t0 + REPEAT_INTERVAL),
            vec![(key.clone(), "web.1".to_string(), 3)]
        );
        let t1 = t0 + REPEAT_INTERVAL;
        c.written(key.clone(), "web.1".into(), 3, t1);
        assert_eq!(
            c.observe(&key, t1 + REPEAT_INTERVAL),
            Action::Update {
                name: "web.1".into(),
                count: 4
            }
        );
        // A different message is a different event.
        let other = Key {
            message: "other".into(),
            ..key
        };
        assert_eq!(c.observe(&other, t1), Action::Create);
    }
}
