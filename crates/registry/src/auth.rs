//! Who is asking: the embedder's [`Authenticator`], and a ready one for tokens.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use http::HeaderMap;

/// An authenticated user of the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
}

/// Credentials were presented but are not valid (answered with 401).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// Maps a request's headers to a user. `Ok(None)` is an anonymous request; `Err` is one
/// with credentials that do not hold.
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync {
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<User>, AuthError>;
}

/// Checks a bearer token; `None` when it is not valid.
#[async_trait::async_trait]
pub trait TokenVerifier: Send + Sync {
    async fn verify(&self, token: &str) -> Option<User>;
}

/// Accepts `Authorization: Bearer TOKEN`, and HTTP Basic with any user name and the
/// token as password (what `skopeo --creds user:TOKEN` and `docker login` send).
/// Basic with an empty user and password is anonymous: container clients send that when
/// they have no credentials but saw a challenge.
pub struct TokenAuthenticator {
    verifier: Arc<dyn TokenVerifier>,
}

impl TokenAuthenticator {
    pub fn new(verifier: Arc<dyn TokenVerifier>) -> TokenAuthenticator {
        TokenAuthenticator { verifier }
    }

    /// With a closure as the token check, e.g. the management API's token authentication.
    pub fn from_fn<F, Fut>(check: F) -> TokenAuthenticator
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Option<User>> + Send + 'static,
    {
        TokenAuthenticator::new(Arc::new(FnVerifier(check)))
    }
}

struct FnVerifier<F>(F);

#[async_trait::async_trait]
impl<F, Fut> TokenVerifier for FnVerifier<F>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<User>> + Send + 'static,
{
    async fn verify(&self, token: &str) -> Option<User> {
        (self.0)(token.to_string()).await
    }
}

#[async_trait::async_trait]
impl Authenticator for TokenAuthenticator {
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<User>, AuthError> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Ok(None);
        };
        let value = value
            .to_str()
            .map_err(|_| AuthError("the Authorization header is not text".into()))?;
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let token = if scheme.eq_ignore_ascii_case("bearer") {
            rest.trim().to_string()
        } else if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .map_err(|_| AuthError("Basic credentials are not base64".into()))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| AuthError("Basic credentials are not UTF-8".into()))?;
            let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
            if user.is_empty() && password.is_empty() {
                return Ok(None);
            }
            password.to_string()
        } else {
            return Err(AuthError(format!(
                "unsupported authorization scheme {scheme}"
            )));
        };
        if token.is_empty() {
            return Err(AuthError("empty token".into()));
        }
        match self.verifier.verify(&token).await {
            Some(user) => Ok(Some(user)),
            None => Err(AuthError("invalid token".into())),
        }
    }
}

/// Fixed tokens → user names, e.g. from a Kubernetes-style token file (`token,user,...`).
#[derive(Default, Clone)]
pub struct StaticTokens {
    tokens: HashMap<String, String>,
}

impl StaticTokens {
    pub fn new() -> StaticTokens {
        StaticTokens::default()
    }

    pub fn with(mut self, token: &str, user: &str) -> StaticTokens {
        self.tokens.insert(token.to_string(), user.to_string());
        self
    }

    /// Parses a token file: one `token,user[,...]` per line; `#` comments and blank lines
    /// are skipped.
    pub fn parse(text: &str) -> Result<StaticTokens, String> {
        let mut tokens = StaticTokens::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split(',');
            match (fields.next(), fields.next()) {
                (Some(token), Some(user)) if !token.is_empty() && !user.is_empty() => {
                    tokens = tokens.with(token.trim(), user.trim().trim_matches('"'));
                }
                _ => return Err(format!("line {}: expected token,user", i + 1)),
            }
        }
        Ok(tokens)
    }
}

#[async_trait::async_trait]
impl TokenVerifier for StaticTokens {
    async fn verify(&self, token: &str) -> Option<User> {
        // Constant-time compare against each, so timing does not reveal a prefix.
        let mut found = None;
        for (known, user) in &self.tokens {
            if ring_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(User { name: user.clone() });
            }
        }
        found
    }
}

fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    #[allow(deprecated)]
    ring::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// Nobody authenticates: every push is refused, pulls of public repositories work.
pub struct NoAuth;

#[async_trait::async_trait]
impl Authenticator for NoAuth {
    async fn authenticate(&self, _headers: &HeaderMap) -> Result<Option<User>, AuthError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[tokio::test]
    async fn basic_and_bearer() {
        let auth = TokenAuthenticator::new(Arc::new(StaticTokens::new().with("t0k", "alice")));
        let alice = Some(User {
            name: "alice".into(),
        });
        assert_eq!(
            auth.authenticate(&headers("Bearer t0k")).await.unwrap(),
            alice
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:t0k");
        assert_eq!(
            auth.authenticate(&headers(&format!("Basic {basic}")))
                .await
                .unwrap(),
            alice
        );
        assert!(auth.authenticate(&headers("Bearer nope")).await.is_err());
        assert_eq!(
            auth.authenticate(&headers("Basic Og==")).await.unwrap(),
            None
        );
        assert_eq!(auth.authenticate(&HeaderMap::new()).await.unwrap(), None);
    }

    #[test]
    fn token_file() {
        let t = StaticTokens::parse("# c\nabc,bob,uid1\n\n").unwrap();
        assert_eq!(t.tokens.get("abc").map(String::as_str), Some("bob"));
        assert!(StaticTokens::parse("lonely").is_err());
    }
}
