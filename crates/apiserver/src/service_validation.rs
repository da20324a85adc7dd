//! Service validation beyond what allocation checks, as upstream's `ValidateService`.

use serde_json::{json, Value};

use crate::error::Cause;

const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// Upstream's `IsValidCIDR`: an IP address, a slash and a prefix length that fits it.
fn is_cidr(text: &str) -> bool {
    let Some((address, prefix)) = text.split_once('/') else {
        return false;
    };
    let Ok(prefix) = prefix.parse::<u8>() else {
        return false;
    };
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => prefix <= 32,
        Ok(std::net::IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

pub(crate) fn validate(service: &Value, _old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = &service["spec"];
    let load_balancer = spec["type"] == json!("LoadBalancer");
    let ranges = spec["loadBalancerSourceRanges"].as_array();
    if let Some(ranges) = ranges.filter(|r| !r.is_empty()) {
        // Upstream's field path keeps a historical capital L.
        let field = "spec.LoadBalancerSourceRanges";
        if !load_balancer {
            causes.push(Cause::new(
                "FieldValueForbidden",
                field,
                "Forbidden: may only be used when `type` is 'LoadBalancer'".to_string(),
            ));
        }
        for (i, value) in ranges.iter().enumerate() {
            let text = value.as_str().unwrap_or_default().trim();
            if !is_cidr(text) {
                causes.push(Cause::invalid(
                    format!("{field}[{i}]"),
                    value,
                    "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                ));
            }
        }
    } else if let Some(annotation) =
        service["metadata"]["annotations"][SOURCE_RANGES_ANNOTATION].as_str()
    {
        let field = format!("metadata.annotations[{SOURCE_RANGES_ANNOTATION}]");
        if !load_balancer {
            causes.push(Cause::new(
                "FieldValueForbidden",
                field,
                "Forbidden: may only be used when `type` is 'LoadBalancer'".to_string(),
            ));
        } else if !annotation
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .all(is_cidr)
        {
            causes.push(Cause::invalid(
                field,
                &json!(annotation),
                "must be a comma separated list of CIDRs",
            ));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ranges_as_upstream() {
        let ok = json!({"spec": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/8", " 2001:db8::/64 "]}});
        assert!(validate(&ok, None).is_empty());
        let bad = json!({"spec": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/8", "10.0.0.0/33", "nonsense"]}});
        let causes = validate(&bad, None);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.LoadBalancerSourceRanges[1]",
                "spec.LoadBalancerSourceRanges[2]"
            ]
        );
        let wrong_type =
            json!({"spec": {"type": "ClusterIP", "loadBalancerSourceRanges": ["10.0.0.0/8"]}});
        assert_eq!(validate(&wrong_type, None)[0].reason, "FieldValueForbidden");
        let annotation = json!({"metadata": {"annotations": {SOURCE_RANGES_ANNOTATION: "10.0.0.0/8, bad"}}, "spec": {"type": "LoadBalancer"}});
        assert!(validate(&annotation, None)[0]
            .message
            .contains("comma separated list of CIDRs"));
    }
}
