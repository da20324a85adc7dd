//! Health-check node ports of Services with `externalTrafficPolicy: Local`: load
//! balancers probe them to learn which nodes have endpoints, as upstream kube-proxy's
//! (200 with the count of local endpoints, else 503).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::model::HealthCheck;

/// The body and status a probe gets.
pub fn answer(check: &HealthCheck) -> (u16, String) {
    let body = serde_json::json!({
        "service": {"namespace": check.namespace, "name": check.name},
        "localEndpoints": check.local_endpoints,
        "serviceProxyHealthy": true,
    })
    .to_string();
    let status = if check.local_endpoints > 0 { 200 } else { 503 };
    (status, body)
}

/// One listener per health-check node port, updated from each new model.
#[derive(Default)]
pub struct HealthServers {
    running: HashMap<u16, (tokio::task::JoinHandle<()>, watch::Sender<HealthCheck>)>,
}

impl HealthServers {
    pub fn update(&mut self, checks: &BTreeMap<u16, HealthCheck>) {
        self.running.retain(|port, (task, _)| {
            let keep = checks.contains_key(port);
            if !keep {
                task.abort();
            }
            keep
        });
        for (port, check) in checks {
            match self.running.get(port) {
                Some((_, state)) => {
                    state.send_if_modified(|current| {
                        let changed = current != check;
                        *current = check.clone();
                        changed
                    });
                }
                None => {
                    let (state, reader) = watch::channel(check.clone());
                    let task = tokio::spawn(serve(*port, reader));
                    self.running.insert(*port, (task, state));
                }
            }
        }
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for (task, _) in self.running.values() {
            task.abort();
        }
    }
}

async fn serve(port: u16, state: watch::Receiver<HealthCheck>) {
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let listener = loop {
        match TcpListener::bind(address).await {
            Ok(listener) => break listener,
            Err(e) => {
                tracing::warn!(%address, error = %e, "health-check node port not served; retrying in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    korvet_serving::accept_loop(listener, "health-check node port", move |mut tcp, _| {
        let (status, body) = answer(&state.borrow());
        async move {
            // The request itself does not matter; read its head so the client is not reset.
            let mut buf = [0u8; 2048];
            let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await;
            let reason = if status == 200 {
                "OK"
            } else {
                "Service Unavailable"
            };
            let response = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
                 X-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            tcp.write_all(response.as_bytes()).await?;
            tcp.shutdown().await?;
            Ok(())
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_upstream() {
        let mut check = HealthCheck {
            namespace: "default".into(),
            name: "web".into(),
            local_endpoints: 2,
        };
        let (status, body) = answer(&check);
        assert_eq!(status, 200);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["service"]["namespace"], "default");
        assert_eq!(body["service"]["name"], "web");
        assert_eq!(body["localEndpoints"], 2);
        check.local_endpoints = 0;
        assert_eq!(answer(&check).0, 503);
    }

    #[test]
    fn metrics_are_registered() {
        let text = crate::metrics::Metrics::new().encode();
        for name in [
            "korvet_node_proxy_sync_duration_seconds",
            "korvet_node_proxy_rules_services",
            "korvet_node_proxy_rules_endpoints",
            "korvet_node_proxy_sync_errors_total",
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
    }
}
