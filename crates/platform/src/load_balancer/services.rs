//! The service controller of one hosted cluster (the cloud controller manager's part
//! upstream): it watches the cluster's Services and Nodes and keeps, in the management
//! API, one LoadBalancer per `type: LoadBalancer` Service, with upstream's cleanup
//! finalizer on the Service. A Service that asks for nonsense gets an Event and no
//! change to its load balancer.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use korvet_api::{labels, LoadBalancer, SERVICE_FINALIZER};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use super::events;
use super::from_service::{backend_addresses, desired, object_name, wants_load_balancer};
use crate::{Context, PlatformError};

/// What one cluster's service controller works with.
pub(super) struct ClusterServices {
    pub ctx: Arc<Context>,
    pub tenant: crate::tenant::Tenant,
    /// The Cluster object's namespace and name in the management API.
    pub namespace: String,
    pub cluster: String,
}

/// Runs until the task is aborted (the cluster stops or goes).
pub(super) async fn run(this: Arc<ClusterServices>) {
    let services: Api<Service> = Api::all(this.tenant.client.clone());
    let nodes: Api<Node> = Api::all(this.tenant.client.clone());
    let controller = Controller::new(services, watcher::Config::default());
    let store = controller.store();
    controller
        // A node that comes, goes or changes readiness changes every load balancer's
        // backends.
        .watches(nodes, watcher::Config::default(), move |_node: Node| {
            store
                .state()
                .iter()
                .filter(|s| wants_load_balancer(s) || has_finalizer(s))
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(reconcile, error_policy, this)
        .for_each(|_| async {})
        .await;
}

fn has_finalizer(service: &Service) -> bool {
    service.finalizers().iter().any(|f| f == SERVICE_FINALIZER)
}

fn error_policy(service: Arc<Service>, error: &PlatformError, _: Arc<ClusterServices>) -> Action {
    tracing::warn!(service = %service.name_any(), error = %error, "service load balancer sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(
    service: Arc<Service>,
    this: Arc<ClusterServices>,
) -> Result<Action, PlatformError> {
    let svc_namespace = service.namespace().unwrap_or_else(|| "default".into());
    let svc_name = service.name_any();
    let lb_name = object_name(&this.cluster, &svc_namespace, &svc_name);
    let lbs: Api<LoadBalancer> = Api::namespaced(this.ctx.client.clone(), &this.namespace);
    let services: Api<Service> = Api::namespaced(this.tenant.client.clone(), &svc_namespace);
    if !wants_load_balancer(&service) || service.metadata.deletion_timestamp.is_some() {
        if !has_finalizer(&service) {
            return Ok(Action::await_change());
        }
        // The load balancer goes first; the finalizer only once it is gone.
        if let Some(lb) = lbs.get_opt(&lb_name).await? {
            if lb.metadata.deletion_timestamp.is_none() {
                crate::delete_object(&lbs, &lb_name).await?;
                events::publish(
                    &this.tenant,
                    service.as_ref(),
                    false,
                    "DeletingLoadBalancer",
                    format!("deleting load balancer {lb_name}"),
                )
                .await;
            }
            return Ok(Action::requeue(Duration::from_millis(250)));
        }
        if service.metadata.deletion_timestamp.is_none() {
            // No longer type LoadBalancer: it has no load balancer to show.
            let patch = serde_json::json!({"status": {"loadBalancer": {}}});
            crate::not_found_is_done(
                services
                    .patch_status(&svc_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await,
            )?;
        }
        remove_finalizer(&services, &service).await?;
        events::publish(
            &this.tenant,
            service.as_ref(),
            false,
            "DeletedLoadBalancer",
            format!("deleted load balancer {lb_name}"),
        )
        .await;
        return Ok(Action::await_change());
    }
    if !has_finalizer(&service) {
        let mut finalizers = service.finalizers().to_vec();
        finalizers.push(SERVICE_FINALIZER.into());
        let patch = serde_json::json!({"metadata": {
            "finalizers": finalizers,
            "resourceVersion": service.resource_version(),
        }});
        services
            .patch(&svc_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        // The patch brings the Service back with its finalizer.
        return Ok(Action::await_change());
    }
    let nodes: Api<Node> = Api::all(this.tenant.client.clone());
    let backends = backend_addresses(&nodes.list(&ListParams::default()).await?.items);
    let spec = match desired(&this.cluster, &service, backends) {
        Ok(spec) => spec,
        Err(problems) => {
            events::publish(
                &this.tenant,
                service.as_ref(),
                true,
                "InvalidLoadBalancer",
                format!("no change to the load balancer: {}", problems.join("; ")),
            )
            .await;
            return Ok(Action::await_change());
        }
    };
    match lbs.get_opt(&lb_name).await? {
        Some(existing) if existing.spec == spec => {}
        Some(existing) if existing.metadata.deletion_timestamp.is_some() => {
            // Being deleted (the Service was recreated meanwhile): make it anew after.
            return Ok(Action::requeue(Duration::from_millis(250)));
        }
        Some(mut existing) => {
            // A whole replacement: a merge patch would keep fields the new spec drops.
            existing.spec = spec;
            lbs.replace(&lb_name, &PostParams::default(), &existing)
                .await?;
        }
        None => {
            let mut lb = LoadBalancer::new(&lb_name, spec);
            lb.metadata.labels = Some(
                [
                    (labels::CLUSTER.to_string(), this.cluster.clone()),
                    (labels::SERVICE_NAMESPACE.to_string(), svc_namespace.clone()),
                    (labels::SERVICE_NAME.to_string(), svc_name.clone()),
                ]
                .into(),
            );
            let clusters: Api<korvet_api::Cluster> =
                Api::namespaced(this.ctx.client.clone(), &this.namespace);
            if let Some(cluster) = clusters.get_opt(&this.cluster).await? {
                lb.metadata.owner_references = cluster.controller_owner_ref(&()).map(|o| vec![o]);
            }
            lbs.create(&PostParams::default(), &lb).await?;
            events::publish(
                &this.tenant,
                service.as_ref(),
                false,
                "EnsuringLoadBalancer",
                format!("creating load balancer {lb_name}"),
            )
            .await;
        }
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

async fn remove_finalizer(services: &Api<Service>, service: &Service) -> Result<(), PlatformError> {
    let finalizers: Vec<&String> = service
        .finalizers()
        .iter()
        .filter(|f| *f != SERVICE_FINALIZER)
        .collect();
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers}});
    crate::not_found_is_done(
        services
            .patch(
                &service.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await,
    )
}
