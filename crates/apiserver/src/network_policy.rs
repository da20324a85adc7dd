//! NetworkPolicy defaulting and validation as upstream's `networking/validation`:
//! protocols default to TCP and `policyTypes` to Ingress (plus Egress with egress
//! rules); selectors, ports, port ranges, peers and ipBlocks must make sense.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::error::Cause;
use crate::strategy::{validate_label_key, validate_label_value};

pub(crate) fn defaults(policy: &mut Value) {
    let Some(spec) = policy.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for direction in ["ingress", "egress"] {
        for rule in spec
            .get_mut(direction)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            for port in rule
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(port) = port.as_object_mut() {
                    port.entry("protocol").or_insert_with(|| json!("TCP"));
                }
            }
        }
    }
    let has_types = spec
        .get("policyTypes")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    if !has_types {
        let egress = spec
            .get("egress")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty());
        let types = if egress {
            json!(["Ingress", "Egress"])
        } else {
            json!(["Ingress"])
        };
        spec.insert("policyTypes".into(), types);
    }
}

fn validate_selector(field: &str, selector: &Value, causes: &mut Vec<Cause>) {
    if selector.is_null() {
        return;
    }
    for (k, v) in selector["matchLabels"].as_object().into_iter().flatten() {
        let f = format!("{field}.matchLabels");
        causes.extend(validate_label_key(&f, k));
        causes.extend(validate_label_value(&f, v.as_str().unwrap_or_default()));
    }
    for (i, e) in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let f = format!("{field}.matchExpressions[{i}]");
        match e["key"].as_str() {
            Some(key) => causes.extend(validate_label_key(&format!("{f}.key"), key)),
            None => causes.push(Cause::required(format!("{f}.key"))),
        }
        let values = e["values"].as_array().map_or(0, Vec::len);
        match e["operator"].as_str() {
            Some("In" | "NotIn") if values == 0 => causes.push(
                Cause::required(format!("{f}.values"))
                    .with_message("must be specified when `operator` is 'In' or 'NotIn'"),
            ),
            Some("Exists" | "DoesNotExist") if values > 0 => causes.push(Cause::new(
                "FieldValueForbidden",
                format!("{f}.values"),
                "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            Some("In" | "NotIn" | "Exists" | "DoesNotExist") => {}
            other => causes.push(Cause::new(
                "FieldValueNotSupported",
                format!("{f}.operator"),
                format!(
                    "Unsupported value: {:?}: supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\"",
                    other.unwrap_or_default()
                ),
            )),
        }
    }
}

/// An IANA service name as upstream's `IsValidPortName`.
fn is_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn validate_port(field: &str, port: &Value, causes: &mut Vec<Cause>) {
    if let Some(protocol) = port.get("protocol").filter(|p| !p.is_null()) {
        if !matches!(protocol.as_str(), Some("TCP" | "UDP" | "SCTP")) {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                format!("{field}.protocol"),
                format!(
                    "Unsupported value: {protocol}: supported values: \"SCTP\", \"TCP\", \"UDP\""
                ),
            ));
        }
    }
    let number = match &port["port"] {
        Value::Null => None,
        Value::Number(n) => {
            let n = n.as_i64().unwrap_or(0);
            if !(1..=65535).contains(&n) {
                causes.push(Cause::invalid(
                    format!("{field}.port"),
                    &port["port"],
                    "must be between 1 and 65535, inclusive",
                ));
            }
            Some(n)
        }
        Value::String(name) => {
            if !is_port_name(name) {
                causes.push(Cause::invalid(
                    format!("{field}.port"),
                    &port["port"],
                    "must contain only lowercase alphanumeric characters or '-', at least one letter, at most 15 characters, and may not start, end or repeat '-'",
                ));
            }
            None
        }
        other => {
            causes.push(Cause::invalid(
                format!("{field}.port"),
                other,
                "must be a number or a name",
            ));
            None
        }
    };
    let Some(end) = port.get("endPort").filter(|e| !e.is_null()) else {
        return;
    };
    let f = format!("{field}.endPort");
    match (&port["port"], end.as_i64()) {
        (Value::String(_), _) => causes.push(Cause::invalid(
            f,
            end,
            "may not be specified when `port` is non-numeric",
        )),
        (Value::Null, _) => causes.push(Cause::invalid(
            f,
            end,
            "may not be specified when `port` is not specified",
        )),
        (_, Some(e)) if number.is_some_and(|n| e < n) => causes.push(Cause::invalid(
            f,
            end,
            "must be greater than or equal to `port`",
        )),
        (_, Some(e)) if e > 65535 => causes.push(Cause::invalid(
            f,
            end,
            "must be between 1 and 65535, inclusive",
        )),
        (_, Some(_)) => {}
        (_, None) => causes.push(Cause::invalid(f, end, "must be a number")),
    }
}

fn parse_cidr(s: &str) -> Option<(u32, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((u32::from(addr), len))
}

fn parse_cidr6(s: &str) -> bool {
    s.split_once('/').is_some_and(|(a, l)| {
        a.parse::<std::net::Ipv6Addr>().is_ok() && l.parse::<u8>().is_ok_and(|l| l <= 128)
    })
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len)
    }
}

fn validate_ip_block(field: &str, block: &Value, causes: &mut Vec<Cause>) {
    let cidr_field = format!("{field}.cidr");
    let Some(cidr) = block["cidr"].as_str().filter(|c| !c.is_empty()) else {
        causes.push(Cause::required(cidr_field));
        return;
    };
    let outer = parse_cidr(cidr);
    if outer.is_none() && !parse_cidr6(cidr) {
        causes.push(Cause::invalid(
            cidr_field,
            &block["cidr"],
            "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        ));
        return;
    }
    for (i, except) in block["except"].as_array().into_iter().flatten().enumerate() {
        let f = format!("{field}.except[{i}]");
        let inner = except.as_str().and_then(parse_cidr);
        match (outer, inner) {
            (_, None) if except.as_str().is_some_and(parse_cidr6) => {}
            (_, None) => causes.push(Cause::invalid(
                f,
                except,
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            )),
            (Some((oa, ol)), Some((ia, il))) => {
                if il <= ol || (ia & mask(ol)) != (oa & mask(ol)) {
                    causes.push(Cause::invalid(
                        f,
                        except,
                        "must be a strict subset of `cidr`",
                    ));
                }
            }
            (None, Some(_)) => causes.push(Cause::invalid(
                f,
                except,
                "must be a strict subset of `cidr`",
            )),
        }
    }
}

fn validate_peer(field: &str, peer: &Value, causes: &mut Vec<Cause>) {
    let selectors = !peer["podSelector"].is_null() || !peer["namespaceSelector"].is_null();
    let block = !peer["ipBlock"].is_null();
    match (selectors, block) {
        (false, false) => {
            causes.push(Cause::required(field.to_string()).with_message("must specify a peer"))
        }
        (true, true) => causes.push(Cause::new(
            "FieldValueForbidden",
            field,
            "Forbidden: may not specify more than 1 peer type",
        )),
        _ => {}
    }
    validate_selector(
        &format!("{field}.podSelector"),
        &peer["podSelector"],
        causes,
    );
    validate_selector(
        &format!("{field}.namespaceSelector"),
        &peer["namespaceSelector"],
        causes,
    );
    if block {
        validate_ip_block(&format!("{field}.ipBlock"), &peer["ipBlock"], causes);
    }
}

pub(crate) fn validate(policy: &Value, _old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = &policy["spec"];
    validate_selector("spec.podSelector", &spec["podSelector"], &mut causes);
    for (direction, peers) in [("ingress", "from"), ("egress", "to")] {
        for (i, rule) in spec[direction].as_array().into_iter().flatten().enumerate() {
            let field = format!("spec.{direction}[{i}]");
            for (j, port) in rule["ports"].as_array().into_iter().flatten().enumerate() {
                validate_port(&format!("{field}.ports[{j}]"), port, &mut causes);
            }
            for (j, peer) in rule[peers].as_array().into_iter().flatten().enumerate() {
                validate_peer(&format!("{field}.{peers}[{j}]"), peer, &mut causes);
            }
        }
    }
    let types = spec["policyTypes"].as_array();
    for (i, t) in types.into_iter().flatten().enumerate() {
        if !matches!(t.as_str(), Some("Ingress" | "Egress")) {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                format!("spec.policyTypes[{i}]"),
                format!("Unsupported value: {t}: supported values: \"Ingress\", \"Egress\""),
            ));
        }
    }
    if types.is_some_and(|t| t.len() > 2) {
        causes.push(Cause::invalid(
            "spec.policyTypes",
            &spec["policyTypes"],
            "may not specify more than two policyTypes",
        ));
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(policy: Value) -> Vec<String> {
        validate(&policy, None)
            .into_iter()
            .map(|c| c.field)
            .collect()
    }

    #[test]
    fn defaults_protocol_and_policy_types() {
        let mut p = json!({"spec": {"podSelector": {}, "egress": [{"ports": [{"port": 53}]}]}});
        defaults(&mut p);
        assert_eq!(p["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(p["spec"]["egress"][0]["ports"][0]["protocol"], "TCP");
        let mut p = json!({"spec": {"podSelector": {}}});
        defaults(&mut p);
        assert_eq!(p["spec"]["policyTypes"], json!(["Ingress"]));
    }

    #[test]
    fn good_policies_pass() {
        let p = json!({"spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [
                {"podSelector": {}, "namespaceSelector": {"matchExpressions": [
                    {"key": "team", "operator": "In", "values": ["a"]}]}},
                {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                "ports": [{"port": 80, "endPort": 90}, {"protocol": "UDP", "port": "dns"}]}],
            "policyTypes": ["Ingress", "Egress"]}});
        assert_eq!(fields(p), Vec::<String>::new());
    }

    #[test]
    fn bad_policies_name_their_fields() {
        let p = json!({"spec": {
            "podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]},
            "ingress": [{"from": [{}, {"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}},
                    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16", "10.0.0.0/8"]}},
                    {"ipBlock": {"cidr": "nope"}}],
                "ports": [{"port": 0}, {"port": "Bad_Name"}, {"port": "http", "endPort": 90},
                    {"port": 90, "endPort": 80}, {"protocol": "ICMP"}]}],
            "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"a": "b c"}}}]}],
            "policyTypes": ["Ingress", "Sideways"]}});
        assert_eq!(
            fields(p),
            [
                "spec.podSelector.matchExpressions[0].values",
                "spec.ingress[0].ports[0].port",
                "spec.ingress[0].ports[1].port",
                "spec.ingress[0].ports[2].endPort",
                "spec.ingress[0].ports[3].endPort",
                "spec.ingress[0].ports[4].protocol",
                "spec.ingress[0].from[0]",
                "spec.ingress[0].from[1]",
                "spec.ingress[0].from[2].ipBlock.except[0]",
                "spec.ingress[0].from[2].ipBlock.except[1]",
                "spec.ingress[0].from[3].ipBlock.cidr",
                "spec.egress[0].to[0].namespaceSelector.matchLabels",
                "spec.policyTypes[1]",
            ]
        );
    }
}
