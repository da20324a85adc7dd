//! The nftables rules of a load-balancer instance, rendered from its configuration and
//! the backends now up (pure), replaced whole in one transaction.
//!
//! Kernel-forwarded listeners DNAT to a backend chosen by a hash of the client's address
//! and port. A hash rather than a random pick, so that the standby, which holds the
//! same rules, sends a connection it picks up after a failover to the same backend (the
//! kernel takes up mid-stream TCP flows by default), and established connections can
//! survive the move. Forwarding is refused for anything not DNATed by a listener, so
//! that nothing on the external side reaches the cluster's network except through one.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::SocketAddr;

use super::config::{EdgeConfig, Listener};

pub const TABLE: &str = "korvet-lb";
/// The hash's seed: fixed, so every instance chooses alike.
const SEED: &str = "0x6b727674";

/// The whole table for `config`, with `up` (listener name -> backends up, in the
/// configuration's order) for the forwarded listeners.
pub fn render(config: &EdgeConfig, up: &HashMap<String, Vec<SocketAddr>>) -> String {
    let mut out = String::new();
    // `add` then `delete`: the table goes even if it did not exist, in one transaction
    // with the new one, so packets never see a half-made table.
    let _ = writeln!(out, "add table ip {TABLE}");
    let _ = writeln!(out, "delete table ip {TABLE}");
    let _ = writeln!(out, "table ip {TABLE} {{");
    if !config.masquerade.is_empty() {
        let elements: Vec<String> = config.masquerade.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(
            out,
            "  set masquerade-sources {{ type ipv4_addr; flags interval; elements = {{ {} }}; }}",
            elements.join(", ")
        );
    }

    let _ = writeln!(out, "  chain filter-prerouting {{");
    let _ = writeln!(
        out,
        "    type filter hook prerouting priority -150; policy accept;"
    );
    for l in config
        .listeners
        .iter()
        .filter(|l| !l.source_ranges.is_empty())
    {
        let ranges: Vec<String> = l.source_ranges.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(
            out,
            "    ip daddr {} {} dport {} ip saddr != {{ {} }} drop",
            l.address,
            l.protocol.as_str(),
            l.port,
            ranges.join(", ")
        );
    }
    let _ = writeln!(out, "  }}");

    let _ = writeln!(out, "  chain nat-prerouting {{");
    let _ = writeln!(
        out,
        "    type nat hook prerouting priority dstnat; policy accept;"
    );
    let forwarded: Vec<(usize, &Listener)> = config
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| l.forwarded())
        .collect();
    for (i, l) in &forwarded {
        // Without a backend up there is no jump: the packet reaches the instance itself,
        // which has no socket there and refuses it (RST, port unreachable).
        if up.get(&l.name).is_some_and(|b| !b.is_empty()) {
            let _ = writeln!(
                out,
                "    ip daddr {} {} dport {} jump listener-{i}",
                l.address,
                l.protocol.as_str(),
                l.port
            );
        }
    }
    let _ = writeln!(out, "  }}");
    for (i, l) in &forwarded {
        let Some(backends) = up.get(&l.name).filter(|b| !b.is_empty()) else {
            continue;
        };
        let arms: Vec<String> = (0..backends.len())
            .map(|j| format!("{j} : goto listener-{i}-{j}"))
            .collect();
        let _ = writeln!(
            out,
            "  chain listener-{i} {{\n    jhash ip saddr . {} sport mod {} seed {SEED} vmap {{ {} }}\n  }}",
            l.protocol.as_str(),
            backends.len(),
            arms.join(", ")
        );
        for (j, backend) in backends.iter().enumerate() {
            let _ = writeln!(
                out,
                "  chain listener-{i}-{j} {{ meta l4proto {} dnat to {backend}; }}",
                l.protocol.as_str()
            );
        }
    }

    let _ = writeln!(out, "  chain nat-postrouting {{");
    let _ = writeln!(
        out,
        "    type nat hook postrouting priority srcnat; policy accept;"
    );
    if !config.masquerade.is_empty() {
        let _ = writeln!(
            out,
            "    ct status dnat ip saddr @masquerade-sources masquerade"
        );
    }
    let _ = writeln!(out, "  }}");

    let _ = writeln!(out, "  chain forward {{");
    let _ = writeln!(
        out,
        "    type filter hook forward priority filter; policy drop;"
    );
    let _ = writeln!(out, "    ct state established,related accept");
    let _ = writeln!(out, "    ct status dnat accept");
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::config::{BackendCheck, Protocol};
    use crate::proxy_protocol::Version;

    fn listener(name: &str, port: u16, protocol: Protocol) -> Listener {
        Listener {
            name: name.into(),
            address: "10.200.16.1".parse().unwrap(),
            port,
            protocol,
            proxy_protocol: None,
            tls: None,
            backends: vec![
                "10.201.4.11:30080".parse().unwrap(),
                "10.201.4.12:30080".parse().unwrap(),
            ],
            health: BackendCheck::default(),
            source_ranges: Vec::new(),
            http: None,
        }
    }

    #[test]
    fn forwarded_listeners_hash_over_the_backends_up() {
        let mut web = listener("web", 80, Protocol::Tcp);
        web.source_ranges = vec!["10.200.0.0/24".parse().unwrap()];
        let dns = listener("dns", 53, Protocol::Udp);
        let mut proxied = listener("proxied", 443, Protocol::Tcp);
        proxied.proxy_protocol = Some(Version::V2);
        let config = EdgeConfig {
            admin_listen: None,
            masquerade: vec!["10.200.0.1/32".parse().unwrap()],
            listeners: vec![web, dns, proxied],
        };
        let up = HashMap::from([
            (
                "web".to_string(),
                vec![
                    "10.201.4.11:30080".parse().unwrap(),
                    "10.201.4.12:30080".parse().unwrap(),
                ],
            ),
            ("dns".to_string(), vec![]),
            (
                "proxied".to_string(),
                vec!["10.201.4.11:30080".parse().unwrap()],
            ),
        ]);
        let script = render(&config, &up);
        assert!(
            script.contains("ip daddr 10.200.16.1 tcp dport 80 ip saddr != { 10.200.0.0/24 } drop"),
            "{script}"
        );
        assert!(
            script.contains("ip daddr 10.200.16.1 tcp dport 80 jump listener-0"),
            "{script}"
        );
        assert!(script.contains("jhash ip saddr . tcp sport mod 2 seed 0x6b727674 vmap { 0 : goto listener-0-0, 1 : goto listener-0-1 }"), "{script}");
        assert!(
            script.contains("chain listener-0-1 { meta l4proto tcp dnat to 10.201.4.12:30080; }"),
            "{script}"
        );
        // No backend up: no jump, and no chain.
        assert!(!script.contains("listener-1"), "{script}");
        // Proxied in user space: the kernel leaves it alone.
        assert!(!script.contains("listener-2"), "{script}");
        assert!(
            script.contains("ct status dnat ip saddr @masquerade-sources masquerade"),
            "{script}"
        );
        assert!(
            script.contains(
                "policy drop;\n    ct state established,related accept\n    ct status dnat accept"
            ),
            "{script}"
        );
    }
}
