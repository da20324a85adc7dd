//! Who is asking, and may they: the authentication result carried with each request and
//! the authorization attributes checked against RBAC.

use crate::error::ApiResult;
use crate::storage::Objects;

/// The authenticated user of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

pub(crate) const MASTERS_GROUP: &str = "system:masters";
pub(crate) const AUTHENTICATED_GROUP: &str = "system:authenticated";
#[cfg(test)]
pub(crate) const ANONYMOUS_USER: &str = "system:anonymous";

impl UserInfo {
    /// A user from a client certificate or token; every such user is also
    /// `system:authenticated`, as upstream.
    pub fn authenticated(name: impl Into<String>, groups: Vec<String>) -> Self {
        let mut groups = groups;
        if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.to_string());
        }
        Self {
            name: name.into(),
            groups,
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// What a request wants to do, in RBAC's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    /// Resource requests: group, resource, subresource, namespace, name.
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// Non-resource requests (`/version`, `/healthz`): the path.
    pub path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Allow,
    Deny,
}

/// RBAC with upstream semantics; members of `system:masters` may do everything.
pub(crate) async fn authorize(
    objects: &Objects,
    user: &UserInfo,
    attrs: &Attributes,
) -> ApiResult<Decision> {
    if user.in_group(MASTERS_GROUP) {
        return Ok(Decision::Allow);
    }
    crate::rbac::authorize(objects, user, attrs).await
}
