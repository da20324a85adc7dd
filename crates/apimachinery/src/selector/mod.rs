//! Label and field selectors with the semantics of Kubernetes'
//! `k8s.io/apimachinery/pkg/labels` and `pkg/fields`.
//!
//! Both parsers are total: any input string yields either a selector or a
//! [`SelectorError`] whose `Display` is the message an API server puts in a
//! 400 `Status`, worded as upstream words it so that clients and humans who
//! know Kubernetes recognise it.

//!
//! [`matches`] and [`matches_unless_empty`] match a typed `metav1.LabelSelector`,
//! each with one of upstream's two meanings of an empty selector.

mod field;
mod label;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as TypedLabelSelector;

pub use field::FieldSelector;
pub use label::LabelSelector;
pub(crate) use label::Operator;

/// Whether `labels` satisfy `selector`, all of its `matchLabels` and
/// `matchExpressions`; an empty selector selects everything, as upstream's
/// `LabelSelectorAsSelector` (affinity terms, spread constraints, NetworkPolicy
/// peers). An operator other than In, NotIn, Exists and DoesNotExist makes the
/// selector invalid, and an invalid selector selects nothing.
pub fn matches(selector: &TypedLabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let get = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| get(k) == Some(v.as_str()))
        && selector.match_expressions.iter().flatten().all(|e| {
            Operator::of_expression(&e.operator)
                .is_some_and(|op| op.holds(get(&e.key), e.values.as_deref().unwrap_or_default()))
        })
}

/// As [`matches`], but a missing or empty selector selects nothing: what
/// controllers that own what they select (ReplicaSets, PodDisruptionBudgets) need,
/// so that one never claims every pod.
pub fn matches_unless_empty(
    selector: Option<&TypedLabelSelector>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    selector.is_some_and(|s| !is_empty(s) && matches(s, labels))
}

fn is_empty(selector: &TypedLabelSelector) -> bool {
    selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
}

/// Whether an object's `metadata.labels` (JSON) satisfy a `metav1.LabelSelector` given
/// as JSON, for the API server, which holds objects untyped. As upstream's
/// `LabelSelectorAsSelector`: `{}` selects everything, while `null` and an invalid
/// selector (a bad key, value or operator) select nothing.
pub fn matches_json(selector: &serde_json::Value, labels: &serde_json::Value) -> bool {
    LabelSelector::from_label_selector_json(selector).is_ok_and(|s| s.matches_json_labels(labels))
}

/// `selector` as a `labelSelector` query (`a=b,c in (d,e),!f`), for a list call.
/// Values are listed as the set they are, each once: the grammar cannot spell three
/// empty values (`in (,,)` does not parse, upstream's parser neither), while `in ()`
/// is the set of the empty value.
pub fn query_string(selector: &TypedLabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values: std::collections::BTreeSet<&str> =
            e.values.iter().flatten().map(String::as_str).collect();
        let values = values.into_iter().collect::<Vec<_>>().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

/// Why a selector was rejected. `Display` is the user-facing message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A `labelSelector` string, or a `metav1.LabelSelector` value, is malformed
    /// or names an invalid key, value or operator.
    #[error("{0}")]
    InvalidLabelSelector(String),
    /// A `fieldSelector` string is malformed.
    #[error("{0}")]
    InvalidFieldSelector(String),
    /// A syntactically valid field selector uses a field the resource cannot be
    /// filtered by.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use serde_json::{json, Value};

    fn expression(key: &str, operator: &str, values: &[&str]) -> TypedLabelSelector {
        TypedLabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: operator.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn selectors_render_and_match() {
        let sel = TypedLabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["a".into(), "b".into()]),
            }]),
        };
        assert_eq!(query_string(&sel), "app=web,tier in (a,b)");
        // Each value once: three empty values would print as `(,,)`, which no parser
        // accepts.
        let empties = expression("tier", "NotIn", &["", "", ""]);
        assert_eq!(query_string(&empties), "tier notin ()");
        assert!(LabelSelector::parse(&query_string(&empties)).is_ok());
        assert_eq!(
            query_string(&expression("tier", "In", &["b", "", "a", "b"])),
            "tier in (,a,b)"
        );
        let labels: BTreeMap<String, String> =
            [("app".into(), "web".into()), ("tier".into(), "b".into())].into();
        assert!(matches(&sel, Some(&labels)));
        assert!(!matches(&sel, None));
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let by_label = TypedLabelSelector {
            match_labels: Some(labels.clone()),
            ..Default::default()
        };
        assert!(matches_unless_empty(Some(&by_label), Some(&labels)));
        assert!(!matches_unless_empty(Some(&by_label), None));
        assert!(!matches_unless_empty(
            Some(&TypedLabelSelector::default()),
            Some(&labels)
        ));
        assert!(!matches_unless_empty(None, Some(&labels)));
        let by_expression = expression("app", "In", &["web", "api"]);
        assert!(matches_unless_empty(Some(&by_expression), Some(&labels)));
    }

    #[test]
    fn empty_selectors_select_nothing() {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        assert!(!matches_unless_empty(None, Some(&labels)));
        assert!(!matches_unless_empty(
            Some(&TypedLabelSelector::default()),
            Some(&labels)
        ));
        let sel = TypedLabelSelector {
            match_labels: Some(labels.clone()),
            ..Default::default()
        };
        assert!(matches_unless_empty(Some(&sel), Some(&labels)));
        assert!(!matches_unless_empty(Some(&sel), Some(&BTreeMap::new())));
        // Where an empty selector means everything.
        assert!(matches(&TypedLabelSelector::default(), Some(&labels)));
        assert!(matches(&TypedLabelSelector::default(), None));
    }

    #[test]
    fn json_selectors() {
        let labels = json!({"tier": "web", "env": "prod"});
        assert!(matches_json(&json!({}), &labels));
        assert!(matches_json(
            &json!({"matchLabels": {"tier": "web"}}),
            &labels
        ));
        assert!(!matches_json(
            &json!({"matchLabels": {"tier": "db"}}),
            &labels
        ));
        assert!(!matches_json(
            &json!({"matchLabels": {"x": "web"}}),
            &json!(null)
        ));
        let expr = |op: &str, values: Value| json!({"matchExpressions": [{"key": "env", "operator": op, "values": values}]});
        assert!(matches_json(&expr("In", json!(["dev", "prod"])), &labels));
        assert!(!matches_json(&expr("In", json!(["dev"])), &labels));
        assert!(matches_json(&expr("NotIn", json!(["dev"])), &labels));
        assert!(matches_json(&expr("NotIn", json!(["dev"])), &json!({})));
        assert!(matches_json(&expr("Exists", json!(null)), &labels));
        assert!(!matches_json(&expr("DoesNotExist", json!(null)), &labels));
        assert!(!matches_json(&expr("Gt", json!(["1"])), &labels));
    }

    #[test]
    fn expression_operators() {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let yes = |s: TypedLabelSelector| matches(&s, Some(&labels));
        assert!(yes(expression("app", "In", &["web"])));
        assert!(!yes(expression("app", "In", &["api"])));
        assert!(yes(expression("app", "NotIn", &["api"])));
        assert!(yes(expression("tier", "NotIn", &["api"])));
        assert!(!yes(expression("app", "NotIn", &["web"])));
        assert!(yes(expression("app", "Exists", &[])));
        assert!(!yes(expression("tier", "Exists", &[])));
        assert!(yes(expression("tier", "DoesNotExist", &[])));
        assert!(!yes(expression("app", "DoesNotExist", &[])));
        // Gt and Lt belong to node selectors; in a label selector they are invalid.
        let numbered = BTreeMap::from([("n".to_string(), "5".to_string())]);
        assert!(!matches(&expression("n", "Gt", &["1"]), Some(&numbered)));
        assert!(!yes(expression("app", "Equals", &["web"])));
    }

    /// xorshift64*: deterministic so a failure reproduces, and no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    // Weighted towards the characters the lexers treat specially, so random
    // strings reach deep parser states rather than failing on the first byte.
    const PIECES: &[&str] = &[
        "a",
        "b",
        "x",
        "Z",
        "0",
        "9",
        "-",
        "_",
        ".",
        "/",
        "=",
        "==",
        "!=",
        "!",
        "(",
        ")",
        ",",
        ",",
        " ",
        "\t",
        "\n",
        "\r",
        "<",
        ">",
        "in",
        "notin",
        " in ",
        " notin ",
        "\\",
        "\\,",
        "\\=",
        "\\\\",
        "é",
        "日本",
        "\u{0}",
        "\u{7f}",
        "\u{a0}",
        "🦀",
        "example.com/",
        "app",
        "1",
    ];

    fn random_string(rng: &mut Rng) -> String {
        let len = rng.below(24);
        (0..len).map(|_| PIECES[rng.below(PIECES.len())]).collect()
    }

    #[test]
    fn random_inputs_never_panic_and_round_trip() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut parsed_labels = 0;
        let mut parsed_fields = 0;
        for _ in 0..20_000 {
            let input = random_string(&mut rng);

            if let Ok(sel) = LabelSelector::parse(&input) {
                parsed_labels += 1;
                let shown = sel.to_string();
                let again = LabelSelector::parse(&shown)
                    .unwrap_or_else(|e| panic!("{input:?} -> {shown:?} does not reparse: {e}"));
                assert_eq!(again, sel, "{input:?} -> {shown:?}");
                let labels = BTreeMap::from([("a".to_string(), "1".to_string())]);
                let _ = sel.matches(&labels);
            }

            if let Ok(sel) = FieldSelector::parse(&input) {
                parsed_fields += 1;
                let shown = sel.to_string();
                let again = FieldSelector::parse(&shown)
                    .unwrap_or_else(|e| panic!("{input:?} -> {shown:?} does not reparse: {e}"));
                let mut want = sel.requirements().to_vec();
                let mut got = again.requirements().to_vec();
                want.sort();
                got.sort();
                assert_eq!(got, want, "{input:?} -> {shown:?}");
                let _ = sel.matches(&|f: &str| (f == "a").then(|| "1".to_string()));
                let _ = sel.check_supported(&["metadata.name"]);
            }

            let operator = ["In", "NotIn", "Exists", "DoesNotExist", "Gt", ""][rng.below(6)];
            let json = json!({
                "matchLabels": { random_string(&mut rng): random_string(&mut rng) },
                "matchExpressions": [{
                    "key": random_string(&mut rng),
                    "operator": operator,
                    "values": [random_string(&mut rng), random_string(&mut rng)],
                }],
            });
            if let Ok(sel) = LabelSelector::from_label_selector_json(&json) {
                let _ = sel.to_string();
                let _ = sel.matches_json_labels(&json["matchLabels"]);
            }
        }
        // Guards against the generator degenerating into inputs that all fail
        // at the first token, which would make this test vacuous.
        assert!(
            parsed_labels > 500,
            "only {parsed_labels} label selectors parsed"
        );
        assert!(
            parsed_fields > 500,
            "only {parsed_fields} field selectors parsed"
        );
    }

    #[test]
    fn error_display_is_the_status_message() {
        assert_eq!(
            SelectorError::UnsupportedField("spec.foo".into()).to_string(),
            "field label not supported: spec.foo"
        );
        assert_eq!(
            SelectorError::InvalidLabelSelector("m".into()).to_string(),
            "m"
        );
        assert_eq!(
            SelectorError::InvalidFieldSelector("m".into()).to_string(),
            "m"
        );
    }
}

/// Property tests: a `metav1.LabelSelector` means the same as JSON, as its query
/// string and as the typed matcher.
#[cfg(test)]
mod properties {
    use super::label::properties::{canonical, config, labels, pools};
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use proptest::prelude::*;
    use proptest::sample::Index;

    /// A valid typed selector over the pools: matchLabels, and expressions with the
    /// four operators `metav1.LabelSelector` allows.
    fn typed(
        keys: &[String],
        values: &[String],
        match_labels: &Option<Vec<(Index, Index)>>,
        expressions: &[(usize, Index, Vec<Index>, bool)],
    ) -> TypedLabelSelector {
        let pick = |picks: &[Index]| -> Vec<String> {
            picks.iter().map(|i| i.get(values).clone()).collect()
        };
        TypedLabelSelector {
            match_labels: match_labels
                .as_ref()
                .map(|picks| labels(keys, values, picks)),
            match_expressions: Some(
                expressions
                    .iter()
                    .map(|(op, key, picks, null_values)| {
                        let (operator, values) = match op {
                            0 => ("In", Some(pick(picks))),
                            1 => ("NotIn", Some(pick(picks))),
                            // Exists and DoesNotExist: values null or empty.
                            2 => ("Exists", (!null_values).then(Vec::new)),
                            _ => ("DoesNotExist", (!null_values).then(Vec::new)),
                        };
                        LabelSelectorRequirement {
                            key: key.get(keys).clone(),
                            operator: operator.to_owned(),
                            values,
                        }
                    })
                    .collect(),
            )
            .filter(|e: &Vec<_>| !e.is_empty()),
        }
    }

    proptest! {
        #![proptest_config(config())]

        /// The JSON form and the query string parse to the same requirements, and
        /// the JSON selector, the parsed query and the typed matcher select the same
        /// label sets.
        #[test]
        fn json_query_string_and_typed_selectors_agree(
            (keys, values) in pools(),
            match_labels in proptest::option::of(
                proptest::collection::vec((any::<Index>(), any::<Index>()), 0..=3),
            ),
            expressions in proptest::collection::vec(
                (
                    0usize..4,
                    any::<Index>(),
                    proptest::collection::vec(any::<Index>(), 1..=4),
                    any::<bool>(),
                ),
                0..=4,
            ),
            label_sets in proptest::collection::vec(
                proptest::collection::vec((any::<Index>(), any::<Index>()), 0..=4),
                1..=6,
            ),
        ) {
            let typed = typed(&keys, &values, &match_labels, &expressions);
            let json = serde_json::to_value(&typed).unwrap();
            let from_json = LabelSelector::from_label_selector_json(&json);
            let query = query_string(&typed);
            let from_query = LabelSelector::parse(&query);
            let (from_json, from_query) = match (from_json, from_query) {
                (Ok(a), Ok(b)) => (a, b),
                (a, b) => panic!("{json} gives {a:?}, its query {query:?} gives {b:?}"),
            };
            let as_sets = |s: &LabelSelector| -> Vec<_> {
                s.requirements().iter().cloned().map(canonical).collect()
            };
            prop_assert_eq!(as_sets(&from_json), as_sets(&from_query), "{} as {:?}", json, query);
            for picks in &label_sets {
                let labels = labels(&keys, &values, picks);
                let by_json = from_json.matches(&labels);
                prop_assert_eq!(from_query.matches(&labels), by_json, "{:?} on {:?}", query, labels);
                prop_assert_eq!(matches(&typed, Some(&labels)), by_json, "{} on {:?}", json, labels);
                let labels_json = serde_json::to_value(&labels).unwrap();
                prop_assert_eq!(matches_json(&json, &labels_json), by_json);
            }
        }
    }
}
