//! The rolling-update arithmetic of upstream's `deploymentutil` (fenceposts, how far the
//! new ReplicaSet may grow, how far the old ones may shrink) and the rollout step.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    available, by_creation, d_replicas, rs_replicas, scale_and_record, sum_replicas,
    sync_rollout_status, Context, DeploymentError, Requeue, Scaled,
};

/// `value` resolved against `total`: an int as is, a percentage of `total` rounded up
/// or down; `None` for a malformed percentage.
pub(crate) fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> Option<i32> {
    match value {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(s) => {
            let percent: i64 = s.strip_suffix('%')?.parse().ok()?;
            let product = percent * i64::from(total);
            let v = if round_up {
                (product + 99).div_euclid(100)
            } else {
                product.div_euclid(100)
            };
            i32::try_from(v).ok()
        }
    }
}

/// (maxSurge, maxUnavailable) for `desired` replicas: surge rounds up, unavailability
/// down, and both zero would deadlock, so unavailability becomes 1.
pub(crate) fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> (i32, i32) {
    let default = IntOrString::String("25%".into());
    let surge = scaled_value(max_surge.unwrap_or(&default), desired, true).unwrap_or(0);
    let mut unavailable =
        scaled_value(max_unavailable.unwrap_or(&default), desired, false).unwrap_or(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

pub(crate) fn is_rolling_update(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

fn fenceposts(d: &Deployment) -> (i32, i32) {
    let rolling = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    resolve_fenceposts(
        rolling.and_then(|r| r.max_surge.as_ref()),
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        d_replicas(d),
    )
}

/// How many pods above the desired count a rollout may run.
pub(crate) fn max_surge(d: &Deployment) -> i32 {
    if !is_rolling_update(d) {
        return 0;
    }
    fenceposts(d).0
}

/// How many pods below the desired count a rollout may leave unavailable.
pub(crate) fn max_unavailable(d: &Deployment) -> i32 {
    if !is_rolling_update(d) || d_replicas(d) == 0 {
        return 0;
    }
    fenceposts(d).1.min(d_replicas(d))
}

/// The replicas the new ReplicaSet may have now (upstream's `NewRSNewReplicas`).
pub(crate) fn new_rs_new_replicas(d: &Deployment, all: &[&ReplicaSet], new_rs: &ReplicaSet) -> i32 {
    let desired = d_replicas(d);
    if !is_rolling_update(d) {
        return desired;
    }
    let current = sum_replicas(all);
    let max_total = desired + max_surge(d);
    if current >= max_total {
        return rs_replicas(new_rs);
    }
    let up = (max_total - current).min(desired - rs_replicas(new_rs));
    rs_replicas(new_rs) + up
}

/// How many old replicas may go now, after `new_rs`'s unavailable ones are counted
/// (upstream's `maxScaledDown` of `reconcileOldReplicaSets`).
pub(crate) fn max_scaled_down(d: &Deployment, all: &[&ReplicaSet], new_rs: &ReplicaSet) -> i32 {
    let min_available = d_replicas(d) - max_unavailable(d);
    let new_unavailable = rs_replicas(new_rs) - available(new_rs);
    sum_replicas(all) - min_available - new_unavailable
}

/// One step of a rolling update.
pub(super) async fn rollout(
    ctx: &Context,
    d: &Deployment,
    mut new_rs: ReplicaSet,
    mut old: Vec<ReplicaSet>,
) -> Result<Requeue, DeploymentError> {
    // Grow the new ReplicaSet within the surge.
    let desired = d_replicas(d);
    let target = if rs_replicas(&new_rs) > desired {
        desired
    } else {
        let all: Vec<&ReplicaSet> = old.iter().chain(Some(&new_rs)).collect();
        new_rs_new_replicas(d, &all, &new_rs)
    };
    if target != rs_replicas(&new_rs) {
        scale_and_record(ctx, d, &mut new_rs, target, None).await?;
        return sync_rollout_status(ctx, d, Some(&new_rs), &old).await;
    }
    if reconcile_old(ctx, d, &new_rs, &mut old).await? == Scaled::Yes {
        return sync_rollout_status(ctx, d, Some(&new_rs), &old).await;
    }
    if super::progress::deployment_complete(d, d.status.as_ref()) {
        super::cleanup(ctx, d, &old).await?;
    }
    sync_rollout_status(ctx, d, Some(&new_rs), &old).await
}

/// Shrinks old ReplicaSets: unhealthy replicas first, then as far as availability
/// allows, oldest ReplicaSet first.
async fn reconcile_old(
    ctx: &Context,
    d: &Deployment,
    new_rs: &ReplicaSet,
    old: &mut [ReplicaSet],
) -> Result<Scaled, DeploymentError> {
    let old_count: i32 = old.iter().map(rs_replicas).sum();
    if old_count == 0 {
        return Ok(Scaled::No);
    }
    let all: Vec<&ReplicaSet> = old.iter().chain(Some(new_rs)).collect();
    let max_down = max_scaled_down(d, &all, new_rs);
    if max_down <= 0 {
        return Ok(Scaled::No);
    }
    old.sort_by(by_creation);
    let mut scaled = Scaled::No;
    // Unhealthy replicas of old ReplicaSets cost no availability: remove them first.
    let mut cleaned = 0;
    for rs in old.iter_mut() {
        if cleaned >= max_down {
            break;
        }
        let (replicas, avail) = (rs_replicas(rs), available(rs));
        if replicas == 0 || replicas == avail {
            continue;
        }
        let down = (max_down - cleaned).min(replicas - avail);
        scale_and_record(ctx, d, rs, replicas - down, None).await?;
        cleaned += down;
        scaled = Scaled::Yes;
    }
    // Then healthy ones, keeping minAvailable available.
    let min_available = d_replicas(d) - max_unavailable(d);
    let available_now: i32 = old.iter().chain(Some(new_rs)).map(available).sum();
    if available_now > min_available {
        let total = available_now - min_available;
        let mut done = 0;
        for rs in old.iter_mut() {
            if done >= total {
                break;
            }
            let replicas = rs_replicas(rs);
            if replicas == 0 {
                continue;
            }
            let down = replicas.min(total - done);
            scale_and_record(ctx, d, rs, replicas - down, None).await?;
            done += down;
            scaled = Scaled::Yes;
        }
    }
    Ok(scaled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        assert_eq!(resolve_fenceposts(None, None, 10), (3, 2));
        assert_eq!(resolve_fenceposts(None, None, 4), (1, 1));
        assert_eq!(resolve_fenceposts(None, None, 1), (1, 0));
        assert_eq!(
            resolve_fenceposts(Some(&pct("50%")), Some(&pct("50%")), 3),
            (2, 1)
        );
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(1)), Some(&IntOrString::Int(0)), 3),
            (1, 0)
        );
    }

    #[test]
    fn zero_surge_and_zero_unavailable_would_deadlock() {
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&pct("0%")), 5),
            (0, 1)
        );
    }

    #[test]
    fn malformed_percentages_are_refused() {
        assert_eq!(scaled_value(&pct("abc"), 10, true), None);
        assert_eq!(scaled_value(&pct("10"), 10, true), None);
        assert_eq!(scaled_value(&pct("33%"), 10, true), Some(4));
        assert_eq!(scaled_value(&pct("33%"), 10, false), Some(3));
    }
}
