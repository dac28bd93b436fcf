//! Documents and indexes over redb tables: the reads and keyed writes every
//! part of the embedded store is built from (see the table in
//! [`super`]'s module doc for the keys).

use dynabase_actors::{domain::records::Write, StoreError};
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{de::DeserializeOwned, Serialize};

use super::{DocTable, IndexTable, META, SEQ_KEY};

/// Any redb failure means the store cannot serve right now.
pub(in crate::adapters::store) fn unavailable(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {}", e.into()))
}

pub(in crate::adapters::store) fn encode<T: Serialize>(
    what: &str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    // Domain types always serialize; a failure here would be a programming
    // error, reported rather than panicking.
    serde_json::to_vec(value)
        .map_err(|e| StoreError::Unavailable(format!("cannot encode {what}: {e}")))
}

pub(in crate::adapters::store) fn decode<T: DeserializeOwned>(
    table: &DocTable,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::Corrupt(format!(
            "{}[{key}] is not valid: {e}",
            redb::TableHandle::name(table)
        ))
    })
}

/// Encodes an instant so that string order is time order, negatives included:
/// flipping the sign bit maps `i64` order onto `u64` order, and 20 digits fit
/// `u64::MAX`.
pub(in crate::adapters::store) fn sortable_millis(ms: i64) -> String {
    // Reinterpreting the bits is intended; see above.
    format!("{:020}", (ms as u64) ^ (1 << 63))
}

/// The half-open key range of everything starting with `prefix/`.
///
/// `0` is the byte right after `/`, so `prefix0` is the first key past it.
pub(in crate::adapters::store) fn prefix_range(prefix: &str) -> (String, String) {
    (format!("{prefix}/"), format!("{prefix}0"))
}

/// Hands out the next insertion sequence number within `txn`.
pub(in crate::adapters::store) fn next_seq(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    let last = meta
        .get(SEQ_KEY)
        .map_err(unavailable)?
        .map_or(0, |v| v.value());
    let next = last + 1;
    meta.insert(SEQ_KEY, next).map_err(unavailable)?;
    Ok(next)
}

/// How the index entry of a keyed write is named.
pub(in crate::adapters::store) enum IndexKey {
    /// Used as is; already unique.
    Exact(String),
    /// Gets `/<seq>` appended, to keep insertion order among equal prefixes.
    Sequenced(String),
}

/// Inserts `value` under `key` unless the key exists, and records the optional
/// index entry, all in one write transaction.
pub(in crate::adapters::store) fn insert_if_absent(
    db: &Database,
    table: DocTable,
    key: &str,
    value: &[u8],
    index: Option<(IndexTable, IndexKey)>,
) -> Result<Write, StoreError> {
    let txn = db.begin_write().map_err(unavailable)?;
    let write = insert_in(&txn, table, key, value, index)?;
    match write {
        Write::Applied => txn.commit().map_err(unavailable)?,
        Write::AlreadyApplied => txn.abort().map_err(unavailable)?,
    }
    Ok(write)
}

/// The body of [`insert_if_absent`] inside a caller's transaction.
pub(in crate::adapters::store) fn insert_in(
    txn: &WriteTransaction,
    table: DocTable,
    key: &str,
    value: &[u8],
    index: Option<(IndexTable, IndexKey)>,
) -> Result<Write, StoreError> {
    let exists = {
        let mut docs = txn.open_table(table).map_err(unavailable)?;
        let exists = docs.get(key).map_err(unavailable)?.is_some();
        if !exists {
            docs.insert(key, value).map_err(unavailable)?;
        }
        exists
    };
    if exists {
        return Ok(Write::AlreadyApplied);
    }
    if let Some((index, index_key)) = index {
        let index_key = match index_key {
            IndexKey::Exact(k) => k,
            IndexKey::Sequenced(prefix) => format!("{prefix}/{:020}", next_seq(txn)?),
        };
        let mut idx = txn.open_table(index).map_err(unavailable)?;
        idx.insert(index_key.as_str(), key).map_err(unavailable)?;
    }
    Ok(Write::Applied)
}

/// Reads one document by key.
pub(in crate::adapters::store) fn get_doc<T: DeserializeOwned>(
    db: &Database,
    table: DocTable,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let docs = txn.open_table(table).map_err(unavailable)?;
    let found = docs.get(key).map_err(unavailable)?;
    found.map(|v| decode(&table, key, v.value())).transpose()
}

/// Reads every document of a table in key order.
pub(in crate::adapters::store) fn all_docs<T: DeserializeOwned>(
    db: &Database,
    table: DocTable,
) -> Result<Vec<T>, StoreError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let docs = txn.open_table(table).map_err(unavailable)?;
    let mut out = Vec::new();
    for entry in docs.iter().map_err(unavailable)? {
        let (k, v) = entry.map_err(unavailable)?;
        out.push(decode(&table, k.value(), v.value())?);
    }
    Ok(out)
}

/// Reads the documents a prefix of an index points at, in index order.
pub(in crate::adapters::store) fn docs_by_index<T: DeserializeOwned>(
    db: &Database,
    index: IndexTable,
    table: DocTable,
    prefix: &str,
) -> Result<Vec<T>, StoreError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let idx = txn.open_table(index).map_err(unavailable)?;
    let docs = txn.open_table(table).map_err(unavailable)?;
    let (start, end) = prefix_range(prefix);
    docs_in_index_range(&idx, &docs, (index, table), &start, &end)
}

/// The documents the index entries with keys in `start..end` point at, in
/// index order, from tables opened in any transaction (`names` are the
/// index's and the table's definitions, for decoding and error messages).
pub(in crate::adapters::store) fn docs_in_index_range<T: DeserializeOwned>(
    idx: &impl ReadableTable<&'static str, &'static str>,
    docs: &impl ReadableTable<&'static str, &'static [u8]>,
    (index, table): (IndexTable, DocTable),
    start: &str,
    end: &str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for entry in idx.range::<&str>(start..end).map_err(unavailable)? {
        let (_, primary) = entry.map_err(unavailable)?;
        let primary = primary.value();
        let doc = docs.get(primary).map_err(unavailable)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{} points at missing {}[{primary}]",
                redb::TableHandle::name(&index),
                redb::TableHandle::name(&table)
            ))
        })?;
        out.push(decode(&table, primary, doc.value())?);
    }
    Ok(out)
}

/// Reads the documents of a primary table whose keys start with `prefix/`.
pub(in crate::adapters::store) fn docs_with_prefix<T: DeserializeOwned>(
    db: &Database,
    table: DocTable,
    prefix: &str,
) -> Result<Vec<T>, StoreError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let docs = txn.open_table(table).map_err(unavailable)?;
    let (start, end) = prefix_range(prefix);
    let mut out = Vec::new();
    for entry in docs
        .range::<&str>(start.as_str()..end.as_str())
        .map_err(unavailable)?
    {
        let (k, v) = entry.map_err(unavailable)?;
        out.push(decode(&table, k.value(), v.value())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sortable_millis_orders_like_the_numbers() {
        let values = [i64::MIN, -1_000, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        let encoded: Vec<String> = values.iter().map(|&v| sortable_millis(v)).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted);
        assert!(encoded.iter().all(|e| e.len() == 20));
    }

    #[test]
    fn prefix_range_excludes_longer_org_ids() {
        let (start, end) = prefix_range("acme");
        let inside = "acme/00000000000000000001";
        let other = "acme-2/00000000000000000001";
        assert!(start.as_str() <= inside && inside < end.as_str());
        assert!(!(start.as_str() <= other && other < end.as_str()));
    }
}
