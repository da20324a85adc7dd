//! The nft script of a [`Model`]: the whole table (one transaction that replaces it),
//! or the difference between two models (one transaction touching only the Service
//! ports that changed), modelled on upstream kube-proxy's nftables mode.
//!
//! Lookups go through maps (`service-ips`, `service-nodeports`), so the cost of a
//! packet does not grow with the number of Services; each Service port has a chain that
//! picks an endpoint (`numgen random` over a verdict map, after the session-affinity
//! sets), and each endpoint a chain that DNATs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::model::{Endpoint, Model, PortKey, ServicePort};

pub const TABLE: &str = "korvet-proxy";
/// Packet mark of connections to masquerade (NodePort from elsewhere, hairpin).
pub const MASQUERADE_MARK: u32 = 0x4000;
const NAME_LIMIT: usize = 200;

/// The chains, sets and map elements of one Service port.
#[derive(Debug, Default, PartialEq, Eq)]
struct PortObjects {
    /// Chain name → rules; endpoint chains first, so they exist before their users.
    chains: BTreeMap<String, Vec<String>>,
    /// Session-affinity set name → its definition.
    sets: BTreeMap<String, String>,
    /// `service-ips` element key → verdict.
    ips: BTreeMap<String, String>,
    /// `service-nodeports` element key → verdict.
    node_ports: BTreeMap<String, String>,
    no_endpoint_ips: BTreeSet<String>,
    no_endpoint_node_ports: BTreeSet<String>,
}

/// Readable and deterministic; a hash keeps over-long names unique.
fn name(prefix: &str, body: &str) -> String {
    let full = format!("{prefix}-{body}");
    if full.len() <= NAME_LIMIT {
        return full;
    }
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in full.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut cut = NAME_LIMIT - 17;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash:016x}", &full[..cut])
}

fn port_label(key: &PortKey, port: &ServicePort) -> String {
    let port_name = if key.port_name.is_empty() {
        format!("p{}", port.port)
    } else {
        key.port_name.clone()
    };
    format!(
        "{}/{}/{}/{}",
        key.namespace,
        key.name,
        key.protocol.nft(),
        port_name
    )
}

fn pick_rules(
    rules: &mut Vec<String>,
    endpoints: &[Endpoint],
    chain_of: &dyn Fn(&Endpoint) -> String,
    affinity_of: &dyn Fn(&Endpoint) -> Option<String>,
) {
    for endpoint in endpoints {
        if let Some(set) = affinity_of(endpoint) {
            rules.push(format!("ip saddr @{set} goto {}", chain_of(endpoint)));
        }
    }
    let mut vmap = String::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        if i > 0 {
            vmap.push_str(", ");
        }
        let _ = write!(vmap, "{i} : goto {}", chain_of(endpoint));
    }
    rules.push(format!(
        "numgen random mod {} vmap {{ {vmap} }}",
        endpoints.len()
    ));
}

fn port_objects(key: &PortKey, port: &ServicePort) -> PortObjects {
    let label = port_label(key, port);
    let proto = key.protocol.nft();
    let mut objects = PortObjects::default();
    let endpoint_label = |e: &Endpoint| format!("{label}__{}/{}", e.ip, e.port);
    let chain_of = |e: &Endpoint| name("ep", &endpoint_label(e));
    let affinity_of = |e: &Endpoint| {
        port.affinity_timeout
            .map(|_| name("aff", &endpoint_label(e)))
    };
    let all: BTreeSet<Endpoint> = port
        .endpoints
        .iter()
        .chain(&port.external_endpoints)
        .copied()
        .collect();
    for endpoint in &all {
        let mut rules = vec![format!("ip saddr {} jump mark-for-masquerade", endpoint.ip)];
        if let (Some(set), Some(timeout)) = (affinity_of(endpoint), port.affinity_timeout) {
            objects.sets.insert(
                set.clone(),
                format!("{{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"),
            );
            rules.push(format!("update @{set} {{ ip saddr }}"));
        }
        rules.push(format!(
            "meta l4proto {proto} dnat to {}:{}",
            endpoint.ip, endpoint.port
        ));
        objects.chains.insert(chain_of(endpoint), rules);
    }
    let service_chain = name("svc", &label);
    let ip_key = |ip: &std::net::Ipv4Addr| format!("{ip} . {proto} . {}", port.port);
    if port.endpoints.is_empty() {
        objects.no_endpoint_ips.insert(ip_key(&port.cluster_ip));
    } else {
        let mut rules = Vec::new();
        pick_rules(&mut rules, &port.endpoints, &chain_of, &affinity_of);
        objects.chains.insert(service_chain.clone(), rules);
        objects
            .ips
            .insert(ip_key(&port.cluster_ip), format!("goto {service_chain}"));
    }
    if port.node_port.is_none() && port.external_ips.is_empty() {
        return objects;
    }
    if port.external_endpoints.is_empty() {
        for ip in &port.external_ips {
            objects.no_endpoint_ips.insert(ip_key(ip));
        }
        if let Some(node_port) = port.node_port {
            objects
                .no_endpoint_node_ports
                .insert(format!("{proto} . {node_port}"));
        }
        return objects;
    }
    let external_chain = name("ext", &label);
    let mut rules = Vec::new();
    if !port.external_local {
        // The reply must come back through this node to be un-NATed.
        rules.push("jump mark-for-masquerade".to_string());
    }
    if port.external_endpoints == port.endpoints {
        rules.push(format!("goto {service_chain}"));
    } else {
        pick_rules(
            &mut rules,
            &port.external_endpoints,
            &chain_of,
            &affinity_of,
        );
    }
    objects.chains.insert(external_chain.clone(), rules);
    for ip in &port.external_ips {
        objects
            .ips
            .insert(ip_key(ip), format!("goto {external_chain}"));
    }
    if let Some(node_port) = port.node_port {
        objects.node_ports.insert(
            format!("{proto} . {node_port}"),
            format!("goto {external_chain}"),
        );
    }
    objects
}

/// Rules inside a chain may refer to chains of the same port; endpoint chains ("ep-")
/// sort before the others ("ext-", "svc-") only by luck, so order explicitly.
fn chain_order(objects: &PortObjects) -> Vec<(&String, &Vec<String>)> {
    let mut chains: Vec<_> = objects.chains.iter().collect();
    chains.sort_by_key(|(name, _)| (!name.starts_with("ep-"), name.starts_with("ext-")));
    chains
}

/// Rejects happen before DNAT and routing (prerouting, and output for the node's own
/// clients), so a client gets its answer even where no route covers the ClusterIP.
fn base(out: &mut String) {
    let t = TABLE;
    let mark = MASQUERADE_MARK;
    let _ = writeln!(
        out,
        "add map ip {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; }}\n\
         add map ip {t} service-nodeports {{ type inet_proto . inet_service : verdict; }}\n\
         add set ip {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service; }}\n\
         add set ip {t} no-endpoint-nodeports {{ type inet_proto . inet_service; }}\n\
         add chain ip {t} mark-for-masquerade\n\
         add rule ip {t} mark-for-masquerade meta mark set meta mark or {mark:#x}\n\
         add chain ip {t} services\n\
         add rule ip {t} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule ip {t} services fib daddr type local meta l4proto . th dport vmap @service-nodeports\n\
         add chain ip {t} nat-prerouting {{ type nat hook prerouting priority dstnat; }}\n\
         add rule ip {t} nat-prerouting jump services\n\
         add chain ip {t} nat-output {{ type nat hook output priority -100; }}\n\
         add rule ip {t} nat-output jump services\n\
         add chain ip {t} nat-postrouting {{ type nat hook postrouting priority srcnat; }}\n\
         add rule ip {t} nat-postrouting meta mark & {mark:#x} == 0 return\n\
         add rule ip {t} nat-postrouting meta mark set meta mark xor {mark:#x}\n\
         add rule ip {t} nat-postrouting masquerade fully-random\n\
         add chain ip {t} reject-chain\n\
         add rule ip {t} reject-chain ip daddr . meta l4proto . th dport @no-endpoint-services reject\n\
         add rule ip {t} reject-chain fib daddr type local meta l4proto . th dport @no-endpoint-nodeports reject\n\
         add chain ip {t} filter-prerouting {{ type filter hook prerouting priority -110; }}\n\
         add rule ip {t} filter-prerouting ct state new jump reject-chain\n\
         add chain ip {t} filter-output {{ type filter hook output priority -1; }}\n\
         add rule ip {t} filter-output ct state new jump reject-chain"
    );
}

fn add_objects(out: &mut String, objects: &PortObjects, only_changed_from: Option<&PortObjects>) {
    let t = TABLE;
    for (set, definition) in &objects.sets {
        let _ = writeln!(out, "add set ip {t} {set} {definition}");
    }
    let chains = chain_order(objects);
    for (chain, _) in &chains {
        let _ = writeln!(out, "add chain ip {t} {chain}");
    }
    for (chain, rules) in &chains {
        if let Some(old) = only_changed_from {
            if old.chains.get(*chain) == Some(*rules) {
                continue;
            }
            if old.chains.contains_key(*chain) {
                let _ = writeln!(out, "flush chain ip {t} {chain}");
            }
        }
        for rule in rules.iter() {
            let _ = writeln!(out, "add rule ip {t} {chain} {rule}");
        }
    }
}

fn add_elements(out: &mut String, objects: &PortObjects, old: Option<&PortObjects>) {
    let t = TABLE;
    let skip_map = |map: &str, key: &String, value: &String| {
        old.is_some_and(|o| {
            let m = if map == "service-ips" {
                &o.ips
            } else {
                &o.node_ports
            };
            m.get(key) == Some(value)
        })
    };
    for (map, elements) in [
        ("service-ips", &objects.ips),
        ("service-nodeports", &objects.node_ports),
    ] {
        for (key, verdict) in elements {
            if !skip_map(map, key, verdict) {
                let _ = writeln!(out, "add element ip {t} {map} {{ {key} : {verdict} }}");
            }
        }
    }
    for (set, elements) in [
        ("no-endpoint-services", &objects.no_endpoint_ips),
        ("no-endpoint-nodeports", &objects.no_endpoint_node_ports),
    ] {
        for key in elements {
            let had = old.is_some_and(|o| {
                let s = if set == "no-endpoint-services" {
                    &o.no_endpoint_ips
                } else {
                    &o.no_endpoint_node_ports
                };
                s.contains(key)
            });
            if !had {
                let _ = writeln!(out, "add element ip {t} {set} {{ {key} }}");
            }
        }
    }
}

/// Deletes the elements of `old` that `new` does not have with the same value.
fn delete_elements(out: &mut String, old: &PortObjects, new: &PortObjects) {
    let t = TABLE;
    for (map, before, after) in [
        ("service-ips", &old.ips, &new.ips),
        ("service-nodeports", &old.node_ports, &new.node_ports),
    ] {
        for (key, verdict) in before {
            if after.get(key) != Some(verdict) {
                let _ = writeln!(out, "delete element ip {t} {map} {{ {key} }}");
            }
        }
    }
    for (set, before, after) in [
        (
            "no-endpoint-services",
            &old.no_endpoint_ips,
            &new.no_endpoint_ips,
        ),
        (
            "no-endpoint-nodeports",
            &old.no_endpoint_node_ports,
            &new.no_endpoint_node_ports,
        ),
    ] {
        for key in before.difference(after) {
            let _ = writeln!(out, "delete element ip {t} {set} {{ {key} }}");
        }
    }
}

/// The script that replaces the whole table with `model`'s (atomic: one transaction).
pub fn render_full(model: &Model) -> String {
    let t = TABLE;
    let mut out = String::with_capacity(256 + model.ports.len() * 1024);
    // `add` first, so that `delete` succeeds whether or not the table exists.
    let _ = writeln!(
        out,
        "add table ip {t}\ndelete table ip {t}\nadd table ip {t}"
    );
    base(&mut out);
    for (key, port) in &model.ports {
        add_objects(&mut out, &port_objects(key, port), None);
    }
    for (key, port) in &model.ports {
        add_elements(&mut out, &port_objects(key, port), None);
    }
    out
}

/// The script that turns a table holding `old` into one holding `new`, touching only
/// the Service ports that changed; empty when nothing did. Returns the full script when
/// a set must change its definition (an affinity timeout), which nft cannot do in place.
pub fn render_diff(old: &Model, new: &Model) -> String {
    let t = TABLE;
    let empty = PortObjects::default();
    let mut head = String::new();
    let mut deletes = String::new();
    let mut middle = String::new();
    let mut tail_flush = String::new();
    let mut tail_delete = String::new();
    let keys: BTreeSet<&PortKey> = old.ports.keys().chain(new.ports.keys()).collect();
    for key in keys {
        let (before, after) = (old.ports.get(key), new.ports.get(key));
        if before == after {
            continue;
        }
        let before = before.map(|p| port_objects(key, p));
        let after = after.map(|p| port_objects(key, p));
        let before = before.as_ref().unwrap_or(&empty);
        let after = after.as_ref().unwrap_or(&empty);
        for (set, definition) in &after.sets {
            if before.sets.get(set).is_some_and(|d| d != definition) {
                return render_full(new);
            }
        }
        // New sets and chains first, then the maps switch over, then rules change, and
        // only then go the chains and sets nothing refers to any more.
        let mut added = String::new();
        add_objects(&mut added, after, Some(before));
        for line in added.lines() {
            if line.starts_with("add set") || line.starts_with("add chain") {
                let _ = writeln!(head, "{line}");
            } else {
                let _ = writeln!(middle, "{line}");
            }
        }
        delete_elements(&mut deletes, before, after);
        add_elements(&mut deletes, after, Some(before));
        for chain in before
            .chains
            .keys()
            .filter(|c| !after.chains.contains_key(*c))
        {
            let _ = writeln!(tail_flush, "flush chain ip {t} {chain}");
            let _ = writeln!(tail_delete, "delete chain ip {t} {chain}");
        }
        for set in before.sets.keys().filter(|s| !after.sets.contains_key(*s)) {
            let _ = writeln!(tail_delete, "delete set ip {t} {set}");
        }
    }
    let mut out = head;
    out.push_str(&deletes);
    out.push_str(&middle);
    out.push_str(&tail_flush);
    // Chains before sets: a chain's rules may refer to a set.
    let (chains, sets): (Vec<&str>, Vec<&str>) = tail_delete
        .lines()
        .partition(|l| l.starts_with("delete chain"));
    for line in chains.into_iter().chain(sets) {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// Service ports with at least one endpoint.
pub fn count_services(model: &Model) -> usize {
    model
        .ports
        .values()
        .filter(|p| !p.endpoints.is_empty())
        .count()
}

#[cfg(test)]
mod tests {
    use super::super::model::Protocol;
    use super::*;

    fn model(endpoints: &[&str], affinity: Option<u32>) -> Model {
        let mut m = Model::default();
        m.ports.insert(
            PortKey {
                namespace: "default".into(),
                name: "web".into(),
                port_name: "http".into(),
                protocol: Protocol::Tcp,
            },
            ServicePort {
                cluster_ip: "10.96.0.20".parse().unwrap(),
                port: 80,
                node_port: Some(30080),
                external_ips: vec![],
                endpoints: endpoints
                    .iter()
                    .map(|ip| Endpoint {
                        ip: ip.parse().unwrap(),
                        port: 8080,
                    })
                    .collect(),
                external_endpoints: endpoints
                    .iter()
                    .map(|ip| Endpoint {
                        ip: ip.parse().unwrap(),
                        port: 8080,
                    })
                    .collect(),
                external_local: false,
                affinity_timeout: affinity,
            },
        );
        m
    }

    #[test]
    fn full_script_maps_the_cluster_ip_and_node_port() {
        let script = render_full(&model(&["10.244.1.2", "10.244.2.2"], Some(60)));
        assert!(script.contains(
            "add element ip korvet-proxy service-ips { 10.96.0.20 . tcp . 80 : goto svc-default/web/tcp/http }"
        ), "{script}");
        assert!(
            script.contains("service-nodeports { tcp . 30080 : goto ext-default/web/tcp/http }")
        );
        assert!(script.contains("numgen random mod 2 vmap { 0 : goto ep-default/web/tcp/http__10.244.1.2/8080, 1 : goto ep-default/web/tcp/http__10.244.2.2/8080 }"));
        assert!(script.contains("timeout 60s"));
        assert!(script.contains("dnat to 10.244.2.2:8080"));
    }

    #[test]
    fn diff_touches_only_changes() {
        let a = model(&["10.244.1.2", "10.244.2.2"], None);
        let b = model(&["10.244.1.2"], None);
        assert_eq!(render_diff(&a, &a), "");
        let diff = render_diff(&a, &b);
        assert!(
            diff.contains("flush chain ip korvet-proxy svc-default/web/tcp/http"),
            "{diff}"
        );
        assert!(
            diff.contains("delete chain ip korvet-proxy ep-default/web/tcp/http__10.244.2.2/8080")
        );
        assert!(!diff.contains("service-ips"), "{diff}");
        let none = model(&[], None);
        let diff = render_diff(&a, &none);
        assert!(
            diff.contains("delete element ip korvet-proxy service-ips { 10.96.0.20 . tcp . 80 }")
        );
        assert!(diff.contains(
            "add element ip korvet-proxy no-endpoint-services { 10.96.0.20 . tcp . 80 }"
        ));
        assert!(diff.contains("delete chain ip korvet-proxy svc-default/web/tcp/http"));
    }

    #[test]
    fn long_names_are_cut_with_a_hash() {
        let long = "x".repeat(300);
        let a = name("svc", &long);
        assert!(a.len() <= NAME_LIMIT);
        assert_ne!(a, name("svc", &format!("{long}y")));
    }
}
