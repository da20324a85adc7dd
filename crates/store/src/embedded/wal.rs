//! The write-ahead log that makes cheap commits durable.
//!
//! A durable redb commit rewrites a dozen B-tree pages and fsyncs them; an acknowledged
//! write only needs its changes on disk somewhere. So each batch's table changes are
//! appended here as one record and fsynced (one sequential write), and the redb commit
//! itself is not synced. Every so often the writer makes a durable redb commit (a
//! checkpoint) and starts the log over from its beginning. After a crash, the records
//! newer than the last checkpoint are applied again (etcd's WAL works the same way).
//!
//! The file is preallocated so that an append never changes its size (an fsync then
//! flushes only data). Records carry consecutive sequence numbers and a CRC; recovery
//! reads from the start while both hold, so stale records behind the end of the current
//! run and a torn last record are both ignored.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};

pub(super) const WAL_FILE: &str = "store.wal";
/// Size of the preallocated log; a batch that does not fit forces a checkpoint instead.
const CAPACITY: u64 = 64 * 1024 * 1024;
const MAGIC: u32 = 0x4b56_574c;
const HEADER: usize = 4 + 4 + 4 + 8;

pub(super) struct Wal {
    file: File,
    path: PathBuf,
    /// Where the next record goes.
    offset: u64,
    /// Where the last record starts.
    last_record: Option<u64>,
}

/// One logged batch: its sequence number and its encoded table changes.
pub(super) struct LoggedBatch {
    pub seq: u64,
    pub changes: Vec<u8>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Wal {
    /// Opens (creating and preallocating if needed) the log in `dir` and returns the
    /// records that follow checkpoint `checkpoint_seq`, in order.
    pub(super) fn open(dir: &Path, checkpoint_seq: u64) -> Result<(Self, Vec<LoggedBatch>)> {
        let path = dir.join(WAL_FILE);
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len < CAPACITY {
            preallocate(&mut file, len).map_err(io_err(&path))?;
            if let Ok(dir) = File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        let batches = read_records(&mut file, checkpoint_seq).map_err(io_err(&path))?;
        Ok((
            Self {
                file,
                path,
                offset: 0,
                last_record: None,
            },
            batches,
        ))
    }

    /// Appends one batch and fsyncs it. Returns false, writing nothing, when the batch
    /// does not fit: the caller must then make the batch durable by a checkpoint.
    pub(super) fn append(&mut self, seq: u64, changes: &[u8]) -> Result<bool> {
        let total = (HEADER + changes.len()) as u64;
        if self.offset + total > CAPACITY || changes.len() > u32::MAX as usize {
            return Ok(false);
        }
        let record = encode_record(seq, changes);
        self.file
            .write_all_at(&record, self.offset)
            .map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))?;
        self.last_record = Some(self.offset);
        self.offset += total;
        Ok(true)
    }

    /// Takes back the last record after its batch failed to commit, so that recovery can
    /// never apply it.
    pub(super) fn retract(&mut self) {
        let Some(last) = self.last_record else { return };
        if self
            .file
            .write_all_at(&[0u8; 4], last)
            .and_then(|()| self.file.sync_data())
            .is_err()
        {
            tracing::error!(path = %self.path.display(), "could not retract a write-ahead log record");
        }
        self.offset = last;
        self.last_record = None;
    }

    /// After a checkpoint every record is obsolete: the next one starts at the beginning.
    pub(super) fn restart(&mut self) {
        self.offset = 0;
        self.last_record = None;
    }
}

fn checksum(seq: u64, changes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(changes);
    hasher.finalize()
}

fn preallocate(file: &mut File, from: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; 1024 * 1024];
    let mut at = from;
    while at < CAPACITY {
        let n = zeros.len().min((CAPACITY - at) as usize);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.flush()?;
    file.sync_all()
}

/// One record as the log holds it; `changes` must be shorter than 4 GiB.
pub(super) fn encode_record(seq: u64, changes: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER + changes.len());
    record.extend_from_slice(&MAGIC.to_le_bytes());
    record.extend_from_slice(&(changes.len() as u32).to_le_bytes());
    record.extend_from_slice(&checksum(seq, changes).to_le_bytes());
    record.extend_from_slice(&seq.to_le_bytes());
    record.extend_from_slice(changes);
    record
}

fn read_records(file: &mut File, checkpoint_seq: u64) -> std::io::Result<Vec<LoggedBatch>> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(parse_records(&bytes, checkpoint_seq))
}

/// The records of a log's contents that follow checkpoint `checkpoint_seq`: from the
/// start, while each has the magic, the next sequence number and a valid checksum.
pub(super) fn parse_records(bytes: &[u8], checkpoint_seq: u64) -> Vec<LoggedBatch> {
    let mut batches = Vec::new();
    let mut at = 0usize;
    let mut expected = checkpoint_seq + 1;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&header[12..20]);
        let seq = u64::from_le_bytes(seq_bytes);
        let len = word(4) as usize;
        if word(0) != MAGIC || seq != expected {
            break;
        }
        let Some(changes) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if checksum(seq, changes) != word(8) {
            tracing::warn!(seq, "ignoring torn write-ahead log record");
            break;
        }
        batches.push(LoggedBatch {
            seq,
            changes: changes.to_vec(),
        });
        expected += 1;
        at += HEADER + len;
    }
    batches
}

/// The table changes of one batch, encoded for the log and applied again on recovery.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change<'a> {
    LatestPut(&'a [u8], &'a [u8]),
    LatestDelete(&'a [u8]),
    HistoryPut(&'a [u8], u64, &'a [u8]),
    EventPut(u64, u32, &'a [u8]),
    LeasePut(u64, i64),
    LeaseDelete(u64),
    MetaPut(&'a str, &'a [u8]),
}

impl Change<'_> {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        fn bytes(out: &mut Vec<u8>, b: &[u8]) {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        match self {
            Change::LatestPut(k, v) => {
                out.push(1);
                bytes(out, k);
                bytes(out, v);
            }
            Change::LatestDelete(k) => {
                out.push(2);
                bytes(out, k);
            }
            Change::HistoryPut(k, rev, v) => {
                out.push(3);
                bytes(out, k);
                out.extend_from_slice(&rev.to_le_bytes());
                bytes(out, v);
            }
            Change::EventPut(rev, sub, k) => {
                out.push(4);
                out.extend_from_slice(&rev.to_le_bytes());
                out.extend_from_slice(&sub.to_le_bytes());
                bytes(out, k);
            }
            Change::LeasePut(id, ttl) => {
                out.push(5);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&ttl.to_le_bytes());
            }
            Change::LeaseDelete(id) => {
                out.push(6);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Change::MetaPut(name, v) => {
                out.push(7);
                bytes(out, name.as_bytes());
                bytes(out, v);
            }
        }
    }

    /// Decodes every change of a batch; `None` if the encoding is damaged.
    pub(super) fn decode_all(mut input: &[u8]) -> Option<Vec<Change<'_>>> {
        fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, tail) = (input.get(..n)?, input.get(n..)?);
            *input = tail;
            Some(head)
        }
        fn u32_(input: &mut &[u8]) -> Option<u32> {
            Some(u32::from_le_bytes(take(input, 4)?.try_into().ok()?))
        }
        fn u64_(input: &mut &[u8]) -> Option<u64> {
            Some(u64::from_le_bytes(take(input, 8)?.try_into().ok()?))
        }
        fn bytes<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
            let n = u32_(input)? as usize;
            take(input, n)
        }
        let mut changes = Vec::new();
        while let Some((&tag, rest)) = input.split_first() {
            input = rest;
            let change = match tag {
                1 => Change::LatestPut(bytes(&mut input)?, bytes(&mut input)?),
                2 => Change::LatestDelete(bytes(&mut input)?),
                3 => Change::HistoryPut(bytes(&mut input)?, u64_(&mut input)?, bytes(&mut input)?),
                4 => Change::EventPut(u64_(&mut input)?, u32_(&mut input)?, bytes(&mut input)?),
                5 => Change::LeasePut(u64_(&mut input)?, u64_(&mut input)? as i64),
                6 => Change::LeaseDelete(u64_(&mut input)?),
                7 => Change::MetaPut(
                    std::str::from_utf8(bytes(&mut input)?).ok()?,
                    bytes(&mut input)?,
                ),
                _ => return None,
            };
            changes.push(change);
        }
        Some(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip() {
        let changes = [
            Change::LatestPut(b"k", b"v"),
            Change::LatestDelete(b"k"),
            Change::HistoryPut(b"k", 7, b"old"),
            Change::EventPut(7, 2, b"k"),
            Change::LeasePut(9, -1),
            Change::LeaseDelete(9),
            Change::MetaPut("revision", b"12345678"),
        ];
        let mut encoded = Vec::new();
        for change in &changes {
            change.encode(&mut encoded);
        }
        assert_eq!(Change::decode_all(&encoded).unwrap(), changes);
        assert_eq!(Change::decode_all(&encoded[..encoded.len() - 1]), None);
        assert_eq!(Change::decode_all(&[99]), None);
    }

    #[test]
    fn recovery_reads_the_current_run_and_stops_at_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, old) = Wal::open(dir.path(), 0).unwrap();
        assert!(old.is_empty());
        for seq in 1..=5 {
            assert!(wal.append(seq, format!("batch {seq}").as_bytes()).unwrap());
        }
        // A checkpoint at 3, then two more batches: 4 and 5 are stale, 6 and 7 follow.
        wal.restart();
        assert!(wal.append(4, b"batch 4 again").unwrap());
        assert!(wal.append(5, b"batch 5 again").unwrap());
        drop(wal);
        let (_, batches) = Wal::open(dir.path(), 3).unwrap();
        let seqs: Vec<u64> = batches.iter().map(|b| b.seq).collect();
        assert_eq!(seqs, [4, 5]);
        assert_eq!(batches[1].changes, b"batch 5 again");
        // Records not newer than the checkpoint are not replayed.
        let (_, batches) = Wal::open(dir.path(), 5).unwrap();
        assert!(batches.is_empty());
        // A torn record ends recovery before it.
        let path = dir.path().join(WAL_FILE);
        let file = File::options().write(true).open(&path).unwrap();
        let second = (HEADER + b"batch 4 again".len() + HEADER) as u64;
        file.write_all_at(b"XX", second).unwrap();
        let (_, batches) = Wal::open(dir.path(), 3).unwrap();
        assert_eq!(batches.len(), 1);
    }

    #[test]
    fn a_batch_larger_than_the_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 0).unwrap();
        let huge = vec![0u8; CAPACITY as usize];
        assert!(!wal.append(1, &huge).unwrap());
        assert!(wal.append(1, b"small").unwrap());
    }
}
