//! Organization queries of the periodic jobs on the embedded store: each
//! document is first read for the few fields the query filters on (serde
//! skips the rest), and only the matching ones are decoded whole. The
//! scale-to-zero check and the lifecycle scheduler run every few seconds;
//! thousands of sleeping or settled organizations then cost a skim each.

use dynabase_actors::{
    domain::compute::{Compute, Phase},
    Organization, StoreError, UnixMillis,
};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{de::DeserializeOwned, Deserialize};

use super::{decode, unavailable, ORGS};

/// Every organization whose `P` part passes `keep`, in id order (the key).
fn scan<P: DeserializeOwned>(
    db: &Database,
    keep: impl Fn(&P) -> bool,
) -> Result<Vec<Organization>, StoreError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let docs = txn.open_table(ORGS).map_err(unavailable)?;
    let mut out = Vec::new();
    for entry in docs.iter().map_err(unavailable)? {
        let (key, value) = entry.map_err(unavailable)?;
        let part: P = decode(&ORGS, key.value(), value.value())?;
        if keep(&part) {
            out.push(decode(&ORGS, key.value(), value.value())?);
        }
    }
    Ok(out)
}

/// The part of an organization scale-to-zero filters on.
#[derive(Deserialize)]
struct ComputePart {
    #[serde(default)]
    compute: Compute,
}

pub(super) fn awake_suspendable_orgs(db: &Database) -> Result<Vec<Organization>, StoreError> {
    scan(db, |p: &ComputePart| {
        p.compute.spec.can_suspend() && p.compute.state.phase != Phase::Suspended
    })
}

/// The part of an organization the lifecycle scheduler filters on.
#[derive(Deserialize)]
struct LifecyclePart {
    #[serde(default)]
    pending_tier_change: Option<PendingAt>,
    #[serde(default)]
    lifecycle: PastDue,
}

#[derive(Deserialize)]
struct PendingAt {
    effective_at: UnixMillis,
}

#[derive(Default, Deserialize)]
struct PastDue {
    #[serde(default)]
    past_due_since: Option<UnixMillis>,
}

pub(super) fn orgs_with_lifecycle_due(
    db: &Database,
    now: UnixMillis,
    past_due_since_by: UnixMillis,
) -> Result<Vec<Organization>, StoreError> {
    scan(db, |p: &LifecyclePart| {
        p.pending_tier_change
            .as_ref()
            .is_some_and(|c| c.effective_at <= now)
            || p.lifecycle
                .past_due_since
                .is_some_and(|since| since <= past_due_since_by)
    })
}

#[derive(Deserialize)]
struct CreatedPart {
    created_at: UnixMillis,
}

pub(super) fn count_orgs_created_before(
    db: &Database,
    at: UnixMillis,
) -> Result<usize, StoreError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let docs = txn.open_table(ORGS).map_err(unavailable)?;
    let mut n = 0;
    for entry in docs.iter().map_err(unavailable)? {
        let (key, value) = entry.map_err(unavailable)?;
        let part: CreatedPart = decode(&ORGS, key.value(), value.value())?;
        n += usize::from(part.created_at < at);
    }
    Ok(n)
}
