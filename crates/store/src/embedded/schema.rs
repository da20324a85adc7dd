//! The layout of the embedded store's redb file.
//!
//! - `latest`: key → record of its live version (what most reads want, one lookup);
//! - `history`: (key, revision) → record of every superseded version and every deletion
//!   (a tombstone), for reads at past revisions and for watch replay;
//! - `events`: (revision, sub-revision) → key, the change log watches replay from;
//! - `leases`: lease id → granted TTL;
//! - `meta`: format marker, current and compacted revision, last batch sequence number.

use redb::TableDefinition;

use crate::types::{KeyValue, Revision};

pub(super) const LATEST: TableDefinition<&[u8], &[u8]> = TableDefinition::new("latest");
pub(super) const HISTORY: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("history");
pub(super) const EVENTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("events");
pub(super) const LEASES: TableDefinition<u64, i64> = TableDefinition::new("leases");
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

pub(super) const META_FORMAT: &str = "format";
pub(super) const META_REVISION: &str = "revision";
pub(super) const META_COMPACT_REVISION: &str = "compact_revision";
/// Sequence number of the last batch committed (see `wal`).
pub(super) const META_WAL_SEQ: &str = "wal_seq";
/// Written once when the file is created; a redb file without it is not ours.
pub(super) const FORMAT_MARKER: &[u8] = b"korvet-store/1";

const TOMBSTONE: u8 = 1;
const HEADER_LEN: usize = 1 + 8 * 4;

/// One version of a key as stored: either a live value or the tombstone of a deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub tombstone: bool,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: i64,
    pub lease: i64,
    pub value: Vec<u8>,
}

impl Record {
    pub(super) fn live(kv: &KeyValue) -> Self {
        Self {
            tombstone: false,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
            value: kv.value.clone(),
        }
    }

    pub(super) fn tombstone(revision: Revision) -> Self {
        Self {
            tombstone: true,
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            lease: 0,
            value: Vec::new(),
        }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.value.len());
        out.push(if self.tombstone { TOMBSTONE } else { 0 });
        for n in [
            self.create_revision,
            self.mod_revision,
            self.version,
            self.lease,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&self.value);
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < HEADER_LEN {
            return None;
        }
        let num = |i: usize| {
            let start = 1 + 8 * i;
            let mut buf = [0u8; 8];
            buf.copy_from_slice(&bytes[start..start + 8]);
            i64::from_le_bytes(buf)
        };
        Some(Self {
            tombstone: bytes[0] & TOMBSTONE != 0,
            create_revision: num(0),
            mod_revision: num(1),
            version: num(2),
            lease: num(3),
            value: bytes[HEADER_LEN..].to_vec(),
        })
    }

    /// Only the header, without copying the value.
    pub(super) fn decode_header(bytes: &[u8]) -> Option<Self> {
        Self::decode(bytes.get(..HEADER_LEN)?)
    }

    pub(super) fn into_kv(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

pub(super) fn encode_revision(revision: Revision) -> [u8; 8] {
    revision.to_le_bytes()
}

pub(super) fn decode_revision(bytes: &[u8]) -> Option<Revision> {
    Some(Revision::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let record = Record {
            tombstone: false,
            create_revision: 7,
            mod_revision: 9,
            version: 3,
            lease: -5,
            value: b"hello".to_vec(),
        };
        assert_eq!(Record::decode(&record.encode()), Some(record.clone()));
        let header = Record::decode_header(&record.encode()).unwrap();
        assert_eq!(header.mod_revision, 9);
        assert!(header.value.is_empty());
        let tomb = Record::tombstone(11);
        assert_eq!(Record::decode(&tomb.encode()), Some(tomb));
        assert_eq!(Record::decode(b"short"), None);
    }
}
