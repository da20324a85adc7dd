//! Admission for korvet.io resources: what a schema cannot say — that a flavor or zone
//! exists, that a control plane has 1 or 3 masters, that a stopped cluster is not
//! scaled, that what a running cluster is built from does not change under it.

// `ApiError` carries a full Status; the API server's crate allows the same.
#![allow(clippy::result_large_err)]

use std::net::Ipv4Addr;

use async_trait::async_trait;
use korvet_api::{
    Cluster, ClusterSpec, Flavor, NodePool, PoolTemplate, GROUP, SUPPORTED_VERSIONS, VERSION,
};
use korvet_apimachinery::names::is_dns_label;
use korvet_apimachinery::quantity;
use korvet_apiserver::admission::{Admission, AdmissionRequest, Operation};
use korvet_apiserver::error::{ApiError, ApiResult, Cause};
use korvet_apiserver::server::ApiServer;
use serde_json::{json, Value};

/// Longest cluster name: machine and node names are built from it and must stay DNS labels.
pub(crate) const MAX_CLUSTER_NAME: usize = 30;
pub(crate) const MAX_POOL_NAME: usize = 20;
/// Most machines one pool may have.
pub(crate) const MAX_POOL_REPLICAS: i32 = 100;

pub(crate) struct KorvetAdmission {
    /// Zones the infrastructure provider offers.
    pub zones: Vec<String>,
    /// The provider's address pool, which cluster networks must not overlap.
    pub pool: (Ipv4Addr, u8),
}

#[async_trait]
impl Admission for KorvetAdmission {
    fn handles(&self, group: &str) -> bool {
        group == GROUP
    }

    async fn validate(&self, server: &ApiServer, req: &AdmissionRequest<'_>) -> ApiResult<()> {
        // Status writes come from the platform itself.
        if req.subresource == Some("status") {
            return Ok(());
        }
        let causes = match req.resource.kind.as_str() {
            "Cluster" => self.cluster(server, req).await?,
            "NodePool" => self.node_pool(server, req).await?,
            "Flavor" => flavor(req.object),
            "Zone" => self.zone(req),
            _ => Vec::new(),
        };
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(&req.resource.target(req.name), causes))
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(object: &Value) -> ApiResult<T> {
    serde_json::from_value(object.clone())
        .map_err(|e| ApiError::bad_request(format!("decoding the object: {e}")))
}

fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = text.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    if len > 32 {
        return None;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (u32::from(addr) & !mask == 0).then_some((addr, len))
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

impl KorvetAdmission {
    async fn cluster(
        &self,
        server: &ApiServer,
        req: &AdmissionRequest<'_>,
    ) -> ApiResult<Vec<Cause>> {
        let mut causes = Vec::new();
        if req.name.len() > MAX_CLUSTER_NAME || !is_dns_label(req.name) {
            causes.push(Cause::invalid(
                "metadata.name",
                &json!(req.name),
                &format!("a cluster name must be a DNS label (lower-case letters, digits and '-') of at most {MAX_CLUSTER_NAME} characters"),
            ));
        }
        let cluster: Cluster = decode(req.object)?;
        let spec = &cluster.spec;
        if !SUPPORTED_VERSIONS.contains(&spec.version.as_str()) {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                "spec.version",
                format!(
                    "Unsupported value: {:?}: supported values: {}",
                    spec.version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if ![1, 3].contains(&spec.control_plane.replicas) {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                "spec.controlPlane.replicas",
                format!(
                    "Unsupported value: {}: a control plane has 1 master, or 3 for high availability (etcd needs an odd number of members)",
                    spec.control_plane.replicas
                ),
            ));
        }
        causes.extend(self.networks(spec));
        let mut seen = std::collections::HashSet::new();
        for (i, pool) in spec.node_pools.iter().enumerate() {
            let path = format!("spec.nodePools[{i}]");
            if pool.name.len() > MAX_POOL_NAME || !is_dns_label(&pool.name) {
                causes.push(Cause::invalid(
                    format!("{path}.name"),
                    &json!(pool.name),
                    &format!(
                        "a pool name must be a DNS label of at most {MAX_POOL_NAME} characters"
                    ),
                ));
            }
            if !seen.insert(pool.name.as_str()) {
                causes.push(Cause::new(
                    "FieldValueDuplicate",
                    format!("{path}.name"),
                    format!("Duplicate value: {:?}", pool.name),
                ));
            }
            causes.extend(self.pool_template(server, &path, &pool.pool).await?);
        }
        if let (Operation::Update, Some(old)) = (req.operation, req.old) {
            let old: Cluster = decode(old)?;
            causes.extend(cluster_update(&old, &cluster));
        }
        Ok(causes)
    }

    fn networks(&self, spec: &ClusterSpec) -> Vec<Cause> {
        let mut causes = Vec::new();
        let mut parsed = Vec::new();
        for (field, text, range) in [
            ("spec.network.podCIDR", &spec.network.pod_cidr, 8..=24u8),
            (
                "spec.network.serviceCIDR",
                &spec.network.service_cidr,
                12..=24u8,
            ),
        ] {
            match parse_cidr(text) {
                None => causes.push(Cause::invalid(
                    field,
                    &json!(text),
                    "must be an IPv4 network in CIDR notation with no host bits set, e.g. 10.244.0.0/16",
                )),
                Some(net) if !range.contains(&net.1) => causes.push(Cause::invalid(
                    field,
                    &json!(text),
                    &format!(
                        "the prefix length must be between /{} and /{}",
                        range.start(),
                        range.end()
                    ),
                )),
                Some(net) if overlaps(net, self.pool) => causes.push(Cause::invalid(
                    field,
                    &json!(text),
                    &format!(
                        "overlaps the platform's machine network {}/{}",
                        self.pool.0, self.pool.1
                    ),
                )),
                Some(net) => parsed.push(net),
            }
        }
        if let [pods, services] = parsed[..] {
            if overlaps(pods, services) {
                causes.push(Cause::invalid(
                    "spec.network.serviceCIDR",
                    &json!(spec.network.service_cidr),
                    "must not overlap spec.network.podCIDR",
                ));
            }
        }
        causes
    }

    async fn pool_template(
        &self,
        server: &ApiServer,
        path: &str,
        pool: &PoolTemplate,
    ) -> ApiResult<Vec<Cause>> {
        let mut causes = Vec::new();
        if pool.flavor.is_empty() {
            causes.push(Cause::required(format!("{path}.flavor")));
        } else if server
            .read_object(GROUP, VERSION, "flavors", None, &pool.flavor)
            .await?
            .is_none()
        {
            let known = names(&server.list_objects(GROUP, VERSION, "flavors", None).await?);
            causes.push(Cause::new(
                "FieldValueNotFound",
                format!("{path}.flavor"),
                format!(
                    "Not found: {:?}: no such flavor; available flavors: {}",
                    pool.flavor,
                    known.join(", ")
                ),
            ));
        }
        if pool.zone.is_empty() {
            causes.push(Cause::required(format!("{path}.zone")));
        } else if !self.zones.contains(&pool.zone) {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                format!("{path}.zone"),
                format!(
                    "Unsupported value: {:?}: supported values: {}",
                    pool.zone,
                    self.zones.join(", ")
                ),
            ));
        }
        if !(0..=MAX_POOL_REPLICAS).contains(&pool.replicas) {
            causes.push(Cause::invalid(
                format!("{path}.replicas"),
                &json!(pool.replicas),
                &format!("must be between 0 and {MAX_POOL_REPLICAS}"),
            ));
        }
        if let Some(auto) = &pool.autoscaling {
            if auto.min_replicas < 0
                || auto.max_replicas > MAX_POOL_REPLICAS
                || auto.min_replicas > auto.max_replicas
            {
                causes.push(Cause::invalid(
                    format!("{path}.autoscaling"),
                    &json!({"minReplicas": auto.min_replicas, "maxReplicas": auto.max_replicas}),
                    &format!("need 0 <= minReplicas <= maxReplicas <= {MAX_POOL_REPLICAS}"),
                ));
            }
        }
        for (i, taint) in pool.taints.iter().enumerate() {
            if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&taint.effect.as_str()) {
                causes.push(Cause::new(
                    "FieldValueNotSupported",
                    format!("{path}.taints[{i}].effect"),
                    format!(
                        "Unsupported value: {:?}: supported values: NoSchedule, PreferNoSchedule, NoExecute",
                        taint.effect
                    ),
                ));
            }
            if taint.key.is_empty() {
                causes.push(Cause::required(format!("{path}.taints[{i}].key")));
            }
        }
        Ok(causes)
    }

    async fn node_pool(
        &self,
        server: &ApiServer,
        req: &AdmissionRequest<'_>,
    ) -> ApiResult<Vec<Cause>> {
        let mut causes = Vec::new();
        if req.name.len() > MAX_CLUSTER_NAME + MAX_POOL_NAME + 1 || !is_dns_label(req.name) {
            causes.push(Cause::invalid(
                "metadata.name",
                &json!(req.name),
                "a node pool name must be a DNS label (lower-case letters, digits and '-')",
            ));
        }
        let pool: NodePool = decode(req.object)?;
        let old: Option<NodePool> = req.old.map(decode).transpose()?;
        // One naming rule for every pool, inline or added later, so that the CLI finds
        // any pool from its cluster and pool names, and node names say both.
        let own = req
            .name
            .strip_prefix(pool.spec.cluster.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
            .unwrap_or_default();
        if old.is_none() && (own.is_empty() || own.len() > MAX_POOL_NAME) {
            causes.push(Cause::invalid(
                "metadata.name",
                &json!(req.name),
                &format!(
                    "a node pool of cluster {:?} is named {}-POOL, POOL a DNS label of at most {MAX_POOL_NAME} characters (`korvet nodepool add {} POOL` names it so)",
                    pool.spec.cluster, pool.spec.cluster, pool.spec.cluster
                ),
            ));
        }
        let cluster = server
            .read_object(
                GROUP,
                VERSION,
                "clusters",
                req.namespace,
                &pool.spec.cluster,
            )
            .await?
            .map(|c| decode::<Cluster>(&c))
            .transpose()?;
        if req.subresource.is_none() {
            causes.extend(
                self.pool_template(server, "spec", &pool.spec.template)
                    .await?,
            );
        } else if !(0..=MAX_POOL_REPLICAS).contains(&pool.spec.template.replicas) {
            causes.push(Cause::invalid(
                "spec.replicas",
                &json!(pool.spec.template.replicas),
                &format!("must be between 0 and {MAX_POOL_REPLICAS}"),
            ));
        }
        match (&cluster, &old) {
            (None, None) => causes.push(Cause::new(
                "FieldValueNotFound",
                "spec.cluster",
                format!(
                    "Not found: {:?}: no such cluster in namespace {}; create it first (korvet cluster create)",
                    pool.spec.cluster,
                    req.namespace.unwrap_or_default()
                ),
            )),
            (Some(cluster), None) if cluster.metadata.deletion_timestamp.is_some() => {
                causes.push(Cause::new(
                    "FieldValueForbidden",
                    "spec.cluster",
                    format!("Forbidden: cluster {:?} is being deleted", pool.spec.cluster),
                ))
            }
            _ => {}
        }
        if let Some(old) = &old {
            for (field, before, after) in [
                ("spec.cluster", &old.spec.cluster, &pool.spec.cluster),
                (
                    "spec.flavor",
                    &old.spec.template.flavor,
                    &pool.spec.template.flavor,
                ),
                (
                    "spec.zone",
                    &old.spec.template.zone,
                    &pool.spec.template.zone,
                ),
            ] {
                if before != after {
                    causes.push(immutable(field, after));
                }
            }
            let scaled = old.spec.template.replicas != pool.spec.template.replicas;
            if scaled && cluster.as_ref().is_some_and(|c| c.spec.stopped) {
                causes.push(Cause::new(
                    "FieldValueForbidden",
                    "spec.replicas",
                    format!(
                        "Forbidden: cluster {:?} is stopped; start it first (korvet cluster start {})",
                        pool.spec.cluster, pool.spec.cluster
                    ),
                ));
            }
        }
        Ok(causes)
    }

    fn zone(&self, req: &AdmissionRequest<'_>) -> Vec<Cause> {
        if self.zones.iter().any(|z| z == req.name) {
            return Vec::new();
        }
        vec![Cause::new(
            "FieldValueNotSupported",
            "metadata.name",
            format!(
                "Unsupported value: {:?}: the infrastructure provider offers only: {}",
                req.name,
                self.zones.join(", ")
            ),
        )]
    }
}

fn immutable(field: &str, value: &str) -> Cause {
    Cause::invalid(field, &json!(value), "field is immutable")
}

fn names(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

fn cluster_update(old: &Cluster, new: &Cluster) -> Vec<Cause> {
    let mut causes = Vec::new();
    if old.spec.version != new.spec.version {
        causes.push(Cause::new(
            "FieldValueForbidden",
            "spec.version",
            "Forbidden: upgrades are not supported yet; create a new cluster with the version you need",
        ));
    }
    if old.spec.control_plane.replicas != new.spec.control_plane.replicas {
        causes.push(Cause::invalid(
            "spec.controlPlane.replicas",
            &json!(new.spec.control_plane.replicas),
            "field is immutable",
        ));
    }
    if old.spec.network != new.spec.network {
        causes.push(Cause::invalid(
            "spec.network",
            &json!(new.spec.network.pod_cidr),
            "field is immutable",
        ));
    }
    if new.spec.stopped && old.spec.stopped {
        let scaled = new.spec.node_pools.iter().any(|pool| {
            old.spec
                .node_pools
                .iter()
                .find(|p| p.name == pool.name)
                .is_none_or(|p| p.pool.replicas != pool.pool.replicas)
        });
        if scaled {
            causes.push(Cause::new(
                "FieldValueForbidden",
                "spec.nodePools",
                "Forbidden: the cluster is stopped; start it first (korvet cluster start)",
            ));
        }
    }
    for pool in &new.spec.node_pools {
        if let Some(before) = old.spec.node_pools.iter().find(|p| p.name == pool.name) {
            if before.pool.flavor != pool.pool.flavor || before.pool.zone != pool.pool.zone {
                causes.push(Cause::invalid(
                    "spec.nodePools",
                    &json!(pool.name),
                    "the flavor and zone of a pool are immutable; add a new pool instead",
                ));
            }
        }
    }
    causes
}

fn flavor(object: &Value) -> Vec<Cause> {
    let Ok(flavor) = serde_json::from_value::<Flavor>(object.clone()) else {
        return Vec::new();
    };
    let mut causes = Vec::new();
    for (field, text, minimum, what) in [
        ("spec.cpu", &flavor.spec.cpu, 0.1, "at least 100m"),
        (
            "spec.memory",
            &flavor.spec.memory,
            256.0 * 1024.0 * 1024.0,
            "at least 256Mi",
        ),
        (
            "spec.disk",
            &flavor.spec.disk,
            1024.0 * 1024.0 * 1024.0,
            "at least 1Gi",
        ),
    ] {
        match quantity::as_f64(text) {
            Some(value) if value >= minimum => {}
            _ => causes.push(Cause::invalid(
                field,
                &json!(text),
                &format!("must be a quantity of {what}"),
            )),
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.244.0.0/16"),
            Some((Ipv4Addr::new(10, 244, 0, 0), 16))
        );
        assert_eq!(parse_cidr("10.244.0.1/16"), None);
        assert_eq!(parse_cidr("10.244.0.0/33"), None);
        assert!(overlaps(
            parse_cidr("10.200.0.0/13").unwrap(),
            parse_cidr("10.201.0.0/16").unwrap()
        ));
        assert!(!overlaps(
            parse_cidr("10.96.0.0/12").unwrap(),
            parse_cidr("10.244.0.0/16").unwrap()
        ));
    }
}
