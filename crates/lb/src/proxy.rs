//! One client connection: choose a backend, connect (trying the next on failure), send
//! the PROXY protocol header if the listener has one, then copy both ways, passing a
//! half-close on to the other side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::pool::{Backend, BackendPool};

/// Proxies `client` (a TCP stream, or TLS over one) to a backend of `pool`, writing
/// `header` to the backend first.
pub(crate) async fn serve<S>(
    client: S,
    peer: SocketAddr,
    header: Option<Vec<u8>>,
    pool: Arc<BackendPool>,
    connect_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Some((backend, mut upstream)) = connect(&pool, connect_timeout).await else {
        pool.listener_metrics.unserved.inc();
        tracing::debug!(%peer, "no backend can take the connection; closing it");
        return;
    };
    let _active = backend.open_connection();
    let _ = upstream.set_nodelay(true);
    if let Some(header) = header {
        if let Err(e) = upstream.write_all(&header).await {
            tracing::debug!(%peer, backend = %backend.addr, "writing the PROXY header: {e}");
            return;
        }
    }
    if let Err(e) = splice(client, upstream, &backend).await {
        tracing::debug!(%peer, backend = %backend.addr, "connection ended: {e}");
    }
}

/// The first healthy backend, in the pool's order, that accepts a connection. Each one
/// that does not is marked down at once, so that later clients skip it too.
async fn connect(
    pool: &BackendPool,
    connect_timeout: Duration,
) -> Option<(Arc<Backend>, TcpStream)> {
    for backend in pool.candidates() {
        // Another connection may have found it dead meanwhile.
        if !backend.is_up() {
            continue;
        }
        let error = match timeout(connect_timeout, TcpStream::connect(backend.addr)).await {
            Ok(Ok(stream)) => return Some((backend, stream)),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {connect_timeout:?}"),
        };
        if backend.mark_down() {
            tracing::warn!(backend = %backend.addr, "backend is down: connect failed: {error}");
            pool.changed.notify_one();
        }
    }
    None
}

/// Copies both ways until both directions have ended; an error in either ends both.
async fn splice<S>(client: S, upstream: TcpStream, backend: &Backend) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = upstream.into_split();
    let to_backend = copy_half(client_read, upstream_write, &backend.metrics.bytes_in);
    let to_client = copy_half(upstream_read, client_write, &backend.metrics.bytes_out);
    tokio::pin!(to_backend, to_client);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            result = &mut to_backend, if !up_done => {
                result?;
                up_done = true;
            }
            result = &mut to_client, if !down_done => {
                result?;
                down_done = true;
            }
        }
    }
    Ok(())
}

/// Copies until EOF, then shuts down the writer so the other side sees the half-close.
async fn copy_half<R, W>(mut reader: R, mut writer: W, bytes: &Counter) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return writer.shutdown().await;
        }
        writer.write_all(&buf[..n]).await?;
        bytes.inc_by(n as u64);
    }
}
