//! One pod's worker: brings the runtime in line with the pod and reports its status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::Notify;

use super::env::{self as podenv, Sources};
use super::probe::{self, Prober};
use super::runtime::{self, POD_UID};
use super::status::{self, ContainerView, Seen};
use super::volumes;
use super::PodsConfig;
use crate::cri::{Cri, CriError};
use crate::events::{self, Recorder, NORMAL, WARNING};
use crate::images::BUILTIN_PREFIX;

pub(super) struct Shared {
    pub client: kube::Client,
    pub cri: Cri,
    pub config: PodsConfig,
    /// The agent's cgroup; pods' cgroups go below it, inside the machine's limits.
    pub cgroup_root: String,
    pub events: Recorder,
}

/// A failed pull, retried with doubling delays.
struct PullFailure {
    failures: u32,
    retry_at: Instant,
    /// The runtime's message, repeated in the back-off message as upstream does.
    message: String,
}

struct Worker {
    shared: Arc<Shared>,
    uid: String,
    pulls: HashMap<String, PullFailure>,
    /// The runtime's message when a container did not start, until it runs again.
    start_errors: HashMap<String, String>,
    /// The probes of each running container, by container name.
    probers: HashMap<String, Prober>,
    wake: Arc<Notify>,
    /// The pod being synced, for events (set at the start of each sync).
    pod: Option<Pod>,
}

fn now_seconds() -> Time {
    let now = Timestamp::now();
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

fn time_from_nanos(nanos: i64) -> Option<Time> {
    (nanos > 0)
        .then(|| Timestamp::from_second(nanos / 1_000_000_000).ok())
        .flatten()
        .map(Time)
}

/// Restart delay after run `attempt` (0-based) ended: base, 2·base, ... up to max.
pub(super) fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    base.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(max)
}

pub(super) async fn run(
    shared: Arc<Shared>,
    reader: Store<Pod>,
    key: ObjectRef<Pod>,
    uid: String,
    wake: Arc<Notify>,
) {
    let mut worker = Worker {
        shared,
        uid,
        pulls: HashMap::new(),
        start_errors: HashMap::new(),
        probers: HashMap::new(),
        wake: wake.clone(),
        pod: None,
    };
    loop {
        let pod = reader
            .get(&key)
            .filter(|p| p.metadata.uid.as_deref() == Some(worker.uid.as_str()));
        match pod {
            None => {
                // Gone from the API without us (force-deleted): stop it quickly.
                teardown(&worker.shared, &worker.uid, 2).await;
                return;
            }
            Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .or_else(|| pod.spec.as_ref()?.termination_grace_period_seconds)
                    .unwrap_or(30);
                let first = !worker.deletion_seen();
                worker.record_killing(&pod);
                let mut left = grace;
                if first {
                    // As upstream: what the hooks took comes off the grace period, and
                    // the containers still get at least 2 s after them.
                    let spent = worker.pre_stop(&pod, grace).await;
                    left = (grace - spent).max(2);
                }
                teardown(&worker.shared, &worker.uid, left).await;
                if worker.remove_from_api(&pod).await {
                    return;
                }
            }
            Some(pod) => {
                if let Err(e) = worker.sync(&pod).await {
                    tracing::warn!(pod = %key, error = %e, "syncing the pod");
                }
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(super::RESYNC) => {}
        }
    }
}

/// The pod UIDs of every sandbox the runtime has.
pub(super) async fn sandbox_uids(cri: &Cri) -> Result<Vec<String>, CriError> {
    let reply = cri
        .runtime
        .clone()
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .map_err(CriError::call("ListPodSandbox"))?
        .into_inner();
    Ok(reply
        .items
        .into_iter()
        .filter_map(|s| s.labels.get(POD_UID).cloned())
        .collect())
}

async fn sandboxes_of(cri: &Cri, uid: &str) -> Result<Vec<cri::PodSandbox>, CriError> {
    let reply = cri
        .runtime
        .clone()
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: HashMap::from([(POD_UID.to_string(), uid.to_string())]),
                ..Default::default()
            }),
        })
        .await
        .map_err(CriError::call("ListPodSandbox"))?
        .into_inner();
    Ok(reply.items)
}

async fn containers_where(
    cri: &Cri,
    filter: cri::ContainerFilter,
) -> Result<Vec<cri::Container>, CriError> {
    let reply = cri
        .runtime
        .clone()
        .list_containers(cri::ListContainersRequest {
            filter: Some(filter),
        })
        .await
        .map_err(CriError::call("ListContainers"))?
        .into_inner();
    Ok(reply.containers)
}

/// Stops every container of pod `uid` (SIGTERM, SIGKILL after `grace` seconds), then
/// stops and removes its sandboxes with them.
pub(super) async fn teardown(shared: &Shared, uid: &str, grace: i64) {
    let cri = &shared.cri;
    let filter = cri::ContainerFilter {
        label_selector: HashMap::from([(POD_UID.to_string(), uid.to_string())]),
        ..Default::default()
    };
    let containers = containers_where(cri, filter).await.unwrap_or_default();
    let stops = containers
        .iter()
        .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
        .map(|c| {
            let mut rt = cri.runtime.clone();
            let id = c.id.clone();
            async move {
                if let Err(e) = rt
                    .stop_container(cri::StopContainerRequest {
                        container_id: id.clone(),
                        timeout: grace.max(0),
                    })
                    .await
                {
                    tracing::warn!(container = %id, error = %e.message(), "stopping a container");
                }
            }
        });
    futures::future::join_all(stops).await;
    let sandboxes = match sandboxes_of(cri, uid).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "listing the pod's sandboxes");
            volumes::remove(&shared.config.volume_root(), uid);
            return;
        }
    };
    for sandbox in sandboxes {
        let mut rt = cri.runtime.clone();
        let id = sandbox.id;
        if let Err(e) = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
        {
            tracing::warn!(sandbox = %id, error = %e.message(), "stopping a pod sandbox");
            continue;
        }
        if let Err(e) = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
        {
            tracing::warn!(sandbox = %id, error = %e.message(), "removing a pod sandbox");
        }
    }
    volumes::remove(&shared.config.volume_root(), uid);
}

impl Worker {
    fn cri(&self) -> &Cri {
        &self.shared.cri
    }

    fn config(&self) -> &PodsConfig {
        &self.shared.config
    }

    /// Records an event about container `c` of the pod being synced.
    fn event(&self, c: &Container, type_: &'static str, reason: &str, message: String) {
        if let Some(pod) = &self.pod {
            self.shared
                .events
                .container(pod, &c.name, type_, reason, message);
        }
    }

    /// `Killing` for each container still running when the pod is deleted.
    /// Whether this worker already saw the pod being deleted.
    fn deletion_seen(&self) -> bool {
        self.pod
            .as_ref()
            .and_then(|p| p.metadata.deletion_timestamp.as_ref())
            .is_some()
    }

    /// Runs the running containers' preStop hooks (exec, httpGet, tcpSocket, sleep) at
    /// once, for at most `grace` seconds; returns the whole seconds they took.
    async fn pre_stop(&self, pod: &Pod, grace: i64) -> i64 {
        let started = Instant::now();
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let hooked: Vec<(Container, k8s_openapi::api::core::v1::LifecycleHandler)> = containers
            .into_iter()
            .filter_map(|c| {
                let hook = c.lifecycle.as_ref()?.pre_stop.clone()?;
                Some((c, hook))
            })
            .collect();
        if hooked.is_empty() {
            return 0;
        }
        let filter = cri::ContainerFilter {
            label_selector: HashMap::from([(POD_UID.to_string(), self.uid.clone())]),
            state: Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        };
        let running = containers_where(self.cri(), filter)
            .await
            .unwrap_or_default();
        let pod_ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let budget = Duration::from_secs(u64::try_from(grace.max(1)).unwrap_or(1));
        let hooks = hooked.into_iter().filter_map(|(c, hook)| {
            let id = running
                .iter()
                .find(|r| r.metadata.as_ref().is_some_and(|m| m.name == c.name))?
                .id
                .clone();
            let target = probe::Target {
                cri: self.cri().clone(),
                container_id: id,
                pod_ip: pod_ip.clone(),
                container: c.clone(),
                grace,
                wake: self.wake.clone(),
                events: None,
            };
            Some(async move {
                let outcome = match &hook.sleep {
                    Some(sleep) => {
                        let secs = u64::try_from(sleep.seconds.max(0)).unwrap_or(0);
                        tokio::time::sleep(Duration::from_secs(secs).min(budget)).await;
                        Ok(())
                    }
                    None => {
                        let as_probe = k8s_openapi::api::core::v1::Probe {
                            exec: hook.exec.clone(),
                            http_get: hook.http_get.clone(),
                            tcp_socket: hook.tcp_socket.clone(),
                            timeout_seconds: i32::try_from(grace.max(1)).ok(),
                            ..Default::default()
                        };
                        probe::check(&as_probe, &target).await
                    }
                };
                (c.name, outcome)
            })
        });
        let all = futures::future::join_all(hooks);
        match tokio::time::timeout(budget, all).await {
            Ok(outcomes) => {
                for (name, outcome) in outcomes {
                    if let Err(e) = outcome {
                        let message = format!("PreStopHook failed: {e}");
                        self.shared.events.container(
                            pod,
                            &name,
                            WARNING,
                            "FailedPreStopHook",
                            message,
                        );
                    }
                }
            }
            Err(_) => tracing::info!(pod = %self.uid, "preStop hooks ran out of the grace period"),
        }
        i64::try_from(started.elapsed().as_secs()).unwrap_or(grace)
    }

    fn record_killing(&mut self, pod: &Pod) {
        if self
            .pod
            .as_ref()
            .and_then(|p| p.metadata.deletion_timestamp.as_ref())
            .is_some()
        {
            return;
        }
        self.pod = Some(pod.clone());
        let statuses = pod.status.as_ref().map(|s| {
            let init = s.init_container_statuses.iter().flatten();
            init.chain(s.container_statuses.iter().flatten())
                .filter(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
        });
        for name in statuses.into_iter().flatten() {
            let message = format!("Stopping container {name}");
            self.shared
                .events
                .container(pod, &name, NORMAL, "Killing", message);
        }
    }

    /// The CRI runtime handler of the pod's RuntimeClass (`""`, the default, without
    /// one); `Err` is upstream's error for a RuntimeClass that is not there.
    async fn runtime_handler(&self, pod: &Pod) -> Result<String, String> {
        let Some(name) = pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.as_deref())
            .filter(|n| !n.is_empty())
        else {
            return Ok(String::new());
        };
        let api: Api<RuntimeClass> = Api::all(self.shared.client.clone());
        match api.get_opt(name).await {
            Ok(Some(rc)) => Ok(rc.handler),
            Ok(None) => Err(format!("runtimeclass.node.k8s.io \"{name}\" not found")),
            Err(e) => Err(format!("failed to lookup RuntimeClass {name}: {e}")),
        }
    }

    /// As upstream: the pod stays ContainerCreating, with a `FailedCreatePodSandBox` event.
    async fn sandbox_failed(&self, pod: &Pod, error: &str) {
        self.shared.events.pod(
            pod,
            WARNING,
            "FailedCreatePodSandBox",
            format!("Failed to create pod sandbox: {error}"),
        );
        if let Err(e) = self.post_waiting(pod, "ContainerCreating", None).await {
            tracing::debug!(error = %e, "posting ContainerCreating");
        }
    }

    /// Deletes the stopped pod for good (grace 0, this UID only). True when it is gone.
    async fn remove_from_api(&self, pod: &Pod) -> bool {
        let (Some(name), Some(namespace)) = (&pod.metadata.name, &pod.metadata.namespace) else {
            return true;
        };
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => true,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => true,
            Err(e) => {
                tracing::warn!(pod = %name, error = %e, "removing a stopped pod from the API");
                false
            }
        }
    }

    async fn sync(&mut self, pod: &Pod) -> Result<(), CriError> {
        self.pod = Some(pod.clone());
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let sandboxes = sandboxes_of(self.cri(), &self.uid).await?;
        let ready = sandboxes
            .iter()
            .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
            .max_by_key(|s| s.created_at);
        if matches!(phase, Some("Succeeded" | "Failed")) {
            // A finished pod keeps nothing running (its status stays as reported).
            if let Some(s) = ready {
                self.cri()
                    .runtime
                    .clone()
                    .stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: s.id.clone(),
                    })
                    .await
                    .map_err(CriError::call("StopPodSandbox"))?;
            }
            return Ok(());
        }
        let attempt = sandboxes
            .iter()
            .filter_map(|s| s.metadata.as_ref().map(|m| m.attempt + 1))
            .max()
            .unwrap_or(0);
        let cgroup_parent = format!(
            "{}/kubepods/pod{}",
            self.shared.cgroup_root.trim_end_matches('/'),
            self.uid
        );
        let (sandbox_id, sandbox_config) = match ready {
            Some(s) => {
                let a = s.metadata.as_ref().map_or(0, |m| m.attempt);
                let mut config =
                    runtime::sandbox_config(pod, a, &self.config().log_root(), &cgroup_parent);
                config.dns_config = crate::dns::sandbox_dns_config(pod, &self.config().cluster_dns);
                (s.id.clone(), config)
            }
            None => {
                // No live sandbox: a new one (a dead one takes its containers with it).
                teardown(&self.shared, &self.uid, 0).await;
                let runtime_handler = match self.runtime_handler(pod).await {
                    Ok(handler) => handler,
                    Err(message) => {
                        self.sandbox_failed(pod, &message).await;
                        return Ok(());
                    }
                };
                let mut config = runtime::sandbox_config(
                    pod,
                    attempt,
                    &self.config().log_root(),
                    &cgroup_parent,
                );
                config.dns_config = crate::dns::sandbox_dns_config(pod, &self.config().cluster_dns);
                let _ = std::fs::create_dir_all(&config.log_directory);
                let creating = self.post_waiting(pod, "ContainerCreating", None).await;
                if let Err(e) = creating {
                    tracing::debug!(error = %e, "posting ContainerCreating");
                }
                let run = self
                    .cri()
                    .runtime
                    .clone()
                    .run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(config.clone()),
                        runtime_handler,
                    })
                    .await;
                let id = match run {
                    Ok(reply) => reply.into_inner().pod_sandbox_id,
                    Err(status) => {
                        let message = format!(
                            "rpc error: code = {:?} desc = {}",
                            status.code(),
                            status.message()
                        );
                        self.sandbox_failed(pod, &message).await;
                        return Err(CriError::call("RunPodSandbox")(status));
                    }
                };
                (id, config)
            }
        };
        let pod_ip = self
            .cri()
            .runtime
            .clone()
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox_id.clone(),
                verbose: false,
            })
            .await
            .map_err(CriError::call("PodSandboxStatus"))?
            .into_inner()
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty());

        let mut runs: HashMap<String, Vec<cri::Container>> = HashMap::new();
        let filter = cri::ContainerFilter {
            pod_sandbox_id: sandbox_id.clone(),
            ..Default::default()
        };
        for c in containers_where(self.cri(), filter).await? {
            let name = c
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default();
            runs.entry(name).or_default().push(c);
        }
        for list in runs.values_mut() {
            list.sort_by_key(|c| std::cmp::Reverse(c.metadata.as_ref().map_or(0, |m| m.attempt)));
        }
        self.collect_garbage(&runs).await;

        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let ctx = Ctx {
            pod,
            sandbox_id: &sandbox_id,
            sandbox_config: &sandbox_config,
            pod_ip: pod_ip.clone().unwrap_or_default(),
            runs: &runs,
        };
        let mut init = Vec::new();
        let mut initialized = true;
        for c in spec.init_containers.iter().flatten() {
            if !initialized {
                init.push(self.waiting_view(c, "PodInitializing"));
                continue;
            }
            // An init container is rerun until it succeeds unless the policy is Never.
            let init_policy = if policy == "Never" {
                "Never"
            } else {
                "OnFailure"
            };
            let view = self.drive(&ctx, c, init_policy).await;
            initialized = matches!(view.current, Seen::Terminated { exit_code: 0, .. });
            init.push(view);
        }
        let mut containers = Vec::new();
        for c in &spec.containers {
            let view = if initialized {
                self.drive(&ctx, c, &policy).await
            } else {
                self.waiting_view(c, "PodInitializing")
            };
            containers.push(view);
        }
        self.post_views(pod, &init, &containers, pod_ip).await;
        Ok(())
    }

    fn waiting_view(&self, c: &Container, reason: &str) -> ContainerView {
        ContainerView {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: String::new(),
            container_id: None,
            restart_count: 0,
            ready: false,
            started: false,
            current: Seen::waiting(reason, None),
            last: None,
        }
    }

    /// Computes the pod's status from its containers' views and writes it.
    async fn post_views(
        &self,
        pod: &Pod,
        init: &[ContainerView],
        containers: &[ContainerView],
        pod_ip: Option<String>,
    ) {
        let status = status::pod_status(
            pod,
            init,
            containers,
            pod_ip,
            &self.config().host_ip,
            now_seconds(),
        );
        self.post(pod, status).await;
    }

    async fn post_waiting(
        &self,
        pod: &Pod,
        reason: &str,
        message: Option<String>,
    ) -> Result<(), kube::Error> {
        let spec = pod.spec.clone().unwrap_or_default();
        let views: Vec<_> = spec
            .containers
            .iter()
            .map(|c| ContainerView {
                current: Seen::waiting(reason, message.clone()),
                ..self.waiting_view(c, reason)
            })
            .collect();
        let init: Vec<_> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| self.waiting_view(c, reason))
            .collect();
        self.post_views(pod, &init, &views, None).await;
        Ok(())
    }

    /// Writes `status` when it differs from what the API has.
    async fn post(&self, pod: &Pod, status: k8s_openapi::api::core::v1::PodStatus) {
        let old = serde_json::to_value(&pod.status).unwrap_or_default();
        let new = serde_json::to_value(&status).unwrap_or_default();
        if old == new {
            return;
        }
        let (Some(name), Some(namespace)) = (&pod.metadata.name, &pod.metadata.namespace) else {
            return;
        };
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), namespace);
        let patch = serde_json::json!({ "status": new });
        if let Err(e) = api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(pod = %name, error = %e, "posting the pod status");
        }
    }

    /// Older exited runs beyond the last two of each container are removed.
    async fn collect_garbage(&self, runs: &HashMap<String, Vec<cri::Container>>) {
        for list in runs.values() {
            for old in list.iter().skip(2) {
                if old.state == cri::ContainerState::ContainerExited as i32 {
                    let _ = self
                        .cri()
                        .runtime
                        .clone()
                        .remove_container(cri::RemoveContainerRequest {
                            container_id: old.id.clone(),
                        })
                        .await;
                }
            }
        }
    }

    async fn container_status(&self, id: &str) -> Option<cri::ContainerStatus> {
        self.cri()
            .runtime
            .clone()
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .ok()?
            .into_inner()
            .status
    }

    fn terminated(&self, name: &str, s: &cri::ContainerStatus) -> Seen {
        let never_started = s.state == cri::ContainerState::ContainerCreated as i32;
        let exit_code = if never_started && s.exit_code == 0 {
            128
        } else {
            s.exit_code
        };
        let reason = if never_started && s.reason.is_empty() {
            "StartError".to_string()
        } else {
            status::terminated_reason(exit_code, &s.reason)
        };
        let message = Some(s.message.clone())
            .filter(|m| !m.is_empty())
            .or_else(|| self.start_errors.get(name).cloned());
        Seen::Terminated {
            exit_code,
            reason,
            message,
            started_at: time_from_nanos(s.started_at),
            finished_at: time_from_nanos(s.finished_at).or_else(|| time_from_nanos(s.created_at)),
        }
    }

    /// Brings container `c` to what `policy` wants and says how it is.
    async fn drive(&mut self, ctx: &Ctx<'_>, c: &Container, policy: &str) -> ContainerView {
        let runs = ctx.runs.get(&c.name).map(Vec::as_slice).unwrap_or_default();
        let latest = match runs.first() {
            Some(run) => self.container_status(&run.id).await,
            None => None,
        };
        let previous = match runs.get(1) {
            Some(run) => self.container_status(&run.id).await,
            None => None,
        };
        let last = previous.as_ref().map(|s| self.terminated(&c.name, s));
        let mut view = ContainerView {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: String::new(),
            container_id: None,
            restart_count: 0,
            ready: false,
            started: false,
            current: Seen::waiting("ContainerCreating", None),
            last,
        };
        let Some(latest) = latest else {
            let mut created = None;
            view.current = self.start(ctx, c, 0, &mut created).await;
            view.container_id = created;
            return view;
        };
        let attempt = latest.metadata.as_ref().map_or(0, |m| m.attempt);
        view.restart_count = attempt as i32;
        view.image_id = latest.image_ref.clone();
        view.container_id = Some(format!("containerd://{}", latest.id));
        if latest.state == cri::ContainerState::ContainerRunning as i32 {
            self.start_errors.remove(&c.name);
            view.current = Seen::Running {
                started_at: time_from_nanos(latest.started_at),
            };
            let prober = self.prober(ctx, c, &latest.id);
            view.started = prober.started();
            view.ready = prober.ready();
            return view;
        }
        self.probers.remove(&c.name);
        let ended = self.terminated(&c.name, &latest);
        let Seen::Terminated { exit_code, .. } = &ended else {
            return view;
        };
        let restart = match policy {
            "Always" => true,
            "OnFailure" => *exit_code != 0,
            _ => false,
        };
        if !restart {
            view.current = ended;
            return view;
        }
        let delay = backoff(
            attempt,
            self.config().backoff_base,
            self.config().backoff_max,
        );
        let ended_at = latest.finished_at.max(latest.created_at);
        let since_end = (Timestamp::now().as_nanosecond() - i128::from(ended_at)).max(0);
        if since_end < delay.as_nanos() as i128 {
            let id = runtime::identity(ctx.pod);
            self.event(
                c,
                WARNING,
                "BackOff",
                format!(
                    "Back-off restarting failed container {} in pod {}_{}({})",
                    c.name, id.name, id.namespace, id.uid
                ),
            );
            view.current = Seen::waiting(
                "CrashLoopBackOff",
                Some(format!(
                    "back-off {}s restarting failed container={} pod={}_{}({})",
                    delay.as_secs(),
                    c.name,
                    id.name,
                    id.namespace,
                    id.uid
                )),
            );
            view.last = Some(ended);
            return view;
        }
        let mut created = None;
        let started = self.start(ctx, c, attempt + 1, &mut created).await;
        if created.is_some() {
            view.container_id = created;
        }
        view.last = Some(ended);
        if !matches!(started, Seen::Waiting { ref reason, .. } if reason == "ErrImagePull" || reason == "ImagePullBackOff" || reason == "ErrImageNeverPull" || reason == "CreateContainerConfigError")
        {
            view.restart_count = attempt as i32 + 1;
        }
        view.current = started;
        view
    }

    /// Pulls as the pull policy says, creates and starts run `attempt` of `c`.
    /// `created` gets the new run's container ID once it exists, so that the status
    /// names the container it reports as running.
    async fn start(
        &mut self,
        ctx: &Ctx<'_>,
        c: &Container,
        attempt: u32,
        created: &mut Option<String>,
    ) -> Seen {
        let mounts = match self.volumes(ctx, c).await {
            Ok(mounts) => mounts,
            Err(message) => {
                // As upstream: the pod stays ContainerCreating until its volumes mount.
                tracing::debug!(container = %c.name, error = %message, "volumes not ready");
                if let Some(pod) = &self.pod {
                    self.shared.events.pod(pod, WARNING, "FailedMount", message);
                }
                return Seen::waiting("ContainerCreating", None);
            }
        };
        if let Err(waiting) = self.ensure_image(ctx.pod, c, ctx.sandbox_config).await {
            return waiting;
        }
        let env = match self.environment(ctx, c).await {
            Ok(env) => env,
            Err(message) => {
                self.event(c, WARNING, "Failed", format!("Error: {message}"));
                return Seen::waiting("CreateContainerConfigError", Some(message));
            }
        };
        let config = runtime::container_config(ctx.pod, c, attempt, env, mounts);
        let made = self
            .cri()
            .runtime
            .clone()
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: ctx.sandbox_id.into(),
                config: Some(config),
                sandbox_config: Some(ctx.sandbox_config.clone()),
            })
            .await;
        let id = match made {
            Ok(reply) => reply.into_inner().container_id,
            Err(status) => {
                let message = status.message().to_string();
                self.event(c, WARNING, "Failed", format!("Error: {message}"));
                return Seen::waiting("CreateContainerError", Some(message));
            }
        };
        *created = Some(format!("containerd://{id}"));
        self.event(
            c,
            NORMAL,
            "Created",
            format!("Created container: {}", c.name),
        );
        match self
            .cri()
            .runtime
            .clone()
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
        {
            Ok(_) => {
                self.start_errors.remove(&c.name);
                tracing::info!(container = %c.name, attempt, "container started");
                self.event(
                    c,
                    NORMAL,
                    "Started",
                    format!("Started container {}", c.name),
                );
                Seen::Running {
                    started_at: Some(now_seconds()),
                }
            }
            Err(status) => {
                let message = status.message().to_string();
                self.start_errors.insert(c.name.clone(), message.clone());
                self.event(c, WARNING, "Failed", format!("Error: {message}"));
                Seen::waiting("RunContainerError", Some(message))
            }
        }
    }

    /// The probes of run `id` of `c`, started when that run is new.
    fn prober(&mut self, ctx: &Ctx<'_>, c: &Container, id: &str) -> &Prober {
        let current = self
            .probers
            .get(&c.name)
            .is_some_and(|p| p.container_id == id);
        if !current {
            let grace = ctx
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30);
            let target = probe::Target {
                cri: self.cri().clone(),
                container_id: id.to_string(),
                pod_ip: ctx.pod_ip.clone(),
                container: c.clone(),
                grace,
                wake: self.wake.clone(),
                events: Some((
                    self.shared.events.clone(),
                    events::reference(ctx.pod, Some(&c.name)),
                )),
            };
            self.probers.insert(c.name.clone(), Prober::start(target));
        }
        &self.probers[&c.name]
    }

    /// The named objects of the pod's namespace (`None` for a missing one), for env and
    /// volumes; `Err` is the API's error.
    async fn fetch<K, C>(
        &self,
        namespace: &str,
        names: impl IntoIterator<Item = String>,
    ) -> Result<C, String>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        C: FromIterator<(String, Option<K>)>,
    {
        let api: Api<K> = Api::namespaced(self.shared.client.clone(), namespace);
        let mut found = Vec::new();
        for name in names {
            let object = api.get_opt(&name).await.map_err(|e| e.to_string())?;
            found.push((name, object));
        }
        Ok(found.into_iter().collect())
    }

    /// A token of the pod's service account bound to the pod (TokenRequest), for a
    /// projected volume; `Err` is the API's message.
    async fn service_account_token(
        &self,
        pod: &Pod,
        need: &volumes::TokenNeed,
    ) -> Result<String, String> {
        let id = runtime::identity(pod);
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let request = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": need.audience.iter().collect::<Vec<_>>(),
                "expirationSeconds": need.expiration_seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": id.name, "uid": id.uid},
            },
        });
        let url = format!(
            "/api/v1/namespaces/{}/serviceaccounts/{account}/token",
            id.namespace
        );
        let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        let http = http::Request::post(url)
            .header("content-type", "application/json")
            .body(body)
            .map_err(|e| e.to_string())?;
        let reply: serde_json::Value = self
            .shared
            .client
            .request(http)
            .await
            .map_err(|e| format!("requesting a token for service account {account}: {e}"))?;
        reply["status"]["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("the TokenRequest for service account {account} gave no token"))
    }

    /// The environment of `c`, reading the ConfigMaps and Secrets it names; `Err` is
    /// the message of `CreateContainerConfigError`.
    async fn environment(
        &self,
        ctx: &Ctx<'_>,
        c: &Container,
    ) -> Result<Vec<(String, String)>, String> {
        let namespace = runtime::identity(ctx.pod).namespace.to_string();
        let (maps, secrets) = podenv::referenced(c);
        let mut sources = Sources {
            pod_ip: ctx.pod_ip.clone(),
            host_ip: self.config().host_ip.clone(),
            node_cpu_millis: node_cpu_millis(),
            node_memory_bytes: node_memory_bytes(),
            ..Default::default()
        };
        sources.config_maps = self.fetch(&namespace, maps).await?;
        sources.secrets = self.fetch(&namespace, secrets).await?;
        podenv::resolve(ctx.pod, c, &sources).map_err(|e| e.to_string())
    }

    /// Writes the volumes `c` mounts; `Err` says why they cannot be made yet.
    async fn volumes(&self, ctx: &Ctx<'_>, c: &Container) -> Result<Vec<cri::Mount>, String> {
        let namespace = runtime::identity(ctx.pod).namespace.to_string();
        let (maps, secrets) = volumes::referenced(ctx.pod, c);
        let mut objects = volumes::Objects {
            config_maps: self.fetch(&namespace, maps).await?,
            secrets: self.fetch(&namespace, secrets).await?,
            tokens: Default::default(),
            fields: Sources {
                pod_ip: ctx.pod_ip.clone(),
                host_ip: self.config().host_ip.clone(),
                node_cpu_millis: node_cpu_millis(),
                node_memory_bytes: node_memory_bytes(),
                ..Default::default()
            },
        };
        for need in volumes::tokens_needed(ctx.pod, c) {
            let token = self.service_account_token(ctx.pod, &need).await?;
            objects.tokens.insert(need.key, token);
        }
        let root = self.config().volume_root();
        let host_root = self.config().host_path_root();
        let pod = ctx.pod.clone();
        let c = c.clone();
        tokio::task::spawn_blocking(move || volumes::prepare(&root, &host_root, &pod, &c, &objects))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Credentials for `image` from the pod's `imagePullSecrets`; a secret that cannot
    /// be read is skipped, as upstream does.
    async fn pull_credentials(&self, pod: &Pod, image: &str) -> Vec<cri::AuthConfig> {
        let names: Vec<String> = pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.as_ref())
            .into_iter()
            .flatten()
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return Vec::new();
        }
        let namespace = runtime::identity(pod).namespace.to_string();
        let found: Vec<(String, Option<Secret>)> = match self.fetch(&namespace, names).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the pod's image pull secrets");
                return Vec::new();
            }
        };
        for (name, secret) in &found {
            if secret.is_none() {
                tracing::warn!(secret = %name, "image pull secret not found; pulling without it");
            }
        }
        let secrets: Vec<Secret> = found.into_iter().filter_map(|(_, s)| s).collect();
        super::pull_secrets::credentials_for(image, &secrets)
    }

    /// `Err` is the waiting state to report while the image is not there.
    async fn ensure_image(
        &mut self,
        pod: &Pod,
        c: &Container,
        sandbox: &cri::PodSandboxConfig,
    ) -> Result<(), Seen> {
        let image = c.image.clone().unwrap_or_default();
        let policy = c.image_pull_policy.clone().unwrap_or_else(|| {
            let tag = image.rsplit('/').next().unwrap_or_default();
            if !tag.contains(':') || tag.ends_with(":latest") {
                "Always".into()
            } else {
                "IfNotPresent".into()
            }
        });
        let present = crate::images::present(self.cri(), &image)
            .await
            .unwrap_or(false);
        let already = format!("Container image \"{image}\" already present on machine");
        match policy.as_str() {
            "Never" if present => {
                self.event(c, NORMAL, "Pulled", already);
                return Ok(());
            }
            "Never" => {
                let message =
                    format!("Container image \"{image}\" is not present with pull policy of Never");
                self.event(c, WARNING, "ErrImageNeverPull", message.clone());
                return Err(Seen::waiting("ErrImageNeverPull", Some(message)));
            }
            "IfNotPresent" if present => {
                self.event(c, NORMAL, "Pulled", already);
                return Ok(());
            }
            // Built-in images have no registry to pull from yet.
            _ if present && image.starts_with(BUILTIN_PREFIX) => return Ok(()),
            _ => {}
        }
        if let Some(f) = self.pulls.get(&image) {
            if Instant::now() < f.retry_at {
                self.event(
                    c,
                    NORMAL,
                    "BackOff",
                    format!("Back-off pulling image \"{image}\""),
                );
                self.event(c, WARNING, "Failed", "Error: ImagePullBackOff".into());
                return Err(Seen::waiting(
                    "ImagePullBackOff",
                    Some(format!(
                        "Back-off pulling image \"{image}\": ErrImagePull: {}",
                        f.message
                    )),
                ));
            }
        }
        self.event(c, NORMAL, "Pulling", format!("Pulling image \"{image}\""));
        let pull_started = Instant::now();
        let auths = self.pull_credentials(pod, &image).await;
        // Without matching credentials one anonymous pull; else each in turn, as upstream.
        let attempts: Vec<Option<cri::AuthConfig>> = if auths.is_empty() {
            vec![None]
        } else {
            auths.into_iter().map(Some).collect()
        };
        let mut outcome = Err("no pull attempted".to_string());
        for auth in attempts {
            let mut images = self.cri().images.clone();
            let pull = images.pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                auth,
                sandbox_config: Some(sandbox.clone()),
            });
            outcome = match tokio::time::timeout(Duration::from_secs(300), pull).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(status)) => Err(status.message().to_string()),
                Err(_) => Err("pulling took more than 5 minutes".to_string()),
            };
            if outcome.is_ok() {
                break;
            }
        }
        match outcome {
            Ok(()) => {
                self.pulls.remove(&image);
                let took = pull_started.elapsed().as_secs_f64();
                self.event(
                    c,
                    NORMAL,
                    "Pulled",
                    format!("Successfully pulled image \"{image}\" in {took:.3}s ({took:.3}s including waiting)"),
                );
                Ok(())
            }
            Err(message) => {
                let failures = self.pulls.get(&image).map_or(0, |f| f.failures) + 1;
                let delay = backoff(
                    failures - 1,
                    self.config().backoff_base,
                    self.config().backoff_max,
                );
                self.pulls.insert(
                    image.clone(),
                    PullFailure {
                        failures,
                        retry_at: Instant::now() + delay,
                        message: message.clone(),
                    },
                );
                tracing::info!(image = %image, error = %message, "pulling an image failed");
                self.event(
                    c,
                    WARNING,
                    "Failed",
                    format!("Failed to pull image \"{image}\": {message}"),
                );
                self.event(c, WARNING, "Failed", "Error: ErrImagePull".into());
                Err(Seen::waiting("ErrImagePull", Some(message)))
            }
        }
    }
}

/// The machine's CPUs, what `limits.cpu` means for a container without a limit.
fn node_cpu_millis() -> i64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as i64) * 1000
}

/// The machine's memory (MemTotal), what `limits.memory` means without a limit.
fn node_memory_bytes() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

struct Ctx<'a> {
    pod: &'a Pod,
    sandbox_id: &'a str,
    sandbox_config: &'a cri::PodSandboxConfig,
    pod_ip: String,
    runs: &'a HashMap<String, Vec<cri::Container>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let (b, m) = (Duration::from_secs(10), Duration::from_secs(300));
        let seen: Vec<_> = (0..7).map(|a| backoff(a, b, m).as_secs()).collect();
        assert_eq!(seen, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(1000, b, m), m);
    }
}
