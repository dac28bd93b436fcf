//! Billing records on MongoDB (`billingRecords`, `_id` `<org>:<period>`).
//!
//! The record itself is kept whole under `record` (serde's shape: decimals
//! as strings), with the fields that queries filter or sort on copied to
//! the top level and indexed. A state change is a `replace_one` on
//! condition that `updatedAt` is still what the writer read.

use dynabase_actors::{
    domain::{
        billing_record::{billing_key, BillingRecord, BillingState},
        records::{CalibrationRecord, Period, Write},
    },
    store::Claim,
    OrgId, StoreError, UnixMillis,
};
use futures_util::TryStreamExt;
use mongodb::{
    bson::{self, doc, Document},
    error::ErrorKind,
    Collection, IndexModel,
};

/// The server's code for "no such collection".
const NAMESPACE_NOT_FOUND: i32 = 26;
use serde::{Deserialize, Serialize};

use super::{insert_keyed, store_error, MongoStoreError};

pub(super) const BILLING_RECORDS: &str = "billingRecords";
pub(super) const CLAIMS: &str = "claims";
pub(super) const SETTINGS: &str = "settings";

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SettingDoc {
    #[serde(rename = "_id")]
    key: String,
    value: String,
}

pub(super) async fn setting(
    coll: &Collection<SettingDoc>,
    key: &str,
) -> Result<Option<String>, StoreError> {
    let found = coll
        .find_one(doc! { "_id": key })
        .await
        .map_err(store_error)?;
    Ok(found.map(|d| d.value))
}

pub(super) async fn set_setting(
    coll: &Collection<SettingDoc>,
    key: &str,
    value: &str,
) -> Result<(), StoreError> {
    let doc = SettingDoc {
        key: key.to_owned(),
        value: value.to_owned(),
    };
    coll.replace_one(doc! { "_id": key }, doc)
        .upsert(true)
        .await
        .map(drop)
        .map_err(store_error)
}

/// A calibration, whole under `record` (decimals as strings), keyed by
/// its period.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CalibrationDoc {
    #[serde(rename = "_id")]
    period: Period,
    record: Document,
}

fn calibration_doc(r: &CalibrationRecord) -> Result<CalibrationDoc, StoreError> {
    Ok(CalibrationDoc {
        period: r.period.clone(),
        record: bson::to_document(r)
            .map_err(|e| StoreError::Unavailable(format!("cannot encode calibration: {e}")))?,
    })
}

pub(super) async fn insert_calibration(
    coll: &Collection<CalibrationDoc>,
    r: &CalibrationRecord,
) -> Result<Write, StoreError> {
    insert_keyed(coll, &calibration_doc(r)?).await
}

pub(super) async fn replace_calibration(
    coll: &Collection<CalibrationDoc>,
    r: &CalibrationRecord,
) -> Result<(), StoreError> {
    coll.replace_one(doc! { "_id": r.period.as_str() }, calibration_doc(r)?)
        .upsert(true)
        .await
        .map(drop)
        .map_err(store_error)
}

pub(super) async fn calibrations(
    coll: &Collection<CalibrationDoc>,
) -> Result<Vec<CalibrationRecord>, StoreError> {
    let docs: Vec<CalibrationDoc> = coll
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .map_err(store_error)?
        .try_collect()
        .await
        .map_err(store_error)?;
    docs.into_iter()
        .map(|d| {
            bson::from_document(d.record)
                .map_err(|e| StoreError::Corrupt(format!("calibrations[{}]: {e}", d.period)))
        })
        .collect()
}

/// A claim: its name and the end of its lease.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ClaimDoc {
    #[serde(rename = "_id")]
    name: String,
    until: i64,
}

/// Inserts the claim; a duplicate `_id` means somebody holds it.
pub(super) async fn claim(
    coll: &Collection<ClaimDoc>,
    name: &str,
    until: UnixMillis,
) -> Result<Claim, StoreError> {
    let doc = ClaimDoc {
        name: name.to_owned(),
        until: until.0,
    };
    match insert_keyed(coll, &doc).await? {
        Write::Applied => Ok(Claim::Won),
        Write::AlreadyApplied => {
            let held = coll
                .find_one(doc! { "_id": name })
                .await
                .map_err(store_error)?;
            Ok(Claim::Held(UnixMillis(held.map_or(until.0, |h| h.until))))
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct BillingDoc {
    #[serde(rename = "_id")]
    key: String,
    org: OrgId,
    period: Period,
    state: BillingState,
    provider_item_id: Option<String>,
    next_attempt_at: i64,
    updated_at: i64,
    record: Document,
}

fn to_doc(r: &BillingRecord) -> Result<BillingDoc, StoreError> {
    let record = bson::to_document(r)
        .map_err(|e| StoreError::Unavailable(format!("cannot encode billing record: {e}")))?;
    Ok(BillingDoc {
        key: r.key.clone(),
        org: r.org.clone(),
        period: r.period.clone(),
        state: r.state,
        provider_item_id: r.provider_item_id.clone(),
        next_attempt_at: r.next_attempt_at.0,
        updated_at: r.updated_at.0,
        record,
    })
}

fn from_doc(d: BillingDoc) -> Result<BillingRecord, StoreError> {
    bson::from_document(d.record)
        .map_err(|e| StoreError::Corrupt(format!("billingRecords[{}]: {e}", d.key)))
}

/// Creates the indexes that are missing. Only those: FerretDB v1.24.2
/// drops the connection when asked to create several indexes at once of
/// which some exist.
pub(super) async fn ensure_indexes(coll: &Collection<BillingDoc>) -> Result<(), MongoStoreError> {
    let wrap = |source| MongoStoreError::Index {
        collection: BILLING_RECORDS,
        source,
    };
    let existing = match coll.list_index_names().await {
        Ok(names) => names,
        // No collection yet, so no index.
        Err(e) if matches!(&*e.kind, ErrorKind::Command(c) if c.code == NAMESPACE_NOT_FOUND) => {
            Vec::new()
        }
        Err(e) => return Err(wrap(e)),
    };
    let wanted = [
        ("org_1_period_1", doc! { "org": 1, "period": 1 }),
        ("period_1_org_1", doc! { "period": 1, "org": 1 }),
        (
            "state_1_nextAttemptAt_1",
            doc! { "state": 1, "nextAttemptAt": 1 },
        ),
        ("providerItemId_1", doc! { "providerItemId": 1 }),
    ];
    for (name, keys) in wanted {
        if !existing.iter().any(|n| n == name) {
            coll.create_index(IndexModel::builder().keys(keys).build())
                .await
                .map_err(wrap)?;
        }
    }
    Ok(())
}

async fn find(
    coll: &Collection<BillingDoc>,
    filter: Document,
    sort: Document,
    limit: Option<i64>,
) -> Result<Vec<BillingRecord>, StoreError> {
    let mut find = coll.find(filter).sort(sort);
    if let Some(limit) = limit {
        find = find.limit(limit);
    }
    let docs: Vec<BillingDoc> = find
        .await
        .map_err(store_error)?
        .try_collect()
        .await
        .map_err(store_error)?;
    docs.into_iter().map(from_doc).collect()
}

pub(super) async fn insert(
    coll: &Collection<BillingDoc>,
    r: &BillingRecord,
) -> Result<Write, StoreError> {
    insert_keyed(coll, &to_doc(r)?).await
}

pub(super) async fn get(
    coll: &Collection<BillingDoc>,
    org: &OrgId,
    period: &Period,
) -> Result<Option<BillingRecord>, StoreError> {
    let found = coll
        .find_one(doc! { "_id": billing_key(org, period) })
        .await
        .map_err(store_error)?;
    found.map(from_doc).transpose()
}

pub(super) async fn for_org(
    coll: &Collection<BillingDoc>,
    org: &OrgId,
) -> Result<Vec<BillingRecord>, StoreError> {
    find(
        coll,
        doc! { "org": org.as_str() },
        doc! { "period": 1 },
        None,
    )
    .await
}

pub(super) async fn for_period(
    coll: &Collection<BillingDoc>,
    period: &Period,
) -> Result<Vec<BillingRecord>, StoreError> {
    find(
        coll,
        doc! { "period": period.as_str() },
        doc! { "org": 1 },
        None,
    )
    .await
}

pub(super) async fn due(
    coll: &Collection<BillingDoc>,
    state: BillingState,
    now: UnixMillis,
    limit: usize,
) -> Result<Vec<BillingRecord>, StoreError> {
    find(
        coll,
        doc! { "state": state.as_str(), "nextAttemptAt": { "$lte": now.0 } },
        doc! { "nextAttemptAt": 1, "_id": 1 },
        Some(i64::try_from(limit).unwrap_or(i64::MAX)),
    )
    .await
}

pub(super) async fn by_item(
    coll: &Collection<BillingDoc>,
    item_id: &str,
) -> Result<Option<BillingRecord>, StoreError> {
    let found = coll
        .find_one(doc! { "providerItemId": item_id })
        .await
        .map_err(store_error)?;
    found.map(from_doc).transpose()
}

pub(super) async fn update_if_unchanged(
    coll: &Collection<BillingDoc>,
    r: &BillingRecord,
    seen_updated_at: UnixMillis,
) -> Result<bool, StoreError> {
    let result = coll
        .replace_one(
            doc! { "_id": r.key.as_str(), "updatedAt": seen_updated_at.0 },
            to_doc(r)?,
        )
        .await
        .map_err(store_error)?;
    Ok(result.matched_count == 1)
}
