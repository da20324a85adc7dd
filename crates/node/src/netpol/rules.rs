//! The nftables ruleset of a [`Model`]: one script that replaces table
//! `inet korvet-netpol` in a single transaction.
//!
//! The `forward` chain accepts established traffic, then sends a packet to the chain of
//! its destination pod if that pod is isolated for ingress (map `ingress-pods`) and to
//! the chain of its source pod if that one is isolated for egress (`egress-pods`). Those
//! chains `return` when a rule allows the packet and `drop` otherwise, so that traffic
//! between two local pods is checked in both directions in one pass (an `accept` would
//! end the base chain). Pods with the same rules share a chain, and peers with the same
//! addresses share a set, so the table grows with distinct policies, not with pods.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::Ipv4Addr;

use super::model::{AddressSet, Model, Ports, Rule};

pub const TABLE: &str = "korvet-netpol";

fn range(a: u32, b: u32) -> String {
    if a == b {
        Ipv4Addr::from(a).to_string()
    } else {
        format!("{}-{}", Ipv4Addr::from(a), Ipv4Addr::from(b))
    }
}

fn port_match(ports: &Ports) -> String {
    let proto = ports.protocol.nft();
    match &ports.ranges {
        None => format!("meta l4proto {proto}"),
        Some(ranges) => {
            let items: Vec<String> = ranges
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            if items.len() == 1 {
                format!("meta l4proto {proto} th dport {}", items[0])
            } else {
                format!("meta l4proto {proto} th dport {{ {} }}", items.join(", "))
            }
        }
    }
}

#[derive(Default)]
struct Renderer {
    sets: HashMap<AddressSet, usize>,
    set_text: String,
    chains: HashMap<(bool, Vec<Rule>), usize>,
    chain_text: String,
}

impl Renderer {
    fn set(&mut self, set: &AddressSet) -> usize {
        if let Some(&id) = self.sets.get(set) {
            return id;
        }
        let id = self.sets.len();
        let elements: Vec<String> = set.0.iter().map(|&(a, b)| range(a, b)).collect();
        let _ = writeln!(
            self.set_text,
            "\tset peers-{id} {{\n\t\ttype ipv4_addr; flags interval;\n\t\telements = {{ {} }}\n\t}}",
            elements.join(", ")
        );
        self.sets.insert(set.clone(), id);
        id
    }

    /// The chain for `rules` of a pod; `ingress` picks the peer's side (source).
    fn chain(&mut self, ingress: bool, rules: &[Rule]) -> String {
        let key = (ingress, rules.to_vec());
        let prefix = if ingress { "ingress" } else { "egress" };
        if let Some(&id) = self.chains.get(&key) {
            return format!("{prefix}-{id}");
        }
        let id = self.chains.len();
        let peer_field = if ingress { "ip saddr" } else { "ip daddr" };
        let mut body = String::new();
        for rule in rules {
            let peers = match &rule.peers {
                None => String::new(),
                Some(set) => format!("{peer_field} @peers-{} ", self.set(set)),
            };
            match &rule.ports {
                None => {
                    let _ = writeln!(body, "\t\t{peers}return");
                }
                Some(ports) => {
                    for p in ports {
                        let _ = writeln!(body, "\t\t{peers}{} return", port_match(p));
                    }
                }
            }
        }
        let _ = writeln!(
            self.chain_text,
            "\tchain {prefix}-{id} {{\n{body}\t\tdrop\n\t}}"
        );
        self.chains.insert(key, id);
        format!("{prefix}-{id}")
    }
}

fn verdict_map(name: &str, elements: &[(Ipv4Addr, String)]) -> String {
    let mut text = format!("\tmap {name} {{\n\t\ttype ipv4_addr : verdict;\n");
    if !elements.is_empty() {
        let items: Vec<String> = elements
            .iter()
            .map(|(ip, chain)| format!("{ip} : jump {chain}"))
            .collect();
        let _ = writeln!(text, "\t\telements = {{ {} }}", items.join(", "));
    }
    text.push_str("\t}\n");
    text
}

/// The whole table for `model`, replacing any previous one atomically (`nft -f`
/// applies a script as one transaction).
pub fn render(model: &Model) -> String {
    let mut r = Renderer::default();
    let ingress: Vec<(Ipv4Addr, String)> = model
        .ingress
        .iter()
        .map(|(ip, rules)| (*ip, r.chain(true, rules)))
        .collect();
    let egress: Vec<(Ipv4Addr, String)> = model
        .egress
        .iter()
        .map(|(ip, rules)| (*ip, r.chain(false, rules)))
        .collect();
    let mut out = String::new();
    let _ = writeln!(out, "add table inet {TABLE}\ndelete table inet {TABLE}");
    let _ = writeln!(out, "table inet {TABLE} {{");
    out.push_str(&r.set_text);
    out.push_str(&r.chain_text);
    out.push_str(&verdict_map("ingress-pods", &ingress));
    out.push_str(&verdict_map("egress-pods", &egress));
    out.push_str(
        "\tchain forward {\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tct state established,related accept\n\
         \t\tct state invalid drop\n\
         \t\tip daddr vmap @ingress-pods\n\
         \t\tip saddr vmap @egress-pods\n\
         \t}\n}\n",
    );
    out
}
