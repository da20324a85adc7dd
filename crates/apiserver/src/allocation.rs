//! Service ClusterIP, NodePort and health-check node port allocation.
//!
//! Each allocated address or port is a key under `/registry/ranges/` claimed with a
//! create-if-absent transaction, naming its owner Service by uid. A claim whose owner no
//! longer exists (a Service deleted, or a create that failed after claiming) is taken
//! over by the next allocation, so nothing needs releasing and nothing leaks for good.

use std::net::Ipv4Addr;

use korvet_store::{Compare, PutRequest, Txn, TxnOp};
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult, Cause};
use crate::handlers::Call;

/// Upstream's default service range.
pub(crate) const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);
pub(crate) const NODE_PORT_RANGE: (u16, u16) = (30000, 32767);
const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

fn cidr_contains((base, bits): (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - bits);
    u32::from(ip) & mask == u32::from(base) & mask
}

fn owner(object: &Value) -> String {
    format!(
        "{}/{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default(),
        object["metadata"]["uid"].as_str().unwrap_or_default()
    )
}

/// Claims `key` for `owner` unless a live Service holds it. Returns whether it is ours.
async fn claim(call: &Call<'_>, key: &str, owner: &str) -> ApiResult<bool> {
    let store = call.server.objects.store();
    let current = store.get(key.as_bytes()).await?;
    let compare = match &current {
        None => Compare::absent(key),
        Some(kv) => {
            let holder = String::from_utf8_lossy(&kv.value).to_string();
            if holder == owner {
                return Ok(true);
            }
            if holder_alive(call, &holder).await? {
                return Ok(false);
            }
            Compare::mod_revision(key, kv.mod_revision)
        }
    };
    let resp = store
        .txn(
            Txn::new()
                .when([compare])
                .and_then([TxnOp::Put(PutRequest::new(key, owner.as_bytes().to_vec()))]),
        )
        .await?;
    Ok(resp.succeeded)
}

async fn holder_alive(call: &Call<'_>, holder: &str) -> ApiResult<bool> {
    let mut parts = holder.splitn(3, '/');
    let (Some(ns), Some(name), Some(uid)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(false);
    };
    let Some(services) = call.server.registry.get("", "v1", "services") else {
        return Ok(false);
    };
    Ok(
        match call
            .server
            .objects
            .get(&services.key(Some(ns), name))
            .await?
        {
            Some((svc, _)) => svc["metadata"]["uid"].as_str() == Some(uid),
            None => false,
        },
    )
}

async fn allocate_ip(call: &Call<'_>, owner: &str) -> ApiResult<Ipv4Addr> {
    let (base, bits) = call.server.service_cidr();
    let size = 1u32 << (32 - bits);
    // Skip the network address and the first host (the `kubernetes` Service's address
    // and the 10th (cluster DNS) are handed out by request, not at random).
    let start = uuid::Uuid::new_v4().as_u128() as u32 % (size - 2);
    for i in 0..(size - 2) {
        let offset = 1 + (start + i) % (size - 2);
        if offset == 1 || offset == 10 {
            continue;
        }
        let ip = Ipv4Addr::from(u32::from(base) + offset);
        if claim(call, &format!("{IP_PREFIX}{ip}"), owner).await? {
            return Ok(ip);
        }
    }
    Err(ApiError::internal("the service IP range is full"))
}

async fn allocate_port(call: &Call<'_>, owner: &str) -> ApiResult<u16> {
    let (low, high) = NODE_PORT_RANGE;
    let span = u32::from(high - low) + 1;
    let start = uuid::Uuid::new_v4().as_u128() as u32 % span;
    for i in 0..span {
        let port = low + ((start + i) % span) as u16;
        if claim(call, &format!("{PORT_PREFIX}{port}"), owner).await? {
            return Ok(port);
        }
    }
    Err(ApiError::internal("the node port range is full"))
}

fn invalid(call: &Call<'_>, object: &Value, cause: Cause) -> ApiError {
    ApiError::invalid(
        &call
            .resource
            .target(object["metadata"]["name"].as_str().unwrap_or_default()),
        vec![cause],
    )
}

/// Assigns a ClusterIP and node ports to a new Service.
pub(crate) async fn before_create(call: &Call<'_>, object: &mut Value) -> ApiResult<()> {
    if call.resource.kind != "Service" || !call.resource.group.is_empty() {
        return Ok(());
    }
    allocate(call, None, object).await
}

pub(crate) fn before_update(call: &Call<'_>, old: &Value, object: &mut Value) -> ApiResult<()> {
    if call.resource.kind != "Service" || !call.resource.group.is_empty() {
        return Ok(());
    }
    let old_ip = old["spec"]["clusterIP"].as_str().unwrap_or_default();
    match object["spec"]["clusterIP"].as_str() {
        None | Some("") => {
            object["spec"]["clusterIP"] = json!(old_ip);
            object["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
        }
        Some(ip) if ip != old_ip => {
            return Err(invalid(
                call,
                object,
                Cause::invalid("spec.clusterIPs[0]", &json!(ip), "may not change once set"),
            ))
        }
        _ => {}
    }
    // The health-check node port stays while the policy stays Local.
    if object["spec"]["healthCheckNodePort"].is_null()
        && object["spec"]["externalTrafficPolicy"] == "Local"
        && !old["spec"]["healthCheckNodePort"].is_null()
    {
        object["spec"]["healthCheckNodePort"] = old["spec"]["healthCheckNodePort"].clone();
    }
    // Ports keep their node ports across updates (kubectl apply omits them).
    let old_ports = old["spec"]["ports"].as_array().cloned().unwrap_or_default();
    if let Some(ports) = object["spec"]["ports"].as_array_mut() {
        for port in ports.iter_mut() {
            if port["nodePort"].is_null() {
                if let Some(previous) = old_ports
                    .iter()
                    .find(|p| p["port"] == port["port"] && p["protocol"] == port["protocol"])
                {
                    if !previous["nodePort"].is_null() {
                        port["nodePort"] = previous["nodePort"].clone();
                    }
                }
            }
        }
    }
    Ok(())
}

async fn allocate(call: &Call<'_>, _old: Option<&Value>, object: &mut Value) -> ApiResult<()> {
    let owner = owner(object);
    let kind = object["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    if kind == "ExternalName" {
        return Ok(());
    }
    match object["spec"]["clusterIP"].as_str() {
        Some("None") => {
            object["spec"]["clusterIPs"] = json!(["None"]);
        }
        Some(ip) if !ip.is_empty() => {
            let parsed: Ipv4Addr = ip.parse().map_err(|_| {
                invalid(
                    call,
                    object,
                    Cause::invalid(
                        "spec.clusterIPs[0]",
                        &json!(ip),
                        "must be a valid IP address",
                    ),
                )
            })?;
            let range = call.server.service_cidr();
            if !cidr_contains(range, parsed) {
                return Err(invalid(
                    call,
                    object,
                    Cause::invalid(
                        "spec.clusterIPs[0]",
                        &json!(ip),
                        &format!("provided IP is not in the valid range. The range of valid IPs is {}/{}", range.0, range.1),
                    ),
                ));
            }
            if !claim(call, &format!("{IP_PREFIX}{parsed}"), &owner).await? {
                return Err(invalid(
                    call,
                    object,
                    Cause::invalid(
                        "spec.clusterIPs",
                        &json!([ip]),
                        &format!("failed to allocate IP {ip}: provided IP is already allocated"),
                    ),
                ));
            }
            object["spec"]["clusterIPs"] = json!([ip]);
        }
        _ => {
            let ip = allocate_ip(call, &owner).await?.to_string();
            object["spec"]["clusterIP"] = json!(ip);
            object["spec"]["clusterIPs"] = json!([ip]);
        }
    }
    if kind == "NodePort" || kind == "LoadBalancer" {
        let count = object["spec"]["ports"].as_array().map_or(0, Vec::len);
        for i in 0..count {
            let requested = object["spec"]["ports"][i]["nodePort"].as_i64();
            let port = match requested {
                Some(p) => {
                    let in_range =
                        (i64::from(NODE_PORT_RANGE.0)..=i64::from(NODE_PORT_RANGE.1)).contains(&p);
                    if !in_range {
                        return Err(invalid(
                            call,
                            object,
                            Cause::invalid(format!("spec.ports[{i}].nodePort"), &json!(p), "provided port is not in the valid range. The range of valid ports is 30000-32767"),
                        ));
                    }
                    if !claim(call, &format!("{PORT_PREFIX}{p}"), &owner).await? {
                        return Err(invalid(
                            call,
                            object,
                            Cause::invalid(
                                format!("spec.ports[{i}].nodePort"),
                                &json!(p),
                                "provided port is already allocated",
                            ),
                        ));
                    }
                    p as u16
                }
                None => allocate_port(call, &owner).await?,
            };
            object["spec"]["ports"][i]["nodePort"] = json!(port);
        }
        if object["spec"]["externalTrafficPolicy"] == "Local" {
            let port = match object["spec"]["healthCheckNodePort"].as_i64() {
                Some(p) => {
                    let in_range =
                        (i64::from(NODE_PORT_RANGE.0)..=i64::from(NODE_PORT_RANGE.1)).contains(&p);
                    if !in_range || !claim(call, &format!("{PORT_PREFIX}{p}"), &owner).await? {
                        return Err(invalid(
                            call,
                            object,
                            Cause::invalid(
                                "spec.healthCheckNodePort",
                                &json!(p),
                                "provided port is out of range or already allocated",
                            ),
                        ));
                    }
                    p as u16
                }
                // The node agents serve it for load balancers to probe.
                None => allocate_port(call, &owner).await?,
            };
            object["spec"]["healthCheckNodePort"] = json!(port);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_range() {
        assert!(cidr_contains(SERVICE_CIDR, Ipv4Addr::new(10, 96, 0, 1)));
        assert!(cidr_contains(
            SERVICE_CIDR,
            Ipv4Addr::new(10, 111, 255, 254)
        ));
        assert!(!cidr_contains(SERVICE_CIDR, Ipv4Addr::new(10, 112, 0, 1)));
        let small = (Ipv4Addr::new(10, 100, 0, 0), 16);
        assert!(cidr_contains(small, Ipv4Addr::new(10, 100, 3, 4)));
        assert!(!cidr_contains(small, Ipv4Addr::new(10, 96, 0, 1)));
    }
}
