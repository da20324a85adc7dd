//! The single writer of the embedded store.
//!
//! One thread owns every write. It takes all requests waiting at once, applies them in
//! order inside one redb transaction (each request its own revision), makes the batch
//! durable with one fsync of the write-ahead log ([`super::wal`]), commits, then publishes
//! the events and answers. Concurrent writers thus share one fsync (group commit) while
//! every acknowledged write is durable.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, Table, WriteTransaction};
use tokio::sync::oneshot;

use super::hub::WatchHub;
use super::leases::Leases;
use super::read::{self, db_err};
use super::schema::*;
use super::wal::{Change, Wal};
use crate::error::{check_key, check_put, printable, Result, StoreError};
use crate::types::*;

/// Most requests folded into one commit.
const MAX_BATCH: usize = 512;
/// Longest time between durable redb commits, which let the write-ahead log start over.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);

pub(super) enum Command {
    Put(PutRequest),
    Delete(DeleteRequest),
    Txn(Txn),
    LeaseGrant { ttl_secs: i64 },
    LeaseRevoke { id: LeaseId },
    Compact { revision: Revision },
}

pub(super) enum Outcome {
    Put(PutResponse),
    Delete(DeleteResponse),
    Txn(TxnResponse),
    LeaseGrant(LeaseGrant),
    Done,
}

pub(super) struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<Result<Outcome>>,
}

pub(super) struct Writer {
    pub db: Arc<Database>,
    pub path: PathBuf,
    pub requests: Receiver<Request>,
    pub hub: Arc<WatchHub>,
    pub leases: Arc<Mutex<Leases>>,
    pub revision: Revision,
    pub compact_revision: Revision,
    pub quota_bytes: u64,
    quota_warned: bool,
    wal: Wal,
    /// Sequence number of the last committed batch (see [`super::wal`]).
    wal_seq: u64,
    last_checkpoint: Instant,
}

/// Where a reopened writer continues.
pub(super) struct Resume {
    pub revision: Revision,
    pub compact_revision: Revision,
    pub wal: Wal,
    pub wal_seq: u64,
}

impl Writer {
    pub(super) fn new(
        db: Arc<Database>,
        path: PathBuf,
        requests: Receiver<Request>,
        hub: Arc<WatchHub>,
        leases: Arc<Mutex<Leases>>,
        resume: Resume,
        quota_bytes: u64,
    ) -> Self {
        Self {
            db,
            path,
            requests,
            hub,
            leases,
            revision: resume.revision,
            compact_revision: resume.compact_revision,
            quota_bytes,
            quota_warned: false,
            wal: resume.wal,
            wal_seq: resume.wal_seq,
            last_checkpoint: Instant::now(),
        }
    }

    pub(super) fn run(mut self) {
        loop {
            let wait = self
                .lock_leases()
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            let mut batch = Vec::new();
            match self.requests.recv_timeout(wait) {
                Ok(request) => batch.push(request),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < MAX_BATCH {
                match self.requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.run_batch(batch);
        }
        // A clean shutdown leaves nothing to replay.
        if let Err(err) = self.checkpoint() {
            tracing::warn!(error = %err, "final checkpoint failed; the log will be replayed on open");
        }
        self.hub.close_all("the store was closed");
    }

    fn checkpoint(&mut self) -> Result<()> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        self.wal.restart();
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn over_quota(&mut self) -> Option<StoreError> {
        let used = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if used * 10 >= self.quota_bytes * 8 && !self.quota_warned {
            tracing::warn!(
                used,
                quota = self.quota_bytes,
                "store uses over 80% of its quota: compact or delete data, or raise the quota"
            );
            self.quota_warned = true;
        }
        (used >= self.quota_bytes).then_some(StoreError::QuotaExceeded {
            used,
            quota: self.quota_bytes,
        })
    }

    fn run_batch(&mut self, batch: Vec<Request>) {
        let expired = self.lock_leases().expired(Instant::now());
        if batch.is_empty() && expired.is_empty() {
            return;
        }
        let quota = self.over_quota();
        let start_revision = self.revision;
        let start_compact = self.compact_revision;
        let mut results = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let seq = self.wal_seq + 1;
        let committed = (|| -> Result<()> {
            let mut txn = self.db.begin_write().map_err(db_err)?;
            let (changes, unlogged) = {
                let mut apply = Apply::open(&txn, self, &mut events)?;
                for request in &batch {
                    results.push(apply.command(&request.command, quota.as_ref()));
                }
                for id in expired {
                    apply.revoke_lease(id)?;
                }
                apply.finish(seq)?
            };
            let mut checkpoint = unlogged || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL;
            if !checkpoint && !self.wal.append(seq, &changes)? {
                checkpoint = true;
            }
            let durability = if checkpoint {
                redb::Durability::Immediate
            } else {
                redb::Durability::None
            };
            txn.set_durability(durability).map_err(|e| {
                StoreError::Backend(format!("embedded store: setting durability: {e}"))
            })?;
            if let Err(err) = txn.commit() {
                if !checkpoint {
                    self.wal.retract();
                }
                return Err(db_err(err));
            }
            self.wal_seq = seq;
            if checkpoint {
                self.wal.restart();
                self.last_checkpoint = Instant::now();
            }
            Ok(())
        })();
        match committed {
            Ok(()) => {
                self.hub.publish(&events, self.revision);
                for (request, result) in batch.into_iter().zip(results) {
                    let _ = request.reply.send(result);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "store commit failed; no request of the batch was applied");
                self.revision = start_revision;
                self.compact_revision = start_compact;
                self.reload_leases();
                let message = err.to_string();
                for request in batch {
                    let _ = request
                        .reply
                        .send(Err(StoreError::Backend(message.clone())));
                }
            }
        }
    }

    /// Rebuilds lease bookkeeping from disk after a failed commit left memory ahead of it.
    fn reload_leases(&self) {
        match load_leases(&self.db) {
            Ok(leases) => *self.lock_leases() = leases,
            Err(err) => tracing::error!(error = %err, "reloading leases failed"),
        }
    }
}

/// Reads the leases and their attached keys from the file.
pub(super) fn load_leases(db: &Database) -> Result<Leases> {
    use redb::ReadableDatabase;
    let txn = db.begin_read().map_err(db_err)?;
    let mut leases = Leases::default();
    let lease_table = txn.open_table(LEASES).map_err(db_err)?;
    for entry in lease_table.iter().map_err(db_err)? {
        let (id, ttl) = entry.map_err(db_err)?;
        leases.grant(id.value() as i64, ttl.value());
    }
    let latest = txn.open_table(LATEST).map_err(db_err)?;
    for entry in latest.iter().map_err(db_err)? {
        let (key, value) = entry.map_err(db_err)?;
        let record = Record::decode_header(value.value())
            .ok_or_else(|| read::corrupt_record(key.value()))?;
        if record.lease != 0 {
            leases.attach(record.lease, key.value());
        }
    }
    Ok(leases)
}

/// One batch being applied inside a write transaction.
struct Apply<'a, 't> {
    latest: Table<'t, &'static [u8], &'static [u8]>,
    history: Table<'t, (&'static [u8], u64), &'static [u8]>,
    events_log: Table<'t, (u64, u32), &'static [u8]>,
    lease_table: Table<'t, u64, i64>,
    meta: Table<'t, &'static str, &'static [u8]>,
    writer: &'a mut Writer,
    events: &'a mut Vec<Event>,
    /// Sub-revision of the next change at `writer.revision`.
    sub: u32,
    /// Every table change, encoded for the write-ahead log.
    changes: Vec<u8>,
    /// Set when the batch changed tables in ways not logged (compaction): it must then
    /// be committed durably.
    unlogged: bool,
}

impl<'a, 't> Apply<'a, 't> {
    fn open(
        txn: &'t WriteTransaction,
        writer: &'a mut Writer,
        events: &'a mut Vec<Event>,
    ) -> Result<Self> {
        Ok(Self {
            latest: txn.open_table(LATEST).map_err(db_err)?,
            history: txn.open_table(HISTORY).map_err(db_err)?,
            events_log: txn.open_table(EVENTS).map_err(db_err)?,
            lease_table: txn.open_table(LEASES).map_err(db_err)?,
            meta: txn.open_table(META).map_err(db_err)?,
            writer,
            events,
            sub: 0,
            changes: Vec::new(),
            unlogged: false,
        })
    }

    /// Records the batch's revisions and sequence number; returns its logged changes.
    fn finish(mut self, seq: u64) -> Result<(Vec<u8>, bool)> {
        let revision = encode_revision(self.writer.revision);
        let compact = encode_revision(self.writer.compact_revision);
        let seq = seq.to_le_bytes();
        for (name, value) in [
            (META_REVISION, revision.as_slice()),
            (META_COMPACT_REVISION, compact.as_slice()),
            (META_WAL_SEQ, seq.as_slice()),
        ] {
            self.meta.insert(name, value).map_err(db_err)?;
            Change::MetaPut(name, value).encode(&mut self.changes);
        }
        Ok((self.changes, self.unlogged))
    }

    fn set_latest(&mut self, key: &[u8], record: &[u8]) -> Result<()> {
        self.latest.insert(key, record).map_err(db_err)?;
        Change::LatestPut(key, record).encode(&mut self.changes);
        Ok(())
    }

    fn add_history(&mut self, key: &[u8], revision: Revision, record: &[u8]) -> Result<()> {
        self.history
            .insert((key, revision as u64), record)
            .map_err(db_err)?;
        Change::HistoryPut(key, revision as u64, record).encode(&mut self.changes);
        Ok(())
    }

    /// Validates the whole command first, so that a refused command changes nothing.
    fn command(&mut self, command: &Command, quota: Option<&StoreError>) -> Result<Outcome> {
        let over_quota = || match quota {
            Some(StoreError::QuotaExceeded { used, quota }) => Err(StoreError::QuotaExceeded {
                used: *used,
                quota: *quota,
            }),
            _ => Ok(()),
        };
        match command {
            Command::Put(req) => {
                self.validate_put(req)?;
                over_quota()?;
                self.begin_revision();
                let resp = self.put(req)?;
                Ok(Outcome::Put(resp))
            }
            Command::Delete(req) => {
                validate_range(&req.range)?;
                let keys = self.keys_in(&req.range)?;
                if keys.is_empty() {
                    return Ok(Outcome::Delete(DeleteResponse {
                        revision: self.writer.revision,
                        ..Default::default()
                    }));
                }
                self.begin_revision();
                let resp = self.delete_keys(keys, req.prev_kv)?;
                Ok(Outcome::Delete(resp))
            }
            Command::Txn(txn) => {
                self.validate_txn(txn)?;
                let mut succeeded = true;
                for compare in &txn.compare {
                    let kv = read::current(&self.latest, &compare.key)?;
                    if !compare.holds(kv.as_ref()) {
                        succeeded = false;
                        break;
                    }
                }
                let ops = if succeeded {
                    &txn.success
                } else {
                    &txn.failure
                };
                let writes = ops.iter().any(|op| !matches!(op, TxnOp::Range(_)));
                if ops.iter().any(|op| matches!(op, TxnOp::Put(_))) {
                    over_quota()?;
                }
                let revision_before = self.writer.revision;
                let mut started = false;
                let mut responses = Vec::with_capacity(ops.len());
                for op in ops {
                    let response = match op {
                        TxnOp::Range(req) => TxnOpResponse::Range(self.range(req)?),
                        TxnOp::Put(req) => {
                            if !started {
                                self.begin_revision();
                                started = true;
                            }
                            TxnOpResponse::Put(self.put(req)?)
                        }
                        TxnOp::Delete(req) => {
                            let keys = self.keys_in(&req.range)?;
                            if !keys.is_empty() && !started {
                                self.begin_revision();
                                started = true;
                            }
                            TxnOpResponse::Delete(if keys.is_empty() {
                                DeleteResponse {
                                    revision: self.writer.revision,
                                    ..Default::default()
                                }
                            } else {
                                self.delete_keys(keys, req.prev_kv)?
                            })
                        }
                    };
                    responses.push(response);
                }
                debug_assert!(writes || self.writer.revision == revision_before);
                // Responses report the transaction's final revision, as etcd's header does.
                let revision = self.writer.revision;
                for response in &mut responses {
                    match response {
                        TxnOpResponse::Range(r) => r.revision = revision,
                        TxnOpResponse::Put(r) => r.revision = revision,
                        TxnOpResponse::Delete(r) => r.revision = revision,
                    }
                }
                Ok(Outcome::Txn(TxnResponse {
                    revision,
                    succeeded,
                    responses,
                }))
            }
            Command::LeaseGrant { ttl_secs } => {
                crate::error::check_lease_ttl(*ttl_secs)?;
                let id = self.writer.lock_leases().new_id();
                self.lease_table
                    .insert(id as u64, *ttl_secs)
                    .map_err(db_err)?;
                Change::LeasePut(id as u64, *ttl_secs).encode(&mut self.changes);
                self.writer.lock_leases().grant(id, *ttl_secs);
                Ok(Outcome::LeaseGrant(LeaseGrant {
                    id,
                    ttl_secs: *ttl_secs,
                }))
            }
            Command::LeaseRevoke { id } => {
                if !self.writer.lock_leases().contains(*id) {
                    return Err(StoreError::LeaseNotFound(*id));
                }
                self.revoke_lease(*id)?;
                Ok(Outcome::Done)
            }
            Command::Compact { revision } => {
                self.compact(*revision)?;
                Ok(Outcome::Done)
            }
        }
    }

    fn validate_put(&self, req: &PutRequest) -> Result<()> {
        check_put(&req.key, &req.value)?;
        if req.lease != 0 && !self.writer.lock_leases().contains(req.lease) {
            return Err(StoreError::LeaseNotFound(req.lease));
        }
        Ok(())
    }

    fn validate_txn(&self, txn: &Txn) -> Result<()> {
        for compare in &txn.compare {
            check_key(&compare.key)?;
        }
        for ops in [&txn.success, &txn.failure] {
            let mut put_keys = BTreeSet::new();
            for op in ops {
                match op {
                    TxnOp::Put(req) => {
                        self.validate_put(req)?;
                        if !put_keys.insert(req.key.as_slice()) {
                            return Err(StoreError::DuplicateKeyInTxn {
                                key: printable(&req.key),
                            });
                        }
                    }
                    TxnOp::Range(req) => validate_range(&req.range)?,
                    TxnOp::Delete(req) => validate_range(&req.range)?,
                }
            }
            for op in ops {
                if let TxnOp::Delete(req) = op {
                    if let Some(key) = put_keys.iter().find(|k| req.range.contains(k)) {
                        return Err(StoreError::DuplicateKeyInTxn {
                            key: printable(key),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn begin_revision(&mut self) {
        self.writer.revision += 1;
        self.sub = 0;
    }

    fn log_event(&mut self, key: &[u8]) -> Result<()> {
        let id = (self.writer.revision as u64, self.sub);
        self.events_log.insert(id, key).map_err(db_err)?;
        Change::EventPut(id.0, id.1, key).encode(&mut self.changes);
        self.sub += 1;
        Ok(())
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        read::range(
            &self.latest,
            &self.history,
            req,
            self.writer.revision,
            self.writer.compact_revision,
        )
    }

    fn keys_in(&self, range: &KeyRange) -> Result<Vec<Vec<u8>>> {
        let req = RangeRequest::new(range.clone()).keys_only();
        Ok(self.range(&req)?.kvs.into_iter().map(|kv| kv.key).collect())
    }

    fn put(&mut self, req: &PutRequest) -> Result<PutResponse> {
        let revision = self.writer.revision;
        let prev = read::current(&self.latest, &req.key)?;
        if let Some(prev) = &prev {
            self.add_history(&req.key, prev.mod_revision, &Record::live(prev).encode())?;
        }
        let kv = KeyValue {
            key: req.key.clone(),
            value: req.value.clone(),
            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease: req.lease,
        };
        self.set_latest(&req.key, &Record::live(&kv).encode())?;
        self.log_event(&req.key)?;
        {
            let mut leases = self.writer.lock_leases();
            if let Some(prev) = &prev {
                if prev.lease != 0 && prev.lease != req.lease {
                    leases.detach(prev.lease, &req.key);
                }
            }
            if req.lease != 0 {
                leases.attach(req.lease, &req.key);
            }
        }
        self.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: prev.clone(),
        });
        Ok(PutResponse {
            revision,
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    /// Deletes existing keys at the current revision (the caller has begun it).
    fn delete_keys(&mut self, keys: Vec<Vec<u8>>, want_prev: bool) -> Result<DeleteResponse> {
        let revision = self.writer.revision;
        let mut resp = DeleteResponse {
            revision,
            deleted: 0,
            prev_kvs: Vec::new(),
        };
        for key in keys {
            let Some(prev) = read::current(&self.latest, &key)? else {
                continue;
            };
            self.add_history(&key, prev.mod_revision, &Record::live(&prev).encode())?;
            self.add_history(&key, revision, &Record::tombstone(revision).encode())?;
            self.latest.remove(key.as_slice()).map_err(db_err)?;
            Change::LatestDelete(&key).encode(&mut self.changes);
            self.log_event(&key)?;
            if prev.lease != 0 {
                self.writer.lock_leases().detach(prev.lease, &key);
            }
            resp.deleted += 1;
            if want_prev {
                resp.prev_kvs.push(prev.clone());
            }
            self.events.push(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key,
                    mod_revision: revision,
                    ..Default::default()
                },
                prev_kv: Some(prev),
            });
        }
        Ok(resp)
    }

    fn revoke_lease(&mut self, id: LeaseId) -> Result<()> {
        let keys = self.writer.lock_leases().remove(id).unwrap_or_default();
        self.lease_table.remove(id as u64).map_err(db_err)?;
        Change::LeaseDelete(id as u64).encode(&mut self.changes);
        if !keys.is_empty() {
            self.begin_revision();
            self.delete_keys(keys, false)?;
        }
        Ok(())
    }

    fn compact(&mut self, revision: Revision) -> Result<()> {
        let current = self.writer.revision;
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        if revision <= self.writer.compact_revision {
            return Err(StoreError::Compacted {
                requested: revision,
                compact_revision: self.writer.compact_revision,
            });
        }
        let started = Instant::now();
        self.unlogged = true;
        self.events_log
            .retain_in(..(revision as u64, 0u32), |_, _| false)
            .map_err(db_err)?;
        // Per key, history at or before `revision` is needed only for the newest version
        // not after it, and only while that version is not the live one (reads at
        // `revision` find the live one in `latest`); tombstones go unless the event that
        // references them (at exactly `revision`) is still in the log.
        let mut doomed: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut group: Vec<(u64, bool)> = Vec::new();
        let mut group_key: Option<Vec<u8>> = None;
        let flush = |key: &[u8],
                     group: &mut Vec<(u64, bool)>,
                     doomed: &mut Vec<(Vec<u8>, u64)>,
                     live_covers: bool| {
            let newest = group.len().saturating_sub(1);
            for (i, (rev, tombstone)) in group.drain(..).enumerate() {
                let keep = i == newest && !live_covers && (!tombstone || rev as i64 == revision);
                if !keep {
                    doomed.push((key.to_vec(), rev));
                }
            }
        };
        for entry in self.history.iter().map_err(db_err)? {
            let (id, value) = entry.map_err(db_err)?;
            let (key, rev) = id.value();
            if rev as i64 > revision {
                continue;
            }
            if group_key.as_deref() != Some(key) {
                if let Some(prev_key) = group_key.take() {
                    let live = live_at_or_before(&self.latest, &prev_key, revision)?;
                    flush(&prev_key, &mut group, &mut doomed, live);
                }
                group_key = Some(key.to_vec());
            }
            let tombstone = Record::decode_header(value.value())
                .ok_or_else(|| read::corrupt_record(key))?
                .tombstone;
            group.push((rev, tombstone));
        }
        if let Some(prev_key) = group_key.take() {
            let live = live_at_or_before(&self.latest, &prev_key, revision)?;
            flush(&prev_key, &mut group, &mut doomed, live);
        }
        for (key, rev) in &doomed {
            self.history
                .remove((key.as_slice(), *rev))
                .map_err(db_err)?;
        }
        self.writer.compact_revision = revision;
        tracing::info!(
            revision,
            removed_versions = doomed.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compacted store"
        );
        Ok(())
    }
}

fn live_at_or_before(
    latest: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
    revision: Revision,
) -> Result<bool> {
    Ok(read::current(latest, key)?.is_some_and(|kv| kv.mod_revision <= revision))
}

pub(super) fn validate_range(range: &KeyRange) -> Result<()> {
    if range.end.is_none() || !range.start.is_empty() {
        check_key(&range.start)?;
    }
    Ok(())
}

#[cfg(test)]
mod wal_properties;
