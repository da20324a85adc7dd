//! Fuzz entry point for the embedded store's recovery: the write-ahead log read back
//! from bytes and replayed into a database, driven by `crates/fuzz`. It takes arbitrary
//! bytes, must never panic, and asserts the log's round trips, so a panic here is a
//! defect of recovery, never of the log it was given (a damaged disk writes anything).

use redb::{Database, ReadableDatabase, ReadableTable};

use super::schema::{Record, HISTORY, LATEST};
use super::wal::{encode_record, parse_records, Change, LoggedBatch};

/// The first byte chooses how the rest is read: its low bit whether the rest is a log
/// file as recovery reads it (0) or the changes of batches that are logged first (1);
/// the other bits are the sequence number of the last checkpoint.
pub fn fuzz_wal_replay(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let checkpoint_seq = u64::from(mode >> 1);
    let batches = if mode & 1 == 0 {
        parse_records(rest, checkpoint_seq)
    } else {
        let Some(batches) = logged_batches(rest, checkpoint_seq) else {
            return;
        };
        batches
    };
    for batch in &batches {
        if let Some(changes) = Change::decode_all(&batch.changes) {
            let mut encoded = Vec::new();
            for change in &changes {
                change.encode(&mut encoded);
            }
            assert_eq!(
                encoded, batch.changes,
                "batch {} decodes to {changes:?}, which encodes differently",
                batch.seq
            );
        }
    }
    replay(&batches);
}

/// The changes in `rest`, a few to a batch, logged after checkpoint `checkpoint_seq`
/// and read back: the round trip must give the same batches, and a torn last record
/// must be left out.
fn logged_batches(rest: &[u8], checkpoint_seq: u64) -> Option<Vec<LoggedBatch>> {
    let changes = Change::decode_all(rest)?;
    let mut log = Vec::new();
    let mut written = Vec::new();
    for (seq, group) in (checkpoint_seq + 1..).zip(changes.chunks(3)) {
        let mut encoded = Vec::new();
        for change in group {
            change.encode(&mut encoded);
        }
        log.extend(encode_record(seq, &encoded));
        written.push((seq, encoded));
    }
    let end = log.len();
    // What follows the current run: zeros of the preallocated file, or a stale record.
    log.extend(encode_record(checkpoint_seq, b"stale"));
    let read = parse_records(&log, checkpoint_seq);
    let read_back: Vec<(u64, Vec<u8>)> = read.iter().map(|b| (b.seq, b.changes.clone())).collect();
    assert_eq!(read_back, written, "logged batches read back differently");
    if !written.is_empty() {
        let torn = parse_records(&log[..end - 1], checkpoint_seq);
        assert_eq!(
            torn.len(),
            written.len() - 1,
            "a torn last record was replayed"
        );
    }
    Some(read)
}

/// Replays the batches into a new in-memory database as opening a store does, then
/// reads back what opening reads next: the revisions and every stored record.
fn replay(batches: &[LoggedBatch]) {
    let db = match Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()) {
        Ok(db) => db,
        Err(e) => panic!("an in-memory database could not be created: {e}"),
    };
    if let Err(e) = super::initialise(&db) {
        panic!("a new in-memory database could not be initialised: {e}");
    }
    if super::replay_log(&db, batches).is_err() {
        // A damaged batch: opening the store reports the file as corrupted.
        return;
    }
    let _ = super::read_wal_seq(&db);
    let _ = super::snapshot_revisions(&db);
    let Ok(txn) = db.begin_read() else {
        return;
    };
    if let Ok(latest) = txn.open_table(LATEST) {
        for (_, value) in latest.iter().into_iter().flatten().flatten() {
            let _ = Record::decode(value.value());
        }
    }
    if let Ok(history) = txn.open_table(HISTORY) {
        for (_, value) in history.iter().into_iter().flatten().flatten() {
            let _ = Record::decode(value.value());
        }
    }
}
