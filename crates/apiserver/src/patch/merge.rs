//! JSON merge patch (RFC 7396, `application/merge-patch+json`).

use serde_json::Value;

/// Applies a JSON merge patch. Cannot fail: any JSON value is a valid merge patch (a
/// non-object patch simply replaces the document).
pub(crate) fn apply(original: &Value, patch: &Value) -> Value {
    let mut doc = original.clone();
    json_patch::merge(&mut doc, patch);
    doc
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::apply;

    /// The examples of RFC 7396, appendix A.
    #[test]
    fn rfc7396_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (original, patch, expected) in cases {
            assert_eq!(apply(&original, &patch), expected, "{original} + {patch}");
        }
    }

    #[test]
    fn labels_merge_and_lists_replace() {
        let original = json!({
            "metadata": {"name": "w", "labels": {"app": "w", "tier": "db"}},
            "spec": {"items": [1, 2, 3]}
        });
        let patch =
            json!({"metadata": {"labels": {"tier": null, "team": "x"}}, "spec": {"items": [4]}});
        assert_eq!(
            apply(&original, &patch),
            json!({
                "metadata": {"name": "w", "labels": {"app": "w", "team": "x"}},
                "spec": {"items": [4]}
            })
        );
    }
}

/// Property tests: a merge patch computed as the difference of two documents turns
/// the first into the second, and applying a patch twice changes nothing more.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    use super::apply;

    fn config() -> ProptestConfig {
        ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// JSON without nulls (a null in a merge patch means "remove"), over few keys so
    /// that documents share them.
    fn json(nulls: bool) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z]{0,3}".prop_map(Value::from),
            Just(Value::Null),
        ]
        .prop_filter("no nulls", move |v| nulls || !v.is_null());
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                proptest::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn object(nulls: bool) -> impl Strategy<Value = Value> {
        proptest::collection::btree_map("[a-d]", json(nulls), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    /// The merge patch from `a` to `b`: removed members as null, changed ones as
    /// their new value, or as the patch between them when both are objects.
    fn diff(a: &Value, b: &Value) -> Value {
        let (Value::Object(a), Value::Object(b)) = (a, b) else {
            return b.clone();
        };
        let mut patch = Map::new();
        for key in a.keys().filter(|k| !b.contains_key(*k)) {
            patch.insert(key.clone(), Value::Null);
        }
        for (key, new) in b {
            match a.get(key) {
                Some(old) if old == new => {}
                Some(old) => {
                    patch.insert(key.clone(), diff(old, new));
                }
                None => {
                    patch.insert(key.clone(), new.clone());
                }
            }
        }
        Value::Object(patch)
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn the_difference_patches_a_into_b(a in object(false), b in object(false)) {
            let patch = diff(&a, &b);
            prop_assert_eq!(apply(&a, &patch), b.clone(), "{} + {}", a, patch);
            // The patch of a document to itself is empty, and changes nothing.
            prop_assert_eq!(diff(&b, &b), Value::Object(Map::new()));
        }

        #[test]
        fn patches_are_idempotent(doc in json(true), patch in json(true)) {
            let once = apply(&doc, &patch);
            prop_assert_eq!(apply(&once, &patch), once);
        }
    }
}
