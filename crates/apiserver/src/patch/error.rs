/// Why a patch could not be applied. Messages name the field (as a path like
/// `spec.containers[name=web].image`) so they can go straight into a Status response.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum PatchError {
    /// The patch document itself is malformed: wrong top-level shape, or a directive
    /// (`$patch`, `$retainKeys`, `$setElementOrder/…`, `$deleteFromPrimitiveList/…`) with a
    /// bad value.
    #[error("{path}: {message}")]
    Malformed { path: String, message: String },
    /// The patch gives a value of the wrong JSON type for a field of a known kind.
    #[error("{path}: expected {expected}, got {found}")]
    TypeMismatch {
        path: String,
        expected: String,
        found: &'static str,
    },
    /// An item of a list merged by key lacks the key.
    #[error("{path}: list item {item} does not contain declared merge key {key:?}")]
    MissingMergeKey {
        path: String,
        key: String,
        item: String,
    },
    /// Well-formed, but cannot be applied to this object (e.g. a `$retainKeys` list that
    /// contradicts the patch, or list items of mixed types).
    #[error("{path}: {message}")]
    Unprocessable { path: String, message: String },
    /// An RFC 6902 operation failed.
    #[error("JSON patch operation {index} ({op} {path}): {reason}")]
    JsonPatchFailed {
        index: usize,
        op: &'static str,
        path: String,
        reason: String,
    },
    #[error("JSON patch has {count} operations; at most {limit} are allowed")]
    TooManyOperations { count: usize, limit: usize },
}

impl PatchError {
    /// The HTTP status the Kubernetes API server answers with for this kind of failure:
    /// 400 for malformed patches and type errors (upstream's decode errors), 422 for patches
    /// that cannot be applied, 413 for oversized JSON patches.
    pub(crate) fn http_status(&self) -> u16 {
        match self {
            Self::Malformed { .. } | Self::TypeMismatch { .. } => 400,
            Self::MissingMergeKey { .. }
            | Self::Unprocessable { .. }
            | Self::JsonPatchFailed { .. } => 422,
            Self::TooManyOperations { .. } => 413,
        }
    }
}

/// The JSON type name of a value, for messages.
pub(crate) fn json_type(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
