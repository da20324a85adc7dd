//! `/exec`, `/attach` and `/portForward` of the node's server, as upstream's kubelet
//! serves them: the CRI `Exec`/`Attach`/`PortForward` calls give a URL on containerd's
//! streaming server, which speaks SPDY/3.1 only (its WebSocket protocols predate v5).
//!
//! - SPDY upgrade requests (kubectl's fallback) are passed through: the same upgrade is
//!   asked of containerd's URL and the two upgraded connections are spliced.
//! - WebSocket `v5.channel.k8s.io`/`v4.channel.k8s.io` (kubectl 1.30+ exec, attach, cp)
//!   are bridged by [`bridge`] onto a SPDY connection this node opens to containerd.
//! - WebSocket `SPDY/3.1+portforward.k8s.io` (kubectl 1.31+ port-forward) carries SPDY
//!   bytes in binary messages: unwrapped onto a SPDY connection to containerd.
//!
//! Any other WebSocket protocol is refused with 400, which makes kubectl fall back to SPDY.

pub(crate) mod bridge;
pub(crate) mod channel;
pub(crate) mod spdy;

use std::convert::Infallible;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::cri::Cri;
use crate::pods::runtime::{CONTAINER_NAME, POD_NAME, POD_NAMESPACE};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The SPDY subprotocols containerd's streaming server speaks.
const REMOTE_COMMAND_V4: &str = "v4.channel.k8s.io";
const PORT_FORWARD_V1: &str = "portforward.k8s.io";
const STREAM_PROTOCOL: &str = "x-stream-protocol-version";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Exec,
    Attach,
    PortForward,
}

/// Which streams a command wants (the kubelet's `input`/`output`/`error`/`tty`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Options {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    pub ports: Vec<i32>,
}

impl Options {
    /// Upstream's kubelet names (`input`, `output`, `error`) and kubectl's (`stdin`, ...).
    pub(crate) fn parse(query: Option<&str>) -> Result<Options, String> {
        let mut options = Options::default();
        let truthy = |v: &str| v == "1" || v.eq_ignore_ascii_case("true");
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match key.as_ref() {
                "command" => options.command.push(value.into_owned()),
                "input" | "stdin" => options.stdin = truthy(&value),
                "output" | "stdout" => options.stdout = truthy(&value),
                "error" | "stderr" => options.stderr = truthy(&value),
                "tty" => options.tty = truthy(&value),
                "port" | "ports" => {
                    for port in value.split(',').filter(|p| !p.is_empty()) {
                        let port: i32 = port
                            .trim()
                            .parse()
                            .ok()
                            .filter(|p| (1..=65535).contains(p))
                            .ok_or_else(|| format!("invalid port {port:?}"))?;
                        options.ports.push(port);
                    }
                }
                _ => {}
            }
        }
        // A terminal merges stderr into stdout; CRI refuses both at once.
        if options.tty {
            options.stderr = false;
        }
        Ok(options)
    }
}

fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message.into())).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn all_values(headers: &HeaderMap, name: &str) -> String {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
}

/// Serves one streaming request for `namespace/pod` (and `container`, but for
/// port-forward).
pub(crate) async fn serve(
    cri: &Cri,
    kind: Kind,
    mut req: Request<Incoming>,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
) -> Response<Body> {
    let options = match Options::parse(req.uri().query()) {
        Ok(o) => o,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let upgrade = header(req.headers(), "upgrade").to_ascii_lowercase();
    let websocket = upgrade == "websocket";
    if !websocket && !upgrade.starts_with("spdy/") {
        return text(StatusCode::BAD_REQUEST, "Upgrade request required");
    }
    // A WebSocket whose protocol is not ours is refused before any work: kubectl then
    // falls back to SPDY.
    let ws_protocol = if websocket {
        let offered = all_values(req.headers(), "sec-websocket-protocol");
        let supported: &[&'static str] = match kind {
            Kind::PortForward => &[channel::PORT_FORWARD_TUNNEL],
            _ => &[channel::V5, channel::V4],
        };
        match channel::choose_protocol(&offered, supported) {
            Some(p) => Some(p),
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unable to upgrade: no supported WebSocket protocol in {offered:?}"),
                )
            }
        }
    } else {
        None
    };
    if kind != Kind::PortForward && !options.stdin && !options.stdout && !options.stderr {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 of stdin, stdout, stderr",
        );
    }
    if kind == Kind::Exec && options.command.is_empty() {
        return text(StatusCode::BAD_REQUEST, "you must specify a command");
    }
    tracing::debug!(uri = %req.uri(), ?kind, "streaming request");
    let url = match runtime_url(cri, kind, namespace, pod, container, &options).await {
        Ok(url) => url,
        Err(response) => return response,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    // The SPDY protocols asked of containerd: the client's own when it speaks SPDY.
    let protocols: Vec<String> = match ws_protocol {
        None => req
            .headers()
            .get_all(STREAM_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect(),
        Some(_) if kind == Kind::PortForward => vec![PORT_FORWARD_V1.to_string()],
        Some(_) => vec![REMOTE_COMMAND_V4.to_string()],
    };
    let (runtime_conn, runtime_headers) = match spdy_connect(&url, &protocols).await {
        Ok(c) => c,
        Err(response) => return response,
    };
    let Some(protocol) = ws_protocol else {
        // SPDY: answer as containerd did and splice the connections.
        let mut response = Response::new(Empty::new().boxed_unsync());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        for name in ["connection", "upgrade", STREAM_PROTOCOL] {
            for value in runtime_headers.get_all(name) {
                response.headers_mut().append(name, value.clone());
            }
        }
        tokio::spawn(async move {
            let Ok(client) = on_upgrade.await else { return };
            let mut client = TokioIo::new(client);
            let mut runtime = TokioIo::new(runtime_conn);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut runtime).await;
        });
        return response;
    };
    let key = header(req.headers(), "sec-websocket-key");
    let mut response = Response::new(Empty::new().boxed_unsync());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert("connection", HeaderValue::from_static("Upgrade"));
    headers.insert("upgrade", HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::try_from(channel::accept_key(key)) {
        headers.insert("sec-websocket-accept", accept);
    }
    headers.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
    tokio::spawn(async move {
        let Ok(client) = on_upgrade.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, None).await;
        let runtime = TokioIo::new(runtime_conn);
        let result = if protocol == channel::PORT_FORWARD_TUNNEL {
            tunnel(ws, runtime).await.map_err(bridge::BridgeError::from)
        } else {
            bridge::run(ws, runtime, &options, protocol == channel::V5).await
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "streaming session ended with an error");
        }
    });
    response
}

/// The container (exec, attach) or sandbox (port-forward) of the pod, and the CRI call
/// that gives containerd's streaming URL for it.
async fn runtime_url(
    cri: &Cri,
    kind: Kind,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
    options: &Options,
) -> Result<String, Response<Body>> {
    let mut runtime = cri.runtime.clone();
    let failed = |call: &str, status: tonic::Status| {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("CRI {call}: {}", status.message()),
        )
    };
    let mut labels: std::collections::HashMap<String, String> = [
        (POD_NAMESPACE.to_string(), namespace.to_string()),
        (POD_NAME.to_string(), pod.to_string()),
    ]
    .into();
    if kind == Kind::PortForward {
        let filter = cri::PodSandboxFilter {
            label_selector: labels,
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        };
        let sandboxes = runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(filter),
            })
            .await
            .map_err(|s| failed("ListPodSandbox", s))?
            .into_inner()
            .items;
        let Some(sandbox) = sandboxes.first() else {
            return Err(text(
                StatusCode::NOT_FOUND,
                format!("pod {namespace}/{pod} not found on this node"),
            ));
        };
        let reply = runtime
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: sandbox.id.clone(),
                port: options.ports.clone(),
            })
            .await
            .map_err(|s| failed("PortForward", s))?;
        return Ok(reply.into_inner().url);
    }
    let container = container.unwrap_or_default();
    labels.insert(CONTAINER_NAME.to_string(), container.to_string());
    let filter = cri::ContainerFilter {
        label_selector: labels,
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        }),
        ..Default::default()
    };
    let containers = runtime
        .list_containers(cri::ListContainersRequest {
            filter: Some(filter),
        })
        .await
        .map_err(|s| failed("ListContainers", s))?
        .into_inner()
        .containers;
    // The newest run, should an old one linger.
    let Some(found) = containers.iter().max_by_key(|c| c.created_at) else {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("container not found ({container:?})"),
        ));
    };
    let url = if kind == Kind::Exec {
        runtime
            .exec(cri::ExecRequest {
                container_id: found.id.clone(),
                cmd: options.command.clone(),
                tty: options.tty,
                stdin: options.stdin,
                stdout: options.stdout,
                stderr: options.stderr,
            })
            .await
            .map_err(|s| failed("Exec", s))?
            .into_inner()
            .url
    } else {
        runtime
            .attach(cri::AttachRequest {
                container_id: found.id.clone(),
                stdin: options.stdin,
                tty: options.tty,
                stdout: options.stdout,
                stderr: options.stderr,
            })
            .await
            .map_err(|s| failed("Attach", s))?
            .into_inner()
            .url
    };
    Ok(url)
}

/// Asks containerd's streaming `url` for a SPDY/3.1 upgrade offering `protocols`; gives
/// the upgraded connection and the 101's headers, or containerd's answer as it is.
async fn spdy_connect(
    url: &str,
    protocols: &[String],
) -> Result<(hyper::upgrade::Upgraded, HeaderMap), Response<Body>> {
    let unreachable = |e: &dyn std::fmt::Display| {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("connecting to the runtime's streaming server {url}: {e}"),
        )
    };
    let uri: http::Uri = url.parse().map_err(|e| unreachable(&e))?;
    let authority = uri
        .authority()
        .ok_or_else(|| unreachable(&"the URL has no host"))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| unreachable(&e))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Request::post(path)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "SPDY/3.1");
    for protocol in protocols {
        request = request.header(STREAM_PROTOCOL, protocol.as_str());
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| unreachable(&e))?;
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(&e))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut relayed = Response::new(Full::new(body).boxed_unsync());
        *relayed.status_mut() = status;
        if let Some(ct) = headers.get(http::header::CONTENT_TYPE) {
            relayed
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, ct.clone());
        }
        return Err(relayed);
    }
    let headers = response.headers().clone();
    let upgraded = hyper::upgrade::on(&mut response)
        .await
        .map_err(|e| unreachable(&e))?;
    Ok((upgraded, headers))
}

/// Port-forward's WebSocket tunnel: binary message payloads are SPDY bytes of the
/// client's connection, passed on to containerd's and back.
async fn tunnel<S, R>(ws: WebSocketStream<S>, runtime: R) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    R: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut rt_rx, mut rt_tx) = tokio::io::split(runtime);
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            message = ws_rx.next() => match message {
                Some(Ok(Message::Binary(data))) => rt_tx.write_all(&data).await?,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            read = rt_rx.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    break;
                }
                if ws_tx.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = ws_tx.send(Message::Close(None)).await;
    let _ = rt_tx.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubelet_and_kubectl_parameters() {
        let o = Options::parse(Some(
            "command=sh&command=-c&command=echo+hi&input=1&output=1&error=1",
        ))
        .unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo hi"]);
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
        let o = Options::parse(Some(
            "command=sh&stdin=true&stdout=true&stderr=true&tty=true",
        ))
        .unwrap();
        assert!(o.tty && !o.stderr, "a terminal has no separate stderr");
        let o = Options::parse(Some("port=80&port=8080,9090")).unwrap();
        assert_eq!(o.ports, [80, 8080, 9090]);
        assert!(Options::parse(Some("port=0")).is_err());
    }
}
