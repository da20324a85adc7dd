// TEMPORARY compile shim; replaced by the discovery branch.
use serde_json::Value;
use crate::registry::Registry;
pub fn api_versions(_a: &str) -> Value { Value::Null }
pub fn api_group_list(_r: &Registry) -> Value { Value::Null }
pub fn api_resource_list(_r: &Registry, _g: &str, _v: &str) -> Option<Value> { None }
pub fn aggregated(_r: &Registry, _legacy: bool) -> Value { Value::Null }
