//! The rollout arithmetic on ReplicaSets as the controller sees them.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, ReplicaSet, ReplicaSetSpec, ReplicaSetStatus,
    RollingUpdateDeployment,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::rolling::{max_scaled_down, max_surge, max_unavailable, new_rs_new_replicas};
use super::*;

fn deployment(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
    Deployment {
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(surge),
                    max_unavailable: Some(unavailable),
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn rs(replicas: i32, available: i32) -> ReplicaSet {
    ReplicaSet {
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            ..Default::default()
        }),
        status: Some(ReplicaSetStatus {
            replicas,
            available_replicas: Some(available),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn surge_one_unavailable_zero_grows_one_at_a_time() {
    let d = deployment(3, IntOrString::Int(1), IntOrString::Int(0));
    let (old, new) = (rs(3, 3), rs(0, 0));
    assert_eq!(new_rs_new_replicas(&d, &[&old, &new], &new), 1);
    // With the surge used up the new ReplicaSet waits.
    let new = rs(1, 0);
    assert_eq!(new_rs_new_replicas(&d, &[&old, &new], &new), 1);
    // And no old replica may go before the new one is available.
    assert_eq!(max_scaled_down(&d, &[&old, &new], &new), 0);
    let new = rs(1, 1);
    assert_eq!(max_scaled_down(&d, &[&old, &new], &new), 1);
}

#[test]
fn recreate_has_no_surge_and_no_unavailability_budget() {
    let mut d = deployment(4, IntOrString::Int(1), IntOrString::Int(1));
    d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
        type_: Some("Recreate".into()),
        rolling_update: None,
    });
    assert_eq!(max_surge(&d), 0);
    assert_eq!(max_unavailable(&d), 0);
    let new = rs(0, 0);
    assert_eq!(new_rs_new_replicas(&d, &[&new], &new), 4);
}

#[test]
fn default_percentages_on_ten_replicas() {
    let d = deployment(
        10,
        IntOrString::String("25%".into()),
        IntOrString::String("25%".into()),
    );
    assert_eq!((max_surge(&d), max_unavailable(&d)), (3, 2));
    let (old, new) = (rs(10, 10), rs(0, 0));
    assert_eq!(new_rs_new_replicas(&d, &[&old, &new], &new), 3);
    let new = rs(3, 0);
    // 13 pods, 8 must stay available, 3 new ones unavailable: 2 old may go.
    assert_eq!(max_scaled_down(&d, &[&old, &new], &new), 2);
}

#[test]
fn proportional_scaling_shares_by_size() {
    // 10 → 20 replicas mid-rollout (surge 3 → 5): old 8 of max 13, new 5 of max 13.
    let to_add = (20 + 5) - (8 + 5);
    let old_share = proportion(8, Some(13), 20, 13, 5, to_add, 0);
    let new_share = proportion(5, Some(13), 20, 13, 5, to_add, old_share);
    assert_eq!(old_share, 7);
    assert_eq!(new_share, 5);
    assert_eq!(old_share + new_share, to_add);
    // Scaling to zero removes everything.
    assert_eq!(proportion(4, Some(6), 0, 6, 0, -6, 0), -4);
}
