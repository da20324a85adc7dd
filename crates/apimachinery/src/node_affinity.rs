//! Node selectors and required node affinity (upstream's `component-helpers`
//! `nodeaffinity`): what the scheduler filters nodes by and what the DaemonSet
//! controller decides a node should run with.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec};

use crate::selector::Operator;

/// Whether `value` (absent: `None`) satisfies a node selector requirement. Unlike a
/// label selector's, these may compare integers (`Gt`, `Lt`).
fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let operator = match r.operator.as_str() {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        "Gt" => Operator::GreaterThan,
        "Lt" => Operator::LessThan,
        _ => return false,
    };
    operator.holds(value, r.values.as_deref().unwrap_or_default())
}

/// A node selector term: all its expressions (over labels) and fields hold; an empty
/// term matches no node.
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    let name = node.metadata.name.as_deref().unwrap_or_default();
    exprs.iter().all(|r| {
        let value = labels.and_then(|l| l.get(&r.key)).map(String::as_str);
        requirement_matches(r, value)
    }) && fields.iter().all(|r| {
        // Only metadata.name is a supported field, with In and NotIn.
        r.key == "metadata.name"
            && matches!(r.operator.as_str(), "In" | "NotIn")
            && requirement_matches(r, Some(name))
    })
}

/// Whether a pod of `spec` may run on `node` by its `nodeSelector` and required node
/// affinity (upstream's `GetRequiredNodeAffinity(pod).Match(node)`).
pub fn required_matches(spec: &PodSpec, node: &Node) -> bool {
    static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
    let selected = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    selected
        && spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_none_or(|required| {
                required
                    .node_selector_terms
                    .iter()
                    .any(|t| term_matches(t, node))
            })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> Node {
        serde_json::from_value(json!({"metadata": {
            "name": "n1",
            "labels": {"zone": "a", "gpu": "4", "disk": "ssd"},
        }}))
        .unwrap_or_default()
    }

    fn term(value: serde_json::Value) -> NodeSelectorTerm {
        serde_json::from_value(value).unwrap_or_default()
    }

    #[test]
    fn terms_match_labels_and_the_name() {
        let n = node();
        let expr = |e: serde_json::Value| term_matches(&term(json!({"matchExpressions": [e]})), &n);
        assert!(expr(
            json!({"key": "zone", "operator": "In", "values": ["a", "b"]})
        ));
        assert!(!expr(
            json!({"key": "zone", "operator": "NotIn", "values": ["a"]})
        ));
        assert!(expr(json!({"key": "disk", "operator": "Exists"})));
        assert!(!expr(json!({"key": "disk", "operator": "DoesNotExist"})));
        assert!(expr(
            json!({"key": "gpu", "operator": "Gt", "values": ["3"]})
        ));
        assert!(!expr(
            json!({"key": "gpu", "operator": "Lt", "values": ["3"]})
        ));
        assert!(!expr(
            json!({"key": "zone", "operator": "Gt", "values": ["3"]})
        ));
        let field = |f: serde_json::Value| term_matches(&term(json!({"matchFields": [f]})), &n);
        assert!(field(
            json!({"key": "metadata.name", "operator": "In", "values": ["n1"]})
        ));
        assert!(!field(
            json!({"key": "metadata.name", "operator": "NotIn", "values": ["n1"]})
        ));
        assert!(!field(
            json!({"key": "metadata.name", "operator": "Exists"})
        ));
        assert!(!field(
            json!({"key": "spec.x", "operator": "In", "values": ["n1"]})
        ));
        assert!(!term_matches(&term(json!({})), &n));
    }

    #[test]
    fn required_affinity_and_node_selector() {
        let n = node();
        let spec =
            |s: serde_json::Value| -> PodSpec { serde_json::from_value(s).unwrap_or_default() };
        assert!(required_matches(&spec(json!({"containers": []})), &n));
        assert!(required_matches(
            &spec(json!({"containers": [], "nodeSelector": {"zone": "a"}})),
            &n
        ));
        assert!(!required_matches(
            &spec(json!({"containers": [], "nodeSelector": {"zone": "b"}})),
            &n
        ));
        let affinity = |terms: serde_json::Value| {
            spec(json!({"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}))
        };
        assert!(required_matches(
            &affinity(json!([
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
            ])),
            &n
        ));
        assert!(!required_matches(&affinity(json!([])), &n));
    }
}
