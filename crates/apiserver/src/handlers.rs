//! The one set of handlers that serves every resource: get, list, watch, create, update,
//! patch, delete, deletecollection, and the status and scale subresources.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, StatusCode};
use korvet_apimachinery::selector::{FieldSelector, LabelSelector};
use korvet_store::{EventKind, Revision};
use serde_json::{json, Value};

use crate::auth::UserInfo;
use crate::body::{self, Reply};
use crate::error::{ApiError, ApiResult, Cause};
use crate::query::{self, Query};
use crate::registry::ResourceType;
use crate::request::{ResourceRequest, Verb};
use crate::server::ApiServer;
use crate::storage::{self, Written};
use crate::{strategy, table};

/// How many times a write without a client-given resourceVersion is retried when the
/// object changed underneath it.
const WRITE_RETRIES: usize = 8;
/// Longest watch when the client names no timeout (upstream picks 30–60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// One resource request being served.
pub(crate) struct Call<'a> {
    pub server: &'a Arc<ApiServer>,
    pub user: &'a UserInfo,
    pub resource: Arc<ResourceType>,
    pub request: ResourceRequest,
    pub query: Query,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
}

impl Call<'_> {
    fn name(&self) -> &str {
        self.request.name.as_deref().unwrap_or_default()
    }

    fn namespace(&self) -> Option<&str> {
        if self.resource.namespaced {
            self.request.namespace.as_deref()
        } else {
            None
        }
    }

    fn key(&self) -> String {
        self.resource.key(self.namespace(), self.name())
    }

    fn not_found(&self) -> ApiError {
        ApiError::not_found(&self.resource.target(self.name()))
    }

    fn wants_table(&self) -> bool {
        body::accepts_table(self.headers)
    }

    fn reply_object(&self, status: StatusCode, object: Value) -> Reply {
        if self.wants_table() {
            let columns = self.columns();
            let rv = object["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let include = self.query.include_object.as_deref().unwrap_or("Metadata");
            return Reply::json(
                status,
                table::build(&columns, &[object], &rv, None, include),
            );
        }
        Reply::json(status, object)
    }

    fn columns(&self) -> Vec<table::Column> {
        if self.resource.columns.is_empty() {
            table::default_columns()
        } else {
            self.resource.columns.clone()
        }
    }
}

pub(crate) async fn serve(call: Call<'_>) -> ApiResult<Reply> {
    if call.resource.namespaced
        && call.request.namespace.is_none()
        && !matches!(call.request.verb, Verb::List | Verb::Watch)
    {
        return Err(ApiError::not_found(&call.resource.target(call.name())));
    }
    if crate::resource_metrics::is_metrics(&call.resource) {
        return crate::resource_metrics::serve(&call).await;
    }
    if call.resource.virtual_create {
        return match call.request.verb {
            Verb::Create => crate::reviews::create(&call).await,
            _ => Err(ApiError::method_not_allowed(format!(
                "{} only supports create",
                call.resource.plural
            ))),
        };
    }
    match (call.request.verb, call.request.subresource.as_deref()) {
        (Verb::Get, None) => get(&call).await,
        (Verb::List, None) => list(&call).await,
        (Verb::Watch, None) => watch(&call).await,
        (Verb::Create, None) => create(&call).await,
        (Verb::Update, None) => update(&call, Part::Main).await,
        (Verb::Patch, None) => patch(&call, Part::Main).await,
        (Verb::Delete, None) => delete(&call).await,
        (Verb::DeleteCollection, None) => delete_collection(&call).await,
        (Verb::Get, Some("status")) if call.resource.has_status() => get(&call).await,
        (Verb::Update, Some("status")) if call.resource.has_status() => {
            update(&call, Part::Status).await
        }
        (Verb::Patch, Some("status")) if call.resource.has_status() => {
            patch(&call, Part::Status).await
        }
        (Verb::Get, Some("approval")) if call.resource.has_subresource("approval") => {
            get(&call).await
        }
        (Verb::Update, Some("approval")) if call.resource.has_subresource("approval") => {
            update(&call, Part::Approval).await
        }
        (Verb::Patch, Some("approval")) if call.resource.has_subresource("approval") => {
            patch(&call, Part::Approval).await
        }
        (Verb::Update, Some("finalize")) if call.resource.kind == "Namespace" => {
            update(&call, Part::Finalize).await
        }
        (Verb::Get, Some("scale")) if call.resource.has_subresource("scale") => {
            crate::subresources::get_scale(&call).await
        }
        (Verb::Update | Verb::Patch, Some("scale")) if call.resource.has_subresource("scale") => {
            crate::subresources::update_scale(&call).await
        }
        (Verb::Create, Some("binding")) if call.resource.kind == "Pod" => {
            crate::subresources::bind_pod(&call).await
        }
        (Verb::Create, Some("eviction")) if call.resource.kind == "Pod" => {
            crate::eviction::evict_pod(&call).await
        }
        (Verb::Get, Some("proxy")) if call.resource.kind == "Node" => {
            crate::pod_logs::node_proxy(&call).await
        }
        (Verb::Get, Some("log")) if call.resource.kind == "Pod" => {
            crate::pod_logs::get(&call).await
        }
        (Verb::Create, Some("token")) if call.resource.kind == "ServiceAccount" => {
            crate::subresources::create_token(&call).await
        }
        (_, Some(sub)) => Err(ApiError::no_route(&format!(
            "{}/{sub} does not support {}",
            call.resource.plural,
            call.request.verb.as_str()
        ))),
    }
}

pub(crate) async fn load(call: &Call<'_>) -> ApiResult<(Value, Revision)> {
    let (stored, revision) = call
        .server
        .objects
        .get(&call.key())
        .await?
        .ok_or_else(|| call.not_found())?;
    Ok((call.resource.present(stored), revision))
}

async fn get(call: &Call<'_>) -> ApiResult<Reply> {
    let (object, _) = load(call).await?;
    Ok(call.reply_object(StatusCode::OK, object))
}

/// The label and field selectors of a list or watch, as one predicate.
struct Filter {
    labels: Option<LabelSelector>,
    fields: Option<FieldSelector>,
    resource: Arc<ResourceType>,
}

impl Filter {
    fn from_query(resource: &Arc<ResourceType>, query: &Query) -> ApiResult<Self> {
        let labels = match query
            .label_selector
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            Some(s) => {
                Some(LabelSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?)
            }
            None => None,
        };
        let fields = match query
            .field_selector
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            Some(s) => {
                let selector =
                    FieldSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?;
                let mut supported = vec!["metadata.name", "metadata.namespace"];
                supported.extend(resource.selectable_fields.iter().copied());
                selector
                    .check_supported(&supported)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                Some(selector)
            }
            None => None,
        };
        Ok(Self {
            labels,
            fields,
            resource: resource.clone(),
        })
    }

    fn is_empty(&self) -> bool {
        self.labels.is_none() && self.fields.is_none()
    }

    fn matches(&self, object: &Value) -> bool {
        if let Some(labels) = &self.labels {
            let map: BTreeMap<String, String> = object["metadata"]["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            if !labels.matches(&map) {
                return false;
            }
        }
        if let Some(fields) = &self.fields {
            let lookup = |field: &str| -> Option<String> {
                match field {
                    "metadata.name" => Some(
                        object["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    ),
                    "metadata.namespace" => Some(
                        object["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    ),
                    other => self.resource.field_value.and_then(|f| f(object, other)),
                }
            };
            if !fields.matches(&lookup) {
                return false;
            }
        }
        true
    }
}

fn parse_revision(value: &str) -> ApiResult<Revision> {
    value.parse::<Revision>().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid resource version {value:?}: expected an integer"
        ))
    })
}

async fn list(call: &Call<'_>) -> ApiResult<Reply> {
    let filter = Filter::from_query(&call.resource, &call.query)?;
    let prefix = call.resource.list_prefix(call.namespace());
    let (revision, start) = match &call.query.continue_token {
        Some(token) => {
            let (rv, relative) = query::decode_continue(token)?;
            let mut start = prefix.as_bytes().to_vec();
            start.extend_from_slice(&relative);
            (rv, Some(start))
        }
        None => {
            let rv = match (
                call.query
                    .resource_version
                    .as_deref()
                    .filter(|v| !v.is_empty() && *v != "0"),
                call.query.resource_version_match.as_deref(),
            ) {
                (Some(v), Some("Exact")) => parse_revision(v)?,
                (Some(v), _) => {
                    // NotOlderThan: the latest state is never older than what was asked.
                    let wanted = parse_revision(v)?;
                    let current = call.server.objects.current_revision().await?;
                    if wanted > current {
                        return Err(korvet_store::StoreError::FutureRevision {
                            requested: wanted,
                            current,
                        }
                        .into());
                    }
                    0
                }
                (None, _) => 0,
            };
            (rv, None)
        }
    };
    let page = call
        .server
        .objects
        .list(&prefix, revision, start, call.query.limit, &|o| filter.matches(o))
        .await
        .map_err(|e| {
            if e.code == 410 && call.query.continue_token.is_some() {
                ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
            } else {
                e
            }
        })?;
    let mut page = page;
    page.items = page
        .items
        .into_iter()
        .map(|o| call.resource.present(o))
        .collect();
    let continue_token = page
        .next_start
        .as_ref()
        .map(|next| query::encode_continue(page.revision, &next[prefix.len()..]));
    let rv = page.revision.to_string();
    if call.wants_table() {
        let include = call.query.include_object.as_deref().unwrap_or("Metadata");
        return Ok(Reply::json(
            StatusCode::OK,
            table::build(
                &call.columns(),
                &page.items,
                &rv,
                continue_token.as_deref(),
                include,
            ),
        ));
    }
    let mut metadata = json!({"resourceVersion": rv});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    // Built by hand so that the items move into the reply instead of being copied.
    let mut list = serde_json::Map::new();
    list.insert("kind".into(), json!(call.resource.list_kind));
    list.insert("apiVersion".into(), json!(call.resource.api_version()));
    list.insert("metadata".into(), metadata);
    list.insert("items".into(), Value::Array(page.items));
    Ok(Reply::json(StatusCode::OK, Value::Object(list)))
}

fn watch_event(kind: &str, object: Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

async fn watch(call: &Call<'_>) -> ApiResult<Reply> {
    let filter = Filter::from_query(&call.resource, &call.query)?;
    let prefix = call.resource.list_prefix(call.namespace());
    let objects = call.server.objects.clone();
    let rv = call
        .query
        .resource_version
        .as_deref()
        .filter(|v| !v.is_empty() && *v != "0");
    // Without a resource version a watch starts with the current state as ADDED events.
    let (initial, from) = match rv {
        Some(v) => (Vec::new(), parse_revision(v)? + 1),
        None => {
            let page = objects
                .list(&prefix, 0, None, 0, &|o| filter.matches(o))
                .await?;
            (page.items, page.revision + 1)
        }
    };
    let timeout = call
        .query
        .timeout_seconds
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_WATCH_TIMEOUT);
    let bookmarks = call.query.allow_watch_bookmarks;
    let resource = call.resource.clone();
    let watch = objects.watch(&prefix, from).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let server = call.server.clone();
    tokio::spawn(async move {
        server.metrics.watches.inc();
        let _serving = WatchGauge(server.clone());
        for object in initial {
            if tx
                .send(watch_event("ADDED", resource.present(object)))
                .await
                .is_err()
            {
                return;
            }
        }
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.send(watch_event("ERROR", e.to_status())).await;
                return;
            }
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let response = tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                r = watch.next() => r,
            };
            let response = match response {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    let _ = tx
                        .send(watch_event("ERROR", ApiError::from(e).to_status()))
                        .await;
                    return;
                }
                None => return,
            };
            if response.events.is_empty() {
                if bookmarks {
                    let bookmark = json!({
                        "kind": resource.kind,
                        "apiVersion": resource.api_version(),
                        "metadata": {"resourceVersion": response.revision.to_string()},
                    });
                    if tx.send(watch_event("BOOKMARK", bookmark)).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            for event in response.events {
                let Some((kind, object)) = translate(&event, &filter) else {
                    continue;
                };
                if tx
                    .send(watch_event(kind, resource.present(object)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(Reply::stream(stream.boxed()))
}

/// Counts a watch as served until its task ends, however it ends.
struct WatchGauge(Arc<ApiServer>);

impl Drop for WatchGauge {
    fn drop(&mut self) {
        self.0.metrics.watches.dec();
    }
}

/// Turns a store event into a watch event, honouring selectors as upstream does: an
/// object that starts matching is ADDED, one that stops matching is DELETED.
fn translate(event: &korvet_store::Event, filter: &Filter) -> Option<(&'static str, Value)> {
    let prev = event
        .prev_kv
        .as_ref()
        .and_then(|kv| storage::decode(kv).ok());
    let prev_matches = prev.as_ref().is_some_and(|p| filter.matches(p));
    match event.kind {
        EventKind::Put => {
            let object = storage::decode(&event.kv).ok()?;
            let now_matches = filter.matches(&object);
            match (
                prev.is_some() && (prev_matches || filter.is_empty()),
                now_matches,
            ) {
                (true, true) => Some(("MODIFIED", object)),
                (false, true) => Some(("ADDED", object)),
                (true, false) => Some(("DELETED", object)),
                (false, false) => None,
            }
        }
        EventKind::Delete => {
            let mut object = prev?;
            if !prev_matches {
                return None;
            }
            storage::set_resource_version(&mut object, event.kv.mod_revision);
            Some(("DELETED", object))
        }
    }
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Main,
    Status,
    /// `pods/binding`: the spec's node and the `PodScheduled` condition in one write.
    Binding,
    /// `namespaces/NAME/finalize`: only `spec.finalizers`.
    Finalize,
    /// `certificatesigningrequests/NAME/approval`: only `status.conditions`.
    Approval,
}

/// Checks that a body names the kind and version of the endpoint it was sent to.
fn check_type(resource: &ResourceType, object: &Value) -> ApiResult<()> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    if api_version.is_empty() && kind.is_empty() {
        return Ok(());
    }
    if kind != resource.kind || api_version != resource.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({}) or the kind ({kind}) does not match {}",
            resource.api_version(),
            resource.kind
        )));
    }
    Ok(())
}

/// Defaults, typed normalisation (unknown fields per `fieldValidation`) and validation.
/// Returns warnings for the `Warning` header.
/// Unknown fields per `fieldValidation`: refused (Strict), warned about (Warn, the
/// default), or dropped silently (Ignore).
fn field_validation(
    call: &Call<'_>,
    unknown: &[String],
    warnings: &mut Vec<String>,
) -> ApiResult<()> {
    if unknown.is_empty() {
        return Ok(());
    }
    let messages: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    match call.query.field_validation.as_deref() {
        Some("Strict") => Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            messages.join(", ")
        ))),
        Some("Ignore") => Ok(()),
        _ => {
            warnings.extend(messages);
            Ok(())
        }
    }
}

fn admit(call: &Call<'_>, object: &mut Value, old: Option<&Value>) -> ApiResult<Vec<String>> {
    let resource = &call.resource;
    object["apiVersion"] = json!(resource.api_version());
    object["kind"] = json!(resource.kind);
    if let Some(defaults) = resource.defaults {
        defaults(object);
    }
    let mut warnings = Vec::new();
    if let Some(normalize) = resource.normalize {
        let normalized = normalize(object.clone())
            .map_err(|e| ApiError::bad_request(format!("{} in body: {e}", resource.kind)))?;
        let unknown = crate::validation::unknown_fields(object, &normalized);
        field_validation(call, &unknown, &mut warnings)?;
        *object = normalized;
    }
    let mut schema_causes = Vec::new();
    if let Some(schema) = &resource.custom_schema {
        let sent = object.clone();
        schema_causes = crate::custom_schema::apply(schema, object);
        let unknown = crate::validation::unknown_fields(&sent, object);
        field_validation(call, &unknown, &mut warnings)?;
    }
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut causes = strategy::validate_metadata(resource, object);
    causes.extend(schema_causes);
    if let Some(validate) = resource.validate {
        causes.extend(validate(object, old));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(&resource.target(&name), causes));
    }
    Ok(warnings)
}

/// The server's admission plugins, for a create (`part` None) or an update.
async fn admit_plugins(
    call: &Call<'_>,
    part: Option<Part>,
    object: &Value,
    old: Option<&Value>,
) -> ApiResult<()> {
    let subresource = match part {
        Some(Part::Status) => Some("status"),
        _ => call.request.subresource.as_deref(),
    };
    let request = crate::admission::AdmissionRequest {
        operation: if part.is_some() {
            crate::admission::Operation::Update
        } else {
            crate::admission::Operation::Create
        },
        resource: &call.resource,
        subresource,
        namespace: call.namespace(),
        name: object["metadata"]["name"].as_str().unwrap_or_default(),
        object,
        old,
        user: call.user,
        dry_run: call.query.dry_run,
    };
    crate::admission::run(call.server, &request).await
}

/// A namespaced object may only be created in an existing, active namespace.
async fn check_namespace(call: &Call<'_>, namespace: &str) -> ApiResult<()> {
    let registry = &call.server.registry;
    let Some(namespaces) = registry.get("", "v1", "namespaces") else {
        return Ok(());
    };
    match call.server.objects.get(&namespaces.key(None, namespace)).await? {
        None => Err(ApiError::not_found(&namespaces.target(namespace))),
        Some((ns, _)) if ns["metadata"]["deletionTimestamp"].is_string() => {
            Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                    call.resource.plural,
                    call.request.name.as_deref().unwrap_or_default()
                ),
            ))
        }
        Some(_) => Ok(()),
    }
}

/// Duplicate JSON fields per `fieldValidation` (serde keeps the last one, as Go does).
fn duplicate_fields(call: &Call<'_>) -> ApiResult<Vec<String>> {
    if body::content_type(call.headers) != "application/json" {
        return Ok(Vec::new());
    }
    let Some(dup) = crate::validation::duplicate_field(&call.body) else {
        return Ok(Vec::new());
    };
    match call.query.field_validation.as_deref() {
        Some("Strict") => Err(ApiError::bad_request(format!(
            "strict decoding error: json: duplicate field \"{dup}\""
        ))),
        Some("Ignore") => Ok(Vec::new()),
        _ => Ok(vec![format!("duplicate field \"{dup}\"")]),
    }
}

pub(crate) async fn create(call: &Call<'_>) -> ApiResult<Reply> {
    let duplicates = duplicate_fields(call)?;
    let object = body::decode_object(call.headers, &call.body)?;
    Ok(create_object(call, object).await?.with_warnings(duplicates))
}

pub(crate) async fn create_object(call: &Call<'_>, mut object: Value) -> ApiResult<Reply> {
    check_type(&call.resource, &object)?;
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    if let Some(ns) = call.namespace() {
        match object["metadata"]["namespace"].as_str() {
            Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => object["metadata"]["namespace"] = json!(ns),
        }
    } else if let Some(map) = object["metadata"].as_object_mut() {
        map.remove("namespace");
    }
    let has_name = object["metadata"]["name"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    if !has_name {
        match object["metadata"]["generateName"].as_str() {
            Some(base) if !base.is_empty() => {
                object["metadata"]["name"] = json!(korvet_apimachinery::names::generate_name(base));
            }
            _ => {
                return Err(ApiError::invalid(
                    &call.resource.target(""),
                    vec![Cause::required("metadata.name")
                        .with_message("name or generateName is required")],
                ))
            }
        }
    }
    if let Some(ns) = call.namespace() {
        check_namespace(call, ns).await?;
    }
    if let Some(hook) = call.resource.on_create {
        hook(&mut object, call.user);
    }
    if call.resource.group.is_empty()
        && call.resource.kind == "Pod"
        && call.request.subresource.is_none()
    {
        if let Some(ns) = call.namespace() {
            crate::service_account_admission::mutate_pod(call.server, ns, &mut object).await?;
        }
    }
    let warnings = admit(call, &mut object, None)?;
    if call.resource.kind == "Pod" && call.resource.group.is_empty() {
        crate::priority::admit_pod(call.server, &mut object).await?;
    }
    admit_plugins(call, None, &object, None).await?;
    strategy::prepare_create(&call.resource, &mut object);
    crate::allocation::before_create(call, &mut object).await?;
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if call.query.dry_run {
        return Ok(call
            .reply_object(StatusCode::CREATED, object)
            .with_warnings(warnings));
    }
    let key = call.resource.key(call.namespace(), &name);
    match call
        .server
        .objects
        .create(&key, &call.resource.stored(&object))
        .await?
    {
        Written::Ok(created) => Ok(call
            .reply_object(StatusCode::CREATED, call.resource.present(created))
            .with_warnings(warnings)),
        _ => Err(ApiError::already_exists(&call.resource.target(&name))),
    }
}

async fn update(call: &Call<'_>, part: Part) -> ApiResult<Reply> {
    let object = body::decode_object(call.headers, &call.body)?;
    check_type(&call.resource, &object)?;
    let body_name = object["metadata"]["name"].as_str().unwrap_or_default();
    if !body_name.is_empty() && body_name != call.name() {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({})",
            call.name()
        )));
    }
    let precondition = object["metadata"]["resourceVersion"]
        .as_str()
        .filter(|v| !v.is_empty())
        .map(parse_revision)
        .transpose()?;
    let duplicates = duplicate_fields(call)?;
    let reply = write_with_retry(call, part, precondition, |_current| Ok(object.clone())).await?;
    Ok(reply.with_warnings(duplicates))
}

async fn patch(call: &Call<'_>, part: Part) -> ApiResult<Reply> {
    let content_type = body::content_type(call.headers);
    let patch_body = call.body.clone();
    if content_type == "application/apply-patch+yaml" {
        return crate::apply::server_side_apply(call, part).await;
    }
    write_with_retry(call, part, None, |current| {
        crate::patching::apply_patch(&call.resource, content_type, current, &patch_body)
    })
    .await
}

/// Reads the current object, computes the new one, and writes it if nothing changed in
/// between. With a client precondition a change is a Conflict; without one, it retries.
pub(crate) async fn write_with_retry(
    call: &Call<'_>,
    part: Part,
    precondition: Option<Revision>,
    compute: impl Fn(&Value) -> ApiResult<Value>,
) -> ApiResult<Reply> {
    let key = call.key();
    for _ in 0..WRITE_RETRIES {
        let (current, revision) = load(call).await?;
        if let Some(expected) = precondition {
            if expected != revision {
                return Err(ApiError::conflict(
                    &call.resource.target(call.name()),
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
        }
        let mut next = compute(&current)?;
        if !next["metadata"].is_object() {
            next["metadata"] = json!({});
        }
        next["metadata"]["name"] = json!(call.name());
        if let Some(ns) = call.namespace() {
            next["metadata"]["namespace"] = json!(ns);
        }
        let mut next = match part {
            Part::Main | Part::Binding => next,
            Part::Status if call.resource.kind == "CertificateSigningRequest" => {
                let mut merged = strategy::prepare_status_update(&current, &next);
                crate::certificates::status_update(&current, &mut merged);
                merged
            }
            Part::Status => strategy::prepare_status_update(&current, &next),
            Part::Approval => crate::certificates::approval_update(&current, &next),
            Part::Finalize => {
                let mut merged = current.clone();
                merged["spec"]["finalizers"] = next["spec"]["finalizers"].clone();
                merged
            }
        };
        let warnings = admit(call, &mut next, Some(&current))?;
        admit_plugins(call, Some(part), &next, Some(&current)).await?;
        if part == Part::Main {
            strategy::prepare_update(&call.resource, &current, &mut next);
        } else if part == Part::Binding {
            let status = next["status"].clone();
            strategy::prepare_update(&call.resource, &current, &mut next);
            next["status"] = status;
        } else {
            for field in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
            ] {
                next["metadata"][field] = current["metadata"][field].clone();
            }
        }
        crate::allocation::before_update(call, &current, &mut next)?;
        if !call.body.is_empty()
            && body::content_type(call.headers) != "application/apply-patch+yaml"
        {
            record_update_ownership(call, &current, &mut next);
        }
        if call.query.dry_run {
            return Ok(call
                .reply_object(StatusCode::OK, next)
                .with_warnings(warnings));
        }
        // An object being deleted goes once its last finalizer is removed; a namespace
        // also waits for its `spec.finalizers` (upstream's ShouldDeleteNamespaceDuringUpdate).
        if next["metadata"]["deletionTimestamp"].is_string()
            && finalizers(&next).is_empty()
            && !held_by_namespace_finalizers(&call.resource, &next)
        {
            return match call.server.objects.delete(&key, revision).await? {
                Written::Ok(deleted) => {
                    Ok(call.reply_object(StatusCode::OK, call.resource.present(deleted)))
                }
                Written::NotFound => Err(call.not_found()),
                Written::Conflict => continue,
            };
        }
        if strip_rv(&next) == strip_rv(&current) {
            return Ok(call
                .reply_object(StatusCode::OK, current)
                .with_warnings(warnings));
        }
        match call.server.objects.update(&key, &call.resource.stored(&next), revision).await? {
            Written::Ok(updated) => {
                let updated = call.resource.present(updated);
                return Ok(call.reply_object(StatusCode::OK, updated).with_warnings(warnings))
            }
            Written::NotFound => return Err(call.not_found()),
            Written::Conflict if precondition.is_some() => {
                return Err(ApiError::conflict(
                    &call.resource.target(call.name()),
                    "the object has been modified; please apply your changes to the latest version and try again",
                ))
            }
            Written::Conflict => continue,
        }
    }
    Err(ApiError::conflict(
        &call.resource.target(call.name()),
        "the object is being changed too often; try again",
    ))
}

/// Records the fields a non-apply write changed as owned by its field manager (the
/// `fieldManager` parameter, else the client's name from its User-Agent, as upstream).
fn record_update_ownership(call: &Call<'_>, current: &Value, next: &mut Value) {
    let manager = call.query.field_manager.clone().unwrap_or_else(|| {
        call.headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .filter(|name| !name.is_empty())
            .unwrap_or("unknown")
            .to_string()
    });
    let resource = &call.resource;
    let schema = crate::patch::schema::PatchSchema::builtin().for_kind(
        &resource.group,
        &resource.version,
        &resource.kind,
    );
    if let Some(mut managed) = crate::apply::fields::record_update(current, next, &manager, schema)
    {
        for entry in managed.as_array_mut().into_iter().flatten() {
            if entry["manager"] == manager.as_str() && entry["operation"] == "Update" {
                entry["apiVersion"] = json!(resource.api_version());
                entry["time"] = json!(strategy::now_rfc3339());
            }
        }
        next["metadata"]["managedFields"] = managed;
    }
}

fn strip_rv(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(meta) = copy["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    copy
}

fn finalizers(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `object` is a namespace with `spec.finalizers` left.
fn held_by_namespace_finalizers(resource: &ResourceType, object: &Value) -> bool {
    strategy::is_namespace(resource)
        && object["spec"]["finalizers"]
            .as_array()
            .is_some_and(|list| !list.is_empty())
}

fn delete_options(call: &Call<'_>) -> ApiResult<Value> {
    if call.body.is_empty() {
        return Ok(json!({}));
    }
    body::decode_object(call.headers, &call.body)
}

pub(crate) async fn delete(call: &Call<'_>) -> ApiResult<Reply> {
    let options = delete_options(call)?;
    let object = delete_named(call, call.name(), &options).await?;
    Ok(call.reply_object(StatusCode::OK, object))
}

/// Deletes object `name` of the call's resource and namespace, as a DELETE of it does:
/// preconditions, propagation policy as finalizers, graceful deletion of bound pods,
/// namespaces marked Terminating for the namespace controller, dry run. Returns the
/// object as deleted, or as marked when its deletion waits.
async fn delete_named(call: &Call<'_>, name: &str, options: &Value) -> ApiResult<Value> {
    let resource = &call.resource;
    let key = resource.key(call.namespace(), name);
    let not_found = || ApiError::not_found(&resource.target(name));
    // Dry run from the query or from the DeleteOptions body (kubectl and kube send it
    // there).
    let dry_run = call.query.dry_run
        || options["dryRun"]
            .as_array()
            .is_some_and(|modes| modes.iter().any(|m| m == "All"));
    for _ in 0..WRITE_RETRIES {
        let (stored, revision) = call.server.objects.get(&key).await?.ok_or_else(not_found)?;
        let current = resource.present(stored);
        if let Some(uid) = options["preconditions"]["uid"].as_str() {
            if current["metadata"]["uid"].as_str() != Some(uid) {
                return Err(ApiError::conflict(
                    &resource.target(name),
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        current["metadata"]["uid"].as_str().unwrap_or_default()
                    ),
                ));
            }
        }
        if let Some(rv) = options["preconditions"]["resourceVersion"].as_str() {
            if parse_revision(rv)? != revision {
                return Err(ApiError::conflict(
                    &resource.target(name),
                    &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {revision}"),
                ));
            }
        }
        let policy = call
            .query
            .propagation_policy
            .clone()
            .or_else(|| options["propagationPolicy"].as_str().map(str::to_string));
        let mut marked = current.clone();
        let mut fins = finalizers(&current);
        match policy.as_deref() {
            Some("Foreground") if !fins.iter().any(|f| f == "foregroundDeletion") => {
                fins.push("foregroundDeletion".into())
            }
            Some("Orphan") if !fins.iter().any(|f| f == "orphan") => fins.push("orphan".into()),
            Some("Foreground" | "Orphan" | "Background") | None => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy {other:?} is not supported: use Foreground, Background or Orphan"
                )))
            }
        }
        let grace = graceful_deletion_seconds(call, &current, options);
        // A namespace waits for the namespace controller to empty it (its `kubernetes`
        // finalizer in `spec.finalizers`), then goes when that is taken out.
        let is_namespace = strategy::is_namespace(resource);
        let held = held_by_namespace_finalizers(resource, &current);
        let deferred = !fins.is_empty() || grace.is_some() || held;
        if !deferred {
            if dry_run {
                return Ok(current);
            }
            return match call.server.objects.delete(&key, revision).await? {
                Written::Ok(deleted) => Ok(resource.present(deleted)),
                Written::NotFound => Err(not_found()),
                Written::Conflict => continue,
            };
        }
        if marked["metadata"]["deletionTimestamp"].is_null() {
            let when = match grace {
                Some(secs) => strategy::rfc3339_in(secs),
                None => strategy::now_rfc3339(),
            };
            marked["metadata"]["deletionTimestamp"] = json!(when);
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace.unwrap_or(0));
        }
        if fins != finalizers(&current) {
            marked["metadata"]["finalizers"] = json!(fins);
        }
        if is_namespace {
            marked["status"]["phase"] = json!("Terminating");
        }
        // Deleting what is already marked changes nothing (the namespace controller's
        // deletecollection meets such objects again on every pass).
        if dry_run || marked == current {
            return Ok(marked);
        }
        match call
            .server
            .objects
            .update(&key, &resource.stored(&marked), revision)
            .await?
        {
            Written::Ok(updated) => return Ok(resource.present(updated)),
            Written::NotFound => return Err(not_found()),
            Written::Conflict => continue,
        }
    }
    Err(ApiError::conflict(
        &resource.target(name),
        "the object is being changed too often; try again",
    ))
}

/// Pods bound to a node get a grace period for the node agent to stop them; everything
/// else goes at once (as upstream).
fn graceful_deletion_seconds(call: &Call<'_>, object: &Value, options: &Value) -> Option<i64> {
    if call.resource.kind != "Pod"
        || object["spec"]["nodeName"]
            .as_str()
            .is_none_or(str::is_empty)
    {
        return None;
    }
    let phase = object["status"]["phase"].as_str().unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        return None;
    }
    let grace = call
        .query
        .grace_period_seconds
        .or_else(|| options["gracePeriodSeconds"].as_i64())
        .or_else(|| object["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30);
    (grace > 0).then_some(grace)
}

/// Deletes every object the selectors match, each through the same path as a DELETE of
/// it (finalizers, graceful deletion, dry run), and answers the list of what was deleted
/// or marked for deletion, as upstream does.
async fn delete_collection(call: &Call<'_>) -> ApiResult<Reply> {
    let options = delete_options(call)?;
    let filter = Filter::from_query(&call.resource, &call.query)?;
    let prefix = call.resource.list_prefix(call.namespace());
    let page = call
        .server
        .objects
        .list(&prefix, 0, None, 0, &|o| filter.matches(o))
        .await?;
    let mut deleted = Vec::new();
    for object in page.items {
        let Some(name) = object["metadata"]["name"].as_str() else {
            continue;
        };
        match delete_named(call, name, &options).await {
            Ok(object) => deleted.push(object),
            // Gone meanwhile: nothing left to delete.
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Reply::json(
        StatusCode::OK,
        json!({
            "kind": call.resource.list_kind,
            "apiVersion": call.resource.api_version(),
            "metadata": {"resourceVersion": page.revision.to_string()},
            "items": deleted,
        }),
    ))
}

/// Builds the response body for an error.
pub(crate) fn error_reply(err: &ApiError) -> Reply {
    let status = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut reply = Reply::json(status, err.to_status());
    if let Some(secs) = err.retry_after_seconds {
        reply = reply.with_header("Retry-After", &secs.to_string());
    }
    reply
}
