//! Taints and tolerations.

use k8s_openapi::api::core::v1::{Taint, Toleration};

/// Whether `toleration` tolerates `taint` (upstream's `Toleration.ToleratesTaint`): an
/// empty effect matches every effect, an empty key with `Exists` every taint, and
/// `Equal` (the default operator) needs the same key and value.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    let operator = toleration.operator.as_deref().unwrap_or("Equal");
    if key.is_empty() {
        // Validation refuses an empty key with `Equal`; it tolerates nothing.
        return operator == "Exists";
    }
    if key != taint.key {
        return false;
    }
    match operator {
        "Exists" => true,
        "Equal" | "" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// Whether any of `tolerations` tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            ..Default::default()
        }
    }

    fn toleration(
        key: &str,
        operator: Option<&str>,
        value: Option<&str>,
        effect: Option<&str>,
    ) -> Toleration {
        Toleration {
            key: (!key.is_empty()).then(|| key.into()),
            operator: operator.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn tolerations_match_as_upstream() {
        let gpu = taint("gpu", Some("yes"), "NoSchedule");
        assert!(tolerates(&toleration("gpu", None, Some("yes"), None), &gpu));
        assert!(tolerates(
            &toleration("gpu", Some("Equal"), Some("yes"), Some("NoSchedule")),
            &gpu
        ));
        assert!(!tolerates(&toleration("gpu", None, Some("no"), None), &gpu));
        assert!(!tolerates(
            &toleration("gpu", None, Some("yes"), Some("NoExecute")),
            &gpu
        ));
        assert!(tolerates(
            &toleration("gpu", Some("Exists"), None, None),
            &gpu
        ));
        assert!(!tolerates(
            &toleration("cpu", Some("Exists"), None, None),
            &gpu
        ));
        assert!(tolerates(&toleration("", Some("Exists"), None, None), &gpu));
        assert!(!tolerates(&toleration("", None, None, None), &gpu));
        assert!(!tolerates(
            &toleration("gpu", Some("Gt"), Some("yes"), None),
            &gpu
        ));
        assert!(tolerated(
            &[
                toleration("x", None, None, None),
                toleration("gpu", Some("Exists"), None, None)
            ],
            &gpu
        ));
    }
}
