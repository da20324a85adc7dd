//! The protobuf body decoder against an independent implementation of the wire format:
//! bytes that prost accepts as a Kubernetes object are re-encoded by prost (its canonical
//! form: fields in order, no unknown fields, merged repeats) and both forms are decoded
//! by the API server. Being the same object, they must decode to the same JSON, and the
//! canonical form must never be called malformed. It lives here rather than beside the
//! decoder because prost and the k8s-pb messages are only test dependencies there.

use k8s_pb::api::{apps, batch, coordination, core, networking, policy, rbac};
use k8s_pb::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use korvet_apiserver::protobuf::{decode, ProtobufError, MAGIC};
use prost::Message;
use serde_json::Value;

type Reencode = fn(&[u8]) -> Option<Vec<u8>>;

fn reencode<M: Message + Default>(raw: &[u8]) -> Option<Vec<u8>> {
    M::decode(raw).ok().map(|m| m.encode_to_vec())
}

/// The kinds an input may be, chosen by its first byte: the common ones, and those with
/// the decoder's special messages (times, quantities, IntOrString, raw JSON, schemas).
pub(crate) const KINDS: &[(&str, &str, Reencode)] = &[
    ("v1", "ConfigMap", reencode::<core::v1::ConfigMap>),
    ("v1", "Secret", reencode::<core::v1::Secret>),
    ("v1", "Pod", reencode::<core::v1::Pod>),
    ("v1", "Service", reencode::<core::v1::Service>),
    ("v1", "Namespace", reencode::<core::v1::Namespace>),
    ("v1", "Node", reencode::<core::v1::Node>),
    ("v1", "Event", reencode::<core::v1::Event>),
    ("v1", "ResourceQuota", reencode::<core::v1::ResourceQuota>),
    ("apps/v1", "Deployment", reencode::<apps::v1::Deployment>),
    ("apps/v1", "StatefulSet", reencode::<apps::v1::StatefulSet>),
    ("batch/v1", "Job", reencode::<batch::v1::Job>),
    ("batch/v1", "CronJob", reencode::<batch::v1::CronJob>),
    (
        "networking.k8s.io/v1",
        "Ingress",
        reencode::<networking::v1::Ingress>,
    ),
    (
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        reencode::<rbac::v1::ClusterRole>,
    ),
    (
        "policy/v1",
        "PodDisruptionBudget",
        reencode::<policy::v1::PodDisruptionBudget>,
    ),
    (
        "coordination.k8s.io/v1",
        "Lease",
        reencode::<coordination::v1::Lease>,
    ),
    (
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        reencode::<apiextensions::CustomResourceDefinition>,
    ),
    ("v1", "DeleteOptions", reencode::<meta::DeleteOptions>),
];

/// `k8s\0` + runtime.Unknown{typeMeta, raw}, as client-go writes a body.
fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.to_string()),
            kind: Some(kind.to_string()),
        }),
        raw: Some(raw.to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut body = MAGIC.to_vec();
    body.extend(unknown.encode_to_vec());
    body
}

/// The first byte chooses the kind; the rest is the object's own encoding.
pub fn fuzz_protobuf_roundtrip(data: &[u8]) {
    let Some((&which, raw)) = data.split_first() else {
        return;
    };
    let (api_version, kind, reencode) = KINDS[usize::from(which) % KINDS.len()];
    let Some(canonical) = reencode(raw) else {
        return;
    };
    let as_sent = decode(&envelope(api_version, kind, raw), "", "", "");
    let as_canonical = decode(&envelope(api_version, kind, &canonical), "", "", "");
    if let Err(e @ ProtobufError::Malformed { .. }) = &as_canonical {
        panic!("prost's own encoding of a {kind} is called malformed: {e}");
    }
    match (&as_sent, &as_canonical) {
        (Ok(sent), Ok(canonical)) => assert!(
            equivalent(sent, canonical),
            "a {kind} decodes differently from its canonical encoding:\n{sent}\n{canonical}"
        ),
        (Err(_), Err(_)) => {}
        _ => {
            panic!("a {kind} and its canonical encoding decode to {as_sent:?} and {as_canonical:?}")
        }
    }
}

/// Equal, except where a time sent as a message with unknown fields only is the Unix
/// epoch and its canonical form (prost drops unknown fields) is empty, Go's zero time:
/// metav1.Time's Go decoder tells the two apart by the payload's length, and so does
/// the API server's.
fn equivalent(sent: &Value, canonical: &Value) -> bool {
    match (sent, canonical) {
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| b.get(k).is_some_and(|w| equivalent(v, w)))
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(v, w)| equivalent(v, w))
        }
        (Value::String(epoch), Value::Null) => {
            epoch == "1970-01-01T00:00:00Z" || epoch == "1970-01-01T00:00:00.000000Z"
        }
        _ => sent == canonical,
    }
}
