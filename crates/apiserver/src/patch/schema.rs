//! Per-field patch metadata read from the vendored Kubernetes schema.
//!
//! Strategic merge patch needs to know, for every field it meets, whether a list is merged
//! by a key or replaced, and whether a map is merged or replaced. Upstream reads this from
//! Go struct tags; the same facts are published as the `x-kubernetes-patch-*` extensions in
//! the OpenAPI schema, so one generic walker over that document serves every built-in kind.
//! Nothing here is precomputed per kind: a [`SchemaNode`] is a borrowed view of one schema
//! object, and `$ref`/`allOf` are followed only when a field is actually visited.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{Map, Value};

/// The Kubernetes v1.33 definitions, vendored under `openapi/` (see its README).
const BUILTIN_DEFINITIONS: &str = include_str!("../../openapi/k8s-v1.33-definitions.json");

static BUILTIN: LazyLock<PatchSchema> = LazyLock::new(|| {
    PatchSchema::from_json_str(BUILTIN_DEFINITIONS).unwrap_or_else(|err| {
        // The file is compiled in and covered by a test, so this only guards against a
        // corrupted vendoring: degrade to JSON-merge semantics rather than abort the server.
        tracing::error!(%err, "vendored Kubernetes schema is unreadable; strategic merge patch falls back to JSON merge");
        PatchSchema::default()
    })
});

/// A `$ref` chain longer than this is treated as a cycle.
const MAX_REF_DEPTH: usize = 32;

/// Schema definitions indexed for patching.
#[derive(Debug, Default)]
pub(crate) struct PatchSchema {
    defs: Map<String, Value>,
    /// `"group/version/Kind"` to definition name.
    by_gvk: HashMap<String, String>,
}

/// Why a schema document could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SchemaError {
    #[error("schema document is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("schema document has no `$defs`, `definitions` or `components.schemas` object")]
    NoDefinitions,
}

impl PatchSchema {
    /// The built-in Kubernetes schema, parsed on first use.
    pub(crate) fn builtin() -> &'static PatchSchema {
        &BUILTIN
    }

    pub(crate) fn from_json_str(text: &str) -> Result<Self, SchemaError> {
        Self::from_value(serde_json::from_str(text)?)
    }

    /// Accepts JSON Schema (`$defs`), Swagger 2 (`definitions`) and OpenAPI 3
    /// (`components.schemas`) layouts, since all three carry the same extensions.
    pub(crate) fn from_value(doc: Value) -> Result<Self, SchemaError> {
        let Value::Object(mut doc) = doc else {
            return Err(SchemaError::NoDefinitions);
        };
        let defs = match ["$defs", "definitions"]
            .iter()
            .find_map(|key| doc.remove(*key).filter(Value::is_object))
        {
            Some(Value::Object(defs)) => defs,
            _ => match doc
                .remove("components")
                .and_then(|mut c| c.get_mut("schemas").map(Value::take))
            {
                Some(Value::Object(defs)) => defs,
                _ => return Err(SchemaError::NoDefinitions),
            },
        };
        let mut by_gvk = HashMap::new();
        // `Map` iterates in name order, so when two definitions claim one GVK the choice is
        // stable across runs.
        for (name, def) in &defs {
            let Some(gvks) = def
                .get("x-kubernetes-group-version-kind")
                .and_then(Value::as_array)
            else {
                continue;
            };
            for gvk in gvks {
                let field = |k: &str| gvk.get(k).and_then(Value::as_str);
                if let (Some(group), Some(version), Some(kind)) =
                    (field("group"), field("version"), field("kind"))
                {
                    by_gvk
                        .entry(gvk_key(group, version, kind))
                        .or_insert_with(|| name.clone());
                }
            }
        }
        Ok(Self { defs, by_gvk })
    }

    /// The root schema of a kind; the core group is `""`. `None` for kinds the schema does
    /// not know (custom resources), whose callers should fall back to JSON merge patch.
    pub(crate) fn for_kind(
        &self,
        group: &str,
        version: &str,
        kind: &str,
    ) -> Option<SchemaNode<'_>> {
        let name = self.by_gvk.get(&gvk_key(group, version, kind))?;
        self.definition(name)
    }

    /// A definition by its full name, e.g. `io.k8s.api.core.v1.PodSpec`.
    pub(crate) fn definition(&self, name: &str) -> Option<SchemaNode<'_>> {
        self.defs
            .get(name)
            .map(|raw| SchemaNode { schema: self, raw })
    }

    #[cfg(test)]
    pub(crate) fn definition_count(&self) -> usize {
        self.defs.len()
    }

    /// One step along a `$ref`/`allOf` indirection, if `v` is one.
    fn step<'a>(&'a self, v: &'a Value) -> Option<&'a Value> {
        if let Some(reference) = v.get("$ref").and_then(Value::as_str) {
            // Definition names contain dots but never slashes, so the last segment suffices
            // for `#/$defs/`, `#/definitions/` and `#/components/schemas/` alike.
            let name = reference.rsplit('/').next().unwrap_or(reference);
            return self.defs.get(name);
        }
        // OpenAPI v3 wraps a `$ref` in a one-element `allOf` so it can carry siblings such as
        // `default`; any further members only constrain values, which patching ignores.
        v.get("allOf")
            .and_then(Value::as_array)
            .and_then(|all| all.iter().find(|s| s.is_object()))
    }
}

fn gvk_key(group: &str, version: &str, kind: &str) -> String {
    format!("{group}/{version}/{kind}")
}

/// A borrowed view of the schema of one field (or of a kind's root object).
#[derive(Clone, Copy)]
pub(crate) struct SchemaNode<'a> {
    schema: &'a PatchSchema,
    /// The schema object as written at the field, before `$ref` resolution: the patch
    /// extensions live here, next to the `$ref`.
    raw: &'a Value,
}

impl std::fmt::Debug for SchemaNode<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaNode")
            .field("ref", &self.ref_name())
            .field("kind", &self.field_kind())
            .finish()
    }
}

/// What a field is, as far as patching cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldKind<'a> {
    /// A struct with named properties. `replace` (patch strategy `replace`) means a patch
    /// value replaces the whole object instead of merging into it.
    Object { replace: bool, retain_keys: bool },
    /// A string-keyed map (`additionalProperties`), merged key by key.
    Map { replace: bool },
    /// A list with patch strategy `merge`: items are matched by `merge_key`, or, for lists
    /// of primitives (no key), treated as a set.
    MergeList {
        merge_key: Option<&'a str>,
        retain_keys: bool,
    },
    /// Any other list (atomic, or a list-map without a patch strategy): replaced wholesale.
    ReplaceList,
    /// A primitive; the set says which JSON types it accepts.
    Scalar(ScalarTypes),
    /// Free-form (no usable type information): JSON merge semantics apply below.
    Any,
}

/// The JSON primitive types a scalar field accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ScalarTypes {
    pub string: bool,
    pub integer: bool,
    pub number: bool,
    pub boolean: bool,
}

impl ScalarTypes {
    fn union(self, other: Self) -> Self {
        Self {
            string: self.string || other.string,
            integer: self.integer || other.integer,
            number: self.number || other.number,
            boolean: self.boolean || other.boolean,
        }
    }

    fn is_empty(self) -> bool {
        !(self.string || self.integer || self.number || self.boolean)
    }

    /// Whether `v` (never null: nulls mean deletion and are handled before typing) fits.
    pub(crate) fn accepts(self, v: &Value) -> bool {
        match v {
            Value::String(_) => self.string,
            Value::Bool(_) => self.boolean,
            // Go's decoder rejects `1.0` for an int field, so the server must too.
            Value::Number(n) => self.number || (self.integer && (n.is_i64() || n.is_u64())),
            Value::Null => true,
            Value::Array(_) | Value::Object(_) => false,
        }
    }

    /// A short description for error messages.
    pub(crate) fn describe(self) -> String {
        let names: Vec<&str> = [
            (self.string, "string"),
            (self.integer, "integer"),
            (self.number, "number"),
            (self.boolean, "boolean"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        names.join(" or ")
    }
}

/// Parsed `x-kubernetes-patch-strategy` (e.g. `merge,retainKeys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PatchStrategy {
    pub merge: bool,
    pub replace: bool,
    pub retain_keys: bool,
}

impl<'a> SchemaNode<'a> {
    /// The schema objects from the field's own one to the fully resolved definition.
    fn chain(&self) -> impl Iterator<Item = &'a Value> + 'a {
        let schema = self.schema;
        std::iter::successors(Some(self.raw), move |v| schema.step(v)).take(MAX_REF_DEPTH)
    }

    fn resolved(&self) -> &'a Value {
        self.chain().last().unwrap_or(self.raw)
    }

    /// An extension as set on the field, else on the definition it refers to.
    fn extension(&self, name: &str) -> Option<&'a Value> {
        self.chain().find_map(|v| v.get(name))
    }

    fn node(&self, raw: &'a Value) -> SchemaNode<'a> {
        SchemaNode {
            schema: self.schema,
            raw,
        }
    }

    /// The name of the definition this field refers to, if any.
    pub(crate) fn ref_name(&self) -> Option<&'a str> {
        self.chain()
            .filter_map(|v| v.get("$ref").and_then(Value::as_str))
            .last()
            .map(|r| r.rsplit('/').next().unwrap_or(r))
    }

    pub(crate) fn patch_strategy(&self) -> PatchStrategy {
        let mut strategy = PatchStrategy::default();
        if let Some(text) = self
            .extension("x-kubernetes-patch-strategy")
            .and_then(Value::as_str)
        {
            for part in text.split(',').map(str::trim) {
                match part {
                    "merge" => strategy.merge = true,
                    "replace" => strategy.replace = true,
                    "retainKeys" => strategy.retain_keys = true,
                    _ => {}
                }
            }
        }
        strategy
    }

    pub(crate) fn merge_key(&self) -> Option<&'a str> {
        self.extension("x-kubernetes-patch-merge-key")
            .and_then(Value::as_str)
    }

    /// `x-kubernetes-list-type`: `atomic`, `set` or `map`. Informational only: strategic
    /// merge patch follows the patch strategy, as upstream does.
    pub(crate) fn list_type(&self) -> Option<&'a str> {
        self.extension("x-kubernetes-list-type")
            .and_then(Value::as_str)
    }

    pub(crate) fn list_map_keys(&self) -> Vec<&'a str> {
        self.extension("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|keys| keys.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// The schema of a property (for objects) or of the values (for maps).
    pub(crate) fn child(&self, key: &str) -> Option<SchemaNode<'a>> {
        let s = self.resolved();
        if let Some(prop) = s.get("properties").and_then(|p| p.get(key)) {
            return Some(self.node(prop));
        }
        s.get("additionalProperties")
            .filter(|ap| ap.is_object())
            .map(|ap| self.node(ap))
    }

    /// The schema of list items.
    pub(crate) fn items(&self) -> Option<SchemaNode<'a>> {
        self.resolved()
            .get("items")
            .filter(|i| i.is_object())
            .map(|i| self.node(i))
    }

    /// Walks a path of property names; any segment below a list (an index or a merge-key
    /// value) steps into the items.
    #[cfg(test)]
    pub(crate) fn lookup<'p>(
        &self,
        path: impl IntoIterator<Item = &'p str>,
    ) -> Option<SchemaNode<'a>> {
        let mut node = *self;
        for segment in path {
            node = match node.field_kind() {
                FieldKind::MergeList { .. } | FieldKind::ReplaceList => node.items()?,
                _ => node.child(segment)?,
            };
        }
        Some(node)
    }

    pub(crate) fn field_kind(&self) -> FieldKind<'a> {
        let strategy = self.patch_strategy();
        match shape(self.schema, self.resolved(), 0) {
            Shape::Object => FieldKind::Object {
                replace: strategy.replace,
                retain_keys: strategy.retain_keys,
            },
            Shape::Map => FieldKind::Map {
                replace: strategy.replace,
            },
            Shape::List if strategy.merge => FieldKind::MergeList {
                merge_key: self.merge_key(),
                retain_keys: strategy.retain_keys,
            },
            Shape::List => FieldKind::ReplaceList,
            Shape::Scalar(types) => FieldKind::Scalar(types),
            Shape::Any => FieldKind::Any,
        }
    }
}

enum Shape {
    Object,
    Map,
    List,
    Scalar(ScalarTypes),
    Any,
}

/// The structural shape of a resolved schema object.
fn shape(schema: &PatchSchema, s: &Value, depth: usize) -> Shape {
    let mut types: Vec<&str> = match s.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    types.retain(|t| *t != "null");
    let has = |k: &str| s.get(k).is_some();

    if types.contains(&"object")
        || (types.is_empty() && (has("properties") || has("additionalProperties")))
    {
        if s.get("properties").is_some_and(Value::is_object) {
            return Shape::Object;
        }
        if s.get("additionalProperties").is_some_and(Value::is_object) {
            return Shape::Map;
        }
        return Shape::Any;
    }
    if types.contains(&"array") || (types.is_empty() && has("items")) {
        return Shape::List;
    }
    if s.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return Shape::Scalar(ScalarTypes {
            string: true,
            integer: true,
            ..ScalarTypes::default()
        });
    }
    let mut scalar = ScalarTypes::default();
    for t in &types {
        match *t {
            "string" => scalar.string = true,
            "integer" => scalar.integer = true,
            "number" => scalar.number = true,
            "boolean" => scalar.boolean = true,
            _ => {}
        }
    }
    if !scalar.is_empty() {
        return Shape::Scalar(scalar);
    }
    // `IntOrString` and `Quantity` are `oneOf` primitive alternatives.
    if depth < MAX_REF_DEPTH {
        if let Some(branches) = s
            .get("oneOf")
            .or_else(|| s.get("anyOf"))
            .and_then(Value::as_array)
        {
            let mut union = ScalarTypes::default();
            for branch in branches {
                let resolved = std::iter::successors(Some(branch), |v| schema.step(v))
                    .take(MAX_REF_DEPTH)
                    .last()
                    .unwrap_or(branch);
                match shape(schema, resolved, depth + 1) {
                    Shape::Scalar(t) => union = union.union(t),
                    _ => return Shape::Any,
                }
            }
            if !union.is_empty() {
                return Shape::Scalar(union);
            }
        }
    }
    Shape::Any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin_kind(group: &str, version: &str, kind: &str) -> SchemaNode<'static> {
        PatchSchema::builtin()
            .for_kind(group, version, kind)
            .unwrap_or_else(|| panic!("{group}/{version}/{kind} missing from builtin schema"))
    }

    #[test]
    fn builtin_schema_loads() {
        assert!(PatchSchema::builtin().definition_count() > 500);
    }

    #[test]
    fn lookup_by_gvk_covers_core_and_named_groups() {
        let spec = builtin_kind("", "v1", "Pod").child("spec");
        assert_eq!(
            spec.and_then(|s| s.ref_name()),
            Some("io.k8s.api.core.v1.PodSpec")
        );
        assert!(PatchSchema::builtin()
            .for_kind("apps", "v1", "Deployment")
            .is_some());
        assert!(PatchSchema::builtin()
            .for_kind("", "v1", "Service")
            .is_some());
        assert!(PatchSchema::builtin()
            .for_kind("example.com", "v1", "Widget")
            .is_none());
        assert!(PatchSchema::builtin()
            .for_kind("apps", "v1", "Pod")
            .is_none());
    }

    #[test]
    fn pod_fields() {
        let pod = builtin_kind("", "v1", "Pod");
        let containers = pod.lookup(["spec", "containers"]).expect("containers");
        assert_eq!(
            containers.field_kind(),
            FieldKind::MergeList {
                merge_key: Some("name"),
                retain_keys: false
            }
        );
        assert_eq!(containers.list_map_keys(), vec!["name"]);
        assert_eq!(containers.list_type(), Some("map"));
        let ports = pod
            .lookup(["spec", "containers", "0", "ports"])
            .expect("ports");
        assert_eq!(
            ports.field_kind(),
            FieldKind::MergeList {
                merge_key: Some("containerPort"),
                retain_keys: false
            }
        );
        let volumes = pod.lookup(["spec", "volumes"]).expect("volumes");
        assert_eq!(
            volumes.field_kind(),
            FieldKind::MergeList {
                merge_key: Some("name"),
                retain_keys: true
            }
        );
        assert_eq!(
            pod.lookup(["spec", "tolerations"]).map(|n| n.field_kind()),
            Some(FieldKind::ReplaceList)
        );
        assert_eq!(
            pod.lookup(["metadata", "labels"]).map(|n| n.field_kind()),
            Some(FieldKind::Map { replace: false })
        );
        assert_eq!(
            pod.lookup(["metadata", "finalizers"])
                .map(|n| n.field_kind()),
            Some(FieldKind::MergeList {
                merge_key: None,
                retain_keys: false
            })
        );
        assert!(matches!(
            pod.lookup(["spec", "containers", "x", "image"])
                .map(|n| n.field_kind()),
            Some(FieldKind::Scalar(ScalarTypes { string: true, .. }))
        ));
        assert!(matches!(
            pod.lookup(["spec", "securityContext"])
                .map(|n| n.field_kind()),
            Some(FieldKind::Object { replace: false, .. })
        ));
        assert!(pod.lookup(["spec", "noSuchField"]).is_none());
    }

    #[test]
    fn int_or_string_and_quantity_are_scalars() {
        let pod = builtin_kind("", "v1", "Pod");
        let limit = pod
            .lookup(["spec", "containers", "0", "resources", "limits", "cpu"])
            .expect("quantity");
        let FieldKind::Scalar(types) = limit.field_kind() else {
            panic!("quantity should be scalar, got {limit:?}");
        };
        assert!(types.accepts(&Value::from("500m")) && types.accepts(&Value::from(2)));
        let svc = builtin_kind("", "v1", "Service");
        let target = svc
            .lookup(["spec", "ports", "0", "targetPort"])
            .expect("targetPort");
        let FieldKind::Scalar(types) = target.field_kind() else {
            panic!("IntOrString should be scalar");
        };
        assert!(types.accepts(&Value::from("http")) && types.accepts(&Value::from(8080)));
        assert!(!types.accepts(&Value::from(1.5)));
    }

    #[test]
    fn strategies_on_objects() {
        let deploy = builtin_kind("apps", "v1", "Deployment");
        assert_eq!(
            deploy.lookup(["spec", "strategy"]).map(|n| n.field_kind()),
            Some(FieldKind::Object {
                replace: false,
                retain_keys: true
            })
        );
        let pdb = builtin_kind("policy", "v1", "PodDisruptionBudget");
        assert_eq!(
            pdb.lookup(["spec", "selector"]).map(|n| n.field_kind()),
            Some(FieldKind::Object {
                replace: true,
                retain_keys: false
            })
        );
    }

    #[test]
    fn free_form_objects_are_any() {
        let crd = builtin_kind("apiextensions.k8s.io", "v1", "CustomResourceDefinition");
        let fields_v1 = builtin_kind("", "v1", "Pod")
            .lookup(["metadata", "managedFields", "0", "fieldsV1"])
            .expect("fieldsV1");
        assert_eq!(fields_v1.field_kind(), FieldKind::Any);
        assert!(crd.lookup(["spec", "versions"]).is_some());
    }

    #[test]
    fn other_document_layouts_and_errors() {
        let doc = serde_json::json!({
            "components": {"schemas": {
                "T": {
                    "type": "object",
                    "x-kubernetes-group-version-kind": [{"group": "g", "version": "v", "kind": "T"}],
                    "properties": {"items": {"type": "array", "items": {"allOf": [{"$ref": "#/components/schemas/I"}]},
                        "x-kubernetes-patch-strategy": "merge", "x-kubernetes-patch-merge-key": "id"}}
                },
                "I": {"type": "object", "properties": {"id": {"type": "string"}}}
            }}
        });
        let schema = PatchSchema::from_value(doc).expect("layout");
        let t = schema.for_kind("g", "v", "T").expect("T");
        let id = t.lookup(["items", "0", "id"]).expect("id");
        assert!(matches!(id.field_kind(), FieldKind::Scalar(_)));
        assert_eq!(
            t.lookup(["items", "0"]).and_then(|n| n.ref_name()),
            Some("I")
        );
        assert!(matches!(
            PatchSchema::from_json_str("{}"),
            Err(SchemaError::NoDefinitions)
        ));
        assert!(matches!(
            PatchSchema::from_json_str("{"),
            Err(SchemaError::Json(_))
        ));
    }

    #[test]
    fn ref_cycles_terminate() {
        let doc = serde_json::json!({"$defs": {
            "A": {"$ref": "#/$defs/B"},
            "B": {"$ref": "#/$defs/A"}
        }});
        let schema = PatchSchema::from_value(doc).expect("cycle doc");
        let a = schema.definition("A").expect("A");
        assert_eq!(a.field_kind(), FieldKind::Any);
        assert!(a.child("x").is_none());
    }
}
