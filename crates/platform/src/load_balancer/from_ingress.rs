//! What the Ingresses of a cluster ask of its one Ingress load balancer (pure): every
//! rule of every Ingress of class `korvet` (or of no class, `korvet` being the default),
//! each backend resolved through its Service to the ready endpoints of its port, TLS
//! Secrets by host. When two Ingresses claim the same host and path, the older one
//! wins, as the common controllers decide.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressServiceBackend};
use korvet_api::{HttpBackendSpec, HttpRouteSpec, HttpSpec, HttpTlsSpec, INGRESS_CLASS};

const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// Whether the platform serves this Ingress.
pub(crate) fn ours(ingress: &Ingress) -> bool {
    let by_field = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref());
    let by_annotation = ingress
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CLASS_ANNOTATION))
        .map(String::as_str);
    match by_field.or(by_annotation) {
        None => true,
        Some(class) => class == INGRESS_CLASS,
    }
}

/// The ready `IP:PORT`s behind port `port` (number or name) of Service `namespace/name`.
fn endpoints(
    namespace: &str,
    backend: &IngressServiceBackend,
    services: &[Service],
    slices: &[EndpointSlice],
) -> (String, Vec<String>) {
    let port_ref = backend.port.as_ref();
    let label = match port_ref.and_then(|p| p.number) {
        Some(n) => n.to_string(),
        None => port_ref.and_then(|p| p.name.clone()).unwrap_or_default(),
    };
    let name = format!("{namespace}/{}:{label}", backend.name);
    let Some(service) = services.iter().find(|s| {
        s.metadata.namespace.as_deref() == Some(namespace)
            && s.metadata.name.as_deref() == Some(backend.name.as_str())
    }) else {
        return (name, Vec::new());
    };
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let Some(port) = ports.iter().find(|p| match port_ref {
        Some(r) if r.number.is_some() => Some(p.port) == r.number,
        Some(r) => p.name == r.name,
        None => ports.len() == 1,
    }) else {
        return (name, Vec::new());
    };
    let mut out = BTreeSet::new();
    for slice in slices.iter().filter(|s| {
        s.metadata.namespace.as_deref() == Some(namespace)
            && s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                == Some(&backend.name)
            && s.address_type == "IPv4"
    }) {
        // The slice's port of the same name carries the resolved target port.
        let Some(target) = slice
            .ports
            .as_ref()
            .and_then(|ps| ps.iter().find(|sp| sp.name == port.name))
            .and_then(|sp| sp.port)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                out.insert(format!("{address}:{target}"));
            }
        }
    }
    (name, out.into_iter().collect())
}

fn backend_spec(
    namespace: &str,
    backend: &IngressServiceBackend,
    services: &[Service],
    slices: &[EndpointSlice],
) -> HttpBackendSpec {
    let (service, endpoints) = endpoints(namespace, backend, services, slices);
    HttpBackendSpec { service, endpoints }
}

/// The routes of every Ingress of ours; `None` when there is none.
pub(crate) fn desired(
    ingresses: &[Ingress],
    services: &[Service],
    slices: &[EndpointSlice],
) -> Option<HttpSpec> {
    let mut ours: Vec<&Ingress> = ingresses
        .iter()
        .filter(|i| ours(i) && i.metadata.deletion_timestamp.is_none())
        .collect();
    if ours.is_empty() {
        return None;
    }
    // Oldest first: it keeps a host and path another Ingress asks for too.
    ours.sort_by(|a, b| {
        (
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            &a.metadata.namespace,
            &a.metadata.name,
        )
            .cmp(&(
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                &b.metadata.namespace,
                &b.metadata.name,
            ))
    });
    let mut spec = HttpSpec::default();
    let mut taken = BTreeSet::new();
    let mut tls: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for ingress in ours {
        let namespace = ingress
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = ingress.metadata.name.clone().unwrap_or_default();
        spec.ingresses.push(format!("{namespace}/{name}"));
        let Some(ispec) = &ingress.spec else { continue };
        if spec.default_backend.is_none() {
            if let Some(service) = ispec
                .default_backend
                .as_ref()
                .and_then(|b| b.service.as_ref())
            {
                spec.default_backend = Some(backend_spec(&namespace, service, services, slices));
            }
        }
        for t in ispec.tls.iter().flatten() {
            let Some(secret) = &t.secret_name else {
                continue;
            };
            tls.entry(format!("{namespace}/{secret}"))
                .or_default()
                .extend(t.hosts.iter().flatten().cloned());
        }
        for rule in ispec.rules.iter().flatten() {
            let host = rule.host.clone().filter(|h| !h.is_empty());
            for path in rule.http.iter().flat_map(|h| h.paths.iter()) {
                let Some(service) = path.backend.service.as_ref() else {
                    continue;
                };
                let p = path
                    .path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "/".into());
                let key = (host.clone(), p.clone(), path.path_type.clone());
                if !taken.insert(key) {
                    continue;
                }
                spec.routes.push(HttpRouteSpec {
                    host: host.clone(),
                    path: p,
                    path_type: path.path_type.clone(),
                    backend: backend_spec(&namespace, service, services, slices),
                });
            }
        }
    }
    spec.tls = tls
        .into_iter()
        .map(|(secret, hosts)| HttpTlsSpec {
            hosts: hosts.into_iter().collect(),
            secret,
        })
        .collect();
    Some(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn rules_resolve_to_ready_endpoints_and_the_older_ingress_wins() {
        let services: Vec<Service> = vec![object(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))];
        let slices: Vec<EndpointSlice> = vec![object(serde_json::json!({
            "metadata": {"name": "web-x", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                {"addresses": ["10.244.2.7"], "conditions": {"ready": false}},
            ]
        }))];
        let first: Ingress = object(serde_json::json!({
            "metadata": {"name": "a", "namespace": "shop", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "tls": [{"hosts": ["shop.example"], "secretName": "shop-tls"}],
                "rules": [{"host": "shop.example", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "http"}}}}
                ]}}]
            }
        }));
        let later: Ingress = object(serde_json::json!({
            "metadata": {"name": "b", "namespace": "shop", "creationTimestamp": "2026-02-01T00:00:00Z"},
            "spec": {
                "ingressClassName": "korvet",
                "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}},
                "rules": [{"host": "shop.example", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "other", "port": {"number": 80}}}},
                    {"path": "/api", "pathType": "Exact", "backend": {"service": {"name": "missing", "port": {"number": 80}}}}
                ]}}]
            }
        }));
        let foreign: Ingress = object(serde_json::json!({
            "metadata": {"name": "c", "namespace": "shop"},
            "spec": {"ingressClassName": "nginx"}
        }));
        assert!(!ours(&foreign));
        let spec = desired(&[later, first, foreign], &services, &slices).unwrap();
        assert_eq!(spec.ingresses, ["shop/a", "shop/b"]);
        assert_eq!(spec.routes.len(), 2, "{:?}", spec.routes);
        assert_eq!(spec.routes[0].backend.service, "shop/web:http");
        assert_eq!(spec.routes[0].backend.endpoints, ["10.244.1.5:8080"]);
        assert_eq!(spec.routes[1].path, "/api");
        assert!(spec.routes[1].backend.endpoints.is_empty());
        assert_eq!(spec.default_backend.unwrap().endpoints, ["10.244.1.5:8080"]);
        assert_eq!(spec.tls[0].secret, "shop/shop-tls");
        assert_eq!(spec.tls[0].hosts, ["shop.example"]);
        assert!(desired(&[], &services, &slices).is_none());
    }
}
