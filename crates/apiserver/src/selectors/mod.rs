//! Label and field selectors with the semantics of Kubernetes'
//! `k8s.io/apimachinery/pkg/labels` and `pkg/fields`.
//!
//! Both parsers are total: any input string yields either a selector or a
//! [`SelectorError`] whose `Display` is the message an API server puts in a
//! 400 `Status`, worded as upstream words it so that clients and humans who
//! know Kubernetes recognise it.

mod field;
mod label;

pub use field::{
    escape_field_value, unescape_field_value, FieldOperator, FieldRequirement, FieldSelector,
};
pub use label::{LabelSelector, Operator, Requirement};

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
    use std::collections::BTreeMap;

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
            let json = serde_json::json!({
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
