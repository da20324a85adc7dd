//! Image references, and repository names and tags per the OCI distribution spec's
//! grammar.

use crate::ImageError;

/// An image reference `[HOST[:PORT]/]REPOSITORY[:TAG]` (the tag defaults to `latest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub registry: Option<String>,
    pub repository: String,
    pub tag: String,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, ImageError> {
        let bad = |why: &str| ImageError::Invalid(format!("image reference {s:?}: {why}"));
        let (registry, rest) = match s.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (Some(first.to_string()), rest)
            }
            _ => (None, s),
        };
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, tag),
            _ => (rest, "latest"),
        };
        if !valid_repository(repository) {
            return Err(bad(
                "the repository must be lower-case path components like library/busybox",
            ));
        }
        if !valid_tag(tag) {
            return Err(bad("invalid tag"));
        }
        Ok(Reference {
            registry,
            repository: repository.to_string(),
            tag: tag.to_string(),
        })
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255 bytes.
pub fn valid_repository(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-+", always followed by an alphanumeric.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("127.0.0.1:5000/library/busybox:v1").unwrap();
        assert_eq!(r.registry.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag, "v1");
        let r = Reference::parse("busybox").unwrap();
        assert_eq!((r.registry, r.tag.as_str()), (None, "latest"));
        assert!(Reference::parse("Bad/Name").is_err());
    }

    #[test]
    fn repositories() {
        for ok in ["busybox", "library/busybox", "a.b_c__d---e/f0", "test/img"] {
            assert!(valid_repository(ok), "{ok}");
        }
        for bad in [
            "", "Busybox", "a//b", "/a", "a/", "a..b", "a___b", "-a", "a-", "..", "a/_x", "a b",
        ] {
            assert!(!valid_repository(bad), "{bad}");
        }
    }

    #[test]
    fn tags() {
        assert!(valid_tag("v1.0-rc_1"));
        assert!(valid_tag("_x"));
        assert!(!valid_tag(".x"));
        assert!(!valid_tag("-x"));
        assert!(!valid_tag(&"a".repeat(129)));
        assert!(!valid_tag("a/b"));
    }
}
