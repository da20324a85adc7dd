//! A work queue with client-go's guarantees: an item waits in the queue at most once, and
//! is never handed to two workers at the same time (added while processed, it comes back
//! once the worker is done).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

pub(crate) struct WorkQueue<T> {
    state: Mutex<State<T>>,
    ready: Notify,
}

struct State<T> {
    queue: VecDeque<T>,
    dirty: HashSet<T>,
    processing: HashSet<T>,
    failures: HashMap<T, u32>,
}

impl<T: Clone + Eq + Hash> Default for WorkQueue<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
            }),
            ready: Notify::new(),
        }
    }
}

impl<T: Clone + Eq + Hash> WorkQueue<T> {
    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // A worker that panicked holding the lock left consistent sets behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn add(&self, item: T) {
        let mut s = self.state();
        if !s.dirty.insert(item.clone()) || s.processing.contains(&item) {
            return;
        }
        s.queue.push_back(item);
        drop(s);
        self.ready.notify_one();
    }

    /// The next item; the caller must hand it back with [`WorkQueue::done`].
    pub(crate) async fn get(&self) -> T {
        loop {
            {
                let mut s = self.state();
                if let Some(item) = s.queue.pop_front() {
                    s.dirty.remove(&item);
                    s.processing.insert(item.clone());
                    if !s.queue.is_empty() {
                        // Wake another worker for what is left.
                        self.ready.notify_one();
                    }
                    return item;
                }
            }
            self.ready.notified().await;
        }
    }

    pub(crate) fn done(&self, item: &T) {
        let mut s = self.state();
        s.processing.remove(item);
        if s.dirty.contains(item) {
            s.queue.push_back(item.clone());
            drop(s);
            self.ready.notify_one();
        }
    }

    pub(crate) fn forget(&self, item: &T) {
        self.state().failures.remove(item);
    }

    /// How long to wait before retrying `item` after one more failure: 50 ms doubling to 5 s.
    pub(crate) fn backoff(&self, item: &T) -> Duration {
        let mut s = self.state();
        let n = s.failures.entry(item.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let ms = 50u64.saturating_mul(1 << (*n - 1).min(7));
        Duration::from_millis(ms.min(5_000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_item_is_queued_once_and_comes_back_if_added_while_processed() {
        let q = WorkQueue::default();
        q.add(1);
        q.add(1);
        q.add(2);
        let first = q.get().await;
        assert_eq!(first, 1);
        q.add(1);
        assert_eq!(q.get().await, 2);
        q.done(&2);
        q.done(&1);
        assert_eq!(q.get().await, 1);
        assert_eq!(q.backoff(&1), Duration::from_millis(50));
        assert_eq!(q.backoff(&1), Duration::from_millis(100));
        q.forget(&1);
        assert_eq!(q.backoff(&1), Duration::from_millis(50));
    }
}
