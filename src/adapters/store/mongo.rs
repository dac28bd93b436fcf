//! `MongoStore`: the [`Store`] on MongoDB (or a MongoDB-wire server such as
//! FerretDB), the source of truth in production.
//!
//! Idempotency rides on `_id`: every keyed record uses its key as `_id`, so the
//! server's own uniqueness makes a retried insert fail with duplicate-key
//! error 11000, which is reported as [`Write::AlreadyApplied`]. That needs no
//! transactions, which FerretDB does not offer.
//!
//! Documents are private serde structs with camelCase field names, so BSON
//! never reaches the domain. Decimals are stored as strings (exact, and
//! portable across servers without Decimal128 support). Only plain CRUD,
//! `find` with filter and sort, and `createIndexes` are used; sums are done by
//! the caller in Rust rather than by aggregation pipelines.
//!
//! Ties in time order (notifications, invoices, tier changes) are broken by an
//! `ObjectId` made at insert. Within one process those increase with each
//! insert; between replicas writing in the same second the order is still
//! deterministic, though not necessarily the order of arrival.

mod billing;
mod lifecycle;
mod org_doc;
mod org_queries;
mod period_totals;

use std::time::Duration;

use async_trait::async_trait;
use dynabase_actors::{
    domain::{
        billing::SubscriptionOrder,
        billing_record::{BillingRecord, BillingState},
        jobs::{Job, JobKind},
        period_total::PeriodTotal,
        records::{
            CalibrationRecord, Notification, Period, ProcessedEvent, TierChange, UsageAdjustment,
            UsageRecord, Write,
        },
    },
    store::Claim,
    OrgId, Organization, Store, StoreError, Tier, UnixMillis,
};
use futures_util::TryStreamExt;
use mongodb::{
    bson::{doc, oid::ObjectId, Document},
    error::{Error as DriverError, ErrorKind, WriteFailure},
    options::ClientOptions,
    Client, Collection, Database, IndexModel,
};
use org_doc::OrgDoc;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::mongo_usage::UsageCollections;

/// How long to wait for a server before calling the store unavailable.
const SERVER_TIMEOUT: Duration = Duration::from_secs(5);

/// The server's code for a unique-index violation.
pub(super) const DUPLICATE_KEY: i32 = 11000;

const ORGANIZATIONS: &str = "organizations";
const WEBHOOK_EVENTS: &str = "webhookEvents";
const CALIBRATIONS: &str = "calibrations";
const NOTIFICATIONS: &str = "notifications";
const TIER_CHANGES: &str = "tierChanges";
const JOBS: &str = "jobs";
const SUBSCRIPTION_EVENTS: &str = "subscriptionEvents";

/// Why the MongoDB store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MongoStoreError {
    #[error("invalid MongoDB URL or client options: {0}")]
    Options(#[source] DriverError),
    #[error("MongoDB server unreachable: {0}")]
    Unreachable(#[source] DriverError),
    #[error("cannot create indexes on `{collection}`: {source}")]
    Index {
        collection: &'static str,
        #[source]
        source: DriverError,
    },
}

// ----- documents ------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventDoc {
    #[serde(rename = "_id")]
    event_id: String,
    event_type: String,
    received_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NotificationDoc {
    #[serde(rename = "_id")]
    key: String,
    org: OrgId,
    kind: String,
    message: String,
    created_at: i64,
    /// Tie-breaker for equal `createdAt`; see the module docs.
    seq: ObjectId,
}

impl From<&Notification> for NotificationDoc {
    fn from(n: &Notification) -> Self {
        Self {
            key: n.key.clone(),
            org: n.org.clone(),
            kind: n.kind.clone(),
            message: n.message.clone(),
            created_at: n.created_at.0,
            seq: ObjectId::new(),
        }
    }
}

impl From<NotificationDoc> for Notification {
    fn from(d: NotificationDoc) -> Self {
        Self {
            key: d.key,
            org: d.org,
            kind: d.kind,
            message: d.message,
            created_at: UnixMillis(d.created_at),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TierChangeDoc {
    /// Made at insert; also the tie-breaker for equal `at`.
    #[serde(rename = "_id")]
    id: ObjectId,
    org: OrgId,
    from: Tier,
    to: Tier,
    source: String,
    reason: String,
    at: i64,
}

impl From<&TierChange> for TierChangeDoc {
    fn from(c: &TierChange) -> Self {
        Self {
            id: ObjectId::new(),
            org: c.org.clone(),
            from: c.from,
            to: c.to,
            source: c.source.clone(),
            reason: c.reason.clone(),
            at: c.at.0,
        }
    }
}

impl From<TierChangeDoc> for TierChange {
    fn from(d: TierChangeDoc) -> Self {
        Self {
            org: d.org,
            from: d.from,
            to: d.to,
            source: d.source,
            reason: d.reason,
            at: UnixMillis(d.at),
        }
    }
}

// ----- errors ---------------------------------------------------------------

fn is_duplicate_key(e: &DriverError) -> bool {
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// Maps a driver error onto the port: unreadable documents are `Corrupt`,
/// everything else (network, server selection, server errors) means the store
/// cannot serve the request right now.
pub(super) fn store_error(e: DriverError) -> StoreError {
    match &*e.kind {
        ErrorKind::BsonDeserialization(_) => StoreError::Corrupt(format!("mongodb: {e}")),
        _ => StoreError::Unavailable(format!("mongodb: {e}")),
    }
}

/// Inserts a keyed document; a duplicate `_id` means it was written before.
pub(super) async fn insert_keyed<T>(coll: &Collection<T>, doc: &T) -> Result<Write, StoreError>
where
    T: Serialize + Send + Sync,
{
    match coll.insert_one(doc).await {
        Ok(_) => Ok(Write::Applied),
        Err(e) if is_duplicate_key(&e) => Ok(Write::AlreadyApplied),
        Err(e) => Err(store_error(e)),
    }
}

/// Runs a filtered, sorted `find` and converts every document.
pub(super) async fn find_sorted<T, R>(
    coll: &Collection<T>,
    filter: Document,
    sort: Document,
) -> Result<Vec<R>, StoreError>
where
    T: DeserializeOwned + Send + Sync + Into<R>,
{
    let cursor = coll.find(filter).sort(sort).await.map_err(store_error)?;
    let docs: Vec<T> = cursor.try_collect().await.map_err(store_error)?;
    Ok(docs.into_iter().map(Into::into).collect())
}

// ----- the store ------------------------------------------------------------

/// A [`Store`] on a MongoDB-wire server.
#[derive(Debug, Clone)]
pub struct MongoStore {
    db: Database,
    orgs: Collection<OrgDoc>,
    usage: UsageCollections,
    events: Collection<EventDoc>,
    totals: Collection<period_totals::PeriodTotalDoc>,
    billing: Collection<billing::BillingDoc>,
    claims: Collection<billing::ClaimDoc>,
    settings: Collection<billing::SettingDoc>,
    calibrations: Collection<billing::CalibrationDoc>,
    notifications: Collection<NotificationDoc>,
    tier_changes: Collection<TierChangeDoc>,
    jobs: Collection<lifecycle::JobDoc>,
    subscription_events: Collection<lifecycle::SubscriptionEventDoc>,
}

impl MongoStore {
    /// Connects to `url`, checks the server answers, and ensures the indexes
    /// exist (creating an existing index again is a no-op).
    pub async fn connect(url: &str, database: &str) -> Result<Self, MongoStoreError> {
        let mut options = ClientOptions::parse(url)
            .await
            .map_err(MongoStoreError::Options)?;
        options.server_selection_timeout = Some(SERVER_TIMEOUT);
        options.connect_timeout = Some(SERVER_TIMEOUT);
        options.app_name = Some("dynabase".to_owned());
        let client = Client::with_options(options).map_err(MongoStoreError::Options)?;
        let db = client.database(database);
        // The driver connects lazily; ping so an absent server is reported
        // here, distinctly from index problems.
        db.run_command(doc! { "ping": 1 })
            .await
            .map_err(MongoStoreError::Unreachable)?;

        let store = Self {
            orgs: db.collection(ORGANIZATIONS),
            usage: UsageCollections::new(&db),
            events: db.collection(WEBHOOK_EVENTS),
            totals: db.collection(period_totals::PERIOD_TOTALS),
            billing: db.collection(billing::BILLING_RECORDS),
            claims: db.collection(billing::CLAIMS),
            settings: db.collection(billing::SETTINGS),
            calibrations: db.collection(CALIBRATIONS),
            notifications: db.collection(NOTIFICATIONS),
            tier_changes: db.collection(TIER_CHANGES),
            jobs: db.collection(JOBS),
            subscription_events: db.collection(SUBSCRIPTION_EVENTS),
            db,
        };
        store.ensure_indexes().await?;
        Ok(store)
    }

    /// The database this store uses (for administration and tests).
    pub fn database(&self) -> &Database {
        &self.db
    }

    async fn ensure_indexes(&self) -> Result<(), MongoStoreError> {
        // `_id` is unique and indexed by the server; these serve the per-org
        // lists and their sort orders.
        let index = |keys: Document| IndexModel::builder().keys(keys).build();
        let wrap =
            |collection: &'static str| move |source| MongoStoreError::Index { collection, source };
        self.usage
            .ensure_indexes()
            .await
            .map_err(|(collection, source)| MongoStoreError::Index { collection, source })?;
        self.totals
            .create_indexes([index(doc! { "period": 1 })])
            .await
            .map_err(wrap(period_totals::PERIOD_TOTALS))?;
        billing::ensure_indexes(&self.billing).await?;
        self.notifications
            .create_indexes([index(doc! { "org": 1, "createdAt": 1 })])
            .await
            .map_err(wrap(NOTIFICATIONS))?;
        self.tier_changes
            .create_indexes([index(doc! { "org": 1, "at": 1 })])
            .await
            .map_err(wrap(TIER_CHANGES))?;
        lifecycle::ensure_indexes(self).await
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .run_command(doc! { "ping": 1 })
            .await
            .map(drop)
            .map_err(store_error)
    }

    async fn create_org(&self, org: &Organization) -> Result<(), StoreError> {
        match insert_keyed(&self.orgs, &OrgDoc::from(org)).await? {
            Write::Applied => Ok(()),
            Write::AlreadyApplied => Err(StoreError::Duplicate(org.id.clone())),
        }
    }

    async fn get_org(&self, id: &OrgId) -> Result<Option<Organization>, StoreError> {
        let found = self
            .orgs
            .find_one(doc! { "_id": id.as_str() })
            .await
            .map_err(store_error)?;
        Ok(found.map(Organization::from))
    }

    async fn list_orgs(&self) -> Result<Vec<Organization>, StoreError> {
        find_sorted(&self.orgs, doc! {}, doc! { "_id": 1 }).await
    }

    async fn orgs_with_lifecycle_due(
        &self,
        now: UnixMillis,
        past_due_since_by: UnixMillis,
    ) -> Result<Vec<Organization>, StoreError> {
        lifecycle::orgs_with_lifecycle_due(self, now, past_due_since_by).await
    }

    async fn awake_suspendable_orgs(&self) -> Result<Vec<Organization>, StoreError> {
        org_queries::awake_suspendable_orgs(self).await
    }

    async fn count_orgs_created_before(&self, at: UnixMillis) -> Result<usize, StoreError> {
        org_queries::count_orgs_created_before(self, at).await
    }

    async fn update_org(&self, org: &Organization) -> Result<(), StoreError> {
        let result = self
            .orgs
            .replace_one(doc! { "_id": org.id.as_str() }, OrgDoc::from(org))
            .await
            .map_err(store_error)?;
        if result.matched_count == 0 {
            return Err(StoreError::NotFound(org.id.clone()));
        }
        Ok(())
    }

    async fn record_usage(&self, record: &UsageRecord) -> Result<Write, StoreError> {
        let writes = self
            .record_usage_batch(std::slice::from_ref(record))
            .await?;
        Ok(writes.first().copied().unwrap_or(Write::Applied))
    }

    async fn record_usage_batch(&self, records: &[UsageRecord]) -> Result<Vec<Write>, StoreError> {
        // See `mongo/period_totals.rs` for why this is exactly once.
        let writes = self.usage.record_batch(records).await?;
        let seen: Vec<&str> = records
            .iter()
            .zip(&writes)
            .filter(|(_, w)| **w == Write::AlreadyApplied)
            .map(|(r, _)| r.key.as_str())
            .collect();
        let pending = period_totals::untotaled(self.usage.records(), &seen).await?;
        let todo: Vec<&UsageRecord> = records
            .iter()
            .zip(&writes)
            .filter(|(r, w)| **w == Write::Applied || pending.contains(&r.key))
            .map(|(r, _)| r)
            .collect();
        period_totals::add_records(&self.totals, self.usage.records(), &todo).await?;
        Ok(writes)
    }

    async fn period_total(&self, org: &OrgId, period: &Period) -> Result<PeriodTotal, StoreError> {
        period_totals::get(&self.totals, org, period).await
    }

    async fn period_totals(&self, period: &Period) -> Result<Vec<PeriodTotal>, StoreError> {
        period_totals::for_period(&self.totals, period).await
    }

    async fn set_period_total(&self, total: &PeriodTotal) -> Result<(), StoreError> {
        period_totals::set(&self.totals, total).await
    }

    async fn adjustments_for_period(
        &self,
        period: &Period,
    ) -> Result<Vec<UsageAdjustment>, StoreError> {
        self.usage.adjustments_for_period(period).await
    }

    async fn usage_for_period(
        &self,
        org: &OrgId,
        period: &Period,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        self.usage.for_period(org, period).await
    }

    async fn add_usage_adjustment(&self, a: &UsageAdjustment) -> Result<Write, StoreError> {
        self.usage.add_adjustment(a).await
    }

    async fn usage_adjustments(
        &self,
        org: &OrgId,
        period: &Period,
    ) -> Result<Vec<UsageAdjustment>, StoreError> {
        self.usage.adjustments(org, period).await
    }

    async fn set_api_token_hash(&self, org: &OrgId, hash: &str) -> Result<(), StoreError> {
        if self.get_org(org).await?.is_none() {
            return Err(StoreError::NotFound(org.clone()));
        }
        self.usage.set_token_hash(org, hash).await
    }

    async fn api_token_hash(&self, org: &OrgId) -> Result<Option<String>, StoreError> {
        self.usage.token_hash(org).await
    }

    async fn mark_event_processed(&self, event: &ProcessedEvent) -> Result<Write, StoreError> {
        let doc = EventDoc {
            event_id: event.event_id.clone(),
            event_type: event.event_type.clone(),
            received_at: event.received_at.0,
        };
        insert_keyed(&self.events, &doc).await
    }

    async fn insert_billing_record(&self, record: &BillingRecord) -> Result<Write, StoreError> {
        billing::insert(&self.billing, record).await
    }

    async fn billing_record(
        &self,
        org: &OrgId,
        period: &Period,
    ) -> Result<Option<BillingRecord>, StoreError> {
        billing::get(&self.billing, org, period).await
    }

    async fn billing_records_for_org(&self, org: &OrgId) -> Result<Vec<BillingRecord>, StoreError> {
        billing::for_org(&self.billing, org).await
    }

    async fn billing_records_for_period(
        &self,
        period: &Period,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        billing::for_period(&self.billing, period).await
    }

    async fn due_billing_records(
        &self,
        state: BillingState,
        now: UnixMillis,
        limit: usize,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        billing::due(&self.billing, state, now, limit).await
    }

    async fn billing_record_by_item(
        &self,
        item_id: &str,
    ) -> Result<Option<BillingRecord>, StoreError> {
        billing::by_item(&self.billing, item_id).await
    }

    async fn claim(
        &self,
        name: &str,
        _now: UnixMillis,
        until: UnixMillis,
    ) -> Result<Claim, StoreError> {
        billing::claim(&self.claims, name, until).await
    }

    async fn update_billing_record_if_unchanged(
        &self,
        record: &BillingRecord,
        seen_updated_at: UnixMillis,
    ) -> Result<bool, StoreError> {
        billing::update_if_unchanged(&self.billing, record, seen_updated_at).await
    }

    async fn record_calibration(&self, record: &CalibrationRecord) -> Result<Write, StoreError> {
        billing::insert_calibration(&self.calibrations, record).await
    }

    async fn replace_calibration(&self, record: &CalibrationRecord) -> Result<(), StoreError> {
        billing::replace_calibration(&self.calibrations, record).await
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        billing::setting(&self.settings, key).await
    }

    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        billing::set_setting(&self.settings, key, value).await
    }

    async fn calibrations(&self) -> Result<Vec<CalibrationRecord>, StoreError> {
        billing::calibrations(&self.calibrations).await
    }

    async fn add_notification(&self, n: &Notification) -> Result<Write, StoreError> {
        insert_keyed(&self.notifications, &NotificationDoc::from(n)).await
    }

    async fn notifications_for_org(&self, org: &OrgId) -> Result<Vec<Notification>, StoreError> {
        find_sorted(
            &self.notifications,
            doc! { "org": org.as_str() },
            doc! { "createdAt": 1, "seq": 1 },
        )
        .await
    }

    async fn append_tier_change(&self, change: &TierChange) -> Result<(), StoreError> {
        self.tier_changes
            .insert_one(TierChangeDoc::from(change))
            .await
            .map(drop)
            .map_err(store_error)
    }

    async fn tier_history(&self, org: &OrgId) -> Result<Vec<TierChange>, StoreError> {
        find_sorted(
            &self.tier_changes,
            doc! { "org": org.as_str() },
            doc! { "at": 1, "_id": 1 },
        )
        .await
    }

    async fn tier_changes_since(&self, since: UnixMillis) -> Result<Vec<TierChange>, StoreError> {
        find_sorted(
            &self.tier_changes,
            doc! { "at": { "$gte": since.0 } },
            doc! { "at": 1, "_id": 1 },
        )
        .await
    }

    async fn update_org_if_unchanged(
        &self,
        org: &Organization,
        seen_updated_at: UnixMillis,
    ) -> Result<bool, StoreError> {
        lifecycle::update_org_if_unchanged(self, org, seen_updated_at).await
    }

    async fn org_by_stripe_customer(
        &self,
        customer_id: &str,
    ) -> Result<Option<Organization>, StoreError> {
        lifecycle::org_by_stripe_customer(self, customer_id).await
    }

    async fn record_subscription_event(
        &self,
        subscription_id: &str,
        created: i64,
        event_id: &str,
    ) -> Result<SubscriptionOrder, StoreError> {
        lifecycle::record_subscription_event(self, subscription_id, created, event_id).await
    }

    async fn enqueue_job(&self, job: &Job) -> Result<Write, StoreError> {
        lifecycle::enqueue_job(self, job).await
    }

    async fn get_job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        lifecycle::get_job(self, id).await
    }

    async fn claim_due_jobs(
        &self,
        kind: JobKind,
        now: UnixMillis,
        lease_until: UnixMillis,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        lifecycle::claim_due_jobs(self, kind, now, lease_until, limit).await
    }

    async fn update_job(&self, job: &Job) -> Result<(), StoreError> {
        lifecycle::update_job(self, job).await
    }
}
