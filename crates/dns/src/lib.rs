//! Cluster DNS: an authoritative server for the cluster domain (`cluster.local`)
//! built from watches of Services and EndpointSlices, following the Kubernetes DNS
//! specification; other names are forwarded to the host's resolvers.
//!
//! Records carry a TTL of 5 s (CoreDNS defaults to 30 s) so that clients follow
//! changes quickly; the zone itself changes within one watch event.

pub mod bootstrap;
pub mod forward;
pub mod zone;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hickory_proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record};
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Notify;

pub use zone::Zone;

pub const DEFAULT_DOMAIN: &str = "cluster.local";
/// Seconds clients may cache an answer (CoreDNS: 30).
pub const DEFAULT_TTL: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot listen on {addr}/{proto}: {source} (is another DNS server bound there?)")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        source: std::io::Error,
    },
    #[error("no address to listen on was given")]
    NoListenAddress,
}

#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// UDP and TCP listen addresses (port 0 picks one port free for both).
    pub listen: Vec<SocketAddr>,
    pub domain: String,
    /// Resolvers for names outside the cluster; none means SERVFAIL for those.
    pub upstreams: Vec<SocketAddr>,
    pub forward_timeout: Duration,
    pub ttl: u32,
}

impl DnsConfig {
    /// Serving `listen`, the domain `cluster.local`, forwarding to the nameservers of
    /// the host's `/etc/resolv.conf`.
    pub fn new(listen: Vec<SocketAddr>) -> Self {
        let upstreams = forward::host_resolvers(Path::new("/etc/resolv.conf"), &listen);
        DnsConfig {
            listen,
            domain: DEFAULT_DOMAIN.to_string(),
            upstreams,
            forward_timeout: Duration::from_secs(2),
            ttl: DEFAULT_TTL,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    r#type: String,
    rcode: String,
}

#[derive(Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    duration: Histogram,
    forwarded: Counter,
    forward_failures: Counter,
    zone_rebuilds: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            duration: Histogram::new(exponential_buckets(0.00005, 2.0, 18)),
            forwarded: Counter::default(),
            forward_failures: Counter::default(),
            zone_rebuilds: Counter::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "dns_requests",
            "DNS requests answered, by query type and response code",
            self.requests.clone(),
        );
        registry.register(
            "dns_request_duration_seconds",
            "Time to answer a DNS request",
            self.duration.clone(),
        );
        registry.register(
            "dns_forwarded_requests",
            "Requests for names outside the cluster sent upstream",
            self.forwarded.clone(),
        );
        registry.register(
            "dns_forward_failures",
            "Forwarded requests no upstream answered (SERVFAIL)",
            self.forward_failures.clone(),
        );
        registry.register(
            "dns_zone_rebuilds",
            "Times the cluster zone was rebuilt after a change",
            self.zone_rebuilds.clone(),
        );
    }
}

struct State {
    config: DnsConfig,
    /// `None` until both watches have listed once.
    zone: RwLock<Option<Arc<Zone>>>,
    metrics: Metrics,
}

impl State {
    fn zone(&self) -> Option<Arc<Zone>> {
        self.zone.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn is_cluster_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let domain = self.config.domain.to_ascii_lowercase();
        name == domain || name.ends_with(&format!(".{domain}"))
    }
}

struct Handler(Arc<State>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let state = &self.0;
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        header.set_recursion_available(true);
        let (qtype, sent) = match request.request_info() {
            Ok(info)
                if request.message_type() == MessageType::Query
                    && request.op_code() == OpCode::Query =>
            {
                let query = info.query.original().clone();
                let qtype = query.query_type().to_string();
                let zone = state.zone();
                let answer = zone
                    .as_ref()
                    .and_then(|z| z.lookup(query.name(), query.query_type()));
                let sent = if query.query_class() != DNSClass::IN {
                    header.set_response_code(ResponseCode::NotImp);
                    response
                        .send_response(builder.build_no_records(header))
                        .await
                } else if let Some(answer) = answer {
                    header.set_authoritative(true);
                    header.set_response_code(answer.rcode);
                    response
                        .send_response(builder.build(
                            header,
                            answer.answers.iter(),
                            std::iter::empty(),
                            answer.soa.iter(),
                            answer.additionals.iter(),
                        ))
                        .await
                } else if zone.is_none() && state.is_cluster_name(&query.name().to_ascii()) {
                    // Not yet listed: an empty zone would give false NXDOMAINs.
                    header.set_response_code(ResponseCode::ServFail);
                    response
                        .send_response(builder.build_no_records(header))
                        .await
                } else {
                    state.metrics.forwarded.inc();
                    match forward::forward(
                        &state.config.upstreams,
                        &query,
                        state.config.forward_timeout,
                    )
                    .await
                    {
                        Ok(reply) => {
                            header.set_response_code(reply.response_code());
                            let additionals: Vec<&Record> = reply.additionals().iter().collect();
                            response
                                .send_response(builder.build(
                                    header,
                                    reply.answers().iter(),
                                    reply.name_servers().iter(),
                                    std::iter::empty(),
                                    additionals,
                                ))
                                .await
                        }
                        Err(e) => {
                            state.metrics.forward_failures.inc();
                            tracing::debug!(name = %query.name(), error = %e, "forwarding failed");
                            header.set_response_code(ResponseCode::ServFail);
                            response
                                .send_response(builder.build_no_records(header))
                                .await
                        }
                    }
                };
                (qtype, sent)
            }
            Ok(_) => {
                header.set_response_code(ResponseCode::NotImp);
                (
                    "other".to_string(),
                    response
                        .send_response(builder.build_no_records(header))
                        .await,
                )
            }
            Err(_) => {
                header.set_response_code(ResponseCode::FormErr);
                (
                    "invalid".to_string(),
                    response
                        .send_response(builder.build_no_records(header))
                        .await,
                )
            }
        };
        let rcode = header.response_code();
        state
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                r#type: qtype,
                rcode: rcode.to_str().to_string(),
            })
            .inc();
        state
            .metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        match sent {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(src = %request.src(), error = %e, "could not send a DNS response");
                header.into()
            }
        }
    }
}

/// A running DNS server; dropping it stops the watches but not the listeners, so
/// call [`RunningDns::shutdown`].
pub struct RunningDns {
    pub metrics: Metrics,
    addrs: Vec<SocketAddr>,
    server: ServerFuture<Handler>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    state: Arc<State>,
}

impl RunningDns {
    /// The bound addresses (UDP and TCP share each).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Whether the zone has been built from a complete listing.
    pub fn is_ready(&self) -> bool {
        self.state.zone().is_some()
    }

    pub async fn shutdown(mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Err(e) = self.server.shutdown_gracefully().await {
            tracing::debug!(error = %e, "DNS server shutdown");
        }
    }
}

impl Drop for RunningDns {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.server.shutdown_token().cancel();
    }
}

async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let mut attempts = 0;
    loop {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Bind {
                addr,
                proto: "udp",
                source,
            })?;
        let bound = udp.local_addr().map_err(|source| DnsError::Bind {
            addr,
            proto: "udp",
            source,
        })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // With port 0 the UDP port may be taken for TCP: try another.
            Err(_) if addr.port() == 0 && attempts < 20 => attempts += 1,
            Err(source) => {
                return Err(DnsError::Bind {
                    addr: bound,
                    proto: "tcp",
                    source,
                })
            }
        }
    }
}

/// Starts serving: binds every listen address, then watches Services and
/// EndpointSlices of all namespaces through `client`.
pub async fn spawn(client: kube::Client, config: DnsConfig) -> Result<RunningDns, DnsError> {
    if config.listen.is_empty() {
        return Err(DnsError::NoListenAddress);
    }
    let mut sockets = Vec::new();
    for addr in &config.listen {
        sockets.push(bind(*addr).await?);
    }
    let metrics = Metrics::default();
    let state = Arc::new(State {
        config: config.clone(),
        zone: RwLock::new(None),
        metrics: metrics.clone(),
    });
    let mut server = ServerFuture::new(Handler(state.clone()));
    let mut addrs = Vec::new();
    for (udp, tcp) in sockets {
        if let Ok(addr) = udp.local_addr() {
            addrs.push(addr);
        }
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(10));
    }
    let changed = Arc::new(Notify::new());
    let (services, services_task) = watch::<Service>(client.clone(), changed.clone());
    let (slices, slices_task) = watch::<EndpointSlice>(client, changed.clone());
    let rebuild_task = tokio::spawn(rebuild(state.clone(), services, slices, changed));
    tracing::info!(listen = ?addrs, domain = %config.domain, upstreams = ?config.upstreams, "cluster DNS serving");
    Ok(RunningDns {
        metrics,
        addrs,
        server,
        tasks: vec![services_task, slices_task, rebuild_task],
        state,
    })
}

fn watch<K>(client: kube::Client, changed: Arc<Notify>) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let api: Api<K> = Api::all(client);
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => {
                    tracing::warn!(error = %e, kind = %K::kind(&Default::default()), "cluster DNS watch failed; retrying")
                }
            }
        }
    });
    (reader, task)
}

async fn rebuild(
    state: Arc<State>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    changed: Arc<Notify>,
) {
    if services.wait_until_ready().await.is_err() || slices.wait_until_ready().await.is_err() {
        return;
    }
    // Serials only need to grow; starting at the clock keeps them growing across restarts.
    let mut serial = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1);
    loop {
        let service_list = services.state();
        let slice_list = slices.state();
        let zone = Zone::build(
            &state.config.domain,
            state.config.ttl,
            serial,
            service_list.iter().map(|s| s.as_ref()),
            slice_list.iter().map(|s| s.as_ref()),
        );
        *state.zone.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(zone));
        state.metrics.zone_rebuilds.inc();
        tracing::debug!(
            services = service_list.len(),
            slices = slice_list.len(),
            serial,
            "cluster DNS zone rebuilt"
        );
        serial = serial.wrapping_add(1);
        changed.notified().await;
    }
}
