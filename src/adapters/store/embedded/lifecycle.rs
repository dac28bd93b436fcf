//! The tier lifecycle's tables in the embedded store: `jobs` (durable work),
//! its `jobs_due` index of pending jobs, and `subscription_events` (the
//! latest event applied per billing subscription); plus the organization
//! queries the lifecycle needs.
//!
//! `jobs_due` keys are `<kind>/<next_attempt_at>/<job id>` (instants encoded
//! with [`sortable_millis`]), so the jobs due at a time are one key range.
//! Every read-modify-write runs in one redb write transaction, which redb
//! serializes: claims and compare-and-sets are atomic.
//!
//! Finding an organization by billing customer scans the organizations: the
//! embedded store serves single-node installs with few of them.

use dynabase_actors::{
    domain::{
        billing::SubscriptionOrder,
        jobs::{Job, JobKind, JobStatus},
        records::Write,
    },
    Organization, StoreError, UnixMillis,
};
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{
    all_docs, decode, docs_in_index_range, encode, get_doc, sortable_millis, unavailable, DocTable,
    IndexTable, ORGS,
};

pub(super) const JOBS: DocTable = TableDefinition::new("jobs");
pub(super) const JOBS_DUE: IndexTable = TableDefinition::new("jobs_due");
pub(super) const SUBSCRIPTION_EVENTS: DocTable = TableDefinition::new("subscription_events");

/// The latest event applied to one billing-provider subscription.
#[derive(Debug, Serialize, Deserialize)]
struct SubscriptionEvent {
    created: i64,
    event_id: String,
}

fn due_key(kind: JobKind, next_attempt_at: UnixMillis, id: &str) -> String {
    format!(
        "{}/{}/{id}",
        kind.as_str(),
        sortable_millis(next_attempt_at.0)
    )
}

pub(super) fn update_org_if_unchanged(
    db: &Database,
    org: &Organization,
    seen_updated_at: UnixMillis,
) -> Result<bool, StoreError> {
    let bytes = encode("organization", org)?;
    let id = org.id.as_str();
    let txn = db.begin_write().map_err(unavailable)?;
    let outcome = {
        let mut orgs = txn.open_table(ORGS).map_err(unavailable)?;
        let current: Option<Organization> = orgs
            .get(id)
            .map_err(unavailable)?
            .map(|v| decode(&ORGS, id, v.value()))
            .transpose()?;
        match current {
            None => Err(StoreError::NotFound(org.id.clone())),
            Some(c) if c.updated_at != seen_updated_at => Ok(false),
            Some(_) => {
                orgs.insert(id, bytes.as_slice()).map_err(unavailable)?;
                Ok(true)
            }
        }
    };
    match outcome {
        Ok(true) => txn.commit().map_err(unavailable)?,
        _ => txn.abort().map_err(unavailable)?,
    }
    outcome
}

pub(super) fn org_by_stripe_customer(
    db: &Database,
    customer_id: &str,
) -> Result<Option<Organization>, StoreError> {
    let orgs: Vec<Organization> = all_docs(db, ORGS)?;
    Ok(orgs
        .into_iter()
        .find(|o| o.stripe_customer_id.as_deref() == Some(customer_id)))
}

pub(super) fn record_subscription_event(
    db: &Database,
    subscription_id: &str,
    created: i64,
    event_id: &str,
) -> Result<SubscriptionOrder, StoreError> {
    let txn = db.begin_write().map_err(unavailable)?;
    let order = {
        let mut table = txn.open_table(SUBSCRIPTION_EVENTS).map_err(unavailable)?;
        let applied: Option<SubscriptionEvent> = table
            .get(subscription_id)
            .map_err(unavailable)?
            .map(|v| decode(&SUBSCRIPTION_EVENTS, subscription_id, v.value()))
            .transpose()?;
        match applied {
            Some(a) if a.created > created => SubscriptionOrder::Stale {
                applied_created: a.created,
                applied_event_id: a.event_id,
            },
            _ => {
                let bytes = encode(
                    "subscription event",
                    &SubscriptionEvent {
                        created,
                        event_id: event_id.to_owned(),
                    },
                )?;
                table
                    .insert(subscription_id, bytes.as_slice())
                    .map_err(unavailable)?;
                SubscriptionOrder::Current
            }
        }
    };
    match order {
        SubscriptionOrder::Current => txn.commit().map_err(unavailable)?,
        SubscriptionOrder::Stale { .. } => txn.abort().map_err(unavailable)?,
    }
    Ok(order)
}

pub(super) fn enqueue_job(db: &Database, job: &Job) -> Result<Write, StoreError> {
    let bytes = encode("job", job)?;
    let txn = db.begin_write().map_err(unavailable)?;
    let exists = {
        let mut jobs = txn.open_table(JOBS).map_err(unavailable)?;
        let exists = jobs.get(job.id.as_str()).map_err(unavailable)?.is_some();
        if !exists {
            jobs.insert(job.id.as_str(), bytes.as_slice())
                .map_err(unavailable)?;
        }
        exists
    };
    if exists {
        txn.abort().map_err(unavailable)?;
        return Ok(Write::AlreadyApplied);
    }
    if job.status == JobStatus::Pending {
        index_due(&txn, job)?;
    }
    txn.commit().map_err(unavailable)?;
    Ok(Write::Applied)
}

pub(super) fn get_job(db: &Database, id: &str) -> Result<Option<Job>, StoreError> {
    get_doc(db, JOBS, id)
}

pub(super) fn claim_due_jobs(
    db: &Database,
    kind: JobKind,
    now: UnixMillis,
    lease_until: UnixMillis,
    limit: usize,
) -> Result<Vec<Job>, StoreError> {
    let txn = db.begin_write().map_err(unavailable)?;
    let mut due: Vec<Job> = {
        let index = txn.open_table(JOBS_DUE).map_err(unavailable)?;
        let jobs = txn.open_table(JOBS).map_err(unavailable)?;
        // `/` sorts before `0`, so this bound admits every key at `now`.
        let start = format!("{}/", kind.as_str());
        let end = format!("{}/{}0", kind.as_str(), sortable_millis(now.0));
        docs_in_index_range(&index, &jobs, (JOBS_DUE, JOBS), &start, &end)?
    };
    due.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    due.truncate(limit);
    for job in &mut due {
        unindex_due(&txn, job)?;
        job.next_attempt_at = lease_until;
        job.attempts = job.attempts.saturating_add(1);
        job.updated_at = now;
        put_job(&txn, job)?;
        index_due(&txn, job)?;
    }
    txn.commit().map_err(unavailable)?;
    Ok(due)
}

pub(super) fn update_job(db: &Database, job: &Job) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(unavailable)?;
    let previous: Option<Job> = {
        let jobs = txn.open_table(JOBS).map_err(unavailable)?;
        let found = jobs.get(job.id.as_str()).map_err(unavailable)?;
        found
            .map(|v| decode(&JOBS, &job.id, v.value()))
            .transpose()?
    };
    let Some(previous) = previous else {
        txn.abort().map_err(unavailable)?;
        return Err(StoreError::Corrupt(format!(
            "job `{}` does not exist",
            job.id
        )));
    };
    if previous.status == JobStatus::Pending {
        unindex_due(&txn, &previous)?;
    }
    put_job(&txn, job)?;
    if job.status == JobStatus::Pending {
        index_due(&txn, job)?;
    }
    txn.commit().map_err(unavailable)
}

fn put_job(txn: &WriteTransaction, job: &Job) -> Result<(), StoreError> {
    let bytes = encode("job", job)?;
    let mut jobs = txn.open_table(JOBS).map_err(unavailable)?;
    jobs.insert(job.id.as_str(), bytes.as_slice())
        .map_err(unavailable)?;
    Ok(())
}

fn index_due(txn: &WriteTransaction, job: &Job) -> Result<(), StoreError> {
    let mut index = txn.open_table(JOBS_DUE).map_err(unavailable)?;
    let key = due_key(job.kind, job.next_attempt_at, &job.id);
    index
        .insert(key.as_str(), job.id.as_str())
        .map_err(unavailable)?;
    Ok(())
}

fn unindex_due(txn: &WriteTransaction, job: &Job) -> Result<(), StoreError> {
    let mut index = txn.open_table(JOBS_DUE).map_err(unavailable)?;
    let key = due_key(job.kind, job.next_attempt_at, &job.id);
    index.remove(key.as_str()).map_err(unavailable)?;
    Ok(())
}
