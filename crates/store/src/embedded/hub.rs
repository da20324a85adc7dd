//! Fan-out of committed changes to synced watchers.
//!
//! The writer publishes each committed batch here and never waits: a watcher whose buffer
//! is full is cancelled with a reason (it can re-watch from its last revision). Watchers
//! that start in the past catch up from the change log first and join the hub only once
//! they have reached the published revision, so nothing is delivered twice or skipped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::error::Result;
use crate::types::{Event, KeyRange, Revision, WatchResponse};
use crate::watch::WatchControl;

/// Responses buffered per watcher before it counts as too slow.
pub(super) const WATCHER_BUFFER: usize = 1024;

pub(super) struct WatchHub {
    inner: Mutex<HubInner>,
}

struct HubInner {
    /// Every change up to this revision has been handed to the synced watchers.
    published: Revision,
    watchers: HashMap<u64, Subscriber>,
    next_id: u64,
}

struct Subscriber {
    range: KeyRange,
    prev_kv: bool,
    /// Changes before this revision are not wanted (a watch started in the future).
    min_revision: Revision,
    tx: mpsc::Sender<Result<WatchResponse>>,
    cancelled: Arc<Mutex<Option<String>>>,
}

/// The part of a watch that the hub and the [`crate::Watch`] handle share.
pub(super) struct WatcherState {
    pub id: u64,
    pub range: KeyRange,
    pub prev_kv: bool,
    pub min_revision: Revision,
    pub tx: mpsc::Sender<Result<WatchResponse>>,
    pub cancelled: Arc<Mutex<Option<String>>>,
}

impl WatchHub {
    pub(super) fn new(published: Revision) -> Self {
        Self {
            inner: Mutex::new(HubInner {
                published,
                watchers: HashMap::new(),
                next_id: 1,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubInner> {
        // A panic while holding this lock leaves only plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn published(&self) -> Revision {
        self.lock().published
    }

    pub(super) fn next_id(&self) -> u64 {
        let mut inner = self.lock();
        inner.next_id += 1;
        inner.next_id
    }

    /// Joins the watcher if it has seen everything up to the published revision
    /// (`seen`); otherwise returns it so the caller can catch up further.
    pub(super) fn try_join(&self, state: WatcherState, seen: Revision) -> Option<WatcherState> {
        let mut inner = self.lock();
        if seen < inner.published {
            return Some(state);
        }
        inner.watchers.insert(
            state.id,
            Subscriber {
                range: state.range,
                prev_kv: state.prev_kv,
                min_revision: state.min_revision,
                tx: state.tx,
                cancelled: state.cancelled,
            },
        );
        None
    }

    pub(super) fn leave(&self, id: u64) {
        self.lock().watchers.remove(&id);
    }

    /// Hands a committed batch (events in revision order) to every synced watcher.
    pub(super) fn publish(&self, events: &[Event], revision: Revision) {
        let mut inner = self.lock();
        inner.published = revision;
        if events.is_empty() {
            return;
        }
        let mut too_slow = Vec::new();
        for (id, sub) in &inner.watchers {
            let matching: Vec<Event> = events
                .iter()
                .filter(|e| e.kv.mod_revision >= sub.min_revision && sub.range.contains(&e.kv.key))
                .map(|e| Event {
                    kind: e.kind,
                    kv: e.kv.clone(),
                    prev_kv: if sub.prev_kv { e.prev_kv.clone() } else { None },
                })
                .collect();
            if matching.is_empty() {
                continue;
            }
            let response = WatchResponse {
                revision,
                events: matching,
            };
            match sub.tx.try_send(Ok(response)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => too_slow.push((*id, None)),
                Err(mpsc::error::TrySendError::Full(_)) => too_slow.push((*id, Some(revision))),
            }
        }
        for (id, revision) in too_slow {
            if let Some(sub) = inner.watchers.remove(&id) {
                if let Some(revision) = revision {
                    let reason = format!(
                        "watcher fell more than {WATCHER_BUFFER} responses behind at revision {revision}; watch again from its last seen revision"
                    );
                    tracing::warn!(watcher = id, revision, "cancelling slow watcher");
                    *sub.cancelled.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                }
            }
        }
    }

    /// Sends a progress notification to one synced watcher, unless its buffer is full
    /// (then it has responses pending that say as much).
    pub(super) fn notify_progress(&self, id: u64) {
        let inner = self.lock();
        if let Some(sub) = inner.watchers.get(&id) {
            let _ = sub.tx.try_send(Ok(WatchResponse {
                revision: inner.published,
                events: Vec::new(),
            }));
        }
    }

    /// Ends every watch, e.g. when the store shuts down.
    pub(super) fn close_all(&self, reason: &str) {
        let mut inner = self.lock();
        for (_, sub) in inner.watchers.drain() {
            *sub.cancelled.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
        }
    }
}

/// The control side of an embedded watch, dropped with the [`crate::Watch`].
pub(super) struct EmbeddedWatchControl {
    pub hub: Arc<WatchHub>,
    pub id: u64,
    pub cancelled: Arc<Mutex<Option<String>>>,
    /// Stops the catch-up or progress task of this watch when the handle is dropped.
    pub tasks: Vec<tokio::task::AbortHandle>,
}

impl WatchControl for EmbeddedWatchControl {
    fn request_progress(&self) {
        self.hub.notify_progress(self.id);
    }

    fn cancel_reason(&self) -> Option<String> {
        self.cancelled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for EmbeddedWatchControl {
    fn drop(&mut self) {
        self.hub.leave(self.id);
        for task in &self.tasks {
            task.abort();
        }
    }
}
