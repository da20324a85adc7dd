//! The admin HTTP listener: `/healthz` and `/readyz` (200 while the balancer says it is
//! ready, else 503) and `/metrics` (Prometheus text format).

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::metrics::LbMetrics;

/// Whether the balancer can serve now, and if not, why.
pub(crate) type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Serves until the task is aborted; aborting it also ends its open connections.
pub(crate) async fn serve(listener: TcpListener, ready: Readiness, metrics: Arc<LbMetrics>) {
    korvet_serving::serve_http1(listener, "admin listener", move |request| {
        respond(request, ready.as_ref(), &metrics)
    })
    .await
}

fn respond(
    request: &Request<Incoming>,
    ready: &(dyn Fn() -> Result<(), String> + Send + Sync),
    metrics: &LbMetrics,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match request.uri().path() {
        "/healthz" | "/readyz" => match ready() {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/metrics" => {
            let mut reply = text(StatusCode::OK, metrics.render());
            reply.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            reply
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    reply
}
