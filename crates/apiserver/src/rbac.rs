// TEMPORARY compile shim; replaced by the rbac branch.
use crate::auth::{Attributes, Decision, UserInfo};
use crate::error::ApiResult;
use crate::storage::Objects;
pub async fn authorize(_o: &Objects, _u: &UserInfo, _a: &Attributes) -> ApiResult<Decision> { Ok(Decision::Deny) }
pub fn forbidden_message(u: &UserInfo, _a: &Attributes) -> String { format!("forbidden: {}", u.name) }
pub fn bootstrap_policy() -> Vec<(String, serde_json::Value)> { Vec::new() }
