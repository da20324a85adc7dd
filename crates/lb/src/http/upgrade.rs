//! HTTP/1.1 `Upgrade` (WebSockets and the like): the request goes to the backend with
//! its `Upgrade`; when the backend answers 101, hyper hands over both connections and
//! the bytes are copied both ways until either side ends.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

/// The protocol a request asks to switch to: an HTTP/1.1 request with `Upgrade` named
/// in its `Connection` (HTTP/2 has no `Upgrade`).
pub(crate) fn requested<B>(request: &Request<B>) -> Option<HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let named = request
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    match named {
        true => request.headers().get(header::UPGRADE).cloned(),
        false => None,
    }
}

/// Puts back the two headers of a switch, which hop-by-hop stripping removed.
pub(crate) fn ask(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Waits for both sides to be handed over, then copies until either ends or the
/// listener stops (`closing` turns true).
pub(crate) async fn splice(
    client_side: OnUpgrade,
    backend_side: OnUpgrade,
    mut closing: watch::Receiver<bool>,
    client: SocketAddr,
    endpoint: SocketAddr,
) {
    let (client_io, backend_io) = match tokio::try_join!(client_side, backend_side) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(%client, %endpoint, "upgrade failed: {e}");
            return;
        }
    };
    let (mut client_io, mut backend_io) = (TokioIo::new(client_io), TokioIo::new(backend_io));
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client_io, &mut backend_io) => match copied {
            Ok((up, down)) => tracing::debug!(%client, %endpoint, up, down, "upgraded connection ended"),
            Err(e) => tracing::debug!(%client, %endpoint, "upgraded connection broke: {e}"),
        },
        _ = closing.wait_for(|closing| *closing) => {}
    }
}
