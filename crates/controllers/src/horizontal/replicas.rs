//! Upstream's replica calculator (`replica_calculator.go`) for resource metrics: which
//! pods count, how missing and unready pods are treated, and the 0.1 tolerance.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};

/// Changes smaller than this fraction of the target are not acted on.
pub(crate) const TOLERANCE: f64 = 0.1;
/// Upstream's `--horizontal-pod-autoscaler-cpu-initialization-period`.
pub(crate) const CPU_INITIALIZATION_PERIOD: SignedDuration = SignedDuration::from_secs(300);
/// Upstream's `--horizontal-pod-autoscaler-initial-readiness-delay`.
pub(crate) const INITIAL_READINESS_DELAY: SignedDuration = SignedDuration::from_secs(30);

/// What the calculator needs of one pod selected by the target.
#[derive(Clone, Debug)]
pub(crate) struct PodInfo {
    pub name: String,
    pub phase: String,
    pub deleting: bool,
    /// The Ready condition: status and lastTransitionTime.
    pub ready: Option<(bool, Timestamp)>,
    pub start_time: Option<Timestamp>,
    /// Sum of the containers' requests of the resource (milli-units), or the upstream
    /// error for the first container without one.
    pub request: Result<i128, String>,
}

/// One pod's usage from metrics.k8s.io, summed over its containers (milli-units).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PodMetric {
    pub value: i128,
    pub timestamp: Timestamp,
    pub window: SignedDuration,
}

#[derive(Debug, Default)]
struct Groups {
    ready_count: usize,
    unready: BTreeSet<String>,
    missing: BTreeSet<String>,
    ignored: BTreeSet<String>,
}

fn group_pods(
    pods: &[PodInfo],
    metrics: &BTreeMap<String, PodMetric>,
    cpu: bool,
    now: Timestamp,
) -> Groups {
    let mut g = Groups::default();
    for pod in pods {
        if pod.deleting || pod.phase == "Failed" {
            g.ignored.insert(pod.name.clone());
            continue;
        }
        if pod.phase == "Pending" {
            g.unready.insert(pod.name.clone());
            continue;
        }
        let Some(metric) = metrics.get(&pod.name) else {
            g.missing.insert(pod.name.clone());
            continue;
        };
        if cpu {
            let unready = match (pod.ready, pod.start_time) {
                (Some((ready, transition)), Some(start)) => {
                    if start + CPU_INITIALIZATION_PERIOD > now {
                        // Still initialising: only a sample taken a full window after
                        // the pod became ready counts.
                        !ready || metric.timestamp < transition + metric.window
                    } else {
                        // Unready and never been ready.
                        !ready && start + INITIAL_READINESS_DELAY > transition
                    }
                }
                _ => true,
            };
            if unready {
                g.unready.insert(pod.name.clone());
                continue;
            }
        }
        g.ready_count += 1;
    }
    g
}

fn requests(pods: &[PodInfo]) -> Result<BTreeMap<String, i128>, String> {
    pods.iter()
        .map(|p| p.request.clone().map(|r| (p.name.clone(), r)))
        .collect()
}

/// `(ratio, utilization %, average raw usage)` of `metrics` against their requests.
fn utilization_ratio(
    metrics: &BTreeMap<String, PodMetric>,
    requests: &BTreeMap<String, i128>,
    target: i32,
) -> Result<(f64, i32, i128), String> {
    let (mut total, mut requested, mut entries) = (0i128, 0i128, 0i128);
    for (name, metric) in metrics {
        let Some(request) = requests.get(name) else {
            continue;
        };
        total += metric.value;
        requested += request;
        entries += 1;
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".to_string());
    }
    let utilization = (total * 100 / requested) as i32;
    Ok((
        f64::from(utilization) / f64::from(target),
        utilization,
        total / entries,
    ))
}

fn usage_ratio(metrics: &BTreeMap<String, PodMetric>, target: i128) -> (f64, i128) {
    let total: i128 = metrics.values().map(|m| m.value).sum();
    let current = total / (metrics.len().max(1) as i128);
    (current as f64 / target as f64, current)
}

/// Removes what does not count and fails as upstream when nothing is left.
fn prepare(
    pods: &[PodInfo],
    metrics: &mut BTreeMap<String, PodMetric>,
    cpu: bool,
    now: Timestamp,
) -> Result<Groups, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".to_string());
    }
    let groups = group_pods(pods, metrics, cpu, now);
    for name in groups.ignored.iter().chain(&groups.unready) {
        metrics.remove(name);
    }
    if metrics.is_empty() {
        return Err(
            "did not receive metrics for targeted pods (pods might be unready)".to_string(),
        );
    }
    Ok(groups)
}

/// The proposal after filling in missing and unready pods, as upstream's second pass.
fn second_pass(current: i32, ratio: f64, new_ratio: f64, counted: usize) -> i32 {
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return current;
    }
    let proposed = (new_ratio * counted as f64).ceil() as i32;
    if (new_ratio < 1.0 && proposed > current) || (new_ratio > 1.0 && proposed < current) {
        return current;
    }
    proposed
}

/// Replicas for a target utilization (percent of request): `(replicas, utilization %,
/// average usage in milli-units)`.
pub(crate) fn utilization_replicas(
    current: i32,
    target: i32,
    pods: &[PodInfo],
    mut metrics: BTreeMap<String, PodMetric>,
    cpu: bool,
    now: Timestamp,
) -> Result<(i32, i32, i128), String> {
    let groups = prepare(pods, &mut metrics, cpu, now)?;
    let requests = requests(pods)?;
    let (ratio, utilization, raw) = utilization_ratio(&metrics, &requests, target)?;
    let scale_up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && groups.missing.is_empty() {
        if (1.0 - ratio).abs() <= TOLERANCE {
            return Ok((current, utilization, raw));
        }
        return Ok((
            (ratio * groups.ready_count as f64).ceil() as i32,
            utilization,
            raw,
        ));
    }
    let zero = |metrics: &mut BTreeMap<String, PodMetric>, name: &str, value: i128| {
        metrics.insert(
            name.to_string(),
            PodMetric {
                value,
                timestamp: now,
                window: SignedDuration::ZERO,
            },
        );
    };
    for name in &groups.missing {
        if ratio < 1.0 {
            // Scaling down: a pod without figures is taken to use its whole request.
            let fallback = i128::from(target.max(100));
            let request = requests.get(name).copied().unwrap_or(0);
            zero(&mut metrics, name, request * fallback / 100);
        } else if ratio > 1.0 {
            zero(&mut metrics, name, 0);
        }
    }
    if scale_up_with_unready {
        for name in &groups.unready {
            zero(&mut metrics, name, 0);
        }
    }
    let (new_ratio, _, _) = utilization_ratio(&metrics, &requests, target)?;
    Ok((
        second_pass(current, ratio, new_ratio, metrics.len()),
        utilization,
        raw,
    ))
}

/// Replicas for a target average value (milli-units): `(replicas, average usage)`.
pub(crate) fn average_value_replicas(
    current: i32,
    target: i128,
    pods: &[PodInfo],
    mut metrics: BTreeMap<String, PodMetric>,
    cpu: bool,
    now: Timestamp,
) -> Result<(i32, i128), String> {
    if target <= 0 {
        return Err("the target average value must be positive".to_string());
    }
    let groups = prepare(pods, &mut metrics, cpu, now)?;
    let (ratio, usage) = usage_ratio(&metrics, target);
    let scale_up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && groups.missing.is_empty() {
        if (1.0 - ratio).abs() <= TOLERANCE {
            return Ok((current, usage));
        }
        return Ok(((ratio * groups.ready_count as f64).ceil() as i32, usage));
    }
    let fill = |metrics: &mut BTreeMap<String, PodMetric>, name: &str, value: i128| {
        metrics.insert(
            name.to_string(),
            PodMetric {
                value,
                timestamp: now,
                window: SignedDuration::ZERO,
            },
        );
    };
    for name in &groups.missing {
        if ratio < 1.0 {
            fill(&mut metrics, name, target);
        } else {
            fill(&mut metrics, name, 0);
        }
    }
    if scale_up_with_unready {
        for name in &groups.unready {
            fill(&mut metrics, name, 0);
        }
    }
    let (new_ratio, _) = usage_ratio(&metrics, target);
    Ok((second_pass(current, ratio, new_ratio, metrics.len()), usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    /// A running pod, ready for an hour, requesting `request` millicores.
    fn pod(name: &str, request: i128) -> PodInfo {
        PodInfo {
            name: name.to_string(),
            phase: "Running".to_string(),
            deleting: false,
            ready: Some((true, now() - SignedDuration::from_secs(3600))),
            start_time: Some(now() - SignedDuration::from_secs(3600)),
            request: Ok(request),
        }
    }

    fn metrics(values: &[(&str, i128)]) -> BTreeMap<String, PodMetric> {
        values
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    PodMetric {
                        value: *v,
                        timestamp: now(),
                        window: SignedDuration::from_secs(15),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn scales_up_by_the_usage_ratio() {
        // Upstream's TestReplicaCalcScaleUp: 3 pods at 300/500/700 of 1000m, target 30 %.
        let pods = [pod("a", 1000), pod("b", 1000), pod("c", 1000)];
        let m = metrics(&[("a", 300), ("b", 500), ("c", 700)]);
        assert_eq!(
            utilization_replicas(3, 30, &pods, m, true, now()).unwrap(),
            (5, 50, 500)
        );
    }

    #[test]
    fn stays_within_the_tolerance() {
        let pods = [pod("a", 1000), pod("b", 1000)];
        let m = metrics(&[("a", 1050), ("b", 1050)]);
        assert_eq!(
            utilization_replicas(2, 100, &pods, m, true, now())
                .unwrap()
                .0,
            2
        );
    }

    #[test]
    fn scales_down_with_missing_pods_taken_as_full() {
        // Upstream's TestReplicaCalcScaleDownIncludeUnreadyPods-like case: 4 pods, one
        // without metrics, the rest at 10 % against a 50 % target.
        let pods = [
            pod("a", 1000),
            pod("b", 1000),
            pod("c", 1000),
            pod("d", 1000),
        ];
        let m = metrics(&[("a", 100), ("b", 100), ("c", 100)]);
        // Second pass: (100+100+100+1000)/4000 = 32 % → ratio 0.65 → ceil(2.6) = 3.
        assert_eq!(
            utilization_replicas(4, 50, &pods, m, true, now())
                .unwrap()
                .0,
            3
        );
    }

    #[test]
    fn unready_pods_count_as_zero_when_scaling_up() {
        let mut starting = pod("c", 1000);
        starting.ready = Some((false, now() - SignedDuration::from_secs(10)));
        starting.start_time = Some(now() - SignedDuration::from_secs(20));
        let pods = [pod("a", 1000), pod("b", 1000), starting];
        let m = metrics(&[("a", 900), ("b", 900), ("c", 900)]);
        // First pass over a and b: 90 % vs 30 % → ratio 3; with c at 0: 60 % → 2.0 → 6.
        assert_eq!(
            utilization_replicas(3, 30, &pods, m, true, now()).unwrap(),
            (6, 90, 900)
        );
    }

    #[test]
    fn failed_pending_and_deleting_pods() {
        let mut failed = pod("f", 1000);
        failed.phase = "Failed".into();
        let mut pending = pod("p", 1000);
        pending.phase = "Pending".into();
        let m = metrics(&[("f", 5000)]);
        assert_eq!(
            utilization_replicas(2, 50, &[failed, pending], m, true, now()).unwrap_err(),
            "did not receive metrics for targeted pods (pods might be unready)"
        );
        assert_eq!(
            utilization_replicas(2, 50, &[], metrics(&[]), true, now()).unwrap_err(),
            "no pods returned by selector while calculating replica count"
        );
    }

    #[test]
    fn a_missing_request_is_an_error() {
        let mut p = pod("a", 0);
        p.request = Err("missing request for cpu in container c of Pod a".into());
        assert!(
            utilization_replicas(1, 50, &[p], metrics(&[("a", 1)]), true, now())
                .unwrap_err()
                .starts_with("missing request for cpu")
        );
    }

    #[test]
    fn average_value_targets() {
        let pods = [pod("a", 0), pod("b", 0)];
        // Memory (no readiness rules): 300Mi each against a 100Mi target → 6.
        let mi = 1024 * 1024 * 1000;
        let m = metrics(&[("a", 300 * mi), ("b", 300 * mi)]);
        assert_eq!(
            average_value_replicas(2, 100 * mi, &pods, m, false, now()).unwrap(),
            (6, 300 * mi)
        );
    }
}
