//! Preemption, as upstream's `DefaultPreemption` plugin: when a pod fits nowhere, find
//! the node where evicting the fewest, least important lower-priority pods lets it fit.
//! The scheduler then deletes those victims and nominates the node for the pod, which
//! is scheduled normally once the victims are gone.

use std::cmp::Reverse;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::plugins::{NodeInfo, PodContext, Reason};

/// A node and the pods that must go for the preemptor to fit there.
#[derive(Debug)]
pub(crate) struct Candidate {
    pub node: String,
    pub victims: Vec<Arc<Pod>>,
}

pub(crate) fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// Whether `pod` may preempt at all: not with `preemptionPolicy: Never`, and not while
/// victims it already caused on its nominated node are still terminating (upstream's
/// `PodEligibleToPreemptOthers`).
pub(crate) fn eligible(pod: &Pod, infos: &[NodeInfo]) -> Result<(), &'static str> {
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Err("not eligible due to preemptionPolicy=Never.");
    }
    let nominated = pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref())
        .filter(|n| !n.is_empty());
    if let Some(node) = nominated.and_then(|n| infos.iter().find(|i| i.name() == n)) {
        let own = priority(pod);
        let waiting = node
            .pods
            .iter()
            .any(|p| p.metadata.deletion_timestamp.is_some() && priority(p) < own);
        if waiting {
            return Err("not eligible due to a terminating pod on the nominated node.");
        }
    }
    Ok(())
}

/// The best candidate among the nodes that failed only for reasons eviction can fix
/// (`failed`: index into `infos` and that node's reasons).
pub(crate) fn select_candidate(
    ctx: &PodContext,
    infos: &[NodeInfo],
    failed: &[(usize, Vec<Reason>)],
) -> Option<Candidate> {
    let own = priority(ctx.pod);
    failed
        .iter()
        .filter(|(_, reasons)| !reasons.iter().any(|r| r.unresolvable))
        .filter_map(|(i, _)| infos.get(*i))
        .filter_map(|node| victims_on(ctx, node, own))
        .min_by_key(rank)
}

/// The fewest lower-priority pods whose removal lets the pod fit on `node`: remove all
/// of them, then give back the most important ones while the pod still fits.
fn victims_on(ctx: &PodContext, node: &NodeInfo, own: i32) -> Option<Candidate> {
    let (mut removable, kept): (Vec<Arc<Pod>>, Vec<Arc<Pod>>) = node
        .pods
        .iter()
        .cloned()
        .partition(|p| priority(p) < own && p.metadata.deletion_timestamp.is_none());
    if removable.is_empty() {
        return None;
    }
    let mut reduced = NodeInfo::new(node.node.clone());
    for pod in kept {
        reduced.add_pod(pod);
    }
    ctx.filter(&reduced).ok()?;
    // Most important first: higher priority, then longer running.
    removable.sort_by_key(|p| (Reverse(priority(p)), start_time(p)));
    let mut victims = Vec::new();
    for pod in removable {
        let mut trial = NodeInfo::new(reduced.node.clone());
        for p in reduced
            .pods
            .iter()
            .cloned()
            .chain(std::iter::once(pod.clone()))
        {
            trial.add_pod(p);
        }
        if ctx.filter(&trial).is_ok() {
            reduced = trial;
        } else {
            victims.push(pod);
        }
    }
    Some(Candidate {
        node: node.name().to_string(),
        victims,
    })
}

fn start_time(pod: &Pod) -> Option<jiff::Timestamp> {
    pod.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0)
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Upstream's order of preference: the lowest highest-priority victim, then the lowest
/// sum of priorities, then the fewest victims, then the node name for a stable choice.
fn rank(c: &Candidate) -> (i32, i64, usize, String) {
    let highest = c
        .victims
        .iter()
        .map(|p| priority(p))
        .max()
        .unwrap_or(i32::MIN);
    // Offset as upstream so that negative priorities still add up sensibly.
    let sum: i64 = c
        .victims
        .iter()
        .map(|p| i64::from(priority(p)) + i64::from(i32::MAX) + 1)
        .sum();
    (highest, sum, c.victims.len(), c.node.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    fn node(name: &str, cpu: &str) -> NodeInfo {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}},
        }))
        .unwrap();
        NodeInfo::new(Arc::new(node))
    }

    fn pod(name: &str, cpu: &str, priority: i32) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"priority": priority, "containers": [{
                    "name": "c", "image": "i",
                    "resources": {"requests": {"cpu": cpu}},
                }]},
            }))
            .unwrap(),
        )
    }

    fn names(c: &Candidate) -> Vec<String> {
        let mut v: Vec<String> = c
            .victims
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn evicts_only_as_many_low_priority_pods_as_needed() {
        let mut a = node("a", "4");
        a.add_pod(pod("low1", "1", 0));
        a.add_pod(pod("low2", "1", 0));
        a.add_pod(pod("mid", "1", 50));
        a.add_pod(pod("high", "1", 1000));
        let infos = vec![a];
        let preemptor = pod("vip", "2", 100);
        let ctx = PodContext::new(&preemptor, &infos);
        let failed = vec![(0, ctx.filter(&infos[0]).unwrap_err())];
        let c = select_candidate(&ctx, &infos, &failed).expect("a candidate");
        assert_eq!(c.node, "a");
        // Two cpus must go: the two lowest; `mid` is given back, `high` never considered.
        assert_eq!(names(&c), vec!["low1", "low2"]);
    }

    #[test]
    fn prefers_the_node_whose_victims_matter_least() {
        let mut a = node("a", "2");
        a.add_pod(pod("a-mid", "2", 50));
        let mut b = node("b", "2");
        b.add_pod(pod("b-low", "2", 10));
        let infos = vec![a, b];
        let preemptor = pod("vip", "2", 100);
        let ctx = PodContext::new(&preemptor, &infos);
        let failed: Vec<_> = (0..2)
            .map(|i| (i, ctx.filter(&infos[i]).unwrap_err()))
            .collect();
        let c = select_candidate(&ctx, &infos, &failed).expect("a candidate");
        assert_eq!(c.node, "b");
        assert_eq!(names(&c), vec!["b-low"]);
    }

    #[test]
    fn no_candidate_without_lower_priority_pods() {
        let mut a = node("a", "2");
        a.add_pod(pod("peer", "2", 100));
        let infos = vec![a];
        let preemptor = pod("vip", "2", 100);
        let ctx = PodContext::new(&preemptor, &infos);
        let failed = vec![(0, ctx.filter(&infos[0]).unwrap_err())];
        assert!(select_candidate(&ctx, &infos, &failed).is_none());
    }

    #[test]
    fn never_policy_is_not_eligible() {
        let mut p: Pod = (*pod("p", "1", 5)).clone();
        p.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
        assert!(eligible(&p, &[]).is_err());
        assert!(eligible(&pod("q", "1", 5), &[]).is_ok());
    }
}
