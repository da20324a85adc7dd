//! Errors: the distribution spec's error codes, and the library's own.

use http::StatusCode;

/// An error the registry answers with, as `{"errors":[{"code","message","detail"}]}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub detail: serde_json::Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: serde_json::Value::Null,
        }
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> ApiError {
        self.detail = detail;
        self
    }

    pub fn blob_unknown(digest: &str) -> ApiError {
        Self::new(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            "blob unknown to registry",
        )
        .with_detail(serde_json::json!({ "digest": digest }))
    }
    pub fn upload_unknown() -> ApiError {
        Self::new(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            "blob upload unknown to registry",
        )
    }
    pub fn upload_invalid(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID", message)
    }
    pub fn digest_invalid(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", message)
    }
    pub fn manifest_unknown(reference: &str) -> ApiError {
        Self::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest unknown to registry",
        )
        .with_detail(serde_json::json!({ "reference": reference }))
    }
    pub fn manifest_invalid(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", message)
    }
    pub fn manifest_blob_unknown(digest: &str) -> ApiError {
        Self::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST_BLOB_UNKNOWN",
            format!(
                "manifest references {digest}, which this repository does not have: push it first"
            ),
        )
        .with_detail(serde_json::json!({ "digest": digest }))
    }
    pub fn name_invalid(name: &str) -> ApiError {
        Self::new(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            "invalid repository name",
        )
        .with_detail(serde_json::json!({ "name": name }))
    }
    pub fn name_unknown(name: &str) -> ApiError {
        Self::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository name not known to registry",
        )
        .with_detail(serde_json::json!({ "name": name }))
    }
    pub fn tag_invalid(tag: &str) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "TAG_INVALID", "invalid tag")
            .with_detail(serde_json::json!({ "tag": tag }))
    }
    pub fn size_invalid(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "SIZE_INVALID", message)
    }
    pub fn unauthorized() -> ApiError {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "authentication required: log in with a token of the management API",
        )
    }
    pub fn unsupported(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", message)
    }
    pub fn range_invalid(message: impl Into<String>) -> ApiError {
        Self::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
            message,
        )
    }
    pub fn not_found() -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint")
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", message)
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"errors": [{
            "code": self.code,
            "message": self.message,
            "detail": self.detail,
        }]})
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "registry storage failed");
        ApiError::internal(e.to_string())
    }
}

/// Failures of the on-disk storage and of the library's other parts.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("registry storage {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}
