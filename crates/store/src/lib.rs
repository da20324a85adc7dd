//! Korvet's versioned key-value store with watch, with etcd v3 semantics.
//!
//! Two backends implement [`Store`]: [`embedded::EmbeddedStore`] keeps everything in one
//! redb file and [`etcd::EtcdStore`] talks to a real etcd cluster. Both pass the same
//! conformance suite (`tests/conformance`).

pub mod embedded;
mod error;
pub mod etcd;
mod types;
mod watch;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

pub use error::{Result, StoreError};
pub use types::*;
pub use watch::Watch;

/// The store every Korvet API server keeps its objects in.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse>;
    async fn put(&self, req: PutRequest) -> Result<PutResponse>;
    async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse>;
    /// Compare, then apply `success` or `failure`, atomically. A transaction that writes
    /// nothing does not advance the revision.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse>;

    /// A lease that expires `ttl_secs` after it was granted or last kept alive; keys
    /// attached to it are deleted when it expires or is revoked.
    async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseGrant>;
    async fn lease_revoke(&self, id: LeaseId) -> Result<()>;
    /// Renews the lease and returns its TTL.
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64>;
    async fn lease_time_to_live(&self, id: LeaseId) -> Result<LeaseInfo>;

    /// Streams every change in `req.range` from `req.start_revision` on, each once, in
    /// revision order. A start revision older than the compacted one fails with
    /// [`StoreError::Compacted`].
    async fn watch(&self, req: WatchRequest) -> Result<Watch>;

    /// Discards the history before `revision`; reads and watches below it fail with
    /// [`StoreError::Compacted`].
    async fn compact(&self, revision: Revision) -> Result<()>;
    async fn status(&self) -> Result<StoreStatus>;

    /// The current value of one key.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let mut resp = self.range(RangeRequest::new(KeyRange::key(key))).await?;
        Ok(resp.kvs.pop())
    }
}

/// Where a store lives, as given on a command line: `embedded` (a redb file in the data
/// directory) or `etcd://HOST:PORT[,HOST:PORT...]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    Embedded,
    Etcd { endpoints: Vec<String> },
}

impl std::str::FromStr for StoreLocation {
    type Err = StoreError;

    fn from_str(url: &str) -> Result<Self> {
        let invalid = |detail: &str| StoreError::InvalidUrl {
            url: url.to_string(),
            detail: detail.to_string(),
        };
        if url == "embedded" {
            return Ok(Self::Embedded);
        }
        let Some(hosts) = url.strip_prefix("etcd://") else {
            return Err(invalid(
                "expected `embedded` or `etcd://HOST:PORT[,HOST:PORT...]`",
            ));
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("http://{h}"))
            .collect();
        if endpoints.is_empty() {
            return Err(invalid("no etcd endpoint given"));
        }
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let port_ok = host
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !port_ok {
                return Err(invalid(&format!("endpoint {host:?} is not HOST:PORT")));
            }
        }
        Ok(Self::Etcd { endpoints })
    }
}

/// Opens the store at `location`; an embedded store keeps its file under `data_dir`.
pub async fn open(location: &StoreLocation, data_dir: &Path) -> Result<Arc<dyn Store>> {
    match location {
        StoreLocation::Embedded => Ok(Arc::new(
            embedded::EmbeddedStore::open(data_dir, embedded::Options::default()).await?,
        )),
        StoreLocation::Etcd { endpoints } => {
            Ok(Arc::new(etcd::EtcdStore::connect(endpoints).await?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_locations() {
        assert_eq!(
            "embedded".parse::<StoreLocation>().unwrap(),
            StoreLocation::Embedded
        );
        assert_eq!(
            "etcd://127.0.0.1:2379,127.0.0.1:2380"
                .parse::<StoreLocation>()
                .unwrap(),
            StoreLocation::Etcd {
                endpoints: vec![
                    "http://127.0.0.1:2379".into(),
                    "http://127.0.0.1:2380".into()
                ]
            }
        );
        assert!("etcd://".parse::<StoreLocation>().is_err());
        assert!("etcd://host".parse::<StoreLocation>().is_err());
        assert!("redis://x:1".parse::<StoreLocation>().is_err());
    }
}
