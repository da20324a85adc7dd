//! Fuzz entry points for this crate's parsers of untrusted input (quantities, label and
//! field selectors), driven by `crates/fuzz`. Each takes arbitrary bytes, must never
//! panic, and asserts the round trips the parser promises, so a panic here is a defect
//! of the parser, never of the input.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as TypedLabelSelector;
use serde_json::Value;

use crate::quantity;
use crate::selector::{self, FieldSelector, LabelSelector};

/// Quantities: parsing never panics, and the canonical form of every value parses back
/// to that value, for the parsed value and for an arbitrary one taken from the bytes.
pub fn fuzz_quantity(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(milli) = quantity::parse_milli(&text) {
        assert_canonical_round_trip(milli);
    }
    let _ = quantity::cpu_millis(&text);
    let _ = quantity::whole_units(&text);
    let _ = quantity::as_f64(&text);
    if let Some(bytes) = data.get(..16) {
        let mut raw = [0u8; 16];
        raw.copy_from_slice(bytes);
        let milli = i128::from_le_bytes(raw);
        // i128::MIN has no positive counterpart, so no quantity text names it.
        if milli != i128::MIN {
            assert_canonical_round_trip(milli);
        }
        // The realistic range as well: random 128-bit values are mostly huge.
        assert_canonical_round_trip(milli % 1_000_000_000_000_000_000_000);
    }
}

fn assert_canonical_round_trip(milli: i128) {
    let text = quantity::format_decimal(milli);
    assert_eq!(
        quantity::parse_milli(&text),
        Some(milli),
        "{milli} is formatted as {text:?}, which does not parse back"
    );
}

/// Label selectors in the query string syntax and as `metav1.LabelSelector` JSON: the
/// canonical string parses back to the same selector, and the typed matcher agrees with
/// the JSON one on every valid selector.
pub fn fuzz_label_selector(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let labels = labels_from(&text);
    if let Ok(sel) = LabelSelector::parse(&text) {
        let shown = sel.to_string();
        match LabelSelector::parse(&shown) {
            Ok(again) => assert_eq!(again, sel, "{text:?} is shown as {shown:?}"),
            Err(e) => panic!("{text:?} is shown as {shown:?}, which does not parse: {e}"),
        }
        let _ = sel.matches(&labels);
        let _ = sel.requires_exact_match("app");
    }
    let Ok(json) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let labels_json = serde_json::to_value(&labels).unwrap_or(Value::Null);
    let Ok(sel) = LabelSelector::from_label_selector_json(&json) else {
        return;
    };
    let _ = sel.to_string();
    let by_json = sel.matches_json_labels(&labels_json);
    assert_eq!(by_json, selector::matches_json(&json, &labels_json));
    if let Ok(typed) = serde_json::from_value::<TypedLabelSelector>(json.clone()) {
        assert_eq!(
            selector::matches(&typed, Some(&labels)),
            by_json,
            "the typed and the JSON matchers disagree on {json} and {labels:?}"
        );
        // The query string of a valid selector selects what the selector selects.
        let query = selector::query_string(&typed);
        match LabelSelector::parse(&query) {
            Ok(parsed) => assert_eq!(
                parsed.matches(&labels),
                by_json,
                "{json} as the query {query:?} selects differently on {labels:?}"
            ),
            Err(e) => panic!("{json} as the query {query:?} does not parse: {e}"),
        }
    }
}

/// Field selectors: the canonical string parses back to the same requirements.
pub fn fuzz_field_selector(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(sel) = FieldSelector::parse(&text) else {
        return;
    };
    let shown = sel.to_string();
    match FieldSelector::parse(&shown) {
        Ok(again) => {
            let mut want = sel.requirements().to_vec();
            let mut got = again.requirements().to_vec();
            want.sort();
            got.sort();
            assert_eq!(got, want, "{text:?} is shown as {shown:?}");
        }
        Err(e) => panic!("{text:?} is shown as {shown:?}, which does not parse: {e}"),
    }
    let fields = labels_from(&text);
    let _ = sel.matches(&|f: &str| fields.get(f).cloned());
    let _ = sel.check_supported(&["metadata.name", "metadata.namespace"]);
    let _ = sel.requires_exact_match("metadata.name");
}

/// Labels to match against, taken from the input itself so that matches happen: each
/// `k=v` pair between commas and spaces.
fn labels_from(text: &str) -> BTreeMap<String, String> {
    text.split([',', ' ', '(', ')'])
        .filter_map(|term| term.split_once('='))
        .map(|(k, v)| (k.trim_matches('!').to_string(), v.to_string()))
        .collect()
}
