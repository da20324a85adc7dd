//! One request: route it, rewrite its head for the backend (hop-by-hop headers out,
//! `X-Forwarded-*` in), send it to an endpoint, and pass the answer back. Bodies stream
//! both ways untouched.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::routes::{normalize_host, Backend};
use super::upstream::Failure;
use super::{upgrade, Scheme, Shared};

/// A backend's streamed answer, or one of ours (404, 502, ...).
pub(crate) type ProxyBody = Either<Incoming, Full<Bytes>>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

pub(crate) async fn handle(
    shared: &Shared,
    request: Request<Incoming>,
    client: SocketAddr,
    scheme: Scheme,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let site = shared.site();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // The authority of an HTTP/2 request or an absolute-form one wins over `Host`
    // (RFC 9112 section 3.2.2).
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            let value = request.headers().get(header::HOST)?;
            value.to_str().ok().map(str::to_owned)
        });
    let routed_host = host.as_deref().map(normalize_host).unwrap_or_default();
    let (backend_name, endpoint, response) = if method == Method::CONNECT {
        // A reverse proxy names no tunnel targets.
        let response = text(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n");
        (String::new(), None, response)
    } else {
        match site.routes.route(&routed_host, &path) {
            None => {
                let response = text(StatusCode::NOT_FOUND, "no route for this host and path\n");
                (String::new(), None, response)
            }
            Some(backend) => {
                let (endpoint, response) =
                    forward(shared, backend, request, client, scheme, host.as_deref()).await;
                (backend.name.clone(), endpoint, response)
            }
        }
    };
    shared.metrics.request(&backend_name, response.status());
    tracing::debug!(
        listener = %shared.name,
        %client,
        %method,
        host = %routed_host,
        %path,
        backend = %backend_name,
        endpoint = ?endpoint,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

async fn forward(
    shared: &Shared,
    backend: &Backend,
    mut request: Request<Incoming>,
    client: SocketAddr,
    scheme: Scheme,
    host: Option<&str>,
) -> (Option<SocketAddr>, Response<ProxyBody>) {
    let upgrade = upgrade::requested(&request).map(|protocol| {
        let client_side = hyper::upgrade::on(&mut request);
        (protocol, client_side)
    });
    let mut request = to_backend(request, client, scheme, host);
    if let Some((protocol, _)) = &upgrade {
        upgrade::ask(request.headers_mut(), protocol.clone());
    }
    let connect_failed = || shared.metrics.connect_failure(&backend.name);
    let (endpoint, mut answer) = match shared.upstream.send(backend, request, connect_failed).await
    {
        Ok(sent) => sent,
        Err(failure) => return (None, failure_response(backend, failure)),
    };
    let switched = answer.status() == StatusCode::SWITCHING_PROTOCOLS;
    let protocol = answer.headers().get(header::UPGRADE).cloned();
    strip_hop_by_hop(answer.headers_mut());
    match (switched, upgrade, protocol) {
        (true, Some((_, client_side)), Some(protocol)) => {
            let backend_side = hyper::upgrade::on(&mut answer);
            upgrade::ask(answer.headers_mut(), protocol);
            tokio::spawn(upgrade::splice(
                client_side,
                backend_side,
                shared.closing.clone(),
                client,
                endpoint,
            ));
        }
        (true, _, _) => {
            // A switch nobody asked for (or to no protocol) cannot be passed on.
            tracing::debug!(backend = %backend.name, %endpoint, "unasked protocol switch");
            let refused = text(StatusCode::BAD_GATEWAY, "the backend switched protocols\n");
            return (Some(endpoint), refused);
        }
        (false, _, _) => {}
    }
    (Some(endpoint), answer.map(Either::Left))
}

/// The request as the backend gets it: HTTP/1.1 in origin form, `Host` kept (or made
/// from an HTTP/2 request's authority), hop-by-hop headers out, forwarding headers in.
fn to_backend(
    request: Request<Incoming>,
    client: SocketAddr,
    scheme: Scheme,
    host: Option<&str>,
) -> Request<Incoming> {
    let (mut parts, body) = request.into_parts();
    let origin_form = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    let from_http2 = parts.version == Version::HTTP_2;
    parts.uri = origin_form;
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    // We answer `Expect: 100-continue` ourselves (hyper does, when the body is read).
    headers.remove(header::EXPECT);
    if let Some(value) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(header::HOST, value.clone());
        headers.insert(X_FORWARDED_HOST, value);
    }
    if from_http2 {
        join_cookies(headers);
    }
    let client_ip = client.ip().to_string();
    let forwarded_for = {
        let earlier: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        match earlier.is_empty() {
            true => client_ip.clone(),
            false => format!("{}, {client_ip}", earlier.join(", ")),
        }
    };
    let insert = |headers: &mut HeaderMap, name: HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    insert(headers, X_FORWARDED_FOR, &forwarded_for);
    insert(headers, X_FORWARDED_PROTO, scheme.as_str());
    insert(headers, X_REAL_IP, &client_ip);
    Request::from_parts(parts, body)
}

/// Removes what concerns one connection only (RFC 9110 section 7.6.1): `Connection`
/// and the headers it names, and the fixed hop-by-hop ones.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        // `Connection: host` must not leave the backend without a Host.
        .filter(|name| name != header::HOST)
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    // Proxy-Connection, Proxy-Authorization, ... are for a forward proxy, not the
    // backend; a bare `Proxy` header is the "httpoxy" attack on CGI backends.
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str() == "proxy" || name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 wants one (RFC 9113
/// section 8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let cookies: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if cookies.len() < 2 {
        return;
    }
    if let Ok(joined) = HeaderValue::from_str(&cookies.join("; ")) {
        headers.insert(header::COOKIE, joined);
    }
}

fn failure_response(backend: &Backend, failure: Failure) -> Response<ProxyBody> {
    match failure {
        Failure::NoEndpoints => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no endpoint is ready for this route\n",
        ),
        Failure::Unreachable => text(
            StatusCode::BAD_GATEWAY,
            "no endpoint of this route accepted a connection\n",
        ),
        Failure::Exchange(e) => {
            tracing::debug!(backend = %backend.name, "the backend's answer broke: {e}");
            text(StatusCode::BAD_GATEWAY, "the backend's answer broke off\n")
        }
    }
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_the_rest_stays() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret, host"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy", "http://evil"),
            ("host", "a.example"),
            ("x-kept", "yes"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["host", "x-kept"]);
    }

    #[test]
    fn cookies_of_http2_are_joined() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut headers);
        assert_eq!(headers.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(headers[header::COOKIE], "a=1; b=2");
    }
}
