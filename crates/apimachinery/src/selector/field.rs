//! Field selectors: the `fieldSelector` query string of
//! `k8s.io/apimachinery/pkg/fields`.
//!
//! The grammar is deliberately small: comma-separated `field=value`,
//! `field==value` or `field!=value` terms, ANDed. Values may contain `,`, `=`
//! and `\` only when escaped with a backslash; field names are taken verbatim
//! up to the first operator, and whether a field exists at all is the
//! resource's business ([`FieldSelector::check_supported`]).

use std::fmt;
use std::str::FromStr;

use super::SelectorError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FieldOperator {
    /// `=` or `==`, which upstream does not distinguish.
    Equals,
    NotEquals,
}

/// One ANDed term; `value` is unescaped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldRequirement {
    pub field: String,
    pub operator: FieldOperator,
    pub value: String,
}

/// A parsed field selector. The default value matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses a `fieldSelector` string. Whitespace is significant (it is part
    /// of the field or value), and empty terms such as a trailing comma are
    /// ignored, as upstream.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let mut terms = split_terms(selector);
        // Upstream sorts the raw terms so that String() is deterministic.
        terms.sort_unstable();
        let mut requirements = Vec::with_capacity(terms.len());
        for term in terms {
            if term.is_empty() {
                continue;
            }
            let Some((field, operator, raw_value)) = split_term(term) else {
                return Err(SelectorError::InvalidFieldSelector(format!(
                    "invalid selector: '{selector}'; can't understand '{term}'"
                )));
            };
            let value = unescape_field_value(raw_value)?;
            // Upstream's parse runs an identity transform that drops terms
            // with neither field nor value, so "=" selects everything.
            if field.is_empty() && value.is_empty() {
                continue;
            }
            requirements.push(FieldRequirement {
                field: field.to_owned(),
                operator,
                value,
            });
        }
        Ok(FieldSelector { requirements })
    }

    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    /// True if the selector does not restrict anything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Evaluates the selector; `get` returns a field's value for the object
    /// at hand. A field the object lacks (`None`) compares as the empty
    /// string, as upstream's `fields.Set`.
    pub fn matches(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| {
            let actual = get(&r.field).unwrap_or_default();
            match r.operator {
                FieldOperator::Equals => actual == r.value,
                FieldOperator::NotEquals => actual != r.value,
            }
        })
    }

    /// Rejects the first field not in `supported`, with the message
    /// kube-apiserver's field label conversion uses.
    pub fn check_supported(&self, supported: &[&str]) -> Result<(), SelectorError> {
        match self
            .requirements
            .iter()
            .find(|r| !supported.contains(&r.field.as_str()))
        {
            Some(r) => Err(SelectorError::UnsupportedField(r.field.clone())),
            None => Ok(()),
        }
    }

    /// The value `field` must equal for this selector to match, if one is
    /// forced; lets a server narrow a list (say by `metadata.name`) first.
    pub fn requires_exact_match(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && r.operator == FieldOperator::Equals)
            .map(|r| r.value.as_str())
    }
}

impl fmt::Display for FieldSelector {
    /// Upstream's `String()`: terms in parse order, `==` shown as `=`, values
    /// re-escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = match r.operator {
                FieldOperator::Equals => "=",
                FieldOperator::NotEquals => "!=",
            };
            write!(f, "{}{op}{}", r.field, escape_field_value(&r.value))?;
        }
        Ok(())
    }
}

impl FromStr for FieldSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Escapes `\`, `,` and `=` so that any string can be a field selector value.
pub(super) fn escape_field_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Reverses [`escape_field_value`], rejecting unknown escapes, a trailing
/// backslash, and unescaped `,` or `=`.
pub(super) fn unescape_field_value(raw: &str) -> Result<String, SelectorError> {
    let invalid = |msg: String| SelectorError::InvalidFieldSelector(msg);
    let mut out = String::with_capacity(raw.len());
    let mut escaped = false;
    for c in raw.chars() {
        if escaped {
            if !matches!(c, '\\' | ',' | '=') {
                return Err(invalid(format!(
                    "invalid field selector: invalid escape sequence: \\{c}"
                )));
            }
            out.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            // Upstream formats the rune with %v, which prints its code point
            // number (44 for ',', 61 for '='); kept for fidelity.
            ',' | '=' => {
                return Err(invalid(format!(
                    "invalid field selector: unescaped character in value: {}",
                    u32::from(c)
                )))
            }
            c => out.push(c),
        }
    }
    if escaped {
        return Err(invalid(
            "invalid field selector: invalid escape sequence: \\".to_owned(),
        ));
    }
    Ok(out)
}

/// Splits on commas that are not backslash-escaped, keeping escapes intact.
fn split_terms(selector: &str) -> Vec<&str> {
    if selector.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in selector.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            // ',' is one byte, so both bounds are on character boundaries.
            terms.push(&selector[start..i]);
            start = i + 1;
        }
    }
    terms.push(&selector[start..]);
    terms
}

/// Splits a term at its first operator. The field part gets no escaping, so
/// the first `!=`, `==` or `=` wins, with `!=` and `==` preferred over `=` at
/// the same position so that no operator character leaks into the value.
fn split_term(term: &str) -> Option<(&str, FieldOperator, &str)> {
    const OPERATORS: [(&str, FieldOperator); 3] = [
        ("!=", FieldOperator::NotEquals),
        ("==", FieldOperator::Equals),
        ("=", FieldOperator::Equals),
    ];
    term.char_indices().find_map(|(i, _)| {
        let (field, rest) = term.split_at(i);
        OPERATORS
            .iter()
            .find_map(|(op, kind)| rest.strip_prefix(op).map(|value| (field, *kind, value)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn parse(s: &str) -> FieldSelector {
        FieldSelector::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn parse_err(s: &str) -> String {
        match FieldSelector::parse(s) {
            Ok(sel) => panic!("{s:?} should not parse, got {sel:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn req(field: &str, operator: FieldOperator, value: &str) -> FieldRequirement {
        FieldRequirement {
            field: field.to_owned(),
            operator,
            value: value.to_owned(),
        }
    }

    fn lookup(fields: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |f: &str| map.get(f).cloned()
    }

    #[test]
    fn upstream_good_selectors_round_trip() {
        for (input, shown) in [
            ("", ""),
            ("a=b", "a=b"),
            ("b=c,a=d", "a=d,b=c"),
            ("a!=b", "a!=b"),
            ("a==b", "a=b"),
            ("a=\\,", "a=\\,"),
            ("a=\\\\", "a=\\\\"),
            ("a=\\=", "a=\\="),
        ] {
            let sel = parse(input);
            assert_eq!(sel.to_string(), shown, "{input:?}");
            assert_eq!(parse(shown), sel, "{input:?}");
        }
    }

    #[test]
    fn parses_terms() {
        use FieldOperator::*;
        let cases: Vec<(&str, Vec<FieldRequirement>)> = vec![
            ("", vec![]),
            (",", vec![]),
            ("a=b,", vec![req("a", Equals, "b")]),
            (",a=b,,", vec![req("a", Equals, "b")]),
            (
                "metadata.name=foo",
                vec![req("metadata.name", Equals, "foo")],
            ),
            (
                "status.phase!=Running",
                vec![req("status.phase", NotEquals, "Running")],
            ),
            ("x==y", vec![req("x", Equals, "y")]),
            ("x=", vec![req("x", Equals, "")]),
            ("x!=", vec![req("x", NotEquals, "")]),
            ("=x", vec![req("", Equals, "x")]),
            // Sorted by raw term text.
            (
                "b=1,a=2",
                vec![req("a", Equals, "2"), req("b", Equals, "1")],
            ),
            (
                "a=x,a!=y",
                vec![req("a", NotEquals, "y"), req("a", Equals, "x")],
            ),
            // Whitespace is significant.
            (" a = b ", vec![req(" a ", Equals, " b ")]),
            // Escapes.
            ("a=b\\,c", vec![req("a", Equals, "b,c")]),
            ("a=b\\=c", vec![req("a", Equals, "b=c")]),
            ("a=b\\\\", vec![req("a", Equals, "b\\")]),
            ("a=\\\\\\,", vec![req("a", Equals, "\\,")]),
            // The field part is not unescaped.
            ("a\\,b=c", vec![req("a\\,b", Equals, "c")]),
            ("a\\=b", vec![req("a\\", Equals, "b")]),
            // Anything but the operators is allowed in a field name.
            (
                "spec.containers[0].name=x",
                vec![req("spec.containers[0].name", Equals, "x")],
            ),
            ("a!b=c", vec![req("a!b", Equals, "c")]),
            ("é=日本", vec![req("é", Equals, "日本")]),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).requirements(), want.as_slice(), "{input:?}");
        }
    }

    #[test]
    fn empty_terms_select_everything() {
        // Upstream drops terms with neither field nor value.
        for s in ["=", "==", "!=", "=,=", "a=b,="] {
            let sel = parse(s);
            assert!(
                sel.requirements().iter().all(|r| !r.field.is_empty()),
                "{s:?}"
            );
        }
        assert!(parse("=").is_empty());
        assert!(parse("!=").is_empty());
        assert!(!parse("a=b,=").is_empty());
    }

    #[test]
    fn syntax_errors_match_upstream() {
        assert_eq!(
            parse_err("a"),
            "invalid selector: 'a'; can't understand 'a'"
        );
        assert_eq!(
            parse_err("x=a,b"),
            "invalid selector: 'x=a,b'; can't understand 'b'"
        );
        assert_eq!(
            parse_err("a>b"),
            "invalid selector: 'a>b'; can't understand 'a>b'"
        );
        assert_eq!(
            parse_err("a in (b)"),
            "invalid selector: 'a in (b)'; can't understand 'a in (b)'"
        );
        assert_eq!(
            parse_err("a=b=c"),
            "invalid field selector: unescaped character in value: 61"
        );
        assert_eq!(
            parse_err("a===b"),
            "invalid field selector: unescaped character in value: 61"
        );
        assert_eq!(
            parse_err("a!==b"),
            "invalid field selector: unescaped character in value: 61"
        );
        assert_eq!(
            parse_err("a=b\\"),
            "invalid field selector: invalid escape sequence: \\"
        );
        assert_eq!(
            parse_err("a=\\n"),
            "invalid field selector: invalid escape sequence: \\n"
        );
        assert_eq!(
            parse_err("a=\\é"),
            "invalid field selector: invalid escape sequence: \\é"
        );
    }

    #[test]
    fn unescape_rejects_unescaped_comma() {
        assert_eq!(
            unescape_field_value("a,b").map_err(|e| e.to_string()),
            Err("invalid field selector: unescaped character in value: 44".to_owned())
        );
    }

    #[test]
    fn escape_round_trips() {
        for v in ["", "plain", "a,b", "a=b", "a\\b", "\\,=", "=,\\\\", "日本,"] {
            let escaped = escape_field_value(v);
            assert_eq!(unescape_field_value(&escaped), Ok(v.to_owned()), "{v:?}");
            let sel = parse(&format!("f={escaped}"));
            assert_eq!(sel.requirements(), [req("f", FieldOperator::Equals, v)]);
            assert_eq!(sel.to_string(), format!("f={escaped}"));
        }
        assert_eq!(escape_field_value("a\\b,c=d"), "a\\\\b\\,c\\=d");
    }

    #[test]
    fn matching() {
        let pod = lookup(&[("metadata.name", "web-1"), ("status.phase", "Running")]);
        assert!(parse("").matches(&pod));
        assert!(parse("metadata.name=web-1").matches(&pod));
        assert!(parse("metadata.name==web-1,status.phase!=Pending").matches(&pod));
        assert!(!parse("metadata.name=web-2").matches(&pod));
        assert!(!parse("status.phase!=Running").matches(&pod));
        // An absent field compares as the empty string.
        assert!(parse("spec.nodeName=").matches(&pod));
        assert!(parse("spec.nodeName!=node-1").matches(&pod));
        assert!(!parse("spec.nodeName!=").matches(&pod));
        let odd = lookup(&[("a", "x,y=z\\")]);
        assert!(parse("a=x\\,y\\=z\\\\").matches(&odd));
    }

    #[test]
    fn check_supported_fields() {
        let supported = ["metadata.name", "metadata.namespace", "status.phase"];
        assert_eq!(
            parse("metadata.name=a,status.phase=b").check_supported(&supported),
            Ok(())
        );
        assert_eq!(parse("").check_supported(&[]), Ok(()));
        let err = parse("metadata.name=a,spec.foo=b").check_supported(&supported);
        assert_eq!(
            err,
            Err(SelectorError::UnsupportedField("spec.foo".to_owned()))
        );
        assert_eq!(
            err.map_err(|e| e.to_string()),
            Err("field label not supported: spec.foo".to_owned())
        );
        // A field written with stray whitespace is a different, unsupported field.
        assert_eq!(
            parse("metadata.name =a")
                .check_supported(&supported)
                .map_err(|e| e.to_string()),
            Err("field label not supported: metadata.name ".to_owned())
        );
        assert_eq!(
            parse("=x")
                .check_supported(&supported)
                .map_err(|e| e.to_string()),
            Err("field label not supported: ".to_owned())
        );
    }

    #[test]
    fn requires_exact_match() {
        let sel = parse("metadata.name=a,metadata.namespace!=b,x==y");
        assert_eq!(sel.requires_exact_match("metadata.name"), Some("a"));
        assert_eq!(sel.requires_exact_match("metadata.namespace"), None);
        assert_eq!(sel.requires_exact_match("x"), Some("y"));
        assert_eq!(sel.requires_exact_match("z"), None);
    }

    #[test]
    fn long_and_odd_inputs() {
        let long = format!("f={}", "v".repeat(100_000));
        assert_eq!(parse(&long).requirements()[0].value.len(), 100_000);
        let many = (0..1000)
            .map(|i| format!("f{i}=v{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse(&many).requirements().len(), 1000);
        parse_err("\\");
        assert_eq!(
            parse("\\,=a").requirements(),
            [req("\\,", FieldOperator::Equals, "a")]
        );
    }
}

/// Property tests: any requirements print (values escaped) and parse back, and
/// escaping is undone exactly.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A field name: anything but the separators `,` and `=`, and the escape `\`
    /// (field names are not unescaped); one ending in `!` would read as `!=`.
    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("metadata.name".to_owned()),
            Just("spec.nodeName".to_owned()),
            "[a-zA-Z0-9._ !/é-]{0,12}",
        ]
        .prop_filter("a field ending in ! reads as the operator !=", |f| {
            !f.ends_with('!')
        })
    }

    /// Values of every kind, most with the characters that need escaping.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-z0-9\\\\,=! .é-]{0,12}",
            1 => any::<String>(),
        ]
    }

    fn requirement() -> impl Strategy<Value = FieldRequirement> {
        (field(), any::<bool>(), value())
            .prop_filter(
                "a term with neither field nor value selects everything",
                |(f, _, v)| !(f.is_empty() && v.is_empty()),
            )
            .prop_map(|(field, equals, value)| FieldRequirement {
                field,
                operator: if equals {
                    FieldOperator::Equals
                } else {
                    FieldOperator::NotEquals
                },
                value,
            })
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn escaping_is_undone(value in value()) {
            prop_assert_eq!(unescape_field_value(&escape_field_value(&value)), Ok(value));
        }

        /// A selector prints as a string that parses back to the same requirements
        /// (parsing sorts the terms), and matches as the plain model says.
        #[test]
        fn selectors_print_and_parse_back(
            requirements in proptest::collection::vec(requirement(), 0..=5),
            present in proptest::collection::vec(any::<bool>(), 5),
        ) {
            let selector = FieldSelector { requirements: requirements.clone() };
            let text = selector.to_string();
            let parsed = match FieldSelector::parse(&text) {
                Ok(parsed) => parsed,
                Err(e) => panic!("{requirements:?} prints as {text:?}, which does not parse: {e}"),
            };
            let mut want = requirements.clone();
            let mut got = parsed.requirements().to_vec();
            want.sort();
            got.sort();
            prop_assert_eq!(&got, &want, "{:?}", text);
            // Objects whose fields hold some of the selector's values.
            let fields: BTreeMap<String, String> = requirements
                .iter()
                .zip(&present)
                .filter(|(_, present)| **present)
                .map(|(r, _)| (r.field.clone(), r.value.clone()))
                .collect();
            let get = |f: &str| fields.get(f).cloned();
            let model = requirements.iter().all(|r| {
                let actual = fields.get(&r.field).map(String::as_str).unwrap_or("");
                (actual == r.value) == (r.operator == FieldOperator::Equals)
            });
            prop_assert_eq!(selector.matches(&get), model);
            prop_assert_eq!(parsed.matches(&get), model);
        }

        /// Parsing any text returns a selector or an error, never a panic; what it
        /// accepts prints as a string that parses to the same requirements.
        #[test]
        fn parse_is_total(text in prop_oneof![any::<String>(), "[a-z\\\\,=! .-]{0,24}"]) {
            if let Ok(selector) = FieldSelector::parse(&text) {
                let printed = selector.to_string();
                let again = FieldSelector::parse(&printed).map(|s| {
                    let mut r = s.requirements().to_vec();
                    r.sort();
                    r
                });
                let mut want = selector.requirements().to_vec();
                want.sort();
                prop_assert_eq!(again, Ok(want), "{:?} prints as {:?}", text, printed);
            }
        }
    }
}
