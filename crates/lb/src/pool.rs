//! The backends of a balancer, their health state, and the choice of backend for a new
//! connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

use crate::metrics::{BackendMetrics, LbMetrics, ListenerMetrics};
use crate::Balance;

/// One backend: its address, health and counters.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    up: AtomicBool,
    active: AtomicI64,
    // Consecutive check results; only the health checker and connect failures touch them.
    successes: AtomicU32,
    failures: AtomicU32,
    pub(crate) metrics: BackendMetrics,
}

/// A snapshot of one backend, for status pages and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendStatus {
    pub addr: SocketAddr,
    pub up: bool,
    pub active_connections: i64,
    pub connections_total: u64,
}

/// Why the health state of a backend changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    Up,
    Down,
}

impl Backend {
    fn new(addr: SocketAddr, metrics: BackendMetrics) -> Self {
        // Up until proven otherwise (as HAProxy does), so a fresh balancer serves at once;
        // a dead backend costs one failed connect, after which the next one is tried.
        metrics.up.set(1);
        Self {
            addr,
            up: AtomicBool::new(true),
            active: AtomicI64::new(0),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            metrics,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn active_connections(&self) -> i64 {
        self.active.load(Ordering::Acquire)
    }

    pub fn status(&self) -> BackendStatus {
        BackendStatus {
            addr: self.addr,
            up: self.is_up(),
            active_connections: self.active_connections(),
            connections_total: self.metrics.connections.get(),
        }
    }

    fn set_up(&self, up: bool) -> bool {
        let was = self.up.swap(up, Ordering::AcqRel);
        self.metrics.up.set(i64::from(up));
        was != up
    }

    /// Counts one health check result; returns whether the backend went up or down.
    pub(crate) fn record_check(&self, ok: bool, rise: u32, fall: u32) -> Transition {
        if ok {
            self.failures.store(0, Ordering::Release);
            let successes = self
                .successes
                .fetch_add(1, Ordering::AcqRel)
                .saturating_add(1);
            if !self.is_up() && successes >= rise && self.set_up(true) {
                return Transition::Up;
            }
        } else {
            self.successes.store(0, Ordering::Release);
            let failures = self
                .failures
                .fetch_add(1, Ordering::AcqRel)
                .saturating_add(1);
            if self.is_up() && failures >= fall && self.set_up(false) {
                return Transition::Down;
            }
        }
        Transition::None
    }

    /// A client's connect attempt failed: down at once, and it must rise again.
    pub(crate) fn mark_down(&self) -> bool {
        self.metrics.connect_failures.inc();
        self.successes.store(0, Ordering::Release);
        self.set_up(false)
    }

    /// Counts a proxied connection until the guard is dropped.
    pub(crate) fn open_connection(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.metrics.active.inc();
        self.metrics.connections.inc();
        ActiveGuard {
            backend: Arc::clone(self),
        }
    }
}

pub(crate) struct ActiveGuard {
    backend: Arc<Backend>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::AcqRel);
        self.backend.metrics.active.dec();
    }
}

/// The current backends of one listener; replaced as a whole by
/// [`BackendPool::set_backends`].
pub struct BackendPool {
    /// The listener's name in metrics.
    listener: String,
    backends: RwLock<Arc<Vec<Arc<Backend>>>>,
    balance: Balance,
    next: AtomicUsize,
    metrics: Arc<LbMetrics>,
    pub(crate) listener_metrics: ListenerMetrics,
    /// Woken when a backend goes up or down, or the set changes.
    pub(crate) changed: Notify,
}

impl BackendPool {
    pub fn new(
        listener: &str,
        addrs: &[SocketAddr],
        balance: Balance,
        metrics: Arc<LbMetrics>,
    ) -> Self {
        let pool = Self {
            listener: listener.to_string(),
            backends: RwLock::new(Arc::new(Vec::new())),
            balance,
            next: AtomicUsize::new(0),
            listener_metrics: metrics.listener(listener),
            metrics,
            changed: Notify::new(),
        };
        pool.set_backends(addrs);
        pool
    }

    /// All backends now, up or down.
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        Arc::clone(&self.backends.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn status(&self) -> Vec<BackendStatus> {
        self.backends().iter().map(|b| b.status()).collect()
    }

    pub fn any_up(&self) -> bool {
        self.backends().iter().any(|b| b.is_up())
    }

    /// Replaces the backends. Addresses that stay keep their health state and counters;
    /// new ones start up; connections to removed ones run on until they end.
    pub fn set_backends(&self, addrs: &[SocketAddr]) {
        let mut guard = self.backends.write().unwrap_or_else(|e| e.into_inner());
        let old = Arc::clone(&guard);
        let mut new: Vec<Arc<Backend>> = Vec::with_capacity(addrs.len());
        for addr in addrs {
            if new.iter().any(|b| b.addr == *addr) {
                continue;
            }
            let kept = old.iter().find(|b| b.addr == *addr).cloned();
            new.push(kept.unwrap_or_else(|| {
                let metrics = self.metrics.backend(&self.listener, &addr.to_string());
                Arc::new(Backend::new(*addr, metrics))
            }));
        }
        for gone in old.iter().filter(|b| !addrs.contains(&b.addr)) {
            self.metrics
                .remove_backend(&self.listener, &gone.addr.to_string());
        }
        *guard = Arc::new(new);
        self.changed.notify_one();
    }

    /// The addresses of the backends that are up, in the pool's order.
    pub fn up_addresses(&self) -> Vec<SocketAddr> {
        self.backends()
            .iter()
            .filter(|b| b.is_up())
            .map(|b| b.addr)
            .collect()
    }

    /// Stops exporting the listener's series (it was removed).
    pub(crate) fn forget_metrics(&self) {
        for backend in self.backends().iter() {
            self.metrics
                .remove_backend(&self.listener, &backend.addr.to_string());
        }
        self.metrics.remove_listener(&self.listener);
    }

    /// The healthy backends in the order a new connection should try them: the one the
    /// balancing method chooses first, then the others round robin after it.
    pub fn candidates(&self) -> Vec<Arc<Backend>> {
        let all = self.backends();
        let up: Vec<&Arc<Backend>> = all.iter().filter(|b| b.is_up()).collect();
        if up.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % up.len();
        let first = match self.balance {
            Balance::RoundRobin => start,
            Balance::LeastConnections => (0..up.len())
                .map(|i| (start + i) % up.len())
                .min_by_key(|&i| up[i].active_connections())
                .unwrap_or(start),
        };
        (0..up.len())
            .map(|i| Arc::clone(up[(first + i) % up.len()]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(ports: &[u16]) -> Vec<SocketAddr> {
        ports
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect()
    }

    #[test]
    fn round_robin_rotates_over_up_backends() {
        let pool = BackendPool::new(
            "test",
            &addrs(&[1, 2, 3]),
            Balance::RoundRobin,
            Arc::new(LbMetrics::new()),
        );
        let firsts: Vec<u16> = (0..6).map(|_| pool.candidates()[0].addr.port()).collect();
        assert_eq!(firsts, [1, 2, 3, 1, 2, 3]);
        pool.backends()[1].mark_down();
        let candidates: Vec<u16> = pool.candidates().iter().map(|b| b.addr.port()).collect();
        assert_eq!(candidates.len(), 2);
        assert!(!candidates.contains(&2));
    }

    #[test]
    fn least_connections_prefers_the_idle_backend() {
        let pool = BackendPool::new(
            "test",
            &addrs(&[1, 2]),
            Balance::LeastConnections,
            Arc::new(LbMetrics::new()),
        );
        let busy = pool.backends()[0].open_connection();
        for _ in 0..4 {
            assert_eq!(pool.candidates()[0].addr.port(), 2);
        }
        drop(busy);
        assert_eq!(pool.backends()[0].active_connections(), 0);
    }

    #[test]
    fn rise_and_fall_count_consecutive_checks() {
        let pool = BackendPool::new(
            "test",
            &addrs(&[1]),
            Balance::RoundRobin,
            Arc::new(LbMetrics::new()),
        );
        let b = Arc::clone(&pool.backends()[0]);
        assert_eq!(b.record_check(false, 2, 2), Transition::None);
        assert_eq!(b.record_check(true, 2, 2), Transition::None);
        assert_eq!(b.record_check(false, 2, 2), Transition::None);
        assert_eq!(b.record_check(false, 2, 2), Transition::Down);
        assert!(!pool.any_up());
        assert_eq!(b.record_check(true, 2, 2), Transition::None);
        assert_eq!(b.record_check(true, 2, 2), Transition::Up);
        assert!(pool.any_up());
    }

    #[test]
    fn set_backends_keeps_state_of_staying_backends() {
        let metrics = Arc::new(LbMetrics::new());
        let pool = BackendPool::new(
            "test",
            &addrs(&[1, 2]),
            Balance::RoundRobin,
            metrics.clone(),
        );
        pool.backends()[0].mark_down();
        pool.set_backends(&addrs(&[1, 3]));
        let status = pool.status();
        assert_eq!(status.len(), 2);
        assert!(!status[0].up);
        assert!(status[1].up);
        let text = metrics.render();
        assert!(!text.contains("127.0.0.1:2\""), "{text}");
        assert!(text.contains("127.0.0.1:3\""), "{text}");
    }
}
