//! Health probes of hosted control planes: one HTTPS `GET /readyz` with the admin
//! certificate, over HTTP/1.1 and a fresh connection, so that a probe says whether a
//! new client could use the API now.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub(crate) async fn readyz(
    tls: Arc<rustls::ClientConfig>,
    target: SocketAddr,
    timeout: Duration,
) -> bool {
    tokio::time::timeout(timeout, get_status(tls, target, "/readyz"))
        .await
        .ok()
        .flatten()
        == Some(200)
}

async fn get_status(tls: Arc<rustls::ClientConfig>, target: SocketAddr, path: &str) -> Option<u16> {
    let mut config = (*tls).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(target).await.ok()?;
    let name = rustls::pki_types::ServerName::IpAddress(target.ip().into());
    let mut stream = connector.connect(name, tcp).await.ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: korvet-platform\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 32];
    let mut read = 0;
    while read < 12 {
        let n = stream.read(&mut head[read..]).await.ok()?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let line = std::str::from_utf8(&head[..read]).ok()?;
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}
