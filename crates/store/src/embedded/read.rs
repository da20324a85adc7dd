//! Reads over the embedded store's tables, shared by read transactions and by the writer
//! (which reads inside its own write transaction).

use std::collections::BTreeMap;
use std::ops::Bound;

use redb::ReadableTable;

use super::schema::Record;
use crate::error::{Result, StoreError};
use crate::types::{Event, EventKind, KeyRange, KeyValue, RangeRequest, RangeResponse, Revision};

// Table kinds, as traits so that one read path serves read and write transactions alike.
pub(super) trait Latest: ReadableTable<&'static [u8], &'static [u8]> {}
impl<T: ReadableTable<&'static [u8], &'static [u8]>> Latest for T {}
pub(super) trait History: ReadableTable<(&'static [u8], u64), &'static [u8]> {}
impl<T: ReadableTable<(&'static [u8], u64), &'static [u8]>> History for T {}
pub(super) trait Events: ReadableTable<(u64, u32), &'static [u8]> {}
impl<T: ReadableTable<(u64, u32), &'static [u8]>> Events for T {}

pub(super) fn db_err(err: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(format!("embedded store: {}", err.into()))
}

pub(super) fn corrupt_record(key: &[u8]) -> StoreError {
    StoreError::Backend(format!(
        "embedded store: undecodable record for key {:?}",
        String::from_utf8_lossy(key)
    ))
}

fn key_bounds(range: &KeyRange) -> (Bound<&[u8]>, Bound<&[u8]>) {
    let start = Bound::Included(range.start.as_slice());
    match &range.end {
        None => (start, Bound::Included(range.start.as_slice())),
        Some(end) if end.is_empty() => (start, Bound::Unbounded),
        Some(end) => (start, Bound::Excluded(end.as_slice())),
    }
}

/// An empty or inverted interval: redb panics on a range whose start lies after its end.
fn is_empty_range(range: &KeyRange) -> bool {
    matches!(&range.end, Some(end) if !end.is_empty() && end.as_slice() <= range.start.as_slice())
}

type HistoryBounds<'a> = (Bound<(&'a [u8], u64)>, Bound<(&'a [u8], u64)>);

fn history_bounds(range: &KeyRange) -> HistoryBounds<'_> {
    let start = Bound::Included((range.start.as_slice(), 0));
    match &range.end {
        None => (start, Bound::Included((range.start.as_slice(), u64::MAX))),
        Some(end) if end.is_empty() => (start, Bound::Unbounded),
        Some(end) => (start, Bound::Excluded((end.as_slice(), 0))),
    }
}

/// The live version of one key.
pub(super) fn current(latest: &impl Latest, key: &[u8]) -> Result<Option<KeyValue>> {
    let Some(bytes) = latest.get(key).map_err(db_err)? else {
        return Ok(None);
    };
    let record = Record::decode(bytes.value()).ok_or_else(|| corrupt_record(key))?;
    Ok(Some(record.into_kv(key.to_vec())))
}

/// Serves a range request at `store_revision` (the revision the snapshot reflects).
pub(super) fn range(
    latest: &impl Latest,
    history: &impl History,
    req: &RangeRequest,
    store_revision: Revision,
    compact_revision: Revision,
) -> Result<RangeResponse> {
    let at = if req.revision > 0 {
        req.revision
    } else {
        store_revision
    };
    if at > store_revision {
        return Err(StoreError::FutureRevision {
            requested: at,
            current: store_revision,
        });
    }
    if req.revision > 0 && req.revision < compact_revision {
        return Err(StoreError::Compacted {
            requested: req.revision,
            compact_revision,
        });
    }
    let mut resp = RangeResponse {
        revision: store_revision,
        ..Default::default()
    };
    if is_empty_range(&req.range) {
        return Ok(resp);
    }
    let limit = usize::try_from(req.limit).unwrap_or(0);
    let want = |count: i64| !req.count_only && (limit == 0 || (count as usize) <= limit);
    if at == store_revision {
        for entry in latest
            .range::<&[u8]>(key_bounds(&req.range))
            .map_err(db_err)?
        {
            let (key, value) = entry.map_err(db_err)?;
            resp.count += 1;
            if want(resp.count) {
                let record = if req.keys_only {
                    Record::decode_header(value.value())
                } else {
                    Record::decode(value.value())
                };
                let record = record.ok_or_else(|| corrupt_record(key.value()))?;
                resp.kvs.push(record.into_kv(key.value().to_vec()));
            }
        }
    } else {
        let all = versions_at(latest, history, &req.range, at, req.keys_only)?;
        resp.count = all.len() as i64;
        if !req.count_only {
            resp.kvs = all
                .into_values()
                .take(if limit == 0 { usize::MAX } else { limit })
                .collect();
        }
    }
    resp.more = limit > 0 && resp.count as usize > limit && !req.count_only;
    Ok(resp)
}

/// Every key in `range` as it was at revision `at`.
fn versions_at(
    latest: &impl Latest,
    history: &impl History,
    range: &KeyRange,
    at: Revision,
    keys_only: bool,
) -> Result<BTreeMap<Vec<u8>, KeyValue>> {
    let decode = |bytes: &[u8], key: &[u8]| {
        if keys_only {
            Record::decode_header(bytes)
        } else {
            Record::decode(bytes)
        }
        .ok_or_else(|| corrupt_record(key))
    };
    let mut found = BTreeMap::new();
    for entry in latest.range::<&[u8]>(key_bounds(range)).map_err(db_err)? {
        let (key, value) = entry.map_err(db_err)?;
        let record = decode(value.value(), key.value())?;
        if record.mod_revision <= at {
            found.insert(key.value().to_vec(), record.into_kv(key.value().to_vec()));
        }
    }
    // Keys whose live version is newer than `at`, or that are deleted now: the version at
    // `at` is the newest history entry not after it.
    let mut candidate: Option<(Vec<u8>, Record)> = None;
    for entry in history
        .range::<(&[u8], u64)>(history_bounds(range))
        .map_err(db_err)?
    {
        let (key, value) = entry.map_err(db_err)?;
        let (key, revision) = key.value();
        if revision as i64 > at || found.contains_key(key) {
            continue;
        }
        let record = decode(value.value(), key)?;
        match &mut candidate {
            Some((k, best)) if k.as_slice() == key => *best = record,
            _ => {
                if let Some((k, best)) = candidate.take() {
                    if !best.tombstone {
                        found.insert(k.clone(), best.into_kv(k));
                    }
                }
                candidate = Some((key.to_vec(), record));
            }
        }
    }
    if let Some((k, best)) = candidate {
        if !best.tombstone {
            found.insert(k.clone(), best.into_kv(k));
        }
    }
    Ok(found)
}

/// The version of `key` written at exactly `revision`.
fn version_written_at(
    latest: &impl Latest,
    history: &impl History,
    key: &[u8],
    revision: Revision,
) -> Result<Option<Record>> {
    if let Some(bytes) = latest.get(key).map_err(db_err)? {
        let record = Record::decode(bytes.value()).ok_or_else(|| corrupt_record(key))?;
        if record.mod_revision == revision {
            return Ok(Some(record));
        }
    }
    match history.get((key, revision as u64)).map_err(db_err)? {
        Some(bytes) => Ok(Some(
            Record::decode(bytes.value()).ok_or_else(|| corrupt_record(key))?,
        )),
        None => Ok(None),
    }
}

/// The live version of `key` just before `revision`, if any.
fn version_before(
    history: &impl History,
    key: &[u8],
    revision: Revision,
) -> Result<Option<KeyValue>> {
    let bounds = (
        Bound::Included((key, 0u64)),
        Bound::Excluded((key, revision as u64)),
    );
    let last = history
        .range::<(&[u8], u64)>(bounds)
        .map_err(db_err)?
        .next_back();
    let Some(entry) = last else { return Ok(None) };
    let (_, value) = entry.map_err(db_err)?;
    let record = Record::decode(value.value()).ok_or_else(|| corrupt_record(key))?;
    Ok((!record.tombstone).then(|| record.into_kv(key.to_vec())))
}

/// Replays the change log over `revisions` for keys in `range`, at most
/// `max_events` events (whole revisions are never split). Returns the events and the last
/// revision covered.
pub(super) fn replay(
    latest: &impl Latest,
    history: &impl History,
    events: &impl Events,
    range: &KeyRange,
    revisions: std::ops::RangeInclusive<Revision>,
    with_prev: bool,
    max_events: usize,
) -> Result<(Vec<Event>, Revision)> {
    let (from, to) = (*revisions.start(), *revisions.end());
    let mut out = Vec::new();
    let mut covered = from - 1;
    let bounds = (
        Bound::Included((from as u64, 0u32)),
        Bound::Included((to as u64, u32::MAX)),
    );
    for entry in events.range::<(u64, u32)>(bounds).map_err(db_err)? {
        let (id, key) = entry.map_err(db_err)?;
        let (revision, _) = id.value();
        let revision = revision as i64;
        if revision != covered && out.len() >= max_events {
            return Ok((out, covered));
        }
        covered = revision;
        let key = key.value();
        if !range.contains(key) {
            continue;
        }
        let record = version_written_at(latest, history, key, revision)?;
        let prev_kv = if with_prev {
            version_before(history, key, revision)?
        } else {
            None
        };
        let event = match record {
            Some(record) if !record.tombstone => Event {
                kind: EventKind::Put,
                kv: record.into_kv(key.to_vec()),
                prev_kv,
            },
            _ => Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.to_vec(),
                    mod_revision: revision,
                    ..Default::default()
                },
                prev_kv,
            },
        };
        out.push(event);
    }
    Ok((out, to))
}
