//! A pod's status as upstream's kubelet computes it, from what the runtime shows of
//! each container. Pure functions, so every rule here has a unit test.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// One container's state as the runtime (and the agent's own bookkeeping) shows it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Seen {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Option<Time>,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: Option<String>,
        started_at: Option<Time>,
        finished_at: Option<Time>,
    },
}

impl Seen {
    pub(crate) fn waiting(reason: &str, message: Option<String>) -> Seen {
        Seen::Waiting {
            reason: reason.into(),
            message,
        }
    }

    fn to_state(&self) -> ContainerState {
        match self {
            Seen::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            Seen::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: started_at.clone(),
                }),
                ..Default::default()
            },
            Seen::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
            } => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    reason: Some(reason.clone()),
                    message: message.clone(),
                    started_at: started_at.clone(),
                    finished_at: finished_at.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }
}

/// The reason upstream reports for a container that ended.
pub(crate) fn terminated_reason(exit_code: i32, runtime_reason: &str) -> String {
    match (exit_code, runtime_reason) {
        (_, "OOMKilled") => "OOMKilled".into(),
        (0, _) => "Completed".into(),
        (_, "") | (_, "Completed") => "Error".into(),
        (_, other) => other.into(),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ContainerView {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: Option<String>,
    pub restart_count: i32,
    /// Running and passing its readiness probe (or having none).
    pub ready: bool,
    /// Running and past its startup probe (or having none).
    pub started: bool,
    pub current: Seen,
    /// The previous run's termination, once the container has restarted.
    pub last: Option<Seen>,
}

impl ContainerView {
    pub(crate) fn status(&self) -> ContainerStatus {
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            container_id: self.container_id.clone(),
            restart_count: self.restart_count,
            ready: self.ready && matches!(self.current, Seen::Running { .. }),
            started: Some(self.started && matches!(self.current, Seen::Running { .. })),
            state: Some(self.current.to_state()),
            last_state: Some(self.last.as_ref().map(Seen::to_state).unwrap_or_default()),
            ..Default::default()
        }
    }

    fn succeeded(&self) -> bool {
        matches!(self.current, Seen::Terminated { exit_code: 0, .. })
    }
}

/// The pod phase by upstream's rules (`getPhase`), restart policy included.
pub(crate) fn phase(
    restart_policy: &str,
    init: &[ContainerView],
    containers: &[ContainerView],
) -> &'static str {
    for c in init {
        match &c.current {
            Seen::Terminated { exit_code: 0, .. } => {}
            Seen::Terminated { .. } if restart_policy == "Never" => return "Failed",
            _ => return "Pending",
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in containers {
        match &c.current {
            Seen::Running { .. } => running += 1,
            Seen::Terminated { .. } => {
                stopped += 1;
                if c.succeeded() {
                    succeeded += 1;
                }
            }
            // Waiting to restart after a run counts as stopped, as upstream.
            Seen::Waiting { .. } if c.last.is_some() => stopped += 1,
            Seen::Waiting { .. } => waiting += 1,
        }
    }
    if waiting > 0 || containers.is_empty() {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped == succeeded {
        "Succeeded"
    } else if restart_policy == "Never" {
        "Failed"
    } else {
        "Running"
    }
}

fn condition(
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    previous: Option<&PodStatus>,
    now: &Time,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind && c.status == status))
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    PodCondition {
        type_: kind.into(),
        status: status.into(),
        reason: reason.map(str::to_string),
        last_transition_time: Some(since),
        ..Default::default()
    }
}

/// Everything the agent reports in `status`; fields it does not own (nominatedNodeName,
/// ...) are kept from `pod`. Unchanged conditions keep their transition times.
pub(crate) fn pod_status(
    pod: &Pod,
    init: &[ContainerView],
    containers: &[ContainerView],
    pod_ip: Option<String>,
    host_ip: &str,
    now: Time,
) -> PodStatus {
    let previous = pod.status.as_ref();
    let restart_policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let phase = phase(restart_policy, init, containers);
    let initialized = init.iter().all(ContainerView::succeeded);
    let all_ready = !containers.is_empty()
        && containers
            .iter()
            .all(|c| c.ready && matches!(c.current, Seen::Running { .. }));
    let done = phase == "Succeeded" || phase == "Failed";
    let not_ready_reason = if done {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let ready_reason = (!all_ready).then_some(not_ready_reason);
    let conditions = vec![
        condition("PodScheduled", true, None, previous, &now),
        condition(
            "Initialized",
            initialized || done,
            (!initialized && !done).then_some("ContainersNotInitialized"),
            previous,
            &now,
        ),
        condition("ContainersReady", all_ready, ready_reason, previous, &now),
        condition("Ready", all_ready, ready_reason, previous, &now),
    ];
    let mut status = previous.cloned().unwrap_or_default();
    status.phase = Some(phase.into());
    status.conditions = Some(conditions);
    status.host_ip = Some(host_ip.into());
    status.host_ips = Some(vec![k8s_openapi::api::core::v1::HostIP {
        ip: host_ip.into(),
    }]);
    if let Some(ip) = pod_ip {
        status.pod_ips = Some(vec![PodIP { ip: ip.clone() }]);
        status.pod_ip = Some(ip);
    }
    if status.start_time.is_none() {
        status.start_time = Some(now);
    }
    status.init_container_statuses =
        (!init.is_empty()).then(|| init.iter().map(ContainerView::status).collect());
    status.container_statuses = Some(containers.iter().map(ContainerView::status).collect());
    status.qos_class = Some(qos_class(pod).into());
    status
}

/// Guaranteed when every container has equal cpu and memory requests and limits,
/// BestEffort when none sets any, else Burstable.
pub(crate) fn qos_class(pod: &Pod) -> &'static str {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let r = c.resources.clone().unwrap_or_default();
        let limits = r.limits.unwrap_or_default();
        let requests = r.requests.unwrap_or_default();
        any |= !limits.is_empty() || !requests.is_empty();
        for name in ["cpu", "memory"] {
            let limit = limits.get(name);
            let request = requests.get(name).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn view(name: &str, current: Seen, last: Option<Seen>) -> ContainerView {
        ContainerView {
            name: name.into(),
            image: "korvet.local/busybox:latest".into(),
            image_id: String::new(),
            container_id: None,
            restart_count: if last.is_some() { 1 } else { 0 },
            ready: matches!(current, Seen::Running { .. }),
            started: matches!(current, Seen::Running { .. }),
            current,
            last,
        }
    }

    fn running() -> Seen {
        Seen::Running { started_at: None }
    }

    fn exited(code: i32) -> Seen {
        Seen::Terminated {
            exit_code: code,
            reason: terminated_reason(code, ""),
            message: None,
            started_at: None,
            finished_at: None,
        }
    }

    fn pod(policy: &str) -> Pod {
        Pod {
            spec: Some(PodSpec {
                restart_policy: Some(policy.into()),
                containers: vec![Container {
                    name: "c".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn reasons_of_ended_containers() {
        assert_eq!(terminated_reason(0, ""), "Completed");
        assert_eq!(terminated_reason(1, ""), "Error");
        assert_eq!(terminated_reason(137, "OOMKilled"), "OOMKilled");
        assert_eq!(terminated_reason(128, "StartError"), "StartError");
    }

    #[test]
    fn phases_follow_upstream() {
        let creating = view("c", Seen::waiting("ContainerCreating", None), None);
        assert_eq!(
            phase("Always", &[], std::slice::from_ref(&creating)),
            "Pending"
        );
        assert_eq!(
            phase("Always", &[], &[view("c", running(), None)]),
            "Running"
        );
        assert_eq!(
            phase("Never", &[], &[view("c", exited(0), None)]),
            "Succeeded"
        );
        assert_eq!(phase("Never", &[], &[view("c", exited(2), None)]), "Failed");
        assert_eq!(
            phase("OnFailure", &[], &[view("c", exited(2), None)]),
            "Running"
        );
        assert_eq!(
            phase("OnFailure", &[], &[view("c", exited(0), None)]),
            "Succeeded"
        );
        let crashing = view(
            "c",
            Seen::waiting("CrashLoopBackOff", None),
            Some(exited(1)),
        );
        assert_eq!(phase("Always", &[], &[crashing]), "Running");
        // Init containers gate everything.
        let init_running = view("i", running(), None);
        assert_eq!(
            phase("Always", &[init_running], std::slice::from_ref(&creating)),
            "Pending"
        );
        assert_eq!(
            phase(
                "Never",
                &[view("i", exited(1), None)],
                std::slice::from_ref(&creating)
            ),
            "Failed"
        );
        assert_eq!(
            phase("Always", &[view("i", exited(0), None)], &[creating]),
            "Pending"
        );
        let mixed = [view("a", running(), None), view("b", exited(0), None)];
        assert_eq!(phase("Never", &[], &mixed), "Running");
    }

    #[test]
    fn a_running_container_failing_readiness_keeps_the_pod_unready() {
        let now = Time("2024-01-01T00:00:00Z".parse().unwrap());
        let mut unready = view("c", running(), None);
        unready.ready = false;
        let s = pod_status(&pod("Always"), &[], &[unready], None, "h", now);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        for kind in ["ContainersReady", "Ready"] {
            let c = s
                .conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == kind)
                .unwrap();
            assert_eq!(
                (c.status.as_str(), c.reason.as_deref()),
                ("False", Some("ContainersNotReady"))
            );
        }
        let cs = &s.container_statuses.unwrap()[0];
        assert!(!cs.ready);
        assert_eq!(cs.started, Some(true));
    }

    #[test]
    fn conditions_and_container_statuses() {
        let now = Time("2024-01-01T00:00:00Z".parse().unwrap());
        let p = pod("Always");
        let s = pod_status(
            &p,
            &[],
            &[view("c", running(), None)],
            Some("10.244.0.5".into()),
            "10.0.0.2",
            now.clone(),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.244.0.5"));
        assert_eq!(s.host_ip.as_deref(), Some("10.0.0.2"));
        assert_eq!(s.start_time.as_ref(), Some(&now));
        let ready = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready);
        assert!(cs.state.as_ref().unwrap().running.is_some());
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));

        // A later status keeps the transition time of a condition that did not change.
        let later = Time("2024-01-01T00:01:00Z".parse().unwrap());
        let mut p2 = p.clone();
        p2.status = Some(s);
        let s2 = pod_status(
            &p2,
            &[],
            &[view("c", running(), None)],
            None,
            "10.0.0.2",
            later,
        );
        let ready = s2
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.last_transition_time.as_ref(), Some(&now));
        assert_eq!(s2.pod_ip.as_deref(), Some("10.244.0.5"));

        let done = pod_status(
            &pod("Never"),
            &[],
            &[view("c", exited(0), None)],
            None,
            "h",
            now.clone(),
        );
        assert_eq!(done.phase.as_deref(), Some("Succeeded"));
        let ready = done
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("PodCompleted"))
        );
        let term = done.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!(term.reason.as_deref(), Some("Completed"));

        let pulling = view(
            "c",
            Seen::waiting("ErrImagePull", Some("not found".into())),
            None,
        );
        let s = pod_status(&pod("Always"), &[], &[pulling], None, "h", now);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let waiting = s.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("ErrImagePull"));
    }
}
