//! `pods/exec`, `pods/attach` and `pods/portforward`: checks the pod and container as
//! upstream's `ExecLocation`/`AttachLocation`/`PortForwardLocation` do, then forwards the
//! upgrade request to the kubelet of the pod's node (`/exec/NS/POD/C?...`,
//! `/attach/...`, `/portForward/NS/POD`) with the kubelet-client certificate. A 101 from
//! the kubelet is answered to the client and the two upgraded connections are spliced
//! byte for byte, whatever the protocol (WebSocket or SPDY); any other answer is relayed.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::body::{Reply, ReplyBody};
use crate::error::{ApiError, ApiResult};
use crate::handlers::{load, Call};
use crate::pod_logs::{choose_container, connect, kubelet_address};

/// The subresources served here.
pub(crate) const SUBRESOURCES: [&str; 3] = ["exec", "attach", "portforward"];

/// Request headers passed to the kubelet (the upgrade negotiation).
const FORWARDED_HEADERS: [&str; 7] = [
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];
/// Response headers of a 101 passed back to the client.
const RETURNED_HEADERS: [&str; 5] = [
    "connection",
    "upgrade",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];

/// The kubelet's query for the API's: upstream's `input`/`output`/`error`/`tty`/
/// `command` for exec and attach, `port` for port-forward.
pub(crate) fn kubelet_query(subresource: &str, raw: Option<&str>) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let truthy = value == "true" || value == "1";
        match (subresource, key.as_ref()) {
            ("portforward", "ports") => {
                for port in value.split(',').filter(|p| !p.is_empty()) {
                    out.append_pair("port", port.trim());
                }
            }
            ("portforward", _) => {}
            ("exec", "command") => {
                out.append_pair("command", &value);
            }
            (_, "stdin") if truthy => {
                out.append_pair("input", "1");
            }
            (_, "stdout") if truthy => {
                out.append_pair("output", "1");
            }
            (_, "stderr") if truthy => {
                out.append_pair("error", "1");
            }
            (_, "tty") if truthy => {
                out.append_pair("tty", "1");
            }
            _ => {}
        }
    }
    out.finish()
}

pub(crate) async fn serve(
    call: &Call<'_>,
    method: &http::Method,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> ApiResult<Reply> {
    let subresource = call.request.subresource.as_deref().unwrap_or_default();
    let (pod, _) = load(call).await?;
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let raw = call.query.raw.as_deref();
    let param = |key: &str| {
        form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    // Port-forward's ports are optional: each SPDY stream names its port.
    let path = if subresource == "portforward" {
        format!("/portForward/{namespace}/{name}")
    } else {
        let container = choose_container(&pod, param("container").as_deref())?;
        format!("/{subresource}/{namespace}/{name}/{container}")
    };
    if subresource == "exec" && param("command").is_none() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    let node = pod["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {name} does not have a host assigned"))
        })?;
    let query = kubelet_query(subresource, raw);
    let path = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    let (address, port) = kubelet_address(call, node).await?;
    let tls = call.server.kubelet_client.get().cloned().ok_or_else(|| {
        ApiError::unavailable("this API server has no kubelet client certificate")
    })?;
    let stream = connect(tls, &address, port, &path).await?;
    let unreachable =
        |e: &dyn std::fmt::Display| ApiError::internal(format!("error dialing backend: {e}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let mut request = http::Request::builder()
        .method(method.clone())
        .uri(&path)
        .header(http::header::HOST, format!("{address}:{port}"));
    for name in FORWARDED_HEADERS {
        for value in call.headers.get_all(name) {
            request = request.header(name, value.clone());
        }
    }
    let request = request
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| unreachable(&e))?;
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(&e))?;
    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let json = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let content_type = if json {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        return Ok(Reply {
            status,
            headers: Vec::new(),
            body: ReplyBody::Raw(content_type, body),
        });
    }
    let on_upgrade = on_upgrade.ok_or_else(|| ApiError::bad_request("Upgrade request required"))?;
    let headers = returned_headers(response.headers());
    let node_upgrade = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        let (Ok(client), Ok(node)) = (on_upgrade.await, node_upgrade.await) else {
            return;
        };
        let mut client = TokioIo::new(client);
        let mut node = TokioIo::new(node);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
    });
    Ok(Reply {
        status,
        headers,
        body: ReplyBody::Raw("", Bytes::new()),
    })
}

fn returned_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    RETURNED_HEADERS
        .iter()
        .flat_map(|name| {
            headers
                .get_all(*name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(|v| (name.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_the_query_for_the_kubelet() {
        assert_eq!(
            kubelet_query(
                "exec",
                Some("command=sh&command=-c&command=echo+hi&container=c&stdin=true&stdout=true&stderr=true&tty=false")
            ),
            "command=sh&command=-c&command=echo+hi&input=1&output=1&error=1"
        );
        assert_eq!(
            kubelet_query("attach", Some("container=c&stdout=true&tty=true&command=x")),
            "output=1&tty=1"
        );
        assert_eq!(
            kubelet_query("portforward", Some("ports=8080&ports=9090,9091")),
            "port=8080&port=9090&port=9091"
        );
    }
}
