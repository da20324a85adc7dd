//! Request and response types of the store, modelled on the etcd v3 API so that both
//! backends mean the same thing by every field.

/// A store revision. Revision 0 in a request means "the latest".
pub type Revision = i64;

/// A lease identifier. 0 means "no lease".
pub type LeaseId = i64;

/// Largest key the store accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 4 * 1024;

/// Largest value the store accepts, in bytes (1.5 MiB, etcd's default request limit).
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;

/// Longest lease TTL the store grants (one year).
pub const MAX_LEASE_TTL_SECS: i64 = 365 * 24 * 3600;

/// One key at one revision.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Revision of the put that created this generation of the key.
    pub create_revision: Revision,
    /// Revision of the last put to the key.
    pub mod_revision: Revision,
    /// Number of puts since the key was (re)created; 1 for a new key.
    pub version: i64,
    pub lease: LeaseId,
}

/// Which keys a request addresses: one key, a half-open interval, or a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    /// Exclusive end; `None` addresses the single key `start`.
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        Self {
            start: key.into(),
            end: None,
        }
    }

    /// All keys that start with `prefix`. An empty prefix addresses every key.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let start = prefix.into();
        let end = prefix_end(&start);
        Self {
            start,
            end: Some(end),
        }
    }

    pub fn interval(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        Self {
            start: start.into(),
            end: Some(end.into()),
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            None => key == self.start.as_slice(),
            Some(end) => key >= self.start.as_slice() && (end.is_empty() || key < end.as_slice()),
        }
    }
}

/// The smallest key greater than every key with this prefix; empty means "no upper bound"
/// (etcd's convention for `range_end = "\0"`-style open ranges).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeRequest {
    pub range: KeyRange,
    /// Read the state as of this revision; 0 reads the latest.
    pub revision: Revision,
    /// At most this many keys; 0 means no limit.
    pub limit: i64,
    pub count_only: bool,
    pub keys_only: bool,
}

impl RangeRequest {
    pub fn new(range: KeyRange) -> Self {
        Self {
            range,
            revision: 0,
            limit: 0,
            count_only: false,
            keys_only: false,
        }
    }

    pub fn at_revision(mut self, revision: Revision) -> Self {
        self.revision = revision;
        self
    }

    pub fn with_limit(mut self, limit: i64) -> Self {
        self.limit = limit;
        self
    }

    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }

    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RangeResponse {
    /// Revision of the store when the read was served (not the requested revision).
    pub revision: Revision,
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the range, regardless of `limit`.
    pub count: i64,
    /// Whether `limit` cut off further keys.
    pub more: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: LeaseId,
    pub prev_kv: bool,
}

impl PutRequest {
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            lease: 0,
            prev_kv: false,
        }
    }

    pub fn with_lease(mut self, lease: LeaseId) -> Self {
        self.lease = lease;
        self
    }

    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PutResponse {
    pub revision: Revision,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRequest {
    pub range: KeyRange,
    pub prev_kv: bool,
}

impl DeleteRequest {
    pub fn new(range: KeyRange) -> Self {
        Self {
            range,
            prev_kv: false,
        }
    }

    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DeleteResponse {
    pub revision: Revision,
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    CreateRevision(Revision),
    ModRevision(Revision),
    Value(Vec<u8>),
}

/// One condition of a transaction, on a single key. A missing key has version,
/// create and mod revision 0; a value comparison on a missing key is false.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    pub fn new(key: impl Into<Vec<u8>>, op: CompareOp, target: CompareTarget) -> Self {
        Self {
            key: key.into(),
            op,
            target,
        }
    }

    /// The key does not exist.
    pub fn absent(key: impl Into<Vec<u8>>) -> Self {
        Self::new(key, CompareOp::Equal, CompareTarget::Version(0))
    }

    /// The key exists.
    pub fn present(key: impl Into<Vec<u8>>) -> Self {
        Self::new(key, CompareOp::Greater, CompareTarget::Version(0))
    }

    /// The key was last modified at exactly `revision` (0: the key does not exist).
    pub fn mod_revision(key: impl Into<Vec<u8>>, revision: Revision) -> Self {
        Self::new(key, CompareOp::Equal, CompareTarget::ModRevision(revision))
    }

    /// Whether the condition holds for the key's current state (`None`: absent).
    pub fn holds(&self, kv: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ordering = match (&self.target, kv) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(want), Some(kv)) => kv.value.as_slice().cmp(want.as_slice()),
            (CompareTarget::Version(want), kv) => kv.map_or(0, |kv| kv.version).cmp(want),
            (CompareTarget::CreateRevision(want), kv) => {
                kv.map_or(0, |kv| kv.create_revision).cmp(want)
            }
            (CompareTarget::ModRevision(want), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(want),
        };
        match self.op {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Greater => ordering == Ordering::Greater,
            CompareOp::Less => ordering == Ordering::Less,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRequest),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOpResponse {
    Range(RangeResponse),
    Put(PutResponse),
    Delete(DeleteResponse),
}

/// Compare-then-apply, atomically: if every comparison holds, `success` runs, else `failure`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn when(mut self, compare: impl IntoIterator<Item = Compare>) -> Self {
        self.compare.extend(compare);
        self
    }

    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }

    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TxnResponse {
    pub revision: Revision,
    pub succeeded: bool,
    pub responses: Vec<TxnOpResponse>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    pub id: LeaseId,
    pub ttl_secs: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: LeaseId,
    /// Seconds left before expiry; -1 if the lease does not exist (any more).
    pub remaining_secs: i64,
    pub granted_ttl_secs: i64,
    pub keys: Vec<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For a delete: the key with `mod_revision` set to the deleting revision.
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchRequest {
    pub range: KeyRange,
    /// First revision to deliver; 0 means "changes after now".
    pub start_revision: Revision,
    pub prev_kv: bool,
    /// Ask for empty responses that only say "you have seen everything up to revision R".
    pub progress_notify: bool,
}

impl WatchRequest {
    pub fn new(range: KeyRange) -> Self {
        Self {
            range,
            start_revision: 0,
            prev_kv: false,
            progress_notify: false,
        }
    }

    pub fn from_revision(mut self, revision: Revision) -> Self {
        self.start_revision = revision;
        self
    }

    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    pub fn with_progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }
}

/// A batch of events, or a progress notification (no events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchResponse {
    /// The watcher has seen every change up to and including this revision.
    pub revision: Revision,
    pub events: Vec<Event>,
}

impl WatchResponse {
    pub fn is_progress(&self) -> bool {
        self.events.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StoreStatus {
    pub revision: Revision,
    /// Oldest revision still readable; 0 if never compacted.
    pub compact_revision: Revision,
    /// Space the data takes on disk, in bytes.
    pub db_size_bytes: u64,
    /// Configured size limit, in bytes.
    pub quota_bytes: u64,
    pub backend: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte_and_carries() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"");
        assert_eq!(prefix_end(b""), b"");
    }

    #[test]
    fn key_range_contains() {
        let p = KeyRange::prefix("/a/");
        assert!(p.contains(b"/a/x"));
        assert!(!p.contains(b"/a"));
        assert!(!p.contains(b"/b/"));
        assert!(KeyRange::prefix("").contains(b"anything"));
        assert!(KeyRange::key("k").contains(b"k"));
        assert!(!KeyRange::key("k").contains(b"k2"));
    }

    #[test]
    fn compare_on_missing_key() {
        assert!(Compare::absent("k").holds(None));
        assert!(!Compare::present("k").holds(None));
        assert!(Compare::mod_revision("k", 0).holds(None));
        let value = Compare::new(
            "k",
            CompareOp::NotEqual,
            CompareTarget::Value(b"x".to_vec()),
        );
        assert!(!value.holds(None));
    }

    #[test]
    fn compare_on_present_key() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            create_revision: 3,
            mod_revision: 5,
            version: 2,
            lease: 0,
        };
        assert!(Compare::present("k").holds(Some(&kv)));
        assert!(Compare::mod_revision("k", 5).holds(Some(&kv)));
        assert!(!Compare::mod_revision("k", 4).holds(Some(&kv)));
        let less = Compare::new("k", CompareOp::Less, CompareTarget::CreateRevision(4));
        assert!(less.holds(Some(&kv)));
        let value = Compare::new("k", CompareOp::Greater, CompareTarget::Value(b"u".to_vec()));
        assert!(value.holds(Some(&kv)));
    }
}
