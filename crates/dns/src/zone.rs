//! The cluster zone: records built from Services and EndpointSlices following the
//! Kubernetes DNS specification (schema 1.1.0), rebuilt whole on every change.
//!
//! Pod names (`a-b-c-d.<ns>.pod.<domain>`) are answered from the name alone, as
//! CoreDNS's `pods insecure` mode (kubeadm's default) does, so Pods need no watch.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Kubernetes DNS schema version answered at `dns-version.<domain>`.
pub const SCHEMA_VERSION: &str = "1.1.0";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the zone says about one query.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
    /// The zone's SOA, sent in the authority section of negative answers.
    pub soa: Option<Record>,
}

/// Immutable snapshot of the cluster's records.
#[derive(Debug)]
pub struct Zone {
    /// Lower-case names without the trailing dot.
    domain: String,
    ttl: u32,
    records: HashMap<String, Vec<RData>>,
    /// Every name that has records, and all their ancestors inside the domain (empty
    /// non-terminals answer NODATA, not NXDOMAIN).
    existing: HashSet<String>,
    soa: Record,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Option<Name> {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).ok()
}

/// `in-addr.arpa`/`ip6.arpa` name of an address, without the trailing dot.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut labels: Vec<String> = Vec::with_capacity(34);
            for byte in v6.octets().iter().rev() {
                labels.push(format!("{:x}", byte & 0xf));
                labels.push(format!("{:x}", byte >> 4));
            }
            labels.push("ip6.arpa".into());
            labels.join(".")
        }
    }
}

/// The label Kubernetes DNS makes of an address: dots (or colons) become dashes.
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The address of a dashed label (`10-244-1-5`, `fd00--1`), if it is one.
pub fn undashed(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

fn address_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// One endpoint of a headless Service, as DNS publishes it.
struct Endpoint {
    ip: IpAddr,
    /// The endpoint's hostname, or its dashed address (CoreDNS's choice, so that every
    /// SRV target resolves).
    label: String,
}

struct Builder {
    domain: String,
    records: HashMap<String, Vec<RData>>,
}

impl Builder {
    fn add(&mut self, name: String, rdata: RData) {
        let list = self.records.entry(name).or_default();
        if !list.contains(&rdata) {
            list.push(rdata);
        }
    }

    fn service(&mut self, service: &Service, slices: &[&EndpointSlice]) {
        let (Some(name), Some(ns)) = (
            service.metadata.name.as_deref(),
            service.metadata.namespace.as_deref(),
        ) else {
            return;
        };
        let Some(spec) = service.spec.as_ref() else {
            return;
        };
        let svc_name = format!("{name}.{ns}.svc.{}", self.domain);
        let Some(svc_fqdn) = fqdn(&svc_name) else {
            return;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            if let Some(target) = spec.external_name.as_deref().and_then(fqdn) {
                self.add(svc_name, RData::CNAME(CNAME(target)));
            }
            return;
        }
        let ports = spec.ports.as_deref().unwrap_or_default();
        let cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .clone()
            .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
            .unwrap_or_default()
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let headless = spec.cluster_ip.as_deref() == Some("None");
        if !headless {
            if cluster_ips.is_empty() {
                return;
            }
            for ip in &cluster_ips {
                self.add(svc_name.clone(), address_rdata(*ip));
                self.add(reverse_name(*ip), RData::PTR(PTR(svc_fqdn.clone())));
            }
            for port in ports {
                let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let proto = port
                    .protocol
                    .as_deref()
                    .unwrap_or("TCP")
                    .to_ascii_lowercase();
                self.add(
                    format!("_{port_name}._{proto}.{svc_name}"),
                    RData::SRV(SRV::new(0, 100, port.port as u16, svc_fqdn.clone())),
                );
            }
            return;
        }
        // Headless: the endpoints themselves.
        let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
        for slice in slices {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let endpoints: Vec<Endpoint> = slice
                .endpoints
                .iter()
                .filter(|e| {
                    publish_not_ready || e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
                })
                .flat_map(|e| {
                    e.addresses.iter().filter_map(move |a| {
                        let ip: IpAddr = a.parse().ok()?;
                        let label = e
                            .hostname
                            .clone()
                            .filter(|h| !h.is_empty())
                            .unwrap_or_else(|| dashed(ip));
                        Some(Endpoint { ip, label })
                    })
                })
                .collect();
            for endpoint in &endpoints {
                let host_name = format!("{}.{svc_name}", endpoint.label);
                self.add(svc_name.clone(), address_rdata(endpoint.ip));
                self.add(host_name.clone(), address_rdata(endpoint.ip));
                if let Some(host_fqdn) = fqdn(&host_name) {
                    self.add(
                        reverse_name(endpoint.ip),
                        RData::PTR(PTR(host_fqdn.clone())),
                    );
                    for port in slice.ports.as_deref().unwrap_or_default() {
                        let (Some(port_name), Some(number)) =
                            (port.name.as_deref().filter(|n| !n.is_empty()), port.port)
                        else {
                            continue;
                        };
                        let proto = port
                            .protocol
                            .as_deref()
                            .unwrap_or("TCP")
                            .to_ascii_lowercase();
                        self.add(
                            format!("_{port_name}._{proto}.{svc_name}"),
                            RData::SRV(SRV::new(0, 100, number as u16, host_fqdn.clone())),
                        );
                    }
                }
            }
        }
    }
}

impl Zone {
    /// Builds the zone of `domain` (such as `cluster.local`) from the cluster's objects.
    pub fn build<'a>(
        domain: &str,
        ttl: u32,
        serial: u32,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Zone {
        let domain = key(domain);
        let mut by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let (Some(ns), Some(service)) = (
                slice.metadata.namespace.clone(),
                slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .cloned(),
            ) else {
                continue;
            };
            by_service.entry((ns, service)).or_default().push(slice);
        }
        let mut builder = Builder {
            domain: domain.clone(),
            records: HashMap::new(),
        };
        for service in services {
            let id = (
                service.metadata.namespace.clone().unwrap_or_default(),
                service.metadata.name.clone().unwrap_or_default(),
            );
            let slices = by_service.get(&id).map(Vec::as_slice).unwrap_or_default();
            builder.service(service, slices);
        }
        builder.add(
            format!("dns-version.{domain}"),
            RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
        );
        let records = builder.records;
        let mut existing = HashSet::new();
        for name in [
            domain.clone(),
            format!("svc.{domain}"),
            format!("pod.{domain}"),
        ] {
            existing.insert(name);
        }
        for name in records.keys() {
            let mut rest = name.as_str();
            while rest.ends_with(domain.as_str()) && existing.insert(rest.to_string()) {
                match rest.split_once('.') {
                    Some((_, parent)) => rest = parent,
                    None => break,
                }
            }
        }
        let apex = fqdn(&domain).unwrap_or_else(Name::root);
        let soa_rdata = SOA::new(
            fqdn(&format!("ns.dns.{domain}")).unwrap_or_else(Name::root),
            fqdn(&format!("hostmaster.{domain}")).unwrap_or_else(Name::root),
            serial,
            7200,
            1800,
            86400,
            ttl,
        );
        Zone {
            soa: Record::from_rdata(apex, ttl, RData::SOA(soa_rdata)),
            domain,
            ttl,
            records,
            existing,
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Whether the zone answers for `name` (else it goes upstream).
    pub fn is_ours(&self, name: &str) -> bool {
        let name = key(name);
        name == self.domain
            || name.ends_with(&format!(".{}", self.domain))
            || self.records.contains_key(&name)
    }

    fn records(&self, name: &Name, rdatas: &[RData], qtype: RecordType) -> Vec<Record> {
        rdatas
            .iter()
            .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
            .map(|r| Record::from_rdata(name.clone(), self.ttl, r.clone()))
            .collect()
    }

    /// The answer for a query, or `None` when the name is not the zone's.
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Option<Answer> {
        let name = key(&qname.to_ascii());
        if !self.is_ours(&name) {
            return None;
        }
        let negative = |rcode| Answer {
            rcode,
            answers: Vec::new(),
            additionals: Vec::new(),
            soa: Some(self.soa.clone()),
        };
        if name == self.domain && matches!(qtype, RecordType::SOA | RecordType::ANY) {
            return Some(Answer {
                rcode: ResponseCode::NoError,
                answers: vec![self.soa.clone()],
                additionals: Vec::new(),
                soa: None,
            });
        }
        if let Some(ip) = self.pod_address(&name) {
            let rdata = address_rdata(ip);
            return Some(
                if qtype == RecordType::ANY || rdata.record_type() == qtype {
                    Answer {
                        rcode: ResponseCode::NoError,
                        answers: vec![Record::from_rdata(qname.clone(), self.ttl, rdata)],
                        additionals: Vec::new(),
                        soa: None,
                    }
                } else {
                    negative(ResponseCode::NoError)
                },
            );
        }
        let Some(rdatas) = self.records.get(&name) else {
            return Some(if self.existing.contains(&name) || self.pod_parent(&name) {
                negative(ResponseCode::NoError)
            } else {
                negative(ResponseCode::NXDomain)
            });
        };
        // A CNAME owns its name: every other type gets the CNAME for the client to chase.
        let mut answers = self.records(qname, rdatas, qtype);
        if answers.is_empty() && qtype != RecordType::CNAME {
            answers = self.records(qname, rdatas, RecordType::CNAME);
        }
        if answers.is_empty() {
            return Some(negative(ResponseCode::NoError));
        }
        let mut additionals = Vec::new();
        for answer in &answers {
            if let RData::SRV(srv) = answer.data() {
                let target = key(&srv.target().to_ascii());
                if let Some(rdatas) = self.records.get(&target) {
                    additionals.extend(
                        rdatas
                            .iter()
                            .filter(|r| matches!(r, RData::A(_) | RData::AAAA(_)))
                            .map(|r| Record::from_rdata(srv.target().clone(), self.ttl, r.clone())),
                    );
                }
            }
        }
        Some(Answer {
            rcode: ResponseCode::NoError,
            answers,
            additionals,
            soa: None,
        })
    }

    /// The address of `a-b-c-d.<ns>.pod.<domain>`.
    fn pod_address(&self, name: &str) -> Option<IpAddr> {
        let rest = name.strip_suffix(&format!(".pod.{}", self.domain))?;
        let (label, ns) = rest.split_once('.')?;
        if ns.contains('.') {
            return None;
        }
        undashed(label)
    }

    /// `<ns>.pod.<domain>`: exists for any namespace.
    fn pod_parent(&self, name: &str) -> bool {
        name.strip_suffix(&format!(".pod.{}", self.domain))
            .is_some_and(|ns| !ns.contains('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ns: &str, name: &str, spec: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": spec,
        }))
        .unwrap()
    }

    fn slice(ns: &str, service: &str, body: serde_json::Value) -> EndpointSlice {
        let mut value = serde_json::json!({
            "metadata": {"namespace": ns, "name": format!("{service}-abc"),
                "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
        });
        if let (Some(obj), Some(extra)) = (value.as_object_mut(), body.as_object()) {
            obj.extend(extra.clone());
        }
        serde_json::from_value(value).unwrap()
    }

    fn zone() -> Zone {
        let services = [
            service(
                "default",
                "web",
                serde_json::json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 81}]}),
            ),
            service(
                "db",
                "pg",
                serde_json::json!({"clusterIP": "None",
                    "ports": [{"name": "pg", "port": 5432}]}),
            ),
            service(
                "default",
                "ext",
                serde_json::json!({"type": "ExternalName", "externalName": "example.org"}),
            ),
        ];
        let slices = [slice(
            "db",
            "pg",
            serde_json::json!({
                "endpoints": [
                    {"addresses": ["10.244.1.5"], "hostname": "pg-0", "conditions": {"ready": true}},
                    {"addresses": ["10.244.2.6"]},
                    {"addresses": ["10.244.3.7"], "conditions": {"ready": false}},
                ],
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            }),
        )];
        Zone::build("cluster.local", 5, 1, &services, &slices)
    }

    fn q(zone: &Zone, name: &str, qtype: RecordType) -> Answer {
        zone.lookup(&Name::from_ascii(name).unwrap(), qtype)
            .unwrap()
    }

    fn data(answer: &Answer) -> Vec<String> {
        let mut out: Vec<String> = answer
            .answers
            .iter()
            .map(|r| r.data().to_string())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn cluster_ip_service_has_a_srv_and_ptr() {
        let zone = zone();
        let a = q(&zone, "web.default.svc.cluster.local.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(data(&a), ["10.96.0.20"]);
        assert_eq!(a.answers[0].ttl(), 5);
        let upper = q(&zone, "WEB.Default.svc.cluster.local.", RecordType::A);
        assert_eq!(data(&upper), ["10.96.0.20"]);
        let srv = q(
            &zone,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(data(&srv), ["0 100 80 web.default.svc.cluster.local."]);
        assert_eq!(srv.additionals.len(), 1);
        // Unnamed ports have no SRV record.
        let none = q(
            &zone,
            "_81._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(none.rcode, ResponseCode::NXDomain);
        let ptr = q(&zone, "20.0.96.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(data(&ptr), ["web.default.svc.cluster.local."]);
    }

    #[test]
    fn headless_service_lists_ready_endpoints_with_names() {
        let zone = zone();
        let a = q(&zone, "pg.db.svc.cluster.local.", RecordType::A);
        assert_eq!(data(&a), ["10.244.1.5", "10.244.2.6"]);
        let host = q(&zone, "pg-0.pg.db.svc.cluster.local.", RecordType::A);
        assert_eq!(data(&host), ["10.244.1.5"]);
        let generated = q(&zone, "10-244-2-6.pg.db.svc.cluster.local.", RecordType::A);
        assert_eq!(data(&generated), ["10.244.2.6"]);
        let srv = q(&zone, "_pg._tcp.pg.db.svc.cluster.local.", RecordType::SRV);
        assert_eq!(
            data(&srv),
            [
                "0 100 5432 10-244-2-6.pg.db.svc.cluster.local.",
                "0 100 5432 pg-0.pg.db.svc.cluster.local."
            ]
        );
        assert_eq!(srv.additionals.len(), 2);
        let ptr = q(&zone, "5.1.244.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(data(&ptr), ["pg-0.pg.db.svc.cluster.local."]);
        let not_ready = q(&zone, "10-244-3-7.pg.db.svc.cluster.local.", RecordType::A);
        assert_eq!(not_ready.rcode, ResponseCode::NXDomain);
    }

    #[test]
    fn external_name_is_a_cname() {
        let zone = zone();
        let a = q(&zone, "ext.default.svc.cluster.local.", RecordType::A);
        assert_eq!(data(&a), ["example.org."]);
        assert_eq!(a.answers[0].record_type(), RecordType::CNAME);
    }

    #[test]
    fn negative_answers_distinguish_nxdomain_from_nodata() {
        let zone = zone();
        let missing = q(&zone, "nope.default.svc.cluster.local.", RecordType::A);
        assert_eq!(missing.rcode, ResponseCode::NXDomain);
        assert!(missing.soa.is_some());
        let nodata = q(&zone, "web.default.svc.cluster.local.", RecordType::AAAA);
        assert_eq!(nodata.rcode, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert!(nodata.soa.is_some());
        for parent in [
            "default.svc.cluster.local.",
            "svc.cluster.local.",
            "cluster.local.",
        ] {
            let answer = q(&zone, parent, RecordType::A);
            assert_eq!(answer.rcode, ResponseCode::NoError, "{parent}");
        }
        let soa = q(&zone, "cluster.local.", RecordType::SOA);
        assert_eq!(soa.answers[0].record_type(), RecordType::SOA);
        assert_eq!(
            q(&zone, "nons.svc.cluster.local.", RecordType::A).rcode,
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn pods_version_and_outside_names() {
        let zone = zone();
        let pod = q(
            &zone,
            "10-244-1-9.default.pod.cluster.local.",
            RecordType::A,
        );
        assert_eq!(data(&pod), ["10.244.1.9"]);
        let v6 = q(
            &zone,
            "fd00--9.default.pod.cluster.local.",
            RecordType::AAAA,
        );
        assert_eq!(data(&v6), ["fd00::9"]);
        let bad = q(&zone, "web.default.pod.cluster.local.", RecordType::A);
        assert_eq!(bad.rcode, ResponseCode::NXDomain);
        let version = q(&zone, "dns-version.cluster.local.", RecordType::TXT);
        assert_eq!(data(&version), ["1.1.0"]);
        assert!(zone
            .lookup(&Name::from_ascii("example.org.").unwrap(), RecordType::A)
            .is_none());
        // Reverse names the zone does not hold go upstream.
        assert!(zone
            .lookup(
                &Name::from_ascii("1.1.1.1.in-addr.arpa.").unwrap(),
                RecordType::PTR
            )
            .is_none());
    }

    #[test]
    fn address_names() {
        assert_eq!(
            reverse_name("10.96.0.10".parse().unwrap()),
            "10.0.96.10.in-addr.arpa"
        );
        let v6 = reverse_name("fd00::1".parse().unwrap());
        assert!(
            v6.starts_with("1.0.0.0.") && v6.ends_with(".0.0.d.f.ip6.arpa"),
            "{v6}"
        );
        assert_eq!(dashed("10.1.2.3".parse().unwrap()), "10-1-2-3");
        assert_eq!(undashed("fd00--1"), Some("fd00::1".parse().unwrap()));
        assert_eq!(undashed("web"), None);
    }
}
