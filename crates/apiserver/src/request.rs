//! What a request addresses, read from its path and method (upstream's `RequestInfo`).

use crate::error::{ApiError, ApiResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    /// The verb as RBAC names it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

/// A request for a resource: `/api/v1/...` or `/apis/GROUP/VERSION/...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResourceRequest {
    pub verb: Verb,
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// What follows `proxy` (`nodes/N/proxy/stats/summary` → `stats/summary`).
    pub subpath: Option<String>,
}

/// Everything the server answers, by path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Resource(ResourceRequest),
    /// `/api`, `/apis`, `/api/v1`, `/apis/GROUP`, `/apis/GROUP/VERSION`.
    Discovery {
        group: Option<String>,
        version: Option<String>,
        legacy: bool,
    },
    NonResource(String),
}

/// Reads the route from a path (without query) and method.
pub(crate) fn route(method: &str, path: &str, watch_param: bool) -> ApiResult<Route> {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api"] => {
            return Ok(Route::Discovery {
                group: None,
                version: None,
                legacy: true,
            })
        }
        ["apis"] => {
            return Ok(Route::Discovery {
                group: None,
                version: None,
                legacy: false,
            })
        }
        ["api", version] => {
            return Ok(Route::Discovery {
                group: Some(String::new()),
                version: Some(version.to_string()),
                legacy: true,
            })
        }
        ["apis", group] => {
            return Ok(Route::Discovery {
                group: Some(group.to_string()),
                version: None,
                legacy: false,
            })
        }
        ["apis", group, version] => {
            return Ok(Route::Discovery {
                group: Some(group.to_string()),
                version: Some(version.to_string()),
                legacy: false,
            })
        }
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Ok(Route::NonResource(path.to_string())),
    };
    let (namespace, rest) = match rest {
        // `/namespaces/NAME` alone, or with a subresource, addresses the namespace itself.
        ["namespaces", ns, resource, tail @ ..]
            if !(tail.is_empty() && is_namespace_sub(resource)) =>
        {
            (Some(ns.to_string()), {
                let mut v = vec![*resource];
                v.extend_from_slice(tail);
                v
            })
        }
        other => (None, other.to_vec()),
    };
    let mut subpath = None;
    let (resource, name, subresource) = match rest.as_slice() {
        [resource] => (resource.to_string(), None, None),
        [resource, name] => (resource.to_string(), Some(name.to_string()), None),
        [resource, name, sub] => (
            resource.to_string(),
            Some(name.to_string()),
            Some(sub.to_string()),
        ),
        [resource, name, "proxy", tail @ ..] => {
            subpath = Some(tail.join("/"));
            (
                resource.to_string(),
                Some(name.to_string()),
                Some("proxy".to_string()),
            )
        }
        _ => return Err(ApiError::no_route(path)),
    };
    let verb = match (method, name.is_some()) {
        ("GET" | "HEAD", true) => Verb::Get,
        ("GET" | "HEAD", false) if watch_param => Verb::Watch,
        ("GET" | "HEAD", false) => Verb::List,
        ("POST", _) => Verb::Create,
        ("PUT", true) => Verb::Update,
        ("PATCH", true) => Verb::Patch,
        ("DELETE", true) => Verb::Delete,
        ("DELETE", false) => Verb::DeleteCollection,
        (m, _) => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({m} {path})"
            )))
        }
    };
    let verb = if verb == Verb::Get && watch_param {
        Verb::Watch
    } else {
        verb
    };
    Ok(Route::Resource(ResourceRequest {
        verb,
        group: group.to_string(),
        version: version.to_string(),
        namespace,
        resource,
        name,
        subresource,
        subpath,
    }))
}

/// `/namespaces/NAME/status` and `/finalize` are the namespace's own subresources.
fn is_namespace_sub(segment: &str) -> bool {
    matches!(segment, "status" | "finalize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(method: &str, path: &str) -> ResourceRequest {
        match route(method, path, false).unwrap() {
            Route::Resource(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn namespaced_and_cluster_paths() {
        let r = res("GET", "/api/v1/namespaces/default/pods/web");
        assert_eq!(
            (
                r.verb,
                r.namespace.as_deref(),
                r.resource.as_str(),
                r.name.as_deref()
            ),
            (Verb::Get, Some("default"), "pods", Some("web"))
        );
        let r = res("GET", "/apis/apps/v1/deployments");
        assert_eq!(
            (r.verb, r.group.as_str(), r.namespace),
            (Verb::List, "apps", None)
        );
        let r = res("PUT", "/api/v1/namespaces/default/pods/web/status");
        assert_eq!(r.subresource.as_deref(), Some("status"));
        let r = res("GET", "/api/v1/namespaces/kube-system");
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref(), r.namespace),
            ("namespaces", Some("kube-system"), None)
        );
        let r = res("PUT", "/api/v1/namespaces/ns1/finalize");
        assert_eq!(
            (
                r.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            ("namespaces", Some("ns1"), Some("finalize"))
        );
        let r = res("DELETE", "/api/v1/namespaces/default/configmaps");
        assert_eq!(r.verb, Verb::DeleteCollection);
        let r = res("GET", "/api/v1/nodes/n1/proxy/stats/summary");
        assert_eq!(
            (
                r.name.as_deref(),
                r.subresource.as_deref(),
                r.subpath.as_deref()
            ),
            (Some("n1"), Some("proxy"), Some("stats/summary"))
        );
        let r = res("POST", "/api/v1/namespaces/default/pods/web/binding");
        assert_eq!(
            (r.verb, r.subresource.as_deref()),
            (Verb::Create, Some("binding"))
        );
    }

    #[test]
    fn discovery_and_non_resource_paths() {
        assert!(matches!(
            route("GET", "/apis", false),
            Ok(Route::Discovery { .. })
        ));
        assert!(matches!(
            route("GET", "/version", false),
            Ok(Route::NonResource(p)) if p == "/version"
        ));
        assert!(route("GET", "/api/v1/a/b/c/d", false).is_err());
        assert!(route("OPTIONS", "/api/v1/pods", false).is_err());
        assert_eq!(res("GET", "/api/v1/pods").verb, Verb::List);
        match route("GET", "/api/v1/pods", true).unwrap() {
            Route::Resource(r) => assert_eq!(r.verb, Verb::Watch),
            other => panic!("{other:?}"),
        }
    }
}
