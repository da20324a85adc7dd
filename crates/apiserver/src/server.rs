//! The API server: HTTPS with client certificates, the request pipeline
//! (authenticate → route → authorize → handle), and the non-resource endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::auth::{self, Attributes, Decision, UserInfo};
use crate::body::{self, Body, Reply};
use crate::error::{ApiError, ApiResult};
use crate::handlers::{self, Call};
use crate::query::Query;
use crate::registry::Registry;
use crate::request::{self, Route};
use crate::storage::Objects;

pub const AGGREGATED_DISCOVERY_TYPE: &str = crate::discovery::AGGREGATED_CONTENT_TYPE;
/// The Kubernetes version whose API this server speaks.
pub const KUBERNETES_VERSION: &str = "v1.33.0";

pub struct ApiServer {
    pub registry: Arc<Registry>,
    pub objects: Objects,
    /// `host:port` clients use, for discovery's `serverAddressByClientCIDRs`.
    pub advertise_address: String,
    pub started: Instant,
    /// Bearer tokens from a static token file.
    pub static_tokens: Vec<crate::tokens::StaticToken>,
    pub metrics: crate::metrics::Metrics,
    /// Issues (TokenRequest) and verifies ServiceAccount tokens; `None` disables both.
    pub sa_token_signer: Option<Arc<crate::sa_tokens::TokenSigner>>,
    /// Validating admission plugins, installed once after start-up.
    pub admission: std::sync::OnceLock<crate::admission::Plugins>,
    /// ClusterIPs come from here (upstream's `--service-cluster-ip-range`); set once at
    /// start-up, else [`crate::allocation::SERVICE_CIDR`].
    pub service_cidr_setting: std::sync::OnceLock<(std::net::Ipv4Addr, u8)>,
    /// TLS of connections to nodes' kubelet servers (`pods/log`): presents the API
    /// server's kubelet-client certificate; set once at start-up.
    pub kubelet_client: std::sync::OnceLock<Arc<rustls::ClientConfig>>,
}

impl ApiServer {
    pub fn new(
        objects: Objects,
        advertise_address: String,
        static_tokens: Vec<crate::tokens::StaticToken>,
        sa_token_signer: Option<Arc<crate::sa_tokens::TokenSigner>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            registry: Arc::new(Registry::with_builtins()),
            objects,
            advertise_address,
            started: Instant::now(),
            static_tokens,
            metrics: crate::metrics::Metrics::new(),
            sa_token_signer,
            admission: std::sync::OnceLock::new(),
            service_cidr_setting: std::sync::OnceLock::new(),
            kubelet_client: std::sync::OnceLock::new(),
        })
    }

    pub fn service_cidr(&self) -> (std::net::Ipv4Addr, u8) {
        self.service_cidr_setting
            .get()
            .copied()
            .unwrap_or(crate::allocation::SERVICE_CIDR)
    }

    /// Creates what every cluster starts with: the system namespaces and the default
    /// RBAC policy. Existing objects are left as they are.
    pub async fn bootstrap(&self) -> ApiResult<()> {
        let namespaces = self
            .registry
            .get("", "v1", "namespaces")
            .ok_or_else(|| ApiError::internal("no namespaces resource"))?;
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let mut ns =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            crate::strategy::namespace_defaults(&mut ns);
            crate::strategy::prepare_create(&namespaces, &mut ns);
            ns["status"] = json!({"phase": "Active"});
            self.objects
                .create(&namespaces.key(None, name), &ns)
                .await?;
        }
        if let Some(classes) = self
            .registry
            .get("scheduling.k8s.io", "v1", "priorityclasses")
        {
            for mut class in crate::priority::bootstrap_classes() {
                let name = class["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                crate::strategy::prepare_create(&classes, &mut class);
                self.objects
                    .create(&classes.key(None, &name), &class)
                    .await?;
            }
        }
        for (plural, mut object) in crate::rbac::bootstrap_policy() {
            let Some(resource) = self
                .registry
                .get("rbac.authorization.k8s.io", "v1", &plural)
            else {
                continue;
            };
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            crate::strategy::prepare_create(&resource, &mut object);
            self.objects
                .create(&resource.key(None, &name), &object)
                .await?;
        }
        Ok(())
    }

    /// Serves one request from an authenticated (or anonymous) user.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        user: Option<UserInfo>,
    ) -> Response<Body> {
        let started = Instant::now();
        let (parts, incoming) = req.into_parts();
        let method = parts.method.clone();
        let path = parts.uri.path().to_string();
        // Query and route are read once, for the handlers and for the metrics labels.
        let parsed = Query::parse(parts.uri.query())
            .and_then(|query| Ok((request::route(method.as_str(), &path, query.watch)?, query)));
        let (verb, group, resource) = match &parsed {
            Ok((Route::Resource(r), _)) => (
                r.verb.as_str().to_string(),
                r.group.clone(),
                r.resource.clone(),
            ),
            _ => (method.as_str().to_lowercase(), String::new(), String::new()),
        };
        // Everything logged while serving (admission, storage, watches) carries the request.
        let span = tracing::info_span!(
            "request",
            verb = %verb,
            resource = %resource,
            namespace = tracing::field::Empty,
            name = tracing::field::Empty,
            user = user.as_ref().map(|u| u.name.as_str()),
            status = tracing::field::Empty,
        );
        if let Ok((Route::Resource(r), _)) = &parsed {
            if let Some(namespace) = &r.namespace {
                span.record("namespace", namespace.as_str());
            }
            if let Some(name) = &r.name {
                span.record("name", name.as_str());
            }
        }
        let outcome = match parsed {
            Ok((route, query)) => {
                self.dispatch(parts, incoming, route, query, user.as_ref())
                    .instrument(span.clone())
                    .await
            }
            Err(err) => Err(err),
        };
        let reply = match outcome {
            Ok(reply) => reply,
            Err(err) => handlers::error_reply(&err),
        };
        let status = reply.status.as_u16();
        span.record("status", status);
        self.metrics
            .latency
            .get_or_create(&crate::metrics::LatencyLabels {
                verb: verb.clone(),
                resource: resource.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .requests
            .get_or_create(&crate::metrics::RequestLabels {
                verb,
                group,
                resource,
                code: status.to_string(),
            })
            .inc();
        span.in_scope(|| {
            tracing::debug!(%method, %path, elapsed_us = started.elapsed().as_micros() as u64, "served")
        });
        reply.into_response()
    }

    async fn dispatch(
        self: &Arc<Self>,
        mut parts: http::request::Parts,
        incoming: Incoming,
        route: Route,
        query: Query,
        user: Option<&UserInfo>,
    ) -> ApiResult<Reply> {
        let path = parts.uri.path().to_string();
        // Health and version are public, as upstream's system:public-info-viewer makes them.
        if let Route::NonResource(p) = &route {
            if let Some(reply) = self.public_endpoint(p).await {
                return Ok(reply);
            }
        }
        let user = user.ok_or_else(ApiError::unauthorized)?;
        match route {
            Route::NonResource(p) => {
                self.check(user, non_resource_attributes(&parts.method, &p))
                    .await?;
                self.non_resource(&p, &parts.headers).await
            }
            Route::Discovery {
                group,
                version,
                legacy,
            } => {
                self.check(user, non_resource_attributes(&parts.method, &path))
                    .await?;
                self.discovery(group, version, legacy, &parts.headers)
            }
            Route::Resource(rr) => {
                let resource = self
                    .registry
                    .get(&rr.group, &rr.version, &rr.resource)
                    .ok_or_else(|| ApiError::no_route(&path))?;
                let attrs = Attributes {
                    verb: rr.verb.as_str().to_string(),
                    api_group: rr.group.clone(),
                    resource: rr.resource.clone(),
                    subresource: rr.subresource.clone().unwrap_or_default(),
                    namespace: rr.namespace.clone().unwrap_or_default(),
                    name: rr.name.clone().unwrap_or_default(),
                    path: None,
                };
                let streaming = rr.group.is_empty()
                    && rr.resource == "pods"
                    && rr
                        .subresource
                        .as_deref()
                        .is_some_and(|s| crate::pod_streams::SUBRESOURCES.contains(&s));
                // Upstream (AuthorizePodWebsocketUpgradeCreatePermission, on since 1.31)
                // also asks for `create` of a WebSocket GET of these subresources.
                let also_create = streaming && parts.method == Method::GET;
                self.check(user, attrs.clone()).await?;
                if also_create {
                    self.check(
                        user,
                        Attributes {
                            verb: "create".to_string(),
                            ..attrs
                        },
                    )
                    .await?;
                }
                let on_upgrade = if streaming {
                    parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
                } else {
                    None
                };
                let body = if matches!(
                    parts.method,
                    Method::POST | Method::PUT | Method::PATCH | Method::DELETE
                ) {
                    body::read_limited(incoming).await?
                } else {
                    bytes::Bytes::new()
                };
                let call = Call {
                    server: self,
                    user,
                    resource,
                    request: rr,
                    query,
                    headers: &parts.headers,
                    body,
                };
                if streaming && call.resource.kind == "Pod" {
                    return crate::pod_streams::serve(&call, &parts.method, on_upgrade).await;
                }
                handlers::serve(call).await
            }
        }
    }

    pub async fn check(&self, user: &UserInfo, attrs: Attributes) -> ApiResult<()> {
        match auth::authorize(&self.objects, user, &attrs).await? {
            Decision::Allow => Ok(()),
            Decision::Deny => Err(ApiError::new(
                403,
                "Forbidden",
                crate::rbac::forbidden_message(user, &attrs),
            )),
        }
    }

    async fn public_endpoint(&self, path: &str) -> Option<Reply> {
        match path {
            "/version" | "/version/" => Some(Reply::json(
                StatusCode::OK,
                json!({
                    "major": "1", "minor": "33", "gitVersion": KUBERNETES_VERSION,
                    "gitCommit": "korvet", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "n/a (korvet, Rust)", "compiler": "rustc", "platform": "linux/amd64",
                }),
            )),
            "/healthz" | "/livez" | "/readyz" => {
                Some(match self.objects.current_revision().await {
                    Ok(_) => Reply::text(StatusCode::OK, "ok"),
                    Err(_) => Reply::text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
                })
            }
            _ => None,
        }
    }

    async fn non_resource(&self, path: &str, headers: &http::HeaderMap) -> ApiResult<Reply> {
        if path == "/metrics" {
            return Ok(Reply {
                status: StatusCode::OK,
                headers: Vec::new(),
                body: body::ReplyBody::Raw(
                    "text/plain; version=0.0.4",
                    bytes::Bytes::from(self.metrics.render()),
                ),
            });
        }
        if path == "/openapi/v2" {
            let document = crate::openapi::v2_document(&self.registry, &custom_schema);
            let accept = headers
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            if crate::openapi_proto::wanted(accept) {
                return Ok(Reply {
                    status: StatusCode::OK,
                    headers: Vec::new(),
                    body: body::ReplyBody::Raw(
                        crate::openapi_proto::CONTENT_TYPE,
                        bytes::Bytes::from(crate::openapi_proto::document(&document)),
                    ),
                });
            }
            return Ok(Reply::json(StatusCode::OK, document));
        }
        if path == "/openapi/v3" || path == "/openapi/v3/" {
            return Ok(Reply::json(
                StatusCode::OK,
                crate::openapi::v3_root_with(&self.registry, &custom_schema),
            ));
        }
        if let Some(gv) = path.strip_prefix("/openapi/v3/") {
            let (group, version) = match gv.split('/').collect::<Vec<_>>().as_slice() {
                ["api", v] => (String::new(), v.to_string()),
                ["apis", g, v] => (g.to_string(), v.to_string()),
                _ => return Err(ApiError::no_route(path)),
            };
            return crate::openapi::cached_document(
                &self.registry,
                &group,
                &version,
                &custom_schema,
            )
            .map(|doc| Reply {
                status: StatusCode::OK,
                headers: Vec::new(),
                body: body::ReplyBody::Raw("application/json", doc.json.clone()),
            })
            .ok_or_else(|| ApiError::no_route(path));
        }
        Err(ApiError::no_route(path))
    }

    fn discovery(
        &self,
        group: Option<String>,
        version: Option<String>,
        legacy: bool,
        headers: &http::HeaderMap,
    ) -> ApiResult<Reply> {
        let aggregated = headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(crate::discovery::accepts_aggregated);
        let registry = &self.registry;
        let value: Option<Value> = match (group, version) {
            (None, None) if aggregated => Some(crate::discovery::aggregated(registry, legacy)),
            (None, None) if legacy => Some(crate::discovery::api_versions(&self.advertise_address)),
            (None, None) => Some(crate::discovery::api_group_list(registry)),
            (Some(g), Some(v)) => crate::discovery::api_resource_list(registry, &g, &v),
            (Some(g), None) => crate::discovery::api_group(registry, &g),
            (None, Some(_)) => None,
        };
        let value = value.ok_or_else(|| ApiError::no_route("discovery"))?;
        let reply = if aggregated && value["kind"] == "APIGroupDiscoveryList" {
            Reply {
                status: StatusCode::OK,
                headers: Vec::new(),
                body: body::ReplyBody::Raw(
                    AGGREGATED_DISCOVERY_TYPE,
                    bytes::Bytes::from(value.to_string()),
                ),
            }
        } else {
            Reply::json(StatusCode::OK, value)
        };
        Ok(reply.with_header("Vary", "Accept"))
    }
}

fn custom_schema(resource: &crate::registry::ResourceType) -> Option<Value> {
    resource.custom_schema.as_deref().cloned()
}

fn non_resource_attributes(method: &Method, path: &str) -> Attributes {
    let verb = match *method {
        Method::GET | Method::HEAD => "get",
        Method::POST => "post",
        Method::PUT => "put",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "get",
    };
    Attributes {
        verb: verb.to_string(),
        api_group: String::new(),
        resource: String::new(),
        subresource: String::new(),
        namespace: String::new(),
        name: String::new(),
        path: Some(path.to_string()),
    }
}

/// Accepts TLS connections on `listener` and serves HTTP/1.1 and HTTP/2 on them until
/// the task is dropped, which also ends every open connection (and its watches).
pub async fn serve(server: Arc<ApiServer>, listener: TcpListener, tls: rustls::ServerConfig) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    korvet_serving::accept_loop(listener, "API server", move |tcp, peer| {
        serve_connection(server.clone(), acceptor.clone(), tcp, peer)
    })
    .await
}

async fn serve_connection(
    server: Arc<ApiServer>,
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
) -> korvet_serving::ConnectionResult {
    let tls = acceptor.accept(tcp).await?;
    let user = crate::pki::identity_from_peer(tls.get_ref().1.peer_certificates())
        .map(|(name, groups)| UserInfo::authenticated(name, groups));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let server = server.clone();
        let user = user.clone();
        async move {
            let user = match user {
                Some(u) => Some(u),
                None => crate::tokens::authenticate(&server, req.headers()).await,
            };
            Ok::<_, std::convert::Infallible>(server.handle(req, user).await)
        }
    });
    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .await?;
    let _ = peer;
    Ok(())
}
