//! Placeholder, replaced by the real backend.
use crate::*;
#[derive(Default)] pub struct Options;
pub struct EmbeddedStore;
impl EmbeddedStore { pub async fn open(_dir: &std::path::Path, _o: Options) -> Result<Self> { Err(StoreError::Backend("not built yet".into())) } }
#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn range(&self, _: RangeRequest) -> Result<RangeResponse> { Err(StoreError::Closed) }
    async fn put(&self, _: PutRequest) -> Result<PutResponse> { Err(StoreError::Closed) }
    async fn delete(&self, _: DeleteRequest) -> Result<DeleteResponse> { Err(StoreError::Closed) }
    async fn txn(&self, _: Txn) -> Result<TxnResponse> { Err(StoreError::Closed) }
    async fn lease_grant(&self, _: i64) -> Result<LeaseGrant> { Err(StoreError::Closed) }
    async fn lease_revoke(&self, _: LeaseId) -> Result<()> { Err(StoreError::Closed) }
    async fn lease_keep_alive(&self, _: LeaseId) -> Result<i64> { Err(StoreError::Closed) }
    async fn lease_time_to_live(&self, _: LeaseId) -> Result<LeaseInfo> { Err(StoreError::Closed) }
    async fn watch(&self, _: WatchRequest) -> Result<Watch> { Err(StoreError::Closed) }
    async fn compact(&self, _: Revision) -> Result<()> { Err(StoreError::Closed) }
    async fn status(&self) -> Result<StoreStatus> { Err(StoreError::Closed) }
}
