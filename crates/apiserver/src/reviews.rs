//! Review kinds: computed on create, answered, never stored.

use http::StatusCode;
use serde_json::{json, Value};

use crate::auth::{self, Attributes, Decision, UserInfo};
use crate::body::{self, Reply};
use crate::error::{ApiError, ApiResult};
use crate::handlers::Call;

fn attributes_from(spec: &Value) -> Attributes {
    let ra = &spec["resourceAttributes"];
    let nra = &spec["nonResourceAttributes"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    if nra.is_object() {
        return Attributes {
            verb: text(&nra["verb"]),
            api_group: String::new(),
            resource: String::new(),
            subresource: String::new(),
            namespace: String::new(),
            name: String::new(),
            path: Some(text(&nra["path"])),
        };
    }
    Attributes {
        verb: text(&ra["verb"]),
        api_group: text(&ra["group"]),
        resource: text(&ra["resource"]),
        subresource: text(&ra["subresource"]),
        namespace: text(&ra["namespace"]),
        name: text(&ra["name"]),
        path: None,
    }
}

async fn access_review(call: &Call<'_>, user: &UserInfo, mut review: Value) -> ApiResult<Reply> {
    let spec = &review["spec"];
    if !spec["resourceAttributes"].is_object() && !spec["nonResourceAttributes"].is_object() {
        return Err(ApiError::invalid(
            &call.resource.target(""),
            vec![crate::error::Cause::required("spec.resourceAttributes")],
        ));
    }
    let attrs = attributes_from(spec);
    let decision = auth::authorize(&call.server.objects, user, &attrs).await?;
    let allowed = decision == Decision::Allow;
    review["status"] = json!({"allowed": allowed});
    if !allowed {
        review["status"]["reason"] = json!("no RBAC policy matched");
    }
    review["apiVersion"] = json!(call.resource.api_version());
    review["kind"] = json!(call.resource.kind);
    Ok(Reply::json(StatusCode::CREATED, review))
}

pub(crate) async fn create(call: &Call<'_>) -> ApiResult<Reply> {
    let review = body::decode_object(call.headers, &call.body)?;
    match call.resource.kind.as_str() {
        "SelfSubjectAccessReview" => access_review(call, call.user, review).await,
        "SubjectAccessReview" => {
            let spec = &review["spec"];
            let groups = spec["groups"]
                .as_array()
                .map(|g| {
                    g.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let user = UserInfo {
                name: spec["user"].as_str().unwrap_or_default().to_string(),
                groups,
            };
            access_review(call, &user, review).await
        }
        "SelfSubjectReview" => Ok(Reply::json(
            StatusCode::CREATED,
            json!({
                "apiVersion": call.resource.api_version(),
                "kind": "SelfSubjectReview",
                "metadata": {"creationTimestamp": null},
                "status": {"userInfo": {"username": call.user.name, "groups": call.user.groups}},
            }),
        )),
        "TokenReview" => {
            let token = review["spec"]["token"].as_str().unwrap_or_default().trim();
            let audiences: Vec<String> = review["spec"]["audiences"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let found = crate::tokens::authenticate_token(call.server, token, &audiences).await;
            let mut answer = review.clone();
            answer["apiVersion"] = json!(call.resource.api_version());
            answer["kind"] = json!("TokenReview");
            answer["status"] = match found {
                Some((u, audiences)) => json!({
                    "authenticated": true,
                    "user": {"username": u.name, "groups": u.groups},
                    "audiences": audiences,
                }),
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            };
            Ok(Reply::json(StatusCode::CREATED, answer))
        }
        other => Err(ApiError::method_not_allowed(format!(
            "{other} cannot be created"
        ))),
    }
}
