//! Bearer-token authentication: a static token file for bootstrap (upstream's
//! `--token-auth-file` format: `token,user,uid[,"group1,group2"]`).

use std::path::Path;

use http::HeaderMap;

use crate::auth::UserInfo;
use crate::server::ApiServer;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticToken {
    pub token: String,
    pub user: UserInfo,
}

/// Reads a token file; a line that is not `token,user,uid[,groups]` is an error naming it.
pub fn load_token_file(path: &Path) -> Result<Vec<StaticToken>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading token file {}: {e}", path.display()))?;
    parse_token_file(&text).map_err(|e| format!("token file {}: {e}", path.display()))
}

pub fn parse_token_file(text: &str) -> Result<Vec<StaticToken>, String> {
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, groups) = match line.split_once(",\"") {
            Some((head, rest)) => (head, rest.trim_end_matches('"')),
            None => (line, ""),
        };
        let fields: Vec<&str> = head.split(',').map(str::trim).collect();
        let (token, user) = match fields.as_slice() {
            [token, user, ..] if !token.is_empty() && !user.is_empty() => (*token, *user),
            _ => {
                return Err(format!(
                    "line {}: expected token,user,uid[,\"groups\"]",
                    i + 1
                ))
            }
        };
        let mut groups: Vec<String> = groups
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect();
        if fields.len() > 3 {
            groups.extend(
                fields[3..]
                    .iter()
                    .filter(|g| !g.is_empty())
                    .map(|g| g.to_string()),
            );
        }
        tokens.push(StaticToken {
            token: token.to_string(),
            user: UserInfo::authenticated(user, groups),
        });
    }
    Ok(tokens)
}

/// The user of a `Authorization: Bearer` header, if the token is known: a static token,
/// else a ServiceAccount JWT that verifies.
pub async fn authenticate(server: &ApiServer, headers: &HeaderMap) -> Option<UserInfo> {
    let header = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = header.strip_prefix("Bearer ")?.trim();
    authenticate_token(server, token, &[])
        .await
        .map(|(user, _)| user)
}

/// A bearer token's user and the audiences (of `audiences`, or of the API server's when
/// empty) it is valid for, as upstream's TokenReview answers them.
pub async fn authenticate_token(
    server: &ApiServer,
    token: &str,
    audiences: &[String],
) -> Option<(UserInfo, Vec<String>)> {
    if token.is_empty() {
        return None;
    }
    let api_audiences = || {
        server.sa_token_signer.as_deref().map_or_else(
            || vec![crate::sa_tokens::ISSUER.to_string()],
            |s| s.api_audiences().to_vec(),
        )
    };
    if let Some(t) = server
        .static_tokens
        .iter()
        .find(|t| constant_time_eq(t.token.as_bytes(), token.as_bytes()))
    {
        // Static tokens are audience-agnostic: valid for the API server's audiences only.
        return api_audiences_among(api_audiences(), audiences)
            .map(|meant_for| (t.user.clone(), meant_for));
    }
    if crate::bootstrap_tokens::parse(token).is_some() {
        // Like static tokens, bootstrap tokens are for the API server's audiences only.
        let user = crate::bootstrap_tokens::authenticate(server, token).await?;
        return api_audiences_among(api_audiences(), audiences).map(|meant_for| (user, meant_for));
    }
    if server.sa_token_signer.is_none() || !crate::sa_tokens::looks_like_jwt(token) {
        return None;
    }
    match crate::sa_tokens::authenticate_for(server, token, audiences).await {
        Ok(found) => Some(found),
        Err(e) => {
            tracing::debug!(error = %e, "service-account token rejected");
            None
        }
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The API server's own audiences among those a client asked for (all of them when it
/// asked for none; `api` is the server's); `None` when the token is not meant for this server.
fn api_audiences_among(api: Vec<String>, audiences: &[String]) -> Option<Vec<String>> {
    let meant_for: Vec<String> = if audiences.is_empty() {
        api
    } else {
        audiences
            .iter()
            .filter(|a| api.contains(a))
            .cloned()
            .collect()
    };
    (!meant_for.is_empty()).then_some(meant_for)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_token_files() {
        let tokens = parse_token_file("# comment\nabc,alice,1,\"dev,ops\"\nxyz,bob,2\n").unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[0].user.name, "alice");
        assert!(tokens[0].user.in_group("dev") && tokens[0].user.in_group("ops"));
        assert!(tokens[1].user.in_group("system:authenticated"));
        assert!(parse_token_file("justtoken\n").is_err());
    }
}
