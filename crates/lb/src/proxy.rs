//! One client connection: choose a backend, connect (trying the next on failure), then
//! copy both ways, passing a half-close on to the other side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::metrics::LbMetrics;
use crate::pool::{Backend, BackendPool};

pub(crate) async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    pool: Arc<BackendPool>,
    metrics: Arc<LbMetrics>,
    connect_timeout: Duration,
) {
    let Some((backend, upstream)) = connect(&pool, connect_timeout).await else {
        metrics.unserved.inc();
        tracing::debug!(%peer, "no backend can take the connection; closing it");
        return;
    };
    let _active = backend.open_connection();
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
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
        }
    }
    None
}

/// Copies both ways until both directions have ended; an error in either ends both.
async fn splice(client: TcpStream, upstream: TcpStream, backend: &Backend) -> std::io::Result<()> {
    let (client_read, client_write) = client.into_split();
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
