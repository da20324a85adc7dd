//! Fuzz entry points for the load balancer's parsers of untrusted connection and request
//! data (the PROXY protocol header, the host and path an HTTP request is routed by),
//! driven by `crates/fuzz`. Each takes arbitrary bytes, must never panic, and asserts
//! the round trips the code promises, so a panic here is a defect, never the input's.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use crate::edge::config::{HttpBackend, HttpConfig, HttpRoute, PathType};
use crate::http::routes::{clean_path, normalize_host, Routes};
use crate::proxy_protocol::{encode, parse, Header, ParseError, Version};

/// The PROXY protocol parser on the first bytes of a connection: a header it accepts
/// parses the same from exactly its own bytes, every shorter prefix asks for more bytes
/// (a reader that got `Incomplete` waits for more, so it must never be wrong), and what
/// it says encodes back to a header that parses to the same. Addresses taken from the
/// input encode and parse back too.
pub fn fuzz_proxy_protocol(data: &[u8]) {
    if let Ok((header, len)) = parse(data) {
        assert!(
            len > 0 && len <= data.len(),
            "header length {len} of {data:?}"
        );
        assert_eq!(parse(&data[..len]), Ok((header, len)));
        for cut in 0..len {
            assert_eq!(
                parse(&data[..cut]),
                Err(ParseError::Incomplete),
                "{cut} bytes of a {len}-byte header"
            );
        }
        if let Some((source, destination)) = header.addresses {
            let again = encode(header.version, source, destination);
            assert_eq!(
                parse(&again),
                Ok((header, again.len())),
                "{header:?} encodes as {again:?}"
            );
        }
    }
    if let Some(bytes) = data.get(..37) {
        let address = |at: usize| -> SocketAddr {
            let port = u16::from_be_bytes([bytes[at + 16], bytes[at + 17]]);
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&bytes[at..at + 16]);
            // Half of them IPv4, so that both families and their mix are covered.
            let ip = if octets[0] & 1 == 0 {
                IpAddr::from([octets[1], octets[2], octets[3], octets[4]])
            } else {
                IpAddr::from(octets)
            };
            SocketAddr::new(ip, port)
        };
        let (source, destination) = (address(0), address(18));
        let version = if bytes[36] & 1 == 0 {
            Version::V1
        } else {
            Version::V2
        };
        let header = encode(version, source, destination);
        // One family on the wire: IPv4 next to IPv6 travels as its mapped form.
        let expected = match (source.ip(), destination.ip()) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                (source, destination)
            }
            _ => (mapped(source), mapped(destination)),
        };
        assert_eq!(
            parse(&header),
            Ok((
                Header {
                    version,
                    addresses: Some(expected),
                },
                header.len()
            )),
            "{source} to {destination} encodes as {header:?}"
        );
    }
}

fn mapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), addr.port()),
        IpAddr::V6(_) => addr,
    }
}

/// An HTTP listener's routing table and requests to it, one per line:
///
/// ```text
/// route HOST|- PATH Exact|Prefix|ImplementationSpecific BACKEND [ENDPOINT...]
/// default BACKEND [ENDPOINT...]
/// get HOST-HEADER PATH
/// ```
///
/// A request routes as its cleaned path does (dot segments cannot change the route),
/// every route takes requests for its own host and path, and a backend offers each of
/// its endpoints once per request.
pub fn fuzz_http_routes(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut config = HttpConfig {
        routes: Vec::new(),
        default_backend: None,
        certificates: Vec::new(),
    };
    let mut requests = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        match words[..] {
            ["route", host, path, path_type, name, ref endpoints @ ..] => {
                let path_type = match path_type {
                    "Exact" => PathType::Exact,
                    "Prefix" => PathType::Prefix,
                    "ImplementationSpecific" => PathType::ImplementationSpecific,
                    _ => continue,
                };
                config.routes.push(HttpRoute {
                    host: (host != "-").then(|| host.to_string()),
                    path: path.to_string(),
                    path_type,
                    backend: backend(name, endpoints),
                });
            }
            ["default", name, ref endpoints @ ..] => {
                config.default_backend = Some(backend(name, endpoints));
            }
            ["get", host, path] => requests.push((host, path)),
            _ => {}
        }
    }
    let routes = Routes::new(&config);
    let routed = |host: &str, path: &str| routes.route(host, path).map(|b| b.name.clone());
    for (raw_host, path) in requests {
        let host = normalize_host(raw_host);
        let clean = clean_path(path);
        assert_eq!(clean_path(&clean), clean, "cleaning {path:?} twice");
        assert_eq!(
            routed(&host, path),
            routed(&host, &clean),
            "{path:?} routes unlike its clean form {clean:?}"
        );
        if let Some(backend) = routes.route(&host, path) {
            let offered: Vec<SocketAddr> = backend.endpoints_in_turn().collect();
            let distinct: HashSet<&SocketAddr> = offered.iter().collect();
            assert_eq!(distinct.len(), offered.len(), "{offered:?}");
        }
    }
    for route in &config.routes {
        // Hosts as the routing table keys them; wildcard hosts need a label added.
        let host = match route.host.as_deref() {
            None => "any.example".to_string(),
            Some(pattern) => {
                let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
                match pattern.strip_prefix("*.") {
                    Some(domain) => format!("x.{domain}"),
                    None => pattern,
                }
            }
        };
        if clean_path(&route.path) == route.path.as_str() {
            assert!(
                routed(&host, &route.path).is_some(),
                "{route:?} takes no request for {host} {}",
                route.path
            );
        }
    }
}

fn backend(name: &str, endpoints: &[&str]) -> HttpBackend {
    HttpBackend {
        name: name.to_string(),
        endpoints: endpoints
            .iter()
            .filter_map(|e| e.parse::<SocketAddrV4>().ok())
            .collect(),
    }
}
