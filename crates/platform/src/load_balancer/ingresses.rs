//! The Ingress side of a hosted cluster's service controller: IngressClass `korvet`
//! (the default class) exists, and the cluster's Ingresses, with their backends
//! resolved to ready endpoints, become the one Ingress LoadBalancer of the cluster
//! (`CLUSTER.ingress`), made again on every change of an Ingress, Service or
//! EndpointSlice.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, IngressClassSpec};
use korvet_api::{
    labels, LoadBalancer, LoadBalancerListener, LoadBalancerSpec, INGRESS_CLASS, INGRESS_CONTROLLER,
};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use tokio::sync::Notify;

use super::from_ingress::desired;
use super::services::ClusterServices;
use crate::PlatformError;

/// Waits this long after a change, so that a burst (a rollout's endpoint changes)
/// becomes one update.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The Ingress LoadBalancer's object name; two parts, so no Service's (three) is it.
pub(super) fn object_name(cluster: &str) -> String {
    format!("{cluster}.ingress")
}

fn watch<K>(api: Api<K>, wake: Arc<Notify>) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let task = tokio::spawn(async move {
        stream
            .for_each(|_| {
                wake.notify_one();
                async {}
            })
            .await;
    });
    (store, task)
}

/// Runs until the task is aborted.
pub(super) async fn run(this: Arc<ClusterServices>) {
    while let Err(e) = ensure_class(&this.tenant.client).await {
        tracing::warn!(cluster = %this.cluster, error = %e, "creating IngressClass korvet failed; retrying");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let wake = Arc::new(Notify::new());
    let (ingresses, a) = watch(
        Api::<Ingress>::all(this.tenant.client.clone()),
        wake.clone(),
    );
    let (services, b) = watch(
        Api::<Service>::all(this.tenant.client.clone()),
        wake.clone(),
    );
    let (slices, c) = watch(
        Api::<EndpointSlice>::all(this.tenant.client.clone()),
        wake.clone(),
    );
    let _watchers = Abort(vec![a, b, c]);
    loop {
        wake.notified().await;
        tokio::time::sleep(DEBOUNCE).await;
        // Nothing is decided before every store has its first list.
        if !(store_ready(&ingresses) && store_ready(&services) && store_ready(&slices)) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            wake.notify_one();
            continue;
        }
        let (i, s, e) = (snapshot(&ingresses), snapshot(&services), snapshot(&slices));
        if let Err(err) = sync(&this, &i, &s, &e).await {
            tracing::warn!(cluster = %this.cluster, error = %err, "syncing the Ingress load balancer failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            wake.notify_one();
        }
    }
}

fn store_ready<K: Resource<DynamicType = ()> + Clone + 'static>(store: &Store<K>) -> bool {
    // A store that has seen its initial list reports a state; an empty cluster has
    // empty states too, so readiness is what counts.
    futures::FutureExt::now_or_never(store.wait_until_ready()).is_some_and(|r| r.is_ok())
}

fn snapshot<K: Resource<DynamicType = ()> + Clone + 'static>(store: &Store<K>) -> Vec<K> {
    store.state().iter().map(|o| K::clone(o)).collect()
}

/// Aborts the watch tasks when the controller stops.
struct Abort(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Abort {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

async fn ensure_class(client: &kube::Client) -> Result<(), PlatformError> {
    let classes: Api<IngressClass> = Api::all(client.clone());
    if classes.get_opt(INGRESS_CLASS).await?.is_some() {
        return Ok(());
    }
    let class = IngressClass {
        metadata: ObjectMeta {
            name: Some(INGRESS_CLASS.into()),
            annotations: Some(
                [(
                    "ingressclass.kubernetes.io/is-default-class".to_string(),
                    "true".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(IngressClassSpec {
            controller: Some(INGRESS_CONTROLLER.into()),
            parameters: None,
        }),
    };
    match classes.create(&PostParams::default(), &class).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn sync(
    this: &ClusterServices,
    ingresses: &[Ingress],
    services: &[Service],
    slices: &[EndpointSlice],
) -> Result<(), PlatformError> {
    let lbs: Api<LoadBalancer> = Api::namespaced(this.ctx.client.clone(), &this.namespace);
    let name = object_name(&this.cluster);
    let Some(http) = desired(ingresses, services, slices) else {
        if let Some(existing) = lbs.get_opt(&name).await? {
            if existing.metadata.deletion_timestamp.is_none() {
                crate::delete_object(&lbs, &name).await?;
            }
        }
        return Ok(());
    };
    let mut listeners = vec![LoadBalancerListener {
        name: "http".into(),
        protocol: "TCP".into(),
        port: 80,
        node_port: 0,
        proxy_protocol: None,
        tls_secret: None,
    }];
    if !http.tls.is_empty() {
        listeners.push(LoadBalancerListener {
            name: "https".into(),
            protocol: "TCP".into(),
            port: 443,
            node_port: 0,
            proxy_protocol: None,
            tls_secret: None,
        });
    }
    let spec = LoadBalancerSpec {
        cluster: this.cluster.clone(),
        service: String::new(),
        type_: "external".into(),
        listeners,
        http: Some(http),
        ..Default::default()
    };
    match lbs.get_opt(&name).await? {
        Some(existing) if existing.spec == spec => {}
        Some(existing) if existing.metadata.deletion_timestamp.is_some() => {
            return Err(PlatformError::Tenant(
                "the Ingress load balancer is being deleted; making it again after".into(),
            ));
        }
        Some(mut existing) => {
            // A whole replacement: a merge patch would keep fields the new spec drops.
            existing.spec = spec;
            lbs.replace(&name, &PostParams::default(), &existing)
                .await?;
        }
        None => {
            let mut lb = LoadBalancer::new(&name, spec);
            lb.metadata.labels = Some([(labels::CLUSTER.to_string(), this.cluster.clone())].into());
            let clusters: Api<korvet_api::Cluster> =
                Api::namespaced(this.ctx.client.clone(), &this.namespace);
            if let Some(cluster) = clusters.get_opt(&this.cluster).await? {
                lb.metadata.owner_references = cluster.controller_owner_ref(&()).map(|o| vec![o]);
            }
            lbs.create(&PostParams::default(), &lb).await?;
        }
    }
    Ok(())
}
