//! The garbage collector against a real API server (embedded store) with the
//! controllers running: chains of ConfigMaps owned by each other, deleted with each
//! propagation policy.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use korvet_test_support::{wait_for, StoreKind, TestControlPlane};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;

async fn setup() -> (TestControlPlane, kube::Client) {
    let cp = TestControlPlane::start_with_controllers(StoreKind::Embedded).await;
    let client = cp.client().await;
    (cp, client)
}

fn owner_ref(owner: &ConfigMap, block: bool) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: owner.metadata.name.clone().unwrap(),
        uid: owner.metadata.uid.clone().unwrap(),
        block_owner_deletion: Some(block),
        controller: None,
    }
}

async fn config_map(
    api: &Api<ConfigMap>,
    name: &str,
    owners: Vec<OwnerReference>,
    finalizers: &[&str],
) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm.metadata.owner_references = (!owners.is_empty()).then_some(owners);
    cm.metadata.finalizers =
        (!finalizers.is_empty()).then(|| finalizers.iter().map(|f| f.to_string()).collect());
    api.create(&PostParams::default(), &cm).await.unwrap()
}

async fn gone(api: &Api<ConfigMap>, name: &str) {
    let what = format!("ConfigMap {name} to be deleted");
    wait_for(20, &what, || async {
        api.get_opt(name).await.unwrap().is_none().then_some(())
    })
    .await;
}

async fn delete_with(api: &Api<ConfigMap>, name: &str, params: DeleteParams) {
    api.delete(name, &params).await.unwrap();
}

async fn drop_finalizers(api: &Api<ConfigMap>, name: &str) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn background_deletion_removes_a_chain_of_dependents() {
    let (_cp, client) = setup().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let a = config_map(&api, "a", vec![], &[]).await;
    let b = config_map(&api, "b", vec![owner_ref(&a, true)], &[]).await;
    config_map(&api, "c", vec![owner_ref(&b, false)], &[]).await;
    // Owned by a and by an owner whose name exists with another uid: the stale
    // reference counts as gone, so once a is gone, d goes too.
    let mut stale = owner_ref(&b, false);
    stale.uid = "00000000-0000-0000-0000-000000000000".into();
    let d = config_map(&api, "d", vec![owner_ref(&a, false), stale], &[]).await;
    // Still owned by a: the stale reference is dropped, d stays for now.
    wait_for(20, "the stale owner reference to be removed", || async {
        let d = api.get("d").await.unwrap();
        (d.metadata.owner_references.unwrap_or_default().len() == 1).then_some(())
    })
    .await;
    assert_eq!(api.get("d").await.unwrap().metadata.uid, d.metadata.uid);
    delete_with(&api, "a", DeleteParams::background()).await;
    for name in ["a", "b", "c", "d"] {
        gone(&api, name).await;
    }
}

#[tokio::test]
async fn foreground_deletion_waits_for_blocking_dependents() {
    let (_cp, client) = setup().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let a = config_map(&api, "a", vec![], &[]).await;
    let b = config_map(&api, "b", vec![owner_ref(&a, true)], &[]).await;
    // c holds b (and through b, a) with a finalizer of its own; e does not block a.
    config_map(&api, "c", vec![owner_ref(&b, true)], &["example.com/hold"]).await;
    config_map(&api, "e", vec![owner_ref(&a, false)], &["example.com/hold"]).await;
    delete_with(&api, "a", DeleteParams::foreground()).await;
    // b has dependents, so it is deleted in the foreground too and waits for c.
    wait_for(20, "b to be deleting its dependents", || async {
        let b = api.get("b").await.unwrap();
        let fins = b.metadata.finalizers.unwrap_or_default();
        (b.metadata.deletion_timestamp.is_some() && fins.contains(&"foregroundDeletion".into()))
            .then_some(())
    })
    .await;
    wait_for(20, "c and e to be marked for deletion", || async {
        let c = api.get("c").await.unwrap();
        let e = api.get("e").await.unwrap();
        (c.metadata.deletion_timestamp.is_some() && e.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    // Give the collector time to (wrongly) let a go while c still blocks it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = api.get("a").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(
        held.metadata.finalizers.unwrap_or_default(),
        vec!["foregroundDeletion".to_string()]
    );
    drop_finalizers(&api, "c").await;
    for name in ["c", "b", "a"] {
        gone(&api, name).await;
    }
    // e never blocked a, and its own finalizer still holds it.
    let e = api.get("e").await.unwrap();
    assert!(e.metadata.deletion_timestamp.is_some());
    drop_finalizers(&api, "e").await;
    gone(&api, "e").await;
}

#[tokio::test]
async fn orphan_deletion_keeps_dependents_without_the_reference() {
    let (_cp, client) = setup().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let a = config_map(&api, "a", vec![], &[]).await;
    let other = config_map(&api, "other", vec![], &[]).await;
    config_map(&api, "b", vec![owner_ref(&a, true)], &[]).await;
    config_map(
        &api,
        "c",
        vec![owner_ref(&a, true), owner_ref(&other, false)],
        &[],
    )
    .await;
    delete_with(&api, "a", DeleteParams::orphan()).await;
    gone(&api, "a").await;
    let b = api.get("b").await.unwrap();
    assert_eq!(b.metadata.owner_references, None);
    let c = api.get("c").await.unwrap();
    let owners = c.metadata.owner_references.unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].name, "other");
    // The orphans stay: nothing deletes them later either.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(api.get_opt("b").await.unwrap().is_some());
}

// kubectl blocks its thread; the API server needs another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_resource_owned_by_a_config_map_is_collected() {
    let (cp, client) = setup().await;
    cp.kubectl().ok_with_input(
        &["apply", "-f", "-"],
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#,
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owner = config_map(&cms, "owner", vec![], &[]).await;
    let ar = ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "ownerReferences": [owner_ref(&owner, true)]},
        "spec": {"size": 1},
    }))
    .unwrap();
    wait_for(20, "the Widget to be created", || async {
        widgets
            .create(&PostParams::default(), &widget)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    // Wait until the collector watches Widgets: a Widget whose owner is gone goes.
    let mut orphan = widget.clone();
    orphan.metadata.name = Some("stale".into());
    orphan.metadata.owner_references.as_mut().unwrap()[0].uid =
        "00000000-0000-0000-0000-000000000001".into();
    widgets
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap();
    wait_for(
        40,
        "the Widget with a gone owner to be collected",
        || async {
            widgets
                .get_opt("stale")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(widgets.get_opt("w").await.unwrap().is_some());
    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    wait_for(20, "the Widget to be collected", || async {
        widgets.get_opt("w").await.unwrap().is_none().then_some(())
    })
    .await;
}
