//! The conformance suite and the embedded backend's own guarantees: durability across
//! `kill -9`, exclusive file lock, refusal of foreign files, bounded watch fan-out, quota.

mod conformance;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use conformance::TestStore;
use korvet_store::embedded::{AutoCompaction, EmbeddedStore, Options};
use korvet_store::*;

async fn open_in(dir: &Path, options: Options) -> EmbeddedStore {
    EmbeddedStore::open(dir, options)
        .await
        .unwrap_or_else(|e| panic!("open embedded store: {e}"))
}

async fn open_embedded() -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_in(dir.path(), Options::default()).await;
    TestStore {
        store: Arc::new(store),
        guard: Box::new(dir),
    }
}

conformance_suite!(open_embedded);

const CHILD_DIR_ENV: &str = "KORVET_STORE_TEST_CHILD_DIR";

/// Runs in a child process of `acknowledged_writes_survive_kill_9`: writes from several
/// tasks and prints every acknowledged write until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process, started by acknowledged_writes_survive_kill_9"]
async fn durability_writer_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let store = Arc::new(open_in(Path::new(&dir), Options::default()).await);
    let mut tasks = Vec::new();
    for t in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("/durable/{t}/{i}");
                let resp = store
                    .put(PutRequest::new(key.clone(), vec![b'v'; 4096]))
                    .await;
                match resp {
                    Ok(resp) => println!("ACK {key} {}", resp.revision),
                    Err(e) => panic!("write failed: {e}"),
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "durability_writer_child",
            "--exact",
            "--include-ignored",
            "--nocapture",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ACK ") {
            let (key, rev) = rest.split_once(' ').unwrap();
            acked.push((key.to_string(), rev.parse::<i64>().unwrap()));
            if acked.len() == 400 {
                break;
            }
        }
    }
    // SIGKILL mid-stream: the writer is still committing when it dies.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(acked.len(), 400, "child wrote too little before it stopped");
    let store = open_in(dir.path(), Options::default()).await;
    for (key, rev) in &acked {
        let kv = store
            .get(key.as_bytes())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged write {key} lost"));
        assert_eq!(kv.mod_revision, *rev);
    }
    let max = acked.iter().map(|(_, r)| *r).max().unwrap();
    assert!(store.status().await.unwrap().revision >= max);
    // The reopened store keeps working.
    store.put(PutRequest::new("/after", "crash")).await.unwrap();
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open_in(dir.path(), Options::default()).await;
    let second = EmbeddedStore::open(dir.path(), Options::default()).await;
    match second {
        Err(e @ StoreError::Locked { .. }) => {
            assert!(e.to_string().contains("already in use"), "{e}")
        }
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("two handles opened one store"),
    }
}

#[tokio::test]
async fn foreign_and_corrupted_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(embedded::DATA_FILE);
    std::fs::write(
        &file,
        b"this is not a database, just some text ".repeat(200),
    )
    .unwrap();
    match EmbeddedStore::open(dir.path(), Options::default()).await {
        Err(StoreError::Corrupted { path, .. }) => assert!(path.ends_with(embedded::DATA_FILE)),
        Err(e) => panic!("expected Corrupted, got {e}"),
        Ok(_) => panic!("garbage opened as a store"),
    }
    // A valid redb file that Korvet did not write.
    let other = tempfile::tempdir().unwrap();
    let foreign = other.path().join(embedded::DATA_FILE);
    {
        let db = redb_file_without_marker(&foreign);
        drop(db);
    }
    match EmbeddedStore::open(other.path(), Options::default()).await {
        Err(StoreError::Corrupted { detail, .. }) => assert!(detail.contains("Korvet"), "{detail}"),
        Err(e) => panic!("expected Corrupted, got {e}"),
        Ok(_) => panic!("a foreign redb file opened as a store"),
    }
    // Damage inside a real store file: refused, never a panic.
    let damaged = tempfile::tempdir().unwrap();
    {
        let store = open_in(damaged.path(), Options::default()).await;
        for i in 0..100 {
            store
                .put(PutRequest::new(format!("/k/{i}"), vec![b'x'; 1000]))
                .await
                .unwrap();
        }
    }
    let path = damaged.path().join(embedded::DATA_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    for b in &mut bytes[len / 3..len / 3 + 8192] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, bytes).unwrap();
    match EmbeddedStore::open(damaged.path(), Options::default()).await {
        Err(StoreError::Corrupted { .. }) => {}
        Err(e) => panic!("expected Corrupted, got {e}"),
        Ok(_) => panic!("a damaged file opened without complaint"),
    }
}

fn redb_file_without_marker(path: &Path) -> redb_probe::Db {
    redb_probe::create(path)
}

/// A tiny redb user, standing in for any other program's database file.
mod redb_probe {
    pub(crate) struct Db(#[allow(dead_code)] redb::Database);
    pub(crate) fn create(path: &std::path::Path) -> Db {
        const T: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("things");
        let db = redb::Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(T).unwrap().insert("a", &1).unwrap();
        txn.commit().unwrap();
        Db(db)
    }
}

#[tokio::test]
async fn reopening_keeps_data_revision_and_leases() {
    let dir = tempfile::tempdir().unwrap();
    let (rev, lease) = {
        let store = open_in(dir.path(), Options::default()).await;
        let lease = store.lease_grant(600).await.unwrap();
        store
            .put(PutRequest::new("/keep/leased", "l").with_lease(lease.id))
            .await
            .unwrap();
        (
            store
                .put(PutRequest::new("/keep/a", "1"))
                .await
                .unwrap()
                .revision,
            lease,
        )
    };
    let store = open_in(dir.path(), Options::default()).await;
    assert_eq!(store.status().await.unwrap().revision, rev);
    assert_eq!(store.get(b"/keep/a").await.unwrap().unwrap().value, b"1");
    let info = store.lease_time_to_live(lease.id).await.unwrap();
    assert_eq!(info.keys, vec![b"/keep/leased".to_vec()]);
    store.lease_revoke(lease.id).await.unwrap();
    assert_eq!(store.get(b"/keep/leased").await.unwrap(), None);
    let next = store
        .put(PutRequest::new("/keep/b", "2"))
        .await
        .unwrap()
        .revision;
    assert_eq!(next, rev + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_cannot_keep_up_is_cancelled_not_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(dir.path(), Options::default()).await;
    let mut stalled = store
        .watch(WatchRequest::new(KeyRange::prefix("/slow/")))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    for i in 0..1200 {
        store
            .put(PutRequest::new(format!("/slow/{i}"), "x"))
            .await
            .unwrap();
    }
    let writes_took = started.elapsed();
    let mut delivered = 0;
    let outcome = loop {
        match tokio::time::timeout(Duration::from_secs(5), stalled.next()).await {
            Ok(Some(Ok(resp))) => delivered += resp.events.len(),
            Ok(Some(Err(e))) => break e,
            Ok(None) => panic!("watch ended without an error"),
            Err(_) => panic!("stalled watcher was never cancelled"),
        }
    };
    assert!(
        matches!(outcome, StoreError::WatchCancelled { .. }),
        "{outcome}"
    );
    assert!(outcome.to_string().contains("watch again"), "{outcome}");
    assert!((1..1200).contains(&delivered), "delivered {delivered}");
    assert!(writes_took < Duration::from_secs(60));
    // New watchers still work.
    let mut fresh = store
        .watch(WatchRequest::new(KeyRange::prefix("/slow/")))
        .await
        .unwrap();
    store.put(PutRequest::new("/slow/last", "x")).await.unwrap();
    let events = conformance::next_events(&mut fresh, 1).await;
    assert_eq!(events[0].kv.key, b"/slow/last");
}

#[tokio::test]
async fn quota_refuses_growth_but_allows_deletes_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let initial = {
        let store = open_in(dir.path(), Options::default()).await;
        store.status().await.unwrap().db_size_bytes
    };
    let quota = initial + 4 * 1024 * 1024;
    let options = Options {
        quota_bytes: quota,
        ..Options::default()
    };
    let store = open_in(dir.path(), options).await;
    let mut refused = None;
    for i in 0..64 {
        match store
            .put(PutRequest::new(format!("/q/{i}"), vec![b'q'; 1024 * 1024]))
            .await
        {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("quota never enforced");
    assert!(
        matches!(refused, StoreError::QuotaExceeded { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("compact"), "{refused}");
    let status = store.status().await.unwrap();
    assert_eq!(status.quota_bytes, quota);
    assert!(status.db_size_bytes >= quota);
    let deleted = store
        .delete(DeleteRequest::new(KeyRange::prefix("/q/")))
        .await
        .unwrap();
    assert!(deleted.deleted > 0);
    store.compact(deleted.revision).await.unwrap();
    assert_eq!(store.get(b"/q/0").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_compaction_runs_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        auto_compaction: Some(AutoCompaction {
            interval: Duration::from_millis(200),
            keep_revisions: 5,
        }),
        ..Options::default()
    };
    let store = open_in(dir.path(), options).await;
    for i in 0..50 {
        store
            .put(PutRequest::new("/auto/k", i.to_string()))
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = store.status().await.unwrap();
        if status.compact_revision > 0 {
            assert!(status.compact_revision <= status.revision - 5);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no automatic compaction"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.get(b"/auto/k").await.unwrap().unwrap().value, b"49");
}
