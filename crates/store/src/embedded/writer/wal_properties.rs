//! Property tests of the write-ahead log as the writer writes it: a generated
//! sequence of puts and deletes, committed in batches by the real writer, replays
//! from the log to the same database, the same keys, values and revision as a
//! `BTreeMap` model; a log cut at any byte, or with any byte damaged, replays to the
//! state after a prefix of the batches.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};
use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::oneshot;

use super::{Command, Outcome, Request, Resume, Writer};
use crate::embedded::hub::WatchHub;
use crate::embedded::leases::Leases;
use crate::embedded::schema::{Record, EVENTS, HISTORY, LATEST, LEASES, META};
use crate::embedded::wal::{encode_record, parse_records, LoggedBatch, Wal, WAL_FILE};
use crate::embedded::{initialise, replay_log, snapshot_revisions};
use crate::types::{DeleteRequest, KeyRange, PutRequest, Revision};

const KEYS: [&[u8]; 5] = [b"/a/0", b"/a/1", b"/a/10", b"/b/0", b"/b/1"];
const PREFIXES: [&[u8]; 4] = [b"/a/", b"/a/1", b"/b/", b"/"];
/// Bytes of the log read back: far more than the generated batches take.
const READ_BACK: usize = 1 << 20;

#[derive(Clone, Debug)]
enum Op {
    Put(Index, Vec<u8>),
    Delete(Index),
    DeletePrefix(Index),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 0..12))
            .prop_map(|(k, v)| Op::Put(k, v)),
        2 => any::<Index>().prop_map(Op::Delete),
        1 => any::<Index>().prop_map(Op::DeletePrefix),
    ]
}

fn batches() -> impl Strategy<Value = Vec<Vec<Op>>> {
    proptest::collection::vec(proptest::collection::vec(op(), 1..=4), 1..=6)
}

/// A key's live version as the model keeps it: value, create and mod revision,
/// version.
type Kv = (Vec<u8>, Revision, Revision, i64);

#[derive(Clone, Debug, PartialEq)]
struct Model {
    revision: Revision,
    keys: BTreeMap<Vec<u8>, Kv>,
}

impl Model {
    /// Applies one operation as etcd does; returns the response's revision and the
    /// number of keys deleted.
    fn apply(&mut self, op: &Op) -> (Revision, i64) {
        match op {
            Op::Put(key, value) => {
                self.revision += 1;
                let rev = self.revision;
                let key = key.get(&KEYS).to_vec();
                let (create, version) = match self.keys.get(&key) {
                    Some((_, create, _, version)) => (*create, version + 1),
                    None => (rev, 1),
                };
                self.keys.insert(key, (value.clone(), create, rev, version));
                (rev, 0)
            }
            Op::Delete(_) | Op::DeletePrefix(_) => {
                let doomed: Vec<Vec<u8>> = self
                    .keys
                    .keys()
                    .filter(|k| match op {
                        Op::Delete(key) => k.as_slice() == *key.get(&KEYS),
                        Op::DeletePrefix(prefix) => {
                            k.starts_with(PREFIXES[prefix.index(PREFIXES.len())])
                        }
                        Op::Put(..) => false,
                    })
                    .cloned()
                    .collect();
                if !doomed.is_empty() {
                    self.revision += 1;
                }
                for key in &doomed {
                    self.keys.remove(key);
                }
                (self.revision, doomed.len() as i64)
            }
        }
    }
}

fn command(op: &Op) -> Command {
    match op {
        Op::Put(key, value) => Command::Put(PutRequest::new(*key.get(&KEYS), value.clone())),
        Op::Delete(key) => Command::Delete(DeleteRequest::new(KeyRange::key(*key.get(&KEYS)))),
        Op::DeletePrefix(prefix) => {
            Command::Delete(DeleteRequest::new(KeyRange::prefix(*prefix.get(&PREFIXES))))
        }
    }
}

fn new_db() -> Database {
    let db = Database::builder()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .unwrap();
    initialise(&db).unwrap();
    db
}

/// Every row of every table, for comparing two databases.
type Dump = Vec<(String, Vec<u8>, Vec<u8>)>;

fn dump(db: &Database) -> Dump {
    let txn = db.begin_read().unwrap();
    let mut rows = Vec::new();
    for entry in txn.open_table(LATEST).unwrap().iter().unwrap() {
        let (k, v) = entry.unwrap();
        rows.push(("latest".into(), k.value().to_vec(), v.value().to_vec()));
    }
    for entry in txn.open_table(HISTORY).unwrap().iter().unwrap() {
        let (k, v) = entry.unwrap();
        let (key, rev) = k.value();
        let id = [key, &rev.to_be_bytes()].concat();
        rows.push(("history".into(), id, v.value().to_vec()));
    }
    for entry in txn.open_table(EVENTS).unwrap().iter().unwrap() {
        let (k, v) = entry.unwrap();
        let (rev, sub) = k.value();
        let id = [rev.to_be_bytes().as_slice(), &sub.to_be_bytes()].concat();
        rows.push(("events".into(), id, v.value().to_vec()));
    }
    for entry in txn.open_table(LEASES).unwrap().iter().unwrap() {
        let (k, v) = entry.unwrap();
        let id = k.value().to_be_bytes().to_vec();
        rows.push(("leases".into(), id, v.value().to_be_bytes().to_vec()));
    }
    for entry in txn.open_table(META).unwrap().iter().unwrap() {
        let (k, v) = entry.unwrap();
        rows.push((
            "meta".into(),
            k.value().as_bytes().to_vec(),
            v.value().to_vec(),
        ));
    }
    rows
}

/// The model's view of a database: its revision and live keys.
fn state(db: &Database) -> Model {
    let (revision, _) = snapshot_revisions(db).unwrap();
    let txn = db.begin_read().unwrap();
    let mut keys = BTreeMap::new();
    for entry in txn.open_table(LATEST).unwrap().iter().unwrap() {
        let (k, v) = entry.unwrap();
        let record = Record::decode(v.value()).unwrap();
        assert!(!record.tombstone);
        let kv = (
            record.value,
            record.create_revision,
            record.mod_revision,
            record.version,
        );
        keys.insert(k.value().to_vec(), kv);
    }
    Model { revision, keys }
}

/// A new database with `batches` replayed into it, as opening the store does.
fn replayed(batches: &[LoggedBatch]) -> Database {
    let db = new_db();
    replay_log(&db, batches).unwrap();
    db
}

/// Where each record of the log ends.
fn record_ends(batches: &[LoggedBatch]) -> Vec<usize> {
    let mut at = 0;
    batches
        .iter()
        .map(|b| {
            at += encode_record(b.seq, &b.changes).len();
            at
        })
        .collect()
}

/// One case: the batches committed by a writer logging to `wal`; `cut` and `damage`
/// choose a byte of the log to cut it at and one to damage. Returns the log back and
/// how many of its bytes were written.
fn check(
    wal: Wal,
    log: &File,
    ops: &[Vec<Op>],
    cut: Index,
    damage: (Index, u8),
) -> (Wal, usize, Result<(), TestCaseError>) {
    let db = Arc::new(new_db());
    let (_requests, receiver) = mpsc::channel();
    let resume = Resume {
        revision: 1,
        compact_revision: 0,
        wal,
        wal_seq: 0,
    };
    let mut writer = Writer::new(
        db.clone(),
        "/nonexistent/store.redb".into(),
        receiver,
        Arc::new(WatchHub::new(1)),
        Arc::new(Mutex::new(Leases::default())),
        resume,
        1 << 40,
    );
    // No checkpoint during the case: every batch goes to the log.
    writer.last_checkpoint = Instant::now() + Duration::from_secs(3600);

    let mut model = Model {
        revision: 1,
        keys: BTreeMap::new(),
    };
    let mut after = vec![model.clone()];
    for batch in ops {
        let mut requests = Vec::new();
        let mut replies = Vec::new();
        for op in batch {
            let (reply, answer) = oneshot::channel();
            requests.push(Request {
                command: command(op),
                reply,
            });
            replies.push(answer);
        }
        writer.run_batch(requests);
        for (op, mut answer) in batch.iter().zip(replies) {
            let (revision, deleted) = model.apply(op);
            match answer.try_recv() {
                Ok(Ok(Outcome::Put(resp))) => assert_eq!(resp.revision, revision, "{op:?}"),
                Ok(Ok(Outcome::Delete(resp))) => {
                    assert_eq!((resp.revision, resp.deleted), (revision, deleted), "{op:?}")
                }
                Ok(Ok(_)) => panic!("{op:?} had another outcome"),
                Ok(Err(e)) => panic!("{op:?} failed: {e}"),
                Err(e) => panic!("{op:?} was not answered: {e}"),
            }
        }
        after.push(model.clone());
    }
    let Writer { mut wal, .. } = writer;
    wal.restart();

    let mut bytes = vec![0u8; READ_BACK];
    log.read_exact_at(&mut bytes, 0).unwrap();
    let batches = parse_records(&bytes, 0);
    let ends = record_ends(&batches);
    let used = ends.last().copied().unwrap_or(0);
    let result = (|| {
        let seqs: Vec<u64> = batches.iter().map(|b| b.seq).collect();
        prop_assert_eq!(seqs, (1..=ops.len() as u64).collect::<Vec<_>>());
        prop_assert!(used + 64 < READ_BACK);

        // The whole log replays to the writer's database, row for row, which the
        // model agrees with.
        let whole = replayed(&batches);
        prop_assert_eq!(dump(&whole), dump(&db));
        prop_assert_eq!(&state(&whole), &model);

        // The records that reach a reader intact: those whose bytes, and all before
        // them, are as written.
        let intact = |log: &[u8]| {
            ends.iter()
                .take_while(|end| log.get(..**end) == Some(&bytes[..**end]))
                .count()
        };

        // Cut anywhere, the rest missing or zeros (as the preallocated file): the
        // records before the cut replay, to the model's state after them. (A zero
        // can restore the very byte cut off, so "before the cut" is "intact".)
        let cut = cut.index(used + 1);
        let mut zeroed = bytes[..cut].to_vec();
        zeroed.resize(used + 64, 0);
        for log in [&bytes[..cut], &zeroed] {
            let read = parse_records(log, 0);
            let intact = intact(log);
            prop_assert!(intact >= ends.iter().filter(|end| **end <= cut).count());
            prop_assert_eq!(read.len(), intact, "cut at {} of {}", cut, used);
            prop_assert_eq!(&state(&replayed(&read)), &after[intact]);
        }

        // One byte damaged: the records before it replay, none from it on.
        if used > 0 {
            let (at, flip) = damage;
            let at = at.index(used);
            let mut damaged = bytes[..used + 64].to_vec();
            damaged[at] ^= flip.max(1);
            let read = parse_records(&damaged, 0);
            let intact = intact(&damaged);
            prop_assert_eq!(intact, ends.iter().filter(|end| **end <= at).count());
            prop_assert_eq!(read.len(), intact, "byte {} of {} damaged", at, used);
            prop_assert_eq!(&state(&replayed(&read)), &after[intact]);
        }
        Ok(())
    })();
    (wal, used, result)
}

#[test]
fn the_log_replays_to_the_model_and_a_damaged_log_to_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, old) = Wal::open(dir.path(), 0).unwrap();
    assert!(old.is_empty());
    let log = File::options()
        .read(true)
        .write(true)
        .open(dir.path().join(WAL_FILE))
        .unwrap();
    let wal = RefCell::new(Some(wal));
    // Bytes written by earlier cases, zeroed before the next so that none of their
    // records follows its own.
    let dirty = RefCell::new(0usize);
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (batches(), any::<Index>(), (any::<Index>(), any::<u8>()));
    let result = runner.run(&strategy, |(ops, cut, damage)| {
        let zeros = vec![0u8; *dirty.borrow()];
        log.write_all_at(&zeros, 0).unwrap();
        let current = wal.borrow_mut().take().unwrap();
        let (back, used, result) = check(current, &log, &ops, cut, damage);
        *wal.borrow_mut() = Some(back);
        let mut dirty = dirty.borrow_mut();
        *dirty = (*dirty).max(used);
        result
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
