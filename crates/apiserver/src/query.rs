//! The query parameters of Kubernetes API requests.

use base64::Engine;
use serde_json::json;

use crate::error::{ApiError, ApiResult};

#[derive(Clone, Debug, Default)]
pub(crate) struct Query {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: usize,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub watch: bool,
    pub allow_watch_bookmarks: bool,
    pub timeout_seconds: Option<u64>,
    pub dry_run: bool,
    pub field_manager: Option<String>,
    /// `Strict`, `Warn` or `Ignore`.
    pub field_validation: Option<String>,
    pub force: bool,
    pub propagation_policy: Option<String>,
    pub grace_period_seconds: Option<i64>,
    pub include_object: Option<String>,
    /// The query string as sent, for subresources with their own parameters (`pods/log`).
    pub raw: Option<String>,
}

fn truthy(v: &str) -> bool {
    matches!(v, "true" | "1" | "True")
}

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> ApiResult<Self> {
        let mut q = Query {
            raw: raw.map(str::to_string),
            ..Query::default()
        };
        for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            let value = value.into_owned();
            let int = |name: &str| -> ApiResult<i64> {
                value.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "invalid value {value:?} for query parameter {name}: expected an integer"
                    ))
                })
            };
            match key.as_ref() {
                "labelSelector" => q.label_selector = Some(value.clone()),
                "fieldSelector" => q.field_selector = Some(value.clone()),
                "limit" => q.limit = usize::try_from(int("limit")?).unwrap_or(0),
                "continue" => q.continue_token = Some(value.clone()).filter(|v| !v.is_empty()),
                "resourceVersion" => q.resource_version = Some(value.clone()),
                "resourceVersionMatch" => q.resource_version_match = Some(value.clone()),
                "watch" => q.watch = truthy(&value),
                "allowWatchBookmarks" => q.allow_watch_bookmarks = truthy(&value),
                "timeoutSeconds" => q.timeout_seconds = u64::try_from(int("timeoutSeconds")?).ok(),
                "dryRun" => {
                    if value != "All" {
                        return Err(ApiError::bad_request(format!(
                            "Invalid dryRun value {value:?}: only \"All\" is supported"
                        )));
                    }
                    q.dry_run = true;
                }
                "fieldManager" => q.field_manager = Some(value.clone()),
                "fieldValidation" => {
                    if !["Strict", "Warn", "Ignore"].contains(&value.as_str()) {
                        return Err(ApiError::bad_request(format!(
                            "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {value:?}"
                        )));
                    }
                    q.field_validation = Some(value.clone());
                }
                "force" => q.force = truthy(&value),
                "propagationPolicy" => q.propagation_policy = Some(value.clone()),
                "gracePeriodSeconds" => q.grace_period_seconds = Some(int("gracePeriodSeconds")?),
                "includeObject" => q.include_object = Some(value.clone()),
                _ => {}
            }
        }
        Ok(q)
    }

    #[cfg(test)]
    pub(crate) fn strict(&self) -> bool {
        self.field_validation.as_deref() == Some("Strict")
    }
}

/// Upstream's continue token: base64 of `{"v":"meta.k8s.io/v1","rv":REV,"start":KEY}`,
/// `KEY` relative to the list's prefix.
pub(crate) fn encode_continue(revision: i64, start_relative: &[u8]) -> String {
    let token = json!({
        "v": "meta.k8s.io/v1",
        "rv": revision,
        "start": String::from_utf8_lossy(start_relative),
    });
    base64::engine::general_purpose::URL_SAFE.encode(token.to_string())
}

pub(crate) fn decode_continue(token: &str) -> ApiResult<(i64, Vec<u8>)> {
    let invalid = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(token))
        .map_err(|_| invalid())?;
    let value: serde_json::Value = serde_json::from_slice(&raw).map_err(|_| invalid())?;
    if value["v"] != "meta.k8s.io/v1" {
        return Err(invalid());
    }
    let rv = value["rv"]
        .as_i64()
        .filter(|rv| *rv > 0)
        .ok_or_else(invalid)?;
    let start = value["start"].as_str().ok_or_else(invalid)?;
    if start.contains("..") || start.starts_with('/') {
        return Err(invalid());
    }
    Ok((rv, start.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_parameters() {
        let q = Query::parse(Some(
            "labelSelector=app%3Dweb&limit=500&watch=true&fieldValidation=Strict&dryRun=All",
        ))
        .unwrap();
        assert_eq!(q.label_selector.as_deref(), Some("app=web"));
        assert_eq!(q.limit, 500);
        assert!(q.watch && q.dry_run && q.strict());
        assert!(Query::parse(Some("limit=x")).is_err());
        assert!(Query::parse(Some("fieldValidation=Loose")).is_err());
        assert!(Query::parse(Some("dryRun=Some")).is_err());
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let token = encode_continue(42, b"default/web\0");
        assert_eq!(
            decode_continue(&token).unwrap(),
            (42, b"default/web\0".to_vec())
        );
        assert!(decode_continue("not-base64!").is_err());
        let sneaky = base64::engine::general_purpose::URL_SAFE
            .encode(r#"{"v":"meta.k8s.io/v1","rv":1,"start":"../secrets/x"}"#);
        assert!(decode_continue(&sneaky).is_err());
    }
}
