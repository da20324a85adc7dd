//! Filters and scores, as pure functions over k8s-openapi types, named and worded after
//! upstream's default plugins (NodeResourcesFit, NodeName, NodeUnschedulable,
//! NodeAffinity, TaintToleration, NodePorts, InterPodAffinity, PodTopologySpread,
//! NodeResourcesBalancedAllocation).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, Node, Pod, PodAffinityTerm, Taint, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use korvet_apimachinery::quantity::parse_milli;
use korvet_apimachinery::taints::tolerates;
use korvet_apimachinery::{node_affinity, selector};

pub(crate) const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub(crate) const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
pub(crate) const MAX_NODE_SCORE: i64 = 100;
/// Requests assumed for a container without any, when scoring (upstream's
/// `DefaultMilliCPURequest` and `DefaultMemoryRequest`).
const DEFAULT_MILLI_CPU: i128 = 100;
const DEFAULT_MEMORY_MILLI: i128 = 200 * 1024 * 1024 * 1000;

/// Why a node does not fit; `unresolvable` reasons are those preemption cannot help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reason {
    pub message: String,
    pub unresolvable: bool,
}

impl Reason {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            unresolvable: false,
        }
    }
    pub(crate) fn unresolvable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            unresolvable: true,
        }
    }
}

fn quantity(map: Option<&BTreeMap<String, Quantity>>, name: &str) -> Option<i128> {
    map?.get(name).and_then(|q| parse_milli(&q.0))
}

/// Requests of cpu, memory, ephemeral storage (milli-units) and a pod count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Resources {
    pub cpu: i128,
    pub memory: i128,
    pub ephemeral: i128,
    pub pods: i128,
}

impl Resources {
    fn add(&mut self, o: &Resources) {
        self.cpu += o.cpu;
        self.memory += o.memory;
        self.ephemeral += o.ephemeral;
        self.pods += o.pods;
    }
    fn max(&mut self, o: &Resources) {
        self.cpu = self.cpu.max(o.cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral = self.ephemeral.max(o.ephemeral);
    }
}

fn container_requests(c: &Container, non_zero: bool) -> Resources {
    let res = c.resources.as_ref();
    let get = |name: &str| {
        // A limit without a request is the request (upstream's defaulting).
        quantity(res.and_then(|r| r.requests.as_ref()), name)
            .or_else(|| quantity(res.and_then(|r| r.limits.as_ref()), name))
    };
    let mut r = Resources {
        cpu: get("cpu").unwrap_or(0),
        memory: get("memory").unwrap_or(0),
        ephemeral: get("ephemeral-storage").unwrap_or(0),
        pods: 0,
    };
    if non_zero {
        if get("cpu").is_none() {
            r.cpu = DEFAULT_MILLI_CPU;
        }
        if get("memory").is_none() {
            r.memory = DEFAULT_MEMORY_MILLI;
        }
    }
    r
}

/// A pod's effective requests: the sum of its containers (and sidecars), or the largest
/// init container if that is more, plus overhead; `pods` is 1. With `non_zero`,
/// containers without cpu or memory requests count upstream's defaults (for scoring).
pub(crate) fn pod_requests(pod: &Pod, non_zero: bool) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources {
            pods: 1,
            ..Default::default()
        };
    };
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&container_requests(c, non_zero));
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c, non_zero);
        let mut peak = sidecars;
        peak.add(&r);
        init_max.max(&peak);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r);
        }
    }
    sum.add(&sidecars);
    sum.max(&init_max);
    let overhead = spec.overhead.as_ref();
    sum.cpu += quantity(overhead, "cpu").unwrap_or(0);
    sum.memory += quantity(overhead, "memory").unwrap_or(0);
    sum.ephemeral += quantity(overhead, "ephemeral-storage").unwrap_or(0);
    sum.pods = 1;
    sum
}

/// A node with the pods assigned (or assumed) to it.
#[derive(Clone, Debug)]
pub(crate) struct NodeInfo {
    pub node: Arc<Node>,
    pub pods: Vec<Arc<Pod>>,
    pub requested: Resources,
    /// Requests with upstream's defaults for containers without any, for scoring.
    pub non_zero: Resources,
}

impl NodeInfo {
    pub(crate) fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            pods: Vec::new(),
            requested: Resources::default(),
            non_zero: Resources::default(),
        }
    }

    pub(crate) fn add_pod(&mut self, pod: Arc<Pod>) {
        self.requested.add(&pod_requests(&pod, false));
        self.non_zero.add(&pod_requests(&pod, true));
        self.pods.push(pod);
    }

    pub(crate) fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }

    pub(crate) fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.node.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    pub(crate) fn allocatable(&self) -> Resources {
        let status = self.node.status.as_ref();
        let alloc = status
            .and_then(|s| s.allocatable.as_ref())
            .or_else(|| status.and_then(|s| s.capacity.as_ref()));
        Resources {
            cpu: quantity(alloc, "cpu").unwrap_or(0),
            memory: quantity(alloc, "memory").unwrap_or(0),
            ephemeral: quantity(alloc, "ephemeral-storage").unwrap_or(0),
            pods: quantity(alloc, "pods").map(|p| p / 1000).unwrap_or(0),
        }
    }

    fn taints(&self) -> &[Taint] {
        self.node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default()
    }
}

fn pod_labels(pod: &Pod) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    pod.metadata.labels.as_ref().unwrap_or(&EMPTY)
}

fn namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

// ---------------------------------------------------------------- node affinity

/// nodeSelector and required node affinity (NodeAffinity's filter).
pub(crate) fn node_affinity_matches(pod: &Pod, node: &Node) -> bool {
    pod.spec
        .as_ref()
        .is_none_or(|spec| node_affinity::required_matches(spec, node))
}

pub(crate) fn filter_node_affinity(pod: &Pod, node: &NodeInfo) -> Result<(), Reason> {
    if node_affinity_matches(pod, &node.node) {
        Ok(())
    } else {
        Err(Reason::unresolvable(
            "node(s) didn't match Pod's node affinity/selector",
        ))
    }
}

/// Sum of the weights of the preferred node-affinity terms the node matches.
pub(crate) fn score_node_affinity(pod: &Pod, node: &NodeInfo) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|t| t.weight != 0 && node_affinity::term_matches(&t.preference, &node.node))
        .map(|t| i64::from(t.weight))
        .sum()
}

// ---------------------------------------------------------------- node name, cordon

pub(crate) fn filter_node_name(pod: &Pod, node: &NodeInfo) -> Result<(), Reason> {
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        Some(name) if !name.is_empty() && name != node.name() => Err(Reason::unresolvable(
            "node(s) didn't match the requested node name",
        )),
        _ => Ok(()),
    }
}

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

pub(crate) fn filter_node_unschedulable(pod: &Pod, node: &NodeInfo) -> Result<(), Reason> {
    let cordoned = node
        .node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let taint = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    if cordoned && !tolerations(pod).iter().any(|t| tolerates(t, &taint)) {
        return Err(Reason::unresolvable("node(s) were unschedulable"));
    }
    Ok(())
}

// ---------------------------------------------------------------- taints

pub(crate) fn filter_taints(pod: &Pod, node: &NodeInfo) -> Result<(), Reason> {
    let tols = tolerations(pod);
    match node.taints().iter().find(|taint| {
        matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
            && !tols.iter().any(|t| tolerates(t, taint))
    }) {
        Some(taint) => Err(Reason::unresolvable(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            taint.key,
            taint.value.as_deref().unwrap_or_default()
        ))),
        None => Ok(()),
    }
}

/// Untolerated PreferNoSchedule taints (fewer is better).
pub(crate) fn count_prefer_no_schedule(pod: &Pod, node: &NodeInfo) -> i64 {
    let tols: Vec<&Toleration> = tolerations(pod)
        .iter()
        .filter(|t| {
            t.effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
        })
        .collect();
    node.taints()
        .iter()
        .filter(|taint| {
            taint.effect == "PreferNoSchedule" && !tols.iter().any(|t| tolerates(t, taint))
        })
        .count() as i64
}

// ---------------------------------------------------------------- host ports

fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            let ip = p
                .host_ip
                .clone()
                .filter(|i| !i.is_empty())
                .unwrap_or("0.0.0.0".into());
            Some((p.protocol.clone().unwrap_or("TCP".into()), ip, port))
        })
        .collect()
}

pub(crate) fn filter_node_ports(pod: &Pod, node: &NodeInfo) -> Result<(), Reason> {
    let wanted = host_ports(pod);
    if wanted.is_empty() {
        return Ok(());
    }
    let used: Vec<(String, String, i32)> = node.pods.iter().flat_map(|p| host_ports(p)).collect();
    let conflict = wanted.iter().any(|(proto, ip, port)| {
        used.iter().any(|(p2, ip2, port2)| {
            proto == p2 && port == port2 && (ip == ip2 || ip == "0.0.0.0" || ip2 == "0.0.0.0")
        })
    });
    if conflict {
        Err(Reason::new(
            "node(s) didn't have free ports for the requested pod ports",
        ))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------- resources

pub(crate) fn filter_resources(req: &Resources, node: &NodeInfo) -> Result<(), Vec<Reason>> {
    let alloc = node.allocatable();
    let used = node.requested;
    let mut reasons = Vec::new();
    if used.pods + 1 > alloc.pods {
        reasons.push(Reason::new("Too many pods"));
    }
    for (name, want, have, taken) in [
        ("cpu", req.cpu, alloc.cpu, used.cpu),
        ("memory", req.memory, alloc.memory, used.memory),
        (
            "ephemeral-storage",
            req.ephemeral,
            alloc.ephemeral,
            used.ephemeral,
        ),
    ] {
        if want > 0 && want > have - taken {
            reasons.push(Reason::new(format!("Insufficient {name}")));
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

fn fractions(non_zero_req: &Resources, node: &NodeInfo) -> [(i128, i128); 2] {
    let alloc = node.allocatable();
    [
        (node.non_zero.cpu + non_zero_req.cpu, alloc.cpu),
        (node.non_zero.memory + non_zero_req.memory, alloc.memory),
    ]
}

/// LeastAllocated: the mean over cpu and memory of the free share after placing the pod.
pub(crate) fn score_least_allocated(non_zero_req: &Resources, node: &NodeInfo) -> i64 {
    let parts = fractions(non_zero_req, node);
    let sum: i128 = parts
        .iter()
        .map(|(requested, capacity)| {
            if *capacity == 0 || requested > capacity {
                0
            } else {
                (capacity - requested) * i128::from(MAX_NODE_SCORE) / capacity
            }
        })
        .sum();
    (sum / parts.len() as i128) as i64
}

/// BalancedAllocation: 100 × (1 − standard deviation of the cpu and memory shares).
pub(crate) fn score_balanced(non_zero_req: &Resources, node: &NodeInfo) -> i64 {
    let shares: Vec<f64> = fractions(non_zero_req, node)
        .iter()
        .map(|(r, c)| {
            if *c == 0 {
                1.0
            } else {
                (*r as f64 / *c as f64).min(1.0)
            }
        })
        .collect();
    let std = (shares[0] - shares[1]).abs() / 2.0;
    ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
}

// ---------------------------------------------------------------- topology spread

/// One spreading constraint with the matching pods counted per domain.
#[derive(Clone, Debug)]
pub(crate) struct Spread {
    pub key: String,
    pub max_skew: i64,
    pub self_match: i64,
    pub counts: HashMap<String, i64>,
    pub min: i64,
    /// Upstream's per-constraint weight for scoring: log(domains + 2).
    pub weight: f64,
}

fn pod_is_counted(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
}

impl Spread {
    /// Counts over the nodes the pod could go to by node affinity and that carry every
    /// key in `required_keys`.
    fn count(
        pod: &Pod,
        key: &str,
        max_skew: i64,
        selector: LabelSelector,
        min_domains: Option<i32>,
        required_keys: &[&str],
        nodes: &[NodeInfo],
    ) -> Self {
        let ns = namespace(pod);
        let mut counts: HashMap<String, i64> = HashMap::new();
        for node in nodes {
            let labels = node.labels();
            if !required_keys.iter().all(|k| labels.contains_key(*k))
                || !node_affinity_matches(pod, &node.node)
            {
                continue;
            }
            let Some(value) = labels.get(key) else {
                continue;
            };
            let n = node
                .pods
                .iter()
                .filter(|p| {
                    namespace(p) == ns
                        && pod_is_counted(p)
                        && selector::matches(&selector, Some(pod_labels(p)))
                })
                .count() as i64;
            *counts.entry(value.clone()).or_default() += n;
        }
        let mut min = counts.values().copied().min().unwrap_or(0);
        if min_domains.is_some_and(|m| (counts.len() as i64) < i64::from(m)) {
            min = 0;
        }
        let self_match = i64::from(selector::matches(&selector, Some(pod_labels(pod))));
        let weight = ((counts.len() + 2) as f64).ln();
        Self {
            key: key.to_string(),
            max_skew,
            self_match,
            counts,
            min,
            weight,
        }
    }
}

fn constraints(pod: &Pod) -> &[TopologySpreadConstraint] {
    pod.spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or_default()
}

/// The DoNotSchedule constraints, counted.
pub(crate) fn hard_spreads(pod: &Pod, nodes: &[NodeInfo]) -> Vec<Spread> {
    let hard: Vec<&TopologySpreadConstraint> = constraints(pod)
        .iter()
        .filter(|c| c.when_unsatisfiable == "DoNotSchedule")
        .collect();
    let keys: Vec<&str> = hard.iter().map(|c| c.topology_key.as_str()).collect();
    hard.iter()
        .filter_map(|c| {
            Some(Spread::count(
                pod,
                &c.topology_key,
                i64::from(c.max_skew),
                c.label_selector.clone()?,
                c.min_domains,
                &keys,
                nodes,
            ))
        })
        .collect()
}

/// The ScheduleAnyway constraints, or, for a pod without any constraint, upstream's
/// default spreading (maxSkew 3 over hosts, 5 over zones) of the pods of its owner.
pub(crate) fn soft_spreads(pod: &Pod, nodes: &[NodeInfo]) -> Vec<Spread> {
    let all = constraints(pod);
    if all.is_empty() {
        let Some(selector) = owner_selector(pod) else {
            return Vec::new();
        };
        return [(HOSTNAME_LABEL, 3), (ZONE_LABEL, 5)]
            .into_iter()
            .map(|(key, skew)| Spread::count(pod, key, skew, selector.clone(), None, &[], nodes))
            .filter(|s| !s.counts.is_empty())
            .collect();
    }
    all.iter()
        .filter(|c| c.when_unsatisfiable == "ScheduleAnyway")
        .filter_map(|c| {
            Some(Spread::count(
                pod,
                &c.topology_key,
                i64::from(c.max_skew),
                c.label_selector.clone()?,
                None,
                &[],
                nodes,
            ))
        })
        .collect()
}

/// Upstream derives the default selector from the pod's Services and controllers; here
/// it is the pod's labels when it has a controller owner (its siblings share them).
fn owner_selector(pod: &Pod) -> Option<LabelSelector> {
    let owned = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true));
    let labels = pod.metadata.labels.clone().filter(|l| !l.is_empty())?;
    owned.then(|| LabelSelector {
        match_labels: Some(labels),
        ..Default::default()
    })
}

pub(crate) fn filter_spread(spreads: &[Spread], node: &NodeInfo) -> Result<(), Reason> {
    let labels = node.labels();
    for s in spreads {
        let Some(value) = labels.get(&s.key) else {
            return Err(Reason::unresolvable(
                "node(s) didn't match pod topology spread constraints (missing required label)",
            ));
        };
        let count = s.counts.get(value).copied().unwrap_or(0);
        if count + s.self_match - s.min > s.max_skew {
            return Err(Reason::new(
                "node(s) didn't match pod topology spread constraints",
            ));
        }
    }
    Ok(())
}

/// Raw spreading score (lower is better); None for a node lacking a key.
pub(crate) fn spread_raw(spreads: &[Spread], node: &NodeInfo) -> Option<f64> {
    let labels = node.labels();
    let mut total = 0.0;
    for s in spreads {
        let value = labels.get(&s.key)?;
        let count = s.counts.get(value).copied().unwrap_or(0);
        total += count as f64 * s.weight + (s.max_skew - 1) as f64;
    }
    Some(total)
}

// ---------------------------------------------------------------- inter-pod affinity

fn term_namespaces(term: &PodAffinityTerm, owner: &Pod) -> Option<HashSet<String>> {
    // An empty namespaceSelector selects every namespace (namespace labels are not
    // consulted; a non-empty selector falls back to the listed namespaces).
    if term.namespace_selector.as_ref().is_some_and(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|m| m.is_empty())
    }) {
        return None;
    }
    let listed: HashSet<String> = term.namespaces.iter().flatten().cloned().collect();
    Some(if listed.is_empty() {
        HashSet::from([namespace(owner).to_string()])
    } else {
        listed
    })
}

fn term_matches_pod(term: &PodAffinityTerm, owner: &Pod, candidate: &Pod) -> bool {
    let Some(selector) = term.label_selector.as_ref() else {
        return false;
    };
    term_namespaces(term, owner).is_none_or(|ns| ns.contains(namespace(candidate)))
        && selector::matches(selector, Some(pod_labels(candidate)))
}

/// The topology domains, per term, that hold a matching pod.
#[derive(Clone, Debug, Default)]
pub(crate) struct Affinity {
    affinity: Vec<(String, HashSet<String>)>,
    /// No pod in the cluster matches the affinity terms, but the pod matches them
    /// itself: the first pod of a group may go anywhere.
    affinity_self_ok: bool,
    anti: Vec<(String, HashSet<String>)>,
    /// (topologyKey, value) pairs where an existing pod's anti-affinity rejects the pod.
    existing_anti: HashSet<(String, String)>,
    /// InterPodAffinity scoring: weight per (topologyKey, value), from the pod's preferred
    /// terms and existing pods' preferred (and required affinity) terms matching it.
    preferred: HashMap<(String, String), i64>,
}

/// Upstream's `hardPodAffinityWeight`: an existing pod's required affinity counts as a
/// preference of this weight for pods it matches.
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// The preferred terms of `pod` with their signed weights (anti-affinity negative).
fn preferred_terms(pod: &Pod) -> Vec<(&PodAffinityTerm, i64)> {
    let Some(a) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else {
        return Vec::new();
    };
    let affinity = a
        .pod_affinity
        .iter()
        .flat_map(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
        })
        .map(|w| (&w.pod_affinity_term, i64::from(w.weight)));
    let anti = a
        .pod_anti_affinity
        .iter()
        .flat_map(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
        })
        .map(|w| (&w.pod_affinity_term, -i64::from(w.weight)));
    affinity.chain(anti).collect()
}

fn required_terms(pod: &Pod, anti: bool) -> &[PodAffinityTerm] {
    let a = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let terms = if anti {
        a.and_then(|a| a.pod_anti_affinity.as_ref()).and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
    } else {
        a.and_then(|a| a.pod_affinity.as_ref()).and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
    };
    terms.unwrap_or_default()
}

impl Affinity {
    pub(crate) fn new(pod: &Pod, nodes: &[NodeInfo]) -> Self {
        let aff_terms = required_terms(pod, false);
        let anti_terms = required_terms(pod, true);
        let mut out = Affinity {
            affinity: aff_terms
                .iter()
                .map(|t| (t.topology_key.clone(), HashSet::new()))
                .collect(),
            anti: anti_terms
                .iter()
                .map(|t| (t.topology_key.clone(), HashSet::new()))
                .collect(),
            ..Default::default()
        };
        let mut any_affinity_match = false;
        let own_preferred = preferred_terms(pod);
        for node in nodes {
            let labels = node.labels();
            for other in &node.pods {
                if !pod_is_counted(other) {
                    continue;
                }
                for (i, t) in aff_terms.iter().enumerate() {
                    if term_matches_pod(t, pod, other) {
                        any_affinity_match = true;
                        if let Some(v) = labels.get(&t.topology_key) {
                            out.affinity[i].1.insert(v.clone());
                        }
                    }
                }
                for (i, t) in anti_terms.iter().enumerate() {
                    if term_matches_pod(t, pod, other) {
                        if let Some(v) = labels.get(&t.topology_key) {
                            out.anti[i].1.insert(v.clone());
                        }
                    }
                }
                for t in required_terms(other, true) {
                    if term_matches_pod(t, other, pod) {
                        if let Some(v) = labels.get(&t.topology_key) {
                            out.existing_anti
                                .insert((t.topology_key.clone(), v.clone()));
                        }
                    }
                }
                let theirs = preferred_terms(other).into_iter().chain(
                    required_terms(other, false)
                        .iter()
                        .map(|t| (t, HARD_POD_AFFINITY_WEIGHT)),
                );
                // Both directions: the pod's preferences about `other`, and `other`'s
                // preferences about pods like this one.
                let mine = own_preferred
                    .iter()
                    .filter(|(t, _)| term_matches_pod(t, pod, other));
                let theirs = theirs.filter(|(t, _)| term_matches_pod(t, other, pod));
                for (t, weight) in mine.copied().chain(theirs) {
                    if let Some(v) = labels.get(&t.topology_key) {
                        *out.preferred
                            .entry((t.topology_key.clone(), v.clone()))
                            .or_default() += weight;
                    }
                }
            }
        }
        out.affinity_self_ok = !aff_terms.is_empty()
            && !any_affinity_match
            && aff_terms.iter().all(|t| term_matches_pod(t, pod, pod));
        out
    }

    /// The node's raw InterPodAffinity score: the weights of the topology domains it is in.
    pub(crate) fn preferred_score(&self, node: &NodeInfo) -> i64 {
        if self.preferred.is_empty() {
            return 0;
        }
        node.labels()
            .iter()
            .filter_map(|(k, v)| self.preferred.get(&(k.clone(), v.clone())))
            .sum()
    }

    pub(crate) fn filter(&self, node: &NodeInfo) -> Result<(), Reason> {
        let labels = node.labels();
        if self
            .existing_anti
            .iter()
            .any(|(k, v)| labels.get(k) == Some(v))
        {
            return Err(Reason::new(
                "node(s) didn't satisfy existing pods anti-affinity rules",
            ));
        }
        let affinity_ok = self.affinity.iter().all(|(key, values)| {
            labels
                .get(key)
                .is_some_and(|v| self.affinity_self_ok || values.contains(v))
        });
        if !affinity_ok {
            return Err(Reason::unresolvable(
                "node(s) didn't match pod affinity rules",
            ));
        }
        if self
            .anti
            .iter()
            .any(|(key, values)| labels.get(key).is_some_and(|v| values.contains(v)))
        {
            return Err(Reason::new("node(s) didn't match pod anti-affinity rules"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- one pod, all nodes

/// What is computed once per pod and shared by every node's filters and scores.
pub(crate) struct PodContext<'a> {
    pub pod: &'a Pod,
    pub requests: Resources,
    pub non_zero: Resources,
    pub hard: Vec<Spread>,
    pub soft: Vec<Spread>,
    pub affinity: Affinity,
    pub volumes: crate::volumes::PodVolumes,
}

impl<'a> PodContext<'a> {
    pub(crate) fn new(pod: &'a Pod, nodes: &[NodeInfo]) -> Self {
        Self {
            pod,
            requests: pod_requests(pod, false),
            non_zero: pod_requests(pod, true),
            hard: hard_spreads(pod, nodes),
            soft: soft_spreads(pod, nodes),
            affinity: Affinity::new(pod, nodes),
            volumes: Default::default(),
        }
    }

    /// With what the pod's claims require (see [`crate::volumes`]).
    pub(crate) fn with_volumes(mut self, volumes: crate::volumes::PodVolumes) -> Self {
        self.volumes = volumes;
        self
    }

    /// Every filter in upstream's order, stopping at the first that fails.
    pub(crate) fn filter(&self, node: &NodeInfo) -> Result<(), Vec<Reason>> {
        let one = |r: Result<(), Reason>| r.map_err(|e| vec![e]);
        one(filter_node_unschedulable(self.pod, node))?;
        one(filter_node_name(self.pod, node))?;
        one(filter_taints(self.pod, node))?;
        one(filter_node_affinity(self.pod, node))?;
        one(filter_node_ports(self.pod, node))?;
        filter_resources(&self.requests, node)?;
        one(self.volumes.filter(node))?;
        one(filter_spread(&self.hard, node))?;
        one(self.affinity.filter(node))?;
        Ok(())
    }

    /// Weighted, normalised scores of the feasible nodes (upstream's default weights:
    /// fit 1, balanced 1, node affinity 2, taints 3, spreading 2, inter-pod affinity 2).
    pub(crate) fn score(&self, nodes: &[&NodeInfo]) -> Vec<i64> {
        let affinity: Vec<i64> = nodes
            .iter()
            .map(|n| score_node_affinity(self.pod, n))
            .collect();
        let max_affinity = affinity.iter().copied().max().unwrap_or(0);
        let taints: Vec<i64> = nodes
            .iter()
            .map(|n| count_prefer_no_schedule(self.pod, n))
            .collect();
        let max_taints = taints.iter().copied().max().unwrap_or(0);
        let spread: Vec<Option<f64>> = nodes.iter().map(|n| spread_raw(&self.soft, n)).collect();
        let pod_affinity: Vec<i64> = nodes
            .iter()
            .map(|n| self.affinity.preferred_score(n))
            .collect();
        let (min_pa, max_pa) = pod_affinity
            .iter()
            .fold((i64::MAX, i64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let known = spread.iter().flatten();
        let max_spread = known.clone().copied().fold(0.0f64, f64::max);
        let min_spread = known.copied().fold(f64::MAX, f64::min);
        nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let fit = score_least_allocated(&self.non_zero, n);
                let balanced = score_balanced(&self.non_zero, n);
                let aff = if max_affinity > 0 {
                    affinity[i] * MAX_NODE_SCORE / max_affinity
                } else {
                    0
                };
                let taint = if max_taints > 0 {
                    MAX_NODE_SCORE - taints[i] * MAX_NODE_SCORE / max_taints
                } else {
                    MAX_NODE_SCORE
                };
                let spr = if self.soft.is_empty() {
                    0
                } else {
                    match spread[i] {
                        None => 0,
                        Some(_) if max_spread == 0.0 => MAX_NODE_SCORE,
                        Some(s) => {
                            (MAX_NODE_SCORE as f64 * (max_spread + min_spread - s) / max_spread)
                                as i64
                        }
                    }
                };
                // Normalised between the lowest and highest node, as upstream.
                let pa = if max_pa > min_pa {
                    (pod_affinity[i] - min_pa) * MAX_NODE_SCORE / (max_pa - min_pa)
                } else {
                    0
                };
                fit + balanced + 2 * aff + 3 * taint + 2 * spr + 2 * pa
            })
            .collect()
    }
}

/// Upstream's FitError text: `0/3 nodes are available: 1 node(s) had untolerated taint
/// {k: v}, 2 Insufficient cpu. preemption: 0/3 nodes are available: ...`.
pub(crate) fn unschedulable_message(total: usize, per_node: &[Vec<Reason>]) -> String {
    if total == 0 {
        return "no nodes available to schedule pods".into();
    }
    let mut msg = filter_message(total, per_node);
    let unresolvable = per_node
        .iter()
        .filter(|reasons| reasons.iter().any(|r| r.unresolvable))
        .count();
    // Preemption found no node where evicting pods would help.
    let mut pre = Vec::new();
    if unresolvable > 0 {
        pre.push(format!(
            "{unresolvable} Preemption is not helpful for scheduling"
        ));
    }
    let resolvable = per_node.len() - unresolvable;
    if resolvable > 0 {
        pre.push(format!(
            "{resolvable} No preemption victims found for incoming pod"
        ));
    }
    pre.sort();
    if !pre.is_empty() {
        msg.push_str(&format!(
            " preemption: 0/{total} nodes are available: {}.",
            pre.join(", ")
        ));
    }
    msg
}

/// The filters' part of upstream's message: "0/3 nodes are available: 1 node(s) had
/// untolerated taint ..., 2 Insufficient cpu."
pub(crate) fn filter_message(total: usize, per_node: &[Vec<Reason>]) -> String {
    let mut histogram: BTreeMap<&str, usize> = BTreeMap::new();
    for reasons in per_node {
        for r in reasons {
            *histogram.entry(r.message.as_str()).or_default() += 1;
        }
    }
    let mut parts: Vec<String> = histogram.iter().map(|(m, n)| format!("{n} {m}")).collect();
    parts.sort();
    let mut msg = format!("0/{total} nodes are available");
    if !parts.is_empty() {
        msg.push_str(": ");
        msg.push_str(&parts.join(", "));
    }
    msg.push('.');
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        let mut base =
            json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": []}});
        merge(&mut base, v);
        serde_json::from_value(base).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn node(name: &str, labels: serde_json::Value, spec: serde_json::Value) -> NodeInfo {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": spec,
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "3", "ephemeral-storage": "10Gi"}},
        }))
        .unwrap();
        NodeInfo::new(Arc::new(n))
    }

    fn requests(cpu: &str, mem: &str) -> serde_json::Value {
        json!({"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}})
    }

    fn labelled(name: &str, labels: serde_json::Value, node_name: &str) -> Arc<Pod> {
        Arc::new(pod(
            json!({"metadata": {"name": name, "labels": labels}, "spec": {"nodeName": node_name}}),
        ))
    }

    #[test]
    fn requests_take_the_larger_of_containers_and_init_containers() {
        let p = pod(json!({"spec": {
            "containers": [requests("100m", "100Mi"), requests("200m", "100Mi")],
            "initContainers": [requests("500m", "10Mi"), {"name": "l", "resources": {"limits": {"cpu": "50m"}}}],
            "overhead": {"cpu": "10m"},
        }}));
        let r = pod_requests(&p, false);
        assert_eq!(r.cpu, 510);
        assert_eq!(r.memory, 200 * (1 << 20) * 1000);
        assert_eq!(r.pods, 1);
        // A sidecar runs beside later init containers and the app containers.
        let p = pod(json!({"spec": {
            "containers": [requests("100m", "0")],
            "initContainers": [
                {"name": "s", "restartPolicy": "Always", "resources": {"requests": {"cpu": "300m"}}},
                requests("250m", "0"),
            ],
        }}));
        assert_eq!(pod_requests(&p, false).cpu, 550);
        let empty = pod(json!({"spec": {"containers": [{"name": "c"}]}}));
        assert_eq!(pod_requests(&empty, false).cpu, 0);
        assert_eq!(pod_requests(&empty, true).cpu, 100);
    }

    #[test]
    fn resources_fit_counts_assigned_pods() {
        let mut n = node("n", json!({}), json!({}));
        n.add_pod(Arc::new(pod(
            json!({"spec": {"containers": [requests("1500m", "1Gi")]}}),
        )));
        let fits = pod_requests(
            &pod(json!({"spec": {"containers": [requests("500m", "1Gi")]}})),
            false,
        );
        assert!(filter_resources(&fits, &n).is_ok());
        let big = pod_requests(
            &pod(json!({"spec": {"containers": [requests("600m", "4Gi")]}})),
            false,
        );
        let reasons = filter_resources(&big, &n).unwrap_err();
        let msgs: Vec<&str> = reasons.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(msgs, ["Insufficient cpu", "Insufficient memory"]);
        n.add_pod(Arc::new(pod(json!({}))));
        n.add_pod(Arc::new(pod(json!({}))));
        let reasons = filter_resources(&pod_requests(&pod(json!({})), false), &n).unwrap_err();
        assert_eq!(reasons[0].message, "Too many pods");
    }

    #[test]
    fn node_name_and_unschedulable() {
        let n = node("a", json!({}), json!({"unschedulable": true}));
        let p = pod(json!({"spec": {"nodeName": "b"}}));
        assert!(filter_node_name(&p, &n)
            .unwrap_err()
            .message
            .contains("requested node name"));
        assert!(filter_node_name(&pod(json!({"spec": {"nodeName": "a"}})), &n).is_ok());
        assert_eq!(
            filter_node_unschedulable(&pod(json!({})), &n)
                .unwrap_err()
                .message,
            "node(s) were unschedulable"
        );
        let tolerant = pod(
            json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}}),
        );
        assert!(filter_node_unschedulable(&tolerant, &n).is_ok());
    }

    #[test]
    fn node_selector_and_affinity_operators() {
        let n = node(
            "n1",
            json!({"zone": "a", "gpu": "4", "disk": "ssd"}),
            json!({}),
        );
        let check =
            |spec: serde_json::Value| filter_node_affinity(&pod(json!({"spec": spec})), &n).is_ok();
        assert!(check(json!({"nodeSelector": {"zone": "a"}})));
        assert!(!check(json!({"nodeSelector": {"zone": "b"}})));
        let req = |exprs: serde_json::Value| json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": exprs}]}}}});
        assert!(check(req(
            json!([{"key": "zone", "operator": "In", "values": ["a", "b"]}])
        )));
        assert!(!check(req(
            json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}])
        )));
        assert!(check(req(json!([{"key": "disk", "operator": "Exists"}]))));
        assert!(!check(req(
            json!([{"key": "disk", "operator": "DoesNotExist"}])
        )));
        assert!(check(req(
            json!([{"key": "gpu", "operator": "Gt", "values": ["3"]}])
        )));
        assert!(!check(req(
            json!([{"key": "gpu", "operator": "Lt", "values": ["3"]}])
        )));
        let fields = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]},
        ]}}}});
        assert!(check(fields), "terms are ORed");
        let p = pod(
            json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 5, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
                {"weight": 7, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}},
            ]}}}}),
        );
        assert_eq!(score_node_affinity(&p, &n), 5);
    }

    #[test]
    fn taints_and_tolerations() {
        let n = node(
            "n",
            json!({}),
            json!({"taints": [
                {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
                {"key": "soft", "value": "x", "effect": "PreferNoSchedule"},
            ]}),
        );
        assert_eq!(
            filter_taints(&pod(json!({})), &n).unwrap_err().message,
            "node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }"
        );
        let tol = pod(
            json!({"spec": {"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]}}),
        );
        assert!(filter_taints(&tol, &n).is_ok());
        assert_eq!(count_prefer_no_schedule(&tol, &n), 1);
        let all = pod(json!({"spec": {"tolerations": [{"operator": "Exists"}]}}));
        assert!(filter_taints(&all, &n).is_ok());
        assert_eq!(count_prefer_no_schedule(&all, &n), 0);
        let wrong_value = pod(json!({"spec": {"tolerations": [{"key": "soft", "value": "y"}]}}));
        assert_eq!(count_prefer_no_schedule(&wrong_value, &n), 1);
    }

    #[test]
    fn host_ports_conflict() {
        let mut n = node("n", json!({}), json!({}));
        let with_port = |port: i32, ip: Option<&str>| {
            pod(
                json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": port, "hostIP": ip}]}]}}),
            )
        };
        n.add_pod(Arc::new(with_port(8080, Some("10.0.0.1"))));
        assert!(filter_node_ports(&with_port(8080, None), &n).is_err());
        assert!(filter_node_ports(&with_port(8080, Some("10.0.0.2")), &n).is_ok());
        assert!(filter_node_ports(&with_port(9090, None), &n).is_ok());
    }

    #[test]
    fn preferred_pod_affinity_scores_towards_and_away_from_pods() {
        let host = |n: &str| json!({"kubernetes.io/hostname": n});
        let mut a = node("a", host("a"), json!({}));
        let b = node("b", host("b"), json!({}));
        a.add_pod(labelled("cache", json!({"app": "cache"}), "a"));
        let nodes = vec![a, b];
        let term = json!({"weight": 100, "podAffinityTerm": {
            "labelSelector": {"matchLabels": {"app": "cache"}},
            "topologyKey": "kubernetes.io/hostname"}});
        let near = pod(json!({"spec": {"affinity": {"podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [term.clone()]}}}}));
        let far = pod(json!({"spec": {"affinity": {"podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [term]}}}}));
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        let near_scores = PodContext::new(&near, &nodes).score(&refs);
        assert!(near_scores[0] > near_scores[1], "{near_scores:?}");
        let far_scores = PodContext::new(&far, &nodes).score(&refs);
        assert!(far_scores[0] < far_scores[1], "{far_scores:?}");
    }

    #[test]
    fn inter_pod_affinity_and_anti_affinity() {
        let mut a = node("a", json!({"zone": "z1"}), json!({}));
        let b = node("b", json!({"zone": "z2"}), json!({}));
        a.add_pod(labelled("db", json!({"app": "db"}), "a"));
        let nodes = vec![a, b];
        let term =
            json!([{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]);
        let near = pod(
            json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term}}}}),
        );
        let aff = Affinity::new(&near, &nodes);
        assert!(aff.filter(&nodes[0]).is_ok());
        assert_eq!(
            aff.filter(&nodes[1]).unwrap_err().message,
            "node(s) didn't match pod affinity rules"
        );
        let far = pod(
            json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term}}}}),
        );
        let anti = Affinity::new(&far, &nodes);
        assert_eq!(
            anti.filter(&nodes[0]).unwrap_err().message,
            "node(s) didn't match pod anti-affinity rules"
        );
        assert!(anti.filter(&nodes[1]).is_ok());
        // The first pod of a group that must be near its own kind may go anywhere.
        let self_term =
            json!([{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}]);
        let first = pod(
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": self_term}}}}),
        );
        assert!(Affinity::new(&first, &nodes).filter(&nodes[1]).is_ok());
        // An existing pod's anti-affinity keeps matching pods out of its zone.
        let mut c = node("c", json!({"zone": "z1"}), json!({}));
        c.add_pod(Arc::new(pod(json!({"metadata": {"name": "lonely"}, "spec": {"nodeName": "c", "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}]}}}}))));
        let nodes = vec![
            c,
            node("d", json!({"zone": "z2"}), json!({})),
            node("e", json!({"zone": "z1"}), json!({})),
        ];
        let web = pod(json!({"metadata": {"labels": {"app": "web"}}}));
        let aff = Affinity::new(&web, &nodes);
        assert_eq!(
            aff.filter(&nodes[2]).unwrap_err().message,
            "node(s) didn't satisfy existing pods anti-affinity rules"
        );
        assert!(aff.filter(&nodes[1]).is_ok());
    }

    #[test]
    fn topology_spread_do_not_schedule() {
        let mut a = node("a", json!({"zone": "z1"}), json!({}));
        let b = node("b", json!({"zone": "z2"}), json!({}));
        let c = node("c", json!({}), json!({}));
        a.add_pod(labelled("w1", json!({"app": "w"}), "a"));
        let nodes = vec![a, b, c];
        let p = pod(
            json!({"metadata": {"labels": {"app": "w"}}, "spec": {"topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "w"}}},
            ]}}),
        );
        let spreads = hard_spreads(&p, &nodes);
        assert_eq!(
            filter_spread(&spreads, &nodes[0]).unwrap_err().message,
            "node(s) didn't match pod topology spread constraints"
        );
        assert!(filter_spread(&spreads, &nodes[1]).is_ok());
        assert!(filter_spread(&spreads, &nodes[2])
            .unwrap_err()
            .message
            .contains("missing required label"));
    }

    #[test]
    fn scores_prefer_empty_balanced_spread_nodes() {
        let mut busy = node(
            "busy",
            json!({"kubernetes.io/hostname": "busy", ZONE_LABEL: "z1"}),
            json!({}),
        );
        let idle = node(
            "idle",
            json!({"kubernetes.io/hostname": "idle", ZONE_LABEL: "z2"}),
            json!({}),
        );
        busy.add_pod(Arc::new(pod(
            json!({"spec": {"nodeName": "busy", "containers": [requests("1", "2Gi")]}}),
        )));
        let p = pod(json!({"spec": {"containers": [requests("100m", "100Mi")]}}));
        let req = pod_requests(&p, true);
        assert!(score_least_allocated(&req, &idle) > score_least_allocated(&req, &busy));
        // 1 cpu of 2 and 3 of 4 Gi memory are less balanced than 0.1 of each.
        let mut skewed = node("s", json!({}), json!({}));
        skewed.add_pod(Arc::new(pod(
            json!({"spec": {"containers": [requests("100m", "3Gi")]}}),
        )));
        assert!(score_balanced(&req, &idle) > score_balanced(&req, &skewed));
        // Default spreading: siblings (same labels, a controller owner) avoid each other.
        let owned = json!({"labels": {"app": "r"}, "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "uid": "u", "controller": true}]});
        let mut sibling = pod(json!({"metadata": owned.clone(), "spec": {"nodeName": "idle"}}));
        sibling.metadata.name = Some("sib".into());
        let mut idle2 = idle.clone();
        idle2.add_pod(Arc::new(sibling));
        let nodes = vec![busy.clone(), idle2];
        let me = pod(json!({"metadata": owned}));
        let ctx = PodContext::new(&me, &nodes);
        assert_eq!(ctx.soft.len(), 2);
        assert!(spread_raw(&ctx.soft, &nodes[0]) < spread_raw(&ctx.soft, &nodes[1]));
        let scores = ctx.score(&nodes.iter().collect::<Vec<_>>());
        assert!(scores[0] > scores[1], "{scores:?}");
        // PreferNoSchedule taints lower a node's score.
        let tainted = node(
            "t",
            json!({}),
            json!({"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}),
        );
        let plain = node("u", json!({}), json!({}));
        let p = pod(json!({}));
        let ctx = PodContext::new(&p, &[]);
        let scores = ctx.score(&[&tainted, &plain]);
        assert!(scores[1] > scores[0]);
    }

    #[test]
    fn summary_message_matches_upstream() {
        let taint = vec![Reason::unresolvable(
            "node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }",
        )];
        let cpu = vec![Reason::new("Insufficient cpu")];
        let msg = unschedulable_message(3, &[taint, cpu.clone(), cpu]);
        assert_eq!(
            msg,
            "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu. \
             preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
        );
        assert_eq!(
            unschedulable_message(0, &[]),
            "no nodes available to schedule pods"
        );
    }
}
