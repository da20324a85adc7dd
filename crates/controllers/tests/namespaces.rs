//! What every namespace gets (a `default` ServiceAccount, the `kube-root-ca.crt`
//! ConfigMap, pods with a service-account token volume) and how a namespace is deleted,
//! against a real API server (embedded store) with the controllers running.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use korvet_test_support::{wait_for, StoreKind, TestControlPlane};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

async fn setup() -> (TestControlPlane, kube::Client) {
    let cp = TestControlPlane::start_with_controllers(StoreKind::Embedded).await;
    let client = cp.client().await;
    (cp, client)
}

async fn namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_new_namespace_gets_a_default_account_and_the_root_ca() {
    let (cp, client) = setup().await;
    let ca = std::fs::read_to_string(cp.pki_dir().join("ca.crt")).unwrap();
    namespace(&client, "team").await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "team");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    let first = wait_for(20, "the default ServiceAccount", || async {
        accounts.get_opt("default").await.unwrap()
    })
    .await;
    let published = wait_for(20, "kube-root-ca.crt", || async {
        config_maps.get_opt("kube-root-ca.crt").await.unwrap()
    })
    .await;
    assert_eq!(published.data.unwrap()["ca.crt"], ca);

    // Deleted or changed, both come back.
    accounts
        .delete("default", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        20,
        "the default ServiceAccount to be re-created",
        || async {
            let sa = accounts.get_opt("default").await.unwrap()?;
            (sa.metadata.uid != first.metadata.uid).then_some(())
        },
    )
    .await;
    config_maps
        .patch(
            "kube-root-ca.crt",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"ca.crt": "forged", "extra": "x"}})),
        )
        .await
        .unwrap();
    wait_for(20, "kube-root-ca.crt to be repaired", || async {
        let cm = config_maps.get("kube-root-ca.crt").await.unwrap();
        let data = cm.data.unwrap_or_default();
        (data.len() == 1 && data.get("ca.crt") == Some(&ca)).then_some(())
    })
    .await;

    // Pods get the token volume, mounted where clients look for it.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let spec = pod.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    let volume = &spec.volumes.unwrap()[0];
    assert!(volume.name.starts_with("kube-api-access-"));
    let sources = volume.projected.as_ref().unwrap().sources.clone().unwrap();
    assert_eq!(
        sources[1].config_map.as_ref().unwrap().name,
        "kube-root-ca.crt"
    );
    let mounts = spec.containers[0].volume_mounts.clone().unwrap();
    assert_eq!(
        mounts[0].mount_path,
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    assert_eq!(mounts[0].name, volume.name);

    // An account that opts out keeps its pods free of the volume.
    let robot: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": "robot"},
        "automountServiceAccountToken": false,
    }))
    .unwrap();
    accounts
        .create(&PostParams::default(), &robot)
        .await
        .unwrap();
    let mut quiet: Pod = serde_json::from_value(json!({
        "metadata": {"name": "q"},
        "spec": {"serviceAccountName": "robot", "containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    quiet = pods.create(&PostParams::default(), &quiet).await.unwrap();
    assert_eq!(quiet.spec.unwrap().volumes, None);
}

#[tokio::test]
async fn events_expire_after_their_ttl() {
    let (_cp, client) = setup().await;
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let create = |name: &'static str| {
        let events = events.clone();
        async move {
            let now = jiff::Timestamp::now().to_string();
            let event = serde_json::from_value(json!({
                "metadata": {"name": name},
                "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
                "reason": "Test", "message": "m", "type": "Normal",
                "firstTimestamp": now, "lastTimestamp": now,
            }))
            .unwrap();
            events.create(&PostParams::default(), &event).await.unwrap();
        }
    };
    // The TTL counts from an Event's last write; a short one stands in for the hour.
    create("old").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    create("fresh").await;
    let ttl = Duration::from_millis(1500);
    let deleted = korvet_controllers::event_ttl::sweep(&client, ttl)
        .await
        .unwrap();
    assert!(deleted >= 1);
    assert!(events.get_opt("old").await.unwrap().is_none());
    assert!(events.get_opt("fresh").await.unwrap().is_some());
}

#[tokio::test]
async fn deleting_a_namespace_empties_and_removes_it() {
    let (_cp, client) = setup().await;
    namespace(&client, "doomed").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    for (name, finalizers) in [("a", json!(null)), ("held", json!(["example.com/hold"]))] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name, "finalizers": finalizers}}))
                .unwrap();
        config_maps
            .create(&PostParams::default(), &cm)
            .await
            .unwrap();
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "labels": {"app": "x"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "doomed");
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "s"},
        "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]},
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), "doomed")
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "doomed");
    wait_for(20, "the default ServiceAccount", || async {
        accounts.get_opt("default").await.unwrap()
    })
    .await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    // Everything but the held ConfigMap goes; the namespace says what it waits for.
    let ns = wait_for(20, "the namespace to wait for the finalizer", || async {
        let ns = namespaces.get("doomed").await.unwrap();
        let status = ns.status.clone()?;
        let waiting = status.conditions.as_ref()?.iter().any(|c| {
            c.type_ == "NamespaceFinalizersRemaining"
                && c.status == "True"
                && c.message.as_deref()
                    == Some("Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances")
        });
        (waiting && pods.get_opt("p").await.unwrap().is_none()).then_some(ns)
    })
    .await;
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    assert!(config_maps.get_opt("a").await.unwrap().is_none());
    assert!(accounts.get_opt("default").await.unwrap().is_none());
    let held = config_maps.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    // Nothing new may be made inside, not even by the controllers.
    assert!(config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "late"}})).unwrap()
        )
        .await
        .is_err());

    release_and_wait_gone(&config_maps, &namespaces, "doomed").await;
}

/// The namespace controller alone, started after the namespace was deleted (as after a
/// restart of the control plane: its watch's initial list finds the namespace): bound pods
/// get their grace period, held objects are waited for with upstream's conditions, and the
/// namespace goes once the last one does.
#[tokio::test]
async fn a_terminating_namespace_waits_for_its_content_and_survives_a_restart() {
    let cp = TestControlPlane::start(StoreKind::Embedded).await;
    let client = cp.client().await;
    namespace(&client, "later").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "later");
    for (name, finalizers) in [
        ("plain", json!(null)),
        ("held", json!(["example.com/hold"])),
    ] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name, "finalizers": finalizers}}))
                .unwrap();
        config_maps
            .create(&PostParams::default(), &cm)
            .await
            .unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "later");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "runner"},
        "spec": {"nodeName": "node-a", "terminationGracePeriodSeconds": 30,
                 "containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete("later", &DeleteParams::default())
        .await
        .unwrap();
    // No controller runs yet: the API server only marks the namespace.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ns = namespaces.get("later").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    assert!(config_maps.get_opt("plain").await.unwrap().is_some());

    let controller = tokio::spawn(korvet_controllers::namespace::run(client.clone()));
    let condition = |ns: &Namespace, type_: &str| {
        ns.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == type_)
            .cloned()
    };
    let ns = wait_for(20, "the namespace to say what it waits for", || async {
        let ns = namespaces.get("later").await.unwrap();
        let remaining = condition(&ns, "NamespaceContentRemaining")?;
        (remaining.message.as_deref()
            == Some("Some resources are remaining: configmaps. has 1 resource instances, pods. has 1 resource instances"))
        .then_some(ns)
    })
    .await;
    let held = condition(&ns, "NamespaceFinalizersRemaining").unwrap();
    assert_eq!(held.status, "True");
    assert_eq!(held.reason.as_deref(), Some("SomeFinalizersRemain"));
    assert_eq!(
        held.message.as_deref(),
        Some("Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances")
    );
    let failure = condition(&ns, "NamespaceDeletionContentFailure").unwrap();
    assert_eq!(failure.status, "False");
    assert_eq!(
        ns.spec.unwrap().finalizers,
        Some(vec!["kubernetes".to_string()])
    );
    assert!(config_maps.get_opt("plain").await.unwrap().is_none());
    // The bound pod waits for its node, with its own grace period.
    let runner = pods.get("runner").await.unwrap();
    assert!(runner.metadata.deletion_timestamp.is_some());
    assert_eq!(runner.metadata.deletion_grace_period_seconds, Some(30));

    // The node has stopped it (the kubelet's final delete), and the finalizer goes.
    pods.delete("runner", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(namespaces.get_opt("later").await.unwrap().is_some());
    release_and_wait_gone(&config_maps, &namespaces, "later").await;
    controller.abort();
}

/// Takes the finalizer off ConfigMap `held` and waits until namespace `name` is gone.
async fn release_and_wait_gone(
    config_maps: &Api<ConfigMap>,
    namespaces: &Api<Namespace>,
    name: &str,
) {
    config_maps
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    wait_for(20, "the namespace to be removed", || async {
        namespaces
            .get_opt(name)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}
