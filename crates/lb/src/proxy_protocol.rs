//! The PROXY protocol (HAProxy's specification, versions 1 and 2): the header a load
//! balancer writes before the client's bytes so that the backend learns the client's
//! address, and the parser a backend (or the ingress behind a load balancer) reads it
//! with. Only TCP over IPv4 and IPv6 is written; the parser also takes `UNKNOWN` (v1) and
//! `LOCAL` (v2), as the specification requires of receivers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Longest version 1 line, CRLF included (the specification's limit).
const V1_MAX: usize = 107;
/// Longest version 2 header this parser accepts: the fixed part plus TLVs. The
/// specification allows 64 KiB of TLVs; we never need them, and a small bound keeps a
/// hostile client from making us buffer much.
const V2_MAX: usize = 16 + 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

impl std::str::FromStr for Version {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "v1" | "1" => Ok(Version::V1),
            "v2" | "2" => Ok(Version::V2),
            other => Err(format!(
                "unknown PROXY protocol version {other:?}: use v1 or v2"
            )),
        }
    }
}

/// The header announcing a connection from `source` to `destination`.
pub fn encode(version: Version, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    // Both ends in one family: an IPv4 side meets an IPv6 one as its mapped form.
    let (source, destination) = match (source, destination) {
        (SocketAddr::V4(_), SocketAddr::V6(_)) => (to_v6(source), destination),
        (SocketAddr::V6(_), SocketAddr::V4(_)) => (source, to_v6(destination)),
        _ => (source, destination),
    };
    match version {
        Version::V1 => {
            let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                source.ip(),
                destination.ip(),
                source.port(),
                destination.port()
            )
            .into_bytes()
        }
        Version::V2 => {
            let mut header = V2_SIGNATURE.to_vec();
            // Version 2, command PROXY.
            header.push(0x21);
            match (source.ip(), destination.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    // AF_INET, STREAM.
                    header.push(0x11);
                    header.extend_from_slice(&12u16.to_be_bytes());
                    header.extend_from_slice(&s.octets());
                    header.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    // AF_INET6, STREAM.
                    header.push(0x21);
                    header.extend_from_slice(&36u16.to_be_bytes());
                    header.extend_from_slice(&v6(s).octets());
                    header.extend_from_slice(&v6(d).octets());
                }
            }
            header.extend_from_slice(&source.port().to_be_bytes());
            header.extend_from_slice(&destination.port().to_be_bytes());
            header
        }
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn to_v6(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(v6(addr.ip())), addr.port())
}

/// What a header said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// The client and the address it connected to; `None` for `UNKNOWN`/`LOCAL` (a
    /// health check of the balancer itself: the connection's own addresses count).
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// More bytes are needed to decide.
    #[error("incomplete PROXY protocol header")]
    Incomplete,
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
}

fn invalid(why: impl Into<String>) -> ParseError {
    ParseError::Invalid(why.into())
}

/// Parses a header at the start of `data`; gives it and its length in bytes.
pub fn parse(data: &[u8]) -> Result<(Header, usize), ParseError> {
    if data.is_empty() {
        return Err(ParseError::Incomplete);
    }
    let v2_prefix = data.len().min(V2_SIGNATURE.len());
    if data[..v2_prefix] == V2_SIGNATURE[..v2_prefix] {
        return parse_v2(data);
    }
    let v1_prefix = data.len().min(6);
    if data[..v1_prefix] == b"PROXY "[..v1_prefix] {
        return parse_v1(data);
    }
    Err(invalid("the connection does not start with a PROXY header"))
}

fn parse_v1(data: &[u8]) -> Result<(Header, usize), ParseError> {
    let window = &data[..data.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if data.len() >= V1_MAX {
            Err(invalid("version 1 line longer than 107 bytes"))
        } else {
            Err(ParseError::Incomplete)
        };
    };
    let line = std::str::from_utf8(&data[..end]).map_err(|_| invalid("not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let header = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Header {
            version: Version::V1,
            addresses: None,
        },
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |text: &str| -> Result<IpAddr, ParseError> {
                let ip: IpAddr = text
                    .parse()
                    .map_err(|_| invalid(format!("bad address {text:?}")))?;
                match (*family, ip) {
                    ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
                    _ => Err(invalid(format!("{text} is not a {family} address"))),
                }
            };
            let port = |text: &str| -> Result<u16, ParseError> {
                // No sign, no leading zeros, as the specification says.
                if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
                    return Err(invalid(format!("bad port {text:?}")));
                }
                text.parse()
                    .map_err(|_| invalid(format!("bad port {text:?}")))
            };
            Header {
                version: Version::V1,
                addresses: Some((
                    SocketAddr::new(ip(src)?, port(sport)?),
                    SocketAddr::new(ip(dst)?, port(dport)?),
                )),
            }
        }
        _ => return Err(invalid(format!("bad version 1 line {line:?}"))),
    };
    Ok((header, end + 2))
}

fn parse_v2(data: &[u8]) -> Result<(Header, usize), ParseError> {
    if data.len() < 16 {
        return Err(ParseError::Incomplete);
    }
    let version_command = data[12];
    if version_command >> 4 != 2 {
        return Err(invalid("version 2 signature with another version"));
    }
    let length = usize::from(u16::from_be_bytes([data[14], data[15]]));
    if 16 + length > V2_MAX {
        return Err(invalid("version 2 header too long"));
    }
    if data.len() < 16 + length {
        return Err(ParseError::Incomplete);
    }
    let body = &data[16..16 + length];
    let addresses = match version_command & 0x0F {
        // LOCAL: the balancer's own connection (a health check).
        0x0 => None,
        0x1 => match data[13] {
            // TCP or UDP over IPv4.
            0x11 | 0x12 => {
                if body.len() < 12 {
                    return Err(invalid("IPv4 addresses cut short"));
                }
                let ip =
                    |at: usize| Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3]);
                let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
                Some((
                    SocketAddr::new(IpAddr::V4(ip(0)), port(8)),
                    SocketAddr::new(IpAddr::V4(ip(4)), port(10)),
                ))
            }
            0x21 | 0x22 => {
                if body.len() < 36 {
                    return Err(invalid("IPv6 addresses cut short"));
                }
                let ip = |at: usize| {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(&body[at..at + 16]);
                    Ipv6Addr::from(octets)
                };
                let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
                Some((
                    SocketAddr::new(IpAddr::V6(ip(0)), port(32)),
                    SocketAddr::new(IpAddr::V6(ip(16)), port(34)),
                ))
            }
            // UNSPEC or unix sockets: the connection's own addresses count.
            _ => None,
        },
        other => return Err(invalid(format!("unknown version 2 command {other}"))),
    };
    Ok((
        Header {
            version: Version::V2,
            addresses,
        },
        16 + length,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_as_the_specification_writes_it() {
        let header = encode(
            Version::V1,
            addr("10.200.0.7:51234"),
            addr("10.200.16.1:80"),
        );
        assert_eq!(header, b"PROXY TCP4 10.200.0.7 10.200.16.1 51234 80\r\n");
        let six = encode(
            Version::V1,
            addr("[2001:db8::1]:5"),
            addr("[2001:db8::2]:443"),
        );
        assert_eq!(six, b"PROXY TCP6 2001:db8::1 2001:db8::2 5 443\r\n");
    }

    #[test]
    fn round_trips_in_both_versions_and_both_families() {
        for (source, destination) in [
            (addr("10.200.0.7:51234"), addr("10.200.16.1:80")),
            (addr("[2001:db8::1]:5"), addr("[2001:db8::2]:443")),
        ] {
            for version in [Version::V1, Version::V2] {
                let mut data = encode(version, source, destination);
                let length = data.len();
                data.extend_from_slice(b"GET / HTTP/1.1\r\n");
                let (header, used) = parse(&data).unwrap();
                assert_eq!(used, length);
                assert_eq!(header.version, version);
                assert_eq!(header.addresses, Some((source, destination)));
            }
        }
    }

    #[test]
    fn v2_ipv4_layout() {
        let header = encode(Version::V2, addr("1.2.3.4:258"), addr("5.6.7.8:80"));
        assert_eq!(&header[..12], &V2_SIGNATURE);
        assert_eq!(header[12], 0x21);
        assert_eq!(header[13], 0x11);
        assert_eq!(&header[14..16], &[0, 12]);
        assert_eq!(&header[16..], &[1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 0, 80]);
    }

    #[test]
    fn partial_headers_ask_for_more_and_garbage_is_refused() {
        let full = encode(Version::V2, addr("1.2.3.4:1"), addr("5.6.7.8:2"));
        for cut in 1..full.len() {
            assert_eq!(parse(&full[..cut]), Err(ParseError::Incomplete), "{cut}");
        }
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Err(ParseError::Incomplete));
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
            b"PROXY SCTP 1 2 3 4\r\n",
        ] {
            assert!(matches!(parse(bad), Err(ParseError::Invalid(_))), "{bad:?}");
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 200]].concat();
        assert!(matches!(parse(&long), Err(ParseError::Invalid(_))));
        let (unknown, used) = parse(b"PROXY UNKNOWN\r\nrest").unwrap();
        assert_eq!((unknown.addresses, used), (None, 15));
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).unwrap().0.addresses, None);
    }

    #[test]
    fn versions_parse_from_annotation_values() {
        assert_eq!("v1".parse::<Version>(), Ok(Version::V1));
        assert_eq!("2".parse::<Version>(), Ok(Version::V2));
        assert!("v3".parse::<Version>().unwrap_err().contains("v1 or v2"));
    }
}
