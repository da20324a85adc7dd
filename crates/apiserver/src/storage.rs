//! Objects in the store: JSON values under `/registry/...` keys, whose
//! `metadata.resourceVersion` is the key's `mod_revision` (set on the way out, never
//! stored), with optimistic concurrency through compare-on-revision transactions.

use std::sync::Arc;

use korvet_store::{
    Compare, DeleteRequest, KeyRange, KeyValue, PutRequest, RangeRequest, Revision, Store, Txn,
    TxnOp, TxnOpResponse, Watch, WatchRequest,
};
use serde_json::Value;

use crate::error::{ApiError, ApiResult};

/// What a conditional write found.
pub enum Written {
    Ok(Value),
    /// The key exists (create) or changed since the given revision (update/delete).
    Conflict,
    NotFound,
}

pub struct ListPage {
    pub items: Vec<Value>,
    /// The revision the whole list was read at.
    pub revision: Revision,
    /// Where the next page starts, when more remain.
    pub next_start: Option<Vec<u8>>,
}

#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn Store>,
}

pub(crate) fn decode(kv: &KeyValue) -> ApiResult<Value> {
    let mut object: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!(
            "stored object {} is not valid JSON: {e}",
            String::from_utf8_lossy(&kv.key)
        ))
    })?;
    set_resource_version(&mut object, kv.mod_revision);
    Ok(object)
}

/// The revision a listed object was read at (its `resourceVersion`), for a conditional
/// write or delete of exactly that version; 0 (never matching) if it has none.
pub(crate) fn listed_revision(object: &Value) -> Revision {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn set_resource_version(object: &mut Value, revision: Revision) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
}

fn encode(object: &Value) -> ApiResult<Vec<u8>> {
    let mut stored = object.clone();
    if let Some(meta) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&stored).map_err(|e| ApiError::internal(format!("encoding object: {e}")))
}

impl Objects {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub async fn get(&self, key: &str) -> ApiResult<Option<(Value, Revision)>> {
        match self.store.get(key.as_bytes()).await? {
            Some(kv) => Ok(Some((decode(&kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    pub async fn create(&self, key: &str, object: &Value) -> ApiResult<Written> {
        let resp = self
            .store
            .txn(
                Txn::new()
                    .when([Compare::absent(key)])
                    .and_then([TxnOp::Put(PutRequest::new(key, encode(object)?))]),
            )
            .await?;
        if !resp.succeeded {
            return Ok(Written::Conflict);
        }
        let mut created = object.clone();
        set_resource_version(&mut created, resp.revision);
        Ok(Written::Ok(created))
    }

    /// Replaces the object if it is still at `revision`.
    pub async fn update(
        &self,
        key: &str,
        object: &Value,
        revision: Revision,
    ) -> ApiResult<Written> {
        let resp = self
            .store
            .txn(
                Txn::new()
                    .when([Compare::mod_revision(key, revision)])
                    .and_then([TxnOp::Put(PutRequest::new(key, encode(object)?))])
                    .or_else([TxnOp::Range(
                        RangeRequest::new(KeyRange::key(key)).keys_only(),
                    )]),
            )
            .await?;
        if resp.succeeded {
            let mut updated = object.clone();
            set_resource_version(&mut updated, resp.revision);
            return Ok(Written::Ok(updated));
        }
        Ok(match resp.responses.first() {
            Some(TxnOpResponse::Range(r)) if r.kvs.is_empty() => Written::NotFound,
            _ => Written::Conflict,
        })
    }

    /// Deletes the object if it is still at `revision`; returns it as it was.
    pub async fn delete(&self, key: &str, revision: Revision) -> ApiResult<Written> {
        let resp = self
            .store
            .txn(
                Txn::new()
                    .when([Compare::mod_revision(key, revision)])
                    .and_then([TxnOp::Delete(
                        DeleteRequest::new(KeyRange::key(key)).with_prev_kv(),
                    )]),
            )
            .await?;
        if !resp.succeeded {
            return Ok(if self.store.get(key.as_bytes()).await?.is_none() {
                Written::NotFound
            } else {
                Written::Conflict
            });
        }
        match resp.responses.first() {
            Some(TxnOpResponse::Delete(d)) => match d.prev_kvs.first() {
                Some(kv) => {
                    let mut object = decode(kv)?;
                    set_resource_version(&mut object, resp.revision);
                    Ok(Written::Ok(object))
                }
                None => Ok(Written::NotFound),
            },
            _ => Ok(Written::NotFound),
        }
    }

    /// Lists objects under `prefix` at `revision` (0: latest), from key `start` on,
    /// keeping those `keep` accepts, until `limit` are found (0: no limit).
    pub async fn list(
        &self,
        prefix: &str,
        revision: Revision,
        start: Option<Vec<u8>>,
        limit: usize,
        keep: &(dyn Fn(&Value) -> bool + Sync),
    ) -> ApiResult<ListPage> {
        let end = korvet_store::prefix_end(prefix.as_bytes());
        let mut start = start.unwrap_or_else(|| prefix.as_bytes().to_vec());
        let mut page = ListPage {
            items: Vec::new(),
            revision,
            next_start: None,
        };
        // Selectors may reject most keys: read in chunks until the page is full.
        let chunk = if limit == 0 {
            0
        } else {
            (limit * 2).max(100) as i64
        };
        loop {
            let resp = self
                .store
                .range(
                    RangeRequest::new(KeyRange::interval(start.clone(), end.clone()))
                        .at_revision(page.revision)
                        .with_limit(chunk),
                )
                .await?;
            if page.revision == 0 {
                page.revision = resp.revision;
            }
            let mut last_key = None;
            for kv in &resp.kvs {
                last_key = Some(kv.key.clone());
                let object = decode(kv)?;
                if keep(&object) {
                    page.items.push(object);
                    if limit > 0 && page.items.len() == limit {
                        let is_last = resp.kvs.last().is_some_and(|last| last.key == kv.key);
                        if !is_last || resp.more {
                            let mut next = kv.key.clone();
                            next.push(0);
                            page.next_start = Some(next);
                        }
                        return Ok(page);
                    }
                }
            }
            match (resp.more, last_key) {
                (true, Some(key)) => {
                    start = key;
                    start.push(0);
                }
                _ => return Ok(page),
            }
        }
    }

    pub async fn watch(&self, prefix: &str, from: Revision) -> ApiResult<Watch> {
        Ok(self
            .store
            .watch(
                WatchRequest::new(KeyRange::prefix(prefix))
                    .from_revision(from)
                    .with_prev_kv()
                    .with_progress_notify(),
            )
            .await?)
    }

    pub async fn current_revision(&self) -> ApiResult<Revision> {
        Ok(self.store.status().await?.revision)
    }
}
