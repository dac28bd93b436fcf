//! The port for limits shared between replicas: org-wide connection leases
//! and org-wide query rates, kept in Redis when it is configured.
//!
//! Policy stays in the actors (which mode a tier uses, what to do when the
//! shared state is unreachable); the adapter only keeps the counts.

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::org_id::OrgId;

#[derive(Debug, Clone, thiserror::Error)]
#[error("shared limits unavailable: {0}")]
pub struct SharedLimitsError(pub String);

/// What the actors need to know about the shared state right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedHealth {
    /// The shared state is unreachable: use local shares of the limits.
    pub degraded: bool,
    /// Live replicas, as last seen (at least 1).
    pub replicas: u32,
}

/// One organization's periodic exchange with the shared state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyncRequest {
    /// The tier's org-wide QPS when this replica enforces a share of it.
    pub qps: Option<u32>,
    /// Cycles offered on this replica since the last sync.
    pub demand: u64,
}

#[async_trait]
pub trait SharedLimits: Send + Sync + 'static {
    /// Takes an org-wide connection lease named `lease`; `Ok(false)` when the
    /// organization already holds `limit` leases across all replicas.
    async fn acquire_connection(
        &self,
        org: &OrgId,
        limit: u32,
        lease: &str,
    ) -> Result<bool, SharedLimitsError>;

    /// Holds a lease for a session admitted under the local share while the
    /// shared state is unreachable. Nothing is asked of the shared state now;
    /// the lease is registered (beyond the limit if need be: the session
    /// exists) as soon as it answers again, before this replica leaves the
    /// local shares, and refreshed and returned like any other lease.
    fn hold_connection(&self, org: &OrgId, lease: &str);

    /// Gives a lease back (best effort; an unreturned lease expires).
    fn release_connection(&self, org: &OrgId, lease: &str);

    /// How many org-wide connection leases `org` holds now, on all replicas
    /// (scale-to-zero's idle check).
    async fn connections(&self, org: &OrgId) -> Result<u32, SharedLimitsError>;

    /// Central rate check for small tiers: `Ok(None)` admits one cycle,
    /// `Ok(Some(wait))` says when one would fit.
    async fn take_query(
        &self,
        org: &OrgId,
        qps: u32,
        burst: u32,
    ) -> Result<Option<Duration>, SharedLimitsError>;

    /// Refreshes this replica's leases for `org` and, for share-mode tiers,
    /// reports demand and returns this replica's share of the QPS.
    async fn sync(
        &self,
        org: &OrgId,
        request: SyncRequest,
    ) -> Result<Option<f64>, SharedLimitsError>;

    fn health(&self) -> SharedHealth;

    /// Records that a call failed (the adapter also notices by itself).
    fn mark_degraded(&self, error: &SharedLimitsError);
}
