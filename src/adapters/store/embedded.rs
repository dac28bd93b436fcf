//! `EmbeddedStore`: the [`Store`] kept in one redb file, `<dir>/dynabase.redb`.
//!
//! It serves when no MongoDB is configured (development, single-node
//! installs). Every table is keyed by a string and holds `serde_json` bytes, so
//! the file stays readable by tooling and tolerant of added optional fields.
//!
//! Keyed writes check for the key and insert inside one write transaction;
//! redb serializes write transactions, so a retried write reliably reports
//! [`Write::AlreadyApplied`]. Lists that are per organization go through small
//! index tables whose keys sort in the order the port promises:
//!
//! | index                    | key                                          |
//! |--------------------------|----------------------------------------------|
//! | `usage_by_org_period`    | `<org>/<period>/<window_start>/<usage key>`  |
//! | `adjustments_by_org_period` | `<org>/<period>/<created_at>/<seq>`       |
//! | `notifications_by_org`   | `<org>/<created_at>/<seq>`                   |
//! | `tier_changes` (primary) | `<org>/<at>/<seq>`                           |
//!
//! Instants are encoded with [`sortable_millis`] so byte order is time order,
//! and `<seq>` is a counter kept in the `meta` table that breaks ties in
//! insertion order. An `OrgId` never contains `/`, so `<org>/` is an exact
//! prefix.
//!
//! The document and index helpers are in `embedded/docs.rs`; the usage batch
//! write and the API token table in `embedded_usage.rs`; period totals and
//! billing records in `embedded/billing.rs`.
//!
//! redb is synchronous; every call runs on the blocking pool via
//! [`tokio::task::spawn_blocking`] so it never stalls the async runtime.

mod billing;
mod docs;
mod lifecycle;
mod org_scans;

pub(super) use billing::add_to_total;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

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
    OrgId, Organization, Store, StoreError, UnixMillis,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::embedded_usage as usage;
use docs::{
    all_docs, decode, docs_by_index, docs_in_index_range, docs_with_prefix, get_doc,
    insert_if_absent, next_seq,
};
pub(super) use docs::{encode, insert_in, sortable_millis, unavailable, IndexKey};

/// File name inside the data directory.
pub const FILE_NAME: &str = "dynabase.redb";

/// Primary tables: key → JSON document.
pub(super) type DocTable = TableDefinition<'static, &'static str, &'static [u8]>;
/// Index tables: sortable key → primary key.
pub(super) type IndexTable = TableDefinition<'static, &'static str, &'static str>;

pub(super) const ORGS: DocTable = TableDefinition::new("organizations");
pub(super) const USAGE: DocTable = TableDefinition::new("usage");
pub(super) const USAGE_BY_ORG_PERIOD: IndexTable = TableDefinition::new("usage_by_org_period");
const ADJUSTMENTS: DocTable = TableDefinition::new("usage_adjustments");
const ADJUSTMENTS_BY_ORG_PERIOD: IndexTable = TableDefinition::new("adjustments_by_org_period");
/// Org id → SHA-256 hash (hex) of its API token.
pub(super) const API_TOKENS: IndexTable = TableDefinition::new("api_tokens");
const EVENTS: DocTable = TableDefinition::new("webhook_events");
const CALIBRATIONS: DocTable = TableDefinition::new("calibrations");
const NOTIFICATIONS: DocTable = TableDefinition::new("notifications");
const NOTIFICATIONS_BY_ORG: IndexTable = TableDefinition::new("notifications_by_org");
const TIER_CHANGES: DocTable = TableDefinition::new("tier_changes");
const META: TableDefinition<'static, &'static str, u64> = TableDefinition::new("meta");

/// The `meta` entry holding the last sequence number handed out.
const SEQ_KEY: &str = "seq";

/// Why the embedded store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedStoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open store file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("cannot initialise store file {path}: {source}")]
    Init {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
}

/// A durable [`Store`] in a single redb file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) `<dir>/dynabase.redb`, creating `dir` if needed.
    ///
    /// Blocking; call it at start-up, before serving. Only one process (and
    /// one `EmbeddedStore` per process) may have the file open at a time.
    pub fn open(dir: &Path) -> Result<Self, EmbeddedStoreError> {
        std::fs::create_dir_all(dir).map_err(|source| EmbeddedStoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|source| EmbeddedStoreError::Open {
            path: path.clone(),
            source,
        })?;
        // Create every table up front so read transactions never meet a
        // missing table on a fresh file.
        create_tables(&db).map_err(|source| EmbeddedStoreError::Init {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            db: Arc::new(db),
            path,
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs synchronous redb work on the blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Unavailable(format!("embedded store task failed: {e}")))?
    }
}

fn create_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    for table in [
        ORGS,
        USAGE,
        ADJUSTMENTS,
        EVENTS,
        billing::PERIOD_TOTALS,
        billing::BILLING,
        billing::CLAIMS,
        billing::SETTINGS,
        CALIBRATIONS,
        NOTIFICATIONS,
        TIER_CHANGES,
        lifecycle::JOBS,
        lifecycle::SUBSCRIPTION_EVENTS,
    ] {
        txn.open_table(table)?;
    }
    for index in [
        USAGE_BY_ORG_PERIOD,
        ADJUSTMENTS_BY_ORG_PERIOD,
        API_TOKENS,
        NOTIFICATIONS_BY_ORG,
        lifecycle::JOBS_DUE,
    ] {
        txn.open_table(index)?;
    }
    txn.open_table(META)?;
    txn.commit()?;
    Ok(())
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        // A read transaction proves the file is open and readable.
        self.run(|db| {
            let txn = db.begin_read().map_err(unavailable)?;
            txn.open_table(META).map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn create_org(&self, org: &Organization) -> Result<(), StoreError> {
        let id = org.id.clone();
        let bytes = encode("organization", org)?;
        self.run(
            move |db| match insert_if_absent(db, ORGS, id.as_str(), &bytes, None)? {
                Write::Applied => Ok(()),
                Write::AlreadyApplied => Err(StoreError::Duplicate(id)),
            },
        )
        .await
    }

    async fn get_org(&self, id: &OrgId) -> Result<Option<Organization>, StoreError> {
        let id = id.clone();
        self.run(move |db| get_doc(db, ORGS, id.as_str())).await
    }

    async fn list_orgs(&self) -> Result<Vec<Organization>, StoreError> {
        // Keys are org ids, so key order is id order.
        self.run(|db| all_docs(db, ORGS)).await
    }

    async fn awake_suspendable_orgs(&self) -> Result<Vec<Organization>, StoreError> {
        self.run(org_scans::awake_suspendable_orgs).await
    }

    async fn count_orgs_created_before(&self, at: UnixMillis) -> Result<usize, StoreError> {
        self.run(move |db| org_scans::count_orgs_created_before(db, at))
            .await
    }

    async fn orgs_with_lifecycle_due(
        &self,
        now: UnixMillis,
        past_due_since_by: UnixMillis,
    ) -> Result<Vec<Organization>, StoreError> {
        self.run(move |db| org_scans::orgs_with_lifecycle_due(db, now, past_due_since_by))
            .await
    }

    async fn update_org(&self, org: &Organization) -> Result<(), StoreError> {
        let id = org.id.clone();
        let bytes = encode("organization", org)?;
        self.run(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            let found = {
                let mut orgs = txn.open_table(ORGS).map_err(unavailable)?;
                let found = orgs.get(id.as_str()).map_err(unavailable)?.is_some();
                if found {
                    orgs.insert(id.as_str(), bytes.as_slice())
                        .map_err(unavailable)?;
                }
                found
            };
            if !found {
                txn.abort().map_err(unavailable)?;
                return Err(StoreError::NotFound(id));
            }
            txn.commit().map_err(unavailable)
        })
        .await
    }

    async fn record_usage(&self, record: &UsageRecord) -> Result<Write, StoreError> {
        let entries = vec![usage::usage_entry(record)?];
        let writes = self.run(move |db| usage::insert_usage(db, entries)).await?;
        Ok(writes.first().copied().unwrap_or(Write::Applied))
    }

    async fn record_usage_batch(&self, records: &[UsageRecord]) -> Result<Vec<Write>, StoreError> {
        let entries = records
            .iter()
            .map(usage::usage_entry)
            .collect::<Result<Vec<_>, _>>()?;
        self.run(move |db| usage::insert_usage(db, entries)).await
    }

    async fn add_usage_adjustment(&self, a: &UsageAdjustment) -> Result<Write, StoreError> {
        let bytes = encode("usage adjustment", a)?;
        let key = a.key.clone();
        let prefix = format!("{}/{}/{}", a.org, a.period, sortable_millis(a.created_at.0));
        self.run(move |db| {
            insert_if_absent(
                db,
                ADJUSTMENTS,
                &key,
                &bytes,
                Some((ADJUSTMENTS_BY_ORG_PERIOD, IndexKey::Sequenced(prefix))),
            )
        })
        .await
    }

    async fn usage_adjustments(
        &self,
        org: &OrgId,
        period: &Period,
    ) -> Result<Vec<UsageAdjustment>, StoreError> {
        let prefix = format!("{org}/{period}");
        self.run(move |db| docs_by_index(db, ADJUSTMENTS_BY_ORG_PERIOD, ADJUSTMENTS, &prefix))
            .await
    }

    async fn adjustments_for_period(
        &self,
        period: &Period,
    ) -> Result<Vec<UsageAdjustment>, StoreError> {
        let period = period.clone();
        self.run(move |db| billing::adjustments_for_period(db, ADJUSTMENTS, &period))
            .await
    }

    async fn period_total(&self, org: &OrgId, period: &Period) -> Result<PeriodTotal, StoreError> {
        let (org, period) = (org.clone(), period.clone());
        self.run(move |db| billing::period_total(db, &org, &period))
            .await
    }

    async fn period_totals(&self, period: &Period) -> Result<Vec<PeriodTotal>, StoreError> {
        let period = period.clone();
        self.run(move |db| billing::period_totals(db, &period))
            .await
    }

    async fn set_period_total(&self, total: &PeriodTotal) -> Result<(), StoreError> {
        let total = total.clone();
        self.run(move |db| billing::set_period_total(db, &total))
            .await
    }

    async fn set_api_token_hash(&self, org: &OrgId, hash: &str) -> Result<(), StoreError> {
        let (org, hash) = (org.clone(), hash.to_owned());
        self.run(move |db| usage::set_token_hash(db, org, &hash))
            .await
    }

    async fn api_token_hash(&self, org: &OrgId) -> Result<Option<String>, StoreError> {
        let org = org.clone();
        self.run(move |db| usage::token_hash(db, &org)).await
    }

    async fn usage_for_period(
        &self,
        org: &OrgId,
        period: &Period,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let prefix = format!("{org}/{period}");
        self.run(move |db| docs_by_index(db, USAGE_BY_ORG_PERIOD, USAGE, &prefix))
            .await
    }

    async fn mark_event_processed(&self, event: &ProcessedEvent) -> Result<Write, StoreError> {
        let bytes = encode("webhook event", event)?;
        let key = event.event_id.clone();
        self.run(move |db| insert_if_absent(db, EVENTS, &key, &bytes, None))
            .await
    }

    async fn insert_billing_record(&self, record: &BillingRecord) -> Result<Write, StoreError> {
        let record = record.clone();
        self.run(move |db| billing::insert_record(db, &record))
            .await
    }

    async fn billing_record(
        &self,
        org: &OrgId,
        period: &Period,
    ) -> Result<Option<BillingRecord>, StoreError> {
        let (org, period) = (org.clone(), period.clone());
        self.run(move |db| billing::record(db, &org, &period)).await
    }

    async fn billing_records_for_org(&self, org: &OrgId) -> Result<Vec<BillingRecord>, StoreError> {
        let org = org.clone();
        self.run(move |db| {
            let mut out = billing::records_where(db, |r| r.org == org)?;
            out.sort_by(|a, b| a.period.cmp(&b.period));
            Ok(out)
        })
        .await
    }

    async fn billing_records_for_period(
        &self,
        period: &Period,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        let period = period.clone();
        self.run(move |db| {
            let mut out = billing::records_where(db, |r| r.period == period)?;
            out.sort_by(|a, b| a.org.cmp(&b.org));
            Ok(out)
        })
        .await
    }

    async fn due_billing_records(
        &self,
        state: BillingState,
        now: UnixMillis,
        limit: usize,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        self.run(move |db| billing::due_records(db, state, now, limit))
            .await
    }

    async fn billing_record_by_item(
        &self,
        item_id: &str,
    ) -> Result<Option<BillingRecord>, StoreError> {
        let item_id = item_id.to_owned();
        self.run(move |db| {
            let found = billing::records_where(db, |r| {
                r.provider_item_id.as_deref() == Some(item_id.as_str())
            })?;
            Ok(found.into_iter().next())
        })
        .await
    }

    async fn claim(
        &self,
        name: &str,
        _now: UnixMillis,
        until: UnixMillis,
    ) -> Result<Claim, StoreError> {
        let name = name.to_owned();
        self.run(move |db| billing::claim(db, &name, until)).await
    }

    async fn update_billing_record_if_unchanged(
        &self,
        record: &BillingRecord,
        seen_updated_at: UnixMillis,
    ) -> Result<bool, StoreError> {
        let record = record.clone();
        self.run(move |db| billing::update_record_if_unchanged(db, &record, seen_updated_at))
            .await
    }

    async fn record_calibration(&self, record: &CalibrationRecord) -> Result<Write, StoreError> {
        let bytes = encode("calibration", record)?;
        let key = record.period.clone();
        self.run(move |db| insert_if_absent(db, CALIBRATIONS, key.as_str(), &bytes, None))
            .await
    }

    async fn replace_calibration(&self, record: &CalibrationRecord) -> Result<(), StoreError> {
        let bytes = encode("calibration", record)?;
        let key = record.period.clone();
        self.run(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            txn.open_table(CALIBRATIONS)
                .map_err(unavailable)?
                .insert(key.as_str(), bytes.as_slice())
                .map_err(unavailable)?;
            txn.commit().map_err(unavailable)
        })
        .await
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.run(move |db| billing::setting(db, &key)).await
    }

    async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.run(move |db| billing::set_setting(db, &key, &value))
            .await
    }

    async fn calibrations(&self) -> Result<Vec<CalibrationRecord>, StoreError> {
        // Keyed by `YYYY-MM`, so key order is period order.
        self.run(|db| all_docs(db, CALIBRATIONS)).await
    }

    async fn add_notification(&self, n: &Notification) -> Result<Write, StoreError> {
        let bytes = encode("notification", n)?;
        let key = n.key.clone();
        let prefix = format!("{}/{}", n.org, sortable_millis(n.created_at.0));
        self.run(move |db| {
            insert_if_absent(
                db,
                NOTIFICATIONS,
                &key,
                &bytes,
                Some((NOTIFICATIONS_BY_ORG, IndexKey::Sequenced(prefix))),
            )
        })
        .await
    }

    async fn notifications_for_org(&self, org: &OrgId) -> Result<Vec<Notification>, StoreError> {
        let org = org.clone();
        self.run(move |db| docs_by_index(db, NOTIFICATIONS_BY_ORG, NOTIFICATIONS, org.as_str()))
            .await
    }

    async fn append_tier_change(&self, change: &TierChange) -> Result<(), StoreError> {
        let bytes = encode("tier change", change)?;
        let prefix = format!("{}/{}", change.org, sortable_millis(change.at.0));
        self.run(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            let key = format!("{prefix}/{:020}", next_seq(&txn)?);
            {
                let mut log = txn.open_table(TIER_CHANGES).map_err(unavailable)?;
                log.insert(key.as_str(), bytes.as_slice())
                    .map_err(unavailable)?;
            }
            txn.commit().map_err(unavailable)
        })
        .await
    }

    async fn tier_history(&self, org: &OrgId) -> Result<Vec<TierChange>, StoreError> {
        let org = org.clone();
        self.run(move |db| docs_with_prefix(db, TIER_CHANGES, org.as_str()))
            .await
    }

    async fn tier_changes_since(&self, since: UnixMillis) -> Result<Vec<TierChange>, StoreError> {
        self.run(move |db| billing::tier_changes_since(db, TIER_CHANGES, since))
            .await
    }

    async fn update_org_if_unchanged(
        &self,
        org: &Organization,
        seen_updated_at: UnixMillis,
    ) -> Result<bool, StoreError> {
        let org = org.clone();
        self.run(move |db| lifecycle::update_org_if_unchanged(db, &org, seen_updated_at))
            .await
    }

    async fn org_by_stripe_customer(
        &self,
        customer_id: &str,
    ) -> Result<Option<Organization>, StoreError> {
        let customer_id = customer_id.to_owned();
        self.run(move |db| lifecycle::org_by_stripe_customer(db, &customer_id))
            .await
    }

    async fn record_subscription_event(
        &self,
        subscription_id: &str,
        created: i64,
        event_id: &str,
    ) -> Result<SubscriptionOrder, StoreError> {
        let (subscription_id, event_id) = (subscription_id.to_owned(), event_id.to_owned());
        self.run(move |db| {
            lifecycle::record_subscription_event(db, &subscription_id, created, &event_id)
        })
        .await
    }

    async fn enqueue_job(&self, job: &Job) -> Result<Write, StoreError> {
        let job = job.clone();
        self.run(move |db| lifecycle::enqueue_job(db, &job)).await
    }

    async fn get_job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let id = id.to_owned();
        self.run(move |db| lifecycle::get_job(db, &id)).await
    }

    async fn claim_due_jobs(
        &self,
        kind: JobKind,
        now: UnixMillis,
        lease_until: UnixMillis,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.run(move |db| lifecycle::claim_due_jobs(db, kind, now, lease_until, limit))
            .await
    }

    async fn update_job(&self, job: &Job) -> Result<(), StoreError> {
        let job = job.clone();
        self.run(move |db| lifecycle::update_job(db, &job)).await
    }
}
