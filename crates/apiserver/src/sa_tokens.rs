//! ServiceAccount tokens with upstream semantics: bound JWTs (`ES256`, signed with the
//! cluster's `sa.key`) issued by the TokenRequest subresource and accepted as bearer
//! tokens while the ServiceAccount (and the object the token is bound to) still exists
//! with the same uid.
//!
//! A token looks like upstream's:
//!
//! ```text
//! header  {"alg": "ES256", "kid": base64url(sha256(SPKI DER of sa.pub))}
//! claims  {"aud": [...], "exp": N, "iat": N, "nbf": N,
//!          "iss": "https://kubernetes.default.svc.cluster.local",
//!          "jti": UUID, "sub": "system:serviceaccount:NS:NAME",
//!          "kubernetes.io": {"namespace": NS, "serviceaccount": {"name", "uid"},
//!                            "pod"?: {"name", "uid"}, "secret"?: {...}, "node"?: {...}}}
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivatePkcs8KeyDer;
use serde_json::{json, Value};

use crate::auth::{UserInfo, AUTHENTICATED_GROUP};
use crate::server::ApiServer;

/// Upstream's default `--service-account-issuer` for in-cluster DNS; also the default
/// (and only) API audience.
pub(crate) const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Claims of the ServiceAccount and the bound objects, as upstream names them.
pub(crate) const PRIVATE_CLAIM: &str = "kubernetes.io";
pub(crate) const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
pub(crate) const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";
/// go-jose's default leeway for `exp`, `nbf` and `iat`, which upstream relies on.
pub(crate) const LEEWAY_SECONDS: i64 = 60;
/// Tokens longer than this are not looked at (upstream tokens are ~1 KiB).
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// A deleted object's tokens stay valid for this long after its deletion timestamp, as
/// upstream (so a pod shutting down gracefully can still talk to the API).
const DELETION_GRACE_SECONDS: i64 = 60;

/// The DER prefix of a P-256 SubjectPublicKeyInfo, followed by the 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why a token was refused. Never carries the token itself.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("unsupported signing algorithm {0:?}")]
    Algorithm(String),
    #[error("invalid signature")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer {0:?} is not accepted")]
    Issuer(String),
    #[error("token audiences {0:?} are not accepted")]
    Audience(Vec<String>),
    #[error("{0}")]
    Stale(String),
    #[error("signing failed: {0}")]
    Signing(String),
}

/// The object a token is bound to (`spec.boundObjectRef` of the TokenRequest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundObject {
    pub kind: BoundKind,
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoundKind {
    Pod,
    Secret,
    Node,
}

impl BoundKind {
    pub fn from_kind(kind: &str) -> Option<Self> {
        match kind {
            "Pod" => Some(Self::Pod),
            "Secret" => Some(Self::Secret),
            "Node" => Some(Self::Node),
            _ => None,
        }
    }

    /// The claim under `kubernetes.io`.
    pub fn claim(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Secret => "secret",
            Self::Node => "node",
        }
    }

    /// The core resource holding such objects.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Pod => "pods",
            Self::Secret => "secrets",
            Self::Node => "nodes",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Self::Node)
    }
}

/// What a token is issued for.
#[derive(Clone, Debug)]
pub struct TokenSpec {
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: String,
    /// Empty means the issuer (upstream's default `--api-audiences`).
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
    pub bound: Option<BoundObject>,
    /// The node of a bound pod, informational as upstream's `ServiceAccountTokenPodNodeInfo`.
    pub pod_node: Option<(String, String)>,
}

/// What a verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountClaims {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub audiences: Vec<String>,
    pub expires: i64,
    pub jti: Option<String>,
    /// The bound object, if any (a pod, a secret or a node).
    pub bound: Option<BoundObject>,
}

impl ServiceAccountClaims {
    pub fn username(&self) -> String {
        service_account_username(&self.namespace, &self.name)
    }

    /// The user a valid token authenticates as, with upstream's groups.
    pub fn user_info(&self) -> UserInfo {
        UserInfo {
            name: self.username(),
            groups: vec![
                SERVICE_ACCOUNTS_GROUP.to_string(),
                format!("{SERVICE_ACCOUNTS_GROUP}:{}", self.namespace),
                AUTHENTICATED_GROUP.to_string(),
            ],
        }
    }
}

pub(crate) fn service_account_username(namespace: &str, name: &str) -> String {
    format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}")
}

/// Signs and verifies ServiceAccount tokens with one ECDSA P-256 key.
pub struct TokenSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    issuer: String,
    /// Audiences the API server accepts for authentication (upstream `--api-audiences`).
    api_audiences: Vec<String>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A signer for the PKCS#8 PEM private key (the cluster's `sa.key`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("service-account key is not a PKCS#8 PEM: {e}"))?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| format!("service-account key is not an ECDSA P-256 key: {e}"))?;
        let kid = key_id(&spki_der(key.public_key().as_ref()));
        Ok(Self {
            key,
            rng,
            kid,
            issuer: ISSUER.to_string(),
            api_audiences: vec![ISSUER.to_string()],
        })
    }

    pub fn from_pki(pki: &crate::pki::ClusterPki) -> Result<Self, String> {
        Self::from_pkcs8_pem(pki.sa_key_pem())
    }

    /// Upstream's key id: base64url(sha256(SPKI DER of the public key)).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn api_audiences(&self) -> &[String] {
        &self.api_audiences
    }

    /// Issues a token valid from `now` (seconds since the epoch) for
    /// `spec.expiration_seconds`.
    pub fn issue(&self, spec: &TokenSpec, now: i64) -> Result<String, TokenError> {
        let audiences = if spec.audiences.is_empty() {
            self.api_audiences.clone()
        } else {
            spec.audiences.clone()
        };
        let mut private = json!({
            "namespace": spec.namespace,
            "serviceaccount": {"name": spec.service_account, "uid": spec.service_account_uid},
        });
        if let Some(bound) = &spec.bound {
            private[bound.kind.claim()] = json!({"name": bound.name, "uid": bound.uid});
        }
        if let (Some((name, uid)), Some(BoundKind::Pod)) =
            (&spec.pod_node, spec.bound.as_ref().map(|b| b.kind))
        {
            private["node"] = json!({"name": name, "uid": uid});
        }
        let claims = json!({
            "aud": audiences,
            "exp": now.saturating_add(spec.expiration_seconds),
            "iat": now,
            "iss": self.issuer,
            "jti": uuid::Uuid::new_v4().to_string(),
            PRIVATE_CLAIM: private,
            "nbf": now,
            "sub": service_account_username(&spec.namespace, &spec.service_account),
        });
        let header = json!({"alg": "ES256", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// Checks signature, issuer, validity period and that the token is meant for the API
    /// server; whether the ServiceAccount still exists is [`authenticate`]'s part.
    pub fn verify(&self, token: &str, now: i64) -> Result<ServiceAccountClaims, TokenError> {
        self.verify_for(token, now, &self.api_audiences)
    }

    /// [`TokenSigner::verify`] for other audiences (a TokenReview's `spec.audiences`):
    /// at least one of the token's must be among `accepted`.
    pub fn verify_for(
        &self,
        token: &str,
        now: i64,
        accepted: &[String],
    ) -> Result<ServiceAccountClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("token is too long".into()));
        }
        let mut parts = token.split('.');
        let (Some(header_part), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(
                "not a JWS compact serialization".into(),
            ));
        };
        let header: Value = decode_part(header_part, "header")?;
        let alg = header["alg"].as_str().unwrap_or_default();
        if alg != "ES256" {
            return Err(TokenError::Algorithm(alg.to_string()));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed("signature is not base64url".into()))?;
        let signed = format!("{header_part}.{payload}");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| TokenError::Signature)?;
        let claims: Value = decode_part(payload, "claims")?;
        if !claims.is_object() {
            return Err(TokenError::Malformed("claims are not an object".into()));
        }
        let issuer = claims["iss"].as_str().unwrap_or_default();
        if issuer != self.issuer {
            return Err(TokenError::Issuer(issuer.to_string()));
        }
        let expires = numeric_date(&claims["exp"])
            .ok_or_else(|| TokenError::Malformed("exp is missing".into()))?;
        if now > expires.saturating_add(LEEWAY_SECONDS) {
            return Err(TokenError::Expired);
        }
        for claim in ["nbf", "iat"] {
            match &claims[claim] {
                Value::Null => {}
                value => {
                    let at = numeric_date(value)
                        .ok_or_else(|| TokenError::Malformed(format!("{claim} is not a number")))?;
                    if at > now.saturating_add(LEEWAY_SECONDS) {
                        return Err(TokenError::NotYetValid);
                    }
                }
            }
        }
        let audiences: Vec<String> = match &claims["aud"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        if !audiences.iter().any(|a| accepted.contains(a)) {
            return Err(TokenError::Audience(audiences));
        }
        let private = &claims[PRIVATE_CLAIM];
        let text = |v: &Value, what: &str| -> Result<String, TokenError> {
            v.as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| {
                    TokenError::Malformed(format!("{PRIVATE_CLAIM} claim has no {what}"))
                })
        };
        let namespace = text(&private["namespace"], "namespace")?;
        let name = text(&private["serviceaccount"]["name"], "serviceaccount.name")?;
        let uid = text(&private["serviceaccount"]["uid"], "serviceaccount.uid")?;
        if claims["sub"].as_str() != Some(service_account_username(&namespace, &name).as_str()) {
            return Err(TokenError::Malformed(
                "sub does not name the service account".into(),
            ));
        }
        // A pod binding wins over the informational node of a pod-bound token.
        let mut bound = None;
        for kind in [BoundKind::Pod, BoundKind::Secret, BoundKind::Node] {
            let claim = &private[kind.claim()];
            if claim.is_null() {
                continue;
            }
            let object = BoundObject {
                kind,
                name: text(&claim["name"], &format!("{}.name", kind.claim()))?,
                uid: text(&claim["uid"], &format!("{}.uid", kind.claim()))?,
            };
            bound.get_or_insert(object);
        }
        Ok(ServiceAccountClaims {
            namespace,
            name,
            uid,
            audiences,
            expires,
            jti: claims["jti"].as_str().map(str::to_string),
            bound,
        })
    }
}

fn decode_part(part: &str, what: &str) -> Result<Value, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed(format!("{what} is not base64url")))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed(format!("{what} is not JSON")))
}

/// A JWT NumericDate: whole or fractional seconds since the epoch.
fn numeric_date(value: &Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

fn spki_der(point: &[u8]) -> Vec<u8> {
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.extend_from_slice(point);
    der
}

fn key_id(spki: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, spki))
}

/// Whether a bearer token has the shape of a JWT (three dot-separated parts).
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(a), Some(b), Some(_), None) if !a.is_empty() && !b.is_empty()
    )
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Verifies `token` and checks, as upstream's validator, that its ServiceAccount and
/// bound object still exist with the uids it was issued for.
#[cfg(test)]
pub(crate) async fn authenticate(server: &ApiServer, token: &str) -> Result<UserInfo, TokenError> {
    authenticate_for(server, token, &[])
        .await
        .map(|(user, _)| user)
}

/// [`authenticate`] for `audiences` (empty: the API server's own); also answers which of
/// them the token is meant for, as a TokenReview's `status.audiences`.
pub(crate) async fn authenticate_for(
    server: &ApiServer,
    token: &str,
    audiences: &[String],
) -> Result<(UserInfo, Vec<String>), TokenError> {
    let signer = server
        .sa_token_signer
        .as_deref()
        .ok_or_else(|| TokenError::Stale("service-account tokens are not enabled".into()))?;
    let accepted = if audiences.is_empty() {
        signer.api_audiences()
    } else {
        audiences
    };
    let now = unix_now();
    let claims = signer.verify_for(token, now, accepted)?;
    let sa = live_object(
        server,
        "serviceaccounts",
        Some(&claims.namespace),
        &claims.name,
        now,
    )
    .await
    .map_err(|e| {
        TokenError::Stale(format!(
            "service account {}/{}: {e}",
            claims.namespace, claims.name
        ))
    })?;
    check_uid(&sa, &claims.uid, "service account")?;
    if let Some(bound) = &claims.bound {
        let namespace = bound.kind.namespaced().then_some(claims.namespace.as_str());
        let object = live_object(server, bound.kind.plural(), namespace, &bound.name, now)
            .await
            .map_err(|e| {
                TokenError::Stale(format!("{} {}: {e}", bound.kind.claim(), bound.name))
            })?;
        check_uid(&object, &bound.uid, bound.kind.claim())?;
    }
    let meant_for = accepted
        .iter()
        .filter(|a| claims.audiences.contains(a))
        .cloned()
        .collect();
    Ok((claims.user_info(), meant_for))
}

fn check_uid(object: &Value, uid: &str, what: &str) -> Result<(), TokenError> {
    let actual = object["metadata"]["uid"].as_str().unwrap_or_default();
    if actual != uid {
        return Err(TokenError::Stale(format!(
            "{what} UID ({actual}) does not match claim ({uid})"
        )));
    }
    Ok(())
}

/// The object, unless it is missing or was deleted more than a minute ago.
async fn live_object(
    server: &ApiServer,
    plural: &str,
    namespace: Option<&str>,
    name: &str,
    now: i64,
) -> Result<Value, String> {
    let resource = server
        .registry
        .get("", "v1", plural)
        .ok_or_else(|| format!("no {plural} resource"))?;
    let (object, _) = server
        .objects
        .get(&resource.key(namespace, name))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "not found".to_string())?;
    if let Some(deleted) = object["metadata"]["deletionTimestamp"].as_str() {
        let deleted = deleted
            .parse::<jiff::Timestamp>()
            .map(|t| t.as_second())
            .unwrap_or(0);
        if deleted.saturating_add(DELETION_GRACE_SECONDS) < now {
            return Err("has been deleted".into());
        }
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> TokenSigner {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        TokenSigner::from_pkcs8_pem(&key.serialize_pem()).unwrap()
    }

    fn spec() -> TokenSpec {
        TokenSpec {
            namespace: "default".into(),
            service_account: "robot".into(),
            service_account_uid: "uid-1".into(),
            audiences: Vec::new(),
            expiration_seconds: 3600,
            bound: None,
            pod_node: None,
        }
    }

    const NOW: i64 = 1_800_000_000;

    fn parts(token: &str) -> (Value, Value) {
        let mut it = token.split('.');
        let header = decode_part(it.next().unwrap(), "header").unwrap();
        let claims = decode_part(it.next().unwrap(), "claims").unwrap();
        (header, claims)
    }

    /// Re-signs `claims` with `signer` under its own header (a validly signed token
    /// with chosen content).
    fn forge(signer: &TokenSigner, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = signer.key.sign(&signer.rng, input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    #[test]
    fn issues_upstream_shaped_tokens_that_verify() {
        let signer = signer();
        let token = signer.issue(&spec(), NOW).unwrap();
        assert!(looks_like_jwt(&token));
        let (header, claims) = parts(&token);
        assert_eq!(header, json!({"alg": "ES256", "kid": signer.kid()}));
        assert_eq!(claims["iss"], ISSUER);
        assert_eq!(claims["sub"], "system:serviceaccount:default:robot");
        assert_eq!(claims["aud"], json!([ISSUER]));
        assert_eq!(claims["exp"], NOW + 3600);
        assert_eq!(claims["iat"], NOW);
        assert_eq!(claims["nbf"], NOW);
        assert_eq!(
            claims["kubernetes.io"],
            json!({"namespace": "default", "serviceaccount": {"name": "robot", "uid": "uid-1"}})
        );
        let verified = signer.verify(&token, NOW + 10).unwrap();
        assert_eq!(verified.username(), "system:serviceaccount:default:robot");
        assert_eq!(verified.uid, "uid-1");
        assert_eq!(verified.bound, None);
        assert_eq!(verified.jti.as_deref(), claims["jti"].as_str());
        let user = verified.user_info();
        assert_eq!(
            user.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:default",
                "system:authenticated"
            ]
        );
    }

    #[test]
    fn bound_pod_tokens_carry_pod_and_node() {
        let signer = signer();
        let mut spec = spec();
        spec.bound = Some(BoundObject {
            kind: BoundKind::Pod,
            name: "web-0".into(),
            uid: "pod-uid".into(),
        });
        spec.pod_node = Some(("node-a".into(), "node-uid".into()));
        let token = signer.issue(&spec, NOW).unwrap();
        let (_, claims) = parts(&token);
        assert_eq!(
            claims["kubernetes.io"]["pod"],
            json!({"name": "web-0", "uid": "pod-uid"})
        );
        assert_eq!(
            claims["kubernetes.io"]["node"],
            json!({"name": "node-a", "uid": "node-uid"})
        );
        let verified = signer.verify(&token, NOW).unwrap();
        assert_eq!(
            verified.bound, spec.bound,
            "the pod is the binding, not the node"
        );
    }

    #[test]
    fn kid_is_sha256_of_the_spki_of_sa_pub() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::ClusterPki::load_or_create(dir.path(), &[]).unwrap();
        let signer = TokenSigner::from_pki(&pki).unwrap();
        let spki =
            rustls::pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pki.sa_pub_pem().as_bytes())
                .unwrap();
        assert_eq!(signer.kid(), key_id(spki.as_ref()));
        // Stable across restarts: the same key gives the same kid.
        let again = TokenSigner::from_pki(
            &crate::pki::ClusterPki::load_or_create(dir.path(), &[]).unwrap(),
        )
        .unwrap();
        assert_eq!(again.kid(), signer.kid());
    }

    #[test]
    fn expired_and_future_tokens_are_rejected_with_leeway() {
        let signer = signer();
        let token = signer.issue(&spec(), NOW).unwrap();
        assert!(signer.verify(&token, NOW + 3600 + LEEWAY_SECONDS).is_ok());
        assert_eq!(
            signer.verify(&token, NOW + 3600 + LEEWAY_SECONDS + 1),
            Err(TokenError::Expired)
        );
        assert!(signer.verify(&token, NOW - LEEWAY_SECONDS).is_ok());
        assert_eq!(
            signer.verify(&token, NOW - LEEWAY_SECONDS - 1),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn only_the_api_audience_is_accepted() {
        let signer = signer();
        let mut spec = spec();
        spec.audiences = vec!["vault".into()];
        let token = signer.issue(&spec, NOW).unwrap();
        assert_eq!(
            signer.verify(&token, NOW),
            Err(TokenError::Audience(vec!["vault".into()]))
        );
        spec.audiences = vec!["vault".into(), ISSUER.into()];
        let token = signer.issue(&spec, NOW).unwrap();
        assert!(
            signer.verify(&token, NOW).is_ok(),
            "one accepted audience is enough"
        );
        // A single-string `aud` is valid JWT.
        let (header, mut claims) = parts(&token);
        claims["aud"] = json!(ISSUER);
        assert!(signer
            .verify(&forge(&signer, &header, &claims), NOW)
            .is_ok());
        // A TokenReview for another audience accepts that audience only.
        let vault = ["vault".to_string()];
        spec.audiences = vec!["vault".into()];
        let token = signer.issue(&spec, NOW).unwrap();
        assert!(signer.verify_for(&token, NOW, &vault).is_ok());
        let token = signer.issue(&self::spec(), NOW).unwrap();
        assert!(matches!(
            signer.verify_for(&token, NOW, &vault),
            Err(TokenError::Audience(_))
        ));
    }

    #[test]
    fn tampered_or_foreign_tokens_are_rejected() {
        let signer = signer();
        let token = signer.issue(&spec(), NOW).unwrap();
        let (header, mut claims) = parts(&token);
        // Tampered payload, original signature.
        claims["kubernetes.io"]["serviceaccount"]["name"] = json!("admin");
        claims["sub"] = json!("system:serviceaccount:default:admin");
        let pieces: Vec<&str> = token.split('.').collect();
        let tampered = format!(
            "{}.{}.{}",
            pieces[0],
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            pieces[2]
        );
        assert_eq!(signer.verify(&tampered, NOW), Err(TokenError::Signature));
        // Signed by another key.
        let other = self::signer();
        assert_eq!(
            signer.verify(&other.issue(&spec(), NOW).unwrap(), NOW),
            Err(TokenError::Signature)
        );
        // A flipped signature byte.
        let mut sig = URL_SAFE_NO_PAD.decode(pieces[2]).unwrap();
        sig[5] ^= 1;
        let flipped = format!(
            "{}.{}.{}",
            pieces[0],
            pieces[1],
            URL_SAFE_NO_PAD.encode(sig)
        );
        assert_eq!(signer.verify(&flipped, NOW), Err(TokenError::Signature));
        // alg none / HS256 are refused before any signature check.
        for alg in ["none", "HS256", "RS256"] {
            let forged = format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(json!({"alg": alg}).to_string()),
                pieces[1]
            );
            assert_eq!(
                signer.verify(&forged, NOW),
                Err(TokenError::Algorithm(alg.into()))
            );
        }
        // A validly signed token from another issuer.
        let (_, mut claims) = parts(&token);
        claims["iss"] = json!("https://evil.example");
        assert_eq!(
            signer.verify(&forge(&signer, &header, &claims), NOW),
            Err(TokenError::Issuer("https://evil.example".into()))
        );
        // sub disagreeing with the private claims.
        let (_, mut claims) = parts(&token);
        claims["sub"] = json!("system:serviceaccount:kube-system:admin");
        assert!(matches!(
            signer.verify(&forge(&signer, &header, &claims), NOW),
            Err(TokenError::Malformed(_))
        ));
        // No exp.
        let (_, mut claims) = parts(&token);
        claims.as_object_mut().unwrap().remove("exp");
        assert!(matches!(
            signer.verify(&forge(&signer, &header, &claims), NOW),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let signer = signer();
        let token = signer.issue(&spec(), NOW).unwrap();
        let inputs = [
            "",
            ".",
            "..",
            "...",
            "a.b.c",
            "a.b.c.d",
            "!!!.???.***",
            "e30.e30.",
            "e30.e30.e30",
            "eyJhbGciOiJFUzI1NiJ9.bnVsbA.AAAA",
            "eyJhbGciOiJFUzI1NiJ9.W10.AAAA",
            "ünïcødé.ü.ü",
        ];
        for input in inputs {
            assert!(signer.verify(input, NOW).is_err(), "{input:?}");
        }
        // Every truncation and a few corruptions of a real token.
        for cut in 0..token.len() {
            if token.is_char_boundary(cut) {
                assert!(signer.verify(&token[..cut], NOW).is_err());
            }
        }
        let huge = format!("{token}{}", "A".repeat(MAX_TOKEN_LEN));
        assert!(matches!(
            signer.verify(&huge, NOW),
            Err(TokenError::Malformed(_))
        ));
        // Valid signatures over non-object or oddly typed claims.
        let header = json!({"alg": "ES256"});
        for claims in [
            json!(null),
            json!([1]),
            json!({"iss": ISSUER, "exp": "soon"}),
            json!({"iss": ISSUER, "exp": 1e300, "aud": 7}),
        ] {
            assert!(
                signer
                    .verify(&forge(&signer, &header, &claims), NOW)
                    .is_err(),
                "{claims}"
            );
        }
    }

    async fn server_with(signer: TokenSigner) -> (std::sync::Arc<ApiServer>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = korvet_store::embedded::EmbeddedStore::open(dir.path(), Default::default())
            .await
            .unwrap();
        let objects = crate::storage::Objects::new(std::sync::Arc::new(store));
        let server = ApiServer::new(
            objects,
            "127.0.0.1:0".into(),
            Vec::new(),
            Some(std::sync::Arc::new(signer)),
        );
        (server, dir)
    }

    async fn put(server: &ApiServer, plural: &str, namespace: Option<&str>, name: &str, uid: &str) {
        let resource = server.registry.get("", "v1", plural).unwrap();
        let key = resource.key(namespace, name);
        if let Some((_, rev)) = server.objects.get(&key).await.unwrap() {
            server.objects.delete(&key, rev).await.unwrap();
        }
        let object = json!({"metadata": {"name": name, "namespace": namespace, "uid": uid}});
        server.objects.create(&key, &object).await.unwrap();
    }

    async fn remove(server: &ApiServer, plural: &str, namespace: Option<&str>, name: &str) {
        let key = server
            .registry
            .get("", "v1", plural)
            .unwrap()
            .key(namespace, name);
        let (_, rev) = server.objects.get(&key).await.unwrap().unwrap();
        server.objects.delete(&key, rev).await.unwrap();
    }

    #[tokio::test]
    async fn tokens_live_as_long_as_their_service_account_and_bound_object() {
        let (server, _dir) = server_with(signer()).await;
        let signer = server.sa_token_signer.clone().unwrap();
        let now = unix_now();
        put(
            &server,
            "serviceaccounts",
            Some("default"),
            "robot",
            "uid-1",
        )
        .await;
        let token = signer.issue(&spec(), now).unwrap();
        let user = authenticate(&server, &token).await.unwrap();
        assert_eq!(user.name, "system:serviceaccount:default:robot");
        // Recreated under the same name: a new uid, so the old token is dead.
        put(
            &server,
            "serviceaccounts",
            Some("default"),
            "robot",
            "uid-2",
        )
        .await;
        assert!(matches!(
            authenticate(&server, &token).await,
            Err(TokenError::Stale(_))
        ));
        put(
            &server,
            "serviceaccounts",
            Some("default"),
            "robot",
            "uid-1",
        )
        .await;
        assert!(authenticate(&server, &token).await.is_ok());
        remove(&server, "serviceaccounts", Some("default"), "robot").await;
        assert!(matches!(
            authenticate(&server, &token).await,
            Err(TokenError::Stale(_))
        ));
        // A pod-bound token dies with its pod.
        put(
            &server,
            "serviceaccounts",
            Some("default"),
            "robot",
            "uid-1",
        )
        .await;
        put(&server, "pods", Some("default"), "web-0", "pod-1").await;
        let mut bound = spec();
        bound.bound = Some(BoundObject {
            kind: BoundKind::Pod,
            name: "web-0".into(),
            uid: "pod-1".into(),
        });
        let token = signer.issue(&bound, now).unwrap();
        assert!(authenticate(&server, &token).await.is_ok());
        put(&server, "pods", Some("default"), "web-0", "pod-2").await;
        assert!(
            authenticate(&server, &token).await.is_err(),
            "a new pod of the same name"
        );
        remove(&server, "pods", Some("default"), "web-0").await;
        assert!(authenticate(&server, &token).await.is_err());
        // Audiences other than the API server's, for TokenReviews.
        let mut vault = spec();
        vault.audiences = vec!["vault".into()];
        let token = signer.issue(&vault, now).unwrap();
        assert!(authenticate(&server, &token).await.is_err());
        let (_, meant_for) = authenticate_for(&server, &token, &["vault".into(), "other".into()])
            .await
            .unwrap();
        assert_eq!(meant_for, ["vault"]);
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(looks_like_jwt("a.b."));
        assert!(!looks_like_jwt("abc"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt(".b.c"));
    }
}
