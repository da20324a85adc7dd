//! `/openapi/v2` as protobuf: gnostic's `openapi.v2.Document`, which kubectl asks for
//! (and only for) when it validates a kind the v3 documents lack, e.g. `kind: List`.
//! Only what clients read is encoded: the version, info and the definitions; vendor
//! extensions and literal values travel as YAML text (JSON is YAML), as gnostic's do.

use serde_json::{Map, Value};

/// Upstream answers with `.v1.0` (Go's MIME parser refuses the `@` of the Accept form).
pub(crate) const CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Whether an `Accept` header asks for the protobuf form of `/openapi/v2`.
pub(crate) fn wanted(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/com.github.proto-openapi.spec.v2"))
}

/// The protobuf `Document` for a Swagger 2.0 document in JSON.
pub(crate) fn document(v2: &Value) -> Vec<u8> {
    let mut doc = Message::default();
    doc.string(1, &v2["swagger"]);
    let mut info = Message::default();
    info.string(1, &v2["info"]["title"]);
    info.string(2, &v2["info"]["version"]);
    doc.message(2, info);
    doc.message(8, Message::default());
    let mut definitions = Message::default();
    if let Some(defs) = v2["definitions"].as_object() {
        for (name, value) in defs {
            definitions.message(1, named_schema(name, value));
        }
    }
    doc.message(9, definitions);
    doc.0
}

#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }

    fn bytes(&mut self, field: u32, data: &[u8]) {
        self.key(field, 2);
        self.varint(data.len() as u64);
        self.0.extend_from_slice(data);
    }

    fn string(&mut self, field: u32, value: &Value) {
        if let Some(s) = value.as_str().filter(|s| !s.is_empty()) {
            self.bytes(field, s.as_bytes());
        }
    }

    fn message(&mut self, field: u32, m: Message) {
        self.bytes(field, &m.0);
    }

    fn boolean(&mut self, field: u32, value: &Value) {
        if value.as_bool() == Some(true) {
            self.key(field, 0);
            self.varint(1);
        }
    }

    fn int64(&mut self, field: u32, value: &Value) {
        if let Some(v) = value.as_i64() {
            self.key(field, 0);
            self.varint(v as u64);
        }
    }

    fn double(&mut self, field: u32, value: &Value) {
        if let Some(v) = value.as_f64() {
            self.key(field, 1);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// An `Any` holding `value` as YAML text.
    fn any(&mut self, field: u32, value: &Value) {
        let mut any = Message::default();
        any.bytes(2, value.to_string().as_bytes());
        self.message(field, any);
    }
}

fn named_schema(name: &str, value: &Value) -> Message {
    let mut named = Message::default();
    named.bytes(1, name.as_bytes());
    named.message(2, schema(value));
    named
}

fn schema(s: &Value) -> Message {
    let mut m = Message::default();
    m.string(1, &s["$ref"]);
    m.string(2, &s["format"]);
    m.string(3, &s["title"]);
    m.string(4, &s["description"]);
    if !s["default"].is_null() {
        m.any(5, &s["default"]);
    }
    m.double(6, &s["multipleOf"]);
    m.double(7, &s["maximum"]);
    m.boolean(8, &s["exclusiveMaximum"]);
    m.double(9, &s["minimum"]);
    m.boolean(10, &s["exclusiveMinimum"]);
    m.int64(11, &s["maxLength"]);
    m.int64(12, &s["minLength"]);
    m.string(13, &s["pattern"]);
    m.int64(14, &s["maxItems"]);
    m.int64(15, &s["minItems"]);
    m.boolean(16, &s["uniqueItems"]);
    m.int64(17, &s["maxProperties"]);
    m.int64(18, &s["minProperties"]);
    for required in s["required"].as_array().into_iter().flatten() {
        m.string(19, required);
    }
    for value in s["enum"].as_array().into_iter().flatten() {
        m.any(20, value);
    }
    match &s["additionalProperties"] {
        Value::Bool(b) => {
            let mut item = Message::default();
            item.key(2, 0);
            item.varint(u64::from(*b));
            m.message(21, item);
        }
        Value::Object(_) => {
            let mut item = Message::default();
            item.message(1, schema(&s["additionalProperties"]));
            m.message(21, item);
        }
        _ => {}
    }
    let types: Vec<&Value> = match &s["type"] {
        Value::Array(list) => list.iter().collect(),
        Value::Null => Vec::new(),
        one => vec![one],
    };
    if !types.is_empty() {
        let mut item = Message::default();
        for t in types {
            item.string(1, t);
        }
        m.message(22, item);
    }
    let items: Vec<&Value> = match &s["items"] {
        Value::Array(list) => list.iter().collect(),
        Value::Object(_) => vec![&s["items"]],
        _ => Vec::new(),
    };
    if !items.is_empty() {
        let mut item = Message::default();
        for i in items {
            item.message(1, schema(i));
        }
        m.message(23, item);
    }
    for part in s["allOf"].as_array().into_iter().flatten() {
        m.message(24, schema(part));
    }
    if let Some(properties) = s["properties"].as_object() {
        let mut props = Message::default();
        for (name, value) in properties {
            props.message(1, named_schema(name, value));
        }
        m.message(25, props);
    }
    m.boolean(27, &s["readOnly"]);
    if !s["example"].is_null() {
        m.any(30, &s["example"]);
    }
    for (name, value) in s.as_object().map(Map::iter).into_iter().flatten() {
        if name.starts_with("x-") {
            let mut named = Message::default();
            named.bytes(1, name.as_bytes());
            named.any(2, value);
            m.message(31, named);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encodes_fields_with_gnostic_numbers() {
        let doc = json!({"swagger": "2.0", "info": {"title": "K", "version": "v"},
            "definitions": {"a.B": {"type": "object", "required": ["x"],
                "properties": {"x": {"type": "string"}}}}});
        let bytes = document(&doc);
        // swagger = 1 (string "2.0")
        assert_eq!(&bytes[..5], &[0x0a, 3, b'2', b'.', b'0']);
        // info = 2, paths = 8 (empty), definitions = 9
        assert_eq!(&bytes[5..7], &[0x12, 6]);
        assert_eq!(&bytes[13..15], &[0x42, 0]);
        assert_eq!(bytes[15], 0x4a);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("a.B") && text.contains("object"));
    }
}
