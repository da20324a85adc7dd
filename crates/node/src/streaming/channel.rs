//! The WebSocket channel protocol of `kubectl exec/attach/cp` (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`): binary messages whose first byte names the stream, and the
//! handshake pieces this node needs to accept such a WebSocket itself.

use base64::Engine;

pub(crate) const STDIN: u8 = 0;
pub(crate) const STDOUT: u8 = 1;
pub(crate) const STDERR: u8 = 2;
/// The server's final `metav1.Status` (JSON).
pub(crate) const ERROR: u8 = 3;
/// Terminal size, JSON `{"Width":W,"Height":H}`.
pub(crate) const RESIZE: u8 = 4;
/// v5 only: the payload is the id of a stream the client is done writing to.
pub(crate) const CLOSE: u8 = 255;

pub(crate) const V5: &str = "v5.channel.k8s.io";
pub(crate) const V4: &str = "v4.channel.k8s.io";
/// `kubectl port-forward`'s WebSocket tunnel: SPDY frames inside binary messages.
pub(crate) const PORT_FORWARD_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// What a client's binary message asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    Stdin(&'a [u8]),
    Resize(&'a [u8]),
    /// The client's stdin has ended (v5 close of stream 0).
    CloseStdin,
    /// Empty messages, closes of other streams, unknown channels: nothing to do.
    Ignored,
}

pub(crate) fn parse(message: &[u8], v5: bool) -> Incoming<'_> {
    match message.split_first() {
        Some((&STDIN, data)) => Incoming::Stdin(data),
        Some((&RESIZE, data)) => Incoming::Resize(data),
        Some((&CLOSE, [STDIN, ..])) if v5 => Incoming::CloseStdin,
        _ => Incoming::Ignored,
    }
}

/// A message for `channel` with `data`.
pub(crate) fn message(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    out
}

/// The first protocol the client offers (`Sec-WebSocket-Protocol`, in its order) that
/// is one of `supported`.
pub(crate) fn choose_protocol<'a>(offered: &str, supported: &[&'a str]) -> Option<&'a str> {
    offered
        .split(',')
        .map(str::trim)
        .find_map(|p| supported.iter().find(|s| **s == p).copied())
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 4.2.2).
pub(crate) fn accept_key(key: &str) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut context = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key.trim().as_bytes());
    context.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(context.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_messages() {
        assert_eq!(parse(b"\0abc", true), Incoming::Stdin(b"abc"));
        assert_eq!(
            parse(b"\x04{\"Width\":80,\"Height\":24}", true),
            Incoming::Resize(b"{\"Width\":80,\"Height\":24}")
        );
        assert_eq!(parse(&[255, 0], true), Incoming::CloseStdin);
        assert_eq!(parse(&[255, 0], false), Incoming::Ignored);
        assert_eq!(parse(&[255, 1], true), Incoming::Ignored);
        assert_eq!(parse(b"", true), Incoming::Ignored);
        assert_eq!(message(STDOUT, b"hi"), b"\x01hi");
    }

    #[test]
    fn chooses_the_clients_first_supported_protocol() {
        let offered = "v5.channel.k8s.io, v4.channel.k8s.io, v3.channel.k8s.io";
        assert_eq!(choose_protocol(offered, &[V4, V5]), Some(V5));
        assert_eq!(choose_protocol("v4.channel.k8s.io", &[V5, V4]), Some(V4));
        assert_eq!(choose_protocol("channel.k8s.io", &[V5, V4]), None);
    }

    #[test]
    fn accept_key_is_rfc6455s_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
