//! CertificateSigningRequest (`certificates.k8s.io/v1`): what its strategy does beyond the
//! generic machinery — record the requester at create, validate the request, keep the
//! spec immutable, and split status between `status` (certificate) and `approval`
//! (Approved/Denied conditions).

use base64::Engine as _;
use serde_json::{json, Value};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::auth::UserInfo;
use crate::error::Cause;

/// Key usages upstream accepts in `spec.usages`.
pub(crate) const KNOWN_USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// Conditions only the `approval` subresource may set.
const APPROVAL_CONDITIONS: [&str; 2] = ["Approved", "Denied"];

/// At create, as upstream: the requester is who sent the request, whatever the body
/// claims, and a new request has no status.
pub(crate) fn record_requester(csr: &mut Value, user: &UserInfo) {
    if !csr["spec"].is_object() {
        csr["spec"] = json!({});
    }
    csr["spec"]["username"] = json!(user.name);
    csr["spec"]["groups"] = json!(user.groups);
    if let Some(spec) = csr["spec"].as_object_mut() {
        // Korvet's authenticators carry no uid or extra attributes.
        spec.remove("uid");
        spec.remove("extra");
    }
    if let Some(map) = csr.as_object_mut() {
        map.remove("status");
    }
}

/// Decodes `spec.request` (base64 of a PEM `CERTIFICATE REQUEST`) and checks its
/// signature; the DER on success.
pub(crate) fn parse_request(encoded: &str) -> Result<Vec<u8>, String> {
    let pem_bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("not base64: {e}"))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem_bytes)
        .map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_string())?;
    if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    }
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| format!("not a certificate request: {e}"))?;
    csr.verify_signature()
        .map_err(|_| "the request's signature does not verify".to_string())?;
    Ok(pem.contents)
}

fn conditions(csr: &Value) -> impl Iterator<Item = &Value> {
    csr["status"]["conditions"].as_array().into_iter().flatten()
}

fn has_condition(csr: &Value, kind: &str) -> bool {
    conditions(csr).any(|c| c["type"] == kind && c["status"] != "False")
}

pub(crate) fn validate(csr: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = &csr["spec"];
    match old {
        Some(old) if old["spec"] != *spec => {
            causes.push(Cause::new(
                "FieldValueForbidden",
                "spec",
                "Forbidden: field is immutable",
            ));
        }
        Some(_) => {}
        None => causes.extend(validate_spec(spec)),
    }
    causes.extend(validate_status(csr, old));
    causes
}

fn validate_spec(spec: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    match spec["request"].as_str() {
        None | Some("") => causes.push(Cause::required("spec.request")),
        Some(request) => {
            if let Err(e) = parse_request(request) {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    "spec.request",
                    format!("Invalid value: []byte{{...}}: {e}"),
                ));
            }
        }
    }
    match spec["signerName"].as_str() {
        None | Some("") => causes.push(Cause::required("spec.signerName")),
        Some(signer) => {
            let qualified = signer.split_once('/').is_some_and(|(domain, path)| {
                !path.is_empty() && korvet_apimachinery::names::is_dns_subdomain(domain)
            });
            if !qualified {
                causes.push(Cause::invalid(
                    "spec.signerName",
                    &json!(signer),
                    "must be a fully qualified domain and path of the form 'example.com/signer-name'",
                ));
            }
        }
    }
    match spec["usages"].as_array() {
        None => causes.push(Cause::required("spec.usages")),
        Some(usages) if usages.is_empty() => causes.push(Cause::required("spec.usages")),
        Some(usages) => {
            let mut seen = Vec::new();
            for (i, usage) in usages.iter().enumerate() {
                let field = format!("spec.usages[{i}]");
                let name = usage.as_str().unwrap_or_default();
                if !KNOWN_USAGES.contains(&name) {
                    causes.push(Cause::new(
                        "FieldValueNotSupported",
                        field,
                        format!("Unsupported value: {usage}"),
                    ));
                } else if seen.contains(&name) {
                    causes.push(Cause::new(
                        "FieldValueDuplicate",
                        field,
                        format!("Duplicate value: {usage}"),
                    ));
                }
                seen.push(name);
            }
        }
    }
    if let Some(seconds) = spec.get("expirationSeconds").filter(|v| !v.is_null()) {
        if seconds.as_i64().is_none_or(|s| s < 600) {
            causes.push(Cause::invalid(
                "spec.expirationSeconds",
                seconds,
                "may not specify a duration less than 600 seconds (10 minutes)",
            ));
        }
    }
    causes
}

fn validate_status(csr: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (i, condition) in conditions(csr).enumerate() {
        let kind = condition["type"].as_str().unwrap_or_default();
        let field = format!("status.conditions[{i}].type");
        if kind.is_empty() {
            causes.push(Cause::required(field));
            continue;
        }
        if ["Approved", "Denied", "Failed"].contains(&kind) && seen.contains(&kind) {
            causes.push(Cause::new(
                "FieldValueDuplicate",
                field,
                format!("Duplicate value: {kind:?}"),
            ));
        }
        seen.push(kind);
    }
    if has_condition(csr, "Approved") && has_condition(csr, "Denied") {
        causes.push(Cause::invalid(
            "status.conditions",
            &json!("Approved"),
            "Approved and Denied conditions are mutually exclusive",
        ));
    }
    let certificate = csr["status"]["certificate"].as_str().unwrap_or_default();
    if !certificate.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(certificate)
            .ok()
            .filter(|pem| x509_parser::pem::parse_x509_pem(pem).is_ok());
        if decoded.is_none() {
            causes.push(Cause::new(
                "FieldValueInvalid",
                "status.certificate",
                "Invalid value: \"<certificate data>\": must contain a PEM-encoded certificate",
            ));
        }
        if has_condition(csr, "Denied") || has_condition(csr, "Failed") {
            causes.push(Cause::new(
                "FieldValueForbidden",
                "status.certificate",
                "Forbidden: certificate cannot be set on a Denied or Failed request",
            ));
        }
    }
    if let Some(old) = old {
        let before = old["status"]["certificate"].as_str().unwrap_or_default();
        if !before.is_empty() && before != certificate {
            causes.push(Cause::new(
                "FieldValueForbidden",
                "status.certificate",
                "Forbidden: updates may not modify existing certificate content",
            ));
        }
    }
    causes
}

/// A `status` write keeps the approval conditions as they were (only `approval` sets
/// them), as upstream.
pub(crate) fn status_update(old: &Value, next: &mut Value) {
    let keep: Vec<Value> = conditions(old)
        .filter(|c| APPROVAL_CONDITIONS.iter().any(|k| c["type"] == *k))
        .cloned()
        .collect();
    let mut merged: Vec<Value> = conditions(next)
        .filter(|c| !APPROVAL_CONDITIONS.iter().any(|k| c["type"] == *k))
        .cloned()
        .collect();
    merged.splice(0..0, keep);
    if !next["status"].is_object() {
        next["status"] = json!({});
    }
    if merged.is_empty() {
        if let Some(status) = next["status"].as_object_mut() {
            status.remove("conditions");
        }
    } else {
        next["status"]["conditions"] = Value::Array(merged);
    }
}

/// An `approval` write changes only `status.conditions`.
pub(crate) fn approval_update(old: &Value, next: &Value) -> Value {
    let mut merged = old.clone();
    if !merged["status"].is_object() {
        merged["status"] = json!({});
    }
    match next["status"].get("conditions") {
        Some(conditions) => merged["status"]["conditions"] = conditions.clone(),
        None => {
            if let Some(status) = merged["status"].as_object_mut() {
                status.remove("conditions");
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_b64() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "system:node:n1");
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        base64::engine::general_purpose::STANDARD.encode(pem)
    }

    fn csr() -> Value {
        json!({
            "metadata": {"name": "c"},
            "spec": {
                "request": request_b64(),
                "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                "usages": ["client auth", "digital signature"],
            },
        })
    }

    #[test]
    fn valid_requests_pass_and_bad_ones_name_the_field() {
        assert_eq!(validate(&csr(), None), vec![]);
        let fields = |object: Value| -> Vec<String> {
            validate(&object, None)
                .into_iter()
                .map(|c| c.field)
                .collect()
        };
        let mut bad = csr();
        bad["spec"]["request"] = json!(base64::engine::general_purpose::STANDARD.encode("junk"));
        assert_eq!(fields(bad), ["spec.request"]);
        let mut bad = csr();
        bad["spec"]["signerName"] = json!("");
        assert_eq!(fields(bad), ["spec.signerName"]);
        let mut bad = csr();
        bad["spec"]["signerName"] = json!("no-slash");
        assert_eq!(fields(bad), ["spec.signerName"]);
        let mut bad = csr();
        bad["spec"]["usages"] = json!(["client auth", "flying", "client auth"]);
        assert_eq!(fields(bad), ["spec.usages[1]", "spec.usages[2]"]);
        let mut bad = csr();
        bad["spec"]["expirationSeconds"] = json!(60);
        assert_eq!(fields(bad), ["spec.expirationSeconds"]);
    }

    #[test]
    fn spec_is_immutable_and_approval_exclusive() {
        let old = csr();
        let mut changed = old.clone();
        changed["spec"]["usages"] = json!(["server auth"]);
        assert_eq!(validate(&changed, Some(&old))[0].field, "spec");
        let mut both = old.clone();
        both["status"]["conditions"] =
            json!([{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]);
        assert!(!validate(&both, Some(&old)).is_empty());
    }

    #[test]
    fn requester_is_the_caller() {
        let mut object = csr();
        object["spec"]["username"] = json!("someone-else");
        object["status"] = json!({"certificate": "x"});
        let user = UserInfo::authenticated(
            "system:bootstrap:abcdef",
            vec!["system:bootstrappers".into()],
        );
        record_requester(&mut object, &user);
        assert_eq!(object["spec"]["username"], "system:bootstrap:abcdef");
        assert_eq!(
            object["spec"]["groups"],
            json!(["system:bootstrappers", "system:authenticated"])
        );
        assert!(object.get("status").is_none());
    }

    #[test]
    fn status_and_approval_own_their_parts() {
        let mut old = csr();
        old["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}]});
        let mut next = old.clone();
        next["status"] =
            json!({"certificate": "abc", "conditions": [{"type": "Failed", "status": "True"}]});
        status_update(&old, &mut next);
        let types: Vec<&str> = conditions(&next)
            .filter_map(|c| c["type"].as_str())
            .collect();
        assert_eq!(types, ["Approved", "Failed"]);
        let approved = approval_update(
            &old,
            &json!({"status": {"certificate": "sneaky", "conditions": [{"type": "Denied", "status": "True"}]}}),
        );
        assert!(approved["status"].get("certificate").is_none());
        assert_eq!(approved["status"]["conditions"][0]["type"], "Denied");
    }
}
