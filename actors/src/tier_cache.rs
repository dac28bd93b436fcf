//! The tier cache port: the shared layer between the tenant actors' own state
//! and the store.
//!
//! Lookups go tenant actor (in process) → this cache → the store, and a value
//! read from the store is written back here. What is cached is the whole
//! [`Organization`] record — its tier and what admission needs with it
//! (upstream, pending change) — so a replica can start a tenant actor from
//! the cache alone while the store is unreachable.
//!
//! [`TierCache::invalidate`] both removes the entry and tells every replica
//! (this one included) to reload that organization; the adapter for Redis
//! does it with `DEL` and `PUBLISH`. Without Redis, [`NoTierCache`] stands in
//! and every cold lookup reads the store.

use async_trait::async_trait;

use crate::domain::{org_id::OrgId, organization::Organization};

/// Why the cache could not answer. Callers fall back to the store; a cache
/// problem never refuses a connection on its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TierCacheError {
    #[error("tier cache unavailable: {0}")]
    Unavailable(String),
    #[error("tier cache entry unreadable: {0}")]
    Corrupt(String),
}

#[async_trait]
pub trait TierCache: Send + Sync + 'static {
    /// Short name for metrics labels and `/ready` (`"redis"`, `"none"`).
    fn kind(&self) -> &'static str;

    /// The cached record, if present and unexpired.
    async fn get(&self, id: &OrgId) -> Result<Option<Organization>, TierCacheError>;

    /// Stores `org` with the cache's time-to-live.
    async fn put(&self, org: &Organization) -> Result<(), TierCacheError>;

    /// Removes the entry and announces the change to every replica.
    async fn invalidate(&self, id: &OrgId) -> Result<(), TierCacheError>;
}

/// No shared cache: every miss of the in-process layer reads the store.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTierCache;

#[async_trait]
impl TierCache for NoTierCache {
    fn kind(&self) -> &'static str {
        "none"
    }

    async fn get(&self, _: &OrgId) -> Result<Option<Organization>, TierCacheError> {
        Ok(None)
    }

    async fn put(&self, _: &Organization) -> Result<(), TierCacheError> {
        Ok(())
    }

    async fn invalidate(&self, _: &OrgId) -> Result<(), TierCacheError> {
        Ok(())
    }
}
