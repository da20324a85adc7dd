//! The [`Store`] backed by an etcd v3 cluster (tested against etcd 3.4).

mod convert;
mod local;
mod watch;

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, ConnectOptions, Error as EtcdError, KvClient, LeaseClient, LeaseTimeToLiveOptions,
    MaintenanceClient, WatchClient, WatchOptions,
};
use tokio::time::{timeout, Instant};

use self::convert::{header_revision, into_key_value, Kind};
pub use self::local::{LocalEtcd, LocalEtcdOptions, DEFAULT_ETCD_BINARY};
use crate::error::{check_put, Result, StoreError};
use crate::types::*;
use crate::{Store, Watch};

/// etcd's default `--quota-backend-bytes`, reported when etcd does not say (before 3.6).
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Upper bound for one unary call, so a member that accepts connections but never answers
/// does not hang the caller; etcd itself gives up on a proposal after about 7 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a failed call is retried on other members (enough for a leader election).
const RETRY_BUDGET: Duration = Duration::from_secs(6);
/// How long to wait for etcd's answer to a watch creation or a compaction probe.
const WATCH_SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Range responses can hold many 1.5 MiB values; etcd sends up to 2 GiB.
const MAX_DECODING_BYTES: usize = i32::MAX as usize;

/// Whether a failed call may be sent again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads, keep-alives: resending cannot change anything.
    Idempotent,
    /// Writes: only if etcd certainly did not apply the first attempt.
    IfNotApplied,
}

/// A [`Store`] on an etcd cluster, talking to all given members (load-balanced, with
/// failed calls retried on another member).
pub struct EtcdStore {
    /// For error messages.
    endpoints: String,
    kv: KvClient,
    watch: WatchClient,
    lease: LeaseClient,
    maintenance: MaintenanceClient,
    quota_bytes: u64,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the etcd members at `endpoints` (`http://HOST:PORT`) and checks that one
    /// of them answers within a few seconds.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let joined = endpoints.join(",");
        let unavailable = |detail: String| StoreError::Unavailable {
            endpoints: joined.clone(),
            detail,
        };
        if endpoints.is_empty() {
            return Err(unavailable("no etcd endpoint given".to_string()));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // A member cut off from the quorum then fails calls (and ends watches) at once
            // instead of serving stale data or stalling.
            .with_require_leader(true);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|err| unavailable(convert::detail(&err)))?;
        let store = Self {
            endpoints: joined.clone(),
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_DECODING_BYTES),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_DECODING_BYTES),
            lease: client.lease_client(),
            maintenance: client.maintenance_client(),
            quota_bytes: DEFAULT_QUOTA_BYTES,
        };
        // etcd-client connects lazily; without this check a wrong address would only show
        // on the first real call.
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut last_error = "no answer".to_string();
        while Instant::now() < deadline {
            let mut maintenance = store.maintenance.clone();
            match timeout(
                deadline.saturating_duration_since(Instant::now()),
                maintenance.status(),
            )
            .await
            {
                Ok(Ok(_)) => return Ok(store),
                Ok(Err(err)) if convert::kind(&err) == Kind::Unavailable => {
                    last_error = convert::detail(&err);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(err)) => return Err(unavailable(convert::detail(&err))),
                Err(_) => break,
            }
        }
        Err(unavailable(format!(
            "no member answered within {} s: {last_error}",
            CONNECT_TIMEOUT.as_secs()
        )))
    }

    /// The size limit `status()` reports when etcd does not report its own (etcd < 3.6):
    /// the `--quota-backend-bytes` the cluster was started with.
    pub fn with_quota(mut self, quota_bytes: u64) -> Self {
        self.quota_bytes = quota_bytes;
        self
    }

    /// Runs `call` until it succeeds, fails in a way retrying cannot fix, or the retry
    /// budget is spent. The client balances calls over all members, so a retry usually
    /// reaches another one.
    async fn retry<T, F, Fut>(&self, retry: Retry, mut call: F) -> Result<T, EtcdError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, EtcdError>>,
    {
        let deadline = Instant::now() + RETRY_BUDGET;
        let mut backoff = Duration::from_millis(20);
        loop {
            let err = match call().await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            let retryable = match retry {
                Retry::Idempotent => convert::kind(&err) == Kind::Unavailable,
                Retry::IfNotApplied => convert::surely_not_applied(&err),
            };
            if !retryable || Instant::now() + backoff > deadline {
                return Err(err);
            }
            tracing::debug!(error = %convert::detail(&err), "etcd call failed, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Maps an etcd error, asking etcd for what the message leaves out. `revision` is the
    /// revision the request asked for, `lease` the lease it named.
    async fn error(&self, err: EtcdError, revision: Revision, lease: LeaseId) -> StoreError {
        match convert::kind(&err) {
            Kind::Compacted => self.compacted(revision).await,
            Kind::FutureRevision => StoreError::FutureRevision {
                requested: revision,
                current: self.current_revision().await.unwrap_or(0),
            },
            Kind::LeaseNotFound => StoreError::LeaseNotFound(lease),
            Kind::NoSpace => {
                let mut maintenance = self.maintenance.clone();
                let used = match maintenance.status().await {
                    Ok(status) => u64::try_from(status.db_size()).unwrap_or(0),
                    Err(_) => 0,
                };
                StoreError::QuotaExceeded {
                    used,
                    quota: self.quota_bytes,
                }
            }
            Kind::DuplicateKey => StoreError::DuplicateKeyInTxn { key: String::new() },
            Kind::Unavailable | Kind::Other => convert::simple_error(&err, &self.endpoints),
        }
    }

    async fn compacted(&self, requested: Revision) -> StoreError {
        let compact_revision = match self.compact_revision().await {
            Ok(revision) => revision,
            Err(err) => {
                tracing::debug!(%err, "could not find etcd's compaction revision");
                0
            }
        };
        StoreError::Compacted {
            requested,
            compact_revision,
        }
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.range_raw(&[0], 0)
            .await
            .map(|resp| resp.revision)
            .map_err(|err| convert::simple_error(&err, &self.endpoints))
    }

    /// A cheap linearizable read of one key at `revision`, used to learn the current revision
    /// or whether `revision` has been compacted.
    async fn range_raw(&self, key: &[u8], revision: Revision) -> Result<RangeResponse, EtcdError> {
        let options = etcd_client::GetOptions::new()
            .with_revision(revision)
            .with_count_only();
        let resp = self
            .retry(Retry::Idempotent, || {
                let mut kv = self.kv.clone();
                let (key, options) = (key.to_vec(), options.clone());
                async move { kv.get(key, Some(options)).await }
            })
            .await?;
        Ok(RangeResponse {
            revision: header_revision(resp.header()),
            kvs: Vec::new(),
            count: resp.count(),
            more: resp.more(),
        })
    }

    /// The oldest revision still readable, 0 if etcd was never compacted.
    ///
    /// etcd 3.4 reports it nowhere directly (not in Status, not in the "compacted" error);
    /// only a watch from before the compaction is told. So: if revision 1 is still
    /// readable nothing was compacted, else a watch from revision 1 learns the revision
    /// (at once, as etcd cancels such a watch before reading any history).
    async fn compact_revision(&self) -> Result<Revision> {
        match self.range_raw(&[0], 1).await {
            Ok(_) => return Ok(0),
            Err(err) if convert::kind(&err) == Kind::Compacted => {}
            Err(err) => return Err(convert::simple_error(&err, &self.endpoints)),
        }
        let stream = self
            .retry(Retry::Idempotent, || {
                let mut watch = self.watch.clone();
                async move {
                    watch
                        .watch(vec![0], Some(WatchOptions::new().with_start_revision(1)))
                        .await
                }
            })
            .await
            .map_err(|err| convert::simple_error(&err, &self.endpoints))?;
        let (_sender, mut responses) = stream.split();
        let probe = async {
            loop {
                match responses.message().await {
                    Ok(Some(resp)) if resp.compact_revision() > 0 => {
                        return Ok(resp.compact_revision())
                    }
                    Ok(Some(resp)) if resp.canceled() => {
                        return Err(StoreError::Backend(format!(
                            "etcd cancelled the compaction probe: {}",
                            resp.cancel_reason()
                        )))
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Err(StoreError::Backend(
                            "etcd closed the compaction probe".to_string(),
                        ))
                    }
                    Err(err) => return Err(convert::simple_error(&err, &self.endpoints)),
                }
            }
        };
        timeout(WATCH_SETUP_TIMEOUT, probe)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Backend(
                    "etcd did not answer the compaction probe".to_string(),
                ))
            })
    }
}

fn range_response(mut resp: etcd_client::GetResponse, revision: Revision) -> RangeResponse {
    RangeResponse {
        revision,
        count: resp.count(),
        more: resp.more(),
        kvs: resp.take_kvs().into_iter().map(into_key_value).collect(),
    }
}

fn delete_response(mut resp: etcd_client::DeleteResponse, revision: Revision) -> DeleteResponse {
    DeleteResponse {
        revision,
        deleted: resp.deleted(),
        prev_kvs: resp
            .take_prev_kvs()
            .into_iter()
            .map(into_key_value)
            .collect(),
    }
}

/// The revision of a response nested in a transaction. etcd gives each its own header (the
/// revision it saw); older servers may leave it empty, so fall back to the transaction's.
fn nested_revision(header: Option<&etcd_client::ResponseHeader>, txn_revision: Revision) -> i64 {
    match header_revision(header) {
        0 => txn_revision,
        revision => revision,
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        let (key, options) = convert::get_options(&req)?;
        let result = self
            .retry(Retry::Idempotent, || {
                let mut kv = self.kv.clone();
                let (key, options) = (key.clone(), options.clone());
                async move { kv.get(key, Some(options)).await }
            })
            .await;
        match result {
            Ok(resp) => {
                let revision = header_revision(resp.header());
                Ok(range_response(resp, revision))
            }
            Err(err) => Err(self.error(err, req.revision, 0).await),
        }
    }

    async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        check_put(&req.key, &req.value)?;
        let options = convert::put_options(req.lease, req.prev_kv);
        let result = self
            .retry(Retry::IfNotApplied, || {
                let mut kv = self.kv.clone();
                let (key, value, options) = (req.key.clone(), req.value.clone(), options.clone());
                async move { kv.put(key, value, Some(options)).await }
            })
            .await;
        match result {
            Ok(mut resp) => Ok(PutResponse {
                revision: header_revision(resp.header()),
                prev_kv: resp.take_prev_key().map(into_key_value),
            }),
            Err(err) => Err(self.error(err, 0, req.lease).await),
        }
    }

    async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        let (key, options) = convert::delete_options(&req.range, req.prev_kv)?;
        let result = self
            .retry(Retry::IfNotApplied, || {
                let mut kv = self.kv.clone();
                let (key, options) = (key.clone(), options.clone());
                async move { kv.delete(key, Some(options)).await }
            })
            .await;
        match result {
            Ok(resp) => {
                let revision = header_revision(resp.header());
                Ok(delete_response(resp, revision))
            }
            Err(err) => Err(self.error(err, 0, 0).await),
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let compares = txn
            .compare
            .iter()
            .map(convert::compare)
            .collect::<Result<Vec<_>>>()?;
        let success = txn
            .success
            .iter()
            .map(convert::txn_op)
            .collect::<Result<Vec<_>>>()?;
        let failure = txn
            .failure
            .iter()
            .map(convert::txn_op)
            .collect::<Result<Vec<_>>>()?;
        let request = etcd_client::Txn::new()
            .when(compares)
            .and_then(success)
            .or_else(failure);
        let result = self
            .retry(Retry::IfNotApplied, || {
                let mut kv = self.kv.clone();
                let request = request.clone();
                async move { kv.txn(request).await }
            })
            .await;
        let resp = match result {
            Ok(resp) => resp,
            Err(err) if convert::kind(&err) == Kind::DuplicateKey => {
                return Err(convert::duplicate_key_error(&txn.success, &txn.failure));
            }
            Err(err) => {
                // The error names no operation; a compacted or future read revision can
                // only come from a range operation, and the first one that asks for a
                // revision is the best guess at which.
                let revision = txn
                    .success
                    .iter()
                    .chain(&txn.failure)
                    .find_map(|op| match op {
                        TxnOp::Range(r) if r.revision > 0 => Some(r.revision),
                        _ => None,
                    })
                    .unwrap_or(0);
                let lease = txn
                    .success
                    .iter()
                    .chain(&txn.failure)
                    .find_map(|op| match op {
                        TxnOp::Put(p) if p.lease != 0 => Some(p.lease),
                        _ => None,
                    })
                    .unwrap_or(0);
                return Err(self.error(err, revision, lease).await);
            }
        };
        let revision = header_revision(resp.header());
        let responses = resp
            .op_responses()
            .into_iter()
            .map(|op| match op {
                etcd_client::TxnOpResponse::Get(r) => {
                    let rev = nested_revision(r.header(), revision);
                    Ok(TxnOpResponse::Range(range_response(r, rev)))
                }
                etcd_client::TxnOpResponse::Put(mut r) => Ok(TxnOpResponse::Put(PutResponse {
                    revision: nested_revision(r.header(), revision),
                    prev_kv: r.take_prev_key().map(into_key_value),
                })),
                etcd_client::TxnOpResponse::Delete(r) => {
                    let rev = nested_revision(r.header(), revision);
                    Ok(TxnOpResponse::Delete(delete_response(r, rev)))
                }
                etcd_client::TxnOpResponse::Txn(_) => Err(StoreError::Backend(
                    "etcd answered with a nested transaction we did not send".to_string(),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TxnResponse {
            revision,
            succeeded: resp.succeeded(),
            responses,
        })
    }

    async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseGrant> {
        crate::error::check_lease_ttl(ttl_secs)?;
        let result = self
            .retry(Retry::IfNotApplied, || {
                let mut lease = self.lease.clone();
                async move { lease.grant(ttl_secs, None).await }
            })
            .await;
        match result {
            Ok(resp) if resp.error().is_empty() => Ok(LeaseGrant {
                id: resp.id(),
                ttl_secs: resp.ttl(),
            }),
            Ok(resp) => Err(StoreError::Backend(format!(
                "etcd refused the lease: {}",
                resp.error()
            ))),
            Err(err) => Err(self.error(err, 0, 0).await),
        }
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        let result = self
            .retry(Retry::IfNotApplied, || {
                let mut lease = self.lease.clone();
                async move { lease.revoke(id).await }
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) => Err(self.error(err, 0, id).await),
        }
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64> {
        // etcd-client's `keep_alive` already renews once and reads the answer, but keeps
        // the TTL to itself; the second renewal on the same stream is what tells it.
        let result = self
            .retry(Retry::Idempotent, || {
                let mut lease = self.lease.clone();
                async move {
                    let (mut keeper, mut stream) = lease.keep_alive(id).await?;
                    keeper.keep_alive().await?;
                    stream.message().await
                }
            })
            .await;
        match result {
            Ok(Some(resp)) if resp.ttl() > 0 => Ok(resp.ttl()),
            Ok(Some(_)) => Err(StoreError::LeaseNotFound(id)),
            Ok(None) => Err(StoreError::Unavailable {
                endpoints: self.endpoints.clone(),
                detail: "etcd closed the lease keep-alive stream without answering".to_string(),
            }),
            Err(err) => Err(self.error(err, 0, id).await),
        }
    }

    async fn lease_time_to_live(&self, id: LeaseId) -> Result<LeaseInfo> {
        let result = self
            .retry(Retry::Idempotent, || {
                let mut lease = self.lease.clone();
                async move {
                    lease
                        .time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
                        .await
                }
            })
            .await;
        let missing = LeaseInfo {
            id,
            remaining_secs: -1,
            granted_ttl_secs: 0,
            keys: Vec::new(),
        };
        match result {
            // etcd answers TTL -1 (not an error) for a lease it does not know.
            Ok(resp) if resp.ttl() < 0 => Ok(missing),
            Ok(resp) => Ok(LeaseInfo {
                id,
                remaining_secs: resp.ttl(),
                granted_ttl_secs: resp.granted_ttl(),
                keys: resp.keys().to_vec(),
            }),
            Err(err) if convert::kind(&err) == Kind::LeaseNotFound => Ok(missing),
            Err(err) => Err(self.error(err, 0, id).await),
        }
    }

    async fn watch(&self, req: WatchRequest) -> Result<Watch> {
        let (key, end) = convert::etcd_range(&req.range)?;
        if req.start_revision > 0 {
            // etcd 3.4 accepts a watch from a compacted revision and cancels it only in a
            // later response; asking first lets `watch()` itself fail, as the trait wants.
            // A future start revision is fine for a watch (it waits), so only compaction
            // counts here.
            match self.range_raw(&key, req.start_revision).await {
                Err(err) if convert::kind(&err) == Kind::Compacted => {
                    return Err(self.compacted(req.start_revision).await)
                }
                Err(err) if convert::kind(&err) != Kind::FutureRevision => {
                    return Err(convert::simple_error(&err, &self.endpoints))
                }
                _ => {}
            }
        }
        let mut options = WatchOptions::new().with_start_revision(req.start_revision);
        if let Some(end) = end {
            options = options.with_range(end);
        }
        if req.prev_kv {
            options = options.with_prev_key();
        }
        if req.progress_notify {
            options = options.with_progress_notify();
        }
        let stream = self
            .retry(Retry::Idempotent, || {
                let mut watch = self.watch.clone();
                let (key, options) = (key.clone(), options.clone());
                async move { watch.watch(key, Some(options)).await }
            })
            .await
            .map_err(|err| convert::simple_error(&err, &self.endpoints))?;
        let (sender, mut responses) = stream.split();
        let created = match timeout(WATCH_SETUP_TIMEOUT, responses.message()).await {
            Ok(Ok(Some(created))) => created,
            Ok(Ok(None)) => {
                return Err(StoreError::Backend(
                    "etcd closed the watch stream before creating the watch".to_string(),
                ))
            }
            Ok(Err(err)) => return Err(convert::simple_error(&err, &self.endpoints)),
            Err(_) => {
                return Err(StoreError::Unavailable {
                    endpoints: self.endpoints.clone(),
                    detail: "etcd did not confirm the watch in time".to_string(),
                })
            }
        };
        if created.compact_revision() > 0 {
            return Err(StoreError::Compacted {
                requested: req.start_revision,
                compact_revision: created.compact_revision(),
            });
        }
        if created.canceled() || !created.created() {
            return Err(StoreError::Backend(format!(
                "etcd refused the watch: {}",
                created.cancel_reason()
            )));
        }
        Ok(watch::spawn(
            sender,
            responses,
            created.watch_id(),
            req.start_revision,
            self.endpoints.clone(),
        ))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let result = self
            .retry(Retry::IfNotApplied, || {
                let mut kv = self.kv.clone();
                async move {
                    kv.compact(
                        revision,
                        Some(etcd_client::CompactionOptions::new().with_physical()),
                    )
                    .await
                }
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) => Err(self.error(err, revision, 0).await),
        }
    }

    async fn status(&self) -> Result<StoreStatus> {
        let result = self
            .retry(Retry::Idempotent, || {
                let mut maintenance = self.maintenance.clone();
                async move { maintenance.status().await }
            })
            .await;
        let status = match result {
            Ok(status) => status,
            Err(err) => return Err(self.error(err, 0, 0).await),
        };
        let quota_bytes = match u64::try_from(status.db_size_quota()) {
            Ok(quota) if quota > 0 => quota,
            _ => self.quota_bytes,
        };
        Ok(StoreStatus {
            revision: header_revision(status.header()),
            compact_revision: self.compact_revision().await?,
            db_size_bytes: u64::try_from(status.db_size()).unwrap_or(0),
            quota_bytes,
            backend: "etcd".to_string(),
        })
    }
}
