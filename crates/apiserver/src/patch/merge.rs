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
