//! Keeping the running tenant actors' records current, and saying how
//! current they are.
//!
//! - A change made on this replica is applied to the actor at once and then
//!   announced: the cache entry is deleted and every replica is told
//!   ([`TenantRegistry::publish_change`]).
//! - An announcement from any replica makes this one reload the record from
//!   the store ([`TenantRegistry::reload`]); a reconnect of the announcement
//!   channel reloads every running actor, since announcements may have been
//!   missed meanwhile ([`TenantRegistry::reload_all`]).
//! - Every actor's record is re-verified through the cache and the store
//!   when it is older than the refresh interval
//!   ([`TenantRegistry::refresh_due`]), which bounds how long a lost
//!   announcement can leave a replica behind.
//!
//! When a re-verification fails (store unreachable and nothing in the
//! cache) the actor keeps the tier it has — refusing paying customers would
//! be worse than a briefly stale tier — and the organization counts as
//! stale until a verification succeeds: `dynabase_tier_stale_tenants` and
//! `/ready` show it.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use dashmap::DashMap;
use futures_util::{stream, StreamExt};

use super::TenantRegistry;
use crate::{
    domain::{org_id::OrgId, organization::Organization, time::UnixMillis},
    store::StoreError,
    tenant::{connection_actor::ApplyOrganization, tier_lookup::Layer},
    tier_cache::TierCacheError,
};

/// Reloads run this many at a time after a reconnect.
const RELOAD_CONCURRENCY: usize = 8;

/// How long a failed invalidation is retried: by then the cache entry has
/// expired on its own, and replicas that missed the announcement have
/// re-verified.
const INVALIDATION_RETRY_FOR: Duration = Duration::from_secs(300);

/// When the second invalidation of a change is sent (see
/// `invalidate_again_later`).
const SECOND_INVALIDATION_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Entry {
    verified_at: UnixMillis,
    stale_since: Option<UnixMillis>,
    /// `updated_at` of the record the actor has; older records are not
    /// applied over it.
    version: UnixMillis,
}

/// Verification times of the running actors' records.
#[derive(Debug, Default)]
pub(super) struct Freshness {
    entries: DashMap<OrgId, Entry>,
    /// Counts reload requests, so a tenant started while one arrived can
    /// tell that it may have started from an old record.
    generation: AtomicU64,
}

impl Freshness {
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `org` was just read from the cache or the store, or written.
    pub(super) fn verified(&self, org: &Organization, now: UnixMillis) {
        let mut entry = self.entries.entry(org.id.clone()).or_insert(Entry {
            verified_at: now,
            stale_since: None,
            version: org.updated_at,
        });
        entry.verified_at = now;
        entry.stale_since = None;
        entry.version = entry.version.max(org.updated_at);
    }

    /// The store said so: `org` is the current record, whatever its
    /// `updated_at` (clocks of writers may disagree).
    fn verified_authoritative(&self, org: &Organization, now: UnixMillis) {
        self.entries.insert(
            org.id.clone(),
            Entry {
                verified_at: now,
                stale_since: None,
                version: org.updated_at,
            },
        );
    }

    fn verified_current(&self, id: &OrgId, now: UnixMillis) {
        if let Some(mut entry) = self.entries.get_mut(id) {
            entry.verified_at = now;
            entry.stale_since = None;
        }
    }

    fn failed(&self, id: &OrgId, now: UnixMillis) {
        if let Some(mut entry) = self.entries.get_mut(id) {
            entry.stale_since.get_or_insert(now);
        }
    }

    /// Whether `org` is at least as new as what the actor has.
    fn accepts(&self, org: &Organization) -> bool {
        self.entries
            .get(&org.id)
            .is_none_or(|e| org.updated_at >= e.version)
    }
}

/// How current the tenant actors' tiers are, for `/ready` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierStatus {
    /// The shared cache's kind (`"redis"`, `"none"`).
    pub cache: &'static str,
    pub tenants: usize,
    /// Tenants whose last re-verification failed; they run on their last
    /// known tier.
    pub stale_tenants: usize,
    /// When the longest-stale tenant's verification first failed.
    pub oldest_stale_since: Option<UnixMillis>,
}

/// What a reload or refresh round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshReport {
    pub checked: usize,
    pub failed: usize,
}

impl TenantRegistry {
    /// Gives `org` to its running actor (if any). A record from the cache
    /// is not applied over a newer one the actor has (the cache may lag a
    /// change); a record the store just returned, or that this replica just
    /// wrote, is `authoritative` and always applied.
    pub(super) fn apply(&self, org: Organization, now: UnixMillis, authoritative: bool) {
        self.unknown.forget(&org.id);
        if authoritative {
            // A lookup in flight may have read the store before this change
            // (for a new organization: found nothing); it must not be kept.
            self.freshness.generation.fetch_add(1, Ordering::AcqRel);
            self.freshness.verified_authoritative(&org, now);
        } else if self.freshness.accepts(&org) {
            self.freshness.verified(&org, now);
        } else {
            // The actor's record is newer than the cache's: it stands, and
            // counts as verified.
            tracing::debug!(org = %org.id, "older cached record not applied");
            self.freshness.verified_current(&org.id, now);
            return;
        }
        if let Some(addr) = self.actors.get(&org.id) {
            addr.do_send(ApplyOrganization(org));
        }
    }

    /// Applies a change made on this replica (already written to the store)
    /// and announces it: deletes the cache entry and tells every replica.
    /// If the cache cannot be reached the announcement is retried in the
    /// background and the error returned.
    pub async fn publish_change(&self, org: Organization) -> Result<(), TierCacheError> {
        let id = org.id.clone();
        self.apply(org, UnixMillis::now(), true);
        match self.lookup.cache().invalidate(&id).await {
            Ok(()) => {
                self.invalidate_again_later(id);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(org = %id, error = %e, "tier invalidation failed; retrying in the background");
                self.invalidate_in_background(id);
                Err(e)
            }
        }
    }

    /// A reader that read the store just before the change may write the
    /// old record to the cache just after the invalidation; a second one a
    /// moment later removes it (and has every replica reload once more).
    fn invalidate_again_later(&self, id: OrgId) {
        let cache = self.lookup.cache().clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                tokio::time::sleep(SECOND_INVALIDATION_AFTER).await;
                if let Err(e) = cache.invalidate(&id).await {
                    tracing::debug!(org = %id, error = %e, "second tier invalidation failed");
                }
            });
        }
    }

    pub(super) fn invalidate_in_background(&self, id: OrgId) {
        let cache = self.lookup.cache().clone();
        let retry = async move {
            let started = tokio::time::Instant::now();
            let mut wait = Duration::from_millis(100);
            loop {
                match cache.invalidate(&id).await {
                    Ok(()) => return,
                    Err(e) if started.elapsed() >= INVALIDATION_RETRY_FOR => {
                        metrics::counter!("dynabase_tier_invalidations_abandoned_total")
                            .increment(1);
                        tracing::error!(org = %id, error = %e, "tier invalidation abandoned; the entry has expired by now");
                        return;
                    }
                    Err(_) => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(retry);
        }
    }

    /// An announcement said `id` changed: if its actor runs here, read the
    /// record from the store and apply it. Returns whether an actor was
    /// reloaded. On a store failure the actor keeps its tier and counts as
    /// stale until a later verification succeeds.
    pub async fn reload(&self, id: &OrgId) -> Result<bool, StoreError> {
        self.freshness.generation.fetch_add(1, Ordering::AcqRel);
        // It may have just been created.
        self.unknown.forget(id);
        if !self.actors.contains_key(id) {
            return Ok(false);
        }
        match self.lookup.load_fresh(id).await {
            Ok(Some(org)) => {
                self.apply(org, UnixMillis::now(), true);
                Ok(true)
            }
            Ok(None) => {
                tracing::warn!(org = %id, "organization vanished from the store; its actor keeps its record");
                Ok(false)
            }
            Err(e) => {
                self.freshness.failed(id, UnixMillis::now());
                metrics::counter!("dynabase_tier_refresh_failures_total").increment(1);
                Err(e)
            }
        }
    }

    pub(super) fn reload_in_background(&self, id: OrgId) {
        let registry = self.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = registry.reload(&id).await {
                    tracing::warn!(org = %id, error = %e, "tier reload failed");
                }
            });
        }
    }

    /// Reloads every running actor from the store (after the announcement
    /// channel reconnects, announcements may have been missed).
    pub async fn reload_all(&self) -> RefreshReport {
        self.unknown.clear();
        let ids: Vec<OrgId> = self.actors.iter().map(|e| e.key().clone()).collect();
        let checked = ids.len();
        let failed = stream::iter(ids)
            .map(|id| async move { self.reload(&id).await.is_err() })
            .buffer_unordered(RELOAD_CONCURRENCY)
            .filter(|failed| std::future::ready(*failed))
            .count()
            .await;
        RefreshReport { checked, failed }
    }

    /// Re-verifies, through the cache and the store, every running actor's
    /// record verified longer than `max_age` before `now`.
    pub async fn refresh_due(&self, now: UnixMillis, max_age: Duration) -> RefreshReport {
        let cutoff = UnixMillis(now.0.saturating_sub(millis(max_age)));
        let due: Vec<OrgId> = self
            .freshness
            .entries
            .iter()
            .filter(|e| e.verified_at <= cutoff && self.actors.contains_key(e.key()))
            .map(|e| e.key().clone())
            .collect();
        let mut report = RefreshReport {
            checked: due.len(),
            failed: 0,
        };
        for id in due {
            match self.lookup.load(&id).await {
                Ok(Some((org, layer))) => self.apply(org, now, layer == Layer::Store),
                Ok(None) => {}
                Err(e) => {
                    report.failed += 1;
                    self.freshness.failed(&id, now);
                    metrics::counter!("dynabase_tier_refresh_failures_total").increment(1);
                    tracing::warn!(org = %id, error = %e, "tier re-verification failed; keeping the last known tier");
                }
            }
        }
        self.tier_status();
        report
    }

    /// How current the running actors' tiers are; also sets the
    /// `dynabase_tier_stale_tenants` gauge.
    pub fn tier_status(&self) -> TierStatus {
        let mut stale_tenants = 0;
        let mut oldest_stale_since: Option<UnixMillis> = None;
        for entry in self.freshness.entries.iter() {
            if let Some(since) = entry.stale_since {
                stale_tenants += 1;
                oldest_stale_since = Some(oldest_stale_since.map_or(since, |o| o.min(since)));
            }
        }
        metrics::gauge!("dynabase_tier_stale_tenants").set(stale_tenants as f64);
        TierStatus {
            cache: self.lookup.cache().kind(),
            tenants: self.actors.len(),
            stale_tenants,
            oldest_stale_since,
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
