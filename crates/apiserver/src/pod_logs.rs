//! `GET pods/NAME/log`: checks the container as upstream does, then streams the log from
//! the kubelet of the pod's node (`https://INTERNAL-IP:PORT/containerLogs/NS/POD/C`),
//! presenting the API server's kubelet-client certificate.
//!
//! As upstream without `--kubelet-certificate-authority`, the kubelet's serving
//! certificate is not verified (nodes make their own, self-signed).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;

use crate::body::{Reply, ReplyBody};
use crate::error::{ApiError, ApiResult};
use crate::handlers::{load, Call};
use crate::pki::{ClusterPki, PkiError};

/// The user (CN) of the API server's client certificate towards kubelets.
pub(crate) const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";
const KUBELET_PORT: u16 = 10250;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Query parameters passed on to the kubelet.
const FORWARDED: [&str; 6] = [
    "follow",
    "previous",
    "timestamps",
    "tailLines",
    "sinceSeconds",
    "limitBytes",
];

/// TLS towards kubelets: a fresh kubelet-client certificate (`system:masters`) from the
/// cluster CA; the kubelet's own certificate is accepted as it is.
pub(crate) fn kubelet_client_config(pki: &ClusterPki) -> Result<rustls::ClientConfig, PkiError> {
    let (cert_pem, key_pem) = pki.issue_client_cert(
        KUBELET_CLIENT_USER,
        &["system:masters".to_string()],
        Duration::from_secs(365 * 24 * 3600),
    )?;
    let chain = rustls::pki_types::pem::PemObject::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<CertificateDer<'static>>, _>>()
        .map_err(|e| PkiError::InvalidRequest(format!("kubelet client certificate: {e}")))?;
    let key =
        <rustls::pki_types::PrivateKeyDer as rustls::pki_types::pem::PemObject>::from_pem_slice(
            key_pem.as_bytes(),
        )
        .map_err(|e| PkiError::InvalidRequest(format!("kubelet client key: {e}")))?;
    let provider = crate::pki::ring_provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyKubelet(provider)))
        .with_client_auth_cert(chain, key)?;
    Ok(config)
}

/// Accepts any kubelet serving certificate, but still checks the handshake signatures.
#[derive(Debug)]
struct AnyKubelet(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyKubelet {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// The container whose log is asked for, as upstream's `pod.LogLocation` picks it.
pub(crate) fn choose_container(pod: &Value, asked: Option<&str>) -> ApiResult<String> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let containers = names(&pod["spec"]["containers"]);
    let init = names(&pod["spec"]["initContainers"]);
    let ephemeral = names(&pod["spec"]["ephemeralContainers"]);
    match asked.filter(|c| !c.is_empty()) {
        Some(c) => {
            if containers.iter().chain(&init).chain(&ephemeral).any(|n| n == c) {
                Ok(c.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None if init.is_empty() => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            containers.join(" ")
        ))),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}] or one of the init containers: [{}]",
            containers.join(" "),
            init.join(" ")
        ))),
    }
}

/// Whether the container has a log to show, as upstream's kubelet checks it
/// (`validateContainerLogStatus`), with its messages.
pub(crate) fn check_status(pod: &Value, container: &str, previous: bool) -> ApiResult<()> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let status = [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ]
    .iter()
    .filter_map(|k| pod["status"][k].as_array())
    .flatten()
    .find(|s| s["name"] == container);
    let Some(status) = status else {
        return Err(ApiError::bad_request(format!(
            "container {container:?} in pod {name:?} is waiting to start: ContainerCreating"
        )));
    };
    let last_terminated = status["lastState"]["terminated"].is_object();
    let state = &status["state"];
    if previous {
        return if last_terminated {
            Ok(())
        } else {
            Err(ApiError::bad_request(format!(
                "previous terminated container {container:?} in pod {name:?} not found"
            )))
        };
    }
    if state["running"].is_object() || state["terminated"].is_object() || last_terminated {
        return Ok(());
    }
    let message = match state["waiting"]["reason"].as_str() {
        Some("ErrImagePull") => "is waiting to start: image can't be pulled".to_string(),
        Some("ImagePullBackOff") => {
            "is waiting to start: trying and failing to pull image".to_string()
        }
        Some(reason) => format!("is waiting to start: {reason}"),
        None => "is waiting to start - no logs yet".to_string(),
    };
    Err(ApiError::bad_request(format!(
        "container {container:?} in pod {name:?} {message}"
    )))
}

/// `https://IP:PORT` of the kubelet of node `node` (InternalIP first).
pub(crate) async fn kubelet_address(call: &Call<'_>, node: &str) -> ApiResult<(String, u16)> {
    let nodes = call
        .server
        .registry
        .get("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("no nodes resource"))?;
    let (object, _) = call
        .server
        .objects
        .get(&nodes.key(None, node))
        .await?
        .ok_or_else(|| ApiError::new(404, "NotFound", format!("nodes \"{node}\" not found")))?;
    kubelet_endpoint(&object)
}

/// `(INTERNAL-IP, PORT)` of a Node object's kubelet (InternalIP first).
pub(crate) fn kubelet_endpoint(object: &Value) -> ApiResult<(String, u16)> {
    let node = object["metadata"]["name"].as_str().unwrap_or_default();
    let addresses = object["status"]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let address = addresses
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .or_else(|| addresses.first())
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| {
            ApiError::bad_request(format!("node {node:?} has no address to reach its kubelet"))
        })?;
    let port = object["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(KUBELET_PORT);
    Ok((address.to_string(), port))
}

/// The kubelet query: the forwarded parameters of the request, in its order.
fn kubelet_query(raw: Option<&str>) -> String {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .filter(|(k, _)| FORWARDED.contains(&k.as_ref()))
        .fold(
            form_urlencoded::Serializer::new(String::new()),
            |mut s, (k, v)| {
                s.append_pair(&k, &v);
                s
            },
        )
        .finish()
}

pub(crate) async fn get(call: &Call<'_>) -> ApiResult<Reply> {
    let (pod, _) = load(call).await?;
    let query: Vec<(String, String)> =
        form_urlencoded::parse(call.query.raw.as_deref().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let param = |key: &str| {
        query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let container = choose_container(&pod, param("container"))?;
    let previous = param("previous").is_some_and(|v| v == "true" || v == "1");
    check_status(&pod, &container, previous)?;
    let node = pod["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "container {container:?} in pod {:?} is waiting to start: ContainerCreating",
                pod["metadata"]["name"].as_str().unwrap_or_default()
            ))
        })?;
    let (address, port) = kubelet_address(call, node).await?;
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let mut path = format!("/containerLogs/{namespace}/{name}/{container}");
    let forwarded = kubelet_query(call.query.raw.as_deref());
    if !forwarded.is_empty() {
        path = format!("{path}?{forwarded}");
    }
    let tls = call.server.kubelet_client.get().cloned().ok_or_else(|| {
        ApiError::unavailable("this API server has no kubelet client certificate")
    })?;
    let body = fetch(tls, &address, port, &path).await?;
    Ok(Reply {
        status: http::StatusCode::OK,
        headers: Vec::new(),
        body: ReplyBody::RawStream("text/plain", body),
    })
}

/// A TLS connection to the kubelet at `address:port` (`path` is for error messages).
pub(crate) async fn connect(
    tls: Arc<rustls::ClientConfig>,
    address: &str,
    port: u16,
    path: &str,
) -> ApiResult<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let unreachable = |e: &dyn std::fmt::Display| {
        ApiError::internal(format!("Get \"https://{address}:{port}{path}\": {e}"))
    };
    let ip: std::net::IpAddr = address
        .parse()
        .map_err(|_| ApiError::internal(format!("node address {address:?} is not an IP")))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((ip, port)).await?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::IpAddress(ip.into());
        tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| unreachable(&"connection timed out"))?
        .map_err(|e| unreachable(&e))
}

/// `GET nodes/NAME/proxy/PATH`: the kubelet's `/PATH` (like `stats/summary`), as
/// upstream's node proxy passes it on.
pub(crate) async fn node_proxy(call: &Call<'_>) -> ApiResult<Reply> {
    let node = call.request.name.clone().unwrap_or_default();
    let (address, port) = kubelet_address(call, &node).await?;
    let sub = call.request.subpath.clone().unwrap_or_default();
    let mut path = format!("/{sub}");
    if let Some(query) = call.query.raw.as_deref().filter(|q| !q.is_empty()) {
        path = format!("{path}?{query}");
    }
    let tls = call.server.kubelet_client.get().cloned().ok_or_else(|| {
        ApiError::unavailable("this API server has no kubelet client certificate")
    })?;
    let body = fetch(tls, &address, port, &path).await?;
    let content_type = if sub.starts_with("stats") {
        "application/json"
    } else {
        "text/plain"
    };
    Ok(Reply {
        status: http::StatusCode::OK,
        headers: Vec::new(),
        body: ReplyBody::RawStream(content_type, body),
    })
}

/// GETs `path` from the kubelet; a non-200 answer becomes an error with its text.
pub(crate) async fn fetch(
    tls: Arc<rustls::ClientConfig>,
    address: &str,
    port: u16,
    path: &str,
) -> ApiResult<futures::stream::BoxStream<'static, Bytes>> {
    let unreachable = |e: &dyn std::fmt::Display| {
        ApiError::internal(format!("Get \"https://{address}:{port}{path}\": {e}"))
    };
    let stream = connect(tls, address, port, path).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::get(path)
        .header(http::header::HOST, format!("{address}:{port}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| unreachable(&e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(&e))?;
    let status = response.status();
    if status != http::StatusCode::OK {
        let text = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        return Err(match status.as_u16() {
            400 => ApiError::bad_request(text),
            404 => ApiError::new(404, "NotFound", text),
            code => ApiError::internal(format!("the kubelet answered {code}: {text}")),
        });
    }
    let body = response
        .into_body()
        .into_data_stream()
        .take_while(|chunk| std::future::ready(chunk.is_ok()))
        .filter_map(|chunk| std::future::ready(chunk.ok()))
        .boxed();
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: &[&str], statuses: Value) -> Value {
        json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": containers.iter().map(|c| json!({"name": c})).collect::<Vec<_>>()},
            "status": {"containerStatuses": statuses},
        })
    }

    #[test]
    fn chooses_the_container_as_upstream() {
        let one = pod(&["a"], json!([]));
        assert_eq!(choose_container(&one, None).unwrap(), "a");
        let two = pod(&["a", "b"], json!([]));
        assert_eq!(choose_container(&two, Some("b")).unwrap(), "b");
        let err = choose_container(&two, None).unwrap_err();
        assert_eq!(
            err.to_status()["message"],
            "a container name must be specified for pod p, choose one of: [a b]"
        );
        let err = choose_container(&two, Some("x")).unwrap_err();
        assert_eq!(
            err.to_status()["message"],
            "container x is not valid for pod p"
        );
        assert_eq!(err.to_status()["code"], 400);
    }

    #[test]
    fn checks_the_container_state_as_the_kubelet() {
        let message = |pod: &Value, previous| {
            check_status(pod, "a", previous).unwrap_err().to_status()["message"].clone()
        };
        let none = pod(&["a"], json!([]));
        assert_eq!(
            message(&none, false),
            "container \"a\" in pod \"p\" is waiting to start: ContainerCreating"
        );
        let running = pod(&["a"], json!([{"name": "a", "state": {"running": {}}}]));
        assert!(check_status(&running, "a", false).is_ok());
        assert_eq!(
            message(&running, true),
            "previous terminated container \"a\" in pod \"p\" not found"
        );
        let crashing = pod(
            &["a"],
            json!([{"name": "a", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1}}}]),
        );
        assert!(check_status(&crashing, "a", false).is_ok());
        assert!(check_status(&crashing, "a", true).is_ok());
        let pulling = pod(
            &["a"],
            json!([{"name": "a", "state": {"waiting": {"reason": "ErrImagePull"}}}]),
        );
        assert_eq!(
            message(&pulling, false),
            "container \"a\" in pod \"p\" is waiting to start: image can't be pulled"
        );
    }

    #[test]
    fn forwards_only_log_parameters() {
        assert_eq!(
            kubelet_query(Some(
                "container=a&follow=true&tailLines=2&pretty=1&timestamps=true"
            )),
            "follow=true&tailLines=2&timestamps=true"
        );
        assert_eq!(kubelet_query(None), "");
    }
}
