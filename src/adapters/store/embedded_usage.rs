//! The usage side of [`EmbeddedStore`](super::EmbeddedStore) that is more
//! than one keyed insert: a flush's records in one write transaction, and
//! the API token hashes (table `api_tokens`: org id → SHA-256 hex).

use dynabase_actors::{
    domain::{
        period_total::{record_units, UsageUnits},
        records::{Period, UsageRecord, Write},
    },
    OrgId, StoreError,
};
use redb::{Database, ReadableDatabase, ReadableTable};

use super::embedded::{
    encode, insert_in, sortable_millis, unavailable, IndexKey, API_TOKENS, ORGS, USAGE,
    USAGE_BY_ORG_PERIOD,
};

/// A usage record as the batch write needs it: primary key, bytes, index
/// entry, and what it adds to its period total.
pub(super) struct UsageEntry {
    key: String,
    bytes: Vec<u8>,
    index_key: IndexKey,
    org: OrgId,
    period: Period,
    units: UsageUnits,
}

pub(super) fn usage_entry(record: &UsageRecord) -> Result<UsageEntry, StoreError> {
    let index_key = format!(
        "{}/{}/{}/{}",
        record.org,
        record.period,
        sortable_millis(record.window_start.0),
        record.key
    );
    Ok(UsageEntry {
        key: record.key.clone(),
        bytes: encode("usage record", record)?,
        index_key: IndexKey::Exact(index_key),
        org: record.org.clone(),
        period: record.period.clone(),
        units: record_units(record),
    })
}

/// Inserts each record unless its key exists, and adds each inserted one
/// to its period total, all in one transaction (one fsync for the whole
/// flush; the totals are exact because they commit with the records).
pub(super) fn insert_usage(
    db: &Database,
    entries: Vec<UsageEntry>,
) -> Result<Vec<Write>, StoreError> {
    let txn = db.begin_write().map_err(unavailable)?;
    let mut writes = Vec::with_capacity(entries.len());
    for e in entries {
        let write = insert_in(
            &txn,
            USAGE,
            &e.key,
            &e.bytes,
            Some((USAGE_BY_ORG_PERIOD, e.index_key)),
        )?;
        if write == Write::Applied {
            super::embedded::add_to_total(&txn, &e.org, &e.period, &e.units)?;
        }
        writes.push(write);
    }
    txn.commit().map_err(unavailable)?;
    Ok(writes)
}

/// Sets the org's token hash; `NotFound` for an unknown org.
pub(super) fn set_token_hash(db: &Database, org: OrgId, hash: &str) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(unavailable)?;
    let known = txn
        .open_table(ORGS)
        .map_err(unavailable)?
        .get(org.as_str())
        .map_err(unavailable)?
        .is_some();
    if !known {
        txn.abort().map_err(unavailable)?;
        return Err(StoreError::NotFound(org));
    }
    txn.open_table(API_TOKENS)
        .map_err(unavailable)?
        .insert(org.as_str(), hash)
        .map_err(unavailable)?;
    txn.commit().map_err(unavailable)
}

pub(super) fn token_hash(db: &Database, org: &OrgId) -> Result<Option<String>, StoreError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let tokens = txn.open_table(API_TOKENS).map_err(unavailable)?;
    let found = tokens.get(org.as_str()).map_err(unavailable)?;
    Ok(found.map(|v| v.value().to_owned()))
}
