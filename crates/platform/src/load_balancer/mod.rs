//! Load balancers for `type: LoadBalancer` Services: per hosted cluster a service
//! controller that keeps a LoadBalancer object per such Service ([`services`]), the
//! LoadBalancer controller that gives each an address and configures the cluster's
//! load-balancer instances ([`controller`]), and the keeper that fails them over
//! ([`keeper`]).

mod controller;
pub(crate) mod edge_config;
mod events;
pub(crate) mod from_ingress;
pub(crate) mod from_service;
mod ingresses;
mod keeper;
mod services;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub(crate) use controller::reconcile;
pub(crate) use keeper::Keepers;

use crate::layout::cluster_key;
use crate::Context;

/// The running service controllers, one per hosted cluster whose API answers.
#[derive(Default)]
pub(crate) struct ServiceControllers {
    tasks: Mutex<HashMap<String, (String, tokio::task::JoinHandle<()>)>>,
}

impl ServiceControllers {
    /// Starts the cluster's service controller unless it runs against `endpoint`; a
    /// (re)start also brings the cluster's load balancers back (after a stop).
    pub(crate) fn ensure(
        &self,
        ctx: &Arc<Context>,
        namespace: &str,
        cluster: &str,
        tenant: &crate::tenant::Tenant,
    ) {
        if ctx.load_balancers.is_none() {
            return;
        }
        let key = cluster_key(namespace, cluster);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((endpoint, task)) = tasks.get(&key) {
            if *endpoint == tenant.endpoint && !task.is_finished() {
                return;
            }
            task.abort();
        }
        let this = Arc::new(services::ClusterServices {
            ctx: Arc::clone(ctx),
            tenant: tenant.clone(),
            namespace: namespace.to_string(),
            cluster: cluster.to_string(),
        });
        tracing::info!(cluster = %key, "service controller started");
        let task = tokio::spawn(async move {
            let (ctx, namespace, cluster) = (
                this.ctx.clone(),
                this.namespace.clone(),
                this.cluster.clone(),
            );
            if let Err(e) = controller::sync_cluster(&ctx, &namespace, &cluster, None).await {
                tracing::warn!(%cluster, error = %e, "bringing the load balancers back failed; the LoadBalancer controller retries");
            }
            tokio::join!(services::run(this.clone()), ingresses::run(this));
        });
        tasks.insert(key, (tenant.endpoint.clone(), task));
    }

    /// Stops the cluster's service controller, its keeper and its instances (the cluster
    /// stops; addresses and configuration are kept).
    pub(crate) async fn stop_cluster(&self, ctx: &Context, key: &str) {
        self.stop(key);
        ctx.keepers.stop(key);
        if let Some(balancers) = &ctx.load_balancers {
            if let Err(e) = balancers.stop_balancer(key).await {
                tracing::warn!(cluster = %key, error = %e, "stopping the load-balancer instances failed");
            }
        }
    }

    pub(crate) fn stop(&self, key: &str) {
        if let Some((_, task)) = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)
        {
            task.abort();
        }
    }
}
