//! Two per-namespace publishers, as upstream's: the ServiceAccount controller keeps a
//! `default` ServiceAccount in every active namespace, and the root-CA publisher keeps a
//! ConfigMap `kube-root-ca.crt` (key `ca.crt`, the cluster CA) in every namespace, which
//! the projected `kube-api-access-*` volumes of pods read. Both put back what is deleted
//! or changed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::ResourceExt;

pub(crate) const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
const DESCRIPTION: &str = "kubernetes.io/description";
const DESCRIPTION_TEXT: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Error(#[from] kube::Error);

fn terminating(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

/// Namespace of a namespaced object, as a reference to that Namespace.
fn namespace_of<K: kube::Resource>(obj: &K) -> Option<ObjectRef<Namespace>> {
    obj.meta().namespace.as_deref().map(ObjectRef::new)
}

/// Keeps a `default` ServiceAccount in every active namespace.
pub(crate) async fn run_service_accounts(client: kube::Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    Controller::new(namespaces, watcher::Config::default())
        .watches(accounts, watcher::Config::default(), |sa| {
            (sa.name_any() == "default")
                .then(|| namespace_of(&sa))
                .flatten()
        })
        .run(
            ensure_service_account,
            |_, _, _| Action::requeue(Duration::from_millis(500)),
            Arc::new(client),
        )
        .for_each(|_| async {})
        .await;
}

async fn ensure_service_account(
    ns: Arc<Namespace>,
    client: Arc<kube::Client>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = async {
        if terminating(&ns) {
            return Ok(());
        }
        let api: Api<ServiceAccount> = Api::namespaced((*client).clone(), &ns.name_any());
        if api.get_opt("default").await?.is_some() {
            return Ok(());
        }
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => Ok(()),
            // Created meanwhile, or the namespace started terminating.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 || s.code == 404 => Ok(()),
            Err(e) => Err(Error(e)),
        }
    }
    .await;
    crate::metrics::sync_done("serviceaccount", started, result.is_ok());
    result.map(|()| Action::await_change())
}

/// Keeps the `kube-root-ca.crt` ConfigMap, with `ca_pem`, in every namespace.
pub(crate) async fn run_root_ca_publisher(client: kube::Client, ca_pem: String) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let config_maps: Api<ConfigMap> = Api::all(client.clone());
    Controller::new(namespaces, watcher::Config::default())
        .watches(config_maps, watcher::Config::default(), |cm| {
            (cm.name_any() == ROOT_CA_CONFIG_MAP)
                .then(|| namespace_of(&cm))
                .flatten()
        })
        .run(
            publish_root_ca,
            |_, _, _| Action::requeue(Duration::from_millis(500)),
            Arc::new((client, ca_pem)),
        )
        .for_each(|_| async {})
        .await;
}

fn root_ca_config_map(ca_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CA_CONFIG_MAP.into()),
            annotations: Some([(DESCRIPTION.to_string(), DESCRIPTION_TEXT.to_string())].into()),
            ..Default::default()
        },
        data: Some([("ca.crt".to_string(), ca_pem.to_string())].into()),
        ..Default::default()
    }
}

async fn publish_root_ca(
    ns: Arc<Namespace>,
    ctx: Arc<(kube::Client, String)>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let (client, ca_pem) = (&ctx.0, &ctx.1);
    let result = async {
        if terminating(&ns) {
            return Ok(());
        }
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name_any());
        let wanted = root_ca_config_map(ca_pem);
        let outcome = match api.get_opt(ROOT_CA_CONFIG_MAP).await? {
            None => api
                .create(&PostParams::default(), &wanted)
                .await
                .map(|_| ()),
            Some(current) => {
                let annotated = current.annotations().get(DESCRIPTION).map(String::as_str)
                    == Some(DESCRIPTION_TEXT);
                if current.data == wanted.data && annotated {
                    return Ok(());
                }
                // Upstream replaces the data whole: only `ca.crt` belongs here.
                let mut repaired = current;
                repaired.data = wanted.data;
                repaired.binary_data = None;
                repaired
                    .annotations_mut()
                    .insert(DESCRIPTION.into(), DESCRIPTION_TEXT.into());
                api.replace(ROOT_CA_CONFIG_MAP, &PostParams::default(), &repaired)
                    .await
                    .map(|_| ())
            }
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => Ok(()),
            Err(e) => Err(Error(e)),
        }
    }
    .await;
    crate::metrics::sync_done("root-ca-cert-publisher", started, result.is_ok());
    result.map(|()| Action::await_change())
}
