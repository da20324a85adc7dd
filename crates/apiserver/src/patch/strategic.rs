//! Strategic merge patch (`application/strategic-merge-patch+json`), the apply half of
//! upstream's `k8s.io/apimachinery/pkg/util/strategicpatch`.
//!
//! Semantics follow upstream, including its list ordering, because kubectl computes patches
//! against the results upstream produces:
//! - maps merge recursively and `null` deletes a key;
//! - lists whose schema says patch strategy `merge` are merged item by item (by the merge
//!   key, or as a set for primitives); other lists are replaced;
//! - directives: `$patch: replace|delete` in maps and in merged lists,
//!   `$retainKeys`, `$setElementOrder/<list>`, `$deleteFromPrimitiveList/<list>`.
//!
//! Deliberate differences from upstream, none of which changes the result of a patch
//! kubectl computes:
//! - values the patch adds where the original has nothing are cleaned of directives and
//!   `null`s recursively (upstream copies some verbatim, e.g. a new item appended to a
//!   merged list keeps its nested `null`s, and it drops a new map carrying `$patch: replace`);
//! - the patch is type-checked against the schema here, instead of failing later when the
//!   result is decoded into Go structs;
//! - `$deleteFromPrimitiveList` runs after the other fields of its map (upstream's order
//!   depends on Go map iteration);
//! - `$setElementOrder` on a list that is not merged is ignored (upstream errors or
//!   misbehaves);
//! - merged lists are indexed by hash, so that large request bodies stay linear.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};

use serde_json::{Map, Value};

use super::error::{json_type, PatchError};
use super::schema::{FieldKind, SchemaNode};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";

/// Applies a strategic merge patch to `original`.
///
/// `schema` is the root of the object's kind (see
/// [`PatchSchema::for_kind`](super::schema::PatchSchema::for_kind)). Without one, and below
/// any field the schema does not describe, lists are replaced and maps merged: JSON merge
/// patch semantics, with the map-level directives still honoured.
pub(crate) fn apply(
    original: &Value,
    patch: &Value,
    schema: Option<SchemaNode<'_>>,
) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::Malformed {
            path: Path::Root.to_string(),
            message: format!(
                "a strategic merge patch must be a JSON object, got {}",
                json_type(patch)
            ),
        });
    };
    let original = match original {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    merge_object(original, patch, schema, &Path::Root).map(Value::Object)
}

/// Where in the document a value sits, for error messages. Built on the stack as the merge
/// descends, so it costs nothing unless an error is reported.
#[derive(Clone, Copy)]
enum Path<'p> {
    Root,
    Field(&'p Path<'p>, &'p str),
    Index(&'p Path<'p>, usize),
    /// A list item identified by its merge key.
    Item(&'p Path<'p>, &'p str, &'p Value),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn write(path: &Path<'_>, out: &mut String) {
            match path {
                Path::Root => {}
                Path::Field(parent, name) => {
                    write(parent, out);
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                Path::Index(parent, i) => {
                    write(parent, out);
                    let _ = write!(out, "[{i}]");
                }
                Path::Item(parent, key, value) => {
                    write(parent, out);
                    match value {
                        Value::String(s) => {
                            let _ = write!(out, "[{key}={s}]");
                        }
                        other => {
                            let _ = write!(out, "[{key}={other}]");
                        }
                    }
                }
            }
        }
        let mut out = String::new();
        write(self, &mut out);
        if out.is_empty() {
            f.write_str("<root>")
        } else {
            f.write_str(&out)
        }
    }
}

fn malformed(path: &Path<'_>, message: impl Into<String>) -> PatchError {
    PatchError::Malformed {
        path: path.to_string(),
        message: message.into(),
    }
}

fn unprocessable(path: &Path<'_>, message: impl Into<String>) -> PatchError {
    PatchError::Unprocessable {
        path: path.to_string(),
        message: message.into(),
    }
}

fn missing_merge_key(path: &Path<'_>, key: &str, item: &Value) -> PatchError {
    PatchError::MissingMergeKey {
        path: path.to_string(),
        key: key.to_owned(),
        item: item.to_string(),
    }
}

fn kind_of<'a>(node: Option<SchemaNode<'a>>) -> FieldKind<'a> {
    node.map_or(FieldKind::Any, |n| n.field_kind())
}

fn child_of<'a>(node: Option<SchemaNode<'a>>, key: &str) -> Option<SchemaNode<'a>> {
    node.and_then(|n| n.child(key))
}

fn items_of<'a>(node: Option<SchemaNode<'a>>) -> Option<SchemaNode<'a>> {
    node.and_then(|n| n.items())
}

fn is_directive_key(key: &str) -> bool {
    key == PATCH
        || key == RETAIN_KEYS
        || key.starts_with(SET_ELEMENT_ORDER)
        || key.starts_with(DELETE_FROM_PRIMITIVE_LIST)
}

/// The list field a `$prefix/<field>` directive key names, `None` if `key` is not one.
fn directive_field<'k>(
    key: &'k str,
    prefix: &str,
    path: &Path<'_>,
) -> Result<Option<&'k str>, PatchError> {
    let Some(rest) = key.strip_prefix(prefix) else {
        return Ok(None);
    };
    match rest.strip_prefix('/') {
        Some(field) if !field.is_empty() => Ok(Some(field)),
        _ => Err(malformed(
            path,
            format!("invalid directive key {key:?}: expected {prefix}/<field>"),
        )),
    }
}

/// Rejects a patch value whose JSON type contradicts the schema. Upstream fails the same
/// patches when it decodes the result into Go structs; checking here names the field.
fn check_type(
    patch: &Value,
    node: Option<SchemaNode<'_>>,
    path: &Path<'_>,
) -> Result<(), PatchError> {
    if patch.is_null() {
        return Ok(());
    }
    let (ok, expected) = match kind_of(node) {
        FieldKind::Object { .. } | FieldKind::Map { .. } => {
            (patch.is_object(), "object".to_owned())
        }
        FieldKind::MergeList { .. } | FieldKind::ReplaceList => {
            (patch.is_array(), "array".to_owned())
        }
        FieldKind::Scalar(types) => (types.accepts(patch), types.describe()),
        FieldKind::Any => return Ok(()),
    };
    if ok {
        Ok(())
    } else {
        Err(PatchError::TypeMismatch {
            path: path.to_string(),
            expected,
            found: json_type(patch),
        })
    }
}

/// The identity of a merge-key value or of a primitive list item, hashable so that list
/// merging stays linear: a patch body can hold a hundred thousand items.
///
/// Numbers compare by value: Go decodes every JSON number to float64, so `80` and `80.0`
/// are the same merge key upstream.
#[derive(Debug, Hash, PartialEq, Eq)]
enum Id<'v> {
    Str(&'v str),
    Num(u64),
    Bool(bool),
    /// Objects, arrays and null never name list items in valid data; they only need to
    /// compare consistently.
    Other(String),
}

fn id(v: &Value) -> Id<'_> {
    match v {
        Value::String(s) => Id::Str(s),
        Value::Bool(b) => Id::Bool(*b),
        Value::Number(n) => match n.as_f64() {
            // `+ 0.0` folds -0.0 into 0.0, which compare equal as floats.
            Some(f) => Id::Num((f + 0.0).to_bits()),
            None => Id::Other(n.to_string()),
        },
        other => Id::Other(other.to_string()),
    }
}

/// Positions of the first occurrence of each identity.
fn index_of<'v>(ids: impl IntoIterator<Item = Option<&'v Value>>) -> HashMap<Id<'v>, usize> {
    let mut index = HashMap::new();
    for (pos, v) in ids.into_iter().enumerate() {
        if let Some(v) = v {
            index.entry(id(v)).or_insert(pos);
        }
    }
    index
}

/// Merges a patch map into an original map, honouring a map-level `$patch`.
fn merge_object(
    original: Map<String, Value>,
    patch: &Map<String, Value>,
    node: Option<SchemaNode<'_>>,
    path: &Path<'_>,
) -> Result<Map<String, Value>, PatchError> {
    match patch.get(PATCH) {
        None => merge_fields(original, patch, node, path),
        Some(directive) => match directive.as_str() {
            Some("replace") => merge_fields(Map::new(), patch, node, path),
            // Upstream leaves an empty map rather than removing the field.
            Some("delete") => Ok(Map::new()),
            _ => Err(malformed(
                path,
                format!("unknown patch type {directive} in map"),
            )),
        },
    }
}

/// Merges the fields of `patch` into `original`, ignoring any `$patch` key.
fn merge_fields(
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
    node: Option<SchemaNode<'_>>,
    path: &Path<'_>,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(retain) = patch.get(RETAIN_KEYS) {
        apply_retain_keys(&mut original, patch, retain, path)?;
    }

    // `$setElementOrder` merges its list itself, so that list is skipped below.
    let mut ordered: HashSet<&str> = HashSet::new();
    for (key, value) in patch {
        let Some(field) = directive_field(key, SET_ELEMENT_ORDER, path)? else {
            continue;
        };
        let field_path = Path::Field(path, field);
        if apply_element_order(
            &mut original,
            patch,
            field,
            value,
            child_of(node, field),
            &field_path,
        )? {
            ordered.insert(field);
        }
    }

    for (key, value) in patch {
        if is_directive_key(key) || ordered.contains(&key.as_str()) {
            continue;
        }
        let child = child_of(node, key);
        let field_path = Path::Field(path, key);
        if value.is_null() {
            original.remove(key);
            continue;
        }
        let merged = match original.get_mut(key) {
            Some(slot) => merge_value(slot.take(), value, child, &field_path)?,
            None => new_value(value, child, &field_path)?,
        };
        match merged {
            Some(v) => {
                original.insert(key.clone(), v);
            }
            None => {
                original.remove(key);
            }
        }
    }

    // Deletions run after additions so that a patch doing both ends without the value;
    // upstream's order here depends on Go's map iteration.
    for (key, value) in patch {
        let Some(field) = directive_field(key, DELETE_FROM_PRIMITIVE_LIST, path)? else {
            continue;
        };
        let field_path = Path::Field(path, field);
        let Value::Array(to_delete) = value else {
            return Err(malformed(
                &field_path,
                format!("{key} must be a list, got {}", json_type(value)),
            ));
        };
        if to_delete.iter().any(|v| v.is_object() || v.is_array()) {
            return Err(malformed(
                &field_path,
                format!("{key} may only list primitive values"),
            ));
        }
        // Upstream applies the deletion whatever the list's patch strategy.
        if let Some(Value::Array(items)) = original.get_mut(field) {
            if items.iter().any(|v| v.is_object() || v.is_array()) {
                return Err(unprocessable(
                    &field_path,
                    format!("{key} applies only to lists of primitives"),
                ));
            }
            let to_delete: HashSet<Id<'_>> = to_delete.iter().map(id).collect();
            items.retain(|item| !to_delete.contains(&id(item)));
        }
    }
    Ok(original)
}

/// `$retainKeys`: drop every original field not listed; the patch may only set listed
/// fields.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    retain: &Value,
    path: &Path<'_>,
) -> Result<(), PatchError> {
    let bad_format = || malformed(path, "$retainKeys must be a list of field names");
    let Value::Array(list) = retain else {
        return Err(bad_format());
    };
    let keep: HashSet<&str> = list
        .iter()
        .map(|v| v.as_str().ok_or_else(bad_format))
        .collect::<Result<_, _>>()?;
    for (key, value) in patch {
        if value.is_null() || is_directive_key(key) {
            continue;
        }
        if !keep.contains(&key.as_str()) {
            return Err(unprocessable(
                path,
                format!(
                    "patch content doesn't match $retainKeys list: {key:?} is set but not retained"
                ),
            ));
        }
    }
    original.retain(|key, _| keep.contains(&key.as_str()));
    Ok(())
}

/// Merges `patch` into an existing value. `None` means the field goes away.
fn merge_value(
    original: Value,
    patch: &Value,
    node: Option<SchemaNode<'_>>,
    path: &Path<'_>,
) -> Result<Option<Value>, PatchError> {
    check_type(patch, node, path)?;
    match (original, patch) {
        (Value::Object(original), Value::Object(p)) => {
            if matches!(
                kind_of(node),
                FieldKind::Object { replace: true, .. } | FieldKind::Map { replace: true }
            ) {
                return new_value(patch, node, path);
            }
            merge_object(original, p, node, path).map(|m| Some(Value::Object(m)))
        }
        (Value::Array(original), Value::Array(p)) => {
            merge_list(original, p, node, path).map(|l| Some(Value::Array(l)))
        }
        // Different types (or scalars): the patch value wins.
        (_, patch) => new_value(patch, node, path),
    }
}

/// The value `patch` produces where the original has none: directives are applied to
/// nothing, so `$patch: delete` yields no value and nested `null`s disappear.
fn new_value(
    patch: &Value,
    node: Option<SchemaNode<'_>>,
    path: &Path<'_>,
) -> Result<Option<Value>, PatchError> {
    check_type(patch, node, path)?;
    match patch {
        Value::Object(p) => match p.get(PATCH) {
            None => merge_fields(Map::new(), p, node, path).map(|m| Some(Value::Object(m))),
            Some(directive) => match directive.as_str() {
                Some("delete") => Ok(None),
                Some("replace") => {
                    merge_fields(Map::new(), p, node, path).map(|m| Some(Value::Object(m)))
                }
                _ => Err(malformed(
                    path,
                    format!("unknown patch type {directive} in map"),
                )),
            },
        },
        Value::Array(p) => merge_list(Vec::new(), p, node, path).map(|l| Some(Value::Array(l))),
        other => Ok(Some(other.clone())),
    }
}

fn merge_list(
    original: Vec<Value>,
    patch: &[Value],
    node: Option<SchemaNode<'_>>,
    path: &Path<'_>,
) -> Result<Vec<Value>, PatchError> {
    match kind_of(node) {
        FieldKind::MergeList { merge_key, .. } => {
            merge_merging_list(original, patch, items_of(node), merge_key, path).map(|m| m.merged)
        }
        _ => {
            let items = items_of(node);
            let mut out = Vec::with_capacity(patch.len());
            for (i, item) in patch.iter().enumerate() {
                if let Some(v) = new_value(item, items, &Path::Index(path, i))? {
                    out.push(v);
                }
            }
            Ok(out)
        }
    }
}

/// How an item is identified in a merged list: its merge-key value, or itself for
/// primitives.
fn ident<'v>(item: &'v Value, merge_key: Option<&str>) -> Option<&'v Value> {
    match merge_key {
        Some(key) => item.get(key),
        None => Some(item),
    }
}

struct MergedList {
    merged: Vec<Value>,
    /// The identities upstream consults as "the live order" when a `$setElementOrder`
    /// reorders this result; see [`merge_merging_list`].
    server_order: Vec<Option<Value>>,
}

/// Merges a list with patch strategy `merge`.
fn merge_merging_list(
    original: Vec<Value>,
    patch: &[Value],
    items: Option<SchemaNode<'_>>,
    merge_key: Option<&str>,
    path: &Path<'_>,
) -> Result<MergedList, PatchError> {
    let mut item_type: Option<&'static str> = None;
    for (i, v) in original.iter().chain(patch).enumerate() {
        let t = json_type(v);
        if let Some(patch_index) = i.checked_sub(original.len()) {
            let item_path = Path::Index(path, patch_index);
            if v.is_null() {
                return Err(unprocessable(
                    &item_path,
                    "items of a merged list must not be null",
                ));
            }
            if v.get(PATCH).is_none() {
                check_type(v, items, &item_path)?;
            }
        }
        match (t, item_type) {
            ("array", _) => return Err(unprocessable(path, "lists of lists are not supported")),
            ("null", _) => {
                return Err(unprocessable(
                    path,
                    "items of a merged list must not be null",
                ))
            }
            (_, None) => item_type = Some(t),
            (_, Some(seen)) if seen != t => {
                return Err(unprocessable(
                    path,
                    format!("list items must all be of one type, found {seen} and {t}"),
                ));
            }
            _ => {}
        }
    }
    match item_type {
        None => Ok(MergedList {
            merged: original,
            server_order: Vec::new(),
        }),
        Some("object") => {
            let Some(key) = merge_key else {
                return Err(unprocessable(
                    path,
                    "cannot merge a list of objects whose schema declares no merge key",
                ));
            };
            merge_keyed_list(original, patch, items, key, path)
        }
        Some(_) => Ok(merge_primitive_list(original, patch)),
    }
}

/// A merged list of primitives is a set: union, patch items ordered as in the patch and
/// interleaved with the others by their original positions.
fn merge_primitive_list(original: Vec<Value>, patch: &[Value]) -> MergedList {
    let server_order: Vec<Option<Value>> = original.iter().cloned().map(Some).collect();
    let patch_order: Vec<Option<Value>> = patch.iter().cloned().map(Some).collect();
    let mut seen: HashSet<Id<'_>> = HashSet::new();
    let union: Vec<Value> = original
        .iter()
        .chain(patch)
        .filter(|v| seen.insert(id(v)))
        .cloned()
        .collect();
    let merged = normalize_order(union, &patch_order, &server_order, None);
    MergedList {
        merged,
        server_order,
    }
}

fn merge_keyed_list(
    original: Vec<Value>,
    patch: &[Value],
    items: Option<SchemaNode<'_>>,
    key: &str,
    path: &Path<'_>,
) -> Result<MergedList, PatchError> {
    let original_len = original.len();
    let idents = |list: &[Value]| -> Vec<Option<Value>> {
        list.iter().map(|v| v.get(key).cloned()).collect()
    };
    let original_order = idents(&original);

    let mut live = original;
    let mut replace = false;
    let mut deleted: HashSet<Id<'_>> = HashSet::new();
    let mut regular: Vec<(usize, &Map<String, Value>)> = Vec::with_capacity(patch.len());
    for (i, item) in patch.iter().enumerate() {
        let item_path = Path::Index(path, i);
        let Value::Object(fields) = item else {
            return Err(unprocessable(&item_path, "list items must all be objects"));
        };
        let Some(directive) = fields.get(PATCH) else {
            regular.push((i, fields));
            continue;
        };
        match directive.as_str() {
            Some("delete") => {
                let Some(target) = fields.get(key) else {
                    return Err(missing_merge_key(&item_path, key, item));
                };
                deleted.insert(id(target));
            }
            // Processed after the loop so that later `$patch` items are still validated.
            Some("replace") => replace = true,
            Some("merge") => {
                return Err(malformed(
                    &item_path,
                    "merging lists cannot yet be specified in the patch",
                ));
            }
            _ => {
                return Err(malformed(
                    &item_path,
                    format!("unknown patch type {directive} in list item"),
                ));
            }
        }
    }

    if !deleted.is_empty() {
        live.retain(|v| !v.get(key).is_some_and(|k| deleted.contains(&id(k))));
    }

    if replace {
        let mut merged = Vec::with_capacity(regular.len());
        for (i, fields) in regular {
            let item_path = Path::Index(path, i);
            if !fields.contains_key(key) {
                return Err(missing_merge_key(&item_path, key, &patch[i]));
            }
            merged.push(Value::Object(merge_fields(
                Map::new(),
                fields,
                items,
                &item_path,
            )?));
        }
        return Ok(MergedList {
            merged,
            server_order: original_order,
        });
    }

    let live_order = idents(&live);
    let mut positions = index_of(live_order.iter().map(Option::as_ref));
    let mut appended: Vec<Option<Value>> = Vec::new();
    let mut patch_order: Vec<Option<Value>> = Vec::with_capacity(regular.len());
    for (i, fields) in regular {
        let Some(item_id) = fields.get(key) else {
            return Err(missing_merge_key(&Path::Index(path, i), key, &patch[i]));
        };
        patch_order.push(Some(item_id.clone()));
        let item_path = Path::Item(path, key, item_id);
        match positions.get(&id(item_id)).copied() {
            Some(pos) => {
                let merged = match live[pos].take() {
                    Value::Object(current) => merge_fields(current, fields, items, &item_path)?,
                    _ => merge_fields(Map::new(), fields, items, &item_path)?,
                };
                live[pos] = Value::Object(merged);
            }
            None => {
                positions.insert(id(item_id), live.len());
                live.push(Value::Object(merge_fields(
                    Map::new(),
                    fields,
                    items,
                    &item_path,
                )?));
                appended.push(Some(item_id.clone()));
            }
        }
    }
    for (i, v) in live.iter().enumerate() {
        if v.get(key).is_none() {
            return Err(missing_merge_key(&Path::Index(path, i), key, v));
        }
    }

    let merged = normalize_order(live, &patch_order, &live_order, Some(key));
    // Upstream deletes items from the live list in place, and the items it then appends
    // land in the slots freed at the end of the same backing array; the `$setElementOrder`
    // step later reads that array as "the live order". Reproducing it keeps results
    // identical to upstream's when a patch both deletes and adds items.
    let mut server_order = live_order;
    server_order.extend(appended);
    server_order.truncate(original_len);
    Ok(MergedList {
        merged,
        server_order,
    })
}

/// Upstream's ordering of a merged list: items named by the patch (or by
/// `$setElementOrder`) follow `patch_order`; the other items keep their relative live
/// order and are interleaved by their live positions. An item absent from the live list
/// goes before any server-only item not yet placed.
fn normalize_order(
    merged: Vec<Value>,
    patch_order: &[Option<Value>],
    server_order: &[Option<Value>],
    merge_key: Option<&str>,
) -> Vec<Value> {
    let patch_index = index_of(patch_order.iter().map(Option::as_ref));
    let server_index = index_of(server_order.iter().map(Option::as_ref));
    let live_pos =
        |item: &Value| ident(item, merge_key).and_then(|v| server_index.get(&id(v)).copied());
    let mut from_patch: Vec<(usize, Value)> = Vec::new();
    let mut server_only: Vec<(usize, Value)> = Vec::new();
    for item in merged {
        let in_patch = ident(&item, merge_key).and_then(|v| patch_index.get(&id(v)).copied());
        match in_patch {
            Some(pos) => from_patch.push((pos, item)),
            None => {
                let pos = live_pos(&item).unwrap_or(usize::MAX);
                server_only.push((pos, item));
            }
        }
    }
    from_patch.sort_by_key(|(pos, _)| *pos);
    server_only.sort_by_key(|(pos, _)| *pos);

    let mut out = Vec::with_capacity(from_patch.len() + server_only.len());
    let mut left = server_only.into_iter().map(|(_, v)| v).peekable();
    let mut right = from_patch.into_iter().map(|(_, v)| v).peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => matches!((live_pos(l), live_pos(r)), (Some(a), Some(b)) if a < b),
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    out
}

/// `$setElementOrder/<field>`: merges the field's list (if the patch has one) and orders
/// the result as listed. Returns whether the list was handled here.
fn apply_element_order(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    field: &str,
    order: &Value,
    node: Option<SchemaNode<'_>>,
    path: &Path<'_>,
) -> Result<bool, PatchError> {
    let Value::Array(order) = order else {
        return Err(malformed(
            path,
            format!(
                "{SET_ELEMENT_ORDER}/{field} must be a list, got {}",
                json_type(order)
            ),
        ));
    };
    // Only merged lists have an order to set; for others the patch list is taken as is.
    let FieldKind::MergeList { merge_key, .. } = kind_of(node) else {
        return Ok(false);
    };
    let order_ids: Vec<Option<Value>> = order
        .iter()
        .map(|o| match merge_key {
            Some(key) => match o.get(key) {
                Some(id) if o.is_object() => Ok(Some(id.clone())),
                _ => Err(missing_merge_key(path, key, o)),
            },
            None if o.is_object() || o.is_array() || o.is_null() => Err(malformed(
                path,
                format!("{SET_ELEMENT_ORDER}/{field} may only list primitive values"),
            )),
            None => Ok(Some(o.clone())),
        })
        .collect::<Result<_, _>>()?;

    let patch_list = match patch.get(field) {
        None => None,
        Some(Value::Array(p)) => Some(p.as_slice()),
        // The field is being deleted; there is nothing to order.
        Some(Value::Null) => return Ok(false),
        Some(other) => {
            return Err(PatchError::TypeMismatch {
                path: path.to_string(),
                expected: "array".to_owned(),
                found: json_type(other),
            });
        }
    };
    if let Some(p) = patch_list {
        validate_against_order(p, &order_ids, merge_key, path)?;
    }

    let original_list = match original.get_mut(field) {
        Some(Value::Array(list)) => Some(std::mem::take(list)),
        _ => None,
    };
    let MergedList {
        merged,
        server_order,
    } = match (original_list, patch_list) {
        (None, None) => return Ok(true),
        (Some(list), None) => {
            let server_order = list.iter().map(|v| ident(v, merge_key).cloned()).collect();
            MergedList {
                merged: list,
                server_order,
            }
        }
        (list, Some(p)) => {
            merge_merging_list(list.unwrap_or_default(), p, items_of(node), merge_key, path)?
        }
    };

    if let Some(key) = merge_key {
        if let Some(item) = merged.iter().find(|v| v.get(key).is_none()) {
            return Err(missing_merge_key(path, key, item));
        }
    }
    let result = normalize_order(merged, &order_ids, &server_order, merge_key);
    original.insert(field.to_owned(), Value::Array(result));
    Ok(true)
}

/// The patch list must name its items in the order `$setElementOrder` gives them.
fn validate_against_order(
    patch_list: &[Value],
    order: &[Option<Value>],
    merge_key: Option<&str>,
    path: &Path<'_>,
) -> Result<(), PatchError> {
    let has_directive = |v: &Value| v.get(PATCH).is_some();
    let mut ids = Vec::with_capacity(patch_list.len());
    for (i, item) in patch_list.iter().enumerate() {
        if merge_key.is_some() && has_directive(item) {
            continue;
        }
        match ident(item, merge_key) {
            Some(item_id) => ids.push(item_id),
            None => {
                let key = merge_key.unwrap_or_default();
                return Err(missing_merge_key(&Path::Index(path, i), key, item));
            }
        }
    }
    // A subsequence check: each search resumes where the last one matched, so the whole
    // walk is linear in the length of the order list.
    let mut at = 0;
    for item_id in ids {
        let wanted = id(item_id);
        match order[at..]
            .iter()
            .position(|o| o.as_ref().is_some_and(|o| id(o) == wanted))
        {
            Some(offset) => at += offset + 1,
            None => {
                return Err(malformed(
                    path,
                    format!("the order in the patch list doesn't match the {SET_ELEMENT_ORDER} list (item {item_id} is out of order or missing)"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
