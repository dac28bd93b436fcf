//! The organization query scale-to-zero's idle check needs, on the embedded
//! store: every organization's `compute` section is read (skipping the rest
//! of the document), and only those whose driver can suspend and that are
//! not suspended are decoded whole.

use dynabase_actors::{
    domain::compute::{Compute, Phase},
    Organization, StoreError,
};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::Deserialize;

use super::{decode, unavailable, ORGS};

/// The part of an organization document the filter reads.
#[derive(Deserialize)]
struct ComputeOnly {
    #[serde(default)]
    compute: Compute,
}

pub(super) fn awake_suspendable_orgs(db: &Database) -> Result<Vec<Organization>, StoreError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let docs = txn.open_table(ORGS).map_err(unavailable)?;
    let mut out = Vec::new();
    // Keys are org ids, so key order is id order.
    for entry in docs.iter().map_err(unavailable)? {
        let (key, value) = entry.map_err(unavailable)?;
        let only: ComputeOnly = decode(&ORGS, key.value(), value.value())?;
        if only.compute.spec.can_suspend() && only.compute.state.phase != Phase::Suspended {
            out.push(decode(&ORGS, key.value(), value.value())?);
        }
    }
    Ok(out)
}
