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

/// Parses a Kubernetes quantity into a plain number (CPU cores, or bytes): `500m`, `2`,
/// `4Gi`, `1G`, `1.5`. `None` for anything else.
pub fn parse_quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    (number.is_finite() && number >= 0.0).then_some(number * factor)
}

#[cfg(test)]
mod tests {
    use super::parse_quantity;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("4Gi"), Some(4.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("1.5"), Some(1.5));
        assert_eq!(parse_quantity("four"), None);
        assert_eq!(parse_quantity("4Qi"), None);
        assert_eq!(parse_quantity("-1"), None);
    }
}
