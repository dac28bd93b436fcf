//! The billing side of [`EmbeddedStore`](super::EmbeddedStore): period
//! totals (table `period_totals`, key `<period>/<org>`), billing records
//! (table `billing_records`, key `<org>:<period>`), and the cross-org reads
//! billing makes per period.
//!
//! A usage record and its share of the period total are written in the
//! same redb transaction, so the total is exact by construction. Billing
//! lists scan their table: the embedded store serves single-node installs,
//! where a scan of every org's record is milliseconds.

use dynabase_actors::{
    domain::{
        billing_record::{billing_key, BillingRecord, BillingState},
        period_total::{PeriodTotal, UsageUnits},
        records::{Period, TierChange, UsageAdjustment, Write},
    },
    store::Claim,
    OrgId, StoreError, UnixMillis,
};
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};

use super::{all_docs, decode, encode, get_doc, insert_if_absent, unavailable, DocTable};

pub(super) const PERIOD_TOTALS: DocTable = TableDefinition::new("period_totals");
pub(super) const BILLING: DocTable = TableDefinition::new("billing_records");
/// Platform setting name → its value (JSON string).
pub(super) const SETTINGS: DocTable = TableDefinition::new("settings");
/// Claim name → the end of its lease (JSON milliseconds).
pub(super) const CLAIMS: DocTable = TableDefinition::new("claims");

fn total_key(org: &OrgId, period: &Period) -> String {
    format!("{period}/{org}")
}

/// Adds `units` to the org's period total inside the caller's transaction
/// (the one that inserts the usage record).
pub(in crate::adapters::store) fn add_to_total(
    txn: &WriteTransaction,
    org: &OrgId,
    period: &Period,
    units: &UsageUnits,
) -> Result<(), StoreError> {
    let key = total_key(org, period);
    let mut table = txn.open_table(PERIOD_TOTALS).map_err(unavailable)?;
    let mut total = match table.get(key.as_str()).map_err(unavailable)? {
        Some(v) => decode(&PERIOD_TOTALS, &key, v.value())?,
        None => PeriodTotal::zero(org.clone(), period.clone()),
    };
    total.add(units);
    let bytes = encode("period total", &total)?;
    table
        .insert(key.as_str(), bytes.as_slice())
        .map_err(unavailable)?;
    Ok(())
}

pub(super) fn period_total(
    db: &Database,
    org: &OrgId,
    period: &Period,
) -> Result<PeriodTotal, StoreError> {
    Ok(get_doc(db, PERIOD_TOTALS, &total_key(org, period))?
        .unwrap_or_else(|| PeriodTotal::zero(org.clone(), period.clone())))
}

pub(super) fn period_totals(
    db: &Database,
    period: &Period,
) -> Result<Vec<PeriodTotal>, StoreError> {
    super::docs_with_prefix(db, PERIOD_TOTALS, period.as_str())
}

pub(super) fn set_period_total(db: &Database, total: &PeriodTotal) -> Result<(), StoreError> {
    let key = total_key(&total.org, &total.period);
    let bytes = encode("period total", total)?;
    let txn = db.begin_write().map_err(unavailable)?;
    txn.open_table(PERIOD_TOTALS)
        .map_err(unavailable)?
        .insert(key.as_str(), bytes.as_slice())
        .map_err(unavailable)?;
    txn.commit().map_err(unavailable)
}

pub(super) fn adjustments_for_period(
    db: &Database,
    table: DocTable,
    period: &Period,
) -> Result<Vec<UsageAdjustment>, StoreError> {
    let mut out: Vec<UsageAdjustment> = all_docs(db, table)?;
    out.retain(|a| &a.period == period);
    // Stable: equal instants keep key order.
    out.sort_by_key(|a| a.created_at);
    Ok(out)
}

pub(super) fn tier_changes_since(
    db: &Database,
    table: DocTable,
    since: UnixMillis,
) -> Result<Vec<TierChange>, StoreError> {
    let mut out: Vec<TierChange> = all_docs(db, table)?;
    out.retain(|c| c.at >= since);
    out.sort_by_key(|c| c.at);
    Ok(out)
}

pub(super) fn insert_record(db: &Database, record: &BillingRecord) -> Result<Write, StoreError> {
    let bytes = encode("billing record", record)?;
    insert_if_absent(db, BILLING, &record.key, &bytes, None)
}

pub(super) fn record(
    db: &Database,
    org: &OrgId,
    period: &Period,
) -> Result<Option<BillingRecord>, StoreError> {
    get_doc(db, BILLING, &billing_key(org, period))
}

/// Every record matching `keep`.
pub(super) fn records_where(
    db: &Database,
    keep: impl Fn(&BillingRecord) -> bool,
) -> Result<Vec<BillingRecord>, StoreError> {
    let mut out: Vec<BillingRecord> = all_docs(db, BILLING)?;
    out.retain(|r| keep(r));
    Ok(out)
}

pub(super) fn due_records(
    db: &Database,
    state: BillingState,
    now: UnixMillis,
    limit: usize,
) -> Result<Vec<BillingRecord>, StoreError> {
    let mut out = records_where(db, |r| r.state == state && r.next_attempt_at <= now)?;
    out.sort_by(|a, b| (a.next_attempt_at, &a.key).cmp(&(b.next_attempt_at, &b.key)));
    out.truncate(limit);
    Ok(out)
}

pub(super) fn update_record_if_unchanged(
    db: &Database,
    record: &BillingRecord,
    seen_updated_at: UnixMillis,
) -> Result<bool, StoreError> {
    let bytes = encode("billing record", record)?;
    let txn = db.begin_write().map_err(unavailable)?;
    let replaced = {
        let mut table = txn.open_table(BILLING).map_err(unavailable)?;
        let current: Option<BillingRecord> =
            match table.get(record.key.as_str()).map_err(unavailable)? {
                Some(v) => Some(decode(&BILLING, &record.key, v.value())?),
                None => None,
            };
        match current {
            Some(c) if c.updated_at == seen_updated_at => {
                table
                    .insert(record.key.as_str(), bytes.as_slice())
                    .map_err(unavailable)?;
                true
            }
            _ => false,
        }
    };
    if replaced {
        txn.commit().map_err(unavailable)?;
    } else {
        txn.abort().map_err(unavailable)?;
    }
    Ok(replaced)
}

/// Inserts the claim unless it exists; `Held` with the existing lease end.
pub(super) fn claim(db: &Database, name: &str, until: UnixMillis) -> Result<Claim, StoreError> {
    let bytes = encode("claim", &until)?;
    match insert_if_absent(db, CLAIMS, name, &bytes, None)? {
        Write::Applied => Ok(Claim::Won),
        Write::AlreadyApplied => {
            let held: Option<UnixMillis> = get_doc(db, CLAIMS, name)?;
            Ok(Claim::Held(held.unwrap_or(until)))
        }
    }
}

pub(super) fn setting(db: &Database, key: &str) -> Result<Option<String>, StoreError> {
    get_doc(db, SETTINGS, key)
}

pub(super) fn set_setting(db: &Database, key: &str, value: &str) -> Result<(), StoreError> {
    let bytes = encode("setting", &value)?;
    let txn = db.begin_write().map_err(unavailable)?;
    txn.open_table(SETTINGS)
        .map_err(unavailable)?
        .insert(key, bytes.as_slice())
        .map_err(unavailable)?;
    txn.commit().map_err(unavailable)
}
