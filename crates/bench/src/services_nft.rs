//! The nftables part of `korvet bench services`: the node agent's proxy rules for many
//! Services applied into a throwaway network namespace, in full and then one changed
//! Service at a time, as the agent applies them (render + one `nft -f` transaction).

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use korvet_node::nft;
use korvet_node::proxy::model::{Endpoint, Model, PortKey, Protocol, ServicePort};
use korvet_node::proxy::rules;

use crate::services::NftFigures;
use crate::workloads::latency;

/// A network namespace of its own, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new() -> anyhow::Result<Netns> {
        let name = format!("korvet-bench-nft-{}", std::process::id());
        // A leftover of a crashed run with this PID goes first.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .context("running ip netns add")?;
        anyhow::ensure!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Service `s` with `endpoints` endpoints, the last octet moved by `generation`.
fn service_port(s: usize, endpoints: usize, generation: usize) -> (PortKey, ServicePort) {
    let (hi, lo) = ((s / 250) as u8, (s % 250) as u8);
    let eps: Vec<Endpoint> = (0..endpoints)
        .map(|e| Endpoint {
            ip: Ipv4Addr::new(10, 200 + hi, lo, ((e + generation) % 250) as u8 + 1),
            port: 8080,
        })
        .collect();
    let key = PortKey {
        namespace: "default".into(),
        name: format!("svc-{s}"),
        port_name: "http".into(),
        protocol: Protocol::Tcp,
    };
    let port = ServicePort {
        cluster_ip: Ipv4Addr::new(10, 96, hi, lo + 1),
        port: 80,
        node_port: Some(30000 + (s % 2768) as u16),
        external_ips: Vec::new(),
        endpoints: eps.clone(),
        external_endpoints: eps,
        external_local: false,
        affinity_timeout: None,
    };
    (key, port)
}

pub(crate) fn measure(
    services: usize,
    endpoints: usize,
    updates: usize,
) -> anyhow::Result<NftFigures> {
    anyhow::ensure!(
        (1..=2768).contains(&services) && endpoints <= 250,
        "at most 2,768 services (one NodePort each) and 250 endpoints per service"
    );
    let netns = Netns::new()?;
    let mut model = Model::default();
    for s in 0..services {
        let (key, port) = service_port(s, endpoints, 0);
        model.ports.insert(key, port);
    }
    let started = Instant::now();
    nft::apply(Some(&netns.0), &rules::render_full(&model)).context("applying the whole table")?;
    let full_apply_ms = started.elapsed().as_secs_f64() * 1000.0;

    let mut times = Vec::with_capacity(updates);
    for i in 0..updates {
        let s = (i * 7919) % services;
        let (key, port) = service_port(s, endpoints, i + 1);
        let mut next = model.clone();
        next.ports.insert(key, port);
        let started = Instant::now();
        let diff = rules::render_diff(&model, &next);
        nft::apply(Some(&netns.0), &diff).with_context(|| format!("applying change {i}"))?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        model = next;
    }
    // The table holds what was asked: every Service in the map.
    let listed = nft::list(
        Some(&netns.0),
        &["list", "map", "ip", rules::TABLE, "service-ips"],
    )?;
    anyhow::ensure!(
        listed.matches(": goto").count() == services,
        "the service map holds {} of {services} services",
        listed.matches(": goto").count()
    );
    Ok(NftFigures {
        services,
        endpoints: services * endpoints,
        full_apply_ms,
        update: latency(times),
    })
}
