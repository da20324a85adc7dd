//! Upstream's normalisation of a proposed replica count (`horizontal.go`): stabilisation
//! windows over recent recommendations, then the scale-up/scale-down rate policies
//! (`behavior`), or without `behavior` the classic rules (5-minute downscale window,
//! at most double or +4 per step), with the AbleToScale and ScalingLimited conditions
//! they imply.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscalerBehavior};

/// Upstream's `--horizontal-pod-autoscaler-downscale-stabilization`.
pub(crate) const DOWNSCALE_STABILIZATION: SignedDuration = SignedDuration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Select {
    Max,
    Min,
    Disabled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PolicyKind {
    Pods,
    Percent,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Policy {
    pub kind: PolicyKind,
    pub value: i32,
    pub period: SignedDuration,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rules {
    pub stabilization: SignedDuration,
    pub select: Select,
    pub policies: Vec<Policy>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Behavior {
    pub up: Rules,
    pub down: Rules,
}

fn policy(kind: PolicyKind, value: i32, period: i64) -> Policy {
    Policy {
        kind,
        value,
        period: SignedDuration::from_secs(period),
    }
}

fn rules(spec: Option<&HPAScalingRules>, default: Rules) -> Rules {
    let Some(spec) = spec else {
        return default;
    };
    let select = match spec.select_policy.as_deref() {
        Some("Min") => Select::Min,
        Some("Disabled") => Select::Disabled,
        Some(_) => Select::Max,
        None => default.select,
    };
    let policies = match &spec.policies {
        Some(p) if !p.is_empty() => p
            .iter()
            .map(|p| {
                let kind = if p.type_ == "Percent" {
                    PolicyKind::Percent
                } else {
                    PolicyKind::Pods
                };
                policy(kind, p.value, i64::from(p.period_seconds))
            })
            .collect(),
        _ => default.policies,
    };
    Rules {
        stabilization: spec
            .stabilization_window_seconds
            .map(|s| SignedDuration::from_secs(i64::from(s)))
            .unwrap_or(default.stabilization),
        select,
        policies,
    }
}

impl Behavior {
    /// `behavior` with upstream's defaults filled in; `None` without one (the classic
    /// rules apply).
    pub(crate) fn from_spec(spec: Option<&HorizontalPodAutoscalerBehavior>) -> Option<Behavior> {
        let spec = spec?;
        let up = Rules {
            stabilization: SignedDuration::ZERO,
            select: Select::Max,
            policies: vec![
                policy(PolicyKind::Pods, 4, 15),
                policy(PolicyKind::Percent, 100, 15),
            ],
        };
        let down = Rules {
            stabilization: DOWNSCALE_STABILIZATION,
            select: Select::Max,
            policies: vec![policy(PolicyKind::Percent, 100, 15)],
        };
        Some(Behavior {
            up: rules(spec.scale_up.as_ref(), up),
            down: rules(spec.scale_down.as_ref(), down),
        })
    }
}

#[derive(Clone, Debug)]
struct ScaleEvent {
    change: i32,
    time: Timestamp,
    outdated: bool,
}

/// What one HPA's controller remembers between syncs (upstream keeps it in memory too).
#[derive(Debug, Default)]
pub(crate) struct History {
    recommendations: Vec<(i32, Timestamp)>,
    up_events: Vec<ScaleEvent>,
    down_events: Vec<ScaleEvent>,
}

/// A condition's reason and message.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Reason {
    pub reason: &'static str,
    pub message: &'static str,
}

const fn reason(reason: &'static str, message: &'static str) -> Reason {
    Reason { reason, message }
}

const WITHIN_RANGE: Reason = reason(
    "DesiredWithinRange",
    "the desired count is within the acceptable range",
);
const READY: Reason = reason("ReadyForNewScale", "recommended size matches current size");
const UP_STABILIZED: Reason = reason(
    "ScaleUpStabilized",
    "recent recommendations were lower than current one, applying the lowest recent recommendation",
);
const DOWN_STABILIZED: Reason = reason(
    "ScaleDownStabilized",
    "recent recommendations were higher than current one, applying the highest recent recommendation",
);
const UP_LIMIT: Reason = reason(
    "ScaleUpLimit",
    "the desired replica count is increasing faster than the maximum scale rate",
);
const TOO_MANY: Reason = reason(
    "TooManyReplicas",
    "the desired replica count is more than the maximum replica count",
);
const DOWN_LIMIT: Reason = reason(
    "ScaleDownLimit",
    "the desired replica count is decreasing faster than the maximum scale rate",
);
const TOO_FEW: Reason = reason(
    "TooFewReplicas",
    "the desired replica count is less than the minimum replica count",
);

/// The outcome of normalising: the replicas to set and the two conditions.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Normalized {
    pub replicas: i32,
    /// AbleToScale (status True) reason.
    pub able_to_scale: Reason,
    /// ScalingLimited: whether the count was limited, and why.
    pub limited: (bool, Reason),
}

fn change_in_period(events: &[ScaleEvent], period: SignedDuration, now: Timestamp) -> i32 {
    let cutoff = now - period;
    events
        .iter()
        .filter(|e| e.time > cutoff)
        .map(|e| e.change)
        .sum()
}

fn scale_up_limit(
    current: i32,
    up: &[ScaleEvent],
    down: &[ScaleEvent],
    rules: &Rules,
    now: Timestamp,
) -> i32 {
    let (mut result, pick): (i64, fn(i64, i64) -> i64) = match rules.select {
        Select::Disabled => return current,
        Select::Min => (i64::from(i32::MAX), i64::min),
        Select::Max => (i64::from(i32::MIN), i64::max),
    };
    for p in &rules.policies {
        let start = i64::from(current) - i64::from(change_in_period(up, p.period, now))
            + i64::from(change_in_period(down, p.period, now));
        let proposed = match p.kind {
            PolicyKind::Pods => start + i64::from(p.value),
            PolicyKind::Percent => {
                (start as f64 * (1.0 + f64::from(p.value) / 100.0)).ceil() as i64
            }
        };
        result = pick(result, proposed);
    }
    result.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

fn scale_down_limit(
    current: i32,
    up: &[ScaleEvent],
    down: &[ScaleEvent],
    rules: &Rules,
    now: Timestamp,
) -> i32 {
    let (mut result, pick): (i64, fn(i64, i64) -> i64) = match rules.select {
        Select::Disabled => return current,
        Select::Min => (i64::from(i32::MIN), i64::max),
        Select::Max => (i64::from(i32::MAX), i64::min),
    };
    for p in &rules.policies {
        let start = i64::from(current) - i64::from(change_in_period(up, p.period, now))
            + i64::from(change_in_period(down, p.period, now));
        let proposed = match p.kind {
            PolicyKind::Pods => start - i64::from(p.value),
            PolicyKind::Percent => (start as f64 * (1.0 - f64::from(p.value) / 100.0)) as i64,
        };
        result = pick(result, proposed);
    }
    result.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

impl History {
    /// Records `desired` (replacing one older than `keep`) for later stabilisation.
    fn record(&mut self, desired: i32, keep: SignedDuration, now: Timestamp) {
        let cutoff = now - keep;
        match self.recommendations.iter().position(|(_, t)| *t < cutoff) {
            Some(i) => self.recommendations[i] = (desired, now),
            None => self.recommendations.push((desired, now)),
        }
    }

    /// Upstream's `normalizeDesiredReplicasWithBehaviors`.
    pub(crate) fn normalize_with_behavior(
        &mut self,
        behavior: &Behavior,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        now: Timestamp,
    ) -> Normalized {
        let (up_cutoff, down_cutoff) = (
            now - behavior.up.stabilization,
            now - behavior.down.stabilization,
        );
        let (mut up_rec, mut down_rec) = (desired, desired);
        for (rec, t) in &self.recommendations {
            if *t > up_cutoff {
                up_rec = up_rec.min(*rec);
            }
            if *t > down_cutoff {
                down_rec = down_rec.max(*rec);
            }
        }
        let stabilized = current.max(up_rec).min(down_rec);
        let keep = behavior.up.stabilization.max(behavior.down.stabilization);
        self.record(desired, keep, now);
        let able_to_scale = if stabilized != desired {
            if desired >= current {
                UP_STABILIZED
            } else {
                DOWN_STABILIZED
            }
        } else {
            READY
        };
        let (replicas, why) = if stabilized > current {
            let limit = scale_up_limit(
                current,
                &self.up_events,
                &self.down_events,
                &behavior.up,
                now,
            )
            .max(current);
            let (allowed, why) = if max > limit {
                (limit, UP_LIMIT)
            } else {
                (max, TOO_MANY)
            };
            if stabilized > allowed {
                (allowed, why)
            } else {
                (stabilized, WITHIN_RANGE)
            }
        } else if stabilized < current {
            let limit = scale_down_limit(
                current,
                &self.up_events,
                &self.down_events,
                &behavior.down,
                now,
            )
            .min(current);
            let (allowed, why) = if min < limit {
                (limit, DOWN_LIMIT)
            } else {
                (min, TOO_FEW)
            };
            if stabilized < allowed {
                (allowed, why)
            } else {
                (stabilized, WITHIN_RANGE)
            }
        } else {
            (stabilized, WITHIN_RANGE)
        };
        Normalized {
            replicas,
            able_to_scale,
            limited: (replicas != stabilized, why),
        }
    }

    /// Upstream's `normalizeDesiredReplicas`, for an HPA without `behavior`.
    pub(crate) fn normalize_plain(
        &mut self,
        current: i32,
        desired: i32,
        min: i32,
        max: i32,
        now: Timestamp,
    ) -> Normalized {
        let cutoff = now - DOWNSCALE_STABILIZATION;
        let stabilized = self
            .recommendations
            .iter()
            .filter(|(_, t)| *t >= cutoff)
            .map(|(r, _)| *r)
            .fold(desired, i32::max);
        self.record(desired, DOWNSCALE_STABILIZATION, now);
        let able_to_scale = if stabilized != desired {
            DOWN_STABILIZED
        } else {
            READY
        };
        let scale_up_limit = current.saturating_mul(2).max(4);
        let (replicas, why) = if stabilized < min {
            (min, TOO_FEW)
        } else {
            let (allowed, why) = if max > scale_up_limit {
                (scale_up_limit, UP_LIMIT)
            } else {
                (max, TOO_MANY)
            };
            if stabilized > allowed {
                (allowed, why)
            } else {
                (stabilized, WITHIN_RANGE)
            }
        };
        Normalized {
            replicas,
            able_to_scale,
            limited: (replicas != stabilized, why),
        }
    }

    /// Remembers a rescale for the rate policies (upstream's `storeScaleEvent`).
    pub(crate) fn record_scale(
        &mut self,
        behavior: Option<&Behavior>,
        from: i32,
        to: i32,
        now: Timestamp,
    ) {
        let Some(behavior) = behavior else {
            return;
        };
        let (events, rules, change) = if to > from {
            (&mut self.up_events, &behavior.up, to - from)
        } else {
            (&mut self.down_events, &behavior.down, from - to)
        };
        let longest = rules
            .policies
            .iter()
            .map(|p| p.period)
            .max()
            .unwrap_or(SignedDuration::ZERO);
        let cutoff = now - longest;
        for e in events.iter_mut() {
            if e.time < cutoff {
                e.outdated = true;
            }
        }
        let event = ScaleEvent {
            change,
            time: now,
            outdated: false,
        };
        match events.iter().position(|e| e.outdated) {
            Some(i) => events[i] = event,
            None => events.push(event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::autoscaling::v2::HPAScalingPolicy;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn short_windows(up: i32, down: i32) -> Behavior {
        Behavior::from_spec(Some(&HorizontalPodAutoscalerBehavior {
            scale_up: Some(HPAScalingRules {
                stabilization_window_seconds: Some(up),
                ..Default::default()
            }),
            scale_down: Some(HPAScalingRules {
                stabilization_window_seconds: Some(down),
                ..Default::default()
            }),
        }))
        .unwrap()
    }

    #[test]
    fn defaults_are_upstreams() {
        let b = Behavior::from_spec(Some(&HorizontalPodAutoscalerBehavior::default())).unwrap();
        assert_eq!(b.up.stabilization, SignedDuration::ZERO);
        assert_eq!(b.down.stabilization, SignedDuration::from_secs(300));
        assert_eq!(b.up.policies.len(), 2);
        assert_eq!(b.down.policies, vec![policy(PolicyKind::Percent, 100, 15)]);
        assert!(Behavior::from_spec(None).is_none());
    }

    #[test]
    fn scale_up_is_limited_by_the_policies() {
        // Default up policies: max(+4 pods, +100 %) per 15 s.
        let b = short_windows(0, 0);
        let mut h = History::default();
        let n = h.normalize_with_behavior(&b, 1, 20, 1, 50, t(0));
        assert_eq!(n.replicas, 5);
        assert_eq!(n.limited, (true, UP_LIMIT));
        h.record_scale(Some(&b), 1, 5, t(0));
        // Within the same period the start is 1, so still at most 5.
        let n = h.normalize_with_behavior(&b, 5, 20, 1, 50, t(5));
        assert_eq!(n.replicas, 5);
        // A period later: max(5+4, 5*2) = 10.
        let n = h.normalize_with_behavior(&b, 5, 20, 1, 50, t(20));
        assert_eq!(n.replicas, 10);
        let n = h.normalize_with_behavior(&b, 10, 60, 1, 12, t(40));
        assert_eq!((n.replicas, n.limited), (12, (true, TOO_MANY)));
    }

    #[test]
    fn scale_down_waits_for_the_stabilization_window() {
        let b = short_windows(0, 30);
        let mut h = History::default();
        assert_eq!(h.normalize_with_behavior(&b, 4, 4, 1, 10, t(0)).replicas, 4);
        let n = h.normalize_with_behavior(&b, 4, 1, 1, 10, t(10));
        assert_eq!(n.replicas, 4);
        assert_eq!(n.able_to_scale, DOWN_STABILIZED);
        assert_eq!(
            h.normalize_with_behavior(&b, 4, 1, 1, 10, t(25)).replicas,
            4
        );
        // The recommendation of 4 is older than 30 s now.
        let n = h.normalize_with_behavior(&b, 4, 1, 1, 10, t(31));
        assert_eq!(n.replicas, 1);
        assert_eq!(n.able_to_scale, READY);
        assert_eq!(n.limited, (false, WITHIN_RANGE));
    }

    #[test]
    fn scale_down_rate_and_disabled_policies() {
        let mut b = short_windows(0, 0);
        b.down.policies = vec![policy(PolicyKind::Pods, 1, 60)];
        let mut h = History::default();
        let n = h.normalize_with_behavior(&b, 5, 1, 1, 10, t(0));
        assert_eq!((n.replicas, n.limited), (4, (true, DOWN_LIMIT)));
        h.record_scale(Some(&b), 5, 4, t(0));
        assert_eq!(
            h.normalize_with_behavior(&b, 4, 1, 1, 10, t(30)).replicas,
            4
        );
        assert_eq!(
            h.normalize_with_behavior(&b, 4, 1, 1, 10, t(61)).replicas,
            3
        );
        b.down.select = Select::Disabled;
        assert_eq!(
            h.normalize_with_behavior(&b, 3, 1, 1, 10, t(200)).replicas,
            3
        );
        let spec = HorizontalPodAutoscalerBehavior {
            scale_up: Some(HPAScalingRules {
                select_policy: Some("Min".into()),
                policies: Some(vec![
                    HPAScalingPolicy {
                        type_: "Pods".into(),
                        value: 1,
                        period_seconds: 60,
                    },
                    HPAScalingPolicy {
                        type_: "Percent".into(),
                        value: 50,
                        period_seconds: 60,
                    },
                ]),
                ..Default::default()
            }),
            scale_down: None,
        };
        let b = Behavior::from_spec(Some(&spec)).unwrap();
        let n = History::default().normalize_with_behavior(&b, 4, 10, 1, 10, t(0));
        assert_eq!(n.replicas, 5);
    }

    #[test]
    fn classic_rules_without_behavior() {
        let mut h = History::default();
        let n = h.normalize_plain(1, 10, 1, 20, t(0));
        assert_eq!((n.replicas, n.limited), (4, (true, UP_LIMIT)));
        let n = h.normalize_plain(4, 2, 1, 20, t(10));
        // The 10 of ten seconds ago holds the count up (5-minute window), then the rate.
        assert_eq!(n.able_to_scale, DOWN_STABILIZED);
        assert_eq!(n.replicas, 8);
        let n = h.normalize_plain(3, 0, 2, 20, t(400));
        assert_eq!((n.replicas, n.limited), (2, (true, TOO_FEW)));
    }
}
