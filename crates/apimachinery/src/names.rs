//! Object names: the DNS-1123 forms names must have, and the random suffixes of
//! `generateName`.

/// Upstream's `DNS1123LabelMaxLength`.
const DNS_LABEL_MAX: usize = 63;
/// Upstream's `DNS1123SubdomainMaxLength`.
const DNS_SUBDOMAIN_MAX: usize = 253;
/// Upstream's `maxGeneratedNameLength`: the prefix of a generated name is cut to this so
/// that the name with its 5-character suffix stays a DNS label.
const MAX_GENERATED_NAME_PREFIX: usize = DNS_LABEL_MAX - SUFFIX_LENGTH;
const SUFFIX_LENGTH: usize = 5;
/// Upstream's `utilrand.String` alphabet: no vowels (so no words) and no look-alikes.
const SUFFIX_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, without a length bound.
fn has_dns_label_form(s: &str) -> bool {
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            alnum(first) && alnum(last) && b.iter().all(|c| alnum(c) || *c == b'-')
        }
        _ => false,
    }
}

/// Upstream's subdomain regex alone: like it, this bounds neither the whole length
/// nor each label's, so that a caller can report the two faults apart.
pub(crate) fn has_dns_subdomain_form(s: &str) -> bool {
    s.split('.').all(has_dns_label_form)
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, without a length bound: the form of a
/// label value and of a label or annotation key's name part.
pub(crate) fn has_label_name_form(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Upstream's `IsQualifiedName`: a label or annotation key, `[PREFIX/]NAME` with a DNS
/// subdomain as the prefix and a name of at most 63 characters.
pub fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(is_dns_subdomain) && name.len() <= DNS_LABEL_MAX && has_label_name_form(name)
}

/// Upstream's `IsValidLabelValue`: empty, or at most 63 characters of the name form.
pub fn is_label_value(value: &str) -> bool {
    value.is_empty() || (value.len() <= DNS_LABEL_MAX && has_label_name_form(value))
}

/// Upstream's `IsDNS1123Label`: what namespaces, Services and most names must be.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= DNS_LABEL_MAX && has_dns_label_form(s)
}

/// Upstream's `IsDNS1123Subdomain`: at most 253 characters of dot-separated labels.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= DNS_SUBDOMAIN_MAX && has_dns_subdomain_form(s)
}

/// Five random characters, as upstream appends to a `generateName`.
pub fn random_suffix() -> String {
    safe_chars(
        uuid::Uuid::new_v4()
            .as_bytes()
            .iter()
            .take(SUFFIX_LENGTH)
            .copied(),
    )
}

/// A random serial number for a certificate: 122 random bits (a version 4 UUID's),
/// positive with a non-zero top byte, so that its DER INTEGER is exactly 16 bytes.
pub fn certificate_serial() -> [u8; 16] {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    bytes
}

/// Upstream's `rand.SafeEncodeString`: `s` spelled in the suffix alphabet, for names
/// derived from a hash (ReplicaSets' and ControllerRevisions' `pod-template-hash`).
pub fn safe_encode(s: &str) -> String {
    safe_chars(s.bytes())
}

fn safe_chars(bytes: impl Iterator<Item = u8>) -> String {
    bytes
        .map(|b| char::from(SUFFIX_CHARS[usize::from(b) % SUFFIX_CHARS.len()]))
        .collect()
}

/// A name for an object created with `generateName: base` (upstream's
/// `SimpleNameGenerator`): `base`, cut to leave room, and a random suffix.
pub fn generate_name(base: &str) -> String {
    format!(
        "{}{}",
        cut(base, MAX_GENERATED_NAME_PREFIX),
        random_suffix()
    )
}

/// The `generateName` a controller gives the objects of `owner`: its name and a dash,
/// cut as the API server would cut it (upstream's `getPodsPrefix`).
pub fn generate_name_prefix(owner: &str) -> String {
    let mut prefix = cut(owner, MAX_GENERATED_NAME_PREFIX - 1).to_string();
    prefix.push('-');
    prefix
}

/// At most `max` bytes of `s`, never splitting a character (a prefix that is not
/// ASCII is refused later by name validation, but must not panic here).
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("demo-1"));
        assert!(!is_dns_label("Demo"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("a.example.com"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_subdomain(&"a".repeat(254)));
    }

    #[test]
    fn generated_names() {
        assert_eq!(generate_name_prefix("web"), "web-");
        assert_eq!(generate_name_prefix(&"x".repeat(80)).len(), 58);
        let name = generate_name(&"y".repeat(80));
        assert_eq!(name.len(), 63);
        assert!(is_dns_label(&name));
        assert!(generate_name("web-").starts_with("web-"));
        assert_eq!(generate_name(&"é".repeat(40)).chars().count(), 29 + 5);
        assert!(random_suffix().bytes().all(|b| SUFFIX_CHARS.contains(&b)));
    }
}
