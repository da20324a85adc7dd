//! The HTTP data plane of a load-balancer instance against real sockets: an `Edge` with
//! HTTP listeners, run inside a throwaway network namespace (the rules it loads land
//! there), tiny hyper backends on that namespace's loopback that say who they are and
//! what they were sent, and clients speaking HTTP/1.1, HTTP/2 (prior knowledge and over
//! TLS by ALPN) and WebSocket. Runs as root.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use korvet_lb::edge::{
    BackendCheck, Edge, EdgeConfig, HostCertificate, HttpBackend, HttpConfig, HttpRoute, Listener,
    PathType, Protocol,
};
use korvet_test_support::netns::Netns;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Body = BoxBody<Bytes, Infallible>;

const HTTP_PORT: u16 = 8080;
const HTTPS_PORT: u16 = 8443;
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Runs `test` on a runtime whose threads are all inside a fresh network namespace
/// (threads inherit it from the one that builds the runtime).
fn in_netns<F, Fut>(tag: &str, test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let netns = Netns::new(&format!("klh-{}-{tag}", std::process::id()));
    netns.enter(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                tokio::time::timeout(Duration::from_secs(60), test())
                    .await
                    .expect("the test finishes within a minute")
            })
    });
}

// ---- Backends ----------------------------------------------------------------------

/// A backend on 127.0.0.1 that answers as `name`:
/// - `/slow`: ten lines, one every 150 ms;
/// - `/download`: 16 MiB, streamed;
/// - `/upload`: how many bytes the request body had, read as it streams;
/// - `/ws`: a WebSocket that echoes text as `NAME: TEXT`;
/// - anything else: `key: value` lines of what it was sent, and from where.
async fn backend(name: &'static str) -> SocketAddrV4 {
    serve_backend(name, true).await
}

/// A backend that closes the connection after each answer (`Connection: close`), as
/// busybox httpd and CGI servers do.
async fn closing_backend(name: &'static str) -> SocketAddrV4 {
    serve_backend(name, false).await
}

async fn serve_backend(name: &'static str, keep_alive: bool) -> SocketAddrV4 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |request| answer(name, peer, request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn answer(
    name: &'static str,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    let header = |h: &str| {
        request
            .headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    match path.as_str() {
        "/slow" => {
            let ticks = futures::stream::unfold(0, |i| async move {
                if i == 10 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
                let line = Bytes::from(format!("tick {i}\n"));
                Some((Ok::<_, Infallible>(Frame::data(line)), i + 1))
            });
            Ok(Response::new(BodyExt::boxed(StreamBody::new(ticks))))
        }
        "/download" => {
            let chunks = futures::stream::iter(0..256).map(|_| {
                Ok::<_, Infallible>(Frame::data(Bytes::from(vec![7u8; 64 * 1024])))
            });
            Ok(Response::new(BodyExt::boxed(StreamBody::new(chunks))))
        }
        "/upload" => {
            let mut body = request.into_body();
            let mut total = 0usize;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => total += frame.data_ref().map_or(0, |d| d.len()),
                    Err(e) => return Ok(text(format!("{name} upload broke: {e}"))),
                }
            }
            Ok(text(format!("{name} got {total} bytes")))
        }
        "/ws" => Ok(accept_websocket(name, request)),
        _ => Ok(text(format!(
            "name: {name}\npeer: {peer}\npath: {path}\nhost: {}\nxff: {}\nproto: {}\nxfh: {}\nreal-ip: {}\nconnection: {}\nproxy-authorization: {}\nversion: {:?}\n",
            header("host"),
            header("x-forwarded-for"),
            header("x-forwarded-proto"),
            header("x-forwarded-host"),
            header("x-real-ip"),
            header("connection"),
            header("proxy-authorization"),
            request.version(),
        ))),
    }
}

fn text(body: String) -> Response<Body> {
    Response::new(Full::new(Bytes::from(body)).boxed())
}

fn accept_key(key: &[u8]) -> String {
    let mut sha1 = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    sha1.update(key);
    sha1.update(WEBSOCKET_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha1.finish())
}

/// The server side of RFC 6455's handshake, then an echo on the upgraded connection.
fn accept_websocket(name: &'static str, mut request: Request<Incoming>) -> Response<Body> {
    let Some(key) = request.headers().get("sec-websocket-key").cloned() else {
        let mut refused = text("not a WebSocket request".into());
        *refused.status_mut() = StatusCode::BAD_REQUEST;
        return refused;
    };
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgraded.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                let echo = Message::text(format!("{name}: {}", text.as_str()));
                if ws.send(echo).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut switching = Response::new(Full::new(Bytes::new()).boxed());
    *switching.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = switching.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept_key(key.as_bytes())).unwrap(),
    );
    switching
}

/// An address nothing listens on: connects to it are refused.
async fn refusing_endpoint() -> SocketAddrV4 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    addr
}

// ---- Configuration -----------------------------------------------------------------

fn http_backend(name: &str, endpoints: &[SocketAddrV4]) -> HttpBackend {
    HttpBackend {
        name: name.into(),
        endpoints: endpoints.to_vec(),
    }
}

fn route(host: Option<&str>, path: &str, path_type: PathType, backend: &HttpBackend) -> HttpRoute {
    HttpRoute {
        host: host.map(str::to_owned),
        path: path.into(),
        path_type,
        backend: backend.clone(),
    }
}

/// An instance with one HTTP listener, `name` on 127.0.0.1:`port`.
fn serving(name: &str, port: u16, http: HttpConfig) -> EdgeConfig {
    EdgeConfig {
        admin_listen: None,
        masquerade: Vec::new(),
        listeners: vec![Listener {
            name: name.into(),
            address: Ipv4Addr::LOCALHOST,
            port,
            protocol: Protocol::Tcp,
            proxy_protocol: None,
            tls: None,
            backends: Vec::new(),
            health: BackendCheck::default(),
            source_ranges: Vec::new(),
            http: Some(http),
        }],
    }
}

// ---- Clients -----------------------------------------------------------------------

fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

/// An HTTP/1.1 connection to the proxy (upgrades allowed).
async fn h1(port: u16) -> hyper::client::conn::http1::SendRequest<Body> {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection.with_upgrades());
    sender
}

fn request(host: &str, path: &str, body: Body) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header(header::HOST, host)
        .body(body)
        .unwrap()
}

/// POSTs `chunks` chunks of 64 KiB to `/upload` (chunked) and returns the answer.
async fn upload(
    sender: &mut hyper::client::conn::http1::SendRequest<Body>,
    host: &str,
    chunks: usize,
) -> (StatusCode, String) {
    let chunks = futures::stream::iter(0..chunks)
        .map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![1u8; 64 * 1024]))));
    let upload = Request::builder()
        .method("POST")
        .uri("/upload")
        .header(header::HOST, host)
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .unwrap();
    sender.ready().await.unwrap();
    read_all(sender.send_request(upload).await.unwrap()).await
}

/// GETs `/download` and counts its bytes frame by frame.
async fn download(sender: &mut hyper::client::conn::http1::SendRequest<Body>, host: &str) -> usize {
    sender.ready().await.unwrap();
    let response = sender
        .send_request(request(host, "/download", empty()))
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        total += frame.unwrap().data_ref().map_or(0, |d| d.len());
    }
    total
}

async fn read_all(response: Response<Incoming>) -> (StatusCode, String) {
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// One GET on a connection of its own.
async fn get(host: &str, path: &str) -> (StatusCode, String) {
    let mut sender = h1(HTTP_PORT).await;
    let response = sender
        .send_request(request(host, path, empty()))
        .await
        .unwrap();
    read_all(response).await
}

/// The `key: value` lines of a backend's echo.
fn fields(body: &str) -> HashMap<String, String> {
    body.lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Which backend answered GET `host` `path` (or the status and body if none did).
async fn who(host: &str, path: &str) -> String {
    let (status, body) = get(host, path).await;
    match fields(&body).get("name") {
        Some(name) if status == StatusCode::OK => name.clone(),
        _ => format!("{} {}", status.as_u16(), body.trim()),
    }
}

// ---- Tests -------------------------------------------------------------------------

#[test]
fn routes_by_host_and_path_with_forwarding_headers() {
    in_netns("route", || async {
        let (alpha, beta, fallback) = (
            backend("alpha").await,
            backend("beta").await,
            backend("fallback").await,
        );
        let (a, b) = (
            http_backend("shop/alpha:80", &[alpha]),
            http_backend("shop/beta:80", &[beta]),
        );
        let mut http = HttpConfig {
            routes: vec![
                route(Some("a.example"), "/exact", PathType::Exact, &a),
                route(Some("a.example"), "/api", PathType::Prefix, &b),
                route(
                    Some("*.wild.example"),
                    "/",
                    PathType::ImplementationSpecific,
                    &b,
                ),
                route(None, "/shared", PathType::Prefix, &a),
            ],
            default_backend: Some(http_backend("shop/fallback:80", &[fallback])),
            certificates: Vec::new(),
        };
        let mut edge = Edge::start(serving("web", HTTP_PORT, http.clone()))
            .await
            .unwrap();

        for (host, path, want) in [
            ("A.Example:8080", "/exact", "alpha"),
            // Exact is exact; nothing else of a.example matches, nor of no host.
            ("a.example", "/exact/", "fallback"),
            ("a.example", "/api", "beta"),
            ("a.example", "/api/v1/items?x=1", "beta"),
            ("a.example", "/apis", "fallback"),
            ("x.wild.example", "/anything", "beta"),
            // A wildcard takes one label only.
            ("y.x.wild.example", "/anything", "fallback"),
            ("other.example", "/shared/file", "alpha"),
            ("a.example", "/shared", "alpha"),
            ("other.example", "/", "fallback"),
        ] {
            assert_eq!(who(host, path).await, want, "{host}{path}");
        }

        // What the backend is told: Host kept, the client appended to X-Forwarded-For,
        // hop-by-hop headers gone.
        let mut sender = h1(HTTP_PORT).await;
        let mut asked = request("A.Example:8080", "/api/v1?q=2", empty());
        let headers = asked.headers_mut();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        headers.insert(
            "proxy-authorization",
            HeaderValue::from_static("Basic eDp5"),
        );
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        let (status, body) = read_all(sender.send_request(asked).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let seen = fields(&body);
        assert_eq!(seen["host"], "A.Example:8080", "{body}");
        assert_eq!(seen["xfh"], "A.Example:8080", "{body}");
        assert_eq!(seen["xff"], "203.0.113.9, 127.0.0.1", "{body}");
        assert_eq!(seen["real-ip"], "127.0.0.1", "{body}");
        assert_eq!(seen["proto"], "http", "{body}");
        assert_eq!(seen["proxy-authorization"], "-", "{body}");
        assert_eq!(seen["path"], "/api/v1", "{body}");
        // The same connection carries on (keep-alive on both legs).
        sender.ready().await.unwrap();
        let again = sender
            .send_request(request("a.example", "/exact", empty()))
            .await
            .unwrap();
        assert_eq!(fields(&read_all(again).await.1)["name"], "alpha");

        // Connections to backends are kept and reused, across client connections.
        let mut peers = Vec::new();
        for _ in 0..5 {
            peers.push(fields(&get("a.example", "/exact").await.1)["peer"].clone());
        }
        peers.sort();
        peers.dedup();
        assert!(
            peers.len() < 5,
            "a new backend connection each time: {peers:?}"
        );

        // HTTP/2 by prior knowledge on the plain listener; the backend gets HTTP/1.1.
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, HTTP_PORT))
            .await
            .unwrap();
        let (mut h2, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let asked = Request::builder()
            .uri("http://a.example/api/h2")
            .header(header::COOKIE, "a=1")
            .body(empty())
            .unwrap();
        let response = h2.send_request(asked).await.unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        let (status, body) = read_all(response).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let seen = fields(&body);
        assert_eq!(
            (
                seen["name"].as_str(),
                seen["host"].as_str(),
                seen["version"].as_str()
            ),
            ("beta", "a.example", "HTTP/1.1"),
            "{body}"
        );

        // Without a default backend, what no route takes is a 404.
        http.default_backend = None;
        edge.reload(serving("web", HTTP_PORT, http)).await.unwrap();
        let (status, body) = get("other.example", "/").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("no route"), "{body}");

        let metrics = edge.render_metrics();
        for series in [
            r#"korvet_lb_http_requests_total{listener="web",backend="shop/alpha:80",code="2xx"}"#,
            r#"korvet_lb_http_requests_total{listener="web",backend="shop/fallback:80",code="2xx"}"#,
            r#"korvet_lb_http_requests_total{listener="web",backend="",code="4xx"} 1"#,
            r#"korvet_lb_connections_total{listener="web"}"#,
        ] {
            assert!(metrics.contains(series), "{series} in\n{metrics}");
        }
        edge.shutdown().await;
    });
}

#[test]
fn large_bodies_stream_both_ways() {
    in_netns("stream", || async {
        let alpha = backend("alpha").await;
        let http = HttpConfig {
            default_backend: Some(http_backend("shop/alpha:80", &[alpha])),
            ..Default::default()
        };
        let edge = Edge::start(serving("web", HTTP_PORT, http)).await.unwrap();
        let mut sender = h1(HTTP_PORT).await;
        // 16 MiB up, in 64 KiB chunks of unknown total length (chunked).
        let (status, body) = upload(&mut sender, "big.example", 256).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "alpha got 16777216 bytes")
        );
        // 16 MiB down, counted frame by frame, on the same connection.
        let total = download(&mut sender, "big.example").await;
        assert_eq!(total, 16 * 1024 * 1024);
        edge.shutdown().await;
    });
}

#[test]
fn backends_that_close_after_each_answer_stream_whole_answers() {
    in_netns("closing", || async {
        let alpha = closing_backend("alpha").await;
        let http = HttpConfig {
            default_backend: Some(http_backend("shop/alpha:80", &[alpha])),
            ..Default::default()
        };
        let edge = Edge::start(serving("web", HTTP_PORT, http)).await.unwrap();
        let mut sender = h1(HTTP_PORT).await;
        // Each request needs a new backend connection; the client keeps its own.
        for _ in 0..20 {
            sender.ready().await.unwrap();
            let response = sender
                .send_request(request("shop.example", "/", empty()))
                .await
                .unwrap();
            let (status, body) = read_all(response).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(fields(&body)["name"], "alpha");
        }
        let (status, body) = upload(&mut sender, "shop.example", 64).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "alpha got 4194304 bytes")
        );
        let total = download(&mut sender, "shop.example").await;
        assert_eq!(total, 16 * 1024 * 1024);
        // An answer that trickles in arrives whole.
        sender.ready().await.unwrap();
        let response = sender
            .send_request(request("shop.example", "/slow", empty()))
            .await
            .unwrap();
        let (status, body) = read_all(response).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.lines().count(), 10, "{body}");
        edge.shutdown().await;
    });
}

#[test]
fn refused_endpoints_are_skipped_and_none_left_is_an_error() {
    in_netns("refuse", || async {
        let (alive, dead) = (backend("alive").await, refusing_endpoint().await);
        let http = HttpConfig {
            routes: vec![
                route(
                    None,
                    "/mixed",
                    PathType::Prefix,
                    &http_backend("t/mixed:80", &[dead, alive]),
                ),
                route(
                    None,
                    "/dead",
                    PathType::Prefix,
                    &http_backend("t/dead:80", &[dead]),
                ),
                route(
                    None,
                    "/empty",
                    PathType::Prefix,
                    &http_backend("t/empty:80", &[]),
                ),
            ],
            ..Default::default()
        };
        let edge = Edge::start(serving("web", HTTP_PORT, http)).await.unwrap();
        // Round robin starts on the dead one every other time; each request still lands.
        for _ in 0..6 {
            assert_eq!(who("h", "/mixed").await, "alive");
        }
        let (status, body) = get("h", "/dead").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        let (status, body) = get("h", "/empty").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let metrics = edge.render_metrics();
        for series in [
            r#"korvet_lb_http_backend_connect_failures_total{listener="web",backend="t/mixed:80"} 3"#,
            r#"korvet_lb_http_requests_total{listener="web",backend="t/dead:80",code="5xx"} 1"#,
            r#"korvet_lb_http_requests_total{listener="web",backend="t/empty:80",code="5xx"} 1"#,
        ] {
            assert!(metrics.contains(series), "{series} in\n{metrics}");
        }
        edge.shutdown().await;
    });
}

/// A self-signed certificate for `names`, written to `dir`; its DER to compare.
fn certificate(
    dir: &std::path::Path,
    file: &str,
    names: &[&str],
    hosts: &[&str],
) -> (HostCertificate, Vec<u8>) {
    let cert =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let (cert_file, key_file) = (
        dir.join(format!("{file}.crt")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let config = HostCertificate {
        hosts: hosts.iter().map(|s| s.to_string()).collect(),
        cert_file,
        key_file,
    };
    (config, cert.cert.der().to_vec())
}

/// A TLS connection to the HTTPS listener naming `server_name`, trusting `roots`
/// (DER), offering `alpn`: the certificate served and the protocol chosen.
async fn tls_connect(
    server_name: &str,
    roots: &[&[u8]],
    alpn: &[&[u8]],
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    Vec<u8>,
    Option<Vec<u8>>,
) {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.to_vec().into()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, HTTPS_PORT))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let tls = connector
        .connect(name, stream)
        .await
        .unwrap_or_else(|e| panic!("TLS to {server_name}: {e}"));
    let (_, session) = tls.get_ref();
    let served = session.peer_certificates().unwrap()[0].to_vec();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    (tls, served, alpn)
}

#[test]
fn https_chooses_certificates_by_sni_and_speaks_http2_by_alpn() {
    in_netns("tls", || async {
        let dir = tempfile::tempdir().unwrap();
        // `a` also names other.example, which no host lists: the first certificate
        // serves it.
        let (a, a_der) = certificate(
            dir.path(),
            "a",
            &["a.example", "other.example"],
            &["a.example"],
        );
        let (w, w_der) = certificate(dir.path(), "w", &["*.w.example"], &["*.w.example"]);
        let alpha = backend("alpha").await;
        let mut http = HttpConfig {
            default_backend: Some(http_backend("shop/alpha:80", &[alpha])),
            certificates: vec![a, w.clone()],
            ..Default::default()
        };
        let mut edge = Edge::start(serving("websecure", HTTPS_PORT, http.clone()))
            .await
            .unwrap();
        let roots: [&[u8]; 2] = [&a_der, &w_der];

        // HTTP/2 by ALPN, with a.example's certificate.
        let (tls, served, alpn) = tls_connect("a.example", &roots, &[b"h2", b"http/1.1"]).await;
        assert_eq!(served, a_der);
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        let (mut h2, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(connection);
        let asked = Request::builder()
            .uri("https://a.example/over/h2")
            .body(empty())
            .unwrap();
        let response = h2.send_request(asked).await.unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        let (status, body) = read_all(response).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let seen = fields(&body);
        assert_eq!(seen["proto"], "https", "{body}");
        assert_eq!(seen["host"], "a.example", "{body}");
        assert_eq!(seen["path"], "/over/h2", "{body}");

        // HTTP/1.1 by ALPN, with the wildcard's certificate.
        let (tls, served, alpn) = tls_connect("www.w.example", &roots, &[b"http/1.1"]).await;
        assert_eq!(served, w_der);
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        let (mut h1, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(connection);
        let response = h1
            .send_request(request("www.w.example", "/", empty()))
            .await
            .unwrap();
        let (status, body) = read_all(response).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(fields(&body)["proto"], "https");

        // A name no certificate lists: the first one.
        let (_, served, _) = tls_connect("other.example", &roots, &[]).await;
        assert_eq!(served, a_der);

        // A new certificate for a.example takes effect in place.
        let (a2, a2_der) = certificate(dir.path(), "a2", &["a.example"], &["a.example"]);
        http.certificates = vec![a2, w];
        edge.reload(serving("websecure", HTTPS_PORT, http))
            .await
            .unwrap();
        let (_, served, _) = tls_connect("a.example", &[&a2_der, &w_der], &[]).await;
        assert_eq!(served, a2_der);
        edge.shutdown().await;
    });
}

#[test]
fn websockets_pass_through() {
    in_netns("ws", || async {
        let alpha = backend("alpha").await;
        let http = HttpConfig {
            routes: vec![route(
                Some("chat.example"),
                "/ws",
                PathType::Exact,
                &http_backend("chat/alpha:80", &[alpha]),
            )],
            ..Default::default()
        };
        let edge = Edge::start(serving("web", HTTP_PORT, http)).await.unwrap();
        let mut sender = h1(HTTP_PORT).await;
        let key = base64::engine::general_purpose::STANDARD.encode(b"korvet-lb-test-k");
        let mut asked = request("chat.example", "/ws", empty());
        let headers = asked.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("sec-websocket-version", HeaderValue::from_static("13"));
        headers.insert("sec-websocket-key", HeaderValue::from_str(&key).unwrap());
        let response = sender.send_request(asked).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.headers()[header::UPGRADE], "websocket");
        assert_eq!(
            response.headers()["sec-websocket-accept"],
            accept_key(key.as_bytes()).as_str()
        );
        let upgraded = hyper::upgrade::on(response).await.unwrap();
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
        for text in ["hello", "again"] {
            ws.send(Message::text(text)).await.unwrap();
            let echo = ws.next().await.unwrap().unwrap();
            assert_eq!(echo.into_text().unwrap().as_str(), format!("alpha: {text}"));
        }
        ws.close(None).await.unwrap();
        let metrics = edge.render_metrics();
        let series =
            r#"korvet_lb_http_requests_total{listener="web",backend="chat/alpha:80",code="1xx"} 1"#;
        assert!(metrics.contains(series), "{metrics}");
        edge.shutdown().await;
    });
}

#[test]
fn a_reload_moves_new_requests_and_keeps_the_ones_in_flight() {
    in_netns("reload", || async {
        let (alpha, beta) = (backend("alpha").await, backend("beta").await);
        let config = |endpoint: SocketAddrV4| {
            serving(
                "web",
                HTTP_PORT,
                HttpConfig {
                    default_backend: Some(http_backend("shop/app:80", &[endpoint])),
                    ..Default::default()
                },
            )
        };
        let mut edge = Edge::start(config(alpha)).await.unwrap();
        // A keep-alive connection, used before and after the reload.
        let mut kept = h1(HTTP_PORT).await;
        let before = kept.send_request(request("h", "/", empty())).await.unwrap();
        assert_eq!(fields(&read_all(before).await.1)["name"], "alpha");

        // A slow response is under way from alpha when alpha leaves the endpoints.
        let mut slow_sender = h1(HTTP_PORT).await;
        let slow = slow_sender
            .send_request(request("h", "/slow", empty()))
            .await
            .unwrap();
        assert_eq!(slow.status(), StatusCode::OK);
        let mut slow = slow.into_body();
        let first = slow.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "tick 0\n");

        edge.reload(config(beta)).await.unwrap();
        assert_eq!(who("h", "/").await, "beta");
        kept.ready().await.unwrap();
        let after = kept.send_request(request("h", "/", empty())).await.unwrap();
        assert_eq!(fields(&read_all(after).await.1)["name"], "beta");

        // A configuration that cannot be served is refused, naming the listener, and
        // the last one serves on.
        let mut bad = config(alpha);
        if let Some(http) = &mut bad.listeners[0].http {
            http.certificates = vec![HostCertificate {
                hosts: vec!["h".into()],
                cert_file: "/nonexistent/tls.crt".into(),
                key_file: "/nonexistent/tls.key".into(),
            }];
        }
        let refused = edge.reload(bad).await.unwrap_err().to_string();
        assert!(
            refused.contains("web") && refused.contains("/nonexistent/tls.crt"),
            "{refused}"
        );
        assert_eq!(who("h", "/").await, "beta");

        // The slow response from alpha ran to its end through it all.
        let mut rest = String::from_utf8_lossy(&first).into_owned();
        while let Some(frame) = slow.frame().await {
            let frame = frame.expect("the response in flight is not cut");
            rest.push_str(&String::from_utf8_lossy(frame.data_ref().unwrap()));
        }
        let ticks: Vec<&str> = rest.lines().collect();
        assert_eq!(ticks.len(), 10, "{rest}");
        assert_eq!(ticks[9], "tick 9");
        edge.shutdown().await;
    });
}
