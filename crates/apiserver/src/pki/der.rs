//! Minimal DER surgery for client certificates.
//!
//! Kubernetes reads a client's groups from *repeated* `O` attributes of the subject, but
//! rcgen 0.14's `DistinguishedName` keeps one value per attribute type. So client
//! certificates are built by rcgen with a placeholder subject, and this module swaps in
//! the real subject and re-signs the TBS with the CA key. Only certificates rcgen just
//! produced pass through here, which is why a tiny single-byte-tag DER reader suffices.

use rcgen::{KeyPair, SigningKey};

const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_OID: u8 = 0x06;
const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_VERSION: u8 = 0xa0;
const OID_COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];
const OID_ORGANIZATION: [u8; 3] = [0x55, 0x04, 0x0a];

/// Splits a DER element at the start of `buf` into (tag, content, total length).
fn element(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    let tag = *buf.first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let first = *buf.get(1)?;
    let (header, len) = if first < 0x80 {
        (2, usize::from(first))
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = buf.get(2..2 + n)?;
        (
            2 + n,
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
        )
    };
    let total = header.checked_add(len)?;
    Some((tag, buf.get(header..total)?, total))
}

/// The encoded elements inside a constructed element's content, in order.
fn children(mut content: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !content.is_empty() {
        let (_, _, total) = element(content)?;
        out.push(&content[..total]);
        content = &content[total..];
    }
    Some(out)
}

fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn rdn(oid: &[u8], value: &str) -> Vec<u8> {
    let attribute = [
        encode(TAG_OID, oid),
        encode(TAG_UTF8_STRING, value.as_bytes()),
    ]
    .concat();
    encode(TAG_SET, &encode(TAG_SEQUENCE, &attribute))
}

/// `O=group...,CN=user`: groups first, like kubeadm's admin certificate, one RDN per group
/// so every X.509 stack (Go's included) reports each as a separate organization.
pub(crate) fn client_subject(user: &str, groups: &[String]) -> Vec<u8> {
    let mut rdns = Vec::new();
    for group in groups {
        rdns.extend(rdn(&OID_ORGANIZATION, group));
    }
    rdns.extend(rdn(&OID_COMMON_NAME, user));
    encode(TAG_SEQUENCE, &rdns)
}

/// Returns `cert_der` with its subject replaced by `subject` (an encoded `Name`), signed
/// again by `ca_key`. `None` means the input was not shaped like an rcgen v3 certificate.
pub(crate) fn replace_subject(
    cert_der: &[u8],
    subject: &[u8],
    ca_key: &KeyPair,
) -> Option<Result<Vec<u8>, rcgen::Error>> {
    let (TAG_SEQUENCE, cert, _) = element(cert_der)? else {
        return None;
    };
    let [tbs, signature_algorithm, _signature] = children(cert)?[..] else {
        return None;
    };
    let (TAG_SEQUENCE, tbs_content, _) = element(tbs)? else {
        return None;
    };
    let mut fields = children(tbs_content)?;
    // TBSCertificate: [0] version, serial, signature, issuer, validity, subject, ...
    if fields.first().and_then(|f| f.first()) != Some(&TAG_VERSION) {
        return None;
    }
    let slot = fields.get_mut(5)?;
    if slot.first() != Some(&TAG_SEQUENCE) {
        return None;
    }
    *slot = subject;
    let tbs = encode(TAG_SEQUENCE, &fields.concat());
    let signature = match ca_key.sign(&tbs) {
        Ok(signature) => signature,
        Err(e) => return Some(Err(e)),
    };
    // BIT STRING content starts with the count of unused bits, always 0 for signatures.
    let bits = [&[0u8][..], &signature].concat();
    let body = [
        tbs.as_slice(),
        signature_algorithm,
        &encode(TAG_BIT_STRING, &bits),
    ]
    .concat();
    Some(Ok(encode(TAG_SEQUENCE, &body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![7u8; len];
            let encoded = encode(TAG_SEQUENCE, &content);
            let (tag, parsed, total) = element(&encoded).expect("valid element");
            assert_eq!(
                (tag, parsed, total),
                (TAG_SEQUENCE, &content[..], encoded.len())
            );
        }
    }

    #[test]
    fn truncated_input_is_rejected() {
        let encoded = encode(TAG_SEQUENCE, &[1, 2, 3]);
        assert!(element(&encoded[..encoded.len() - 1]).is_none());
        assert!(children(&encoded[..2]).is_none());
    }
}
