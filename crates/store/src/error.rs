use crate::types::Revision;

/// Everything that can go wrong in the store. Each message names the cause and, where the
/// caller can do something about it, what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("revision {requested} has been compacted; the oldest readable revision is {compact_revision}: list again from the latest revision")]
    Compacted {
        requested: Revision,
        compact_revision: Revision,
    },
    #[error("revision {requested} is newer than the store's current revision {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("key of {len} bytes is longer than the limit of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value of {len} bytes for key {key:?} is larger than the limit of {max} bytes")]
    ValueTooLarge { key: String, len: usize, max: usize },
    #[error("empty key: every key needs at least one byte")]
    EmptyKey,
    #[error("transaction puts or deletes key {key:?} more than once")]
    DuplicateKeyInTxn { key: String },
    #[error("lease {0} not found (it expired or was revoked)")]
    LeaseNotFound(i64),
    #[error("lease TTL must be between 1 and {max} seconds, got {got}")]
    InvalidLeaseTtl { got: i64, max: i64 },
    #[error("store is over its size quota ({used} of {quota} bytes used): compact old revisions or delete data, or raise the quota")]
    QuotaExceeded { used: u64, quota: u64 },
    #[error("watch cancelled: {reason}")]
    WatchCancelled { reason: String },
    #[error("data file {path} is already in use by another process; stop that process or choose another data directory")]
    Locked { path: String },
    #[error("data file {path} is corrupted or is not a Korvet store: {detail}")]
    Corrupted { path: String, detail: String },
    #[error("etcd at {endpoints} is unreachable: {detail}")]
    Unavailable { endpoints: String, detail: String },
    #[error("invalid store URL {url:?}: {detail}")]
    InvalidUrl { url: String, detail: String },
    #[error("the store is closed")]
    Closed,
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store backend error: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) fn printable(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    if key.len() > crate::types::MAX_KEY_BYTES {
        return Err(StoreError::KeyTooLarge {
            len: key.len(),
            max: crate::types::MAX_KEY_BYTES,
        });
    }
    Ok(())
}

pub(crate) fn check_put(key: &[u8], value: &[u8]) -> Result<()> {
    check_key(key)?;
    if value.len() > crate::types::MAX_VALUE_BYTES {
        return Err(StoreError::ValueTooLarge {
            key: printable(key),
            len: value.len(),
            max: crate::types::MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// Both backends accept the same lease TTLs, so a TTL valid on one is valid on the other.
pub(crate) fn check_lease_ttl(ttl_secs: i64) -> Result<()> {
    let max = crate::types::MAX_LEASE_TTL_SECS;
    if !(1..=max).contains(&ttl_secs) {
        return Err(StoreError::InvalidLeaseTtl { got: ttl_secs, max });
    }
    Ok(())
}
