//! The `kube` crate, as every Rust controller uses it: typed CRUD, lists with selectors,
//! and `runtime::watcher` following changes, on both stores.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
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

/// `deletecollection` deletes each object as a DELETE of it would: bound pods get their
/// grace period, objects with finalizers are only marked, and the answer lists both.
async fn deletecollection_is_a_delete_of_each(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let client = client(&cp).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, node) in [("bound", json!("node-a")), ("pending", json!(null))] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "dc"}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 45,
                     "containers": [{"name": "c", "image": "busybox"}]},
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for (name, finalizers) in [
        ("plain", json!(null)),
        ("held", json!(["example.com/hold"])),
    ] {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "dc"}, "finalizers": finalizers},
        }))
        .expect("config map");
        config_maps
            .create(&PostParams::default(), &cm)
            .await
            .expect("create config map");
    }
    let selected = ListParams::default().labels("app=dc");

    // A dry run answers what would go and changes nothing.
    let dry = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    let answer = config_maps
        .delete_collection(&dry, &selected)
        .await
        .expect("dry-run deletecollection");
    let listed = answer.left().expect("a list");
    assert_eq!(listed.items.len(), 2);
    assert_eq!(
        config_maps.list(&selected).await.expect("list").items.len(),
        2
    );

    let answer = pods
        .delete_collection(&DeleteParams::default(), &selected)
        .await
        .expect("deletecollection of pods");
    let listed = answer.left().expect("a list");
    assert_eq!(listed.items.len(), 2);
    // The bound pod waits for its node, its grace period counted from now.
    let bound = pods.get("bound").await.expect("the bound pod stays");
    assert!(bound.metadata.deletion_timestamp.is_some());
    assert_eq!(bound.metadata.deletion_grace_period_seconds, Some(45));
    assert!(pods.get_opt("pending").await.expect("get").is_none());

    let answer = config_maps
        .delete_collection(&DeleteParams::default(), &selected)
        .await
        .expect("deletecollection of config maps");
    let names: Vec<_> = answer
        .left()
        .expect("a list")
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    assert_eq!(names, ["held", "plain"]);
    assert!(config_maps.get_opt("plain").await.expect("get").is_none());
    let held = config_maps.get("held").await.expect("the held one stays");
    assert!(held.metadata.deletion_timestamp.is_some());
    // Its finalizer removed, it goes.
    config_maps
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("remove the finalizer");
    assert!(config_maps.get_opt("held").await.expect("get").is_none());
}

/// A namespace keeps the namespace controller's finalizer until `finalize` takes it out;
/// deleted, it is Terminating until no finalizer is left, then gone. (No controllers run
/// here: the test plays the namespace controller.)
async fn namespaces_go_when_finalized(store: StoreKind) {
    let cp = TestControlPlane::start(store).await;
    let namespaces: Api<Namespace> = Api::all(client(&cp).await);
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "fin"}})).expect("namespace");
    let created = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    let finalizers = |ns: &Namespace| ns.spec.clone().and_then(|s| s.finalizers);
    assert_eq!(finalizers(&created), Some(vec!["kubernetes".to_string()]));
    // An update cannot drop it: only `finalize` changes spec.finalizers.
    let mut replaced = created.clone();
    replaced.spec = None;
    let replaced = namespaces
        .replace("fin", &PostParams::default(), &replaced)
        .await
        .expect("replace");
    assert_eq!(finalizers(&replaced), Some(vec!["kubernetes".to_string()]));

    namespaces
        .delete("fin", &DeleteParams::default())
        .await
        .expect("delete namespace");
    let terminating = namespaces.get("fin").await.expect("still there");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(
        terminating.status.clone().and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );

    // Another finalizer in place of `kubernetes`: still held.
    let mut body = terminating.clone();
    body.spec.get_or_insert_default().finalizers = Some(vec!["example.com/other".into()]);
    let after = namespaces
        .replace_subresource("finalize", "fin", &PostParams::default(), &body)
        .await
        .expect("finalize");
    assert_eq!(
        finalizers(&after),
        Some(vec!["example.com/other".to_string()])
    );
    assert!(namespaces.get_opt("fin").await.expect("get").is_some());

    // None left: the namespace goes.
    let mut body = namespaces.get("fin").await.expect("get");
    body.spec.get_or_insert_default().finalizers = None;
    namespaces
        .replace_subresource("finalize", "fin", &PostParams::default(), &body)
        .await
        .expect("finalize");
    assert!(namespaces.get_opt("fin").await.expect("get").is_none());
}

on_every_store!(
    typed_crud_and_lists,
    runtime_watcher_follows_changes,
    deletecollection_is_a_delete_of_each,
    namespaces_go_when_finalized
);
