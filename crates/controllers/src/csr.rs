//! CertificateSigningRequest approver and signer, as upstream's `csrapproving` and
//! `csrsigning` controllers for the kube-apiserver client signers.
//!
//! Approval: a request for `kubernetes.io/kube-apiserver-client-kubelet` is approved when
//! it asks for exactly a node client certificate (`CN=system:node:NAME, O=system:nodes`,
//! no SANs, client-auth usages) and comes from a bootstrap token (`system:bootstrappers`)
//! or from that same node renewing. Anything else stays pending for a human.
//!
//! Signing: approved requests of the two client signers are signed with the cluster CA,
//! for `spec.expirationSeconds` (default one year), never beyond the CA.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use korvet_apimachinery::events::EventRecorder;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use rcgen::{
    CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use serde_json::json;
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

pub(crate) const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub(crate) const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
pub(crate) const NODES_GROUP: &str = "system:nodes";
pub(crate) const NODE_USER_PREFIX: &str = "system:node:";
pub(crate) const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";
const DEFAULT_VALIDITY_SECONDS: i64 = 365 * 24 * 3600;
/// Upstream's floor for `spec.expirationSeconds`.
const MIN_VALIDITY_SECONDS: i64 = 600;
/// Backdating tolerates clients whose clocks run a little behind ours (as upstream).
const BACKDATE_SECONDS: i64 = 5 * 60;
/// Usages a client certificate may carry; `client auth` is required.
const CLIENT_USAGES: [&str; 3] = ["client auth", "digital signature", "key encipherment"];

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("the CA certificate or key is unusable: {0}")]
    Ca(String),
    #[error("{0}")]
    Request(String),
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

/// What the approver needs from a request's PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestSubject {
    pub common_name: String,
    pub organizations: Vec<String>,
    /// Whether the request asks for any subject alternative name.
    pub has_sans: bool,
}

/// Parses a PEM CSR (as in `spec.request`) and verifies its signature.
pub(crate) fn parse_subject(request_pem: &[u8]) -> Result<RequestSubject, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(request_pem)
        .map_err(|_| "spec.request is not PEM".to_string())?;
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| format!("spec.request is not a certificate request: {e}"))?;
    csr.verify_signature()
        .map_err(|_| "the request's signature does not verify".to_string())?;
    let subject = &csr.certification_request_info.subject;
    let text = |attr: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        attr.as_str().map(str::to_string).unwrap_or_default()
    };
    let has_sans = csr.requested_extensions().is_some_and(|mut exts| {
        exts.any(|e| {
            matches!(
                e,
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(_)
            )
        })
    });
    let common_name = subject
        .iter_common_name()
        .next()
        .map(text)
        .unwrap_or_default();
    let organizations = subject.iter_organization().map(text).collect();
    Ok(RequestSubject {
        common_name,
        organizations,
        has_sans,
    })
}

fn condition_set(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status != "False"))
}

fn has_certificate(csr: &CertificateSigningRequest) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty())
}

fn client_usages_ok(usages: &[String]) -> Result<(), String> {
    if !usages.iter().any(|u| u == "client auth") {
        return Err("usages must include \"client auth\"".into());
    }
    match usages.iter().find(|u| !CLIENT_USAGES.contains(&u.as_str())) {
        Some(extra) => Err(format!(
            "usage {extra:?} is not allowed for a client certificate"
        )),
        None => Ok(()),
    }
}

/// Whether a request may be approved automatically: `Ok` if so, else why not.
pub(crate) fn kubelet_client_approval(csr: &CertificateSigningRequest) -> Result<(), String> {
    let spec = &csr.spec;
    if spec.signer_name != KUBELET_CLIENT_SIGNER {
        return Err(format!("signer {} is not auto-approved", spec.signer_name));
    }
    client_usages_ok(spec.usages.as_deref().unwrap_or_default())?;
    let subject = parse_subject(&spec.request.0)?;
    let Some(node) = subject.common_name.strip_prefix(NODE_USER_PREFIX) else {
        return Err(format!(
            "subject CN {:?} is not system:node:<name>",
            subject.common_name
        ));
    };
    if node.is_empty() || subject.organizations != [NODES_GROUP] {
        return Err(format!(
            "subject must be CN=system:node:<name>, O=system:nodes (got CN={:?}, O={:?})",
            subject.common_name, subject.organizations
        ));
    }
    if subject.has_sans {
        return Err("a node client certificate may not have subject alternative names".into());
    }
    let groups = spec.groups.as_deref().unwrap_or_default();
    let in_group = |g: &str| groups.iter().any(|x| x == g);
    let requester = spec.username.as_deref().unwrap_or_default();
    if in_group(BOOTSTRAPPERS_GROUP) {
        return Ok(());
    }
    if in_group(NODES_GROUP) && requester == subject.common_name {
        return Ok(());
    }
    Err(format!(
        "requester {requester:?} is neither a bootstrapper nor the node {node} renewing"
    ))
}

/// Signs requests with the cluster CA.
pub struct CsrSigner {
    issuer: Issuer<'static, KeyPair>,
    ca_not_after: OffsetDateTime,
}

impl CsrSigner {
    pub fn new(ca_cert_pem: &str, ca_key_pem: &str) -> Result<Self, CsrError> {
        let key = KeyPair::from_pem(ca_key_pem).map_err(|e| CsrError::Ca(e.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_pem(ca_cert_pem, key).map_err(|e| CsrError::Ca(e.to_string()))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca_cert_pem.as_bytes())
            .map_err(|e| CsrError::Ca(e.to_string()))?;
        let cert = pem.parse_x509().map_err(|e| CsrError::Ca(e.to_string()))?;
        let ca_not_after =
            OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
                .map_err(|e| CsrError::Ca(e.to_string()))?;
        Ok(Self {
            issuer,
            ca_not_after,
        })
    }

    /// A PEM certificate for the request, valid from a little before `now` for
    /// `expiration_seconds` (default one year, at least ten minutes), never beyond the CA.
    pub fn sign(
        &self,
        request_pem: &[u8],
        usages: &[String],
        expiration_seconds: Option<i64>,
        now: OffsetDateTime,
    ) -> Result<String, CsrError> {
        client_usages_ok(usages).map_err(CsrError::Request)?;
        let text = std::str::from_utf8(request_pem)
            .map_err(|_| CsrError::Request("spec.request is not PEM text".into()))?;
        let mut request = CertificateSigningRequestParams::from_pem(text)
            .map_err(|e| CsrError::Request(format!("spec.request: {e}")))?;
        let seconds = expiration_seconds
            .unwrap_or(DEFAULT_VALIDITY_SECONDS)
            .max(MIN_VALIDITY_SECONDS);
        let params = &mut request.params;
        params.not_before = now - time::Duration::seconds(BACKDATE_SECONDS);
        params.not_after = (now + time::Duration::seconds(seconds)).min(self.ca_not_after);
        params.serial_number = Some(SerialNumber::from_slice(
            &korvet_apimachinery::names::certificate_serial(),
        ));
        params.is_ca = IsCa::ExplicitNoCa;
        // The certificate says what the approved usages say, not what the CSR asked for.
        params.subject_alt_names.clear();
        params.key_usages = Vec::new();
        params.extended_key_usages = Vec::new();
        for usage in usages {
            match usage.as_str() {
                "digital signature" => params.key_usages.push(KeyUsagePurpose::DigitalSignature),
                "key encipherment" => params.key_usages.push(KeyUsagePurpose::KeyEncipherment),
                "client auth" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ClientAuth),
                _ => {}
            }
        }
        params.use_authority_key_identifier_extension = true;
        let cert = request
            .signed_by(&self.issuer)
            .map_err(|e| CsrError::Request(format!("signing: {e}")))?;
        Ok(cert.pem())
    }
}

struct Context {
    api: Api<CertificateSigningRequest>,
    signer: CsrSigner,
    recorder: EventRecorder,
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

async fn event(ctx: &Context, csr: &CertificateSigningRequest, reason: &str, note: String) {
    if reason == "SigningFailed" {
        ctx.recorder.warning(csr, reason, note).await;
    } else {
        ctx.recorder.normal(csr, reason, note).await;
    }
}

fn existing_conditions(csr: &CertificateSigningRequest) -> Vec<serde_json::Value> {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|c| {
            c.iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect()
        })
        .unwrap_or_default()
}

async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    ctx: Arc<Context>,
) -> Result<Action, CsrError> {
    let name = csr.metadata.name.clone().unwrap_or_default();
    if has_certificate(&csr) || condition_set(&csr, "Denied") || condition_set(&csr, "Failed") {
        return Ok(Action::await_change());
    }
    let signer = csr.spec.signer_name.as_str();
    if signer != KUBELET_CLIENT_SIGNER && signer != CLIENT_SIGNER {
        return Ok(Action::await_change());
    }
    if !condition_set(&csr, "Approved") {
        match kubelet_client_approval(&csr) {
            Ok(()) => {
                let mut conditions = existing_conditions(&csr);
                conditions.push(json!({
                    "type": "Approved",
                    "status": "True",
                    "reason": "AutoApproved",
                    "message": "Auto approving kubelet client certificate after SubjectAccessReview.",
                    "lastUpdateTime": now_rfc3339(),
                    "lastTransitionTime": now_rfc3339(),
                }));
                ctx.api
                    .patch_subresource(
                        "approval",
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"conditions": conditions}})),
                    )
                    .await?;
                tracing::info!(csr = %name, requester = ?csr.spec.username, "approved");
                event(
                    &ctx,
                    &csr,
                    "CSRApproved",
                    format!(
                        "auto-approved node client certificate requested by {}",
                        csr.spec.username.as_deref().unwrap_or("<unknown>")
                    ),
                )
                .await;
            }
            Err(reason) => {
                tracing::debug!(csr = %name, %reason, "not auto-approving");
            }
        }
        // Signing follows from the watch event of the approval.
        return Ok(Action::await_change());
    }
    let expiration = csr.spec.expiration_seconds.map(i64::from);
    let usages = csr.spec.usages.clone().unwrap_or_default();
    match ctx.signer.sign(
        &csr.spec.request.0,
        &usages,
        expiration,
        OffsetDateTime::now_utc(),
    ) {
        Ok(pem) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(pem);
            ctx.api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"certificate": encoded}})),
                )
                .await?;
            tracing::info!(csr = %name, "signed");
            event(
                &ctx,
                &csr,
                "CSRSigned",
                format!("issued a certificate from signer {signer}"),
            )
            .await;
        }
        Err(CsrError::Request(reason)) => {
            let mut conditions = existing_conditions(&csr);
            conditions.push(json!({
                "type": "Failed",
                "status": "True",
                "reason": "SignerValidationFailure",
                "message": reason,
                "lastUpdateTime": now_rfc3339(),
                "lastTransitionTime": now_rfc3339(),
            }));
            ctx.api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"conditions": conditions}})),
                )
                .await?;
            tracing::warn!(csr = %name, %reason, "signing failed");
            event(&ctx, &csr, "SigningFailed", reason).await;
        }
        Err(e) => return Err(e),
    }
    Ok(Action::await_change())
}

fn error_policy(
    csr: Arc<CertificateSigningRequest>,
    error: &CsrError,
    _ctx: Arc<Context>,
) -> Action {
    tracing::warn!(csr = ?csr.metadata.name, %error, "reconciling a CSR failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Approves and signs CertificateSigningRequests until the watch stream ends (it only
/// ends when the task is dropped; API outages are retried).
pub async fn run_csr_controller(
    client: kube::Client,
    ca_cert_pem: &str,
    ca_key_pem: &str,
) -> Result<(), CsrError> {
    let signer = CsrSigner::new(ca_cert_pem, ca_key_pem)?;
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let recorder = EventRecorder::new(client, "korvet-csr-controller");
    let ctx = Arc::new(Context {
        api: api.clone(),
        signer,
        recorder,
    });
    tracing::info!("CSR approver and signer running");
    Controller::new(api, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "CSR controller");
            }
        })
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequestSpec;
    use k8s_openapi::ByteString;
    use rcgen::{CertificateParams, DnType};

    fn request(cn: &str, orgs: &[&str], san: Option<&str>) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(san.map(|s| vec![s.to_string()]).unwrap_or_default()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for org in orgs {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *org);
        }
        params
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
            .into_bytes()
    }

    fn csr(
        request: Vec<u8>,
        user: &str,
        groups: &[&str],
        usages: &[&str],
    ) -> CertificateSigningRequest {
        CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                request: ByteString(request),
                signer_name: KUBELET_CLIENT_SIGNER.into(),
                usages: Some(usages.iter().map(|u| u.to_string()).collect()),
                username: Some(user.into()),
                groups: Some(groups.iter().map(|g| g.to_string()).collect()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    const USAGES: &[&str] = &["client auth", "digital signature"];

    #[test]
    fn approves_node_client_requests_from_bootstrappers_and_the_node_itself() {
        let req = request("system:node:n1", &["system:nodes"], None);
        let boot = csr(
            req.clone(),
            "system:bootstrap:abcdef",
            &["system:bootstrappers", "system:authenticated"],
            USAGES,
        );
        assert_eq!(kubelet_client_approval(&boot), Ok(()));
        let renew = csr(req.clone(), "system:node:n1", &["system:nodes"], USAGES);
        assert_eq!(kubelet_client_approval(&renew), Ok(()));
        let other_node = csr(req.clone(), "system:node:n2", &["system:nodes"], USAGES);
        assert!(kubelet_client_approval(&other_node).is_err());
        let stranger = csr(req, "alice", &["system:authenticated"], USAGES);
        assert!(kubelet_client_approval(&stranger).is_err());
    }

    #[test]
    fn refuses_other_subjects_usages_sans_and_signers() {
        let boot = |req: Vec<u8>, usages: &[&str]| {
            csr(
                req,
                "system:bootstrap:abcdef",
                &["system:bootstrappers"],
                usages,
            )
        };
        let good = request("system:node:n1", &["system:nodes"], None);
        for bad in [
            boot(request("admin", &["system:masters"], None), USAGES),
            boot(request("system:node:n1", &["system:masters"], None), USAGES),
            boot(
                request("system:node:n1", &["system:nodes", "system:masters"], None),
                USAGES,
            ),
            boot(
                request("system:node:n1", &["system:nodes"], Some("evil.example")),
                USAGES,
            ),
            boot(good.clone(), &["server auth", "digital signature"]),
            boot(good.clone(), &["client auth", "cert sign"]),
        ] {
            assert!(
                kubelet_client_approval(&bad).is_err(),
                "{:?}",
                bad.spec.usages
            );
        }
        let mut other_signer = boot(good, USAGES);
        other_signer.spec.signer_name = CLIENT_SIGNER.into();
        assert!(kubelet_client_approval(&other_signer).is_err());
    }

    fn ca() -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "test-ca");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.not_after = OffsetDateTime::now_utc() + time::Duration::days(30);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn signs_with_the_requested_duration_never_beyond_the_ca() {
        let (ca_pem, ca_key) = ca();
        let signer = CsrSigner::new(&ca_pem, &ca_key).unwrap();
        let req = request("system:node:n1", &["system:nodes"], None);
        let usages: Vec<String> = USAGES.iter().map(|u| u.to_string()).collect();
        let now = OffsetDateTime::now_utc();
        let parse = |pem: &str| {
            let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
            let cert = p.parse_x509().unwrap();
            let cn = cert
                .subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap()
                .to_string();
            let o = cert
                .subject()
                .iter_organization()
                .next()
                .unwrap()
                .as_str()
                .unwrap()
                .to_string();
            (
                cn,
                o,
                cert.validity().not_after.timestamp() - now.unix_timestamp(),
            )
        };
        let (cn, o, left) = parse(&signer.sign(&req, &usages, Some(3600), now).unwrap());
        assert_eq!(
            (cn.as_str(), o.as_str()),
            ("system:node:n1", "system:nodes")
        );
        assert!((3590..=3610).contains(&left), "{left}");
        // Default one year, cut at the CA's 30 days.
        let (_, _, left) = parse(&signer.sign(&req, &usages, None, now).unwrap());
        assert!(left <= 30 * 86400 && left > 29 * 86400, "{left}");
        assert!(matches!(
            signer.sign(b"junk", &usages, None, now),
            Err(CsrError::Request(_))
        ));
    }
}
