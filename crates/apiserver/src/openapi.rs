// TEMPORARY compile shim; replaced by the openapi branch.
use serde_json::Value;
use crate::registry::Registry;
pub fn v3_root(_r: &Registry) -> Value { Value::Null }
pub fn v3_group_version(_r: &Registry, _g: &str, _v: &str) -> Option<Value> { None }
