//! Validating admission plugins: checks that need more than one object's schema (does the
//! referenced object exist, may this field change now), run after defaults and schema
//! validation on every create and update, inside the same retry loop as the write.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::auth::UserInfo;
use crate::error::ApiResult;
use crate::registry::ResourceType;
use crate::server::ApiServer;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
}

/// One write being admitted.
pub struct AdmissionRequest<'a> {
    pub operation: Operation,
    pub resource: &'a ResourceType,
    /// `None` for the object itself, `Some("status")` or `Some("scale")` for subresources.
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub object: &'a Value,
    pub old: Option<&'a Value>,
    pub user: &'a UserInfo,
    /// A dry run is checked but changes nothing (no quota is charged).
    pub dry_run: bool,
}

#[async_trait]
pub trait Admission: Send + Sync {
    /// Cheap filter: whether this plugin looks at writes of `group` at all.
    fn handles(&self, group: &str) -> bool;

    /// Refuses the write with an error (usually [`crate::error::ApiError::invalid`] with
    /// field causes); may read other objects through `server`.
    async fn validate(&self, server: &ApiServer, request: &AdmissionRequest<'_>) -> ApiResult<()>;
}

pub type Plugins = Vec<Arc<dyn Admission>>;

pub(crate) async fn run(server: &ApiServer, request: &AdmissionRequest<'_>) -> ApiResult<()> {
    // Built-in plugins every server has, as upstream enables them by default.
    crate::runtime_class::validate(server, request).await?;
    if let Some(plugins) = server.admission.get() {
        for plugin in plugins.iter() {
            if plugin.handles(&request.resource.group) {
                plugin.validate(server, request).await?;
            }
        }
    }
    // Last, as upstream orders ResourceQuota: it charges what the others admitted.
    crate::quota::admit(server, request).await
}

impl ApiServer {
    /// Installs the admission plugins; only the first call has an effect.
    pub fn set_admission(&self, plugins: Plugins) {
        let _ = self.admission.set(plugins);
    }

    /// Reads one object by group, plural and name (for admission plugins).
    pub async fn read_object(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<Option<Value>> {
        let Some(resource) = self.registry.get(group, version, plural) else {
            return Ok(None);
        };
        Ok(self
            .objects
            .get(&resource.key(namespace, name))
            .await?
            .map(|(object, _)| resource.present(object)))
    }

    /// Lists the objects of a resource in a namespace (all namespaces for `None`).
    pub async fn list_objects(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        namespace: Option<&str>,
    ) -> ApiResult<Vec<Value>> {
        let Some(resource) = self.registry.get(group, version, plural) else {
            return Ok(Vec::new());
        };
        let page = self
            .objects
            .list(&resource.list_prefix(namespace), 0, None, 0, &|_| true)
            .await?;
        Ok(page
            .items
            .into_iter()
            .map(|object| resource.present(object))
            .collect())
    }
}
