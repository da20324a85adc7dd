//! The `kube` crate, as every Rust controller uses it: typed CRUD, lists with selectors,
//! and `runtime::watcher` following changes, on both stores.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use korvet_test_support::{on_every_store, StoreKind, TestControlPlane};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::json;

async fn client(cp: &TestControlPlane) -> Client {
    let kubeconfig = Kubeconfig::read_from(cp.kubeconfig()).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    Client::try_from(config).expect("kube client")
}

fn config_map(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "kube-test"}},
        "data": {"key": value},
    }))
    .expect("config map")
}

async fn typed_crud_and_lists(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let api: Api<ConfigMap> = Api::namespaced(client(&cp).await, "default");
    let created = api
        .create(&PostParams::default(), &config_map("one", "1"))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    let err = api
        .create(&PostParams::default(), &config_map("one", "1"))
        .await
        .expect_err("duplicate create");
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 409),
        other => panic!("unexpected error {other:?}"),
    }
    let mut fetched = api.get("one").await.expect("get");
    fetched
        .data
        .get_or_insert_default()
        .insert("key".into(), "2".into());
    let replaced = api
        .replace("one", &PostParams::default(), &fetched)
        .await
        .expect("replace");
    assert_eq!(replaced.data.unwrap_or_default()["key"], "2");
    let patched = api
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"extra": "x"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(patched.data.unwrap_or_default()["extra"], "x");
    let applied = api
        .patch(
            "two",
            &PatchParams::apply("kube-test"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "two", "labels": {"app": "kube-test"}}, "data": {"key": "2"}})),
        )
        .await
        .expect("server-side apply");
    assert_eq!(applied.metadata.name.as_deref(), Some("two"));
    for i in 0..5 {
        api.create(
            &PostParams::default(),
            &config_map(&format!("page-{i}"), "p"),
        )
        .await
        .expect("create page");
    }
    let labelled = api
        .list(&ListParams::default().labels("app=kube-test"))
        .await
        .expect("list");
    assert_eq!(labelled.items.len(), 7);
    // Pagination: limit + continue returns every object once.
    let mut seen = Vec::new();
    let mut params = ListParams::default().limit(3);
    loop {
        let page = api.list(&params).await.expect("page");
        seen.extend(page.items.iter().filter_map(|c| c.metadata.name.clone()));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 7, "{seen:?}");
    api.delete("one", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(api.get_opt("one").await.expect("get_opt").is_none());
}

async fn runtime_watcher_follows_changes(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let client = client(&cp).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &config_map("before", "0"))
        .await
        .expect("create");
    let stream = watcher(api.clone(), watcher::Config::default()).boxed();
    let (initialized, ready) = tokio::sync::oneshot::channel();
    let events = tokio::spawn(async move {
        let mut initialized = Some(initialized);
        let mut names = Vec::new();
        let mut stream = stream;
        while let Ok(Some(event)) = stream.try_next().await {
            match event {
                watcher::Event::Apply(cm) | watcher::Event::InitApply(cm) => {
                    names.push(format!("apply:{}", cm.metadata.name.unwrap_or_default()))
                }
                watcher::Event::Delete(cm) => {
                    names.push(format!("delete:{}", cm.metadata.name.unwrap_or_default()))
                }
                watcher::Event::InitDone => {
                    if let Some(tx) = initialized.take() {
                        let _ = tx.send(());
                    }
                }
                watcher::Event::Init => {}
            }
            if names.iter().any(|n| n == "delete:after") {
                break;
            }
        }
        names
    });
    // Changes made after the initial list must arrive through the watch.
    tokio::time::timeout(std::time::Duration::from_secs(20), ready)
        .await
        .expect("watcher listed in time")
        .expect("watcher task");
    api.create(&PostParams::default(), &config_map("after", "1"))
        .await
        .expect("create");
    api.delete("after", &DeleteParams::default())
        .await
        .expect("delete");
    let names = tokio::time::timeout(std::time::Duration::from_secs(20), events)
        .await
        .expect("watcher saw the changes in time")
        .expect("watcher task");
    assert!(names.contains(&"apply:before".to_string()), "{names:?}");
    assert!(names.contains(&"apply:after".to_string()), "{names:?}");
    assert!(names.contains(&"delete:after".to_string()), "{names:?}");
}

on_every_store!(typed_crud_and_lists, runtime_watcher_follows_changes);
