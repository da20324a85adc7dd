//! Deployment status and its conditions, as upstream's `calculateStatus` and
//! `syncRolloutStatus`: Available (MinimumReplicasAvailable/Unavailable), Progressing
//! (NewReplicaSetCreated, FoundNewReplicaSet, ReplicaSetUpdated, NewReplicaSetAvailable,
//! ProgressDeadlineExceeded, DeploymentPaused/Resumed) and ReplicaFailure.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::rolling::max_unavailable;
use super::{available, d_replicas, rs_replicas};

pub(crate) const PROGRESSING: &str = "Progressing";
pub(crate) const AVAILABLE: &str = "Available";
pub(crate) const REPLICA_FAILURE: &str = "ReplicaFailure";
pub(crate) const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub(crate) const TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub(crate) const PAUSED: &str = "DeploymentPaused";
pub(crate) const RESUMED: &str = "DeploymentResumed";

pub(crate) fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
) -> DeploymentCondition {
    let now = Some(Time(jiff::Timestamp::now()));
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: now.clone(),
        last_transition_time: now,
    }
}

pub(crate) fn get<'a>(
    status: &'a DeploymentStatus,
    type_: &str,
) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// Upstream's `SetDeploymentCondition`: nothing changes when status and reason are the
/// same; the transition time is kept while the status is.
pub(crate) fn set(status: &mut DeploymentStatus, mut new: DeploymentCondition) {
    if let Some(current) = get(status, &new.type_) {
        if current.status == new.status && current.reason == new.reason {
            return;
        }
        if current.status == new.status {
            new.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove(status, &new.type_);
    status.conditions.get_or_insert_with(Vec::new).push(new);
}

pub(crate) fn remove(status: &mut DeploymentStatus, type_: &str) {
    if let Some(c) = status.conditions.as_mut() {
        c.retain(|c| c.type_ != type_);
    }
}

pub(crate) fn has_progress_deadline(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .is_some_and(|s| s != i32::MAX)
}

/// Status from the ReplicaSets' status (upstream's `calculateStatus`).
pub(crate) fn calculate(
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
    all: &[&ReplicaSet],
) -> DeploymentStatus {
    let actual = |rs: &&ReplicaSet| rs.status.as_ref().map(|s| s.replicas).unwrap_or(0);
    let ready = |rs: &&ReplicaSet| {
        rs.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    };
    let available_replicas: i32 = all.iter().map(|rs| available(rs)).sum();
    let total: i32 = all.iter().map(|rs| rs_replicas(rs)).sum();
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(all.iter().map(actual).sum()),
        updated_replicas: Some(new_rs.as_ref().map(actual).unwrap_or(0)),
        ready_replicas: Some(all.iter().map(ready).sum()),
        available_replicas: Some(available_replicas),
        unavailable_replicas: Some((total - available_replicas).max(0)),
        collision_count: d.status.as_ref().and_then(|s| s.collision_count),
        conditions: d.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    };
    if available_replicas >= d_replicas(d) - max_unavailable(d) {
        set(
            &mut status,
            condition(
                AVAILABLE,
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            ),
        );
    } else {
        set(
            &mut status,
            condition(
                AVAILABLE,
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            ),
        );
    }
    status
}

fn n(v: Option<i32>) -> i32 {
    v.unwrap_or(0)
}

/// Every replica updated and available, none old left, and this generation observed.
pub(crate) fn deployment_complete(d: &Deployment, status: Option<&DeploymentStatus>) -> bool {
    let Some(s) = status else {
        return false;
    };
    let want = d_replicas(d);
    n(s.updated_replicas) == want
        && n(s.replicas) == want
        && n(s.available_replicas) == want
        && s.observed_generation >= d.metadata.generation
}

/// Whether `new` shows progress over the Deployment's current status.
pub(crate) fn deployment_progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

/// The time left before the progress deadline passes: `None` when no deadline applies,
/// zero when it has passed.
pub(crate) fn deadline_left(d: &Deployment, status: &DeploymentStatus) -> Option<Duration> {
    if !has_progress_deadline(d) {
        return None;
    }
    let c = get(status, PROGRESSING)?;
    if matches!(c.reason.as_deref(), Some(NEW_RS_AVAILABLE | TIMED_OUT)) {
        return None;
    }
    let from = c.last_update_time.as_ref()?.0;
    let seconds = d.spec.as_ref()?.progress_deadline_seconds?;
    let deadline = from + jiff::SignedDuration::from_secs(i64::from(seconds));
    let left = deadline - jiff::Timestamp::now();
    Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
}

fn timed_out(d: &Deployment, status: &DeploymentStatus) -> bool {
    if !has_progress_deadline(d) {
        return false;
    }
    match get(status, PROGRESSING) {
        Some(c) if c.reason.as_deref() == Some(TIMED_OUT) => true,
        Some(_) => deadline_left(d, status) == Some(Duration::ZERO),
        None => false,
    }
}

/// The Progressing condition after this sync (upstream's `syncRolloutStatus`), and the
/// ReplicaSets' ReplicaFailure carried over.
pub(crate) fn rollout_status(
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
    all: &[&ReplicaSet],
) -> DeploymentStatus {
    let mut status = calculate(d, new_rs, all);
    if !has_progress_deadline(d) {
        remove(&mut status, PROGRESSING);
    }
    let current = get(&status, PROGRESSING).cloned();
    let complete = status.replicas == status.updated_replicas
        && current.as_ref().and_then(|c| c.reason.as_deref()) == Some(NEW_RS_AVAILABLE);
    if has_progress_deadline(d) && !complete {
        let name = new_rs.map(|rs| rs.name_any()).unwrap_or_default();
        if deployment_complete(d, Some(&status)) {
            set(
                &mut status,
                condition(
                    PROGRESSING,
                    "True",
                    NEW_RS_AVAILABLE,
                    format!("ReplicaSet \"{name}\" has successfully progressed."),
                ),
            );
        } else if deployment_progressing(d, &status) {
            let message = if new_rs.is_some() {
                format!("ReplicaSet \"{name}\" is progressing.")
            } else {
                "Deployment is progressing.".into()
            };
            let mut c = condition(PROGRESSING, "True", "ReplicaSetUpdated", message);
            if let Some(current) = current.as_ref().filter(|c| c.status == "True") {
                c.last_transition_time = current.last_transition_time.clone();
            }
            remove(&mut status, PROGRESSING);
            set(&mut status, c);
        } else if timed_out(d, &status) {
            let message = if new_rs.is_some() {
                format!("ReplicaSet \"{name}\" has timed out progressing.")
            } else {
                format!("Deployment \"{}\" has timed out progressing.", d.name_any())
            };
            set(
                &mut status,
                condition(PROGRESSING, "False", TIMED_OUT, message),
            );
        }
    }
    let failure = all.iter().find_map(|rs| {
        rs.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == REPLICA_FAILURE && c.status == "True")
            .cloned()
    });
    match failure {
        Some(f) => set(
            &mut status,
            DeploymentCondition {
                type_: REPLICA_FAILURE.into(),
                status: f.status,
                reason: f.reason,
                message: f.message,
                last_update_time: f.last_transition_time.clone(),
                last_transition_time: f.last_transition_time,
            },
        ),
        None => remove(&mut status, REPLICA_FAILURE),
    }
    status
}

/// Whether two statuses differ in what is reported (upstream compares deeply).
pub(crate) fn differs(old: Option<&DeploymentStatus>, new: &DeploymentStatus) -> bool {
    let old = old.cloned().unwrap_or_default();
    n(old.replicas) != n(new.replicas)
        || n(old.updated_replicas) != n(new.updated_replicas)
        || n(old.ready_replicas) != n(new.ready_replicas)
        || n(old.available_replicas) != n(new.available_replicas)
        || n(old.unavailable_replicas) != n(new.unavailable_replicas)
        || old.observed_generation != new.observed_generation
        || old.collision_count != new.collision_count
        || old.conditions.unwrap_or_default() != new.conditions.clone().unwrap_or_default()
}

/// A merge patch with every status field; zero counts removed as upstream omits them.
pub(crate) fn patch(status: &DeploymentStatus) -> serde_json::Value {
    let count = |v: Option<i32>| match v {
        Some(n) if n != 0 => serde_json::json!(n),
        _ => serde_json::Value::Null,
    };
    serde_json::json!({"status": {
        "replicas": count(status.replicas),
        "updatedReplicas": count(status.updated_replicas),
        "readyReplicas": count(status.ready_replicas),
        "availableReplicas": count(status.available_replicas),
        "unavailableReplicas": count(status.unavailable_replicas),
        "observedGeneration": status.observed_generation,
        "collisionCount": status.collision_count,
        "conditions": status.conditions,
    }})
}
