//! The embedded backend: the whole store in one redb file under a data directory.
//!
//! Reads run on redb snapshots from any task. Writes go to one writer thread
//! ([`writer`]) that commits them in batches; watches replay the change log
//! ([`read::replay`]) and then follow the writer's fan-out ([`hub`]).

#[doc(hidden)]
pub mod fuzz;
mod hub;
mod leases;
mod read;
mod schema;
mod wal;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase};
use tokio::sync::{mpsc, oneshot};

use self::hub::{EmbeddedWatchControl, WatchHub, WatcherState, WATCHER_BUFFER};
use self::leases::Leases;
use self::read::db_err;
use self::schema::*;
use self::wal::{Change, LoggedBatch, Wal, WAL_FILE};
use self::writer::{validate_range, Command, Outcome, Request, Resume, Writer};
use crate::error::{Result, StoreError};
use crate::types::*;
use crate::watch::Watch;
use crate::Store;

/// File name of the store inside its data directory.
pub const DATA_FILE: &str = "store.redb";
const LOCK_FILE: &str = "store.lock";
/// Events read from the change log per step while a watcher catches up.
const REPLAY_CHUNK: usize = 1000;

#[derive(Clone, Debug)]
pub struct Options {
    /// Writes that add data fail once the file reaches this size.
    pub quota_bytes: u64,
    /// How often watchers that asked for progress notifications get one.
    pub progress_interval: Duration,
    /// Automatic compaction; `None` compacts only on demand.
    pub auto_compaction: Option<AutoCompaction>,
}

/// Every `interval`, compact away history older than one interval, keeping at least the
/// last `keep_revisions` revisions (the Kubernetes API server compacts every 5 minutes).
#[derive(Clone, Debug)]
pub struct AutoCompaction {
    pub interval: Duration,
    pub keep_revisions: i64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            quota_bytes: 8 * 1024 * 1024 * 1024,
            progress_interval: Duration::from_secs(5),
            auto_compaction: Some(AutoCompaction {
                interval: Duration::from_secs(300),
                keep_revisions: 10_000,
            }),
        }
    }
}

pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    options: Options,
    /// The writer's queue. Background tasks hold it weakly: dropping the store must close
    /// it even when no other thread is free to run their cancellation.
    requests: Option<Arc<std::sync::mpsc::Sender<Request>>>,
    hub: Arc<WatchHub>,
    leases: Arc<Mutex<Leases>>,
    writer: Option<JoinHandle<()>>,
    background: Vec<tokio::task::AbortHandle>,
    /// Held for the store's lifetime: a second process (or handle) cannot open the file.
    _lock: File,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`.
    pub async fn open(dir: &Path, options: Options) -> Result<Self> {
        let dir = dir.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || open_file(&dir))
            .await
            .map_err(|e| StoreError::Backend(format!("opening the store panicked: {e}")))??;
        let (db, path, lock, resume) = opened;
        let revision = resume.revision;
        let db = Arc::new(db);
        let leases = Arc::new(Mutex::new(writer::load_leases(&db)?));
        let hub = Arc::new(WatchHub::new(revision));
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = Writer::new(
            db.clone(),
            path.clone(),
            rx,
            hub.clone(),
            leases.clone(),
            resume,
            options.quota_bytes,
        );
        let writer = std::thread::Builder::new()
            .name("korvet-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| StoreError::Io {
                path: path.display().to_string(),
                source,
            })?;
        let mut store = Self {
            db,
            path,
            options,
            requests: Some(Arc::new(tx)),
            hub,
            leases,
            writer: Some(writer),
            background: Vec::new(),
            _lock: lock,
        };
        if let Some(auto) = store.options.auto_compaction.clone() {
            store.background.push(store.spawn_auto_compaction(auto));
        }
        tracing::info!(path = %store.path.display(), revision, "opened embedded store");
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn send(&self, command: Command) -> Result<Outcome> {
        send_command(self.requests.as_deref(), command).await
    }

    fn spawn_auto_compaction(&self, auto: AutoCompaction) -> tokio::task::AbortHandle {
        let requests = self.requests.as_ref().map(Arc::downgrade);
        let db = Arc::downgrade(&self.db);
        tokio::spawn(async move {
            let mut previous_tick_revision = 0;
            let mut ticker = tokio::time::interval(auto.interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(db) = db.upgrade() else { return };
                let Ok((revision, compact)) = snapshot_revisions(&db) else {
                    continue;
                };
                drop(db);
                let target = previous_tick_revision.min(revision - auto.keep_revisions);
                previous_tick_revision = revision;
                if target > compact {
                    let Some(tx) = requests.as_ref().and_then(|weak| weak.upgrade()) else {
                        return;
                    };
                    match send_command(Some(&tx), Command::Compact { revision: target }).await {
                        Ok(_) => {}
                        Err(StoreError::Closed) => return,
                        Err(err) => tracing::warn!(error = %err, "automatic compaction failed"),
                    }
                }
            }
        })
        .abort_handle()
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction, Revision, Revision) -> Result<T>,
    ) -> Result<T> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let (revision, compact) = revisions_in(&txn)?;
        f(&txn, revision, compact)
    }
}

async fn send_command(
    requests: Option<&std::sync::mpsc::Sender<Request>>,
    command: Command,
) -> Result<Outcome> {
    let (reply, answer) = oneshot::channel();
    requests
        .ok_or(StoreError::Closed)?
        .send(Request { command, reply })
        .map_err(|_| StoreError::Closed)?;
    answer.await.map_err(|_| StoreError::Closed)?
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
        // Closing the queue stops the writer after it finishes what it has; joining it
        // releases the file before the lock, so the store can be reopened at once.
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

type Opened = (Database, PathBuf, File, Resume);

fn open_file(dir: &Path) -> Result<Opened> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| StoreError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(DATA_FILE);
    let lock_path = dir.join(LOCK_FILE);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(StoreError::Locked {
                path: path.display().to_string(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
    }
    let exists = std::fs::metadata(&path)
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    let corrupted = |detail: String| StoreError::Corrupted {
        path: path.display().to_string(),
        detail,
    };
    // redb may panic on a damaged file instead of returning an error; never let that
    // take the process down.
    let opened = std::panic::catch_unwind(|| {
        let mut builder = Database::builder();
        builder.set_check_integrity_on_open(exists);
        if exists {
            builder.open(&path)
        } else {
            builder.create(&path)
        }
    })
    .map_err(|_| corrupted("the file could not be read".into()))?;
    let db = match opened {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(StoreError::Locked {
                path: path.display().to_string(),
            })
        }
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
            if e.kind() != std::io::ErrorKind::InvalidData =>
        {
            return Err(io(&path)(e))
        }
        Err(e) => return Err(corrupted(e.to_string())),
    };
    if exists {
        check_format(&db).map_err(|e| match e {
            StoreError::Backend(detail) => corrupted(detail),
            other => other,
        })?;
    } else {
        // A log left from an earlier store in this directory must not replay into this one.
        let wal = dir.join(WAL_FILE);
        if wal.exists() {
            std::fs::remove_file(&wal).map_err(io(&wal))?;
        }
        initialise(&db)?;
    }
    let checkpoint_seq = read_wal_seq(&db)?;
    let (wal, batches) = Wal::open(dir, checkpoint_seq)?;
    let wal_seq = match batches.last() {
        None => checkpoint_seq,
        Some(last) => {
            let seq = last.seq;
            replay_log(&db, &batches).map_err(|e| match e {
                StoreError::Backend(detail) => corrupted(detail),
                other => other,
            })?;
            tracing::info!(batches = batches.len(), "replayed the write-ahead log");
            seq
        }
    };
    let (revision, compact_revision) = snapshot_revisions(&db)?;
    let resume = Resume {
        revision,
        compact_revision,
        wal,
        wal_seq,
    };
    Ok((db, path, lock, resume))
}

fn read_wal_seq(db: &Database) -> Result<u64> {
    let txn = db.begin_read().map_err(db_err)?;
    let meta = txn.open_table(META).map_err(db_err)?;
    let value = meta.get(META_WAL_SEQ).map_err(db_err)?;
    Ok(value
        .and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes))
        .unwrap_or(0))
}

/// Applies the logged batches after the last checkpoint again, durably.
fn replay_log(db: &Database, batches: &[LoggedBatch]) -> Result<()> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut latest = txn.open_table(LATEST).map_err(db_err)?;
        let mut history = txn.open_table(HISTORY).map_err(db_err)?;
        let mut events = txn.open_table(EVENTS).map_err(db_err)?;
        let mut leases = txn.open_table(LEASES).map_err(db_err)?;
        let mut meta = txn.open_table(META).map_err(db_err)?;
        for batch in batches {
            let changes = Change::decode_all(&batch.changes).ok_or_else(|| {
                StoreError::Backend(format!("write-ahead log batch {} is damaged", batch.seq))
            })?;
            for change in changes {
                match change {
                    Change::LatestPut(k, v) => latest.insert(k, v).map(drop),
                    Change::LatestDelete(k) => latest.remove(k).map(drop),
                    Change::HistoryPut(k, rev, v) => history.insert((k, rev), v).map(drop),
                    Change::EventPut(rev, sub, k) => events.insert((rev, sub), k).map(drop),
                    Change::LeasePut(id, ttl) => leases.insert(id, ttl).map(drop),
                    Change::LeaseDelete(id) => leases.remove(id).map(drop),
                    Change::MetaPut(name, v) => meta.insert(name, v).map(drop),
                }
                .map_err(db_err)?;
            }
        }
    }
    txn.commit().map_err(db_err)
}

fn initialise(db: &Database) -> Result<()> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        txn.open_table(LATEST).map_err(db_err)?;
        txn.open_table(HISTORY).map_err(db_err)?;
        txn.open_table(EVENTS).map_err(db_err)?;
        txn.open_table(LEASES).map_err(db_err)?;
        let mut meta = txn.open_table(META).map_err(db_err)?;
        meta.insert(META_FORMAT, FORMAT_MARKER).map_err(db_err)?;
        meta.insert(META_REVISION, encode_revision(1).as_slice())
            .map_err(db_err)?;
        meta.insert(META_COMPACT_REVISION, encode_revision(0).as_slice())
            .map_err(db_err)?;
    }
    txn.commit().map_err(db_err)
}

fn check_format(db: &Database) -> Result<()> {
    let txn = db.begin_read().map_err(db_err)?;
    let meta = txn
        .open_table(META)
        .map_err(|_| StoreError::Backend("it has no Korvet metadata".into()))?;
    let marker = meta.get(META_FORMAT).map_err(db_err)?;
    match marker {
        Some(m) if m.value() == FORMAT_MARKER => Ok(()),
        Some(m) => Err(StoreError::Backend(format!(
            "unsupported format {:?}",
            String::from_utf8_lossy(m.value())
        ))),
        None => Err(StoreError::Backend("it has no Korvet format marker".into())),
    }
}

fn revisions_in(txn: &redb::ReadTransaction) -> Result<(Revision, Revision)> {
    let meta = txn.open_table(META).map_err(db_err)?;
    let get = |name: &str| -> Result<Revision> {
        let value = meta.get(name).map_err(db_err)?;
        value
            .and_then(|v| decode_revision(v.value()))
            .ok_or_else(|| StoreError::Backend(format!("embedded store: metadata {name} missing")))
    };
    Ok((get(META_REVISION)?, get(META_COMPACT_REVISION)?))
}

fn snapshot_revisions(db: &Database) -> Result<(Revision, Revision)> {
    let txn = db.begin_read().map_err(db_err)?;
    revisions_in(&txn)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        validate_range(&req.range)?;
        let serve = |txn: &redb::ReadTransaction, revision, compact| {
            let latest = txn.open_table(LATEST).map_err(db_err)?;
            let history = txn.open_table(HISTORY).map_err(db_err)?;
            read::range(&latest, &history, &req, revision, compact)
        };
        // Long scans go to the blocking pool so they do not stall other tasks.
        let small = req.range.end.is_none() || (req.limit > 0 && req.limit <= 500);
        if small {
            return self.read(serve);
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(db_err)?;
            let (revision, compact) = revisions_in(&txn)?;
            let latest = txn.open_table(LATEST).map_err(db_err)?;
            let history = txn.open_table(HISTORY).map_err(db_err)?;
            read::range(&latest, &history, &req, revision, compact)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("range read panicked: {e}")))?
    }

    async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        match self.send(Command::Put(req)).await? {
            Outcome::Put(resp) => Ok(resp),
            _ => Err(StoreError::Backend("unexpected writer outcome".into())),
        }
    }

    async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        match self.send(Command::Delete(req)).await? {
            Outcome::Delete(resp) => Ok(resp),
            _ => Err(StoreError::Backend("unexpected writer outcome".into())),
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        match self.send(Command::Txn(txn)).await? {
            Outcome::Txn(resp) => Ok(resp),
            _ => Err(StoreError::Backend("unexpected writer outcome".into())),
        }
    }

    async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseGrant> {
        match self.send(Command::LeaseGrant { ttl_secs }).await? {
            Outcome::LeaseGrant(grant) => Ok(grant),
            _ => Err(StoreError::Backend("unexpected writer outcome".into())),
        }
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        self.send(Command::LeaseRevoke { id }).await.map(|_| ())
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64> {
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keep_alive(id)
            .ok_or(StoreError::LeaseNotFound(id))
    }

    async fn lease_time_to_live(&self, id: LeaseId) -> Result<LeaseInfo> {
        Ok(self
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .info(id))
    }

    async fn watch(&self, req: WatchRequest) -> Result<Watch> {
        validate_range(&req.range)?;
        let (tx, rx) = mpsc::channel(WATCHER_BUFFER);
        let cancelled = Arc::new(Mutex::new(None));
        let id = self.hub.next_id();
        let state = WatcherState {
            id,
            range: req.range.clone(),
            prev_kv: req.prev_kv,
            min_revision: req.start_revision,
            tx,
            cancelled: cancelled.clone(),
        };
        let mut tasks = Vec::new();
        let published = self.hub.published();
        if req.start_revision == 0 || req.start_revision > published {
            // Nothing to replay: follow live changes from here on.
            let joined = self.hub.try_join(state, Revision::MAX);
            debug_assert!(joined.is_none());
        } else {
            let (_, compact) = snapshot_revisions(&self.db)?;
            if req.start_revision < compact {
                return Err(StoreError::Compacted {
                    requested: req.start_revision,
                    compact_revision: compact,
                });
            }
            let catch_up = catch_up(self.db.clone(), self.hub.clone(), state, req.clone());
            tasks.push(tokio::spawn(catch_up).abort_handle());
        }
        if req.progress_notify {
            let hub = self.hub.clone();
            let interval = self.options.progress_interval;
            let ticker = async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.tick().await;
                loop {
                    ticker.tick().await;
                    hub.notify_progress(id);
                }
            };
            tasks.push(tokio::spawn(ticker).abort_handle());
        }
        let control = EmbeddedWatchControl {
            hub: self.hub.clone(),
            id,
            cancelled,
            tasks,
        };
        Ok(Watch::new(rx, Box::new(control)))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.send(Command::Compact { revision }).await.map(|_| ())
    }

    async fn status(&self) -> Result<StoreStatus> {
        let (revision, compact_revision) = snapshot_revisions(&self.db)?;
        let db_size_bytes = std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|source| StoreError::Io {
                path: self.path.display().to_string(),
                source,
            })?;
        Ok(StoreStatus {
            revision,
            compact_revision,
            db_size_bytes,
            quota_bytes: self.options.quota_bytes,
            backend: "embedded".into(),
        })
    }
}

/// Replays the change log to a watcher that started in the past, then hands it to the
/// hub once it has reached the published revision.
async fn catch_up(
    db: Arc<Database>,
    hub: Arc<WatchHub>,
    mut state: WatcherState,
    req: WatchRequest,
) {
    let mut next = req.start_revision;
    loop {
        let db = db.clone();
        let range = req.range.clone();
        let step = tokio::task::spawn_blocking(move || -> Result<(Vec<Event>, Revision)> {
            let txn = db.begin_read().map_err(db_err)?;
            let (revision, compact) = revisions_in(&txn)?;
            if next < compact {
                return Err(StoreError::Compacted {
                    requested: next,
                    compact_revision: compact,
                });
            }
            let latest = txn.open_table(LATEST).map_err(db_err)?;
            let history = txn.open_table(HISTORY).map_err(db_err)?;
            let events = txn.open_table(EVENTS).map_err(db_err)?;
            read::replay(
                &latest,
                &history,
                &events,
                &range,
                next..=revision,
                req.prev_kv,
                REPLAY_CHUNK,
            )
        })
        .await;
        let (events, covered) = match step {
            Ok(Ok(step)) => step,
            Ok(Err(err)) => {
                let _ = state.tx.send(Err(err)).await;
                return;
            }
            Err(join) => {
                let _ = state
                    .tx
                    .send(Err(StoreError::Backend(format!(
                        "watch replay failed: {join}"
                    ))))
                    .await;
                return;
            }
        };
        if !events.is_empty() {
            let response = WatchResponse {
                revision: covered,
                events,
            };
            if state.tx.send(Ok(response)).await.is_err() {
                return;
            }
        }
        next = covered + 1;
        match hub.try_join(state, covered) {
            None => return,
            Some(returned) => state = returned,
        }
    }
}
