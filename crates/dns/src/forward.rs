//! Names outside the cluster go to the host's resolvers.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The nameservers of a resolv.conf, port 53, less those that are our own listen
/// addresses (forwarding there would loop).
pub fn host_resolvers(resolv_conf: &Path, own: &[SocketAddr]) -> Vec<SocketAddr> {
    let Ok(text) = std::fs::read_to_string(resolv_conf) else {
        return Vec::new();
    };
    parse_resolv_conf(&text, own)
}

pub fn parse_resolv_conf(text: &str, own: &[SocketAddr]) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|word| word.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .filter(|addr| {
            !own.iter().any(|o| {
                o.port() == 53
                    && (o.ip() == addr.ip() || (o.ip().is_unspecified() && addr.ip().is_loopback()))
            })
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolver")]
    NoUpstream,
    #[error("{0}: {1}")]
    Upstream(SocketAddr, String),
}

/// Asks the upstreams in turn, each within `timeout`, and returns the first answer.
pub async fn forward(
    upstreams: &[SocketAddr],
    query: &Query,
    timeout: Duration,
) -> Result<Message, ForwardError> {
    let mut last = ForwardError::NoUpstream;
    for upstream in upstreams {
        match tokio::time::timeout(timeout, ask(*upstream, query)).await {
            Ok(Ok(message)) => return Ok(message),
            Ok(Err(e)) => last = ForwardError::Upstream(*upstream, e.to_string()),
            Err(_) => last = ForwardError::Upstream(*upstream, "timed out".into()),
        }
    }
    Err(last)
}

async fn ask(upstream: SocketAddr, query: &Query) -> std::io::Result<Message> {
    let reply = query_udp(upstream, query).await?;
    if !reply.truncated() {
        return Ok(reply);
    }
    query_tcp(upstream, query).await
}

fn request(query: &Query) -> std::io::Result<(u16, Vec<u8>)> {
    let id: u16 = rand_id();
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(query.clone());
    Ok((id, message.to_vec().map_err(std::io::Error::other)?))
}

/// One query over UDP (no retries, no timeout: the caller bounds it).
pub async fn query_udp(server: SocketAddr, query: &Query) -> std::io::Result<Message> {
    let (id, bytes) = request(query)?;
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    socket.send(&bytes).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = socket.recv(&mut buf).await?;
        match Message::from_vec(&buf[..n]) {
            // Anything else is a stray or spoofed datagram.
            Ok(reply) if reply.id() == id => return Ok(reply),
            _ => continue,
        }
    }
}

/// One query over TCP.
pub async fn query_tcp(server: SocketAddr, query: &Query) -> std::io::Result<Message> {
    let (_, bytes) = request(query)?;
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(&bytes).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut body).await?;
    Message::from_vec(&body).map_err(std::io::Error::other)
}

/// Query ids need not be cryptographic here (upstream replies are matched on a
/// connected socket), only varied.
fn rand_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    hasher.finish() as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_skips_our_own_addresses() {
        let text = "# comment\nsearch example.org\nnameserver 10.0.0.2\nnameserver 127.0.0.53\nnameserver fd00::53\nnameserver bogus\noptions ndots:1\n";
        let own: Vec<SocketAddr> = vec!["127.0.0.53:53".parse().unwrap()];
        assert_eq!(
            parse_resolv_conf(text, &own),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[fd00::53]:53".parse().unwrap()
            ]
        );
        let any: Vec<SocketAddr> = vec!["0.0.0.0:53".parse().unwrap()];
        assert_eq!(parse_resolv_conf(text, &any).len(), 2);
        assert_eq!(parse_resolv_conf(text, &[]).len(), 3);
    }
}
