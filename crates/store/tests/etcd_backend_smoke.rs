//! Smoke test of the etcd backend against real etcd members started by `LocalEtcd`
//! (Debian's /usr/bin/etcd). The full behaviour is covered by the conformance suite.

use std::time::Duration;

use korvet_store::etcd::{EtcdStore, LocalEtcd};
use korvet_store::*;
use tokio::time::timeout;

async fn next(watch: &mut Watch) -> WatchResponse {
    match timeout(Duration::from_secs(10), watch.next()).await {
        Ok(Some(Ok(resp))) => resp,
        other => panic!("expected a watch response, got {other:?}"),
    }
}

#[tokio::test]
async fn single_member_smoke() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = LocalEtcd::start(dir.path(), 1).await.unwrap();
    let store = EtcdStore::connect(&etcd.endpoints()).await.unwrap();

    // put / get / range
    let first = store.put(PutRequest::new("/a/1", "one")).await.unwrap();
    assert!(first.prev_kv.is_none());
    let second = store
        .put(PutRequest::new("/a/1", "uno").with_prev_kv())
        .await
        .unwrap();
    assert_eq!(second.revision, first.revision + 1);
    assert_eq!(second.prev_kv.unwrap().value, b"one");
    store.put(PutRequest::new("/a/2", "two")).await.unwrap();
    store.put(PutRequest::new("/b/1", "other")).await.unwrap();

    let kv = store.get(b"/a/1").await.unwrap().unwrap();
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.version,
            kv.create_revision,
            kv.mod_revision
        ),
        (&b"uno"[..], 2, first.revision, second.revision)
    );
    assert!(store.get(b"/missing").await.unwrap().is_none());

    let page = store
        .range(RangeRequest::new(KeyRange::prefix("/a/")).with_limit(1))
        .await
        .unwrap();
    assert_eq!((page.kvs.len(), page.count, page.more), (1, 2, true));
    let all = store
        .range(RangeRequest::new(KeyRange::prefix("")).keys_only())
        .await
        .unwrap();
    assert_eq!(all.count, 3);
    assert!(all.kvs.iter().all(|kv| kv.value.is_empty()));
    let open = store
        .range(RangeRequest::new(KeyRange::interval("/a/2", "")).count_only())
        .await
        .unwrap();
    assert_eq!((open.count, open.kvs.len()), (2, 0));
    let old = store
        .range(RangeRequest::new(KeyRange::key("/a/1")).at_revision(first.revision))
        .await
        .unwrap();
    assert_eq!(old.kvs[0].value, b"one");
    assert!(old.revision > first.revision);
    let future = store
        .range(RangeRequest::new(KeyRange::key("/a/1")).at_revision(old.revision + 100))
        .await;
    assert!(
        matches!(future, Err(StoreError::FutureRevision { current, .. }) if current == old.revision),
        "{future:?}"
    );

    // input validation happens before etcd sees the request
    assert!(matches!(
        store.put(PutRequest::new("", "v")).await,
        Err(StoreError::EmptyKey)
    ));
    let too_big = vec![0u8; MAX_VALUE_BYTES + 1];
    assert!(matches!(
        store.put(PutRequest::new("/big", too_big)).await,
        Err(StoreError::ValueTooLarge { .. })
    ));
    let largest = vec![7u8; MAX_VALUE_BYTES];
    store
        .put(PutRequest::new("/big", largest.clone()))
        .await
        .unwrap();
    assert_eq!(store.get(b"/big").await.unwrap().unwrap().value, largest);

    // txn
    let kv = store.get(b"/a/1").await.unwrap().unwrap();
    let txn = Txn::new()
        .when([
            Compare::mod_revision("/a/1", kv.mod_revision),
            Compare::absent("/a/3"),
            Compare::new(
                "/a/2",
                CompareOp::Equal,
                CompareTarget::Value(b"two".to_vec()),
            ),
        ])
        .and_then([
            TxnOp::Put(PutRequest::new("/a/3", "three")),
            TxnOp::Delete(DeleteRequest::new(KeyRange::key("/b/1")).with_prev_kv()),
            TxnOp::Range(RangeRequest::new(KeyRange::prefix("/a/"))),
        ])
        .or_else([TxnOp::Range(RangeRequest::new(KeyRange::key("/a/1")))]);
    let resp = store.txn(txn.clone()).await.unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.responses.len(), 3);
    match &resp.responses[1] {
        TxnOpResponse::Delete(d) => assert_eq!((d.deleted, d.prev_kvs.len()), (1, 1)),
        other => panic!("{other:?}"),
    }
    match &resp.responses[2] {
        TxnOpResponse::Range(r) => assert_eq!(r.count, 3),
        other => panic!("{other:?}"),
    }
    let again = store.txn(txn).await.unwrap();
    assert!(!again.succeeded);
    assert_eq!(
        again.revision, resp.revision,
        "a read-only txn must not write"
    );
    match &again.responses[..] {
        [TxnOpResponse::Range(r)] => assert_eq!(r.kvs[0].key, b"/a/1"),
        other => panic!("{other:?}"),
    }
    let duplicate = store
        .txn(Txn::new().and_then([
            TxnOp::Put(PutRequest::new("/d", "1")),
            TxnOp::Put(PutRequest::new("/d", "2")),
        ]))
        .await;
    assert!(
        matches!(&duplicate, Err(StoreError::DuplicateKeyInTxn { key }) if key == "/d"),
        "{duplicate:?}"
    );

    // leases
    assert!(matches!(
        store.lease_grant(0).await,
        Err(StoreError::InvalidLeaseTtl { got: 0, .. })
    ));
    let lease = store.lease_grant(30).await.unwrap();
    assert_eq!(lease.ttl_secs, 30);
    store
        .put(PutRequest::new("/leased", "x").with_lease(lease.id))
        .await
        .unwrap();
    let info = store.lease_time_to_live(lease.id).await.unwrap();
    assert_eq!(info.granted_ttl_secs, 30);
    assert!(info.remaining_secs > 0 && info.remaining_secs <= 30);
    assert_eq!(info.keys, vec![b"/leased".to_vec()]);
    assert_eq!(store.lease_keep_alive(lease.id).await.unwrap(), 30);
    store.lease_revoke(lease.id).await.unwrap();
    assert!(store.get(b"/leased").await.unwrap().is_none());
    assert!(matches!(
        store.lease_keep_alive(lease.id).await,
        Err(StoreError::LeaseNotFound(id)) if id == lease.id
    ));
    assert!(matches!(
        store.lease_revoke(lease.id).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert_eq!(
        store
            .lease_time_to_live(lease.id)
            .await
            .unwrap()
            .remaining_secs,
        -1
    );
    assert!(matches!(
        store
            .put(PutRequest::new("/k", "v").with_lease(lease.id))
            .await,
        Err(StoreError::LeaseNotFound(_))
    ));

    // watch
    let now = store.status().await.unwrap().revision;
    let mut watch = store
        .watch(WatchRequest::new(KeyRange::prefix("/w/")).with_prev_kv())
        .await
        .unwrap();
    let put = store.put(PutRequest::new("/w/1", "a")).await.unwrap();
    store.put(PutRequest::new("/x", "ignored")).await.unwrap();
    store
        .delete(DeleteRequest::new(KeyRange::key("/w/1")))
        .await
        .unwrap();
    let resp = next(&mut watch).await;
    assert_eq!(resp.revision, put.revision);
    assert_eq!(resp.events[0].kind, EventKind::Put);
    assert_eq!(resp.events[0].kv.value, b"a");
    let resp = next(&mut watch).await;
    assert_eq!(resp.events[0].kind, EventKind::Delete);
    assert_eq!(resp.events[0].kv.key, b"/w/1");
    assert_eq!(resp.events[0].kv.mod_revision, put.revision + 2);
    assert_eq!(resp.events[0].prev_kv.as_ref().unwrap().value, b"a");
    watch.request_progress();
    let progress = next(&mut watch).await;
    assert!(progress.is_progress());
    assert_eq!(progress.revision, put.revision + 2);
    drop(watch);

    // a watch from the past replays history
    let mut replay = store
        .watch(WatchRequest::new(KeyRange::key("/w/1")).from_revision(now))
        .await
        .unwrap();
    assert_eq!(
        next(&mut replay).await.events[0].kv.mod_revision,
        put.revision
    );

    // compaction
    let status = store.status().await.unwrap();
    assert_eq!(status.backend, "etcd");
    assert_eq!(status.compact_revision, 0);
    assert_eq!(status.quota_bytes, 2 * 1024 * 1024 * 1024);
    assert!(status.db_size_bytes > 0);
    store.compact(put.revision).await.unwrap();
    assert_eq!(store.status().await.unwrap().compact_revision, put.revision);
    let compacted = store
        .range(RangeRequest::new(KeyRange::key("/a/1")).at_revision(first.revision))
        .await;
    assert!(
        matches!(compacted, Err(StoreError::Compacted { requested, compact_revision })
            if requested == first.revision && compact_revision == put.revision),
        "{compacted:?}"
    );
    let compacted = store
        .watch(WatchRequest::new(KeyRange::prefix("/")).from_revision(first.revision))
        .await;
    assert!(
        matches!(compacted, Err(StoreError::Compacted { compact_revision, .. }) if compact_revision == put.revision),
        "{:?}",
        compacted.err()
    );
    assert!(matches!(
        store.compact(first.revision).await,
        Err(StoreError::Compacted { .. })
    ));

    etcd.stop();
}

#[tokio::test]
async fn unreachable_etcd_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let err = EtcdStore::connect(std::slice::from_ref(&endpoint))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    match err {
        StoreError::Unavailable { endpoints, .. } => assert_eq!(endpoints, endpoint),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn three_members_survive_losing_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = LocalEtcd::start(dir.path(), 3).await.unwrap();
    let store = EtcdStore::connect(&etcd.endpoints()).await.unwrap();
    store.put(PutRequest::new("/before", "1")).await.unwrap();

    etcd.kill_member(0).unwrap();
    // If member 0 led, the others need an election (about a second) before serving;
    // reads are retried inside the store until then.
    assert_eq!(store.get(b"/before").await.unwrap().unwrap().value, b"1");
    for i in 0..20 {
        let key = format!("/after/{i}");
        store.put(PutRequest::new(key.clone(), "v")).await.unwrap();
        assert!(store.get(key.as_bytes()).await.unwrap().is_some());
    }
    let count = store
        .range(RangeRequest::new(KeyRange::prefix("/after/")).count_only())
        .await
        .unwrap()
        .count;
    assert_eq!(count, 20);

    etcd.restart_member(0).await.unwrap();
    let member0 = EtcdStore::connect(&etcd.member_endpoints(0)).await.unwrap();
    let count = member0
        .range(RangeRequest::new(KeyRange::prefix("/after/")).count_only())
        .await
        .unwrap()
        .count;
    assert_eq!(count, 20);
}
