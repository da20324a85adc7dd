//! The three PATCH formats of the Kubernetes API: JSON patch, JSON merge patch and
//! strategic merge patch (the default of `kubectl apply`, `edit` and `patch`).
//!
//! The server only applies patches; computing them (two- and three-way diffs) is kubectl's
//! job. Server-side apply (`application/apply-patch+yaml`) is a different mechanism and is
//! not handled here.

mod error;
pub(crate) mod json;
pub(crate) mod merge;
pub(crate) mod schema;
pub(crate) mod strategic;

#[cfg(test)]
use serde_json::Value;

pub(crate) use error::PatchError;
pub(crate) use schema::{PatchSchema, SchemaNode};

/// A PATCH request body format, named by its `Content-Type`.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    /// RFC 6902, `application/json-patch+json`.
    Json,
    /// RFC 7396, `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    StrategicMerge,
}

#[cfg(test)]
impl PatchType {
    /// Parses a `Content-Type` header value, ignoring parameters such as `charset`.
    pub(crate) fn from_content_type(content_type: &str) -> Option<Self> {
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        match media_type.to_ascii_lowercase().as_str() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            _ => None,
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json-patch+json",
            Self::Merge => "application/merge-patch+json",
            Self::StrategicMerge => "application/strategic-merge-patch+json",
        }
    }
}

/// Applies a patch of any supported type. `schema` matters only to strategic merge patch;
/// without one (custom resources) it behaves as JSON merge patch. Upstream refuses
/// strategic merge patch for custom resources with 415, so a server that wants the same
/// must check before calling.
#[cfg(test)]
pub(crate) fn apply(
    patch_type: PatchType,
    original: &Value,
    patch: &Value,
    schema: Option<SchemaNode<'_>>,
) -> Result<Value, PatchError> {
    match patch_type {
        PatchType::Json => json::apply(original, patch),
        PatchType::Merge => Ok(merge::apply(original, patch)),
        PatchType::StrategicMerge => strategic::apply(original, patch, schema),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/strategic-merge-patch+json; charset=utf-8"),
            Some(PatchType::StrategicMerge)
        );
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("Application/JSON-Patch+JSON"),
            Some(PatchType::Json)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            None
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
        for t in [PatchType::Json, PatchType::Merge, PatchType::StrategicMerge] {
            assert_eq!(PatchType::from_content_type(t.content_type()), Some(t));
        }
    }

    #[test]
    fn dispatch() {
        let pod = PatchSchema::builtin().for_kind("", "v1", "Pod");
        let original = json!({"spec": {"containers": [{"name": "a", "image": "x"}]}});
        let smp = json!({"spec": {"containers": [{"name": "b", "image": "y"}]}});
        let merged = apply(PatchType::StrategicMerge, &original, &smp, pod).expect("smp");
        assert_eq!(
            merged["spec"]["containers"].as_array().map(Vec::len),
            Some(2)
        );
        let replaced = apply(PatchType::Merge, &original, &smp, pod).expect("merge");
        assert_eq!(replaced, smp);
        let ops = json!([{"op": "replace", "path": "/spec/containers/0/image", "value": "z"}]);
        let patched = apply(PatchType::Json, &original, &ops, None).expect("json");
        assert_eq!(patched["spec"]["containers"][0]["image"], json!("z"));
    }
}
