//! `TierLookup`: the layers below the tenant actors — the shared tier cache
//! and the store — with a hit counter per layer.
//!
//! The in-process layer is the [`TenantRegistry`](super::TenantRegistry)'s
//! map of running tenant actors; it counts its hits here too, so
//! `dynabase_tier_lookups_total{layer}` shows the whole verification flow:
//! `process` → `redis` (the cache's kind) → `store`. A cache failure is
//! counted and skipped (the store answers); a store failure is the caller's
//! to handle (a running actor keeps its last known tier).

use std::{sync::Arc, time::Instant};

use metrics::{Counter, Histogram};

use crate::{
    domain::{org_id::OrgId, organization::Organization},
    store::{Store, StoreError},
    tier_cache::TierCache,
};

/// Which layer answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// A running tenant actor's own state.
    Process,
    /// The shared cache (Redis).
    Cache,
    /// The store (MongoDB or the embedded file): the source of truth.
    Store,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Process => "process",
            Layer::Cache => "cache",
            Layer::Store => "store",
        }
    }
}

/// Counter and histogram handles, registered once so the hot path does not
/// look metrics up by name on every connection.
struct LookupMetrics {
    process_hits: Counter,
    unknown_hits: Counter,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_errors: Counter,
    store_reads: Counter,
    cache_seconds: Histogram,
    store_seconds: Histogram,
}

impl LookupMetrics {
    fn new(cache_kind: &'static str) -> Self {
        const LOOKUPS: &str = "dynabase_tier_lookups_total";
        const SECONDS: &str = "dynabase_tier_lookup_seconds";
        Self {
            process_hits: metrics::counter!(LOOKUPS, "layer" => "process"),
            unknown_hits: metrics::counter!("dynabase_unknown_org_cache_hits_total"),
            cache_hits: metrics::counter!(LOOKUPS, "layer" => cache_kind),
            cache_misses: metrics::counter!("dynabase_tier_cache_misses_total", "cache" => cache_kind),
            cache_errors: metrics::counter!("dynabase_tier_cache_errors_total", "cache" => cache_kind),
            store_reads: metrics::counter!(LOOKUPS, "layer" => "store"),
            cache_seconds: metrics::histogram!(SECONDS, "layer" => cache_kind),
            store_seconds: metrics::histogram!(SECONDS, "layer" => "store"),
        }
    }
}

/// The cache and the store, read in that order.
pub struct TierLookup {
    store: Arc<dyn Store>,
    cache: Arc<dyn TierCache>,
    metrics: LookupMetrics,
}

impl TierLookup {
    pub fn new(store: Arc<dyn Store>, cache: Arc<dyn TierCache>) -> Self {
        let metrics = LookupMetrics::new(cache.kind());
        Self {
            store,
            cache,
            metrics,
        }
    }

    pub fn cache(&self) -> &Arc<dyn TierCache> {
        &self.cache
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Counts a lookup answered by a running tenant actor.
    #[inline]
    pub fn hit_process(&self) {
        self.metrics.process_hits.increment(1);
    }

    /// Counts a lookup answered by the memory of recent misses.
    pub fn hit_unknown(&self) {
        self.metrics.unknown_hits.increment(1);
    }

    /// Cold path: the cache, then the store; a record read from the store is
    /// written back to the cache (in the background, so a slow cache does not
    /// delay the connection waiting for it).
    pub async fn load(&self, id: &OrgId) -> Result<Option<(Organization, Layer)>, StoreError> {
        let started = Instant::now();
        match self.cache.get(id).await {
            Ok(Some(org)) => {
                self.metrics.cache_hits.increment(1);
                self.metrics
                    .cache_seconds
                    .record(started.elapsed().as_secs_f64());
                return Ok(Some((org, Layer::Cache)));
            }
            Ok(None) => self.metrics.cache_misses.increment(1),
            Err(e) => {
                self.metrics.cache_errors.increment(1);
                tracing::debug!(org = %id, error = %e, "tier cache read failed; reading the store");
            }
        }
        let org = self.read_store(id).await?;
        if let Some(org) = &org {
            self.put_in_background(org.clone());
        }
        Ok(org.map(|o| (o, Layer::Store)))
    }

    /// After an invalidation: the store first — the cache may hold a value a
    /// racing reader wrote just before the change — then the cache is
    /// refreshed with what the store said.
    pub async fn load_fresh(&self, id: &OrgId) -> Result<Option<Organization>, StoreError> {
        let org = self.read_store(id).await?;
        if let Some(org) = &org {
            if let Err(e) = self.cache.put(org).await {
                self.metrics.cache_errors.increment(1);
                tracing::debug!(org = %id, error = %e, "tier cache write failed");
            }
        }
        Ok(org)
    }

    async fn read_store(&self, id: &OrgId) -> Result<Option<Organization>, StoreError> {
        let started = Instant::now();
        let org = self.store.get_org(id).await?;
        self.metrics.store_reads.increment(1);
        self.metrics
            .store_seconds
            .record(started.elapsed().as_secs_f64());
        Ok(org)
    }

    fn put_in_background(&self, org: Organization) {
        let cache = self.cache.clone();
        let errors = self.metrics.cache_errors.clone();
        let put = async move {
            if let Err(e) = cache.put(&org).await {
                errors.increment(1);
                tracing::debug!(org = %org.id, error = %e, "tier cache write failed");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(put);
            }
            Err(_) => tracing::debug!("no runtime to refresh the tier cache on"),
        }
    }
}
