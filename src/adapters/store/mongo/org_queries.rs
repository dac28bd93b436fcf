//! Organization queries of the periodic jobs, answered by the server:
//! scale-to-zero's idle check gets only organizations whose driver can
//! suspend and that are not suspended (documents without a `compute`
//! section are always on), so thousands of sleeping databases cost it
//! nothing; the billing tick gets a count, not the documents.

use dynabase_actors::{Organization, StoreError, UnixMillis};
use mongodb::bson::doc;

use super::MongoStore;

pub(super) async fn awake_suspendable_orgs(
    store: &MongoStore,
) -> Result<Vec<Organization>, StoreError> {
    let filter = doc! {
        "compute.spec.driver": { "$exists": true, "$ne": "always_on" },
        "compute.state.phase": { "$ne": "suspended" },
    };
    super::find_sorted(&store.orgs, filter, doc! { "_id": 1 }).await
}

pub(super) async fn count_orgs_created_before(
    store: &MongoStore,
    at: UnixMillis,
) -> Result<usize, StoreError> {
    let n = store
        .orgs
        .count_documents(doc! { "createdAt": { "$lt": at.0 } })
        .await
        .map_err(super::store_error)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}
