//! The task behind an etcd [`Watch`]: it owns the gRPC watch stream and forwards what etcd
//! sends, so that the handle stays a plain channel receiver like the embedded backend's.

use std::sync::{Arc, Mutex};

use etcd_client::{EventType, WatchRequestSender, WatchResponseStream};
use tokio::sync::mpsc;

use super::convert::{self, Kind};
use crate::error::{Result, StoreError};
use crate::types::{Event, EventKind, KeyValue, Revision, WatchResponse};
use crate::watch::{Watch, WatchControl};

/// Responses buffered between the task and the consumer before the task stops reading from
/// etcd (and etcd, in turn, holds back the watcher).
const CHANNEL_CAPACITY: usize = 1024;

struct Control {
    progress: mpsc::UnboundedSender<()>,
    reason: Arc<Mutex<Option<String>>>,
}

impl WatchControl for Control {
    fn request_progress(&self) {
        // The task is gone only if the watch has ended, and then there is nothing to ask.
        let _ = self.progress.send(());
    }

    fn cancel_reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Starts the task for a created etcd watch and returns the handle.
pub(super) fn spawn(
    sender: WatchRequestSender,
    responses: WatchResponseStream,
    watch_id: i64,
    start_revision: Revision,
    endpoints: String,
) -> Watch {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (progress_tx, progress_rx) = mpsc::unbounded_channel();
    let reason = Arc::new(Mutex::new(None));
    let task = Task {
        sender,
        responses,
        watch_id,
        next_revision: start_revision,
        tx,
        progress_rx,
        reason: reason.clone(),
        endpoints,
    };
    tokio::spawn(task.run());
    Watch::new(
        rx,
        Box::new(Control {
            progress: progress_tx,
            reason,
        }),
    )
}

struct Task {
    sender: WatchRequestSender,
    responses: WatchResponseStream,
    watch_id: i64,
    /// The first revision not yet delivered, for the `requested` of a compaction error.
    next_revision: Revision,
    tx: mpsc::Sender<Result<WatchResponse>>,
    progress_rx: mpsc::UnboundedReceiver<()>,
    reason: Arc<Mutex<Option<String>>>,
    endpoints: String,
}

/// What to do with one response from etcd.
enum Step {
    Skip,
    Deliver(WatchResponse),
    Compacted(Revision),
    Cancelled(String),
    Fail(StoreError),
}

impl Task {
    async fn run(mut self) {
        loop {
            tokio::select! {
                request = self.progress_rx.recv() => match request {
                    Some(()) => {
                        if let Err(err) = self.sender.request_progress().await {
                            self.set_reason(format!("etcd watch stream closed: {err}"));
                            break;
                        }
                    }
                    // The `Watch` was dropped.
                    None => break,
                },
                () = self.tx.closed() => break,
                message = self.responses.message() => {
                    let step = match message {
                        Ok(Some(response)) => self.step(response),
                        Ok(None) => Step::Cancelled("etcd closed the watch stream".to_string()),
                        Err(err) => Step::Fail(match convert::kind(&err) {
                            Kind::Unavailable => StoreError::Unavailable {
                                endpoints: self.endpoints.clone(),
                                detail: format!("watch stream broken: {}", convert::detail(&err)),
                            },
                            _ => StoreError::Backend(format!(
                                "watch stream failed: {}",
                                convert::detail(&err)
                            )),
                        }),
                    };
                    match step {
                        Step::Skip => {}
                        Step::Deliver(response) => {
                            self.next_revision = response.revision + 1;
                            if self.tx.send(Ok(response)).await.is_err() {
                                break;
                            }
                        }
                        Step::Compacted(compact_revision) => {
                            let _ = self
                                .tx
                                .send(Err(StoreError::Compacted {
                                    requested: self.next_revision,
                                    compact_revision,
                                }))
                                .await;
                            break;
                        }
                        Step::Cancelled(reason) => {
                            self.set_reason(reason);
                            break;
                        }
                        Step::Fail(err) => {
                            let _ = self.tx.send(Err(err)).await;
                            break;
                        }
                    }
                }
            }
        }
        // Cancelling explicitly frees the watcher on the server at once; dropping the
        // stream afterwards (end of this task) closes it either way.
        let _ = self.sender.cancel(self.watch_id).await;
    }

    fn set_reason(&self, reason: String) {
        *self
            .reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reason);
    }

    fn step(&self, response: etcd_client::WatchResponse) -> Step {
        if response.compact_revision() > 0 {
            return Step::Compacted(response.compact_revision());
        }
        if response.canceled() {
            let reason = response.cancel_reason();
            return Step::Cancelled(if reason.is_empty() {
                "etcd cancelled the watch".to_string()
            } else {
                format!("etcd cancelled the watch: {reason}")
            });
        }
        if response.created() {
            return Step::Skip;
        }
        let header_revision = convert::header_revision(response.header());
        let mut events = Vec::with_capacity(response.events().len());
        for event in response.events() {
            let Some(kv) = event.kv() else {
                return Step::Fail(StoreError::Backend(
                    "etcd sent a watch event without a key".to_string(),
                ));
            };
            let kind = match event.event_type() {
                EventType::Put => EventKind::Put,
                EventType::Delete => EventKind::Delete,
            };
            let kv = match kind {
                EventKind::Put => convert::key_value(kv),
                EventKind::Delete => KeyValue {
                    key: kv.key().to_vec(),
                    mod_revision: kv.mod_revision(),
                    ..KeyValue::default()
                },
            };
            events.push(Event {
                kind,
                kv,
                prev_kv: event.prev_kv().map(convert::key_value),
            });
        }
        // During catch-up etcd stamps a batch with the store's current revision even when
        // it holds back later revisions for the next batch, so only the last event's
        // revision is known to be complete. A progress notification's header is exact.
        let revision = events
            .last()
            .map_or(header_revision, |event| event.kv.mod_revision);
        Step::Deliver(WatchResponse { revision, events })
    }
}
