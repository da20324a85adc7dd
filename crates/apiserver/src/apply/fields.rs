//! Field ownership for server-side apply, in the `FieldsV1` format of upstream's
//! structured-merge-diff (`sigs.k8s.io/structured-merge-diff/fieldpath`).
//!
//! A field set is a JSON tree whose keys are path elements:
//! * `f:<name>` — a struct field or map key;
//! * `k:<json>` — the item of a keyed list whose key fields equal the (sorted) JSON object;
//! * `v:<json>` — the item of a set-like list of primitives equal to the JSON value;
//! * `.` — the node itself is a member (used when a node also has members below it).
//!
//! A node with no children (`{}`) is a member. Everything here is pure: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::patch::schema::{FieldKind, SchemaNode};

/// One path element sequence, e.g. `["f:spec", "f:replicas"]`.
pub(crate) type FieldPath = Vec<String>;

/// The `FieldsV1` tree of every field set in `object`.
///
/// `apiVersion`, `kind` and `status` are skipped, and of `metadata` only `labels` and
/// `annotations` are tracked.
pub(crate) fn field_set(object: &Value, schema: Option<SchemaNode<'_>>) -> Value {
    let mut root = Map::new();
    let Some(fields) = object.as_object() else {
        return Value::Object(root);
    };
    for (name, value) in fields {
        match name.as_str() {
            "apiVersion" | "kind" | "status" => {}
            "metadata" => {
                let Some(meta) = value.as_object() else {
                    continue;
                };
                let meta_schema = schema.and_then(|s| s.child("metadata"));
                let mut children = Map::new();
                for key in ["labels", "annotations"] {
                    if let Some(v) = meta.get(key) {
                        children.insert(
                            format!("f:{key}"),
                            node(v, meta_schema.and_then(|s| s.child(key))),
                        );
                    }
                }
                if !children.is_empty() {
                    root.insert("f:metadata".into(), Value::Object(children));
                }
            }
            _ => {
                root.insert(
                    format!("f:{name}"),
                    node(value, schema.and_then(|s| s.child(name))),
                );
            }
        }
    }
    Value::Object(root)
}

/// The set tree below one value (`{}` for a leaf).
fn node(value: &Value, schema: Option<SchemaNode<'_>>) -> Value {
    match value {
        Value::Object(fields) => {
            if matches!(schema.map(|s| s.field_kind()), Some(FieldKind::Scalar(_))) {
                return json!({});
            }
            let children = fields
                .iter()
                .map(|(k, v)| (format!("f:{k}"), node(v, schema.and_then(|s| s.child(k)))))
                .collect();
            Value::Object(children)
        }
        Value::Array(items) => list_node(items, schema),
        _ => json!({}),
    }
}

/// How the items of a list are identified.
enum ListKeys<'a> {
    /// By these key fields (`k:`).
    Keyed(Vec<&'a str>),
    /// By value, for sets of primitives (`v:`).
    Set,
    /// Not at all: the list is one atomic leaf.
    Atomic,
}

fn list_keys<'a>(schema: Option<SchemaNode<'a>>) -> ListKeys<'a> {
    let Some(s) = schema else {
        return ListKeys::Atomic;
    };
    match s.field_kind() {
        FieldKind::MergeList {
            merge_key: Some(key),
            ..
        } => ListKeys::Keyed(vec![key]),
        FieldKind::MergeList {
            merge_key: None, ..
        } => ListKeys::Set,
        _ => {
            let keys = s.list_map_keys();
            match s.list_type() {
                Some("map") if !keys.is_empty() => ListKeys::Keyed(keys),
                Some("set") => ListKeys::Set,
                _ => ListKeys::Atomic,
            }
        }
    }
}

fn list_node(items: &[Value], schema: Option<SchemaNode<'_>>) -> Value {
    let item_schema = schema.and_then(|s| s.items());
    let mut children = Map::new();
    match list_keys(schema) {
        ListKeys::Keyed(keys) => {
            // Every item must be an object carrying at least one key field; otherwise
            // ownership falls back to the whole list.
            let mut elements = Vec::with_capacity(items.len());
            for item in items {
                match item_key(item, &keys) {
                    Some(key) => elements.push(key),
                    None => return json!({}),
                }
            }
            for (item, element) in items.iter().zip(elements) {
                let mut inner = match node(item, item_schema) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                inner.insert(".".into(), json!({}));
                children.insert(element, Value::Object(inner));
            }
        }
        ListKeys::Set => {
            if items.iter().any(|i| i.is_object() || i.is_array()) {
                return json!({});
            }
            for item in items {
                children.insert(format!("v:{item}"), json!({}));
            }
        }
        ListKeys::Atomic => return json!({}),
    }
    Value::Object(children)
}

/// The `k:` element of a keyed list item: its key fields as JSON with sorted keys.
fn item_key(item: &Value, keys: &[&str]) -> Option<String> {
    let fields = item.as_object()?;
    let key: BTreeMap<&str, &Value> = keys
        .iter()
        .filter_map(|k| fields.get(*k).map(|v| (*k, v)))
        .collect();
    if key.is_empty() {
        return None;
    }
    serde_json::to_string(&key).ok().map(|s| format!("k:{s}"))
}

/// The member paths of a set, sorted. A `.` member is reported as its parent's path.
pub(crate) fn leaves(set: &Value) -> Vec<FieldPath> {
    let mut out = BTreeSet::new();
    collect(set, &mut Vec::new(), &mut out);
    out.into_iter().collect()
}

fn collect(set: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Some(children) = set.as_object() else {
        return;
    };
    if children.is_empty() {
        if !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        return;
    }
    for (element, child) in children {
        if element == "." {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
            continue;
        }
        prefix.push(element.clone());
        collect(child, prefix, out);
        prefix.pop();
    }
}

/// Builds a set tree from member paths.
fn from_leaves(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for element in path {
            let entry = node
                .entry(element.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            let Value::Object(next) = entry else {
                break;
            };
            node = next;
        }
    }
    // A member that also has members below it is marked with `.`.
    for path in paths {
        if let Some(Value::Object(node)) = lookup_mut(&mut root, path) {
            if !node.is_empty() {
                node.insert(".".into(), json!({}));
            }
        }
    }
    Value::Object(root)
}

fn lookup_mut<'a>(root: &'a mut Map<String, Value>, path: &[String]) -> Option<&'a mut Value> {
    let (first, rest) = path.split_first()?;
    let mut node = root.get_mut(first)?;
    for element in rest {
        node = node.as_object_mut()?.get_mut(element)?;
    }
    Some(node)
}

fn leaf_set(set: &Value) -> BTreeSet<FieldPath> {
    leaves(set).into_iter().collect()
}

/// Members of either set.
#[cfg(test)]
pub(crate) fn union(a: &Value, b: &Value) -> Value {
    let mut all = leaf_set(a);
    all.extend(leaf_set(b));
    from_leaves(&all)
}

/// Members of `a` that are not members of `b`.
#[cfg(test)]
pub(crate) fn difference(a: &Value, b: &Value) -> Value {
    let b = leaf_set(b);
    from_leaves(&leaf_set(a).into_iter().filter(|p| !b.contains(p)).collect())
}

/// Members of both sets.
#[cfg(test)]
pub(crate) fn intersection(a: &Value, b: &Value) -> Value {
    let b = leaf_set(b);
    from_leaves(&leaf_set(a).into_iter().filter(|p| b.contains(p)).collect())
}

fn is_empty_set(set: &Value) -> bool {
    set.as_object().is_none_or(Map::is_empty)
}

/// A parsed path element.
enum Element {
    Field(String),
    Key(Map<String, Value>),
    Value(Value),
    This,
}

fn parse_element(element: &str) -> Option<Element> {
    if element == "." {
        return Some(Element::This);
    }
    let (tag, rest) = element.split_once(':')?;
    match tag {
        "f" => Some(Element::Field(rest.to_string())),
        "k" => match serde_json::from_str(rest).ok()? {
            Value::Object(key) => Some(Element::Key(key)),
            _ => None,
        },
        "v" => serde_json::from_str(rest).ok().map(Element::Value),
        _ => None,
    }
}

fn matches_key(item: &Value, key: &Map<String, Value>) -> bool {
    item.as_object()
        .is_some_and(|fields| key.iter().all(|(k, v)| fields.get(k) == Some(v)))
}

fn step<'v>(value: &'v Value, element: &Element) -> Option<&'v Value> {
    match element {
        Element::This => Some(value),
        Element::Field(name) => value.as_object()?.get(name),
        Element::Key(key) => value.as_array()?.iter().find(|i| matches_key(i, key)),
        Element::Value(v) => value.as_array()?.iter().find(|i| *i == v),
    }
}

/// The value at a field path, if present.
pub(crate) fn value_at<'v>(object: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(object, |value, element| {
        step(value, &parse_element(element)?)
    })
}

/// Removes the field, map entry or list item at `path`; a no-op when it is absent.
pub(crate) fn remove_path(object: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let Some(last) = parse_element(last) else {
        return;
    };
    let mut node = object;
    for element in parents {
        let next = match parse_element(element) {
            Some(Element::This) => Some(node),
            Some(Element::Field(name)) => node.as_object_mut().and_then(|m| m.get_mut(&name)),
            Some(Element::Key(key)) => node
                .as_array_mut()
                .and_then(|items| items.iter_mut().find(|i| matches_key(i, &key))),
            Some(Element::Value(v)) => node
                .as_array_mut()
                .and_then(|items| items.iter_mut().find(|i| **i == v)),
            None => None,
        };
        let Some(next) = next else {
            return;
        };
        node = next;
    }
    match last {
        Element::This => {}
        Element::Field(name) => {
            if let Some(fields) = node.as_object_mut() {
                fields.remove(&name);
            }
        }
        Element::Key(key) => {
            if let Some(items) = node.as_array_mut() {
                items.retain(|i| !matches_key(i, &key));
            }
        }
        Element::Value(v) => {
            if let Some(items) = node.as_array_mut() {
                items.retain(|i| *i != v);
            }
        }
    }
}

/// A path in upstream's human form: `.spec.template.spec.containers[name="web"].image`.
pub(crate) fn human_path(path: &[String]) -> String {
    let mut out = String::new();
    for element in path {
        match parse_element(element) {
            Some(Element::Field(name)) => {
                out.push('.');
                out.push_str(&name);
            }
            Some(Element::Key(key)) => {
                let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push('[');
                out.push_str(&parts.join(","));
                out.push(']');
            }
            Some(Element::Value(v)) => out.push_str(&format!("[={v}]")),
            Some(Element::This) => {}
            None => {
                out.push('.');
                out.push_str(element);
            }
        }
    }
    out
}

fn is_own_entry(entry: &Value, manager: &str) -> bool {
    entry["manager"].as_str() == Some(manager) && entry["operation"].as_str() == Some("Apply")
}

/// Whether applying `applied_value` over `live_value` at `path` changes the field.
fn differs(path: &[String], live_value: Option<&Value>, applied_value: Option<&Value>) -> bool {
    // A keyed or set item is identified by its key: applying it never changes the item
    // node itself (its fields are checked separately).
    let is_item = path
        .last()
        .is_some_and(|e| e.starts_with("k:") || e.starts_with("v:"));
    if is_item {
        return false;
    }
    live_value != applied_value
}

/// Field ownership for one apply of `applied` by `manager` over `live`.
///
/// `live` must be the object as stored *before* the applied configuration is merged in:
/// conflicts compare its values with the applied ones. On success returns
/// * `live` with the fields removed that `manager` applied before, no longer applies, and
///   no other manager owns (merge `applied` into this afterwards), and
/// * the new `managedFields` array (`live`'s `metadata.managedFields` is left untouched in
///   the returned object). `manager`'s `Apply` entry holds the new set; it carries no
///   `apiVersion` or `time`, which the caller fills in. Entries whose sets became empty
///   are dropped.
///
/// Conflicts are the members of the new set owned by another manager entry (any
/// operation) whose live value differs from the applied one, as `(manager, human path)`.
/// Without `force` they are returned as the error; with `force` those members move to
/// `manager`. Members whose values agree are shared.
pub(crate) fn apply_ownership(
    live: &Value,
    applied: &Value,
    manager: &str,
    force: bool,
    schema: Option<SchemaNode<'_>>,
) -> Result<(Value, Value), Vec<(String, String)>> {
    let new_set = field_set(applied, schema);
    let new_leaves = leaf_set(&new_set);
    let mut entries: Vec<Value> = live["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();

    let mut conflicts = Vec::new();
    let mut taken: Vec<BTreeSet<FieldPath>> = vec![BTreeSet::new(); entries.len()];
    for (i, entry) in entries.iter().enumerate() {
        if is_own_entry(entry, manager) {
            continue;
        }
        let other = entry["manager"].as_str().unwrap_or_default().to_string();
        for path in leaf_set(&entry["fieldsV1"]).intersection(&new_leaves) {
            if differs(path, value_at(live, path), value_at(applied, path)) {
                conflicts.push((other.clone(), human_path(path)));
                taken[i].insert(path.clone());
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.dedup();
        return Err(conflicts);
    }

    let mut previous = BTreeSet::new();
    let mut others = BTreeSet::new();
    for (entry, taken) in entries.iter_mut().zip(&taken) {
        let set = leaf_set(&entry["fieldsV1"]);
        if is_own_entry(entry, manager) {
            previous.extend(set);
            continue;
        }
        let kept: BTreeSet<FieldPath> = set.difference(taken).cloned().collect();
        if !taken.is_empty() {
            entry["fieldsV1"] = from_leaves(&kept);
        }
        others.extend(kept);
    }

    let mut object = live.clone();
    let mut removed: Vec<&FieldPath> = previous
        .iter()
        .filter(|p| !new_leaves.contains(*p) && !others.contains(*p))
        .collect();
    // Shallowest first, skipping what lies below an already removed node: a list item is
    // found by its key fields, so they must not go before the item itself.
    removed.sort_by_key(|p| p.len());
    let mut done: Vec<&FieldPath> = Vec::new();
    for path in removed {
        if done.iter().any(|d| path.starts_with(d)) {
            continue;
        }
        remove_path(&mut object, path);
        done.push(path);
    }

    let own = json!({
        "manager": manager,
        "operation": "Apply",
        "fieldsType": "FieldsV1",
        "fieldsV1": new_set,
    });
    let mut fields = Vec::with_capacity(entries.len() + 1);
    let mut placed = false;
    for entry in entries {
        if is_own_entry(&entry, manager) {
            if !placed {
                fields.push(own.clone());
                placed = true;
            }
        } else {
            fields.push(entry);
        }
    }
    if !placed {
        fields.push(own);
    }
    fields.retain(|e| !is_empty_set(&e["fieldsV1"]));
    Ok((object, Value::Array(fields)))
}

/// Field ownership after a non-apply write (update or patch) by `manager`: the fields it
/// changed become its own (`operation: Update`), taken from whoever owned them, as
/// upstream records updates. Returns the new `managedFields`, or `None` when nothing
/// changed ownership. `apiVersion` and `time` are left for the caller.
pub(crate) fn record_update(
    live: &Value,
    next: &Value,
    manager: &str,
    schema: Option<SchemaNode<'_>>,
) -> Option<Value> {
    let changed: BTreeSet<FieldPath> = leaf_set(&field_set(next, schema))
        .into_iter()
        .filter(|p| differs(p, value_at(live, p), value_at(next, p)))
        .collect();
    if changed.is_empty() {
        return None;
    }
    let is_update_entry = |e: &Value| {
        e["manager"].as_str() == Some(manager) && e["operation"].as_str() == Some("Update")
    };
    let mut fields = Vec::new();
    let mut own = changed.clone();
    for mut entry in live["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let set = leaf_set(&entry["fieldsV1"]);
        if is_update_entry(&entry) {
            own.extend(set);
            continue;
        }
        let kept: BTreeSet<FieldPath> = set.difference(&changed).cloned().collect();
        entry["fieldsV1"] = from_leaves(&kept);
        if !kept.is_empty() {
            fields.push(entry);
        }
    }
    fields.push(json!({
        "manager": manager,
        "operation": "Update",
        "fieldsType": "FieldsV1",
        "fieldsV1": from_leaves(&own),
    }));
    Some(Value::Array(fields))
}

/// The message of a conflict error, as upstream words it.
pub(crate) fn conflict_message(conflicts: &[(String, String)], api_version: &str) -> String {
    if let [(manager, path)] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with \"{manager}\" using {api_version}: {path}"
        );
    }
    let mut by_manager: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (manager, path) in conflicts {
        by_manager.entry(manager).or_default().push(path);
    }
    let mut lines = Vec::new();
    for (manager, paths) in by_manager {
        lines.push(format!("conflicts with \"{manager}\" using {api_version}:"));
        lines.extend(paths.into_iter().map(|p| format!("- {p}")));
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests;
