//! The accept loop of every Korvet server (API server, node agent, registry, load
//! balancer, health and metrics endpoints).
//!
//! One loop so that each gets the two things that are easy to forget: a failed accept
//! (out of file descriptors, say) pauses instead of spinning on the error, and the
//! connections belong to the loop, so that aborting its task also ends them.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

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
}
