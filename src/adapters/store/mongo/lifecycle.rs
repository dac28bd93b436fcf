//! The tier lifecycle's collections on MongoDB: `jobs` (durable work:
//! billing events to apply, notifications to deliver) and
//! `subscriptionEvents` (the latest event applied per billing subscription),
//! plus the organization queries the lifecycle needs.
//!
//! Claims and orderings are single-document conditional updates, which
//! FerretDB supports without transactions.

use dynabase_actors::{
    domain::{
        billing::SubscriptionOrder,
        jobs::{Job, JobKind, JobStatus},
        records::Write,
    },
    OrgId, Organization, Store, StoreError, UnixMillis,
};
use futures_util::TryStreamExt;
use mongodb::{bson::doc, IndexModel};
use serde::{Deserialize, Serialize};

use super::{
    insert_keyed, is_duplicate_key, org_doc::OrgDoc, store_error, MongoStore, MongoStoreError,
    JOBS, ORGANIZATIONS,
};

/// The organizations' billing-customer index and the jobs' due index.
pub(super) async fn ensure_indexes(store: &MongoStore) -> Result<(), MongoStoreError> {
    store
        .orgs
        .create_indexes([IndexModel::builder()
            .keys(doc! { "stripeCustomerId": 1 })
            .build()])
        .await
        .map_err(|source| MongoStoreError::Index {
            collection: ORGANIZATIONS,
            source,
        })?;
    store
        .jobs
        .create_indexes([IndexModel::builder()
            .keys(doc! { "kind": 1, "status": 1, "nextAttemptAt": 1 })
            .build()])
        .await
        .map_err(|source| MongoStoreError::Index {
            collection: JOBS,
            source,
        })?;
    Ok(())
}

/// Organizations with a scheduled change effective by `now` or past due
/// since `past_due_since_by` or earlier, by id. Filtered by the server, so
/// only those cross the wire. Not indexed: FerretDB v1.24.2 (what
/// `scripts/services.sh` installs) drops the connection when asked to
/// create an index over these nested fields that already exists, which made
/// a replica starting beside another fail its store connection; a scan of
/// the organizations per tick is cheap next to that.
pub(super) async fn orgs_with_lifecycle_due(
    store: &MongoStore,
    now: UnixMillis,
    past_due_since_by: UnixMillis,
) -> Result<Vec<Organization>, StoreError> {
    let filter = doc! { "$or": [
        { "pendingTierChange.effectiveAt": { "$lte": now.0 } },
        { "lifecycle.pastDueSince": { "$lte": past_due_since_by.0 } },
    ] };
    super::find_sorted(&store.orgs, filter, doc! { "_id": 1 }).await
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct JobDoc {
    #[serde(rename = "_id")]
    id: String,
    kind: JobKind,
    org: Option<OrgId>,
    payload: String,
    status: JobStatus,
    attempts: i64,
    next_attempt_at: i64,
    created_at: i64,
    updated_at: i64,
    note: Option<String>,
}

impl From<&Job> for JobDoc {
    fn from(j: &Job) -> Self {
        Self {
            id: j.id.clone(),
            kind: j.kind,
            org: j.org.clone(),
            payload: j.payload.clone(),
            status: j.status,
            attempts: i64::from(j.attempts),
            next_attempt_at: j.next_attempt_at.0,
            created_at: j.created_at.0,
            updated_at: j.updated_at.0,
            note: j.note.clone(),
        }
    }
}

impl From<JobDoc> for Job {
    fn from(d: JobDoc) -> Self {
        Self {
            id: d.id,
            kind: d.kind,
            org: d.org,
            payload: d.payload,
            status: d.status,
            attempts: u32::try_from(d.attempts).unwrap_or(u32::MAX),
            next_attempt_at: UnixMillis(d.next_attempt_at),
            created_at: UnixMillis(d.created_at),
            updated_at: UnixMillis(d.updated_at),
            note: d.note,
        }
    }
}

/// The latest event applied to one billing-provider subscription.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SubscriptionEventDoc {
    #[serde(rename = "_id")]
    subscription_id: String,
    last_created: i64,
    last_event_id: String,
}

/// The BSON spelling of a serde enum value (`"pending"`, `"billing_event"`).
fn bson_name<T: Serialize>(value: T) -> Result<mongodb::bson::Bson, StoreError> {
    mongodb::bson::to_bson(&value).map_err(|e| StoreError::Corrupt(format!("mongodb: {e}")))
}

pub(super) async fn update_org_if_unchanged(
    store: &MongoStore,
    org: &Organization,
    seen_updated_at: UnixMillis,
) -> Result<bool, StoreError> {
    let result = store
        .orgs
        .replace_one(
            doc! { "_id": org.id.as_str(), "updatedAt": seen_updated_at.0 },
            OrgDoc::from(org),
        )
        .await
        .map_err(store_error)?;
    if result.matched_count == 1 {
        return Ok(true);
    }
    match store.get_org(&org.id).await? {
        Some(_) => Ok(false),
        None => Err(StoreError::NotFound(org.id.clone())),
    }
}

pub(super) async fn org_by_stripe_customer(
    store: &MongoStore,
    customer_id: &str,
) -> Result<Option<Organization>, StoreError> {
    let found = store
        .orgs
        .find_one(doc! { "stripeCustomerId": customer_id })
        .sort(doc! { "_id": 1 })
        .await
        .map_err(store_error)?;
    Ok(found.map(Organization::from))
}

pub(super) async fn record_subscription_event(
    store: &MongoStore,
    subscription_id: &str,
    created: i64,
    event_id: &str,
) -> Result<SubscriptionOrder, StoreError> {
    // One atomic upsert: it matches when the stored event is not newer;
    // when it is newer, the upsert's insert collides on `_id`.
    let result = store
        .subscription_events
        .update_one(
            doc! { "_id": subscription_id, "lastCreated": { "$lte": created } },
            doc! { "$set": { "lastCreated": created, "lastEventId": event_id } },
        )
        .upsert(true)
        .await;
    match result {
        Ok(_) => Ok(SubscriptionOrder::Current),
        Err(e) if is_duplicate_key(&e) => {
            let applied = store
                .subscription_events
                .find_one(doc! { "_id": subscription_id })
                .await
                .map_err(store_error)?
                .ok_or_else(|| {
                    StoreError::Unavailable(format!(
                        "mongodb: subscription {subscription_id} neither matched nor found"
                    ))
                })?;
            Ok(SubscriptionOrder::Stale {
                applied_created: applied.last_created,
                applied_event_id: applied.last_event_id,
            })
        }
        Err(e) => Err(store_error(e)),
    }
}

pub(super) async fn enqueue_job(store: &MongoStore, job: &Job) -> Result<Write, StoreError> {
    insert_keyed(&store.jobs, &JobDoc::from(job)).await
}

pub(super) async fn get_job(store: &MongoStore, id: &str) -> Result<Option<Job>, StoreError> {
    let found = store
        .jobs
        .find_one(doc! { "_id": id })
        .await
        .map_err(store_error)?;
    Ok(found.map(Job::from))
}

pub(super) async fn claim_due_jobs(
    store: &MongoStore,
    kind: JobKind,
    now: UnixMillis,
    lease_until: UnixMillis,
    limit: usize,
) -> Result<Vec<Job>, StoreError> {
    let pending = bson_name(JobStatus::Pending)?;
    let candidates: Vec<JobDoc> = store
        .jobs
        .find(doc! {
            "kind": bson_name(kind)?,
            "status": pending.clone(),
            "nextAttemptAt": { "$lte": now.0 },
        })
        .sort(doc! { "createdAt": 1, "_id": 1 })
        .limit(i64::try_from(limit).unwrap_or(i64::MAX))
        .await
        .map_err(store_error)?
        .try_collect()
        .await
        .map_err(store_error)?;
    let mut claimed = Vec::with_capacity(candidates.len());
    for mut candidate in candidates {
        // Conditional on what was read: of two replicas claiming the
        // same job, one matches and the other finds it moved.
        let result = store
            .jobs
            .update_one(
                doc! {
                    "_id": candidate.id.as_str(),
                    "status": pending.clone(),
                    "nextAttemptAt": candidate.next_attempt_at,
                },
                doc! {
                    "$set": { "nextAttemptAt": lease_until.0, "updatedAt": now.0 },
                    "$inc": { "attempts": 1_i64 },
                },
            )
            .await
            .map_err(store_error)?;
        if result.modified_count == 1 {
            candidate.next_attempt_at = lease_until.0;
            candidate.updated_at = now.0;
            candidate.attempts += 1;
            claimed.push(Job::from(candidate));
        }
    }
    Ok(claimed)
}

pub(super) async fn update_job(store: &MongoStore, job: &Job) -> Result<(), StoreError> {
    let result = store
        .jobs
        .replace_one(doc! { "_id": job.id.as_str() }, JobDoc::from(job))
        .await
        .map_err(store_error)?;
    if result.matched_count == 0 {
        return Err(StoreError::Corrupt(format!(
            "job `{}` does not exist",
            job.id
        )));
    }
    Ok(())
}
