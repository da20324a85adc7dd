//! Translation between the store's types and etcd-client's, and etcd errors to
//! [`StoreError`].

use std::error::Error as _;

use etcd_client::Error as EtcdError;

use crate::error::{check_key, check_put, printable, Result, StoreError};
use crate::types::{
    Compare, CompareOp, CompareTarget, KeyRange, KeyValue, RangeRequest, TxnOp, MAX_KEY_BYTES,
};

/// gRPC status codes, from the gRPC spec; etcd-client does not re-export tonic's `Code`.
const GRPC_CANCELLED: i32 = 1;
const GRPC_UNKNOWN: i32 = 2;
const GRPC_INTERNAL: i32 = 13;
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_UNAVAILABLE: i32 = 14;

/// What an etcd error means to us, decided from etcd's (stable) error messages because etcd
/// reuses status codes: "compacted" and "future revision" are both `OutOfRange`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Compacted,
    FutureRevision,
    LeaseNotFound,
    DuplicateKey,
    NoSpace,
    /// The request never reached a member or no member could serve it.
    Unavailable,
    Other,
}

pub(super) fn kind(err: &EtcdError) -> Kind {
    match err {
        EtcdError::TransportError(_) | EtcdError::IoError(_) => Kind::Unavailable,
        EtcdError::LeaseKeepAliveError(msg) if msg.contains("lease not found") => {
            Kind::LeaseNotFound
        }
        EtcdError::GRpcStatus(status) => {
            let msg = status.message();
            if msg.contains("required revision has been compacted") {
                Kind::Compacted
            } else if msg.contains("required revision is a future revision") {
                Kind::FutureRevision
            } else if msg.contains("requested lease not found") {
                Kind::LeaseNotFound
            } else if msg.contains("duplicate key given in txn request") {
                Kind::DuplicateKey
            } else if msg.contains("database space exceeded") {
                Kind::NoSpace
            } else {
                match status.code() as i32 {
                    GRPC_UNAVAILABLE | GRPC_DEADLINE_EXCEEDED => Kind::Unavailable,
                    // tonic reports its own client-side request timeout as Cancelled.
                    GRPC_CANCELLED if msg.contains("Timeout expired") => Kind::Unavailable,
                    // A connection that broke under a call (the member died) surfaces as
                    // Unknown "transport error" (unary calls) or "h2 protocol error"
                    // (streams), with the I/O error as its cause.
                    GRPC_UNKNOWN | GRPC_INTERNAL
                        if msg == "transport error"
                            || msg.starts_with("h2 protocol error")
                            || has_io_cause(status) =>
                    {
                        Kind::Unavailable
                    }
                    _ => Kind::Other,
                }
            }
        }
        _ => Kind::Other,
    }
}

fn has_io_cause(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = err.source();
    while let Some(err) = source {
        if err.is::<std::io::Error>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Whether etcd certainly did not apply the request, so that even a write may be resent:
/// the connection was refused (the member is down) or the member rejected it up front
/// because it has no leader (our client sets "require leader").
pub(super) fn surely_not_applied(err: &EtcdError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = match err {
        EtcdError::GRpcStatus(status) => {
            if status.message().contains("etcdserver: no leader") {
                return true;
            }
            Some(status)
        }
        EtcdError::TransportError(err) => Some(err),
        EtcdError::IoError(err) => Some(err),
        _ => None,
    };
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
            ) {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// A one-line description of an etcd error, without etcd-client's wrapping noise.
pub(super) fn detail(err: &EtcdError) -> String {
    match err {
        EtcdError::GRpcStatus(status) => {
            let mut text = status.message().to_string();
            let mut source = status.source();
            while let Some(err) = source {
                let cause = err.to_string();
                if !text.contains(&cause) {
                    text.push_str(": ");
                    text.push_str(&cause);
                }
                source = err.source();
            }
            text
        }
        other => other.to_string(),
    }
}

/// The parts of an error that need no round trip to etcd; the caller fills in the rest.
pub(super) fn simple_error(err: &EtcdError, endpoints: &str) -> StoreError {
    match kind(err) {
        Kind::Unavailable => StoreError::Unavailable {
            endpoints: endpoints.to_string(),
            detail: detail(err),
        },
        _ => StoreError::Backend(detail(err)),
    }
}

fn check_bound(key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

/// etcd's spelling of a key range: `(key, range_end)`, `None` for a single key.
///
/// etcd gives `range_end = [0]` the meaning "no upper bound" and rejects an empty `key`, so
/// an open end becomes `[0]`, an empty start becomes `[0]` (the smallest key), and a range
/// that contains no key at all becomes `[1, 1)` so that a literal end of `[0]` is not read
/// as "no upper bound".
pub(super) fn etcd_range(range: &KeyRange) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let Some(end) = &range.end else {
        check_key(&range.start)?;
        return Ok((range.start.clone(), None));
    };
    check_bound(&range.start)?;
    check_bound(end)?;
    if end.is_empty() {
        let start = if range.start.is_empty() {
            vec![0]
        } else {
            range.start.clone()
        };
        return Ok((start, Some(vec![0])));
    }
    if end.as_slice() <= range.start.as_slice() || (range.start.is_empty() && end == &[0]) {
        return Ok((vec![1], Some(vec![1])));
    }
    let start = if range.start.is_empty() {
        vec![0]
    } else {
        range.start.clone()
    };
    Ok((start, Some(end.clone())))
}

pub(super) fn get_options(req: &RangeRequest) -> Result<(Vec<u8>, etcd_client::GetOptions)> {
    let (key, end) = etcd_range(&req.range)?;
    let mut options = etcd_client::GetOptions::new()
        .with_revision(req.revision)
        .with_limit(req.limit);
    if let Some(end) = end {
        options = options.with_range(end);
    }
    if req.count_only {
        options = options.with_count_only();
    }
    if req.keys_only {
        options = options.with_keys_only();
    }
    Ok((key, options))
}

pub(super) fn delete_options(
    range: &KeyRange,
    prev_kv: bool,
) -> Result<(Vec<u8>, etcd_client::DeleteOptions)> {
    let (key, end) = etcd_range(range)?;
    let mut options = etcd_client::DeleteOptions::new();
    if let Some(end) = end {
        options = options.with_range(end);
    }
    if prev_kv {
        options = options.with_prev_key();
    }
    Ok((key, options))
}

pub(super) fn put_options(lease: i64, prev_kv: bool) -> etcd_client::PutOptions {
    let options = etcd_client::PutOptions::new().with_lease(lease);
    if prev_kv {
        options.with_prev_key()
    } else {
        options
    }
}

pub(super) fn compare(cmp: &Compare) -> Result<etcd_client::Compare> {
    use etcd_client::CompareOp as Op;
    check_key(&cmp.key)?;
    let op = match cmp.op {
        CompareOp::Equal => Op::Equal,
        CompareOp::NotEqual => Op::NotEqual,
        CompareOp::Greater => Op::Greater,
        CompareOp::Less => Op::Less,
    };
    let key = cmp.key.clone();
    Ok(match &cmp.target {
        CompareTarget::Version(v) => etcd_client::Compare::version(key, op, *v),
        CompareTarget::CreateRevision(r) => etcd_client::Compare::create_revision(key, op, *r),
        CompareTarget::ModRevision(r) => etcd_client::Compare::mod_revision(key, op, *r),
        CompareTarget::Value(v) => etcd_client::Compare::value(key, op, v.clone()),
    })
}

pub(super) fn txn_op(op: &TxnOp) -> Result<etcd_client::TxnOp> {
    Ok(match op {
        TxnOp::Range(req) => {
            let (key, options) = get_options(req)?;
            etcd_client::TxnOp::get(key, Some(options))
        }
        TxnOp::Put(req) => {
            check_put(&req.key, &req.value)?;
            etcd_client::TxnOp::put(
                req.key.clone(),
                req.value.clone(),
                Some(put_options(req.lease, req.prev_kv)),
            )
        }
        TxnOp::Delete(req) => {
            let (key, options) = delete_options(&req.range, req.prev_kv)?;
            etcd_client::TxnOp::delete(key, Some(options))
        }
    })
}

/// The key etcd objected to with "duplicate key given in txn request" (its message does not
/// say): by etcd's rule, a key put twice in one branch, or put inside a range the same
/// branch deletes.
pub(super) fn duplicate_key(ops: &[TxnOp]) -> Option<Vec<u8>> {
    let deletes: Vec<&KeyRange> = ops
        .iter()
        .filter_map(|op| match op {
            TxnOp::Delete(d) => Some(&d.range),
            _ => None,
        })
        .collect();
    let mut puts: Vec<&[u8]> = Vec::new();
    for op in ops {
        if let TxnOp::Put(p) = op {
            if puts.contains(&p.key.as_slice()) || deletes.iter().any(|r| r.contains(&p.key)) {
                return Some(p.key.clone());
            }
            puts.push(&p.key);
        }
    }
    None
}

pub(super) fn duplicate_key_error(success: &[TxnOp], failure: &[TxnOp]) -> StoreError {
    let key = duplicate_key(success)
        .or_else(|| duplicate_key(failure))
        .unwrap_or_default();
    StoreError::DuplicateKeyInTxn {
        key: printable(&key),
    }
}

pub(super) fn key_value(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

pub(super) fn into_key_value(kv: etcd_client::KeyValue) -> KeyValue {
    let (create_revision, mod_revision, version, lease) = (
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease(),
    );
    let (key, value) = kv.into_key_value();
    KeyValue {
        key,
        value,
        create_revision,
        mod_revision,
        version,
        lease,
    }
}

pub(super) fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DeleteRequest, PutRequest};

    #[test]
    fn key_ranges_map_to_etcd_conventions() {
        assert_eq!(
            etcd_range(&KeyRange::key("a")).unwrap(),
            (b"a".to_vec(), None)
        );
        assert!(matches!(
            etcd_range(&KeyRange::key("")),
            Err(StoreError::EmptyKey)
        ));
        assert_eq!(
            etcd_range(&KeyRange::prefix("")).unwrap(),
            (vec![0], Some(vec![0]))
        );
        assert_eq!(
            etcd_range(&KeyRange::interval("", "b")).unwrap(),
            (vec![0], Some(b"b".to_vec()))
        );
        assert_eq!(
            etcd_range(&KeyRange::interval("a", "")).unwrap(),
            (b"a".to_vec(), Some(vec![0]))
        );
        assert_eq!(
            etcd_range(&KeyRange::interval("b", "a")).unwrap(),
            (vec![1], Some(vec![1]))
        );
        assert_eq!(
            etcd_range(&KeyRange::interval("", "\0")).unwrap(),
            (vec![1], Some(vec![1]))
        );
        let long = vec![b'k'; MAX_KEY_BYTES + 1];
        assert!(matches!(
            etcd_range(&KeyRange::interval(long, "z")),
            Err(StoreError::KeyTooLarge { .. })
        ));
    }

    #[test]
    fn finds_the_duplicate_key_of_a_branch() {
        let put = |k: &str| TxnOp::Put(PutRequest::new(k, "v"));
        assert_eq!(duplicate_key(&[put("a"), put("b")]), None);
        assert_eq!(duplicate_key(&[put("a"), put("a")]), Some(b"a".to_vec()));
        let del = TxnOp::Delete(DeleteRequest::new(KeyRange::prefix("/x/")));
        assert_eq!(duplicate_key(&[del, put("/x/1")]), Some(b"/x/1".to_vec()));
    }
}
