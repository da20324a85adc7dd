//! The Recreate strategy: every old pod gone before the new ReplicaSet grows.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::ResourceExt;

use super::{
    d_replicas, rs_replicas, scale_and_record, sync_rollout_status, Context, DeploymentError,
    Requeue,
};
use crate::workload::is_controlled_by;

pub(super) async fn rollout(
    ctx: &Context,
    d: &mut Deployment,
    all_sets: &[ReplicaSet],
    new_rs: Option<ReplicaSet>,
    mut old: Vec<ReplicaSet>,
) -> Result<Requeue, DeploymentError> {
    let mut scaled_down = false;
    for rs in old.iter_mut().filter(|rs| rs_replicas(rs) > 0) {
        scale_and_record(ctx, d, rs, 0, None).await?;
        scaled_down = true;
    }
    if scaled_down || old_pods_running(ctx, d, &old) {
        return sync_rollout_status(ctx, d, new_rs.as_ref(), &old).await;
    }
    let (mut new_rs, old) = match new_rs {
        Some(rs) => (rs, old),
        None => {
            let (new_rs, old) = super::new_and_old(ctx, d, all_sets, true).await?;
            match new_rs {
                Some(rs) => (rs, old),
                None => return Ok(None),
            }
        }
    };
    if rs_replicas(&new_rs) != d_replicas(d) {
        scale_and_record(ctx, d, &mut new_rs, d_replicas(d), None).await?;
        return sync_rollout_status(ctx, d, Some(&new_rs), &old).await;
    }
    if super::progress::deployment_complete(d, d.status.as_ref()) {
        super::cleanup(ctx, d, &old).await?;
    }
    sync_rollout_status(ctx, d, Some(&new_rs), &old).await
}

/// Whether any pod of an old ReplicaSet still exists and is not finished (terminating
/// pods count: Recreate promises they are gone).
fn old_pods_running(ctx: &Context, d: &Deployment, old: &[ReplicaSet]) -> bool {
    if old
        .iter()
        .any(|rs| rs.status.as_ref().is_some_and(|s| s.replicas > 0))
    {
        return true;
    }
    let namespace = d.namespace();
    let uids: Vec<String> = old.iter().filter_map(|rs| rs.uid()).collect();
    ctx.pods.store().state().iter().any(|p| {
        p.namespace() == namespace
            && uids.iter().any(|u| is_controlled_by(&p.metadata, u))
            && !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Failed" | "Succeeded")
            )
    })
}
