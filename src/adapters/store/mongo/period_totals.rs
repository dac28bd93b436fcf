//! Period totals on MongoDB (`periodTotals`, `_id` `<period>/<org>`): one
//! document per org and period that each usage write adds to with `$inc`.
//!
//! The server has no transactions here (FerretDB v1), so "each record
//! added exactly once" is built from single-document updates:
//!
//! 1. the usage records are inserted with `totaled: false`;
//! 2. for each org and period, one update adds the records' units *and*
//!    pushes their keys onto the total's `applied` list, on condition that
//!    none of the keys is there yet (upsert for the first one);
//! 3. the records are marked `totaled: true`;
//! 4. their keys are pulled from `applied` again.
//!
//! A write that fails anywhere is retried whole by the caller. The retry
//! finds its records already inserted, re-reads which of them are still
//! `totaled: false` and goes through 2–4 for those only; a key still on
//! `applied` (the writer died between 2 and 3) makes step 2 skip that record.
//! So `applied` only ever holds the keys of a write in flight (or of one
//! that died between 3 and 4, which reconciliation's repair clears).

use std::collections::BTreeMap;

use dynabase_actors::{
    domain::{
        period_total::{record_units, PeriodTotal, UsageUnits},
        records::{Period, UsageRecord},
    },
    OrgId, StoreError,
};
use futures_util::TryStreamExt;
use mongodb::{
    bson::{doc, Document},
    options::UpdateOptions,
    Collection,
};
use serde::{Deserialize, Serialize};

use super::{is_duplicate_key, store_error};

pub(in crate::adapters::store) const PERIOD_TOTALS: &str = "periodTotals";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(in crate::adapters::store) struct PeriodTotalDoc {
    #[serde(rename = "_id")]
    id: String,
    org: OrgId,
    period: Period,
    #[serde(default)]
    query_cycles: i64,
    #[serde(default)]
    duration_us: i64,
    #[serde(default)]
    vcpu_ns: i64,
    #[serde(default)]
    mem_mb_us: i64,
    #[serde(default)]
    records: i64,
    #[serde(default)]
    applied: Vec<String>,
}

impl From<PeriodTotalDoc> for PeriodTotal {
    fn from(d: PeriodTotalDoc) -> Self {
        PeriodTotal {
            org: d.org,
            period: d.period,
            units: UsageUnits {
                query_cycles: d.query_cycles,
                duration_us: d.duration_us,
                vcpu_ns: d.vcpu_ns,
                mem_mb_us: d.mem_mb_us,
            },
            records: d.records,
        }
    }
}

pub(in crate::adapters::store) fn total_id(org: &OrgId, period: &Period) -> String {
    format!("{period}/{org}")
}

fn inc(units: &UsageUnits, records: i64) -> Document {
    doc! {
        "queryCycles": units.query_cycles,
        "durationUs": units.duration_us,
        "vcpuNs": units.vcpu_ns,
        "memMbUs": units.mem_mb_us,
        "records": records,
    }
}

/// Step 2 for one org and period: adds `records` unless any of their keys
/// is on `applied`; `Ok(false)` when one is (the caller goes record by
/// record then).
async fn add_group(
    totals: &Collection<PeriodTotalDoc>,
    org: &OrgId,
    period: &Period,
    records: &[&UsageRecord],
) -> Result<bool, StoreError> {
    let mut units = UsageUnits::default();
    for r in records {
        units.add(&record_units(r));
    }
    let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    let n = i64::try_from(records.len()).unwrap_or(i64::MAX);
    let result = totals
        .update_one(
            doc! { "_id": total_id(org, period), "applied": { "$nin": &keys } },
            doc! {
                "$inc": inc(&units, n),
                "$push": { "applied": { "$each": &keys } },
                "$setOnInsert": { "org": org.as_str(), "period": period.as_str() },
            },
        )
        .with_options(UpdateOptions::builder().upsert(true).build())
        .await;
    match result {
        Ok(r) => Ok(r.matched_count == 1 || r.upserted_id.is_some()),
        // The document exists but holds one of the keys: the upsert's
        // insert collides with it.
        Err(e) if is_duplicate_key(&e) => Ok(false),
        Err(e) => Err(store_error(e)),
    }
}

/// Step 2 for one record.
async fn add_one(
    totals: &Collection<PeriodTotalDoc>,
    record: &UsageRecord,
) -> Result<(), StoreError> {
    let result = totals
        .update_one(
            doc! {
                "_id": total_id(&record.org, &record.period),
                "applied": { "$ne": record.key.as_str() },
            },
            doc! {
                "$inc": inc(&record_units(record), 1),
                "$push": { "applied": record.key.as_str() },
                "$setOnInsert": { "org": record.org.as_str(), "period": record.period.as_str() },
            },
        )
        .with_options(UpdateOptions::builder().upsert(true).build())
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) if is_duplicate_key(&e) => Ok(()),
        Err(e) => Err(store_error(e)),
    }
}

/// Steps 2–4 for records inserted but not yet `totaled`.
pub(in crate::adapters::store) async fn add_records<U: Send + Sync>(
    totals: &Collection<PeriodTotalDoc>,
    usage: &Collection<U>,
    records: &[&UsageRecord],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut groups: BTreeMap<(&OrgId, &Period), Vec<&UsageRecord>> = BTreeMap::new();
    for r in records {
        groups.entry((&r.org, &r.period)).or_default().push(r);
    }
    for ((org, period), group) in &groups {
        if !add_group(totals, org, period, group).await? {
            for r in group {
                add_one(totals, r).await?;
            }
        }
    }
    let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    usage
        .update_many(
            doc! { "_id": { "$in": &keys } },
            doc! { "$set": { "totaled": true } },
        )
        .await
        .map_err(store_error)?;
    for ((org, period), group) in &groups {
        let keys: Vec<&str> = group.iter().map(|r| r.key.as_str()).collect();
        totals
            .update_one(
                doc! { "_id": total_id(org, period) },
                // `$pullAll`, not `$pull` with `$in`: FerretDB v1.24.2
                // accepts the latter and removes nothing.
                doc! { "$pullAll": { "applied": keys } },
            )
            .await
            .map_err(store_error)?;
    }
    Ok(())
}

/// Of `keys` (records that were there already), those not yet totaled.
pub(in crate::adapters::store) async fn untotaled<U: Send + Sync>(
    usage: &Collection<U>,
    keys: &[&str],
) -> Result<Vec<String>, StoreError> {
    #[derive(Deserialize)]
    struct Key {
        #[serde(rename = "_id")]
        id: String,
    }
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let cursor = usage
        .clone_with_type::<Key>()
        .find(doc! { "_id": { "$in": keys }, "totaled": false })
        .projection(doc! { "_id": 1 })
        .await
        .map_err(store_error)?;
    let found: Vec<Key> = cursor.try_collect().await.map_err(store_error)?;
    Ok(found.into_iter().map(|k| k.id).collect())
}

pub(in crate::adapters::store) async fn get(
    totals: &Collection<PeriodTotalDoc>,
    org: &OrgId,
    period: &Period,
) -> Result<PeriodTotal, StoreError> {
    let found = totals
        .find_one(doc! { "_id": total_id(org, period) })
        .projection(doc! { "applied": 0 })
        .await
        .map_err(store_error)?;
    Ok(found.map_or_else(
        || PeriodTotal::zero(org.clone(), period.clone()),
        Into::into,
    ))
}

pub(in crate::adapters::store) async fn for_period(
    totals: &Collection<PeriodTotalDoc>,
    period: &Period,
) -> Result<Vec<PeriodTotal>, StoreError> {
    let cursor = totals
        .find(doc! { "period": period.as_str() })
        .projection(doc! { "applied": 0 })
        .sort(doc! { "_id": 1 })
        .await
        .map_err(store_error)?;
    let docs: Vec<PeriodTotalDoc> = cursor.try_collect().await.map_err(store_error)?;
    Ok(docs.into_iter().map(Into::into).collect())
}

/// Replaces the total, clearing `applied` (reconciliation's repair).
pub(in crate::adapters::store) async fn set(
    totals: &Collection<PeriodTotalDoc>,
    total: &PeriodTotal,
) -> Result<(), StoreError> {
    let id = total_id(&total.org, &total.period);
    let u = &total.units;
    totals
        .replace_one(
            doc! { "_id": &id },
            PeriodTotalDoc {
                id: id.clone(),
                org: total.org.clone(),
                period: total.period.clone(),
                query_cycles: u.query_cycles,
                duration_us: u.duration_us,
                vcpu_ns: u.vcpu_ns,
                mem_mb_us: u.mem_mb_us,
                records: total.records,
                applied: Vec::new(),
            },
        )
        .upsert(true)
        .await
        .map(drop)
        .map_err(store_error)
}
