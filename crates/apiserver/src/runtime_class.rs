//! The `RuntimeClass` admission plugin of upstream, its validating half: a pod may only
//! be created naming a RuntimeClass that exists. (Overhead and scheduling from the
//! RuntimeClass are not applied yet.)

use crate::admission::{AdmissionRequest, Operation};
use crate::error::{ApiError, ApiResult};
use crate::server::ApiServer;

pub(crate) async fn validate(server: &ApiServer, request: &AdmissionRequest<'_>) -> ApiResult<()> {
    if request.operation != Operation::Create
        || request.subresource.is_some()
        || !request.resource.group.is_empty()
        || request.resource.kind != "Pod"
    {
        return Ok(());
    }
    let Some(class) = request.object["spec"]["runtimeClassName"]
        .as_str()
        .filter(|c| !c.is_empty())
    else {
        return Ok(());
    };
    match server
        .read_object("node.k8s.io", "v1", "runtimeclasses", None, class)
        .await?
    {
        Some(_) => Ok(()),
        None => Err(rejected(request.name, class)),
    }
}

/// Upstream's answer (403) for a pod naming a RuntimeClass that does not exist.
pub(crate) fn rejected(pod: &str, class: &str) -> ApiError {
    ApiError::new(
        403,
        "Forbidden",
        format!("pods \"{pod}\" is forbidden: pod rejected: RuntimeClass \"{class}\" not found"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_is_forbidden_with_upstream_wording() {
        let status = rejected("p", "gvisor").to_status();
        assert_eq!(status["code"], 403);
        assert_eq!(status["reason"], "Forbidden");
        assert_eq!(
            status["message"],
            "pods \"p\" is forbidden: pod rejected: RuntimeClass \"gvisor\" not found"
        );
    }
}
