//! The failover keeper of a cluster's load-balancer instances (the health manager of a
//! cloud's load-balancer service): it probes both instances ten times a second and,
//! when the active one is dead or cut off (at once) or stops answering (two probes of
//! 200 ms in a row) while the standby answers, moves the addresses to the standby. The provider fences
//! the old holder before the new one takes them, so no two instances ever answer for an
//! address. A dead instance is started again, as the standby: a recovered instance
//! never takes the addresses back (no preemption, no second outage).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use korvet_api::{labels, LoadBalancer, LoadBalancerStatus};
use korvet_apimachinery::events::EventRecorder;
use korvet_cloud::{InstanceHealth, LoadBalancers};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;

use crate::layout::cluster_key;

const PROBE_EVERY: Duration = Duration::from_millis(100);
/// Probes without an answer (the process still there) before the standby takes over.
const UNRESPONSIVE_PROBES: u32 = 2;
/// How often a dead instance is started again at most.
const RESTART_EVERY: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(crate) struct Keepers {
    tasks: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

impl Keepers {
    /// Starts the keeper of a cluster's instances unless it runs.
    pub(super) fn ensure(
        &self,
        balancers: Arc<dyn LoadBalancers>,
        client: kube::Client,
        namespace: &str,
        cluster: &str,
    ) {
        let key = cluster_key(namespace, cluster);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if tasks.get(&key).is_some_and(|t| !t.is_finished()) {
            return;
        }
        let keeper = Keeper {
            balancers,
            client,
            namespace: namespace.to_string(),
            cluster: cluster.to_string(),
            key: key.clone(),
        };
        tasks.insert(key, tokio::spawn(keeper.run()));
    }

    pub(crate) fn stop(&self, key: &str) {
        if let Some(task) = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)
        {
            task.abort();
        }
    }
}

struct Keeper {
    balancers: Arc<dyn LoadBalancers>,
    client: kube::Client,
    namespace: String,
    cluster: String,
    key: String,
}

impl Keeper {
    async fn run(self) {
        let mut unanswered = 0u32;
        let mut last_restart: [Option<Instant>; 2] = [None, None];
        let mut seen: [Option<InstanceHealth>; 2] = [None, None];
        let mut ticker = tokio::time::interval(PROBE_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Ok(Some(info)) = self.balancers.get_balancer(&self.key).await else {
                continue;
            };
            let Some(active) = info.active else { continue };
            let standby = 1 - active.min(1);
            let (active_health, standby_health) = tokio::join!(
                self.balancers.probe_instance(&self.key, active),
                self.balancers.probe_instance(&self.key, standby)
            );
            unanswered = match active_health {
                InstanceHealth::Unresponsive => unanswered + 1,
                _ => 0,
            };
            for (index, health) in [(active, active_health), (standby, standby_health)] {
                if seen[index] != Some(health) {
                    tracing::info!(cluster = %self.key, instance = %info.instances[index].name, ?health, active = index == active, "load-balancer instance health");
                    seen[index] = Some(health);
                }
            }
            let failing = matches!(
                active_health,
                InstanceHealth::Dead | InstanceHealth::Unreachable
            ) || (active_health == InstanceHealth::Unresponsive
                && unanswered >= UNRESPONSIVE_PROBES);
            if failing && standby_health == InstanceHealth::Healthy {
                let started = Instant::now();
                match self.balancers.activate_instance(&self.key, standby).await {
                    Ok(()) => {
                        unanswered = 0;
                        let why = match active_health {
                            InstanceHealth::Dead => "its process is gone",
                            InstanceHealth::Unreachable => "its network link is down",
                            _ => "it stopped answering its health check",
                        };
                        let note = format!(
                            "instance {} took over from {} ({why}) in {} ms",
                            info.instances[standby].name,
                            info.instances[active].name,
                            started.elapsed().as_millis()
                        );
                        tracing::warn!(cluster = %self.key, "{note}");
                        self.after_failover(&note).await;
                    }
                    Err(e) => tracing::error!(cluster = %self.key, error = %e, "failover failed"),
                }
            }
            // Dead instances come back as standby.
            for (index, health) in [(active, active_health), (standby, standby_health)] {
                let due = last_restart[index].is_none_or(|t| t.elapsed() >= RESTART_EVERY);
                if health == InstanceHealth::Dead && due {
                    last_restart[index] = Some(Instant::now());
                    if let Err(e) = self.balancers.restart_instance(&self.key, index).await {
                        tracing::warn!(cluster = %self.key, index, error = %e, "restarting a load-balancer instance failed");
                    }
                }
            }
        }
    }

    /// Shows the new active instance in every LoadBalancer of the cluster, with an Event.
    async fn after_failover(&self, note: &str) {
        let api: Api<LoadBalancer> = Api::namespaced(self.client.clone(), &self.namespace);
        let Ok(list) = api
            .list(&ListParams::default().labels(&format!("{}={}", labels::CLUSTER, self.cluster)))
            .await
        else {
            return;
        };
        let Ok(Some(info)) = self.balancers.get_balancer(&self.key).await else {
            return;
        };
        let recorder = EventRecorder::new(self.client.clone(), "korvet-platform");
        for lb in list
            .items
            .iter()
            .filter(|lb| lb.spec.cluster == self.cluster)
        {
            let mut status: LoadBalancerStatus = lb.status.clone().unwrap_or_default();
            status.instances = super::controller::instance_statuses(&info);
            status.active_instance = info
                .active
                .and_then(|i| info.instances.get(i))
                .map(|i| i.name.clone());
            let patch = serde_json::json!({"status": status});
            if let Err(e) = api
                .patch_status(
                    &lb.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                tracing::warn!(error = %e, "updating a load balancer's status after failover");
            }
            recorder.warning(lb, "FailedOver", note.to_string()).await;
        }
    }
}
