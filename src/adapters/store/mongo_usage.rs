//! The usage side of [`MongoStore`](super::MongoStore): `tenantUsage`,
//! `usageAdjustments` and `apiTokens`.
//!
//! A flush's records go to the server in one unordered `insert_many`: every
//! record whose `_id` (its idempotency key) is new is inserted, and the
//! duplicate-key errors of the others are answered as
//! [`Write::AlreadyApplied`]. Any other error fails the whole call, which is
//! safe to retry for the same reason. No transactions or aggregations, so
//! FerretDB v1 serves it.

use dynabase_actors::{
    domain::records::{Period, UsageAdjustment, UsageRecord, Write},
    OrgId, StoreError, UnixMillis,
};
use mongodb::{
    bson::{doc, oid::ObjectId, Document},
    error::ErrorKind,
    options::ReplaceOptions,
    Collection, Database, IndexModel,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::mongo::{find_sorted, insert_keyed, store_error, DUPLICATE_KEY};

pub(super) const TENANT_USAGE: &str = "tenantUsage";
const ADJUSTMENTS: &str = "usageAdjustments";
const API_TOKENS: &str = "apiTokens";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UsageDoc {
    #[serde(rename = "_id")]
    key: String,
    org: OrgId,
    database: String,
    period: Period,
    window_start: i64,
    // BSON has no unsigned integers; the driver stores these as Int64 and
    // refuses values above `i64::MAX` rather than wrapping.
    query_cycles: u64,
    duration_us: u64,
    vcpu_hours: Decimal,
    gb_hours: Decimal,
    /// Added to its period total (`mongo/period_totals.rs`); absent in
    /// records written before totals existed.
    #[serde(default)]
    totaled: bool,
}

impl From<&UsageRecord> for UsageDoc {
    fn from(r: &UsageRecord) -> Self {
        Self {
            key: r.key.clone(),
            org: r.org.clone(),
            database: r.database.clone(),
            period: r.period.clone(),
            window_start: r.window_start.0,
            query_cycles: r.query_cycles,
            duration_us: r.duration_us,
            vcpu_hours: r.vcpu_hours,
            gb_hours: r.gb_hours,
            totaled: false,
        }
    }
}

impl From<UsageDoc> for UsageRecord {
    fn from(d: UsageDoc) -> Self {
        Self {
            key: d.key,
            org: d.org,
            database: d.database,
            period: d.period,
            window_start: UnixMillis(d.window_start),
            query_cycles: d.query_cycles,
            duration_us: d.duration_us,
            vcpu_hours: d.vcpu_hours,
            gb_hours: d.gb_hours,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdjustmentDoc {
    #[serde(rename = "_id")]
    key: String,
    org: OrgId,
    period: Period,
    vcpu_hours: Decimal,
    reason: String,
    by: String,
    created_at: i64,
    /// Tie-breaker for equal `createdAt`.
    seq: ObjectId,
}

impl From<AdjustmentDoc> for UsageAdjustment {
    fn from(d: AdjustmentDoc) -> Self {
        Self {
            key: d.key,
            org: d.org,
            period: d.period,
            vcpu_hours: d.vcpu_hours,
            reason: d.reason,
            by: d.by,
            created_at: UnixMillis(d.created_at),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenDoc {
    /// The org id: one token per org, replaced on rotation.
    #[serde(rename = "_id")]
    org: OrgId,
    sha256: String,
}

/// The collections of usage, adjustments and API tokens.
#[derive(Debug, Clone)]
pub(super) struct UsageCollections {
    usage: Collection<UsageDoc>,
    adjustments: Collection<AdjustmentDoc>,
    tokens: Collection<TokenDoc>,
}

impl UsageCollections {
    pub(super) fn new(db: &Database) -> Self {
        Self {
            usage: db.collection(TENANT_USAGE),
            adjustments: db.collection(ADJUSTMENTS),
            tokens: db.collection(API_TOKENS),
        }
    }

    pub(super) async fn ensure_indexes(&self) -> Result<(), (&'static str, mongodb::error::Error)> {
        let index = |keys: Document| IndexModel::builder().keys(keys).build();
        self.usage
            .create_indexes([index(doc! { "org": 1, "period": 1 })])
            .await
            .map_err(|e| (TENANT_USAGE, e))?;
        self.adjustments
            .create_indexes([index(doc! { "org": 1, "period": 1 })])
            .await
            .map_err(|e| (ADJUSTMENTS, e))?;
        Ok(())
    }

    pub(super) async fn record_batch(
        &self,
        records: &[UsageRecord],
    ) -> Result<Vec<Write>, StoreError> {
        let mut writes = vec![Write::Applied; records.len()];
        if records.is_empty() {
            return Ok(writes);
        }
        let docs: Vec<UsageDoc> = records.iter().map(UsageDoc::from).collect();
        let error = match self.usage.insert_many(docs).ordered(false).await {
            Ok(_) => return Ok(writes),
            Err(e) => e,
        };
        let ErrorKind::InsertMany(failure) = &*error.kind else {
            return Err(store_error(error));
        };
        if failure.write_concern_error.is_some() {
            return Err(store_error(error));
        }
        for w in failure.write_errors.iter().flatten() {
            match writes.get_mut(w.index) {
                Some(slot) if w.code == DUPLICATE_KEY => *slot = Write::AlreadyApplied,
                _ => return Err(store_error(error)),
            }
        }
        Ok(writes)
    }

    pub(super) async fn for_period(
        &self,
        org: &OrgId,
        period: &Period,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        find_sorted(
            &self.usage,
            doc! { "org": org.as_str(), "period": period.as_str() },
            doc! { "windowStart": 1, "_id": 1 },
        )
        .await
    }

    /// The usage records' collection (the period totals mark them).
    pub(super) fn records(&self) -> &Collection<UsageDoc> {
        &self.usage
    }

    pub(super) async fn add_adjustment(&self, a: &UsageAdjustment) -> Result<Write, StoreError> {
        let doc = AdjustmentDoc {
            key: a.key.clone(),
            org: a.org.clone(),
            period: a.period.clone(),
            vcpu_hours: a.vcpu_hours,
            reason: a.reason.clone(),
            by: a.by.clone(),
            created_at: a.created_at.0,
            seq: ObjectId::new(),
        };
        insert_keyed(&self.adjustments, &doc).await
    }

    pub(super) async fn adjustments(
        &self,
        org: &OrgId,
        period: &Period,
    ) -> Result<Vec<UsageAdjustment>, StoreError> {
        find_sorted(
            &self.adjustments,
            doc! { "org": org.as_str(), "period": period.as_str() },
            doc! { "createdAt": 1, "seq": 1 },
        )
        .await
    }

    pub(super) async fn adjustments_for_period(
        &self,
        period: &Period,
    ) -> Result<Vec<UsageAdjustment>, StoreError> {
        find_sorted(
            &self.adjustments,
            doc! { "period": period.as_str() },
            doc! { "createdAt": 1, "seq": 1 },
        )
        .await
    }

    /// Upsert by org id: the old hash is replaced in one write, so a rotated
    /// token stops working at once.
    pub(super) async fn set_token_hash(&self, org: &OrgId, hash: &str) -> Result<(), StoreError> {
        let doc = TokenDoc {
            org: org.clone(),
            sha256: hash.to_owned(),
        };
        self.tokens
            .replace_one(doc! { "_id": org.as_str() }, doc)
            .with_options(ReplaceOptions::builder().upsert(true).build())
            .await
            .map(drop)
            .map_err(store_error)
    }

    pub(super) async fn token_hash(&self, org: &OrgId) -> Result<Option<String>, StoreError> {
        let found = self
            .tokens
            .find_one(doc! { "_id": org.as_str() })
            .await
            .map_err(store_error)?;
        Ok(found.map(|t| t.sha256))
    }
}
