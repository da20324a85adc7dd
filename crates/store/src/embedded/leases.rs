//! Lease deadlines and attached keys, in memory.
//!
//! Only the granted TTL is persisted: like etcd after a leader change, a reopened store
//! gives every lease a full TTL again rather than expiring keys for time it was down.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::types::{LeaseId, LeaseInfo};

struct Lease {
    ttl_secs: i64,
    deadline: Instant,
    keys: BTreeSet<Vec<u8>>,
}

#[derive(Default)]
pub(super) struct Leases {
    by_id: HashMap<LeaseId, Lease>,
    last_id: LeaseId,
}

fn ttl(secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

impl Leases {
    pub(super) fn contains(&self, id: LeaseId) -> bool {
        self.by_id.contains_key(&id)
    }

    /// A fresh id: positive, never 0, never one in use.
    pub(super) fn new_id(&mut self) -> LeaseId {
        if self.last_id == 0 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(1);
            self.last_id = (nanos & 0x3fff_ffff_ffff_ffff).max(1);
        }
        loop {
            self.last_id = (self.last_id + 1) & 0x7fff_ffff_ffff_ffff;
            if self.last_id != 0 && !self.by_id.contains_key(&self.last_id) {
                return self.last_id;
            }
        }
    }

    pub(super) fn grant(&mut self, id: LeaseId, ttl_secs: i64) {
        self.by_id.insert(
            id,
            Lease {
                ttl_secs,
                deadline: Instant::now() + ttl(ttl_secs),
                keys: BTreeSet::new(),
            },
        );
    }

    /// Forgets the lease and returns the keys that were attached to it.
    pub(super) fn remove(&mut self, id: LeaseId) -> Option<Vec<Vec<u8>>> {
        self.by_id
            .remove(&id)
            .map(|lease| lease.keys.into_iter().collect())
    }

    pub(super) fn attach(&mut self, id: LeaseId, key: &[u8]) {
        if let Some(lease) = self.by_id.get_mut(&id) {
            lease.keys.insert(key.to_vec());
        }
    }

    pub(super) fn detach(&mut self, id: LeaseId, key: &[u8]) {
        if let Some(lease) = self.by_id.get_mut(&id) {
            lease.keys.remove(key);
        }
    }

    /// Renews the lease; returns its TTL, or `None` if it does not exist.
    pub(super) fn keep_alive(&mut self, id: LeaseId) -> Option<i64> {
        let lease = self.by_id.get_mut(&id)?;
        lease.deadline = Instant::now() + ttl(lease.ttl_secs);
        Some(lease.ttl_secs)
    }

    pub(super) fn info(&self, id: LeaseId) -> LeaseInfo {
        match self.by_id.get(&id) {
            None => LeaseInfo {
                id,
                remaining_secs: -1,
                granted_ttl_secs: 0,
                keys: Vec::new(),
            },
            Some(lease) => {
                let left = lease.deadline.saturating_duration_since(Instant::now());
                LeaseInfo {
                    id,
                    remaining_secs: left.as_secs_f64().ceil() as i64,
                    granted_ttl_secs: lease.ttl_secs,
                    keys: lease.keys.iter().cloned().collect(),
                }
            }
        }
    }

    /// Leases whose deadline has passed.
    pub(super) fn expired(&self, now: Instant) -> Vec<LeaseId> {
        let mut ids: Vec<LeaseId> = self
            .by_id
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.by_id.values().map(|lease| lease.deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_attach_expire() {
        let mut leases = Leases::default();
        let id = leases.new_id();
        assert!(id > 0);
        leases.grant(id, 1);
        leases.attach(id, b"k");
        assert_eq!(leases.info(id).keys, vec![b"k".to_vec()]);
        assert!(leases.expired(Instant::now()).is_empty());
        assert_eq!(
            leases.expired(Instant::now() + Duration::from_secs(2)),
            vec![id]
        );
        assert_eq!(leases.keep_alive(id), Some(1));
        assert_eq!(leases.remove(id), Some(vec![b"k".to_vec()]));
        assert_eq!(leases.info(id).remaining_secs, -1);
        assert_eq!(leases.keep_alive(id), None);
    }
}
