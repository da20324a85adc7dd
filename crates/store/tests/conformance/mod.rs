//! One conformance suite for every store backend: each backend's test file opens a fresh
//! store per test and runs these checks through `conformance_suite!`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use korvet_store::*;

/// A store under test and whatever must live as long as it (temp dirs, etcd processes).
pub(crate) struct TestStore {
    pub store: Arc<dyn Store>,
    pub guard: Box<dyn std::any::Any + Send>,
}

const WAIT: Duration = Duration::from_secs(10);

pub(crate) async fn next_response(watch: &mut Watch) -> WatchResponse {
    match tokio::time::timeout(WAIT, watch.next()).await {
        Ok(Some(Ok(resp))) => resp,
        Ok(Some(Err(err))) => panic!("watch failed: {err}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch response within {WAIT:?}"),
    }
}

/// Collects events until `count` have arrived (progress notifications are skipped).
pub(crate) async fn next_events(watch: &mut Watch, count: usize) -> Vec<Event> {
    let mut events = Vec::new();
    while events.len() < count {
        events.extend(next_response(watch).await.events);
    }
    assert_eq!(events.len(), count, "more events than expected: {events:?}");
    events
}

async fn put(store: &dyn Store, key: &str, value: &str) -> Revision {
    store
        .put(PutRequest::new(key, value))
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"))
        .revision
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

pub(crate) async fn put_get_versions(store: &dyn Store) {
    assert_eq!(store.get(b"/v/a").await.unwrap(), None);
    let r1 = put(store, "/v/a", "1").await;
    let kv = store.get(b"/v/a").await.unwrap().unwrap();
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.create_revision,
            kv.mod_revision,
            kv.version
        ),
        (b"1".as_slice(), r1, r1, 1)
    );
    let r2 = store
        .put(PutRequest::new("/v/a", "2").with_prev_kv())
        .await
        .unwrap();
    assert_eq!(r2.revision, r1 + 1);
    assert_eq!(r2.prev_kv.unwrap().value, b"1");
    let kv = store.get(b"/v/a").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r1 + 1, 2)
    );
    let del = store
        .delete(DeleteRequest::new(KeyRange::key("/v/a")).with_prev_kv())
        .await
        .unwrap();
    assert_eq!((del.deleted, del.revision), (1, r1 + 2));
    assert_eq!(del.prev_kvs[0].value, b"2");
    assert_eq!(store.get(b"/v/a").await.unwrap(), None);
    // Deleting nothing does not advance the revision.
    let none = store
        .delete(DeleteRequest::new(KeyRange::key("/v/a")))
        .await
        .unwrap();
    assert_eq!((none.deleted, none.revision), (0, r1 + 2));
    // A recreated key starts a new generation.
    let r4 = put(store, "/v/a", "3").await;
    let kv = store.get(b"/v/a").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.version), (r4, 1));
    assert_eq!(store.status().await.unwrap().revision, r4);
}

pub(crate) async fn range_prefix_limit_and_past_revisions(store: &dyn Store) {
    for k in ["/r/a", "/r/b", "/r/c", "/r/d", "/rx", "/s/a"] {
        put(store, k, k).await;
    }
    let all = store
        .range(RangeRequest::new(KeyRange::prefix("/r/")))
        .await
        .unwrap();
    assert_eq!(keys(&all.kvs), ["/r/a", "/r/b", "/r/c", "/r/d"]);
    assert_eq!((all.count, all.more), (4, false));
    let page = store
        .range(RangeRequest::new(KeyRange::prefix("/r/")).with_limit(2))
        .await
        .unwrap();
    assert_eq!(keys(&page.kvs), ["/r/a", "/r/b"]);
    assert_eq!((page.count, page.more), (4, true));
    let counted = store
        .range(RangeRequest::new(KeyRange::prefix("/r/")).count_only())
        .await
        .unwrap();
    assert_eq!((counted.count, counted.kvs.len()), (4, 0));
    let names = store
        .range(RangeRequest::new(KeyRange::interval("/r/b", "/r/d")).keys_only())
        .await
        .unwrap();
    assert_eq!(keys(&names.kvs), ["/r/b", "/r/c"]);
    assert!(names.kvs.iter().all(|kv| kv.value.is_empty()));
    let everything = store
        .range(RangeRequest::new(KeyRange::prefix("")))
        .await
        .unwrap();
    assert_eq!(everything.count, 6);

    // A paginated list stays consistent while the data changes underneath it.
    let snapshot = page.revision;
    put(store, "/r/a", "changed").await;
    put(store, "/r/bb", "new").await;
    store
        .delete(DeleteRequest::new(KeyRange::key("/r/c")))
        .await
        .unwrap();
    let rest = store
        .range(RangeRequest::new(KeyRange::interval("/r/b\0", "/r0")).at_revision(snapshot))
        .await
        .unwrap();
    assert_eq!(keys(&rest.kvs), ["/r/c", "/r/d"]);
    let old_a = store
        .range(RangeRequest::new(KeyRange::key("/r/a")).at_revision(snapshot))
        .await
        .unwrap();
    assert_eq!(old_a.kvs[0].value, b"/r/a");
    let now = store
        .range(RangeRequest::new(KeyRange::prefix("/r/")))
        .await
        .unwrap();
    assert_eq!(keys(&now.kvs), ["/r/a", "/r/b", "/r/bb", "/r/d"]);
    let future = store
        .range(RangeRequest::new(KeyRange::key("/r/a")).at_revision(now.revision + 100))
        .await;
    assert!(
        matches!(future, Err(StoreError::FutureRevision { .. })),
        "{future:?}"
    );
}

pub(crate) async fn txn_compare_and_branches(store: &dyn Store) {
    let created = store
        .txn(
            Txn::new()
                .when([Compare::absent("/t/k")])
                .and_then([TxnOp::Put(PutRequest::new("/t/k", "v1"))])
                .or_else([TxnOp::Range(RangeRequest::new(KeyRange::key("/t/k")))]),
        )
        .await
        .unwrap();
    assert!(created.succeeded);
    let rev = created.revision;
    let again = store
        .txn(
            Txn::new()
                .when([Compare::absent("/t/k")])
                .and_then([TxnOp::Put(PutRequest::new("/t/k", "v2"))])
                .or_else([TxnOp::Range(RangeRequest::new(KeyRange::key("/t/k")))]),
        )
        .await
        .unwrap();
    assert!(!again.succeeded);
    assert_eq!(
        again.revision, rev,
        "a read-only transaction must not advance the revision"
    );
    match &again.responses[..] {
        [TxnOpResponse::Range(r)] => assert_eq!(r.kvs[0].value, b"v1"),
        other => panic!("unexpected responses {other:?}"),
    }
    let checks = [
        (Compare::mod_revision("/t/k", rev), true),
        (Compare::mod_revision("/t/k", rev - 1), false),
        (
            Compare::new("/t/k", CompareOp::Equal, CompareTarget::Version(1)),
            true,
        ),
        (
            Compare::new("/t/k", CompareOp::Greater, CompareTarget::Version(1)),
            false,
        ),
        (
            Compare::new("/t/k", CompareOp::Equal, CompareTarget::CreateRevision(rev)),
            true,
        ),
        (
            Compare::new("/t/k", CompareOp::Less, CompareTarget::ModRevision(rev + 1)),
            true,
        ),
        (
            Compare::new(
                "/t/k",
                CompareOp::Equal,
                CompareTarget::Value(b"v1".to_vec()),
            ),
            true,
        ),
        (
            Compare::new(
                "/t/k",
                CompareOp::NotEqual,
                CompareTarget::Value(b"v1".to_vec()),
            ),
            false,
        ),
        (
            Compare::new(
                "/t/k",
                CompareOp::Greater,
                CompareTarget::Value(b"v0".to_vec()),
            ),
            true,
        ),
        (Compare::present("/t/missing"), false),
    ];
    for (compare, expected) in checks {
        let resp = store.txn(Txn::new().when([compare.clone()])).await.unwrap();
        assert_eq!(resp.succeeded, expected, "{compare:?}");
    }
    // Several writes in one transaction share one revision.
    let multi = store
        .txn(
            Txn::new()
                .when([Compare::mod_revision("/t/k", rev)])
                .and_then([
                    TxnOp::Put(PutRequest::new("/t/a", "a")),
                    TxnOp::Delete(DeleteRequest::new(KeyRange::key("/t/k")).with_prev_kv()),
                    TxnOp::Range(RangeRequest::new(KeyRange::prefix("/t/"))),
                ]),
        )
        .await
        .unwrap();
    assert!(multi.succeeded);
    assert_eq!(multi.revision, rev + 1);
    match &multi.responses[..] {
        [TxnOpResponse::Put(_), TxnOpResponse::Delete(d), TxnOpResponse::Range(r)] => {
            assert_eq!(d.deleted, 1);
            assert_eq!(d.prev_kvs[0].value, b"v1");
            assert_eq!(keys(&r.kvs), ["/t/a"]);
        }
        other => panic!("unexpected responses {other:?}"),
    }
    let a = store.get(b"/t/a").await.unwrap().unwrap();
    assert_eq!(a.mod_revision, rev + 1);
    let dup = store
        .txn(Txn::new().and_then([
            TxnOp::Put(PutRequest::new("/t/x", "1")),
            TxnOp::Put(PutRequest::new("/t/x", "2")),
        ]))
        .await;
    assert!(
        matches!(dup, Err(StoreError::DuplicateKeyInTxn { .. })),
        "{dup:?}"
    );
    assert_eq!(
        store.get(b"/t/x").await.unwrap(),
        None,
        "a refused txn wrote data"
    );
}

pub(crate) async fn concurrent_cas_increments_are_exact(store: Arc<dyn Store>) {
    const TASKS: usize = 16;
    const EACH: usize = 25;
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut done = 0;
            while done < EACH {
                let current = store.get(b"/cas/counter").await.unwrap();
                let (n, rev) = match &current {
                    Some(kv) => (
                        String::from_utf8_lossy(&kv.value).parse::<u64>().unwrap(),
                        kv.mod_revision,
                    ),
                    None => (0, 0),
                };
                let resp = store
                    .txn(
                        Txn::new()
                            .when([Compare::mod_revision("/cas/counter", rev)])
                            .and_then([TxnOp::Put(PutRequest::new(
                                "/cas/counter",
                                (n + 1).to_string(),
                            ))]),
                    )
                    .await
                    .unwrap();
                if resp.succeeded {
                    done += 1;
                }
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let kv = store.get(b"/cas/counter").await.unwrap().unwrap();
    assert_eq!(kv.value, (TASKS * EACH).to_string().as_bytes());
    assert_eq!(kv.version, (TASKS * EACH) as i64);
}

/// Writes a known history and returns every event in it, in order.
async fn write_history(store: &dyn Store) -> (Revision, Vec<(EventKind, String, String)>) {
    let first = put(store, "/w/a", "a1").await;
    let mut expected = vec![(EventKind::Put, "/w/a".to_string(), "a1".to_string())];
    for (k, v) in [
        ("/w/b", "b1"),
        ("/w/a", "a2"),
        ("/other", "x"),
        ("/w/c", "c1"),
    ] {
        put(store, k, v).await;
        if k.starts_with("/w/") {
            expected.push((EventKind::Put, k.into(), v.into()));
        }
    }
    store
        .delete(DeleteRequest::new(KeyRange::key("/w/b")))
        .await
        .unwrap();
    expected.push((EventKind::Delete, "/w/b".into(), String::new()));
    store
        .txn(Txn::new().and_then([
            TxnOp::Put(PutRequest::new("/w/d", "d1")),
            TxnOp::Put(PutRequest::new("/w/a", "a3")),
        ]))
        .await
        .unwrap();
    expected.push((EventKind::Put, "/w/d".into(), "d1".into()));
    expected.push((EventKind::Put, "/w/a".into(), "a3".into()));
    (first, expected)
}

fn summarize(events: &[Event]) -> Vec<(EventKind, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.kind,
                String::from_utf8_lossy(&e.kv.key).into_owned(),
                String::from_utf8_lossy(&e.kv.value).into_owned(),
            )
        })
        .collect()
}

pub(crate) async fn watch_replays_from_every_revision(store: &dyn Store) {
    let (first, expected) = write_history(store).await;
    let revisions: Vec<Revision> = {
        let mut watch = store
            .watch(WatchRequest::new(KeyRange::prefix("/w/")).from_revision(first))
            .await
            .unwrap();
        let events = next_events(&mut watch, expected.len()).await;
        assert_eq!(summarize(&events), expected);
        let revs: Vec<Revision> = events.iter().map(|e| e.kv.mod_revision).collect();
        assert!(
            revs.windows(2).all(|w| w[0] <= w[1]),
            "events out of order: {revs:?}"
        );
        revs
    };
    // From any later start revision: exactly the suffix of the history.
    for (i, start) in revisions.iter().enumerate() {
        if i > 0 && revisions[i - 1] == *start {
            continue;
        }
        let mut watch = store
            .watch(WatchRequest::new(KeyRange::prefix("/w/")).from_revision(*start))
            .await
            .unwrap();
        let events = next_events(&mut watch, expected.len() - i).await;
        assert_eq!(summarize(&events), expected[i..], "from revision {start}");
    }
    // prev_kv carries the version each event replaced.
    let mut watch = store
        .watch(
            WatchRequest::new(KeyRange::key("/w/a"))
                .from_revision(first)
                .with_prev_kv(),
        )
        .await
        .unwrap();
    let events = next_events(&mut watch, 3).await;
    let prevs: Vec<Option<Vec<u8>>> = events
        .iter()
        .map(|e| e.prev_kv.as_ref().map(|kv| kv.value.clone()))
        .collect();
    assert_eq!(prevs, [None, Some(b"a1".to_vec()), Some(b"a2".to_vec())]);
}

pub(crate) async fn watch_sees_every_concurrent_write_once(store: Arc<dyn Store>) {
    let start = put(&*store, "/live/start", "0").await;
    // One watcher from now, one from the past that must catch up while writes go on.
    let mut live = store
        .watch(WatchRequest::new(KeyRange::prefix("/live/")))
        .await
        .unwrap();
    const WRITERS: usize = 4;
    const EACH: usize = 50;
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..EACH {
                put(&*store, &format!("/live/{w}/{i}"), "x").await;
            }
        }));
    }
    let mut past = store
        .watch(WatchRequest::new(KeyRange::prefix("/live/")).from_revision(start))
        .await
        .unwrap();
    for handle in handles {
        handle.await.unwrap();
    }
    let live_events = next_events(&mut live, WRITERS * EACH).await;
    let past_events = next_events(&mut past, WRITERS * EACH + 1).await;
    assert_eq!(summarize(&live_events), summarize(&past_events[1..]));
    let mut seen = std::collections::HashSet::new();
    for e in &live_events {
        assert!(
            seen.insert(e.kv.key.clone()),
            "duplicate event for {:?}",
            e.kv.key
        );
    }
    let revs: Vec<Revision> = live_events.iter().map(|e| e.kv.mod_revision).collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]));
    // Nothing more arrives.
    put(&*store, "/live/end", "1").await;
    let last = next_events(&mut live, 1).await;
    assert_eq!(last[0].kv.key, b"/live/end");
}

pub(crate) async fn compaction_bounds_reads_and_watches(store: &dyn Store) {
    let r1 = put(store, "/c/a", "1").await;
    put(store, "/c/a", "2").await;
    put(store, "/c/b", "1").await;
    let r4 = store
        .delete(DeleteRequest::new(KeyRange::key("/c/b")))
        .await
        .unwrap()
        .revision;
    let r5 = put(store, "/c/a", "3").await;
    store.compact(r4).await.unwrap();
    let old = store
        .range(RangeRequest::new(KeyRange::prefix("/c/")).at_revision(r1))
        .await;
    assert!(
        matches!(old, Err(StoreError::Compacted { compact_revision, .. }) if compact_revision == r4),
        "{old:?}"
    );
    let watch = store
        .watch(WatchRequest::new(KeyRange::prefix("/c/")).from_revision(r1))
        .await;
    assert!(
        matches!(watch, Err(StoreError::Compacted { .. })),
        "watch from compacted revision"
    );
    // The compacted revision itself and everything after it stay readable.
    let at = store
        .range(RangeRequest::new(KeyRange::prefix("/c/")).at_revision(r4))
        .await
        .unwrap();
    assert_eq!(keys(&at.kvs), ["/c/a"]);
    assert_eq!(at.kvs[0].value, b"2");
    let mut watch = store
        .watch(WatchRequest::new(KeyRange::prefix("/c/")).from_revision(r5))
        .await
        .unwrap();
    let events = next_events(&mut watch, 1).await;
    assert_eq!(events[0].kv.value, b"3");
    let now = store
        .range(RangeRequest::new(KeyRange::prefix("/c/")))
        .await
        .unwrap();
    assert_eq!(now.kvs[0].value, b"3");
    let status = store.status().await.unwrap();
    assert_eq!(status.compact_revision, r4);
    let again = store.compact(r4).await;
    assert!(
        matches!(again, Err(StoreError::Compacted { .. })),
        "{again:?}"
    );
    let future = store.compact(status.revision + 10).await;
    assert!(
        matches!(future, Err(StoreError::FutureRevision { .. })),
        "{future:?}"
    );
}

pub(crate) async fn leases_expire_and_revoke_keys(store: &dyn Store) {
    let lease = store.lease_grant(2).await.unwrap();
    assert!(lease.id > 0 && lease.ttl_secs >= 2);
    let rev = store
        .put(PutRequest::new("/l/short", "x").with_lease(lease.id))
        .await
        .unwrap()
        .revision;
    let mut watch = store
        .watch(WatchRequest::new(KeyRange::prefix("/l/")).from_revision(rev + 1))
        .await
        .unwrap();
    let info = store.lease_time_to_live(lease.id).await.unwrap();
    assert_eq!(info.keys, vec![b"/l/short".to_vec()]);
    assert!(info.remaining_secs > 0 && info.remaining_secs <= lease.ttl_secs);
    let events = next_events(&mut watch, 1).await;
    assert_eq!(
        events[0].kind,
        EventKind::Delete,
        "lease expiry deletes its keys"
    );
    assert_eq!(store.get(b"/l/short").await.unwrap(), None);
    assert_eq!(
        store
            .lease_time_to_live(lease.id)
            .await
            .unwrap()
            .remaining_secs,
        -1
    );
    let gone = store.lease_keep_alive(lease.id).await;
    assert!(
        matches!(gone, Err(StoreError::LeaseNotFound(_))),
        "{gone:?}"
    );

    // Keep-alive holds a lease beyond its TTL; revoke deletes at once.
    let held = store.lease_grant(2).await.unwrap();
    store
        .put(PutRequest::new("/l/held", "y").with_lease(held.id))
        .await
        .unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        store.lease_keep_alive(held.id).await.unwrap();
    }
    assert!(
        store.get(b"/l/held").await.unwrap().is_some(),
        "kept-alive key expired"
    );
    store.lease_revoke(held.id).await.unwrap();
    assert_eq!(store.get(b"/l/held").await.unwrap(), None);
    let missing = store
        .put(PutRequest::new("/l/none", "z").with_lease(held.id))
        .await;
    assert!(
        matches!(missing, Err(StoreError::LeaseNotFound(_))),
        "{missing:?}"
    );
    let bad = store.lease_grant(0).await;
    assert!(
        matches!(bad, Err(StoreError::InvalidLeaseTtl { .. })),
        "{bad:?}"
    );
}

pub(crate) async fn size_limits(store: &dyn Store) {
    let big = vec![7u8; MAX_VALUE_BYTES];
    store
        .put(PutRequest::new("/big/ok", big.clone()))
        .await
        .unwrap();
    assert_eq!(store.get(b"/big/ok").await.unwrap().unwrap().value, big);
    let too_big = store
        .put(PutRequest::new("/big/no", vec![0u8; MAX_VALUE_BYTES + 1]))
        .await;
    assert!(
        matches!(too_big, Err(StoreError::ValueTooLarge { .. })),
        "oversize value accepted"
    );
    let long_key = store
        .put(PutRequest::new(vec![b'k'; MAX_KEY_BYTES + 1], "v"))
        .await;
    assert!(matches!(long_key, Err(StoreError::KeyTooLarge { .. })));
    let empty = store.put(PutRequest::new("", "v")).await;
    assert!(matches!(empty, Err(StoreError::EmptyKey)));
    assert_eq!(store.get(b"/big/no").await.unwrap(), None);
}

pub(crate) async fn progress_notifications(store: &dyn Store) {
    let rev = put(store, "/p/a", "1").await;
    let mut watch = store
        .watch(WatchRequest::new(KeyRange::prefix("/p/")).with_progress_notify())
        .await
        .unwrap();
    let mut unrelated = 0;
    put(store, "/q/unrelated", "1").await;
    unrelated += 1;
    watch.request_progress();
    let resp = next_response(&mut watch).await;
    assert!(
        resp.is_progress(),
        "expected a progress notification, got {resp:?}"
    );
    assert!(resp.revision >= rev + unrelated);
}

pub(crate) async fn many_keys_and_status(store: &dyn Store) {
    let before = store.status().await.unwrap();
    for i in 0..200 {
        put(store, &format!("/many/{i:04}"), "v").await;
    }
    let after = store.status().await.unwrap();
    assert_eq!(after.revision, before.revision + 200);
    assert!(after.db_size_bytes > 0 && after.quota_bytes > 0);
    let mut listed = BTreeMap::new();
    let mut start = b"/many/".to_vec();
    loop {
        let page = store
            .range(
                RangeRequest::new(KeyRange::interval(start.clone(), prefix_end(b"/many/")))
                    .with_limit(64)
                    .at_revision(after.revision),
            )
            .await
            .unwrap();
        for kv in &page.kvs {
            listed.insert(kv.key.clone(), kv.mod_revision);
        }
        if !page.more {
            break;
        }
        start = page.kvs.last().unwrap().key.clone();
        start.push(0);
    }
    assert_eq!(listed.len(), 200);
}

/// Declares one `#[tokio::test]` per conformance check, each on a fresh store from `$open`.
#[macro_export]
macro_rules! conformance_suite {
    ($open:path) => {
        $crate::conformance_suite!(@tests $open;
            put_get_versions, range_prefix_limit_and_past_revisions, txn_compare_and_branches,
            watch_replays_from_every_revision, compaction_bounds_reads_and_watches,
            leases_expire_and_revoke_keys, size_limits, progress_notifications,
            many_keys_and_status);
        $crate::conformance_suite!(@shared $open;
            concurrent_cas_increments_are_exact, watch_sees_every_concurrent_write_once);
    };
    (@tests $open:path; $($name:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let test_store = $open().await;
            conformance::$name(&*test_store.store).await;
        }
    )*};
    (@shared $open:path; $($name:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let test_store = $open().await;
            conformance::$name(test_store.store.clone()).await;
        }
    )*};
}
