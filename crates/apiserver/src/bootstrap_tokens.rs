//! Bootstrap tokens, as upstream: a bearer token `<id>.<secret>` is valid while Secret
//! `kube-system/bootstrap-token-<id>` of type `bootstrap.kubernetes.io/token` holds the
//! same id and secret, allows authentication and has not expired. Nodes use them once,
//! to ask for their client certificate.
//!
//! Upstream also runs a token cleaner that deletes expired token Secrets; Korvet does not
//! (yet): an expired token is rejected here whether or not its Secret is still there.

use base64::Engine as _;
use serde_json::Value;

use crate::auth::UserInfo;
use crate::server::ApiServer;

pub(crate) const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub(crate) const SECRET_NAMESPACE: &str = "kube-system";
pub(crate) const SECRET_PREFIX: &str = "bootstrap-token-";
pub(crate) const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";
pub(crate) const USER_PREFIX: &str = "system:bootstrap:";

/// A token split into its public id and its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BootstrapToken<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

fn lowercase_alnum(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// `[a-z0-9]{6}.[a-z0-9]{16}`, or `None`.
pub(crate) fn parse(token: &str) -> Option<BootstrapToken<'_>> {
    let (id, secret) = token.split_once('.')?;
    (lowercase_alnum(id, 6) && lowercase_alnum(secret, 16)).then_some(BootstrapToken { id, secret })
}

/// Why a well-formed token was not accepted (logged, never shown to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Rejected {
    #[error("secret has type {0:?}, not {SECRET_TYPE}")]
    WrongType(String),
    #[error("secret's token-id does not match")]
    IdMismatch,
    #[error("token secret does not match")]
    SecretMismatch,
    #[error("token is not marked for authentication (usage-bootstrap-authentication)")]
    NotForAuthentication,
    #[error("token expired at {0}")]
    Expired(String),
    #[error("token expiration {0:?} is not an RFC 3339 time")]
    BadExpiration(String),
    #[error("token secret is being deleted")]
    Deleted,
}

/// A Secret data field, decoded (`data` is base64 as stored; `stringData` is accepted too
/// for objects written before defaulting merged it).
fn field(secret: &Value, key: &str) -> Option<String> {
    if let Some(encoded) = secret["data"][key].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        return String::from_utf8(bytes).ok();
    }
    secret["stringData"][key].as_str().map(str::to_string)
}

/// Checks a token against its Secret at `now` (unix seconds); the user it stands for.
pub(crate) fn validate(
    token: &BootstrapToken<'_>,
    secret: &Value,
    now: i64,
) -> Result<UserInfo, Rejected> {
    let kind = secret["type"].as_str().unwrap_or_default();
    if kind != SECRET_TYPE {
        return Err(Rejected::WrongType(kind.to_string()));
    }
    if secret["metadata"]["deletionTimestamp"].is_string() {
        return Err(Rejected::Deleted);
    }
    if field(secret, "token-id").as_deref() != Some(token.id) {
        return Err(Rejected::IdMismatch);
    }
    let stored = field(secret, "token-secret").unwrap_or_default();
    if !crate::tokens::constant_time_eq(stored.as_bytes(), token.secret.as_bytes()) {
        return Err(Rejected::SecretMismatch);
    }
    if field(secret, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err(Rejected::NotForAuthentication);
    }
    if let Some(expiration) = field(secret, "expiration") {
        let at = expiration
            .parse::<jiff::Timestamp>()
            .map_err(|_| Rejected::BadExpiration(expiration.clone()))?;
        if at.as_second() <= now {
            return Err(Rejected::Expired(expiration));
        }
    }
    let mut groups = vec![BOOTSTRAPPERS_GROUP.to_string()];
    for extra in field(secret, "auth-extra-groups")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
    {
        // Upstream only allows extra groups under `system:bootstrappers:`.
        if extra.starts_with("system:bootstrappers:") && !groups.iter().any(|g| g == extra) {
            groups.push(extra.to_string());
        }
    }
    Ok(UserInfo::authenticated(
        format!("{USER_PREFIX}{}", token.id),
        groups,
    ))
}

/// The user of a bootstrap token, if it is one and its Secret accepts it.
pub(crate) async fn authenticate(server: &ApiServer, token: &str) -> Option<UserInfo> {
    let parsed = parse(token)?;
    let secrets = server.registry.get("", "v1", "secrets")?;
    let key = secrets.key(
        Some(SECRET_NAMESPACE),
        &format!("{SECRET_PREFIX}{}", parsed.id),
    );
    let secret = match server.objects.get(&key).await {
        Ok(Some((secret, _))) => secret,
        Ok(None) => {
            tracing::debug!(id = parsed.id, "bootstrap token has no secret");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading bootstrap token secret");
            return None;
        }
    };
    match validate(&parsed, &secret, crate::sa_tokens::unix_now()) {
        Ok(user) => Some(user),
        Err(e) => {
            tracing::debug!(id = parsed.id, reason = %e, "bootstrap token rejected");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn secret(extra: &[(&str, &str)]) -> Value {
        let mut data = serde_json::Map::new();
        for (k, v) in [
            ("token-id", "abcdef"),
            ("token-secret", "0123456789abcdef"),
            ("usage-bootstrap-authentication", "true"),
        ]
        .iter()
        .chain(extra)
        {
            data.insert(k.to_string(), json!(b64(v)));
        }
        json!({
            "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
            "type": SECRET_TYPE,
            "data": data,
        })
    }

    #[test]
    fn parses_only_upstream_shaped_tokens() {
        assert_eq!(
            parse("abcdef.0123456789abcdef"),
            Some(BootstrapToken {
                id: "abcdef",
                secret: "0123456789abcdef"
            })
        );
        for bad in [
            "",
            "abcdef",
            "abcdef.",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcdeff",
            "abcdef.0123456789abcde!",
            "abcdef.0123456789abcdef.x",
            "eyJhbGciOi.eyJzdWIiOiJ4In0.sig",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn valid_token_is_a_bootstrapper() {
        let token = parse("abcdef.0123456789abcdef").unwrap();
        let user = validate(
            &token,
            &secret(&[(
                "auth-extra-groups",
                "system:bootstrappers:worker,evil:group",
            )]),
            0,
        )
        .unwrap();
        assert_eq!(user.name, "system:bootstrap:abcdef");
        assert_eq!(
            user.groups,
            [
                "system:bootstrappers",
                "system:bootstrappers:worker",
                "system:authenticated"
            ]
        );
    }

    #[test]
    fn wrong_secret_type_usage_and_expiry_are_rejected() {
        let token = parse("abcdef.0123456789abcdef").unwrap();
        let wrong = parse("abcdef.0123456789abcdee").unwrap();
        assert_eq!(
            validate(&wrong, &secret(&[]), 0),
            Err(Rejected::SecretMismatch)
        );
        let mut opaque = secret(&[]);
        opaque["type"] = json!("Opaque");
        assert!(matches!(
            validate(&token, &opaque, 0),
            Err(Rejected::WrongType(_))
        ));
        let mut no_auth = secret(&[]);
        no_auth["data"]["usage-bootstrap-authentication"] = json!(b64("false"));
        assert_eq!(
            validate(&token, &no_auth, 0),
            Err(Rejected::NotForAuthentication)
        );
        let expiring = secret(&[("expiration", "2030-01-01T00:00:00Z")]);
        assert!(validate(&token, &expiring, 1_800_000_000).is_ok());
        assert!(matches!(
            validate(&token, &expiring, 1_900_000_000),
            Err(Rejected::Expired(_))
        ));
        assert!(matches!(
            validate(&token, &secret(&[("expiration", "tomorrow")]), 0),
            Err(Rejected::BadExpiration(_))
        ));
        let other_id = parse("zzzzzz.0123456789abcdef").unwrap();
        assert_eq!(
            validate(&other_id, &secret(&[]), 0),
            Err(Rejected::IdMismatch)
        );
    }

    #[test]
    fn string_data_is_read_too() {
        let token = parse("abcdef.0123456789abcdef").unwrap();
        let object = json!({
            "type": SECRET_TYPE,
            "metadata": {},
            "stringData": {
                "token-id": "abcdef",
                "token-secret": "0123456789abcdef",
                "usage-bootstrap-authentication": "true",
            },
        });
        assert!(validate(&token, &object, 0).is_ok());
    }
}
