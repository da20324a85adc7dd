//! `Flavor` (a machine size) and `Zone` (an availability zone), both cluster-scoped and
//! offered by the platform.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "korvet.io",
    version = "v1alpha1",
    kind = "Flavor",
    category = "korvet",
    printcolumn = r#"{"name":"CPU","type":"string","jsonPath":".spec.cpu"}"#,
    printcolumn = r#"{"name":"Memory","type":"string","jsonPath":".spec.memory"}"#,
    printcolumn = r#"{"name":"Disk","type":"string","jsonPath":".spec.disk"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FlavorSpec {
    /// CPU as a Kubernetes quantity (`2`, `500m`).
    pub cpu: String,
    /// Memory as a Kubernetes quantity (`4Gi`).
    pub memory: String,
    /// Disk as a Kubernetes quantity (`40Gi`).
    pub disk: String,
}

/// The flavors every installation starts with: name, CPU, memory, disk.
pub const DEFAULT_FLAVORS: &[(&str, &str, &str, &str)] = &[
    ("small", "1", "2Gi", "20Gi"),
    ("medium", "2", "4Gi", "40Gi"),
    ("large", "4", "8Gi", "80Gi"),
];

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "korvet.io",
    version = "v1alpha1",
    kind = "Zone",
    category = "korvet",
    printcolumn = r#"{"name":"Description","type":"string","jsonPath":".spec.description"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ZoneSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}
