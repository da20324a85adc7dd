//! The accept loop of every Korvet server (API server, node agent, registry, load
//! balancer, health and metrics endpoints), and [`serve_http1`] for the small
//! plain-HTTP endpoints (`/healthz`, `/metrics`) built on it.
//!
//! One loop so that each gets the two things that are easy to forget: a failed accept
//! (out of file descriptors, say) pauses instead of spinning on the error, and the
//! connections belong to the loop, so that aborting its task also ends them.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The result of serving one connection; an error only reaches the debug log.
pub type ConnectionResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// How long to wait after a failed accept: long enough not to spin on EMFILE, short
/// enough that a connection is not refused for long once descriptors are free.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Accepts connections on `listener` until the task is aborted, serving each with
/// `serve` on its own task; `what` names the server in the log.
pub async fn accept_loop<F, Fut>(listener: TcpListener, what: &'static str, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ConnectionResult> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let connection = serve(tcp, peer);
                    connections.spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(%peer, error = %e, "{what}: connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{what}: accept failed");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves HTTP/1.1 on `listener` until the task is aborted, answering every request
/// with `respond` (which sees only the request head: health and metrics endpoints
/// need no body).
pub async fn serve_http1<F>(listener: TcpListener, what: &'static str, respond: F)
where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let respond = Arc::new(respond);
    accept_loop(listener, what, move |tcp, _| {
        let respond = Arc::clone(&respond);
        async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let reply = respond(&request);
                async move { Ok::<_, Infallible>(reply) }
            });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await?;
            Ok(())
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn serves_each_connection_and_ends_them_with_the_loop() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(accept_loop(listener, "test", |mut tcp, _| async move {
            tcp.write_all(b"hello").await?;
            // Held open until the loop's task is aborted.
            let mut rest = Vec::new();
            tcp.read_to_end(&mut rest).await?;
            Ok(())
        }));
        let mut client = TcpStream::connect(address).await.expect("connect");
        let mut greeting = [0u8; 5];
        client.read_exact(&mut greeting).await.expect("read");
        assert_eq!(&greeting, b"hello");
        server.abort();
        let _ = server.await;
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(0))),
            "the connection outlived its loop: {read:?}"
        );
    }

    #[tokio::test]
    async fn http1_answers_with_the_reply_of_its_path() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(serve_http1(listener, "test", |request| {
            Response::new(Full::new(Bytes::from(request.uri().path().to_string())))
        }));
        let mut client = TcpStream::connect(address).await.expect("connect");
        client
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.expect("read");
        server.abort();
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(reply.ends_with("/healthz"), "{reply}");
    }
}
