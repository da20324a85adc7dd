//! `LoadBalancer`: a load balancer of the platform serving one `type: LoadBalancer`
//! Service of a cluster (what an Octavia load balancer is to OpenStack's cloud
//! controller). The platform makes one per such Service, from the Service and the
//! cluster's nodes; users read them (`korvet lb list|get`) and change the Service.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Condition;

/// Annotations on a Service that shape its load balancer.
pub mod annotations {
    pub const PREFIX: &str = "loadbalancer.korvet.io/";
    /// `v1` or `v2`: a PROXY protocol header to the backends on every TCP port.
    pub const PROXY_PROTOCOL: &str = "loadbalancer.korvet.io/proxy-protocol";
    /// `"true"`: an address on the cluster's private network instead of an external one.
    pub const INTERNAL: &str = "loadbalancer.korvet.io/internal";
    /// The address to serve on (as `spec.loadBalancerIP`, which upstream deprecates).
    pub const ADDRESS: &str = "loadbalancer.korvet.io/address";
    /// A `kubernetes.io/tls` Secret in the Service's namespace: TLS is terminated at the
    /// load balancer with it.
    pub const TLS_SECRET: &str = "loadbalancer.korvet.io/tls-secret";
    /// Ports (comma-separated) that terminate TLS; default: every TCP port.
    pub const TLS_PORTS: &str = "loadbalancer.korvet.io/tls-ports";
    pub const HEALTH_INTERVAL: &str = "loadbalancer.korvet.io/healthcheck-interval-seconds";
    pub const HEALTH_TIMEOUT: &str = "loadbalancer.korvet.io/healthcheck-timeout-seconds";
    pub const HEALTHY_THRESHOLD: &str = "loadbalancer.korvet.io/healthcheck-healthy-threshold";
    pub const UNHEALTHY_THRESHOLD: &str = "loadbalancer.korvet.io/healthcheck-unhealthy-threshold";
    /// Every annotation above, for telling a misspelt one.
    pub const ALL: &[&str] = &[
        PROXY_PROTOCOL,
        INTERNAL,
        ADDRESS,
        TLS_SECRET,
        TLS_PORTS,
        HEALTH_INTERVAL,
        HEALTH_TIMEOUT,
        HEALTHY_THRESHOLD,
        UNHEALTHY_THRESHOLD,
    ];
}

/// The finalizer upstream's service controller puts on Services with a load balancer.
pub const SERVICE_FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "korvet.io",
    version = "v1alpha1",
    kind = "LoadBalancer",
    namespaced,
    status = "LoadBalancerStatus",
    shortname = "lb",
    category = "korvet",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.cluster"}"#,
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".status.address"}"#,
    printcolumn = r#"{"name":"Active","type":"string","jsonPath":".status.activeInstance"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSpec {
    /// Name of the Cluster (same namespace).
    pub cluster: String,
    /// The Service it serves, `NAMESPACE/NAME` in the cluster.
    pub service: String,
    /// `external` (an address of the platform's external pool) or `internal` (on the
    /// cluster's private network).
    #[serde(rename = "type", default = "external")]
    pub type_: String,
    /// The address asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_address: Option<String>,
    pub listeners: Vec<LoadBalancerListener>,
    /// The nodes' addresses; each listener forwards to its node port on them.
    #[serde(default)]
    pub backends: Vec<String>,
    /// `externalTrafficPolicy: Local`: a node is a backend only while this port of it
    /// answers `/healthz` with 200 (it has endpoints of the Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_node_port: Option<i32>,
    /// Client ranges allowed in; empty allows everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<String>,
    #[serde(default)]
    pub health_check: HealthCheckSpec,
    /// The cluster's Ingresses, routed by host and path on ports 80 and 443 (the one
    /// load balancer of IngressClass `korvet`; it serves no Service then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
}

/// What the Ingresses of a cluster ask for, with their backends resolved to endpoints.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSpec {
    #[serde(default)]
    pub routes: Vec<HttpRouteSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<HttpBackendSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<HttpTlsSpec>,
    /// The Ingresses served, `NAMESPACE/NAME`, whose status shows the address.
    #[serde(default)]
    pub ingresses: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub path: String,
    /// `Exact`, `Prefix` or `ImplementationSpecific` (served as `Prefix`).
    pub path_type: String,
    pub backend: HttpBackendSpec,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpBackendSpec {
    /// `NAMESPACE/SERVICE:PORT`.
    pub service: String,
    /// Ready endpoints, `IP:PORT`.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpTlsSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    /// A `kubernetes.io/tls` Secret, `NAMESPACE/NAME`.
    pub secret: String,
}

/// The IngressClass the platform serves, the default class of every cluster.
pub const INGRESS_CLASS: &str = "korvet";
pub const INGRESS_CONTROLLER: &str = "korvet.io/ingress";

fn external() -> String {
    "external".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerListener {
    /// The Service port's name, or `PORT-PROTOCOL`.
    pub name: String,
    /// `TCP` or `UDP`.
    pub protocol: String,
    pub port: i32,
    pub node_port: i32,
    /// `v1` or `v2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<String>,
    /// Terminate TLS with this Secret of the Service's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
}

/// Backend checks; upstream cloud providers' usual defaults.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    #[serde(default = "two")]
    pub interval_seconds: i32,
    #[serde(default = "one")]
    pub timeout_seconds: i32,
    #[serde(default = "two")]
    pub healthy_threshold: i32,
    #[serde(default = "two")]
    pub unhealthy_threshold: i32,
}

fn one() -> i32 {
    1
}
fn two() -> i32 {
    2
}

impl Default for HealthCheckSpec {
    fn default() -> Self {
        HealthCheckSpec {
            interval_seconds: 2,
            timeout_seconds: 1,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerStatus {
    /// The address it serves on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `VIP`, or `Proxy` when backends get a PROXY header (in-cluster clients then go
    /// through the load balancer too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_mode: Option<String>,
    /// The instance holding the address now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_instance: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<LoadBalancerInstanceStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerInstanceStatus {
    pub name: String,
    pub zone: String,
    /// Its own address on the external network.
    pub address: String,
    /// `active` or `standby`.
    pub role: String,
    pub running: bool,
}

/// Condition types of a LoadBalancer.
pub mod lb_condition {
    pub const READY: &str = "Ready";
    pub const ADDRESS_ALLOCATED: &str = "AddressAllocated";
}
