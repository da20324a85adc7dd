//! The conformance suite against real etcd (Debian's etcd-server), one member and three,
//! and what only a cluster can show: it keeps serving when a member dies.

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use conformance::TestStore;
use korvet_store::etcd::{EtcdStore, LocalEtcd};
use korvet_store::*;

async fn open_cluster(members: usize) -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = LocalEtcd::start(dir.path(), members)
        .await
        .unwrap_or_else(|e| panic!("start etcd: {e}"));
    let store = EtcdStore::connect(&etcd.endpoints())
        .await
        .unwrap_or_else(|e| panic!("connect to etcd: {e}"));
    // Fields drop in order: the members stop before their directory goes.
    TestStore {
        store: Arc::new(store),
        guard: Box::new((etcd, dir)),
    }
}

mod one_member {
    use crate::conformance;

    async fn open() -> conformance::TestStore {
        super::open_cluster(1).await
    }

    crate::conformance_suite!(open);
}

mod three_members {
    use crate::conformance;

    async fn open() -> conformance::TestStore {
        super::open_cluster(3).await
    }

    crate::conformance_suite!(open);
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
