// TEMPORARY compile shim; replaced by the patch branch.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PatchError(pub String);
pub mod schema {
    pub struct PatchSchema;
    #[derive(Clone, Copy)]
    pub struct SchemaNode<'a>(pub &'a ());
    impl PatchSchema {
        pub fn global() -> &'static PatchSchema { &PatchSchema }
        pub fn kind(&self, _g: &str, _v: &str, _k: &str) -> Option<SchemaNode<'static>> { None }
    }
}
pub mod json { use serde_json::Value; pub fn apply(_c: &Value, _p: &Value) -> Result<Value, super::PatchError> { Err(super::PatchError("shim".into())) } }
pub mod merge { use serde_json::Value; pub fn apply(c: &Value, _p: &Value) -> Value { c.clone() } }
pub mod strategic { use serde_json::Value; pub fn apply(c: &Value, _p: &Value, _s: Option<super::schema::SchemaNode<'_>>) -> Result<Value, super::PatchError> { Ok(c.clone()) } }
