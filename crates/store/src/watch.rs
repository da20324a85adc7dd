//! The watch handle both backends return: a stream of responses that ends with an error
//! when the watch is cancelled (compaction, a watcher too slow to keep up, a lost backend).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use crate::error::{Result, StoreError};
use crate::types::WatchResponse;

/// What a backend keeps behind a [`Watch`]; dropping it must cancel the watch.
pub(crate) trait WatchControl: Send + Sync {
    /// Ask for a progress notification as soon as possible.
    fn request_progress(&self);
    /// Why the backend ended the watch, if it ended it (read when the channel closes).
    fn cancel_reason(&self) -> Option<String>;
}

/// A live watch. Responses arrive in revision order; after an `Err` the stream ends.
pub struct Watch {
    rx: mpsc::Receiver<Result<WatchResponse>>,
    control: Box<dyn WatchControl>,
    finished: bool,
}

impl Watch {
    pub(crate) fn new(
        rx: mpsc::Receiver<Result<WatchResponse>>,
        control: Box<dyn WatchControl>,
    ) -> Self {
        Self {
            rx,
            control,
            finished: false,
        }
    }

    /// The next response, `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Result<WatchResponse>> {
        futures::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    /// Ask the backend for a progress notification (an empty response carrying the
    /// revision up to which this watcher has seen every change).
    pub fn request_progress(&self) {
        self.control.request_progress();
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<WatchResponse>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(response))) => Poll::Ready(Some(Ok(response))),
            Poll::Ready(Some(Err(err))) => {
                self.finished = true;
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => {
                self.finished = true;
                let reason = self
                    .control
                    .cancel_reason()
                    .unwrap_or_else(|| "the store was closed".to_string());
                Poll::Ready(Some(Err(StoreError::WatchCancelled { reason })))
            }
        }
    }
}

impl Stream for Watch {
    type Item = Result<WatchResponse>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}
