//! OpenAPI v3 documents (`/openapi/v3` and `/openapi/v3/api/v1`, `/openapi/v3/apis/G/V`),
//! built from the vendored Kubernetes v1.33 definitions (see `openapi/README.md`) and the
//! [`Registry`]. kubectl reads them to detect server-side field validation (a PATCH
//! operation with the kind's `x-kubernetes-group-version-kind` and a `fieldValidation`
//! parameter), to compute strategic merge patches in `apply` and for `explain`.
//!
//! The vendored file is JSON Schema (draft 2020-12, `#/$defs/...`, nullable types as
//! `["string", "null"]`); it is converted once to upstream's OpenAPI 3.0 shape:
//! `#/components/schemas/...` references (wrapped in `allOf` when the field adds a
//! description or extensions, as kube-openapi does), single `type` strings, no `enum` on
//! `apiVersion`/`kind`, IntOrString as `format: int-or-string` with `oneOf` integer/string.
//!
//! Pure functions returning JSON values; the HTTP layer serves them as `application/json`.
//! Group-version documents are listed in the root with `?hash=` of their content, so
//! clients may cache them; the hash of a document is memoised by a fingerprint of its
//! inputs, the document itself is built on each call (cache it by hash if it matters).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{LazyLock, Mutex};

use serde_json::{json, Map, Value};

use crate::discovery::subresource_info;
use crate::registry::{Registry, ResourceType};

const DEFINITIONS_JSON: &str = include_str!("../openapi/k8s-v1.33-definitions.json");

/// `info.version` of the documents: the Kubernetes version of the vendored schemas.
pub(crate) const KUBERNETES_VERSION: &str = "v1.33.0";
/// Where schemas live in the documents.
pub(crate) const SCHEMA_REF_PREFIX: &str = "#/components/schemas/";

const DEFS_PREFIX: &str = "#/$defs/";
const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.";
const INT_OR_STRING: &str = "io.k8s.apimachinery.pkg.util.intstr.IntOrString";

/// Schema of a kind that has no vendored definition (custom resources): called with the
/// resource, returns its OpenAPI v3 schema (e.g. a CRD's `openAPIV3Schema`; it may refer
/// to vendored definitions such as `#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta`).
/// Resources for which it returns `None` still get their paths, with an untyped object
/// schema, so that kubectl detects server-side field validation for them.
pub(crate) type ExtraSchema<'a> = &'a dyn Fn(&ResourceType) -> Option<Value>;

#[cfg(test)]
fn no_extra_schema(_: &ResourceType) -> Option<Value> {
    None
}

struct Definitions {
    /// Every definition, converted to OpenAPI 3.0 form.
    schemas: BTreeMap<String, Value>,
    /// (group, version, kind) to definition name.
    by_gvk: HashMap<(String, String, String), String>,
}

static DEFINITIONS: LazyLock<Definitions> = LazyLock::new(load_definitions);

fn load_definitions() -> Definitions {
    let root: Value =
        serde_json::from_str(DEFINITIONS_JSON).expect("vendored OpenAPI definitions are JSON");
    let defs = root
        .get("$defs")
        .and_then(Value::as_object)
        .expect("vendored OpenAPI definitions have $defs");
    let mut schemas = BTreeMap::new();
    let mut by_gvk = HashMap::new();
    for (name, schema) in defs {
        let mut converted = convert(schema);
        if name == INT_OR_STRING {
            converted = int_or_string(&converted);
        }
        for gvk in gvks_of(&converted) {
            by_gvk.entry(gvk).or_insert_with(|| name.clone());
        }
        schemas.insert(name.clone(), converted);
    }
    Definitions { schemas, by_gvk }
}

fn gvks_of(schema: &Value) -> Vec<(String, String, String)> {
    let Some(list) = schema
        .get("x-kubernetes-group-version-kind")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .map(|gvk| {
            let field = |k: &str| gvk[k].as_str().unwrap_or_default().to_string();
            (field("group"), field("version"), field("kind"))
        })
        .collect()
}

/// Upstream's IntOrString: `format: int-or-string` over `oneOf` integer, string.
fn int_or_string(converted: &Value) -> Value {
    let mut schema = json!({
        "description": "IntOrString is a type that can hold an int32 or a string.  When used in JSON or YAML marshalling and unmarshalling, it produces or consumes the inner type.  This allows you to have, for example, a JSON field that can accept a name or number.",
        "format": "int-or-string",
        "oneOf": [{"type": "integer"}, {"type": "string"}],
    });
    if let Some(description) = converted.get("description") {
        schema["description"] = description.clone();
    }
    schema
}

/// Converts one JSON Schema (draft 2020-12) node of the vendored file to OpenAPI 3.0.
fn convert(schema: &Value) -> Value {
    let Value::Object(object) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in object {
        match key.as_str() {
            "$ref" => {
                let target = value.as_str().unwrap_or_default();
                let name = target.strip_prefix(DEFS_PREFIX).unwrap_or(target);
                out.insert(key.clone(), json!(format!("{SCHEMA_REF_PREFIX}{name}")));
            }
            "type" => {
                if let Some(ty) = convert_type(value) {
                    out.insert(key.clone(), ty);
                }
            }
            // Only `apiVersion` and `kind` carry enums in the vendored file (added there
            // for validation); upstream has none and they would list one version only.
            "enum" => {}
            "properties" | "patternProperties" => {
                let converted = value
                    .as_object()
                    .map(|props| {
                        props
                            .iter()
                            .map(|(name, s)| (name.clone(), convert(s)))
                            .collect::<Map<_, _>>()
                    })
                    .map(Value::Object)
                    .unwrap_or_else(|| value.clone());
                out.insert(key.clone(), converted);
            }
            "items" | "additionalProperties" | "not" => {
                out.insert(key.clone(), convert(value));
            }
            "oneOf" | "anyOf" | "allOf" => {
                let converted = match value {
                    Value::Array(items) => Value::Array(items.iter().map(convert).collect()),
                    other => other.clone(),
                };
                out.insert(key.clone(), converted);
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    // OpenAPI 3.0 ignores siblings of `$ref`: kube-openapi wraps the reference in `allOf`.
    if out.len() > 1 {
        if let Some(target) = out.remove("$ref") {
            out.insert("allOf".into(), json!([{ "$ref": target }]));
        }
    }
    Value::Object(out)
}

/// `["string", "null"]` → `"string"`.
fn convert_type(value: &Value) -> Option<Value> {
    match value {
        Value::Array(types) => {
            let kept: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
            match kept.as_slice() {
                [] => None,
                [one] => Some((*one).clone()),
                // Not in the vendored file; OpenAPI 3.0 has no type unions.
                [first, ..] => Some((*first).clone()),
            }
        }
        other => Some(other.clone()),
    }
}

/// Name of the vendored definition of a kind, by its `x-kubernetes-group-version-kind`.
pub(crate) fn schema_name_for(group: &str, version: &str, kind: &str) -> Option<&'static str> {
    DEFINITIONS
        .by_gvk
        .get(&(group.to_string(), version.to_string(), kind.to_string()))
        .map(String::as_str)
}

/// A vendored definition in its OpenAPI 3.0 form.
#[cfg(test)]
pub(crate) fn definition(name: &str) -> Option<&'static Value> {
    DEFINITIONS.schemas.get(name)
}

/// Definition name of a resource's kind: its `schema_name` if that is known, else by GVK.
fn kind_definition(r: &ResourceType) -> Option<&'static str> {
    if let Some(name) = &r.schema_name {
        if let Some((known, _)) = DEFINITIONS.schemas.get_key_value(name) {
            return Some(known.as_str());
        }
    }
    schema_name_for(&r.group, &r.version, &r.kind)
}

/// Upstream's name for a custom resource schema: reversed group, version, kind
/// (`com.example.stable.v1.CronTab`).
fn custom_schema_name(group: &str, version: &str, kind: &str) -> String {
    let mut parts: Vec<&str> = group.split('.').filter(|p| !p.is_empty()).collect();
    parts.reverse();
    parts.push(version);
    parts.push(kind);
    parts.join(".")
}

/// `api/v1` or `apis/GROUP/VERSION`: the key of a group-version in the v3 root, and the
/// path of its document under `/openapi/v3/`.
pub(crate) fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The group and version of a document path under `/openapi/v3/` (`api/v1`,
/// `apis/apps/v1`; without query).
#[cfg(test)]
pub(crate) fn parse_group_version_path(path: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", version] => Some((String::new(), version.to_string())),
        ["apis", group, version] => Some((group.to_string(), version.to_string())),
        _ => None,
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A stable hex digest of a document (what `?hash=` carries).
pub(crate) fn doc_hash(doc: &Value) -> String {
    let bytes = serde_json::to_vec(doc).unwrap_or_default();
    // Two FNV-1a passes with different seeds' worth of input make collisions unlikely
    // enough for cache keys.
    let a = fnv1a(&bytes);
    let mut salted = Vec::with_capacity(bytes.len() + 1);
    salted.push(0x5a);
    salted.extend_from_slice(&bytes);
    let b = fnv1a(&salted);
    format!("{a:016X}{b:016X}")
}

/// `GET /openapi/v3`: every served group-version with the URL of its document.
#[cfg(test)]
pub(crate) fn v3_root(registry: &Registry) -> Value {
    v3_root_with(registry, &no_extra_schema)
}

/// [`v3_root`] with schemas for kinds that have no vendored definition.
pub(crate) fn v3_root_with(registry: &Registry, extra: ExtraSchema) -> Value {
    let mut paths = Map::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            let Some(doc) = cached_document(registry, &group, &version, extra) else {
                continue;
            };
            let path = group_version_path(&group, &version);
            let url = format!("/openapi/v3/{path}?hash={}", doc.hash);
            paths.insert(path, json!({ "serverRelativeURL": url }));
        }
    }
    json!({ "paths": paths })
}

/// A group-version document, serialized, with its hash.
pub(crate) struct CachedDocument {
    pub hash: String,
    pub json: bytes::Bytes,
}

/// The document of a group-version, built once per distinct set of served resources:
/// kubectl fetches it for every create, apply and edit, and the root needs its hash.
/// Kept serialized, since that is all a request needs and it is a fraction of the tree.
pub(crate) fn cached_document(
    registry: &Registry,
    group: &str,
    version: &str,
    extra: ExtraSchema,
) -> Option<std::sync::Arc<CachedDocument>> {
    static DOCUMENTS: LazyLock<Mutex<HashMap<u64, std::sync::Arc<CachedDocument>>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    let resources = resources_of(registry, group, version);
    if resources.is_empty() {
        return None;
    }
    let key = fingerprint(group, version, &resources, extra);
    if let Some(doc) = DOCUMENTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
    {
        return Some(doc.clone());
    }
    let doc = build_document(group, version, &resources, extra);
    let cached = std::sync::Arc::new(CachedDocument {
        hash: doc_hash(&doc),
        json: bytes::Bytes::from(doc.to_string()),
    });
    let mut documents = DOCUMENTS.lock().unwrap_or_else(|e| e.into_inner());
    // CRD changes make new fingerprints; old documents are dropped wholesale.
    if documents.len() > 256 {
        documents.clear();
    }
    documents.insert(key, cached.clone());
    Some(cached)
}

/// Everything the document of a group-version depends on (the code aside).
fn fingerprint(
    group: &str,
    version: &str,
    resources: &[std::sync::Arc<ResourceType>],
    extra: ExtraSchema,
) -> u64 {
    let mut text = format!("{group}\n{version}\n");
    for r in resources {
        text.push_str(&format!(
            "{}|{}|{}|{}|{}|{}|{:?}|{:?}|",
            r.kind,
            r.list_kind,
            r.plural,
            r.namespaced,
            r.virtual_create,
            r.singular,
            r.subresources,
            r.schema_name,
        ));
        if kind_definition(r).is_none() {
            if let Some(schema) = extra(r) {
                text.push_str(&schema.to_string());
            }
        }
        text.push('\n');
    }
    fnv1a(text.as_bytes())
}

/// `GET /openapi/v3/api/v1`, `/openapi/v3/apis/G/V`: the OpenAPI 3.0 document of one
/// group-version; `None` if nothing is served there.
#[cfg(test)]
pub(crate) fn v3_group_version(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    v3_group_version_with(registry, group, version, &no_extra_schema)
}

/// [`v3_group_version`] with schemas for kinds that have no vendored definition.
pub(crate) fn v3_group_version_with(
    registry: &Registry,
    group: &str,
    version: &str,
    extra: ExtraSchema,
) -> Option<Value> {
    let resources = resources_of(registry, group, version);
    if resources.is_empty() {
        return None;
    }
    Some(build_document(group, version, &resources, extra))
}

fn resources_of(
    registry: &Registry,
    group: &str,
    version: &str,
) -> Vec<std::sync::Arc<ResourceType>> {
    registry
        .all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .collect()
}

fn build_document(
    group: &str,
    version: &str,
    resources: &[std::sync::Arc<ResourceType>],
    extra: ExtraSchema,
) -> Value {
    let mut doc = DocBuilder::new(group, version);
    for name in ["Status", "DeleteOptions", "Patch"] {
        doc.roots.insert(format!("{META}{name}"));
    }
    for r in resources {
        doc.add_resource(r, extra);
    }
    let schemas = doc.components();
    let paths: Map<String, Value> = doc
        .paths
        .into_iter()
        .map(|(path, item)| (path, Value::Object(item)))
        .collect();
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (key, v) in object {
                match (key.as_str(), v) {
                    ("$ref", Value::String(target)) => {
                        if let Some(name) = target.strip_prefix(SCHEMA_REF_PREFIX) {
                            out.push(name.to_string());
                        }
                    }
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Upstream's operation-id name of a group: `Core`, `Apps`, `RbacAuthorization`.
fn group_id(group: &str) -> String {
    if group.is_empty() {
        return "Core".to_string();
    }
    let trimmed = group.strip_suffix(".k8s.io").unwrap_or(group);
    trimmed
        .split(['.', '-'])
        .filter(|p| !p.is_empty())
        .map(capitalize)
        .collect()
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "kind": kind, "version": version})
}

fn param(name: &str, location: &str, description: &str, ty: &str) -> Value {
    let mut p = json!({
        "name": name,
        "in": location,
        "description": description,
        "schema": {"type": ty, "uniqueItems": true},
    });
    if location == "path" {
        p["required"] = json!(true);
    }
    p
}

fn query(name: &str, description: &str, ty: &str) -> Value {
    param(name, "query", description, ty)
}

fn p_pretty() -> Value {
    query("pretty", "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).", "string")
}

fn p_namespace() -> Value {
    param(
        "namespace",
        "path",
        "object name and auth scope, such as for teams and projects",
        "string",
    )
}

fn p_name(what: &str) -> Value {
    param("name", "path", &format!("name of the {what}"), "string")
}

fn p_dry_run() -> Value {
    query("dryRun", "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed", "string")
}

fn p_field_manager() -> Value {
    query("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint.", "string")
}

fn p_field_validation() -> Value {
    query("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. This is the default behavior prior to v1.23. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. The request will still succeed if there are no other errors, and will only persist the last of any duplicate fields. This is the default in v1.23+ - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.", "string")
}

fn p_force() -> Value {
    query("force", "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests.", "boolean")
}

fn write_params() -> Vec<Value> {
    vec![p_dry_run(), p_field_manager(), p_field_validation()]
}

fn list_params(watch: bool) -> Vec<Value> {
    let mut params = Vec::new();
    if watch {
        params.push(query("allowWatchBookmarks", "allowWatchBookmarks requests watch events with type \"BOOKMARK\". Servers that do not implement bookmarks may ignore this flag and bookmarks are sent at the server's discretion. Clients should not assume bookmarks are returned at any specific interval, nor may they assume the server will send any BOOKMARK event during a session. If this is not a watch, this field is ignored.", "boolean"));
    }
    params.extend([
        query("continue", "The continue option should be set when retrieving more results from the server. Since this value is server defined, clients may only use the continue value from a previous query result with identical query parameters (except for the value of continue) and the server may reject a continue value it does not recognize.", "string"),
        query("fieldSelector", "A selector to restrict the list of returned objects by their fields. Defaults to everything.", "string"),
        query("labelSelector", "A selector to restrict the list of returned objects by their labels. Defaults to everything.", "string"),
        query("limit", "limit is a maximum number of responses to return for a list call. If more items exist, the server will set the `continue` field on the list metadata to a value that can be used with the same initial query to retrieve the next set of results.", "integer"),
        query("resourceVersion", "resourceVersion sets a constraint on what resource versions a request may be served from. See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details.\n\nDefaults to unset", "string"),
        query("resourceVersionMatch", "resourceVersionMatch determines how resourceVersion is applied to list calls. It is highly recommended that resourceVersionMatch be set for list calls where resourceVersion is set See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details.\n\nDefaults to unset", "string"),
        query("sendInitialEvents", "`sendInitialEvents=true` may be set together with `watch=true`. In that case, the watch stream will begin with synthetic events to produce the current state of objects in the collection.", "boolean"),
        query("timeoutSeconds", "Timeout for the list/watch call. This limits the duration of the call, regardless of any activity or inactivity.", "integer"),
    ]);
    if watch {
        params.push(query("watch", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications. Specify resourceVersion.", "boolean"));
    }
    params
}

fn delete_params() -> Vec<Value> {
    vec![
        p_dry_run(),
        query("gracePeriodSeconds", "The duration in seconds before the object should be deleted. Value must be non-negative integer. The value zero indicates delete immediately. If this value is nil, the default grace period for the specified type will be used. Defaults to a per object value if not specified. zero means delete immediately.", "integer"),
        query("ignoreStoreReadErrorWithClusterBreakingPotential", "if set to true, it will trigger an unsafe deletion of the resource in case the normal deletion flow fails with a corrupt object error. A resource is considered corrupt if it can not be retrieved from the underlying storage successfully because of a) its data can not be transformed e.g. decryption failure, or b) it fails to decode into an object. NOTE: unsafe deletion ignores finalizer constraints, skips precondition checks, and removes the object from the storage. WARNING: This may potentially break the cluster if the workload associated with the resource being unsafe-deleted relies on normal deletion flow. Use only if you REALLY know what you are doing. The default value is false, and the user must opt in to enable it", "boolean"),
        query("orphanDependents", "Deprecated: please use the PropagationPolicy, this field will be deprecated in 1.7. Should the dependent objects be orphaned. If true/false, the \"orphan\" finalizer will be added to/removed from the object's finalizers list. Either this field or PropagationPolicy may be set, but not both.", "boolean"),
        query("propagationPolicy", "Whether and how garbage collection will be performed. Either this field or OrphanDependents may be set, but not both. The default policy is decided by the existing finalizer set in the metadata.finalizers and the resource-specific default policy. Acceptable values are: 'Orphan' - orphan the dependents; 'Background' - allow the garbage collector to delete the dependents in the background; 'Foreground' - a cascading policy that deletes all dependents in the foreground.", "string"),
    ]
}

const RESPONSE_TYPES: [&str; 2] = ["application/json", "application/yaml"];
const PATCH_TYPES: [&str; 4] = [
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
];

fn content(schema: &Value, types: &[&str]) -> Value {
    let mut map = Map::new();
    for ty in types {
        map.insert(ty.to_string(), json!({ "schema": schema }));
    }
    Value::Object(map)
}

fn responses(codes: &[(&str, &str)], schema: &Value, types: &[&str]) -> Value {
    let mut map = Map::new();
    for (code, description) in codes {
        map.insert(
            code.to_string(),
            json!({"description": description, "content": content(schema, types)}),
        );
    }
    map.insert("401".into(), json!({"description": "Unauthorized"}));
    Value::Object(map)
}

/// One operation of a path.
struct Op<'a> {
    method: &'a str,
    action: &'a str,
    id: String,
    description: String,
    gvk: Value,
    params: Vec<Value>,
    request: Option<Value>,
    responses: Value,
}

struct DocBuilder {
    group: String,
    version: String,
    tag: String,
    paths: BTreeMap<String, Map<String, Value>>,
    /// Definitions referred to from paths (closed over references by `components`).
    roots: BTreeSet<String>,
    /// Schemas of custom kinds given by the caller, by name.
    extra: BTreeMap<String, Value>,
}

impl DocBuilder {
    fn new(group: &str, version: &str) -> Self {
        let gid = group_id(group);
        let mut tag: String = gid.chars().take(1).flat_map(char::to_lowercase).collect();
        tag.extend(gid.chars().skip(1));
        Self {
            group: group.to_string(),
            version: version.to_string(),
            tag: format!("{tag}_{version}"),
            paths: BTreeMap::new(),
            roots: BTreeSet::new(),
            extra: BTreeMap::new(),
        }
    }

    fn base(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    fn id_prefix(&self) -> String {
        format!("{}{}", group_id(&self.group), capitalize(&self.version))
    }

    fn named(&mut self, name: &str) -> Value {
        self.roots.insert(name.to_string());
        json!({ "$ref": format!("{SCHEMA_REF_PREFIX}{name}") })
    }

    fn meta(&mut self, name: &str) -> Value {
        self.named(&format!("{META}{name}"))
    }

    /// Schema of a (group, version, kind), vendored or untyped.
    fn schema_of(&mut self, group: &str, version: &str, kind: &str) -> Value {
        match schema_name_for(group, version, kind) {
            Some(name) => self.named(name),
            None => json!({"type": "object"}),
        }
    }

    /// Schema of a resource's kind and of its list kind.
    fn resource_schemas(&mut self, r: &ResourceType, extra: ExtraSchema) -> (Value, Value) {
        if let Some(name) = kind_definition(r) {
            let kind = self.named(name);
            let list = self.schema_of(&r.group, &r.version, &r.list_kind);
            return (kind, list);
        }
        let Some(mut schema) = extra(r) else {
            let untyped = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
            return (untyped.clone(), untyped);
        };
        let name = custom_schema_name(&r.group, &r.version, &r.kind);
        if let Some(object) = schema.as_object_mut() {
            object.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([gvk(&r.group, &r.version, &r.kind)]),
            );
        }
        self.extra.insert(name.clone(), schema);
        let kind = self.named(&name);
        let list_name = custom_schema_name(&r.group, &r.version, &r.list_kind);
        let list_meta = format!("{SCHEMA_REF_PREFIX}{META}ListMeta");
        let list = json!({
            "description": format!("{} is a list of {}", r.list_kind, r.kind),
            "type": "object",
            "required": ["items"],
            "properties": {
                "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
                "items": {"type": "array", "description": format!("List of {}.", r.plural), "items": kind},
                "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
                "metadata": {"allOf": [{"$ref": list_meta}], "description": "Standard list metadata."},
            },
            "x-kubernetes-group-version-kind": [gvk(&r.group, &r.version, &r.list_kind)],
        });
        self.extra.insert(list_name.clone(), list);
        let list = self.named(&list_name);
        (kind, list)
    }

    fn add_op(&mut self, path: &str, path_params: &[Value], op: Op) {
        let tag = self.tag.clone();
        let item = self.paths.entry(path.to_string()).or_default();
        if !item.contains_key("parameters") {
            item.insert("parameters".into(), Value::Array(path_params.to_vec()));
        }
        let mut operation = Map::new();
        operation.insert("tags".into(), json!([tag]));
        operation.insert("description".into(), json!(op.description));
        operation.insert("operationId".into(), json!(op.id));
        if !op.params.is_empty() {
            operation.insert("parameters".into(), Value::Array(op.params));
        }
        if let Some(request) = op.request {
            operation.insert("requestBody".into(), request);
        }
        operation.insert("responses".into(), op.responses);
        operation.insert("x-kubernetes-action".into(), json!(op.action));
        operation.insert("x-kubernetes-group-version-kind".into(), op.gvk);
        item.insert(op.method.to_string(), Value::Object(operation));
    }

    fn add_resource(&mut self, r: &ResourceType, extra: ExtraSchema) {
        let (kind_schema, list_schema) = self.resource_schemas(r, extra);
        let status = self.meta("Status");
        let delete_options = self.meta("DeleteOptions");
        let patch = self.meta("Patch");
        let base = self.base();
        let prefix = self.id_prefix();
        let scope = if r.namespaced { "Namespaced" } else { "" };
        let kind = &r.kind;
        let id = |verb: &str, suffix: &str| format!("{verb}{prefix}{scope}{kind}{suffix}");
        let the_gvk = gvk(&r.group, &r.version, kind);

        let collection = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        let mut scope_params = Vec::new();
        if r.namespaced {
            scope_params.push(p_namespace());
        }
        let mut collection_params = scope_params.clone();
        collection_params.push(p_pretty());
        let mut item_params = vec![p_name(kind)];
        item_params.extend(scope_params.iter().cloned());
        item_params.push(p_pretty());
        let item = format!("{collection}/{{name}}");
        let write_body = |schema: &Value| json!({"content": content(schema, &["application/json", "application/yaml"]), "required": true});
        let created = [("200", "OK"), ("201", "Created"), ("202", "Accepted")];

        self.add_op(
            &collection,
            &collection_params,
            Op {
                method: "post",
                action: "post",
                id: id("create", ""),
                description: format!("create a {kind}"),
                gvk: the_gvk.clone(),
                params: write_params(),
                request: Some(write_body(&kind_schema)),
                responses: responses(&created, &kind_schema, &RESPONSE_TYPES),
            },
        );
        if r.virtual_create {
            return;
        }
        let mut list_types = RESPONSE_TYPES.to_vec();
        list_types.push("application/json;stream=watch");
        self.add_op(
            &collection,
            &collection_params,
            Op {
                method: "get",
                action: "list",
                id: id("list", ""),
                description: format!("list or watch objects of kind {kind}"),
                gvk: the_gvk.clone(),
                params: list_params(true),
                request: None,
                responses: responses(&[("200", "OK")], &list_schema, &list_types),
            },
        );
        let mut delete_collection_params = delete_params();
        delete_collection_params.extend(list_params(false));
        delete_collection_params.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        self.add_op(
            &collection,
            &collection_params,
            Op {
                method: "delete",
                action: "deletecollection",
                id: format!("delete{prefix}Collection{scope}{kind}"),
                description: format!("delete collection of {kind}"),
                gvk: the_gvk.clone(),
                params: delete_collection_params,
                request: Some(json!({"content": content(&delete_options, &["application/json"])})),
                responses: responses(&[("200", "OK")], &status, &RESPONSE_TYPES),
            },
        );
        if r.namespaced {
            self.add_op(
                &format!("{base}/{}", r.plural),
                &[p_pretty()],
                Op {
                    method: "get",
                    action: "list",
                    id: format!("list{prefix}{kind}ForAllNamespaces"),
                    description: format!("list or watch objects of kind {kind}"),
                    gvk: the_gvk.clone(),
                    params: list_params(true),
                    request: None,
                    responses: responses(&[("200", "OK")], &list_schema, &list_types),
                },
            );
        }
        self.add_item_ops(
            &item,
            &item_params,
            &ItemOps {
                verbs: &["get", "update", "patch"],
                what: "",
                id_suffix: "",
                kind_id: &id,
                gvk: &the_gvk,
                schema: &kind_schema,
                patch: &patch,
            },
        );
        let mut delete = delete_params();
        delete.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        self.add_op(
            &item,
            &item_params,
            Op {
                method: "delete",
                action: "delete",
                id: id("delete", ""),
                description: format!("delete a {kind}"),
                gvk: the_gvk.clone(),
                params: delete,
                request: Some(json!({"content": content(&delete_options, &["application/json"])})),
                responses: responses(
                    &[("200", "OK"), ("202", "Accepted")],
                    &status,
                    &RESPONSE_TYPES,
                ),
            },
        );

        for sub in &r.subresources {
            let info = subresource_info(r, sub);
            let path = format!("{item}/{sub}");
            let mut sub_params = vec![p_name(&info.kind)];
            sub_params.extend(scope_params.iter().cloned());
            sub_params.push(p_pretty());
            let sub_gvk = gvk(&info.group, &info.version, &info.kind);
            let suffix = capitalize(sub);
            match sub.as_str() {
                // Streams (`connect` upstream): not described.
                "exec" | "attach" | "portforward" | "proxy" => {}
                "log" => {
                    self.add_op(
                        &path,
                        &sub_params,
                        Op {
                            method: "get",
                            action: "get",
                            id: id("read", &suffix),
                            description: format!("read log of the specified {kind}"),
                            gvk: sub_gvk,
                            params: log_params(),
                            request: None,
                            responses: responses(
                                &[("200", "OK")],
                                &json!({"type": "string"}),
                                &["text/plain", "application/json", "application/yaml"],
                            ),
                        },
                    );
                }
                _ if info.verbs == ["create"] => {
                    let schema = self.schema_of(&info.group, &info.version, &info.kind);
                    self.add_op(
                        &path,
                        &sub_params,
                        Op {
                            method: "post",
                            action: "post",
                            id: id("create", &suffix),
                            description: format!("create {sub} of a {kind}"),
                            gvk: sub_gvk,
                            params: write_params(),
                            request: Some(write_body(&schema)),
                            responses: responses(&created, &schema, &RESPONSE_TYPES),
                        },
                    );
                }
                _ => {
                    let schema = if (
                        info.group.as_str(),
                        info.version.as_str(),
                        info.kind.as_str(),
                    ) == (r.group.as_str(), r.version.as_str(), r.kind.as_str())
                    {
                        kind_schema.clone()
                    } else {
                        self.schema_of(&info.group, &info.version, &info.kind)
                    };
                    self.add_item_ops(
                        &path,
                        &sub_params,
                        &ItemOps {
                            verbs: info.verbs,
                            what: &format!("{sub} of "),
                            id_suffix: &suffix,
                            kind_id: &id,
                            gvk: &sub_gvk,
                            schema: &schema,
                            patch: &patch,
                        },
                    );
                }
            }
        }
    }

    /// get / put / patch of an object or of a subresource of it.
    fn add_item_ops(&mut self, path: &str, path_params: &[Value], ops: &ItemOps) {
        let kind = ops.gvk["kind"].as_str().unwrap_or_default().to_string();
        let target = format!("{}the specified {kind}", ops.what);
        for verb in ops.verbs {
            let op = match *verb {
                "get" => Op {
                    method: "get",
                    action: "get",
                    id: (ops.kind_id)("read", ops.id_suffix),
                    description: format!("read {target}"),
                    gvk: ops.gvk.clone(),
                    params: Vec::new(),
                    request: None,
                    responses: responses(&[("200", "OK")], ops.schema, &RESPONSE_TYPES),
                },
                "update" => Op {
                    method: "put",
                    action: "put",
                    id: (ops.kind_id)("replace", ops.id_suffix),
                    description: format!("replace {target}"),
                    gvk: ops.gvk.clone(),
                    params: write_params(),
                    request: Some(json!({
                        "content": content(ops.schema, &["application/json", "application/yaml"]),
                        "required": true,
                    })),
                    responses: responses(
                        &[("200", "OK"), ("201", "Created")],
                        ops.schema,
                        &RESPONSE_TYPES,
                    ),
                },
                "patch" => {
                    let mut params = write_params();
                    params.push(p_force());
                    Op {
                        method: "patch",
                        action: "patch",
                        id: (ops.kind_id)("patch", ops.id_suffix),
                        description: format!("partially update {target}"),
                        gvk: ops.gvk.clone(),
                        params,
                        request: Some(json!({
                            "content": content(ops.patch, &PATCH_TYPES),
                            "required": true,
                        })),
                        responses: responses(
                            &[("200", "OK"), ("201", "Created")],
                            ops.schema,
                            &RESPONSE_TYPES,
                        ),
                    }
                }
                _ => continue,
            };
            self.add_op(path, path_params, op);
        }
    }

    /// The schemas referred to from the paths, closed over references.
    fn components(&self) -> Map<String, Value> {
        let mut out = Map::new();
        let mut pending: Vec<String> = self.roots.iter().cloned().collect();
        while let Some(name) = pending.pop() {
            if out.contains_key(&name) {
                continue;
            }
            let Some(schema) = self
                .extra
                .get(&name)
                .or_else(|| DEFINITIONS.schemas.get(&name))
            else {
                continue;
            };
            collect_refs(schema, &mut pending);
            out.insert(name, schema.clone());
        }
        out
    }
}

struct ItemOps<'a> {
    verbs: &'a [&'a str],
    /// `status of ` for subresources.
    what: &'a str,
    id_suffix: &'a str,
    kind_id: &'a dyn Fn(&str, &str) -> String,
    gvk: &'a Value,
    schema: &'a Value,
    patch: &'a Value,
}

fn log_params() -> Vec<Value> {
    vec![
        query("container", "The container for which to stream logs. Defaults to only container if there is one container in the pod.", "string"),
        query("follow", "Follow the log stream of the pod. Defaults to false.", "boolean"),
        query("limitBytes", "If set, the number of bytes to read from the server before terminating the log output.", "integer"),
        query("previous", "Return previous terminated container logs. Defaults to false.", "boolean"),
        query("sinceSeconds", "A relative time in seconds before the current time from which to show logs.", "integer"),
        query("tailLines", "If set, the number of lines from the end of the logs to show.", "integer"),
        query("timestamps", "If true, add an RFC3339 or RFC3339Nano timestamp at the beginning of every line of log output. Defaults to false.", "boolean"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(value: &Value, f: &mut dyn FnMut(&Map<String, Value>)) {
        match value {
            Value::Object(object) => {
                f(object);
                object.values().for_each(|v| walk(v, f));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, f)),
            _ => {}
        }
    }

    /// Every `$ref` resolves; no `type` is an array; no `$defs` reference is left.
    fn assert_well_formed(doc: &Value) {
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut refs = Vec::new();
        collect_refs(doc, &mut refs);
        assert!(!refs.is_empty());
        for name in &refs {
            assert!(schemas.contains_key(name), "dangling $ref to {name}");
        }
        walk(doc, &mut |object| {
            if let Some(Value::String(target)) = object.get("$ref") {
                assert!(target.starts_with(SCHEMA_REF_PREFIX), "{target}");
                assert_eq!(object.len(), 1, "$ref with siblings: {object:?}");
            }
        });
        // `type` as a keyword: inside schemas only (a property named `type` is a schema).
        for schema in schemas.values() {
            walk(schema, &mut |object| {
                if let Some(ty) = object.get("type") {
                    assert!(!ty.is_array(), "type array left: {object:?}");
                }
            });
        }
    }

    fn patch_op<'a>(doc: &'a Value, path: &str) -> &'a Value {
        &doc["paths"][path]["patch"]
    }

    fn has_param(op: &Value, name: &str) -> bool {
        op["parameters"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "query"))
    }

    #[test]
    fn conversion_to_openapi_3() {
        let deployment = definition("io.k8s.api.apps.v1.Deployment").unwrap();
        assert_eq!(deployment["type"], "object");
        assert_eq!(
            deployment["properties"]["apiVersion"],
            json!({"description": deployment["properties"]["apiVersion"]["description"], "type": "string"})
        );
        assert_eq!(
            deployment["properties"]["spec"]["allOf"],
            json!([{"$ref": "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"}])
        );
        assert!(deployment["properties"]["spec"]["description"].is_string());
        let int_or_string = definition(INT_OR_STRING).unwrap();
        assert_eq!(int_or_string["format"], "int-or-string");
        assert!(int_or_string.get("type").is_none());
        // Properties named like keywords stay properties.
        let props =
            definition("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps")
                .unwrap();
        assert!(props["properties"]["$ref"].is_object());
        assert!(props["properties"]["enum"].is_object());
        assert_eq!(
            schema_name_for("apps", "v1", "Deployment"),
            Some("io.k8s.api.apps.v1.Deployment")
        );
        assert_eq!(
            parse_group_version_path("apis/apps/v1"),
            Some(("apps".to_string(), "v1".to_string()))
        );
        assert_eq!(
            parse_group_version_path("/api/v1"),
            Some((String::new(), "v1".to_string()))
        );
    }

    #[test]
    fn root_lists_group_versions_with_stable_hashes() {
        let registry = Registry::with_builtins();
        let root = v3_root(&registry);
        let core = root["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .to_string();
        let apps = root["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(core.starts_with("/openapi/v3/api/v1?hash="), "{core}");
        assert!(apps.starts_with("/openapi/v3/apis/apps/v1?hash="), "{apps}");
        assert_ne!(core, apps);
        assert_eq!(v3_root(&registry), root);
        // The hash is the document's, not the memo's.
        let doc = v3_group_version(&registry, "apps", "v1").unwrap();
        assert_eq!(
            apps,
            format!("/openapi/v3/apis/apps/v1?hash={}", doc_hash(&doc))
        );
        assert_eq!(
            v3_root(&Registry::with_builtins())["paths"]["apis/apps/v1"],
            root["paths"]["apis/apps/v1"]
        );
    }

    #[test]
    fn apps_v1_document() {
        let registry = Registry::with_builtins();
        let doc = v3_group_version(&registry, "apps", "v1").unwrap();
        assert_eq!(doc["openapi"], "3.0.0");
        let deployment = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "kind": "Deployment", "version": "v1"}])
        );
        let path = "/apis/apps/v1/namespaces/{namespace}/deployments/{name}";
        let patch = patch_op(&doc, path);
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "apps", "kind": "Deployment", "version": "v1"})
        );
        assert!(has_param(patch, "fieldValidation"));
        assert!(has_param(patch, "force"));
        assert_eq!(
            patch["requestBody"]["content"]["application/strategic-merge-patch+json"]["schema"]
                ["$ref"],
            "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
        );
        assert_eq!(patch["operationId"], "patchAppsV1NamespacedDeployment");
        // Every PATCH with a kind's GVK has fieldValidation (kubectl looks at the first
        // it finds, in map order).
        for (path, item) in doc["paths"].as_object().unwrap() {
            if let Some(op) = item.get("patch") {
                assert!(has_param(op, "fieldValidation"), "{path}");
            }
        }
        let scale = patch_op(&doc, &format!("{path}/scale"));
        assert_eq!(scale["x-kubernetes-group-version-kind"]["kind"], "Scale");
        assert!(doc["components"]["schemas"]["io.k8s.api.autoscaling.v1.Scale"].is_object());
        let list = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments"]["get"];
        assert_eq!(list["x-kubernetes-action"], "list");
        assert!(has_param(list, "labelSelector") && has_param(list, "watch"));
        assert_eq!(
            list["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentList"
        );
        assert!(doc["paths"]["/apis/apps/v1/deployments"]["get"].is_object());
        for meta in ["Status", "DeleteOptions", "Patch", "ObjectMeta"] {
            assert!(doc["components"]["schemas"][format!("{META}{meta}")].is_object());
        }
        assert_well_formed(&doc);
    }

    #[test]
    fn every_group_version_is_well_formed() {
        let registry = Registry::with_builtins();
        for (group, versions) in registry.groups() {
            for version in versions {
                let doc = v3_group_version(&registry, &group, &version).unwrap();
                assert_well_formed(&doc);
                // Every resource's kind has its schema by GVK.
                for r in registry.all() {
                    // metrics.k8s.io has no schema in the vendored definitions.
                    if r.group == group
                        && r.version == version
                        && !crate::resource_metrics::is_metrics(&r)
                    {
                        assert!(
                            kind_definition(&r).is_some(),
                            "{}/{} {}",
                            group,
                            version,
                            r.kind
                        );
                    }
                }
            }
        }
        let core = v3_group_version(&registry, "", "v1").unwrap();
        let paths = &core["paths"];
        assert!(paths["/api/v1/namespaces/{namespace}/pods/{name}/status"]["patch"].is_object());
        assert_eq!(
            paths["/api/v1/namespaces/{namespace}/pods/{name}/eviction"]["post"]
                ["x-kubernetes-group-version-kind"]["kind"],
            "Eviction"
        );
        assert!(paths["/api/v1/namespaces/{name}/finalize"]["put"].is_object());
        assert!(paths["/api/v1/nodes/{name}"]["patch"].is_object());
        assert!(v3_group_version(&registry, "nope", "v1").is_none());
    }

    #[test]
    fn custom_kinds_use_the_extra_schema_hook() {
        let registry = Registry::with_builtins();
        registry.add(ResourceType {
            group: "stable.example.com".into(),
            version: "v1".into(),
            kind: "CronTab".into(),
            list_kind: "CronTabList".into(),
            plural: "crontabs".into(),
            singular: "crontab".into(),
            namespaced: true,
            short_names: vec!["ct".into()],
            categories: Vec::new(),
            subresources: vec!["status".into()],
            name_rule: crate::registry::NameRule::Subdomain,
            normalize: None,
            defaults: None,
            validate: None,
            on_create: None,
            columns: Vec::new(),
            selectable_fields: Vec::new(),
            field_value: None,
            virtual_create: false,
            schema_name: None,
            custom_schema: None,
            conversion: None,
            storage_prefix: None,
            scale_paths: None,
        });
        let untyped = v3_group_version(&registry, "stable.example.com", "v1").unwrap();
        let patch = patch_op(
            &untyped,
            "/apis/stable.example.com/v1/namespaces/{namespace}/crontabs/{name}",
        );
        assert!(has_param(patch, "fieldValidation"));
        assert_well_formed(&untyped);
        let extra = |r: &ResourceType| {
            (r.kind == "CronTab").then(|| {
                json!({
                    "type": "object",
                    "properties": {
                        "metadata": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
                        "spec": {"type": "object", "properties": {"cronSpec": {"type": "string"}}},
                    },
                })
            })
        };
        let doc = v3_group_version_with(&registry, "stable.example.com", "v1", &extra).unwrap();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["com.example.stable.v1.CronTab"]["x-kubernetes-group-version-kind"][0]["kind"],
            "CronTab"
        );
        assert!(schemas["com.example.stable.v1.CronTabList"].is_object());
        assert!(schemas[format!("{META}ObjectMeta")].is_object());
        assert_well_formed(&doc);
        let root = v3_root_with(&registry, &extra);
        assert!(root["paths"]["apis/stable.example.com/v1"].is_object());
        assert_ne!(
            root["paths"]["apis/stable.example.com/v1"],
            v3_root(&registry)["paths"]["apis/stable.example.com/v1"]
        );
    }
}

/// The OpenAPI v2 (Swagger 2.0) document of everything served, for clients that still
/// read `/openapi/v2` as JSON: the v3 group-version documents, merged and rewritten into
/// v2's shape (definitions, body parameters, response schemas).
pub(crate) fn v2_document(registry: &Registry, extra: ExtraSchema) -> Value {
    let mut paths = Map::new();
    let mut definitions = Map::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            let Some(doc) = v3_group_version_with(registry, &group, &version, extra) else {
                continue;
            };
            if let Some(schemas) = doc["components"]["schemas"].as_object() {
                for (name, schema) in schemas {
                    definitions.insert(name.clone(), v2_refs(schema.clone()));
                }
            }
            if let Some(doc_paths) = doc["paths"].as_object() {
                for (path, item) in doc_paths {
                    paths.insert(path.clone(), v2_path_item(item));
                }
            }
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": crate::server::KUBERNETES_VERSION},
        "paths": paths,
        "definitions": definitions,
    })
}

fn v2_refs(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => {
                            Value::String(r.replace("#/components/schemas/", "#/definitions/"))
                        }
                        (_, other) => v2_refs(other),
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(v2_refs).collect()),
        other => other,
    }
}

fn v2_parameter(param: &Value) -> Value {
    let mut p = param.clone();
    if let Some(map) = p.as_object_mut() {
        if let Some(Value::Object(schema)) = map.remove("schema") {
            for (k, v) in schema {
                map.entry(k).or_insert(v);
            }
        }
    }
    p
}

fn v2_operation(op: &Value) -> Value {
    let mut out = op.clone();
    let Some(map) = out.as_object_mut() else {
        return out;
    };
    let mut parameters: Vec<Value> = map
        .remove("parameters")
        .and_then(|p| p.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(v2_parameter)
        .collect();
    if let Some(body) = map.remove("requestBody") {
        let content = body["content"].as_object().cloned().unwrap_or_default();
        let schema = content
            .values()
            .next()
            .map(|c| c["schema"].clone())
            .unwrap_or(json!({}));
        parameters.push(json!({"name": "body", "in": "body", "required": true, "schema": schema}));
        map.insert("consumes".into(), json!(content.keys().collect::<Vec<_>>()));
    }
    map.insert("parameters".into(), Value::Array(parameters));
    if let Some(Value::Object(responses)) = map.remove("responses") {
        let mut produces = Vec::new();
        let converted: Map<String, Value> = responses
            .into_iter()
            .map(|(code, response)| {
                let mut r = json!({"description": response["description"].as_str().unwrap_or(code.as_str())});
                if let Some(content) = response["content"].as_object() {
                    for k in content.keys() {
                        if !produces.contains(k) {
                            produces.push(k.clone());
                        }
                    }
                    if let Some(first) = content.values().next() {
                        r["schema"] = first["schema"].clone();
                    }
                }
                (code, r)
            })
            .collect();
        map.insert("responses".into(), Value::Object(converted));
        map.insert("produces".into(), json!(produces));
    }
    v2_refs(out)
}

fn v2_path_item(item: &Value) -> Value {
    let Some(map) = item.as_object() else {
        return item.clone();
    };
    let converted: Map<String, Value> = map
        .iter()
        .map(|(k, v)| match k.as_str() {
            "parameters" => (
                k.clone(),
                Value::Array(
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .map(v2_parameter)
                        .collect(),
                ),
            ),
            "get" | "put" | "post" | "patch" | "delete" | "head" | "options" => {
                (k.clone(), v2_operation(v))
            }
            _ => (k.clone(), v.clone()),
        })
        .collect();
    v2_refs(Value::Object(converted))
}

#[cfg(test)]
mod v2_tests {
    use super::*;

    #[test]
    fn v2_has_definitions_body_parameters_and_no_dangling_refs() {
        let registry = Registry::with_builtins();
        let doc = v2_document(&registry, &no_extra_schema);
        assert_eq!(doc["swagger"], "2.0");
        let definitions = doc["definitions"].as_object().unwrap();
        let deployment = &definitions["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        let create = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments"]["post"];
        let body = create["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["in"] == "body")
            .unwrap();
        assert!(body["schema"]["$ref"]
            .as_str()
            .unwrap()
            .starts_with("#/definitions/"));
        let text = doc.to_string();
        assert!(!text.contains("#/components/schemas/"));
        fn refs(value: &Value, out: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    for (k, v) in map {
                        match (k.as_str(), v) {
                            ("$ref", Value::String(r)) => out.push(r.clone()),
                            _ => refs(v, out),
                        }
                    }
                }
                Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(
            found.len() > 100,
            "expected many references, found {}",
            found.len()
        );
        for r in found {
            let name = r
                .strip_prefix("#/definitions/")
                .unwrap_or_else(|| panic!("not a v2 reference: {r}"));
            assert!(definitions.contains_key(name), "dangling {r}");
        }
    }
}
