//! The organization query scale-to-zero's idle check needs, filtered by the
//! server: only organizations whose driver can suspend and that are not
//! suspended cross the wire, so thousands of sleeping databases cost the
//! check nothing. Documents without a `compute` section are always on.

use dynabase_actors::{Organization, StoreError};
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
